#!/usr/bin/env bash
# A disk image with an MBR and one FAT32 (LBA, type 0x0c) partition from 1 MiB to the end,
# holding the files of a folder: what the Pi 4's boot loader and U-Boot's distro boot read.
#
#   boot/fatdisk.sh --from DIR --image FILE [--size-mib N] [--label NAME]
#
# Needs mkfs.fat and mcopy (`qemu/install.sh fattools`); builds as an ordinary user, no loop
# devices or mounts.
set -euo pipefail

die() { printf 'fatdisk: %s\n' "$*" >&2; exit 1; }

from="" image="" size_mib=64 label=SHOOTDOWN
while [ $# -gt 0 ]; do
    case "$1" in
        --from) from=$2; shift 2 ;;
        --image) image=$2; shift 2 ;;
        --size-mib) size_mib=$2; shift 2 ;;
        --label) label=$2; shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done
[ -d "$from" ] || die "--from DIR: no folder ${from:-given}"
[ -n "$image" ] || die "--image FILE is required"
mkfs_fat=$(command -v mkfs.fat || echo /sbin/mkfs.fat)
[ -x "$mkfs_fat" ] && command -v mcopy >/dev/null ||
    die "mkfs.fat or mcopy is missing: \`bash qemu/install.sh fattools\` installs them"

part_start=2048                                   # sectors of 512 bytes: 1 MiB
part_sectors=$(( (size_mib << 11) - part_start ))
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$mkfs_fat" -F 32 -S 512 -s 1 -n "$label" -C "$tmp/part.img" $(( part_sectors / 2 )) >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -i "$tmp/part.img" -o "$from"/* ::/
# A 32-bit little-endian number as 4 raw bytes.
le32() {
    # shellcheck disable=SC2059 # the format is the bytes
    printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(( $1 & 255 )) $(( ($1 >> 8) & 255 )) \
        $(( ($1 >> 16) & 255 )) $(( ($1 >> 24) & 255 )))"
}
{
    head -c 446 /dev/zero
    # Partition entry 1: not active, CHS fields "beyond 8 GiB" (LBA is what counts), type 0x0c.
    printf '\x00\xfe\xff\xff\x0c\xfe\xff\xff'
    le32 "$part_start"
    le32 "$part_sectors"
    head -c 48 /dev/zero                          # entries 2-4 unused
    printf '\x55\xaa'                             # boot signature
} > "$tmp/mbr.bin"
[ "$(stat -c %s "$tmp/mbr.bin")" = 512 ] || die "internal error: the MBR is not 512 bytes"
mkdir -p "$(dirname "$image")"
rm -f "$image"
truncate -s "${size_mib}M" "$image"
dd if="$tmp/mbr.bin" of="$image" conv=notrunc status=none
dd if="$tmp/part.img" of="$image" bs=512 seek="$part_start" conv=notrunc status=none
