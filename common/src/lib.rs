//! Outpost's shared library.
pub mod vision;
