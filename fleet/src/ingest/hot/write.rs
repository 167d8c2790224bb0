//! How the working set reaches the store: the flush (journal records, and devices changed other than by a window,
//! whole), the checkpoint (every record, and the journal it covers deleted), both one atomic batch, and the replay
//! of the journal after a restart. See the module documentation of `hot.rs` for the design.

use std::sync::atomic::Ordering;
use std::time::Instant;

use outpost_common::protocol::ModelRef;
use outpost_common::store::{Store, Write};
use outpost_common::topics::DeviceId;

use super::{CACHED_HOURS, CHECKPOINT_EVERY, CHECKPOINT_PENDING, DeviceHot, Dirty, Hot, lock};
use crate::ingest::dedupe::Seen;
use crate::ingest::error::IngestError;
use crate::ingest::journal;
use crate::ingest::keys::{self, HOUR_MS};
use crate::ingest::record;
use crate::ingest::series::SeriesEntry;
use crate::ingest::{JOURNAL, JOURNAL_DAMAGED, ROLLUPS, SERIES, TALLIES, WINDOWS};

/// What one flush at a time keeps: where the journal stands, and when the last checkpoint was.
#[derive(Debug)]
pub(super) struct Flushing {
    /// The number of the next journal record.
    pub(super) next: u64,
    /// The first journal record no checkpoint covers: records `first..next` are in the store.
    pub(super) first: u64,
    pub(super) last_checkpoint: Instant,
}

/// What a write covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The journal, and the devices changed other than by a window.
    Journal,
    /// Every change: a checkpoint.
    All,
}

/// What [`Hot::replay`] found in the journal.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub(crate) records: u64,
    /// Windows taken again (not written by the last checkpoint).
    pub(crate) windows: u64,
    /// Windows a checkpoint had written already.
    pub(crate) duplicates: u64,
    /// Unreadable records, moved to their own tree.
    pub(crate) damaged: u64,
}

impl Hot {
    /// Makes everything taken so far durable, in one atomic batch: the windows as journal records, and the devices
    /// changed other than by a window whole. Checkpoints instead when one is due ([`CHECKPOINT_EVERY`],
    /// [`CHECKPOINT_PENDING`]). On failure nothing is lost: what was taken out to be written goes back and is
    /// written by the next flush.
    pub(crate) fn flush(&self, store: &dyn Store) -> Result<(), IngestError> {
        let mut flushing = lock(&self.flushing);
        let due = flushing.last_checkpoint.elapsed() >= CHECKPOINT_EVERY
            || self.pending.load(Ordering::Relaxed) >= CHECKPOINT_PENDING;
        self.write(store, &mut flushing, if due { Scope::All } else { Scope::Journal })
    }

    /// Writes everything changed since the last checkpoint to its records and deletes the journal records this
    /// covers, in one atomic batch. On failure nothing is lost, as for [`Hot::flush`].
    pub(crate) fn checkpoint(&self, store: &dyn Store) -> Result<(), IngestError> {
        let mut flushing = lock(&self.flushing);
        self.write(store, &mut flushing, Scope::All)
    }

    fn write(&self, store: &dyn Store, flushing: &mut Flushing, scope: Scope) -> Result<(), IngestError> {
        let mut batch = Vec::new();
        // Per device: the version written, and what was taken out of memory (to put back on failure).
        let mut taken: Vec<(usize, DeviceId, u64, Taken)> = Vec::new();
        // Per shard: the journal records taken, with the state of its devices drained under the same lock.
        let mut journals: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
        let mut failed = None;
        'shards: for (index, shard) in self.shards.iter().enumerate() {
            let mut guard = lock(shard);
            let shard = &mut *guard;
            if !shard.journal.is_empty() {
                journals.push((index, shard.journal.take()));
            }
            for (id, hot) in shard.devices.iter_mut() {
                if scope == Scope::Journal && hot.urgent.is_none() {
                    continue;
                }
                let before = batch.len();
                match drain(id, hot, &mut batch) {
                    Ok(t) if batch.len() > before => taken.push((index, id.clone(), hot.version, t)),
                    Ok(_) => {}
                    Err(e) => {
                        failed = Some(e);
                        break 'shards;
                    }
                }
            }
        }
        if let Some(e) = failed {
            self.put_back(taken, journals);
            return Err(e);
        }
        let mut next = flushing.next;
        match scope {
            // The records in the store and the entries taken above are all covered by this batch.
            Scope::All => batch.extend((flushing.first..flushing.next).map(|n| Write {
                tree: JOURNAL,
                key: journal::key(n).into(),
                value: None,
            })),
            Scope::Journal => {
                for record in journals.iter().flat_map(|(_, records)| records) {
                    batch.push(put(JOURNAL, journal::key(next).into(), record.clone()));
                    next += 1;
                }
            }
        }
        if batch.is_empty() {
            if scope == Scope::All {
                flushing.last_checkpoint = Instant::now();
            }
            return Ok(());
        }
        let written: usize = taken.iter().flat_map(|t| &t.3.chunks).map(|(_, _, n)| n).sum();
        match store.apply(&batch) {
            Ok(()) => {
                match scope {
                    Scope::All => {
                        flushing.first = flushing.next;
                        flushing.last_checkpoint = Instant::now();
                    }
                    Scope::Journal => flushing.next = next,
                }
                self.no_longer_pending(written);
                for (index, id, version, taken) in taken {
                    let mut shard = lock(&self.shards[index]);
                    if let Some(hot) = shard.devices.get_mut(&id) {
                        written_up_to(hot, version, &taken);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.put_back(taken, journals);
                Err(e.into())
            }
        }
    }

    /// Returns what a failed write took out of memory, to be written by the next one.
    fn put_back(&self, taken: Vec<(usize, DeviceId, u64, Taken)>, journals: Vec<(usize, Vec<Vec<u8>>)>) {
        for (index, id, _, taken) in taken {
            let mut shard = lock(&self.shards[index]);
            if let Some(hot) = shard.devices.get_mut(&id) {
                put_back(hot, taken);
            }
        }
        for (index, records) in journals {
            lock(&self.shards[index]).journal.put_back(records);
        }
    }

    /// After a restart, before any message: takes the journal's windows again (the ones the last checkpoint wrote
    /// are duplicates and change nothing), moves unreadable records to their own tree (logged; nothing else is
    /// lost), then checkpoints, which empties the journal. An error (the store failing) leaves the journal as it
    /// was, to be replayed by the next start.
    pub(crate) fn replay(&self, store: &dyn Store) -> Result<Replayed, IngestError> {
        let mut flushing = lock(&self.flushing);
        let mut replayed = Replayed::default();
        let mut after: Option<Vec<u8>> = None;
        let mut numbered = false;
        loop {
            let page = store.scan(JOURNAL, after.as_deref(), 16)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, value) in &page {
                let number = journal::number(key);
                if let Some(n) = number {
                    if !numbered {
                        flushing.first = n;
                        numbered = true;
                    }
                    flushing.next = n.saturating_add(1);
                }
                replayed.records += 1;
                match journal::read(value) {
                    Ok(entries) => {
                        for (device, w) in entries {
                            match self.take_window(store, &device, w.seq, &w.window, w.received_at)? {
                                Seen::New => replayed.windows += 1,
                                _ => replayed.duplicates += 1,
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(
                            record = ?number,
                            error = %e,
                            tree = JOURNAL_DAMAGED,
                            "unreadable journal record moved aside; its windows are not replayed"
                        );
                        store.put(JOURNAL_DAMAGED, key, value)?;
                        if number.is_none() {
                            store.remove(JOURNAL, key)?;
                        }
                        replayed.damaged += 1;
                    }
                }
            }
        }
        self.write(store, &mut flushing, Scope::All)?;
        Ok(replayed)
    }
}

/// What a write took from a device: the index entries it writes (not written again unless the batch fails),
/// and the windows of each chunk it writes.
#[derive(Debug, Default)]
pub(super) struct Taken {
    indexed: Vec<ModelRef>,
    chunks: Vec<(ModelRef, (i64, u64), usize)>,
}

fn put_back(hot: &mut DeviceHot, taken: Taken) {
    for model in taken.indexed {
        if let Some(series) = hot.series_mut(&model) {
            series.indexed = false;
        }
    }
}

/// Adds a device's changes to the batch: its tally if dirty, its dirty roll-ups, new index entries, and its
/// changed chunks, whole. Dirty marks are cleared once the batch is written ([`written_up_to`]). Chunks that did not
/// change since the last flush are dropped from memory: the store has them.
///
/// Everything that can fail (encoding) comes first, so a failure leaves the device as it was.
pub(super) fn drain(id: &DeviceId, hot: &mut DeviceHot, batch: &mut Vec<Write>) -> Result<Taken, IngestError> {
    let mut writes = Vec::new();
    for series in &hot.series {
        if !series.indexed && series.has_unwritten() {
            let entry = SeriesEntry { device: id.clone(), model: series.model.clone() };
            writes.push(put(SERIES, keys::series_index(&series.model, id), record::encode(&entry, "series")?));
        }
        for (hour, (rollup, dirty)) in &series.rollups {
            if dirty.is_some() {
                writes.push(put(ROLLUPS, keys::timed(&series.prefix, *hour), record::encode(rollup, "rollup")?));
            }
        }
    }
    if hot.tally_dirty.is_some() {
        writes.push(put(TALLIES, keys::device(id), record::encode(&hot.tally, "tally")?));
    }
    let mut taken = Taken::default();
    for series in &mut hot.series {
        if !series.indexed && series.has_unwritten() {
            series.indexed = true;
            taken.indexed.push(series.model.clone());
        }
        series.chunks.retain(|_, c| c.dirty.is_some());
        for (&(hour, first), c) in &series.chunks {
            writes.push(put(WINDOWS, keys::window(&series.prefix, hour, first), c.chunk.record()));
            taken.chunks.push((series.model.clone(), (hour, first), c.unwritten));
        }
    }
    batch.append(&mut writes);
    Ok(taken)
}

/// After a batch with the device's state at `version` was written: clears the marks of what it wrote (a record
/// changed again since stays marked, for the next flush), and forgets clean roll-ups of hours long past.
pub(super) fn written_up_to(hot: &mut DeviceHot, version: u64, taken: &Taken) {
    let clean = |dirty: &mut Dirty| {
        if dirty.is_some_and(|v| v <= version) {
            *dirty = None;
        }
    };
    for (model, key, written) in &taken.chunks {
        if let Some(c) = hot.series_mut(model).and_then(|s| s.chunks.get_mut(key)) {
            c.unwritten = c.unwritten.saturating_sub(*written);
            clean(&mut c.dirty);
        }
    }
    for series in &mut hot.series {
        let newest = series.rollups.keys().next_back().copied().unwrap_or(i64::MIN);
        series.rollups.retain(|hour, (_, dirty)| {
            clean(dirty);
            dirty.is_some() || *hour >= newest.saturating_sub(CACHED_HOURS * HOUR_MS)
        });
    }
    clean(&mut hot.tally_dirty);
    clean(&mut hot.urgent);
}

fn put(tree: &'static str, key: Vec<u8>, value: Vec<u8>) -> Write {
    Write { tree, key, value: Some(value) }
}
