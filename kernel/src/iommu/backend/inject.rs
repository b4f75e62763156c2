//! Fault injection at the driver/backend boundary: an [`SmmuBackend`] that forwards every
//! register access to a real backend (QEMU's SMMUv3 through MMIO, or the model) and, when
//! armed, makes the SMMU *look* failed to the driver in the two ways a real QEMU SMMU cannot be
//! made to fail:
//!
//! * **CMD_SYNC timeout** ([`InjectingBackend::arm_sync_timeout`]): at the next CMDQ_PROD write
//!   whose last new entry is a CMD_SYNC, the commands are passed on (the SMMU runs them), but
//!   SMMU_CMDQ_CONS reads keep returning the value from before that write, so the driver's
//!   wait for the CMD_SYNC times out. The next CMDQ_PROD write (the driver moved on: SVA's
//!   quiesce) ends the freeze. The driver cannot tell this from a stuck SMMU, which is the
//!   point; since the commands did run, the failure errs on the safe side.
//! * **Command error** ([`InjectingBackend::arm_command_error`]): at the next CMDQ_PROD write
//!   that publishes a TLBI, the backend passes on only the entries before the first TLBI, so
//!   the SMMU really stops in front of it, and reports SMMU_CMDQ_CONS.ERR = CERROR_ILL with
//!   SMMU_GERROR.CMDQ_ERR active (§7.1) once CONS reached it. When the driver acknowledges
//!   (toggles GERRORN.CMDQ_ERR) — after replacing the entry, as §7.1 asks — the held
//!   CMDQ_PROD is passed on and the queue runs on. The real GERROR/GERRORN bits are never
//!   touched, so the SMMU's own error state stays consistent.
//!
//! Disarmed, it is a pass-through: one relaxed flag test per register access and a relaxed
//! store of CMDQ_PROD, no lock (the invalidation hot path runs through it). The kernel always
//! wraps its SMMU in one, so tests and the soak can arm it; nothing is armed unless asked
//! (`fault=sync,cmdq` or the `faults` tests).

use crate::iommu::backend::SmmuBackend;
use crate::iommu::physmem;
use crate::iommu::spec::command::opcode;
use crate::iommu::spec::queue::QueueGeometry;
use crate::iommu::spec::regs::{offset, CommandErrorCode, CMDQ_CONS, GERROR, Q_BASE};
use crate::mm::phys::PhysMemory;
use crate::mm::PhysAddr;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use tock_registers::LocalRegisterCopy;

/// Command-queue entry size (§4.1).
const CMD_SIZE: u64 = 16;
const CMDQ_ERR_BIT: u32 = 1 << GERROR::CMDQ_ERR.shift;

/// An armed or active injection.
#[derive(Debug, Default)]
struct State {
    /// From the last CMDQ_BASE write.
    cmdq_base: u64,
    cmdq_geo: Option<QueueGeometry>,
    sync_armed: bool,
    /// CMDQ_CONS as reported while a CMD_SYNC "times out".
    frozen_cons: Option<u32>,
    error_armed: Option<CommandErrorCode>,
    /// A command error in progress.
    held: Option<Held>,
    syncs_timed_out: u64,
    errors_injected: u64,
}

impl State {
    /// Something is armed or in progress: register accesses must go through [`State`].
    fn engaged(&self) -> bool {
        self.sync_armed
            || self.error_armed.is_some()
            || self.frozen_cons.is_some()
            || self.held.is_some()
    }
}

#[derive(Debug, Clone, Copy)]
struct Held {
    /// CMDQ_PROD as the driver wrote it.
    prod: u32,
    /// The queue pointer of the refused command (where the SMMU stopped).
    at: u32,
    code: CommandErrorCode,
}

/// What was injected so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InjectStats {
    pub syncs_timed_out: u64,
    pub command_errors: u64,
}

/// A backend that can make the SMMU behind it look failed. See the module documentation.
pub struct InjectingBackend<'a> {
    inner: &'a dyn SmmuBackend,
    mem: &'a dyn PhysMemory,
    state: spin::Mutex<State>,
    /// Mirrors [`State::engaged`], updated under the lock after every change; while false the
    /// state is idle and every access passes straight through. Relaxed is enough: the driver
    /// serialises its queue accesses, and arming is a racy "from the next write on" by nature.
    engaged: AtomicBool,
    /// The last CMDQ_PROD value the driver wrote (and we passed on, unless held), kept even
    /// while disengaged so that an armed write knows which entries are new.
    prod: AtomicU32,
}

impl<'a> InjectingBackend<'a> {
    /// Wraps `inner`, whose command queue lives in `mem`.
    pub fn new(inner: &'a dyn SmmuBackend, mem: &'a dyn PhysMemory) -> Self {
        Self {
            inner,
            mem,
            state: spin::Mutex::new(State::default()),
            engaged: AtomicBool::new(false),
            prod: AtomicU32::new(0),
        }
    }

    /// Runs `f` on the locked state and republishes whether it is engaged.
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.state.lock();
        let r = f(&mut s);
        self.engaged.store(s.engaged(), Ordering::Relaxed);
        r
    }

    fn is_engaged(&self) -> bool {
        self.engaged.load(Ordering::Relaxed)
    }

    /// The next CMD_SYNC will not complete as far as the driver can see (once).
    pub fn arm_sync_timeout(&self) {
        self.with_state(|s| s.sync_armed = true);
    }

    /// The next published TLBI command is refused with CERROR_ILL (once).
    pub fn arm_command_error(&self) {
        self.with_state(|s| s.error_armed = Some(CommandErrorCode::Illegal));
    }

    /// Disarms whatever has not fired yet; true if something was still armed.
    pub fn disarm(&self) -> bool {
        self.with_state(|s| {
            let armed = s.sync_armed || s.error_armed.is_some();
            s.sync_armed = false;
            s.error_armed = None;
            armed
        })
    }

    /// Injections delivered so far.
    pub fn stats(&self) -> InjectStats {
        let s = self.state.lock();
        InjectStats {
            syncs_timed_out: s.syncs_timed_out,
            command_errors: s.errors_injected,
        }
    }

    /// The opcode of the command at queue pointer `ptr`, if the queue is known and readable.
    fn opcode_at(&self, s: &State, ptr: u32) -> Option<u8> {
        let geo = s.cmdq_geo?;
        let slot = s.cmdq_base + CMD_SIZE * u64::from(geo.index(ptr));
        physmem::load_words::<1>(self.mem, PhysAddr(slot))
            .ok()
            .map(|w| (w[0] & 0xff) as u8)
    }

    fn write_prod(&self, s: &mut State, new: u32) {
        let old = self.prod.swap(new, Ordering::Relaxed);
        if let Some(h) = s.held.as_mut() {
            // Still stopped at the refused command: hold this batch too.
            h.prod = new;
            return;
        }
        // Whatever the driver writes next, a frozen CMD_SYNC has been given up on.
        s.frozen_cons = None;
        let geo = match s.cmdq_geo {
            Some(g) => g,
            None => return self.inner.write32(offset::CMDQ_PROD, new),
        };
        let (old, new_ptr) = (geo.ptr(old), geo.ptr(new));
        if let Some(code) = s.error_armed {
            let mut p = old;
            while p != new_ptr {
                if self.opcode_at(s, p).is_some_and(is_tlbi) {
                    s.error_armed = None;
                    s.errors_injected += 1;
                    s.held = Some(Held {
                        prod: new,
                        at: p,
                        code,
                    });
                    // The SMMU runs everything before the victim and stops in front of it.
                    return self.inner.write32(offset::CMDQ_PROD, p);
                }
                p = geo.advance(p, 1);
            }
        }
        if s.sync_armed && new_ptr != old {
            let last = geo.advance(new_ptr, geo.entries() * 2 - 1);
            if self.opcode_at(s, last) == Some(opcode::SYNC) {
                s.sync_armed = false;
                s.syncs_timed_out += 1;
                s.frozen_cons = Some(self.inner.read32(offset::CMDQ_CONS));
            }
        }
        self.inner.write32(offset::CMDQ_PROD, new)
    }

    fn read_cons(&self, s: &State) -> u32 {
        if let Some(frozen) = s.frozen_cons {
            return frozen;
        }
        let real = self.inner.read32(offset::CMDQ_CONS);
        match (s.held, s.cmdq_geo) {
            (Some(h), Some(geo)) if geo.ptr(real) == h.at => {
                let mut v = LocalRegisterCopy::<u32, CMDQ_CONS::Register>::new(real);
                v.modify(CMDQ_CONS::ERR.val(u32::from(h.code.raw())));
                v.get()
            }
            _ => real,
        }
    }

    /// True while the injected command error is visible (CONS reached the refused command).
    fn error_visible(&self, s: &State) -> bool {
        match (s.held, s.cmdq_geo) {
            (Some(h), Some(geo)) => geo.ptr(self.inner.read32(offset::CMDQ_CONS)) == h.at,
            _ => false,
        }
    }

    fn write_gerrorn(&self, s: &mut State, value: u32) {
        let real_n = self.inner.read32(offset::GERRORN);
        if self.error_visible(s) && (value ^ real_n) & CMDQ_ERR_BIT != 0 {
            // The driver acknowledged the injected error: keep the real bit as it was, let the
            // queue run on from the (replaced) command.
            self.inner.write32(
                offset::GERRORN,
                (value & !CMDQ_ERR_BIT) | (real_n & CMDQ_ERR_BIT),
            );
            if let Some(h) = s.held.take() {
                self.inner.write32(offset::CMDQ_PROD, h.prod);
            }
            return;
        }
        self.inner.write32(offset::GERRORN, value)
    }
}

fn is_tlbi(op: u8) -> bool {
    matches!(
        op,
        opcode::TLBI_NH_ALL
            | opcode::TLBI_NH_ASID
            | opcode::TLBI_NH_VA
            | opcode::TLBI_NH_VAA
            | opcode::TLBI_NSNH_ALL
    )
}

impl SmmuBackend for InjectingBackend<'_> {
    fn read32(&self, off: usize) -> u32 {
        match off {
            offset::CMDQ_CONS | offset::GERROR if !self.is_engaged() => self.inner.read32(off),
            offset::CMDQ_CONS => self.read_cons(&self.state.lock()),
            offset::GERROR => {
                let s = self.state.lock();
                let real = self.inner.read32(offset::GERROR);
                if self.error_visible(&s) {
                    // Active = GERROR != GERRORN: show the bit opposite to the real GERRORN.
                    let n = self.inner.read32(offset::GERRORN);
                    (real & !CMDQ_ERR_BIT) | (!n & CMDQ_ERR_BIT)
                } else {
                    real
                }
            }
            _ => self.inner.read32(off),
        }
    }

    fn write32(&self, off: usize, value: u32) {
        match off {
            offset::CMDQ_PROD if !self.is_engaged() => {
                self.prod.store(value, Ordering::Relaxed);
                self.inner.write32(off, value)
            }
            offset::GERRORN if !self.is_engaged() => self.inner.write32(off, value),
            offset::CMDQ_PROD => self.with_state(|s| self.write_prod(s, value)),
            offset::GERRORN => self.with_state(|s| self.write_gerrorn(s, value)),
            _ => self.inner.write32(off, value),
        }
    }

    fn read64(&self, off: usize) -> u64 {
        self.inner.read64(off)
    }

    fn write64(&self, off: usize, value: u64) {
        if off == offset::CMDQ_BASE {
            let mut s = self.state.lock();
            let reg = LocalRegisterCopy::<u64, Q_BASE::Register>::new(value);
            let geo = QueueGeometry::clamped(reg.read(Q_BASE::LOG2SIZE) as u8);
            let bytes = geo.bytes(CMD_SIZE as usize) as u64;
            s.cmdq_base = (reg.read(Q_BASE::ADDR) << 5) & !(bytes.max(32) - 1);
            s.cmdq_geo = Some(geo);
            self.prod.store(0, Ordering::Relaxed);
        }
        self.inner.write64(off, value)
    }
}
