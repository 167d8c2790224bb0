//! The durable outbox: every telemetry message and event is stored here before the MQTT link may send it, and
//! deleted when the broker acknowledges it (PUBACK).
//!
//! Design: the bookkeeping is a pure [`Ledger`] (sequence numbers, sizes, the byte cap with drop-oldest, the drop
//! count) tested with values; [`Outbox`] applies its decisions to a [`Store`]. The device's `seq` (one counter for
//! telemetry and events, see docs/PROTOCOL.md) is the store key, big-endian, so key order is send order and the
//! counter is recovered after a restart as the largest of the stored counter and the last key.
//!
//! Durability is a group commit: [`Outbox::append`] only writes to the store's memory; [`Outbox::flush`] makes
//! everything appended so far durable with one fsync and advances the durable mark. The link only hands a message
//! to MQTT once it is durable, so a sequence number that reached the fleet is never reused after a crash (a reused
//! seq would be dropped by the fleet as a duplicate, i.e. lost). A `kill -9` loses at most what was appended since
//! the last flush, which is never more than one flush interval.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_common::topics::Channel;

use crate::store::{Store, StoreError};

const MESSAGES: &str = "outbox";
const META: &str = "outbox_meta";
const META_SEQ: &[u8] = b"seq";
const META_DROPPED: &[u8] = b"dropped";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("a {size}-byte message can never fit in an outbox capped at {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("only telemetry and events go through the outbox, not {0}")]
    Channel(Channel),
    #[error("cannot encode the message: {0}")]
    Encode(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Ledger::admit`] decided for a new message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub seq: u64,
    /// The oldest messages to delete so the new one fits under the cap.
    pub evicted: Vec<u64>,
}

/// The outbox's bookkeeping without storage: which seqs are held, their sizes, the cap and the drop count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    entries: BTreeMap<u64, u64>,
    bytes: u64,
    max_bytes: u64,
    last_seq: u64,
    dropped: u64,
}

impl Ledger {
    /// A ledger over what a store held: the stored counter, the stored drop count and the stored messages' sizes.
    pub fn new(max_bytes: u64, stored_seq: u64, dropped: u64, entries: impl IntoIterator<Item = (u64, u64)>) -> Ledger {
        let entries: BTreeMap<u64, u64> = entries.into_iter().collect();
        let bytes = entries.values().sum();
        let last_key = entries.keys().next_back().copied().unwrap_or(0);
        Ledger { bytes, max_bytes, last_seq: stored_seq.max(last_key), dropped, entries }
    }

    /// The seq the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.last_seq.saturating_add(1)
    }

    /// Takes a message of `size` bytes under the next seq, evicting the oldest messages while it would not fit.
    pub fn admit(&mut self, size: u64) -> Result<Admitted, OutboxError> {
        if size > self.max_bytes {
            return Err(OutboxError::TooLarge { size, max: self.max_bytes });
        }
        let mut evicted = Vec::new();
        while self.bytes.saturating_add(size) > self.max_bytes {
            let Some((seq, old)) = self.entries.pop_first() else { break };
            self.bytes = self.bytes.saturating_sub(old);
            self.dropped = self.dropped.saturating_add(1);
            evicted.push(seq);
        }
        self.last_seq = self.next_seq();
        self.entries.insert(self.last_seq, size);
        self.bytes = self.bytes.saturating_add(size);
        Ok(Admitted { seq: self.last_seq, evicted })
    }

    /// Forgets an acknowledged message; false when it was not held (already acknowledged or dropped).
    pub fn remove(&mut self, seq: u64) -> bool {
        match self.entries.remove(&seq) {
            Some(size) => {
                self.bytes = self.bytes.saturating_sub(size);
                true
            }
            None => false,
        }
    }

    pub fn messages(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

/// A message waiting for its PUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: u64,
    pub channel: Channel,
    /// The sealed payload, exactly as published.
    pub payload: Vec<u8>,
}

/// Counters for stats and health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub messages: u64,
    pub bytes: u64,
    /// Messages dropped (oldest first) to stay under the cap, since the store was created.
    pub dropped: u64,
    pub last_seq: u64,
    /// Every seq up to this one is durable.
    pub durable_seq: u64,
}

/// The durable outbox over a [`Store`]. Shared between producers and the link (`Arc<Outbox>`).
#[derive(Debug)]
pub struct Outbox {
    store: Arc<dyn Store>,
    ledger: Mutex<Ledger>,
    durable_seq: AtomicU64,
}

fn tag(channel: Channel) -> Option<u8> {
    match channel {
        Channel::Telemetry => Some(b't'),
        Channel::Events => Some(b'e'),
        Channel::Status | Channel::Commands => None,
    }
}

fn untag(byte: u8) -> Option<Channel> {
    match byte {
        b't' => Some(Channel::Telemetry),
        b'e' => Some(Channel::Events),
        _ => None,
    }
}

fn read_u64(bytes: Option<Vec<u8>>) -> u64 {
    bytes.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()).map_or(0, u64::from_be_bytes)
}

impl Outbox {
    /// Opens the outbox in `store`, recovering the seq counter, the drop count and the held messages.
    pub fn open(store: Arc<dyn Store>, max_bytes: u64) -> Result<Outbox, OutboxError> {
        let stored_seq = read_u64(store.get(META, META_SEQ)?);
        let dropped = read_u64(store.get(META, META_DROPPED)?);
        let mut sizes = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = store.scan(MESSAGES, after.as_deref(), 4096)?;
            let Some((last, _)) = batch.last() else { break };
            after = Some(last.clone());
            for (key, value) in batch {
                let seq = <[u8; 8]>::try_from(key.as_slice()).ok().map(u64::from_be_bytes);
                match (seq, value.first().copied().and_then(untag)) {
                    (Some(seq), Some(_)) => sizes.push((seq, value.len() as u64)),
                    _ => {
                        tracing::warn!(key = %hex_key(&key), "dropping an unreadable outbox entry");
                        store.remove(MESSAGES, &key)?;
                    }
                }
            }
        }
        let ledger = Ledger::new(max_bytes, stored_seq, dropped, sizes);
        tracing::info!(
            messages = ledger.messages(),
            bytes = ledger.bytes(),
            dropped = ledger.dropped(),
            next_seq = ledger.next_seq(),
            "outbox opened"
        );
        let durable = ledger.last_seq();
        Ok(Outbox { store, ledger: Mutex::new(ledger), durable_seq: AtomicU64::new(durable) })
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a message under the next seq. `make` builds the sealed payload for that seq (if it fails, nothing is
    /// stored). Never blocks on the network and never fsyncs: the message becomes durable (and sendable) at the
    /// next [`Outbox::flush`].
    pub fn append(
        &self,
        channel: Channel,
        make: impl FnOnce(u64) -> Result<Vec<u8>, String>,
    ) -> Result<u64, OutboxError> {
        let tag = tag(channel).ok_or(OutboxError::Channel(channel))?;
        let mut ledger = self.ledger();
        let mut value = Vec::new();
        value.push(tag);
        value.extend_from_slice(&make(ledger.next_seq()).map_err(OutboxError::Encode)?);
        let before = ledger.dropped();
        let admitted = ledger.admit(value.len() as u64)?;
        for seq in &admitted.evicted {
            self.store.remove(MESSAGES, &seq.to_be_bytes())?;
        }
        if ledger.dropped() != before {
            self.store.put(META, META_DROPPED, &ledger.dropped().to_be_bytes())?;
            // At 1, 2, 4, 8, ... drops: a long outage logs a few lines, not one per message.
            if (before + 1..=ledger.dropped()).any(u64::is_power_of_two) {
                tracing::warn!(dropped = ledger.dropped(), cap = ledger.max_bytes, "outbox full: dropping the oldest");
            }
        }
        self.store.put(MESSAGES, &admitted.seq.to_be_bytes(), &value)?;
        self.store.put(META, META_SEQ, &admitted.seq.to_be_bytes())?;
        Ok(admitted.seq)
    }

    /// Makes everything appended so far durable (one fsync for all of it) and returns the durable seq. Blocking.
    pub fn flush(&self) -> Result<u64, OutboxError> {
        let target = self.ledger().last_seq();
        self.store.flush()?;
        Ok(self.durable_seq.fetch_max(target, Ordering::AcqRel).max(target))
    }

    /// True when messages were appended since the last flush.
    pub fn needs_flush(&self) -> bool {
        self.ledger().last_seq() > self.durable_seq.load(Ordering::Acquire)
    }

    /// Up to `limit` durable messages with a seq above `after`, oldest first.
    pub fn pending_after(&self, after: u64, limit: usize) -> Result<Vec<Pending>, OutboxError> {
        let durable = self.durable_seq.load(Ordering::Acquire);
        let rows = self.store.scan(MESSAGES, Some(&after.to_be_bytes()), limit)?;
        let mut out = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let Ok(key) = <[u8; 8]>::try_from(key.as_slice()) else { continue };
            let seq = u64::from_be_bytes(key);
            if seq > durable {
                break;
            }
            if let Some((first, payload)) = value.split_first()
                && let Some(channel) = untag(*first)
            {
                out.push(Pending { seq, channel, payload: payload.to_vec() });
            }
        }
        Ok(out)
    }

    /// Deletes an acknowledged message (durable at the next flush; until then a crash only causes a duplicate).
    pub fn ack(&self, seq: u64) -> Result<bool, OutboxError> {
        let mut ledger = self.ledger();
        let held = ledger.remove(seq);
        if held {
            self.store.remove(MESSAGES, &seq.to_be_bytes())?;
        }
        Ok(held)
    }

    pub fn stats(&self) -> OutboxStats {
        let ledger = self.ledger();
        OutboxStats {
            messages: ledger.messages(),
            bytes: ledger.bytes(),
            dropped: ledger.dropped(),
            last_seq: ledger.last_seq(),
            durable_seq: self.durable_seq.load(Ordering::Acquire),
        }
    }
}

fn hex_key(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(max: u64, start: &[(u64, u64)], sizes: &[u64], expected: &[(u64, &[u64])], dropped: u64) {
        let mut ledger = Ledger::new(max, 0, 0, start.iter().copied());
        let got: Vec<(u64, Vec<u64>)> =
            sizes.iter().map(|s| ledger.admit(*s).map(|a| (a.seq, a.evicted)).expect("fits")).collect();
        let want: Vec<(u64, Vec<u64>)> = expected.iter().map(|(s, e)| (*s, e.to_vec())).collect();
        assert_eq!(got, want);
        assert_eq!(ledger.dropped(), dropped);
        assert!(ledger.bytes() <= max);
    }

    #[test]
    fn admits_under_the_cap_and_drops_oldest_first() {
        check(100, &[], &[40, 40], &[(1, &[]), (2, &[])], 0);
        check(100, &[], &[40, 40, 40], &[(1, &[]), (2, &[]), (3, &[1])], 1);
        check(100, &[], &[40, 40, 100], &[(1, &[]), (2, &[]), (3, &[1, 2])], 2);
        // Recovered entries continue the counter and are the first to go.
        check(100, &[(7, 60), (9, 30)], &[50], &[(10, &[7])], 1);
    }

    #[test]
    fn seq_survives_empty_outbox_and_gaps() {
        let ledger = Ledger::new(10, 41, 3, []);
        assert_eq!((ledger.next_seq(), ledger.dropped(), ledger.messages()), (42, 3, 0));
        let ledger = Ledger::new(10, 5, 0, [(8, 1)]);
        assert_eq!(ledger.next_seq(), 9);
    }

    #[test]
    fn too_large_is_refused_and_remove_is_idempotent() {
        let mut ledger = Ledger::new(10, 0, 0, []);
        assert!(matches!(ledger.admit(11), Err(OutboxError::TooLarge { size: 11, max: 10 })));
        let a = ledger.admit(4).expect("fits");
        assert!(ledger.remove(a.seq));
        assert!(!ledger.remove(a.seq));
        assert_eq!((ledger.bytes(), ledger.messages(), ledger.next_seq()), (0, 0, 2));
    }

    #[test]
    fn outbox_round_trip_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = crate::store::SledStore::open(dir.path()).expect("open");
        let outbox = Outbox::open(store.clone(), 1_000).expect("outbox");
        for n in 0..3u8 {
            outbox.append(Channel::Telemetry, |seq| Ok(vec![n, seq as u8])).expect("append");
        }
        // Nothing is sendable before it is durable.
        assert_eq!(outbox.pending_after(0, 10).expect("pending"), vec![]);
        assert_eq!(outbox.flush().expect("flush"), 3);
        let pending = outbox.pending_after(0, 10).expect("pending");
        assert_eq!(
            pending.iter().map(|p| (p.seq, p.payload.clone())).collect::<Vec<_>>(),
            [(1, vec![0, 1]), (2, vec![1, 2]), (3, vec![2, 3])]
        );
        assert!(outbox.ack(2).expect("ack"));
        assert!(matches!(outbox.append(Channel::Status, |_| Ok(vec![])), Err(OutboxError::Channel(_))));
        outbox.flush().expect("flush");
        drop(outbox);
        let outbox = Outbox::open(store, 1_000).expect("reopen");
        let seqs: Vec<u64> = outbox.pending_after(0, 10).expect("pending").iter().map(|p| p.seq).collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(outbox.append(Channel::Events, |_| Ok(vec![9])).expect("append"), 4);
    }
}
