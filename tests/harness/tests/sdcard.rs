//! `make sdcard`'s packaging (`boot/rpi4/mksdcard.sh`): the boot folder has every file the Pi 4
//! firmware needs, `config.txt` says what our images need, and the card image is an MBR with
//! one FAT32 partition holding exactly the folder.
//!
//! CI has no Broadcom firmware, so these use stand-in `start4.elf` / `fixup4.dat` files: the
//! check is about our packaging, not the blobs. They need `SHOOTDOWN_KERNEL`,
//! `SHOOTDOWN_CHAINLOADER` and `SHOOTDOWN_DTB`, so a plain `cargo test` lists them as ignored,
//! with that reason; `make test` builds the images, sets the variables and runs them
//! (`--include-ignored`), where a missing input fails. The FAT tools come from `make test`'s
//! set-up step (`qemu/install.sh fattools`): the script is told not to install anything.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn artifact(var: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .unwrap_or_else(|| panic!("set {var} (`make test` does): this test cannot run without it"));
    let p = repo_root().join(p);
    assert!(p.is_file(), "{var}={} does not exist", p.display());
    p
}

struct Inputs {
    kernel: PathBuf,
    chainloader: PathBuf,
    dtb: PathBuf,
}

fn inputs() -> Inputs {
    Inputs {
        kernel: artifact("SHOOTDOWN_KERNEL"),
        chainloader: artifact("SHOOTDOWN_CHAINLOADER"),
        dtb: artifact("SHOOTDOWN_DTB"),
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sdcard-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn fake_firmware(dir: &Path) -> PathBuf {
    let fw = dir.join("firmware");
    fs::create_dir_all(&fw).unwrap();
    for f in ["start4.elf", "fixup4.dat"] {
        fs::write(fw.join(f), format!("stand-in {f} for the packaging test\n")).unwrap();
    }
    fw
}

fn mksdcard(i: &Inputs, dir: &Path, extra: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join("boot/rpi4/mksdcard.sh"))
        .arg("--out")
        .arg(dir.join("sdcard"))
        .arg("--image")
        .arg(dir.join("sdcard.img"))
        .arg("--kernel")
        .arg(&i.kernel)
        .arg("--chainloader")
        .arg(&i.chainloader)
        .arg("--dtb")
        .arg(&i.dtb)
        .args(extra)
        // Tests never install: the set-up step did, once, under one lock.
        .env("SHOOTDOWN_NO_INSTALL", "1")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `key=value` lines of config.txt (comments, blanks and `[filters]` skipped); a key given
/// twice is an error, since the firmware would silently take one of them.
fn config(path: &Path) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in fs::read_to_string(path).unwrap().lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        assert!(
            map.insert(k.to_string(), v.to_string()).is_none(),
            "{k} set twice"
        );
    }
    map
}

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
}

/// A file from inside the card image's FAT partition (at 1 MiB), read with mtools.
fn from_image(image: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@1M", image.display()))
        .arg(format!("::/{name}"))
        .arg("-")
        .output()
        .expect("mcopy (mtools) runs: mksdcard.sh installs it");
    assert!(
        out.status.success(),
        "{name} not in the image: {}",
        text(&out)
    );
    out.stdout
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn the_boot_folder_and_card_image_hold_what_the_pi_needs() {
    let i = inputs();
    let dir = scratch("ok");
    let fw = fake_firmware(&dir);
    let out = mksdcard(
        &i,
        &dir,
        &[
            "--firmware",
            fw.to_str().unwrap(),
            "--boot",
            "chainloader",
            "--cmdline",
            "ktest=boot.* seed=1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let card = dir.join("sdcard");

    // Every file, byte for byte from its source.
    let expect: [(&str, PathBuf); 5] = [
        ("kernel8.img", i.kernel.clone()),
        ("chainloader.img", i.chainloader.clone()),
        ("bcm2711-rpi-4-b.dtb", i.dtb.clone()),
        ("start4.elf", fw.join("start4.elf")),
        ("fixup4.dat", fw.join("fixup4.dat")),
    ];
    for (name, src) in &expect {
        assert_eq!(
            fs::read(card.join(name)).unwrap(),
            fs::read(src).unwrap(),
            "{name}"
        );
    }
    let mut names: Vec<String> = fs::read_dir(&card)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bcm2711-rpi-4-b.dtb",
            "chainloader.img",
            "cmdline.txt",
            "config.txt",
            "fixup4.dat",
            "kernel8.img",
            "start4.elf"
        ]
    );
    assert_eq!(
        fs::read_to_string(card.join("cmdline.txt")).unwrap(),
        "ktest=boot.* seed=1\n"
    );

    // config.txt: what our images need.
    let c = config(&card.join("config.txt"));
    assert_eq!(c["arm_64bit"], "1");
    assert_eq!(c["enable_uart"], "1");
    assert_eq!(
        c["init_uart_clock"], "48000000",
        "the kernel and loader assume a 48 MHz PL011 clock"
    );
    assert_eq!(c["kernel"], "chainloader.img");
    assert!(
        card.join(&c["device_tree"]).is_file(),
        "device_tree={} not on the card",
        c["device_tree"]
    );
    assert!(
        !c.contains_key("dtoverlay"),
        "an overlay the mainline tree cannot take"
    );
    // The load address follows booting.rst for both images: a 2 MiB-aligned base plus the
    // Image header's text_offset (offset 8), which must be 0 for that to hold.
    let base = hex(&c["kernel_address"]);
    assert_eq!(
        base % (2 << 20),
        0,
        "kernel_address {base:#x} is not 2 MiB aligned"
    );
    for img in ["kernel8.img", "chainloader.img"] {
        let bytes = fs::read(card.join(img)).unwrap();
        assert_eq!(&bytes[56..60], b"ARM\x64", "{img} is not an arm64 Image");
        assert_eq!(
            u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
            0,
            "{img} text_offset"
        );
    }

    // The card image: MBR with one FAT32 LBA partition at 1 MiB spanning the rest, holding
    // exactly the folder.
    let image = dir.join("sdcard.img");
    let img = fs::read(&image).unwrap();
    assert_eq!(img.len(), 64 << 20);
    assert_eq!(&img[510..512], [0x55, 0xaa], "no MBR signature");
    let entry = &img[446..462];
    assert_eq!(entry[4], 0x0c, "partition type is not FAT32 (LBA)");
    let start = u32::from_le_bytes(entry[8..12].try_into().unwrap()) as usize;
    let sectors = u32::from_le_bytes(entry[12..16].try_into().unwrap()) as usize;
    assert_eq!((start, start + sectors), (2048, img.len() / 512));
    assert_eq!(
        &img[start * 512 + 82..start * 512 + 90],
        b"FAT32   ",
        "not a FAT32 boot sector"
    );
    assert!(img[462..510].iter().all(|&b| b == 0), "only one partition");
    for name in &names {
        assert_eq!(
            from_image(&image, name),
            fs::read(card.join(name)).unwrap(),
            "{name} in the image"
        );
    }
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn the_default_card_boots_the_kernel_and_a_rebuild_drops_stale_files() {
    let i = inputs();
    let dir = scratch("default");
    let fw = fake_firmware(&dir);
    let fw = fw.to_str().unwrap();
    assert!(mksdcard(&i, &dir, &["--firmware", fw]).status.success());
    fs::write(dir.join("sdcard/stale.txt"), "left over").unwrap();
    let out = mksdcard(&i, &dir, &["--firmware", fw]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dir.join("sdcard/stale.txt").exists());
    assert_eq!(
        config(&dir.join("sdcard/config.txt"))["kernel"],
        "kernel8.img"
    );
    assert_eq!(
        fs::read_to_string(dir.join("sdcard/cmdline.txt")).unwrap(),
        "\n"
    );
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn missing_firmware_is_listed_with_where_to_get_it() {
    let i = inputs();
    let dir = scratch("missing");
    let empty = dir.join("empty");
    fs::create_dir_all(&empty).unwrap();
    fs::write(empty.join("fixup4.dat"), "x").unwrap();
    let out = mksdcard(&i, &dir, &["--firmware", empty.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("missing:") && t.contains("start4.elf"), "{t}");
    assert!(
        !t.contains("empty/fixup4.dat"),
        "a present file is listed as missing: {t}"
    );
    assert!(t.contains("make sdcard FIRMWARE="), "{t}");
    assert!(t.contains("raspi-firmware"), "{t}");
    assert!(
        !dir.join("sdcard.img").exists(),
        "a card without firmware was written"
    );
    // A bad --boot is refused before anything is written.
    let out = mksdcard(
        &i,
        &dir,
        &["--firmware", empty.to_str().unwrap(), "--boot", "u-boot"],
    );
    assert!(
        text(&out).contains("--boot must be kernel or chainloader"),
        "{}",
        text(&out)
    );
}
