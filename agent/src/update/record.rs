//! The `active` record of one model name and its transitions: pure values in, values out.
//!
//! Design: the record says which installed version serves (`active`), whether it has passed its health window
//! (`committed`), the last committed version to fall back to (`previous`), how often the uncommitted version has been
//! started (`trial_starts`), and which versions failed on this device (`bad`). `previous` is always a committed
//! version: trying C while B is still on trial keeps A as the fallback, so a revert never lands on an unproven model.
//! Every transition returns a new record; [`super::slots`] writes it atomically before anything acts on it, so the
//! trial-start count survives a crash loop and the revert needs no network.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The record format this code writes and reads.
pub const RECORD_SCHEMA: u32 = 1;

/// Bad marks kept per model name; the oldest (lowest) versions are forgotten first.
pub const MAX_BAD_VERSIONS: usize = 64;

/// What one model name is serving on this device, persisted as `<root>/<name>/active.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveRecord {
    pub schema: u32,
    /// The version that serves; `None` means no installed version does (the configured model serves).
    pub active: Option<u64>,
    /// The committed version a revert goes back to.
    pub previous: Option<u64>,
    /// Whether `active` passed its health window.
    pub committed: bool,
    /// Starts of the uncommitted `active` so far; reset by a commit or a new trial.
    pub trial_starts: u32,
    /// Versions that failed on this device, with the reason; never started again by an update.
    #[serde(default)]
    pub bad: BTreeMap<u64, String>,
}

impl Default for ActiveRecord {
    fn default() -> Self {
        ActiveRecord {
            schema: RECORD_SCHEMA,
            active: None,
            previous: None,
            committed: false,
            trial_starts: 0,
            bad: BTreeMap::new(),
        }
    }
}

/// A transition that does not apply to the record as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("version {version} was marked bad on this device: {reason}")]
    Bad { version: u64, reason: String },
    #[error("version {version} is not the active version ({})", describe(*active))]
    NotActive { version: u64, active: Option<u64> },
}

fn describe(active: Option<u64>) -> String {
    active.map_or_else(|| "none is".to_string(), |v| format!("{v} is"))
}

impl TransitionError {
    pub fn kind(&self) -> &'static str {
        match self {
            TransitionError::Bad { .. } => "bad_version",
            TransitionError::NotActive { .. } => "not_active",
        }
    }
}

/// One revert: which version stopped serving, which one serves instead, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reverted {
    pub from: u64,
    pub to: Option<u64>,
    pub reason: String,
}

/// What to serve after a (re)start, and what the start changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartPlan {
    /// The version to load; `None`: no installed version serves.
    pub serve: Option<u64>,
    pub committed: bool,
    /// For an uncommitted version: this start's number, 1-based.
    pub trial_start: Option<u32>,
    /// Reverts made by this start (a trial started too often, a slot gone from disk), oldest first.
    pub reverted: Vec<Reverted>,
}

impl ActiveRecord {
    /// Internal consistency of a record read from disk.
    pub fn problems(&self) -> Option<String> {
        if self.schema != RECORD_SCHEMA {
            return Some(format!("schema {} is not the supported {RECORD_SCHEMA}", self.schema));
        }
        if self.active.is_some() && self.active == self.previous {
            return Some("active and previous name the same version".into());
        }
        None
    }

    /// The reason `version` was marked bad, if it was.
    pub fn bad_reason(&self, version: u64) -> Option<&str> {
        self.bad.get(&version).map(String::as_str)
    }

    /// Versions that must stay on disk: the one serving and the one a revert would serve.
    pub fn keeps(&self, version: u64) -> bool {
        self.active == Some(version) || self.previous == Some(version)
    }

    /// Makes `version` active and uncommitted; the current version becomes `previous` if it was committed. Trying
    /// the version already active changes nothing (its start count is not reset).
    pub fn begin_trial(&self, version: u64) -> Result<ActiveRecord, TransitionError> {
        if let Some(reason) = self.bad_reason(version) {
            return Err(TransitionError::Bad { version, reason: reason.to_string() });
        }
        Ok(self.trial(version))
    }

    /// An operator's choice: like [`ActiveRecord::begin_trial`], but a bad mark on `version` is lifted first.
    pub fn activate(&self, version: u64) -> ActiveRecord {
        let mut next = self.clone();
        next.bad.remove(&version);
        next.trial(version)
    }

    fn trial(&self, version: u64) -> ActiveRecord {
        if self.active == Some(version) {
            return self.clone();
        }
        let previous = if self.committed { self.active } else { self.previous };
        ActiveRecord {
            active: Some(version),
            previous: previous.filter(|p| *p != version),
            committed: false,
            trial_starts: 0,
            ..self.clone()
        }
    }

    /// Marks the active `version` as committed. Naming the version keeps a late health verdict from committing a
    /// newer trial.
    pub fn commit(&self, version: u64) -> Result<ActiveRecord, TransitionError> {
        if self.active != Some(version) {
            return Err(TransitionError::NotActive { version, active: self.active });
        }
        Ok(ActiveRecord { committed: true, trial_starts: 0, ..self.clone() })
    }

    /// Stops serving the active `version`, marks it bad with `reason`, and serves `previous` (committed) instead.
    pub fn revert(&self, version: u64, reason: &str) -> Result<(ActiveRecord, Reverted), TransitionError> {
        if self.active != Some(version) {
            return Err(TransitionError::NotActive { version, active: self.active });
        }
        Ok(self.fall_back(version, reason, true))
    }

    fn fall_back(&self, version: u64, reason: &str, mark_bad: bool) -> (ActiveRecord, Reverted) {
        let mut next = self.clone();
        if mark_bad {
            next.bad.insert(version, reason.to_string());
            while next.bad.len() > MAX_BAD_VERSIONS {
                next.bad.pop_first();
            }
        }
        next.active = self.previous;
        next.previous = None;
        next.committed = next.active.is_some();
        next.trial_starts = 0;
        (next, Reverted { from: version, to: self.previous, reason: reason.to_string() })
    }

    /// The start-up decision. An uncommitted version is started at most `max_trial_starts` times; the start after
    /// that reverts it (marked bad: it never reached its commit). A version whose slot is not on disk falls back
    /// without a bad mark (nothing is known against the model itself). `available` says whether a version's slot is
    /// complete. Returns the record to persist *before* loading anything, and what to serve.
    pub fn on_start(&self, max_trial_starts: u32, available: impl Fn(u64) -> bool) -> (ActiveRecord, StartPlan) {
        let max = max_trial_starts.max(1);
        let mut record = self.clone();
        let mut reverted = Vec::new();
        // Each fall-back clears `previous`, so this settles within two rounds; the bound is only a guard.
        for _ in 0..4 {
            let Some(version) = record.active else { break };
            let (next, revert) = if !available(version) {
                record.fall_back(version, &format!("slot of version {version} is missing or incomplete"), false)
            } else if record.committed {
                let plan = StartPlan { serve: Some(version), committed: true, trial_start: None, reverted };
                return (record, plan);
            } else if record.trial_starts >= max {
                record.fall_back(version, &format!("not committed after {max} starts"), true)
            } else {
                record.trial_starts = record.trial_starts.saturating_add(1);
                let plan = StartPlan {
                    serve: Some(version),
                    committed: false,
                    trial_start: Some(record.trial_starts),
                    reverted,
                };
                return (record, plan);
            };
            record = next;
            reverted.push(revert);
        }
        (record, StartPlan { serve: None, committed: false, trial_start: None, reverted })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(active: Option<u64>, previous: Option<u64>, committed: bool, trial_starts: u32) -> ActiveRecord {
        ActiveRecord { active, previous, committed, trial_starts, ..ActiveRecord::default() }
    }

    /// (what happens, before, transition, expected after or error kind)
    type Transition = fn(&ActiveRecord) -> Result<ActiveRecord, TransitionError>;

    fn check(cases: &[(&str, ActiveRecord, Transition, Result<ActiveRecord, &str>)]) {
        for (what, before, transition, expected) in cases {
            let got = transition(before).map_err(|e| e.kind());
            assert_eq!(&got, expected, "{what}");
        }
    }

    #[test]
    fn trials_commits_and_reverts() {
        let committed_a = rec(Some(1), None, true, 0);
        let trial_b = rec(Some(2), Some(1), false, 2);
        let with_bad = |mut r: ActiveRecord, v: u64, why: &str| {
            r.bad.insert(v, why.into());
            r
        };
        check(&[
            (
                "first trial from nothing",
                ActiveRecord::default(),
                |r| r.begin_trial(1),
                Ok(rec(Some(1), None, false, 0)),
            ),
            (
                "trial over a committed version keeps it",
                committed_a.clone(),
                |r| r.begin_trial(2),
                Ok(rec(Some(2), Some(1), false, 0)),
            ),
            (
                "trial over a trial keeps the committed fallback",
                trial_b.clone(),
                |r| r.begin_trial(3),
                Ok(rec(Some(3), Some(1), false, 0)),
            ),
            (
                "trying the active version again changes nothing",
                trial_b.clone(),
                |r| r.begin_trial(2),
                Ok(trial_b.clone()),
            ),
            (
                "going back to previous by trial",
                rec(Some(2), Some(1), true, 0),
                |r| r.begin_trial(1),
                Ok(rec(Some(1), Some(2), false, 0)),
            ),
            (
                "a bad version is refused",
                with_bad(committed_a.clone(), 2, "nan"),
                |r| r.begin_trial(2),
                Err("bad_version"),
            ),
            ("commit the trial", trial_b.clone(), |r| r.commit(2), Ok(rec(Some(2), Some(1), true, 0))),
            ("commit of another version", trial_b.clone(), |r| r.commit(3), Err("not_active")),
            ("commit with nothing active", ActiveRecord::default(), |r| r.commit(1), Err("not_active")),
            (
                "revert to previous, marked bad",
                trial_b.clone(),
                |r| r.revert(2, "nan").map(|(r, _)| r),
                Ok(with_bad(committed_a.clone(), 2, "nan")),
            ),
            (
                "revert without previous serves nothing",
                rec(Some(1), None, false, 1),
                |r| r.revert(1, "crash").map(|(r, _)| r),
                Ok(with_bad(ActiveRecord::default(), 1, "crash")),
            ),
            (
                "revert of a version not serving",
                trial_b.clone(),
                |r| r.revert(1, "x").map(|(r, _)| r),
                Err("not_active"),
            ),
            (
                "operator activation lifts the bad mark",
                with_bad(committed_a.clone(), 2, "nan"),
                |r| Ok(r.activate(2)),
                Ok(rec(Some(2), Some(1), false, 0)),
            ),
        ]);
    }

    #[test]
    fn bad_marks_are_bounded_keeping_the_newest() {
        let mut r = ActiveRecord::default();
        for v in 1..=(MAX_BAD_VERSIONS as u64 + 10) {
            r = r.begin_trial(v).expect("not bad").revert(v, "x").expect("active").0;
        }
        assert_eq!(r.bad.len(), MAX_BAD_VERSIONS);
        assert_eq!(r.bad.first_key_value().map(|(v, _)| *v), Some(11));
    }

    #[test]
    fn starts_count_then_revert() {
        let all = |_: u64| true;
        let mut record = rec(Some(2), Some(1), false, 0);
        for n in 1..=3 {
            let (next, plan) = record.on_start(3, all);
            assert_eq!(plan, StartPlan { serve: Some(2), committed: false, trial_start: Some(n), reverted: vec![] });
            assert_eq!(next.trial_starts, n);
            record = next;
        }
        let (next, plan) = record.on_start(3, all);
        assert_eq!(plan.serve, Some(1));
        assert!(plan.committed);
        assert_eq!(plan.reverted, [Reverted { from: 2, to: Some(1), reason: "not committed after 3 starts".into() }]);
        assert_eq!(next.bad_reason(2), Some("not committed after 3 starts"));
        assert_eq!((next.active, next.previous, next.committed), (Some(1), None, true));
        // A committed version is served however often it starts.
        let (again, plan) = next.on_start(3, all);
        assert_eq!((again, plan.serve, plan.trial_start), (next, Some(1), None));
    }

    #[test]
    fn missing_slots_fall_back_without_a_bad_mark() {
        let record = rec(Some(2), Some(1), false, 0);
        let (next, plan) = record.on_start(3, |v| v == 1);
        assert_eq!((plan.serve, plan.committed), (Some(1), true));
        assert_eq!(plan.reverted.len(), 1);
        assert!(next.bad.is_empty());
        let (next, plan) = record.on_start(3, |_| false);
        assert_eq!(plan.serve, None);
        assert_eq!(plan.reverted.iter().map(|r| r.from).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(next.active, None);
        // Zero allowed starts is read as one: a trial always gets its first start.
        let (_, plan) = rec(Some(5), None, false, 0).on_start(0, |_| true);
        assert_eq!(plan.trial_start, Some(1));
        assert_eq!(ActiveRecord::default().on_start(3, |_| true).1, StartPlan::default());
    }

    #[test]
    fn problems_and_round_trip() {
        assert_eq!(ActiveRecord::default().problems(), None);
        assert!(rec(Some(1), Some(1), true, 0).problems().is_some());
        assert!(ActiveRecord { schema: 9, ..ActiveRecord::default() }.problems().is_some());
        let mut r = rec(Some(3), Some(2), false, 1);
        r.bad.insert(1, "nan outputs".into());
        let json = serde_json::to_vec(&r).expect("serialise");
        assert_eq!(serde_json::from_slice::<ActiveRecord>(&json).expect("parse"), r);
        assert!(
            serde_json::from_slice::<ActiveRecord>(
                br#"{"schema":1,"active":null,"previous":null,"committed":false,"trial_starts":0,"extra":1}"#
            )
            .is_err()
        );
    }
}
