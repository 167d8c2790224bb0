//! The ingest's journal: the windows taken into memory since the last checkpoint, in the order each device's were
//! taken, written by every flush as a few large records and read back once, when the ingest opens after a crash.
//!
//! A record: the byte [`FORMAT`], the number of entries (u32, little-endian), then each entry: the device id
//! (postcard string) followed by the window exactly as a chunk packs it (`raw.rs`). Records hold about
//! [`RECORD_BYTES`] each, the size of a full chunk: with 64 KiB records, sled 0.34.7 here hung in the flush of a
//! store being dropped (`make_stable` never returned, every sled thread idle), at the end of a run that wrote and
//! deleted a few thousand of them; with 8 KiB it did not, as the chunks never have.
//!
//! Design: writing a device's records (tally, roll-up, chunk) costs sled a record each, so with many devices each
//! sending a window or two a second, a flush every second wrote more records than windows. The journal makes a
//! window durable in a shared record instead; the per-device records are written at checkpoints, seconds apart,
//! with several windows each (`hot.rs`). Replaying is taking each entry again through the de-duplication window,
//! so an entry that a checkpoint already wrote is a duplicate and changes nothing.

use outpost_common::topics::DeviceId;

use super::error::IngestError;
use super::series::StoredWindow;

/// The first byte of a journal record (format 1).
pub(crate) const FORMAT: u8 = 1;
/// A record is sealed once it holds this many bytes (see the module documentation for why no more).
pub(crate) const RECORD_BYTES: usize = 8 * 1024;
/// Format byte and entry count.
const HEADER: usize = 5;

/// Journal entries not written yet: sealed records and the one being filled.
#[derive(Debug, Default)]
pub(crate) struct Entries {
    sealed: Vec<Vec<u8>>,
    open: Vec<u8>,
    count: u32,
}

impl Entries {
    /// Adds a window taken for `device`, `packed` as its chunk holds it.
    pub(crate) fn push(&mut self, device: &DeviceId, packed: &[u8]) {
        if self.open.is_empty() {
            self.open.reserve(RECORD_BYTES);
            self.open.extend_from_slice(&[FORMAT, 0, 0, 0, 0]);
        }
        let id = device.as_str().as_bytes();
        let mut len = [0u8; 5];
        // A varint of the id's length, then the id: postcard's string.
        let prefix = postcard::to_slice(&(id.len() as u64), &mut len).map_or(&[][..], |p| &*p);
        self.open.extend_from_slice(prefix);
        self.open.extend_from_slice(id);
        self.open.extend_from_slice(packed);
        self.count += 1;
        if self.open.len() >= RECORD_BYTES || self.count == u32::MAX {
            self.seal();
        }
    }

    fn seal(&mut self) {
        if self.count == 0 {
            return;
        }
        let mut record = std::mem::take(&mut self.open);
        record[1..HEADER].copy_from_slice(&self.count.to_le_bytes());
        self.sealed.push(record);
        self.count = 0;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.count == 0
    }

    /// The records to write, leaving this empty.
    pub(crate) fn take(&mut self) -> Vec<Vec<u8>> {
        self.seal();
        std::mem::take(&mut self.sealed)
    }

    /// Puts back records taken for a write that failed, before anything added since.
    pub(crate) fn put_back(&mut self, mut records: Vec<Vec<u8>>) {
        records.append(&mut self.sealed);
        self.sealed = records;
    }
}

/// The entries of a record, in order.
pub(crate) fn read(record: &[u8]) -> Result<Vec<(DeviceId, StoredWindow)>, IngestError> {
    let corrupt = |detail: String| IngestError::Corrupt { what: "journal record", detail };
    let (Some(&FORMAT), Some(count)) = (record.first(), record.get(1..HEADER)) else {
        return Err(corrupt(format!("not a journal record ({} bytes)", record.len())));
    };
    let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]);
    let mut rest = &record[HEADER..];
    let mut entries = Vec::new();
    for n in 0..count {
        let entry = |e: postcard::Error| corrupt(format!("entry {n} of {count}: {e}"));
        let (device, after) = postcard::take_from_bytes::<String>(rest).map_err(entry)?;
        let device = DeviceId::new(&device).map_err(|e| corrupt(format!("entry {n} of {count}: {e}")))?;
        let (window, after) = postcard::take_from_bytes::<StoredWindow>(after).map_err(entry)?;
        entries.push((device, window));
        rest = after;
    }
    if !rest.is_empty() {
        return Err(corrupt(format!("{} bytes after its {count} entries", rest.len())));
    }
    Ok(entries)
}

/// The key of the `n`th journal record: big-endian, so the store keeps them in order.
pub(crate) fn key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// The number of a journal record's key, if it is one.
pub(crate) fn number(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::raw::Chunk;
    use crate::ingest::raw::tests::stored;

    /// Packs `w` as a chunk does and journals it for `device`.
    fn push(entries: &mut Entries, device: &str, w: &StoredWindow) {
        let mut chunk = Chunk::default();
        let packed = chunk.push(w.seq, w.received_at, &w.window).expect("packs");
        entries.push(&DeviceId::new(device).expect("id"), packed);
    }

    #[test]
    fn entries_read_back_in_order_across_sealed_records() {
        let mut entries = Entries::default();
        assert!(entries.is_empty() && entries.take().is_empty());
        let mut expected = Vec::new();
        // Enough windows to fill several records.
        for seq in 0..2000 {
            let device = format!("cam-{}", seq % 7);
            push(&mut entries, &device, &stored(seq));
            expected.push((DeviceId::new(&device).expect("id"), stored(seq)));
        }
        let records = entries.take();
        assert!(records.len() > 1, "{} records", records.len());
        assert!(records.iter().all(|r| r.len() < RECORD_BYTES + 1024));
        assert!(entries.is_empty());
        let read: Vec<_> = records.iter().flat_map(|r| read(r).expect("readable")).collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn records_put_back_come_before_newer_ones() {
        let mut entries = Entries::default();
        push(&mut entries, "cam-1", &stored(1));
        let first = entries.take();
        push(&mut entries, "cam-1", &stored(2));
        entries.put_back(first);
        let seqs: Vec<u64> =
            entries.take().iter().flat_map(|r| read(r).expect("readable")).map(|(_, w)| w.seq).collect();
        assert_eq!(seqs, [1, 2]);
    }

    #[test]
    fn a_damaged_record_is_an_error() {
        let mut entries = Entries::default();
        push(&mut entries, "cam-1", &stored(1));
        push(&mut entries, "cam-2", &stored(2));
        let record = entries.take().remove(0);
        for cut in [0, 1, 3, HEADER, record.len() / 2, record.len() - 1] {
            assert!(read(&record[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = record.clone();
        longer.push(0);
        assert!(read(&longer).expect_err("trailing").to_string().contains("after its 2 entries"));
        let mut bad_id = record.clone();
        bad_id[HEADER + 1] = b'/';
        assert!(read(&bad_id).is_err(), "a device id that is not one");
        let mut format = record;
        format[0] = 9;
        assert!(read(&format).expect_err("format").to_string().contains("not a journal record"));
        assert_eq!(number(&key(42)), Some(42));
        assert_eq!(number(b"short"), None);
    }
}
