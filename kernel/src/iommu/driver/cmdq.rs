//! The command queue (cf. `arm_smmu_cmdq_*`): batches published with one CMDQ_PROD write,
//! each ended by a CMD_SYNC that is waited for, with command-error recovery on the way.

use super::*;

impl<'a, B: SmmuBackend, C: Clock> Smmu<'a, B, C> {
    /// Submits `commands` in batches, then (if `sync`) one CMD_SYNC, and waits for it.
    pub(super) fn submit(
        &self,
        commands: &[Command],
        sync: bool,
    ) -> Result<CommandCounts, SmmuError> {
        self.submit_iter(commands.iter().copied(), sync)
    }

    pub(super) fn submit_iter(
        &self,
        commands: impl Iterator<Item = Command>,
        sync: bool,
    ) -> Result<CommandCounts, SmmuError> {
        let mut q = self.cmdq.lock();
        if self.disabled.load(Ordering::Acquire) {
            return Err(SmmuError::Disabled);
        }
        let mut counts = CommandCounts::default();
        let mut failure = None;
        let mut batch = Vec::with_capacity(self.config.batch as usize);
        let mut commands = commands.peekable();
        while commands.peek().is_some() {
            batch.clear();
            batch.extend(commands.by_ref().take(self.config.batch as usize));
            for chunk in batch.chunks(q.geo.entries() as usize) {
                self.publish(&mut q, chunk, &mut failure)?;
                counts.add_all(chunk);
            }
        }
        if sync {
            let index = u64::from(q.prod);
            crate::trace::record(crate::trace::Kind::CmdSyncBegin, index, 0);
            self.publish(&mut q, &[Command::SYNC], &mut failure)?;
            counts.add(Command::SYNC.kind());
            let waited = self.wait_consumed(&mut q, &mut failure);
            let failed = waited.is_err() || failure.is_some();
            crate::trace::record(crate::trace::Kind::CmdSyncEnd, index, u64::from(failed));
            waited?;
        }
        match failure {
            Some(f) => Err(SmmuError::CommandFailed(f)),
            None => Ok(counts),
        }
    }

    /// Writes `cmds` (at most a queue's worth) after waiting for room, then CMDQ_PROD.
    pub(super) fn publish(
        &self,
        q: &mut CommandQueue,
        cmds: &[Command],
        failure: &mut Option<CommandFailure>,
    ) -> Result<(), SmmuError> {
        let needed = cmds.len() as u32;
        self.wait_for_space(q, needed, failure)?;
        for cmd in cmds {
            let words = cmd.encode().map_err(SmmuError::Command)?;
            let slot = q.base.as_u64() + (CMD_SIZE as u64) * u64::from(q.geo.index(q.prod));
            physmem::store(self.mem, PhysAddr(slot), words[0], Ordering::Relaxed)?;
            physmem::store(self.mem, PhysAddr(slot + 8), words[1], Ordering::Relaxed)?;
            q.prod = q.geo.advance(q.prod, 1);
            q.stats.commands.add(cmd.kind());
            crate::trace::record(crate::trace::Kind::SmmuCommand, words[0] & 0xff, words[0]);
        }
        // The entries (and any STE/CD written before) must be visible before PROD moves.
        fence(Ordering::Release);
        self.regs.write32(offset::CMDQ_PROD, q.prod);
        q.stats.prod_writes += 1;
        Ok(())
    }

    pub(super) fn wait_for_space(
        &self,
        q: &mut CommandQueue,
        needed: u32,
        failure: &mut Option<CommandFailure>,
    ) -> Result<(), SmmuError> {
        let deadline = self.deadline(self.config.sync_timeout_ns);
        loop {
            let cons = self.poll_cons(q, failure)?;
            let free = q.geo.free(q.prod, cons);
            if free >= needed {
                return Ok(());
            }
            if self.clock.now_ns() >= deadline {
                q.stats.queue_full_timeouts += 1;
                return Err(SmmuError::CommandQueueFull { needed, free });
            }
            crate::sync::spin_loop();
        }
    }

    /// Waits until the SMMU has consumed everything up to our PROD (the last entry being our
    /// CMD_SYNC).
    pub(super) fn wait_consumed(
        &self,
        q: &mut CommandQueue,
        failure: &mut Option<CommandFailure>,
    ) -> Result<(), SmmuError> {
        let deadline = self.deadline(self.config.sync_timeout_ns);
        loop {
            let cons = self.poll_cons(q, failure)?;
            if q.geo.is_empty(q.prod, cons) {
                // Whatever the SMMU wrote before completing is visible after this.
                fence(Ordering::Acquire);
                return Ok(());
            }
            if self.clock.now_ns() >= deadline {
                q.stats.sync_timeouts += 1;
                return Err(SmmuError::SyncTimeout { prod: q.prod, cons });
            }
            crate::sync::spin_loop();
        }
    }

    /// Reads CMDQ_CONS; if the SMMU stopped on an error, records and repairs it (§7.1) and
    /// lets the queue run on. GERROR is read first: a CONS read before it could predate an
    /// error raised in between, and name the wrong command and error code.
    pub(super) fn poll_cons(
        &self,
        q: &mut CommandQueue,
        failure: &mut Option<CommandFailure>,
    ) -> Result<QueuePtr, SmmuError> {
        let gerror = self.regs.read32(offset::GERROR);
        let gerrorn = self.regs.read32(offset::GERRORN);
        let raw = self.regs.read32(offset::CMDQ_CONS);
        let active = LocalRegisterCopy::<u32, GERROR::Register>::new(gerror ^ gerrorn);
        if !active.is_set(GERROR::CMDQ_ERR) {
            return Ok(q.geo.ptr(raw));
        }
        let err =
            LocalRegisterCopy::<u32, CMDQ_CONS::Register>::new(raw).read(CMDQ_CONS::ERR) as u8;
        let cons = q.geo.ptr(raw);
        let slot = PhysAddr(q.base.as_u64() + (CMD_SIZE as u64) * u64::from(q.geo.index(cons)));
        let command = physmem::load_words::<2>(self.mem, slot).map_err(SmmuError::from)?;
        let code = CommandErrorCode::from_raw(err).unwrap_or(CommandErrorCode::Other(0));
        let f = CommandFailure {
            code,
            index: q.geo.index(cons),
            command: Command::decode(command),
        };
        q.stats.command_errors += 1;
        q.stats.last_command_error = Some(f);
        failure.get_or_insert(f);
        if code != CommandErrorCode::Abort {
            // CERROR_ILL (and anything else): the command cannot be run; a CMD_SYNC in its
            // place keeps the queue's meaning. CERROR_ABT was a fetch abort: retry as is.
            let sync = Command::SYNC.encode().map_err(SmmuError::Command)?;
            physmem::store(self.mem, slot, sync[0], Ordering::Relaxed)?;
            physmem::store(
                self.mem,
                PhysAddr(slot.as_u64() + 8),
                sync[1],
                Ordering::Relaxed,
            )?;
            fence(Ordering::Release);
        }
        // Acknowledge exactly this error by making our GERRORN bit equal GERROR's.
        let bit = 1 << GERROR::CMDQ_ERR.shift;
        self.regs
            .write32(offset::GERRORN, (gerrorn & !bit) | (gerror & bit));
        Ok(q.geo.ptr(self.regs.read32(offset::CMDQ_CONS)))
    }
}
