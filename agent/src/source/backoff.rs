//! Retry delays: exponential with a cap and jitter, reset by a success. Pure apart from the jitter draw.

use std::time::Duration;

/// Exponential backoff. `Design:` the delay doubles from `initial` up to `max` on each consecutive failure and
/// returns to `initial` after a success; each delay is jittered down by up to a quarter so that many devices that
/// lost the same camera or server do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), failures: 0 }
    }

    /// The delay before the next attempt after one more failure.
    pub fn fail(&mut self) -> Duration {
        let delay = self.nominal();
        self.failures = self.failures.saturating_add(1);
        let jitter = delay.mul_f64(fastrand::f64() * 0.25);
        delay.saturating_sub(jitter)
    }

    /// The delay before the next attempt without jitter, for the current failure count.
    pub fn nominal(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(20));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn succeed(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let mut nominal = Vec::new();
        for _ in 0..6 {
            nominal.push(b.nominal());
            let d = b.fail();
            assert!(d <= *nominal.last().expect("pushed") && d >= nominal.last().expect("pushed").mul_f64(0.75));
        }
        assert_eq!(nominal, [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        b.succeed();
        assert_eq!(b.nominal(), ms(100));
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            b.fail();
        }
        assert_eq!(b.nominal(), Duration::from_secs(30));
    }
}
