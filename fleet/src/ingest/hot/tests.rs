//! The working set against a store that can fail: what a flush and a checkpoint write, when, what a failure keeps,
//! and what a restart replays.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use outpost_common::protocol::{ConfidenceHistogram, Latency};
use outpost_common::store::{Entry, StoreError, Write};

use super::write::{Replayed, drain, written_up_to};
use super::*;
use crate::ingest::keys::HOUR_MS;
use crate::ingest::raw;
use crate::ingest::series::{self, TimeRange};
use crate::ingest::{JOURNAL, JOURNAL_DAMAGED, WINDOWS, journal};
use crate::load::MemStore;

/// A memory store whose batches fail while `failing` is set, like a full disk.
#[derive(Debug, Default)]
struct Flaky {
    inner: MemStore,
    failing: AtomicBool,
}

impl Store for Flaky {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.put(tree, key, value)
    }
    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.inner.remove(tree, key)
    }
    fn scan(&self, tree: &str, after: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan(tree, after, limit)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn compare_and_swap(
        &self,
        tree: &str,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        self.inner.compare_and_swap(tree, key, old, new)
    }
    fn scan_prefix(
        &self,
        tree: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan_prefix(tree, prefix, after, limit)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(StoreError::Io("no space left on device".into()));
        }
        self.inner.apply(writes)
    }
}

const T0: OffsetDateTime = time::macros::datetime!(2026-11-22 10:00 UTC);

fn device() -> DeviceId {
    DeviceId::new("cam-1").expect("id")
}

fn model() -> ModelRef {
    ModelRef { name: "defect".into(), version: 1 }
}

/// A 10-frame window starting `secs` after `T0`.
fn window(secs: i64) -> WindowSummary {
    let mut confidence = ConfidenceHistogram::default();
    confidence.add(0.9);
    WindowSummary {
        start: T0 + time::Duration::seconds(secs),
        end: T0 + time::Duration::seconds(secs + 10),
        camera: "line-1".into(),
        model: model(),
        frames: 10,
        drops: 0,
        confidence,
        classes: BTreeMap::new(),
        latency_ms: Latency { p50: 1.0, p95: 2.0, p99: 3.0 },
        flagged: 1,
    }
}

fn stored_tally(store: &dyn Store) -> Option<Tally> {
    record::get(store, TALLIES, &keys::device(&device()), "tally").expect("readable")
}

fn all_windows(store: &dyn Store) -> Vec<u64> {
    let range = TimeRange::new(T0 - time::Duration::days(1), T0 + time::Duration::days(1));
    let windows = series::windows(store, &device(), &model(), range, usize::MAX).expect("readable");
    windows.iter().map(|w| w.seq).collect()
}

#[test]
fn nothing_reaches_the_records_before_a_checkpoint_and_everything_in_one_batch_after() {
    let store = Arc::new(Flaky::default());
    let hot = Hot::new(128);
    // Two hours: two chunks. Seq 3 arrives twice.
    for (seq, secs) in [(1, 0), (2, 10), (3, 3600), (3, 3600)] {
        hot.window(store.as_ref(), &device(), seq, &window(secs), T0).expect("taken");
    }
    assert_eq!((stored_tally(store.as_ref()), all_windows(store.as_ref())), (None, vec![]));
    hot.checkpoint(store.as_ref()).expect("written");
    let tally = stored_tally(store.as_ref()).expect("written");
    assert_eq!((tally.totals.windows, tally.totals.frames), (3, 30));
    assert_eq!(all_windows(store.as_ref()), [1, 2, 3]);
    let chunks = store.scan_prefix(WINDOWS, &keys::series(&device(), &model()), None, 10).expect("scan");
    assert_eq!(chunks.len(), 2, "one record per hour");
    // A second flush has nothing to write; the next window makes a new chunk of its hour.
    hot.checkpoint(store.as_ref()).expect("nothing to write");
    hot.window(store.as_ref(), &device(), 4, &window(20), T0).expect("taken");
    hot.checkpoint(store.as_ref()).expect("written");
    assert_eq!(all_windows(store.as_ref()), [1, 2, 4, 3]);
}

#[test]
fn a_failed_checkpoint_loses_nothing_and_a_failing_store_bounds_what_is_held() {
    let store = Arc::new(Flaky::default());
    let hot = Hot::new(128);
    hot.window(store.as_ref(), &device(), 1, &window(0), T0).expect("taken");
    store.failing.store(true, Ordering::Relaxed);
    assert!(hot.checkpoint(store.as_ref()).is_err());
    // Windows keep coming while the disk is full, into the same hour's chunk.
    hot.window(store.as_ref(), &device(), 2, &window(10), T0).expect("taken");
    assert!(hot.checkpoint(store.as_ref()).is_err());
    assert_eq!(all_windows(store.as_ref()), Vec::<u64>::new());
    // Once the limit is held, a window is refused with the store's error and is not marked.
    let mut seq = 3;
    while hot.pending.load(Ordering::Relaxed) < MAX_PENDING {
        hot.window(store.as_ref(), &device(), seq, &window(10), T0).expect("taken");
        seq += 1;
    }
    let refused = hot.window(store.as_ref(), &device(), seq, &window(10), T0);
    assert!(matches!(refused, Err(IngestError::Store(_))), "{refused:?}");
    assert_eq!(hot.check(store.as_ref(), &device(), seq).expect("check"), Seen::New, "not marked");
    // The disk has room again: everything taken is written, once, and the refused window can come again.
    store.failing.store(false, Ordering::Relaxed);
    assert_eq!(hot.window(store.as_ref(), &device(), seq, &window(10), T0).expect("taken"), Seen::New);
    hot.checkpoint(store.as_ref()).expect("written");
    let seqs = all_windows(store.as_ref());
    assert_eq!(seqs.len() as u64, seq);
    assert_eq!(seqs[..2], [1, 2]);
    let tally = stored_tally(store.as_ref()).expect("written");
    assert_eq!(tally.totals.windows, seq);
    let rollup: HourlyRollup =
        record::get(store.as_ref(), ROLLUPS, &keys::timed(&keys::series(&device(), &model()), keys::ms(T0)), "rollup")
            .expect("readable")
            .expect("written");
    assert_eq!(rollup.rollup.windows, seq, "the roll-up counted each window once");
    assert_eq!(hot.pending.load(Ordering::Relaxed), 0);
}

#[test]
fn a_device_changed_while_its_batch_was_written_keeps_the_change_for_the_next_flush() {
    let store = Arc::new(Flaky::default());
    let hot = Hot::new(128);
    hot.window(store.as_ref(), &device(), 1, &window(0), T0).expect("taken");
    // What a flush does, with a window arriving between taking the batch and clearing its marks.
    let mut batch = Vec::new();
    let (version, taken) = {
        let mut shard = lock(hot.shard(&device()));
        let hot = shard.devices.get_mut(&device()).expect("in memory");
        let taken = drain(&device(), hot, &mut batch).expect("drained");
        (hot.version, taken)
    };
    hot.window(store.as_ref(), &device(), 2, &window(10), T0).expect("taken");
    store.apply(&batch).expect("written");
    {
        let mut shard = lock(hot.shard(&device()));
        written_up_to(shard.devices.get_mut(&device()).expect("in memory"), version, &taken);
    }
    assert_eq!(stored_tally(store.as_ref()).expect("written").totals.windows, 1);
    hot.checkpoint(store.as_ref()).expect("written");
    assert_eq!(stored_tally(store.as_ref()).expect("written").totals.windows, 2, "the tally was still dirty");
    assert_eq!(all_windows(store.as_ref()), [1, 2]);
}

fn chunk_records(store: &dyn Store) -> Vec<Vec<u64>> {
    let records = store.scan_prefix(WINDOWS, &keys::series(&device(), &model()), None, 1000).expect("scan");
    records.iter().map(|(_, v)| raw::read(v).expect("readable").iter().map(|w| w.seq).collect()).collect()
}

#[test]
fn a_chunk_is_rewritten_until_full_then_the_hour_starts_another() {
    let store = Arc::new(Flaky::default());
    let hot = Hot::new(1024);
    // Two windows a flush, as a device sending often among many: the same record grows.
    let mut seq = 0;
    let mut flushes = 0;
    while chunk_records(store.as_ref()).len() < 2 {
        for _ in 0..2 {
            seq += 1;
            hot.window(store.as_ref(), &device(), seq, &window(seq as i64), T0).expect("taken");
        }
        hot.checkpoint(store.as_ref()).expect("written");
        flushes += 1;
        if flushes == 2 {
            assert_eq!(chunk_records(store.as_ref()), [vec![1, 2, 3, 4]], "one record, rewritten");
        }
    }
    let records = chunk_records(store.as_ref());
    let first = &records[0];
    assert!(first.len() > 8, "a chunk fills up to {CHUNK_BYTES} bytes: {} windows", first.len());
    assert_eq!(records.concat(), (1..=seq).collect::<Vec<_>>(), "every window once, in order");
    assert_eq!(hot.pending.load(Ordering::Relaxed), 0);
}

#[test]
fn an_unchanged_chunk_leaves_memory_and_compaction_drops_expired_ones() {
    let store = Arc::new(Flaky::default());
    let hot = Hot::new(128);
    hot.window(store.as_ref(), &device(), 1, &window(0), T0).expect("taken");
    hot.checkpoint(store.as_ref()).expect("written");
    let chunks = |hot: &Hot| hot.locked(&device(), |d| d.and_then(|d| d.series_mut(&model())).map(|s| s.chunks.len()));
    assert_eq!(chunks(&hot), Some(1), "kept while the device keeps sending");
    hot.checkpoint(store.as_ref()).expect("nothing new");
    assert_eq!(chunks(&hot), Some(0), "a flush that found it unchanged dropped it");
    // A late window of the same hour goes to a new record; the written one is left as it is.
    hot.window(store.as_ref(), &device(), 2, &window(5), T0).expect("taken");
    hot.checkpoint(store.as_ref()).expect("written");
    assert_eq!(chunk_records(store.as_ref()), [vec![1], vec![2]]);
    // Compaction past that hour drops the chunk from memory, written or not, and what it held stops counting.
    hot.window(store.as_ref(), &device(), 3, &window(6), T0).expect("taken");
    assert_eq!(hot.pending.load(Ordering::Relaxed), 1);
    let cut = keys::ms(T0) + HOUR_MS;
    let dropped =
        hot.locked(&device(), |d| d.and_then(|d| d.series_mut(&model())).map(|s| s.forget_chunks_before(cut)));
    assert_eq!(dropped, Some(1));
    hot.no_longer_pending(1);
    assert_eq!(hot.pending.load(Ordering::Relaxed), 0);
    hot.checkpoint(store.as_ref()).expect("written");
    assert_eq!(chunk_records(store.as_ref()), [vec![1], vec![2]], "the dropped chunk was not written back");
}

fn journal_records(store: &dyn Store) -> usize {
    store.scan(JOURNAL, None, 1000).expect("scan").len()
}

/// What a restart after a crash does: a new working set on the same store, replaying the journal.
fn restart(store: &dyn Store) -> (Hot, Replayed) {
    let hot = Hot::new(128);
    let replayed = hot.replay(store).expect("replayed");
    (hot, replayed)
}

#[test]
fn a_flush_journals_the_windows_and_a_restart_takes_each_once() {
    let store = Arc::new(Flaky::default());
    let hot = Hot::new(128);
    for (seq, secs) in [(1, 0), (2, 10), (3, 3600), (3, 3600)] {
        hot.window(store.as_ref(), &device(), seq, &window(secs), T0).expect("taken");
    }
    hot.flush(store.as_ref()).expect("journaled");
    assert_eq!((stored_tally(store.as_ref()), all_windows(store.as_ref())), (None, vec![]), "no device record yet");
    assert_eq!(journal_records(store.as_ref()), 1);
    hot.window(store.as_ref(), &device(), 4, &window(20), T0).expect("taken");
    hot.flush(store.as_ref()).expect("journaled");
    assert_eq!(journal_records(store.as_ref()), 2);
    drop(hot);

    let (hot, replayed) = restart(store.as_ref());
    assert_eq!(replayed, Replayed { records: 2, windows: 4, duplicates: 0, damaged: 0 });
    assert_eq!(journal_records(store.as_ref()), 0, "the replay's checkpoint covers the journal");
    assert_eq!(all_windows(store.as_ref()), [1, 2, 4, 3]);
    let tally = stored_tally(store.as_ref()).expect("written");
    assert_eq!((tally.totals.windows, tally.totals.frames), (4, 40));
    assert_eq!(hot.pending.load(Ordering::Relaxed), 0);
    // The journal starts again after a checkpoint; what the checkpoint wrote is not taken twice.
    hot.window(store.as_ref(), &device(), 5, &window(30), T0).expect("taken");
    hot.flush(store.as_ref()).expect("journaled");
    let (_, replayed) = restart(store.as_ref());
    assert_eq!(replayed, Replayed { records: 1, windows: 1, duplicates: 0, damaged: 0 });
    assert_eq!(all_windows(store.as_ref()), [1, 2, 4, 5, 3]);
    assert_eq!(stored_tally(store.as_ref()).expect("written").totals.windows, 5);
}

#[test]
fn a_device_changed_other_than_by_a_window_is_written_whole_by_the_next_flush() {
    let store = Arc::new(Flaky::default());
    let hot = Hot::new(128);
    hot.window(store.as_ref(), &device(), 1, &window(0), T0).expect("taken");
    hot.flush(store.as_ref()).expect("journaled");
    assert_eq!(stored_tally(store.as_ref()), None);
    // An event's mark is not in the journal: the flush writes the device, its window with it.
    let (seen, _) = hot.mark(store.as_ref(), &device(), 2, T0, |t| t.totals.events += 1).expect("marked");
    assert_eq!(seen, Seen::New);
    hot.flush(store.as_ref()).expect("written");
    let tally = stored_tally(store.as_ref()).expect("written");
    assert_eq!((tally.totals.windows, tally.totals.events), (1, 1));
    assert_eq!(all_windows(store.as_ref()), [1]);
    // A crash now: the journal's window is a duplicate of what the device's write holds.
    let (_, replayed) = restart(store.as_ref());
    assert_eq!(replayed, Replayed { records: 1, windows: 0, duplicates: 1, damaged: 0 });
    let tally = stored_tally(store.as_ref()).expect("written");
    assert_eq!((tally.totals.windows, tally.totals.events), (1, 1));
    assert_eq!(all_windows(store.as_ref()), [1]);
}

#[test]
fn a_failed_journal_write_loses_nothing_and_keeps_the_order() {
    let store = Arc::new(Flaky::default());
    let hot = Hot::new(128);
    hot.window(store.as_ref(), &device(), 1, &window(0), T0).expect("taken");
    store.failing.store(true, Ordering::Relaxed);
    assert!(hot.flush(store.as_ref()).is_err());
    hot.window(store.as_ref(), &device(), 2, &window(10), T0).expect("taken");
    store.failing.store(false, Ordering::Relaxed);
    hot.window(store.as_ref(), &device(), 3, &window(20), T0).expect("taken");
    hot.flush(store.as_ref()).expect("journaled");
    drop(hot);
    let (_, replayed) = restart(store.as_ref());
    assert_eq!(replayed.windows, 3);
    assert_eq!(all_windows(store.as_ref()), [1, 2, 3]);
}

#[test]
fn an_unreadable_journal_record_is_moved_aside_and_the_rest_replayed() {
    let store = Arc::new(Flaky::default());
    let hot = Hot::new(128);
    hot.window(store.as_ref(), &device(), 1, &window(0), T0).expect("taken");
    hot.flush(store.as_ref()).expect("journaled");
    drop(hot);
    let garbage = b"\x01\x02\x00\x00\x00not a window".to_vec();
    store.put(JOURNAL, &journal::key(7), &garbage).expect("put");
    store.put(JOURNAL, b"odd key", b"\x01").expect("put");
    let (_, replayed) = restart(store.as_ref());
    assert_eq!(replayed, Replayed { records: 3, windows: 1, duplicates: 0, damaged: 2 });
    assert_eq!(all_windows(store.as_ref()), [1]);
    assert_eq!(journal_records(store.as_ref()), 0);
    let aside = store.scan(JOURNAL_DAMAGED, None, 10).expect("scan");
    assert_eq!(aside, [(journal::key(7).to_vec(), garbage), (b"odd key".to_vec(), b"\x01".to_vec())]);
}

#[test]
fn a_flush_checkpoints_once_one_is_due() {
    let store = Arc::new(Flaky::default());
    let hot = Hot::new(128);
    hot.window(store.as_ref(), &device(), 1, &window(0), T0).expect("taken");
    hot.flush(store.as_ref()).expect("journaled");
    assert_eq!((stored_tally(store.as_ref()), journal_records(store.as_ref())), (None, 1));
    hot.window(store.as_ref(), &device(), 2, &window(10), T0).expect("taken");
    {
        let mut flushing = lock(&hot.flushing);
        flushing.last_checkpoint = Instant::now().checked_sub(CHECKPOINT_EVERY).expect("uptime");
    }
    hot.flush(store.as_ref()).expect("checkpointed");
    assert_eq!(stored_tally(store.as_ref()).expect("written").totals.windows, 2);
    assert_eq!(all_windows(store.as_ref()), [1, 2]);
    assert_eq!(journal_records(store.as_ref()), 0);
    assert_eq!(hot.pending.load(Ordering::Relaxed), 0);
}
