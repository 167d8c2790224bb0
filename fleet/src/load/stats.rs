//! Figures from raw samples: percentiles and rates; pure.

/// The `p`-th percentile (0..=100) of `samples` by nearest rank; `None` when empty. Sorts in place.
pub fn percentile(samples: &mut [f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = (p.clamp(0.0, 100.0) / 100.0 * samples.len() as f64).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

/// Per second, from a count over `secs` (0 when no time passed).
pub fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Summary of a set of delays in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delays {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Delays {
    pub fn of(samples: &mut [f64]) -> Option<Delays> {
        Some(Delays {
            count: samples.len(),
            p50: percentile(samples, 50.0)?,
            p99: percentile(samples, 99.0)?,
            max: percentile(samples, 100.0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(samples: &[f64], p: f64, expected: Option<f64>) {
        let mut s = samples.to_vec();
        assert_eq!(percentile(&mut s, p), expected, "p{p} of {samples:?}");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        check(&[], 99.0, None);
        check(&[7.0], 0.0, Some(7.0));
        check(&[7.0], 99.0, Some(7.0));
        check(&hundred, 50.0, Some(50.0));
        check(&hundred, 99.0, Some(99.0));
        check(&hundred, 100.0, Some(100.0));
        check(&hundred, 0.0, Some(1.0));
        check(&[3.0, 1.0, 2.0], 99.0, Some(3.0));
        check(&[3.0, 1.0, 2.0], 34.0, Some(2.0));
        check(&[1.0, f64::NAN], 50.0, Some(1.0));
    }

    #[test]
    fn rates_never_divide_by_zero() {
        assert_eq!(rate(10, 2.0), 5.0);
        assert_eq!(rate(10, 0.0), 0.0);
    }
}
