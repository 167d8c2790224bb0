//! Shapes shared by telemetry and manifests: the confidence histogram, latency percentiles, a model reference.

use serde::{Deserialize, Serialize};

/// Counts of confidence values in 20 fixed bins of width 0.05 over 0..1: bin `i` holds `[i/20, (i+1)/20)`, the
/// last bin also holds 1.0. Fixed bins make histograms from any device and any window directly addable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConfidenceHistogram(pub [u64; ConfidenceHistogram::BINS]);

impl ConfidenceHistogram {
    pub const BINS: usize = 20;

    /// The bin of a confidence value; `None` for values outside 0..=1 and NaN.
    pub fn bin(confidence: f32) -> Option<usize> {
        if !(0.0..=1.0).contains(&confidence) {
            return None;
        }
        // In range and finite, so the cast is exact enough and the min keeps 1.0 in the last bin.
        Some(((confidence * Self::BINS as f32) as usize).min(Self::BINS - 1))
    }

    /// Counts one value; returns false (and counts nothing) for a value outside 0..=1.
    pub fn add(&mut self, confidence: f32) -> bool {
        match Self::bin(confidence).and_then(|b| self.0.get_mut(b)) {
            Some(count) => {
                *count = count.saturating_add(1);
                true
            }
            None => false,
        }
    }

    /// Adds another histogram's counts, bin by bin.
    pub fn merge(&mut self, other: &ConfidenceHistogram) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |acc, c| acc.saturating_add(*c))
    }

    /// The mean confidence, each count taken at its bin's centre (at most 0.025 from the exact mean); `None` when
    /// empty.
    pub fn mean(&self) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let width = 1.0 / Self::BINS as f64;
        let sum: f64 = self.0.iter().enumerate().map(|(i, &c)| (i as f64 + 0.5) * width * c as f64).sum();
        Some(sum / total as f64)
    }
}

/// Inference latency percentiles over a window, in milliseconds (preprocess + inference + postprocess).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub p50: f32,
    pub p95: f32,
    pub p99: f32,
}

/// Which model produced something: its manifest name and version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    pub name: String,
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_uses_bin_centres() {
        let mut h = ConfidenceHistogram::default();
        assert_eq!(h.mean(), None);
        h.add(0.0);
        h.add(1.0);
        assert!((h.mean().expect("mean") - 0.5).abs() < 1e-9);
        h.add(0.91);
        assert!((h.mean().expect("mean") - (0.025 + 0.975 + 0.925) / 3.0).abs() < 1e-9);
    }

    #[test]
    fn bins() {
        let check = |c: f32, expected: Option<usize>| assert_eq!(ConfidenceHistogram::bin(c), expected, "{c}");
        check(0.0, Some(0));
        check(0.049, Some(0));
        check(0.05, Some(1));
        check(0.5, Some(10));
        check(0.999, Some(19));
        check(1.0, Some(19));
        check(-0.01, None);
        check(1.01, None);
        check(f32::NAN, None);
        check(f32::INFINITY, None);
    }

    #[test]
    fn add_merge_total() {
        let mut h = ConfidenceHistogram::default();
        assert!(h.add(0.97));
        assert!(h.add(0.12));
        assert!(!h.add(f32::NAN));
        let mut sum = h;
        sum.merge(&h);
        assert_eq!((h.total(), sum.total(), sum.0[19], sum.0[2]), (2, 4, 2, 2));
    }
}
