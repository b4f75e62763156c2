//! The notifier core (placeholder while the pieces land).

pub mod alloc;
pub mod interval_tree;
