//! Raw-window records: how a flush packs a series' windows of one hour into a chunk, and how every form a store
//! may hold is read back.
//!
//! A chunk as written: the byte [`PACKED`], then the windows as a postcard sequence (a varint count, then each
//! [`StoredWindow`] in turn: varints, length-prefixed strings, timestamps as seconds and nanoseconds — see
//! `outpost_common::protocol::timestamp`). Stores written by earlier versions hold JSON: a chunk as an array, or,
//! before chunks, one window per record. A JSON record starts with `[` or `{`, never with [`PACKED`].
//!
//! Design: a raw window is written once and read rarely (a device's history in the API, a rollout's windows, the
//! edges of a summary), so it is stored in the form that is cheapest to write and smallest in sled, whose cost per
//! flush grows with the bytes written: about a third of the JSON's size, and no timestamp formatting. The field
//! order of [`StoredWindow`] and [`WindowSummary`] is the format: changing either needs a new format byte (and
//! this module reading the old one).

use outpost_common::protocol::{WindowSummary, timestamp};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::IngestError;
use super::record;
use super::series::StoredWindow;

/// The first byte of a packed chunk (format 1).
pub(crate) const PACKED: u8 = 1;

/// A [`StoredWindow`] as written, borrowing the window.
#[derive(Serialize)]
struct StoredWindowRef<'a> {
    seq: u64,
    #[serde(with = "timestamp")]
    received_at: OffsetDateTime,
    window: &'a WindowSummary,
}

/// Windows of one series and hour, packed as they arrive.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub(crate) count: usize,
    packed: Vec<u8>,
}

impl Chunk {
    /// The bytes of its windows.
    pub(crate) fn len(&self) -> usize {
        self.packed.len()
    }

    /// Packs one window onto the chunk and returns its packed bytes; on an error the chunk is as it was.
    pub(crate) fn push(
        &mut self,
        seq: u64,
        received_at: OffsetDateTime,
        window: &WindowSummary,
    ) -> Result<&[u8], IngestError> {
        let before = self.packed.len();
        if let Err(e) = postcard::to_extend(&StoredWindowRef { seq, received_at, window }, Tail(&mut self.packed)) {
            self.packed.truncate(before);
            return Err(IngestError::Corrupt { what: "window", detail: format!("cannot pack: {e}") });
        }
        self.count += 1;
        Ok(&self.packed[before..])
    }

    /// The record to store.
    pub(crate) fn record(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.packed.len() + 11);
        out.push(PACKED);
        // Packing a u64 into a Vec cannot fail.
        let _ = postcard::to_extend(&(self.count as u64), Tail(&mut out));
        out.extend_from_slice(&self.packed);
        out
    }
}

/// Appends to a buffer it borrows (postcard's `to_extend` would otherwise take the buffer, and drop it on an error).
struct Tail<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Tail<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        self.0.extend(bytes);
    }
}

/// What a JSON raw-window record holds: a chunk, or one window.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonRecord {
    Chunk(Vec<StoredWindow>),
    One(Box<StoredWindow>),
}

/// The windows of a raw-window record, in any of its forms.
pub(crate) fn read(value: &[u8]) -> Result<Vec<StoredWindow>, IngestError> {
    if let Some(packed) = value.strip_prefix(&[PACKED]) {
        let corrupt = |detail: String| IngestError::Corrupt { what: "window", detail };
        let (windows, rest) = postcard::take_from_bytes::<Vec<StoredWindow>>(packed)
            .map_err(|e| corrupt(format!("cannot unpack a chunk: {e}")))?;
        if !rest.is_empty() {
            return Err(corrupt(format!("{} bytes after the chunk's windows", rest.len())));
        }
        return Ok(windows);
    }
    Ok(match record::decode::<JsonRecord>(value, "window")? {
        JsonRecord::Chunk(windows) => windows,
        JsonRecord::One(window) => vec![*window],
    })
}

/// The number of windows in a raw-window record (0 if unreadable).
pub(crate) fn count(value: &[u8]) -> u64 {
    match value.strip_prefix(&[PACKED]) {
        Some(packed) => postcard::take_from_bytes::<u64>(packed).map_or(0, |(count, _)| count),
        None => read(value).map_or(0, |windows| windows.len() as u64),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use outpost_common::protocol::{ConfidenceHistogram, Latency, ModelRef};

    use super::*;

    /// A window with what packing must keep: sub-second times, an offset other than UTC, labels to escape.
    pub(crate) fn stored(seq: u64) -> StoredWindow {
        let start = time::macros::datetime!(2026-11-22 10:00:00.123456789 +02:00) + time::Duration::seconds(seq as i64);
        let mut confidence = ConfidenceHistogram::default();
        confidence.0[19] = seq;
        StoredWindow {
            seq,
            received_at: start + time::Duration::milliseconds(1500),
            window: WindowSummary {
                start,
                end: start + time::Duration::seconds(10),
                camera: "line \"1\"".into(),
                model: ModelRef { name: "défaut".into(), version: 3 },
                frames: 300 + seq,
                drops: 2,
                confidence,
                classes: BTreeMap::from([("dent".into(), 4), ("scratch/deep".into(), u64::MAX)]),
                latency_ms: Latency { p50: 11.5, p95: 17.25, p99: f32::MAX },
                flagged: 1,
            },
        }
    }

    fn chunk(windows: &[StoredWindow]) -> Chunk {
        let mut chunk = Chunk::default();
        for w in windows {
            chunk.push(w.seq, w.received_at, &w.window).expect("packs");
        }
        chunk
    }

    #[test]
    fn a_packed_chunk_reads_back_exactly_and_smaller_than_json() {
        let windows: Vec<StoredWindow> = [9, 4, 7].map(stored).into();
        let chunk = chunk(&windows);
        assert_eq!(chunk.count, 3);
        let record = chunk.record();
        assert_eq!(read(&record).expect("reads"), windows);
        assert_eq!(count(&record), 3);
        let json = record::encode(&windows, "window").expect("json");
        assert!(record.len() * 2 < json.len(), "packed {} bytes, JSON {}", record.len(), json.len());
        // What the API serves is unchanged: RFC 3339 text.
        let api = serde_json::to_value(&windows[0]).expect("json");
        assert_eq!(api["received_at"], "2026-11-22T10:00:10.623456789+02:00");
        assert_eq!(read(&Chunk::default().record()).expect("an empty chunk reads"), Vec::<StoredWindow>::new());
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_wrong_answer() {
        let record = chunk(&[stored(1), stored(2)]).record();
        for cut in [1, 2, record.len() / 2, record.len() - 1] {
            let error = read(&record[..cut]).expect_err("truncated");
            assert!(error.to_string().contains("unpack"), "{error}");
        }
        let mut longer = record.clone();
        longer.push(0);
        assert!(read(&longer).expect_err("trailing bytes").to_string().contains("after the chunk"));
        // A count larger than what follows (a damaged header).
        let mut wrong = vec![PACKED, 3];
        wrong.extend_from_slice(&record[2..]);
        assert!(read(&wrong).is_err());
        assert_eq!(count(b"\x01"), 0);
        assert_eq!(count(b"not json"), 0);
        assert!(read(b"{\"seq\":1}").is_err());
    }
}
