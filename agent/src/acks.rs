//! Deferred acknowledgements: a file from a folder camera is acknowledged (recorded as processed, kept, moved or
//! deleted) only once the telemetry that counts its frame is durable in the outbox.
//!
//! Design: pure, generic over the acknowledgement so it is tested with plain values. A frame's ack is *held* with
//! its camera's open window. When the window closes, the consumer appends the camera's per-frame batches and
//! summaries to the outbox and *seals* the held acks with what happened:
//!
//! - appended: the acks wait for the outbox's durable mark to reach the last seq appended for the camera (the
//!   outbox makes seqs durable in order, so that one seq covers the summaries, the batches before them and the
//!   sample events of the window's flagged frames);
//! - nothing to append (the window had nothing that counts these frames): the acks run now;
//! - a summary could not be appended: the acks are released, so the source hands the files out again and the next
//!   window counts them. This is at-least-once: if another model version's summary of the same close was stored,
//!   those frames are counted twice, which is better than never.
//!
//! A `kill -9` loses the held and sealed acks with the process; their files were never recorded as processed, so the
//! next start reads them again, and the windows that counted them before the kill were never durable (so never
//! sent): every file is counted once.

use std::collections::BTreeMap;

/// What closing one camera's window put in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Every summary was appended; the last seq appended for the camera.
    Appended { last_seq: u64 },
    /// No message counts the held frames.
    Nothing,
    /// A summary could not be appended.
    Failed,
}

/// What to do with the acks of a sealed window now.
#[derive(Debug, PartialEq, Eq)]
pub enum Sealed<A> {
    /// They wait for the durable mark (see [`Deferred::durable`]).
    Waiting,
    /// Acknowledge them now.
    Ack(Vec<A>),
    /// Drop them unacknowledged: their files are handed out again.
    Release(Vec<A>),
}

/// The acks the consumer holds: per camera for the open window, and per seq for the closed windows not yet durable.
#[derive(Debug)]
pub struct Deferred<A> {
    open: BTreeMap<String, Vec<A>>,
    waiting: BTreeMap<u64, Vec<A>>,
    durable: u64,
}

impl<A> Deferred<A> {
    /// `durable`: the outbox's durable mark now (a seal at or below it acknowledges at once).
    pub fn new(durable: u64) -> Deferred<A> {
        Deferred { open: BTreeMap::new(), waiting: BTreeMap::new(), durable }
    }

    /// Holds the ack of a frame counted in `camera`'s open window.
    pub fn hold(&mut self, camera: &str, ack: A) {
        match self.open.get_mut(camera) {
            Some(v) => v.push(ack),
            None => {
                self.open.insert(camera.to_string(), vec![ack]);
            }
        }
    }

    /// Closes `camera`'s window: its held acks wait for `closed`'s seq, run now or are released.
    pub fn seal(&mut self, camera: &str, closed: Closed) -> Sealed<A> {
        let acks = self.open.remove(camera).unwrap_or_default();
        if acks.is_empty() {
            return Sealed::Waiting;
        }
        match closed {
            Closed::Appended { last_seq } if last_seq > self.durable => {
                self.waiting.entry(last_seq).or_default().extend(acks);
                Sealed::Waiting
            }
            Closed::Appended { .. } | Closed::Nothing => Sealed::Ack(acks),
            Closed::Failed => Sealed::Release(acks),
        }
    }

    /// The outbox made every seq up to `seq` durable: returns the acks that may run now, oldest window first.
    pub fn durable(&mut self, seq: u64) -> Vec<A> {
        self.durable = self.durable.max(seq);
        let later = self.waiting.split_off(&(self.durable.saturating_add(1)));
        let ready = std::mem::replace(&mut self.waiting, later);
        ready.into_values().flatten().collect()
    }

    /// True while sealed acks wait for the durable mark.
    pub fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Acks held for open windows or waiting for the durable mark.
    pub fn len(&self) -> usize {
        self.open.values().chain(self.waiting.values()).map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a scenario and the acks it must run (`Ack`), release (`Release`) or leave waiting.
    enum Step {
        Hold(&'static str, u32),
        Seal(&'static str, Closed, Sealed<u32>),
        Durable(u64, Vec<u32>),
    }
    use Step::*;

    fn check(durable: u64, steps: Vec<Step>, left: usize) {
        let mut d = Deferred::new(durable);
        for (n, step) in steps.into_iter().enumerate() {
            match step {
                Hold(camera, ack) => d.hold(camera, ack),
                Seal(camera, closed, expected) => assert_eq!(d.seal(camera, closed), expected, "step {n}"),
                Durable(seq, expected) => assert_eq!(d.durable(seq), expected, "step {n}"),
            }
        }
        assert_eq!(d.len(), left, "acks left");
        assert_eq!(d.is_empty(), left == 0);
    }

    #[test]
    fn acks_wait_for_the_seq_that_counts_them() {
        // Nothing runs before the window's last seq is durable; a flush below it runs nothing.
        check(
            0,
            vec![
                Hold("a", 1),
                Hold("a", 2),
                Seal("a", Closed::Appended { last_seq: 3 }, Sealed::Waiting),
                Durable(2, vec![]),
                Durable(3, vec![1, 2]),
                Durable(9, vec![]),
            ],
            0,
        );
        // Frames held after the close belong to the next window, not to the sealed one.
        check(
            0,
            vec![
                Hold("a", 1),
                Seal("a", Closed::Appended { last_seq: 1 }, Sealed::Waiting),
                Hold("a", 2),
                Durable(1, vec![1]),
            ],
            1,
        );
        // Two cameras closed together wait for their own seqs; one flush past both runs both, oldest first.
        check(
            0,
            vec![
                Hold("a", 1),
                Hold("b", 2),
                Hold("a", 3),
                Seal("a", Closed::Appended { last_seq: 4 }, Sealed::Waiting),
                Seal("b", Closed::Appended { last_seq: 5 }, Sealed::Waiting),
                Durable(4, vec![1, 3]),
                Hold("b", 6),
                Seal("b", Closed::Appended { last_seq: 7 }, Sealed::Waiting),
                Durable(7, vec![2, 6]),
            ],
            0,
        );
    }

    #[test]
    fn nothing_appended_acks_now_and_a_failure_releases() {
        check(0, vec![Hold("a", 1), Seal("a", Closed::Nothing, Sealed::Ack(vec![1]))], 0);
        check(0, vec![Hold("a", 1), Hold("a", 2), Seal("a", Closed::Failed, Sealed::Release(vec![1, 2]))], 0);
        // A camera with no held acks has nothing to seal, whatever was appended.
        check(0, vec![Seal("a", Closed::Failed, Sealed::Waiting), Seal("b", Closed::Nothing, Sealed::Waiting)], 0);
        // Already durable (the mark never goes back): acknowledged at once.
        check(
            5,
            vec![
                Hold("a", 1),
                Seal("a", Closed::Appended { last_seq: 5 }, Sealed::Ack(vec![1])),
                Durable(2, vec![]),
                Hold("a", 2),
                Seal("a", Closed::Appended { last_seq: 5 }, Sealed::Ack(vec![2])),
            ],
            0,
        );
    }

    #[test]
    fn waiting_is_reported_until_the_last_window_is_durable() {
        let mut d = Deferred::new(0);
        d.hold("a", 1);
        assert!(!d.is_waiting(), "held, not yet sealed");
        assert_eq!(d.seal("a", Closed::Appended { last_seq: 2 }), Sealed::Waiting);
        assert!(d.is_waiting());
        assert_eq!(d.durable(2), vec![1]);
        assert!(!d.is_waiting());
    }
}
