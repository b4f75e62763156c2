//! Contexts: one context descriptor and ASID per address space, created and destroyed here.

use super::*;

/// What an address space looks like to the SMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextParams {
    /// The address space's page-table root (the CPU's TTBR0 table).
    pub root: PhysAddr,
    /// The CPU's MAIR_EL1 (the attribute indexes in the shared descriptors refer to it).
    pub mair: u64,
}

impl<'a, B: SmmuBackend, C: Clock> Smmu<'a, B, C> {
    pub(super) fn alloc_asid(streams: &mut Streams) -> Option<u16> {
        let bits = streams.asids.len() * 64;
        for step in 0..bits {
            let asid = (streams.asid_cursor + step) % bits;
            let (w, b) = (asid / 64, asid % 64);
            if streams.asids[w] & (1 << b) == 0 {
                streams.asids[w] |= 1 << b;
                streams.asid_cursor = asid + 1;
                return Some(asid as u16);
            }
        }
        None
    }

    pub(super) fn free_asid(streams: &mut Streams, asid: u16) {
        streams.asids[usize::from(asid) / 64] &= !(1 << (asid % 64));
    }

    /// Creates a context for an address space: a fresh ASID and a CD pointing at its page
    /// tables (see [`CdFields::sva`]). No stream uses it yet.
    pub fn create_context(&self, params: ContextParams) -> Result<ContextId, SmmuError> {
        let mut streams = self.streams.lock();
        let asid = Self::alloc_asid(&mut streams).ok_or(SmmuError::AsidsExhausted)?;
        let ips = self.features.oas.min(5); // 4 KiB granule: at most 48 output bits
        let fields = match CdFields::sva(asid, params.root, self.config.va_bits, ips, params.mair) {
            Ok(f) => f,
            Err(e) => {
                Self::free_asid(&mut streams, asid);
                return Err(SmmuError::Cd(e));
            }
        };
        let cd = match self.frames.alloc_zeroed() {
            Ok(cd) => cd,
            Err(_) => {
                Self::free_asid(&mut streams, asid);
                return Err(SmmuError::OutOfMemory);
            }
        };
        if let Err(e) = self.write_cd(cd, &fields) {
            self.frames.free(cd);
            Self::free_asid(&mut streams, asid);
            return Err(e);
        }
        let id = ContextId(streams.next_context);
        streams.next_context += 1;
        streams.contexts.insert(
            id,
            Context {
                asid,
                cd,
                fields,
                sids: Vec::new(),
                quiesced: false,
            },
        );
        Ok(id)
    }

    pub(super) fn write_cd(&self, cd: PhysAddr, fields: &CdFields) -> Result<(), SmmuError> {
        let words = ContextDescriptor::encode(fields).0;
        for (i, w) in words.iter().enumerate().take(CD_WORDS).skip(1) {
            physmem::store(
                self.mem,
                PhysAddr(cd.as_u64() + 8 * i as u64),
                *w,
                Ordering::Relaxed,
            )?;
        }
        physmem::store(self.mem, cd, words[0], Ordering::Release)?;
        Ok(())
    }

    /// The ASID of a context.
    pub fn context_asid(&self, ctx: ContextId) -> Result<u16, SmmuError> {
        self.streams
            .lock()
            .contexts
            .get(&ctx)
            .map(|c| c.asid)
            .ok_or(SmmuError::NoSuchContext(ctx))
    }

    /// The StreamIDs attached to a context.
    pub fn context_streams(&self, ctx: ContextId) -> Result<Vec<u32>, SmmuError> {
        self.streams
            .lock()
            .contexts
            .get(&ctx)
            .map(|c| c.sids.clone())
            .ok_or(SmmuError::NoSuchContext(ctx))
    }

    /// Frees a context whose streams have all been detached: its ASID is invalidated before it
    /// can be reused, then the CD is freed.
    pub fn destroy_context(&self, ctx: ContextId) -> Result<(), SmmuError> {
        let mut streams = self.streams.lock();
        let c = streams
            .contexts
            .get(&ctx)
            .ok_or(SmmuError::NoSuchContext(ctx))?;
        if !c.sids.is_empty() {
            return Err(SmmuError::ContextInUse(ctx));
        }
        self.submit(
            &[Command::TlbiNhAsid {
                vmid: VMID,
                asid: c.asid,
            }],
            true,
        )?;
        let Some(c) = streams.contexts.remove(&ctx) else {
            return Err(SmmuError::NoSuchContext(ctx));
        };
        Self::free_asid(&mut streams, c.asid);
        self.frames.free(c.cd);
        Ok(())
    }
}
