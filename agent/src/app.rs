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
use image::RgbImage;
use outpost_common::manifest::{FloorStore, Sha256Sum};
use outpost_common::protocol::ModelRef;
use outpost_common::protocol::{
    AgentReady, AgentState, CameraInfo, EventBody, FrameBatch, FrameReport, Health, MAX_FRAMES_PER_BATCH, Prediction,
    SCHEMA, SampleFlagged, SampleMeta, Status, SwapReverted, TelemetryBody,
};
use outpost_common::vision::engine::{EngineOptions, Runtime};
use outpost_common::vision::postprocess::DetectParams;
use outpost_common::vision::{FrameResult, VisionOptions};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::acks::{Closed, Deferred, Sealed};
use crate::config::{Config, ModelConfig, RuntimeConfig};
use crate::flagging::{Decision, Flagger, dhash};
use crate::link::Link;
use crate::metrics::{CameraCounters, Metrics};
use crate::pipeline::{EncodedFrame, FrameOutput, Pipeline, Served};
use crate::queue::{Overflow, Pushed};
use crate::samples::{SampleQueue, UploadTarget, run_uploader};
use crate::source::{Ack, FrameSource, Outcome, SourceContext};
use crate::store::SledStore;
use crate::trial::Trial;
use crate::update::{Downloader, SlotStore};
use crate::updater::Updater;
use crate::updater::seen::SeenCommands;
use crate::updater::serving::{self, Choice, Serving, Shared};
use crate::window::{FrameOutcome, Window};

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

fn predictions(r: &FrameResult) -> Vec<Prediction> {
    let dets = r.detections.iter().map(|d| Prediction {
        class: u32::try_from(d.class).unwrap_or(u32::MAX),
        label: d.label.clone(),
        score: d.score,
        bbox: Some(d.bbox),
    });
    let classes = r.classes.iter().map(|c| Prediction {
        class: u32::try_from(c.class).unwrap_or(u32::MAX),
        label: c.label.clone(),
        score: c.score,
        bbox: None,
    });
    dets.chain(classes).collect()
}

/// What the consumer needs besides the outputs themselves.
struct Consumer {
    flaggers: BTreeMap<String, Flagger>,
    counters: BTreeMap<String, Arc<CameraCounters>>,
    inputs: BTreeMap<String, Arc<crate::queue::StageQueue<EncodedFrame>>>,
    window: Duration,
    per_frame: bool,
    link: crate::link::LinkHandle,
    samples: SampleQueue,
    device: String,
    /// The running status (the updater keeps its models current); its health is refreshed at every window.
    status: Arc<std::sync::Mutex<Status>>,
    /// Trials to feed, latest frames to keep.
    shared: Arc<Shared>,
}

/// The open state of the consumer: one window per camera, per-frame reports when asked for, drop bookkeeping, the
/// acknowledgements waiting for their windows to be durable.
struct Windows {
    open: BTreeMap<String, Window>,
    frames: BTreeMap<(String, ModelRef), Vec<FrameReport>>,
    dropped_seen: BTreeMap<String, u64>,
    processed_in_window: u64,
    opened: Instant,
    acks: Deferred<Held>,
}

/// A frame's acknowledgement held until the telemetry counting the frame is durable.
struct Held {
    ack: Ack,
    outcome: Outcome,
    counters: Arc<CameraCounters>,
}

impl Held {
    fn hold(w: &mut Windows, camera: &str, ack: Ack, outcome: Outcome, counters: &Arc<CameraCounters>) {
        counters.awaiting_ack.fetch_add(1, Ordering::Relaxed);
        w.acks.hold(camera, Held { ack, outcome, counters: counters.clone() });
    }

    /// Acknowledges: the source records the file as processed and keeps, moves or deletes it.
    fn done(self) {
        self.counters.awaiting_ack.fetch_sub(1, Ordering::Relaxed);
        self.ack.done(self.outcome);
    }

    /// Gives the file back to the source unacknowledged (dropping an [`Ack`] does): it is read again.
    fn release(self) {
        self.counters.awaiting_ack.fetch_sub(1, Ordering::Relaxed);
    }
}

fn acknowledge(held: Vec<Held>) {
    if !held.is_empty() {
        tracing::debug!(files = held.len(), "acknowledging files whose window is durable");
    }
    held.into_iter().for_each(Held::done);
}

impl Consumer {
    /// Closes every camera's window: per-frame batches first, then the summaries, then the status with health. The
    /// acknowledgements of the window's files then wait for the last seq appended for their camera to be durable
    /// (`durable` is the outbox's durable mark now). A per-frame batch that could not be queued does not hold them
    /// back (the summary counts the frames); a summary that could not be queued releases them, to be read again.
    fn close_windows(&self, w: &mut Windows, started: Instant, durable: u64) {
        acknowledge(w.acks.durable(durable));
        let end = OffsetDateTime::now_utc();
        let mut closed: BTreeMap<String, Closed> = BTreeMap::new();
        let appended = |closed: &mut BTreeMap<String, Closed>, camera: &str, seq: u64| {
            let c = closed.entry(camera.to_string()).or_insert(Closed::Appended { last_seq: seq });
            if let Closed::Appended { last_seq } = c {
                *last_seq = (*last_seq).max(seq);
            }
        };
        for ((camera, model), frames) in std::mem::take(&mut w.frames) {
            for chunk in frames.chunks(MAX_FRAMES_PER_BATCH) {
                let batch = FrameBatch { camera: camera.clone(), model: model.clone(), frames: chunk.to_vec() };
                match self.link.publish_telemetry(TelemetryBody::Frames(batch)) {
                    Ok(seq) => appended(&mut closed, &camera, seq),
                    Err(e) => tracing::warn!(camera = %camera, error = %e, "per-frame results not queued"),
                }
            }
        }
        for (camera, window) in w.open.iter_mut() {
            let dropped = self.inputs.get(camera).map_or(0, |q| q.dropped());
            let seen = w.dropped_seen.entry(camera.clone()).or_insert(0);
            window.record_drops(dropped.saturating_sub(*seen), None);
            *seen = dropped;
            for summary in window.finish(end) {
                match self.link.publish_telemetry(TelemetryBody::Window(Box::new(summary))) {
                    Ok(seq) => appended(&mut closed, camera, seq),
                    Err(e) => {
                        tracing::warn!(camera = %camera, error = %e, "window summary not queued");
                        closed.insert(camera.clone(), Closed::Failed);
                    }
                }
            }
        }
        for camera in w.open.keys() {
            match w.acks.seal(camera, closed.get(camera).copied().unwrap_or(Closed::Nothing)) {
                Sealed::Waiting => {}
                Sealed::Ack(held) => acknowledge(held),
                Sealed::Release(held) => {
                    tracing::warn!(camera = %camera, files = held.len(), "files released unacknowledged: their \
                        window was not queued, so they are read again");
                    held.into_iter().for_each(Held::release);
                }
            }
        }
        let elapsed = w.opened.elapsed().as_secs_f64().max(1e-3);
        let fps = (w.processed_in_window as f64 / elapsed) as f32;
        w.processed_in_window = 0;
        w.opened = Instant::now();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.at = end;
        status.health = Some(self.health(started, fps));
        self.link.set_status(status.clone());
    }

    fn health(&self, started: Instant, fps: f32) -> Health {
        let link = self.link.stats();
        let load = |f: fn(&CameraCounters) -> u64| self.counters.values().map(|c| f(c)).sum::<u64>();
        let rejected = load(|c| c.rejected.lock().unwrap_or_else(|p| p.into_inner()).values().sum());
        let queue_drops = self.inputs.values().map(|q| q.dropped()).sum::<u64>();
        Health {
            uptime_secs: started.elapsed().as_secs(),
            fps,
            outbox_pending: link.outbox_messages,
            outbox_dropped: link.dropped,
            frames_dropped: queue_drops + rejected,
            errors: rejected + load(|c| c.source_errors.load(Ordering::Relaxed)),
        }
    }

    /// Flags the frame if a policy selects it: queues the sample and announces it. Returns whether it was flagged.
    fn flag(
        &mut self,
        frame: &EncodedFrame,
        model: &ModelRef,
        result: &FrameResult,
        image: &RgbImage,
        now: f64,
    ) -> bool {
        let camera = frame.camera.as_ref();
        let Some(f) = self.flaggers.get_mut(camera) else { return false };
        let Decision::Flag(reason) = f.decide(now, result, || dhash(image)) else { return false };
        let sha = Sha256Sum::of(&frame.bytes);
        let content_type = match outpost_common::vision::decode::sniff(&frame.bytes) {
            Some(image::ImageFormat::Png) => "image/png",
            _ => "image/jpeg",
        };
        let meta = SampleMeta {
            schema: SCHEMA,
            sample: sha,
            device: self.device.clone(),
            camera: camera.to_string(),
            model: model.clone(),
            captured_at: frame.captured_at,
            reason,
            confidence: result.confidence,
            predictions: predictions(result),
            width: result.width,
            height: result.height,
            content_type: content_type.into(),
        };
        if let Err(e) = self.samples.push(&frame.bytes, &meta) {
            tracing::warn!(camera = %camera, error = %e, "sample not queued");
            return false;
        }
        if let Some(c) = self.counters.get(camera) {
            c.flagged.fetch_add(1, Ordering::Relaxed);
        }
        let event = SampleFlagged {
            sample: sha,
            camera: camera.to_string(),
            frame: frame.seq,
            model: model.clone(),
            reason,
            confidence: result.confidence,
        };
        if let Err(e) = self.link.publish_event(EventBody::SampleFlagged(event)) {
            tracing::warn!(error = %e, "sample event not queued");
        }
        true
    }

    /// Consumes every pipeline's outputs until all pipelines have ended, then closes the last windows and waits
    /// until they are durable (`durable`: the outbox's durable mark) to acknowledge their files.
    async fn run(mut self, mut rx: mpsc::Receiver<FrameOutput>, mut durable: watch::Receiver<u64>) {
        let started = Instant::now();
        let now = OffsetDateTime::now_utc();
        let mut w = Windows {
            open: self.counters.keys().map(|c| (c.clone(), Window::new(c.clone(), now))).collect(),
            frames: BTreeMap::new(),
            dropped_seen: BTreeMap::new(),
            processed_in_window: 0,
            opened: Instant::now(),
            acks: Deferred::new(*durable.borrow_and_update()),
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + self.window, self.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut link_up = true;
        loop {
            let output = tokio::select! {
                _ = tick.tick() => {
                    let mark = *durable.borrow_and_update();
                    self.close_windows(&mut w, started, mark);
                    continue;
                }
                changed = durable.changed(), if link_up && w.acks.is_waiting() => {
                    match changed {
                        Ok(()) => acknowledge(w.acks.durable(*durable.borrow_and_update())),
                        Err(_) => link_up = false,
                    }
                    continue;
                }
                o = rx.recv() => o,
            };
            let Some(FrameOutput { frame, model, outcome }) = output else { break };
            let camera = frame.camera.to_string();
            let Some(c) = self.counters.get(&camera).cloned() else { continue };
            if let Some(model) = &model
                && let Some(trial) = self.shared.lock_trials().get_mut(model)
            {
                match &outcome {
                    Ok((r, _)) => trial.record_frame(r.confidence.headline()),
                    Err(e) => trial.record_error(e.kind()),
                }
            }
            match outcome {
                Err(e) => {
                    if c.reject(e.kind()) {
                        tracing::warn!(camera = %camera, kind = e.kind(), error = %e, "frame rejected (logged once per kind)");
                    }
                    if let Some(window) = w.open.get_mut(&camera) {
                        window.record_drops(1, model.as_ref());
                    }
                    if let Some(ack) = frame.ack {
                        Held::hold(&mut w, &camera, ack, Outcome::Rejected, &c);
                    }
                }
                Ok((result, image)) => {
                    let Some(model) = model else { continue };
                    c.processed.fetch_add(1, Ordering::Relaxed);
                    w.processed_in_window += 1;
                    let flagged = self.flag(&frame, &model, &result, &image, started.elapsed().as_secs_f64());
                    let labels: Vec<&str> = if result.detections.is_empty() {
                        result.classes.first().map(|c| c.label.as_str()).into_iter().collect()
                    } else {
                        result.detections.iter().map(|d| d.label.as_str()).collect()
                    };
                    let t = result.timings;
                    let latency_ms = (t.preprocess + t.inference + t.postprocess) as f32;
                    if let Some(window) = w.open.get_mut(&camera) {
                        window.record(&FrameOutcome {
                            model: &model,
                            confidence: &result.confidence,
                            labels: &labels,
                            latency_ms,
                            flagged,
                        });
                    }
                    if self.per_frame {
                        let report = FrameReport {
                            frame: frame.seq,
                            at: frame.captured_at,
                            latency_ms,
                            flagged,
                            confidence: result.confidence,
                            predictions: predictions(&result),
                        };
                        w.frames.entry((camera.clone(), model)).or_default().push(report);
                    }
                    // A flagged frame's sample is already on disk (`SampleQueue::push` syncs it before returning).
                    if let Some(ack) = frame.ack {
                        Held::hold(&mut w, &camera, ack, Outcome::Processed, &c);
                    }
                    self.shared.last_frames().insert(frame.camera.to_string(), image);
                }
            }
        }
        self.close_windows(&mut w, started, *durable.borrow_and_update());
        // The link's flusher still runs (it stops after the results): wait for the last windows to be durable.
        while link_up && w.acks.is_waiting() {
            if durable.changed().await.is_err() {
                break;
            }
            acknowledge(w.acks.durable(*durable.borrow_and_update()));
        }
        if !w.acks.is_empty() {
            tracing::warn!(files = w.acks.len(), "files left unacknowledged: they are read again at the next start");
        }
    }
}
