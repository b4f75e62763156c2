//! Tests of the test framework itself: one that fails and one that crashes (an unmapped read,
//! or with `ktest.crash=stack` a stack overflow), each only when a boot argument asks for it,
//! so the harness can prove it notices both.

use crate::board::bootargs;
use crate::board::bootargs::Crash;
use crate::ktest;
use crate::ktest::TestError;

ktest!(ktest, selftest_fail, |_t| {
    if bootargs().ktest_fail {
        return Err(TestError::Fail(alloc::string::String::from(
            "deliberate failure requested by ktest.fail=1",
        )));
    }
    Ok(())
});

/// Recurses until the main stack's guard page stops it (each frame keeps 512 bytes live).
#[inline(never)]
fn overflow_the_stack(depth: u64) -> u64 {
    let frame = [depth; 64];
    core::hint::black_box(&frame);
    if depth == u64::MAX {
        return 0;
    }
    overflow_the_stack(depth + 1).wrapping_add(frame[7])
}

ktest!(ktest, selftest_crash, |_t| {
    if bootargs().ktest_crash == Some(Crash::StackOverflow) {
        // Runs off the bottom of the main stack: the guard page faults, the handler (on its
        // own stack) must say so.
        let v = overflow_the_stack(0);
        return Err(TestError::Fail(alloc::format!(
            "unbounded recursion returned {v}"
        )));
    }
    if bootargs().ktest_crash == Some(Crash::Exception) {
        // An access to an address no page table maps: an unexpected Data Abort, which must
        // end the run with "Bail out!" and a decoded report.
        // SAFETY: deliberately invalid; the exception handler ends the kernel.
        let v = unsafe { core::ptr::read_volatile(0xdead_0000_0000usize as *const u64) };
        return Err(TestError::Fail(alloc::format!(
            "read of an unmapped address returned {v:#x}"
        )));
    }
    Ok(())
});

ktest!(ktest, rng_is_seeded, |t| {
    let mut a = crate::ktest::TestCtx::new(t.seed, "x", "y");
    let mut b = crate::ktest::TestCtx::new(t.seed, "x", "y");
    let mut c = crate::ktest::TestCtx::new(t.seed, "x", "z");
    let (x, y, z) = (a.rand(), b.rand(), c.rand());
    crate::kassert_eq!(x, y);
    crate::kassert!(x != z, "different tests must get different streams");
    Ok(())
});
