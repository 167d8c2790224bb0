//! `outpost-agent run`: wires sources, pipelines, flagging, telemetry, samples and the link together.
//!
//! Tasks: one per camera reading its source into its pipeline (decode and inference threads); one consuming every
//! pipeline's outputs (windows, flagging, samples, acknowledgements); the link's tasks; the sample uploader; the
//! local HTTP endpoints. Shutdown (one cancellation token, one deadline): sources stop, pipelines drain the frames
//! they hold, the last windows are published, then the link delivers what it can and disconnects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::ModelRef;
use outpost_common::protocol::{
    AgentState, EventBody, Prediction, SCHEMA, SampleFlagged, SampleMeta, Status, TelemetryBody,
};
use outpost_common::vision::engine::{EngineOptions, Runtime};
use outpost_common::vision::postprocess::DetectParams;
use outpost_common::vision::{FrameResult, Vision, VisionOptions};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::flagging::{Decision, Flagger, dhash};
use crate::link::Link;
use crate::metrics::{CameraCounters, Metrics};
use crate::pipeline::{EncodedFrame, FrameOutput, Pipeline, Served};
use crate::queue::{Overflow, Pushed};
use crate::samples::{SampleQueue, UploadTarget, run_uploader};
use crate::source::{FrameSource, Outcome, SourceContext};
use crate::store::SledStore;
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
    let uploader = match (&raw.fleet.url, &raw.fleet.token) {
        (Some(url), Some(token)) => {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
            let target = UploadTarget { base_url: url.clone(), token: token.clone() };
            Some(tokio::spawn(run_uploader(samples.clone(), client, target, config.samples.clone(), shutdown.clone())))
        }
        _ => {
            tracing::warn!("no [fleet] url and token: flagged samples wait in the queue");
            None
        }
    };

    // Models and pipelines: one pipeline (decode + inference thread) per camera.
    let (out_tx, out_rx) = mpsc::channel::<FrameOutput>(64);
    let mut cameras = Vec::new();
    let mut counters = BTreeMap::new();
    for cam in &raw.cameras {
        let Some(model) = raw.models.iter().find(|m| m.name == cam.model) else { continue };
        let bytes = std::fs::read(&model.path).with_context(|| format!("reading model {}", model.path.display()))?;
        let options = VisionOptions {
            engine: EngineOptions { intra_threads: raw.runtime.threads, ..EngineOptions::default() },
            detect: DetectParams { conf: model.conf, iou: model.iou, ..DetectParams::default() },
            ..VisionOptions::default()
        };
        let vision = Vision::load(rt, &bytes, options).with_context(|| format!("loading model `{}`", model.name))?;
        let ctx = SourceContext { camera: cam.name.clone(), state_dir: raw.state_dir.join("sources") };
        let source = cam.source.build(&ctx).with_context(|| format!("camera `{}`", cam.name))?;
        let overflow = if source.is_live() { Overflow::DropOldest } else { Overflow::Wait };
        let served = Served { model: ModelRef { name: model.name.clone(), version: model.version }, vision };
        let pipeline = Pipeline::start(served, overflow, cam.queue_depth, Default::default(), out_tx.clone())?;
        let c = Arc::new(CameraCounters::default());
        counters.insert(cam.name.clone(), c.clone());
        cameras.push((cam.clone(), source, pipeline, c));
    }
    drop(out_tx);

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
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        let app = crate::metrics::router(metrics.clone());
        let _ = axum::serve(listener, app).with_graceful_shutdown(http_shutdown.cancelled_owned()).await;
    });

    // Results: windows, flagging, samples, acknowledgements.
    let results = tokio::spawn(consume(
        out_rx,
        raw.cameras.iter().map(|c| (c.name.clone(), Flagger::new(c.flagging.clone(), seed(&c.name)))).collect(),
        counters.clone(),
        cameras.iter().map(|(c, _, p, _)| (c.name.clone(), p.input.clone())).collect(),
        Duration::from_secs(raw.telemetry.window_secs),
        link.clone(),
        samples.clone(),
        config.device.to_string(),
    ));

    // Sources.
    let mut source_tasks = Vec::new();
    for (cam, source, pipeline, c) in cameras {
        source_tasks.push(tokio::spawn(read_source(cam.name.clone(), source, pipeline, c, shutdown.clone())));
    }
    link.set_status(status(AgentState::Running));
    tracing::info!(device = %config.device, cameras = raw.cameras.len(), metrics = %metrics_addr, "agent ready");

    shutdown.cancelled().await;
    let started = Instant::now();
    tracing::info!("shutting down");
    let remaining = |d: Duration| d.saturating_sub(started.elapsed());
    for t in source_tasks {
        if tokio::time::timeout(remaining(deadline), t).await.is_err() {
            tracing::warn!("a camera did not stop within the deadline");
        }
    }
    if tokio::time::timeout(remaining(deadline), results).await.is_err() {
        tracing::warn!("results were not drained within the deadline");
    }
    if let Some(u) = uploader {
        let _ = tokio::time::timeout(Duration::from_secs(1), u).await;
    }
    link.set_status(status(AgentState::Offline));
    link_shutdown.cancel();
    if tokio::time::timeout(remaining(deadline + Duration::from_secs(1)), link_task).await.is_err() {
        tracing::warn!("the link did not finish within the deadline; unsent messages stay in the outbox");
    }
    let _ = http.await;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "agent stopped");
    Ok(())
}

fn seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
        ^ u64::from(std::process::id())
}

/// Reads one camera into its pipeline until shutdown or the end of the source, then drains the pipeline.
async fn read_source(
    camera: String,
    mut source: Box<dyn FrameSource>,
    pipeline: Pipeline,
    counters: Arc<CameraCounters>,
    shutdown: CancellationToken,
) {
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
    if let Err(e) = source.close().await {
        tracing::warn!(camera = %camera, error = %e, "closing the source");
    }
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

#[allow(clippy::too_many_arguments)]
async fn consume(
    mut rx: mpsc::Receiver<FrameOutput>,
    mut flaggers: BTreeMap<String, Flagger>,
    counters: BTreeMap<String, Arc<CameraCounters>>,
    inputs: BTreeMap<String, Arc<crate::queue::StageQueue<EncodedFrame>>>,
    window: Duration,
    link: crate::link::LinkHandle,
    samples: SampleQueue,
    device: String,
) {
    let now = OffsetDateTime::now_utc();
    let mut windows: BTreeMap<String, Window> =
        counters.keys().map(|c| (c.clone(), Window::new(c.clone(), now))).collect();
    let mut dropped_seen: BTreeMap<String, u64> = BTreeMap::new();
    let clock = Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut close_windows = |windows: &mut BTreeMap<String, Window>| {
        let end = OffsetDateTime::now_utc();
        for (camera, w) in windows.iter_mut() {
            let dropped = inputs.get(camera).map_or(0, |q| q.dropped());
            let seen = dropped_seen.entry(camera.clone()).or_insert(0);
            w.record_drops(dropped - *seen, None);
            *seen = dropped;
            for summary in w.finish(end) {
                if let Err(e) = link.publish_telemetry(TelemetryBody::Window(Box::new(summary))) {
                    tracing::warn!(camera = %camera, error = %e, "window summary not queued");
                }
            }
        }
    };
    loop {
        let output = tokio::select! {
            _ = tick.tick() => { close_windows(&mut windows); continue; }
            o = rx.recv() => o,
        };
        let Some(output) = output else { break };
        let FrameOutput { frame, model, outcome } = output;
        let camera = frame.camera.to_string();
        let Some(c) = counters.get(&camera) else { continue };
        match outcome {
            Err(e) => {
                if c.reject(e.kind()) {
                    tracing::warn!(camera = %camera, kind = e.kind(), error = %e, "frame rejected (logged once per kind)");
                }
                if let Some(w) = windows.get_mut(&camera) {
                    w.record_drops(1, model.as_ref());
                }
                if let Some(ack) = frame.ack {
                    ack.done(Outcome::Rejected);
                }
            }
            Ok((result, image)) => {
                let Some(model) = model else { continue };
                c.processed.fetch_add(1, Ordering::Relaxed);
                let mut flagged = false;
                if let Some(f) = flaggers.get_mut(&camera)
                    && let Decision::Flag(reason) = f.decide(clock.elapsed().as_secs_f64(), &result, || dhash(&image))
                {
                    let sha = Sha256Sum::of(&frame.bytes);
                    let content_type = match outpost_common::vision::decode::sniff(&frame.bytes) {
                        Some(image::ImageFormat::Png) => "image/png",
                        _ => "image/jpeg",
                    };
                    let meta = SampleMeta {
                        schema: SCHEMA,
                        sample: sha,
                        device: device.clone(),
                        camera: camera.clone(),
                        model: model.clone(),
                        captured_at: frame.captured_at,
                        reason,
                        confidence: result.confidence,
                        predictions: predictions(&result),
                        width: result.width,
                        height: result.height,
                        content_type: content_type.into(),
                    };
                    match samples.push(&frame.bytes, &meta) {
                        Ok(_) => {
                            flagged = true;
                            c.flagged.fetch_add(1, Ordering::Relaxed);
                            let event = SampleFlagged {
                                sample: sha,
                                camera: camera.clone(),
                                frame: frame.seq,
                                model: model.clone(),
                                reason,
                                confidence: result.confidence,
                            };
                            if let Err(e) = link.publish_event(EventBody::SampleFlagged(event)) {
                                tracing::warn!(error = %e, "sample event not queued");
                            }
                        }
                        Err(e) => tracing::warn!(camera = %camera, error = %e, "sample not queued"),
                    }
                }
                let labels: Vec<&str> = if result.detections.is_empty() {
                    result.classes.first().map(|c| c.label.as_str()).into_iter().collect()
                } else {
                    result.detections.iter().map(|d| d.label.as_str()).collect()
                };
                let t = result.timings;
                if let Some(w) = windows.get_mut(&camera) {
                    w.record(&FrameOutcome {
                        model: &model,
                        confidence: &result.confidence,
                        labels: &labels,
                        latency_ms: (t.preprocess + t.inference + t.postprocess) as f32,
                        flagged,
                    });
                }
                if let Some(ack) = frame.ack {
                    ack.done(Outcome::Processed);
                }
            }
        }
    }
    close_windows(&mut windows);
}
