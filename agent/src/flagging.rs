//! Deciding which frames become samples for annotators: the hard examples, plus a random baseline.
//!
//! Design: pure. [`Flagger::decide`] takes the frame's result, a perceptual hash of its pixels and the current time
//! (seconds on a monotonic clock) and returns a [`Decision`]. Policies combine: the first that matches gives the
//! reason. A selected frame is then checked against recent samples (near-duplicate suppression: a camera staring at
//! the same scene for an hour must not flood the queue) and only then against the rate limits, so duplicates do not
//! spend the budget.

use std::collections::VecDeque;

use image::RgbImage;
use outpost_common::protocol::FlagReason;
use outpost_common::vision::FrameResult;
use outpost_common::vision::confidence::Confidence;
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// A band of scores, `low <= s < high`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub low: f32,
    pub high: f32,
}

/// Sample budget; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
}

/// Near-duplicate suppression: a frame whose hash is within `max_distance` bits of a sample taken in the last
/// `window_secs` is not sampled again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dedup {
    pub enabled: bool,
    pub window_secs: u64,
    pub max_distance: u32,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup { enabled: true, window_secs: 600, max_distance: 6 }
    }
}

/// Per-camera flagging policy. Every criterion is optional; the defaults flag detections and top-1 scores in
/// 0.25..0.5, at most 60 samples an hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlaggingConfig {
    /// `false` turns flagging off for the camera, whatever the criteria say.
    pub enabled: bool,
    /// Top-1 score (classifiers) or any detection score (detectors) inside this band.
    pub band: Option<Band>,
    /// Classifiers: top-1 minus top-2 below this.
    pub max_margin: Option<f32>,
    /// Classifiers: normalised entropy at or above this.
    pub min_entropy: Option<f32>,
    /// Frames predicting any of these labels.
    pub classes: Vec<String>,
    /// Probability of sampling any frame, for an unbiased baseline (0 disables).
    pub random: f64,
    pub rate: RateLimits,
    pub dedup: Dedup,
}

impl Default for FlaggingConfig {
    fn default() -> Self {
        FlaggingConfig {
            enabled: true,
            band: Some(Band { low: 0.25, high: 0.5 }),
            max_margin: None,
            min_entropy: None,
            classes: Vec::new(),
            random: 0.0,
            rate: RateLimits { per_minute: None, per_hour: Some(60), per_day: None },
            dedup: Dedup::default(),
        }
    }
}

impl FlaggingConfig {
    /// Checks ranges once, at config load.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(b) = self.band
            && !(0.0..=1.0).contains(&b.low) | !(0.0..=1.0).contains(&b.high) | (b.low >= b.high)
        {
            return Err(format!("band {}..{} must lie in 0..1 with low < high", b.low, b.high));
        }
        if !(0.0..=1.0).contains(&self.random) {
            return Err(format!("random = {} must lie in 0..1", self.random));
        }
        if self.dedup.max_distance > 64 {
            return Err("dedup.max_distance counts bits of a 64-bit hash: at most 64".into());
        }
        Ok(())
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Flag(FlagReason),
    /// No policy selected it.
    Pass,
    /// Selected, but a near-duplicate was sampled recently.
    Duplicate,
    /// Selected, but the budget is spent.
    RateLimited,
}

/// The stateful part of flagging for one camera.
#[derive(Debug)]
pub struct Flagger {
    config: FlaggingConfig,
    /// Times of samples taken within the longest rate window.
    taken: VecDeque<f64>,
    /// (time, hash) of recent samples.
    recent: VecDeque<(f64, u64)>,
    rng: Rng,
}

impl Flagger {
    pub fn new(config: FlaggingConfig, seed: u64) -> Flagger {
        Flagger { config, taken: VecDeque::new(), recent: VecDeque::new(), rng: Rng::new(seed) }
    }

    /// Which policy, if any, selects this frame.
    pub fn select(&mut self, result: &FrameResult) -> Option<FlagReason> {
        let c = &self.config;
        if !c.enabled {
            return None;
        }
        let in_band = |s: f32| c.band.is_some_and(|b| s >= b.low && s < b.high);
        match result.confidence {
            Confidence::Classify { top1, margin, entropy } => {
                if in_band(top1) {
                    return Some(FlagReason::LowConfidence);
                }
                if c.max_margin.is_some_and(|m| margin < m) {
                    return Some(FlagReason::SmallMargin);
                }
                if c.min_entropy.is_some_and(|e| entropy >= e) {
                    return Some(FlagReason::HighEntropy);
                }
            }
            Confidence::Detect { .. } => {
                if result.detections.iter().any(|d| in_band(d.score)) {
                    return Some(FlagReason::LowConfidence);
                }
            }
        }
        let predicted = result.detections.iter().map(|d| &d.label).chain(result.classes.first().map(|c| &c.label));
        if !c.classes.is_empty() && predicted.into_iter().any(|l| c.classes.contains(l)) {
            return Some(FlagReason::SelectedClass);
        }
        if c.random > 0.0 {
            let draw = self.rng.next_f64();
            if draw < c.random {
                return Some(FlagReason::Random);
            }
        }
        None
    }

    /// Decides on a frame at time `now` (seconds, monotonic). `hash` is the frame's [`dhash`]; it is only needed
    /// when a policy selects the frame, hence the closure.
    pub fn decide(&mut self, now: f64, result: &FrameResult, hash: impl FnOnce() -> u64) -> Decision {
        let Some(reason) = self.select(result) else { return Decision::Pass };
        let d = self.config.dedup;
        let h = if d.enabled { Some(hash()) } else { None };
        if let Some(h) = h {
            while self.recent.front().is_some_and(|(t, _)| now - t > d.window_secs as f64) {
                self.recent.pop_front();
            }
            if self.recent.iter().any(|(_, r)| (r ^ h).count_ones() <= d.max_distance) {
                return Decision::Duplicate;
            }
        }
        if !self.within_budget(now) {
            return Decision::RateLimited;
        }
        self.taken.push_back(now);
        if let Some(h) = h {
            self.recent.push_back((now, h));
        }
        Decision::Flag(reason)
    }

    fn within_budget(&mut self, now: f64) -> bool {
        let r = self.config.rate;
        let limits = [(60.0, r.per_minute), (3600.0, r.per_hour), (86400.0, r.per_day)];
        let longest = limits.iter().filter(|(_, l)| l.is_some()).map(|(w, _)| *w).fold(0.0, f64::max);
        while self.taken.front().is_some_and(|t| now - t >= longest) {
            self.taken.pop_front();
        }
        limits.iter().all(|(window, limit)| match limit {
            None => true,
            Some(max) => self.taken.iter().filter(|t| now - **t < *window).count() < *max as usize,
        })
    }
}

/// Difference hash: the frame shrunk to 9×8 grey, one bit per horizontal neighbour comparison. Robust to scaling,
/// compression and small brightness changes; nearby frames of a static scene differ by a few bits.
pub fn dhash(frame: &RgbImage) -> u64 {
    let (w, h) = frame.dimensions();
    if w == 0 || h == 0 {
        return 0;
    }
    // Box-average each cell straight from the frame: no resize buffer, no dependency on a resizer.
    let mut grey = [[0f32; 9]; 8];
    for (cy, row) in grey.iter_mut().enumerate() {
        let (y0, y1) = (cy as u32 * h / 8, ((cy as u32 + 1) * h / 8).max(cy as u32 * h / 8 + 1).min(h));
        for (cx, cell) in row.iter_mut().enumerate() {
            let (x0, x1) = (cx as u32 * w / 9, ((cx as u32 + 1) * w / 9).max(cx as u32 * w / 9 + 1).min(w));
            // Sample at most 8×8 pixels per cell: enough for an average, cheap on 4K frames.
            let (sx, sy) = (((x1 - x0) / 8).max(1), ((y1 - y0) / 8).max(1));
            let (mut sum, mut n) = (0f32, 0f32);
            for y in (y0..y1).step_by(sy as usize) {
                for x in (x0..x1).step_by(sx as usize) {
                    let p = frame.get_pixel(x, y).0;
                    sum += 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
                    n += 1.0;
                }
            }
            *cell = if n > 0.0 { sum / n } else { 0.0 };
        }
    }
    let mut bits = 0u64;
    for row in &grey {
        for x in 0..8 {
            bits = (bits << 1) | u64::from(row[x] > row[x + 1]);
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_common::vision::confidence::{of_detections, of_probabilities};
    use outpost_common::vision::pipeline::{LabeledClass, LabeledDetection, Timings};
    use outpost_common::vision::postprocess::Detection;
    use outpost_common::vision::spec::Task;

    fn detections(scores: &[(f32, &str)]) -> FrameResult {
        let dets: Vec<Detection> =
            scores.iter().map(|(s, _)| Detection { class: 0, score: *s, bbox: [0.0; 4] }).collect();
        FrameResult {
            width: 10,
            height: 10,
            task: Task::Detect,
            detections: scores
                .iter()
                .map(|(s, l)| LabeledDetection { class: 0, label: (*l).into(), score: *s, bbox: [0.0; 4] })
                .collect(),
            classes: Vec::new(),
            confidence: of_detections(&dets, &Default::default()),
            timings: Timings::default(),
        }
    }

    fn classes(probs: &[f32]) -> FrameResult {
        FrameResult {
            width: 10,
            height: 10,
            task: Task::Classify,
            detections: Vec::new(),
            classes: vec![LabeledClass { class: 0, label: "ok".into(), score: probs[0] }],
            confidence: of_probabilities(probs),
            timings: Timings::default(),
        }
    }

    fn unlimited(config: FlaggingConfig) -> FlaggingConfig {
        FlaggingConfig { rate: RateLimits::default(), dedup: Dedup { enabled: false, ..Dedup::default() }, ..config }
    }

    #[test]
    fn policies_select_and_name_a_reason() {
        let mut f = Flagger::new(
            unlimited(FlaggingConfig {
                max_margin: Some(0.2),
                min_entropy: Some(0.9),
                classes: vec!["stain".into()],
                ..FlaggingConfig::default()
            }),
            7,
        );
        let check = |f: &mut Flagger, r: &FrameResult, want: Option<FlagReason>| assert_eq!(f.select(r), want);
        check(&mut f, &detections(&[(0.9, "dent"), (0.3, "dent")]), Some(FlagReason::LowConfidence));
        check(&mut f, &detections(&[(0.9, "dent")]), None);
        check(&mut f, &detections(&[(0.9, "stain")]), Some(FlagReason::SelectedClass));
        check(&mut f, &detections(&[]), None);
        check(&mut f, &classes(&[0.4, 0.35, 0.25]), Some(FlagReason::LowConfidence));
        check(&mut f, &classes(&[0.55, 0.45]), Some(FlagReason::SmallMargin));
        check(&mut f, &classes(&[0.95, 0.05]), None);
    }

    #[test]
    fn random_baseline_samples_about_the_asked_share() {
        let mut f = Flagger::new(unlimited(FlaggingConfig { band: None, random: 0.1, ..Default::default() }), 42);
        let hits = (0..10_000).filter(|_| f.select(&detections(&[(0.9, "dent")])) == Some(FlagReason::Random)).count();
        assert!((800..1200).contains(&hits), "{hits} of 10000");
    }

    #[test]
    fn rate_limits_hold_over_sliding_windows() {
        let config = FlaggingConfig {
            rate: RateLimits { per_minute: Some(2), per_hour: Some(3), per_day: None },
            dedup: Dedup { enabled: false, ..Dedup::default() },
            ..FlaggingConfig::default()
        };
        let mut f = Flagger::new(config, 1);
        let r = detections(&[(0.3, "dent")]);
        let decide = |f: &mut Flagger, t: f64| f.decide(t, &r, || 0);
        assert_eq!(decide(&mut f, 0.0), Decision::Flag(FlagReason::LowConfidence));
        assert_eq!(decide(&mut f, 1.0), Decision::Flag(FlagReason::LowConfidence));
        assert_eq!(decide(&mut f, 2.0), Decision::RateLimited, "two a minute");
        assert_eq!(decide(&mut f, 61.0), Decision::Flag(FlagReason::LowConfidence), "a new minute");
        assert_eq!(decide(&mut f, 125.0), Decision::RateLimited, "three an hour");
        assert_eq!(decide(&mut f, 3600.5), Decision::Flag(FlagReason::LowConfidence), "the first has left the hour");
        assert_eq!(decide(&mut f, 3600.9), Decision::RateLimited, "the second (at 1 s) is still within the hour");
    }

    #[test]
    fn near_duplicates_are_suppressed_within_the_window() {
        let config = FlaggingConfig {
            rate: RateLimits::default(),
            dedup: Dedup { enabled: true, window_secs: 60, max_distance: 4 },
            ..FlaggingConfig::default()
        };
        let mut f = Flagger::new(config, 1);
        let r = detections(&[(0.3, "dent")]);
        assert_eq!(f.decide(0.0, &r, || 0b1111_0000), Decision::Flag(FlagReason::LowConfidence));
        assert_eq!(f.decide(1.0, &r, || 0b1111_0011), Decision::Duplicate, "2 bits away");
        assert_eq!(f.decide(2.0, &r, || 0xFFFF_0000), Decision::Flag(FlagReason::LowConfidence), "a different scene");
        assert_eq!(f.decide(61.5, &r, || 0b1111_0000), Decision::Flag(FlagReason::LowConfidence), "window passed");
    }

    #[test]
    fn dhash_sees_scenes_not_pixels() {
        let scene = |shift: u8| {
            RgbImage::from_fn(320, 240, |x, y| {
                let v = ((x * 255 / 320) as u8).wrapping_add(shift) ^ ((y / 60) as u8 * 40);
                image::Rgb([v, v, v])
            })
        };
        let a = dhash(&scene(0));
        let noisy = dhash(&scene(3));
        let other = dhash(&RgbImage::from_fn(320, 240, |x, y| image::Rgb([((x * y) % 251) as u8; 3])));
        assert!((a ^ noisy).count_ones() <= 6, "a slightly brighter copy is a near-duplicate");
        assert!((a ^ other).count_ones() > 10, "a different scene is not");
        assert_eq!(dhash(&RgbImage::new(0, 0)), 0);
        let _ = dhash(&RgbImage::new(1, 1));
    }

    #[test]
    fn config_validation() {
        assert!(FlaggingConfig::default().validate().is_ok());
        let bad = FlaggingConfig { band: Some(Band { low: 0.6, high: 0.5 }), ..Default::default() };
        assert!(bad.validate().is_err());
        assert!(FlaggingConfig { random: 1.5, ..Default::default() }.validate().is_err());
    }
}
