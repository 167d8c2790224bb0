//! The broker goes away: nothing measured is lost (the durable outbox), not even across `kill -9` of the agent; a
//! very long outage fills the outbox to its cap, which drops the oldest and says so, and the agent stays healthy.

use std::time::{Duration, Instant};

use outpost_common::protocol::AgentState;
use outpost_tests::broker::{Mosquitto, MosquittoOptions};

use crate::harness::*;

fn mosquitto() -> Mosquitto {
    Mosquitto::start(MosquittoOptions { persistence: true, ..Default::default() }).expect("mosquitto starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_mid_stream_loses_no_window() {
    crate::init();
    let mut broker = mosquitto();
    let tmp = tempfile::tempdir().expect("tempdir");
    let device = Device::new("e2e-outage");
    let folder = tmp.path().join("line-1");
    let setup = Setup::new(&broker.url(), defect_model_toml(1) + &camera_toml("line-1", &dir_source(&folder), ""));
    let sub = subscribe(broker.port(), &device).await;
    let mut agent = Agent::start(&tmp.path().join("agent"), &device, &setup);
    agent.wait_ready().await;

    // Files keep arriving before, during and after a broker outage of a few windows.
    let val = defect_images("val");
    let mut fed = 0usize;
    let mut feed = |round: usize| {
        let batch = &val[(round * 5) % 80..(round * 5) % 80 + 5];
        drop_files(&folder, &format!("r{round}-"), batch);
        fed += batch.len();
    };
    for round in 0..4 {
        feed(round);
    }
    wait_seen(&sub, &agent, "the first windows", |s| !s.windows.is_empty()).await;
    broker.stop().expect("broker stops");
    agent.wait_metric("outpost_mqtt_connected", |v| v == 0.0).await;
    let down = Instant::now();
    let mut round = 4;
    while down.elapsed() < Duration::from_secs(3) {
        feed(round);
        round += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    agent.wait_metric("outpost_outbox_messages", |v| v >= 2.0).await;
    broker.restart().expect("broker restarts");
    for r in round..round + 4 {
        feed(r);
    }
    let total = fed as f64;
    agent.wait_metric("outpost_frames_processed_total{camera=\"line-1\"}", |v| v >= total).await;

    let (status, _) = agent.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}:\n{}", agent.log());
    let seen = wait_seen(&sub, &agent, "every window after de-duplication by seq", |s| {
        s.frames_per_camera().get("line-1") == Some(&(fed as u64))
            && s.statuses.last().is_some_and(|st| st.state == AgentState::Offline)
    })
    .await;
    assert_eq!(seen.gaps(), Vec::<u64>::new(), "no seq missing:\n{}", broker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_an_outage_replays_the_outbox_after_restart() {
    crate::init();
    let mut broker = mosquitto();
    let tmp = tempfile::tempdir().expect("tempdir");
    let device = Device::new("e2e-kill9");
    let replay = tmp.path().join("replay");
    drop_files(&replay, "", &defect_images("val")[..6]);
    let setup =
        Setup::new(&broker.url(), defect_model_toml(1) + &camera_toml("line-1", &replay_source(&replay, 10.0), ""));
    let sub = subscribe(broker.port(), &device).await;
    let mut agent = Agent::start(&tmp.path().join("agent"), &device, &setup);
    agent.wait_ready().await;
    wait_seen(&sub, &agent, "the first window", |s| !s.windows.is_empty()).await;

    broker.stop().expect("broker stops");
    agent.wait_metric("outpost_mqtt_connected", |v| v == 0.0).await;
    agent.wait_metric("outpost_outbox_messages", |v| v >= 3.0).await;
    // Everything made durable before the kill must arrive after the restart; a kill can only lose what was not.
    let durable = agent.wait_metric("outpost_outbox_durable_seq", |v| v >= 3.0).await as u64;
    agent.kill9();

    broker.restart().expect("broker restarts");
    agent.spawn();
    agent.wait_ready().await;
    let seen = wait_seen(&sub, &agent, "the outbox replayed and new windows after it", |s| {
        let seqs = s.seqs();
        (1..=durable).all(|n| seqs.contains(&n)) && s.windows.keys().any(|&n| n > durable)
    })
    .await;
    assert!(seen.windows.values().all(|w| w.frames > 0 || w.drops > 0), "no empty window is sent");
    let (status, _) = agent.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}:\n{}", agent.log());
    let seen = wait_seen(&sub, &agent, "the offline status", |s| {
        s.statuses.last().is_some_and(|st| st.state == AgentState::Offline)
    })
    .await;
    assert_eq!(seen.gaps(), Vec::<u64>::new(), "no seq missing after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_fills_the_outbox_which_drops_the_oldest() {
    crate::init();
    let mut broker = mosquitto();
    let tmp = tempfile::tempdir().expect("tempdir");
    let device = Device::new("e2e-cap");
    let replay = tmp.path().join("replay");
    drop_files(&replay, "", &defect_images("val")[..6]);
    let mut setup =
        Setup::new(&broker.url(), defect_model_toml(1) + &camera_toml("line-1", &replay_source(&replay, 50.0), ""));
    setup.per_frame = true;
    setup.outbox_max_bytes = Some(64 * 1024);
    let sub = subscribe(broker.port(), &device).await;
    // The broker is down from the start: the agent must start and serve without it.
    broker.stop().expect("broker stops");
    let mut agent = Agent::start(&tmp.path().join("agent"), &device, &setup);
    agent.wait_ready().await;
    let dropped = agent.wait_metric("outpost_outbox_dropped_total", |v| v >= 5.0).await;
    let processed = agent.metric("outpost_frames_processed_total{camera=\"line-1\"}").await;
    assert!(agent.metric("outpost_outbox_bytes").await <= 64.0 * 1024.0, "the cap holds");
    agent.wait_metric("outpost_frames_processed_total{camera=\"line-1\"}", |v| v > processed + 10.0).await;
    assert!(agent.healthy().await, "/healthz answers through the outage");

    broker.restart().expect("broker restarts");
    let seen = wait_seen(&sub, &agent, "a status reporting the drops", |s| {
        s.statuses.iter().any(|st| st.health.as_ref().is_some_and(|h| h.outbox_dropped as f64 >= dropped))
    })
    .await;
    // The oldest were dropped: the newest survive, the first seqs are gone.
    let seqs = seen.seqs();
    assert!(!seqs.contains(&1), "seq 1 was among the oldest, dropped");
    assert!(!seqs.is_empty());
    let (status, _) = agent.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}:\n{}", agent.log());
}
