//! The command queue (cf. `arm_smmu_cmdq_*`): batches published with one CMDQ_PROD write,
//! ended by a CMD_SYNC that is waited for — shared between CPUs when their commands are queued
//! together ([`super::coalesce`]) — with command-error recovery on the way.

use super::coalesce::{CommandRing, Submission, SyncEvent, SyncHardware, SyncLedger, Tally};
use super::*;

impl<'a, B: SmmuBackend, C: Clock> Smmu<'a, B, C> {
    /// Submits `commands` in batches, then (if `sync`) waits for a CMD_SYNC after them.
    pub(super) fn submit(&self, commands: &[Command], sync: bool) -> Result<(), SmmuError> {
        self.submit_iter(commands.iter().copied(), sync)
    }

    pub(super) fn submit_iter(
        &self,
        commands: impl Iterator<Item = Command>,
        sync: bool,
    ) -> Result<(), SmmuError> {
        self.submit_with(commands, sync, self.debug_knobs(), &mut ())
    }

    /// [`Smmu::submit_iter`] for a caller that already read the debug knobs, counting what it
    /// published in `counts`.
    pub(super) fn submit_with(
        &self,
        commands: impl Iterator<Item = Command>,
        sync: bool,
        debug: DebugKnobs,
        counts: &mut impl Tally,
    ) -> Result<(), SmmuError> {
        let how = Submission {
            sync,
            batch: self.config.batch as usize,
            share: self.share_syncs.load(Ordering::Relaxed),
            adopt_earlier_sync: debug.adopt_earlier_sync,
        };
        self.cmdq.submit(self, commands, how, counts)
    }
}

impl<B: SmmuBackend, C: Clock> SyncHardware for Smmu<'_, B, C> {
    fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    fn sync_timeout_ns(&self) -> u64 {
        self.config.sync_timeout_ns
    }

    fn disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }
}

impl<'a, B: SmmuBackend, C: Clock> CommandRing<Smmu<'a, B, C>> for CommandQueue<'a> {
    fn ledger(&mut self) -> &mut SyncLedger {
        &mut self.ledger
    }

    fn capacity(&self) -> usize {
        self.geo.entries() as usize
    }

    /// Writes `cmds` after waiting for room, then CMDQ_PROD.
    fn publish(&mut self, smmu: &Smmu<'a, B, C>, cmds: &[Command]) -> Result<(), SmmuError> {
        self.wait_for_space(smmu, cmds.len() as u32)?;
        // Entries go beyond PROD, where the SMMU does not look, until PROD moves: a command
        // that fails to encode or store leaves the queue as it was.
        let mut prod = self.prod;
        for cmd in cmds {
            let words = cmd.encode().map_err(SmmuError::Command)?;
            self.store_entry(prod, words);
            prod = self.geo.advance(prod, 1);
            crate::trace::record(crate::trace::Kind::SmmuCommand, words[0] & 0xff, words[0]);
        }
        // The entries (and any STE/CD written before) must be visible before PROD moves.
        fence(Ordering::Release);
        smmu.regs.write32(offset::CMDQ_PROD, prod);
        self.prod = prod;
        self.stats.commands.add_all(cmds);
        self.stats.prod_writes += 1;
        Ok(())
    }

    /// Reads CMDQ_CONS; if the SMMU stopped on an error, records and repairs it (§7.1) and
    /// lets the queue run on. GERROR is read first: a CONS read before it could predate an
    /// error raised in between, and name the wrong command and error code.
    fn poll(&mut self, smmu: &Smmu<'a, B, C>) -> Result<(), SmmuError> {
        let gerror = smmu.regs.read32(offset::GERROR);
        let gerrorn = smmu.regs.read32(offset::GERRORN);
        let raw = smmu.regs.read32(offset::CMDQ_CONS);
        let cons = self.geo.ptr(raw);
        self.observe(cons);
        let active = LocalRegisterCopy::<u32, GERROR::Register>::new(gerror ^ gerrorn);
        if !active.is_set(GERROR::CMDQ_ERR) {
            return Ok(());
        }
        let err =
            LocalRegisterCopy::<u32, CMDQ_CONS::Register>::new(raw).read(CMDQ_CONS::ERR) as u8;
        let command = self.load_entry(cons);
        let code = CommandErrorCode::from_raw(err).unwrap_or(CommandErrorCode::Other(0));
        let f = CommandFailure {
            code,
            index: self.geo.index(cons),
            command: Command::decode(command),
        };
        self.stats.command_errors += 1;
        self.stats.last_command_error = Some(f);
        let at = self.ledger.consumed();
        self.ledger.record_refusal(at, f);
        if code != CommandErrorCode::Abort {
            // CERROR_ILL (and anything else): the command cannot be run; a CMD_SYNC in its
            // place keeps the queue's meaning. CERROR_ABT was a fetch abort: retry as is.
            let sync = Command::SYNC.encode().map_err(SmmuError::Command)?;
            self.store_entry(cons, sync);
            fence(Ordering::Release);
        }
        // Acknowledge exactly this error by making our GERRORN bit equal GERROR's.
        let bit = 1 << GERROR::CMDQ_ERR.shift;
        smmu.regs
            .write32(offset::GERRORN, (gerrorn & !bit) | (gerror & bit));
        let cons = self.geo.ptr(smmu.regs.read32(offset::CMDQ_CONS));
        self.observe(cons);
        Ok(())
    }

    fn pointers(&self) -> (QueuePtr, QueuePtr) {
        (self.prod, self.cons)
    }

    fn count(&mut self, event: SyncEvent) {
        use crate::trace::{record, Kind};
        match event {
            SyncEvent::Shared => self.stats.syncs_shared += 1,
            SyncEvent::SyncTimeout => self.stats.sync_timeouts += 1,
            SyncEvent::SyncBegin(pos) => record(Kind::CmdSyncBegin, pos, 0),
            SyncEvent::SyncEnd { pos, failed } => record(Kind::CmdSyncEnd, pos, u64::from(failed)),
        }
    }
}

impl<'a> CommandQueue<'a> {
    /// The words of the entry `ptr` designates (the index is below the entries the memory was
    /// resolved for: the geometry never changes).
    fn entry(&self, ptr: QueuePtr) -> &[core::sync::atomic::AtomicU64] {
        let first = CMD_WORDS * self.geo.index(ptr) as usize;
        &self.words[first..first + CMD_WORDS]
    }

    fn store_entry(&self, ptr: QueuePtr, words: [u64; CMD_WORDS]) {
        for (cell, word) in self.entry(ptr).iter().zip(words) {
            cell.store(word, core::sync::atomic::Ordering::Relaxed);
        }
    }

    fn load_entry(&self, ptr: QueuePtr) -> [u64; CMD_WORDS] {
        let entry = self.entry(ptr);
        core::array::from_fn(|i| entry[i].load(core::sync::atomic::Ordering::Acquire))
    }

    fn observe(&mut self, cons: QueuePtr) {
        self.cons = cons;
        self.ledger.observe_cons(self.geo, self.prod, cons);
    }

    fn wait_for_space<B: SmmuBackend, C: Clock>(
        &mut self,
        smmu: &Smmu<'a, B, C>,
        needed: u32,
    ) -> Result<(), SmmuError> {
        // CONS only moves on: room seen at the last read is still there.
        if self.geo.free(self.prod, self.cons) >= needed {
            return Ok(());
        }
        let deadline = smmu.deadline(smmu.config.sync_timeout_ns);
        loop {
            self.poll(smmu)?;
            let free = self.geo.free(self.prod, self.cons);
            if free >= needed {
                return Ok(());
            }
            if smmu.clock.now_ns() >= deadline {
                self.stats.queue_full_timeouts += 1;
                return Err(SmmuError::CommandQueueFull { needed, free });
            }
            crate::sync::spin_loop();
        }
    }
}
