//! `outpost-agent run` end to end: the real binary, real brokers (the embedded rumqttd and Mosquitto), real folders
//! and a real HTTP server for samples. Every test starts what it needs, waits on conditions, never on fixed sleeps,
//! and reads what the agent published the way the fleet does: opened with the device key, de-duplicated by seq.

mod bad_frames;
mod durability;
mod flagging;
mod harness;
mod outage;
mod telemetry;
mod update;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
