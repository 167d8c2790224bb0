//! The health window after a swap: is the new model fit to keep? Pure: frames, errors and time (seconds on any
//! monotonic clock) come in, a verdict comes out.
//!
//! A new model fails its trial on any inference error beyond the allowance (an engine failure, non-finite outputs),
//! or, when its manifest carries a confidence baseline measured at release, when the mean confidence on this
//! device's frames collapses below a share of the baseline's mean, or when a detector stops finding anything on
//! frames where the baseline found something. It passes once enough frames and time have gone by without either.

use std::collections::BTreeMap;

use outpost_common::manifest::ConfidenceBaseline;
use outpost_common::protocol::ConfidenceHistogram;
use serde::{Deserialize, Serialize};

/// `[updates.trial]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrialConfig {
    /// Frames the new model must process before it can be committed.
    pub min_frames: u64,
    /// Seconds the trial lasts at least.
    pub min_secs: f64,
    /// After this long, a model that processed at least one frame and failed nothing is committed even short of
    /// `min_frames` (a quiet camera must not hold an update open forever).
    pub max_secs: f64,
    /// Inference errors tolerated during the trial.
    pub max_errors: u64,
    /// Fail when the mean confidence falls below this share of the baseline's mean.
    pub collapse_ratio: f64,
    /// Fail when the share of frames with any prediction falls below this share of the baseline's.
    pub presence_ratio: f64,
}

impl Default for TrialConfig {
    fn default() -> Self {
        TrialConfig {
            min_frames: 50,
            min_secs: 10.0,
            max_secs: 300.0,
            max_errors: 0,
            collapse_ratio: 0.6,
            presence_ratio: 0.5,
        }
    }
}

impl TrialConfig {
    pub fn validate(&self) -> Result<(), String> {
        let ratio = |r: f64| (0.0..=1.0).contains(&r);
        if !ratio(self.collapse_ratio) || !ratio(self.presence_ratio) {
            return Err("collapse_ratio and presence_ratio must lie in 0..1".into());
        }
        if !(self.min_secs >= 0.0 && self.max_secs >= self.min_secs) {
            return Err("trial seconds: need 0 <= min_secs <= max_secs".into());
        }
        Ok(())
    }
}

/// Where a trial stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pending,
    Pass,
    Fail(String),
}

/// One model's trial.
#[derive(Debug, Clone)]
pub struct Trial {
    config: TrialConfig,
    baseline: Option<ConfidenceBaseline>,
    started: f64,
    frames: u64,
    errors: BTreeMap<&'static str, u64>,
    histogram: ConfidenceHistogram,
}

impl Trial {
    pub fn new(config: TrialConfig, baseline: Option<ConfidenceBaseline>, now: f64) -> Trial {
        Trial { config, baseline, started: now, frames: 0, errors: BTreeMap::new(), histogram: Default::default() }
    }

    /// A frame the new model processed; `headline` is its [`outpost_common::vision::confidence::Confidence`]
    /// headline (none for a detector frame without detections).
    pub fn record_frame(&mut self, headline: Option<f32>) {
        self.frames += 1;
        if let Some(h) = headline {
            self.histogram.add(h);
        }
    }

    /// A frame the new model failed on (by [`outpost_common::vision::VisionError::kind`]).
    pub fn record_error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The verdict at `now`. Failures are reported as soon as they are certain; a pass only at the end.
    pub fn verdict(&self, now: f64) -> Verdict {
        let c = &self.config;
        let errors: u64 = self.errors.values().sum();
        if errors > c.max_errors {
            let list: Vec<String> = self.errors.iter().map(|(k, n)| format!("{n} {k}")).collect();
            return Verdict::Fail(format!("inference errors in the health window: {}", list.join(", ")));
        }
        let elapsed = now - self.started;
        let enough = self.frames >= c.min_frames && elapsed >= c.min_secs;
        let timed_out = elapsed >= c.max_secs && self.frames > 0;
        if !(enough || timed_out) {
            return Verdict::Pending;
        }
        if let Some(reason) = self.collapse() {
            return Verdict::Fail(reason);
        }
        Verdict::Pass
    }

    /// Compares with the release baseline, when there is one.
    fn collapse(&self) -> Option<String> {
        let baseline = self.baseline.as_ref()?;
        let c = &self.config;
        let base_present = baseline.histogram.total() as f64 / baseline.frames.max(1) as f64;
        let present = self.histogram.total() as f64 / self.frames.max(1) as f64;
        if base_present > 0.0 && present < base_present * c.presence_ratio {
            return Some(format!(
                "predictions on {:.0}% of frames against {:.0}% at release",
                present * 100.0,
                base_present * 100.0
            ));
        }
        let (Some(base_mean), Some(mean)) = (baseline.histogram.mean(), self.histogram.mean()) else { return None };
        if mean < base_mean * c.collapse_ratio {
            return Some(format!(
                "mean confidence {mean:.2} collapsed below {:.2} (release {base_mean:.2})",
                base_mean * c.collapse_ratio
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline(values: &[f32], frames: u64) -> ConfidenceBaseline {
        let mut histogram = ConfidenceHistogram::default();
        for v in values {
            histogram.add(*v);
        }
        ConfidenceBaseline { frames, histogram, flagged_rate: None }
    }

    fn quick() -> TrialConfig {
        TrialConfig { min_frames: 10, min_secs: 1.0, max_secs: 60.0, ..TrialConfig::default() }
    }

    #[test]
    fn a_healthy_model_passes_after_enough_frames_and_time() {
        let mut t = Trial::new(quick(), Some(baseline(&[0.9; 100], 100)), 0.0);
        for _ in 0..10 {
            t.record_frame(Some(0.85));
        }
        assert_eq!(t.verdict(0.5), Verdict::Pending, "not before min_secs");
        assert_eq!(t.verdict(1.0), Verdict::Pass);
    }

    #[test]
    fn one_inference_error_fails_at_once() {
        let mut t = Trial::new(quick(), None, 0.0);
        t.record_frame(Some(0.9));
        t.record_error("non_finite");
        assert!(matches!(t.verdict(0.1), Verdict::Fail(r) if r.contains("1 non_finite")));
    }

    #[test]
    fn collapsed_confidence_fails_against_the_baseline() {
        let mut t = Trial::new(quick(), Some(baseline(&[0.9; 100], 100)), 0.0);
        for _ in 0..10 {
            t.record_frame(Some(0.4));
        }
        assert!(matches!(t.verdict(2.0), Verdict::Fail(r) if r.contains("collapsed")));
        // Without a baseline there is nothing to compare with.
        let mut t = Trial::new(quick(), None, 0.0);
        (0..10).for_each(|_| t.record_frame(Some(0.4)));
        assert_eq!(t.verdict(2.0), Verdict::Pass);
    }

    #[test]
    fn a_detector_that_stops_detecting_fails() {
        // At release 80% of frames had a detection; now almost none do.
        let mut t = Trial::new(quick(), Some(baseline(&[0.8; 80], 100)), 0.0);
        for i in 0..20 {
            t.record_frame(if i == 0 { Some(0.8) } else { None });
        }
        assert!(matches!(t.verdict(2.0), Verdict::Fail(r) if r.contains("predictions on 5%")));
    }

    #[test]
    fn a_quiet_camera_commits_at_the_time_limit_but_never_without_a_frame() {
        let mut t = Trial::new(quick(), None, 0.0);
        assert_eq!(t.verdict(100.0), Verdict::Pending);
        t.record_frame(Some(0.7));
        assert_eq!(t.verdict(59.0), Verdict::Pending);
        assert_eq!(t.verdict(60.0), Verdict::Pass);
    }

    #[test]
    fn config_ranges_are_checked() {
        assert!(TrialConfig::default().validate().is_ok());
        assert!(TrialConfig { collapse_ratio: 1.5, ..TrialConfig::default() }.validate().is_err());
        assert!(TrialConfig { min_secs: 10.0, max_secs: 5.0, ..TrialConfig::default() }.validate().is_err());
    }
}
