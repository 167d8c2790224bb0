//! The load tool behind `cargo bench -p outpost-fleet --bench ingest`: many simulated devices, each the agent's
//! own link over a real MQTT connection, publishing realistic window summaries and status messages sealed with
//! their enrolled keys; and the figures taken from them (percentiles, rates, resident memory).

mod device;
mod memstore;
pub mod stats;
pub mod sys;

pub use device::{Phase, Published, Swarm, SwarmError};
pub use memstore::MemStore;
