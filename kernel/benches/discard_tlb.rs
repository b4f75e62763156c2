//! The TLB executor of the host benchmarks: walks each plan as the kernel's executor would,
//! without executing anything.

use std::hint::black_box;

use shootdown::mm::pgtable::{TlbMaintenance, TlbPlan};

/// Walks each plan without executing anything.
pub struct DiscardTlb;

impl TlbMaintenance for DiscardTlb {
    fn execute(&mut self, plan: &TlbPlan) {
        for op in plan.ops() {
            black_box(op);
        }
    }
}
