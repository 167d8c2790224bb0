//! The ingest's working set: each device's de-duplication window and totals, its series' recent hourly roll-ups
//! and the windows not yet written, in memory, made durable by a journal every flush and written to their records
//! at checkpoints.
//!
//! Design: a window costs a few in-memory updates under its device's shard lock, and its packed bytes are added to
//! the shard's journal entries (`journal.rs`). [`Hot::flush`] (every second) writes those entries as a few large
//! journal records, together with the whole state of any device changed other than by a window (an event or frame
//! batch marked, its event log trimmed), which the journal does not hold. A checkpoint ([`Hot::checkpoint`], and
//! from `flush` every [`CHECKPOINT_EVERY`] or at [`CHECKPOINT_PENDING`] windows) writes one record per touched
//! device (its tally), per touched roll-up and per touched chunk (a series' raw windows of one hour, packed,
//! rewritten whole until it holds [`CHUNK_BYTES`]), and deletes the journal records it covers, in one atomic batch
//! ([`Store::apply`]). So with many devices each sending a window or two a second, a device's records are written
//! every few seconds with several windows each instead of every second with one or two.
//!
//! After a crash, [`Hot::replay`] takes the journal's windows again on the device state the last checkpoint wrote:
//! a window the checkpoint (or a device's own write) already holds is a duplicate by its seq and changes nothing,
//! so a device's tally, roll-ups and raw windows still agree — the seqs marked are exactly the windows stored and
//! the windows the roll-ups count — and what a crash loses is what arrived since the last flush.
//!
//! Invariants:
//! - this process is the only writer of the tallies, roll-ups, raw windows, series index and journal (one process
//!   per sled store, which sled enforces); compaction changes them only under the device's shard lock;
//! - a device's state is read from the store on its first message and is the truth from then on;
//! - a window's journal entry is added under the same shard lock as the window itself, so the entries a checkpoint
//!   takes from a shard are exactly the ones whose windows its drain of that shard holds;
//! - readers call [`Hot::checkpoint`] first, so a query sees every message ingested before it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use outpost_common::protocol::{ModelRef, WindowSummary};
use outpost_common::store::Store;
use outpost_common::topics::DeviceId;
use time::OffsetDateTime;

use super::dedupe::Seen;
use super::devices::Tally;
use super::error::IngestError;
use super::journal::Entries;
use super::keys;
use super::raw::Chunk;
use super::record;
use super::series::HourlyRollup;
use super::{ROLLUPS, SERIES, TALLIES};

mod write;

use write::Flushing;

/// Shards of the device map: workers on different devices rarely share a lock.
const SHARDS: usize = 64;
/// Windows held in memory before the ingest call that adds one more checkpoints them itself (when the service's
/// periodic flush falls behind, or no service runs one).
pub(crate) const MAX_PENDING: usize = 262_144;
/// A flush checkpoints once this many windows are not written to their records...
pub(crate) const CHECKPOINT_PENDING: usize = 131_072;
/// ...or once this long has passed since the last checkpoint.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
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
    /// Changed other than by a window (which the journal holds) and not written since: the next flush writes the
    /// whole device.
    urgent: Dirty,
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
    /// The windows taken since a flush last took the shard's entries.
    journal: Entries,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Hot {
    shards: Vec<Mutex<Shard>>,
    /// One flush at a time: a reader's checkpoint waits for a flush in progress, then writes the rest.
    flushing: Mutex<Flushing>,
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
            flushing: Mutex::new(Flushing { next: 0, first: 0, last_checkpoint: Instant::now() }),
            pending: AtomicUsize::new(0),
            width: dedupe_width,
        }
    }

    fn shard(&self, device: &DeviceId) -> &Mutex<Shard> {
        &self.shards[(keys::fnv1a(device.as_str().as_bytes()) % SHARDS as u64) as usize]
    }

    /// Runs `f` on the device's state (read from the store on first use) and its shard's journal entries, under
    /// the shard lock.
    fn with<R>(
        &self,
        store: &dyn Store,
        device: &DeviceId,
        f: impl FnOnce(&mut DeviceHot, &mut Entries) -> Result<R, IngestError>,
    ) -> Result<R, IngestError> {
        let mut guard = lock(self.shard(device));
        let shard = &mut *guard;
        if let Some(hot) = shard.devices.get_mut(device) {
            return f(hot, &mut shard.journal);
        }
        let stored: Option<Tally> = record::get(store, TALLIES, &keys::device(device), "tally")?;
        let mut tally = stored.unwrap_or_else(|| Tally::new(self.width));
        tally.seqs.resize(self.width);
        let fresh = DeviceHot { tally, tally_dirty: None, series: Vec::new(), urgent: None, version: 0 };
        f(shard.devices.entry(device.clone()).or_insert(fresh), &mut shard.journal)
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
        self.with(store, device, |hot, _| Ok(hot.tally.seqs.check(seq)))
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
        self.with(store, device, |hot, _| {
            let seen = hot.tally.seqs.mark(seq);
            if seen == Seen::New {
                hot.tally.last_seen = Some(hot.tally.last_seen.map_or(received_at, |t| t.max(received_at)));
                count(&mut hot.tally);
                let version = hot.change();
                hot.tally_dirty = Some(version);
                hot.urgent = Some(version);
            }
            Ok((seen, hot.tally.event_log_len))
        })
    }

    /// Marks `seq` and, if it is new, counts the window in the device's totals, adds it to its hour's roll-up and
    /// keeps it to be journaled and written. Returns what the seq was. With [`MAX_PENDING`] windows unwritten it
    /// checkpoints first, and while the store fails it refuses the window (an error, nothing marked): memory stays
    /// bounded.
    pub(crate) fn window(
        &self,
        store: &dyn Store,
        device: &DeviceId,
        seq: u64,
        window: &WindowSummary,
        received_at: OffsetDateTime,
    ) -> Result<Seen, IngestError> {
        if self.pending.load(Ordering::Relaxed) >= MAX_PENDING {
            self.checkpoint(store)?;
        }
        self.take_window(store, device, seq, window, received_at)
    }

    /// [`Hot::window`] without the bound (a replay takes at most what the journal holds).
    fn take_window(
        &self,
        store: &dyn Store,
        device: &DeviceId,
        seq: u64,
        window: &WindowSummary,
        received_at: OffsetDateTime,
    ) -> Result<Seen, IngestError> {
        let seen = self.with(store, device, |hot, journal| {
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
            match hot_chunk.chunk.push(seq, received_at, window) {
                Ok(packed) => journal.push(device, packed),
                Err(e) => {
                    if hot_chunk.chunk.count == 0 {
                        series.chunks.remove(&key);
                    }
                    return Err(e);
                }
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
        self.with(store, device, |hot, _| {
            hot.tally.event_log_len = hot.tally.event_log_len.saturating_sub(removed);
            let version = hot.change();
            hot.tally_dirty = Some(version);
            hot.urgent = Some(version);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
