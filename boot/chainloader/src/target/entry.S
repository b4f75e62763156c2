/*
 * boot/chainloader/src/target/entry.S: the chainloader's first and last instructions.
 *
 * Entered like a Linux arm64 Image (Documentation/arch/arm64/booting.rst, "Call the kernel
 * image"): MMU off, x0 = device tree, at EL2 (Pi firmware, QEMU raspi4b) or EL1. The image is a
 * static PIE linked at 0 (boot/chainloader/link.ld): before any absolute address is used, this
 * code adds the load address to every R_AARCH64_RELATIVE slot (ELF for the Arm 64-bit
 * Architecture, "Dynamic relocations": value = Delta(S) + A, Delta = load address here), so the
 * loader runs wherever it was put. Until then only adr/adrp (PC-relative) are used.
 *
 * Secondary cores normally never come here (the Pi firmware and QEMU keep them in spin tables
 * at 0xd8..0xf0). One that does waits on secondary_release and follows the boot core into the
 * kernel's entry point, where the kernel parks it by MPIDR (boot/entry.S park_in_image).
 */

.equ R_AARCH64_RELATIVE, 1027
.equ MAX_SECONDARY_SLOTS, 4          // Aff0 0..3: the BCM2711's four Cortex-A72
.equ CPTR_EL2_TFP,      (1 << 10)   // Arm ARM D19.2 CPTR_EL2: trap FP/SIMD
.equ CPACR_EL1_FPEN,    (3 << 20)   // Arm ARM D19.2 CPACR_EL1: no FP/SIMD traps

/* The arm64 Image header: 64 bytes, little endian (booting.rst section 4). */
.section .text.head, "ax"
.global _start
_start:
    b       primary_entry               // code0
    .long   0                           // code1
    .quad   0                           // text_offset: any 2 MiB-aligned base (we relocate)
    .quad   __image_size                // image_size: up to __image_end, bss and stack included
    .quad   0xa                         // flags: little endian, 4K pages, placement anywhere
    .quad   0                           // res2
    .quad   0                           // res3
    .quad   0                           // res4
    .ascii  "ARM\x64"                   // magic
    .long   0                           // res5

.section .text.boot, "ax"
primary_entry:
    mrs     x1, mpidr_el1
    and     x1, x1, #0xff
    cbnz    x1, secondary_wait
    mov     x19, x0                     // x19 = device tree
    adr     x20, _start                 // x20 = load address

    // Relocate: every Elf64_Rela { r_offset, r_info, r_addend } in .rela.dyn.
    adrp    x2, __rela_start
    add     x2, x2, :lo12:__rela_start
    adrp    x3, __rela_end
    add     x3, x3, :lo12:__rela_end
1:  cmp     x2, x3
    b.hs    2f
    ldp     x4, x5, [x2], #16           // r_offset, r_info
    ldr     x6, [x2], #8                // r_addend
    cmp     w5, #R_AARCH64_RELATIVE     // ELF64_R_TYPE = low 32 bits of r_info
    b.ne    park                        // nothing else can appear in a static PIE
    add     x6, x6, x20
    str     x6, [x20, x4]
    b       1b

2:  // Zero .bss (16-byte aligned by link.ld).
    adrp    x2, __bss_start
    add     x2, x2, :lo12:__bss_start
    adrp    x3, __bss_end
    add     x3, x3, :lo12:__bss_end
3:  cmp     x2, x3
    b.hs    4f
    stp     xzr, xzr, [x2], #16
    b       3b

4:  adrp    x2, __stack_top
    add     x2, x2, :lo12:__stack_top
    mov     sp, x2
    // Rust may use FP/SIMD registers (memcpy, CRC loops): make sure they do not trap.
    mrs     x2, CurrentEL
    lsr     x2, x2, #2
    cmp     x2, #2
    b.ne    5f
    mrs     x3, cptr_el2
    bic     x3, x3, #CPTR_EL2_TFP
    msr     cptr_el2, x3
    b       6f
5:  mov     x3, #CPACR_EL1_FPEN
    msr     cpacr_el1, x3
6:  isb
    mov     x0, x19
    mov     x1, x20
    bl      loader_main                 // never returns
park:
    wfe
    b       park

/*
 * A core other than the boot core: wait to be sent to the kernel (x0 = 0, booting.rst).
 * secondary_state[Aff0] says 1 while it waits here and 2 once it has read the entry, so the
 * boot core does not hand our memory to the kernel while a core still runs this loop.
 */
secondary_wait:
    cmp     x1, #MAX_SECONDARY_SLOTS
    b.hs    park                        // no slot: never released (the kernel knows 4 CPUs)
    adrp    x4, secondary_state
    add     x4, x4, :lo12:secondary_state
    mov     x5, #1
    str     x5, [x4, x1, lsl #3]
    dsb     sy
    adrp    x2, secondary_release
    add     x2, x2, :lo12:secondary_release
1:  wfe
    ldr     x3, [x2]
    cbz     x3, 1b
    mov     x5, #2
    str     x5, [x4, x1, lsl #3]
    dsb     sy
    mov     x0, xzr
    mov     x1, xzr
    mov     x2, xzr
    br      x3

/*
 * jump_to_kernel(x0 = entry, x1 = device tree): never returns. The kernel and the device tree
 * were written with the MMU off (non-cacheable) after their lines were cleaned and invalidated,
 * so only the instruction cache is left to make coherent (booting.rst: "the I-cache ... must
 * not contain stale entries for the kernel image").
 */
.section .text, "ax"
.global jump_to_kernel
jump_to_kernel:
    mov     x19, x0
    mov     x20, x1
    adrp    x2, secondary_release
    add     x2, x2, :lo12:secondary_release
    str     x19, [x2]
    dsb     sy
    sev
    // Wait (bounded) until every core that arrived here has left.
    adrp    x4, secondary_state
    add     x4, x4, :lo12:secondary_state
    mov     x5, #0
1:  cmp     x5, #MAX_SECONDARY_SLOTS
    b.hs    3f
    mov     x6, #(1 << 24)
2:  ldr     x7, [x4, x5, lsl #3]
    cmp     x7, #1
    b.ne    4f
    subs    x6, x6, #1
    b.ne    2b
4:  add     x5, x5, #1
    b       1b
3:  ic      iallu
    dsb     sy
    isb
    mov     x0, x20
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    br      x19

.section .data
.balign 8
secondary_release:
    .quad   0
secondary_state:
    .fill   MAX_SECONDARY_SLOTS, 8, 0
