//! Bringing the SMMU up and down: probe, reset to default deny, enable, disable, and the
//! sizes of its tables and queues.

use super::*;

/// Frames needed for `bytes`, as an allocation order.
pub(super) fn order_for(bytes: usize) -> u32 {
    let frames = bytes.div_ceil(1 << PAGE_SHIFT).max(1);
    frames.next_power_of_two().trailing_zeros()
}

/// Bits needed to number StreamIDs 0..=max_sid.
pub(super) fn sid_bits_for(max_sid: u32) -> u8 {
    (32 - max_sid.leading_zeros()) as u8
}

/// The event queue's size: the least of what the configuration wants, what the SMMU allows
/// (SMMU_IDR1.EVENTQS, §6.3.2) and what fits in the configured memory budget.
pub(super) fn event_queue_geometry(
    config: &SmmuConfig,
    eventq_max_log2: u8,
) -> Result<QueueGeometry, SmmuError> {
    let records = config.eventq_budget / EVENT_SIZE;
    if records == 0 {
        return Err(SmmuError::BadConfig(
            "the event-queue budget must hold at least one record (32 bytes)",
        ));
    }
    let budget_log2 = records.ilog2().min(u32::from(u8::MAX)) as u8;
    Ok(QueueGeometry::clamped(
        config.eventq_log2.min(eventq_max_log2).min(budget_log2),
    ))
}

/// A queue base register value: address, size and the allocate hint.
pub(super) fn queue_base(base: PhysAddr, geo: QueueGeometry) -> u64 {
    let mut v = LocalRegisterCopy::<u64, Q_BASE::Register>::new(0);
    v.modify(
        Q_BASE::ADDR.val(base.as_u64() >> 5)
            + Q_BASE::LOG2SIZE.val(geo.log2_entries().into())
            + Q_BASE::ALLOC::SET,
    );
    v.get()
}

impl<'a, B: SmmuBackend, C: Clock> Smmu<'a, B, C> {
    /// Probes the SMMU behind `regs`, allocates its stream table and queues, and enables it
    /// with every stream denied.
    ///
    /// On failure nothing stays allocated — unless the SMMU could not be disabled again, in
    /// which case its memory is leaked rather than handed back while it may still use it.
    pub fn new(
        regs: B,
        clock: C,
        mem: &'a dyn PhysMemory,
        frames: &'a dyn ContiguousFrameAllocator,
        config: SmmuConfig,
    ) -> Result<Self, SmmuError> {
        let features = Features::read(&regs);
        if let Some(missing) = features.missing_requirement() {
            return Err(SmmuError::Unsupported(missing));
        }
        if config.batch == 0 {
            return Err(SmmuError::BadConfig("batch must be at least 1"));
        }
        let planner = PlannerConfig::new(config.strategy, features.range_invalidation)?
            .with_va_bits(config.va_bits)?;
        let sid_log2 = sid_bits_for(config.max_sid);
        if sid_log2 > features.sid_bits {
            return Err(SmmuError::SidOutOfRange {
                sid: config.max_sid,
                max: ((1u64 << features.sid_bits) - 1) as u32,
            });
        }
        let cmdq_geo = QueueGeometry::clamped(config.cmdq_log2.min(features.cmdq_max_log2));
        let eventq_geo = event_queue_geometry(&config, features.eventq_max_log2)?;
        if cmdq_geo.entries() < 2 {
            return Err(SmmuError::BadConfig(
                "the command queue needs at least 2 entries",
            ));
        }

        let strtab_order = order_for(STE_SIZE << sid_log2);
        let cmdq_order = order_for(cmdq_geo.bytes(CMD_SIZE));
        let eventq_order = order_for(eventq_geo.bytes(EVENT_SIZE));
        let strtab = frames
            .alloc_contiguous_zeroed(strtab_order)
            .map_err(|_| SmmuError::OutOfMemory)?;
        let cmdq = match frames.alloc_contiguous_zeroed(cmdq_order) {
            Ok(q) => q,
            Err(_) => {
                frames.free_contiguous(strtab, strtab_order);
                return Err(SmmuError::OutOfMemory);
            }
        };
        let eventq = match frames.alloc_contiguous_zeroed(eventq_order) {
            Ok(q) => q,
            Err(_) => {
                frames.free_contiguous(cmdq, cmdq_order);
                frames.free_contiguous(strtab, strtab_order);
                return Err(SmmuError::OutOfMemory);
            }
        };
        // Resolved once: every command is then two plain atomic stores, with no reachability
        // check per word. A queue the accessor cannot reach is refused here.
        let Some(cmdq_words) = mem.words(cmdq, cmdq_geo.bytes(CMD_SIZE) / 8) else {
            frames.free_contiguous(eventq, eventq_order);
            frames.free_contiguous(cmdq, cmdq_order);
            frames.free_contiguous(strtab, strtab_order);
            return Err(SmmuError::Unreachable(cmdq));
        };
        let asid_words = (1usize << features.asid_bits).div_ceil(64);
        let smmu = Smmu {
            regs,
            clock,
            mem,
            frames,
            features,
            config,
            strtab,
            strtab_order,
            sid_log2,
            cmdq_order,
            eventq_order,
            cmdq: coalesce::SharedQueue::new(CommandQueue {
                base: cmdq,
                words: cmdq_words,
                geo: cmdq_geo,
                prod: 0,
                cons: 0,
                ledger: coalesce::SyncLedger::new(),
                stats: DriverStats::default(),
            }),
            eventq: spin::Mutex::new(EventQueue {
                base: eventq,
                geo: eventq_geo,
                allocated: eventq_geo,
                cons: 0,
                ovack: 0,
                overflow_unreported: false,
                // As many records as the queue holds: with the interrupt moving them here, no
                // burst is lost that the queue alone would have held.
                log: evtq::EventLog::new(eventq_geo.entries() as usize),
            }),
            streams: spin::Mutex::new(Streams {
                contexts: BTreeMap::new(),
                next_context: 0,
                attached: BTreeMap::new(),
                // ASID 0 is never handed out (as Linux), so a zeroed CD can never alias one.
                asids: {
                    let mut v = vec![0u64; asid_words];
                    v[0] = 1;
                    v
                },
                asid_cursor: 1,
            }),
            planner: spin::Mutex::new(planner),
            debug: AtomicU32::new(DebugKnobs::default().to_bits()),
            share_syncs: AtomicBool::new(true),
            disabled: AtomicBool::new(false),
            cr0: spin::Mutex::new(()),
        };
        match smmu.reset() {
            Ok(()) => Ok(smmu),
            Err(e) => {
                if smmu.disable().is_ok() {
                    smmu.free_structures();
                }
                Err(e)
            }
        }
    }

    /// The reset sequence (§3.2 / Linux `arm_smmu_device_reset()`): everything off, traffic
    /// aborted, tables and queues programmed, command queue on, caches invalidated, event
    /// queue on, translation on.
    pub(super) fn reset(&self) -> Result<(), SmmuError> {
        self.disable()?;
        let mut cr1 = LocalRegisterCopy::<u32, CR1::Register>::new(0);
        // Write-back cacheable, inner shareable table and queue accesses (coherent SMMU).
        cr1.modify(
            CR1::TABLE_SH.val(3)
                + CR1::TABLE_OC.val(1)
                + CR1::TABLE_IC.val(1)
                + CR1::QUEUE_SH.val(3)
                + CR1::QUEUE_OC.val(1)
                + CR1::QUEUE_IC.val(1),
        );
        self.regs.write32(offset::CR1, cr1.get());
        // Record C_BAD_STREAMID; ignore broadcast TLBIs (our ASIDs are private).
        let mut cr2 = LocalRegisterCopy::<u32, CR2::Register>::new(0);
        cr2.modify(CR2::RECINVSID::SET + CR2::PTM::SET);
        self.regs.write32(offset::CR2, cr2.get());

        let mut base = LocalRegisterCopy::<u64, STRTAB_BASE::Register>::new(0);
        base.modify(STRTAB_BASE::ADDR.val(self.strtab.as_u64() >> 6) + STRTAB_BASE::RA::SET);
        self.regs.write64(offset::STRTAB_BASE, base.get());
        let mut cfg = LocalRegisterCopy::<u32, STRTAB_BASE_CFG::Register>::new(0);
        cfg.modify(
            STRTAB_BASE_CFG::FMT::Linear + STRTAB_BASE_CFG::LOG2SIZE.val(self.sid_log2.into()),
        );
        self.regs.write32(offset::STRTAB_BASE_CFG, cfg.get());

        {
            let mut q = self.cmdq.lock();
            self.regs
                .write64(offset::CMDQ_BASE, queue_base(q.base, q.geo));
            self.regs.write32(offset::CMDQ_PROD, 0);
            self.regs.write32(offset::CMDQ_CONS, 0);
            // Whatever was outstanding will never complete: its waiters fail.
            q.ledger.abandon_outstanding();
            q.prod = 0;
            q.cons = 0;
        }
        {
            let mut q = self.eventq.lock();
            self.regs
                .write64(offset::EVENTQ_BASE, queue_base(q.base, q.geo));
            self.regs.write32(offset::EVENTQ_PROD, 0);
            self.regs.write32(offset::EVENTQ_CONS, 0);
            q.cons = 0;
            q.ovack = 0;
            q.overflow_unreported = false;
            q.log.clear();
        }
        let mut cr0 = LocalRegisterCopy::<u32, CR0::Register>::new(0);
        cr0.modify(CR0::CMDQEN::SET);
        self.write_cr0(cr0.get())?;
        // Nothing cached from before us may survive (§4.3.2 CFGI_ALL, §4.4.4.1 NSNH_ALL).
        self.invalidate_all()?;
        cr0.modify(CR0::EVENTQEN::SET);
        self.write_cr0(cr0.get())?;
        // Polled operation: no interrupts (the kernel may enable the wired ones later).
        self.write_acked(offset::IRQ_CTRL, offset::IRQ_CTRLACK, "SMMU_IRQ_CTRLACK", 0)?;
        cr0.modify(CR0::SMMUEN::SET);
        self.write_cr0(cr0.get())
    }

    /// Turns translation and both queues off, with GBPA aborting all traffic meanwhile. CR0 is
    /// written even if GBPA never acknowledges: SMMUEN = 0 is the last resort's point, and an
    /// SMMU that ignores GBPA may still obey CR0. The first error is reported.
    pub(super) fn disable(&self) -> Result<(), SmmuError> {
        let gbpa = self.set_gbpa_abort();
        let cr0 = {
            let _cr0 = self.cr0.lock();
            self.write_cr0(0)
        };
        gbpa.and(cr0)
    }

    /// Sets SMMU_GBPA.ABORT (§6.3.14) and waits for UPDATE to clear.
    pub(super) fn set_gbpa_abort(&self) -> Result<(), SmmuError> {
        let mut gbpa = LocalRegisterCopy::<u32, GBPA::Register>::new(0);
        gbpa.modify(GBPA::ABORT::SET + GBPA::UPDATE::SET);
        self.regs.write32(offset::GBPA, gbpa.get());
        let deadline = self.deadline(self.config.ack_timeout_ns);
        loop {
            let seen = self.regs.read32(offset::GBPA);
            if !LocalRegisterCopy::<u32, GBPA::Register>::new(seen).is_set(GBPA::UPDATE) {
                return Ok(());
            }
            if self.clock.now_ns() >= deadline {
                return Err(SmmuError::AckTimeout {
                    register: "SMMU_GBPA",
                    wanted: gbpa.get(),
                    seen,
                });
            }
            crate::sync::spin_loop();
        }
    }

    pub(super) fn write_cr0(&self, value: u32) -> Result<(), SmmuError> {
        self.write_acked(offset::CR0, offset::CR0ACK, "SMMU_CR0ACK", value)
    }

    /// Writes a register that has an ACK twin (§6.3.9 CR0/CR0ACK, §6.3.16 IRQ_CTRL/ACK) and
    /// waits until the twin reads the same value.
    pub(super) fn write_acked(
        &self,
        reg: usize,
        ack: usize,
        name: &'static str,
        value: u32,
    ) -> Result<(), SmmuError> {
        self.regs.write32(reg, value);
        let deadline = self.deadline(self.config.ack_timeout_ns);
        loop {
            let seen = self.regs.read32(ack);
            if seen == value {
                return Ok(());
            }
            if self.clock.now_ns() >= deadline {
                return Err(SmmuError::AckTimeout {
                    register: name,
                    wanted: value,
                    seen,
                });
            }
            crate::sync::spin_loop();
        }
    }

    pub(super) fn deadline(&self, timeout_ns: u64) -> u64 {
        self.clock.now_ns().saturating_add(timeout_ns)
    }

    pub(super) fn free_structures(&self) {
        // The queue locks are not held across the frees: nothing is taken under `eventq`
        // but `cr0` (evtq.rs).
        let cmdq = self.cmdq.lock().base;
        let eventq = self.eventq.lock().base;
        self.frames.free_contiguous(self.strtab, self.strtab_order);
        self.frames.free_contiguous(cmdq, self.cmdq_order);
        self.frames.free_contiguous(eventq, self.eventq_order);
    }

    /// Disables the SMMU (all traffic aborts) and frees its tables and queues. If the SMMU does
    /// not acknowledge, the memory is leaked rather than freed under it.
    pub fn shutdown(self) -> Result<(), SmmuError> {
        self.disable()?;
        let cds: Vec<PhysAddr> = self
            .streams
            .lock()
            .contexts
            .values()
            .map(|c| c.cd)
            .collect();
        for cd in cds {
            self.frames.free(cd);
        }
        self.free_structures();
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(order_for(64), 0);
        assert_eq!(order_for(4096), 0);
        assert_eq!(order_for(4097), 1);
        assert_eq!(order_for(16 * 1024), 2);
        assert_eq!(order_for(12 * 1024), 2);
        assert_eq!(sid_bits_for(0), 0);
        assert_eq!(sid_bits_for(0x10), 5);
        assert_eq!(sid_bits_for(0xff), 8);
        assert_eq!(sid_bits_for(u32::MAX), 32);
        let q = queue_base(PhysAddr(0x4000_1000), QueueGeometry::new(8).unwrap());
        assert_eq!(q, 1 << 62 | 0x4000_1000 | 8);
    }

    #[test]
    fn event_queue_is_the_least_of_wanted_allowed_and_budget() {
        let log2 = |eventq_log2, eventq_budget, idr1| {
            let config = SmmuConfig {
                eventq_log2,
                eventq_budget,
                ..SmmuConfig::default()
            };
            event_queue_geometry(&config, idr1).map(|g| g.log2_entries())
        };
        // The default budget: 8192 records, whatever larger the SMMU offers.
        assert_eq!(log2(19, EVENTQ_BUDGET, 19), Ok(13));
        assert_eq!(EVENTQ_BUDGET >> 13, EVENT_SIZE);
        // The SMMU allows fewer; the configuration wants fewer.
        assert_eq!(log2(19, EVENTQ_BUDGET, 7), Ok(7));
        assert_eq!(log2(5, EVENTQ_BUDGET, 19), Ok(5));
        // A budget that is not a power of two rounds down; one record is the least.
        assert_eq!(log2(19, 3 * 4096, 19), Ok(8));
        assert_eq!(log2(19, EVENT_SIZE, 19), Ok(0));
        assert!(matches!(
            log2(19, EVENT_SIZE - 1, 19),
            Err(SmmuError::BadConfig(_))
        ));
        // More than the architecture encodes is clamped.
        assert_eq!(log2(31, usize::MAX, 31), Ok(19));
    }
}
