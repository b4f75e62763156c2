#!/usr/bin/env bash
# A disk U-Boot boots Shootdown from without typing: MBR + FAT32 holding `shootdown.img` and a
# `boot.scr` (made with mkimage from boot/uboot/boot.cmd, boot arguments filled in). Attach it
# to QEMU with `-bios u-boot.bin -drive if=virtio,format=raw,file=DISK`, or copy both files to
# the FAT partition of a Pi's card whose firmware starts U-Boot.
#
#   boot/uboot/mkdisk.sh --kernel IMG --out DIR [--image DISK] [--bootargs ARGS]
set -euo pipefail

die() { printf 'uboot: %s\n' "$*" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)

kernel="" out="" image="" bootargs=""
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) kernel=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --image) image=$2; shift 2 ;;
        --bootargs) bootargs=$2; shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done
[ -f "$kernel" ] || die "--kernel IMG: no kernel image ${kernel:-given} (make image)"
[ -n "$out" ] || die "--out DIR is required"
command -v mkimage >/dev/null || die "mkimage is missing: \`bash qemu/install.sh uboot\` installs u-boot-tools"
case "$bootargs" in *'"'*|*'\'*|*'$'*|*';'*) die "--bootargs must not hold \" \\ \$ or ;" ;; esac

rm -rf "$out" && mkdir -p "$out"
cp "$kernel" "$out/shootdown.img"
sed "s|@BOOTARGS@|$bootargs|" "$here/boot.cmd" > "$out/boot.cmd"
mkimage -A arm64 -O linux -T script -C none -n "Shootdown" -d "$out/boot.cmd" "$out/boot.scr" >/dev/null
rm "$out/boot.cmd"
if [ -n "$image" ]; then
    bash "$here/../fatdisk.sh" --from "$out" --image "$image" --size-mib 64 --label SHOOTDOWN
fi
printf 'uboot: wrote %s/boot.scr and shootdown.img%s\n' "$out" "${image:+, and $image}" >&2
