//! Outpost's shared library.
pub mod manifest;
pub mod protocol;
pub mod topics;
pub mod vision;
