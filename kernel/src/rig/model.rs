//! Rigs on a private model SMMU over RAM (any board): for the model-only checks (IOTLB hit
//! counts, fault injection) without disturbing the board's SMMU.

use super::*;

/// The SMMU of [`Rig::model`] rigs. Each rig leaks its model and driver (a few frames): a
/// subscription may outlive the test by a grace period, and tests are few.
pub struct TestModelDomain;

static TEST_MODEL: spin::Mutex<Option<&'static Sva>> = spin::Mutex::new(None);

impl SvaDomain for TestModelDomain {
    fn sva() -> Option<&'static Sva> {
        *TEST_MODEL.lock()
    }
}

impl Rig<TestModelDomain> {
    /// A private model SMMU over RAM with its own DMA engine (StreamID [`MODEL_DMA_SID`]),
    /// driven with `cfg` (short timeouts, small queues unless given otherwise).
    pub fn model(model_cfg: ModelConfig, cfg: SmmuConfig) -> Result<Self, RigError> {
        let frames = frames().ok_or_else(|| fail("no frame allocator"))?;
        let model: &'static SmmuModel<'static> = alloc::boxed::Box::leak(alloc::boxed::Box::new(
            SmmuModel::new(&LINEAR, model_cfg).map_err(fail)?,
        ));
        let backend: &'static dyn SmmuBackend = model;
        let smmu: &'static BoardSmmu = alloc::boxed::Box::leak(alloc::boxed::Box::new(
            Smmu::new(backend, GenericTimerClock, &LINEAR, frames, cfg).map_err(fail)?,
        ));
        let sva: &'static Sva =
            alloc::boxed::Box::leak(alloc::boxed::Box::new(Sva::new(smmu, "test-model")));
        *TEST_MODEL.lock() = Some(sva);
        let engine = DmaEngine::new(model, MODEL_DMA_SID)
            .with_transactions(4, FaultPolicy::Continue)
            .map_err(fail)?;
        Rig::new(smmu, sva, Some(model), Device::model(engine), MODEL_DMA_SID)
    }

    /// Driver settings for model rigs: 32 StreamIDs, small queues, 20 ms timeouts.
    pub fn small_config() -> SmmuConfig {
        SmmuConfig {
            max_sid: 0x1f,
            cmdq_log2: 6,
            eventq_log2: 6,
            sync_timeout_ns: 20_000_000,
            ack_timeout_ns: 20_000_000,
            ..SmmuConfig::default()
        }
    }
}
