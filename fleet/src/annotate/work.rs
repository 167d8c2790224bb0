//! The lease holder's, the reviewer's and an import's transitions, with the index upkeep around them.

use outpost_common::manifest::Sha256Sum;
use time::{Duration, OffsetDateTime};

use super::keys::{self, LABELS, QUEUE, REVIEW, STATE};
use super::queue::{check_id, put_queue_entry, queue_key};
use super::{Label, LabelRecord, LabelSource, Queue, QueueError, ReviewDecision, SampleState, SampleView, Status};
use crate::samples::SampleRecord;

/// Compare-and-swap attempts before a transition gives up with `Busy`.
const CAS_ATTEMPTS: usize = 8;
/// Longest reviewer note or rejection reason.
const MAX_NOTE: usize = 2000;

fn in_queue(status: &Status) -> bool {
    matches!(status, Status::Queued | Status::Claimed { .. })
}

fn check_note(note: &str) -> Result<(), QueueError> {
    if note.len() > MAX_NOTE {
        return Err(QueueError::Invalid(format!("a note is at most {MAX_NOTE} bytes")));
    }
    Ok(())
}

impl Queue {
    /// Applies `change` to the sample's state with compare-and-swap, re-reading and re-deciding when another
    /// writer got there first. Index entries the new state needs are written before the swap, those it ends are
    /// removed after; then one flush.
    fn transition(
        &self,
        record: &SampleRecord,
        now: OffsetDateTime,
        change: impl Fn(&SampleState) -> Result<SampleState, QueueError>,
    ) -> Result<SampleState, QueueError> {
        let sample = record.sample();
        for _ in 0..CAS_ATTEMPTS {
            let Some((old_bytes, old)) = self.load_state(&sample)? else {
                // A record without a state: an intake was cut off before queueing it. Queue it, then go on.
                super::enqueue(self.store(), record, now)?;
                continue;
            };
            let new = change(&old)?;
            let review_key = keys::review_key(&record.meta.model.name, &sample);
            if in_queue(&new.status) && !in_queue(&old.status) {
                put_queue_entry(self.store(), record)?;
            }
            if new.status == Status::Review && old.status != Status::Review {
                self.store().put(REVIEW, &review_key, b"")?;
            }
            if self.store().compare_and_swap(STATE, &sample.0, Some(&old_bytes), Some(&new.encode()?))? {
                if !in_queue(&new.status) {
                    self.store().remove(QUEUE, &queue_key(record))?;
                }
                if new.status != Status::Review {
                    self.store().remove(REVIEW, &review_key)?;
                }
                self.store().flush()?;
                return Ok(new);
            }
        }
        Err(QueueError::Busy { attempts: CAS_ATTEMPTS })
    }

    /// The holder extends their lease to `now + lease`.
    pub fn renew(&self, sample: &Sha256Sum, annotator: &str, now: OffsetDateTime) -> Result<SampleView, QueueError> {
        check_id("annotator", annotator)?;
        let record = self.record(sample)?;
        let until = self.lease_until(now);
        let state = self.transition(&record, now, |s| s.renew(annotator, until, now))?;
        Ok(SampleView::new(&record, &state, now))
    }

    /// The holder's label, checked against the sample's task and size and the model's classes. The sample
    /// becomes `labelled`, or `review` when the review step is on.
    pub fn submit(
        &self,
        sample: &Sha256Sum,
        annotator: &str,
        label: Label,
        now: OffsetDateTime,
    ) -> Result<SampleView, QueueError> {
        check_id("annotator", annotator)?;
        let record = self.record(sample)?;
        self.check_label(&record, &label)?;
        let label = LabelRecord { label, by: annotator.to_string(), at: now, source: LabelSource::Annotator };
        let review = self.config.review;
        let state = self.transition(&record, now, |s| s.submit(label.clone(), review, now))?;
        tracing::info!(sample = %sample, annotator, state = %state.name(now), "label submitted");
        Ok(SampleView::new(&record, &state, now))
    }

    /// The holder passes: back to the queue, not offered to them again for the skip cool-down.
    pub fn skip(&self, sample: &Sha256Sum, annotator: &str, now: OffsetDateTime) -> Result<SampleView, QueueError> {
        check_id("annotator", annotator)?;
        let record = self.record(sample)?;
        let seconds = i64::try_from(self.config.skip_cooldown_secs).unwrap_or(i64::MAX);
        let cooldown = now.saturating_add(Duration::seconds(seconds));
        let state = self.transition(&record, now, |s| s.skip(annotator, cooldown, now))?;
        tracing::info!(sample = %sample, annotator, "sample skipped");
        Ok(SampleView::new(&record, &state, now))
    }

    /// The holder marks the sample unusable; it leaves the queue for good.
    pub fn reject(
        &self,
        sample: &Sha256Sum,
        annotator: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<SampleView, QueueError> {
        check_id("annotator", annotator)?;
        check_note(reason)?;
        let record = self.record(sample)?;
        let state = self.transition(&record, now, |s| s.reject(annotator, reason, now))?;
        tracing::info!(sample = %sample, annotator, "sample rejected");
        Ok(SampleView::new(&record, &state, now))
    }

    /// A reviewer accepts a label in review, or sends it back to the queue with a note.
    pub fn review(
        &self,
        sample: &Sha256Sum,
        reviewer: &str,
        decision: &ReviewDecision,
        now: OffsetDateTime,
    ) -> Result<SampleView, QueueError> {
        check_id("reviewer", reviewer)?;
        if let ReviewDecision::SendBack { note } = decision {
            check_note(note)?;
        }
        let record = self.record(sample)?;
        let state = self.transition(&record, now, |s| s.review(reviewer, decision, now))?;
        tracing::info!(sample = %sample, reviewer, state = %state.name(now), "label reviewed");
        Ok(SampleView::new(&record, &state, now))
    }

    /// A label from outside the queue (an import), checked like a submitted one. Any state but accepted and
    /// rejected; a lease is overridden. The sample becomes `labelled`, or `review` when the review step is on.
    pub fn import_label(
        &self,
        sample: &Sha256Sum,
        label: Label,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<SampleView, QueueError> {
        check_id("importer", by)?;
        let record = self.record(sample)?;
        self.check_label(&record, &label)?;
        let label = LabelRecord { label, by: by.to_string(), at: now, source: LabelSource::Import };
        let review = self.config.review;
        let state = self.transition(&record, now, |s| s.import(label.clone(), review, now))?;
        Ok(SampleView::new(&record, &state, now))
    }

    /// Checks a label against the sample and the model's classes, and records those classes for exports.
    fn check_label(&self, record: &SampleRecord, label: &Label) -> Result<(), QueueError> {
        let model = &record.meta.model;
        let names = self.catalog.labels(model).ok_or_else(|| QueueError::UnknownModel { model: model.clone() })?;
        label
            .validate(record.task(), record.meta.width, record.meta.height, &names)
            .map_err(QueueError::InvalidLabel)?;
        let key = keys::labels_key(&model.name, model.version);
        let value = serde_json::to_vec(&names).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        if self.store().get(LABELS, &key)?.as_deref() != Some(value.as_slice()) {
            self.store().put(LABELS, &key, &value)?;
        }
        Ok(())
    }
}
