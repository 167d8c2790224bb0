//! [`Queue`]: the store edge of the annotation queue — claims, views, counts and the indexes.

use std::collections::HashMap;
use std::sync::Arc;

use outpost_common::manifest::Sha256Sum;
use outpost_common::store::{Store, StoreError};
use time::{Duration, OffsetDateTime};

use super::keys::{self, BUCKETS, LABELS, QUEUE, QueueEntry, REVIEW, STATE};
use super::order::{self, Bucket, Candidate};
use super::{Catalog, Counts, Fetched, QueueConfig, QueueError, SampleState, SampleView, StateName};
use crate::samples::{Image, SampleRecord, Samples};

/// Store pages are read this many entries at a time.
const PAGE: usize = 256;
/// The hard ceiling on one claim, whatever the configuration says.
const CLAIM_CEILING: usize = 1000;
/// Longest annotator, reviewer or importer id.
const MAX_ID: usize = 128;

/// The annotators' queue. Cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct Queue {
    pub(super) samples: Samples,
    pub(super) catalog: Arc<dyn Catalog>,
    pub(super) config: QueueConfig,
}

/// Queues a newly stored sample (intake calls this). Returns whether it was queued now; `false` when it already
/// had a state. The index entry goes in before the state, so a queued sample always has one.
pub(crate) fn enqueue(store: &dyn Store, record: &SampleRecord, now: OffsetDateTime) -> Result<bool, StoreError> {
    let sample = record.sample();
    if store.get(STATE, &sample.0)?.is_some() {
        return Ok(false);
    }
    put_queue_entry(store, record)?;
    let state = serde_json::to_vec(&SampleState::new(&record.meta.model.name, now))
        .map_err(|e| StoreError::Io(format!("encoding a sample state: {e}")))?;
    store.compare_and_swap(STATE, &sample.0, None, Some(&state))
}

pub(super) fn put_queue_entry(store: &dyn Store, record: &SampleRecord) -> Result<(), StoreError> {
    let entry = QueueEntry {
        class: record.predicted_class().unwrap_or_default().to_string(),
        device: record.meta.device.clone(),
    };
    let value = serde_json::to_vec(&entry).map_err(|e| StoreError::Io(format!("encoding a queue entry: {e}")))?;
    store.put(QUEUE, &queue_key(record), &value)
}

pub(super) fn queue_key(record: &SampleRecord) -> Vec<u8> {
    keys::queue_key(&record.meta.model.name, keys::rank(record.meta.confidence.headline()), &record.sample())
}

pub(super) fn check_id(what: &str, id: &str) -> Result<(), QueueError> {
    if id.is_empty() || id.len() > MAX_ID || id.chars().any(char::is_control) {
        return Err(QueueError::Invalid(format!("{what} must be 1 to {MAX_ID} bytes without control characters")));
    }
    Ok(())
}

/// A claimable sample as a claim found it: the state bytes it must swap from.
struct Found {
    old: Vec<u8>,
    state: SampleState,
}

impl Queue {
    pub fn new(samples: Samples, catalog: Arc<dyn Catalog>, config: QueueConfig) -> Queue {
        Queue { samples, catalog, config }
    }

    pub fn samples(&self) -> &Samples {
        &self.samples
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    pub(super) fn store(&self) -> &dyn Store {
        self.samples.store()
    }

    pub(super) fn record(&self, sample: &Sha256Sum) -> Result<SampleRecord, QueueError> {
        self.samples.get(sample)?.ok_or(QueueError::NotFound(*sample))
    }

    pub(super) fn lease_until(&self, now: OffsetDateTime) -> OffsetDateTime {
        now.saturating_add(Duration::seconds(i64::try_from(self.config.lease_secs).unwrap_or(i64::MAX)))
    }

    /// Claims up to `count` samples of `model` for `annotator` until `now + lease`, in the order of
    /// [`order`](super::order) (least confident first, round-robin over (class, site) buckets). Never hands one
    /// sample to two claimers: each claim is a compare-and-swap from the state it read.
    pub fn claim(
        &self,
        model: &str,
        annotator: &str,
        count: usize,
        now: OffsetDateTime,
    ) -> Result<Vec<SampleView>, QueueError> {
        check_id("annotator", annotator)?;
        let count = count.min(self.config.max_claim).min(CLAIM_CEILING);
        if count == 0 {
            return Ok(Vec::new());
        }
        let candidates = self.claimable(model, annotator, now)?;
        let served = self.last_served(model)?;
        let mut turn = served.values().copied().max().unwrap_or(0);
        let until = self.lease_until(now);
        let mut claimed = Vec::with_capacity(count);
        let mut newly_served: HashMap<Bucket, u64> = HashMap::new();
        for candidate in order::plan(candidates, &served) {
            if claimed.len() == count {
                break;
            }
            let Found { old, state } = candidate.item;
            let Ok(next) = state.claim(annotator, until, now) else { continue };
            if !self.store().compare_and_swap(STATE, &candidate.sample.0, Some(&old), Some(&next.encode()?))? {
                continue; // Someone else claimed (or changed) it since we read it.
            }
            turn = turn.saturating_add(1);
            newly_served.insert(candidate.bucket, turn);
            claimed.push((candidate.sample, next));
        }
        for (bucket, turn) in &newly_served {
            self.store().put(BUCKETS, &keys::bucket_key(model, &bucket.class, &bucket.site), &turn.to_be_bytes())?;
        }
        self.store().flush()?;
        let views = claimed
            .iter()
            .map(|(sample, state)| Ok(SampleView::new(&self.record(sample)?, state, now)))
            .collect::<Result<Vec<_>, QueueError>>()?;
        tracing::info!(model, annotator, requested = count, claimed = views.len(), "samples claimed");
        Ok(views)
    }

    /// The claimable samples among the model's `window` least confident queue entries.
    fn claimable(
        &self,
        model: &str,
        annotator: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<Candidate<Found>>, QueueError> {
        let prefix = keys::model_prefix(model);
        let mut found = Vec::new();
        let mut examined = 0usize;
        let mut after: Option<Vec<u8>> = None;
        while examined < self.config.window {
            let limit = PAGE.min(self.config.window - examined);
            let page = self.store().scan_prefix(QUEUE, &prefix, after.as_deref(), limit)?;
            if page.is_empty() {
                break;
            }
            examined += page.len();
            for (key, value) in page {
                let parsed = keys::parse_queue_key(&key, prefix.len());
                let entry = serde_json::from_slice::<QueueEntry>(&value).ok();
                let (Some((rank, sample)), Some(entry)) = (parsed, entry) else {
                    tracing::warn!(model, "unreadable queue entry removed");
                    self.store().remove(QUEUE, &key)?;
                    after = Some(key);
                    continue;
                };
                // No state yet: an intake is between its index write and its state write.
                if let Some(old) = self.store().get(STATE, &sample.0)? {
                    let state = match SampleState::decode(&old) {
                        Ok(state) => state,
                        Err(e) => {
                            // One bad record must not stop every claim; counts and exports still report it.
                            tracing::warn!(sample = %sample, error = %e, "unreadable sample state skipped");
                            after = Some(key);
                            continue;
                        }
                    };
                    if state.is_final() {
                        self.store().remove(QUEUE, &key)?;
                    } else if state.claimable_by(annotator, now) {
                        let site = self.catalog.site(&entry.device).unwrap_or_default();
                        let bucket = Bucket { class: entry.class, site };
                        found.push(Candidate { rank, sample, bucket, item: Found { old, state } });
                    }
                }
                after = Some(key);
            }
        }
        Ok(found)
    }

    fn last_served(&self, model: &str) -> Result<HashMap<Bucket, u64>, QueueError> {
        let prefix = keys::model_prefix(model);
        let mut served = HashMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store().scan_prefix(BUCKETS, &prefix, after.as_deref(), PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, value) in page {
                let turn = value.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
                if let Some((class, site)) = keys::parse_bucket_key(&key, prefix.len()) {
                    served.insert(Bucket { class, site }, turn);
                }
            }
        }
        Ok(served)
    }

    pub(super) fn load_state(&self, sample: &Sha256Sum) -> Result<Option<(Vec<u8>, SampleState)>, QueueError> {
        match self.store().get(STATE, &sample.0)? {
            Some(bytes) => {
                let state = SampleState::decode(&bytes)?;
                Ok(Some((bytes, state)))
            }
            None => Ok(None),
        }
    }

    /// A sample with its annotation state.
    pub fn view(&self, sample: &Sha256Sum, now: OffsetDateTime) -> Result<SampleView, QueueError> {
        let record = self.record(sample)?;
        let state = match self.load_state(sample)? {
            Some((_, state)) => state,
            None => SampleState::new(&record.meta.model.name, now),
        };
        Ok(SampleView::new(&record, &state, now))
    }

    /// A claimed sample with its image and pre-annotations, for its lease holder only.
    pub async fn fetch(&self, sample: &Sha256Sum, annotator: &str, now: OffsetDateTime) -> Result<Fetched, QueueError> {
        let record = self.record(sample)?;
        let (_, state) = self.load_state(sample)?.ok_or(QueueError::NotFound(*sample))?;
        state.check_holder(annotator)?;
        let image = self.samples.image_of(&record).await?;
        Ok(Fetched { view: SampleView::new(&record, &state, now), image })
    }

    /// A sample's image, whatever its state (reviewers, exports).
    pub async fn image(&self, sample: &Sha256Sum) -> Result<Image, QueueError> {
        Ok(self.samples.image(sample).await?)
    }

    /// Samples of `model` waiting for review, in sample-id order after `after`.
    pub fn review_list(
        &self,
        model: &str,
        after: Option<&Sha256Sum>,
        limit: usize,
        now: OffsetDateTime,
    ) -> Result<Vec<SampleView>, QueueError> {
        let prefix = keys::model_prefix(model);
        let mut cursor = after.map(|s| keys::review_key(model, s));
        let mut out = Vec::new();
        while out.len() < limit {
            let page = self.store().scan_prefix(REVIEW, &prefix, cursor.as_deref(), PAGE)?;
            let Some((last, _)) = page.last() else { break };
            cursor = Some(last.clone());
            for (key, _) in page {
                let Some(sample) = keys::parse_review_key(&key, prefix.len()) else { continue };
                let Some((_, state)) = self.load_state(&sample)? else { continue };
                if state.name(now) == StateName::Review && out.len() < limit {
                    out.push(SampleView::new(&self.record(&sample)?, &state, now));
                } else if state.is_final() {
                    self.store().remove(REVIEW, &key)?;
                }
            }
        }
        Ok(out)
    }

    /// How many samples (of `model`, or all) are in each state at `now`. Reads every state: O(samples).
    pub fn counts(&self, model: Option<&str>, now: OffsetDateTime) -> Result<Counts, QueueError> {
        let mut counts = Counts::default();
        self.for_each_state(|_, state| {
            if model.is_none_or(|m| m == state.model) {
                counts.add(state.name(now));
            }
            Ok(())
        })?;
        Ok(counts)
    }

    /// Calls `f` with every sample's state, in sample-id order.
    pub(crate) fn for_each_state(
        &self,
        mut f: impl FnMut(Sha256Sum, SampleState) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store().scan(STATE, after.as_deref(), PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, value) in page {
                let Ok(id) = <[u8; 32]>::try_from(key.as_slice()) else { continue };
                f(Sha256Sum(id), SampleState::decode(&value)?)?;
            }
        }
        Ok(())
    }

    /// Re-creates missing index entries from the states (and states for records without one), for start-up after
    /// a crash or a restore. Returns how many entries it wrote. Never needed for correctness of claims, only so
    /// that nothing queued stays invisible.
    pub fn rebuild_indexes(&self, now: OffsetDateTime) -> Result<usize, QueueError> {
        let mut written = 0usize;
        let mut after: Option<Sha256Sum> = None;
        loop {
            let page = self.samples.list(after.as_ref(), PAGE)?;
            let Some(last) = page.last() else { break };
            after = Some(last.sample());
            for record in page {
                let sample = record.sample();
                if enqueue(self.store(), &record, now)? {
                    written += 1;
                    continue;
                }
                let Some((_, state)) = self.load_state(&sample)? else { continue };
                match state.name(now) {
                    StateName::Queued | StateName::Claimed
                        if self.store().get(QUEUE, &queue_key(&record))?.is_none() =>
                    {
                        put_queue_entry(self.store(), &record)?;
                        written += 1;
                    }
                    StateName::Review => {
                        let key = keys::review_key(&record.meta.model.name, &sample);
                        if self.store().get(REVIEW, &key)?.is_none() {
                            self.store().put(REVIEW, &key, b"")?;
                            written += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
        self.store().flush()?;
        tracing::info!(written, "annotation indexes rebuilt");
        Ok(written)
    }

    /// The class names exports use for `model`: the newest recorded version's names, then any name only older
    /// versions had (newest first). Names are recorded when labels of that version are submitted or imported.
    pub fn class_names(&self, model: &str) -> Result<Vec<String>, QueueError> {
        let prefix = keys::model_prefix(model);
        let mut versions: Vec<Vec<String>> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store().scan_prefix(LABELS, &prefix, after.as_deref(), PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (_, value) in page {
                versions.push(serde_json::from_slice(&value).map_err(|e| QueueError::Corrupt(e.to_string()))?);
            }
        }
        let mut names: Vec<String> = Vec::new();
        for list in versions.iter().rev() {
            for name in list {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        Ok(names)
    }
}
