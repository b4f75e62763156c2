#!/usr/bin/env bash
# Builds the Raspberry Pi 4 boot folder and a flashable SD card image (MBR + one FAT32
# partition) from Shootdown's build outputs and the Pi firmware. Used by `make sdcard`.
#
#   boot/rpi4/mksdcard.sh --out DIR --image FILE --kernel IMG --chainloader IMG --dtb DTB
#                         [--firmware DIR] [--boot kernel|chainloader] [--cmdline TEXT]
#
# Firmware (start4.elf, fixup4.dat) comes from --firmware DIR, else from Debian's
# raspi-firmware package (/usr/lib/raspi-firmware). It is never installed or downloaded here:
# raspi-firmware is in Debian's non-free-firmware component, arm64/armhf only, and its
# maintainer scripts manage /boot/firmware, which a build host should not get.
#
# The FAT tools (mtools, dosfstools) come from `qemu/install.sh fattools` (on Debian, under the
# set-up lock); with SHOOTDOWN_NO_INSTALL set (the tests), a missing tool is an error instead.
set -euo pipefail

say() { printf 'sdcard: %s\n' "$*" >&2; }
die() { printf 'sdcard: %s\n' "$*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
out="" image="" kernel="" chainloader="" dtb="" firmware="" boot=kernel cmdline=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --image) image=$2; shift 2 ;;
        --kernel) kernel=$2; shift 2 ;;
        --chainloader) chainloader=$2; shift 2 ;;
        --dtb) dtb=$2; shift 2 ;;
        --firmware) firmware=$2; shift 2 ;;
        --boot) boot=$2; shift 2 ;;
        --cmdline) cmdline=$2; shift 2 ;;
        *) die "unknown argument $1 (see the header of $0)" ;;
    esac
done
[ -n "$out" ] && [ -n "$image" ] && [ -n "$kernel" ] && [ -n "$chainloader" ] && [ -n "$dtb" ] ||
    die "usage: $0 --out DIR --image FILE --kernel IMG --chainloader IMG --dtb DTB [--firmware DIR] [--boot kernel|chainloader] [--cmdline TEXT]"
case "$boot" in
    kernel) boot_file=kernel8.img ;;
    chainloader) boot_file=chainloader.img ;;
    *) die "--boot must be kernel or chainloader, not '$boot'" ;;
esac
case "$cmdline" in *$'\n'*) die "--cmdline must be one line" ;; esac

# 1. Everything we need, and one message for everything that is missing.
if [ -z "$firmware" ] && [ -d /usr/lib/raspi-firmware ]; then
    firmware=/usr/lib/raspi-firmware
fi
missing=()
for f in "$kernel" "$chainloader" "$dtb"; do [ -s "$f" ] || missing+=("$f"); done
firmware_files=(start4.elf fixup4.dat)
for f in "${firmware_files[@]}"; do
    [ -n "$firmware" ] && [ -s "$firmware/$f" ] || missing+=("${firmware:-<no FIRMWARE dir>}/$f")
done
if [ ${#missing[@]} -gt 0 ]; then
    {
        echo "sdcard: missing: ${missing[*]}"
        echo "sdcard:   the Pi 4 firmware (start4.elf, fixup4.dat) is the boot/ folder of the"
        echo "sdcard:   raspberrypi/firmware repository, or /usr/lib/raspi-firmware from Debian's"
        echo "sdcard:   raspi-firmware package (non-free-firmware, arm64/armhf): pass it as"
        echo "sdcard:   make sdcard FIRMWARE=/path/to/boot. Kernel, chainloader and device tree"
        echo "sdcard:   come from make image, make chainloader and make dtb."
    } >&2
    exit 1
fi

# 2. The boot folder, rebuilt from scratch so that nothing stale is flashed.
rm -rf "$out"
mkdir -p "$out"
cp "$kernel" "$out/kernel8.img"
cp "$chainloader" "$out/chainloader.img"
cp "$dtb" "$out/bcm2711-rpi-4-b.dtb"
for f in "${firmware_files[@]}"; do cp "$firmware/$f" "$out/$f"; done
sed "s/@KERNEL@/$boot_file/" "$here/config.txt" > "$out/config.txt"
grep -q "^kernel=$boot_file\$" "$out/config.txt" || die "config.txt template lost its kernel= line"
# The firmware turns cmdline.txt into /chosen/bootargs (one line).
printf '%s\n' "$cmdline" > "$out/cmdline.txt"

# 3. The FAT tools.
need=()
fat_tools_ok() { command -v mcopy >/dev/null && { command -v mkfs.fat >/dev/null || [ -x /sbin/mkfs.fat ]; }; }
if ! fat_tools_ok; then
    # Tests set SHOOTDOWN_NO_INSTALL: they never install (parallel apt-get calls race on its
    # lock); `make test`'s set-up step installed the tools before any test ran.
    [ -z "${SHOOTDOWN_NO_INSTALL:-}" ] ||
        die "mcopy or mkfs.fat is missing: run \`bash qemu/install.sh fattools\` (make test's set-up does)"
    bash "$here/../../qemu/install.sh" fattools
    fat_tools_ok || die "mcopy or mkfs.fat is still missing"
fi

mkfs_fat=$(command -v mkfs.fat || echo /sbin/mkfs.fat)

# 4. The image: an MBR with one FAT32 partition holding the folder (boot/fatdisk.sh). The Pi 4
#    boot loader reads the first FAT partition of the card's MBR.
size_mib=64
bash "$here/../fatdisk.sh" --from "$out" --image "$image" --size-mib "$size_mib" --label SHOOTDOWN
say "wrote $out/ and $image (${size_mib} MiB: MBR + FAT32 at 1 MiB); booting $boot_file"
