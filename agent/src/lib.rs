//! The Outpost agent as a library: the daemon's parts, each testable on its own. `main.rs` is the CLI over them.
pub mod flagging;
pub mod pipeline;
pub mod queue;
pub mod samples;
pub mod source;
pub mod window;
pub mod app;
pub mod config;
pub mod metrics;
