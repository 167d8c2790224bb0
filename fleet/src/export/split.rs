//! The deterministic train/val split; pure.
//!
//! A sample's bucket is the first 8 bytes of its id (big-endian) modulo 10,000. The id is the sha256 of the image,
//! so buckets are uniform without hashing again. A sample is in `val` when its bucket is below
//! `round(val_ratio × 10,000)`. Consequences: the same sample lands in the same split in every export (no leakage
//! between a model's training and validation data as the dataset grows), and raising the ratio only moves samples
//! from train to val, never back.

use outpost_common::manifest::Sha256Sum;
use serde::Serialize;

const BUCKETS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }

    /// The split of a sample at this validation ratio (clamped to 0..1).
    pub fn of(sample: &Sha256Sum, val_ratio: f64) -> Split {
        let mut head = [0u8; 8];
        head.copy_from_slice(&sample.0[..8]);
        let bucket = u64::from_be_bytes(head) % BUCKETS;
        let ratio = if val_ratio.is_finite() { val_ratio.clamp(0.0, 1.0) } else { 0.0 };
        let cut = (ratio * BUCKETS as f64).round() as u64;
        if bucket < cut { Split::Val } else { Split::Train }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_stable_monotone_and_near_the_ratio() {
        let ids: Vec<Sha256Sum> = (0u32..2000).map(|i| Sha256Sum::of(&i.to_le_bytes())).collect();
        let val_at = |ratio: f64| ids.iter().filter(|id| Split::of(id, ratio) == Split::Val).count();
        assert_eq!(val_at(0.0), 0);
        assert_eq!(val_at(1.0), ids.len());
        let fifth = val_at(0.2);
        assert!((340..=460).contains(&fifth), "{fifth} of 2000 at 0.2");
        for id in &ids {
            assert_eq!(Split::of(id, 0.2), Split::of(id, 0.2));
            if Split::of(id, 0.2) == Split::Val {
                assert_eq!(Split::of(id, 0.3), Split::Val, "raising the ratio never moves a sample back to train");
            }
        }
        assert_eq!(val_at(f64::NAN), 0);
    }
}
