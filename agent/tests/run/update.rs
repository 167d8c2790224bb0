//! Signed model updates on a running agent: a swap under steady frames drops nothing; every kind of bad update is
//! refused with A serving on; bad models are reverted and reported; `kill -9` at any step of an update leaves a
//! complete, verified model serving after the restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outpost_common::manifest::{self, Envelope, MANIFEST_SCHEMA, Manifest, SecretKey, Sha256Sum};
use outpost_common::manifest::{Artifact, ConfidenceBaseline};
use outpost_common::protocol::{
    self, AgentState, AssignModel, Command, CommandBody, ConfidenceHistogram, EventBody, SCHEMA,
};
use outpost_common::topics::{self, Channel};
use outpost_common::vision::engine::Runtime;
use outpost_common::vision::{Vision, VisionOptions};
use outpost_tests::broker::EmbeddedBroker;
use outpost_tests::subscriber::Subscriber;

use crate::harness::*;

#[path = "../support/artifact_server.rs"]
mod artifact_server;
use artifact_server::{ArtifactServer, Served};

fn release_key() -> SecretKey {
    SecretKey::from_seed(&[9; 32])
}

/// `[updates]` trusting the release key, with a short health window.
fn updates_toml(min_frames: u64) -> String {
    format!(
        "[updates]\ntrusted_keys = [\"{}\"]\ncheck_interval_secs = 0\n\n[updates.trial]\nmin_frames = {min_frames}\n\
         min_secs = 1.0\nmax_secs = 120.0\n\n",
        release_key().public().to_line()
    )
}

fn zoo_bytes() -> Vec<u8> {
    std::fs::read(defect_model()).expect("zoo model")
}

fn fixture_model(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/models").join(name)).expect("fixture model")
}

/// A manifest for `bytes` as version `version` of `defect`, describing the zoo's defect detector.
fn manifest_for(bytes: &[u8], version: u64) -> Manifest {
    let rt = Runtime::init(None).expect("ONNX Runtime");
    let zoo = Vision::load(rt, &zoo_bytes(), VisionOptions::default()).expect("zoo model loads");
    let now = time::OffsetDateTime::now_utc();
    Manifest {
        schema: MANIFEST_SCHEMA,
        name: "defect".into(),
        version,
        label: None,
        artifact: Artifact { sha256: Sha256Sum::of(bytes), length: bytes.len() as u64 },
        task: zoo.spec().task,
        input: zoo.spec().input.clone(),
        labels: zoo.spec().labels.clone(),
        family: Some(FAMILY.into()),
        created_at: now,
        expires_at: now + time::Duration::days(30),
        min_version: None,
        baseline: None,
    }
}

fn sign(m: &Manifest) -> Envelope {
    manifest::sign_manifest(m, &[&release_key()])
}

/// Sends an `assign_model` command, sealed for the device as the fleet would.
async fn assign(sub: &Subscriber, device: &Device, id: &str, manifest: Envelope, url: &str) {
    let command = Command {
        schema: SCHEMA,
        id: id.into(),
        issued_at: time::OffsetDateTime::now_utc(),
        body: CommandBody::AssignModel(AssignModel { manifest, artifact_url: url.into(), rollout: None }),
    };
    let bytes = protocol::encode(&command).expect("encode");
    let sealed = outpost_common::protocol::auth::seal(&device.key, &device.id, &bytes);
    sub.publish(&topics::topic(&device.id, Channel::Commands), sealed).await;
}

/// The events that answer command `id`, in order.
fn answers<'a>(seen: &'a Seen, id: &str) -> Vec<&'a EventBody> {
    seen.events
        .values()
        .map(|e| &e.body)
        .filter(|b| match b {
            EventBody::CommandAck(a) => a.command_id == id,
            EventBody::UpdateProgress(p) => p.command_id == id,
            EventBody::UpdateRejected(r) => r.command_id == id,
            EventBody::SwapCommitted(c) => c.command_id == id,
            EventBody::SwapReverted(r) => r.command_id == id,
            _ => false,
        })
        .collect()
}

fn rejected_code(seen: &Seen, id: &str) -> Option<String> {
    answers(seen, id).into_iter().find_map(|b| match b {
        EventBody::UpdateRejected(r) => Some(r.code.clone()),
        _ => None,
    })
}

fn committed(seen: &Seen, id: &str) -> bool {
    answers(seen, id).iter().any(|b| matches!(b, EventBody::SwapCommitted(_)))
}

fn reverted_reason(seen: &Seen, id: &str) -> Option<String> {
    answers(seen, id).into_iter().find_map(|b| match b {
        EventBody::SwapReverted(r) => Some(r.reason.clone()),
        _ => None,
    })
}

/// (frame number, model version) of every per-frame result, by frame number.
fn frame_versions(seen: &Seen, camera: &str) -> BTreeMap<u64, Vec<u64>> {
    let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for batch in seen.frames.values().filter(|b| b.camera == camera) {
        for f in &batch.frames {
            out.entry(f.frame).or_default().push(batch.model.version);
        }
    }
    out
}

/// The active version of `defect` in the newest status.
fn active_version(seen: &Seen) -> Option<u64> {
    seen.statuses.iter().rev().find_map(|s| s.models.iter().find(|m| m.name == "defect").map(|m| m.active))
}

struct Rig {
    broker: EmbeddedBroker,
    sub: Subscriber,
    agent: Agent,
    server: ArtifactServer,
    tmp: tempfile::TempDir,
}

/// An agent with one replay camera on the defect photos, model `defect` v1 from the zoo, trusting the release key.
async fn rig(name: &str, fps: f64, min_frames: u64) -> Rig {
    crate::init();
    let broker = EmbeddedBroker::start().expect("rumqttd starts");
    let tmp = tempfile::tempdir().expect("tempdir");
    let device = Device::new(name);
    let replay = tmp.path().join("replay");
    drop_files(&replay, "", &defect_images("val")[..8]);
    let camera = camera_toml("line-1", &replay_source(&replay, fps), "")
        .replace("model = \"defect\"\n", "model = \"defect\"\nqueue_depth = 32\n");
    let mut setup = Setup::new(&broker.url(), defect_model_toml(1) + &camera);
    setup.per_frame = true;
    setup.extra = updates_toml(min_frames);
    let sub = subscribe(broker.v4_port, &device).await;
    let mut agent = Agent::start(&tmp.path().join("agent"), &device, &setup);
    agent.wait_ready().await;
    Rig { broker, sub, agent, server: ArtifactServer::start().await, tmp }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_under_steady_frames_drops_nothing() {
    let mut r = rig("upd-swap", 30.0, 60).await;
    wait_seen(&r.sub, &r.agent, "frames on v1", |s| !frame_versions(s, "line-1").is_empty()).await;
    // Version 2: the same weights, signed as a new release.
    let bytes = zoo_bytes();
    let url = r.server.put("v2", Served::Bytes(bytes.clone()));
    assign(&r.sub, &r.agent.device, "c-swap", sign(&manifest_for(&bytes, 2)), &url).await;
    let seen = wait_seen(&r.sub, &r.agent, "the commit of v2", |s| committed(s, "c-swap")).await;
    assert!(rejected_code(&seen, "c-swap").is_none());
    // Frames keep flowing on v2 after the commit.
    wait_seen(&r.sub, &r.agent, "frames on v2 after the commit", |s| {
        frame_versions(s, "line-1").values().filter(|v| v.contains(&2)).count() > 90
    })
    .await;
    let (status, _) = r.agent.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}:\n{}", r.agent.log());
    let seen = wait_seen(&r.sub, &r.agent, "the offline status", |s| {
        s.statuses.last().is_some_and(|st| st.state == AgentState::Offline)
    })
    .await;
    // A clean stop reports what the agent served last, not the model its configuration names.
    let offline = seen.statuses.last().expect("offline status");
    let listed: Vec<(&str, u64)> = offline.models.iter().map(|m| (m.name.as_str(), m.active)).collect();
    assert_eq!(listed, [("defect", 2)], "the offline status lists v2: {offline:?}");
    assert_eq!(offline.model.as_ref().map(|m| m.version), Some(2));

    let frames = frame_versions(&seen, "line-1");
    let numbers: Vec<u64> = frames.keys().copied().collect();
    let last = *numbers.last().expect("frames");
    assert_eq!(numbers, (1..=last).collect::<Vec<_>>(), "no frame dropped: every number answered");
    assert!(frames.values().all(|v| v.len() == 1), "every frame answered exactly once");
    let versions: Vec<u64> = frames.values().map(|v| v[0]).collect();
    let switch = versions.iter().position(|&v| v == 2).expect("v2 served");
    assert!(versions[..switch].iter().all(|&v| v == 1) && versions[switch..].iter().all(|&v| v == 2), "A…A B…B");
    assert_eq!(seen.drops_per_camera().values().sum::<u64>(), 0, "no drops in any window");
    let stages: Vec<String> = answers(&seen, "c-swap")
        .iter()
        .filter_map(|b| match b {
            EventBody::UpdateProgress(p) => Some(format!("{:?}", p.stage)),
            _ => None,
        })
        .collect();
    for stage in ["Downloading", "Verifying", "Loading", "Swapped", "HealthCheck"] {
        assert!(stages.iter().any(|s| s == stage), "a `{stage}` progress event: {stages:?}");
    }
    assert_eq!(active_version(&seen), Some(2));
    assert!(seen.statuses.iter().any(|s| s.models.iter().any(|m| m.active == 2 && m.previous == Some(1))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_are_refused_and_the_old_model_serves_on() {
    let r = rig("upd-reject", 10.0, 10).await;
    let good = zoo_bytes();
    let good_url = r.server.put("good", Served::Bytes(good.clone()));
    let mut tampered = good.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xFF;
    let stranger = SecretKey::from_seed(&[3; 32]);
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let m = |version| manifest_for(&good, version);
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 4096]);
    let v640 = fixture_model("defect-640.onnx");
    let mut m640 = manifest_for(&v640, 9);
    m640.input.width = 320;
    m640.input.height = 320;
    let unsigned = {
        let mut e = sign(&m(5));
        e.signatures.clear();
        e
    };
    let cases: Vec<(&str, Envelope, String, &[&str])> = vec![
        ("tampered", sign(&m(2)), r.server.put("tampered", Served::Bytes(tampered)), &["hash_mismatch"]),
        ("unsigned", unsigned, good_url.clone(), &["threshold_not_met"]),
        (
            "stranger",
            manifest::sign_manifest(&m(3), &[&stranger]),
            good_url.clone(),
            &["unknown_key", "threshold_not_met"],
        ),
        (
            "expired",
            sign(&Manifest { expires_at: past, created_at: past - time::Duration::days(1), ..m(4) }),
            good_url.clone(),
            &["expired"],
        ),
        ("family", sign(&Manifest { family: Some("other-npu".into()), ..m(6) }), good_url.clone(), &["wrong_family"]),
        ("longer", sign(&m(7)), r.server.put("longer", Served::Bytes(longer)), &["too_long"]),
        ("endless", sign(&m(8)), r.server.put("endless", Served::Endless), &["too_long"]),
        ("inputs", sign(&m640), r.server.put("v640", Served::Bytes(v640)), &["model_mismatch", "spec_mismatch"]),
    ];
    for (id, envelope, url, codes) in &cases {
        assign(&r.sub, &r.agent.device, id, envelope.clone(), url).await;
        let seen =
            wait_seen(&r.sub, &r.agent, &format!("the rejection of `{id}`"), |s| rejected_code(s, id).is_some()).await;
        let code = rejected_code(&seen, id).expect("code");
        assert!(codes.contains(&code.as_str()), "{id}: rejected with `{code}`, expected one of {codes:?}");
        assert!(!committed(&seen, id));
    }
    // Below the floor: commit version 10, then offer version 9's manifest with `min_version` raised by 10.
    let floor_bytes = zoo_bytes();
    let url = r.server.put("v10", Served::Bytes(floor_bytes.clone()));
    let v10 = Manifest { min_version: Some(10), ..manifest_for(&floor_bytes, 10) };
    assign(&r.sub, &r.agent.device, "v10", sign(&v10), &url).await;
    wait_seen(&r.sub, &r.agent, "v10 committed", |s| committed(s, "v10")).await;
    assign(&r.sub, &r.agent.device, "below", sign(&manifest_for(&floor_bytes, 9)), &url).await;
    let seen = wait_seen(&r.sub, &r.agent, "the floor rejection", |s| rejected_code(s, "below").is_some()).await;
    assert_eq!(rejected_code(&seen, "below").as_deref(), Some("below_floor"));
    // A replayed command is ignored: no second answer.
    let acks = |s: &Seen| answers(s, "v10").iter().filter(|b| matches!(b, EventBody::CommandAck(_))).count();
    assert_eq!(acks(&seen), 1);
    assign(&r.sub, &r.agent.device, "v10", sign(&v10), &url).await;
    assign(&r.sub, &r.agent.device, "after-replay", sign(&manifest_for(&floor_bytes, 10)), &url).await;
    let seen =
        wait_seen(&r.sub, &r.agent, "the next command's answer", |s| rejected_code(s, "after-replay").is_some()).await;
    assert_eq!(acks(&seen), 1, "the replay was not answered");
    assert_eq!(rejected_code(&seen, "after-replay").as_deref(), Some("already_active"));
    // Frames flowed on through every rejection, none of them on a rejected version.
    let versions: Vec<u64> = frame_versions(&seen, "line-1").values().flatten().copied().collect();
    assert!(versions.iter().all(|v| *v == 1 || *v == 10), "only v1 and v10 ever served");
    assert!(r.agent.healthy().await);
}

/// A baseline as the release pipeline would measure it: the zoo model's headline confidence on the photos.
fn zoo_baseline() -> ConfidenceBaseline {
    let results = infer(&defect_images("val"));
    let mut histogram = ConfidenceHistogram::default();
    for r in &results {
        if let Some(mean) = r["confidence"]["mean"].as_f64() {
            histogram.add(mean as f32);
        }
    }
    ConfidenceBaseline { frames: results.len() as u64, histogram, flagged_rate: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_worse_models_are_reverted_and_reported() {
    let r = rig("upd-revert", 15.0, 30).await;
    // Outputs NaN: caught by the warm-up on the camera's own frames, never swapped in.
    let nan = fixture_model("defect-nan.onnx");
    let url = r.server.put("nan", Served::Bytes(nan.clone()));
    assign(&r.sub, &r.agent.device, "nan", sign(&manifest_for(&nan, 2)), &url).await;
    // Not a model at all (but signed, hashed and sized correctly): fails to load.
    let junk = b"\x08\x07 definitely not an ONNX graph".repeat(64);
    let url_junk = r.server.put("junk", Served::Bytes(junk.clone()));
    assign(&r.sub, &r.agent.device, "junk", sign(&manifest_for(&junk, 3)), &url_junk).await;
    // Installs and runs fine but is far less confident on the same frames than the release baseline.
    let low = fixture_model("defect-lowconf.onnx");
    let url_low = r.server.put("low", Served::Bytes(low.clone()));
    let worse = Manifest { baseline: Some(zoo_baseline()), ..manifest_for(&low, 4) };
    assign(&r.sub, &r.agent.device, "worse", sign(&worse), &url_low).await;

    let seen = wait_seen(&r.sub, &r.agent, "all three outcomes", |s| {
        rejected_code(s, "nan").is_some() && rejected_code(s, "junk").is_some() && reverted_reason(s, "worse").is_some()
    })
    .await;
    assert_eq!(rejected_code(&seen, "nan").as_deref(), Some("warm_up_failed"));
    assert_eq!(rejected_code(&seen, "junk").as_deref(), Some("load_failed"));
    let reason = reverted_reason(&seen, "worse").expect("reason");
    assert!(reason.contains("collapsed") || reason.contains("predictions on"), "{reason}");
    // v1 serves again after the revert, and a version that failed is never tried again.
    wait_seen(&r.sub, &r.agent, "v1 serving after the revert", |s| {
        active_version(s) == Some(1) && s.frames.values().last().is_some_and(|b| b.model.version == 1)
    })
    .await;
    assign(&r.sub, &r.agent.device, "worse-again", sign(&worse), &url_low).await;
    let seen =
        wait_seen(&r.sub, &r.agent, "refusal of a bad version", |s| rejected_code(s, "worse-again").is_some()).await;
    assert_eq!(rejected_code(&seen, "worse-again").as_deref(), Some("marked_bad"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_any_step_of_an_update_leaves_a_complete_verified_model() {
    let mut r = rig("upd-kill", 15.0, 15).await;
    let bytes = zoo_bytes();
    // Trickled over ~0.8 s, so kills land in the download as well as in the later steps.
    let url = r
        .server
        .put("slow", Served::Slow { bytes: bytes.clone(), chunk: bytes.len() / 40, pause: Duration::from_millis(20) });
    let mut rng = fastrand::Rng::with_seed(0x5EED);
    let mut served = Vec::new();
    for round in 0..20u64 {
        // A new version every round, so every round has an update to interrupt.
        let version = 2 + round % 2 + 2 * (round / 2);
        let id = format!("kill-{round}");
        assign(&r.sub, &r.agent.device, &id, sign(&manifest_for(&bytes, version)), &url).await;
        let delay = Duration::from_millis(rng.u64(0..2500));
        let started = Instant::now();
        while started.elapsed() < delay {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        r.agent.kill9();
        r.agent.spawn();
        r.agent.wait_ready().await;
        // After the restart: frames are answered by a complete model, one of those installed or the original.
        let seen = wait_seen(&r.sub, &r.agent, "frames after the restart", |s| {
            s.frames
                .values()
                .any(|b| b.frames.iter().any(|f| f.at > time::OffsetDateTime::now_utc() - time::Duration::seconds(1)))
        })
        .await;
        let v = seen.frames.values().last().map(|b| b.model.version).expect("a batch");
        assert!(v == 1 || v <= version, "round {round}: served v{v}");
        served.push(v);
    }
    assert!(!r.agent.log().contains("panicked"));
    let (status, _) = r.agent.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}:\n{}", r.agent.log());
    eprintln!("versions served after each kill: {served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_missed_the_command_converges_through_the_fleet_check() {
    crate::init();
    let broker = EmbeddedBroker::start().expect("rumqttd starts");
    let server = ArtifactServer::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let device = Device::new("upd-check");
    let bytes = zoo_bytes();
    let url = server.put("v2", Served::Bytes(bytes.clone()));
    let assignment = AssignModel { manifest: sign(&manifest_for(&bytes, 2)), artifact_url: url, rollout: None };
    server.assign("upd-check", serde_json::to_vec(&assignment).expect("json"));
    let replay = tmp.path().join("replay");
    drop_files(&replay, "", &defect_images("val")[..4]);
    let mut setup =
        Setup::new(&broker.url(), defect_model_toml(1) + &camera_toml("line-1", &replay_source(&replay, 10.0), ""));
    setup.extra = updates_toml(10).replace("check_interval_secs = 0", "check_interval_secs = 1");
    setup.fleet = Some((server.base.clone(), "device-token".into()));
    let sub = subscribe(broker.v4_port, &device).await;
    let mut agent = Agent::start(&tmp.path().join("agent"), &device, &setup);
    agent.wait_ready().await;
    let seen = wait_seen(&sub, &agent, "v2 committed from the fleet check", |s| committed(s, "check-defect-2")).await;
    assert_eq!(active_version(&seen), Some(2));
    // The check keeps running; an assignment already served starts nothing new.
    let before = answers(&seen, "check-defect-2").len();
    agent.wait_metric("outpost_frames_processed_total{camera=\"line-1\"}", |v| v > 40.0).await;
    let seen = Seen::of(&sub.received(), &device);
    assert_eq!(answers(&seen, "check-defect-2").len(), before, "no second update");
    let (status, _) = agent.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}:\n{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_budget_refuses_side_by_side_and_unload_first_skips_and_counts() {
    let mut r = rig("upd-mem", 20.0, 10).await;
    let bytes = zoo_bytes();
    let url = r.server.put("v2", Served::Bytes(bytes.clone()));
    // Restart with a budget far below what the process already uses: the new version cannot load beside the old.
    let dir = r.tmp.path().join("agent");
    let (status, _) = r.agent.terminate(Duration::from_secs(15));
    assert!(status.success());
    let replay = r.tmp.path().join("replay");
    let camera = camera_toml("line-1", &replay_source(&replay, 20.0), "")
        .replace("model = \"defect\"\n", "model = \"defect\"\nqueue_depth = 32\n");
    let mut setup = Setup::new(&r.broker.url(), defect_model_toml(1) + &camera);
    setup.per_frame = true;
    setup.extra = updates_toml(10).replace("check_interval_secs = 0", "check_interval_secs = 0\nmemory_budget_mb = 1");
    r.agent = Agent::start(&dir, &r.agent.device.clone(), &setup);
    r.agent.wait_ready().await;
    assign(&r.sub, &r.agent.device, "mem-1", sign(&manifest_for(&bytes, 2)), &url).await;
    let seen = wait_seen(&r.sub, &r.agent, "the memory refusal", |s| rejected_code(s, "mem-1").is_some()).await;
    assert_eq!(rejected_code(&seen, "mem-1").as_deref(), Some("memory"));
    let (status, _) = r.agent.terminate(Duration::from_secs(15));
    assert!(status.success());

    // Same budget, unload-first: the update goes through, frames during the load are skipped and counted.
    setup.extra = setup.extra.replace("memory_budget_mb = 1", "memory_budget_mb = 1\nswap_mode = \"unload-first\"");
    r.agent = Agent::start(&dir, &r.agent.device.clone(), &setup);
    r.agent.wait_ready().await;
    assign(&r.sub, &r.agent.device, "mem-2", sign(&manifest_for(&bytes, 2)), &url).await;
    wait_seen(&r.sub, &r.agent, "the commit after unloading first", |s| committed(s, "mem-2")).await;
    let skipped = r.agent.metric("outpost_frames_rejected_total{camera=\"line-1\",reason=\"model_swap\"}").await;
    let (status, _) = r.agent.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}:\n{}", r.agent.log());
    let seen = Seen::of(&r.sub.received(), &r.agent.device);
    assert_eq!(active_version(&seen), Some(2));
    eprintln!("frames skipped while the model was replaced: {skipped}");

    // The operator's view of the device's models.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["models", "list", "--config"])
        .arg(&r.agent.config)
        .output()
        .expect("models list runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let defect = &list.as_array().expect("array")[0];
    assert_eq!(defect["name"], "defect");
    assert_eq!(defect["record"]["active"], 2);
    assert_eq!(defect["record"]["committed"], true);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["models", "activate", "defect", "7", "--config"])
        .arg(&r.agent.config)
        .output()
        .expect("models activate runs");
    assert!(!out.status.success(), "version 7 is not installed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("7"), "{}", String::from_utf8_lossy(&out.stderr));
}
