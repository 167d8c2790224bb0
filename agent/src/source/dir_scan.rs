//! The dir source's decisions, as plain functions over listings: when a file is complete (settled), in which order
//! files are handed out, and which remembered entries can be forgotten. No I/O, no clock: `now` is passed in.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What identifies one version of a file: a camera that overwrites `snapshot.jpg` produces a new fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    pub len: u64,
    /// Modification time in nanoseconds since the Unix epoch (0 if earlier or unknown).
    pub mtime_ns: u64,
}

/// One file of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub fp: Fingerprint,
}

/// Files seen but not yet complete. `Design:` a file is ready once it has been seen with the same size and
/// modification time for at least the settle time; a file that changes starts over. Empty files are never ready
/// (an upload that has created its file but not written yet). A settle time of zero makes every non-empty file ready
/// on sight, for cameras that rename finished files into place.
#[derive(Debug, Default)]
pub struct Settle {
    seen: HashMap<String, (Fingerprint, Instant)>,
}

impl Settle {
    /// Takes a listing (already without hidden files, other extensions, and files processed or in flight) and
    /// returns the files that became ready, oldest first (modification time, then name). Ready files are forgotten;
    /// so are files that left the listing.
    pub fn observe(&mut self, listing: Vec<Entry>, now: Instant, settle: Duration) -> Vec<Entry> {
        let mut next = HashMap::with_capacity(listing.len());
        let mut ready = Vec::new();
        for entry in listing {
            let since = match self.seen.get(&entry.name) {
                Some((fp, since)) if *fp == entry.fp => *since,
                _ => now,
            };
            if entry.fp.len > 0 && now.saturating_duration_since(since) >= settle {
                ready.push(entry);
            } else {
                next.insert(entry.name, (entry.fp, since));
            }
        }
        self.seen = next;
        sort_oldest_first(&mut ready);
        ready
    }

    /// How many files are waiting to settle.
    pub fn waiting(&self) -> usize {
        self.seen.len()
    }
}

pub fn sort_oldest_first(entries: &mut [Entry]) {
    entries.sort_by(|a, b| (a.fp.mtime_ns, &a.name).cmp(&(b.fp.mtime_ns, &b.name)));
}

/// Forgets processed entries whose file is gone or has been replaced by a different version, which keeps the state
/// file as small as the folder. Returns how many were forgotten.
pub fn prune(processed: &mut HashMap<String, Fingerprint>, listing: &[Entry]) -> usize {
    let present: HashSet<(&str, Fingerprint)> = listing.iter().map(|e| (e.name.as_str(), e.fp)).collect();
    let before = processed.len();
    processed.retain(|name, fp| present.contains(&(name.as_str(), *fp)));
    before - processed.len()
}

/// Whether a file name is one an upload or an editor uses while writing (`.name`, FTP servers' temporary files).
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, len: u64, mtime_ns: u64) -> Entry {
        Entry { name: name.to_owned(), fp: Fingerprint { len, mtime_ns } }
    }

    fn names(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// Feeds a sequence of (time offset in ms, listing) and returns the names that became ready after each step.
    fn check(settle_ms: u64, steps: &[(u64, Vec<Entry>)], expected: &[&[&str]]) {
        let t0 = Instant::now();
        let mut settle = Settle::default();
        let got: Vec<Vec<String>> = steps
            .iter()
            .map(|(at, listing)| {
                let ready =
                    settle.observe(listing.clone(), t0 + Duration::from_millis(*at), Duration::from_millis(settle_ms));
                names(&ready).into_iter().map(String::from).collect()
            })
            .collect();
        let expected: Vec<Vec<String>> =
            expected.iter().map(|step| step.iter().map(|s| String::from(*s)).collect()).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_file_is_ready_after_it_stays_unchanged_for_the_settle_time() {
        check(
            100,
            &[(0, vec![e("a.jpg", 10, 1)]), (50, vec![e("a.jpg", 10, 1)]), (100, vec![e("a.jpg", 10, 1)])],
            &[&[], &[], &["a.jpg"]],
        );
    }

    #[test]
    fn a_growing_file_waits_until_it_stops_growing() {
        check(
            100,
            &[
                (0, vec![e("a.jpg", 10, 1)]),
                (100, vec![e("a.jpg", 20, 2)]),
                (200, vec![e("a.jpg", 30, 3)]),
                (250, vec![e("a.jpg", 30, 3)]),
                (300, vec![e("a.jpg", 30, 3)]),
            ],
            &[&[], &[], &[], &[], &["a.jpg"]],
        );
    }

    #[test]
    fn empty_files_are_never_ready() {
        check(0, &[(0, vec![e("a.jpg", 0, 1)]), (1000, vec![e("a.jpg", 0, 1)])], &[&[], &[]]);
    }

    #[test]
    fn zero_settle_takes_files_on_sight() {
        check(0, &[(0, vec![e("a.jpg", 5, 1)])], &[&["a.jpg"]]);
    }

    #[test]
    fn ready_files_come_oldest_first_then_by_name() {
        check(
            0,
            &[(0, vec![e("c.jpg", 1, 5), e("b.jpg", 1, 7), e("a.jpg", 1, 7), e("z.jpg", 1, 1)])],
            &[&["z.jpg", "c.jpg", "a.jpg", "b.jpg"]],
        );
    }

    #[test]
    fn a_file_that_vanishes_and_returns_starts_over() {
        check(
            100,
            &[(0, vec![e("a.jpg", 1, 1)]), (60, vec![]), (120, vec![e("a.jpg", 1, 1)]), (220, vec![e("a.jpg", 1, 1)])],
            &[&[], &[], &[], &["a.jpg"]],
        );
    }

    #[test]
    fn prune_keeps_only_files_still_present_in_the_same_version() {
        let mut processed: HashMap<String, Fingerprint> =
            [e("kept.jpg", 1, 1), e("gone.jpg", 1, 1), e("new.jpg", 1, 1)]
                .into_iter()
                .map(|e| (e.name, e.fp))
                .collect();
        let forgotten = prune(&mut processed, &[e("kept.jpg", 1, 1), e("new.jpg", 2, 9), e("other.jpg", 1, 1)]);
        assert_eq!(forgotten, 2);
        assert_eq!(processed.keys().map(String::as_str).collect::<Vec<_>>(), ["kept.jpg"]);
    }

    #[test]
    fn hidden_names() {
        for (name, hidden) in [(".upload.tmp", true), (".a.jpg", true), ("a.jpg", false), ("a..jpg", false)] {
            assert_eq!(is_hidden(name), hidden, "{name}");
        }
    }
}
