/*
 * boot/entry.S: the first instructions every CPU runs.
 *
 * Assembled into the kernel by kernel/src/arch/aarch64/boot.rs (global_asm!), which supplies the
 * named constants (in braces) from the Rust side so there is one definition of each.
 *
 * Boot protocol (Linux Documentation/arch/arm64/booting.rst, "Call the kernel image"): the
 * primary CPU enters at _start with the MMU off, x0 = physical address of the device tree,
 * at EL2 (Pi firmware, QEMU raspi4b, virt with virtualization=on) or EL1 (QEMU virt).
 * Secondary CPUs enter at secondary_entry (PSCI CPU_ON on virt, the spin-table release
 * address on the Pi), also with the MMU off.
 *
 * Until the MMU is on, this code only uses PC-relative addressing (adr/adrp), so it runs
 * wherever the image was loaded. It builds early page tables that map
 *   - the kernel image at its link address (KERNEL_VBASE, 4 KiB pages, RWX for now),
 *   - an identity map of the 1 GiB block holding the image (to survive turning the MMU on),
 *   - the 2 GiB around the device tree in the linear map (so Rust can read it),
 *   - one Device page for the fallback UART (chosen by where we were loaded: the Pi's RAM
 *     starts at 0, virt's at 1 GiB),
 * turns the MMU on and jumps to the link address. Rust (arch::aarch64::mmu) then replaces
 * these tables with the final ones.
 */

.equ PAGE_SIZE,         4096
.equ DESC_TABLE,        0b11            // Arm ARM D8.3.1: table descriptor (L0-L2)
.equ DESC_BLOCK,        0b01            //                 block descriptor (L1-L2)
.equ DESC_PAGE,         0b11            //                 page descriptor (L3)
.equ DESC_AF,           (1 << 10)       // Access flag
.equ DESC_SH_INNER,     (3 << 8)        // Inner shareable
.equ DESC_XN,           (3 << 53)       // PXN | UXN
.equ ATTR_NORMAL,       ({MAIR_NORMAL_IDX} << 2)
.equ ATTR_DEVICE,       ({MAIR_DEVICE_IDX} << 2)
.equ EARLY_L3_TABLES,   8               // 8 x 2 MiB: linker.ld asserts the image fits

/* ------------------------------------------------------------------------------------------ */
/* The arm64 Image header: 64 bytes, fields little-endian (booting.rst section 4).            */
/* ------------------------------------------------------------------------------------------ */
.section .text.head, "ax"
.global _start
_start:
    b       primary_entry               // code0
    .long   0                           // code1
    .quad   0                           // text_offset: anywhere 2 MiB aligned (we are PIC)
    .quad   __image_size                // image_size: everything up to __image_end
    .quad   0xa                         // flags: little endian, 4K pages, placement anywhere
    .quad   0                           // res2
    .quad   0                           // res3
    .quad   0                           // res4
    .ascii  "ARM\x64"                   // magic
    .long   0                           // res5

.section .text.boot, "ax"

/* ------------------------------------------------------------------------------------------ */
primary_entry:
    mov     x19, x0                     // x19 = device tree (physical)
    mrs     x1, mpidr_el1
    and     x1, x1, #0xff
    cbnz    x1, park_in_image           // QEMU raspi4b may start every core here
    adr     x20, _start                 // x20 = physical load address
    bl      enter_el1                   // x0 = exception level we were entered at
    mov     x21, x0
    bl      build_early_tables
    adrp    x0, early_ttbr0
    add     x0, x0, :lo12:early_ttbr0
    adrp    x1, early_ttbr1
    add     x1, x1, :lo12:early_ttbr1
    bl      mmu_on
    ldr     x0, =primary_high           // absolute: the link address
    br      x0

/*
 * Cores that entered at _start but are not the boot core wait here, MMU off, until the kernel
 * writes an entry address into their slot of park_mailbox (and cleans it to memory).
 */
park_in_image:
    cmp     x1, #{MAX_CPUS}
    b.hs    park_forever
    adrp    x2, park_mailbox
    add     x2, x2, :lo12:park_mailbox
1:  wfe
    ldr     x3, [x2, x1, lsl #3]
    cbz     x3, 1b
    br      x3
park_forever:
    wfe
    b       park_forever

/* ------------------------------------------------------------------------------------------ */
/* Secondary CPUs: enter here (physical address) with the MMU off.                            */
/* ------------------------------------------------------------------------------------------ */
.global secondary_entry
secondary_entry:
    bl      enter_el1
    // Find our logical CPU number: the slot of secondary_boot.mpidr that matches MPIDR_EL1.
    mrs     x1, mpidr_el1
    ldr     x6, =0xff00ffffff           // Aff3..Aff0
    and     x1, x1, x6
    adrp    x2, secondary_boot
    add     x2, x2, :lo12:secondary_boot
    add     x3, x2, #{SB_MPIDR}
    mov     x4, #0
1:  cmp     x4, #{MAX_CPUS}
    b.hs    park_forever                // not a CPU the kernel asked for
    ldr     x5, [x3, x4, lsl #3]
    cmp     x5, x1
    b.eq    2f
    add     x4, x4, #1
    b       1b
2:  mov     x19, x4                     // x19 = logical CPU number
    ldr     x0, [x2, #{SB_TTBR0}]
    ldr     x1, [x2, #{SB_TTBR1}]
    bl      mmu_on
    ldr     x0, =secondary_high
    br      x0
    .ltorg

/* ------------------------------------------------------------------------------------------ */
/* enter_el1: from EL2 drop to EL1 (returning to x30 at EL1); at EL1 just return.             */
/* Returns x0 = the exception level we were entered at. Clobbers x1.                          */
/* ------------------------------------------------------------------------------------------ */
enter_el1:
    mrs     x0, CurrentEL
    lsr     x0, x0, #2
    cmp     x0, #2
    b.eq    1f
    b.hi    park_forever                // EL3: not a boot protocol we support
    mov     x1, #(3 << 20)              // CPACR_EL1.FPEN: no FP/SIMD traps (Rust uses them)
    msr     cpacr_el1, x1
    isb
    ret
1:  mov     x1, #(1 << 31)              // HCR_EL2.RW: EL1 is AArch64; nothing trapped to EL2
    msr     hcr_el2, x1
    mrs     x1, cnthctl_el2
    orr     x1, x1, #3                  // EL1PCTEN | EL1PCEN: EL1 may use the physical timer
    msr     cnthctl_el2, x1
    msr     cntvoff_el2, xzr
    mov     x1, #0x33ff                 // CPTR_EL2: RES1 bits only, no FP/SIMD traps
    msr     cptr_el2, x1
    msr     hstr_el2, xzr
    mrs     x1, id_aa64dfr0_el1         // PMUv3 present (PMUVer not 0 or 0xf)?
    ubfx    x1, x1, #8, #4
    cbz     x1, 3f
    cmp     x1, #0xf
    b.eq    3f
    mrs     x1, pmcr_el0                // MDCR_EL2 (Arm ARM D19.2): HPMN = PMCR_EL0.N gives EL1
    ubfx    x1, x1, #11, #5             // every event counter; TPM = TPMCR = 0: no PMU traps
    msr     mdcr_el2, x1                // (its other fields may reset UNKNOWN on real boards)
3:
    mrs     x1, midr_el1                // EL1 reads of MIDR/MPIDR see the real values
    msr     vpidr_el2, x1
    mrs     x1, mpidr_el1
    msr     vmpidr_el2, x1
    msr     vttbr_el2, xzr
    mrs     x1, id_aa64pfr0_el1         // GICv3 system registers present?
    ubfx    x1, x1, #24, #4
    cbz     x1, 2f
    mrs     x1, S3_4_C12_C9_5           // ICC_SRE_EL2
    orr     x1, x1, #1                  // SRE
    orr     x1, x1, #8                  // Enable: EL1 may use ICC_SRE_EL1
    msr     S3_4_C12_C9_5, x1
    isb
2:  ldr     x1, ={SCTLR_MMU_OFF}
    msr     sctlr_el1, x1
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    mov     x1, #0x3c5                  // SPSR: EL1h, D A I F masked
    msr     spsr_el2, x1
    msr     elr_el2, x30
    mov     x0, #2
    eret

/* ------------------------------------------------------------------------------------------ */
/* mmu_on(x0 = TTBR0, x1 = TTBR1): program MAIR/TCR and switch the MMU and caches on.         */
/* ------------------------------------------------------------------------------------------ */
mmu_on:
    ldr     x2, ={MAIR}
    msr     mair_el1, x2
    ldr     x2, ={TCR}
    mrs     x3, id_aa64mmfr0_el1
    and     x4, x3, #0xf                // PARange -> TCR.IPS (same encoding), capped at 48 bits
    cmp     x4, #5
    mov     x5, #5
    csel    x4, x4, x5, ls
    bfi     x2, x4, #32, #3
    ubfx    x4, x3, #4, #4              // ASIDBits: 0b0010 = 16-bit ASIDs -> TCR.AS
    cmp     x4, #2
    cset    x4, eq
    bfi     x2, x4, #36, #1
    msr     tcr_el1, x2
    msr     ttbr0_el1, x0
    msr     ttbr1_el1, x1
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    ldr     x2, ={SCTLR_MMU_ON}
    msr     sctlr_el1, x2
    isb
    ic      iallu
    dsb     nsh
    isb
    ret

/* ------------------------------------------------------------------------------------------ */
/* idmap_run_ops(x0..x6 = operations, x7 = how many) -> x0 = how many ran.                    */
/* A TTBR1 replacement (arch::aarch64::switch::run_from_idmap), called at its physical         */
/* address through the identity map: between the break and the make the kernel's own VAs are  */
/* unmapped, so this touches no memory and no stack. An operation is (code << 56) | value:     */
/* 1 = MSR TTBR1_EL1, value; 2 = ISB; 3 = TLBI VMALLE1; 4 = DSB NSH. An unknown code stops.    */
/* ------------------------------------------------------------------------------------------ */
.global idmap_run_ops
idmap_run_ops:
    mov     x9, #0
1:  cmp     x9, x7
    b.hs    9f
    lsr     x10, x0, #56
    and     x11, x0, #0x00ffffffffffffff
    cmp     x10, #1
    b.ne    2f
    msr     ttbr1_el1, x11
    b       8f
2:  cmp     x10, #2
    b.ne    3f
    isb
    b       8f
3:  cmp     x10, #3
    b.ne    4f
    tlbi    vmalle1
    b       8f
4:  cmp     x10, #4
    b.ne    9f
    dsb     nsh
8:  mov     x0, x1                      // next operation
    mov     x1, x2
    mov     x2, x3
    mov     x3, x4
    mov     x4, x5
    mov     x5, x6
    add     x9, x9, #1
    b       1b
9:  mov     x0, x9
    ret

/* ------------------------------------------------------------------------------------------ */
/* build_early_tables: x19 = device tree PA, x20 = image load PA. Clobbers x0-x15.            */
/* ------------------------------------------------------------------------------------------ */
build_early_tables:
    // Zero every early table page (MMU off: plain stores, no DC ZVA on Device memory).
    adrp    x0, __boot_tables_start
    add     x0, x0, :lo12:__boot_tables_start
    adrp    x1, __boot_tables_end
    add     x1, x1, :lo12:__boot_tables_end
1:  stp     xzr, xzr, [x0], #16
    cmp     x0, x1
    b.lo    1b

    // TTBR0: identity map of the 1 GiB block holding the image, Normal memory, executable.
    adrp    x0, early_ttbr0
    add     x0, x0, :lo12:early_ttbr0
    adrp    x1, early_id_l1
    add     x1, x1, :lo12:early_id_l1
    lsr     x2, x20, #39
    orr     x3, x1, #DESC_TABLE
    str     x3, [x0, x2, lsl #3]
    ubfx    x2, x20, #30, #9
    lsr     x3, x20, #30
    lsl     x3, x3, #30
    ldr     x4, =(DESC_BLOCK | DESC_AF | DESC_SH_INNER | ATTR_NORMAL)
    orr     x3, x3, x4
    str     x3, [x1, x2, lsl #3]

    // TTBR1 root: slot for the kernel image (KERNEL_VBASE) and for the linear map.
    adrp    x0, early_ttbr1
    add     x0, x0, :lo12:early_ttbr1
    adrp    x1, early_kernel_l1
    add     x1, x1, :lo12:early_kernel_l1
    ldr     x2, ={KERNEL_VBASE}
    ubfx    x2, x2, #39, #9
    orr     x3, x1, #DESC_TABLE
    str     x3, [x0, x2, lsl #3]
    adrp    x2, early_kernel_l2         // KERNEL_VBASE is 1 GiB aligned: L1 index 0
    add     x2, x2, :lo12:early_kernel_l2
    orr     x3, x2, #DESC_TABLE
    str     x3, [x1]

    // L2 -> the L3 tables, then one page descriptor per image page.
    adrp    x3, early_kernel_l3
    add     x3, x3, :lo12:early_kernel_l3
    mov     x4, #0
2:  add     x5, x3, x4, lsl #12
    orr     x5, x5, #DESC_TABLE
    str     x5, [x2, x4, lsl #3]
    add     x4, x4, #1
    cmp     x4, #EARLY_L3_TABLES
    b.lo    2b
    adrp    x4, __image_end             // number of image pages
    add     x4, x4, :lo12:__image_end
    sub     x4, x4, x20
    lsr     x4, x4, #12
    ldr     x5, =(DESC_PAGE | DESC_AF | DESC_SH_INNER | ATTR_NORMAL)
    orr     x5, x5, x20                 // first page descriptor (PA = load address)
    mov     x6, #0
3:  str     x5, [x3, x6, lsl #3]
    add     x5, x5, #PAGE_SIZE
    add     x6, x6, #1
    cmp     x6, x4
    b.lo    3b

    // Fallback UART: one Device page at the top 2 MiB of the kernel's L2 (FIXMAP_UART_VA).
    adrp    x3, early_fixmap_l3
    add     x3, x3, :lo12:early_fixmap_l3
    orr     x4, x3, #DESC_TABLE
    str     x4, [x2, #(511 * 8)]
    ldr     x4, ={UART_PA_PI}
    ldr     x5, ={UART_PA_VIRT}
    mov     x6, #0x40000000             // loaded below 1 GiB: a Pi (RAM at 0); else virt
    cmp     x20, x6
    csel    x4, x4, x5, lo
    ldr     x5, =(DESC_PAGE | DESC_AF | DESC_XN | ATTR_DEVICE)
    orr     x4, x4, x5
    str     x4, [x3]

    // Linear map: the two 1 GiB blocks starting at the one holding the device tree.
    cbz     x19, 5f
    adrp    x1, early_linear_l1
    add     x1, x1, :lo12:early_linear_l1
    ldr     x2, ={LINEAR_BASE}
    ubfx    x2, x2, #39, #9
    orr     x3, x1, #DESC_TABLE
    str     x3, [x0, x2, lsl #3]
    lsr     x2, x19, #30
    cmp     x2, #511                    // beyond 512 GiB: not something our boards do
    b.hs    5f
    lsl     x3, x2, #30
    ldr     x4, =(DESC_BLOCK | DESC_AF | DESC_SH_INNER | DESC_XN | ATTR_NORMAL)
    orr     x3, x3, x4
    str     x3, [x1, x2, lsl #3]
    add     x2, x2, #1
    mov     x4, #0x40000000
    add     x3, x3, x4
    str     x3, [x1, x2, lsl #3]
5:
    // The tables were written with the MMU off; drop any stale cache lines over them.
    mrs     x2, ctr_el0
    ubfx    x2, x2, #16, #4
    mov     x3, #4
    lsl     x3, x3, x2                  // D-cache line size in bytes
    adrp    x0, __boot_tables_start
    add     x0, x0, :lo12:__boot_tables_start
    adrp    x1, __boot_tables_end
    add     x1, x1, :lo12:__boot_tables_end
6:  dc      ivac, x0
    add     x0, x0, x3
    cmp     x0, x1
    b.lo    6b
    dsb     sy
    ret
    .ltorg

/* ------------------------------------------------------------------------------------------ */
/* Running at the link address from here on.                                                  */
/* ------------------------------------------------------------------------------------------ */
primary_high:
    adrp    x0, __bss_start             // zero .bss (now cacheable, through the kernel VA)
    add     x0, x0, :lo12:__bss_start
    adrp    x1, __bss_end
    add     x1, x1, :lo12:__bss_end
1:  stp     xzr, xzr, [x0], #16
    cmp     x0, x1
    b.lo    1b
    mov     x0, #0                      // CPU 0
    bl      set_cpu_stacks
    mov     x0, x19                     // device tree PA
    mov     x1, x20                     // load PA
    mov     x2, x21                     // exception level entered at
    bl      kernel_entry                // never returns
    b       park_forever

secondary_high:
    mov     x0, x19
    bl      set_cpu_stacks
    mov     x0, x19
    bl      secondary_cpu_entry         // never returns
    b       park_forever

/*
 * set_cpu_stacks(x0 = cpu): exceptions run on SP_EL1 (a small stack of their own, so that a
 * stack overflow on the main stack can still be reported), everything else on SP_EL0.
 * Layout per CPU, from low to high: guard page, main stack, guard page, exception stack.
 */
set_cpu_stacks:
    adrp    x1, cpu_stacks
    add     x1, x1, :lo12:cpu_stacks
    ldr     x2, ={CPU_STACK_STRIDE}
    madd    x1, x0, x2, x1              // this CPU's block
    ldr     x2, ={EXC_STACK_TOP}
    add     x2, x1, x2
    mov     sp, x2                      // SP_EL1 (we run with SPSel = 1 here)
    ldr     x2, ={MAIN_STACK_TOP}
    add     x2, x1, x2
    msr     sp_el0, x2
    msr     tpidr_el1, x0               // per-CPU: the logical CPU number
    adrp    x2, exception_vectors
    add     x2, x2, :lo12:exception_vectors
    msr     vbar_el1, x2
    msr     spsel, #0                   // from now on SP is SP_EL0
    isb
    ret
    .ltorg

/* ------------------------------------------------------------------------------------------ */
/* Data shared with the MMU-off code. Written by Rust, cleaned to the point of coherency.      */
/* ------------------------------------------------------------------------------------------ */
.section .data
.balign 8
.global park_mailbox
park_mailbox:
    .fill   {MAX_CPUS}, 8, 0
.global secondary_boot
secondary_boot:                         // layout = arch::aarch64::smp::SecondaryBoot
    .fill   {SB_SIZE} / 8, 8, 0

.section .boot_tables, "aw", %nobits
.balign PAGE_SIZE
.global early_ttbr0
early_ttbr0:        .space PAGE_SIZE
early_id_l1:        .space PAGE_SIZE
early_ttbr1:        .space PAGE_SIZE
early_kernel_l1:    .space PAGE_SIZE
early_kernel_l2:    .space PAGE_SIZE
early_kernel_l3:    .space PAGE_SIZE * EARLY_L3_TABLES
early_fixmap_l3:    .space PAGE_SIZE
early_linear_l1:    .space PAGE_SIZE

.section .stacks, "aw", %nobits
.balign PAGE_SIZE
.global cpu_stacks
cpu_stacks:
    .space  {CPU_STACK_STRIDE} * {MAX_CPUS}
