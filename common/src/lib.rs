//! Outpost's shared library: the wire protocol, signed model manifests and the vision pipeline and the local state store
//! used by both the agent and the fleet.
pub mod manifest;
pub mod protocol;
pub mod store;
pub mod topics;
pub mod vision;
