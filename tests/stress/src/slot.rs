//! What a page slot is doing, as the CPU thread that owns it publishes it, what the words of its
//! frame hold, and what a device may conclude from two snapshots of the slot taken around one
//! access.
//!
//! The owner publishes `Changing` before it calls `mmap`, `munmap` or `mprotect`, and the new
//! state once the call has returned. A device reads the state before and after its access; if
//! both reads return the same publication (every publication bumps a version) and it says
//! "unmapped" (or "read-only", for a write), then the call that made it so had returned before
//! the access began, and the access must have faulted.

use std::sync::atomic::{AtomicU64, Ordering};

use shootdown::iommu::spec::event::AccessKind;

/// What the slot's page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unmapped = 0,
    ReadOnly = 1,
    ReadWrite = 2,
    /// The owner is inside `mmap`, `munmap` or `mprotect` for it: devices judge nothing.
    Changing = 3,
}

impl Kind {
    /// True if a device access of this kind must succeed while the page is in this state.
    pub fn allows(self, access: AccessKind) -> bool {
        match self {
            Kind::ReadWrite => true,
            Kind::ReadOnly => access == AccessKind::Read,
            Kind::Unmapped | Kind::Changing => false,
        }
    }
}

/// One publication: kind, the generation of the page's contents (each `mmap` of the slot is a
/// new generation), and a version that every publication bumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State(u64);

impl State {
    const GEN_BITS: u32 = 30;

    pub fn new(kind: Kind, gen: u32, version: u32) -> Self {
        let gen = u64::from(gen) & ((1 << Self::GEN_BITS) - 1);
        State(kind as u64 | gen << 2 | u64::from(version) << 32)
    }

    pub fn kind(self) -> Kind {
        match self.0 & 3 {
            0 => Kind::Unmapped,
            1 => Kind::ReadOnly,
            2 => Kind::ReadWrite,
            _ => Kind::Changing,
        }
    }

    pub fn gen(self) -> u32 {
        ((self.0 >> 2) & ((1 << Self::GEN_BITS) - 1)) as u32
    }

    pub fn version(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// A page slot's published state. Only its owner publishes.
pub struct Slot(AtomicU64);

impl Default for Slot {
    fn default() -> Self {
        Slot(AtomicU64::new(State::new(Kind::Unmapped, 0, 0).0))
    }
}

impl Slot {
    /// The current publication. Sequentially consistent: a device's snapshot before its access
    /// is ordered with the owner's publication after its call returned.
    pub fn load(&self) -> State {
        State(self.0.load(Ordering::SeqCst))
    }

    /// Publishes `kind` for generation `gen` (owner only).
    pub fn publish(&self, kind: Kind, gen: u32) {
        let version = self.load().version().wrapping_add(1);
        self.0
            .store(State::new(kind, gen, version).0, Ordering::SeqCst);
    }
}

const CPU_TAG: u64 = 0xc0;
const DEVICE_TAG: u64 = 0xde;

/// The word a CPU fills generation `gen` of slot `slot` of space `space` with.
pub fn cpu_word(space: usize, slot: usize, gen: u32) -> u64 {
    CPU_TAG << 56 | (space as u64 & 0xff) << 48 | (slot as u64 & 0xffff) << 32 | u64::from(gen)
}

/// The word device `device` writes into slot `slot` of space `space`.
pub fn device_word(space: usize, slot: usize, device: usize) -> u64 {
    DEVICE_TAG << 56 | (space as u64 & 0xff) << 48 | (slot as u64 & 0xffff) << 32 | device as u64
}

/// What one device access showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// The access succeeded although the unmap (or, for a write, the downgrade) had returned
    /// before it began.
    AfterReturn,
    /// A read returned a word this slot never held while the access ran: a freed frame's
    /// poison, another slot's word, or an older generation's.
    WrongData(u64),
    /// The access faulted although the page allowed it throughout.
    UnexpectedFault,
}

/// Judges one access of slot `slot` of space `space`: `before`/`after` are the slot's states
/// around it; `outcome` is the word read (`Ok(Some)`), a write that landed (`Ok(None)`), or a
/// fault (`Err`).
pub fn judge(
    space: usize,
    slot: usize,
    access: AccessKind,
    before: State,
    after: State,
    outcome: Result<Option<u64>, ()>,
) -> Verdict {
    let stable = before == after;
    match outcome {
        Ok(read) => {
            if stable && !before.kind().allows(access) && before.kind() != Kind::Changing {
                return Verdict::AfterReturn;
            }
            match read {
                Some(word) if !word_fits(word, space, slot, before, after) => {
                    Verdict::WrongData(word)
                }
                _ => Verdict::Fine,
            }
        }
        Err(()) if stable && before.kind().allows(access) => Verdict::UnexpectedFault,
        Err(()) => Verdict::Fine,
    }
}

/// True if `word` is one the slot's page held during the access: a CPU word of a generation
/// mapped between the two snapshots, or a device's word for this slot.
fn word_fits(word: u64, space: usize, slot: usize, before: State, after: State) -> bool {
    let ours = |tag: u64| {
        word >> 32 == (tag << 56 | (space as u64 & 0xff) << 48 | (slot as u64 & 0xffff) << 32) >> 32
    };
    if ours(DEVICE_TAG) {
        return true;
    }
    if !ours(CPU_TAG) {
        return false;
    }
    // An unmapped slot's generation is gone: only a later one may be read.
    let oldest = before.gen() + u32::from(before.kind() == Kind::Unmapped);
    (oldest..=after.gen()).contains(&(word as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: AccessKind = AccessKind::Read;
    const W: AccessKind = AccessKind::Write;

    fn st(kind: Kind, gen: u32, version: u32) -> State {
        State::new(kind, gen, version)
    }

    #[test]
    fn state_round_trips() {
        let s = st(Kind::ReadOnly, 12345, 77);
        assert_eq!(
            (s.kind(), s.gen(), s.version()),
            (Kind::ReadOnly, 12345, 77)
        );
        let slot = Slot::default();
        slot.publish(Kind::Changing, 1);
        slot.publish(Kind::ReadWrite, 1);
        let s = slot.load();
        assert_eq!((s.kind(), s.gen(), s.version()), (Kind::ReadWrite, 1, 2));
    }

    #[test]
    fn an_access_after_the_unmap_returned_is_stale() {
        let gone = st(Kind::Unmapped, 3, 9);
        assert_eq!(
            judge(0, 5, R, gone, gone, Ok(Some(cpu_word(0, 5, 3)))),
            Verdict::AfterReturn
        );
        assert_eq!(judge(0, 5, W, gone, gone, Ok(None)), Verdict::AfterReturn);
        assert_eq!(judge(0, 5, R, gone, gone, Err(())), Verdict::Fine);
        // A write after the downgrade returned; a read is fine.
        let ro = st(Kind::ReadOnly, 3, 9);
        assert_eq!(judge(0, 5, W, ro, ro, Ok(None)), Verdict::AfterReturn);
        assert_eq!(
            judge(0, 5, R, ro, ro, Ok(Some(cpu_word(0, 5, 3)))),
            Verdict::Fine
        );
        // While the owner is changing the page, or once it published anew, nothing is judged.
        let changing = st(Kind::Changing, 3, 10);
        assert_eq!(judge(0, 5, W, changing, changing, Ok(None)), Verdict::Fine);
        assert_eq!(judge(0, 5, W, ro, changing, Ok(None)), Verdict::Fine);
    }

    #[test]
    fn reads_must_return_this_slots_words_of_a_live_generation() {
        let rw = st(Kind::ReadWrite, 4, 2);
        assert_eq!(
            judge(1, 7, R, rw, rw, Ok(Some(cpu_word(1, 7, 4)))),
            Verdict::Fine
        );
        assert_eq!(
            judge(1, 7, R, rw, rw, Ok(Some(device_word(1, 7, 3)))),
            Verdict::Fine
        );
        for wrong in [
            cpu_word(1, 7, 3),
            cpu_word(1, 8, 4),
            cpu_word(0, 7, 4),
            device_word(1, 6, 0),
            shootdown::mm::fake::POISON,
            0,
        ] {
            assert_eq!(
                judge(1, 7, R, rw, rw, Ok(Some(wrong))),
                Verdict::WrongData(wrong)
            );
        }
        // Remapped during the access: the new generation, never the unmapped one.
        let gone = st(Kind::Unmapped, 4, 3);
        let back = st(Kind::ReadWrite, 5, 5);
        assert_eq!(
            judge(1, 7, R, gone, back, Ok(Some(cpu_word(1, 7, 5)))),
            Verdict::Fine
        );
        assert_eq!(
            judge(1, 7, R, gone, back, Ok(Some(cpu_word(1, 7, 4)))),
            Verdict::WrongData(cpu_word(1, 7, 4))
        );
    }

    #[test]
    fn a_fault_on_a_page_that_allowed_the_access_throughout_is_unexpected() {
        let rw = st(Kind::ReadWrite, 1, 1);
        let ro = st(Kind::ReadOnly, 1, 1);
        assert_eq!(judge(0, 0, W, rw, rw, Err(())), Verdict::UnexpectedFault);
        assert_eq!(judge(0, 0, R, ro, ro, Err(())), Verdict::UnexpectedFault);
        assert_eq!(judge(0, 0, W, ro, ro, Err(())), Verdict::Fine);
        assert_eq!(
            judge(0, 0, W, rw, st(Kind::Changing, 1, 2), Err(())),
            Verdict::Fine
        );
    }
}
