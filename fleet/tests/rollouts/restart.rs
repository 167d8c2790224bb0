//! The fleet killed with SIGKILL in the middle of a stage resumes the rollout after its restart: the same stage
//! (which waits for approval, so the check does not race a dwell time), no stage started twice or skipped, every
//! device sent one target only, and the rollout completes.

use reqwest::Method;
use serde_json::{Value, json};

use crate::rig::{DETECTOR, all_commit, phases, plan, rig, served, state, story, told};

fn history(status: &Value) -> Vec<String> {
    status["history"].as_array().into_iter().flatten().filter_map(|h| h["what"].as_str()).map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_killed_mid_stage_resumes_the_rollout() {
    let _serial = crate::SERIAL.lock().await;
    let mut r = rig("restart", 4, &["north", "south"], 2.0, &[(DETECTOR, 2)]).await;
    let stages = json!([
        {"size": 1, "min_dwell_secs": 2, "min_reporting": 1},
        {"size": "50%", "min_dwell_secs": 2, "min_reporting": 2, "approval": true},
        {"size": "100%", "min_dwell_secs": 2, "min_reporting": 2}
    ]);
    let id = r.create(plan(2, stages, all_commit())).await;

    // Mid-stage 2: both of its devices were sent v2 (the commands are out, the stage has not been approved).
    let before = r
        .wait_rollout(&id, "stage 2's commands sent", |s| {
            s["stage"] == 1
                && s["stages"][1]["devices"].as_array().is_some_and(|d| d.iter().all(|d| d["sent"]["version"] == 2))
        })
        .await;
    assert_eq!(state(&before), "running", "{before:#}");
    r.fleet.kill9();
    r.fleet.restart().await;

    let after = r.fleet.wait_for("the rollout after the restart", &format!("/rollouts/{id}"), |_| true).await;
    assert_eq!(after["stage"], 1, "the same stage after the restart: {after:#}");
    assert!(state(&after) == "running" || state(&after) == "awaiting_approval", "{after:#}");
    // What each device was told survived: the devices of stages 1 and 2 target v2, the others nothing yet.
    let targets = |s: &Value| -> Vec<(String, Value)> {
        s["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|st| st["devices"].as_array().cloned().unwrap_or_default())
            .map(|d| (d["device"].as_str().unwrap_or("").to_string(), d["target"].clone()))
            .collect()
    };
    assert_eq!(targets(&after), targets(&before), "{after:#}");

    let waiting = r.wait_rollout(&id, "stage 2's gates", |s| state(s) == "awaiting_approval").await;
    assert_eq!(waiting["stage"], 1, "{waiting:#}");
    let (code, answer) = r.fleet.call(Method::POST, &format!("/rollouts/{id}/approve"), &r.fleet.admin, None).await;
    assert_eq!(code, 200, "{answer}");
    let done = r.wait_rollout(&id, "completion", |s| state(s) != "running" && state(s) != "awaiting_approval").await;
    assert_eq!(state(&done), "completed", "{}", story(&done));
    let history = history(&done);
    for stage in ["stage 1 (1) started", "stage 2 (50%) started", "stage 3 (100%) started"] {
        assert_eq!(history.iter().filter(|h| h.starts_with(stage)).count(), 1, "{stage}: {history:#?}");
    }
    assert!(phases(&done).iter().all(|(_, p)| p == "committed"), "{done:#}");

    // One target per device: every agent was told v2 (perhaps more than once, with the same command id) and never
    // anything else, and never went back.
    for a in &r.agents {
        r.wait_device(&a.name, "on v2, committed", |d| served(d) == Some((2, true))).await;
        let log = a.log();
        assert!(told(&log, &id, 2), "{}:\n{log}", a.name);
        assert!(!told(&log, &id, 1), "{} was told v1:\n{log}", a.name);
    }
}
