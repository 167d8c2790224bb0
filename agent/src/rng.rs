//! A small seedable random number generator for the pure policies (reservoir sampling in `window`, the random
//! baseline in `flagging`): the same seed gives the same draws, so tests replay exactly, and no dependency.

/// xorshift64*: fast, deterministic, good enough for sampling decisions (not for anything secret).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`. The state must not be zero (zero would stay zero), so the low bit is set.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform draw in `[0, 1)` from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_the_same_draws() {
        let draws = |seed| {
            let mut rng = Rng::new(seed);
            (0..4).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(9));
        // Zero is a usable seed, not a generator stuck at zero.
        assert!(draws(0).iter().all(|&d| d != 0));
    }

    #[test]
    fn unit_draws_stay_in_range_and_spread() {
        let mut rng = Rng::new(42);
        let draws: Vec<f64> = (0..10_000).map(|_| rng.next_f64()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let below_half = draws.iter().filter(|&&d| d < 0.5).count();
        assert!((4_500..5_500).contains(&below_half), "{below_half}");
    }
}
