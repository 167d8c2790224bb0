//! Store keys and times: big-endian, so byte order is the order scans need.
//!
//! - a device: its id then a 0 byte (ids never contain 0, so one device's prefix is never another's);
//! - a model version: the name's length (u16), the name, the version (u64) — self-delimiting for any name;
//! - a time: milliseconds since the Unix epoch as i64 with the sign bit flipped, so earlier sorts first, 1970 or not;
//! - a seq: u64.
//!
//! Pure; tested with values.

use outpost_common::protocol::ModelRef;
use outpost_common::topics::DeviceId;
use time::OffsetDateTime;

pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

/// Milliseconds since the Unix epoch (`time` keeps years within ±9999, so this never saturates in practice).
pub(crate) fn ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX)
}

/// The instant of `ms`, clamped into what `time` can represent.
pub(crate) fn at(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(if ms < 0 {
        OffsetDateTime::UNIX_EPOCH
    } else {
        time::macros::datetime!(9999-12-31 23:59:59 UTC)
    })
}

/// The start of the hour `ms` falls in.
pub(crate) fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS).saturating_mul(HOUR_MS)
}

pub(crate) fn time_key(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn time_of_key(bytes: &[u8]) -> Option<i64> {
    let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(raw) ^ (1 << 63)) as i64)
}

pub(crate) fn device(device: &DeviceId) -> Vec<u8> {
    let mut key = Vec::with_capacity(device.as_str().len() + 1);
    key.extend_from_slice(device.as_str().as_bytes());
    key.push(0);
    key
}

pub(crate) fn push_model(key: &mut Vec<u8>, model: &ModelRef) {
    let name = model.name.as_bytes();
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(name.get(..usize::from(len)).unwrap_or(name));
    key.extend_from_slice(&model.version.to_be_bytes());
}

pub(crate) fn model(model: &ModelRef) -> Vec<u8> {
    let mut key = Vec::new();
    push_model(&mut key, model);
    key
}

/// `device | model`: the prefix of one device's windows or roll-ups of one model version.
pub(crate) fn series(dev: &DeviceId, m: &ModelRef) -> Vec<u8> {
    let mut key = device(dev);
    push_model(&mut key, m);
    key
}

/// `model | device`: one entry of the index of series, by model version.
pub(crate) fn series_index(m: &ModelRef, dev: &DeviceId) -> Vec<u8> {
    let mut key = model(m);
    key.extend_from_slice(dev.as_str().as_bytes());
    key
}

/// `prefix | time`: also the exclusive scan start that includes every key at `ms` and after.
pub(crate) fn timed(prefix: &[u8], ms: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&time_key(ms));
    key
}

/// `prefix | time | seq`: a window.
pub(crate) fn window(prefix: &[u8], start_ms: i64, seq: u64) -> Vec<u8> {
    let mut key = timed(prefix, start_ms);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `device | seq`: an event.
pub(crate) fn event(dev: &DeviceId, seq: u64) -> Vec<u8> {
    let mut key = device(dev);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// FNV-1a, 64 bits: a stable hash (unlike std's `RandomState`, the same across runs and builds), cheap for the
/// short ids it spreads over workers and shards.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The time right after `prefix` in a key.
pub(crate) fn time_after(key: &[u8], prefix_len: usize) -> Option<i64> {
    time_of_key(key.get(prefix_len..)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_sort_as_bytes_and_round_trip() {
        let times = [i64::MIN, -HOUR_MS, -1, 0, 1, HOUR_MS, 1_795_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(time_key(pair[0]) < time_key(pair[1]), "{pair:?}");
        }
        for t in times {
            assert_eq!(time_of_key(&time_key(t)), Some(t));
        }
        assert_eq!(time_of_key(&[1, 2, 3]), None);
        let now = time::macros::datetime!(2026-11-21 10:17:03.5 UTC);
        assert_eq!(at(ms(now)), now);
        assert_eq!(at(hour_of(ms(now))), time::macros::datetime!(2026-11-21 10:00 UTC));
        assert_eq!(hour_of(-1), -HOUR_MS);
        assert_eq!(at(i64::MAX).year(), 9999);
    }

    #[test]
    fn device_and_model_prefixes_never_overlap() {
        let id = |s: &str| DeviceId::new(s).expect("id");
        let m = |name: &str, version| ModelRef { name: name.into(), version };
        assert!(!device(&id("cam1")).starts_with(&device(&id("cam"))));
        assert!(!series(&id("a"), &m("defect", 1)).starts_with(&series(&id("a"), &m("def", 1))));
        assert!(!model(&m("ab", 1)).starts_with(&model(&m("a", 1))));
        // A window key sits inside its series prefix, after its timed scan start.
        let prefix = series(&id("a"), &m("defect", 7));
        let w = window(&prefix, 5_000, 42);
        assert!(w.starts_with(&prefix) && w > timed(&prefix, 5_000) && w < timed(&prefix, 5_001));
        assert!(w > window(&prefix, 4_999, u64::MAX));
        assert_eq!(time_after(&w, prefix.len()), Some(5_000));
        assert!(event(&id("a"), 2) > event(&id("a"), 1));
    }
}
