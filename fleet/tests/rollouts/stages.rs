//! A good version (the zoo detector signed as v2) goes through every stage to ten agents under steady frame load:
//! no frame dropped on any device, every device ends on v2 committed, the rollout completes.

use serde_json::json;

use crate::rig::{DETECTOR, all_commit, eventually, phases, plan, rig, served, state, story};

/// Agents in this scenario, and the rate each replays its photos at.
const AGENTS: usize = 10;
const FPS: f64 = 2.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_version_goes_through_every_stage_without_a_dropped_frame() {
    let _serial = crate::SERIAL.lock().await;
    let r = rig("steady", AGENTS, &["north", "south", "east"], FPS, &[(DETECTOR, 2)]).await;
    let stages = json!([
        {"size": 1, "min_dwell_secs": 2, "min_reporting": 1},
        {"size": "50%", "min_dwell_secs": 2, "min_reporting": 3},
        {"size": "100%", "min_dwell_secs": 2, "min_reporting": 5}
    ]);
    let id = r.create(plan(2, stages, all_commit())).await;

    let status = r.wait_rollout(&id, "the rollout to finish", |s| !matches!(state(s), "running")).await;
    assert_eq!(state(&status), "completed", "{}", story(&status));
    let history: Vec<&str> =
        status["history"].as_array().into_iter().flatten().filter_map(|h| h["what"].as_str()).collect();
    for stage in ["stage 1 (1) started", "stage 2 (50%) started", "stage 3 (100%) started"] {
        assert_eq!(history.iter().filter(|h| h.starts_with(stage)).count(), 1, "{stage}: {history:#?}");
    }
    let phases = phases(&status);
    assert_eq!(phases.len(), AGENTS, "{status:#}");
    assert!(phases.iter().all(|(_, phase)| phase == "committed"), "{status:#}");

    // Frames keep flowing on v2 on every device, and none was dropped on either version.
    for a in &r.agents {
        r.wait_device(&a.name, "on v2, committed", |d| served(d) == Some((2, true))).await;
        eventually(&format!("{} windows on v2", a.name), async || {
            r.windows(&a.name, 2).await.iter().map(|w| w["window"]["frames"].as_u64().unwrap_or(0)).sum::<u64>() >= 8
        })
        .await;
        let dropped = a.metric("outpost_frames_dropped_total{camera=\"cam\"}").await;
        let processed = a.metric("outpost_frames_processed_total{camera=\"cam\"}").await;
        assert!(processed > 0.0, "{}: the metrics answer", a.name);
        assert_eq!(dropped, 0.0, "{}: frames dropped:\n{}", a.name, a.log());
        for version in [1, 2] {
            let drops: u64 =
                r.windows(&a.name, version).await.iter().map(|w| w["window"]["drops"].as_u64().unwrap_or(0)).sum();
            assert_eq!(drops, 0, "{}: drops in v{version} windows", a.name);
        }
    }
}
