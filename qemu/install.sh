#!/usr/bin/env bash
# Makes sure a QEMU that has both of our boards (virt with SMMUv3, raspi4b) is installed, and
# that the Raspberry Pi 4 device tree is in the build folder. Idempotent; never waits forever.
#
#   qemu/install.sh qemu          QEMU >= 9.0 with the raspi4b machine
#   qemu/install.sh dtb BUILD     BUILD/dtb/bcm2711-rpi-4-b.dtb from Debian's arm64 kernel package
#   qemu/install.sh peer BUILD    BUILD/peer: Debian's arm64 Linux + busybox, the cross compiler (bench-peer)
#   qemu/install.sh gdb           gdb-multiarch
#   qemu/install.sh labgrid BUILD BUILD/labgrid-venv: labgrid (pinned) from PyPI, for tests/labgrid
#   qemu/install.sh ser2net       ser2net, which a labgrid exporter serves serial ports through
#   qemu/install.sh lava BUILD    BUILD/lava: Debian's lava-common unpacked (LAVA's job schema)
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

is_debian() { [ -r /etc/debian_version ] && command -v apt-get >/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
apt() { as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get -o DPkg::Lock::Timeout=120 -q "$@"; }

# `apt-get update` once per setup run (the stamp lives for the run, not across reboots).
apt_updated=""
apt_update() { [ -n "$apt_updated" ] || { say "apt-get update"; apt update >/dev/null; apt_updated=1; }; }

qemu_ok() {
    command -v qemu-system-aarch64 >/dev/null || return 1
    local v; v=$(qemu-system-aarch64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
    [ "${v:-0}" -ge 9 ] && qemu-system-aarch64 -machine help | grep -q '^raspi4b'
}

# The Debian mirror this machine already uses (first "URIs:" of a deb822 source or first
# "deb" line), so that backports come from the same place as everything else.
debian_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri=$(awk '/^URIs:/{u=$2} /^Suites:/ && / bookworm( |$)/{print u; exit}' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null
}

install_qemu() {
    qemu_ok && return 0
    is_debian || die "install QEMU >= 9.0 with the raspi4b machine (qemu-system-aarch64)"
    grep -q 'VERSION_CODENAME=bookworm' /etc/os-release || {
        apt_update; apt install -y qemu-system-arm >/dev/null; qemu_ok && return 0
        die "this Debian's qemu-system-arm lacks raspi4b: install QEMU >= 9.0"; }
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        local mirror; mirror=$(debian_mirror)
        [ -n "$mirror" ] || die "no Debian mirror found in the apt sources to add bookworm-backports"
        say "adding bookworm-backports from $mirror"
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$mirror" | as_root tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
        apt_updated=""
    fi
    apt_update
    say "installing qemu-system-arm from bookworm-backports"
    apt install -y -t bookworm-backports qemu-system-arm >/dev/null
    qemu_ok || die "qemu-system-aarch64 is still older than 9.0 or has no raspi4b"
}

# The arm64 package lists (for files we take out of Debian's arm64 packages, never installed).
enable_arm64() {
    dpkg --print-foreign-architectures | grep -qx arm64 && return 0
    say "enabling the arm64 package lists (packages are downloaded and unpacked, not installed)"
    as_root dpkg --add-architecture arm64
    apt_updated=""
}

# The newest versioned arm64 kernel package that Debian's metapackage points at
# (linux-image-6.1.0-N-arm64), without the architecture suffix.
arm64_kernel_package() {
    local pkg
    pkg=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$pkg" ] || die "could not find Debian's arm64 kernel package (linux-image-arm64:arm64)"
    echo "${pkg%%:*}"
}

# `apt-get download` of PACKAGE into DIR (as root, apt's sandbox user cannot write there).
download() {
    (cd "$2" && timeout 900 apt-get download -q -o APT::Sandbox::User=root "$1" >/dev/null) \
        || die "apt-get download $1 failed"
}

install_dtb() {
    local build=$1 out="$1/dtb/bcm2711-rpi-4-b.dtb"
    [ -s "$out" ] && return 0
    is_debian || die "put the Raspberry Pi 4 device tree at $out (bcm2711-rpi-4-b.dtb from a Linux arm64 build)"
    enable_arm64
    apt_update
    local pkg; pkg=$(arm64_kernel_package)
    local tmp; tmp=$(mktemp -d)
    say "fetching $pkg:arm64 for bcm2711-rpi-4-b.dtb"
    download "$pkg:arm64" "$tmp"
    dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -x -C "$tmp" --wildcards '*bcm2711-rpi-4-b.dtb'
    mkdir -p "$build/dtb"
    find "$tmp" -name bcm2711-rpi-4-b.dtb -exec cp {} "$out" \;
    rm -rf "$tmp"
    [ -s "$out" ] || die "the kernel package held no bcm2711-rpi-4-b.dtb"
}

# `make bench-peer` (docs/performance.md): Debian's own arm64 Linux, booted on the virt-smmu
# QEMU line. Installed: the aarch64 cross compiler and its libc (the static test program) and
# cpio (the initramfs). Unpacked into BUILD/peer, not installed: the kernel package's vmlinuz
# and its module tree (the VFIO and IOMMU modules the initramfs loads), and busybox-static for
# arm64. The stamp names both package versions, so a Debian update refetches.
install_peer() {
    local build=$1 out="$1/peer"
    is_debian || die "bench-peer needs Debian 12 packages: gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, cpio, linux-image-arm64:arm64, busybox-static:arm64"
    if ! command -v aarch64-linux-gnu-gcc >/dev/null || [ ! -e /usr/aarch64-linux-gnu/lib/libc.a ] \
        || ! command -v cpio >/dev/null; then
        apt_update
        say "installing gcc-aarch64-linux-gnu libc6-dev-arm64-cross cpio"
        apt install -y gcc-aarch64-linux-gnu libc6-dev-arm64-cross cpio >/dev/null
    fi
    enable_arm64
    # Once unpacked, kept (PEER_REFRESH=1 fetches Debian's newest again).
    [ -s "$out/.installed" ] && [ "${PEER_REFRESH:-}" != 1 ] && return 0
    apt_update
    local kpkg; kpkg=$(arm64_kernel_package)
    local want; want="$kpkg $(apt-cache policy "$kpkg:arm64" | awk '/Candidate:/{print $2}') busybox-static $(apt-cache policy busybox-static:arm64 | awk '/Candidate:/{print $2}')"
    [ "$(cat "$out/.installed" 2>/dev/null)" = "$want" ] && return 0
    local tmp; tmp=$(mktemp -d)
    say "fetching $kpkg:arm64 and busybox-static:arm64 (unpacked into $out)"
    download "$kpkg:arm64" "$tmp"
    download "busybox-static:arm64" "$tmp"
    rm -rf "$out" && mkdir -p "$out/linux" "$out/busybox"
    dpkg-deb --fsys-tarfile "$tmp"/linux-image-*.deb | tar -x -C "$out/linux" --wildcards \
        './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/vfio/*'
    dpkg-deb -x "$tmp"/busybox-static_*.deb "$out/busybox"
    rm -rf "$tmp"
    [ -n "$(find "$out/linux/boot" -name 'vmlinuz-*')" ] || die "$kpkg held no vmlinuz"
    [ -x "$out/busybox/bin/busybox" ] || die "busybox-static:arm64 held no bin/busybox"
    echo "$want" > "$out/.installed"
}

# Linux's own KTAP parser (tools/testing/kunit, Linux 6.1), from Debian's linux-source-6.1:
# only that folder is extracted, to BUILD/kunit/tools/testing/kunit (kunit.py insists on that
# path: it finds its kernel tree by it); nothing is installed system-wide.
install_kunit() {
    local build=$1 out="$1/kunit/tools/testing/kunit"
    [ -s "$out/kunit.py" ] && return 0
    is_debian || die "put Linux 6.1's tools/testing/kunit at $out (kunit.py parse cross-checks our KTAP)"
    apt_update
    local tmp; tmp=$(mktemp -d)
    say "fetching linux-source-6.1 for tools/testing/kunit (139 MB, once)"
    download linux-source-6.1 "$tmp"
    dpkg-deb --fsys-tarfile "$tmp"/linux-source-6.1_*.deb | tar -x -C "$tmp" ./usr/src/linux-source-6.1.tar.xz
    tar -xJf "$tmp/usr/src/linux-source-6.1.tar.xz" -C "$tmp" --wildcards 'linux-source-6.1/tools/testing/kunit/*'
    rm -rf "$out" && mkdir -p "$(dirname "$out")" && mv "$tmp/linux-source-6.1/tools/testing/kunit" "$out"
    rm -rf "$tmp"
    [ -s "$out/kunit.py" ] || die "linux-source-6.1 held no tools/testing/kunit/kunit.py"
}

# mtools and dosfstools, for `make sdcard` and its tests.
install_fattools() {
    command -v mcopy >/dev/null && { command -v mkfs.fat >/dev/null || [ -x /sbin/mkfs.fat ]; } && return 0
    is_debian || die "install mtools and dosfstools (mcopy, mkfs.fat) to build the SD card image"
    apt_update
    say "installing mtools dosfstools"
    apt install -y mtools dosfstools >/dev/null
}

# Debian's U-Boot for QEMU's arm64 `virt` (/usr/lib/u-boot/qemu_arm64/u-boot.bin, the
# `virt-uboot` board) and mkimage (u-boot-tools) for boot.scr.
install_uboot() {
    [ -s /usr/lib/u-boot/qemu_arm64/u-boot.bin ] && command -v mkimage >/dev/null && return 0
    is_debian || die "install U-Boot for qemu_arm64 at /usr/lib/u-boot/qemu_arm64/u-boot.bin and mkimage"
    apt_update
    say "installing u-boot-qemu u-boot-tools"
    apt install -y u-boot-qemu u-boot-tools >/dev/null
}

install_gdb() {
    command -v gdb-multiarch >/dev/null && return 0
    is_debian || die "install gdb-multiarch (or a gdb that knows aarch64)"
    apt_update; apt install -y gdb-multiarch >/dev/null
}

# labgrid from PyPI in a venv of its own, pinned: its pytest plugin and coordinator protocol
# change between releases. The stamp names the pin, so changing it reinstalls.
LABGRID_VERSION=26.0.1
install_labgrid() {
    local venv="$1/labgrid-venv"
    [ "$(cat "$venv/.installed" 2>/dev/null)" = "labgrid==$LABGRID_VERSION" ] && return 0
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        is_debian || die "install Python 3 with its venv module (python3-venv)"
        apt_update; apt install -y python3-venv >/dev/null
    fi
    say "installing labgrid==$LABGRID_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    timeout 900 "$venv/bin/pip" install -q "labgrid==$LABGRID_VERSION" "tomli>=2; python_version<'3.11'" PyYAML \
        || die "pip could not install labgrid==$LABGRID_VERSION"
    echo "labgrid==$LABGRID_VERSION" > "$venv/.installed"
}

# ser2net serves a serial port over RFC 2217 for labgrid's exporter.
install_ser2net() {
    command -v ser2net >/dev/null && return 0
    is_debian || die "install ser2net (labgrid-exporter serves serial ports through it)"
    apt_update
    say "installing ser2net"
    apt install -y ser2net >/dev/null
    # The package enables a system service with an example config; the exporter starts its own.
    command -v systemctl >/dev/null && as_root systemctl disable --now ser2net >/dev/null 2>&1 || true
}

# LAVA's own job schema (lava_common/schemas) from Debian's lava-common, unpacked into BUILD/lava:
# installing lava-dispatcher would pull libguestfs0 -> qemu-system-x86, which conflicts with the
# backports QEMU. The schema needs voluptuous, which goes into the labgrid venv.
LAVA_VOLUPTUOUS=0.13.1   # what Debian's lava-common 2023.01 runs with (bookworm)
install_lava() {
    local build=$1 out="$1/lava"
    install_labgrid "$build"
    [ -s "$out/.installed" ] && "$build/labgrid-venv/bin/python" -c 'import voluptuous' 2>/dev/null && return 0
    is_debian || die "put Debian's lava-common (usr/lib/python3/dist-packages/lava_common) under $out"
    apt_update
    local tmp; tmp=$(mktemp -d)
    say "fetching lava-common (LAVA's job schema), unpacked into $out"
    download lava-common "$tmp"
    rm -rf "$out" && mkdir -p "$out"
    dpkg-deb -x "$tmp"/lava-common_*.deb "$out"
    local version; version=$(dpkg-deb -f "$tmp"/lava-common_*.deb Version)
    rm -rf "$tmp"
    [ -d "$out/usr/lib/python3/dist-packages/lava_common" ] || die "lava-common held no lava_common package"
    "$build/labgrid-venv/bin/pip" install -q "voluptuous==$LAVA_VOLUPTUOUS" >/dev/null \
        || die "pip could not install voluptuous==$LAVA_VOLUPTUOUS"
    echo "lava-common $version" > "$out/.installed"
}

# Every install runs under one lock, held from the first `apt-get update` to the last install:
# parallel set-ups (two checkouts, a test and `make sdcard`) take turns instead of failing on
# dpkg's own lock.
if [ -z "${SHOOTDOWN_SETUP_LOCKED:-}" ] && command -v flock >/dev/null; then
    export SHOOTDOWN_SETUP_LOCKED=1
    exec flock "${TMPDIR:-/tmp}/shootdown-setup.lock" bash "$0" "$@"
fi

case "${1:-}" in
    qemu) install_qemu ;;
    dtb) install_dtb "${2:?build folder}" ;;
    peer) install_peer "${2:?build folder}" ;;
    kunit) install_kunit "${2:?build folder}" ;;
    fattools) install_fattools ;;
    uboot) install_uboot ;;
    gdb) install_gdb ;;
    labgrid) install_labgrid "${2:?build folder}" ;;
    ser2net) install_ser2net ;;
    lava) install_lava "${2:?build folder}" ;;
    *) die "usage: $0 qemu | dtb BUILD | peer BUILD | kunit BUILD | fattools | uboot | gdb | labgrid BUILD | ser2net | lava BUILD" ;;
esac
