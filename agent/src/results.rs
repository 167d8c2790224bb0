//! The results consumer of `outpost-agent run`: every pipeline's outputs become window summaries per camera and
//! model version (and per-frame reports when asked for), flagged frames become samples, trials are fed, and a
//! folder's files are acknowledged only once the window counting them is durable in the outbox ([`crate::acks`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use image::RgbImage;
use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::ModelRef;
use outpost_common::protocol::{
    EventBody, FrameBatch, FrameReport, Health, MAX_FRAMES_PER_BATCH, Prediction, SCHEMA, SampleFlagged, SampleMeta,
    Status, TelemetryBody,
};
use outpost_common::vision::FrameResult;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use crate::acks::{Closed, Deferred, Sealed};
use crate::flagging::{Decision, Flagger, dhash};
use crate::metrics::CameraCounters;
use crate::pipeline::{EncodedFrame, FrameOutput};
use crate::samples::SampleQueue;
use crate::source::{Ack, Outcome};
use crate::updater::serving::Shared;
use crate::window::{FrameOutcome, Window};

/// A frame's detections and classes as the per-frame report carries them.
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
pub(crate) struct Consumer {
    pub(crate) flaggers: BTreeMap<String, Flagger>,
    pub(crate) counters: BTreeMap<String, Arc<CameraCounters>>,
    pub(crate) inputs: BTreeMap<String, Arc<crate::queue::StageQueue<EncodedFrame>>>,
    pub(crate) window: Duration,
    pub(crate) per_frame: bool,
    pub(crate) link: crate::link::LinkHandle,
    pub(crate) samples: SampleQueue,
    pub(crate) device: String,
    /// The running status (the updater keeps its models current); its health is refreshed at every window.
    pub(crate) status: Arc<std::sync::Mutex<Status>>,
    /// Trials to feed, latest frames to keep.
    pub(crate) shared: Arc<Shared>,
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
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<FrameOutput>, mut durable: watch::Receiver<u64>) {
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
