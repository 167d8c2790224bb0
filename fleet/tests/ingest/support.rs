//! A fleet's ingest over a real sled store in a temp dir, devices enrolled in a directory keyed from a test master
//! secret, and messages sealed exactly as the agent seals them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use outpost_common::protocol::auth::{self, DeviceKey, derive_device_key};
use outpost_common::protocol::{
    self, AgentState, ConfidenceHistogram, Event, EventBody, Health, Latency, Message, ModelRef, ServedModel, Status,
    Telemetry, TelemetryBody, WindowSummary,
};
use outpost_common::store::SledStore;
use outpost_common::topics::{self, DeviceId};
use outpost_fleet::ingest::{Ingest, IngestConfig, Ingested, MasterKeyDirectory};
use time::OffsetDateTime;

/// A test secret, not for production.
pub const MASTER: &[u8] = b"fleet ingest test master secret, not for production";
pub const BASE: OffsetDateTime = time::macros::datetime!(2026-11-21 00:00 UTC);

pub fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("valid device id")
}

/// `BASE` plus some minutes.
pub fn t(minutes: i64) -> OffsetDateTime {
    BASE + time::Duration::minutes(minutes)
}

pub fn key(device: &DeviceId) -> DeviceKey {
    derive_device_key(MASTER, device)
}

pub fn model(version: u64) -> ModelRef {
    ModelRef { name: "defect".into(), version }
}

/// `message` encoded and sealed with `key`, naming `device` in the envelope — as the agent's link does.
pub fn sealed_with<M: Message>(key: &DeviceKey, device: &DeviceId, message: &M) -> Vec<u8> {
    auth::seal(key, device, &protocol::encode(message).expect("encodes"))
}

pub struct Fleet {
    /// The store's directory; removed at drop when it is a temp dir of this fleet's own.
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub directory: Arc<MasterKeyDirectory>,
    pub ingest: Ingest,
    config: IngestConfig,
}

impl Fleet {
    pub fn new(config: IngestConfig) -> Fleet {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut fleet = Fleet::at(tmp.path(), config);
        fleet._tmp = Some(tmp);
        fleet
    }

    /// A fleet on the store in `dir`, which outlives it.
    pub fn at(dir: &Path, config: IngestConfig) -> Fleet {
        let directory = Arc::new(MasterKeyDirectory::new(MASTER));
        let ingest = open(dir, &directory, &config);
        Fleet { dir: dir.to_path_buf(), _tmp: None, directory, ingest, config }
    }

    /// Stops the fleet (flushes, closes the store) and starts it again on the same store: a fleet restart.
    pub fn restart(self) -> Fleet {
        let Fleet { dir, _tmp, directory, ingest, config } = self;
        ingest.flush().expect("flush");
        drop(ingest);
        let ingest = open(&dir, &directory, &config);
        Fleet { dir, _tmp, directory, ingest, config }
    }

    pub fn enroll(&self, device: &str, tags: &[(&str, &str)]) -> DeviceId {
        let tags: BTreeMap<String, String> = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.directory.enroll(id(device), tags);
        id(device)
    }

    pub fn publish(&self, topic: &str, payload: &[u8], received_at: OffsetDateTime) -> Ingested {
        self.ingest.ingest(topic, payload, received_at).expect("the store works")
    }

    /// `device` sends `message` on its own topic, sealed with its own key.
    pub fn send<M: Message>(&self, device: &DeviceId, message: &M, received_at: OffsetDateTime) -> Ingested {
        let topic = topics::topic(device, M::CHANNEL);
        self.publish(&topic, &sealed_with(&key(device), device, message), received_at)
    }
}

fn open(dir: &Path, directory: &Arc<MasterKeyDirectory>, config: &IngestConfig) -> Ingest {
    let store = SledStore::open(dir).expect("store opens");
    Ingest::open(store, directory.clone(), config.clone()).expect("ingest opens")
}

/// A window summary: `scores` binned into the histogram (one per frame that had a detection), `frames` in all.
pub fn window(seq: u64, model: ModelRef, start: OffsetDateTime, frames: u64, scores: &[f32]) -> Telemetry {
    let mut confidence = ConfidenceHistogram::default();
    for s in scores {
        confidence.add(*s);
    }
    let summary = WindowSummary {
        start,
        end: start + time::Duration::minutes(1),
        camera: "line-1".into(),
        model,
        frames,
        drops: 1,
        confidence,
        classes: BTreeMap::from([("dent".to_string(), scores.len() as u64)]),
        latency_ms: Latency { p50: 10.0, p95: 20.0, p99: 30.0 },
        flagged: 1,
    };
    Telemetry { schema: protocol::SCHEMA, seq, body: TelemetryBody::Window(Box::new(summary)) }
}

/// A 10-frame window of `defect` `version` starting at `minute`.
pub fn simple_window(seq: u64, version: u64, minute: i64) -> Telemetry {
    window(seq, model(version), t(minute), 10, &[0.9, 0.8, 0.7])
}

pub fn status(state: AgentState, at: OffsetDateTime) -> Status {
    Status {
        schema: protocol::SCHEMA,
        state,
        at,
        agent_version: "0.1.0".into(),
        family: "x86_64-cpu".into(),
        model: Some(model(1)),
        models: vec![ServedModel { name: "defect".into(), active: 1, previous: None, committed: true }],
        health: Some(Health {
            uptime_secs: 60,
            fps: 9.5,
            outbox_pending: 0,
            outbox_dropped: 0,
            frames_dropped: 0,
            errors: 0,
        }),
    }
}

pub fn event(seq: u64, at: OffsetDateTime) -> Event {
    Event {
        schema: protocol::SCHEMA,
        seq,
        at,
        body: EventBody::Error { code: "test".into(), message: format!("event {seq}") },
    }
}
