//! The load tool behind `cargo bench -p outpost-fleet --bench ingest` and `--bench rollout`: many simulated
//! devices, each the agent's own link over a real MQTT connection, publishing realistic window summaries and status
//! messages sealed with their enrolled keys and answering model assignments as the agent's updater does
//! (`agent_sim`); and the figures taken from them (percentiles, rates, resident memory, CPU time).

pub mod agent_sim;
mod device;
pub mod fleet;
mod memstore;
pub mod stats;
pub mod sys;

pub use agent_sim::{Behaviour, VersionBehaviour};
pub use device::{Messages, Phase, Published, Sim, SimState, Swarm, SwarmError};
pub use memstore::MemStore;

/// A bench setting from the environment: `name` parsed, or `default` when unset (or, with a warning, invalid).
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not valid; using the default");
            default
        }),
        Err(_) => default,
    }
}
