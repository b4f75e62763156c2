//! The free cover's question to the page tables ([`planner::MappedQuery`]), answered from the
//! tables the SMMU itself walks for the context: the CD's TTB0, which is the address space's
//! own root (SVA shares the CPU's tables). `arch_invalidate_secondary_tlbs` runs after the CPU
//! tables were changed, so the extra pages are asked about as they are now.

use super::planner::{MappedQuery, Plan};
use super::*;
use crate::mm::pgtable::{self, VaRange};

/// A context's TTB0 tables, walked through the driver's physical memory.
struct ContextTables<'m> {
    mem: &'m dyn PhysMemory,
    root: PhysAddr,
}

impl MappedQuery for ContextTables<'_> {
    fn maps_anything(&self, start: u64, end: u64, budget: &mut u32) -> Option<bool> {
        let range = VaRange::from_bounds(VirtAddr(start), VirtAddr(end))?;
        pgtable::maps_anything(self.mem, self.root, range, budget)
    }
}

/// The debug knob's answer: every extra page unmapped, whatever the tables say.
struct AssumeUnmapped;

impl MappedQuery for AssumeUnmapped {
    fn maps_anything(&self, _: u64, _: u64, _: &mut u32) -> Option<bool> {
        Some(false)
    }
}

impl<'a, B: SmmuBackend, C: Clock> Smmu<'a, B, C> {
    /// `plan`, or its free cover if the context's tables say the extra pages map nothing.
    pub(super) fn cover_if_free(&self, ctx: ContextId, plan: Plan, debug: DebugKnobs) -> Plan {
        if debug.cover_ignores_tables {
            return plan.cover(&AssumeUnmapped);
        }
        match self.walked_root(ctx) {
            Some(root) => plan.cover(&ContextTables {
                mem: self.mem,
                root,
            }),
            None => plan,
        }
    }

    /// The root of the tables the SMMU walks for `ctx`, if they have the kernel engine's
    /// layout (48-bit TTB0 region, 4 KiB granule: `maps_anything` walks that layout only).
    fn walked_root(&self, ctx: ContextId) -> Option<PhysAddr> {
        if u32::from(self.config.va_bits) != pgtable::descriptor::VA_BITS {
            return None;
        }
        let streams = self.streams.lock();
        let c = streams.contexts.get(&ctx)?;
        (c.fields.valid && !c.fields.epd0).then_some(c.fields.ttb0)
    }
}
