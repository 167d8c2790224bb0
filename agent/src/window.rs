//! Window summaries: what each camera's model saw over one telemetry window.
//!
//! Design: pure. The pipeline records each frame outcome with the model version that produced it; `finish` closes
//! the window and returns one [`WindowSummary`] per (camera, model version) that saw frames or drops, so a hot swap in
//! the middle of a window yields two summaries and no frame is attributed to the wrong version. Latency percentiles
//! come from a bounded reservoir, so a long window at a high frame rate costs fixed memory.

use std::collections::BTreeMap;

use outpost_common::protocol::{ConfidenceHistogram, Latency, ModelRef, WindowSummary};
use outpost_common::vision::confidence::Confidence;
use time::OffsetDateTime;

use crate::rng::Rng;

/// Latency samples kept per window and model; beyond it, reservoir sampling keeps a uniform subset.
const RESERVOIR: usize = 4096;

/// What the window needs to know about one processed frame.
#[derive(Debug, Clone)]
pub struct FrameOutcome<'a> {
    pub model: &'a ModelRef,
    pub confidence: &'a Confidence,
    /// Labels predicted (every detection, or a classifier's top-1).
    pub labels: &'a [&'a str],
    /// Preprocess + inference + postprocess, in milliseconds.
    pub latency_ms: f32,
    pub flagged: bool,
}

#[derive(Debug, Default)]
struct Accum {
    frames: u64,
    drops: u64,
    histogram: ConfidenceHistogram,
    classes: BTreeMap<String, u64>,
    latencies: Vec<f32>,
    seen_latencies: u64,
    flagged: u64,
}

/// The open window of one camera.
#[derive(Debug)]
pub struct Window {
    camera: String,
    start: OffsetDateTime,
    per_model: BTreeMap<ModelRef, Accum>,
    /// The model drops are charged to: the one serving when they happened.
    current: Option<ModelRef>,
    rng: Rng,
}

impl Window {
    pub fn new(camera: impl Into<String>, start: OffsetDateTime) -> Window {
        Window {
            camera: camera.into(),
            start,
            per_model: BTreeMap::new(),
            current: None,
            rng: Rng::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    pub fn camera(&self) -> &str {
        &self.camera
    }

    /// Records one processed frame.
    pub fn record(&mut self, frame: &FrameOutcome<'_>) {
        self.current = Some(frame.model.clone());
        let rng = self.rng.next_u64();
        let acc = self.per_model.entry(frame.model.clone()).or_default();
        acc.frames += 1;
        if let Some(h) = frame.confidence.headline() {
            acc.histogram.add(h);
        }
        for label in frame.labels {
            *acc.classes.entry((*label).to_string()).or_insert(0) += 1;
        }
        if frame.flagged {
            acc.flagged += 1;
        }
        acc.seen_latencies += 1;
        if frame.latency_ms.is_finite() {
            if acc.latencies.len() < RESERVOIR {
                acc.latencies.push(frame.latency_ms);
            } else {
                // Algorithm R: replace a random slot with probability RESERVOIR / seen.
                let slot = (rng % acc.seen_latencies) as usize;
                if let Some(s) = acc.latencies.get_mut(slot) {
                    *s = frame.latency_ms;
                }
            }
        }
    }

    /// Records frames the pipeline dropped or could not decode, charged to `model` (or the last model seen).
    pub fn record_drops(&mut self, count: u64, model: Option<&ModelRef>) {
        if count == 0 {
            return;
        }
        let Some(model) = model.cloned().or_else(|| self.current.clone()) else {
            // No model has served yet; keep the drops for the first one that does.
            self.per_model.entry(ModelRef { name: String::new(), version: 0 }).or_default().drops += count;
            return;
        };
        self.per_model.entry(model).or_default().drops += count;
    }

    /// Closes the window at `end` and opens the next one there. Returns one summary per model version that saw
    /// anything; drops recorded before any model served are carried into the first real model's summary.
    pub fn finish(&mut self, end: OffsetDateTime) -> Vec<WindowSummary> {
        let mut per_model = std::mem::take(&mut self.per_model);
        let orphan = per_model.remove(&ModelRef { name: String::new(), version: 0 });
        if let Some(orphan) = orphan {
            match per_model.values_mut().next() {
                Some(first) => first.drops += orphan.drops,
                // Still no model: keep carrying them.
                None => {
                    self.per_model.insert(ModelRef { name: String::new(), version: 0 }, orphan);
                }
            }
        }
        let start = self.start;
        self.start = end;
        per_model
            .into_iter()
            .map(|(model, acc)| WindowSummary {
                start,
                end,
                camera: self.camera.clone(),
                model,
                frames: acc.frames,
                drops: acc.drops,
                confidence: acc.histogram,
                classes: acc.classes,
                latency_ms: percentiles(acc.latencies),
                flagged: acc.flagged,
            })
            .collect()
    }
}

/// Nearest-rank percentiles.
fn percentiles(mut samples: Vec<f32>) -> Latency {
    if samples.is_empty() {
        return Latency::default();
    }
    samples.sort_by(f32::total_cmp);
    let rank = |p: f64| {
        let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i]
    };
    Latency { p50: rank(0.50), p95: rank(0.95), p99: rank(0.99) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn model(v: u64) -> ModelRef {
        ModelRef { name: "defect".into(), version: v }
    }

    fn detect(mean: Option<f32>, count: usize) -> Confidence {
        Confidence::Detect { max: mean, mean, count, uncertain: 0 }
    }

    #[test]
    fn summarises_frames_per_model_version() {
        let t0 = datetime!(2026-11-21 10:00:00 UTC);
        let mut w = Window::new("line-1", t0);
        let (a, b) = (model(1), model(2));
        let c = detect(Some(0.9), 2);
        for i in 0..10 {
            w.record(&FrameOutcome {
                model: &a,
                confidence: &c,
                labels: &["scratch", "dent"],
                latency_ms: i as f32,
                flagged: i == 0,
            });
        }
        w.record_drops(3, None);
        let empty = detect(None, 0);
        w.record(&FrameOutcome { model: &b, confidence: &empty, labels: &[], latency_ms: 5.0, flagged: false });
        let t1 = datetime!(2026-11-21 10:00:10 UTC);
        let out = w.finish(t1);
        assert_eq!(out.len(), 2);
        let (s1, s2) = (&out[0], &out[1]);
        assert_eq!((s1.model.version, s1.frames, s1.drops, s1.flagged), (1, 10, 3, 1));
        assert_eq!(s1.classes.get("scratch"), Some(&10));
        assert_eq!(s1.confidence.0[18], 10, "0.9 falls in bin 18");
        assert_eq!((s1.latency_ms.p50, s1.latency_ms.p95, s1.latency_ms.p99), (4.0, 9.0, 9.0));
        assert_eq!((s1.start, s1.end, s1.camera.as_str()), (t0, t1, "line-1"));
        assert_eq!((s2.model.version, s2.frames, s2.confidence.total()), (2, 1, 0), "no detection, no histogram entry");
        // The next window starts where this one ended, empty.
        assert!(w.finish(datetime!(2026-11-21 10:00:20 UTC)).is_empty());
    }

    #[test]
    fn drops_before_any_model_are_carried() {
        let mut w = Window::new("cam", datetime!(2026-11-21 10:00:00 UTC));
        w.record_drops(2, None);
        assert!(w.finish(datetime!(2026-11-21 10:00:10 UTC)).is_empty());
        let m = model(1);
        let c = detect(Some(0.5), 1);
        w.record(&FrameOutcome { model: &m, confidence: &c, labels: &[], latency_ms: 1.0, flagged: false });
        let out = w.finish(datetime!(2026-11-21 10:00:20 UTC));
        assert_eq!((out.len(), out[0].drops), (1, 2));
    }

    #[test]
    fn latency_memory_is_bounded() {
        let mut w = Window::new("cam", datetime!(2026-11-21 10:00:00 UTC));
        let m = model(1);
        let c = detect(Some(0.5), 1);
        for i in 0..20_000 {
            w.record(&FrameOutcome {
                model: &m,
                confidence: &c,
                labels: &[],
                latency_ms: (i % 100) as f32,
                flagged: false,
            });
        }
        let acc = &w.per_model[&m];
        assert_eq!(acc.latencies.len(), RESERVOIR);
        let out = w.finish(datetime!(2026-11-21 10:00:10 UTC));
        assert_eq!(out[0].frames, 20_000);
        let p50 = out[0].latency_ms.p50;
        assert!((40.0..=60.0).contains(&p50), "p50 of a uniform 0..100 is near 50: {p50}");
    }
}
