//! Tests of the test framework itself: one that fails and one that crashes, each only when a
//! boot argument asks for it, so the harness can prove it notices both.

use crate::kernel::bootargs;
use crate::ktest;
use crate::ktest::TestError;

ktest!(ktest, selftest_fail, |_t| {
    if bootargs().flag("ktest.fail") {
        return Err(TestError::Fail(alloc::string::String::from(
            "deliberate failure requested by ktest.fail=1",
        )));
    }
    Ok(())
});

ktest!(ktest, selftest_crash, |_t| {
    if bootargs().flag("ktest.crash") {
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
