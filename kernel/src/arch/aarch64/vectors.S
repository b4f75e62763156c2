/*
 * EL1 exception vectors (Arm ARM D1.10.2, "Exception vectors"): 16 entries of 0x80 bytes,
 * 2 KiB aligned. Every entry saves a TrapFrame (arch::aarch64::exceptions::TrapFrame) on the
 * exception stack (SP_EL1) and calls handle_exception(frame, kind); if that returns, the
 * (possibly edited) frame is restored and the exception returns.
 *
 * The kernel runs on SP_EL0, so an exception taken from kernel code lands in the "current EL
 * with SP0" group and runs on a separate stack: a main-stack overflow can still be reported.
 * An IRQ (entry 1, taken only inside an interrupt window, arch::aarch64::irq) goes the same
 * way: every register, SIMD ones included, ELR and SPSR are saved and restored, so the
 * interrupted code resumes as it was; handle_exception dispatches it to the GIC driver.
 */

.equ FRAME_GPRS,  0
.equ FRAME_SP,    248
.equ FRAME_ELR,   256
.equ FRAME_SPSR,  264
.equ FRAME_ESR,   272
.equ FRAME_FAR,   280
.equ FRAME_FP,    288
.equ FRAME_SIZE,  800

.macro VECTOR kind
    .balign 0x80
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #(FRAME_GPRS + 0 * 8)]
    mov     x0, #\kind
    b       exception_common
.endm

.section .text.vectors, "ax"
.balign 0x800
.global exception_vectors
exception_vectors:
    VECTOR 0    // current EL, SP0: synchronous
    VECTOR 1    //                  IRQ
    VECTOR 2    //                  FIQ
    VECTOR 3    //                  SError
    VECTOR 4    // current EL, SPx: synchronous
    VECTOR 5    //                  IRQ
    VECTOR 6    //                  FIQ
    VECTOR 7    //                  SError
    VECTOR 8    // lower EL, AArch64
    VECTOR 9
    VECTOR 10
    VECTOR 11
    VECTOR 12   // lower EL, AArch32
    VECTOR 13
    VECTOR 14
    VECTOR 15

exception_common:
    stp     x2, x3, [sp, #(FRAME_GPRS + 2 * 8)]
    stp     x4, x5, [sp, #(FRAME_GPRS + 4 * 8)]
    stp     x6, x7, [sp, #(FRAME_GPRS + 6 * 8)]
    stp     x8, x9, [sp, #(FRAME_GPRS + 8 * 8)]
    stp     x10, x11, [sp, #(FRAME_GPRS + 10 * 8)]
    stp     x12, x13, [sp, #(FRAME_GPRS + 12 * 8)]
    stp     x14, x15, [sp, #(FRAME_GPRS + 14 * 8)]
    stp     x16, x17, [sp, #(FRAME_GPRS + 16 * 8)]
    stp     x18, x19, [sp, #(FRAME_GPRS + 18 * 8)]
    stp     x20, x21, [sp, #(FRAME_GPRS + 20 * 8)]
    stp     x22, x23, [sp, #(FRAME_GPRS + 22 * 8)]
    stp     x24, x25, [sp, #(FRAME_GPRS + 24 * 8)]
    stp     x26, x27, [sp, #(FRAME_GPRS + 26 * 8)]
    stp     x28, x29, [sp, #(FRAME_GPRS + 28 * 8)]
    mrs     x1, sp_el0
    stp     x30, x1, [sp, #(FRAME_GPRS + 30 * 8)]
    mrs     x1, elr_el1
    mrs     x2, spsr_el1
    stp     x1, x2, [sp, #FRAME_ELR]
    mrs     x1, esr_el1
    mrs     x2, far_el1
    stp     x1, x2, [sp, #FRAME_ESR]
    add     x1, sp, #FRAME_FP
    stp     q0, q1, [x1, #(0 * 32)]
    stp     q2, q3, [x1, #(1 * 32)]
    stp     q4, q5, [x1, #(2 * 32)]
    stp     q6, q7, [x1, #(3 * 32)]
    stp     q8, q9, [x1, #(4 * 32)]
    stp     q10, q11, [x1, #(5 * 32)]
    stp     q12, q13, [x1, #(6 * 32)]
    stp     q14, q15, [x1, #(7 * 32)]
    stp     q16, q17, [x1, #(8 * 32)]
    stp     q18, q19, [x1, #(9 * 32)]
    stp     q20, q21, [x1, #(10 * 32)]
    stp     q22, q23, [x1, #(11 * 32)]
    stp     q24, q25, [x1, #(12 * 32)]
    stp     q26, q27, [x1, #(13 * 32)]
    stp     q28, q29, [x1, #(14 * 32)]
    stp     q30, q31, [x1, #(15 * 32)]
    mov     x1, x0
    mov     x0, sp
    bl      handle_exception

    add     x1, sp, #FRAME_FP
    ldp     q0, q1, [x1, #(0 * 32)]
    ldp     q2, q3, [x1, #(1 * 32)]
    ldp     q4, q5, [x1, #(2 * 32)]
    ldp     q6, q7, [x1, #(3 * 32)]
    ldp     q8, q9, [x1, #(4 * 32)]
    ldp     q10, q11, [x1, #(5 * 32)]
    ldp     q12, q13, [x1, #(6 * 32)]
    ldp     q14, q15, [x1, #(7 * 32)]
    ldp     q16, q17, [x1, #(8 * 32)]
    ldp     q18, q19, [x1, #(9 * 32)]
    ldp     q20, q21, [x1, #(10 * 32)]
    ldp     q22, q23, [x1, #(11 * 32)]
    ldp     q24, q25, [x1, #(12 * 32)]
    ldp     q26, q27, [x1, #(13 * 32)]
    ldp     q28, q29, [x1, #(14 * 32)]
    ldp     q30, q31, [x1, #(15 * 32)]
    ldp     x1, x2, [sp, #FRAME_ELR]
    msr     elr_el1, x1
    msr     spsr_el1, x2
    ldp     x30, x1, [sp, #(FRAME_GPRS + 30 * 8)]
    msr     sp_el0, x1
    ldp     x0, x1, [sp, #(FRAME_GPRS + 0 * 8)]
    ldp     x2, x3, [sp, #(FRAME_GPRS + 2 * 8)]
    ldp     x4, x5, [sp, #(FRAME_GPRS + 4 * 8)]
    ldp     x6, x7, [sp, #(FRAME_GPRS + 6 * 8)]
    ldp     x8, x9, [sp, #(FRAME_GPRS + 8 * 8)]
    ldp     x10, x11, [sp, #(FRAME_GPRS + 10 * 8)]
    ldp     x12, x13, [sp, #(FRAME_GPRS + 12 * 8)]
    ldp     x14, x15, [sp, #(FRAME_GPRS + 14 * 8)]
    ldp     x16, x17, [sp, #(FRAME_GPRS + 16 * 8)]
    ldp     x18, x19, [sp, #(FRAME_GPRS + 18 * 8)]
    ldp     x20, x21, [sp, #(FRAME_GPRS + 20 * 8)]
    ldp     x22, x23, [sp, #(FRAME_GPRS + 22 * 8)]
    ldp     x24, x25, [sp, #(FRAME_GPRS + 24 * 8)]
    ldp     x26, x27, [sp, #(FRAME_GPRS + 26 * 8)]
    ldp     x28, x29, [sp, #(FRAME_GPRS + 28 * 8)]
    add     sp, sp, #FRAME_SIZE
    eret

/*
 * Probes: single instructions that may fault. handle_exception recognises a fault at one of
 * the __probe_*_insn addresses, records it, and resumes at __probe_fault with the fault
 * returned as (x0 = 0, x1 = 1). Used by tests that expect a fault and by fault-tolerant reads.
 */
.section .text, "ax"
.global __probe_read_u64
__probe_read_u64:                       // (addr) -> (value, faulted)
    mov     x2, x0
.global __probe_read_insn
__probe_read_insn:
    ldr     x0, [x2]
    mov     x1, #0
    ret

.global __probe_write_u64
__probe_write_u64:                      // (addr, value) -> (0, faulted)
.global __probe_write_insn
__probe_write_insn:
    str     x1, [x0]
    mov     x0, #0
    mov     x1, #0
    ret

.global __probe_exec
__probe_exec:                           // (addr) -> (x0 of callee, faulted): calls addr
    stp     x29, x30, [sp, #-16]!
    mov     x29, sp
    mov     x1, #0
.global __probe_exec_call
__probe_exec_call:
    blr     x0
    mov     x1, #0
    ldp     x29, x30, [sp], #16
    ret
.global __probe_exec_fault
__probe_exec_fault:
    mov     x0, #0
    mov     x1, #1
    ldp     x29, x30, [sp], #16
    ret

.global __probe_fault
__probe_fault:
    mov     x0, #0
    mov     x1, #1
    ret
