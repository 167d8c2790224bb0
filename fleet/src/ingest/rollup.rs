//! Roll-ups: many window summaries added into one — an hour of one device and model version, or a fleet-wide
//! aggregate over a time range.
//!
//! Design: pure. Counts (windows, frames, drops, flagged, per-class) and the fixed-bin confidence histograms add
//! exactly. Latency percentiles do not: the p95 of a union is not a function of the parts' p95s. Two figures are
//! kept for each percentile instead:
//!
//! - `p50`, `p95`, `p99`: the frame-weighted mean of the windows' percentiles — an approximation that is exact when
//!   the windows share one latency distribution, and always lies between the smallest and the largest part;
//! - `p95_max`, `p99_max`: the largest window's percentile — a true upper bound of the union's percentile (if no
//!   part has more than 5 % of its frames above x, neither does the union), for alerting on the worst case.
//!
//! Windows without frames (only drops) carry no latency and do not weigh in. A roll-up keeps at most
//! [`MAX_CLASSES`] labels; the counts of further labels are added to [`OTHER_CLASSES`], so a device sending
//! ever-new labels cannot grow a record without bound.

use std::collections::BTreeMap;

use outpost_common::protocol::{ConfidenceHistogram, WindowSummary};
use serde::{Deserialize, Serialize};

/// Distinct labels one roll-up keeps.
pub const MAX_CLASSES: usize = 512;
/// The label the counts of labels beyond [`MAX_CLASSES`] are added to.
pub const OTHER_CLASSES: &str = "(other)";

/// Latency figures of a roll-up, in milliseconds (see the module documentation for what each means).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolledLatency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p95_max: f64,
    pub p99_max: f64,
    /// The frames the weighted means are over.
    pub weight: u64,
}

impl RolledLatency {
    fn merge(&mut self, other: &RolledLatency) {
        if other.weight == 0 {
            return;
        }
        let total = self.weight.saturating_add(other.weight);
        let (a, b) = (self.weight as f64 / total as f64, other.weight as f64 / total as f64);
        let mix = |x: f64, y: f64| finite(x * a + y * b);
        self.p50 = mix(self.p50, other.p50);
        self.p95 = mix(self.p95, other.p95);
        self.p99 = mix(self.p99, other.p99);
        self.p95_max = finite(self.p95_max.max(other.p95_max));
        self.p99_max = finite(self.p99_max.max(other.p99_max));
        self.weight = total;
    }
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

/// The sum of some window summaries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollup {
    pub windows: u64,
    pub frames: u64,
    pub drops: u64,
    pub flagged: u64,
    pub confidence: ConfidenceHistogram,
    pub classes: BTreeMap<String, u64>,
    pub latency_ms: RolledLatency,
}

impl Rollup {
    /// Adds one window summary.
    pub fn add(&mut self, window: &WindowSummary) {
        let l = window.latency_ms;
        let latency = RolledLatency {
            p50: finite(f64::from(l.p50)),
            p95: finite(f64::from(l.p95)),
            p99: finite(f64::from(l.p99)),
            p95_max: finite(f64::from(l.p95)),
            p99_max: finite(f64::from(l.p99)),
            weight: window.frames,
        };
        self.merge_parts(1, window.frames, window.drops, window.flagged, &window.confidence, &latency);
        self.add_classes(window.classes.iter().map(|(k, v)| (k.as_str(), *v)));
    }

    /// Adds another roll-up.
    pub fn merge(&mut self, other: &Rollup) {
        self.merge_parts(other.windows, other.frames, other.drops, other.flagged, &other.confidence, &other.latency_ms);
        self.add_classes(other.classes.iter().map(|(k, v)| (k.as_str(), *v)));
    }

    fn merge_parts(
        &mut self,
        windows: u64,
        frames: u64,
        drops: u64,
        flagged: u64,
        confidence: &ConfidenceHistogram,
        latency: &RolledLatency,
    ) {
        self.windows = self.windows.saturating_add(windows);
        self.frames = self.frames.saturating_add(frames);
        self.drops = self.drops.saturating_add(drops);
        self.flagged = self.flagged.saturating_add(flagged);
        self.confidence.merge(confidence);
        self.latency_ms.merge(latency);
    }

    fn add_classes<'a>(&mut self, classes: impl Iterator<Item = (&'a str, u64)>) {
        for (label, count) in classes {
            let key = if self.classes.contains_key(label) || self.classes.len() < MAX_CLASSES {
                label
            } else {
                OTHER_CLASSES
            };
            let slot = self.classes.entry(key.to_string()).or_insert(0);
            *slot = slot.saturating_add(count);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.windows == 0
    }
}

#[cfg(test)]
mod tests {
    use outpost_common::protocol::{Latency, ModelRef};
    use time::macros::datetime;

    use super::*;

    fn window(frames: u64, p50: f32, p95: f32, p99: f32, classes: &[(&str, u64)]) -> WindowSummary {
        let mut confidence = ConfidenceHistogram::default();
        confidence.0[19] = frames / 2;
        WindowSummary {
            start: datetime!(2026-11-21 10:00 UTC),
            end: datetime!(2026-11-21 10:01 UTC),
            camera: "line-1".into(),
            model: ModelRef { name: "defect".into(), version: 1 },
            frames,
            drops: 1,
            confidence,
            classes: classes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            latency_ms: Latency { p50, p95, p99 },
            flagged: frames / 10,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn counts_add_exactly_and_latency_is_weighted_with_a_max() {
        let mut r = Rollup::default();
        r.add(&window(100, 10.0, 20.0, 40.0, &[("dent", 3), ("scratch", 1)]));
        r.add(&window(300, 14.0, 30.0, 35.0, &[("dent", 2)]));
        assert_eq!((r.windows, r.frames, r.drops, r.flagged), (2, 400, 2, 40));
        assert_eq!(r.confidence.0[19], 200);
        assert_eq!(r.classes, BTreeMap::from([("dent".to_string(), 5), ("scratch".to_string(), 1)]));
        let l = r.latency_ms;
        assert!(close(l.p50, 13.0) && close(l.p95, 27.5) && close(l.p99, 36.25), "{l:?}");
        assert!(close(l.p95_max, 30.0) && close(l.p99_max, 40.0) && l.weight == 400, "{l:?}");
    }

    #[test]
    fn merging_rollups_equals_adding_all_windows() {
        let windows = [
            window(10, 5.0, 9.0, 12.0, &[("a", 1)]),
            window(0, 0.0, 0.0, 0.0, &[]),
            window(30, 7.0, 11.0, 30.0, &[("b", 4)]),
            window(60, 6.0, 8.0, 9.0, &[("a", 2), ("c", 1)]),
        ];
        let mut all = Rollup::default();
        windows.iter().for_each(|w| all.add(w));
        let (mut left, mut right) = (Rollup::default(), Rollup::default());
        windows[..2].iter().for_each(|w| left.add(w));
        windows[2..].iter().for_each(|w| right.add(w));
        left.merge(&right);
        assert_eq!((left.windows, left.frames, left.classes.clone()), (all.windows, all.frames, all.classes.clone()));
        let (a, b) = (left.latency_ms, all.latency_ms);
        assert!(close(a.p50, b.p50) && close(a.p95, b.p95) && close(a.p99, b.p99) && a.p99_max == b.p99_max);
        // The frameless window weighs nothing: the p50 is (10×5 + 30×7 + 60×6) / 100.
        assert!(close(all.latency_ms.p50, 6.2), "{:?}", all.latency_ms);
        // Merging an empty roll-up changes nothing.
        let before = all.clone();
        all.merge(&Rollup::default());
        assert_eq!(all, before);
    }

    #[test]
    fn labels_beyond_the_cap_go_to_other() {
        let mut r = Rollup::default();
        let many: Vec<(String, u64)> = (0..MAX_CLASSES + 3).map(|i| (format!("l{i:04}"), 1)).collect();
        let refs: Vec<(&str, u64)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        r.add(&window(1, 1.0, 1.0, 1.0, &refs));
        assert_eq!(r.classes.len(), MAX_CLASSES + 1);
        assert_eq!(r.classes.get(OTHER_CLASSES), Some(&3));
        // A known label keeps counting under its own name.
        r.add(&window(1, 1.0, 1.0, 1.0, &[("l0000", 5)]));
        assert_eq!(r.classes.get("l0000"), Some(&6));
    }

    #[test]
    fn non_finite_latency_does_not_poison_the_rollup() {
        let mut r = Rollup::default();
        r.add(&window(10, f32::NAN, f32::INFINITY, 3.0, &[]));
        r.add(&window(10, 4.0, 4.0, 4.0, &[]));
        let l = r.latency_ms;
        assert!(l.p50.is_finite() && l.p95.is_finite() && l.p95_max.is_finite(), "{l:?}");
        assert!(serde_json::to_string(&r).is_ok());
    }
}
