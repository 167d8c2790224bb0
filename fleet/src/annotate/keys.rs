//! Tree names and key layouts of the annotation queue; pure.
//!
//! - `annotate.state`: sample id (32 bytes) → [`SampleState`](super::SampleState) JSON. The source of truth; every
//!   change is a compare-and-swap on it.
//! - `annotate.queue`: `model ‖ rank (u32 BE) ‖ sample id` → [`QueueEntry`] JSON, for queued and claimed samples.
//!   An index: written before the state change that needs it, removed after the state change that ends it, so a
//!   crash leaves at most a stale entry (skipped when read; removed lazily once its sample is final).
//! - `annotate.review`: `model ‖ sample id` → empty, for samples waiting for review. Same rules.
//! - `annotate.buckets`: `model ‖ JSON [class, site]` → the turn (u64 BE) a bucket was last served at.
//! - `annotate.labels`: `model ‖ version (u64 BE)` → the model version's class names (JSON), recorded when a label
//!   of that version is accepted; exports name their classes from it.
//!
//! `model` is the model name prefixed by its length (u16 BE), so no name is a prefix of another's keys.

use outpost_common::manifest::Sha256Sum;
use serde::{Deserialize, Serialize};

pub(crate) const STATE: &str = "annotate.state";
pub(crate) const QUEUE: &str = "annotate.queue";
pub(crate) const REVIEW: &str = "annotate.review";
pub(crate) const BUCKETS: &str = "annotate.buckets";
pub(crate) const LABELS: &str = "annotate.labels";

/// What the queue index keeps per sample to order and balance without reading the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueueEntry {
    /// The model's most confident predicted class (`""` when it predicted nothing).
    pub class: String,
    pub device: String,
}

pub(crate) fn model_prefix(model: &str) -> Vec<u8> {
    let name = model.as_bytes();
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(2 + name.len());
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(name.get(..usize::from(len)).unwrap_or(name));
    key
}

/// Orders samples by uncertainty: a lower headline confidence is a smaller rank. Headlines are clamped to 0..1 and
/// kept to six decimals; a sample without a headline (a detector that found nothing) ranks after every scored one.
pub(crate) fn rank(headline: Option<f32>) -> u32 {
    match headline {
        Some(h) if h.is_finite() => (f64::from(h.clamp(0.0, 1.0)) * 1_000_000.0).round() as u32,
        _ => u32::MAX,
    }
}

pub(crate) fn queue_key(model: &str, rank: u32, sample: &Sha256Sum) -> Vec<u8> {
    let mut key = model_prefix(model);
    key.extend_from_slice(&rank.to_be_bytes());
    key.extend_from_slice(&sample.0);
    key
}

/// The rank and sample of a queue key, given the length of its model prefix.
pub(crate) fn parse_queue_key(key: &[u8], prefix_len: usize) -> Option<(u32, Sha256Sum)> {
    let rest = key.get(prefix_len..)?;
    let rank = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let sample = Sha256Sum(rest.get(4..)?.try_into().ok()?);
    Some((rank, sample))
}

pub(crate) fn review_key(model: &str, sample: &Sha256Sum) -> Vec<u8> {
    let mut key = model_prefix(model);
    key.extend_from_slice(&sample.0);
    key
}

pub(crate) fn parse_review_key(key: &[u8], prefix_len: usize) -> Option<Sha256Sum> {
    Some(Sha256Sum(key.get(prefix_len..)?.try_into().ok()?))
}

pub(crate) fn bucket_key(model: &str, class: &str, site: &str) -> Vec<u8> {
    let mut key = model_prefix(model);
    // JSON keeps the pair unambiguous whatever the names contain; it cannot fail for two strings.
    key.extend_from_slice(&serde_json::to_vec(&(class, site)).unwrap_or_default());
    key
}

pub(crate) fn parse_bucket_key(key: &[u8], prefix_len: usize) -> Option<(String, String)> {
    serde_json::from_slice(key.get(prefix_len..)?).ok()
}

pub(crate) fn labels_key(model: &str, version: u64) -> Vec<u8> {
    let mut key = model_prefix(model);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_order_by_confidence_with_unscored_last() {
        let check = |headline: Option<f32>, expected: u32| assert_eq!(rank(headline), expected, "{headline:?}");
        check(Some(0.0), 0);
        check(Some(0.41), 410_000);
        check(Some(1.0), 1_000_000);
        check(Some(7.0), 1_000_000);
        check(Some(-1.0), 0);
        check(Some(f32::NAN), u32::MAX);
        check(None, u32::MAX);
        assert!(
            queue_key("m", rank(Some(0.2)), &Sha256Sum([9; 32])) < queue_key("m", rank(Some(0.3)), &Sha256Sum([0; 32]))
        );
    }

    #[test]
    fn keys_round_trip_and_prefixes_do_not_overlap() {
        let sample = Sha256Sum([7; 32]);
        let key = queue_key("defect", 42, &sample);
        assert_eq!(parse_queue_key(&key, model_prefix("defect").len()), Some((42, sample)));
        assert_eq!(parse_queue_key(&key[..10], model_prefix("defect").len()), None);
        assert!(!queue_key("ab", 0, &sample).starts_with(&model_prefix("a")));
        assert_eq!(parse_review_key(&review_key("m", &sample), model_prefix("m").len()), Some(sample));
        let bucket = bucket_key("m", "a\"\u{0}", "site");
        assert_eq!(parse_bucket_key(&bucket, model_prefix("m").len()), Some(("a\"\u{0}".into(), "site".into())));
    }
}
