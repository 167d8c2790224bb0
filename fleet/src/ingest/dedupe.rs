//! Which `seq`s of one device were already stored: a high-water mark and a bitmap of the seqs just below it.
//!
//! Design: pure and fixed-size. A device's `seq` rises with every message (telemetry and events share it) and
//! survives the agent's restarts, but deliveries are at-least-once and a replay after an outage can arrive out of
//! order, so "seq ≤ highest seen" alone would drop a late first delivery. The window remembers, exactly, every seq
//! in `(high − width, high]`: a seq marked there is a duplicate, an unmarked one is new and stored once. A seq at or
//! below `high − width` can no longer be told apart and is refused as [`Seen::Stale`] — only a delivery reordered
//! by more than `width` messages lands there, and refusing keeps a replayed old message from ever being stored twice.
//! The record is a few hundred bytes per device whatever its history, and is persisted with the device's totals.

use serde::{Deserialize, Serialize};

/// What the window says about a seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never stored: store it (and mark it).
    New,
    /// Already stored.
    Duplicate,
    /// Below the window: too old to tell, refused.
    Stale,
}

/// The seqs of one device stored so far, within the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeqWindow {
    /// The highest seq stored; `None` before the first.
    high: Option<u64>,
    /// Bit `i` (word `i / 64`, bit `i % 64`) set: seq `high − i` was stored. `64 × bits.len()` is the width.
    bits: Vec<u64>,
}

impl SeqWindow {
    /// An empty window remembering `width` seqs (rounded up to a multiple of 64, at least 64).
    pub fn new(width: u32) -> SeqWindow {
        SeqWindow { high: None, bits: vec![0; words(width)] }
    }

    pub fn width(&self) -> u64 {
        64 * self.bits.len() as u64
    }

    pub fn high(&self) -> Option<u64> {
        self.high
    }

    /// What storing `seq` would be, without changing anything.
    pub fn check(&self, seq: u64) -> Seen {
        let Some(high) = self.high else {
            return Seen::New;
        };
        if seq > high {
            return Seen::New;
        }
        let back = high - seq;
        if back >= self.width() {
            return Seen::Stale;
        }
        if self.bit(back) { Seen::Duplicate } else { Seen::New }
    }

    /// Marks `seq` as stored if it is new; returns what it was before.
    pub fn mark(&mut self, seq: u64) -> Seen {
        let seen = self.check(seq);
        if seen != Seen::New {
            return seen;
        }
        match self.high {
            Some(high) if seq <= high => self.set(high - seq),
            Some(high) => {
                self.shift(seq - high);
                self.high = Some(seq);
                self.set(0);
            }
            None => {
                self.high = Some(seq);
                self.set(0);
            }
        }
        Seen::New
    }

    /// Adapts a stored window to a new configured width. Seqs that enter the window when it grows are taken as
    /// stored, and seqs that leave it when it shrinks become stale: either way nothing is stored twice.
    pub fn resize(&mut self, width: u32) {
        let want = words(width);
        if self.high.is_none() {
            self.bits = vec![0; want];
            return;
        }
        self.bits.resize(want, u64::MAX);
    }

    fn bit(&self, back: u64) -> bool {
        let (word, bit) = (back / 64, back % 64);
        usize::try_from(word).ok().and_then(|w| self.bits.get(w)).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn set(&mut self, back: u64) {
        let (word, bit) = (back / 64, back % 64);
        if let Some(w) = usize::try_from(word).ok().and_then(|w| self.bits.get_mut(w)) {
            *w |= 1 << bit;
        }
    }

    /// Moves every mark `by` places further back (the high-water mark rose by `by`); marks pushed past the width
    /// fall off.
    fn shift(&mut self, by: u64) {
        let len = self.bits.len();
        let whole = usize::try_from(by / 64).unwrap_or(usize::MAX);
        if whole >= len {
            self.bits.iter_mut().for_each(|w| *w = 0);
            return;
        }
        let part = (by % 64) as u32;
        for i in (0..len).rev() {
            let from = i.checked_sub(whole);
            let high = from.and_then(|f| self.bits.get(f)).copied().unwrap_or(0);
            let low = from.and_then(|f| f.checked_sub(1)).and_then(|f| self.bits.get(f)).copied().unwrap_or(0);
            let value = if part == 0 { high } else { (high << part) | (low >> (64 - part)) };
            if let Some(w) = self.bits.get_mut(i) {
                *w = value;
            }
        }
    }
}

fn words(width: u32) -> usize {
    usize::try_from(width.div_ceil(64).max(1)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks each seq in turn on a 128-wide window and compares what each was.
    fn check(seqs: &[u64], expected: &[Seen]) {
        let mut w = SeqWindow::new(128);
        let got: Vec<Seen> = seqs.iter().map(|&s| w.mark(s)).collect();
        assert_eq!(got, expected, "seqs {seqs:?}");
    }

    use Seen::{Duplicate as D, New as N, Stale as S};

    #[test]
    fn in_order_with_gaps_and_duplicates() {
        check(&[1, 2, 3, 3, 2, 7, 7, 1], &[N, N, N, D, D, N, D, D]);
        check(&[0, 0], &[N, D]);
        check(&[u64::MAX, u64::MAX, u64::MAX - 1], &[N, D, N]);
    }

    #[test]
    fn late_first_deliveries_are_new_once() {
        // 5 and 6 were delayed behind 7..9; both arrive late, then again.
        check(&[1, 2, 3, 4, 7, 8, 9, 6, 5, 6, 5], &[N, N, N, N, N, N, N, N, N, D, D]);
        // Across word boundaries (64) of the bitmap.
        check(&[100, 200, 150, 150, 73, 73, 72], &[N, N, N, D, N, D, S]);
    }

    #[test]
    fn replays_below_the_window_are_stale() {
        let mut w = SeqWindow::new(128);
        for seq in 1..=1000 {
            assert_eq!(w.mark(seq), N);
        }
        assert_eq!(w.check(1000 - 127), D, "inside the window");
        assert_eq!(w.check(1000 - 128), S, "just below it");
        assert_eq!(w.check(1), S);
        // A jump further than the width forgets everything below it.
        assert_eq!(w.mark(1_000_000), N);
        assert_eq!((w.check(999_999), w.check(1000)), (N, S));
    }

    #[test]
    fn shifts_by_every_amount_keep_exact_marks() {
        for jump in [1u64, 2, 63, 64, 65, 100, 127, 128, 129] {
            let mut w = SeqWindow::new(128);
            for seq in [10u64, 12, 13] {
                w.mark(seq);
            }
            w.mark(13 + jump);
            for seq in 1..13 + jump {
                let expected = if 13 + jump - seq >= 128 {
                    S
                } else if [10, 12, 13].contains(&seq) {
                    D
                } else {
                    N
                };
                assert_eq!(w.check(seq), expected, "jump {jump}, seq {seq}");
            }
        }
    }

    #[test]
    fn resizing_never_stores_twice() {
        let mut w = SeqWindow::new(64);
        for seq in [1u64, 100, 90] {
            w.mark(seq);
        }
        w.resize(256);
        assert_eq!(w.width(), 256);
        assert_eq!((w.check(90), w.check(91), w.check(30)), (D, N, D), "grown: the new part counts as stored");
        w.resize(64);
        assert_eq!((w.check(90), w.check(30)), (D, S));
        let mut empty = SeqWindow::new(64);
        empty.resize(128);
        assert_eq!(empty.check(5), N);
    }

    #[test]
    fn round_trips_through_json() {
        let mut w = SeqWindow::new(128);
        for seq in [5u64, 9, 70, 71] {
            w.mark(seq);
        }
        let back: SeqWindow = serde_json::from_str(&serde_json::to_string(&w).expect("serialises")).expect("parses");
        assert_eq!(back, w);
    }
}
