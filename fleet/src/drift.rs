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

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use outpost_common::manifest::ConfidenceBaseline;
use outpost_common::protocol::{ConfidenceHistogram, ModelRef};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

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

    fn bucket_ms(&self) -> i64 {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineSource {
    /// Still collecting the first frames after the version went live.
    Learning,
    /// The first `baseline_frames` frames after the version went live.
    Learned,
    /// A stored reference (a manifest's `ConfidenceBaseline`).
    Reference,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Raised,
    Cleared,
}

/// A threshold crossed for one model version and group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftAlert {
    pub model: ModelRef,
    pub group: DriftGroup,
    pub kind: AlertKind,
    pub psi: f64,
    /// Current mean confidence minus the baseline's; `None` when either has no scored frame.
    pub mean_shift: Option<f64>,
    /// Share of the current window's frames that were flagged for review.
    pub flagged_share: Option<f64>,
    pub baseline_flagged_share: Option<f64>,
    /// Frames in the current window.
    pub frames: u64,
    pub baseline: BaselineSource,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// One side of a comparison, for the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SideView {
    pub frames: u64,
    pub unscored: u64,
    pub mean: Option<f64>,
    pub flagged_share: Option<f64>,
    pub histogram: ConfidenceHistogram,
}

impl SideView {
    fn of(sample: &Sample) -> SideView {
        SideView {
            frames: sample.observed(),
            unscored: sample.unscored(),
            mean: sample.mean(),
            flagged_share: sample.flagged_share(),
            histogram: sample.histogram,
        }
    }
}

/// Where a (model version, group) stands, for the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftStatus {
    pub model: ModelRef,
    pub group: DriftGroup,
    pub baseline_source: BaselineSource,
    pub baseline: SideView,
    pub current: SideView,
    /// `None` until the baseline is complete and the current window holds `min_frames` frames.
    pub psi: Option<f64>,
    pub mean_shift: Option<f64>,
    pub level: Option<DriftLevel>,
    pub alerting: bool,
    /// When the current alert was raised.
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// The last data received (fleet clock).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", content = "sample", rename_all = "snake_case")]
enum Baseline {
    Learning(Sample),
    Learned(Sample),
    Reference(Sample),
}

impl Baseline {
    fn source(&self) -> BaselineSource {
        match self {
            Baseline::Learning(_) => BaselineSource::Learning,
            Baseline::Learned(_) => BaselineSource::Learned,
            Baseline::Reference(_) => BaselineSource::Reference,
        }
    }

    fn sample(&self) -> &Sample {
        match self {
            Baseline::Learning(s) | Baseline::Learned(s) | Baseline::Reference(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Bucket {
    index: i64,
    sample: Sample,
}

/// The drift state of one model version in one group. Serialisable, so it survives a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    model: ModelRef,
    group: DriftGroup,
    baseline: Baseline,
    /// Ascending bucket index (data time ÷ bucket length); at most `buckets` of them, the newest last.
    buckets: VecDeque<Bucket>,
    alerting: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    since: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

/// What the two sides look like now, when both are big enough to compare.
struct Comparison {
    psi: f64,
    mean_shift: Option<f64>,
}

impl Tracker {
    /// A tracker for a version that just went live in a group: learning, or on a reference when one is known.
    pub fn new(model: ModelRef, group: DriftGroup, reference: Option<&Sample>, now: OffsetDateTime) -> Tracker {
        let baseline = match reference {
            Some(r) => Baseline::Reference(*r),
            None => Baseline::Learning(Sample::default()),
        };
        Tracker { model, group, baseline, buckets: VecDeque::new(), alerting: false, since: None, updated_at: now }
    }

    pub fn model(&self) -> &ModelRef {
        &self.model
    }

    pub fn group(&self) -> &DriftGroup {
        &self.group
    }

    pub fn updated_at(&self) -> OffsetDateTime {
        self.updated_at
    }

    pub fn alerting(&self) -> bool {
        self.alerting
    }

    pub fn baseline_source(&self) -> BaselineSource {
        self.baseline.source()
    }

    /// Replaces the baseline with a stored reference; the alert state is re-judged at the next sample.
    pub fn set_reference(&mut self, reference: &Sample) {
        self.baseline = Baseline::Reference(*reference);
    }

    /// Adds one window's sample: `data_time` places it in the sliding window (the window's end), `now` stamps an
    /// alert. Returns the alert when a threshold is crossed.
    pub fn observe(
        &mut self,
        sample: &Sample,
        data_time: OffsetDateTime,
        now: OffsetDateTime,
        config: &DriftConfig,
    ) -> Option<DriftAlert> {
        self.updated_at = now;
        if let Baseline::Learning(learning) = &mut self.baseline {
            learning.merge(sample);
            if learning.observed() >= config.baseline_frames {
                self.baseline = Baseline::Learned(*learning);
            }
        }
        self.add_to_window(sample, data_time, config);
        let compared = self.compare(config)?;
        let shift = compared.mean_shift.map_or(0.0, f64::abs);
        let raise = compared.psi >= config.psi_raise || shift >= config.mean_raise;
        let clear = compared.psi < config.psi_clear && shift < config.mean_clear;
        let kind = match (self.alerting, raise, clear) {
            (false, true, _) => AlertKind::Raised,
            (true, _, true) => AlertKind::Cleared,
            _ => return None,
        };
        self.alerting = kind == AlertKind::Raised;
        self.since = self.alerting.then_some(now);
        let current = self.current();
        Some(DriftAlert {
            model: self.model.clone(),
            group: self.group.clone(),
            kind,
            psi: compared.psi,
            mean_shift: compared.mean_shift,
            flagged_share: current.flagged_share(),
            baseline_flagged_share: self.baseline.sample().flagged_share(),
            frames: current.observed(),
            baseline: self.baseline.source(),
            at: now,
        })
    }

    fn add_to_window(&mut self, sample: &Sample, data_time: OffsetDateTime, config: &DriftConfig) {
        let ms = i64::try_from(data_time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let index = ms.div_euclid(config.bucket_ms());
        let span = i64::from(config.buckets);
        let head = self.buckets.back().map_or(index, |b| b.index.max(index));
        if index <= head.saturating_sub(span) {
            // Older than the sliding window (a replay after a long outage): it counted for the baseline only.
            return;
        }
        match self.buckets.iter().position(|b| b.index >= index) {
            Some(at) if self.buckets.get(at).is_some_and(|b| b.index == index) => {
                if let Some(bucket) = self.buckets.get_mut(at) {
                    bucket.sample.merge(sample);
                }
            }
            Some(at) => self.buckets.insert(at, Bucket { index, sample: *sample }),
            None => self.buckets.push_back(Bucket { index, sample: *sample }),
        }
        while self.buckets.front().is_some_and(|b| b.index <= head.saturating_sub(span)) {
            self.buckets.pop_front();
        }
    }

    /// The sliding window's contents.
    fn current(&self) -> Sample {
        self.buckets.iter().fold(Sample::default(), |mut acc, b| {
            acc.merge(&b.sample);
            acc
        })
    }

    fn compare(&self, config: &DriftConfig) -> Option<Comparison> {
        let baseline = match &self.baseline {
            Baseline::Learning(_) => return None,
            Baseline::Learned(s) | Baseline::Reference(s) => s,
        };
        let current = self.current();
        if current.observed() < config.min_frames {
            return None;
        }
        let psi = psi(&baseline.categories(config.bins), &current.categories(config.bins), config.epsilon)?;
        let mean_shift = match (current.mean(), baseline.mean()) {
            (Some(c), Some(b)) => Some(c - b),
            _ => None,
        };
        Some(Comparison { psi, mean_shift })
    }

    pub fn status(&self, config: &DriftConfig) -> DriftStatus {
        let compared = self.compare(config);
        DriftStatus {
            model: self.model.clone(),
            group: self.group.clone(),
            baseline_source: self.baseline.source(),
            baseline: SideView::of(self.baseline.sample()),
            current: SideView::of(&self.current()),
            psi: compared.as_ref().map(|c| c.psi),
            mean_shift: compared.as_ref().and_then(|c| c.mean_shift),
            level: compared.as_ref().map(|c| DriftLevel::of(c.psi, config)),
            alerting: self.alerting,
            since: self.since,
            updated_at: self.updated_at,
        }
    }
}

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

    fn config() -> DriftConfig {
        DriftConfig { baseline_frames: 100, min_frames: 100, window_secs: 600, buckets: 10, ..DriftConfig::default() }
    }

    fn at(minute: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(1_000_000 + minute)
    }

    /// 50 frames per window: `high` of them at 0.9, the rest at 0.4.
    fn window(high: u64) -> Sample {
        Sample { frames: 50, histogram: hist(&[(18, high), (8, 50 - high)]), flagged: 50 - high }
    }

    /// Feeds one window per minute and returns the alerts' kinds, with the minute they came at.
    fn feed(tracker: &mut Tracker, from: i64, windows: &[Sample]) -> Vec<(i64, AlertKind)> {
        let cfg = config();
        let mut alerts = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            let minute = from + i as i64;
            if let Some(a) = tracker.observe(w, at(minute), at(minute), &cfg) {
                alerts.push((minute, a.kind));
            }
        }
        alerts
    }

    fn tracker() -> Tracker {
        Tracker::new(ModelRef { name: "defect".into(), version: 3 }, DriftGroup::Fleet, None, at(0))
    }

    #[test]
    fn learns_a_baseline_then_stays_quiet_on_the_same_data() {
        let mut t = tracker();
        assert_eq!(feed(&mut t, 0, &[window(40); 30]), vec![]);
        let status = t.status(&config());
        assert_eq!(status.baseline_source, BaselineSource::Learned);
        assert_eq!(status.baseline.frames, 100, "the first two windows");
        assert_eq!(status.current.frames, 500, "ten one-minute buckets");
        assert_eq!((status.psi, status.level, status.alerting), (Some(0.0), Some(DriftLevel::Stable), false));
        assert_eq!(status.current.flagged_share, Some(0.2));
    }

    #[test]
    fn raises_once_then_clears_with_hysteresis() {
        let mut t = tracker();
        feed(&mut t, 0, &[window(40); 12]);
        // The confidence collapses: one alert, however long it lasts.
        let alerts = feed(&mut t, 12, &[window(5); 15]);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].1, AlertKind::Raised);
        let status = t.status(&config());
        assert!(status.alerting && status.since.is_some());
        assert!(status.psi.is_some_and(|p| p >= 0.25) && status.mean_shift.is_some_and(|m| m < -0.1));
        // Back to normal: cleared once the whole window is normal again, and only once.
        let alerts = feed(&mut t, 27, &[window(40); 15]);
        assert_eq!(alerts.iter().map(|a| a.1).collect::<Vec<_>>(), vec![AlertKind::Cleared], "{alerts:?}");
        assert!(!t.status(&config()).alerting);
    }

    #[test]
    fn hovering_between_the_thresholds_does_not_flap() {
        let cfg = config();
        let mut t = tracker();
        feed(&mut t, 0, &[window(40); 12]);
        // Alternate between a drifted window and a middling one: the middling state neither raises nor clears.
        let mut kinds = Vec::new();
        for minute in 12..60 {
            let w = if minute < 20 { window(5) } else { window(if minute % 2 == 0 { 34 } else { 32 }) };
            if let Some(a) = t.observe(&w, at(minute), at(minute), &cfg) {
                kinds.push((minute, a.kind, a.psi));
            }
        }
        assert_eq!(kinds.len(), 1, "raised once, never cleared in the middle band: {kinds:?}");
        let status = t.status(&cfg);
        let psi = status.psi.expect("evaluated");
        let shift = status.mean_shift.expect("scored").abs();
        assert!(psi < cfg.psi_raise && shift < cfg.mean_raise, "no longer raising ({psi}, {shift})");
        assert!(psi >= cfg.psi_clear || shift >= cfg.mean_clear, "not yet clearing ({psi}, {shift})");
        assert!(status.alerting);
    }

    #[test]
    fn nothing_is_judged_on_too_few_frames() {
        let cfg = DriftConfig { min_frames: 1000, ..config() };
        let mut t = tracker();
        for minute in 0..30 {
            let w = if minute < 5 { window(40) } else { window(0) };
            assert_eq!(t.observe(&w, at(minute), at(minute), &cfg), None);
        }
        assert_eq!(t.status(&cfg).psi, None);
    }

    #[test]
    fn a_reference_replaces_learning_and_unscored_frames_count() {
        let reference = ConfidenceBaseline { frames: 200, histogram: hist(&[(18, 200)]), flagged_rate: Some(0.05) };
        let sample = Sample::from_reference(&reference);
        assert_eq!((sample.flagged, sample.flagged_share()), (10, Some(0.05)));
        let mut t =
            Tracker::new(ModelRef { name: "defect".into(), version: 3 }, DriftGroup::Fleet, Some(&sample), at(0));
        // Same scores, but half the frames now have no detection at all: the mean does not move, PSI does.
        let half_blind = Sample { frames: 50, histogram: hist(&[(18, 25)]), flagged: 0 };
        let alerts = feed(&mut t, 0, &[half_blind; 3]);
        assert_eq!(alerts.len(), 1);
        let status = t.status(&config());
        assert_eq!(status.baseline_source, BaselineSource::Reference);
        assert_eq!(status.mean_shift, Some(0.0));
        assert!(status.psi.is_some_and(|p| p > 1.0), "{status:?}");
    }

    #[test]
    fn old_data_does_not_enter_the_window_and_buckets_stay_bounded() {
        let cfg = config();
        let mut t = tracker();
        feed(&mut t, 0, &[window(40); 100]);
        assert_eq!(t.buckets.len(), 10);
        // A replay from an hour ago counts for nothing in the current window.
        let before = t.status(&cfg).current;
        t.observe(&window(0), at(30), at(100), &cfg);
        assert_eq!(t.status(&cfg).current, before);
        // A late window inside the span lands in its own bucket.
        t.observe(&window(0), at(95), at(100), &cfg);
        assert_eq!(t.status(&cfg).current.frames, before.frames + 50);
        assert_eq!(t.buckets.len(), 10);
    }

    #[test]
    fn round_trips_through_json() {
        let mut t = tracker();
        feed(&mut t, 0, &[window(40); 5]);
        let text = serde_json::to_string(&t).expect("serialises");
        assert_eq!(serde_json::from_str::<Tracker>(&text).expect("parses"), t);
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
