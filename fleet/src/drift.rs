//! Drift: is a model version, in one group of devices, still seeing what it saw when it went live?
//!
//! Design: pure — values in, values out, no clock and no store (the ingest's `drift_book` keeps the trackers,
//! persists them and stamps the time). One [`Tracker`] per (model version, [`DriftGroup`]) holds:
//!
//! - a **baseline**: the first [`DriftConfig::baseline_frames`] frames after the version went live in that group
//!   (learned), or a stored reference such as a manifest's `ConfidenceBaseline` (which replaces a learned one);
//! - a **sliding window**: [`DriftConfig::buckets`] time buckets covering the last [`DriftConfig::window_secs`] of
//!   data time (each window summary goes to the bucket of its end), so memory is fixed however many devices report;
//! - the alert state, with hysteresis.
//!
//! The distribution compared is the 20-bin confidence histogram coarsened to [`DriftConfig::bins`] bins, **plus one
//! category for frames without a headline confidence** (a detector that found nothing): a model that stops seeing
//! anything is the clearest drift of all, and the histogram alone would not show it.
//!
//! Population stability index: `PSI = Σ (aᵢ − eᵢ) · ln(aᵢ / eᵢ)` over the categories, with `e` the baseline's
//! proportions and `a` the current window's, each floored at [`DriftConfig::epsilon`] so an empty bin does not make
//! it infinite. Conventional reading, used as the defaults: **< 0.1 stable, 0.1–0.25 watch, ≥ 0.25 drift**. PSI is
//! inflated on small samples (40 frames against 40 of the same population often reach 0.3), so nothing is
//! evaluated before the baseline is complete and the sliding window holds [`DriftConfig::min_frames`] frames. The mean shift is the current mean headline
//! confidence minus the baseline's ([`ConfidenceHistogram::mean`], bin centres).
//!
//! Hysteresis: an alert is raised when PSI ≥ `psi_raise` or |mean shift| ≥ `mean_raise`, and cleared only when both
//! fall below the lower `psi_clear` and `mean_clear`; in between the state holds, so a value hovering at a
//! threshold does not flap.

mod tracker;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use outpost_common::manifest::ConfidenceBaseline;
use outpost_common::protocol::ConfidenceHistogram;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use tracker::{AlertKind, BaselineSource, DriftAlert, DriftStatus, SideView, Tracker};

/// Drift settings (the `[ingest.drift]` table of the fleet's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Frames that make a learned baseline (the first ones after a version went live in a group).
    pub baseline_frames: u64,
    /// Frames the sliding window needs before anything is evaluated (a learned baseline needs `baseline_frames`).
    pub min_frames: u64,
    /// The sliding window, in seconds of data time.
    pub window_secs: u64,
    /// Buckets the sliding window is kept in (its time resolution; memory per tracker).
    pub buckets: u32,
    /// Bins of the compared distribution: the 20 histogram bins merged down to this many (a divisor of 20).
    pub bins: usize,
    /// Floor for a proportion in the PSI, so an empty bin does not make it infinite.
    pub epsilon: f64,
    pub psi_raise: f64,
    pub psi_clear: f64,
    /// Absolute shift of the mean confidence that raises (and, below `mean_clear`, clears) an alert.
    pub mean_raise: f64,
    pub mean_clear: f64,
    /// Tag keys that form groups (`key=value`); absent: every tag. The whole fleet (`*`) is always a group.
    pub group_tags: Option<Vec<String>>,
    /// A tracker that has had no data for this many days is forgotten at compaction.
    pub idle_days: u32,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            baseline_frames: 1000,
            min_frames: 500,
            window_secs: 3600,
            buckets: 12,
            bins: 10,
            epsilon: 1e-4,
            psi_raise: 0.25,
            psi_clear: 0.1,
            mean_raise: 0.10,
            mean_clear: 0.05,
            group_tags: None,
            idle_days: 30,
        }
    }
}

impl DriftConfig {
    /// Checks the settings once, at start-up.
    pub fn validate(&self) -> Result<(), String> {
        if self.baseline_frames == 0 || self.min_frames == 0 {
            return Err("drift: baseline_frames and min_frames must be at least 1".into());
        }
        if self.buckets == 0 || self.buckets > 1440 {
            return Err("drift: buckets must be 1..=1440".into());
        }
        if self.window_secs < u64::from(self.buckets) || self.window_secs > 30 * 86_400 {
            return Err("drift: window_secs must be at least one second per bucket and at most 30 days".into());
        }
        if self.bins == 0 || ConfidenceHistogram::BINS % self.bins != 0 {
            return Err(format!("drift: bins must divide {} (1, 2, 4, 5, 10 or 20)", ConfidenceHistogram::BINS));
        }
        if !(self.epsilon > 0.0 && self.epsilon <= 0.01) {
            return Err("drift: epsilon must be in (0, 0.01]".into());
        }
        let ordered = |clear: f64, raise: f64| clear.is_finite() && raise.is_finite() && 0.0 < clear && clear <= raise;
        if !ordered(self.psi_clear, self.psi_raise) || !ordered(self.mean_clear, self.mean_raise) {
            return Err("drift: thresholds must be positive with clear <= raise".into());
        }
        if self.idle_days == 0 {
            return Err("drift: idle_days must be at least 1".into());
        }
        Ok(())
    }

    pub(crate) fn bucket_ms(&self) -> i64 {
        let ms = self.window_secs.saturating_mul(1000) / u64::from(self.buckets.max(1));
        i64::try_from(ms.max(1)).unwrap_or(i64::MAX)
    }
}

/// Devices whose windows are compared together: the whole fleet, or the devices with one tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DriftGroup {
    /// Every device (`*`).
    Fleet,
    /// The devices tagged `key=value`.
    Tag { key: String, value: String },
}

impl DriftGroup {
    pub fn tag(key: impl Into<String>, value: impl Into<String>) -> DriftGroup {
        DriftGroup::Tag { key: key.into(), value: value.into() }
    }

    /// The groups a device with these tags belongs to: the fleet, then one per selected tag (`select` absent:
    /// every tag).
    pub fn of(tags: &BTreeMap<String, String>, select: Option<&[String]>) -> Vec<DriftGroup> {
        let chosen = tags.iter().filter(|(k, _)| select.is_none_or(|s| s.iter().any(|want| want == *k)));
        std::iter::once(DriftGroup::Fleet).chain(chosen.map(|(k, v)| DriftGroup::tag(k.as_str(), v.as_str()))).collect()
    }

    /// Whether a device with these tags is in the group.
    pub fn contains(&self, tags: &BTreeMap<String, String>) -> bool {
        match self {
            DriftGroup::Fleet => true,
            DriftGroup::Tag { key, value } => tags.get(key) == Some(value),
        }
    }
}

impl fmt::Display for DriftGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriftGroup::Fleet => f.write_str("*"),
            DriftGroup::Tag { key, value } => write!(f, "{key}={value}"),
        }
    }
}

impl FromStr for DriftGroup {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            return Ok(DriftGroup::Fleet);
        }
        match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(DriftGroup::tag(k, v)),
            _ => Err(format!("`{s}` is not a drift group (`*` or `key=value`)")),
        }
    }
}

impl Serialize for DriftGroup {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DriftGroup {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What one window summary (or a reference) contributes: frames, their confidence histogram, frames flagged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    pub frames: u64,
    pub histogram: ConfidenceHistogram,
    pub flagged: u64,
}

impl Sample {
    pub fn merge(&mut self, other: &Sample) {
        self.frames = self.frames.saturating_add(other.frames);
        self.histogram.merge(&other.histogram);
        self.flagged = self.flagged.saturating_add(other.flagged);
    }

    /// Frames without a headline confidence (a detector that found nothing).
    pub fn unscored(&self) -> u64 {
        self.frames.saturating_sub(self.histogram.total())
    }

    /// The frames the distribution is over: scored plus unscored (never less than the histogram's total, even for a
    /// window that claimed fewer frames than it binned).
    pub fn observed(&self) -> u64 {
        self.histogram.total().saturating_add(self.unscored())
    }

    /// The compared distribution: the histogram merged down to `bins` bins, then the unscored frames.
    pub fn categories(&self, bins: usize) -> Vec<u64> {
        let bins = bins.clamp(1, ConfidenceHistogram::BINS);
        let per = ConfidenceHistogram::BINS.div_ceil(bins);
        let mut out = vec![0u64; bins + 1];
        for (i, count) in self.histogram.0.iter().enumerate() {
            if let Some(slot) = out.get_mut((i / per).min(bins - 1)) {
                *slot = slot.saturating_add(*count);
            }
        }
        if let Some(last) = out.last_mut() {
            *last = self.unscored();
        }
        out
    }

    pub fn mean(&self) -> Option<f64> {
        self.histogram.mean()
    }

    pub fn flagged_share(&self) -> Option<f64> {
        (self.frames > 0).then(|| (self.flagged as f64 / self.frames as f64).min(1.0))
    }

    /// A manifest's reference distribution as a sample.
    pub fn from_reference(reference: &ConfidenceBaseline) -> Sample {
        let rate = reference.flagged_rate.map_or(0.0, |r| f64::from(r).clamp(0.0, 1.0));
        let frames = reference.frames.max(reference.histogram.total());
        Sample { frames, histogram: reference.histogram, flagged: (rate * frames as f64).round() as u64 }
    }
}

/// The population stability index of `actual` against `expected` (counts per category, same length), with
/// proportions floored at `epsilon`. `None` when either side is empty or the lengths differ.
pub fn psi(expected: &[u64], actual: &[u64], epsilon: f64) -> Option<f64> {
    let total = |v: &[u64]| v.iter().fold(0u64, |a, c| a.saturating_add(*c));
    let (te, ta) = (total(expected), total(actual));
    if te == 0 || ta == 0 || expected.len() != actual.len() {
        return None;
    }
    let value: f64 = expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let p = (e as f64 / te as f64).max(epsilon);
            let q = (a as f64 / ta as f64).max(epsilon);
            (q - p) * (q / p).ln()
        })
        .sum();
    value.is_finite().then_some(value)
}

/// How far a PSI is from the baseline, by the configured thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftLevel {
    /// Below `psi_clear` (0.1).
    Stable,
    /// Between `psi_clear` and `psi_raise` (0.1–0.25): worth watching.
    Watch,
    /// At or above `psi_raise` (0.25).
    Drift,
}

impl DriftLevel {
    pub fn of(psi: f64, config: &DriftConfig) -> DriftLevel {
        if psi >= config.psi_raise {
            DriftLevel::Drift
        } else if psi >= config.psi_clear {
            DriftLevel::Watch
        } else {
            DriftLevel::Stable
        }
    }
}

/// Where a tracker's baseline comes from.
#[cfg(test)]
mod tests {
    use super::*;

    fn hist(counts: &[(usize, u64)]) -> ConfidenceHistogram {
        let mut h = ConfidenceHistogram::default();
        for &(bin, n) in counts {
            h.0[bin] = n;
        }
        h
    }

    fn check_psi(expected: &[u64], actual: &[u64], want: Option<f64>) {
        let got = psi(expected, actual, 1e-4);
        match (got, want) {
            (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "psi({expected:?}, {actual:?}) = {g}, want {w}"),
            (g, w) => assert_eq!(g, w, "psi({expected:?}, {actual:?})"),
        }
    }

    #[test]
    fn psi_on_known_histograms() {
        // Identical distributions, at any scale.
        check_psi(&[10, 20, 70], &[1, 2, 7], Some(0.0));
        // 50/50 against 25/75: (0.25-0.5)ln(0.5) + (0.75-0.5)ln(1.5) = 0.25 ln 3.
        check_psi(&[50, 50], &[25, 75], Some(0.25 * 3f64.ln()));
        // Symmetric in its two arguments.
        check_psi(&[25, 75], &[50, 50], Some(0.25 * 3f64.ln()));
        // An empty bin on one side is floored at epsilon instead of making the index infinite.
        let floored = (1.0 - 0.5) * (1.0f64 / 0.5).ln() + (1e-4 - 0.5) * (1e-4f64 / 0.5).ln();
        check_psi(&[50, 50], &[100, 0], Some(floored));
        // Nothing to compare.
        check_psi(&[0, 0], &[1, 1], None);
        check_psi(&[1, 1], &[0, 0], None);
        check_psi(&[1, 1], &[1, 1, 1], None);
    }

    #[test]
    fn categories_coarsen_the_bins_and_count_unscored_frames() {
        let sample = Sample { frames: 10, histogram: hist(&[(0, 1), (1, 2), (19, 3)]), flagged: 0 };
        assert_eq!(sample.unscored(), 4);
        assert_eq!(sample.categories(10), vec![3, 0, 0, 0, 0, 0, 0, 0, 0, 3, 4]);
        assert_eq!(sample.categories(20).len(), 21);
        assert_eq!(sample.categories(1), vec![6, 4]);
        // A window that binned more than it claims is counted by its histogram.
        let odd = Sample { frames: 2, histogram: hist(&[(5, 3)]), flagged: 0 };
        assert_eq!((odd.unscored(), odd.observed()), (0, 3));
    }

    #[test]
    fn groups_of_a_device() {
        let tags: BTreeMap<String, String> =
            [("site", "berlin"), ("line", "3")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        assert_eq!(
            DriftGroup::of(&tags, None),
            vec![DriftGroup::Fleet, DriftGroup::tag("line", "3"), DriftGroup::tag("site", "berlin")]
        );
        assert_eq!(
            DriftGroup::of(&tags, Some(&["site".to_string()])),
            vec![DriftGroup::Fleet, DriftGroup::tag("site", "berlin")]
        );
        assert!(DriftGroup::tag("site", "berlin").contains(&tags));
        assert!(!DriftGroup::tag("site", "paris").contains(&tags));
        for text in ["*", "site=berlin", "a=b=c", "k="] {
            let group: DriftGroup = text.parse().expect("parses");
            assert_eq!(group.to_string(), text);
        }
        assert!("=x".parse::<DriftGroup>().is_err() && "plain".parse::<DriftGroup>().is_err());
    }

    #[test]
    fn config_validation() {
        assert_eq!(DriftConfig::default().validate(), Ok(()));
        for bad in [
            DriftConfig { bins: 3, ..DriftConfig::default() },
            DriftConfig { psi_clear: 0.3, ..DriftConfig::default() },
            DriftConfig { epsilon: 0.0, ..DriftConfig::default() },
            DriftConfig { buckets: 0, ..DriftConfig::default() },
            DriftConfig { min_frames: 0, ..DriftConfig::default() },
            DriftConfig { mean_raise: f64::NAN, ..DriftConfig::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
