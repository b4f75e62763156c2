//! Architecture support. Only AArch64 exists; everything here is kernel-target only.

pub mod aarch64;
