//! The description of one invalidation: which addresses, why, and whether callbacks may sleep.

use super::error::{InvalidArgument, NotifierError};

/// Why a range is invalidated (`enum mmu_notifier_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyEvent {
    /// The range is unmapped (munmap, or a moving mremap).
    Unmap,
    /// Page-table entries are cleared (madvise, page replacement, …).
    Clear,
    /// Protection changes over the whole range to the VMA's permissions: no need to look at the
    /// CPU page table.
    ProtectionVma,
    /// Per-page protection change: look at the CPU page table from the end callback.
    ProtectionPage,
    /// Soft-dirty accounting: same page, same access flags.
    SoftDirty,
    /// The address space is being destroyed: sent to interval subscribers over the whole space.
    Release,
    /// Migration; subscribers may ignore it when the range's owner is themselves.
    Migrate,
    /// A device loses exclusive access to a page.
    Exclusive,
}

/// One invalidation: `[start, end)`, its event, whether callbacks may sleep, and its owner
/// (`struct mmu_notifier_range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifierRange {
    start: u64,
    end: u64,
    event: NotifyEvent,
    blockable: bool,
    owner: Option<usize>,
}

impl NotifierRange {
    /// The range `[start, end)` for `event`. Empty ranges are rejected: an empty invalidation
    /// means a lost one (see f7edb07ad7c6 in the module docs).
    pub fn new(event: NotifyEvent, start: u64, end: u64) -> Result<Self, NotifierError> {
        if start >= end {
            return Err(InvalidArgument::EmptyRange.into());
        }
        Ok(Self {
            start,
            end,
            event,
            blockable: true,
            owner: None,
        })
    }

    /// The same range tagged with an owner cookie (`mmu_notifier_range_init_owner`), e.g. the
    /// device whose own migration causes it.
    pub fn with_owner(self, owner: usize) -> Self {
        Self {
            owner: Some(owner),
            ..self
        }
    }

    /// The whole address space, as sent on teardown.
    pub(crate) fn whole_space_release() -> Self {
        Self {
            start: 0,
            end: u64::MAX,
            event: NotifyEvent::Release,
            blockable: true,
            owner: None,
        }
    }

    /// The same range with the blockable flag set to `blockable`, built field by field (the
    /// notifier's fast path: no byte store into a copy that is then read back whole).
    #[inline]
    pub(crate) fn with_blockable(self, blockable: bool) -> Self {
        Self { blockable, ..self }
    }

    /// First address.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The last address (inclusive), as interval trees want it.
    pub fn last(&self) -> u64 {
        self.end - 1
    }

    /// Why the range is invalidated.
    pub fn event(&self) -> NotifyEvent {
        self.event
    }

    /// True if callbacks may sleep (`mmu_notifier_range_blockable`).
    pub fn is_blockable(&self) -> bool {
        self.blockable
    }

    /// The owner cookie, if any.
    pub fn owner(&self) -> Option<usize> {
        self.owner
    }
}
