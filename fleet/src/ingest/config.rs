//! `[ingest]` settings: retention, roll-ups, the event log, de-duplication and drift.

use serde::{Deserialize, Serialize};

use super::error::IngestError;
use crate::drift::DriftConfig;

/// Ingest settings, validated once by [`super::Ingest::open`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Days raw window summaries are kept (whole hours are deleted at [`super::Ingest::compact`]).
    pub raw_days: u32,
    /// Days hourly roll-ups are kept (186: about six months).
    pub rollup_days: u32,
    /// Events kept per device (the newest, by seq).
    pub event_log: u32,
    /// Seqs per device remembered exactly for de-duplication (a multiple of 64); a message reordered by more than
    /// this many is refused as stale.
    pub dedupe_window: u32,
    /// How far in the future (fleet clock) a window may end before it is refused.
    pub max_clock_skew_secs: u32,
    /// Drift alerts kept for the API (the oldest are deleted at compaction).
    pub alerts_kept: u32,
    /// Threads the service ingests on, messages split among them by device (one device's messages stay on one
    /// thread, in order). `None`: the available cores, at most [`MAX_DEFAULT_WORKERS`].
    pub workers: Option<usize>,
    pub drift: DriftConfig,
}

/// The default number of ingest workers is the available parallelism, clamped to `1..=MAX_DEFAULT_WORKERS`.
pub const MAX_DEFAULT_WORKERS: usize = 8;
/// The most ingest workers a configuration may ask for.
pub const MAX_WORKERS: usize = 64;

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            raw_days: 7,
            rollup_days: 186,
            event_log: 1000,
            dedupe_window: 1024,
            max_clock_skew_secs: 600,
            alerts_kept: 10_000,
            workers: None,
            drift: DriftConfig::default(),
        }
    }
}

impl IngestConfig {
    pub fn validate(&self) -> Result<(), IngestError> {
        let bad = |what: &str| Err(IngestError::Config(what.to_string()));
        if self.raw_days == 0 || self.raw_days > 3660 {
            return bad("raw_days must be 1..=3660");
        }
        if self.rollup_days < self.raw_days || self.rollup_days > 36_600 {
            return bad("rollup_days must be at least raw_days and at most 36600");
        }
        if self.event_log == 0 {
            return bad("event_log must be at least 1");
        }
        if self.dedupe_window < 64 || self.dedupe_window % 64 != 0 || self.dedupe_window > 65_536 {
            return bad("dedupe_window must be a multiple of 64 in 64..=65536");
        }
        if self.alerts_kept == 0 {
            return bad("alerts_kept must be at least 1");
        }
        if self.workers.is_some_and(|w| w == 0 || w > MAX_WORKERS) {
            return bad(&format!("workers must be 1..={MAX_WORKERS}"));
        }
        self.drift.validate().map_err(IngestError::Config)
    }

    /// How many ingest worker threads to run: `workers`, or the available cores clamped to
    /// `1..=MAX_DEFAULT_WORKERS`.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_DEFAULT_WORKERS)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(IngestConfig::default().validate().is_ok());
        let check = |c: IngestConfig, fragment: &str| {
            let e = c.validate().expect_err("refused").to_string();
            assert!(e.contains(fragment), "`{e}` lacks `{fragment}`");
        };
        check(IngestConfig { raw_days: 0, ..IngestConfig::default() }, "raw_days");
        check(IngestConfig { rollup_days: 3, ..IngestConfig::default() }, "rollup_days");
        check(IngestConfig { dedupe_window: 100, ..IngestConfig::default() }, "dedupe_window");
        check(IngestConfig { event_log: 0, ..IngestConfig::default() }, "event_log");
        check(IngestConfig { workers: Some(0), ..IngestConfig::default() }, "workers");
        check(IngestConfig { workers: Some(65), ..IngestConfig::default() }, "workers");
        assert_eq!(IngestConfig { workers: Some(3), ..IngestConfig::default() }.workers(), 3);
        assert!((1..=MAX_DEFAULT_WORKERS).contains(&IngestConfig::default().workers()));
        let drift = DriftConfig { bins: 7, ..DriftConfig::default() };
        check(IngestConfig { drift, ..IngestConfig::default() }, "bins");
    }

    #[test]
    fn parses_from_toml_shaped_json_and_refuses_unknown_keys() {
        let c: IngestConfig = serde_json::from_str(r#"{"raw_days": 3, "drift": {"psi_raise": 0.3}}"#).expect("parses");
        assert_eq!((c.raw_days, c.rollup_days, c.drift.psi_raise, c.drift.psi_clear), (3, 186, 0.3, 0.1));
        assert!(serde_json::from_str::<IngestConfig>(r#"{"raw_dayz": 3}"#).is_err());
    }
}
