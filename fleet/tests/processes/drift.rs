//! Drift between processes: two agents learn a baseline on the normal frames (`defect-val`), then one keeps seeing
//! normal frames (site `north`) while the other sees frames after a lighting change (`defect-drift`, site `south`).
//! The fleet raises an alert for the south site's group and model version, and none for the north.
//!
//! Small numbers through the fleet's config so this takes seconds: a baseline of the first 80 frames (every normal
//! frame once), a 30-second sliding window judged from 40 frames on; thresholds are the defaults.

use std::time::Instant;

use serde_json::Value;

use crate::agent::{Agent, AgentSetup};
use crate::fleet::{Fleet, FleetOptions, WAIT, defect_images, frames};

const DRIFT: &str = "[ingest.drift]\nbaseline_frames = 80\nmin_frames = 40\nwindow_secs = 30\nbuckets = 10\n";

fn raised<'a>(alerts: &'a Value, group: &str) -> Vec<&'a Value> {
    let alerts = alerts.as_array().map(Vec::as_slice).unwrap_or_default();
    alerts.iter().filter(|a| a["alert"]["group"] == group && a["alert"]["kind"] == "raised").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifted_frames_raise_an_alert_for_their_site_and_version_and_normal_frames_do_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fleet = Fleet::start(tmp.path(), &FleetOptions { extra: DRIFT, ..FleetOptions::default() }).await;
    let (normal, drifted) = (defect_images("val"), defect_images("drift"));
    let mut north = Agent::enroll_and_start(&fleet, tmp.path(), &AgentSetup::new("drift-north", "north"));
    let mut south = Agent::enroll_and_start(&fleet, tmp.path(), &AgentSetup::new("drift-south", "south"));

    // Both learn their site's baseline from the same 80 normal frames.
    north.feed("n0-", &normal);
    south.feed("s0-", &normal);
    fleet
        .wait_for("the baselines' frames stored", "/fleet/devices", |d| {
            frames(d, "drift-north") == 80 && frames(d, "drift-south") == 80
        })
        .await;
    let (_, status) = fleet.call(reqwest::Method::GET, "/drift?model=defect&version=1", &fleet.admin, None).await;
    let learned = |group: &str| {
        status.as_array().into_iter().flatten().any(|s| s["group"] == group && s["baseline_source"] == "learned")
    };
    assert!(learned("site=north") && learned("site=south"), "{status}");

    // Then the cameras keep sending (a new batch whenever the last is nearly done) until the south alert comes.
    let deadline = Instant::now() + WAIT * 2;
    let (mut fed_north, mut fed_south, mut batch) = (80.0, 80.0, 0);
    let alerts = loop {
        let (status, alerts) = fleet.call(reqwest::Method::GET, "/drift/alerts", &fleet.admin, None).await;
        assert_eq!(status, 200, "{alerts}");
        if !raised(&alerts, "site=south").is_empty() {
            break alerts;
        }
        assert!(Instant::now() < deadline, "no drift alert for the south site: {alerts}\n{}", fleet.log());
        let processed = "outpost_frames_processed_total{camera=\"cam\"}";
        if north.wait_metric(processed, |_| true).await + 20.0 >= fed_north
            && south.wait_metric(processed, |_| true).await + 10.0 >= fed_south
        {
            batch += 1;
            north.feed(&format!("n{batch}-"), &normal);
            south.feed(&format!("s{batch}-"), &drifted);
            fed_north += normal.len() as f64;
            fed_south += drifted.len() as f64;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let south_alert = raised(&alerts, "site=south")[0];
    assert_eq!(south_alert["alert"]["model"]["name"], "defect", "{south_alert}");
    assert_eq!(south_alert["alert"]["model"]["version"], 1, "{south_alert}");
    assert!(raised(&alerts, "site=north").is_empty(), "normal frames raised an alert: {alerts}");
    let (_, status) = fleet.call(reqwest::Method::GET, "/drift?model=defect&version=1", &fleet.admin, None).await;
    let north_status = status.as_array().into_iter().flatten().find(|s| s["group"] == "site=north");
    assert!(north_status.is_some_and(|s| s["alerting"] == false), "{status}");
    for agent in [&mut north, &mut south] {
        let status = agent.terminate();
        assert!(status.success(), "{} exited with {status}:\n{}", agent.name, agent.log());
    }
}
