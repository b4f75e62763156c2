#!/usr/bin/env bash
# Runs every fuzz target under libFuzzer (cargo-fuzz, nightly) for a fixed time and writes the
# figures (executions, corpus size, new inputs, crashes) to a Markdown table.
#
#   tests/fuzz/fuzz.sh --seconds N --out build/fuzz [--figures FILE] [--fresh] [TARGET...]
#
# Each target's working corpus is <out>/corpus/<target> (kept between runs unless --fresh,
# never committed),
# started from the committed seeds (tests/fuzz/corpus/<target>) and regressions; crashes (and
# timeouts, out-of-memory, leaks: every one counts as a crash) land in <out>/artifacts/<target>/,
# and what libFuzzer said about each, its Base64 input included, is printed at once (a CI
# machine keeps neither the log nor the artifact). A crash is reproduced on stable with
#   cargo run -p shootdown-fuzz --bin fuzz-replay -- <target> <file>
# and, once fixed, committed under tests/fuzz/regressions/<target>/.
#
# Needs rustup's `nightly` toolchain (already installed: this script never downloads one) and
# cargo-fuzz (installed with `cargo install cargo-fuzz` when missing). Without them it fails:
# a fuzz run that silently did not happen must not pass. Exit status: 0 when no target crashed.
set -euo pipefail

seconds=60 out=build/fuzz figures="" fresh=0 targets=()
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --figures) figures=$2; shift 2 ;;
        --fresh) fresh=1; shift ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(aspace smmu_codec dt ktap sdcl receiver bootargs)
figures=${figures:-$out/figures.md}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
die() { printf 'fuzz: %s\n' "$*" >&2; exit 1; }

# rustup is asked with a timeout and may not install anything (no network on some machines).
export RUSTUP_AUTO_INSTALL=0
timeout 30 rustup run nightly rustc --version >/dev/null 2>&1 ||
    die "rustup's nightly toolchain is not installed (libFuzzer needs it): rustup toolchain install nightly"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    timeout 900 cargo install --locked cargo-fuzz >&2 || die "cargo install cargo-fuzz failed"
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
[ "$fresh" = 0 ] || rm -rf "$out/corpus"
# Kept under target/ (make clean); the sanitizer build is separate from every other build.
export CARGO_TARGET_DIR=$root/target/fuzz
fuzz() {
    local cmd=$1
    shift
    (cd "$root" && nice -n 10 cargo +nightly fuzz "$cmd" --fuzz-dir tests/fuzz/libfuzzer "$@")
}

echo "fuzz: building ${targets[*]} (nightly, AddressSanitizer)" >&2
for t in "${targets[@]}"; do
    fuzz build "$t" >"$out/build-$t.log" 2>&1 || { cat "$out/build-$t.log" >&2; die "building $t failed"; }
done

{
    echo "| target | seconds | executions | exec/s | corpus (inputs) | new this run | crashes |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
} >"$figures.tmp"
# What a failed run said, printed at once: on a CI machine the log and the artifacts are gone
# afterwards, and libFuzzer's Base64 line is the input itself.
report() {
    local t=$1 log=$2
    echo "fuzz: $t failed; from $log:" >&2
    # The panic (and its message, on the next line), the sanitizer's verdict, the input.
    awk '/panicked at/ { print; getline; print; next }
         /^==[0-9]+== ?ERROR|^SUMMARY|^Base64:|^(Test unit|artifact_prefix).*written/' "$log" |
        cut -c1-2000 | sed 's/^/    /' >&2
    # The innermost frames of our own code.
    grep -E '^ +#[0-9]+ 0x[0-9a-f]+ in .*shootdown' "$log" | head -12 | sed 's/^/    /' >&2 || true
    echo "    (elsewhere: put the Base64 line through base64 -d into a file for fuzz-replay)" >&2
}

crashed=()
for t in "${targets[@]}"; do
    corpus=$out/corpus/$t artifacts=$out/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    before=$(find "$artifacts" -type f | wc -l)
    log=$out/$t.log
    echo "fuzz: $t for ${seconds}s (log: $log)" >&2
    # The first directory receives new inputs; the committed ones are only read.
    set +e
    fuzz run "$t" "$corpus" "$here/corpus/$t" "$here/regressions/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=20 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1
    status=$?
    set -e
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
    execs=$(stat number_of_executed_units) rate=$(stat average_exec_per_sec)
    added=$(stat new_units_added)
    crashes=$(( $(find "$artifacts" -type f | wc -l) - before ))
    if [ -z "$execs" ]; then
        tail -20 "$log" >&2
        die "$t: libFuzzer did not run (status $status)"
    fi
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        tail -20 "$log" >&2
        die "$t: libFuzzer exited with status $status without an artifact"
    fi
    if [ "$crashes" -ne 0 ]; then
        crashed+=("$t")
        report "$t" "$log"
    fi
    printf '| `%s` | %s | %s | %s | %s | %s | %s |\n' "$t" "$seconds" "$execs" "$rate" \
        "$(find "$corpus" -type f | wc -l)" "$added" "$crashes" >>"$figures.tmp"
    echo "fuzz: $t: $execs executions, $crashes crashes" >&2
done
{
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(cargo +nightly --version 2>/dev/null), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"
} >>"$figures.tmp"
mv "$figures.tmp" "$figures"
cat "$figures"
if [ ${#crashed[@]} -gt 0 ]; then
    for t in "${crashed[@]}"; do
        # The name says what happened: crash-, timeout-, oom-, leak- or slow-unit-.
        for f in "$out/artifacts/$t"/*; do
            echo "fuzz: $t: $(basename "$f"); reproduce: cargo run -p shootdown-fuzz --bin fuzz-replay -- $t $f" >&2
        done
    done
    exit 1
fi
