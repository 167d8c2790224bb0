//! The ingest's working set: each device's de-duplication window and totals, its series' recent hourly roll-ups
//! and the windows not yet written, in memory, written behind in one atomic batch per flush.
//!
//! Design: a window costs a few in-memory updates under its device's shard lock; the store sees one batch per
//! [`Hot::flush`], with one record per touched device (its tally), per touched roll-up, and per touched chunk (a
//! series' raw windows of one hour, packed, rewritten whole until it holds [`CHUNK_BYTES`]) — instead of four to
//! seven records per window. The batch is applied with [`Store::apply`], so after a crash a device's tally,
//! roll-ups and raw windows agree: the seqs marked are exactly the windows stored and the windows the roll-ups
//! count. What a crash loses is what arrived since the last flush, as before, when sled's own buffer (flushed every
//! 500 ms) held the last writes.
//!
//! Invariants:
//! - this process is the only writer of the tallies, roll-ups, raw windows and series index (one process per sled
//!   store, which sled enforces); compaction changes them only under the device's shard lock;
//! - a device's state is read from the store on its first message and is the truth from then on;
//! - readers call [`Hot::flush`] first, so a query sees every message ingested before it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use outpost_common::protocol::{ModelRef, WindowSummary};
use outpost_common::store::{Store, Write};
use outpost_common::topics::DeviceId;
use time::OffsetDateTime;

use super::dedupe::Seen;
use super::devices::Tally;
use super::error::IngestError;
use super::keys::{self, HOUR_MS};
use super::raw::Chunk;
use super::record;
use super::series::{HourlyRollup, SeriesEntry};
use super::{ROLLUPS, SERIES, TALLIES, WINDOWS};

/// Shards of the device map: workers on different devices rarely share a lock.
const SHARDS: usize = 64;
/// Windows held in memory before the ingest call that adds one more flushes them itself (when the service's
/// periodic flush falls behind, or no service runs one).
pub(crate) const MAX_PENDING: usize = 65_536;
/// Roll-ups older than the newest hour of their series by more than this stay cached only while dirty.
const CACHED_HOURS: i64 = 2;
/// A chunk is rewritten whole by each flush until it holds this many bytes; the hour's next window starts a new
/// one. Rewriting a record costs sled a fraction of adding one, so a device that sends a window or two per flush
/// adds a record every few dozen windows instead of every flush.
pub(crate) const CHUNK_BYTES: usize = 8 * 1024;

/// One series (device and model version) in memory.
#[derive(Debug)]
pub(crate) struct SeriesHot {
    pub(crate) model: ModelRef,
    prefix: Vec<u8>,
    /// The index entry is in the store (or in the batch being written).
    indexed: bool,
    /// Recent chunks, by the hour their windows start in and their first seq (their key in the store).
    chunks: BTreeMap<(i64, u64), HotChunk>,
    /// Recent roll-ups by hour, with the device version of their last change while not written since.
    rollups: BTreeMap<i64, (HourlyRollup, Dirty)>,
}

/// `Some(version)`: changed at that device version and not written since.
type Dirty = Option<u64>;

impl SeriesHot {
    /// Whether the series holds anything not in the store yet (compaction must not drop its index entry).
    pub(crate) fn has_unwritten(&self) -> bool {
        self.chunks.values().any(|c| c.dirty.is_some()) || self.rollups.values().any(|(_, dirty)| dirty.is_some())
    }

    /// Marks the cached roll-ups of hours before `cut` as having lost their raw windows (compaction does the same
    /// to the stored ones); they are written with the next flush.
    pub(crate) fn mark_raw_expired_before(&mut self, cut: i64, version: u64) {
        for (rollup, dirty) in self.rollups.range_mut(..cut).map(|(_, r)| r) {
            if !rollup.raw_expired {
                rollup.mark_raw_expired();
                *dirty = Some(version);
            }
        }
    }

    pub(crate) fn forget_rollups_before(&mut self, cut: i64) {
        self.rollups = self.rollups.split_off(&cut);
    }

    /// Drops the chunks of hours before `cut`, written or not (their windows are past retention, and rewriting a
    /// chunk would bring back the windows compaction deleted); returns how many unwritten windows went with them.
    pub(crate) fn forget_chunks_before(&mut self, cut: i64) -> usize {
        let kept = self.chunks.split_off(&(cut, 0));
        let dropped = std::mem::replace(&mut self.chunks, kept);
        dropped.values().map(|c| c.unwritten).sum()
    }

    /// The index entry was deleted: the next window writes it again.
    pub(crate) fn unindexed(&mut self) {
        self.indexed = false;
    }
}

/// A chunk in memory. Each flush that finds it changed writes it whole under its key; a flush that finds it
/// unchanged drops it from memory (the store has it), and so does compaction once its hour expired.
#[derive(Debug)]
pub(crate) struct HotChunk {
    chunk: Chunk,
    dirty: Dirty,
    /// Windows added since it was last written.
    unwritten: usize,
}

/// One device in memory.
#[derive(Debug)]
pub(crate) struct DeviceHot {
    tally: Tally,
    tally_dirty: Dirty,
    series: Vec<SeriesHot>,
    /// Bumped by every change: what a flush wrote is clean only if it did not change again since.
    version: u64,
}

impl DeviceHot {
    pub(crate) fn series_mut(&mut self, model: &ModelRef) -> Option<&mut SeriesHot> {
        self.series.iter_mut().find(|s| &s.model == model)
    }

    /// A new version for a change.
    pub(crate) fn change(&mut self) -> u64 {
        self.version += 1;
        self.version
    }
}

#[derive(Debug, Default)]
struct Shard {
    devices: HashMap<DeviceId, DeviceHot>,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Hot {
    shards: Vec<Mutex<Shard>>,
    /// One flush at a time: a reader's flush waits for one in progress, then writes the rest.
    flushing: Mutex<()>,
    pending: AtomicUsize,
    width: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hot {
    pub(crate) fn new(dedupe_width: u32) -> Hot {
        Hot {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            flushing: Mutex::new(()),
            pending: AtomicUsize::new(0),
            width: dedupe_width,
        }
    }

    fn shard(&self, device: &DeviceId) -> &Mutex<Shard> {
        &self.shards[(keys::fnv1a(device.as_str().as_bytes()) % SHARDS as u64) as usize]
    }

    /// Runs `f` on the device's state (read from the store on first use) under its shard lock.
    fn with<R>(
        &self,
        store: &dyn Store,
        device: &DeviceId,
        f: impl FnOnce(&mut DeviceHot) -> Result<R, IngestError>,
    ) -> Result<R, IngestError> {
        let mut shard = lock(self.shard(device));
        if let Some(hot) = shard.devices.get_mut(device) {
            return f(hot);
        }
        let stored: Option<Tally> = record::get(store, TALLIES, &keys::device(device), "tally")?;
        let mut tally = stored.unwrap_or_else(|| Tally::new(self.width));
        tally.seqs.resize(self.width);
        let fresh = DeviceHot { tally, tally_dirty: None, series: Vec::new(), version: 0 };
        f(shard.devices.entry(device.clone()).or_insert(fresh))
    }

    /// Runs `f` on the device's state if it is in memory, under its shard lock (for compaction).
    pub(crate) fn locked<R>(&self, device: &DeviceId, f: impl FnOnce(Option<&mut DeviceHot>) -> R) -> R {
        let mut shard = lock(self.shard(device));
        f(shard.devices.get_mut(device))
    }

    /// The device's tally if it is in memory (the truth then; otherwise the stored one is).
    pub(crate) fn tally(&self, device: &DeviceId) -> Option<Tally> {
        lock(self.shard(device)).devices.get(device).map(|hot| hot.tally.clone())
    }

    /// What the de-duplication window says about `seq` now.
    pub(crate) fn check(&self, store: &dyn Store, device: &DeviceId, seq: u64) -> Result<Seen, IngestError> {
        self.with(store, device, |hot| Ok(hot.tally.seqs.check(seq)))
    }

    /// Marks `seq` and applies `count` to the device's tally, once: `Seen::New` goes only to the caller that marked
    /// it. Also returns the device's event-log length after the change.
    pub(crate) fn mark(
        &self,
        store: &dyn Store,
        device: &DeviceId,
        seq: u64,
        received_at: OffsetDateTime,
        count: impl FnOnce(&mut Tally),
    ) -> Result<(Seen, u64), IngestError> {
        self.with(store, device, |hot| {
            let seen = hot.tally.seqs.mark(seq);
            if seen == Seen::New {
                hot.tally.last_seen = Some(hot.tally.last_seen.map_or(received_at, |t| t.max(received_at)));
                count(&mut hot.tally);
                hot.tally_dirty = Some(hot.change());
            }
            Ok((seen, hot.tally.event_log_len))
        })
    }

    /// Marks `seq` and, if it is new, counts the window in the device's totals, adds it to its hour's roll-up and
    /// keeps it to be written. Returns what the seq was. With [`MAX_PENDING`] windows unwritten it flushes first,
    /// and while the store fails it refuses the window (an error, nothing marked): memory stays bounded.
    pub(crate) fn window(
        &self,
        store: &dyn Store,
        device: &DeviceId,
        seq: u64,
        window: &WindowSummary,
        received_at: OffsetDateTime,
    ) -> Result<Seen, IngestError> {
        if self.pending.load(Ordering::Relaxed) >= MAX_PENDING {
            self.flush(store)?;
        }
        let seen = self.with(store, device, |hot| {
            let seen = hot.tally.seqs.check(seq);
            if seen != Seen::New {
                return Ok(seen);
            }
            let version = hot.change();
            let hour = keys::hour_of(keys::ms(window.start));
            let position = match hot.series.iter().position(|s| s.model == window.model) {
                Some(p) => p,
                None => {
                    let prefix = keys::series(device, &window.model);
                    let index = keys::series_index(&window.model, device);
                    let indexed = store.get(SERIES, &index)?.is_some();
                    hot.series.push(SeriesHot {
                        model: window.model.clone(),
                        prefix,
                        indexed,
                        chunks: BTreeMap::new(),
                        rollups: BTreeMap::new(),
                    });
                    hot.series.len() - 1
                }
            };
            let series = &mut hot.series[position];
            if !series.rollups.contains_key(&hour) {
                let stored: Option<HourlyRollup> =
                    record::get(store, ROLLUPS, &keys::timed(&series.prefix, hour), "rollup")?;
                let rollup = stored.unwrap_or_else(|| HourlyRollup::new(keys::at(hour)));
                series.rollups.insert(hour, (rollup, None));
            }
            // Packed before anything counts the window: the last step that can fail. Into the hour's last chunk
            // while it has room, else a new one keyed by this seq (unique: a seq is stored once).
            let open = series.chunks.range((hour, 0)..=(hour, u64::MAX)).next_back().map(|(k, c)| (*k, c.chunk.len()));
            let key = match open {
                Some((key, len)) if len < CHUNK_BYTES => key,
                _ => (hour, seq),
            };
            let hot_chunk = series.chunks.entry(key).or_insert_with(|| HotChunk {
                chunk: Chunk::default(),
                dirty: None,
                unwritten: 0,
            });
            if let Err(e) = hot_chunk.chunk.push(seq, received_at, window) {
                if hot_chunk.chunk.count == 0 {
                    series.chunks.remove(&key);
                }
                return Err(e);
            }
            hot_chunk.dirty = Some(version);
            hot_chunk.unwritten += 1;
            if let Some((rollup, dirty)) = series.rollups.get_mut(&hour) {
                rollup.add(window);
                *dirty = Some(version);
            }
            hot.tally.seqs.mark(seq);
            hot.tally.last_seen = Some(hot.tally.last_seen.map_or(received_at, |t| t.max(received_at)));
            hot.tally.totals.add_window(window);
            hot.tally_dirty = Some(version);
            Ok(Seen::New)
        })?;
        if seen == Seen::New {
            self.pending.fetch_add(1, Ordering::Relaxed);
        }
        Ok(seen)
    }

    /// `windows` unwritten windows left the count: a flush wrote them, or compaction dropped them past retention.
    pub(crate) fn no_longer_pending(&self, windows: usize) {
        let _ = self.pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(p.saturating_sub(windows)));
    }

    /// Lowers the device's event-log length after `removed` events were trimmed.
    pub(crate) fn trimmed(&self, store: &dyn Store, device: &DeviceId, removed: u64) -> Result<(), IngestError> {
        self.with(store, device, |hot| {
            hot.tally.event_log_len = hot.tally.event_log_len.saturating_sub(removed);
            hot.tally_dirty = Some(hot.change());
            Ok(())
        })
    }

    /// Writes everything changed since the last flush in one atomic batch. On failure nothing is lost: what was
    /// taken out to be written goes back and is written by the next flush.
    pub(crate) fn flush(&self, store: &dyn Store) -> Result<(), IngestError> {
        let _one = lock(&self.flushing);
        let mut batch = Vec::new();
        // Per device: the version written, and what was taken out of memory (to put back on failure).
        let mut taken: Vec<(usize, DeviceId, u64, Taken)> = Vec::new();
        let mut failed = None;
        'shards: for (index, shard) in self.shards.iter().enumerate() {
            let mut shard = lock(shard);
            for (id, hot) in shard.devices.iter_mut() {
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
            self.put_back(taken);
            return Err(e);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let written: usize = taken.iter().flat_map(|t| &t.3.chunks).map(|(_, _, n)| n).sum();
        match store.apply(&batch) {
            Ok(()) => {
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
                self.put_back(taken);
                Err(e.into())
            }
        }
    }

    /// Returns what a failed flush took out of memory, to be written by the next one.
    fn put_back(&self, taken: Vec<(usize, DeviceId, u64, Taken)>) {
        for (index, id, _, taken) in taken {
            let mut shard = lock(&self.shards[index]);
            if let Some(hot) = shard.devices.get_mut(&id) {
                put_back(hot, taken);
            }
        }
    }
}

/// What a flush took from a device: the index entries it writes (not written again unless the batch fails),
/// and the windows of each chunk it writes.
#[derive(Debug, Default)]
struct Taken {
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
fn drain(id: &DeviceId, hot: &mut DeviceHot, batch: &mut Vec<Write>) -> Result<Taken, IngestError> {
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
fn written_up_to(hot: &mut DeviceHot, version: u64, taken: &Taken) {
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
}

fn put(tree: &'static str, key: Vec<u8>, value: Vec<u8>) -> Write {
    Write { tree, key, value: Some(value) }
}

#[cfg(test)]
mod tests;
