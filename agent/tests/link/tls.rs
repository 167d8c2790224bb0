//! The link through Mosquitto guarded by TLS, mutual TLS and passwords, with certificates made per test (rcgen).
//! What a user notices is asserted: the device's telemetry arrives at a subscriber (opened with the device key and
//! decoded), or the link stays disconnected, says why (`LinkStats::connect_error` and the metrics), keeps every
//! message in its outbox and delivers them once its configuration is fixed.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use outpost_agent::link::{ConnectFailure, LinkConfig, LinkStats, MqttVersion, TlsFiles};
use outpost_agent::metrics::Metrics;
use outpost_agent::samples::SampleStats;
use outpost_common::protocol::auth;
use outpost_common::protocol::{self, Telemetry, TelemetryBody};
use outpost_common::topics::{self, Channel, DeviceId};
use outpost_tests::broker::{Mosquitto, MosquittoOptions, MosquittoTls};
use outpost_tests::pki::{CertFiles, TestCa};
use outpost_tests::subscriber::{Received, Subscriber};

use crate::{Running, WAIT, config, device, init, key, start, wait_until, window};

/// A refused link cannot drain its outbox; its graceful shutdown gives up after this.
const REFUSED_SHUTDOWN_MS: u64 = 300;

/// The fleet's CA, the broker's certificate from it, and a device's client certificate from it.
struct Pki {
    dir: tempfile::TempDir,
    fleet: TestCa,
    broker: CertFiles,
    device: CertFiles,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = TestCa::new(dir.path(), "fleet").expect("CA");
    let broker = fleet.server("broker").expect("server certificate");
    let device = fleet.client("device").expect("client certificate");
    Pki { dir, fleet, broker, device }
}

/// Mosquitto serving TLS with `server`, checking client certificates against `ca` (and requiring one if asked).
fn tls_broker(ca: &TestCa, server: &CertFiles, require_certificate: bool) -> Mosquitto {
    let tls = MosquittoTls {
        cafile: ca.cert.clone(),
        certfile: server.cert.clone(),
        keyfile: server.key.clone(),
        require_certificate,
    };
    Mosquitto::start(MosquittoOptions { tls: Some(tls), ..Default::default() }).expect("mosquitto starts with TLS")
}

/// The link config for `broker` that trusts `ca` only, with a client certificate if given.
fn tls_config(broker: &Mosquitto, store: &Path, ca: &TestCa, client: Option<&CertFiles>) -> LinkConfig {
    let mut config = config(&broker.url(), store);
    config.tls = TlsFiles {
        ca_file: Some(ca.cert.clone()),
        client_cert: client.map(|c| c.cert.clone()),
        client_key: client.map(|c| c.key.clone()),
    };
    config
}

/// Publishes one window summary per frame count in `frames`; seq `n` carries `n - 1` frames when started at 0.
fn publish(link: &Running, frames: Range<u64>) {
    for n in frames {
        link.handle.publish_telemetry(window(n)).expect("append never waits for the broker");
    }
}

/// Every telemetry message received for `id` as seq → the window's frame count, each opened with the device key
/// and decoded: a forged or unreadable payload fails the test.
fn delivered(received: &[Received], id: &DeviceId) -> BTreeMap<u64, u64> {
    let wanted = topics::topic(id, Channel::Telemetry);
    received
        .iter()
        .filter(|m| m.topic == wanted)
        .map(|m| {
            let payload = auth::open(&m.payload, id, &key(id)).expect("sealed with the device key");
            let telemetry = protocol::decode::<Telemetry>(&payload).expect("a valid telemetry message");
            match telemetry.body {
                TelemetryBody::Window(w) => (telemetry.seq, w.frames),
                other => panic!("seq {}: unexpected body {other:?}", telemetry.seq),
            }
        })
        .collect()
}

/// Waits until the subscriber has received seqs `1..=last`, each carrying the window that was published for it.
async fn arrives(sub: &Subscriber, id: &DeviceId, last: u64, broker: &Mosquitto) {
    let expected: BTreeMap<u64, u64> = (1..=last).map(|seq| (seq, seq - 1)).collect();
    let ok = sub.wait_until(WAIT, |r| delivered(r, id) == expected).await;
    assert!(ok, "expected seqs 1..={last}, got {:?}\n{}", delivered(&sub.received(), id).keys(), broker.log());
}

/// Waits for `attempts` failed connection attempts, then checks what an operator sees: never connected, the
/// reason in the stats and in the metrics, and every message still in the outbox.
async fn refused(link: &Running, attempts: u64, why: ConnectFailure, kept: u64) -> LinkStats {
    wait_until("failed connection attempts", || link.handle.stats().connect_failures >= attempts).await;
    let stats = link.handle.stats();
    assert!(!stats.connected && stats.connects == 0 && stats.acked == 0, "{stats:?}");
    assert_eq!(stats.connect_error, Some(why), "{stats:?}");
    assert_eq!(stats.outbox_messages, kept, "{stats:?}");
    let metrics = Metrics {
        cameras: BTreeMap::new(),
        samples: Arc::new(SampleStats::default()),
        link: link.handle.clone(),
        ready: AtomicBool::new(true),
    };
    let text = metrics.render();
    let line = format!("outpost_mqtt_connect_error{{reason=\"{}\"}} 1", why.as_str());
    assert!(text.contains(&line) && text.contains("outpost_mqtt_connected 0"), "{text}");
    stats
}

/// Stops a refused link: it shuts down within its deadline (no panic) and keeps what it could not deliver.
async fn stop_refused(link: Running, kept: u64) {
    let stats = link.stop(Duration::from_millis(REFUSED_SHUTDOWN_MS) + WAIT).await;
    assert_eq!((stats.outbox_messages, stats.connects), (kept, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_the_fleet_ca_delivers_over_mqtt_3_1_1_and_5() {
    init();
    let pki = pki();
    let broker = tls_broker(&pki.fleet, &pki.broker, false);
    for (version, name) in [(MqttVersion::V311, "tls-v4"), (MqttVersion::V5, "tls-v5")] {
        let store = tempfile::tempdir().expect("tempdir");
        let id = device(name);
        let sub =
            Subscriber::start(broker.open_port(), &format!("{name}-sub"), &topics::topic(&id, Channel::Telemetry))
                .await;
        let mut config = tls_config(&broker, store.path(), &pki.fleet, None);
        config.protocol = version;
        let link = start(&config, &id);
        publish(&link, 0..20);
        arrives(&sub, &id, 20, &broker).await;
        let stats = link.stop(WAIT).await;
        assert_eq!((stats.outbox_messages, stats.acked, stats.connect_error), (0, 20, None), "{name}: {stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_device_certificate_from_the_fleet_ca() {
    init();
    let pki = pki();
    let broker = tls_broker(&pki.fleet, &pki.broker, true);
    let store = tempfile::tempdir().expect("tempdir");
    let id = device("mtls");
    let sub = Subscriber::start(broker.open_port(), "mtls-sub", &topics::topic(&id, Channel::Telemetry)).await;

    // No client certificate: the broker ends the handshake; reported, nothing sent, nothing lost.
    let mut config = tls_config(&broker, store.path(), &pki.fleet, None);
    config.shutdown_timeout_ms = REFUSED_SHUTDOWN_MS;
    let link = start(&config, &id);
    publish(&link, 0..5);
    refused(&link, 2, ConnectFailure::Tls, 5).await;
    stop_refused(link, 5).await;

    // A certificate from another CA is refused the same way.
    let rogue = TestCa::new(pki.dir.path(), "rogue").expect("CA");
    let mut config = tls_config(&broker, store.path(), &pki.fleet, Some(&rogue.client("device").expect("cert")));
    config.shutdown_timeout_ms = REFUSED_SHUTDOWN_MS;
    let link = start(&config, &id);
    publish(&link, 5..8);
    refused(&link, 2, ConnectFailure::Tls, 8).await;
    stop_refused(link, 8).await;
    assert!(delivered(&sub.received(), &id).is_empty(), "nothing got through:\n{}", broker.log());

    // The device's own certificate: what was kept arrives, then new messages, over 3.1.1 and then 5.
    for (version, frames) in [(MqttVersion::V311, 8..12), (MqttVersion::V5, 12..16)] {
        let mut config = tls_config(&broker, store.path(), &pki.fleet, Some(&pki.device));
        config.protocol = version;
        let link = start(&config, &id);
        publish(&link, frames.clone());
        arrives(&sub, &id, frames.end, &broker).await;
        let stats = link.stop(WAIT).await;
        assert_eq!((stats.outbox_messages, stats.connect_error), (0, None), "{version:?}: {stats:?}");
        assert!(stats.connects >= 1, "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_the_device_does_not_trust_is_refused() {
    init();
    let pki = pki();
    let rogue = TestCa::new(pki.dir.path(), "rogue").expect("CA");
    // Signed by another CA, for the right address; then signed by the fleet CA, but for another host.
    let impostors = [
        (rogue.server("broker").expect("cert"), "another CA"),
        (pki.fleet.server_for("elsewhere", &["fleet.example"]).expect("cert"), "another name"),
    ];
    for (server, what) in impostors {
        let issuer = if what == "another CA" { &rogue } else { &pki.fleet };
        let broker = tls_broker(issuer, &server, false);
        let store = tempfile::tempdir().expect("tempdir");
        let id = device("impostor");
        let sub = Subscriber::start(broker.open_port(), "impostor-sub", &topics::topic(&id, Channel::Telemetry)).await;
        let mut config = tls_config(&broker, store.path(), &pki.fleet, Some(&pki.device));
        config.shutdown_timeout_ms = REFUSED_SHUTDOWN_MS;
        let link = start(&config, &id);
        publish(&link, 0..3);
        refused(&link, 2, ConnectFailure::Tls, 3).await;
        stop_refused(link, 3).await;
        assert!(delivered(&sub.received(), &id).is_empty(), "{what}: nothing got through");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_the_right_one_delivers_what_was_kept() {
    init();
    for (version, name) in [(MqttVersion::V311, "pw-v4"), (MqttVersion::V5, "pw-v5")] {
        let id = device(name);
        // The username defaults to the device id, as enrollment issues it.
        let users = vec![(id.to_string(), "correct horse".to_string())];
        let broker = Mosquitto::start(MosquittoOptions { users, ..Default::default() }).expect("mosquitto starts");
        let store = tempfile::tempdir().expect("tempdir");
        let sub =
            Subscriber::start(broker.open_port(), &format!("{name}-sub"), &topics::topic(&id, Channel::Telemetry))
                .await;
        let mut config = config(&broker.url(), store.path());
        config.protocol = version;
        config.shutdown_timeout_ms = REFUSED_SHUTDOWN_MS;
        for (wrong, frames) in [(Some("battery staple"), 0..3), (None, 3..5)] {
            config.password = wrong.map(String::from);
            let link = start(&config, &id);
            publish(&link, frames.clone());
            refused(&link, 2, ConnectFailure::NotAuthorized, frames.end).await;
            stop_refused(link, frames.end).await;
        }
        assert!(delivered(&sub.received(), &id).is_empty(), "{name}: nothing got through");

        config.password = Some("correct horse".into());
        let link = start(&config, &id);
        publish(&link, 5..8);
        arrives(&sub, &id, 8, &broker).await;
        let stats = link.stop(WAIT).await;
        assert_eq!((stats.outbox_messages, stats.connect_error), (0, None), "{name}: {stats:?}");
    }
}
