#!/usr/bin/env bash
# Builds the initramfs of `make bench-peer` from what `qemu/install.sh peer BUILD` unpacked:
# busybox-static (arm64), Debian's VFIO modules with their dependencies in load order, and
# vfio_unmap.c compiled static for aarch64. Nothing in it is committed.
#
#   tests/peer/mkinitramfs.sh --from BUILD/peer --out BUILD/peer/initramfs.cpio.gz
#
# Prints the kernel image's path (BUILD/peer/linux/boot/vmlinuz-*) on stdout.
set -euo pipefail

die() { printf 'mkinitramfs: %s\n' "$*" >&2; exit 1; }

from="" out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --from) from=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) die "usage: $0 --from BUILD/peer --out INITRAMFS" ;;
    esac
done
[ -s "$from/.installed" ] || die "$from is not set up: run \`make peer-setup\`"
here=$(cd "$(dirname "$0")" && pwd)
vmlinuz=$(find "$from/linux/boot" -name 'vmlinuz-*' | sort | tail -1)
modules=$(find "$from/linux/lib/modules" -mindepth 1 -maxdepth 1 -type d | sort | tail -1)
[ -n "$vmlinuz" ] && [ -n "$modules" ] || die "$from/linux holds no vmlinuz or module tree"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,modules}
cp "$from/busybox/bin/busybox" "$root/bin/busybox"
for applet in sh mount sleep cat sed insmod poweroff; do ln -s busybox "$root/bin/$applet"; done

# A module's dependencies, read from its own .modinfo (the package ships no modules.dep).
module_file() { find "$modules" -name "$1.ko" -o -name "${1//_/-}.ko" | head -1; }
depends() { strings -a "$1" | sed -n 's/^depends=//p' | tr ',' ' '; }
declare -A loaded=()
order=()
add_module() {
    local name=$1 file dep
    [ -n "${loaded[$name]:-}" ] && return 0
    file=$(module_file "$name")
    [ -n "$file" ] || die "module $name is not in $modules (built in? then drop it from the list)"
    loaded[$name]=1
    for dep in $(depends "$file"); do add_module "$dep"; done
    cp "$file" "$root/modules/"
    order+=("$(basename "$file")")
}
for m in vfio vfio_iommu_type1 vfio-pci; do add_module "$m"; done
printf '%s\n' "${order[@]}" > "$root/modules/order"

aarch64-linux-gnu-gcc -static -O2 -Wall -Werror -o "$root/bin/vfio_unmap" "$here/vfio_unmap.c"
cp "$here/init" "$root/init"
chmod +x "$root/init"

mkdir -p "$(dirname "$out")"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --owner=0:0) | gzip -9 > "$out"
echo "$vmlinuz"
