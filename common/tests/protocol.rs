//! The v1 wire format: every message round-trips, and its exact bytes are pinned by golden files in
//! `tests/golden/`, so the format cannot drift unnoticed. After an intended change, regenerate them with
//! `OUTPOST_BLESS=1 cargo test -p outpost-common --test protocol` and review the diff.

use std::collections::BTreeMap;
use std::path::PathBuf;

use outpost_common::manifest::{self, Floors, KeySet, Manifest, Policy, SecretKey, Sha256Sum, TrustedKeys};
use outpost_common::protocol::auth::{self, DeviceKey};
use outpost_common::protocol::{
    self, AgentReady, AgentState, AssignModel, CameraInfo, Command, CommandAck, CommandBody, ConfidenceHistogram,
    Event, EventBody, FlagReason, FrameBatch, FrameReport, Health, Latency, Message, ModelRef, Prediction,
    ProtocolError, SampleFlagged, ServedModel, SetConfig, Status, SwapCommitted, SwapReverted, Telemetry,
    TelemetryBody, UpdateProgress, UpdateRejected, UpdateStage, WindowSummary,
};
use outpost_common::topics::{self, Channel, DeviceId};
use outpost_common::vision::confidence::Confidence;
use time::macros::datetime;

mod support;
use support::{FAMILY, key, manifest_for};

const SCHEMA: u32 = protocol::SCHEMA;

fn model() -> ModelRef {
    ModelRef { name: "defect".into(), version: 7 }
}

/// The reference manifest, with a confidence baseline.
fn test_manifest() -> Manifest {
    Manifest {
        baseline: Some(manifest::ConfidenceBaseline { frames: 500, histogram: histogram(), flagged_rate: Some(0.04) }),
        ..manifest_for(b"pretend ONNX bytes")
    }
}

fn histogram() -> ConfidenceHistogram {
    let mut h = ConfidenceHistogram::default();
    for (i, c) in h.0.iter_mut().enumerate() {
        *c = (i as u64 * 7) % 11;
    }
    h
}

fn status() -> Status {
    Status {
        schema: SCHEMA,
        state: AgentState::Running,
        at: datetime!(2026-11-21 10:00:00 UTC),
        agent_version: "0.1.0".into(),
        family: "x86_64-cpu".into(),
        model: Some(model()),
        models: vec![ServedModel { name: "defect".into(), active: 7, previous: Some(6), committed: false }],
        health: Some(Health {
            uptime_secs: 3600,
            fps: 29.5,
            outbox_pending: 0,
            outbox_dropped: 12,
            frames_dropped: 3,
            errors: 2,
        }),
    }
}

fn telemetry_window() -> Telemetry {
    Telemetry {
        schema: SCHEMA,
        seq: 42,
        body: TelemetryBody::Window(Box::new(WindowSummary {
            start: datetime!(2026-11-21 10:00:00 UTC),
            end: datetime!(2026-11-21 10:01:00 UTC),
            camera: "line-3".into(),
            model: model(),
            frames: 1790,
            drops: 3,
            confidence: histogram(),
            classes: BTreeMap::from([("dent".into(), 12), ("scratch".into(), 40)]),
            latency_ms: Latency { p50: 11.5, p95: 17.25, p99: 30.0 },
            flagged: 5,
        })),
    }
}

fn telemetry_frames() -> Telemetry {
    Telemetry {
        schema: SCHEMA,
        seq: 43,
        body: TelemetryBody::Frames(FrameBatch {
            camera: "line-3".into(),
            model: model(),
            frames: vec![
                FrameReport {
                    frame: 1001,
                    at: datetime!(2026-11-21 10:01:00.250 UTC),
                    latency_ms: 12.5,
                    flagged: true,
                    confidence: Confidence::Detect { max: Some(0.875), mean: Some(0.625), count: 2, uncertain: 1 },
                    predictions: vec![
                        Prediction {
                            class: 0,
                            label: "scratch".into(),
                            score: 0.875,
                            bbox: Some([10.0, 20.0, 110.5, 80.0]),
                        },
                        Prediction {
                            class: 1,
                            label: "dent".into(),
                            score: 0.375,
                            bbox: Some([200.0, 40.0, 260.0, 90.0]),
                        },
                    ],
                },
                FrameReport {
                    frame: 1002,
                    at: datetime!(2026-11-21 10:01:00.283 UTC),
                    latency_ms: 11.0,
                    flagged: false,
                    confidence: Confidence::Detect { max: None, mean: None, count: 0, uncertain: 0 },
                    predictions: vec![],
                },
            ],
        }),
    }
}

fn event(seq: u64, body: EventBody) -> Event {
    Event { schema: SCHEMA, seq, at: datetime!(2026-11-21 10:02:00 UTC), body }
}

fn events() -> Vec<(&'static str, Event)> {
    let previous = Some(ModelRef { name: "defect".into(), version: 6 });
    vec![
        (
            "event_agent_ready",
            event(
                43,
                EventBody::AgentReady(AgentReady {
                    agent_version: "0.1.0".into(),
                    cameras: vec![CameraInfo { name: "line-3".into(), source: "dir".into(), model: model() }],
                }),
            ),
        ),
        (
            "event_sample_flagged",
            event(
                44,
                EventBody::SampleFlagged(SampleFlagged {
                    sample: Sha256Sum::of(b"jpeg bytes"),
                    camera: "line-3".into(),
                    frame: 1001,
                    model: model(),
                    reason: FlagReason::LowConfidence,
                    confidence: Confidence::Classify { top1: 0.5, margin: 0.125, entropy: 0.75 },
                }),
            ),
        ),
        (
            "event_command_ack",
            event(45, EventBody::CommandAck(CommandAck { command_id: "c-0001".into(), accepted: true, reason: None })),
        ),
        (
            "event_update_progress",
            event(
                46,
                EventBody::UpdateProgress(UpdateProgress {
                    command_id: "c-0001".into(),
                    model: model(),
                    stage: UpdateStage::Downloading,
                    bytes: Some(1_048_576),
                    total: Some(10_854_321),
                }),
            ),
        ),
        (
            "event_update_rejected",
            event(
                47,
                EventBody::UpdateRejected(UpdateRejected {
                    command_id: "c-0002".into(),
                    model: Some(model()),
                    code: "expired".into(),
                    reason: "expired at 2026-11-01 0:00:00.0 +00:00:00".into(),
                }),
            ),
        ),
        (
            "event_swap_committed",
            event(
                48,
                EventBody::SwapCommitted(SwapCommitted {
                    command_id: "c-0001".into(),
                    model: model(),
                    previous: previous.clone(),
                }),
            ),
        ),
        (
            "event_swap_reverted",
            event(
                49,
                EventBody::SwapReverted(SwapReverted {
                    command_id: "c-0003".into(),
                    model: model(),
                    restored: previous,
                    reason: "health window: 12 inference errors".into(),
                }),
            ),
        ),
        (
            "event_error",
            event(50, EventBody::Error { code: "source".into(), message: "camera /dev/video0 disconnected".into() }),
        ),
    ]
}

fn command(id: &str, body: CommandBody) -> Command {
    Command { schema: SCHEMA, id: id.into(), issued_at: datetime!(2026-11-21 09:59:00 UTC), body }
}

fn commands() -> Vec<(&'static str, Command)> {
    let key_set = KeySet {
        schema: manifest::KEY_SET_SCHEMA,
        version: 1,
        threshold: 1,
        keys: vec![SecretKey::from_seed(&[2; 32]).public()],
        revoked: vec![key(1).public().id().clone()],
    };
    vec![
        (
            "command_assign_model",
            command(
                "c-0001",
                CommandBody::AssignModel(AssignModel {
                    manifest: manifest::sign_manifest(&test_manifest(), &[&key(1)]),
                    artifact_url: "https://fleet.example/api/v1/models/defect/7/artifact".into(),
                    rollout: Some("r-12".into()),
                }),
            ),
        ),
        (
            "command_set_config",
            command(
                "c-0004",
                CommandBody::SetConfig(SetConfig {
                    window_secs: Some(60),
                    per_frame_secs: Some(300),
                    flag_below: Some(0.5),
                    upload_samples: None,
                }),
            ),
        ),
        (
            "command_rotate_keys",
            command("c-0005", CommandBody::RotateKeys { key_set: manifest::sign_key_set(&key_set, &[&key(1)]) }),
        ),
    ]
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.json"))
}

/// Encodes `message`, compares the bytes with the golden file, and decodes both back to the same message.
fn check<M: Message + PartialEq + std::fmt::Debug>(name: &str, message: &M) {
    let bytes = protocol::encode(message).expect("encodes");
    let path = golden_path(name);
    if std::env::var_os("OUTPOST_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, [bytes.as_slice(), b"\n"].concat()).expect("write golden");
    }
    let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run with OUTPOST_BLESS=1)", path.display()));
    let golden = golden.strip_suffix(b"\n").unwrap_or(&golden);
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        String::from_utf8_lossy(golden),
        "{name}: the wire format changed; if intended, bump the schema or re-bless"
    );
    assert_eq!(&protocol::decode::<M>(golden).expect("golden decodes"), message, "{name}: round trip");

    // Through the authenticated envelope, as it travels.
    let device = DeviceId::new("cam-01").expect("id");
    let key = auth::derive_device_key(b"test master secret", &device);
    let sealed = auth::seal(&key, &device, &bytes);
    let opened = auth::open(&sealed, &device, &key).expect("opens");
    assert_eq!(&protocol::decode::<M>(&opened).expect("decodes"), message, "{name}: sealed round trip");
    assert_eq!(topics::parse(&topics::topic(&device, M::CHANNEL)).expect("topic"), (device, M::CHANNEL));
}

#[test]
fn every_message_matches_its_golden_bytes() {
    check("status", &status());
    check("status_last_will", &status().last_will());
    check("telemetry_window", &telemetry_window());
    check("telemetry_frames", &telemetry_frames());
    for (name, event) in events() {
        check(name, &event);
    }
    for (name, command) in commands() {
        check(name, &command);
    }
}

#[test]
fn the_sealed_envelope_matches_its_golden_bytes() {
    let device = DeviceId::new("cam-01").expect("id");
    let key = auth::derive_device_key(b"test master secret", &device);
    let sealed = auth::seal(&key, &device, br#"{"schema":1}"#);
    let path = golden_path("sealed");
    if std::env::var_os("OUTPOST_BLESS").is_some() {
        std::fs::write(&path, [sealed.as_slice(), b"\n"].concat()).expect("write golden");
    }
    let golden = std::fs::read(&path).expect("golden sealed");
    assert_eq!(String::from_utf8_lossy(&sealed), String::from_utf8_lossy(golden.trim_ascii_end()));
    assert_eq!(key, DeviceKey::from_hex(&key.to_hex()).expect("hex"));
}

#[test]
fn a_signed_manifest_survives_the_assign_model_command() {
    let (_, command) = commands().into_iter().next().expect("assign_model");
    let bytes = protocol::encode(&command).expect("encodes");
    let decoded: Command = protocol::decode(&bytes).expect("decodes");
    let CommandBody::AssignModel(assign) = decoded.body else { panic!("assign_model expected") };
    let trusted = TrustedKeys::new([key(1).public()], 1).expect("trusted");
    let floors = Floors::default();
    let policy = Policy { now: datetime!(2026-11-21 12:00:00 UTC), family: Some(FAMILY), floors: &floors };
    let verified = manifest::verify_envelope(&assign.manifest, &trusted, &policy).expect("verifies after transit");
    assert_eq!(verified.manifest(), &test_manifest());
    verified.check_artifact_bytes(b"pretend ONNX bytes").expect("artifact");

    // The key set carried by rotate_keys verifies too.
    let (_, command) = commands().into_iter().nth(2).expect("rotate_keys");
    let decoded: Command = protocol::decode(&protocol::encode(&command).expect("encodes")).expect("decodes");
    let CommandBody::RotateKeys { key_set } = decoded.body else { panic!("rotate_keys expected") };
    assert_eq!(trusted.rotate_envelope(&key_set).expect("rotates").version(), 1);
}

fn check_rejected<M: Message + std::fmt::Debug>(bytes: &[u8], expected: fn(&ProtocolError) -> bool) {
    match protocol::decode::<M>(bytes) {
        Err(e) if expected(&e) => {}
        other => panic!("{}: got {other:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)])),
    }
}

fn edit(message: &impl Message, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut value = serde_json::to_value(message).expect("json");
    f(&mut value);
    serde_json::to_vec(&value).expect("json")
}

#[test]
fn unknown_fields_schemas_caps_and_checks() {
    let unknown = |e: &ProtocolError| matches!(e, ProtocolError::UnknownField(_));
    check_rejected::<Status>(&edit(&status(), |v| v["battery"] = 0.5.into()), unknown);
    check_rejected::<Status>(&edit(&status(), |v| v["health"]["temp"] = 60.into()), unknown);
    check_rejected::<Telemetry>(&edit(&telemetry_window(), |v| v["body"]["gpu"] = true.into()), unknown);
    check_rejected::<Telemetry>(&edit(&telemetry_frames(), |v| v["body"]["frames"][0]["x"] = 1.into()), unknown);
    check_rejected::<Event>(&edit(&events()[0].1, |v| v["body"]["note"] = "hi".into()), unknown);
    check_rejected::<Command>(&edit(&commands()[0].1, |v| v["body"]["manifest"]["x"] = 1.into()), unknown);
    check_rejected::<Command>(&edit(&commands()[1].1, |v| v["body"]["fps"] = 5.into()), unknown);

    let schema = |e: &ProtocolError| matches!(e, ProtocolError::UnsupportedSchema { got: 2 });
    check_rejected::<Status>(&edit(&status(), |v| v["schema"] = 2.into()), schema);
    let malformed = |e: &ProtocolError| matches!(e, ProtocolError::Malformed(_));
    check_rejected::<Status>(b"{\"state\":\"running\"}", malformed);
    check_rejected::<Telemetry>(&edit(&telemetry_window(), |v| v["body"]["kind"] = "video".into()), malformed);
    check_rejected::<Telemetry>(
        &edit(&telemetry_window(), |v| v["body"]["confidence"] = vec![1; 19].into()),
        malformed,
    );
    check_rejected::<Status>(b"", malformed);

    let big = vec![b' '; protocol::MAX_PAYLOAD_BYTES + 1];
    check_rejected::<Telemetry>(&big, |e| matches!(e, ProtocolError::TooLarge { .. }));

    let invalid = |e: &ProtocolError| matches!(e, ProtocolError::Invalid(_));
    check_rejected::<Command>(&edit(&commands()[1].1, |v| v["id"] = "a/b".into()), invalid);
    check_rejected::<Command>(&edit(&commands()[1].1, |v| v["id"] = "".into()), invalid);
    check_rejected::<Command>(&edit(&commands()[1].1, |v| v["body"]["flag_below"] = 1.5.into()), invalid);
    check_rejected::<Command>(
        &edit(&commands()[0].1, |v| v["body"]["artifact_url"] = "file:///etc/passwd".into()),
        invalid,
    );
    check_rejected::<Telemetry>(
        &edit(&telemetry_window(), |v| v["body"]["end"] = "2026-11-21T09:00:00Z".into()),
        invalid,
    );

    // The sender is told when a message is too big to send, so it can split it.
    let mut huge = telemetry_frames();
    if let TelemetryBody::Frames(batch) = &mut huge.body {
        let frame = batch.frames[0].clone();
        batch.frames = vec![frame; 5000];
    }
    assert!(matches!(protocol::encode(&huge), Err(ProtocolError::TooLarge { .. })));
}

/// A telemetry body decodes the same whether `kind` comes first (as every Outpost sender writes it) or anywhere
/// else, and is refused the same way when it is wrong.
#[test]
fn telemetry_bodies_decode_in_any_field_order() {
    for (message, kind) in [(telemetry_window(), "window"), (telemetry_frames(), "frames")] {
        let wire = String::from_utf8(protocol::encode(&message).expect("encodes")).expect("utf-8");
        let tag = format!("\"kind\":\"{kind}\",");
        assert!(wire.contains(&format!("\"body\":{{{tag}")), "kind is written first: {wire}");
        let kind_last = format!("{},\"kind\":\"{kind}\"}}}}", wire.replace(&tag, "").trim_end_matches("}}"));
        let kind_middle = edit(&message, |_| {});
        for bytes in [wire.as_bytes(), kind_last.as_bytes(), &kind_middle] {
            let decoded: Telemetry = protocol::decode(bytes).expect("decodes");
            assert_eq!(decoded, message, "{}", String::from_utf8_lossy(bytes));
        }

        let with = |extra: &str| wire.replacen(&tag, &format!("{tag}{extra},"), 1).into_bytes();
        let unknown = |e: &ProtocolError| matches!(e, ProtocolError::UnknownField(m) if m.contains("`gpu`"));
        check_rejected::<Telemetry>(&with("\"gpu\":true"), unknown);
        check_rejected::<Telemetry>(kind_last.replace("\"body\":{", "\"body\":{\"gpu\":true,").as_bytes(), unknown);
        let duplicate = |e: &ProtocolError| matches!(e, ProtocolError::Malformed(m) if m.contains("duplicate field"));
        check_rejected::<Telemetry>(&with("\"camera\":\"x\",\"camera\":\"y\""), duplicate);
        let missing =
            |e: &ProtocolError| matches!(e, ProtocolError::Malformed(m) if m.contains("missing field `kind`"));
        check_rejected::<Telemetry>(wire.replace(&tag, "").as_bytes(), missing);
        check_rejected::<Telemetry>(b"{\"schema\":1,\"seq\":1,\"body\":{}}", missing);
        let malformed = |e: &ProtocolError| matches!(e, ProtocolError::Malformed(_));
        check_rejected::<Telemetry>(wire.replace(&tag, "\"kind\":7,").as_bytes(), malformed);
        check_rejected::<Telemetry>(
            kind_last.replace(&format!("\"kind\":\"{kind}\""), "\"kind\":null").as_bytes(),
            malformed,
        );
        check_rejected::<Telemetry>(b"{\"schema\":1,\"seq\":1,\"body\":[]}", malformed);
    }
}

#[test]
fn frame_batches_reduce_to_the_window_shape() {
    let TelemetryBody::Frames(batch) = telemetry_frames().body else { panic!("frames") };
    let (histogram, classes) = batch.summarize();
    assert_eq!(histogram.total(), 1, "the frame without detections adds nothing");
    assert_eq!(histogram.0[12], 1, "mean 0.625 falls in bin 12");
    assert_eq!(classes, BTreeMap::from([("dent".into(), 1), ("scratch".into(), 1)]));
    assert_eq!(Status::CHANNEL, Channel::Status);
    assert_eq!(Command::CHANNEL, Channel::Commands);
}
