//! The bounded hand-off between pipeline stages, with the two policies the agent needs.
//!
//! Design: a live camera must never wait for inference — when the model falls behind, the oldest waiting frame is
//! dropped and counted, so what is inferred is always recent. A file source (a folder, a replay) must never lose a
//! frame — its producer waits for room instead. One small queue serves both: `push` returns what it had to drop,
//! `push_wait` blocks until there is room. Consumers block on `pop` (inference runs on dedicated threads, never on
//! async workers). `close` wakes everyone; `pop` then drains what is left and returns `None`.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// What happens when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the oldest item (live sources).
    DropOldest,
    /// Wait for room (file sources).
    Wait,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    dropped: u64,
}

/// A bounded multi-producer, multi-consumer queue.
#[derive(Debug)]
pub struct StageQueue<T> {
    capacity: usize,
    overflow: Overflow,
    state: Mutex<State<T>>,
    not_empty: Condvar,
    not_full: Condvar,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued after dropping this many older items.
    QueuedDropping(u64),
    /// The queue is closed; the item was not taken.
    Closed,
}

impl<T> StageQueue<T> {
    pub fn new(capacity: usize, overflow: Overflow) -> StageQueue<T> {
        StageQueue {
            capacity: capacity.max(1),
            overflow,
            state: Mutex::new(State { items: VecDeque::with_capacity(capacity.max(1)), closed: false, dropped: 0 }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the queue inconsistent (every mutation is one call), so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an item under the queue's overflow policy. With [`Overflow::Wait`] this blocks while the queue is full.
    pub fn push(&self, item: T) -> Pushed {
        let mut s = self.lock();
        let mut dropped = 0;
        loop {
            if s.closed {
                return Pushed::Closed;
            }
            if s.items.len() < self.capacity {
                break;
            }
            match self.overflow {
                Overflow::DropOldest => {
                    s.items.pop_front();
                    s.dropped += 1;
                    dropped += 1;
                }
                Overflow::Wait => s = self.not_full.wait(s).unwrap_or_else(|p| p.into_inner()),
            }
        }
        s.items.push_back(item);
        drop(s);
        self.not_empty.notify_one();
        if dropped > 0 { Pushed::QueuedDropping(dropped) } else { Pushed::Queued }
    }

    /// Takes the oldest item, blocking while empty; `None` once closed and drained.
    pub fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(item) = s.items.pop_front() {
                drop(s);
                self.not_full.notify_one();
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s = self.not_empty.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Like [`Self::pop`], giving up after `timeout` (`Err(())` on timeout, `Ok(None)` when closed and drained).
    #[allow(clippy::result_unit_err)]
    pub fn pop_timeout(&self, timeout: Duration) -> Result<Option<T>, ()> {
        let mut s = self.lock();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(item) = s.items.pop_front() {
                drop(s);
                self.not_full.notify_one();
                return Ok(Some(item));
            }
            if s.closed {
                return Ok(None);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(());
            }
            s = self.not_empty.wait_timeout(s, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Stops accepting items and wakes every waiter; items already queued can still be popped.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items dropped since creation.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn live_queues_drop_the_oldest() {
        let q = StageQueue::new(2, Overflow::DropOldest);
        assert_eq!(q.push(1), Pushed::Queued);
        assert_eq!(q.push(2), Pushed::Queued);
        assert_eq!(q.push(3), Pushed::QueuedDropping(1));
        assert_eq!(q.dropped(), 1);
        assert_eq!((q.pop(), q.pop()), (Some(2), Some(3)), "what is left is the newest");
    }

    #[test]
    fn file_queues_wait_and_lose_nothing() {
        let q = Arc::new(StageQueue::new(2, Overflow::Wait));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..1000 {
                    assert_eq!(q.push(i), Pushed::Queued);
                }
                q.close();
            })
        };
        let mut got = Vec::new();
        while let Some(i) = q.pop() {
            got.push(i);
        }
        producer.join().expect("producer");
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert_eq!(q.dropped(), 0);
    }

    #[test]
    fn close_drains_then_ends_and_refuses_new_items() {
        let q = StageQueue::new(4, Overflow::Wait);
        q.push("a");
        q.close();
        assert_eq!(q.push("b"), Pushed::Closed);
        assert_eq!(q.pop(), Some("a"));
        assert_eq!(q.pop(), None);
        assert_eq!(q.pop_timeout(Duration::from_millis(1)), Ok(None));
        let open: StageQueue<u8> = StageQueue::new(1, Overflow::Wait);
        assert_eq!(open.pop_timeout(Duration::from_millis(5)), Err(()));
    }

    #[test]
    fn a_blocked_producer_is_released_by_close() {
        let q = Arc::new(StageQueue::new(1, Overflow::Wait));
        q.push(0);
        let blocked = {
            let q = q.clone();
            std::thread::spawn(move || q.push(1))
        };
        // The producer is waiting for room; closing must wake it with a refusal, not leave it hanging.
        while !blocked.is_finished() && q.len() == 1 {
            q.close();
            std::thread::yield_now();
        }
        assert_eq!(blocked.join().expect("producer"), Pushed::Closed);
    }
}
