//! One scenario: a fleet, N simulated devices on v1, a rollout of v2 run to its end, and the figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use outpost_common::manifest::{self, Manifest, SecretKey, TrustedKeys};
use outpost_common::vision::engine::Runtime;
use outpost_common::vision::{Vision, VisionOptions};
use outpost_fleet::load::fleet::{Fleet, FleetSetup, accepted, enroll, metric, settle};
use outpost_fleet::load::{Behaviour, Phase, Swarm, VersionBehaviour, sys};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::Settings;
use crate::report::{Report, StageFigures};

/// The zoo's defect detector: both versions carry it (the registry checks every push against its manifest).
const DETECTOR: &str = "models/zoo/defect-yolo11n-320.onnx";
/// How much lower the worse v2's per-frame confidence is (the quality gate's margin is 0.05).
const WORSE_SHIFT: f32 = -0.2;

/// TEST-ONLY release key from a fixed seed, trusted by this bench's fleet and simulated devices only.
fn release_key() -> SecretKey {
    SecretKey::from_seed(&[7; 32])
}

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(|p| p.to_path_buf()).unwrap_or_default()
}

/// A version's number and signed manifest (JSON).
type SignedVersion = (u64, Vec<u8>);

/// The detector's bytes and the signed manifests of v1 and v2 describing it.
fn signed_versions() -> Result<(Vec<u8>, Vec<SignedVersion>)> {
    let bytes = std::fs::read(repo_root().join(DETECTOR)).with_context(|| format!("reading {DETECTOR}"))?;
    let rt = Runtime::init(None).context("ONNX Runtime")?;
    let vision = Vision::load(rt, &bytes, VisionOptions::default()).context("loading the detector")?;
    let now = OffsetDateTime::now_utc();
    let mut out = Vec::new();
    for version in [1, 2] {
        let m = Manifest {
            label: Some(format!("1.{version}")),
            ..Manifest::describing("defect", version, &bytes, vision.spec(), now, time::Duration::days(30))
        };
        out.push((version, manifest::sign_manifest(&m, &[&release_key()]).to_json_pretty()));
    }
    Ok((bytes, out))
}

async fn push(http: &reqwest::Client, fleet: &Fleet, token: &str, manifest: &[u8], artifact: &[u8]) -> Result<()> {
    let form = reqwest::multipart::Form::new()
        .part("manifest", reqwest::multipart::Part::bytes(manifest.to_vec()).file_name("m.json"))
        .part("artifact", reqwest::multipart::Part::bytes(artifact.to_vec()).file_name("m.onnx"));
    let response =
        http.post(format!("{}/api/v1/models", fleet.base())).bearer_auth(token).multipart(form).send().await?;
    let status = response.status();
    if !status.is_success() {
        bail!("model push: {status} {}", response.text().await.unwrap_or_default());
    }
    Ok(())
}

async fn get(http: &reqwest::Client, fleet: &Fleet, token: &str, path: &str) -> Result<Value> {
    let response = http.get(format!("{}/api/v1{path}", fleet.base())).bearer_auth(token).send().await?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {path}: {status}");
    }
    Ok(response.json().await?)
}

/// The plan: stages `1, 5%, 25%, 100%` (the worse version: `5%, 25%, 100%`, so more canaries roll back), each
/// waiting for the dwell and for half its cumulative devices to report windows on v2; default gates but drift
/// (synthetic frames have no drift reference worth judging).
fn plan(n: usize, worse: bool, s: &Settings) -> Value {
    let sizes: &[(&str, f64)] = if worse {
        &[("5%", 0.05), ("25%", 0.25), ("100%", 1.0)]
    } else {
        &[("1", 0.0), ("5%", 0.05), ("25%", 0.25), ("100%", 1.0)]
    };
    let stages: Vec<Value> = sizes
        .iter()
        .map(|(size, share)| {
            let cumulative = if *share == 0.0 { 1.0 } else { (share * n as f64).ceil() };
            json!({
                "size": size,
                "min_dwell_secs": s.dwell.as_secs(),
                "min_reporting": ((cumulative / 2.0).ceil() as u32).max(1),
            })
        })
        .collect();
    json!({
        "model": "defect",
        "version": 2,
        "target": {"tags": {"fleet": "bench"}},
        "stages": stages,
        "gates": {
            "install": {"min_committed": 0.9, "max_failed": 0.1, "min_executed": 3, "timeout_secs": 600},
            "drift": false
        }
    })
}

fn at(v: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

/// Stage start times from the history: entry `stage k (...) started` → k - 1; and the end.
fn stage_starts(header: &Value) -> (Vec<OffsetDateTime>, Option<OffsetDateTime>) {
    let mut starts = Vec::new();
    for h in header["history"].as_array().into_iter().flatten() {
        let what = h["what"].as_str().unwrap_or("");
        if what.starts_with("stage ") && what.contains(") started:") {
            starts.extend(at(&h["at"]));
        }
    }
    let end = at(&header["at"]);
    (starts, end)
}

/// Polls the rollout's header (the list, which is small: the status view carries every device) until it ends,
/// sampling the fleet's RSS. Returns the final header.
async fn follow(
    http: &reqwest::Client,
    fleet: &Fleet,
    token: &str,
    id: &str,
    limit: Duration,
    report: &mut Report,
) -> Result<Value> {
    let start = Instant::now();
    loop {
        report.rss_peak = report.rss_peak.max(sys::rss_bytes(fleet.proc.pid()).unwrap_or(0));
        let list = get(http, fleet, token, "/rollouts").await?;
        let header = list.as_array().into_iter().flatten().find(|h| h["id"] == id).cloned().unwrap_or(Value::Null);
        let state = header["state"].as_str().unwrap_or("");
        if state == "completed" || state == "aborted" {
            return Ok(header);
        }
        if start.elapsed() > limit {
            bail!("the rollout did not end within {limit:?} (state {state}, stage {})", header["stage"]);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn scenario(n: usize, worse: bool, s: &Settings) -> Result<Report> {
    let dir = tempfile::Builder::new().prefix("outpost-rollout-").tempdir()?;
    let key = release_key().public();
    let setup = FleetSetup {
        dir: dir.path().to_path_buf(),
        bin: env!("CARGO_BIN_EXE_outpost-fleet").into(),
        extra: format!("[models]\ntrusted_keys = [\"{}\"]\n\n[rollouts]\ntick_secs = 1\n", key.to_line()),
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let mut report = Report { devices: n, worse, ..Default::default() };

    let fleet = setup.start(&http).await?;
    let token = setup.admin_token()?;
    let (artifact, manifests) = tokio::task::block_in_place(signed_versions)?;
    for (_, m) in &manifests {
        push(&http, &fleet, &token, m, &artifact).await?;
    }
    let start = Instant::now();
    let creds = enroll(&http, &fleet.base(), &token, n, &[("fleet", "bench")]).await?;
    report.enroll_secs = start.elapsed().as_secs_f64();
    report.rss_idle = sys::rss_bytes(fleet.proc.pid()).unwrap_or(0);

    let mut behaviour = Behaviour::new("defect", 1);
    behaviour.trusted = Some(TrustedKeys::new([key], 1)?);
    behaviour.install_delay = s.install;
    behaviour.health_window = s.health;
    if worse {
        behaviour.versions.insert(2, VersionBehaviour { confidence_shift: WORSE_SHIFT, ..Default::default() });
    }
    let start = Instant::now();
    let swarm =
        Swarm::connect(&format!("mqtt://{}", fleet.mqtt), &creds, behaviour, s.batch, Duration::from_secs(30)).await?;
    settle(|| accepted(&http, &fleet), n as u64, Duration::from_secs(10), Duration::from_secs(180)).await?;
    report.connect_secs = start.elapsed().as_secs_f64();
    report.connected = swarm.connected();

    // Windows on whatever each device serves, all through the rollout; two intervals of v1 first.
    let stop = CancellationToken::new();
    let phase = Phase {
        camera: "line-1".into(),
        interval: s.window,
        duration: Duration::from_secs(24 * 3600),
        status_every: 10,
    };
    let publishing = swarm.run_until(&phase, &stop);
    let driving = async {
        let result = drive(&http, &fleet, &token, &swarm, n, worse, s, &mut report).await;
        stop.cancel();
        result
    };
    let (published, driven) = tokio::join!(publishing, driving);
    report.windows_refused = published.refused;
    driven?;
    report.rss_after = sys::rss_bytes(fleet.proc.pid()).unwrap_or(0);
    report.load_average = sys::load_average();
    swarm.stop(Duration::from_secs(60)).await;
    fleet.proc.stop(Duration::from_secs(30))?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    http: &reqwest::Client,
    fleet: &Fleet,
    token: &str,
    swarm: &Swarm,
    n: usize,
    worse: bool,
    s: &Settings,
    report: &mut Report,
) -> Result<()> {
    tokio::time::sleep(s.window * 2).await;
    report.rss_before = sys::rss_bytes(fleet.proc.pid()).unwrap_or(0);
    report.rss_peak = report.rss_before;
    let messages_before = swarm.messages();
    let cpu_before = sys::cpu_secs(fleet.proc.pid()).unwrap_or(0.0);
    let tick_before = metric(http, fleet, "outpost_fleet_rollout_tick_seconds_total").await?;
    let ticks_before = metric(http, fleet, "outpost_fleet_rollout_ticks_total").await?;
    let started = Instant::now();

    let create = Instant::now();
    let response = http
        .post(format!("{}/api/v1/rollouts", fleet.base()))
        .bearer_auth(token)
        .json(&plan(n, worse, s))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.as_u16() != 201 {
        bail!("creating the rollout: {status} {body}");
    }
    let id = body["id"].as_str().context("rollout id")?.to_string();
    report.create_secs = create.elapsed().as_secs_f64();
    // Which stage each device joins at: once, from the status view (it lists every device).
    let view = get(http, fleet, token, &format!("/rollouts/{id}")).await?;
    let mut stage_of: HashMap<String, usize> = HashMap::new();
    for (k, stage) in view["stages"].as_array().into_iter().flatten().enumerate() {
        for d in stage["devices"].as_array().into_iter().flatten() {
            stage_of.insert(d["device"].as_str().unwrap_or("").to_string(), k);
        }
    }

    let header = follow(http, fleet, token, &id, Duration::from_secs(1800), report).await?;
    report.rollout_secs = started.elapsed().as_secs_f64();
    report.outcome = match header["state"].as_str() {
        Some("aborted") => format!("aborted: {}", header["reason"].as_str().unwrap_or("")),
        Some(state) => state.to_string(),
        None => "unknown".into(),
    };
    // Convergence: every device that got v2 commits it (or, after an abort, is back on v1).
    let converge = Instant::now();
    let command_v2 = format!("{id}.v2");
    let done = |sim: &outpost_fleet::load::Sim| {
        let state = sim.state();
        let got = state.commands.iter().any(|(c, _)| *c == command_v2);
        let want = if worse || !got { 1 } else { 2 };
        state.serving.active == want && state.serving.committed
    };
    while !swarm.devices().iter().all(|d| done(d)) && converge.elapsed() < Duration::from_secs(300) {
        report.rss_peak = report.rss_peak.max(sys::rss_bytes(fleet.proc.pid()).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report.converge_secs = converge.elapsed().as_secs_f64();
    report.converged = swarm.devices().iter().filter(|d| done(d)).count();
    // Let the last statuses reach the fleet before counting.
    swarm.drain(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.fleet_cpu_secs = sys::cpu_secs(fleet.proc.pid()).unwrap_or(0.0) - cpu_before;
    report.wall_secs = started.elapsed().as_secs_f64();
    report.tick_secs = metric(http, fleet, "outpost_fleet_rollout_tick_seconds_total").await? - tick_before;
    report.ticks = (metric(http, fleet, "outpost_fleet_rollout_ticks_total").await? - ticks_before) as u64;
    report.tick_max_secs = metric(http, fleet, "outpost_fleet_rollout_tick_seconds_max").await?;
    report.windows_read = metric(http, fleet, "outpost_fleet_rollout_windows_read_total").await? as u64;
    report.windows_judged = metric(http, fleet, "outpost_fleet_rollout_windows_judged_total").await? as u64;
    let m = swarm.messages();
    report.commands = m.commands - messages_before.commands;
    report.max_commands = m.max_commands;
    report.events = m.events - messages_before.events;
    report.statuses = m.statuses - messages_before.statuses;
    report.windows = m.windows - messages_before.windows;

    let (starts, end) = stage_starts(&header);
    // After an abort: the devices told to go back, and when the last of them had v1 committed again.
    if let (Some("aborted"), Some(end)) = (header["state"].as_str(), end) {
        let command_v1 = format!("{id}.v1");
        let mut back = Vec::new();
        for sim in swarm.devices() {
            let state = sim.state();
            if state.commands.iter().any(|(c, _)| *c == command_v1)
                && let Some((_, t)) = state.commits.iter().rev().find(|(v, t)| *v == 1 && *t >= end)
            {
                back.push((*t - end).as_seconds_f64());
            }
        }
        report.rolled_back = back.len();
        report.rollback_max = outpost_fleet::load::stats::percentile(&mut back, 100.0);
    }

    // Per stage: from its start, until every device joining at it had its command and had committed; then until
    // the fleet passed the stage (the next start, or the end).
    let dwell = time::Duration::try_from(s.dwell).unwrap_or(time::Duration::ZERO);
    for (k, &start) in starts.iter().enumerate() {
        let mut received = Vec::new();
        let mut committed = Vec::new();
        for sim in swarm.devices() {
            if stage_of.get(&sim.device) != Some(&k) {
                continue;
            }
            let state = sim.state();
            if let Some((_, t)) = state.commands.iter().find(|(c, _)| *c == command_v2) {
                received.push((*t - start).as_seconds_f64());
            }
            if let Some((_, t)) = state.commits.iter().find(|(v, _)| *v == 2) {
                committed.push((*t - start).as_seconds_f64());
            }
        }
        let passed = starts.get(k + 1).copied().or(end).map(|t| (t - start).as_seconds_f64());
        let devices = stage_of.values().filter(|&&s| s == k).count();
        let ready = committed.iter().copied().fold(dwell.as_seconds_f64(), f64::max);
        let aborted_here = header["state"] == "aborted" && k + 1 == starts.len();
        report.stages.push(StageFigures {
            stage: k + 1,
            devices,
            received: received.len(),
            command_p50: outpost_fleet::load::stats::percentile(&mut received.clone(), 50.0),
            command_max: outpost_fleet::load::stats::percentile(&mut received, 100.0),
            committed: committed.len(),
            committed_max: outpost_fleet::load::stats::percentile(&mut committed, 100.0),
            passed,
            gate_lag: if aborted_here { None } else { passed.map(|p| p - ready) },
        });
    }
    Ok(())
}
