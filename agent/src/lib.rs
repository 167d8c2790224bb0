//! The Outpost agent as a library: the daemon's parts, each testable on its own. `main.rs` is the CLI over them.

pub mod link;
pub mod outbox;
pub mod store;
