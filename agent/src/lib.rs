//! The Outpost agent as a library: the daemon's parts, each testable on its own. `main.rs` is the CLI over them.
pub mod app;
pub mod candidate;
pub mod config;
pub mod flagging;
pub mod link;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod queue;
mod rng;
pub mod samples;
pub mod source;
pub mod store;
pub mod trial;
pub mod update;
pub mod updater;
pub mod window;
