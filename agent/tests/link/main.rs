//! The link against real brokers: the embedded rumqttd and a Mosquitto process that is stopped and restarted;
//! `tls.rs`: Mosquitto guarded by TLS, mutual TLS and passwords. Every test starts what it needs, waits on
//! conditions (never fixed sleeps) and is bounded in time.

mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_agent::link::{Link, LinkConfig, LinkHandle, LinkStats, MqttVersion};
use outpost_agent::store::{SledStore, Store, StoreError};
use outpost_common::protocol::auth::{self, DeviceKey, derive_device_key};
use outpost_common::protocol::{
    self, AgentState, Command, CommandBody, ConfidenceHistogram, Latency, ModelRef, SetConfig, Status, Telemetry,
    TelemetryBody, WindowSummary,
};
use outpost_common::topics::{self, Channel, DeviceId};
use outpost_tests::broker::{EmbeddedBroker, Mosquitto, MosquittoOptions, free_port};
use outpost_tests::subscriber::{Received, Subscriber};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt().with_env_filter("outpost_agent=debug").with_test_writer().try_init();
}

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).expect("valid device id")
}

fn key(device: &DeviceId) -> DeviceKey {
    derive_device_key(b"test master secret, not for production", device)
}

fn status() -> Status {
    Status {
        schema: protocol::SCHEMA,
        state: AgentState::Running,
        at: time::OffsetDateTime::now_utc(),
        agent_version: "test".into(),
        family: "x86_64-cpu".into(),
        model: None,
        models: Vec::new(),
        health: None,
    }
}

fn window(frames: u64) -> TelemetryBody {
    let now = time::OffsetDateTime::now_utc();
    TelemetryBody::Window(Box::new(WindowSummary {
        start: now,
        end: now,
        camera: "line-1".into(),
        model: ModelRef { name: "defect".into(), version: 7 },
        frames,
        drops: 0,
        confidence: ConfidenceHistogram::default(),
        classes: BTreeMap::from([("scratch".to_string(), frames)]),
        latency_ms: Latency { p50: 1.0, p95: 2.0, p99: 3.0 },
        flagged: 0,
    }))
}

fn config(url: &str, dir: &Path) -> LinkConfig {
    let mut config = LinkConfig::new(url);
    config.outbox.path = dir.to_path_buf();
    config.outbox.flush_interval_ms = 5;
    config.reconnect_min_ms = 50;
    config.reconnect_max_ms = 400;
    config.shutdown_timeout_ms = 5_000;
    config
}

struct Running {
    handle: LinkHandle,
    task: JoinHandle<()>,
    shutdown: CancellationToken,
}

fn start(config: &LinkConfig, device: &DeviceId) -> Running {
    let store = open_store(&config.outbox.path);
    let shutdown = CancellationToken::new();
    let (handle, task) =
        Link::start(config, store, device.clone(), key(device), status(), shutdown.clone()).expect("link starts");
    Running { handle, task, shutdown }
}

/// Opens the store, waiting out sled's file lock: dropping a sled database does not release the lock at once (its
/// flusher thread holds it a moment longer, spacejam/sled#1289), and these tests reopen a store within one process.
/// An agent opens its store once per process, so only tests meet this.
fn open_store(path: &Path) -> Arc<dyn Store> {
    let deadline = Instant::now() + WAIT;
    loop {
        match SledStore::open(path) {
            Ok(store) => return store,
            Err(StoreError::Open { detail, .. }) if detail.contains("WouldBlock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the store does not open: {e}"),
        }
    }
}

impl Running {
    /// Graceful shutdown; returns the stats after the link task ended.
    async fn stop(self, within: Duration) -> LinkStats {
        self.shutdown.cancel();
        tokio::time::timeout(within, self.task).await.expect("link stops within the deadline").expect("no panic");
        self.handle.stats()
    }
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The telemetry seqs received for `device`, each opened with its key; panics on anything forged or unreadable.
fn telemetry_seqs(received: &[Received], device: &DeviceId) -> Vec<u64> {
    let wanted = topics::topic(device, Channel::Telemetry);
    received
        .iter()
        .filter(|m| m.topic == wanted)
        .map(|m| {
            let payload = auth::open(&m.payload, device, &key(device)).expect("sealed with the device key");
            protocol::decode::<Telemetry>(&payload).expect("a valid telemetry message").seq
        })
        .collect()
}

fn distinct(seqs: &[u64]) -> BTreeSet<u64> {
    seqs.iter().copied().collect()
}

async fn delivers_all(url: &str, sub_port: u16, version: MqttVersion, name: &str) {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let id = device(name);
    let sub = Subscriber::start(sub_port, &format!("{name}-sub"), &format!("outpost/v1/devices/{id}/#")).await;
    let mut config = config(url, dir.path());
    config.protocol = version;
    let link = start(&config, &id);
    const N: u64 = 300;
    for n in 0..N {
        assert_eq!(link.handle.publish_telemetry(window(n)).expect("append"), n + 1);
    }
    let all: BTreeSet<u64> = (1..=N).collect();
    assert!(sub.wait_until(WAIT, |r| distinct(&telemetry_seqs(r, &id)) == all).await, "not all {N} arrived");
    let status_topic = topics::topic(&id, Channel::Status);
    assert!(sub.received().iter().any(|m| m.topic == status_topic), "the retained status was published");
    let stats = link.stop(Duration::from_secs(10)).await;
    assert_eq!((stats.outbox_messages, stats.acked, stats.dropped), (0, N, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_message_through_the_embedded_broker() {
    let broker = EmbeddedBroker::start().expect("rumqttd starts");
    delivers_all(&broker.url(), broker.v4_port, MqttVersion::V311, "emb-v4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_message_through_the_embedded_broker_over_mqtt5() {
    let broker = EmbeddedBroker::start().expect("rumqttd starts");
    delivers_all(&broker.url_v5(), broker.v4_port, MqttVersion::V5, "emb-v5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_message_through_mosquitto() {
    let broker = Mosquitto::start(MosquittoOptions::default()).expect("mosquitto starts");
    delivers_all(&broker.url(), broker.port(), MqttVersion::V311, "mosq-v4").await;
    delivers_all(&broker.url(), broker.port(), MqttVersion::V5, "mosq-v5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_mid_stream_loses_nothing() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let id = device("outage");
    let mut broker = Mosquitto::start(MosquittoOptions { persistence: true, ..Default::default() }).expect("starts");
    let sub = Subscriber::start(broker.port(), "outage-sub", &topics::topic(&id, Channel::Telemetry)).await;
    let link = start(&config(&broker.url(), dir.path()), &id);
    let mut sent = 0u64;
    let mut produce = |count: u64| {
        for _ in 0..count {
            sent += 1;
            link.handle.publish_telemetry(window(sent)).expect("append never blocks on the broker");
        }
    };
    produce(100);
    assert!(sub.wait_until(WAIT, |r| !telemetry_seqs(r, &id).is_empty()).await);
    broker.stop().expect("broker stops");
    wait_until("the link to notice", || !link.handle.stats().connected).await;
    // Keep producing while the broker is away, through several reconnect attempts.
    let down_since = Instant::now();
    while down_since.elapsed() < Duration::from_secs(2) {
        produce(10);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(link.handle.stats().outbox_messages > 0);
    broker.restart().expect("broker restarts");
    produce(100);
    let all: BTreeSet<u64> = (1..=sent).collect();
    let ok = sub.wait_until(WAIT, |r| distinct(&telemetry_seqs(r, &id)) == all).await;
    assert!(
        ok,
        "missing after de-duplication: {:?}\n{}",
        all.difference(&distinct(&telemetry_seqs(&sub.received(), &id))).take(20).collect::<Vec<_>>(),
        broker.log()
    );
    let stats = link.stop(Duration::from_secs(10)).await;
    assert!(stats.connects >= 2, "{stats:?}");
    assert_eq!(stats.outbox_messages, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_cap_drops_the_oldest_and_the_count_survives_restart() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let id = device("capped");
    let mut broker = Mosquitto::start(MosquittoOptions { persistence: true, ..Default::default() }).expect("starts");
    let sub = Subscriber::start(broker.port(), "capped-sub", &topics::topic(&id, Channel::Telemetry)).await;
    broker.stop().expect("broker stops");
    let mut config = config(&broker.url(), dir.path());
    config.outbox.max_bytes = 1024 * 1024;
    config.shutdown_timeout_ms = 200;
    let link = start(&config, &id);
    const N: u64 = 4_000;
    for n in 0..N {
        link.handle.publish_telemetry(window(n)).expect("append");
    }
    wait_until("durable", || link.handle.stats().durable_seq == N).await;
    let before = link.stop(Duration::from_secs(5)).await;
    assert!(before.dropped > 0 && before.outbox_bytes <= config.outbox.max_bytes, "{before:?}");
    assert_eq!(before.outbox_messages + before.dropped, N);

    let link = start(&config, &id);
    assert_eq!(link.handle.stats().dropped, before.dropped, "the drop count survives a restart");
    broker.restart().expect("broker restarts");
    let kept: BTreeSet<u64> = (before.dropped + 1..=N).collect();
    let ok = sub.wait_until(WAIT, |r| distinct(&telemetry_seqs(r, &id)) == kept).await;
    let got = distinct(&telemetry_seqs(&sub.received(), &id));
    assert!(
        ok,
        "the newest {} arrive, the oldest {} were dropped; got {} ({:?}..{:?}), {:?}\n{}",
        kept.len(),
        before.dropped,
        got.len(),
        got.first(),
        got.last(),
        link.handle.stats(),
        broker.log()
    );
    let stats = link.handle.stats();
    assert!(stats.connected, "{stats:?}");
    assert_eq!(link.stop(Duration::from_secs(10)).await.outbox_messages, 0);
}

#[test]
fn restart_without_shutdown_replays_and_continues_seq() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let id = device("restart");
    let dead = format!("mqtt://127.0.0.1:{}", free_port().expect("port"));
    let config = config(&dead, dir.path());
    // A runtime of its own, dropped without a shutdown: every task of the link is cancelled mid-flight.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let handle = runtime.block_on(async {
        let link = start(&config, &id);
        for n in 0..50 {
            link.handle.publish_telemetry(window(n)).expect("append");
        }
        wait_until("durable", || link.handle.stats().durable_seq == 50).await;
        link.handle
    });
    drop(runtime);
    drop(handle);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(replay_after_restart(&config, &id, 50));
}

/// Reopens the store at `config`'s path against a live broker: seqs 1..=before are replayed and new ones follow.
async fn replay_after_restart(config: &LinkConfig, id: &DeviceId, before: u64) {
    let broker = EmbeddedBroker::start().expect("rumqttd starts");
    let sub = Subscriber::start(broker.v4_port, &format!("{id}-sub"), &topics::topic(id, Channel::Telemetry)).await;
    let mut config = config.clone();
    config.broker = broker.url();
    let link = start(&config, id);
    assert_eq!(link.handle.publish_telemetry(window(0)).expect("append"), before + 1, "seq continues");
    let all: BTreeSet<u64> = (1..=before + 1).collect();
    assert!(sub.wait_until(WAIT, |r| distinct(&telemetry_seqs(r, id)) == all).await, "replayed after restart");
    assert_eq!(link.stop(Duration::from_secs(10)).await.outbox_messages, 0);
}

/// The child side of [`kill_9_replays_and_continues_seq`]: does nothing unless that test started this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_producer_for_kill_9() {
    let (Ok(path), Ok(url)) = (std::env::var("OUTPOST_TEST_CHILD_STORE"), std::env::var("OUTPOST_TEST_CHILD_URL"))
    else {
        return;
    };
    let link = start(&config(&url, Path::new(&path)), &device("killed"));
    for n in 0..40 {
        link.handle.publish_telemetry(window(n)).expect("append");
    }
    wait_until("durable", || link.handle.stats().durable_seq == 40).await;
    println!("OUTPOST-CHILD-READY");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_replays_and_continues_seq() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = format!("mqtt://127.0.0.1:{}", free_port().expect("port"));
    let mut child = Process::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_producer_for_kill_9", "--nocapture", "--test-threads=1"])
        .env("OUTPOST_TEST_CHILD_STORE", dir.path())
        .env("OUTPOST_TEST_CHILD_URL", &dead)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("piped");
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.contains("OUTPOST-CHILD-READY"))
    });
    let ready = timeout(WAIT, ready).await.expect("joined");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(ready, "the child reported its messages durable");
    replay_after_restart(&config(&dead, dir.path()), &device("killed"), 40).await;
}

async fn timeout<T>(within: Duration, f: impl Future<Output = Result<T, tokio::task::JoinError>>) -> Result<T, String> {
    match tokio::time::timeout(within, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_commands_are_dropped_and_a_valid_one_delivered_once() {
    init();
    let broker = EmbeddedBroker::start().expect("rumqttd starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let id = device("commanded");
    let link = start(&config(&broker.url(), dir.path()), &id);
    let mut commands = link.handle.take_commands().expect("first take");
    assert!(link.handle.take_commands().is_none());
    wait_until("connected", || link.handle.stats().connected).await;
    let fleet = Subscriber::start(broker.v4_port, "fleet", &topics::topic(&id, Channel::Status)).await;
    assert!(fleet.wait_until(WAIT, |r| !r.is_empty()).await, "status seen, so the device has subscribed");

    let command = Command {
        schema: protocol::SCHEMA,
        id: "c-0001".into(),
        issued_at: time::OffsetDateTime::now_utc(),
        body: CommandBody::SetConfig(SetConfig { window_secs: Some(60), ..SetConfig::default() }),
    };
    let bytes = protocol::encode(&command).expect("encodes");
    let other = device("someone-else");
    let text = String::from_utf8(bytes.clone()).expect("utf-8");
    let unknown_field = text.replacen("{\"schema\":1,", "{\"schema\":1,\"x\":1,", 1).into_bytes();
    let topic = topics::topic(&id, Channel::Commands);
    for forged in [
        b"not json at all".to_vec(),
        auth::seal(&key(&other), &id, &bytes),
        auth::seal(&key(&other), &other, &bytes),
        auth::seal(&key(&id), &id, &unknown_field),
    ] {
        fleet.publish(&topic, forged).await;
    }
    fleet.publish(&topic, auth::seal(&key(&id), &id, &bytes)).await;
    wait_until("all five handled", || {
        let s = link.handle.stats();
        s.rejected_commands + s.commands >= 5
    })
    .await;
    let stats = link.handle.stats();
    assert_eq!((stats.rejected_commands, stats.commands), (4, 1), "{stats:?}");
    assert_eq!(commands.recv().await, Some(command));
    assert!(commands.try_recv().is_err(), "delivered once");
    link.stop(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_delivers_the_outbox_and_goes_offline() {
    init();
    let broker = Mosquitto::start(MosquittoOptions::default()).expect("mosquitto starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let id = device("graceful");
    let sub = Subscriber::start(broker.port(), "graceful-sub", &format!("outpost/v1/devices/{id}/#")).await;
    let link = start(&config(&broker.url(), dir.path()), &id);
    const N: u64 = 500;
    for n in 0..N {
        link.handle.publish_telemetry(window(n)).expect("append");
    }
    // Shut down at once: whatever is still in the outbox must be delivered before the link exits.
    let handle = link.handle.clone();
    let stats = link.stop(Duration::from_secs(10)).await;
    assert_eq!(stats.outbox_messages, 0, "{stats:?}");
    assert!(matches!(handle.publish_telemetry(window(0)), Err(outpost_agent::link::LinkError::Closed)));
    let all: BTreeSet<u64> = (1..=N).collect();
    assert!(sub.wait_until(WAIT, |r| distinct(&telemetry_seqs(r, &id)) == all).await);
    let status_topic = topics::topic(&id, Channel::Status);
    let last_state = |r: &[Received]| {
        r.iter().rev().find(|m| m.topic == status_topic).map(|m| {
            let payload = auth::open(&m.payload, &id, &key(&id)).expect("sealed");
            protocol::decode::<Status>(&payload).expect("status").state
        })
    };
    assert!(sub.wait_until(WAIT, |r| last_state(r) == Some(AgentState::Offline)).await, "offline status published");
}
