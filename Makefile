# Shootdown: build, run and test the kernel. `make help` lists the targets.
#
# Every target installs what it needs (Rust toolchain for aarch64-unknown-none, QEMU >= 9 with
# raspi4b, the Pi 4 device tree) on first use; see .cargo/toolchain.sh and qemu/install.sh.

BOARD     ?= virt-smmu
BOOTARGS  ?=
QEMU_ARGS ?=
TIMEOUT   ?=

BUILD     := build
KERNEL_ELF := $(BUILD)/shootdown.elf
KERNEL_IMG := $(BUILD)/shootdown.img
PI_DTB    := $(BUILD)/dtb/bcm2711-rpi-4-b.dtb
KTARGET_DIR := target/kernel
HARNESS   := target/release/harness
TEST_BOARDS := virt virt-smmu raspi4b
comma := ,
space := $(empty) $(empty)

.DEFAULT_GOAL := image

# Toolchain variables (KCARGO, KTARGET, HCARGO, OBJCOPY), found or installed once per checkout.
ifeq ($(filter clean help,$(MAKECMDGOALS)),)
include $(BUILD)/toolchain.mk
endif

$(BUILD)/toolchain.mk: .cargo/toolchain.sh
	@mkdir -p $(BUILD)
	@bash .cargo/toolchain.sh > $@.tmp && mv $@.tmp $@

.PHONY: help image run gdb test test-boards qemu dtb clean FORCE

help:
	@echo "make image   build $(KERNEL_IMG) (arm64 Image) and $(KERNEL_ELF) (ELF with symbols)"
	@echo "make run     boot BOARD=$(BOARD) in QEMU [BOOTARGS=... QEMU_ARGS=...]"
	@echo "make test    host unit tests + in-kernel tests on: $(TEST_BOARDS)"
	@echo "make gdb     like run, but QEMU waits for gdb-multiarch on :1234"
	@echo "boards: virt, virt-smmu, raspi4b (profiles in qemu/)"

# ---------------------------------------------------------------------------------------------
# The kernel image: one file for every board.
image: $(KERNEL_IMG)

$(KERNEL_ELF): FORCE
	@mkdir -p $(BUILD)
	CARGO_TARGET_DIR=$(KTARGET_DIR) $(KCARGO) build -p shootdown --bin shootdown --release --target $(KTARGET)
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

$(HARNESS): FORCE
	@$(HCARGO) build -q -p shootdown-harness --release

BOARD_DEPS = qemu $(if $(filter raspi4b,$(BOARD)),$(PI_DTB))

run: image $(HARNESS) $(BOARD_DEPS)
	$(HARNESS) run --board $(BOARD) --kernel $(KERNEL_IMG) --bootargs "$(BOOTARGS)" -- $(QEMU_ARGS)

gdb: image $(HARNESS) $(BOARD_DEPS)
	@bash qemu/install.sh gdb
	$(HARNESS) run --gdb --board $(BOARD) --kernel $(KERNEL_IMG) --bootargs "$(BOOTARGS)" -- $(QEMU_ARGS)

# ---------------------------------------------------------------------------------------------
# Tests: the portable core and the harness on the host, the harness against the real kernel,
# then the kernel's KTAP on every board.
test: qemu $(PI_DTB)
	$(HCARGO) test --workspace --release
	@$(MAKE) --no-print-directory image
	SHOOTDOWN_KERNEL=$(KERNEL_IMG) $(HCARGO) test -q --release -p shootdown-harness --test kernel_selfcheck
	@$(MAKE) --no-print-directory test-boards

test-boards: image $(HARNESS) qemu $(PI_DTB)
	$(HARNESS) test --board $(subst $(space),$(comma),$(TEST_BOARDS)) --kernel $(KERNEL_IMG) \
	    --bootargs "ktest=* $(BOOTARGS)" --junit $(BUILD)/junit.xml $(if $(TIMEOUT),--timeout $(TIMEOUT))

clean:
	rm -rf $(BUILD) target
