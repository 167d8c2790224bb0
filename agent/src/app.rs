//! `outpost-agent run`: wires sources, pipelines, flagging, telemetry, samples and the link together.
//!
//! Tasks: one per camera reading its source into its pipeline (decode and inference threads); one consuming every
//! pipeline's outputs (windows, flagging, samples, acknowledgements); the link's tasks; the sample uploader; the
//! local HTTP endpoints. A folder's file is acknowledged only once the window summary counting it is durable in the
//! outbox ([`crate::acks`]), so a `kill -9` never loses a count: unacknowledged files are read again after a restart.
//! Shutdown (one cancellation token, one deadline): sources stop, pipelines drain the frames they hold, the last
//! windows are published and made durable, their files acknowledged, the sources closed (which records the
//! acknowledgements), then the link delivers what it can and disconnects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use outpost_common::manifest::FloorStore;
use outpost_common::protocol::ModelRef;
use outpost_common::protocol::{AgentReady, AgentState, CameraInfo, EventBody, SCHEMA, Status, SwapReverted};
use outpost_common::vision::VisionOptions;
use outpost_common::vision::engine::{EngineOptions, Runtime};
use outpost_common::vision::postprocess::DetectParams;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ModelConfig, RuntimeConfig};
use crate::flagging::Flagger;
use crate::link::Link;
use crate::metrics::{CameraCounters, Metrics};
use crate::pipeline::{EncodedFrame, FrameOutput, Pipeline, Served};
use crate::queue::{Overflow, Pushed};
use crate::results::Consumer;
use crate::samples::{SampleQueue, UploadTarget, run_uploader};
use crate::source::{FrameSource, SourceContext};
use crate::store::SledStore;
use crate::trial::Trial;
use crate::update::{Downloader, SlotStore};
use crate::updater::Updater;
use crate::updater::seen::SeenCommands;
use crate::updater::serving::{self, Choice, Serving, Shared};

/// Runs the agent until `shutdown` is cancelled, then stops within the configured deadline.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    crate::source::install_crypto_provider();
    let raw = &config.raw;
    let deadline = Duration::from_secs(raw.shutdown_deadline_secs.max(1));
    std::fs::create_dir_all(&raw.state_dir).with_context(|| format!("creating {}", raw.state_dir.display()))?;

    let rt = Runtime::init(raw.runtime.ort_lib.as_deref())?;
    let family = raw.device.family.clone().unwrap_or_default();
    let first_model = raw.models.first().map(|m| ModelRef { name: m.name.clone(), version: m.version });
    let status = |state| Status {
        schema: SCHEMA,
        state,
        at: OffsetDateTime::now_utc(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        family: family.clone(),
        model: first_model.clone(),
        models: Vec::new(),
        health: None,
    };

    let link_shutdown = CancellationToken::new();
    let store = SledStore::open(&raw.state_dir.join("state")).context("opening the agent's state store")?;
    let (link, link_task) = Link::start(
        &raw.link,
        store,
        config.device.clone(),
        config.key.clone(),
        status(AgentState::Starting),
        link_shutdown.clone(),
    )?;

    let samples = SampleQueue::open(&config.samples)?;
    let fleet_roots = raw.fleet.roots()?;
    let fleet_client =
        || reqwest::Client::builder().tls_certs_merge(fleet_roots.clone()).timeout(Duration::from_secs(30)).build();
    let uploader = match (&raw.fleet.url, &raw.fleet.token) {
        (Some(url), Some(token)) => {
            let client = fleet_client()?;
            let target = UploadTarget { base_url: url.clone(), token: token.clone() };
            Some(tokio::spawn(run_uploader(samples.clone(), client, target, config.samples.clone(), shutdown.clone())))
        }
        _ => {
            tracing::warn!("no [fleet] url and token: flagged samples wait in the queue");
            None
        }
    };

    // Models: for each model name, the version to serve (an installed, verified one, else the configured file).
    let updates = &raw.updates;
    let trusted = updates.trusted().map_err(anyhow::Error::msg)?;
    let slots = SlotStore::open(raw.state_dir.join("models"), updates.max_trial_starts)?;
    let floors = FloorStore::open(raw.state_dir.join("floors.json"))?;
    let shared = Arc::new(Shared::default());
    let mut chosen = BTreeMap::new();
    for model in raw.models.iter().filter(|m| raw.cameras.iter().any(|c| c.model == m.name)) {
        let choice = Choice {
            slots: &slots,
            trusted: trusted.as_ref(),
            family: &family,
            floors: floors.floors(),
            configured: model,
        };
        let c = serving::choose(&choice)?;
        for r in &c.reverted {
            link.publish_event(EventBody::SwapReverted(SwapReverted {
                command_id: "startup".into(),
                model: ModelRef { name: model.name.clone(), version: r.from },
                restored: r.to.map(|v| ModelRef { name: model.name.clone(), version: v }),
                reason: r.reason.clone(),
            }))?;
        }
        tracing::info!(model = %model.name, version = c.model.version, committed = c.committed, installed = c.verified.is_some(), "serving");
        chosen.insert(model.name.clone(), c);
    }

    // Pipelines: one (decode + inference thread) per camera, each with its own session of its model.
    let (out_tx, out_rx) = mpsc::channel::<FrameOutput>(64);
    let mut cameras = Vec::new();
    let mut counters = BTreeMap::new();
    let mut infos = Vec::new();
    let mut served_models: BTreeMap<String, Serving> = BTreeMap::new();
    let mut boot_trials = Vec::new();
    for cam in &raw.cameras {
        let (Some(model), Some(choice)) = (raw.models.iter().find(|m| m.name == cam.model), chosen.get(&cam.model))
        else {
            continue;
        };
        let options = vision_options(&raw.runtime, model);
        let vision = serving::load_sessions(rt, &choice.bytes, choice.verified.as_ref(), &options, 1)
            .with_context(|| format!("loading model `{}`", model.name))?
            .pop()
            .context("no session")?;
        let ctx = SourceContext { camera: cam.name.clone(), state_dir: raw.state_dir.join("sources") };
        let source = cam.source.build(&ctx).with_context(|| format!("camera `{}`", cam.name))?;
        let overflow = if source.is_live() { Overflow::DropOldest } else { Overflow::Wait };
        infos.push(CameraInfo {
            name: cam.name.clone(),
            source: cam.source.kind().into(),
            model: choice.model.clone(),
        });
        let served = Served { model: choice.model.clone(), vision };
        let pipeline =
            Arc::new(Pipeline::start(served, overflow, cam.queue_depth, Default::default(), out_tx.clone())?);
        let entry = served_models.entry(model.name.clone()).or_insert_with(|| Serving {
            name: model.name.clone(),
            options: options.clone(),
            cameras: Vec::new(),
            active: choice.model.version,
            previous: choice.previous,
            committed: choice.committed,
            configured: ModelRef { name: model.name.clone(), version: model.version },
            configured_path: model.path.clone(),
        });
        entry.cameras.push((cam.name.clone(), pipeline.clone()));
        let c = Arc::new(CameraCounters::default());
        counters.insert(cam.name.clone(), c.clone());
        cameras.push((cam.clone(), source, pipeline, c));
    }
    drop(out_tx);
    for (name, choice) in &chosen {
        if !choice.committed {
            let baseline = choice.verified.as_ref().and_then(|v| v.manifest().baseline.clone());
            shared
                .lock_trials()
                .insert(choice.model.clone(), Trial::new(updates.trial.clone(), baseline, crate::updater::clock()));
            boot_trials.push(choice.model.clone());
            tracing::info!(model = %name, version = choice.model.version, "resuming the health window of an uncommitted version");
        }
    }
    drop(chosen);

    let metrics = Arc::new(Metrics {
        cameras: counters.clone(),
        samples: samples.stats.clone(),
        link: link.clone(),
        ready: false.into(),
    });
    let listener = tokio::net::TcpListener::bind(&raw.metrics.listen)
        .await
        .with_context(|| format!("binding the metrics endpoint on {}", raw.metrics.listen))?;
    let metrics_addr = listener.local_addr()?;
    let http = {
        let (app, stop) = (crate::metrics::router(metrics.clone()), shutdown.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        })
    };

    // Results: windows, flagging, samples, acknowledgements, trials.
    // The status every part publishes from: the updater keeps its models current, the results add health.
    let consumer_status = Arc::new(std::sync::Mutex::new(Status {
        models: served_models.values().map(Serving::status).collect(),
        model: served_models.values().next().map(Serving::active_ref),
        ..status(AgentState::Running)
    }));
    let consumer = Consumer {
        flaggers: raw
            .cameras
            .iter()
            .map(|c| (c.name.clone(), Flagger::new(c.flagging.clone(), seed(&c.name))))
            .collect(),
        counters: counters.clone(),
        inputs: cameras.iter().map(|(c, _, p, _)| (c.name.clone(), p.input.clone())).collect(),
        window: Duration::from_secs(raw.telemetry.window_secs),
        per_frame: raw.telemetry.per_frame,
        link: link.clone(),
        samples: samples.clone(),
        device: config.device.to_string(),
        status: consumer_status.clone(),
        shared: shared.clone(),
    };
    let results = tokio::spawn(consumer.run(out_rx, link.durable()));

    // Model updates: commands from the link, the fleet check.
    let status_shared = consumer_status.clone();
    let updater = Updater {
        config: updates.clone(),
        trusted,
        family: family.clone(),
        rt,
        slots,
        floors,
        serving: served_models,
        shared: shared.clone(),
        link: link.clone(),
        status: status_shared,
        downloader: Downloader::trusting(updates.download_config(), fleet_roots.clone())?,
        http: fleet_client()?,
        fleet: raw.fleet.url.clone().zip(raw.fleet.token.clone()),
        device: config.device.to_string(),
        seen: SeenCommands::open(&raw.state_dir.join("commands-seen.json")),
        boot_trials,
    };
    let commands = link.take_commands().context("the link's command receiver was taken")?;
    let updater_task = tokio::spawn(updater.run(commands, shutdown.clone()));

    // Sources.
    let ready = AgentReady { agent_version: env!("CARGO_PKG_VERSION").to_string(), cameras: infos };
    let mut source_tasks = Vec::new();
    for (cam, source, pipeline, c) in cameras {
        let name = cam.name.clone();
        let task = tokio::spawn(feed_source(cam.name.clone(), source, pipeline, c, shutdown.clone()));
        source_tasks.push((name, task));
    }
    link.set_status(current_status(&consumer_status, AgentState::Running));
    if let Err(e) = link.publish_event(EventBody::AgentReady(ready)) {
        tracing::warn!(error = %e, "agent-ready event not queued");
    }
    metrics.ready.store(true, Ordering::Release);
    tracing::info!(device = %config.device, cameras = raw.cameras.len(), metrics = %metrics_addr, "agent ready");

    shutdown.cancelled().await;
    let started = Instant::now();
    metrics.ready.store(false, Ordering::Release);
    tracing::info!("shutting down");
    let remaining = |d: Duration| d.saturating_sub(started.elapsed());
    let mut sources = Vec::new();
    for (camera, t) in source_tasks {
        match tokio::time::timeout(remaining(deadline), t).await {
            Ok(Ok(source)) => sources.push((camera, source)),
            Ok(Err(e)) => tracing::warn!(camera = %camera, error = %e, "a camera's task failed"),
            Err(_) => tracing::warn!(camera = %camera, "a camera did not stop within the deadline"),
        }
    }
    // The last windows are published and made durable, and their files acknowledged, before the sources close:
    // closing a folder source records the acknowledgements it received.
    if tokio::time::timeout(remaining(deadline), results).await.is_err() {
        tracing::warn!("results were not drained within the deadline; unacknowledged files are read again next start");
    }
    for (camera, mut source) in sources {
        if let Err(e) = source.close().await {
            tracing::warn!(camera = %camera, error = %e, "closing the source");
        }
    }
    if let Some(u) = uploader {
        let _ = tokio::time::timeout(Duration::from_secs(1), u).await;
    }
    let _ = tokio::time::timeout(remaining(deadline), updater_task).await;
    // What it served last (after any swap), so the fleet does not read a stop as a return to the configured model.
    link.set_status(current_status(&consumer_status, AgentState::Offline));
    link_shutdown.cancel();
    if tokio::time::timeout(remaining(deadline + Duration::from_secs(1)), link_task).await.is_err() {
        tracing::warn!("the link did not finish within the deadline; unsent messages stay in the outbox");
    }
    let _ = http.await;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "agent stopped");
    Ok(())
}

/// How a configured model is run.
pub fn vision_options(runtime: &RuntimeConfig, model: &ModelConfig) -> VisionOptions {
    VisionOptions {
        engine: EngineOptions { intra_threads: runtime.threads, ..EngineOptions::default() },
        detect: DetectParams { conf: model.conf, iou: model.iou, ..DetectParams::default() },
        ..VisionOptions::default()
    }
}

/// The shared status in `state`, stamped now; an offline one carries no health (it describes a stopped agent).
fn current_status(shared: &std::sync::Mutex<Status>, state: AgentState) -> Status {
    let mut status = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
    status.state = state;
    status.at = OffsetDateTime::now_utc();
    if state == AgentState::Offline {
        status.health = None;
    }
    status
}

fn seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
        ^ u64::from(std::process::id())
}

/// Reads one camera into its pipeline until shutdown or the end of the source, drains the pipeline, then closes the
/// source. Public so that the end-to-end bench (`benches/versus_python.rs`) drives the same code as `run`.
pub async fn read_source(
    camera: String,
    source: Box<dyn FrameSource>,
    pipeline: Arc<Pipeline>,
    counters: Arc<CameraCounters>,
    shutdown: CancellationToken,
) {
    let mut source = feed_source(camera.clone(), source, pipeline, counters, shutdown).await;
    if let Err(e) = source.close().await {
        tracing::warn!(camera = %camera, error = %e, "closing the source");
    }
}

/// [`read_source`] without the close: returns the source open, for `run` to close once the last acknowledgements
/// (which wait for the outbox) were sent to it.
async fn feed_source(
    camera: String,
    mut source: Box<dyn FrameSource>,
    pipeline: Arc<Pipeline>,
    counters: Arc<CameraCounters>,
    shutdown: CancellationToken,
) -> Box<dyn FrameSource> {
    let camera: Arc<str> = Arc::from(camera.as_str());
    let mut failures_logged = false;
    let mut seq = 0u64;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = source.next() => n,
        };
        match next {
            Ok(Some(mut frame)) => {
                seq += 1;
                let captured_at = OffsetDateTime::from(frame.captured_at);
                let encoded = EncodedFrame {
                    camera: camera.clone(),
                    seq,
                    captured_at,
                    bytes: frame.bytes.clone(),
                    ack: frame.take_ack(),
                };
                // File sources wait here for room: keep the async workers free while they do.
                let pushed = tokio::task::block_in_place(|| pipeline.push(encoded));
                if let Pushed::QueuedDropping(n) = pushed {
                    counters.dropped.fetch_add(n, Ordering::Relaxed);
                }
                if pushed == Pushed::Closed {
                    break;
                }
            }
            Ok(None) => {
                tracing::info!(camera = %camera, "source ended");
                break;
            }
            Err(e) => {
                counters.source_errors.fetch_add(1, Ordering::Relaxed);
                if !failures_logged {
                    tracing::warn!(camera = %camera, error = %e, "camera read failed; retrying (logged once)");
                    failures_logged = true;
                }
            }
        }
    }
    let _ = tokio::task::spawn_blocking(move || pipeline.drain()).await;
    source
}
