//! What the SMMUv3 architecture (Arm IHI 0070) defines, and no behaviour: the register map,
//! the command, STE, CD and event encodings, queue index arithmetic and the ID-register
//! features. Each encoder has its decoder next to it, sharing one `Field` layout; all of it is
//! host-tested.

mod bits;
pub mod cd;
pub mod command;
pub mod event;
pub mod features;
pub mod queue;
pub mod regs;
pub mod ste;
