//! What the kernel runs when it is not testing or benchmarking: the SVA coherence job (what
//! `make run` shows), the soak on every CPU (`job=soak`), and the fault plan the soak injects.
//! Workloads sit above the product: they use the rigs and the runtime, and nothing but the
//! composition root uses them. The one `unsafe` allowed is the CPU reading back, through its
//! own translation, the bytes a device wrote into a shared page (job and soak).
#![deny(unsafe_code)]

pub mod fault;
#[cfg(target_os = "none")]
pub mod job;
#[cfg(target_os = "none")]
pub mod soak;

/// Runs the workload the boot arguments name (`job=soak`, else the coherence job) and returns
/// the kernel's exit status.
#[cfg(target_os = "none")]
pub fn run(args: &crate::board::BootArgs) -> crate::rt::ExitCode {
    match args.job {
        crate::board::bootargs::Job::Soak => soak::run(),
        crate::board::bootargs::Job::Coherence => job::run(args),
    }
}
