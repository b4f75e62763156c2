//! What can go wrong in the driver: [`SmmuError`] for every operation, and the
//! [`CommandFailure`] an SMMU reports when it stops on a bad command.

use super::*;

/// A command the SMMU refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandFailure {
    pub code: CommandErrorCode,
    /// Queue index of the command.
    pub index: u32,
    /// The command as read back from the queue.
    pub command: Result<Command, CommandError>,
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at command-queue slot {}", self.code, self.index)?;
        match self.command {
            Ok(c) => write!(f, " ({})", c.kind().name()),
            Err(e) => write!(f, " ({e})"),
        }
    }
}

/// Everything that can go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmmuError {
    /// The SMMU lacks something the driver needs.
    Unsupported(&'static str),
    /// A setting is out of range.
    BadConfig(&'static str),
    /// No memory for a table or queue.
    OutOfMemory,
    /// Memory the driver must write is not reachable.
    Unreachable(PhysAddr),
    /// A register did not acknowledge an update in time.
    AckTimeout {
        register: &'static str,
        wanted: u32,
        seen: u32,
    },
    /// A CMD_SYNC did not complete in time.
    SyncTimeout {
        prod: QueuePtr,
        cons: QueuePtr,
    },
    /// The command queue did not drain enough to take more commands in time.
    CommandQueueFull {
        needed: u32,
        free: u32,
    },
    /// The SMMU refused a command (recovered: the queue runs on).
    CommandFailed(CommandFailure),
    /// Translation was turned off by [`Smmu::abort_all_traffic`]: all traffic aborts and no
    /// command is sent any more.
    Disabled,
    /// A StreamID beyond the stream table.
    SidOutOfRange {
        sid: u32,
        max: u32,
    },
    /// The stream is already attached (detach it first).
    StreamBusy(u32),
    /// The stream is not attached.
    StreamNotAttached(u32),
    NoSuchContext(ContextId),
    /// The context still has streams attached.
    ContextInUse(ContextId),
    /// The context was quiesced and cannot be attached any more.
    ContextQuiesced(ContextId),
    /// Every ASID is in use.
    AsidsExhausted,
    Plan(PlanError),
    Cd(CdBuildError),
    Command(CommandError),
}

impl fmt::Display for SmmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(what) => write!(f, "the SMMU does not implement {what}"),
            Self::BadConfig(what) => write!(f, "bad SMMU driver setting: {what}"),
            Self::OutOfMemory => f.write_str("out of memory for SMMU tables or queues"),
            Self::Unreachable(pa) => write!(f, "SMMU structure at {pa} is unreachable"),
            Self::AckTimeout {
                register,
                wanted,
                seen,
            } => {
                write!(
                    f,
                    "{register} did not acknowledge {wanted:#x} (reads {seen:#x})"
                )
            }
            Self::SyncTimeout { prod, cons } => {
                write!(
                    f,
                    "CMD_SYNC timed out (CMDQ_PROD {prod:#x}, CMDQ_CONS {cons:#x})"
                )
            }
            Self::CommandQueueFull { needed, free } => {
                write!(f, "command queue full: {needed} slots needed, {free} free")
            }
            Self::CommandFailed(c) => write!(f, "command failed: {c}"),
            Self::Disabled => {
                f.write_str("the SMMU was disabled after a failure: all traffic aborts")
            }
            Self::SidOutOfRange { sid, max } => write!(f, "StreamID {sid:#x} exceeds {max:#x}"),
            Self::StreamBusy(sid) => write!(f, "StreamID {sid:#x} is already attached"),
            Self::StreamNotAttached(sid) => write!(f, "StreamID {sid:#x} is not attached"),
            Self::NoSuchContext(c) => write!(f, "no SMMU context {}", c.0),
            Self::ContextInUse(c) => write!(f, "SMMU context {} still has streams attached", c.0),
            Self::ContextQuiesced(c) => write!(f, "SMMU context {} has been quiesced", c.0),
            Self::AsidsExhausted => f.write_str("no free ASID"),
            Self::Plan(e) => write!(f, "{e}"),
            Self::Cd(e) => write!(f, "{e}"),
            Self::Command(e) => write!(f, "{e}"),
        }
    }
}

impl From<Unreachable> for SmmuError {
    fn from(u: Unreachable) -> Self {
        Self::Unreachable(u.0)
    }
}

impl From<PlanError> for SmmuError {
    fn from(e: PlanError) -> Self {
        Self::Plan(e)
    }
}
