//! Staged rollouts across many devices: `cargo bench -p outpost-fleet --bench rollout [-- SIZES...]`.
//!
//! Per fleet size: enroll the devices through the fleet's API (`outpost-fleet serve`, a child process), push a
//! signed v1 and v2 of the zoo detector, connect one simulated device per enrollment (the agent's own link over its
//! own MQTT connection, answering `assign_model` as the agent's updater does, see `outpost_fleet::load::agent_sim`),
//! let every device publish a window every few seconds on the version it serves, and run a rollout of v2 in stages
//! `1, 5%, 25%, 100%` to completion. Then, at the first size only, a worse v2 (lower confidence) that the quality
//! gate must stop at its first stage, its canaries rolled back. Prints, per stage, when it started, how long until
//! every device of the stage had its command, until they had all committed, and how long the fleet took to pass the
//! gate after that; the fleet's tick time and CPU time; messages per device; the fleet's RSS. Asserts nothing about
//! time.
//!
//! Arguments: fleet sizes (default `1000 10000`; `OUTPOST_ROLLOUT_DEVICES=1000,10000` too), `--no-abort`.
//! Environment: `OUTPOST_ROLLOUT_WINDOW_SECS` (window interval, 3), `OUTPOST_ROLLOUT_DWELL_SECS` (minimum dwell per
//! stage, 10), `OUTPOST_ROLLOUT_INSTALL_SECS` (simulated install, 2), `OUTPOST_ROLLOUT_HEALTH_SECS` (simulated
//! health window, 3), `OUTPOST_LOAD_BATCH` (devices connected at a time, 100).

mod report;
mod run;

use std::time::Duration;

use anyhow::Result;
use outpost_fleet::load::setting as env;

/// What the command line and environment ask for.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sizes: Vec<usize>,
    pub abort: bool,
    pub window: Duration,
    pub dwell: Duration,
    pub install: Duration,
    pub health: Duration,
    pub batch: usize,
}

impl Settings {
    fn from_args_and_env() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).filter(|&n| n > 0).collect();
        if sizes.is_empty() {
            let list = std::env::var("OUTPOST_ROLLOUT_DEVICES").unwrap_or_else(|_| "1000,10000".into());
            sizes = list.split(',').filter_map(|s| s.trim().parse().ok()).filter(|&n| n > 0).collect();
        }
        Settings {
            sizes,
            abort: !args.iter().any(|a| a == "--no-abort"),
            window: Duration::from_secs(env("OUTPOST_ROLLOUT_WINDOW_SECS", 3u64).max(1)),
            dwell: Duration::from_secs(env("OUTPOST_ROLLOUT_DWELL_SECS", 10)),
            install: Duration::from_secs_f64(env("OUTPOST_ROLLOUT_INSTALL_SECS", 2.0f64).max(0.0)),
            health: Duration::from_secs_f64(env("OUTPOST_ROLLOUT_HEALTH_SECS", 3.0f64).max(0.0)),
            batch: env("OUTPOST_LOAD_BATCH", 100),
        }
    }
}

fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings::from_args_and_env();
    let nofile = outpost_fleet::load::sys::raise_nofile().unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "rollout benchmark: sizes {:?}, {cores} cores, open-file limit {nofile}; windows every {:?}, dwell {:?}, \
         install {:?}, health window {:?}",
        settings.sizes, settings.window, settings.dwell, settings.install, settings.health
    );
    println!("load average at start: {}", outpost_fleet::load::sys::load_average());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut reports = Vec::new();
    let mut scenarios: Vec<(usize, bool)> = settings.sizes.iter().map(|&n| (n, false)).collect();
    if settings.abort
        && let Some(&n) = settings.sizes.first()
    {
        scenarios.insert(1.min(scenarios.len()), (n, true));
    }
    for (n, worse) in scenarios {
        // Each connection is one descriptor here and one in the fleet's process, plus the fleet's store and API.
        if (n as u64) + 256 > nofile {
            println!("{n} devices: skipped, the open-file limit is {nofile} (raise the hard limit)");
            continue;
        }
        match runtime.block_on(run::scenario(n, worse, &settings)) {
            Ok(report) => {
                report.print();
                reports.push(report);
            }
            Err(e) => println!("{n} devices{}: failed: {e:#}", if worse { " (worse v2)" } else { "" }),
        }
    }
    report::Report::table(&reports);
    println!("load average at end: {}", outpost_fleet::load::sys::load_average());
    Ok(())
}
