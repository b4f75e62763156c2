//! The CPU-specific edges of synchronization: "which CPU am I on", "wait for an event" and "send
//! an event". The kernel installs [`PlatformHooks`] at boot (MPIDR-derived index, `WFE`, `SEV`);
//! until then, and on the host, portable fallbacks are used.

use core::sync::atomic::{AtomicPtr as CoreAtomicPtr, Ordering as CoreOrdering};

/// Platform callbacks the kernel provides once, before secondary CPUs start.
///
/// The hook pointer itself lives in a `core` atomic even under loom: it is configuration, set
/// before any concurrency, not part of any modelled protocol.
#[derive(Debug)]
pub struct PlatformHooks {
    /// A small dense index of the calling CPU (0 for the boot CPU). Indices may exceed the
    /// number of per-CPU slots a primitive has; they are then folded, which stays correct.
    pub current_cpu: fn() -> usize,
    /// Idles the calling CPU until an event may have happened (`WFE`). Spurious returns are
    /// fine; missing an event sent by [`PlatformHooks::send_event`] after the waiter's last
    /// check of its condition is not (the `WFE` event register gives exactly that).
    pub wait_for_event: fn(),
    /// Wakes every CPU waiting in `wait_for_event` (`SEV`, preceded by a `DSB` so the store that
    /// made the condition true is visible first).
    pub send_event: fn(),
    /// Offers the rest of this CPU's turn to another hardware thread or vCPU (`YIELD`): a hint
    /// that costs nothing where nothing else can run.
    pub yield_cpu: fn(),
}

static HOOKS: CoreAtomicPtr<PlatformHooks> = CoreAtomicPtr::new(core::ptr::null_mut());

/// Installs the platform hooks. Call once at boot before other CPUs use any primitive.
pub fn install_platform_hooks(hooks: &'static PlatformHooks) {
    HOOKS.store(
        hooks as *const PlatformHooks as *mut PlatformHooks,
        CoreOrdering::Release,
    );
}

#[cfg_attr(loom, allow(dead_code))] // models never install hooks
fn hooks() -> Option<&'static PlatformHooks> {
    let p = HOOKS.load(CoreOrdering::Acquire);
    // SAFETY: the only non-null value ever stored is a `&'static PlatformHooks`.
    unsafe { p.as_ref() }
}

/// The index of the calling CPU (a per-thread index on the host and in loom models).
pub fn current_cpu() -> usize {
    #[cfg(loom)]
    {
        MODEL_CPU.with(|c| c.get())
    }
    #[cfg(not(loom))]
    {
        if let Some(h) = hooks() {
            return (h.current_cpu)();
        }
        host_thread_index()
    }
}

#[cfg(all(not(target_os = "none"), not(loom)))]
fn host_thread_index() -> usize {
    use core::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, CoreOrdering::Relaxed);
    }
    INDEX.with(|i| *i)
}

/// Before the hooks are installed only the boot CPU runs.
#[cfg(all(target_os = "none", not(loom)))]
fn host_thread_index() -> usize {
    0
}

#[cfg(loom)]
loom::thread_local! {
    static MODEL_CPU: core::cell::Cell<usize> = core::cell::Cell::new(0);
}

/// Sets the CPU index the calling loom thread reports (models choose it deterministically).
#[cfg(loom)]
pub fn set_model_cpu(cpu: usize) {
    MODEL_CPU.with(|c| c.set(cpu));
}

/// Waits until `condition()` is true. The only busy-wait primitive of the kernel.
///
/// Whoever makes a waited-on condition true must call [`notify_waiters`] afterwards, which is
/// what lets the kernel sleep in `WFE` here instead of spinning. `condition` is evaluated
/// repeatedly and must be cheap and side-effect free.
#[inline]
pub fn wait_until(mut condition: impl FnMut() -> bool) {
    while !condition() {
        relax();
    }
}

#[inline]
fn relax() {
    #[cfg(not(loom))]
    if let Some(h) = hooks() {
        (h.wait_for_event)();
        return;
    }
    super::spin_loop();
}

/// Lets other CPUs run before this one goes on, where they share its core: another hardware
/// thread, the next vCPU of a round-robin emulator (QEMU's TCG under `-icount` runs one vCPU at
/// a time and switches at `YIELD`), another host thread, loom's next thread. For a CPU that has
/// just made work possible for others that are mid-way through the same operation. Only a
/// hint: on a core of its own it does nothing.
#[inline]
pub fn yield_cpu() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    match hooks() {
        Some(h) => (h.yield_cpu)(),
        None => yield_host_thread(),
    }
}

/// Without hooks: the host's scheduler, or nothing before the kernel installed them.
#[cfg(not(loom))]
fn yield_host_thread() {
    #[cfg(not(target_os = "none"))]
    std::thread::yield_now();
}

/// Wakes every CPU waiting in [`wait_until`] so it re-evaluates its condition.
#[inline]
pub fn notify_waiters() {
    #[cfg(not(loom))]
    if let Some(h) = hooks() {
        (h.send_event)();
    }
}
