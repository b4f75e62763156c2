#!/usr/bin/env bash
# Finds (and on Debian 12 installs) a Rust toolchain that builds aarch64-unknown-none, plus the
# binutils used to turn the kernel ELF into an arm64 Image. Prints make variable assignments:
#
#   KCARGO    cargo command line prefix for the kernel (build-std and linker when needed)
#   KTARGET   the kernel's target triple (pass as --target after the cargo subcommand)
#   HCARGO    cargo for host builds (portable-core tests, the harness)
#   OBJCOPY   an objcopy that understands aarch64 ELF
#   KCLIPPY_DRIVER  clippy-driver matching the kernel's rustc (lints kernel builds)
#   HCLIPPY   clippy for host builds
#
# Idempotent; rustup is only ever asked with a timeout (it can hang on machines without network).
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }
is_debian() { [ -r /etc/debian_version ] && command -v apt-get >/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
apt_install() {
    say "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get -o DPkg::Lock::Timeout=120 -q update >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get -o DPkg::Lock::Timeout=120 -q install -y "$@" >/dev/null
}

target=aarch64-unknown-none
kcargo="" linker=""

# 1. An installed rustup target: use it as is.
if command -v rustup >/dev/null && timeout 20 rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    kcargo="cargo"
fi

# 2. Debian 12: the web toolchain (Rust 1.96) with its std sources, building core/alloc ourselves.
if [ -z "$kcargo" ]; then
    need=()
    release=$( { /usr/bin/rustc -vV 2>/dev/null || true; } | sed -n 's/^release: 1\.\([0-9]*\)\..*/\1/p')
    [ "${release:-0}" -ge 90 ] || need+=(rustc-web)
    [ -x /usr/bin/cargo ] || need+=(cargo-web)
    [ -d /usr/lib/rustlib/src/rust/library/core ] || need+=(rust-web-src)
    command -v ld.lld-22 >/dev/null || need+=(lld-22)
    if [ ${#need[@]} -gt 0 ]; then
        is_debian || die "install a Rust toolchain with the $target target (rustup target add $target)"
        apt_install "${need[@]}"
    fi
    kcargo="env RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo"
    kcargo+=" -Zbuild-std=core,alloc,compiler_builtins"
    kcargo+=" --config 'unstable.build-std-features=[\"compiler-builtins-mem\"]'"
    linker="ld.lld-22"
fi

# Host cargo: the user's own toolchain if there is one, else the one above.
if command -v cargo >/dev/null && [ "$(command -v cargo)" != /usr/bin/cargo ]; then
    hcargo="cargo"
else
    hcargo="/usr/bin/cargo"
fi

# objcopy for aarch64 ELF (the host's GNU objcopy only knows its own architecture).
objcopy=""
for c in aarch64-linux-gnu-objcopy llvm-objcopy rust-objcopy llvm-objcopy-22; do
    command -v "$c" >/dev/null && { objcopy=$c; break; }
done
if [ -z "$objcopy" ]; then
    is_debian || die "install an objcopy for aarch64 (binutils-aarch64-linux-gnu or llvm)"
    apt_install binutils-aarch64-linux-gnu
    objcopy=aarch64-linux-gnu-objcopy
fi

# Clippy. The kernel is linted while it is built: clippy-driver as the workspace wrapper around
# rustc (what `cargo clippy` itself does, but for `build`), so the lint costs no second compile
# of core/alloc. Each toolchain's clippy-driver must match its rustc; the Debian one is in
# rust-web-clippy. The host workspace uses plain `cargo clippy`.
debian_clippy() {
    [ -x /usr/bin/clippy-driver ] || { is_debian || die "install clippy"; apt_install rust-web-clippy; }
}
if [ "$kcargo" = cargo ]; then
    kdriver="$(rustc --print sysroot)/bin/clippy-driver"
    [ -x "$kdriver" ] || die "no clippy-driver next to rustc (rustup component add clippy)"
else
    debian_clippy
    kdriver=/usr/bin/clippy-driver
fi
if [ "$hcargo" = cargo ] && timeout 20 cargo clippy --version >/dev/null 2>&1; then
    hclippy="cargo clippy"
else
    debian_clippy
    hclippy="env CARGO=/usr/bin/cargo /usr/bin/cargo-clippy clippy"
fi

echo "KCARGO := $kcargo${linker:+ --config 'target.$target.linker=\"$linker\"'}"
echo "KTARGET := $target"
echo "HCARGO := $hcargo"
echo "OBJCOPY := $objcopy"
echo "KCLIPPY_DRIVER := $kdriver"
echo "HCLIPPY := $hclippy"
