//! The stream table (cf. `arm_smmu_*_strtab_*`): one STE per StreamID, written valid dword
//! last (break-before-make), attaching streams to contexts, bypass or abort.

use super::*;

impl<'a, B: SmmuBackend, C: Clock> Smmu<'a, B, C> {
    pub(super) fn ste_addr(&self, sid: u32, word: usize) -> PhysAddr {
        PhysAddr(self.strtab.as_u64() + (STE_SIZE as u64) * u64::from(sid) + 8 * word as u64)
    }

    pub(super) fn check_sid(&self, sid: u32) -> Result<(), SmmuError> {
        if u64::from(sid) >> self.sid_log2 != 0 {
            return Err(SmmuError::SidOutOfRange {
                sid,
                max: self.max_sid(),
            });
        }
        Ok(())
    }

    /// Replaces the STE of `sid` (valid dword 0 last; break-before-make if needed), then
    /// CFGI_STE + CMD_SYNC.
    pub(super) fn write_ste(&self, sid: u32, ste: &Ste) -> Result<(), SmmuError> {
        let current = Ste(physmem::load_words::<STE_WORDS>(
            self.mem,
            self.ste_addr(sid, 0),
        )?);
        let cfgi = [Command::CfgiSte { sid, leaf: true }];
        if !ste.is_valid() {
            // Turning the stream off: V goes first, so no valid mix is ever visible.
            physmem::store(self.mem, self.ste_addr(sid, 0), ste.0[0], Ordering::Release)?;
            for (i, w) in ste.0.iter().enumerate().skip(1) {
                physmem::store(self.mem, self.ste_addr(sid, i), *w, Ordering::Relaxed)?;
            }
            self.submit(&cfgi, true)?;
            return Ok(());
        }
        if current.is_valid() && current.0[1..] != ste.0[1..] {
            physmem::store(self.mem, self.ste_addr(sid, 0), 0, Ordering::Release)?;
            self.submit(&cfgi, true)?;
        }
        for (i, w) in ste.0.iter().enumerate().skip(1) {
            physmem::store(self.mem, self.ste_addr(sid, i), *w, Ordering::Relaxed)?;
        }
        physmem::store(self.mem, self.ste_addr(sid, 0), ste.0[0], Ordering::Release)?;
        self.submit(&cfgi, true)?;
        Ok(())
    }

    /// Points stream `sid` at context `ctx` (stage-1 STE with the context's CD).
    pub fn attach(&self, sid: u32, ctx: ContextId) -> Result<(), SmmuError> {
        self.check_sid(sid)?;
        let mut streams = self.streams.lock();
        if streams.attached.contains_key(&sid) {
            return Err(SmmuError::StreamBusy(sid));
        }
        let c = streams
            .contexts
            .get(&ctx)
            .ok_or(SmmuError::NoSuchContext(ctx))?;
        if c.quiesced {
            return Err(SmmuError::ContextQuiesced(ctx));
        }
        let ste = Ste::stage1(c.cd).map_err(|_| SmmuError::Unreachable(c.cd))?;
        self.install(&mut streams, sid, &ste, Attachment::Context(ctx))
    }

    /// Lets stream `sid` bypass translation.
    pub fn attach_bypass(&self, sid: u32) -> Result<(), SmmuError> {
        self.attach_fixed(sid, Attachment::Bypass, &Ste::bypass())
    }

    /// Aborts all traffic of stream `sid`, silently.
    pub fn attach_abort(&self, sid: u32) -> Result<(), SmmuError> {
        self.attach_fixed(sid, Attachment::Abort, &Ste::abort())
    }

    pub(super) fn attach_fixed(
        &self,
        sid: u32,
        how: Attachment,
        ste: &Ste,
    ) -> Result<(), SmmuError> {
        self.check_sid(sid)?;
        let mut streams = self.streams.lock();
        if streams.attached.contains_key(&sid) {
            return Err(SmmuError::StreamBusy(sid));
        }
        self.install(&mut streams, sid, ste, how)
    }

    /// Writes the STE of an unattached stream and records the attachment. If that fails, the
    /// STE is taken back; if even that fails, the STE may be live, so the attachment is
    /// recorded anyway (a context cannot be destroyed under it; `detach` retries the clean-up).
    pub(super) fn install(
        &self,
        streams: &mut Streams,
        sid: u32,
        ste: &Ste,
        how: Attachment,
    ) -> Result<(), SmmuError> {
        let result = self.write_ste(sid, ste);
        if result.is_err() && self.write_ste(sid, &Ste::INVALID).is_ok() {
            return result;
        }
        streams.attached.insert(sid, how);
        if let Attachment::Context(ctx) = how {
            if let Some(c) = streams.contexts.get_mut(&ctx) {
                c.sids.push(sid);
            }
        }
        result
    }

    /// Detaches stream `sid`: its STE becomes invalid again (traffic aborts, C_BAD_STE).
    pub fn detach(&self, sid: u32) -> Result<(), SmmuError> {
        self.check_sid(sid)?;
        let mut streams = self.streams.lock();
        let how = *streams
            .attached
            .get(&sid)
            .ok_or(SmmuError::StreamNotAttached(sid))?;
        self.write_ste(sid, &Ste::INVALID)?;
        streams.attached.remove(&sid);
        if let Attachment::Context(ctx) = how {
            if let Some(c) = streams.contexts.get_mut(&ctx) {
                c.sids.retain(|s| *s != sid);
            }
        }
        Ok(())
    }
}
