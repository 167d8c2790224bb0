//! The Outpost agent as a library: the daemon's parts, each testable on its own. `main.rs` is the CLI over them.
pub mod acks;
pub mod app;
pub mod candidate;
pub mod config;
pub mod flagging;
pub mod link;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod queue;
pub mod results;
mod rng;
pub mod samples;
pub mod source;
/// The local state store, shared with the fleet (`outpost_common::store`).
pub mod store {
    pub use outpost_common::store::*;
}
pub mod trial;
pub mod update;
pub mod updater;
pub mod window;
