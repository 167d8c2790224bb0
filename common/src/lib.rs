//! Outpost's shared library: the wire protocol, signed model manifests and the vision pipeline used by both the
//! agent and the fleet.
pub mod manifest;
pub mod protocol;
pub mod topics;
pub mod vision;
