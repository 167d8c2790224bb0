//! One tracker per (model version, group): baseline, sliding window, alert state with hysteresis (see the
//! [`super`] module documentation for the statistics). Pure.

use std::collections::VecDeque;

use outpost_common::protocol::{ConfidenceHistogram, ModelRef};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{DriftConfig, DriftGroup, DriftLevel, Sample, psi};

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
    use outpost_common::manifest::ConfidenceBaseline;

    use super::*;

    fn hist(counts: &[(usize, u64)]) -> ConfidenceHistogram {
        let mut h = ConfidenceHistogram::default();
        for &(bin, n) in counts {
            h.0[bin] = n;
        }
        h
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
}
