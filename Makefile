# Shootdown: build, run and test the kernel. `make help` lists the targets.
#
# Every target installs what it needs (Rust toolchain for aarch64-unknown-none, QEMU >= 9 with
# raspi4b, the Pi 4 device tree) on first use; see .cargo/toolchain.sh and qemu/install.sh.

BOARD     ?= virt-smmu
BOOTARGS  ?=
QEMU_ARGS ?=
TRACE     ?=
TIMEOUT   ?=

BUILD     := build
KERNEL_ELF := $(BUILD)/shootdown.elf
KERNEL_IMG := $(BUILD)/shootdown.img
PI_DTB    := $(BUILD)/dtb/bcm2711-rpi-4-b.dtb
KUNIT_PY  := $(BUILD)/kunit/tools/testing/kunit/kunit.py
KTARGET_DIR := target/kernel
HARNESS   := target/debug/harness
TEST_BOARDS := virt virt-smmu raspi4b virt-uboot
comma := ,
space := $(empty) $(empty)

.DEFAULT_GOAL := image

# Toolchain variables (KCARGO, KTARGET, HCARGO, OBJCOPY, KCLIPPY_DRIVER, HCLIPPY), found or
# installed once per checkout.
ifeq ($(filter clean help,$(MAKECMDGOALS)),)
include $(BUILD)/toolchain.mk
endif

$(BUILD)/toolchain.mk: .cargo/toolchain.sh
	@mkdir -p $(BUILD)
	@bash .cargo/toolchain.sh > $@.tmp && mv $@.tmp $@

.PHONY: help image run gdb setup uboot-disk test test-loom test-boards test-kunit lint qemu dtb clean FORCE soak test-soak \
    test-matrix test-matrix-sample

help:
	@echo "make image   build $(KERNEL_IMG) (arm64 Image) and $(KERNEL_ELF) (ELF with symbols)"
	@echo "make run     boot BOARD=$(BOARD) in QEMU [BOOTARGS=... QEMU_ARGS=... TRACE=out.json]"
	@echo "make test    lint, host unit tests + in-kernel tests on: $(TEST_BOARDS)"
	@echo "make lint    clippy -D warnings: the host workspace, the kernel and chainloader builds"
	@echo "make test-matrix  ktest=* on every QEMU line of $(MATRIX) (make test runs $(MATRIX_SAMPLE) of them)"
	@echo "make soak    the soak on virt-smmu and raspi4b [SEEDS='1 2' ROUNDS=8 FAULTS=all]"
	@echo "make fuzz    libFuzzer on every fuzz target [FUZZ_SECONDS=300 FUZZ_TARGETS='aspace dt']"
	@echo "make stress  host threads: CPUs change shared bound address spaces, devices DMA without pause [STRESS_SEED=1 STRESS_ACCESSES=10000000]"
	@echo "make bench   host (criterion) + in-kernel benchmarks (QEMU -icount): bench/results.json, plots"
	@echo "make bench-peer  Shootdown vs Debian's Linux (VFIO) on the same QEMU: bench/peer.md [PEER_PAGES=...]"
	@echo "make labgrid  the KTAP cases as pytest results through labgrid (QEMU environments)"
	@echo "make test-labgrid-farm  the same through a loopback labgrid farm (coordinator, exporter, place)"
	@echo "make lava-jobs  LAVA job definitions in build/lava/ (test-lava checks them against LAVA's schema)"
	@echo "make gdb     like run, but QEMU waits for gdb-multiarch on :1234"
	@echo "make sdcard  a Raspberry Pi 4 boot folder and FAT image [FIRMWARE=dir]"
	@echo "make uboot-disk  build/uboot/disk.img: boot.scr + the kernel for U-Boot [BOOTARGS=...]"
	@echo "make chainboot / make hil PORT=/dev/ttyUSB0   push the kernel to a board over UART"
	@echo "boards: virt, virt-smmu, raspi4b, virt-uboot (profiles in qemu/)"

# ---------------------------------------------------------------------------------------------
# The kernel image: one file for every board.
image: $(KERNEL_IMG)

$(KERNEL_ELF): FORCE
	@mkdir -p $(BUILD)
	$(KLINT) CARGO_TARGET_DIR=$(KTARGET_DIR) $(KCARGO) build -p shootdown --bin shootdown --release --target $(KTARGET)
	@cp $(KTARGET_DIR)/$(KTARGET)/release/shootdown $@

$(KERNEL_IMG): $(KERNEL_ELF)
	$(OBJCOPY) -O binary $< $@
	@echo "built $@ ($$(stat -c %s $@) bytes) and $<"

# ---------------------------------------------------------------------------------------------
# QEMU and the Pi 4 device tree.
qemu:
	@bash qemu/install.sh qemu

dtb: $(PI_DTB)
$(PI_DTB):
	@bash qemu/install.sh dtb $(BUILD)

# The dev build: the same artifacts `cargo test --workspace` builds.
$(HARNESS): FORCE
	@$(HCARGO) build -q -p shootdown-harness

BOARD_DEPS = qemu $(if $(filter raspi4b,$(BOARD)),$(PI_DTB))

run: image $(HARNESS) $(BOARD_DEPS)
	$(HARNESS) run --board $(BOARD) --kernel $(KERNEL_IMG) --bootargs "$(BOOTARGS)" \
	    $(if $(TRACE),--trace $(TRACE)) -- $(QEMU_ARGS)

gdb: image $(HARNESS) $(BOARD_DEPS)
	@bash qemu/install.sh gdb
	$(HARNESS) run --gdb --board $(BOARD) --kernel $(KERNEL_IMG) --bootargs "$(BOOTARGS)" -- $(QEMU_ARGS)

# ---------------------------------------------------------------------------------------------
# Tests: the portable core and the harness on the host (the harness also against the real
# kernel, the chainloader over a PTY and the SD-card packaging), the concurrency core under
# loom, then the kernel's KTAP on every board.
test: setup
	@$(MAKE) --no-print-directory lint
	SHOOTDOWN_KERNEL=$(KERNEL_IMG) SHOOTDOWN_CHAINLOADER=$(CHAINLOADER_IMG) SHOOTDOWN_DTB=$(PI_DTB) \
	    $(HCARGO) test --workspace -- --include-ignored
	@$(MAKE) --no-print-directory test-fuzz
	@$(MAKE) --no-print-directory test-loom
	@$(MAKE) --no-print-directory test-boards
	@$(MAKE) --no-print-directory test-matrix-sample
	@$(MAKE) --no-print-directory test-kunit
	@$(MAKE) --no-print-directory test-labgrid
	@$(MAKE) --no-print-directory test-labgrid-farm
	@$(MAKE) --no-print-directory test-lava
	@$(MAKE) --no-print-directory test-soak
	@$(MAKE) --no-print-directory test-bench-smoke

# Clippy with warnings as errors, everywhere the code is compiled: the host workspace (the
# portable core, its tests and benches, the harness) here, and the kernel and the chainloader
# for the target in every build of them (KLINT; `CLIPPY_ARGS` is how cargo-clippy hands its
# lint flags to clippy-driver). Then the architecture check: no import cycle between the
# kernel's top-level modules, the layering, the README's layout table (kernel/tests/architecture.rs).
KLINT = RUSTC_WORKSPACE_WRAPPER=$(KCLIPPY_DRIVER) CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
lint:
	$(HCLIPPY) --workspace --all-targets -- -D warnings
	$(HCARGO) test -q -p shootdown --test architecture
	@$(MAKE) --no-print-directory image chainloader

# The concurrency core under loom's model checker: the notifier's, the SVA release protocol's, the ASID
# allocator's and the command queue's CMD_SYNC sharing (own target dir: --cfg loom rebuilds everything).
test-loom:
	LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
	    $(HCARGO) test -q -p shootdown --test loom_notifier --test loom_asid --test loom_sva --test loom_cmdq

test-boards: image $(HARNESS) qemu $(PI_DTB)
	$(HARNESS) test --board $(subst $(space),$(comma),$(TEST_BOARDS)) --kernel $(KERNEL_IMG) \
	    --bootargs "ktest=* $(BOOTARGS)" --junit $(BUILD)/junit.xml $(if $(TIMEOUT),--timeout $(TIMEOUT))

# QEMU lines as users write them (qemu/matrix.toml: slots, masks, GICs, CPUs, RAM, EL2, CPU
# models; no -append but ktest=*). `make test` runs MATRIX_SAMPLE of them, a window that moves
# with the UTC date (consecutive days cover the whole matrix; MATRIX_ROTATE=20261207 replays a day).
MATRIX        := qemu/matrix.toml
MATRIX_SAMPLE ?= 2
MATRIX_ROTATE ?= $(shell date -u +%Y%m%d)

test-matrix: image $(HARNESS) qemu
	$(HARNESS) matrix --file $(MATRIX) --kernel $(KERNEL_IMG) --junit $(BUILD)/junit-matrix.xml

test-matrix-sample: image $(HARNESS) qemu
	$(HARNESS) matrix --file $(MATRIX) --kernel $(KERNEL_IMG) --sample $(MATRIX_SAMPLE) \
	    --rotate-by $(MATRIX_ROTATE) --junit $(BUILD)/junit-matrix-sample.xml

# Everything `make test` needs from outside, installed once, one after the other, before any
# test runs (qemu/install.sh holds one lock across all of it): tests never install.
setup: qemu $(PI_DTB) $(KUNIT_PY)
	@bash qemu/install.sh fattools
	@bash qemu/install.sh uboot
	@bash qemu/install.sh labgrid $(BUILD)
	@bash qemu/install.sh ser2net
	@bash qemu/install.sh lava $(BUILD)

# A disk U-Boot boots the kernel from (boot.scr + shootdown.img on MBR/FAT32): for QEMU
# (`-bios /usr/lib/u-boot/qemu_arm64/u-boot.bin -drive if=virtio,format=raw,file=...`) or, its
# two files, for a Pi whose firmware starts U-Boot. BOOTARGS go into boot.scr.
UBOOT_DIR  := $(BUILD)/uboot
uboot-disk: image
	@bash qemu/install.sh uboot
	@bash qemu/install.sh fattools
	bash boot/uboot/mkdisk.sh --kernel $(KERNEL_IMG) --out $(UBOOT_DIR)/files \
	    --image $(UBOOT_DIR)/disk.img --bootargs "$(BOOTARGS)"

# Linux's own KTAP parser must read every board's console as the harness does: same cases,
# same results, zero parse errors (tests/harness/src/kunit.rs). Run after test-boards, on its logs.
$(KUNIT_PY):
	@bash qemu/install.sh kunit $(BUILD)

test-kunit: $(HARNESS) $(KUNIT_PY)
	$(HARNESS) kunit-check $(foreach b,$(TEST_BOARDS),$(BUILD)/logs/$(b).log) --kunit $(KUNIT_PY)

clean:
	rm -rf $(BUILD) target

# ---------------------------------------------------------------------------------------------
# Soak: the coherence workload on every CPU at once (job=soak), many seeds, both SMMU boards,
# optionally with fault injection (FAULTS=all, or e.g. FAULTS=alloc,sync; see
# docs/reliability.md). Per-run consoles in build/logs/soak-<board>-<seed>.log.
SEEDS       ?= 1 2 3 4 5 6 7 8
ROUNDS      ?= 8
FAULTS      ?=
SOAK_BOARDS ?= virt-smmu raspi4b
SOAK        = $(HARNESS) soak --kernel $(KERNEL_IMG)

soak: image $(HARNESS) qemu $(PI_DTB)
	@$(SOAK) --boards "$(SOAK_BOARDS)" --seeds "$(SEEDS)" --rounds $(ROUNDS) \
	    --bootargs "$(if $(FAULTS),fault=$(FAULTS)) $(BOOTARGS)"

# The short soak of `make test`: one seed per board with every fault kind, then the same
# without IOTLB invalidation, which must fail with stale accesses.
test-soak: image $(HARNESS) qemu $(PI_DTB)
	@$(SOAK) --boards "$(SOAK_BOARDS)" --seeds 1 --rounds 2 --bootargs "fault=all fault.rate=500" \
	    --log-prefix test-soak
	@$(SOAK) --boards "$(SOAK_BOARDS)" --seeds 1 --rounds 2 --bootargs "smmu.skip_invalidate=1" \
	    --expect-stale --log-prefix test-soak-stale

# ---------------------------------------------------------------------------------------------
# Stress on the host (tests/stress, docs/reliability.md): CPU threads map, unmap, mprotect and
# watch shared bound address spaces with interval notifiers while device threads run the SMMU
# model's DMA against them; then the same short run as `make test`'s with the invalidation
# skipped, which must fail. `cargo test` runs the short pair (10^6 accesses each).
STRESS_SEED     ?= 1
STRESS_ACCESSES ?= 10000000
STRESS_ARGS     ?=

.PHONY: stress
stress:
	$(HCARGO) run -q --release -p shootdown-stress -- --seed $(STRESS_SEED) \
	    --accesses $(STRESS_ACCESSES) $(STRESS_ARGS)
	$(HCARGO) run -q --release -p shootdown-stress -- --seed $(STRESS_SEED) --accesses 1000000 \
	    --skip-invalidation --expect-stale $(STRESS_ARGS)

# ---------------------------------------------------------------------------------------------
# Fuzzing the portable core with libFuzzer (cargo-fuzz, rustup's nightly; see
# docs/reliability.md). `make fuzz` runs each target FUZZ_SECONDS on a corpus kept in build/fuzz/ and
# writes build/fuzz/figures.md; `make test` runs each FUZZ_SHORT_SECONDS from the committed
# seeds only (cargo test already replays seeds and regressions on stable).
FUZZ_SECONDS       ?= 300
FUZZ_SHORT_SECONDS ?= 15
FUZZ_TARGETS       ?=

.PHONY: fuzz test-fuzz
fuzz:
	bash tests/fuzz/fuzz.sh --seconds $(FUZZ_SECONDS) --out $(BUILD)/fuzz $(FUZZ_TARGETS)

test-fuzz:
	bash tests/fuzz/fuzz.sh --seconds $(FUZZ_SHORT_SECONDS) --out $(BUILD)/fuzz-short --fresh $(FUZZ_TARGETS)

# =============================================================================================
# Benchmarks (issue 7; docs/performance.md). `make bench` runs criterion's host benchmarks and
# the in-kernel benchmarks (`bench=*`) on both SMMU boards under QEMU -icount shift=0 (QEMU
# counts guest instructions exactly and the PMU's INST_RETIRED reads them), then
# `harness bench-report` writes bench/results.json, bench/results.md and bench/*.svg and checks
# the goals: it fails if one fails. `make test-bench-smoke` (part of `make test`) runs the kernel
# benchmarks with small sizes and checks the goals that are exact command counts.
# =============================================================================================
BENCH_BOARDS := virt-smmu raspi4b
BENCH_OUT    := bench
BENCH_LOGS   := $(BUILD)/bench
ICOUNT       := -icount shift=0
# 4095 pages is the worst case of the range planner (every low bit set).
BENCH_SMOKE_PAGES := 1,16,511,512,4095

# QEMU counts the commands too: its SMMUv3's trace events and the guest's UART writes, in
# execution order in one file per boot, which `bench-report --qemu-trace` splits at the console
# markers the benchmarks print (tests/harness/src/bench/qemu_trace.rs). virt-smmu only (the
# Pi's SMMU is the software model).
QEMU_TRACE = $(foreach e,smmuv3_cmdq_opcode smmuv3_range_inval smmuv3_record_event pl011_write,-trace $(e)) -D $(1)

.PHONY: bench test-bench-smoke peer-setup bench-peer

bench: image $(HARNESS) qemu $(PI_DTB)
	rm -rf target/criterion
	nice $(HCARGO) bench -p shootdown --features bench
	$(HARNESS) test --board virt-smmu --kernel $(KERNEL_IMG) \
	    --bootargs "bench=* $(BOOTARGS)" --log-dir $(BENCH_LOGS) --timeout 1800 --test-timeout 0 \
	    -- $(ICOUNT) $(call QEMU_TRACE,$(BENCH_LOGS)/virt-smmu.qemu-trace)
	$(HARNESS) test --board raspi4b --kernel $(KERNEL_IMG) \
	    --bootargs "bench=* $(BOOTARGS)" --log-dir $(BENCH_LOGS) --timeout 1800 --test-timeout 0 \
	    -- $(ICOUNT)
	$(HARNESS) bench-report $(foreach b,$(BENCH_BOARDS),--kernel-log $(b)=$(BENCH_LOGS)/$(b).log) \
	    --qemu-trace virt-smmu=$(BENCH_LOGS)/virt-smmu.qemu-trace \
	    --criterion target/criterion --out $(BENCH_OUT) --require all

test-bench-smoke: image $(HARNESS) qemu
	$(HARNESS) test --board virt-smmu --kernel $(KERNEL_IMG) --log-dir $(BUILD)/logs/bench-smoke \
	    --bootargs "bench=* bench.pages=$(BENCH_SMOKE_PAGES)" --test-timeout 0 \
	    -- $(ICOUNT) $(call QEMU_TRACE,$(BUILD)/logs/bench-smoke/virt-smmu.qemu-trace)
	$(HARNESS) bench-report --kernel-log virt-smmu=$(BUILD)/logs/bench-smoke/virt-smmu.log \
	    --qemu-trace virt-smmu=$(BUILD)/logs/bench-smoke/virt-smmu.qemu-trace --require commands

# ---------------------------------------------------------------------------------------------
# bench-peer (issue 16; docs/performance.md): Debian's own arm64 Linux on the virt-smmu profile's
# QEMU line, unmapping edu's memory through VFIO (tests/peer/), then Shootdown's `peer.unmap`
# on the same line; QEMU's trace counts both. Writes bench/peer.md and bench/peer.json.
# `make peer-setup` installs the cross compiler and unpacks Debian's arm64 kernel and busybox
# (qemu/install.sh peer); it is not part of `make test`'s set-up.
PEER_DIR    := $(BUILD)/peer
PEER_LOGS   := $(BENCH_LOGS)/peer
PEER_PAGES  ?= 1,16,512,4095,4096,262144
PEER_APPEND := console=ttyAMA0 loglevel=4 peer.bdf=0000:00:02.0 peer.pages=$(PEER_PAGES)

peer-setup:
	@bash qemu/install.sh peer $(BUILD)

bench-peer: image $(HARNESS) qemu peer-setup
	@mkdir -p $(PEER_LOGS)
	vmlinuz=$$(bash tests/peer/mkinitramfs.sh --from $(PEER_DIR) --out $(PEER_DIR)/initramfs.cpio.gz) && \
	$(HARNESS) run --board virt-smmu --kernel $$vmlinuz --replace-bootargs --bootargs "$(PEER_APPEND)" \
	    --dry-run -- -initrd $(PEER_DIR)/initramfs.cpio.gz $(ICOUNT) </dev/null > $(PEER_LOGS)/linux.qemu-line && \
	timeout 1800 $(HARNESS) run --board virt-smmu --kernel $$vmlinuz --replace-bootargs \
	    --bootargs "$(PEER_APPEND)" -- -initrd $(PEER_DIR)/initramfs.cpio.gz $(ICOUNT) \
	    $(call QEMU_TRACE,$(PEER_LOGS)/linux.qemu-trace) </dev/null > $(PEER_LOGS)/linux.log 2>&1
	$(HARNESS) run --board virt-smmu --kernel $(KERNEL_IMG) --bootargs "bench=peer.* bench.pages=$(PEER_PAGES)" \
	    --dry-run -- $(ICOUNT) </dev/null > $(PEER_LOGS)/shootdown.qemu-line
	$(HARNESS) test --board virt-smmu --kernel $(KERNEL_IMG) --log-dir $(PEER_LOGS) \
	    --bootargs "bench=peer.* bench.pages=$(PEER_PAGES)" --timeout 3600 --test-timeout 0 \
	    -- $(ICOUNT) $(call QEMU_TRACE,$(PEER_LOGS)/virt-smmu.qemu-trace)
	$(HARNESS) bench-report --peer --out $(BENCH_OUT) --require peer \
	    --kernel-log linux=$(PEER_LOGS)/linux.log --qemu-trace linux=$(PEER_LOGS)/linux.qemu-trace \
	    --kernel-log virt-smmu=$(PEER_LOGS)/virt-smmu.log --qemu-trace virt-smmu=$(PEER_LOGS)/virt-smmu.qemu-trace \
	    --meta "commit=$$(git describe --always --dirty)" --meta "debian=$$(cat $(PEER_DIR)/.installed)" \
	    --meta "qemu=$$(qemu-system-aarch64 --version | head -1)" \
	    --meta "linux line=$$(cat $(PEER_LOGS)/linux.qemu-line)" \
	    --meta "shootdown line=$$(cat $(PEER_LOGS)/shootdown.qemu-line)"

# =============================================================================================
# Raspberry Pi 4: SD card, UART chainloader, hardware-in-the-loop tests (owner: hil branch).
# Everything for real boards lives in this block; see docs/raspberry-pi.md.
#
#   make chainloader                      build/chainloader.img (boot image that loads over UART)
#   make sdcard [FIRMWARE=dir] [SDCARD_BOOT=kernel|chainloader] [CMDLINE='...']
#                                         build/sdcard/ and build/sdcard.img
#   make chainboot PORT=/dev/ttyUSB0 [BAUD=115200] [BOOTARGS=...] [RESET_CMD=...]
#                                         push build/shootdown.img, then be its serial console
#   make hil PORT=/dev/ttyUSB0 [BAUD=...] [BOOTARGS=...] [RESET_CMD=...] [TIMEOUT=...]
#                                         push the kernel with ktest=*, report KTAP + JUnit
#   make test-hil-offline                 the above without hardware (QEMU over a PTY, fake
#                                         firmware): part of `make test`
# =============================================================================================
CHAINLOADER_ELF := $(BUILD)/chainloader.elf
CHAINLOADER_IMG := $(BUILD)/chainloader.img
SDCARD_DIR      := $(BUILD)/sdcard
SDCARD_IMG      := $(BUILD)/sdcard.img
FIRMWARE        ?=
SDCARD_BOOT     ?= kernel
CMDLINE         ?=
PORT            ?=
BAUD            ?= 115200
RESET_CMD       ?=
# The workspace's target rustflags carry the kernel's linker script; the chainloader has its
# own (a static PIE linked at 0), so its build replaces them. RUSTFLAGS also enters cargo's
# artifact hashes, so the kernel's and the chainloader's builds never invalidate each other.
CHAINLOADER_RUSTFLAGS := -C link-arg=-Tboot/chainloader/link.ld -C relocation-model=pie \
    -C link-arg=-pie -C link-arg=--no-dynamic-linker -C link-arg=-znotext \
    -C target-cpu=cortex-a72

.PHONY: chainloader sdcard chainboot hil hil-port-check test-hil-offline

chainloader: $(CHAINLOADER_IMG)

$(CHAINLOADER_ELF): FORCE
	@mkdir -p $(BUILD)
	$(KLINT) RUSTFLAGS="$(CHAINLOADER_RUSTFLAGS)" CARGO_TARGET_DIR=$(KTARGET_DIR) $(KCARGO) build \
	    -p shootdown-chainloader --bin chainloader --release --target $(KTARGET)
	@cp $(KTARGET_DIR)/$(KTARGET)/release/chainloader $@

$(CHAINLOADER_IMG): $(CHAINLOADER_ELF)
	$(OBJCOPY) -O binary $< $@
	@echo "built $@ ($$(stat -c %s $@) bytes) and $<"

sdcard: image chainloader $(PI_DTB)
	@bash boot/rpi4/mksdcard.sh --out $(SDCARD_DIR) --image $(SDCARD_IMG) --kernel $(KERNEL_IMG) \
	    --chainloader $(CHAINLOADER_IMG) --dtb $(PI_DTB) --boot $(SDCARD_BOOT) \
	    $(if $(FIRMWARE),--firmware $(FIRMWARE)) --cmdline "$(CMDLINE)"

# The port is checked here so that a forgotten PORT= fails before any build.
hil-port-check:
	@test -n "$(PORT)" || { echo "make: PORT=/dev/ttyUSB0 (the board's serial port) is required"; exit 2; }

chainboot: hil-port-check image $(HARNESS)
	$(HARNESS) chainboot --port $(PORT) --baud $(BAUD) --kernel $(KERNEL_IMG) \
	    $(if $(BOOTARGS),--bootargs "$(BOOTARGS)") $(if $(RESET_CMD),--reset-cmd '$(RESET_CMD)')

# Tests on the board: the same image, tests selected by boot arguments the chainloader appends
# to the board's /chosen/bootargs (cmdline.txt on the card).
hil: hil-port-check image $(HARNESS)
	$(HARNESS) serial --port $(PORT) --baud $(BAUD) --name hil --chainload $(KERNEL_IMG) \
	    --bootargs "ktest=* $(BOOTARGS)" --junit $(BUILD)/junit/hil.xml --log $(BUILD)/logs/hil.log \
	    $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(RESET_CMD),--reset-cmd '$(RESET_CMD)')

# Without hardware: the chainloader's protocol through QEMU raspi4b on a pseudo-terminal, and
# `make sdcard`'s packaging with stand-in firmware files (the check is about our packaging, not
# Broadcom's blobs). Both take seconds except the real kernel's transfer (~30-60 s under TCG).
test-hil-offline: setup image chainloader $(HARNESS)
	SHOOTDOWN_KERNEL=$(KERNEL_IMG) SHOOTDOWN_CHAINLOADER=$(CHAINLOADER_IMG) SHOOTDOWN_DTB=$(PI_DTB) \
	    $(HCARGO) test -q -p shootdown-harness --test chainload_qemu --test sdcard -- --include-ignored

# ==================================== end of the Raspberry Pi 4 block ========================

# =============================================================================================
# Board farms (issue 14; docs/board-farms.md): labgrid and LAVA run the same KTAP tests.
#
#   make labgrid [LABGRID_BOARDS='virt raspi4b'] [BOOTARGS=...]
#                          pytest + labgrid's QEMUDriver on each QEMU board, one pytest result
#                          per KTAP case (build/labgrid/BOARD.{log,json,junit.xml})
#   make labgrid-workload  job=soak through labgrid on the SMMU boards (and stale must fail)
#   make labgrid-expected  tests/labgrid/expected-cases.txt from the last `make labgrid`
#   make test-labgrid      the glue's own tests (environments vs the harness's QEMU line, SDCL
#                          against a scripted loader), then `labgrid`, then ktest.fail=1 on virt
#                          must fail exactly ktest.selftest_fail
#   make test-labgrid-farm coordinator + exporter + ser2net on 127.0.0.1: QEMU raspi4b with the
#                          chainloader as a remote place; the same pytest file over RFC 2217
#   make test-labgrid-farm-fail   the same with ktest.fail=1: must fail exactly that case
#   make lava-jobs         build/lava-jobs/*.yaml [KERNEL_URL=... DTB_URL=...]
#   make test-lava         the jobs against LAVA's own job schema (Debian's lava-common)
#
# Everything installs through qemu/install.sh (labgrid BUILD, ser2net, lava BUILD) first.
# =============================================================================================
LABGRID_VENV   := $(BUILD)/labgrid-venv
LG_PYTHON      := $(LABGRID_VENV)/bin/python
LG_PYTEST      := nice $(LABGRID_VENV)/bin/pytest -p no:cacheprovider -q -rfE
LABGRID_OUT    := $(BUILD)/labgrid
# The three QEMU environments (virt-uboot's firmware path is the harness's test).
LABGRID_BOARDS ?= virt virt-smmu raspi4b
LAVA_JOBS      := $(BUILD)/lava-jobs
LAVA_PYTHONPATH := $(BUILD)/lava/usr/lib/python3/dist-packages
KERNEL_URL     ?=
DTB_URL        ?=

.PHONY: labgrid-setup labgrid labgrid-workload labgrid-expected test-labgrid test-labgrid-farm test-labgrid-farm-fail \
    lava-jobs test-lava

# No __pycache__ in the source tree.
labgrid labgrid-workload labgrid-expected test-labgrid test-labgrid-farm test-labgrid-farm-fail \
    lava-jobs test-lava: \
    export PYTHONDONTWRITEBYTECODE := 1

labgrid-setup: qemu $(PI_DTB)
	@bash qemu/install.sh labgrid $(BUILD)

# Every board runs even if one fails; the target fails if any did.
labgrid: image $(HARNESS) labgrid-setup
	@rc=0; for b in $(LABGRID_BOARDS); do \
	    $(LG_PYTHON) tests/labgrid/profiles.py env $$b --kernel $(KERNEL_IMG) \
	        --bootargs "ktest=* $(BOOTARGS)" --out $(LABGRID_OUT)/$$b.yaml || exit 1; \
	    echo "labgrid: $$b"; \
	    $(LG_PYTEST) tests/labgrid/test_ktap.py --lg-env $(LABGRID_OUT)/$$b.yaml -o junit_suite_name=$$b \
	        --shootdown-harness $(HARNESS) --junitxml $(LABGRID_OUT)/$$b.junit.xml || rc=1; \
	done; exit $$rc

# The coherence workload (job=soak) through labgrid on the SMMU boards: the kernel's exit status
# and its `# soak` line; then the same without IOTLB invalidation, which must fail.
LABGRID_WORKLOAD := job=soak seed=1 rounds=2
labgrid-workload: image $(HARNESS) labgrid-setup
	@rc=0; for b in $(SOAK_BOARDS); do \
	    $(LG_PYTHON) tests/labgrid/profiles.py env $$b --kernel $(KERNEL_IMG) \
	        --bootargs "$(LABGRID_WORKLOAD) $(BOOTARGS)" --out $(LABGRID_OUT)/$$b-workload.yaml || exit 1; \
	    $(LG_PYTEST) tests/labgrid/test_workload.py --lg-env $(LABGRID_OUT)/$$b-workload.yaml \
	        --shootdown-harness $(HARNESS) || rc=1; \
	done; exit $$rc
	$(LG_PYTHON) tests/labgrid/profiles.py env virt-smmu --kernel $(KERNEL_IMG) \
	    --bootargs "$(LABGRID_WORKLOAD) smmu.skip_invalidate=1" --out $(LABGRID_OUT)/virt-smmu-stale.yaml
	! $(LG_PYTEST) tests/labgrid/test_workload.py --lg-env $(LABGRID_OUT)/virt-smmu-stale.yaml \
	    --shootdown-harness $(HARNESS)

# After adding or renaming kernel tests: the case list test_ktap.py holds every run to.
labgrid-expected:
	$(LG_PYTHON) tests/labgrid/expected.py tests/labgrid/expected-cases.txt \
	    $(foreach b,$(LABGRID_BOARDS),$(LABGRID_OUT)/$(b).json)

test-labgrid: image $(HARNESS) labgrid-setup
	$(LG_PYTEST) tests/labgrid/test_glue.py --shootdown-harness $(HARNESS)
	@$(MAKE) --no-print-directory labgrid
	$(LG_PYTHON) tests/labgrid/profiles.py env virt --kernel $(KERNEL_IMG) \
	    --bootargs "ktest=* ktest.fail=1" --out $(LABGRID_OUT)/virt-fail.yaml
	! $(LG_PYTEST) tests/labgrid/test_ktap.py --lg-env $(LABGRID_OUT)/virt-fail.yaml \
	    --shootdown-harness $(HARNESS) --junitxml $(LABGRID_OUT)/virt-fail.junit.xml
	$(LG_PYTHON) tests/labgrid/junit_expect.py $(LABGRID_OUT)/virt-fail.junit.xml \
	    --failed 'test_ktap[ktest.selftest_fail]'

test-labgrid-farm: image chainloader $(HARNESS) labgrid-setup
	@bash qemu/install.sh ser2net
	$(LG_PYTHON) tests/labgrid/farm_loopback.py --kernel $(KERNEL_IMG) \
	    --chainloader $(CHAINLOADER_IMG) --harness $(HARNESS) --bootargs "ktest=* $(BOOTARGS)"

# The same farm with ktest.fail=1: pytest must fail, on exactly that case.
test-labgrid-farm-fail: image chainloader $(HARNESS) labgrid-setup
	@bash qemu/install.sh ser2net
	! $(LG_PYTHON) tests/labgrid/farm_loopback.py --kernel $(KERNEL_IMG) --name farm-raspi4b-fail \
	    --chainloader $(CHAINLOADER_IMG) --harness $(HARNESS) --bootargs "ktest=* ktest.fail=1"
	$(LG_PYTHON) tests/labgrid/junit_expect.py $(LABGRID_OUT)/farm/farm-raspi4b-fail.junit.xml \
	    --failed 'test_ktap[ktest.selftest_fail]'

lava-jobs: labgrid-setup
	$(LG_PYTHON) tests/lava/jobs.py --out $(LAVA_JOBS) --bootargs "ktest=* $(BOOTARGS)" \
	    $(if $(KERNEL_URL),--kernel-url $(KERNEL_URL)) $(if $(DTB_URL),--dtb-url $(DTB_URL))

test-lava: lava-jobs
	@bash qemu/install.sh lava $(BUILD)
	PYTHONPATH=$(LAVA_PYTHONPATH) $(LG_PYTEST) tests/lava/test_jobs.py --jobs $(LAVA_JOBS)
