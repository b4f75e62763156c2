//! The real driver, deliberately broken through its debug knobs, on the SMMU model: the model
//! must catch what hardware (or QEMU) would get wrong too (issue 23). The model-only cases
//! (walk cache and Leaf, the scope of each CFGI) are in the model's own tests, which drive the
//! command queue by hand.

#[path = "smmu_support.rs"]
mod support;

use shootdown::iommu::driver::DebugKnobs;
use shootdown::iommu::backend::model::checker::{StaleKind, StaleSource};
use shootdown::iommu::fake::LeafAttrs;
use shootdown::mm::{VirtAddr, PAGE_SIZE};
use support::*;

const PAGE: u64 = PAGE_SIZE as u64;

/// The driver's TLBI goes out unsynchronised before the PTE is cleared; the device refills from
/// the still-valid PTE; a later CMD_SYNC (of another invalidation) completes the TLBI. Hardware
/// may have acted on the TLBI when it consumed it, so the refilled entry survives.
#[test]
fn a_refill_between_the_tlbi_and_its_sync_survives_the_sync() {
    with_default_world(|w| {
        let frame = w.map_pages(VA, 1, LeafAttrs::RW, 0x5a)[0];
        w.smmu.set_debug_knobs(DebugKnobs {
            skip_sync: true,
            ..DebugKnobs::default()
        });
        w.invalidate(VA, 1);
        w.smmu.set_debug_knobs(DebugKnobs::default());
        assert_eq!(w.model.pending_commands(), 1, "TLBI consumed, not synced");
        let dma = w.dma();
        dma.read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
        w.tables.unmap(VirtAddr(VA)).unwrap();
        w.invalidate(VA + 0x10_0000, 1);
        assert_eq!(w.model.pending_commands(), 0);
        assert_eq!(dma.write(VirtAddr(VA), &[0xee; 8]), Ok(()));
        assert_eq!(w.byte(frame), 0xee, "the write reached the unmapped frame");
        let stale = w.model.take_stale_translations();
        assert_eq!(stale.len(), 1);
        assert_eq!(
            (stale[0].kind, stale[0].source),
            (StaleKind::UseAfterUnmap, StaleSource::Iotlb)
        );
    });
}

/// An unmap that returned without invalidating, then another unmap of a larger range in
/// progress when the device uses the old entry: the first unmap's bug, not a race.
#[test]
fn an_unmap_in_progress_does_not_excuse_an_earlier_one_that_skipped_its_tlbi() {
    with_default_world(|w| {
        w.map_pages(VA, 1, LeafAttrs::RW, 0x5a);
        let dma = w.dma();
        dma.read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
        w.smmu.set_debug_knobs(DebugKnobs {
            skip_invalidation: true,
            ..DebugKnobs::default()
        });
        w.unmap(VA, 1);
        w.smmu.set_debug_knobs(DebugKnobs::default());
        w.model
            .begin_unmap(w.asid, VirtAddr(VA), VirtAddr(VA + 16 * PAGE), 1000);
        assert_eq!(dma.write(VirtAddr(VA), &[0xee; 8]), Ok(()));
        let stale = w.model.take_stale_translations();
        assert_eq!(stale.len(), 1, "counted as a race instead");
        assert_eq!(stale[0].last_unmap.map(|u| u.id), Some(1));
        assert_eq!(w.model.stats().raced_translations, 0);
        assert!(w.model.end_unmap(1000));
    });
}
