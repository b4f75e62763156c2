//! Unit tests of the model on its own: a small rig programs it register by register (no
//! driver), so these tests pin the model's behaviour independently of the driver that the
//! integration tests (`kernel/tests/smmu_*.rs`) run on top of it.

use alloc::vec::Vec;

use super::dma::{DmaEngine, DmaError, FaultPolicy};
use super::iotlb::{IotlbConfig, Replacement};
use super::*;
use crate::iommu::spec::cd::{CdFields, ContextDescriptor};
use crate::iommu::spec::command::{opcode, Granule, SyncSignal, TlbiRange};
use crate::iommu::spec::event::EVENT_WORDS;
use crate::iommu::spec::queue::QueueGeometry;
use crate::iommu::spec::ste::Ste;
use crate::iommu::fake::{LeafAttrs, PhysArena, TestPageTables};
use crate::mm::phys::FrameAllocator;

const SID: u32 = 5;
const ASID: u16 = 9;

struct Rig<'a> {
    mem: &'a PhysArena,
    smmu: SmmuModel<'a>,
    strtab: PhysAddr,
    cmdq: PhysAddr,
    cmdq_geo: QueueGeometry,
    evtq: PhysAddr,
    evtq_geo: QueueGeometry,
    prod: core::cell::Cell<u32>,
    cons: core::cell::Cell<u32>,
}

fn arena() -> PhysArena {
    PhysArena::new(PhysAddr(0x4000_0000), 128).unwrap()
}

impl<'a> Rig<'a> {
    fn new(mem: &'a PhysArena, cfg: ModelConfig, evtq_log2: u8) -> Self {
        let smmu = SmmuModel::new(mem, cfg).unwrap();
        let strtab = mem.alloc_zeroed().unwrap();
        let cmdq = mem.alloc_zeroed().unwrap();
        let evtq = mem.alloc_zeroed().unwrap();
        smmu.write64(offset::STRTAB_BASE, strtab.as_u64());
        smmu.write32(offset::STRTAB_BASE_CFG, 6); // 64 STEs, linear
        smmu.write64(offset::CMDQ_BASE, cmdq.as_u64() | 8);
        smmu.write64(offset::EVENTQ_BASE, evtq.as_u64() | u64::from(evtq_log2));
        smmu.write32(offset::CR2, 1 << 1); // RECINVSID
        smmu.write32(offset::CR0, 0b1101); // SMMUEN | EVENTQEN | CMDQEN
        let cmdq_geo = QueueGeometry::new(8).unwrap();
        let evtq_geo = QueueGeometry::new(evtq_log2).unwrap();
        Self {
            mem,
            smmu,
            strtab,
            cmdq,
            cmdq_geo,
            evtq,
            evtq_geo,
            prod: 0.into(),
            cons: 0.into(),
        }
    }

    fn push_raw(&self, words: [u64; 2]) {
        let slot = self.cmdq.as_u64() + 16 * u64::from(self.cmdq_geo.index(self.prod.get()));
        physmem::store(self.mem, PhysAddr(slot), words[0], Ordering::Relaxed).unwrap();
        physmem::store(self.mem, PhysAddr(slot + 8), words[1], Ordering::Release).unwrap();
        self.prod.set(self.cmdq_geo.advance(self.prod.get(), 1));
        self.smmu.write32(offset::CMDQ_PROD, self.prod.get());
    }

    fn submit(&self, cmds: &[Command]) {
        for c in cmds {
            self.push_raw(c.encode().unwrap());
        }
    }

    fn write_ste(&self, sid: u32, ste: Ste) {
        for (i, w) in ste.0.iter().enumerate() {
            let pa = self.strtab.as_u64() + 64 * u64::from(sid) + 8 * i as u64;
            physmem::store(self.mem, PhysAddr(pa), *w, Ordering::Release).unwrap();
        }
    }

    fn write_cd(&self, cd_pa: PhysAddr, f: &CdFields) {
        for (i, w) in ContextDescriptor::encode(f).0.iter().enumerate() {
            physmem::store(
                self.mem,
                PhysAddr(cd_pa.as_u64() + 8 * i as u64),
                *w,
                Ordering::Release,
            )
            .unwrap();
        }
    }

    /// A stage-1 stream for `sid` over `tables`; returns the CD address.
    fn attach(&self, sid: u32, tables: &TestPageTables) -> PhysAddr {
        let cd = self.mem.alloc_zeroed().unwrap();
        self.write_cd(cd, &CdFields::sva(ASID, tables.root(), 48, 4, 0).unwrap());
        self.write_ste(sid, Ste::stage1(cd).unwrap());
        cd
    }

    fn events(&self) -> Vec<EventRecord> {
        let mut out = Vec::new();
        let prod_raw = self.smmu.read32(offset::EVENTQ_PROD);
        let prod = self.evtq_geo.ptr(prod_raw);
        while !self.evtq_geo.is_empty(prod, self.cons.get()) {
            let slot = self.evtq.as_u64() + 32 * u64::from(self.evtq_geo.index(self.cons.get()));
            let words = physmem::load_words::<EVENT_WORDS>(self.mem, PhysAddr(slot)).unwrap();
            out.push(EventRecord::decode(words));
            self.cons.set(self.evtq_geo.advance(self.cons.get(), 1));
        }
        // Acknowledge any overflow along with the new read index.
        self.smmu.write32(
            offset::EVENTQ_CONS,
            self.cons.get() | (prod_raw & EVENTQ_OVFLG),
        );
        out
    }

    fn cmdq_cons(&self) -> u32 {
        self.smmu.read32(offset::CMDQ_CONS)
    }

    fn gerror_active(&self) -> u32 {
        self.smmu.read32(offset::GERROR) ^ self.smmu.read32(offset::GERRORN)
    }
}

const TLBI_ASID: Command = Command::TlbiNhAsid {
    vmid: 0,
    asid: ASID,
};

/// An SMMU with a stage-1 stream `SID` over fresh tables.
fn stage1_rig(mem: &PhysArena) -> (Rig<'_>, TestPageTables<'_>) {
    let rig = Rig::new(mem, ModelConfig::default(), 4);
    let t = TestPageTables::new(mem).unwrap();
    rig.attach(SID, &t);
    (rig, t)
}

fn tlbi_va(addr: u64, range: Option<TlbiRange>) -> Command {
    Command::TlbiNhVa(TlbiVa {
        vmid: 0,
        asid: ASID,
        addr: VirtAddr(addr),
        leaf: false,
        range,
    })
}

fn pa_of(smmu: &SmmuModel, va: u64, access: AccessKind) -> Result<PhysAddr, FaultKind> {
    smmu.translate(SID, VirtAddr(va), access)
        .map(|t| t.pa)
        .map_err(|f| f.kind)
}

#[test]
fn tlbi_takes_effect_only_when_a_sync_completes() {
    let mem = arena();
    let rig = Rig::new(&mem, ModelConfig::default(), 4);
    let t = TestPageTables::new(&mem).unwrap();
    rig.attach(SID, &t);
    let (a, b) = (mem.alloc_zeroed().unwrap(), mem.alloc_zeroed().unwrap());
    t.map(VirtAddr(0x10_0000), a, LeafAttrs::RW).unwrap();
    assert_eq!(
        pa_of(&rig.smmu, 0x10_0010, AccessKind::Read),
        Ok(PhysAddr(a.as_u64() + 0x10))
    );
    assert_eq!(rig.smmu.stats().iotlb_misses, 1);

    t.remap(VirtAddr(0x10_0000), b).unwrap();
    rig.smmu
        .note_unmap(ASID, VirtAddr(0x10_0000), VirtAddr(0x10_1000), 42);
    rig.submit(&[tlbi_va(0x10_0000, None)]);
    assert_eq!(rig.smmu.pending_commands(), 1);
    // Consumed but not synchronised: the old frame is still used, and the checker says so.
    assert_eq!(pa_of(&rig.smmu, 0x10_0000, AccessKind::Read), Ok(a));
    let stale = rig.smmu.take_stale_translations();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].kind, checker::StaleKind::WrongFrame);
    assert_eq!(stale[0].asid, Some(ASID));
    assert_eq!(stale[0].used, Ok(a));
    assert_eq!(stale[0].fresh, Ok(b));
    assert_eq!(stale[0].last_unmap.map(|u| u.id), Some(42));

    rig.submit(&[Command::SYNC]);
    assert_eq!(rig.smmu.pending_commands(), 0);
    assert_eq!(pa_of(&rig.smmu, 0x10_0000, AccessKind::Read), Ok(b));
    assert!(rig.smmu.stale_translations().is_empty());
    let stats = rig.smmu.stats();
    assert_eq!(stats.syncs_completed, 1);
    assert_eq!(stats.iotlb_invalidated, 1);
    assert_eq!(
        stats
            .commands
            .get(crate::iommu::spec::command::CommandKind::TlbiNhVa),
        1
    );
    assert_eq!(stats.bad_register_accesses, 0);
}

#[test]
fn unmapped_page_faults_with_an_event_after_invalidation() {
    let mem = arena();
    let rig = Rig::new(&mem, ModelConfig::default(), 4);
    let t = TestPageTables::new(&mem).unwrap();
    rig.attach(SID, &t);
    let a = mem.alloc_zeroed().unwrap();
    t.map(VirtAddr(0x7000), a, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, 0x7000, AccessKind::Write).unwrap();
    t.unmap(VirtAddr(0x7000)).unwrap();
    rig.submit(&[tlbi_va(0x7000, None), Command::SYNC]);
    let f = rig
        .smmu
        .translate(SID, VirtAddr(0x7008), AccessKind::Write)
        .unwrap_err();
    assert_eq!(f.kind, FaultKind::Translation { level: 3 });
    assert!(f.recorded);
    let ev = rig.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].kind, ev[0].sid, ev[0].input_addr),
        (EventKind::Translation, SID, 0x7008)
    );
    assert_eq!(ev[0].access, AccessKind::Write);
}

#[test]
fn reserved_range_encoding_stops_the_queue_until_acknowledged() {
    let mem = arena();
    let rig = Rig::new(&mem, ModelConfig::default(), 4);
    // TG = 4K with NUM = SCALE = TTL = 0 (§4.4.1.1: CERROR_ILL).
    rig.push_raw([u64::from(opcode::TLBI_NH_VA), 0x1000 | 1 << 10]);
    rig.submit(&[Command::TlbiNsnhAll, Command::SYNC]);
    let cons = rig.cmdq_cons();
    assert_eq!(cons & 0xff_ffff, 0, "CONS stays on the failing command");
    assert_eq!(
        CommandErrorCode::from_raw((cons >> 24) as u8 & 0x7f),
        Some(CommandErrorCode::Illegal)
    );
    assert_eq!(rig.gerror_active(), GERROR_CMDQ_ERR);
    assert_eq!(
        rig.smmu.stats().syncs_completed,
        0,
        "nothing after the error ran"
    );
    // Recovery: overwrite the bad slot with a CMD_SYNC, then toggle GERRORN (§7.1).
    let w = Command::SYNC.encode().unwrap();
    physmem::store(&mem, rig.cmdq, w[0], Ordering::Relaxed).unwrap();
    physmem::store(
        &mem,
        PhysAddr(rig.cmdq.as_u64() + 8),
        w[1],
        Ordering::Release,
    )
    .unwrap();
    let gerror = rig.smmu.read32(offset::GERROR);
    rig.smmu.write32(offset::GERRORN, gerror);
    assert_eq!(rig.gerror_active(), 0);
    assert_eq!(rig.cmdq_cons(), 3, "the queue ran to the end, ERR cleared");
    assert_eq!(rig.smmu.stats().syncs_completed, 2);
    assert_eq!(rig.smmu.stats().command_errors, 1);
}

#[test]
fn tlbi_with_another_vmid_or_asid_leaves_the_entry() {
    let mem = arena();
    let rig = Rig::new(&mem, ModelConfig::default(), 4);
    let t = TestPageTables::new(&mem).unwrap();
    rig.attach(SID, &t);
    let a = mem.alloc_zeroed().unwrap();
    t.map(VirtAddr(0x3000), a, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, 0x3000, AccessKind::Read).unwrap();
    t.unmap(VirtAddr(0x3000)).unwrap();
    let wrong_vmid = Command::TlbiNhVa(TlbiVa {
        vmid: 1,
        asid: ASID,
        addr: VirtAddr(0x3000),
        leaf: true,
        range: None,
    });
    let wrong_asid = Command::TlbiNhAsid {
        vmid: 0,
        asid: ASID + 1,
    };
    let neighbour = tlbi_va(0x4000, None);
    rig.submit(&[wrong_vmid, wrong_asid, neighbour, Command::SYNC]);
    assert_eq!(
        pa_of(&rig.smmu, 0x3000, AccessKind::Read),
        Ok(a),
        "still cached (stale)"
    );
    assert_eq!(
        rig.smmu.take_stale_translations()[0].kind,
        checker::StaleKind::UseAfterUnmap
    );
    rig.submit(&[
        Command::TlbiNhVaa(TlbiVa {
            vmid: 0,
            asid: 0,
            addr: VirtAddr(0x3000),
            leaf: true,
            range: None,
        }),
        Command::SYNC,
    ]);
    assert_eq!(
        pa_of(&rig.smmu, 0x3000, AccessKind::Read),
        Err(FaultKind::Translation { level: 3 })
    );
}

#[test]
fn ttl_hint_limits_a_range_invalidation_to_its_level() {
    let mem = arena();
    let rig = Rig::new(&mem, ModelConfig::default(), 4);
    let t = TestPageTables::new(&mem).unwrap();
    rig.attach(SID, &t);
    t.map_block_2m(VirtAddr(0x20_0000), PhysAddr(0x4020_0000), LeafAttrs::RW)
        .unwrap();
    t.map(VirtAddr(0x40_0000), PhysAddr(0x4000_0000), LeafAttrs::RW)
        .unwrap();
    pa_of(&rig.smmu, 0x20_0000, AccessKind::Read).unwrap();
    pa_of(&rig.smmu, 0x40_0000, AccessKind::Read).unwrap();
    // 1024 pages from 0x200000 at TTL = 3: only the level-3 page goes.
    let r = TlbiRange::new(Granule::K4, 0, 10, 3).unwrap();
    rig.submit(&[tlbi_va(0x20_0000, Some(r)), Command::SYNC]);
    let tags: Vec<_> = rig
        .smmu
        .iotlb_entries()
        .iter()
        .map(|(t, _)| t.size_log2)
        .collect();
    assert_eq!(tags, [21]);
    // TTL = 0 takes blocks too; a range TLBI for another granule takes nothing.
    let other_tg = TlbiRange::new(Granule::K64, 0, 1, 0).unwrap();
    rig.submit(&[tlbi_va(0x20_0000, Some(other_tg)), Command::SYNC]);
    assert_eq!(rig.smmu.iotlb_entries().len(), 1);
    let r = TlbiRange::new(Granule::K4, 0, 1, 0).unwrap();
    rig.submit(&[tlbi_va(0x3f_f000, Some(r)), Command::SYNC]);
    assert!(
        rig.smmu.iotlb_entries().is_empty(),
        "a range touching the block's last page takes it"
    );
}

#[test]
fn event_queue_overflow_toggles_ovflg_once_per_acknowledgement() {
    let mem = arena();
    let rig = Rig::new(&mem, ModelConfig::default(), 1); // 2 entries
    let t = TestPageTables::new(&mem).unwrap();
    rig.attach(SID, &t);
    for i in 0..5 {
        assert!(pa_of(&rig.smmu, 0x1000 * i, AccessKind::Read).is_err());
    }
    let prod = rig.smmu.read32(offset::EVENTQ_PROD);
    assert_ne!(prod & EVENTQ_OVFLG, 0, "overflow flagged");
    let s = rig.smmu.stats();
    assert_eq!((s.events_recorded, s.events_lost), (2, 3));
    let ev = rig.events(); // drains and acknowledges
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1].input_addr, 0x1000);
    for i in 0..3 {
        let _ = pa_of(&rig.smmu, 0x1000 * i, AccessKind::Read);
    }
    let prod2 = rig.smmu.read32(offset::EVENTQ_PROD);
    assert_eq!(
        prod2 & EVENTQ_OVFLG,
        0,
        "a new overflow toggles the flag back"
    );
}

#[test]
fn configuration_faults_and_aborts() {
    let mem = arena();
    let rig = Rig::new(&mem, ModelConfig::default(), 4);
    // No STE (V = 0): C_BAD_STE.
    let f = rig
        .smmu
        .translate(3, VirtAddr(0x1000), AccessKind::Read)
        .unwrap_err();
    assert_eq!(f.kind, FaultKind::BadSte(BadSte::Invalid));
    // Out of the 64-entry table: C_BAD_STREAMID (RECINVSID is set).
    let f = rig
        .smmu
        .translate(64, VirtAddr(0x1000), AccessKind::Read)
        .unwrap_err();
    assert_eq!(f.kind, FaultKind::BadStreamId);
    // Abort STE: silent. Bypass STE: identity.
    rig.write_ste(4, Ste::abort());
    let f = rig
        .smmu
        .translate(4, VirtAddr(0x1000), AccessKind::Read)
        .unwrap_err();
    assert_eq!(
        f,
        TranslationFault {
            kind: FaultKind::StreamAbort,
            recorded: false
        }
    );
    rig.write_ste(6, Ste::bypass());
    assert_eq!(
        rig.smmu
            .translate(6, VirtAddr(0x4000_1234), AccessKind::Write)
            .unwrap()
            .pa,
        PhysAddr(0x4000_1234)
    );
    // A CD with A = 0: C_BAD_CD.
    let t = TestPageTables::new(&mem).unwrap();
    let cd = rig.attach(SID, &t);
    rig.write_cd(
        cd,
        &CdFields {
            a: false,
            ..CdFields::sva(ASID, t.root(), 48, 4, 0).unwrap()
        },
    );
    let f = rig
        .smmu
        .translate(SID, VirtAddr(0x1000), AccessKind::Read)
        .unwrap_err();
    assert!(matches!(f.kind, FaultKind::BadCd(BadCd::AbortDisabled)));
    let kinds: Vec<_> = rig.events().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::BadSte, EventKind::BadStreamId, EventKind::BadCd]
    );
    // Without RECINVSID a bad StreamID is not recorded.
    rig.smmu.write32(offset::CR2, 0);
    assert!(
        !rig.smmu
            .translate(100, VirtAddr(0), AccessKind::Read)
            .unwrap_err()
            .recorded
    );
}

#[test]
fn disabled_smmu_bypasses_or_aborts_by_gbpa() {
    let mem = arena();
    let smmu = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    assert_eq!(
        smmu.translate(1, VirtAddr(0x1234), AccessKind::Read)
            .unwrap()
            .pa,
        PhysAddr(0x1234)
    );
    smmu.write32(offset::GBPA, 1 << 20); // no UPDATE: ignored
    assert!(smmu
        .translate(1, VirtAddr(0x1234), AccessKind::Read)
        .is_ok());
    smmu.write32(offset::GBPA, 1 << 31 | 1 << 20);
    assert_eq!(
        smmu.read32(offset::GBPA),
        1 << 20,
        "UPDATE completes at once"
    );
    let f = smmu
        .translate(1, VirtAddr(0x1234), AccessKind::Read)
        .unwrap_err();
    assert_eq!(
        f,
        TranslationFault {
            kind: FaultKind::GlobalAbort,
            recorded: false
        }
    );
}

#[test]
fn permissions_access_flag_and_quiesced_context() {
    let mem = arena();
    let rig = Rig::new(&mem, ModelConfig::default(), 4);
    let t = TestPageTables::new(&mem).unwrap();
    let cd = rig.attach(SID, &t);
    let a = mem.alloc_zeroed().unwrap();
    t.map(VirtAddr(0x1000), a, LeafAttrs::RO).unwrap();
    t.map(
        VirtAddr(0x2000),
        a,
        LeafAttrs {
            writable: true,
            accessed: false,
            global: false,
        },
    )
    .unwrap();
    assert_eq!(pa_of(&rig.smmu, 0x1000, AccessKind::Read), Ok(a));
    assert_eq!(
        pa_of(&rig.smmu, 0x1000, AccessKind::Write),
        Err(FaultKind::Permission { level: 3 })
    );
    assert_eq!(
        pa_of(&rig.smmu, 0x2000, AccessKind::Read),
        Err(FaultKind::AccessFlag { level: 3 })
    );
    let kinds: Vec<_> = rig.events().iter().map(|e| (e.kind, e.access)).collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Permission, AccessKind::Write),
            (EventKind::Access, AccessKind::Read)
        ]
    );
    // Quiesce: EPD0 = 1, R = 0, CFGI_CD + TLBI_NH_ASID + SYNC: quiet faults.
    let f = CdFields::sva(ASID, t.root(), 48, 4, 0).unwrap().quiesced();
    rig.write_cd(cd, &f);
    rig.submit(&[
        Command::CfgiCd {
            sid: SID,
            ssid: 0,
            leaf: true,
        },
        Command::TlbiNhAsid {
            vmid: 0,
            asid: ASID,
        },
        Command::SYNC,
    ]);
    let f = rig
        .smmu
        .translate(SID, VirtAddr(0x1000), AccessKind::Read)
        .unwrap_err();
    assert_eq!(
        f,
        TranslationFault {
            kind: FaultKind::Translation { level: 0 },
            recorded: false
        }
    );
    assert!(rig.events().is_empty());
    assert!(rig.smmu.stale_translations().is_empty());
}

/// A stage-1 rig whose device read `0x1000`, mapped to the returned frame: STE, CD and leaf
/// are cached. Also returns the CD's address.
fn used_rig(mem: &PhysArena) -> (Rig<'_>, TestPageTables<'_>, PhysAddr, PhysAddr) {
    let rig = Rig::new(mem, ModelConfig::default(), 4);
    let t = TestPageTables::new(mem).unwrap();
    let cd = rig.attach(SID, &t);
    let a = mem.alloc_zeroed().unwrap();
    t.map(VirtAddr(0x1000), a, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, 0x1000, AccessKind::Read).unwrap();
    (rig, t, cd, a)
}

/// Writes the quiesced CD (walks disabled), as release does; invalidates nothing.
fn quiesce_cd(rig: &Rig, t: &TestPageTables, cd: PhysAddr) {
    rig.write_cd(
        cd,
        &CdFields::sva(ASID, t.root(), 48, 4, 0).unwrap().quiesced(),
    );
}

#[test]
fn config_change_without_cfgi_is_stale() {
    let mem = arena();
    let (rig, t, cd, a) = used_rig(&mem);
    // Quiesce the CD and flush the IOTLB but forget the CFGI: the cached CD still walks.
    quiesce_cd(&rig, &t, cd);
    rig.submit(&[TLBI_ASID, Command::SYNC]);
    assert_eq!(pa_of(&rig.smmu, 0x1000, AccessKind::Read), Ok(a));
    let stale = rig.smmu.take_stale_translations();
    assert_eq!(stale[0].source, checker::StaleSource::Config);
    assert_eq!(stale[0].kind, checker::StaleKind::UseAfterUnmap);
    // The stale walk refilled the IOTLB too, so the fix needs both invalidations.
    rig.submit(&[
        Command::CfgiSte {
            sid: SID,
            leaf: true,
        },
        Command::TlbiNhAsid {
            vmid: 0,
            asid: ASID,
        },
        Command::SYNC,
    ]);
    assert!(pa_of(&rig.smmu, 0x1000, AccessKind::Read).is_err());
    assert!(rig.smmu.stale_translations().is_empty());
}

#[test]
fn knobs_stall_and_fail_commands() {
    let mem = arena();
    let rig = Rig::new(&mem, ModelConfig::default(), 4);
    rig.smmu.set_knobs(Knobs {
        stall_sync: true,
        ..Knobs::default()
    });
    rig.submit(&[Command::TlbiNsnhAll, Command::SYNC]);
    assert_eq!(rig.cmdq_cons(), 1, "stuck on the CMD_SYNC");
    rig.smmu.set_knobs(Knobs::default());
    assert_eq!(rig.cmdq_cons(), 2, "released");
    rig.smmu.set_knobs(Knobs {
        stall_command_queue: true,
        ..Knobs::default()
    });
    rig.submit(&[Command::SYNC]);
    assert_eq!(rig.cmdq_cons(), 2);
    rig.smmu.set_knobs(Knobs {
        fail_command: Some((Some(opcode::SYNC), CommandErrorCode::Abort)),
        ..Knobs::default()
    });
    assert_eq!(rig.cmdq_cons() >> 24, 2, "CERROR_ABT on the SYNC");
    assert_eq!(rig.gerror_active(), GERROR_CMDQ_ERR);
    assert_eq!(rig.smmu.knobs().fail_command, None, "one-shot");
    rig.smmu
        .write32(offset::GERRORN, rig.smmu.read32(offset::GERROR));
    assert_eq!(
        rig.cmdq_cons(),
        3,
        "retried and completed after the acknowledgement"
    );
}

#[test]
fn registers_are_strict_and_cr0ack_can_lag() {
    let mem = arena();
    let smmu = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    assert_eq!(smmu.read32(0xa8), 0, "EVENTQ_PROD only exists on page 1");
    assert_eq!(smmu.stats().bad_register_accesses, 1);
    smmu.set_knobs(Knobs {
        cr0ack_lag: 2,
        ..Knobs::default()
    });
    smmu.write32(offset::CR0, 0b1000);
    assert_eq!(smmu.read32(offset::CR0ACK), 0);
    assert_eq!(smmu.read32(offset::CR0ACK), 0);
    assert_eq!(smmu.read32(offset::CR0ACK), 0b1000);
    // Base registers cannot move under an enabled queue.
    smmu.write64(offset::CMDQ_BASE, 0x1234_5000);
    assert_eq!(smmu.read64(offset::CMDQ_BASE), 0);
    assert_eq!(smmu.stats().bad_register_accesses, 2);
    let idr0 = smmu.read32(offset::IDR0);
    assert_eq!(idr0 & 0b11, 0b11, "S1P and S2P (VMID tagging)");
    assert_ne!(smmu.read32(offset::IDR3) & 1 << 10, 0, "RIL");
    assert_eq!(
        smmu.read32(offset::IDR5) & 0x77,
        0x14,
        "OAS 44, 4K granule only"
    );
    assert_eq!(
        SmmuModel::new(
            &mem,
            ModelConfig {
                oas: 7,
                ..ModelConfig::default()
            }
        )
        .err(),
        Some(ModelConfigError::Oas(7))
    );
}

#[test]
fn dma_engine_moves_bytes_and_reports_faults() {
    let mem = arena();
    let rig = Rig::new(&mem, ModelConfig::default(), 4);
    let t = TestPageTables::new(&mem).unwrap();
    rig.attach(SID, &t);
    let (a, b) = (mem.alloc_zeroed().unwrap(), mem.alloc_zeroed().unwrap());
    t.map(VirtAddr(0x10_0000), a, LeafAttrs::RW).unwrap();
    t.map(VirtAddr(0x10_1000), b, LeafAttrs::RW).unwrap();
    let dma = DmaEngine::new(&rig.smmu, SID);
    let data: Vec<u8> = (0..=255).cycle().take(0x1800).collect();
    dma.write(VirtAddr(0x10_0400), &data).unwrap();
    let mut back = alloc::vec![0; 0x1800];
    dma.read(VirtAddr(0x10_0400), &mut back).unwrap();
    assert_eq!(back, data);
    let mut direct = [0u8; 4];
    mem.read(PhysAddr(b.as_u64() + 0xbfc), &mut direct).unwrap();
    assert_eq!(direct[..], data[0x17fc..]);
    // Past the mapping: edu-like 4-byte transactions, one event per transaction.
    let edu = DmaEngine::new(&rig.smmu, SID)
        .with_transactions(4, FaultPolicy::Continue)
        .unwrap();
    let mut buf = [0xffu8; 32];
    let err = edu.read(VirtAddr(0x10_1ff0), &mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            DmaError::Fault {
                faulted: 4,
                bytes_done: 16,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(buf[16..], [0; 16], "faulting reads deliver zeros");
    assert_eq!(rig.events().len(), 4);
    assert_eq!(
        DmaEngine::new(&rig.smmu, SID)
            .with_transactions(3, FaultPolicy::Stop)
            .err(),
        Some(DmaError::BadAccessSize(3))
    );
    assert_eq!(
        dma.write(VirtAddr(u64::MAX - 1), &[0; 4]),
        Err(DmaError::AddressOverflow(VirtAddr(u64::MAX - 1)))
    );
}

#[test]
fn iotlb_policies_apply_in_the_model() {
    let mem = arena();
    let cfg = ModelConfig {
        iotlb: IotlbConfig {
            capacity: 2,
            replacement: Replacement::Lru,
        },
        ..ModelConfig::default()
    };
    let rig = Rig::new(&mem, cfg, 4);
    let t = TestPageTables::new(&mem).unwrap();
    rig.attach(SID, &t);
    for i in 1..=3u64 {
        t.map(
            VirtAddr(i << 12),
            PhysAddr(0x4000_0000 + (i << 12)),
            LeafAttrs::RW,
        )
        .unwrap();
    }
    for va in [0x1000, 0x2000, 0x1000, 0x3000, 0x1000] {
        pa_of(&rig.smmu, va, AccessKind::Read).unwrap();
    }
    let s = rig.smmu.stats();
    assert_eq!((s.iotlb_hits, s.iotlb_misses, s.iotlb_evictions), (2, 3, 1));
    assert_eq!(s.iotlb_hits_per_mille(), Some(400));
    let _ = SyncSignal::Sev; // all CMD_SYNC signals are accepted
}

#[test]
fn open_unmap_windows_turn_mismatches_into_allowed_races() {
    let mem = arena();
    let rig = Rig::new(&mem, ModelConfig::default(), 4);
    let t = TestPageTables::new(&mem).unwrap();
    rig.attach(SID, &t);
    let a = mem.alloc_zeroed().unwrap();
    t.map(VirtAddr(0x1000), a, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, 0x1000, AccessKind::Read).unwrap();
    // Unmap in progress: PTE cleared, invalidation not yet done — a hit is a race, not a bug.
    rig.smmu
        .begin_unmap(ASID, VirtAddr(0x1000), VirtAddr(0x2000), 7);
    t.unmap(VirtAddr(0x1000)).unwrap();
    assert_eq!(pa_of(&rig.smmu, 0x1000, AccessKind::Read), Ok(a));
    assert!(rig.smmu.stale_translations().is_empty());
    assert_eq!(rig.smmu.stats().raced_translations, 1);
    // The unmap "returns" without having invalidated: the next hit is a violation naming it.
    assert!(rig.smmu.end_unmap(7));
    assert!(!rig.smmu.end_unmap(7), "already closed");
    assert_eq!(pa_of(&rig.smmu, 0x1000, AccessKind::Read), Ok(a));
    let stale = rig.smmu.stale_translations();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].last_unmap.map(|u| u.id), Some(7));
    assert_eq!(rig.smmu.open_unmaps(), 0);
    // A window of another ASID does not cover it.
    rig.smmu
        .begin_unmap(ASID + 1, VirtAddr(0), VirtAddr(1 << 48), 8);
    pa_of(&rig.smmu, 0x1000, AccessKind::Read).unwrap();
    assert_eq!(rig.smmu.stats().stale_translations, 2);
    assert_eq!(rig.smmu.open_unmaps(), 1, "a run ending here must say so");
}

// ---- Issue 23: the model is at least as strict as hardware ----

/// A driver that publishes its TLBI before clearing the PTE (then syncs): the device refills
/// from the still-valid PTE after the TLBI was consumed. QEMU and hardware may act on the TLBI
/// at consumption, so the refilled entry survives the SYNC and the next use is stale.
#[test]
fn an_entry_filled_after_the_tlbi_was_consumed_survives_the_sync() {
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let a = mem.alloc_zeroed().unwrap();
    t.map(VirtAddr(0x3000), a, LeafAttrs::RW).unwrap();
    rig.submit(&[tlbi_va(0x3000, None)]);
    assert_eq!(pa_of(&rig.smmu, 0x3000, AccessKind::Read), Ok(a), "refill");
    t.unmap(VirtAddr(0x3000)).unwrap();
    rig.submit(&[Command::SYNC]);
    rig.smmu
        .note_unmap(ASID, VirtAddr(0x3000), VirtAddr(0x4000), 1);
    assert_eq!(pa_of(&rig.smmu, 0x3000, AccessKind::Read), Ok(a));
    let stale = rig.smmu.take_stale_translations();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].kind, checker::StaleKind::UseAfterUnmap);
    assert_eq!(stale[0].source, checker::StaleSource::Iotlb);
    // The right order (PTE first, then TLBI and SYNC) leaves nothing behind.
    t.map(VirtAddr(0x5000), a, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, 0x5000, AccessKind::Read).unwrap();
    t.unmap(VirtAddr(0x5000)).unwrap();
    rig.submit(&[tlbi_va(0x5000, None), Command::SYNC]);
    rig.smmu
        .note_unmap(ASID, VirtAddr(0x5000), VirtAddr(0x6000), 2);
    assert!(pa_of(&rig.smmu, 0x5000, AccessKind::Read).is_err());
    assert!(rig.smmu.stale_translations().is_empty());
}

/// The level-2 descriptor above `va`, as the model cached it.
fn cached_level2_step(smmu: &SmmuModel, va: u64) -> walk::TableStep {
    smmu.walk_cache_entries()
        .into_iter()
        .find(|(tag, _)| tag.level == 2 && tag.va_base == va & !0x1f_ffff)
        .map(|(_, e)| e.step)
        .expect("the walk cached its level-2 descriptor")
}

/// Frees the level-3 table under `va` (clearing the level-2 descriptor) and reuses its frame:
/// entry 0 now maps `reused_as`, or nothing. Returns the old table.
fn free_table(rig: &Rig, va: u64, reused_as: Option<PhysAddr>) -> PhysAddr {
    use crate::iommu::fake::desc;
    let l2 = cached_level2_step(&rig.smmu, va);
    physmem::store(rig.mem, l2.slot, 0, Ordering::Release).unwrap();
    let table = PhysAddr(l2.next_table);
    let pte = reused_as.map_or(0, |pa| {
        pa.as_u64() | desc::VALID | desc::TABLE_OR_PAGE | desc::AF | desc::NOT_GLOBAL
    });
    physmem::store(rig.mem, table, pte, Ordering::Release).unwrap();
    table
}

fn tlbi_va_leaf(addr: u64, leaf: bool) -> Command {
    Command::TlbiNhVa(TlbiVa {
        vmid: 0,
        asid: ASID,
        addr: VirtAddr(addr),
        leaf,
        range: None,
    })
}

/// Where the freed-table tests map: the first page of the second 2 MiB.
const VA: u64 = 0x20_0000;

/// A stage-1 rig whose device has walked to `VA`, after which the level-3 table under `VA` was
/// freed and its frame reused to map a new frame there. Returns (rig, tables, new frame).
fn walked_then_freed(mem: &PhysArena) -> (Rig<'_>, TestPageTables<'_>, PhysAddr) {
    let (rig, t) = stage1_rig(mem);
    let (a, b) = (mem.alloc_zeroed().unwrap(), mem.alloc_zeroed().unwrap());
    t.map(VirtAddr(VA), a, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, VA, AccessKind::Read).unwrap();
    free_table(&rig, VA, Some(b));
    (rig, t, b)
}

/// A driver that frees a table and invalidates with Leaf = 1: the walk cache keeps the
/// pointer to the freed table and the next walk goes through it.
#[test]
fn a_freed_table_invalidated_with_leaf_set_is_still_walked() {
    let mem = arena();
    let (rig, _t, b) = walked_then_freed(&mem);
    rig.submit(&[tlbi_va_leaf(VA, true), Command::SYNC]);
    rig.smmu
        .note_unmap(ASID, VirtAddr(VA), VirtAddr(VA + 0x20_0000), 1);
    assert_eq!(pa_of(&rig.smmu, VA, AccessKind::Read), Ok(b));
    let stale = rig.smmu.take_stale_translations();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].source, checker::StaleSource::WalkCache);
    assert_eq!(stale[0].kind, checker::StaleKind::UseAfterUnmap);
    assert!(rig.smmu.stats().walk_cache_hits >= 1);
    // Leaf = 0 drops the table pointer: the walk faults at level 2 like the tables say.
    rig.submit(&[tlbi_va_leaf(VA, false), Command::SYNC]);
    assert_eq!(
        pa_of(&rig.smmu, VA, AccessKind::Read),
        Err(FaultKind::Translation { level: 2 })
    );
    assert!(rig.smmu.stale_translations().is_empty());
}

/// A walk through a freed table that is merely zeroed ends like a fresh walk (a fault), but it
/// read memory that is no longer a table: still a stale use. A by-ASID invalidation drops
/// table entries too.
#[test]
fn a_walk_through_a_zeroed_freed_table_is_stale_even_when_it_faults() {
    const VA: u64 = 0x40_0000; // another level-3 table than the shared `VA`'s
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let a = mem.alloc_zeroed().unwrap();
    t.map(VirtAddr(VA), a, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, VA, AccessKind::Read).unwrap();
    free_table(&rig, VA, None);
    rig.submit(&[tlbi_va_leaf(VA, true), Command::SYNC]);
    assert_eq!(
        pa_of(&rig.smmu, VA, AccessKind::Read),
        Err(FaultKind::Translation { level: 3 }),
        "walked the freed table"
    );
    let stale = rig.smmu.take_stale_translations();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].kind, checker::StaleKind::StaleTable);
    rig.submit(&[TLBI_ASID, Command::SYNC]);
    assert_eq!(
        pa_of(&rig.smmu, VA, AccessKind::Read),
        Err(FaultKind::Translation { level: 2 })
    );
    assert!(rig.smmu.stale_translations().is_empty());
}

/// The driver's own planner with its `leaf` setting on, used for an unmap that freed a table:
/// per-page and range plans alike leave the table pointer in the walk cache; with the default
/// (Leaf = 0) they do not.
#[test]
fn the_planner_with_leaf_set_leaves_freed_tables_walkable() {
    use crate::iommu::driver::planner::{PlannerConfig, Strategy};
    for strategy in [Strategy::PerPage, Strategy::Range] {
        for leaf in [true, false] {
            let mem = arena();
            let (rig, _t, b) = walked_then_freed(&mem);
            let mut planner = PlannerConfig::new(strategy, true).unwrap();
            planner.leaf = leaf;
            let plan = planner
                .plan(ASID, VirtAddr(VA), VirtAddr(VA + 0x1000))
                .unwrap();
            rig.submit(&plan.commands().chain([Command::SYNC]).collect::<Vec<_>>());
            let used = pa_of(&rig.smmu, VA, AccessKind::Read);
            let stale = rig.smmu.take_stale_translations();
            if leaf {
                assert_eq!(used, Ok(b), "{strategy:?}");
                assert_eq!(stale.len(), 1, "{strategy:?}");
            } else {
                assert!(used.is_err() && stale.is_empty(), "{strategy:?}");
            }
        }
    }
}

/// A driver that changes an STE but sends only CFGI_CD: the SMMU keeps the cached STE.
#[test]
fn cfgi_cd_does_not_reload_a_changed_ste() {
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let a = mem.alloc_zeroed().unwrap();
    t.map(VirtAddr(0x1000), a, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, 0x1000, AccessKind::Read).unwrap();
    rig.write_ste(SID, Ste::abort());
    for cfgi in [
        Command::CfgiCd {
            sid: SID,
            ssid: 0,
            leaf: true,
        },
        Command::CfgiCdAll { sid: SID },
        // Another StreamID's STE, and a range that stops below SID 5 (4..=5 would cover it).
        Command::CfgiSte {
            sid: SID + 1,
            leaf: true,
        },
        Command::CfgiSteRange { sid: 2, range: 1 },
    ] {
        rig.submit(&[cfgi, TLBI_ASID, Command::SYNC]);
        assert_eq!(
            pa_of(&rig.smmu, 0x1000, AccessKind::Read),
            Ok(a),
            "{cfgi:?}"
        );
        let stale = rig.smmu.take_stale_translations();
        assert_eq!(stale.len(), 1, "{cfgi:?}");
        assert_eq!(stale[0].source, checker::StaleSource::Config);
        assert_eq!(stale[0].kind, checker::StaleKind::UseAfterUnmap);
    }
    rig.submit(&[Command::CfgiSteRange { sid: 4, range: 0 }, Command::SYNC]);
    assert_eq!(
        pa_of(&rig.smmu, 0x1000, AccessKind::Read),
        Err(FaultKind::StreamAbort)
    );
    assert!(rig.smmu.stale_translations().is_empty());
}

/// CFGI_STE drops the STE and the CDs fetched through it; CFGI_CD reloads just the CD.
#[test]
fn each_cfgi_drops_what_it_names() {
    let mem = arena();
    let rig = Rig::new(&mem, ModelConfig::default(), 4);
    let t = TestPageTables::new(&mem).unwrap();
    let cd = rig.attach(SID, &t);
    let a = mem.alloc_zeroed().unwrap();
    t.map(VirtAddr(0x1000), a, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, 0x1000, AccessKind::Read).unwrap();
    let quiet = CdFields::sva(ASID, t.root(), 48, 4, 0).unwrap().quiesced();
    // A CD change needs CFGI_CD (or anything wider).
    rig.write_cd(cd, &quiet);
    rig.submit(&[
        Command::CfgiCd {
            sid: SID,
            ssid: 0,
            leaf: true,
        },
        TLBI_ASID,
        Command::SYNC,
    ]);
    assert!(pa_of(&rig.smmu, 0x1000, AccessKind::Read).is_err());
    // A new STE pointing at a new CD: CFGI_STE alone reloads both.
    let cd2 = mem.alloc_zeroed().unwrap();
    rig.write_cd(cd2, &CdFields::sva(ASID, t.root(), 48, 4, 0).unwrap());
    rig.write_ste(SID, Ste::stage1(cd2).unwrap());
    rig.submit(&[
        Command::CfgiSte {
            sid: SID,
            leaf: true,
        },
        Command::SYNC,
    ]);
    assert_eq!(pa_of(&rig.smmu, 0x1000, AccessKind::Read), Ok(a));
    assert!(rig.smmu.stale_translations().is_empty());
}

/// An unmap that completed without its TLBI, then another unmap's open window over the same
/// VA: the entry dates from before the first unmap, so its use is that unmap's bug, not a race.
#[test]
fn an_open_window_does_not_excuse_an_earlier_missing_invalidation() {
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let (a, b) = (mem.alloc_zeroed().unwrap(), mem.alloc_zeroed().unwrap());
    t.map(VirtAddr(0x1000), a, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, 0x1000, AccessKind::Read).unwrap();
    // Unmap 1 skips its TLBI and returns.
    rig.smmu
        .begin_unmap(ASID, VirtAddr(0x1000), VirtAddr(0x2000), 1);
    t.unmap(VirtAddr(0x1000)).unwrap();
    assert!(rig.smmu.end_unmap(1));
    // Unmap 2 (say, of a larger range) is in progress when the device uses the entry.
    rig.smmu
        .begin_unmap(ASID, VirtAddr(0), VirtAddr(0x10_0000), 2);
    assert_eq!(pa_of(&rig.smmu, 0x1000, AccessKind::Read), Ok(a));
    let stale = rig.smmu.take_stale_translations();
    assert_eq!(stale.len(), 1, "not excused by window 2");
    assert_eq!(stale[0].last_unmap.map(|u| u.id), Some(1));
    assert!(rig.smmu.end_unmap(2));
    // An entry filled after the last completed unmap began is a genuine race.
    rig.submit(&[tlbi_va(0x1000, None), Command::SYNC]);
    t.map(VirtAddr(0x1000), b, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, 0x1000, AccessKind::Read).unwrap();
    rig.smmu
        .begin_unmap(ASID, VirtAddr(0x1000), VirtAddr(0x2000), 3);
    t.unmap(VirtAddr(0x1000)).unwrap();
    assert_eq!(pa_of(&rig.smmu, 0x1000, AccessKind::Read), Ok(b));
    assert!(rig.smmu.stale_translations().is_empty());
    assert_eq!(rig.smmu.stats().raced_translations, 1);
}

/// nG = 0: one entry serves every ASID and survives a by-ASID invalidation (Arm ARM D8.4.3,
/// SMMUv3 §4.4.2.2); a by-VA one of any ASID removes it.
#[test]
fn global_leaves_match_every_asid_and_survive_tlbi_by_asid() {
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let other_sid = SID + 1;
    let cd = mem.alloc_zeroed().unwrap();
    rig.write_cd(cd, &CdFields::sva(ASID + 1, t.root(), 48, 4, 0).unwrap());
    rig.write_ste(other_sid, Ste::stage1(cd).unwrap());
    let a = mem.alloc_zeroed().unwrap();
    let global = LeafAttrs {
        global: true,
        ..LeafAttrs::RW
    };
    t.map(VirtAddr(0x1000), a, global).unwrap();
    pa_of(&rig.smmu, 0x1000, AccessKind::Read).unwrap();
    let other = |smmu: &SmmuModel| smmu.translate(other_sid, VirtAddr(0x1000), AccessKind::Read);
    assert!(other(&rig.smmu).unwrap().iotlb_hit, "shared by ASID + 1");
    t.unmap(VirtAddr(0x1000)).unwrap();
    rig.submit(&[TLBI_ASID, Command::SYNC]);
    assert_eq!(pa_of(&rig.smmu, 0x1000, AccessKind::Read), Ok(a));
    assert_eq!(rig.smmu.take_stale_translations().len(), 1);
    // TLBI_NH_VA names ASID + 1, yet removes the global entry.
    rig.submit(&[
        Command::TlbiNhVa(TlbiVa {
            vmid: 0,
            asid: ASID + 1,
            addr: VirtAddr(0x1000),
            leaf: true,
            range: None,
        }),
        Command::SYNC,
    ]);
    assert!(pa_of(&rig.smmu, 0x1000, AccessKind::Read).is_err());
    assert!(rig.smmu.stale_translations().is_empty());
}

/// A read-only entry cached before an upgrade makes a write fault: counted apart from stale
/// uses.
#[test]
fn spurious_faults_are_counted_apart_from_stale_uses() {
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let a = mem.alloc_zeroed().unwrap();
    t.map(VirtAddr(0x1000), a, LeafAttrs::RO).unwrap();
    pa_of(&rig.smmu, 0x1000, AccessKind::Read).unwrap();
    t.set_writable(VirtAddr(0x1000), true).unwrap();
    assert!(pa_of(&rig.smmu, 0x1000, AccessKind::Write).is_err());
    let stats = rig.smmu.stats();
    assert_eq!((stats.spurious_faults, stats.stale_translations), (1, 0));
    let stale = rig.smmu.take_stale_translations();
    assert_eq!(stale[0].kind, checker::StaleKind::SpuriousFault);
}

/// The unmap that empties a level-3 table clears the level-2 descriptor, invalidates with
/// Leaf = 0 and only frees the table once the CMD_SYNC completed. Until then the walk cache may
/// still hold the pointer (§4.4: the TLBI takes effect by the SYNC), and a device access to
/// another page under that table — one whose own unmap finished long ago — walks the intact
/// table and faults at level 3: a race with the unmap in flight, whose table change spans the
/// whole 2 MiB, not a stale use (KTAP `sva.smp_unmaps_on_every_cpu_while_dma_runs`).
#[test]
fn a_walk_through_a_table_whose_unmap_is_in_flight_is_a_race() {
    let (p, q) = (VA, VA + 0x1000);
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let (a, b) = (mem.alloc_zeroed().unwrap(), mem.alloc_zeroed().unwrap());
    t.map(VirtAddr(p), a, LeafAttrs::RW).unwrap();
    t.map(VirtAddr(q), b, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, q, AccessKind::Read).unwrap();
    // Unmap 1: q, completed the right way.
    rig.smmu
        .begin_unmap(ASID, VirtAddr(q), VirtAddr(q + 0x1000), 1);
    t.unmap(VirtAddr(q)).unwrap();
    rig.submit(&[tlbi_va(q, None), Command::SYNC]);
    assert!(rig.smmu.end_unmap(1));
    // The device walks to p again: the level-2 descriptor is cached anew.
    assert_eq!(pa_of(&rig.smmu, p, AccessKind::Read), Ok(a));
    // Unmap 2: p, the table's last page. Entry cleared, table unlinked, TLBI consumed...
    rig.smmu
        .begin_unmap(ASID, VirtAddr(p), VirtAddr(p + 0x1000), 2);
    t.unmap(VirtAddr(p)).unwrap();
    let table = free_table(&rig, p, None);
    rig.submit(&[tlbi_va(p, None)]);
    // ...and before its CMD_SYNC the device touches q through the cached pointer.
    assert_eq!(
        pa_of(&rig.smmu, q, AccessKind::Write),
        Err(FaultKind::Translation { level: 3 })
    );
    assert!(
        rig.smmu.stale_translations().is_empty(),
        "{:?}",
        rig.smmu.stale_translations()
    );
    assert_eq!(rig.smmu.stats().raced_translations, 1);
    rig.submit(&[Command::SYNC]);
    assert!(rig.smmu.end_unmap(2));
    // Only now is the table freed (its frame reused): nothing reaches it any more.
    physmem::store(rig.mem, table, a.as_u64() | 0x703, Ordering::Release).unwrap();
    assert_eq!(
        pa_of(&rig.smmu, q, AccessKind::Write),
        Err(FaultKind::Translation { level: 2 })
    );
    assert!(rig.smmu.stale_translations().is_empty());
}

/// The twin: a table unlinked *before* the window opened (by an unmap that sent no Leaf = 0
/// invalidation) is not excused by a later window over the same table's span.
#[test]
fn a_window_does_not_excuse_a_table_unlinked_before_it_opened() {
    let (p, q) = (VA, VA + 0x1000);
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let a = mem.alloc_zeroed().unwrap();
    t.map(VirtAddr(p), a, LeafAttrs::RW).unwrap();
    pa_of(&rig.smmu, p, AccessKind::Read).unwrap();
    // Unmap 1 empties and unlinks the table, but invalidates with Leaf = 1.
    rig.smmu
        .begin_unmap(ASID, VirtAddr(p), VirtAddr(p + 0x1000), 1);
    t.unmap(VirtAddr(p)).unwrap();
    free_table(&rig, p, None);
    rig.submit(&[tlbi_va_leaf(p, true), Command::SYNC]);
    assert!(rig.smmu.end_unmap(1));
    // Unmap 2 of the neighbouring page is in flight when the device walks there.
    rig.smmu
        .begin_unmap(ASID, VirtAddr(q), VirtAddr(q + 0x1000), 2);
    assert_eq!(
        pa_of(&rig.smmu, q, AccessKind::Read),
        Err(FaultKind::Translation { level: 3 })
    );
    let stale = rig.smmu.take_stale_translations();
    assert_eq!(stale.len(), 1, "not excused by window 2");
    assert_eq!(stale[0].kind, checker::StaleKind::StaleTable);
    assert!(rig.smmu.end_unmap(2));
}

/// Release quiesces the CD inside a window over the whole address space. A device access
/// through the cached CD before the CFGI's CMD_SYNC completes is a race however old that CD
/// is: an unmap's TLBIs never remove configuration, so a CD cached before the last unmap of
/// the VA is no sign of a missed invalidation (KTAP `faults.soak_survives_every_fault_kind`,
/// the teardown race).
#[test]
fn a_cached_cd_older_than_the_last_unmap_races_its_own_change() {
    let mem = arena();
    let (rig, t, cd, _) = used_rig(&mem);
    let b = mem.alloc_zeroed().unwrap();
    rig.smmu
        .begin_unmap(ASID, VirtAddr(0x1000), VirtAddr(0x2000), 1);
    t.unmap(VirtAddr(0x1000)).unwrap();
    rig.submit(&[tlbi_va(0x1000, None), Command::SYNC]);
    assert!(rig.smmu.end_unmap(1));
    t.map(VirtAddr(0x1000), b, LeafAttrs::RW).unwrap();
    assert_eq!(pa_of(&rig.smmu, 0x1000, AccessKind::Write), Ok(b));
    // Release: the window opens, the CD is quiesced, the device writes before the CFGI_CD's
    // CMD_SYNC.
    rig.smmu
        .begin_unmap(ASID, VirtAddr(0), VirtAddr(1 << 47), 2);
    quiesce_cd(&rig, &t, cd);
    rig.submit(&[Command::CfgiCd {
        sid: SID,
        ssid: 0,
        leaf: true,
    }]);
    assert_eq!(pa_of(&rig.smmu, 0x1000, AccessKind::Write), Ok(b));
    assert!(
        rig.smmu.stale_translations().is_empty(),
        "{:?}",
        rig.smmu.stale_translations()
    );
    rig.submit(&[Command::SYNC, TLBI_ASID, Command::SYNC]);
    assert!(rig.smmu.end_unmap(2));
    assert!(pa_of(&rig.smmu, 0x1000, AccessKind::Write).is_err());
    assert!(rig.smmu.stale_translations().is_empty());
}

/// The twin: a CD changed without CFGI_CD before the window opened stays stale inside it.
#[test]
fn a_window_does_not_excuse_a_configuration_changed_before_it_opened() {
    let mem = arena();
    let (rig, t, cd, a) = used_rig(&mem);
    // Quiesced, invalidated by ASID only: the CD stays cached with walks enabled.
    quiesce_cd(&rig, &t, cd);
    rig.submit(&[TLBI_ASID, Command::SYNC]);
    // A later unmap's window (filled after no unmap: the old rule excused it).
    rig.smmu
        .begin_unmap(ASID, VirtAddr(0x1000), VirtAddr(0x2000), 1);
    assert_eq!(pa_of(&rig.smmu, 0x1000, AccessKind::Read), Ok(a));
    let stale = rig.smmu.take_stale_translations();
    assert_eq!(stale.len(), 1, "not excused by window 1");
    assert_eq!(stale[0].source, checker::StaleSource::Config);
    assert!(rig.smmu.end_unmap(1));
}

/// Takes the stale translations: exactly one, of `kind`, from `source` (`case` names the
/// variant in a failure).
fn take_one_stale(
    smmu: &SmmuModel,
    source: checker::StaleSource,
    kind: checker::StaleKind,
    case: &str,
) -> StaleTranslation {
    let stale = smmu.take_stale_translations();
    assert_eq!(stale.len(), 1, "{case}: {stale:?}");
    assert_eq!((stale[0].source, stale[0].kind), (source, kind), "{case}");
    stale[0]
}

/// Unlinking a table changes the walk of its whole span, so a window over one page of it
/// excuses a walk of a neighbouring page through the cached pointer that *faults* (the
/// `sva.smp` race above). A walk there that *reaches memory* went through a table still
/// mapping a page nobody is unmapping: the table was unlinked under a live page, or replaced
/// by another (a remap without Leaf = 0). No unmap in flight explains either.
#[test]
fn a_window_over_one_page_does_not_excuse_reaching_its_neighbour_through_a_changed_table() {
    use crate::iommu::fake::desc;
    let (p, q) = (VA, VA + 0x1000);
    for replaced in [false, true] {
        let mem = arena();
        let (rig, t) = stage1_rig(&mem);
        let [a, b, c] = [(); 3].map(|()| mem.alloc_zeroed().unwrap());
        t.map(VirtAddr(p), a, LeafAttrs::RW).unwrap();
        t.map(VirtAddr(q), b, LeafAttrs::RW).unwrap();
        // Caches the level-2 descriptor (and p's leaf, not q's).
        assert_eq!(pa_of(&rig.smmu, p, AccessKind::Read), Ok(a));
        rig.smmu
            .begin_unmap(ASID, VirtAddr(p), VirtAddr(p + 0x1000), 1);
        t.unmap(VirtAddr(p)).unwrap();
        let l2 = cached_level2_step(&rig.smmu, p);
        let now = if replaced {
            let table = mem.alloc_zeroed().unwrap();
            let pte = c.as_u64() | desc::VALID | desc::TABLE_OR_PAGE | desc::AF | desc::NOT_GLOBAL;
            physmem::store(
                rig.mem,
                PhysAddr(table.as_u64() + 8),
                pte,
                Ordering::Release,
            )
            .unwrap();
            table.as_u64() | desc::VALID | desc::TABLE_OR_PAGE
        } else {
            0
        };
        physmem::store(rig.mem, l2.slot, now, Ordering::Release).unwrap();
        assert_eq!(
            pa_of(&rig.smmu, q, AccessKind::Write),
            Ok(b),
            "walked the old table"
        );
        let kind = if replaced {
            checker::StaleKind::WrongFrame
        } else {
            checker::StaleKind::UseAfterUnmap
        };
        let case = alloc::format!("replaced: {replaced}");
        take_one_stale(&rig.smmu, checker::StaleSource::WalkCache, kind, &case);
        assert!(rig.smmu.end_unmap(1));
    }
}

/// An unmap takes translations away; it never gives a stream another context. A CD pointed
/// at other tables (TTB0 changed) without CFGI_CD is stale even inside a window over the
/// address: the device reaches the old tables' frame, whether the new tables map the address
/// elsewhere or not at all. (Release's quiesce, after which the CD translates nothing, stays
/// a race: `a_cached_cd_older_than_the_last_unmap_races_its_own_change`.)
#[test]
fn a_window_does_not_excuse_a_context_switched_to_other_tables() {
    for remapped in [false, true] {
        let mem = arena();
        let (rig, _t, cd, a) = used_rig(&mem);
        let other = TestPageTables::new(&mem).unwrap();
        let b = mem.alloc_zeroed().unwrap();
        if remapped {
            other.map(VirtAddr(0x1000), b, LeafAttrs::RW).unwrap();
        }
        rig.smmu
            .begin_unmap(ASID, VirtAddr(0x1000), VirtAddr(0x2000), 1);
        rig.write_cd(cd, &CdFields::sva(ASID, other.root(), 48, 4, 0).unwrap());
        // The leaf and table descriptors go; the CD stays cached.
        rig.submit(&[TLBI_ASID, Command::SYNC]);
        assert_eq!(pa_of(&rig.smmu, 0x1000, AccessKind::Write), Ok(a));
        let kind = if remapped {
            checker::StaleKind::WrongFrame
        } else {
            checker::StaleKind::UseAfterUnmap
        };
        let case = alloc::format!("remapped: {remapped}");
        take_one_stale(&rig.smmu, checker::StaleSource::Config, kind, &case);
        assert!(rig.smmu.end_unmap(1));
    }
}

/// A cached table descriptor is only as good as the ones above it: a level-2 descriptor still
/// in memory, in a level-2 table that was itself unlinked (level-1 descriptor cleared, then a
/// Leaf = 1 invalidation), still leads a walk to the old page. That walk is stale although the
/// descriptor it resumed from is unchanged, and a window opened after the unlink does not
/// excuse it.
#[test]
fn a_walk_below_an_unlinked_table_is_stale_though_its_own_descriptor_remains() {
    for window in [false, true] {
        let mem = arena();
        let (rig, t) = stage1_rig(&mem);
        let a = mem.alloc_zeroed().unwrap();
        t.map(VirtAddr(VA), a, LeafAttrs::RW).unwrap();
        pa_of(&rig.smmu, VA, AccessKind::Read).unwrap();
        let l1 = rig
            .smmu
            .walk_cache_entries()
            .into_iter()
            .find(|(tag, _)| tag.level == 1)
            .map(|(_, e)| e.step)
            .expect("the walk cached its level-1 descriptor");
        physmem::store(rig.mem, l1.slot, 0, Ordering::Release).unwrap();
        rig.submit(&[tlbi_va_leaf(VA, true), Command::SYNC]);
        if window {
            rig.smmu
                .begin_unmap(ASID, VirtAddr(VA), VirtAddr(VA + 0x1000), 1);
        }
        assert_eq!(
            pa_of(&rig.smmu, VA, AccessKind::Read),
            Ok(a),
            "resumed from the cached level-2 descriptor"
        );
        take_one_stale(
            &rig.smmu,
            checker::StaleSource::WalkCache,
            checker::StaleKind::UseAfterUnmap,
            &alloc::format!("window: {window}"),
        );
    }
}

/// Two unmaps of one page overlap: the later to begin clears the PTE and returns without
/// invalidating, the earlier returns after it (nothing left to clear). Once both returned, a
/// leaf cached between their beginnings must be gone, so a third unmap's window does not
/// excuse it. Judging the leaf by the unmap that *completed* last (which began before the
/// leaf was cached) did.
#[test]
fn a_leaf_is_judged_by_the_latest_completed_unmap_to_begin() {
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let a = mem.alloc_zeroed().unwrap();
    t.map(VirtAddr(VA), a, LeafAttrs::RW).unwrap();
    let window = |id| {
        rig.smmu
            .begin_unmap(ASID, VirtAddr(VA), VirtAddr(VA + 0x1000), id)
    };
    window(1);
    assert_eq!(pa_of(&rig.smmu, VA, AccessKind::Read), Ok(a));
    window(2);
    t.unmap(VirtAddr(VA)).unwrap();
    assert!(rig.smmu.end_unmap(2));
    assert!(rig.smmu.end_unmap(1));
    window(3);
    assert_eq!(pa_of(&rig.smmu, VA, AccessKind::Write), Ok(a));
    let stale = take_one_stale(
        &rig.smmu,
        checker::StaleSource::Iotlb,
        checker::StaleKind::UseAfterUnmap,
        "after both unmaps",
    );
    assert_eq!(stale.last_unmap.map(|u| u.id), Some(2));
    assert!(rig.smmu.end_unmap(3));
}

/// A PTE changed with no invalidation (and no unmap noted) before a window over the page
/// opened: the cached leaf was stale before the window, so the window cannot excuse it. With
/// no completed unmap of the VA to compare the leaf's age with, it was excused.
#[test]
fn a_window_does_not_excuse_a_leaf_already_stale_when_it_opened() {
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let (a, b) = (mem.alloc_zeroed().unwrap(), mem.alloc_zeroed().unwrap());
    t.map(VirtAddr(VA), a, LeafAttrs::RW).unwrap();
    assert_eq!(pa_of(&rig.smmu, VA, AccessKind::Read), Ok(a));
    t.remap(VirtAddr(VA), b).unwrap();
    // Say an mprotect of the page: its window opens over a leaf that is already stale.
    rig.smmu
        .begin_unmap(ASID, VirtAddr(VA), VirtAddr(VA + 0x1000), 1);
    assert_eq!(pa_of(&rig.smmu, VA, AccessKind::Write), Ok(a));
    take_one_stale(
        &rig.smmu,
        checker::StaleSource::Iotlb,
        checker::StaleKind::WrongFrame,
        "stale before the window",
    );
    assert!(rig.smmu.end_unmap(1));
}

/// A copier over the arena that records the chunks it was given (the stand-in for the Pi's DMA
/// controller), refusing chunks it cannot reach like the real one.
struct RecordingCopier<'a> {
    mem: &'a PhysArena,
    runs: spin::Mutex<Vec<Vec<crate::mm::dma::Chunk>>>,
}

impl<'a> RecordingCopier<'a> {
    fn new(mem: &'a PhysArena) -> Self {
        Self {
            mem,
            runs: spin::Mutex::new(Vec::new()),
        }
    }
}

impl crate::mm::dma::PhysCopier for RecordingCopier<'_> {
    fn copy(&self, chunks: &[crate::mm::dma::Chunk]) -> Result<(), crate::mm::dma::CopyError> {
        use crate::mm::dma::{CopyError, Source};
        for c in chunks {
            let mut bytes = alloc::vec![0u8; c.len];
            if let Source::Phys(pa) = c.src {
                self.mem
                    .read(pa, &mut bytes)
                    .map_err(|_| CopyError::Unreachable { pa, len: c.len })?;
            }
            self.mem.write(c.dst, &bytes).map_err(|_| CopyError::Unreachable {
                pa: c.dst,
                len: c.len,
            })?;
        }
        self.runs.lock().push(chunks.to_vec());
        Ok(())
    }

    fn name(&self) -> alloc::string::String {
        "recording copier".into()
    }

    fn reach(&self) -> PhysAddr {
        PhysAddr(u64::MAX)
    }
}

#[test]
fn copier_engine_chains_a_chunk_per_page_and_reports_faults() {
    use super::master::CopierEngine;
    use crate::mm::dma::{Chunk, Source};
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let [a, b, buffer] = [(); 3].map(|()| mem.alloc_zeroed().unwrap());
    t.map(VirtAddr(0x10_0000), a, LeafAttrs::RW).unwrap();
    t.map(VirtAddr(0x10_1000), b, LeafAttrs::RW).unwrap();
    let copier = RecordingCopier::new(&mem);
    let dma = CopierEngine::new(&rig.smmu, &copier, SID);
    let data: Vec<u8> = (0..=255).cycle().take(0x800).collect();
    mem.write(buffer, &data).unwrap();
    dma.write(VirtAddr(0x10_0c00), buffer, data.len()).unwrap();
    // One run, one chunk per page: 0x400 bytes into a, then 0x400 into b.
    let run = copier.runs.lock().pop().unwrap();
    let expected = [
        Chunk {
            src: Source::Phys(buffer),
            dst: PhysAddr(a.as_u64() + 0xc00),
            len: 0x400,
        },
        Chunk {
            src: Source::Phys(PhysAddr(buffer.as_u64() + 0x400)),
            dst: b,
            len: 0x400,
        },
    ];
    assert_eq!(run, expected);
    let mut back = alloc::vec![0u8; 0x800];
    mem.read(PhysAddr(a.as_u64() + 0xc00), &mut back[..0x400]).unwrap();
    mem.read(b, &mut back[0x400..]).unwrap();
    assert_eq!(back, data);

    // Past the mapping: one event per 4-byte transaction; the read delivers zeros there.
    mem.fill_frame(buffer, 0xff).unwrap();
    mem.write(PhysAddr(b.as_u64() + 0xff0), &[7; 16]).unwrap();
    let err = dma.read(VirtAddr(0x10_1ff0), buffer, 32).unwrap_err();
    assert!(
        matches!(
            err,
            DmaError::Fault {
                faulted: 4,
                bytes_done: 16,
                ..
            }
        ),
        "{err}"
    );
    let mut got = [0xaau8; 32];
    mem.read(buffer, &mut got).unwrap();
    assert_eq!(got[..16], [7; 16]);
    assert_eq!(got[16..], [0; 16], "faulting reads deliver zeros");
    assert_eq!(rig.events().len(), 4);
    // A faulting write moves nothing there.
    copier.runs.lock().clear();
    let _ = dma.write(VirtAddr(0x10_1ff0), buffer, 32);
    let run = copier.runs.lock().pop().unwrap();
    assert_eq!(run.len(), 1);
    assert_eq!(run[0].len, 16);
}

#[test]
fn copier_engine_moves_the_old_frame_through_a_stale_iotlb_entry() {
    use super::master::CopierEngine;
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let [old, new, buffer] = [(); 3].map(|()| mem.alloc_zeroed().unwrap());
    mem.fill_frame(old, 0x0d).unwrap();
    mem.fill_frame(new, 0x4e).unwrap();
    t.map(VirtAddr(0x20_0000), old, LeafAttrs::RW).unwrap();
    let copier = RecordingCopier::new(&mem);
    let dma = CopierEngine::new(&rig.smmu, &copier, SID);
    dma.read(VirtAddr(0x20_0000), buffer, 64).unwrap(); // cached
    t.remap(VirtAddr(0x20_0000), new).unwrap(); // and no TLBI: the entry is stale
    dma.read(VirtAddr(0x20_0000), buffer, 64).unwrap();
    let mut got = [0u8; 64];
    mem.read(buffer, &mut got).unwrap();
    assert_eq!(got, [0x0d; 64], "the engine read the old frame");
    assert!(!rig.smmu.stale_translations().is_empty(), "the checker saw it");
    // After the TLBI and its CMD_SYNC the engine reads the new frame.
    rig.submit(&[TLBI_ASID, Command::SYNC]);
    dma.read(VirtAddr(0x20_0000), buffer, 64).unwrap();
    mem.read(buffer, &mut got).unwrap();
    assert_eq!(got, [0x4e; 64]);
}

/// A copier with the BCM2711 DMA controller's unit: it refuses chunks that are not whole
/// 32-bit words, as the driver does (`drivers::bcm2835_dma::chain::UNIT`).
struct WordCopier<'a>(RecordingCopier<'a>);

impl crate::mm::dma::PhysCopier for WordCopier<'_> {
    fn copy(&self, chunks: &[crate::mm::dma::Chunk]) -> Result<(), crate::mm::dma::CopyError> {
        use crate::mm::dma::{CopyError, Source};
        for c in chunks {
            let src = match c.src {
                Source::Phys(pa) => pa.as_u64(),
                Source::Zeros => 0,
            };
            if let Some(&addr) = [src, c.dst.as_u64(), c.len as u64]
                .iter()
                .find(|v| *v % 4 != 0)
            {
                return Err(CopyError::Unaligned {
                    addr,
                    len: c.len,
                    align: 4,
                });
            }
        }
        self.0.copy(chunks)
    }

    fn name(&self) -> alloc::string::String {
        "word copier".into()
    }

    fn reach(&self) -> PhysAddr {
        self.0.reach()
    }
}

/// A transfer the engine cannot carry out is refused whole, as the copier's contract says:
/// the SMMU must not see its transactions either (no events, nothing for the checker), or the
/// event queue reports faults of a transfer that never happened.
#[test]
fn copier_engine_refuses_partial_words_before_the_smmu_sees_them() {
    use super::master::CopierEngine;
    use crate::mm::dma::CopyError;
    let mem = arena();
    let (rig, t) = stage1_rig(&mem);
    let [a, buffer] = [(); 2].map(|()| mem.alloc_zeroed().unwrap());
    // 0x10_0000 is mapped, the page after it is not: each transfer below crosses into it.
    t.map(VirtAddr(0x10_0000), a, LeafAttrs::RW).unwrap();
    let copier = WordCopier(RecordingCopier::new(&mem));
    let dma = CopierEngine::new(&rig.smmu, &copier, SID);
    let odd_buffer = PhysAddr(buffer.as_u64() + 2);
    for (va, buf, len) in [
        (0x10_0ff2, buffer, 16),
        (0x10_0ff0, buffer, 18),
        (0x10_0ff0, odd_buffer, 32),
    ] {
        for r in [
            dma.read(VirtAddr(va), buf, len),
            dma.write(VirtAddr(va), buf, len),
        ] {
            let err = r.unwrap_err();
            assert!(
                matches!(err, DmaError::Copy(CopyError::Unaligned { align: 4, .. })),
                "{va:#x}+{len} via {buf}: {err}"
            );
        }
    }
    assert!(
        copier.0.runs.lock().is_empty(),
        "nothing reached the copier"
    );
    assert_eq!(
        rig.events().len(),
        0,
        "the SMMU saw transactions of refused transfers"
    );
}
