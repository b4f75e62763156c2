//! U-Boot's storage boot, as a user sets it up: `boot/uboot/mkdisk.sh` makes a disk with
//! `boot.scr` and the kernel, QEMU `virt` starts Debian's U-Boot (`-bios`), U-Boot's distro boot
//! finds the script on the virtio disk, loads the Image and `booti`s it with its own device
//! tree. The console must show U-Boot running the script, and the kernel's KTAP must pass with
//! the boot arguments the script set. (The other U-Boot path, `-kernel` through fw_cfg, is the
//! `virt-uboot` board of `make test-boards`.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const HARNESS: &str = env!("CARGO_BIN_EXE_harness");
const UBOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
const BOOTARGS: &str = "ktest=boot seed=5";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
#[ignore = "needs SHOOTDOWN_KERNEL, QEMU, u-boot-qemu, mkimage and the FAT tools: `make test` runs it with --include-ignored"]
fn u_boot_boots_the_kernel_from_a_disk_with_boot_scr() {
    let kernel = repo_root().join(std::env::var_os("SHOOTDOWN_KERNEL").expect(
        "set SHOOTDOWN_KERNEL (`make test` does): this test cannot run without it",
    ));
    assert!(Path::new(UBOOT).is_file(), "no {UBOOT}: `bash qemu/install.sh uboot`");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uboot-disk");
    let _ = fs::remove_dir_all(&dir);
    let disk = dir.join("disk.img");
    let made = Command::new("bash")
        .arg(repo_root().join("boot/uboot/mkdisk.sh"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--out")
        .arg(dir.join("files"))
        .arg("--image")
        .arg(&disk)
        // What QEMU gives below, so the boot tests check U-Boot's device-tree hand-off too.
        .args(["--bootargs", BOOTARGS])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let qemu = Command::new("timeout")
        .args(["120", "qemu-system-aarch64", "-M", "virt,gic-version=3", "-cpu", "max"])
        .args(["-m", "1G", "-smp", "2", "-nographic", "-nic", "none", "-semihosting"])
        .arg("-no-reboot")
        .args(["-bios", UBOOT, "-drive"])
        .arg(format!("if=virtio,format=raw,file={}", disk.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&qemu.stdout).into_owned();
    assert!(console.contains("Found U-Boot script /boot.scr"), "{console}");
    assert!(console.contains(&format!("bootargs {BOOTARGS}")), "{console}");
    let log = dir.join("console.log");
    fs::write(&log, &console).unwrap();
    let parsed = Command::new(HARNESS).arg("parse").arg(&log).output().unwrap();
    let verdict = String::from_utf8_lossy(&parsed.stdout);
    assert_eq!(parsed.status.code(), Some(0), "{verdict}\n{console}");
    assert!(verdict.contains("passed: 6, failed: 0"), "{verdict}");
    assert_eq!(qemu.status.code(), Some(0), "the kernel's exit status through semihosting");
}
