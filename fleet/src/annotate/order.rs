//! Which queued samples a claim hands out, in which order; pure.
//!
//! The rule:
//! 1. A sample's **bucket** is (its model's most confident predicted class, its device's site); either part is
//!    `""` when unknown (no prediction, no `site` tag).
//! 2. Inside a bucket, samples go **least confident first**: ascending headline confidence
//!    (`Confidence::headline`: top-1 for classifiers, mean detection score for detectors), samples without a
//!    headline last, ties by sample id.
//! 3. Buckets take **turns** (round-robin): the bucket served longest ago goes first (never served counts as
//!    longest ago), then the bucket whose head is least confident, then the bucket's name. One sample per bucket per
//!    round, rounds until the claim is full.
//! 4. The turn each bucket was last served at is kept per model, so the rotation continues across claims and
//!    annotators: claims of one sample each still cycle through every class and site.
//!
//! Only the least confident `window` queue entries of a model are considered per claim (see `QueueConfig`), which
//! bounds a claim's work; balancing happens among them.

use std::collections::{BTreeMap, HashMap, VecDeque};

use outpost_common::manifest::Sha256Sum;

/// What a sample is balanced under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bucket {
    pub class: String,
    pub site: String,
}

/// A claimable sample with what ordering needs, carrying the caller's `item` along.
#[derive(Debug, Clone)]
pub struct Candidate<T> {
    pub rank: u32,
    pub sample: Sha256Sum,
    pub bucket: Bucket,
    pub item: T,
}

/// Every candidate, in the order a claim should try them.
pub fn plan<T>(candidates: Vec<Candidate<T>>, last_served: &HashMap<Bucket, u64>) -> Vec<Candidate<T>> {
    let total = candidates.len();
    let mut buckets: BTreeMap<Bucket, Vec<Candidate<T>>> = BTreeMap::new();
    for c in candidates {
        buckets.entry(c.bucket.clone()).or_default().push(c);
    }
    let mut queues: Vec<(u64, u32, Bucket, VecDeque<Candidate<T>>)> = buckets
        .into_iter()
        .map(|(bucket, mut list)| {
            list.sort_by_key(|c| (c.rank, c.sample));
            let head = list.first().map_or(u32::MAX, |c| c.rank);
            let served = last_served.get(&bucket).copied().unwrap_or(0);
            (served, head, bucket, VecDeque::from(list))
        })
        .collect();
    queues.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        for (_, _, _, queue) in &mut queues {
            if let Some(c) = queue.pop_front() {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(class: &str, site: &str) -> Bucket {
        Bucket { class: class.into(), site: site.into() }
    }

    /// Candidates as (rank, class, site), named by their index; `served` as (class, site, turn).
    fn check(candidates: &[(u32, &str, &str)], served: &[(&str, &str, u64)], expected: &[usize]) {
        let list = candidates
            .iter()
            .enumerate()
            .map(|(i, &(rank, class, site))| Candidate {
                rank,
                sample: Sha256Sum([i as u8; 32]),
                bucket: bucket(class, site),
                item: i,
            })
            .collect();
        let served = served.iter().map(|&(c, s, t)| (bucket(c, s), t)).collect();
        let order: Vec<usize> = plan(list, &served).into_iter().map(|c| c.item).collect();
        assert_eq!(order, expected, "{candidates:?} served {served:?}");
    }

    #[test]
    fn least_confident_first_within_one_bucket() {
        check(&[(500, "a", "x"), (100, "a", "x"), (300, "a", "x")], &[], &[1, 2, 0]);
        // Ties by sample id; unscored (u32::MAX) last.
        check(&[(u32::MAX, "a", "x"), (7, "a", "x"), (7, "a", "x")], &[], &[1, 2, 0]);
    }

    #[test]
    fn buckets_take_turns_starting_with_the_least_confident_head() {
        check(
            &[
                (100, "scratch", "a"),
                (200, "scratch", "a"),
                (300, "dent", "a"),
                (50, "scratch", "b"),
                (400, "dent", "a"),
            ],
            &[],
            // Heads: scratch/b 50, scratch/a 100, dent/a 300.
            &[3, 0, 2, 1, 4],
        );
    }

    #[test]
    fn the_bucket_served_longest_ago_goes_first() {
        let candidates = [(100, "scratch", "a"), (900, "dent", "a"), (500, "", "")];
        check(&candidates, &[("scratch", "a", 5), ("dent", "a", 3)], &[2, 1, 0]);
        check(&candidates, &[("scratch", "a", 5), ("dent", "a", 3), ("", "", 9)], &[1, 0, 2]);
    }

    #[test]
    fn nothing_in_nothing_out() {
        check(&[], &[("a", "b", 1)], &[]);
    }
}
