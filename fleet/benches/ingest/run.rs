//! One fleet size: enrollment, the broker-only baseline, the fleet, and the figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use outpost_common::protocol::ModelRef;
use outpost_common::store::SledStore;
use outpost_common::topics::DeviceId;
use outpost_fleet::ingest::{Ingest, IngestConfig, TimeRange};
use outpost_fleet::load::fleet::{FleetSetup, accepted, enroll, settle};
use outpost_fleet::load::stats::{self, Delays};
use outpost_fleet::load::{Behaviour, Phase, Swarm, sys};
use outpost_fleet::registry::{self, Credentials, Registry};
use time::OffsetDateTime;

use crate::Settings;
use crate::noop::Subscriber;

const STEADY: &str = "steady";
const CEILING: &str = "ceiling";
const WARMUP: &str = "warmup";

/// The figures of one size.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub devices: usize,
    pub enroll_secs: f64,
    pub connect_secs: f64,
    pub offered_per_sec: f64,
    pub baseline_per_sec: f64,
    pub baseline_rss_per_device: f64,
    pub stored_per_sec: f64,
    pub fleet_rss_idle: u64,
    pub fleet_rss_per_device: f64,
    pub fleet_rss_peak: u64,
    pub steady_per_sec: f64,
    pub steady: Option<Delays>,
    /// Steady-phase delays without each device's first window (the first publish on each device's topic).
    pub steady_later: Option<Delays>,
    /// Each device's first steady-phase window only.
    pub steady_first: Option<Delays>,
    /// Steady-phase windows ending 30 s or more after the device's first.
    pub steady_settled: Option<Delays>,
    pub ceiling: Option<Delays>,
    pub windows_published: u64,
    pub windows_stored: usize,
    pub catch_up_secs: f64,
    pub load_average: String,
    /// Devices connected when each ceiling phase started (baseline, fleet).
    pub connected: (usize, usize),
    /// Connections the baseline's no-op subscriber lost (0 for a valid baseline).
    pub baseline_lost: u64,
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn fmt_delays(d: Option<Delays>) -> String {
    d.map_or("-".into(), |d| {
        format!("p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} windows)", d.p50, d.p99, d.max, d.count)
    })
}

impl Report {
    pub fn ratio(&self) -> f64 {
        if self.baseline_per_sec > 0.0 { self.stored_per_sec / self.baseline_per_sec } else { 0.0 }
    }

    pub fn print(&self) {
        println!("--- {} devices (load average {})", self.devices, self.load_average);
        println!(
            "  enrolled in {:.2} s, connected in {:.1} s; connected at the ceiling phase: {} (broker alone), {} (fleet); \
             no-op subscriber connections lost: {}",
            self.enroll_secs, self.connect_secs, self.connected.0, self.connected.1, self.baseline_lost
        );
        println!(
            "  ceiling: offered {:.0} msg/s; broker alone → no-op subscriber {:.0} msg/s; fleet stored {:.0} msg/s; \
             ratio {:.2} (fleet caught up {:.1} s after publishing stopped)",
            self.offered_per_sec,
            self.baseline_per_sec,
            self.stored_per_sec,
            self.ratio(),
            self.catch_up_secs
        );
        println!(
            "  fleet RSS: {:.1} MiB idle, +{:.1} KiB per connected device (broker alone: +{:.1} KiB), {:.1} MiB peak",
            mib(self.fleet_rss_idle as f64),
            self.fleet_rss_per_device / 1024.0,
            self.baseline_rss_per_device / 1024.0,
            mib(self.fleet_rss_peak as f64)
        );
        println!("  steady ({:.0} msg/s stored): ingest delay {}", self.steady_per_sec, fmt_delays(self.steady));
        println!("    each device's first window: {}", fmt_delays(self.steady_first));
        println!("    the later windows: {}", fmt_delays(self.steady_later));
        println!("    windows ending 30 s or more after the device's first: {}", fmt_delays(self.steady_settled));
        println!("  ceiling: ingest delay {}", fmt_delays(self.ceiling));
        println!("  windows: {} published, {} stored", self.windows_published, self.windows_stored);
    }

    pub fn table(reports: &[Report]) {
        println!();
        println!(
            "| devices | offered msg/s | broker alone msg/s | fleet stored msg/s | ratio | RSS/device | p99 delay (steady) | p99 steady, after the first window | p99 delay (ceiling) | load average |"
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        for r in reports {
            let p99 = |d: Option<Delays>| d.map_or("-".into(), |d| format!("{:.1} ms", d.p99));
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} KiB | {} | {} | {} | {} |",
                r.devices,
                r.offered_per_sec,
                r.baseline_per_sec,
                r.stored_per_sec,
                r.ratio(),
                r.fleet_rss_per_device / 1024.0,
                p99(r.steady),
                p99(r.steady_later),
                p99(r.ceiling),
                r.load_average
            );
        }
    }
}

/// A progress line, so a long run shows where it is (and a profiler can be started at a phase).
fn progress(devices: usize, what: &str) {
    println!("{devices} devices: {what}");
}

fn phases(n: usize, s: &Settings) -> (Phase, Phase) {
    let steady = Phase { camera: STEADY.into(), interval: s.window, duration: s.steady, status_every: 3 };
    // Every device at the same pace, adding up to the offered rate; a status every 10th window, as in `steady`'s
    // proportion give or take.
    let interval = Duration::from_secs_f64((n as f64 / s.ceiling_rate).max(0.001));
    let ceiling = Phase { camera: CEILING.into(), interval, duration: s.ceiling, status_every: 10 };
    (steady, ceiling)
}

/// The broker alone: the fleet's embedded broker, the fleet's MQTT client counting and dropping messages.
async fn baseline(setup: &FleetSetup, creds: &[Credentials], s: &Settings, report: &mut Report) -> Result<()> {
    let (broker, addr, user, password) = crate::procs::start_broker(setup)?;
    let subscriber =
        Subscriber::start(&addr.ip().to_string(), addr.port(), &user, &password, Duration::from_secs(30)).await?;
    let idle = sys::rss_bytes(broker.pid()).unwrap_or(0);
    progress(creds.len(), "broker alone: connecting the devices");
    let swarm =
        Swarm::connect(&format!("mqtt://{addr}"), creds, Behaviour::new("defect", 1), s.batch, Duration::from_secs(30))
            .await?;
    let count = || async { Ok::<_, outpost_fleet::load::fleet::FleetProcError>(subscriber.received()) };
    settle(count, creds.len() as u64, Duration::from_secs(5), Duration::from_secs(60)).await?;
    let connected = sys::rss_bytes(broker.pid()).unwrap_or(0);
    report.baseline_rss_per_device = connected.saturating_sub(idle) as f64 / creds.len() as f64;
    if swarm.connected() < creds.len() {
        tracing::warn!(connected = swarm.connected(), devices = creds.len(), "baseline: not every device connected");
    }
    let (_, ceiling) = phases(creds.len(), s);
    // One window per device first, as the fleet's steady phase does before its ceiling phase: rumqttd does work
    // proportional to every subscribed filter on the first publish to each topic (see docs/BENCHMARKS.md), and
    // without the warm-up that one-off cost would land in the baseline's ceiling phase only.
    let warmup = Phase { camera: WARMUP.into(), interval: s.window, duration: s.window, status_every: 3 };
    progress(creds.len(), "broker alone: warm-up");
    let warmed = swarm.run(&warmup).await;
    swarm.drain(Duration::from_secs(60)).await;
    let target = subscriber.received() + warmed.windows + warmed.statuses;
    settle(count, target, Duration::from_secs(3), Duration::from_secs(120)).await?;
    report.connected.0 = swarm.connected();
    let (before, start) = (subscriber.received(), Instant::now());
    progress(creds.len(), "broker alone: ceiling phase");
    let published = swarm.run(&ceiling).await;
    let secs = start.elapsed().as_secs_f64();
    report.offered_per_sec = stats::rate(published.windows + published.statuses, secs);
    report.baseline_per_sec = stats::rate(subscriber.received() - before, secs);
    report.baseline_lost = subscriber.lost();
    swarm.stop(Duration::from_secs(30)).await;
    drop(subscriber);
    broker.kill()?;
    Ok(())
}

/// The ingest delays of the stored windows, per phase: when the fleet received each, minus the window's end (the
/// moment the simulated agent handed it to its link). Read from the fleet's store once the fleet has stopped.
fn delays(setup: &FleetSetup, creds: &[Credentials], since: OffsetDateTime) -> Result<PhaseDelays> {
    let state = setup.state_dir();
    let store = SledStore::open(&state.join("db"))?;
    let registry = Registry::new(store.clone(), registry::load_master(&state.join("master.key"))?);
    let ingest = Ingest::open(store, Arc::new(registry), IngestConfig::default())?;
    let model = ModelRef { name: "defect".into(), version: 1 };
    let range =
        TimeRange::new(since - time::Duration::minutes(1), OffsetDateTime::now_utc() + time::Duration::hours(1));
    let mut out = PhaseDelays::default();
    for c in creds {
        let device = DeviceId::new(&c.device)?;
        let mut first: Option<OffsetDateTime> = None;
        // Oldest first, so a device's first steady window comes first.
        for w in ingest.windows(&device, &model, range, 1_000_000)? {
            let ms = (w.received_at - w.window.end).as_seconds_f64() * 1000.0;
            match (w.window.camera.as_str(), first) {
                (STEADY, None) => {
                    first = Some(w.window.end);
                    out.steady_first.push(ms);
                }
                (STEADY, Some(at)) => {
                    out.steady_later.push(ms);
                    if w.window.end - at >= SETTLED {
                        out.steady_settled.push(ms);
                    }
                }
                (CEILING, _) => out.ceiling.push(ms),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Ingest delays in ms, per phase.
#[derive(Debug, Default)]
struct PhaseDelays {
    steady_first: Vec<f64>,
    steady_later: Vec<f64>,
    /// Windows ending [`SETTLED`] or more after the device's first steady window.
    steady_settled: Vec<f64>,
    ceiling: Vec<f64>,
}

/// How long after a device's first steady window its windows count as settled (past the first-publish backlog).
const SETTLED: time::Duration = time::Duration::seconds(30);

pub async fn scenario(n: usize, s: &Settings) -> Result<Report> {
    let dir = tempfile::Builder::new().prefix("outpost-load-").tempdir()?;
    let setup = FleetSetup {
        dir: dir.path().to_path_buf(),
        bin: env!("CARGO_BIN_EXE_outpost-fleet").into(),
        extra: s.workers.map(|w| format!("[ingest]\nworkers = {w}\n")).unwrap_or_default(),
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let mut report = Report { devices: n, ..Default::default() };

    // Enrollment, through the API of a running fleet.
    let fleet = setup.start(&http).await?;
    let token = setup.admin_token()?;
    let start = Instant::now();
    let creds = enroll(&http, &fleet.base(), &token, n, &[]).await?;
    report.enroll_secs = start.elapsed().as_secs_f64();
    fleet.proc.stop(Duration::from_secs(30))?;

    baseline(&setup, &creds, s, &mut report).await.context("baseline")?;

    // The fleet.
    let fleet = setup.start(&http).await?;
    let since = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.fleet_rss_idle = sys::rss_bytes(fleet.proc.pid()).unwrap_or(0);
    let start = Instant::now();
    progress(n, "fleet: connecting the devices");
    let swarm = Swarm::connect(
        &format!("mqtt://{}", fleet.mqtt),
        &creds,
        Behaviour::new("defect", 1),
        s.batch,
        Duration::from_secs(30),
    )
    .await?;
    let stored = || accepted(&http, &fleet);
    settle(stored, n as u64, Duration::from_secs(10), Duration::from_secs(120)).await?;
    report.connect_secs = start.elapsed().as_secs_f64();
    if swarm.connected() < n {
        tracing::warn!(connected = swarm.connected(), devices = n, "not every device connected");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = sys::rss_bytes(fleet.proc.pid()).unwrap_or(0);
    report.fleet_rss_per_device = connected.saturating_sub(report.fleet_rss_idle) as f64 / n as f64;

    let (steady, ceiling) = phases(n, s);
    let (before, start) = (accepted(&http, &fleet).await?, Instant::now());
    progress(n, "fleet: steady phase");
    let published = swarm.run(&steady).await;
    report.steady_per_sec = stats::rate(accepted(&http, &fleet).await? - before, start.elapsed().as_secs_f64());
    report.windows_published += published.windows;
    swarm.drain(Duration::from_secs(30)).await;
    let target = before + published.windows + published.statuses;
    settle(|| accepted(&http, &fleet), target, Duration::from_secs(3), Duration::from_secs(60)).await?;

    report.connected.1 = swarm.connected();
    let (before, start) = (accepted(&http, &fleet).await?, Instant::now());
    progress(n, "fleet: ceiling phase");
    let published = swarm.run(&ceiling).await;
    let secs = start.elapsed().as_secs_f64();
    let published_end = Instant::now();
    let after = accepted(&http, &fleet).await?;
    report.stored_per_sec = stats::rate(after - before, secs);
    report.fleet_rss_peak = sys::rss_bytes(fleet.proc.pid()).unwrap_or(0);
    report.windows_published += published.windows;
    report.load_average = sys::load_average();
    swarm.drain(Duration::from_secs(60)).await;
    let target = before + published.windows + published.statuses;
    settle(|| accepted(&http, &fleet), target, Duration::from_secs(3), Duration::from_secs(120)).await?;
    report.catch_up_secs = published_end.elapsed().as_secs_f64();
    report.fleet_rss_peak = report.fleet_rss_peak.max(sys::rss_bytes(fleet.proc.pid()).unwrap_or(0));
    swarm.stop(Duration::from_secs(30)).await;
    fleet.proc.stop(Duration::from_secs(30))?;

    let (setup_ref, creds_ref) = (&setup, &creds);
    let mut d = tokio::task::block_in_place(|| delays(setup_ref, creds_ref, since))?;
    report.windows_stored = d.steady_first.len() + d.steady_later.len() + d.ceiling.len();
    let mut steady: Vec<f64> = d.steady_first.iter().chain(&d.steady_later).copied().collect();
    report.steady = Delays::of(&mut steady);
    report.steady_first = Delays::of(&mut d.steady_first);
    report.steady_later = Delays::of(&mut d.steady_later);
    report.steady_settled = Delays::of(&mut d.steady_settled);
    report.ceiling = Delays::of(&mut d.ceiling);
    Ok(report)
}
