//! A version that installs fine but is less confident on the same frames is stopped at the canary stage by the
//! quality gate; the canary goes back to v1 and commits it; the other devices never receive v2.

use serde_json::json;

use crate::rig::{LOWCONF, all_commit, phases, plan, rig, served, state, story, told};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_less_confident_version_is_stopped_at_the_canary_and_rolled_back() {
    let _serial = crate::SERIAL.lock().await;
    let r = rig("lowconf", 4, &["north", "south"], 4.0, &[(LOWCONF, 2)]).await;
    let stages = json!([
        {"size": 1, "min_dwell_secs": 2, "min_reporting": 1},
        {"size": "100%", "min_dwell_secs": 2, "min_reporting": 1}
    ]);
    let id = r.create(plan(2, stages, all_commit())).await;

    let status = r.wait_rollout(&id, "the quality gate's abort", |s| state(s) != "running").await;
    assert_eq!(state(&status), "aborted", "{}", story(&status));
    let reason = status["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("gate failed at stage 1: quality: mean confidence"), "{status:#}");
    assert_eq!(status["stage"], 0, "stopped at the canary stage: {status:#}");
    let canaries: Vec<String> =
        phases(&status).into_iter().filter(|(_, phase)| phase != "control").map(|(device, _)| device).collect();
    assert_eq!(canaries.len(), 1, "one canary: {status:#}");
    let canary = canaries[0].clone();
    // The canary ran v2: its windows are what the gate judged.
    assert!(!r.windows(&canary, 2).await.is_empty(), "the canary reported windows on v2");

    // The canary goes back to v1 and commits it; the rollout records it as rolled back.
    r.wait_device(&canary, "back on v1, committed", |d| served(d) == Some((1, true))).await;
    let status = r
        .wait_rollout(&id, "the canary rolled back", |s| {
            phases(s).iter().any(|(d, phase)| *d == canary && phase == "rolled_back")
        })
        .await;
    let phases = phases(&status);
    assert!(phases.iter().all(|(d, phase)| *d == canary || phase == "control"), "{status:#}");

    // Everyone else never received v2: no windows on it, nothing installed, no command for it in their logs, and
    // their status still shows v1 committed.
    let devices = r.devices().await;
    for a in r.agents.iter().filter(|a| a.name != canary) {
        assert_eq!(served(crate::fleet::device(&devices, &a.name)), Some((1, true)), "{}", a.name);
        assert!(r.windows(&a.name, 2).await.is_empty(), "{} ran v2", a.name);
        assert!(!r.slot(&a.name, 2).exists(), "{} installed v2", a.name);
        let log = a.log();
        assert!(!told(&log, &id, 2), "{} was sent v2:\n{log}", a.name);
    }
    // The canary's log shows the path: told v2, then v1.
    let log = r.agent(&canary).log();
    assert!(told(&log, &id, 2) && told(&log, &id, 1), "{log}");
}
