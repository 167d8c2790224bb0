//! Never lose what was measured: a folder's file is acknowledged (recorded as processed) only once the window that
//! counts it is durable. A `kill -9` in the middle of a window loses nothing (its files are read again after the
//! restart), and a clean stop acknowledges everything it counted (nothing is read again).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use outpost_common::protocol::AgentState;
use outpost_tests::broker::EmbeddedBroker;

use crate::harness::*;

/// The file names the folder source recorded as processed (its state file); empty when it has none yet.
fn recorded(state_dir: &Path, camera: &str) -> BTreeSet<String> {
    let path = state_dir.join("sources").join(format!("dir-source-{camera}.json"));
    let Ok(bytes) = std::fs::read(&path) else { return BTreeSet::new() };
    let state: serde_json::Value = serde_json::from_slice(&bytes).expect("the state file is JSON");
    state["processed"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_window_then_a_clean_stop_counts_every_file_once() {
    crate::init();
    let broker = EmbeddedBroker::start().expect("rumqttd starts");
    let tmp = tempfile::tempdir().expect("tempdir");
    let device = Device::new("e2e-acks");
    let folder = tmp.path().join("line-1");
    let state = tmp.path().join("agent");
    let mut setup = Setup::new(&broker.url(), defect_model_toml(1) + &camera_toml("line-1", &dir_source(&folder), ""));
    // No window closes on its own while the test runs: the kill lands in the middle of the first one.
    setup.window_secs = 60;
    setup.per_frame = true;
    let processed = "outpost_frames_processed_total{camera=\"line-1\"}";
    let val = defect_images("val");
    let (first, second) = (&val[..6], &val[6..10]);
    let names: BTreeSet<String> = first
        .iter()
        .map(|f| format!("a-{}", f.file_name().expect("name").to_string_lossy()))
        .chain(second.iter().map(|f| format!("b-{}", f.file_name().expect("name").to_string_lossy())))
        .collect();

    let sub = subscribe(broker.v4_port, &device).await;
    let mut agent = Agent::start(&state, &device, &setup);
    agent.wait_ready().await;
    drop_files(&folder, "a-", first);
    agent.wait_metric(processed, |v| v >= first.len() as f64).await;
    agent.kill9();

    // After the restart the first files are read again (their window never became durable), then the new ones.
    agent.spawn();
    agent.wait_ready().await;
    drop_files(&folder, "b-", second);
    let total = (first.len() + second.len()) as f64;
    let deadline = Instant::now() + WAIT;
    loop {
        let v = agent.metric(processed).await;
        // A build that acknowledged the first files before their window was durable never reads them again: it
        // stops at the second batch, with every name recorded as processed.
        if v >= total || (v >= second.len() as f64 && recorded(&state, "line-1") == names) {
            break;
        }
        assert!(Instant::now() < deadline, "{processed} stayed at {v}:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM: the last window is published and made durable, then its files are acknowledged.
    let (status, _) = agent.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}:\n{}", agent.log());
    let seen = wait_seen(&sub, &agent, "the offline status", |s| {
        s.statuses.last().is_some_and(|st| st.state == AgentState::Offline)
    })
    .await;
    assert_eq!(
        seen.frames_per_camera().get("line-1").copied().unwrap_or(0),
        total as u64,
        "window summaries after de-duplication by seq count every file exactly once; windows: {:?}\n{}",
        seen.windows,
        agent.log()
    );
    let per_frame: usize = seen.frames.values().filter(|b| b.camera == "line-1").map(|b| b.frames.len()).sum();
    assert_eq!(per_frame as f64, total, "per-frame results count every file exactly once");
    let files: Vec<_> = first.iter().chain(second).cloned().collect();
    assert_eq!(seen.classes("line-1"), class_counts(&infer(&files)), "the counted files are the files fed");
    // The clean stop acknowledged every file: the next start reads none of them again.
    assert_eq!(recorded(&state, "line-1"), names, "every file recorded as processed after the clean stop");
}
