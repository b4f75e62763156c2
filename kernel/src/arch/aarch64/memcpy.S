/* memcpy(x0 = dst, x1 = src, x2 = n) -> x0 = dst. The regions do not overlap.               */
/* Short copies load both ends of the range, possibly overlapping, and store them: no loop    */
/* and no alignment work for the struct moves Rust makes everywhere. Longer ones copy 64     */
/* bytes per iteration, then the last 64 bytes from the end. Accesses may be unaligned: Rust  */
/* code runs only with the MMU on (boot/entry.S builds the early tables in assembly), where   */
/* RAM is Normal memory and SCTLR_EL1.A is clear (Arm ARM B2.5.2: unaligned accesses to       */
/* Normal memory are permitted). Clobbers x3-x15 and the flags only, as AAPCS64 allows.       */
    .pushsection .text.memcpy, "ax"
    .global memcpy
    .type   memcpy, %function
    .p2align 4
memcpy:
    add     x4, x1, x2                  // src end
    add     x5, x0, x2                  // dst end
    cmp     x2, #16
    b.hi    2f
    cmp     x2, #8
    b.lo    1f
    ldr     x6, [x1]                    // 8..16
    ldr     x7, [x4, #-8]
    str     x6, [x0]
    str     x7, [x5, #-8]
    ret
1:  cmp     x2, #4
    b.lo    3f
    ldr     w6, [x1]                    // 4..7
    ldr     w7, [x4, #-4]
    str     w6, [x0]
    str     w7, [x5, #-4]
    ret
3:  cbz     x2, 9f                      // 1..3: first, middle, last byte
    lsr     x8, x2, #1
    ldrb    w6, [x1]
    ldrb    w7, [x1, x8]
    ldrb    w9, [x4, #-1]
    strb    w6, [x0]
    strb    w7, [x0, x8]
    strb    w9, [x5, #-1]
9:  ret
2:  cmp     x2, #32
    b.hi    4f
    ldp     x6, x7, [x1]                // 17..32
    ldp     x8, x9, [x4, #-16]
    stp     x6, x7, [x0]
    stp     x8, x9, [x5, #-16]
    ret
4:  cmp     x2, #64
    b.hi    5f
    ldp     x6, x7, [x1]                // 33..64
    ldp     x8, x9, [x1, #16]
    ldp     x10, x11, [x4, #-32]
    ldp     x12, x13, [x4, #-16]
    stp     x6, x7, [x0]
    stp     x8, x9, [x0, #16]
    stp     x10, x11, [x5, #-32]
    stp     x12, x13, [x5, #-16]
    ret
5:  mov     x3, x0                      // > 64: blocks until the last 64 bytes...
    mov     x14, x1
    sub     x15, x2, #64                // bytes before the last 64
6:  ldp     x6, x7, [x14]
    ldp     x8, x9, [x14, #16]
    ldp     x10, x11, [x14, #32]
    ldp     x12, x13, [x14, #48]
    add     x14, x14, #64
    stp     x6, x7, [x3]
    stp     x8, x9, [x3, #16]
    stp     x10, x11, [x3, #32]
    stp     x12, x13, [x3, #48]
    add     x3, x3, #64
    subs    x15, x15, #64
    b.hi    6b
    ldp     x6, x7, [x4, #-64]          // ...which are copied from the end
    ldp     x8, x9, [x4, #-48]
    ldp     x10, x11, [x4, #-32]
    ldp     x12, x13, [x4, #-16]
    stp     x6, x7, [x5, #-64]
    stp     x8, x9, [x5, #-48]
    stp     x10, x11, [x5, #-32]
    stp     x12, x13, [x5, #-16]
    ret
    .size   memcpy, . - memcpy
    .popsection
