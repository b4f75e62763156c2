//! The fault injector at the driver/backend boundary (`iommu::inject`), on top of the model:
//! what the driver sees when it is armed (a CMD_SYNC timeout, a refused TLBI), that the real
//! SMMU state stays consistent, and that coherence holds throughout (the model's checker).

#[path = "smmu_support.rs"]
mod support;

use shootdown::iommu::backend::inject::InjectStats;
use shootdown::iommu::backend::SmmuBackend;
use shootdown::iommu::driver::SmmuError;
use shootdown::iommu::fake::LeafAttrs;
use shootdown::iommu::spec::command::CommandKind;
use shootdown::iommu::spec::event::AccessKind;
use shootdown::iommu::spec::regs::{offset, CommandErrorCode};
use shootdown::mm::{VirtAddr, PAGE_SIZE};
use support::*;

const PAGE: u64 = PAGE_SIZE as u64;

#[test]
fn injected_faults_look_real_to_the_driver_and_keep_coherence() {
    with_injecting_world(|w, inject| {
        w.map_pages(VA, 4, LeafAttrs::RW, 0);
        let dma = w.dma();
        let warm = |page: u64| dma.touch(VirtAddr(VA + page * PAGE), AccessKind::Write);
        let unmap = |page: u64| w.try_unmap(VA + page * PAGE, 1);

        // Disarmed: a pass-through.
        warm(0).unwrap();
        assert!(unmap(0).unwrap().recovered.is_none());
        assert!(warm(0).is_err());
        assert_eq!(inject.stats(), InjectStats::default());

        // A refused TLBI: the SMMU really stopped in front of it, the driver skipped it, ran
        // the ASID-wide fallback, and the real GERROR/GERRORN are untouched.
        warm(1).unwrap();
        inject.arm_command_error();
        let report = unmap(1).unwrap();
        let failure = report.recovered.expect("the refused TLBI is reported");
        assert_eq!(failure.code, CommandErrorCode::Illegal);
        assert_eq!(
            failure.command.map(|c| c.kind()),
            Ok(CommandKind::TlbiNhVaRange),
            "the driver read back the refused command"
        );
        assert_eq!(report.commands.get(CommandKind::TlbiNhAsid), 1);
        assert_eq!(inject.stats().command_errors, 1);
        let s = w.smmu.stats();
        assert_eq!((s.command_errors, s.invalidation_fallbacks), (1, 1));
        assert!(warm(1).is_err(), "no stale translation after the fallback");
        assert_eq!(
            w.model.read32(offset::GERROR),
            w.model.read32(offset::GERRORN),
            "the model never saw an error"
        );
        assert_eq!(w.model.stats().command_errors, 0);
        assert!(!inject.disarm(), "one-shot: nothing left armed");

        // A CMD_SYNC that never completes, as far as the driver can tell: a typed error, and
        // the next submission works (the freeze ends when the driver moves on).
        warm(2).unwrap();
        inject.arm_sync_timeout();
        let err = unmap(2).unwrap_err();
        assert!(matches!(err, SmmuError::SyncTimeout { .. }), "{err}");
        assert_eq!(inject.stats().syncs_timed_out, 1);
        assert_eq!(w.smmu.stats().sync_timeouts, 1);
        // The commands did run on the SMMU: the injected failure errs on the safe side.
        assert!(warm(2).is_err());
        warm(3).unwrap();
        assert!(unmap(3).unwrap().recovered.is_none());
        assert!(warm(3).is_err());
        assert!(w.model.stale_translations().is_empty());
        // Arming and disarming without a submission injects nothing.
        inject.arm_sync_timeout();
        inject.arm_command_error();
        assert!(inject.disarm());
        assert_eq!(
            inject.stats(),
            InjectStats {
                syncs_timed_out: 1,
                command_errors: 1
            }
        );
    });
}
