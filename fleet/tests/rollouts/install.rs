//! A version that fails to load on the devices is aborted by the install gate once `min_executed` devices have
//! finished, not before. The devices here have a memory budget that has no room for a second model session (the
//! agent loads a new version beside the serving one), so v2 downloads and verifies, then its load is refused
//! (`update_rejected`, code `memory`). defect-nan cannot play this part: the registry runs every push on a neutral
//! frame and refuses its NaN outputs (`non_finite_output`), so it never reaches a rollout.

use serde_json::json;

use crate::rig::{DETECTOR, phases, plan, rig_with, served, state, story, told};

/// The install gate counts a failure share only once this many devices finished.
const MIN_EXECUTED: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_fails_on_devices_is_aborted_by_the_install_gate() {
    let _serial = crate::SERIAL.lock().await;
    let r = rig_with("noroom", 6, &["north", "south"], 2.0, &[(DETECTOR, 2)], "memory_budget_mb = 1\n").await;
    let stages = json!([
        {"size": 4, "min_dwell_secs": 2, "min_reporting": 1},
        {"size": "100%", "min_dwell_secs": 2, "min_reporting": 1}
    ]);
    // Only the failure share decides (min_committed 0): one failure is 100% of one, which must not count alone.
    let install = json!({"min_committed": 0.0, "max_failed": 0.5, "min_executed": MIN_EXECUTED, "timeout_secs": 600});
    let id = r.create(plan(2, stages, install)).await;

    let status = r.wait_rollout(&id, "the install gate's abort", |s| state(s) != "running").await;
    assert_eq!(state(&status), "aborted", "{}", story(&status));
    let reason = status["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("gate failed at stage 1: install: "), "{status:#}");
    // The evaluation that aborted had at least `min_executed` finished devices, all failed.
    let counts = &status["gates"]["install"];
    let failed = counts["failed"].as_u64().unwrap_or(0);
    assert!(failed >= MIN_EXECUTED, "aborted after {failed} failures: {status:#}");
    assert_eq!(counts["committed"], 0, "{status:#}");

    let phases = phases(&status);
    let canaries: Vec<&String> = phases.iter().filter(|(_, p)| p != "control").map(|(d, _)| d).collect();
    assert_eq!(canaries.len(), 4, "{status:#}");
    for a in &r.agents {
        // Every device still serves v1; the canaries say why they refused v2, the others never heard of it.
        r.wait_device(&a.name, "on v1", |d| served(d) == Some((1, true))).await;
        let log = a.log();
        if canaries.contains(&&a.name) {
            assert!(
                told(&log, &id, 2) && log.contains("model update rejected") && log.contains("budget is 1 MiB"),
                "{}:\n{log}",
                a.name
            );
        } else {
            assert!(!told(&log, &id, 2), "{} was sent v2:\n{log}", a.name);
        }
        assert!(r.windows(&a.name, 2).await.is_empty(), "{} ran v2", a.name);
    }
    // The failures carry the agents' reasons.
    let details: Vec<&str> =
        status["stages"][0]["devices"].as_array().into_iter().flatten().filter_map(|d| d["detail"].as_str()).collect();
    assert!(details.iter().filter(|d| d.starts_with("rejected (memory)")).count() as u64 >= MIN_EXECUTED, "{status:#}");
}
