//! Three agent processes per broker. On the embedded broker, `line-b` reaches the broker through a proxy that can
//! lose the broker's answers: its windows reach the fleet but their PUBACKs never reach the agent, which is then
//! killed with SIGKILL; after the restart it replays them from its outbox, and the fleet counts them once.

use std::net::SocketAddr;

use outpost_tests::broker::{Mosquitto, MosquittoOptions};
use outpost_tests::proxy::Proxy;
use serde_json::Value;

use crate::agent::{Agent, AgentSetup};
use crate::fleet::{Fleet, FleetOptions, defect_images, device, frames};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agent_processes_on_the_embedded_broker_and_a_kill9_replay_is_stored_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fleet = Fleet::start(tmp.path(), &FleetOptions::default()).await;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], fleet.mqtt_port))).await.expect("proxy");
    let mut agents = three_agents(&fleet, tmp.path(), Some(proxy.port())).await;

    // Kill -9 with windows the fleet stored but the agent never saw acknowledged.
    let images = defect_images("val");
    let b = &mut agents[1];
    proxy.set_deaf(true);
    b.feed("second-", &images[..12]);
    fleet
        .wait_for("line-b's second batch stored while its PUBACKs are lost", "/fleet/devices", |d| {
            frames(d, "line-b") == 27
        })
        .await;
    let unacknowledged = b.wait_metric("outpost_outbox_messages", |v| v >= 1.0).await;
    b.kill9();
    proxy.set_deaf(false);
    b.spawn();
    b.feed("third-", &images[12..20]);
    let devices = fleet
        .wait_for("line-b's third batch after the restart", "/fleet/devices", |d| {
            frames(d, "line-b") == 35 && device(d, "line-b")["online"] == true
        })
        .await;
    let (_, counters) = fleet.call(reqwest::Method::GET, "/ingest", &fleet.admin, None).await;
    let duplicates = counters["dropped"]["duplicate"].as_u64().unwrap_or(0);
    assert!(
        duplicates >= 1,
        "the {unacknowledged} replayed messages were recognised as duplicates: {counters}\n{devices}"
    );
    // The replay came before the third batch's windows (one seq order), so nothing is still on its way to be
    // counted twice: the totals are exactly the files fed.
    assert_eq!(frames(&devices, "line-b"), 35, "{devices}");

    stop_all(&fleet, agents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agent_processes_through_mosquitto_as_the_external_broker() {
    let broker = Mosquitto::start(MosquittoOptions::default()).expect("mosquitto starts");
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = broker.url();
    let fleet = Fleet::start(tmp.path(), &FleetOptions { external: Some(&url), ..FleetOptions::default() }).await;
    let agents = three_agents(&fleet, tmp.path(), None).await;
    stop_all(&fleet, agents).await;
}

/// Enrolls and starts `line-a`, `line-b` (through the proxy on `proxy_port`, when given) and `line-c` with 10, 15
/// and 20 files; waits until all are online with every frame counted once, and checks the stored windows.
async fn three_agents(fleet: &Fleet, dir: &std::path::Path, proxy_port: Option<u16>) -> Vec<Agent> {
    let images = defect_images("val");
    let feeds = [
        ("line-a", "plant-a", &images[..10]),
        ("line-b", "plant-a", &images[10..25]),
        ("line-c", "plant-b", &images[25..45]),
    ];
    let mut agents = Vec::new();
    for (name, site, files) in feeds {
        let mut setup = AgentSetup::new(name, site);
        if name == "line-b"
            && let Some(port) = proxy_port
        {
            setup.broker = Some(format!("mqtt://127.0.0.1:{port}"));
            setup.keepalive_secs = Some(600);
        }
        let agent = Agent::enroll_and_start(fleet, dir, &setup);
        agent.feed("", files);
        agents.push(agent);
    }
    let devices = fleet
        .wait_for("every agent online with all its frames stored", "/fleet/devices", |d| {
            feeds
                .iter()
                .all(|(name, _, files)| device(d, name)["online"] == true && frames(d, name) == files.len() as u64)
        })
        .await;
    assert_eq!(devices.as_array().map(Vec::len), Some(3), "{devices}");
    assert_eq!(device(&devices, "line-c")["tags"]["site"], "plant-b", "{devices}");
    let (status, windows) = fleet
        .call(reqwest::Method::GET, "/fleet/devices/line-b/windows?model=defect&version=1", &fleet.admin, None)
        .await;
    assert_eq!(status, 200, "{windows}");
    let stored: u64 =
        windows.as_array().expect("windows").iter().map(|w| w["window"]["frames"].as_u64().unwrap_or(0)).sum();
    assert_eq!(stored, 15, "line-b's stored windows add up to its 15 files: {windows}");
    let metrics = fleet.metrics().await;
    assert!(metrics.contains("outpost_fleet_devices{state=\"online\"} 3"), "{metrics}");
    agents
}

/// SIGTERM each agent in turn: each exits cleanly and shows offline, the others stay online.
async fn stop_all(fleet: &Fleet, agents: Vec<Agent>) {
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    for (i, mut agent) in agents.into_iter().enumerate() {
        let status = agent.terminate();
        assert!(status.success(), "{} exited with {status}:\n{}", agent.name, agent.log());
        let devices = fleet
            .wait_for(&format!("{} offline", agent.name), "/fleet/devices", |d: &Value| {
                device(d, &agent.name)["online"] == false
            })
            .await;
        for still in &names[i + 1..] {
            assert_eq!(device(&devices, still)["online"], true, "{still} is still running: {devices}");
        }
    }
}
