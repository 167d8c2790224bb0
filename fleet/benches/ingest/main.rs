//! Ingest under many devices: `cargo bench -p outpost-fleet --bench ingest`.
//!
//! Per fleet size: enroll the devices through the fleet's API; run the same embedded broker alone with a no-op
//! subscriber (the fleet's own MQTT client, its messages counted and dropped) and offer it a publish rate above
//! what it can take; then run the real fleet (`outpost-fleet serve`, a separate process) and measure its resident
//! memory before and after the devices connect, a steady phase at the agents' own pace (one window per device every
//! 10 s) for the ingest delay, and the same ceiling phase as the baseline for messages stored per second. Every
//! device is the agent's own link over its own MQTT connection (see `outpost_fleet::load`). Prints figures; asserts
//! nothing about time.
//!
//! Environment: `OUTPOST_LOAD_DEVICES` (comma-separated sizes, default `1000,10000`), `OUTPOST_LOAD_STEADY_SECS`
//! (30), `OUTPOST_LOAD_WINDOW_SECS` (10), `OUTPOST_LOAD_CEILING_SECS` (20), `OUTPOST_LOAD_CEILING_RATE` (offered
//! windows per second over all devices in the ceiling phase, 40000), `OUTPOST_LOAD_BATCH` (devices connected at a
//! time, 100), `OUTPOST_LOAD_WORKERS` (the fleet's `[ingest] workers`; default: the fleet's default).

mod noop;
mod procs;
mod run;

use std::time::Duration;

use anyhow::Result;
use outpost_fleet::load::setting as env;

/// What the environment asks for.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sizes: Vec<usize>,
    pub steady: Duration,
    pub window: Duration,
    pub ceiling: Duration,
    pub ceiling_rate: f64,
    pub batch: usize,
    pub workers: Option<usize>,
}

impl Settings {
    fn from_env() -> Settings {
        let sizes = std::env::var("OUTPOST_LOAD_DEVICES").unwrap_or_else(|_| "1000,10000".into());
        Settings {
            sizes: sizes.split(',').filter_map(|s| s.trim().parse().ok()).filter(|&n| n > 0).collect(),
            steady: Duration::from_secs(env("OUTPOST_LOAD_STEADY_SECS", 30)),
            window: Duration::from_secs(env("OUTPOST_LOAD_WINDOW_SECS", 10u64).max(1)),
            ceiling: Duration::from_secs(env("OUTPOST_LOAD_CEILING_SECS", 20)),
            ceiling_rate: env("OUTPOST_LOAD_CEILING_RATE", 40_000.0f64).max(1.0),
            batch: env("OUTPOST_LOAD_BATCH", 100),
            workers: std::env::var("OUTPOST_LOAD_WORKERS").ok().and_then(|v| v.trim().parse().ok()),
        }
    }
}

fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(state) = std::env::var_os(procs::BROKER_ROLE) {
        return procs::broker_main(std::path::Path::new(&state));
    }
    let settings = Settings::from_env();
    let nofile = outpost_fleet::load::sys::raise_nofile().unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let workers = settings.workers.map_or("default".to_string(), |w| w.to_string());
    println!(
        "ingest benchmark: sizes {:?}, {cores} cores, open-file limit {nofile}, ingest workers {workers}",
        settings.sizes
    );
    println!("load average at start: {}", outpost_fleet::load::sys::load_average());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut reports = Vec::new();
    for &n in &settings.sizes {
        // Each connection is one descriptor here and one in the broker's process, plus the fleet's store and API.
        if (n as u64) + 256 > nofile {
            println!(
                "{n} devices: skipped, the open-file limit is {nofile} (raise the hard limit, e.g. `ulimit -Hn {}`)",
                n + 1024
            );
            continue;
        }
        match runtime.block_on(run::scenario(n, &settings)) {
            Ok(report) => {
                report.print();
                reports.push(report);
            }
            Err(e) => println!("{n} devices: failed: {e:#}"),
        }
    }
    run::Report::table(&reports);
    println!("load average at end: {}", outpost_fleet::load::sys::load_average());
    Ok(())
}
