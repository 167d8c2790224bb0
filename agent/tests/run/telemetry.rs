//! Several cameras on one agent: what the window summaries say matches what was fed and what `infer` sees.

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_common::protocol::{AgentState, EventBody};
use outpost_tests::broker::EmbeddedBroker;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_folders_and_a_replay_report_what_was_fed() {
    crate::init();
    let broker = EmbeddedBroker::start().expect("rumqttd starts");
    let tmp = tempfile::tempdir().expect("tempdir");
    let device = Device::new("e2e-cams");
    let val = defect_images("val");
    // Three folder cameras with different shares of the photos, and a replay camera on the drifted ones.
    let feeds: [(&str, &[std::path::PathBuf]); 3] =
        [("cam-a", &val[..10]), ("cam-b", &val[10..25]), ("cam-c", &val[25..45])];
    let mut cameras = defect_model_toml(3);
    for (name, _) in &feeds {
        cameras.push_str(&camera_toml(name, &dir_source(&tmp.path().join(name)), ""));
    }
    let replay_dir = tmp.path().join("replay");
    drop_files(&replay_dir, "", &defect_images("drift")[..8]);
    cameras.push_str(&camera_toml("cam-replay", &replay_source(&replay_dir, 20.0), ""));
    let mut setup = Setup::new(&broker.url(), cameras);
    setup.per_frame = true;

    let sub = subscribe(broker.v4_port, &device).await;
    let mut agent = Agent::start(&tmp.path().join("agent"), &device, &setup);
    agent.wait_ready().await;
    for (name, files) in &feeds {
        drop_files(&tmp.path().join(name), "", files);
    }
    let expected: BTreeMap<String, u64> = feeds.iter().map(|(n, f)| (n.to_string(), f.len() as u64)).collect();
    let seen = wait_seen(&sub, &agent, "every fed file in a window summary", |s| {
        let got = s.frames_per_camera();
        expected.iter().all(|(cam, n)| got.get(cam) == Some(n)) && got.get("cam-replay").is_some_and(|n| *n >= 16)
    })
    .await;

    // Per-class counts equal what `infer` finds in the same files.
    for (name, files) in &feeds {
        assert_eq!(seen.classes(name), class_counts(&infer(files)), "{name}: classes differ from `infer`");
    }
    // Every window names the camera's model version; the replay loops over its 8 files without drops.
    assert!(seen.windows.values().all(|w| w.model.name == "defect" && w.model.version == 3));
    assert_eq!(seen.drops_per_camera().values().sum::<u64>(), 0, "nothing dropped");
    let replay_classes = seen.classes("cam-replay");
    assert!(!replay_classes.is_empty(), "the replay camera reports its detections");

    // Per-frame results: every folder frame exactly once, and they reduce to the windows' class counts.
    for (name, files) in &feeds {
        let mut numbers: Vec<u64> =
            seen.frames.values().filter(|b| b.camera == *name).flat_map(|b| b.frames.iter().map(|f| f.frame)).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=files.len() as u64).collect::<Vec<_>>(), "{name}: per-frame results");
        let mut classes = BTreeMap::new();
        for batch in seen.frames.values().filter(|b| b.camera == *name) {
            for (label, n) in batch.summarize().1 {
                *classes.entry(label).or_insert(0) += n;
            }
        }
        assert_eq!(classes, seen.classes(name), "{name}: per-frame results reduce to the windows");
    }

    // One agent-ready event naming the four cameras, and a retained running status with health.
    let ready: Vec<_> = seen
        .events
        .values()
        .filter_map(|e| match &e.body {
            EventBody::AgentReady(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(ready.len(), 1, "one agent_ready event");
    let mut names: Vec<&str> = ready[0].cameras.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["cam-a", "cam-b", "cam-c", "cam-replay"]);
    assert!(ready[0].cameras.iter().any(|c| c.name == "cam-replay" && c.source == "replay"));
    let seen = wait_seen(&sub, &agent, "a status with health", |s| {
        s.statuses.iter().any(|st| st.state == AgentState::Running && st.health.as_ref().is_some_and(|h| h.fps > 0.0))
    })
    .await;
    assert!(seen.statuses.iter().all(|s| s.health.as_ref().is_none_or(|h| h.outbox_dropped == 0)));

    // SIGTERM: exit 0 within the deadline, everything delivered, the last status is offline.
    let (status, took) = agent.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}:\n{}", agent.log());
    assert!(took < Duration::from_secs(11), "took {took:?}, beyond the 10 s deadline");
    let seen = wait_seen(&sub, &agent, "the offline status", |s| {
        s.statuses.last().is_some_and(|st| st.state == AgentState::Offline)
    })
    .await;
    assert_eq!(seen.gaps(), Vec::<u64>::new(), "every message delivered");
    assert_eq!(count_in(&agent.log(), "agent ready"), 1);
}
