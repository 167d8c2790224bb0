//! Devices that are offline while an operator aborts a rollout come back and converge: a canary that had committed
//! the aborted version goes back to its previous one; a control device never installs the aborted version.

use reqwest::Method;
use serde_json::{Value, json};

use crate::rig::{DETECTOR, all_commit, phases, plan, rig, served, state, told};

fn phase_of(status: &Value, device: &str) -> String {
    phases(status).into_iter().find(|(d, _)| d == device).map(|(_, p)| p).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_offline_during_an_abort_come_back_to_the_previous_version() {
    let _serial = crate::SERIAL.lock().await;
    let mut r = rig("offline", 4, &["north", "south"], 2.0, &[(DETECTOR, 2)]).await;
    // Stage 1 stays open (an hour's dwell): the abort comes from the operator.
    let stages = json!([
        {"size": 2, "min_dwell_secs": 3600, "min_reporting": 1},
        {"size": "100%", "min_dwell_secs": 2, "min_reporting": 1}
    ]);
    let id = r.create(plan(2, stages, all_commit())).await;
    let status = r
        .wait_rollout(&id, "both canaries committed", |s| {
            phases(s).iter().filter(|(_, p)| p == "committed").count() == 2
        })
        .await;
    let all = phases(&status);
    let canary = all.iter().find(|(_, p)| p == "committed").map(|(d, _)| d.clone()).expect("a canary");
    let control = all.iter().find(|(_, p)| p == "control").map(|(d, _)| d.clone()).expect("a control device");

    // Both go offline (SIGTERM: a clean stop, the fleet sees the offline status).
    for name in [&canary, &control] {
        let agent = r.agents.iter_mut().find(|a| a.name == *name).expect("agent");
        let exit = agent.terminate();
        assert!(exit.success(), "{name}: {exit}");
        r.wait_device(name, "offline", |d| d["online"] == false).await;
    }
    let (code, answer) = r
        .fleet
        .call(Method::POST, &format!("/rollouts/{id}/abort"), &r.fleet.admin, Some(json!({"reason": "test abort"})))
        .await;
    assert_eq!(code, 200, "{answer}");
    let aborted = r.wait_rollout(&id, "the abort", |s| state(s) == "aborted").await;
    assert_eq!(aborted["reason"], "test abort", "{aborted:#}");
    assert_eq!(phase_of(&aborted, &canary), "rolling_back", "{aborted:#}");
    assert_eq!(phase_of(&aborted, &control), "control", "{aborted:#}");

    // What each one will be told when it asks: the canary its previous version, the control device nothing.
    let (code, assignment) =
        r.fleet.call(Method::GET, &format!("/devices/{canary}/assignment"), &r.fleet.admin, None).await;
    assert_eq!(code, 200, "{assignment}");
    let url = assignment["artifact_url"].as_str().unwrap_or("");
    assert!(url.ends_with("/api/v1/models/defect/1/artifact"), "{assignment}");
    let (code, nothing) =
        r.fleet.call(Method::GET, &format!("/devices/{control}/assignment"), &r.fleet.admin, None).await;
    assert_eq!(code, 204, "{nothing}");

    for name in [&canary, &control] {
        r.agents.iter_mut().find(|a| a.name == *name).expect("agent").spawn();
        r.wait_device(name, "back online", |d| d["online"] == true).await;
    }
    // The canary goes back to v1 and commits it.
    r.wait_device(&canary, "back on v1, committed", |d| served(d) == Some((1, true))).await;
    let done = r.wait_rollout(&id, "the canary rolled back", |s| phase_of(s, &canary) == "rolled_back").await;
    // The control device runs v1 frames again after its restart, and never heard of v2.
    let before = r.windows(&control, 1).await.len();
    crate::rig::eventually("the control device's windows after its restart", async || {
        r.windows(&control, 1).await.len() >= before + 5
    })
    .await;
    assert_eq!(phase_of(&done, &control), "control", "{done:#}");
    let devices = r.devices().await;
    assert_eq!(served(crate::fleet::device(&devices, &control)), Some((1, true)));
    assert!(r.windows(&control, 2).await.is_empty(), "{control} ran v2");
    assert!(!r.slot(&control, 2).exists(), "{control} installed v2");
    let log = r.agent(&control).log();
    assert!(!told(&log, &id, 2), "{control} was sent v2:\n{log}");
}
