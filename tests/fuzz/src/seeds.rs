//! The seed corpora, generated from readable descriptions. `corpus/<target>/seed-*` holds
//! exactly these (a test checks it; `SHOOTDOWN_WRITE_SEEDS=1 cargo test -p shootdown-fuzz`
//! rewrites them).

use shootdown::iommu::spec::command::{Command, Granule, SyncSignal, TlbiRange, TlbiVa};
use shootdown::iommu::spec::event::{AccessKind, EventKind, EventRecord, FaultClass};
use shootdown::iommu::spec::ste::Ste;
use shootdown::mm::{PhysAddr, VirtAddr};

use crate::aspace::op::{Addr, BackingSpec, Len, Op, Perms, Phys, Place};
use crate::fdt;
use crate::input::Output;

/// The seeds of `target`, by name.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "aspace" => aspace(),
        "smmu_codec" => smmu_codec(),
        "dt" => dt(),
        "ktap" => ktap(),
        "sdcl" => sdcl(),
        "receiver" => receiver(),
        "bootargs" => bootargs(),
        _ => Vec::new(),
    }
}

fn at(gig: u8, block: u8, page: i8) -> Addr {
    Addr { gig, block, page }
}

fn pages(n: u8) -> Len {
    Len {
        unit: 0,
        count: n,
        adjust: 0,
    }
}

fn blocks(n: u8, adjust: i8) -> Len {
    Len {
        unit: 1,
        count: n,
        adjust,
    }
}

fn gigs(n: u8) -> Len {
    Len {
        unit: 2,
        count: n,
        adjust: 0,
    }
}

fn anon(a: Addr, len: Len, perms: Perms) -> Op {
    Op::Map {
        at: Place::Fixed(a),
        len,
        perms,
        backing: BackingSpec::Anonymous,
    }
}

fn phys(a: Addr, len: Len, perms: Perms, p: Phys) -> Op {
    Op::Map {
        at: Place::Fixed(a),
        len,
        perms,
        backing: BackingSpec::Physical(p),
    }
}

fn program(config: u8, ops: &[Op]) -> Vec<u8> {
    let mut o = Output::default();
    o.u8(config);
    for op in ops {
        op.write(&mut o);
    }
    o.0
}

fn aspace() -> Vec<(String, Vec<u8>)> {
    let a = at(0, 0, 0);
    let unmap = |va, len| Op::Unmap {
        va,
        len,
        nonblocking: false,
    };
    let normal = |gig, block| Phys {
        kind: 0,
        gig,
        block,
        page: 0,
    };
    let basic = [
        anon(a, pages(8), Perms::RW),
        Op::DmaWrite {
            va: at(0, 0, 2),
            value: 0x5a,
        },
        Op::DmaRead { va: at(0, 0, 2) },
        unmap(at(0, 0, 3), pages(2)),
        Op::DmaRead { va: at(0, 0, 3) },
        Op::Protect {
            va: a,
            len: pages(3),
            perms: Perms::RO,
        },
        Op::DmaWrite {
            va: at(0, 0, 1),
            value: 1,
        },
        Op::Protect {
            va: a,
            len: pages(3),
            perms: Perms::RW,
        },
        Op::DmaWrite {
            va: at(0, 0, 1),
            value: 2,
        },
        Op::Discard {
            va: a,
            len: pages(3),
        },
        Op::DmaRead { va: at(0, 0, 1) },
        Op::Populate {
            va: a,
            len: pages(3),
        },
        Op::DmaRead { va: at(0, 0, 1) },
        Op::Teardown,
        anon(at(1, 0, -2), pages(4), Perms::USER_RW),
    ];
    let blocks_2m = [
        phys(at(0, 2, 0), blocks(2, 0), Perms::RW, normal(0, 4)),
        unmap(at(0, 2, 5), pages(1)),
        Op::Protect {
            va: at(0, 3, -1),
            len: pages(2),
            perms: Perms::RO,
        },
        Op::Discard {
            va: at(0, 3, 0),
            len: blocks(1, 0),
        },
        Op::Populate {
            va: at(0, 2, 0),
            len: blocks(2, 0),
        },
        unmap(at(0, 2, 0), blocks(2, 0)),
    ];
    let block_1g = [
        phys(at(1, 0, 0), gigs(1), Perms::RW, normal(1, 0)),
        Op::Protect {
            va: at(1, 5, 3),
            len: pages(1),
            perms: Perms::RO,
        },
        unmap(at(1, 7, 0), blocks(1, 1)),
        phys(
            at(2, 0, 0),
            gigs(1),
            Perms(0b010),
            Phys {
                kind: 2,
                gig: 2,
                block: 0,
                page: 0,
            },
        ),
        Op::Teardown,
    ];
    let refused = [
        Op::RawUnmap {
            va: 0x40_0000_0001,
            len: 0x1000,
        },
        Op::RawUnmap {
            va: 0x40_0000_0000,
            len: 0,
        },
        Op::RawUnmap {
            va: !0xfff,
            len: 0x2000,
        },
        Op::RawUnmap { va: 0, len: 0x1000 },
        Op::RawMap {
            va: 0x40_0000_0000,
            len: 0x1000,
            pa: 0x1234,
        },
        Op::RawMap {
            va: 0x40_0000_0000,
            len: 0x1000,
            pa: !0xfff,
        },
        anon(a, pages(2), Perms::RW),
        anon(at(0, 0, 1), pages(2), Perms::RW),
        unmap(at(0, 0, 1), pages(4)),
        anon(at(0, 1, 0), pages(1), Perms(0x18)),
        phys(
            at(0, 1, 0),
            pages(1),
            Perms(0b011),
            Phys {
                kind: 1,
                gig: 0,
                block: 0,
                page: 0,
            },
        ),
        Op::Protect {
            va: a,
            len: pages(2),
            perms: Perms(0x19),
        },
    ];
    let out_of_memory = [
        Op::Budget(5),
        anon(a, pages(16), Perms::RW),
        anon(a, pages(200), Perms::RW),
        anon(at(0, 4, 0), pages(255), Perms::RW),
        phys(at(0, 8, 0), blocks(1, 0), Perms::RW, normal(0, 8)),
        Op::Budget(0),
        unmap(at(0, 8, 1), pages(1)),
        Op::Budget(0),
        Op::Protect {
            va: at(0, 8, 1),
            len: pages(1),
            perms: Perms::RO,
        },
    ];
    let nonblocking = [
        anon(a, pages(4), Perms::RW),
        Op::Refuser(true),
        Op::Unmap {
            va: a,
            len: pages(2),
            nonblocking: true,
        },
        Op::Refuser(false),
        Op::Unmap {
            va: a,
            len: pages(2),
            nonblocking: true,
        },
    ];
    let anywhere = |perms| Op::Map {
        at: Place::Anywhere,
        len: pages(3),
        perms,
        backing: BackingSpec::Anonymous,
    };
    let placement = [
        anywhere(Perms::RW),
        anywhere(Perms::RO),
        Op::RawUnmap {
            va: 0x10000,
            len: 0x3000,
        },
        anywhere(Perms::RW),
        Op::DmaWrite {
            va: at(0, 0, 0),
            value: 3,
        },
    ];
    let mut out = vec![
        ("seed-basic".to_string(), program(0, &basic)),
        ("seed-blocks-2m".to_string(), program(1, &blocks_2m)),
        ("seed-block-1g".to_string(), program(3, &block_1g)),
        ("seed-refused".to_string(), program(0, &refused)),
        ("seed-out-of-memory".to_string(), program(2, &out_of_memory)),
        ("seed-nonblocking".to_string(), program(0, &nonblocking)),
        ("seed-placement".to_string(), program(0, &placement)),
    ];
    // The same exchange under every strategy, without range invalidation, with small LRU
    // and FIFO IOTLBs.
    for config in [0x04, 0x08 | 0x20, 0x10 | 0x40, 0x18 | 0x01] {
        out.push((
            format!("seed-config-{config:02x}"),
            program(config, &blocks_2m),
        ));
    }
    out
}

fn smmu_codec() -> Vec<(String, Vec<u8>)> {
    let va = |asid, range| TlbiVa {
        vmid: 0,
        asid,
        addr: VirtAddr(0x7f00_0000_0000),
        leaf: true,
        range,
    };
    let commands = [
        Command::PrefetchConfig { sid: 0x10 },
        Command::CfgiSte {
            sid: 0x10,
            leaf: true,
        },
        Command::CfgiSteRange {
            sid: 0x10,
            range: 4,
        },
        Command::CfgiAll,
        Command::CfgiCd {
            sid: 0x10,
            ssid: 0,
            leaf: true,
        },
        Command::CfgiCdAll { sid: 0x10 },
        Command::TlbiNhAll { vmid: 0 },
        Command::TlbiNhAsid { vmid: 0, asid: 1 },
        Command::TlbiNhVa(va(1, None)),
        Command::TlbiNhVa(va(
            1,
            Some(TlbiRange {
                tg: Granule::K4,
                num: 15,
                scale: 0,
                ttl: 3,
            }),
        )),
        Command::TlbiNhVaa(va(0, None)),
        Command::TlbiNsnhAll,
        Command::SYNC,
        Command::Sync {
            signal: SyncSignal::Irq,
        },
    ];
    let mut words = Output::default();
    for c in &commands {
        let [w0, w1] = c.encode().expect("seed commands encode");
        words.u8(0).u64(w0).u64(w1);
    }
    let mut events = Output::default();
    let mut fault = EventRecord::new(EventKind::Translation, 0x10);
    fault.access = AccessKind::Read;
    fault.class = FaultClass::Input;
    fault.input_addr = 0x7f00_0000_0008;
    let mut with_ssid = EventRecord::new(EventKind::Permission, 0x11);
    with_ssid.ssid = Some(5);
    with_ssid.privileged = true;
    for r in [
        fault,
        with_ssid,
        EventRecord::new(EventKind::BadSte, 0x12),
        EventRecord::new(EventKind::Other(0x7f), 0),
    ] {
        let w = r.encode();
        events.u8(2);
        for x in w {
            events.u64(x);
        }
    }
    let mut ste = Output::default();
    ste.u8(4).u8(12);
    for w in Ste::stage1(PhysAddr(0x4010_2000)).unwrap().0 {
        ste.u64(w);
    }
    let mut cd = Output::default();
    cd.u8(5);
    for w in [0x0001_6202_c000_0019u64, 0x4010_0000, 0, 0xff, 0, 0, 0, 0] {
        cd.u64(w);
    }
    cd.u8(12);
    // Typed commands: selector 1, then the bytes `read_command` takes.
    let mut typed = Output::default();
    typed
        .u8(1)
        .u8(8)
        .u16(0)
        .u16(1)
        .u64(0x7f00_0000_0000)
        .u8(1)
        .u8(1)
        .u8(31)
        .u8(31)
        .u8(3);
    typed.u8(1).u8(2).u32(0x10).u8(4);
    typed.u8(1).u8(9).u16(0).u16(0).u64(0x1000).u8(0).u8(0);
    typed.u8(3).u8(0x10).u32(0x10).u8(1).u32(0x1f_ffff);
    vec![
        ("seed-commands".into(), words.0),
        ("seed-events".into(), events.0),
        ("seed-ste".into(), ste.0),
        ("seed-cd".into(), cd.0),
        ("seed-typed".into(), typed.0),
    ]
}

fn dt() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("seed-virt-like".to_string(), fdt::virt_like()),
        ("seed-pi-like".to_string(), fdt::pi_like()),
    ];
    for (i, t) in fdt::odd_trees().into_iter().enumerate() {
        out.push((format!("seed-odd-{i}"), t));
    }
    let mut truncated = fdt::virt_like();
    truncated.truncate(truncated.len() / 2);
    out.push(("seed-truncated".into(), truncated));
    out
}

fn ktap() -> Vec<(String, Vec<u8>)> {
    let doc = |s: &str| s.as_bytes().to_vec();
    vec![
        (
            "seed-pass".into(),
            doc("boot log\n[    0.1] KTAP version 1\n[    0.1] 1..2\n[    0.1]     KTAP version 1\n[    0.1]     # Subtest: mm\n[    0.1]     1..2\n[    0.2]     ok 1 map\n[    0.2]     ok 2 unmap # SKIP no block\n[    0.2] ok 1 mm\n[    0.2] # Subtest: smp\n[    0.2]     1..1\n[    0.3]     ok 1 all_cpus\n[    0.3] ok 2 smp\n# shootdown: exit 0\n"),
        ),
        (
            "seed-fail-and-crash".into(),
            doc("TAP version 14\n1..3\n# Subtest: a\n    1..3\n    not ok 1 x # TODO later\n    not ok 2 y\n    # diag\nnot ok 1 a\n    ok 1 nested\nok 3 c # XFAIL\nBail out! panic\n# seed=7\n# shootdown: exit 3"),
        ),
        (
            "seed-misnumbered".into(),
            doc("KTAP version 1\n1..2\nok 2 b\nok 2 b\nok 3 c # timeout\nnot ok 4 d # ERROR setup\n1..0 # SKIP nothing\r\n"),
        ),
    ]
}

fn bootargs() -> Vec<(String, Vec<u8>)> {
    [
        ("seed-every-key", "ktest=mm.*,smmu seed=0x2a log=debug trace ktest.fail=0 ktest.crash=stack \
          edu.dma_mask=0xfffffff smmu.strategy=range smmu.skip_invalidate=0 sva.smp_rounds=2 \
          rounds=3 bench.pages=1,16"),
        ("seed-soak", "job=soak rounds=2 fault=all fault.seed=9 fault.rate=500 strategy=per_page"),
        ("seed-issue-13", "seed=abc log=bogus frobnicate=1 job=nonsense ktest=[ bench=zzz smmu.strategy=zzz rounds=-1"),
        ("seed-quotes", "  ktest=\"mm.*, smmu\"\t\"log=warn\" seed=\"7\" fault=\"unterminated"),
        ("seed-empty-and-bare", "seed= ktest= job trace= = =5 ktest.crash"),
        ("seed-pi-firmware", "coherent_pool=1M 8250.nr_uarts=1 snd_bcm2835.enable_headphones=0 \
          console=ttyS0,115200 console=tty1 root=PARTUUID=1234-02 rootfstype=ext4 rootwait ktest=*"),
    ]
    .into_iter()
    .map(|(name, line)| (name.to_string(), line.as_bytes().to_vec()))
    .collect()
}

fn sdcl() -> Vec<(String, Vec<u8>)> {
    use shootdown_chainloader::protocol::{BootargsMode, Header};
    let mut kernel = vec![0u8; 4096];
    kernel[16..24].copy_from_slice(&0x2_0000u64.to_le_bytes());
    kernel[56..60].copy_from_slice(b"ARM\x64");
    let header = Header::for_payload(&kernel, b"ktest=boot.*", BootargsMode::Append)
        .expect("an Image")
        .encode();
    let mut session = header.to_vec();
    session.extend_from_slice(
        b"\r\nfirmware says hello\r\n@@SDCL READY 1 max=0x3c00000\r\n\
          @@SDCL ACK HEADER kernel=0x400000 dtb=0x430000\r\n\
          @@SDCL NAK 6 payload checksum 0x1234, expected 0xabcd\r\n\
          @@SDCL NAK 99 something new\r\n@@SDCL ACK DATA crc=0xcbf43926\r\n",
    );
    vec![("seed-session".into(), session)]
}

fn receiver() -> Vec<(String, Vec<u8>)> {
    use crate::receiver::script::{Fault, Op, Transfer};
    let write = |ops: &[Op]| {
        let mut o = Output::default();
        for op in ops {
            op.write(&mut o);
        }
        o.0
    };
    let clean = |mode| Transfer::clean(3000, mode, b"ktest=sva.*");
    let faulty = |fault| Op::Transfer(Transfer { fault, ..clean(1) });
    let mut every_fault = vec![Op::Transfer(clean(0)), Op::Transfer(clean(2))];
    every_fault.extend(
        [
            Fault::HeaderBit { at: 9, bit: 2 },
            Fault::PayloadBit { at: 2500, bit: 7 },
            Fault::PayloadCrc,
            Fault::Cut { at: 1500 },
            Fault::Version { flags: false },
            Fault::Version { flags: true },
            Fault::NotAnImage,
            Fault::SizeMismatch,
            Fault::ImageHeader(0),
            Fault::ImageHeader(1),
            Fault::ImageHeader(2),
            Fault::NulInArgs,
        ]
        .map(faulty),
    );
    // Lengths at and beyond every limit.
    every_fault.extend((0..9).map(|v| faulty(Fault::Limit(v))));
    let restarts = [
        Op::Noise(b"\x00\xffnoise SDC SDCL".to_vec()),
        Op::LineErrors(2),
        // The host gives up mid-payload and starts again at once: the rest is payload to the
        // loader, then a checksum mismatch.
        Op::Transfer(Transfer {
            pause: false,
            fault: Fault::Cut { at: 700 },
            ..clean(1)
        }),
        Op::Transfer(Transfer {
            pause: false,
            ..clean(1)
        }),
        Op::Silence,
        Op::Transfer(Transfer {
            pause: false,
            fault: Fault::Cut { at: 10 },
            ..clean(0)
        }),
        Op::Noise(b"SDCL".to_vec()),
    ];
    vec![
        ("seed-clean".into(), write(&[Op::Transfer(clean(1))])),
        ("seed-every-fault".into(), write(&every_fault)),
        ("seed-restarts".into(), write(&restarts)),
    ]
}
