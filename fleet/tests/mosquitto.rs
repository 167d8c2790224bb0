//! On Mosquitto, the files the fleet writes confine each device to its own topics: device A can neither publish as
//! device B nor read B's commands, and a revoked device cannot connect.

use std::time::Duration;

use outpost_common::store::SledStore;
use outpost_fleet::registry::{self, Registry};
use outpost_tests::broker::{Mosquitto, MosquittoOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// A client with credentials that records what it receives and whether it connected (the shared test subscriber
/// connects anonymously).
async fn client(port: u16, user: &str, pass: &str, subscribe: Option<&str>) -> (AsyncClient, Seen) {
    // Distinct client ids: a second connection under one id would take the first one's session over.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut options = MqttOptions::new(format!("{user}-{n}"), "127.0.0.1", port);
    options.set_credentials(user, pass).set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let state = std::sync::Arc::new(std::sync::Mutex::new((false, Vec::<String>::new(), false)));
    let (c, s, filter) = (client.clone(), state.clone(), subscribe.map(str::to_string));
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    s.lock().expect("lock").0 = ack.code == rumqttc::ConnectReturnCode::Success;
                    if let Some(f) = &filter {
                        let _ = c.subscribe(f.clone(), QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => s.lock().expect("lock").2 = true,
                Ok(Event::Incoming(Packet::Publish(p))) => s.lock().expect("lock").1.push(p.topic),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let sub = Seen { state };
    for _ in 0..200 {
        let (connected, _, subscribed) = sub.snapshot();
        if connected && (subscribe.is_none() || subscribed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (client, sub)
}

#[derive(Clone)]
struct Seen {
    state: std::sync::Arc<std::sync::Mutex<(bool, Vec<String>, bool)>>,
}

impl Seen {
    fn snapshot(&self) -> (bool, Vec<String>, bool) {
        self.state.lock().expect("lock").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_confined_to_their_own_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(&dir.path().join("db")).expect("store");
    let reg = Registry::new(store, registry::load_master(&dir.path().join("master.key")).expect("master"));
    let a = reg.enroll("dev-a", Default::default()).expect("enroll");
    let b = reg.enroll("dev-b", Default::default()).expect("enroll");
    let c = reg.enroll("dev-c", Default::default()).expect("enroll");
    reg.revoke("dev-c").expect("revoke");
    let files = outpost_fleet::mosquitto::write_files(
        &dir.path().join("mosquitto"),
        &reg.mosquitto_users().expect("users"),
        ("outpost-fleet", "fleet-secret"),
    )
    .expect("files");
    let broker = Mosquitto::start(MosquittoOptions { auth_files: Some(files), ..Default::default() }).expect("starts");
    let port = broker.port();

    let (_fleet, fleet_seen) =
        client(port, "outpost-fleet", "fleet-secret", Some("outpost/v1/devices/+/telemetry")).await;
    assert!(fleet_seen.snapshot().0, "the fleet connects:\n{}", broker.log());
    let (dev_a, a_seen) = client(port, "dev-a", &a.mqtt_password, Some("outpost/v1/devices/dev-b/commands")).await;
    let (_dev_b, b_seen) = client(port, "dev-b", &b.mqtt_password, Some("outpost/v1/devices/dev-b/commands")).await;
    assert!(a_seen.snapshot().0 && b_seen.snapshot().0, "enrolled devices connect");
    let (_dev_c, c_seen) = client(port, "dev-c", &c.mqtt_password, None).await;
    assert!(!c_seen.snapshot().0, "a revoked device is not in the password file");
    let (_x, wrong) = client(port, "dev-a", "wrong", None).await;
    assert!(!wrong.snapshot().0, "a wrong password is refused");

    // A publishes as B, then as itself: only its own message reaches the fleet.
    dev_a
        .publish("outpost/v1/devices/dev-b/telemetry", QoS::AtLeastOnce, false, b"forged".to_vec())
        .await
        .expect("queued");
    dev_a
        .publish("outpost/v1/devices/dev-a/telemetry", QoS::AtLeastOnce, false, b"own".to_vec())
        .await
        .expect("queued");
    // The fleet sends B a command: B gets it, A (subscribed to B's commands) does not.
    let (fleet_pub, _) = client(port, "outpost-fleet", "fleet-secret", None).await;
    fleet_pub
        .publish("outpost/v1/devices/dev-b/commands", QoS::AtLeastOnce, false, b"cmd".to_vec())
        .await
        .expect("queued");
    for _ in 0..250 {
        if fleet_seen.snapshot().1.iter().any(|t| t.ends_with("dev-a/telemetry")) && !b_seen.snapshot().1.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fleet_topics = fleet_seen.snapshot().1;
    assert!(fleet_topics.iter().any(|t| t == "outpost/v1/devices/dev-a/telemetry"), "{fleet_topics:?}");
    assert!(!fleet_topics.iter().any(|t| t.contains("dev-b")), "A could not publish as B: {fleet_topics:?}");
    assert_eq!(b_seen.snapshot().1, ["outpost/v1/devices/dev-b/commands"], "B gets its command");
    assert!(a_seen.snapshot().1.is_empty(), "A cannot read B's commands");
}
