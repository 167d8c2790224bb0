//! The order in which a rollout's devices join it: spread across sites, so the first canaries are not all on one
//! line, and deterministic for a given rollout (a restart computes nothing new: the order is stored). Pure.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

fn rank(seed: &str, item: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update([0]);
    h.update(item.as_bytes());
    h.finalize().into()
}

/// Orders `devices` (id, site) round-robin over sites: one device from each site in turn, sites and the devices
/// within a site shuffled by `seed`. Devices without a site form one more group.
pub fn spread(devices: &[(String, Option<String>)], seed: &str) -> Vec<String> {
    let mut sites: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
    for (id, site) in devices {
        sites.entry(site.as_deref()).or_default().push(id);
    }
    let mut groups: Vec<(Option<&str>, Vec<&str>)> = sites.into_iter().collect();
    for (_, ids) in &mut groups {
        ids.sort_by_cached_key(|id| rank(seed, id));
        ids.dedup();
    }
    groups.sort_by_cached_key(|(site, _)| rank(seed, site.unwrap_or("")));
    let longest = groups.iter().map(|(_, ids)| ids.len()).max().unwrap_or(0);
    let mut out = Vec::with_capacity(devices.len());
    for i in 0..longest {
        for (_, ids) in &groups {
            if let Some(id) = ids.get(i) {
                out.push((*id).to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Vec<(String, Option<String>)> {
        let mut d = Vec::new();
        for (site, n) in [("north", 6), ("south", 3), ("east", 1)] {
            for i in 0..n {
                d.push((format!("{site}-{i}"), Some(site.to_string())));
            }
        }
        d.push(("loose".into(), None));
        d
    }

    fn site_of(id: &str) -> &str {
        id.split('-').next().unwrap_or(id)
    }

    #[test]
    fn the_first_devices_cover_every_site() {
        let order = spread(&fleet(), "r1");
        assert_eq!(order.len(), 11);
        let mut first: Vec<&str> = order[..4].iter().map(|d| site_of(d)).collect();
        first.sort_unstable();
        assert_eq!(first, ["east", "loose", "north", "south"]);
    }

    #[test]
    fn the_order_is_a_permutation_fixed_by_the_seed() {
        let a = spread(&fleet(), "r1");
        assert_eq!(a, spread(&fleet(), "r1"));
        let mut reversed = fleet();
        reversed.reverse();
        assert_eq!(a, spread(&reversed, "r1"), "input order does not matter");
        let mut sorted = a.clone();
        sorted.sort();
        let mut all: Vec<String> = fleet().into_iter().map(|d| d.0).collect();
        all.sort();
        assert_eq!(sorted, all);
        assert_ne!(a, spread(&fleet(), "r2"), "another rollout picks other canaries");
    }
}
