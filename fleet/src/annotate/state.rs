//! The annotation state of one sample and its transitions; pure (time is an argument).
//!
//! ```text
//!            claim                 submit (review off)
//!  queued ─────────▶ claimed ──────────────────────────▶ labelled
//!    ▲  ◀── skip ──── │  │  submit (review on)                      import: any state but accepted/rejected
//!    │  ◀─ expiry ─── │  └─────────────────▶ review ─── accept ──▶ accepted     becomes labelled (or review)
//!    │                └── reject ─▶ rejected   │
//!    └──────────────── send back ──────────────┘
//! ```
//!
//! An expired lease is not rewritten: a claim whose `until` has passed counts as queued, and the next claim takes
//! it over. Until then its holder may still finish it — "only the lease holder may submit" means the holder of
//! the latest claim.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::QueueError;
use super::label::LabelRecord;

/// Most skip marks kept per sample (the oldest go first).
const MAX_SKIPS: usize = 32;

/// Where a sample is in the annotation flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum Status {
    Queued,
    Claimed {
        annotator: String,
        #[serde(with = "time::serde::rfc3339")]
        until: OffsetDateTime,
    },
    /// Labelled, waiting for a reviewer (review step on).
    Review,
    /// Labelled (review step off): exported.
    Labelled,
    /// Labelled and accepted by a reviewer: exported. Final.
    Accepted {
        reviewer: String,
    },
    /// Unusable (blurred, wrong camera, …). Final.
    Rejected {
        by: String,
    },
}

/// The state names, for counts and messages. An expired claim counts as `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    Queued,
    Claimed,
    Review,
    Labelled,
    Accepted,
    Rejected,
}

impl StateName {
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Queued => "queued",
            StateName::Claimed => "claimed",
            StateName::Review => "review",
            StateName::Labelled => "labelled",
            StateName::Accepted => "accepted",
            StateName::Rejected => "rejected",
        }
    }
}

impl fmt::Display for StateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// "Not to this annotator before `until`": left by a skip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skip {
    pub annotator: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// A reviewer's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReviewDecision {
    Accept,
    /// Back to the queue, with a note for the next annotator; the label stays visible as the previous attempt.
    SendBack {
        note: String,
    },
}

/// The annotation state of one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleState {
    /// The model name, so counts can be filtered without reading the sample's record.
    pub model: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skip>,
    /// The latest label: current when labelled, in review or accepted; the previous attempt when sent back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<LabelRecord>,
    /// A reviewer's note when sent back; the reason when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl SampleState {
    pub fn new(model: &str, now: OffsetDateTime) -> SampleState {
        SampleState {
            model: model.to_string(),
            status: Status::Queued,
            skipped: Vec::new(),
            label: None,
            note: None,
            updated_at: now,
        }
    }

    /// The state's name at `now` (an expired claim is `queued`).
    pub fn name(&self, now: OffsetDateTime) -> StateName {
        match &self.status {
            Status::Queued => StateName::Queued,
            Status::Claimed { until, .. } if *until <= now => StateName::Queued,
            Status::Claimed { .. } => StateName::Claimed,
            Status::Review => StateName::Review,
            Status::Labelled => StateName::Labelled,
            Status::Accepted { .. } => StateName::Accepted,
            Status::Rejected { .. } => StateName::Rejected,
        }
    }

    /// Whether the sample can never move again (its index entries can go).
    pub fn is_final(&self) -> bool {
        matches!(self.status, Status::Accepted { .. } | Status::Rejected { .. })
    }

    /// Whether `annotator` may claim it at `now`: queued (or an expired claim) and not skipped by them lately.
    pub fn claimable_by(&self, annotator: &str, now: OffsetDateTime) -> bool {
        self.name(now) == StateName::Queued && !self.skipped.iter().any(|s| s.annotator == annotator && s.until > now)
    }

    /// The state after `annotator` claimed it until `until`.
    pub fn claim(
        &self,
        annotator: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<SampleState, QueueError> {
        if !self.claimable_by(annotator, now) {
            return Err(QueueError::WrongState { state: self.name(now), action: "claim" });
        }
        Ok(self.moved(Status::Claimed { annotator: annotator.to_string(), until }, now))
    }

    /// Succeeds when `annotator` holds the latest claim (expired or not: see the module notes).
    pub fn check_holder(&self, annotator: &str) -> Result<(), QueueError> {
        match &self.status {
            Status::Claimed { annotator: holder, .. } if holder == annotator => Ok(()),
            Status::Claimed { annotator: holder, .. } => {
                Err(QueueError::LeaseLost { annotator: annotator.to_string(), holder: Some(holder.clone()) })
            }
            Status::Queued => Err(QueueError::LeaseLost { annotator: annotator.to_string(), holder: None }),
            other => Err(QueueError::WrongState { state: name_of(other), action: "work on" }),
        }
    }

    /// The holder extends the lease to `until`.
    pub fn renew(
        &self,
        annotator: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<SampleState, QueueError> {
        self.check_holder(annotator)?;
        Ok(self.moved(Status::Claimed { annotator: annotator.to_string(), until }, now))
    }

    /// The holder's label: to review when the review step is on, labelled otherwise.
    pub fn submit(&self, label: LabelRecord, review: bool, now: OffsetDateTime) -> Result<SampleState, QueueError> {
        self.check_holder(&label.by)?;
        Ok(self.labelled(label, review, now))
    }

    /// A label from outside (an import): allowed in any state but the final ones; overrides a lease.
    pub fn import(&self, label: LabelRecord, review: bool, now: OffsetDateTime) -> Result<SampleState, QueueError> {
        if self.is_final() {
            return Err(QueueError::WrongState { state: name_of(&self.status), action: "import a label into" });
        }
        Ok(self.labelled(label, review, now))
    }

    fn labelled(&self, label: LabelRecord, review: bool, now: OffsetDateTime) -> SampleState {
        let mut next = self.moved(if review { Status::Review } else { Status::Labelled }, now);
        next.label = Some(label);
        next.note = None;
        next
    }

    /// The holder gives it back; it is not offered to them again before `cooldown_until`.
    pub fn skip(
        &self,
        annotator: &str,
        cooldown_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<SampleState, QueueError> {
        self.check_holder(annotator)?;
        let mut next = self.moved(Status::Queued, now);
        next.skipped.retain(|s| s.until > now && s.annotator != annotator);
        next.skipped.push(Skip { annotator: annotator.to_string(), until: cooldown_until });
        let excess = next.skipped.len().saturating_sub(MAX_SKIPS);
        next.skipped.drain(..excess);
        Ok(next)
    }

    /// The holder marks it unusable.
    pub fn reject(&self, annotator: &str, reason: &str, now: OffsetDateTime) -> Result<SampleState, QueueError> {
        self.check_holder(annotator)?;
        let mut next = self.moved(Status::Rejected { by: annotator.to_string() }, now);
        next.note = (!reason.is_empty()).then(|| reason.to_string());
        Ok(next)
    }

    /// A reviewer's verdict on a label in review; nobody reviews their own label.
    pub fn review(
        &self,
        reviewer: &str,
        decision: &ReviewDecision,
        now: OffsetDateTime,
    ) -> Result<SampleState, QueueError> {
        if self.status != Status::Review {
            return Err(QueueError::WrongState { state: name_of(&self.status), action: "review" });
        }
        if self.label.as_ref().is_some_and(|l| l.by == reviewer) {
            return Err(QueueError::SelfReview { reviewer: reviewer.to_string() });
        }
        Ok(match decision {
            ReviewDecision::Accept => self.moved(Status::Accepted { reviewer: reviewer.to_string() }, now),
            ReviewDecision::SendBack { note } => {
                let mut next = self.moved(Status::Queued, now);
                next.note = (!note.is_empty()).then(|| note.clone());
                next
            }
        })
    }

    fn moved(&self, status: Status, now: OffsetDateTime) -> SampleState {
        let mut next = self.clone();
        next.status = status;
        next.updated_at = now;
        next.skipped.retain(|s| s.until > now);
        next
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, QueueError> {
        serde_json::to_vec(self).map_err(|e| QueueError::Corrupt(e.to_string()))
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<SampleState, QueueError> {
        serde_json::from_slice(bytes).map_err(|e| QueueError::Corrupt(e.to_string()))
    }
}

/// The name of a status regardless of time (an expired claim is still `claimed` here).
fn name_of(status: &Status) -> StateName {
    match status {
        Status::Queued => StateName::Queued,
        Status::Claimed { .. } => StateName::Claimed,
        Status::Review => StateName::Review,
        Status::Labelled => StateName::Labelled,
        Status::Accepted { .. } => StateName::Accepted,
        Status::Rejected { .. } => StateName::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use super::*;
    use crate::annotate::label::{Label, LabelSource};

    const T0: OffsetDateTime = datetime!(2026-11-21 10:00 UTC);

    fn label(by: &str) -> LabelRecord {
        LabelRecord {
            label: Label::Classify { class: "dent".into() },
            by: by.into(),
            at: T0,
            source: LabelSource::Annotator,
        }
    }

    fn claimed(by: &str) -> SampleState {
        SampleState::new("m", T0).claim(by, T0 + Duration::minutes(10), T0).expect("claim")
    }

    #[test]
    fn a_claim_expires_back_into_the_queue() {
        let s = claimed("ann");
        assert_eq!(s.name(T0 + Duration::minutes(9)), StateName::Claimed);
        assert!(!s.claimable_by("bob", T0 + Duration::minutes(9)));
        assert_eq!(s.name(T0 + Duration::minutes(10)), StateName::Queued);
        let taken = s.claim("bob", T0 + Duration::minutes(30), T0 + Duration::minutes(10)).expect("taken over");
        assert!(matches!(taken.check_holder("ann"), Err(QueueError::LeaseLost { holder: Some(h), .. }) if h == "bob"));
        // Until someone takes it over, the holder may still finish.
        assert!(s.submit(label("ann"), false, T0 + Duration::hours(1)).is_ok());
    }

    #[test]
    fn only_the_holder_works_on_a_claim() {
        let s = claimed("ann");
        assert!(matches!(s.submit(label("bob"), false, T0), Err(QueueError::LeaseLost { .. })));
        assert!(matches!(s.skip("bob", T0, T0), Err(QueueError::LeaseLost { .. })));
        assert!(matches!(s.reject("bob", "", T0), Err(QueueError::LeaseLost { .. })));
        let queued = SampleState::new("m", T0);
        assert!(matches!(queued.submit(label("ann"), false, T0), Err(QueueError::LeaseLost { holder: None, .. })));
        let done = s.submit(label("ann"), false, T0).expect("submit");
        assert_eq!(done.name(T0), StateName::Labelled);
        assert!(matches!(done.submit(label("ann"), false, T0), Err(QueueError::WrongState { .. })));
    }

    #[test]
    fn a_skip_keeps_the_sample_from_the_same_annotator_for_a_while() {
        let later = T0 + Duration::hours(24);
        let s = claimed("ann").skip("ann", later, T0).expect("skip");
        assert_eq!(s.name(T0), StateName::Queued);
        assert!(!s.claimable_by("ann", T0 + Duration::hours(1)));
        assert!(s.claimable_by("bob", T0 + Duration::hours(1)));
        assert!(s.claimable_by("ann", later));
        // Skips by many annotators stay bounded.
        let mut s = s;
        for i in 0..100 {
            let who = format!("a{i}");
            s = s.claim(&who, later, T0).and_then(|c| c.skip(&who, later, T0)).expect("skip");
        }
        assert_eq!(s.skipped.len(), MAX_SKIPS);
    }

    #[test]
    fn review_accepts_or_sends_back_never_by_the_labeller() {
        let in_review = claimed("ann").submit(label("ann"), true, T0).expect("submit");
        assert_eq!(in_review.name(T0), StateName::Review);
        assert!(matches!(in_review.review("ann", &ReviewDecision::Accept, T0), Err(QueueError::SelfReview { .. })));
        let accepted = in_review.review("rev", &ReviewDecision::Accept, T0).expect("accept");
        assert_eq!(accepted.name(T0), StateName::Accepted);
        assert!(accepted.is_final());
        assert!(matches!(accepted.import(label("x"), false, T0), Err(QueueError::WrongState { .. })));
        let back =
            in_review.review("rev", &ReviewDecision::SendBack { note: "box too loose".into() }, T0).expect("back");
        assert_eq!(back.name(T0), StateName::Queued);
        assert_eq!(back.note.as_deref(), Some("box too loose"));
        assert_eq!(back.label, in_review.label, "the previous attempt stays visible");
        assert!(matches!(back.review("rev", &ReviewDecision::Accept, T0), Err(QueueError::WrongState { .. })));
    }

    #[test]
    fn rejected_is_final_and_imports_override_leases() {
        let rejected = claimed("ann").reject("ann", "blurred", T0).expect("reject");
        assert_eq!((rejected.name(T0), rejected.note.as_deref()), (StateName::Rejected, Some("blurred")));
        assert!(rejected.import(label("admin"), false, T0).is_err());
        let imported = claimed("ann").import(label("admin"), false, T0).expect("import");
        assert_eq!(imported.name(T0), StateName::Labelled);
    }

    #[test]
    fn the_stored_form_round_trips() {
        let s = claimed("ann").skip("ann", T0 + Duration::hours(1), T0).expect("skip");
        let again = SampleState::decode(&s.encode().expect("encode")).expect("decode");
        assert_eq!(again, s);
        assert!(SampleState::decode(br#"{"model":"m","status":{"state":"queued"},"updated_at":"x"}"#).is_err());
    }
}
