//! One scenario's world: a fleet process trusting the test release key, with v1 of `defect` (the zoo detector)
//! and the scenario's other versions in its registry, and agents on replay cameras that trust the same key.

use std::path::PathBuf;

use outpost_common::manifest::{self, Manifest, SecretKey};
use outpost_common::protocol::ConfidenceHistogram;
use outpost_common::vision::confidence::Confidence;
use outpost_common::vision::engine::Runtime;
use outpost_common::vision::{Vision, VisionOptions};
use reqwest::Method;
use serde_json::{Value, json};

use crate::agent::{Agent, AgentSetup};
use crate::fleet::{Fleet, FleetOptions, defect_images, root};

/// TEST-ONLY release key from a fixed seed: trusted by these tests' fleets and agents, never by a real one.
pub fn release_key() -> SecretKey {
    SecretKey::from_seed(&[7; 32])
}

/// The zoo's defect detector (v1 everywhere).
pub const DETECTOR: &str = "models/zoo/defect-yolo11n-320.onnx";
/// One box at score 0.3 on every frame: installs fine, far less confident.
pub const LOWCONF: &str = "tests/fixtures/models/defect-lowconf.onnx";

pub fn read(rel: &str) -> Vec<u8> {
    std::fs::read(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The signed manifest of `artifact` (a file of the repository) as `defect` v`version`, describing the zoo
/// detector's task, input and labels (the stand-ins share them).
fn signed_manifest(artifact: &str, version: u64) -> Vec<u8> {
    let rt = Runtime::init(None).expect("ONNX Runtime");
    let zoo = Vision::load(rt, &read(DETECTOR), VisionOptions::default()).expect("zoo model loads");
    let bytes = read(artifact);
    let now = time::OffsetDateTime::now_utc();
    let m = Manifest {
        label: Some(format!("1.{version}")),
        ..Manifest::describing("defect", version, &bytes, zoo.spec(), now, time::Duration::days(30))
    };
    manifest::sign_manifest(&m, &[&release_key()]).to_json_pretty()
}

pub struct Rig {
    pub fleet: Fleet,
    pub agents: Vec<Agent>,
    pub tmp: tempfile::TempDir,
}

/// Agent tables: updates from the release key, checked with the fleet every `check_secs`, a short health window.
fn updates_toml(check_secs: u64) -> String {
    format!(
        "[updates]\ntrusted_keys = [\"{}\"]\ncheck_interval_secs = {check_secs}\n\n\
         [updates.trial]\nmin_frames = 4\nmin_secs = 1.0\nmax_secs = 120.0\n",
        release_key().public().to_line()
    )
}

/// The fleet's tables: the release key trusted, a 1 s rollout tick, resends after 5 s.
pub fn fleet_toml() -> String {
    format!(
        "[models]\ntrusted_keys = [\"{}\"]\n\n[rollouts]\ntick_secs = 1\nresend_secs = 5\n",
        release_key().public().to_line()
    )
}

/// Photos in a replay loop: the number of defect validation photos each agent replays.
const PHOTOS: usize = 8;

/// The first [`PHOTOS`] defect validation photos on which the zoo detector finds defects with a mean score in one
/// confidence bin (0.90–0.95), none of them uncertain.
///
/// Every agent replays these, so a window's mean confidence depends on the model it ran and not on which photos
/// fell into it. With photos of mixed difficulty (the first eight include two without any detection and one at
/// 0.56), a gate comparing a few seconds of windows on each side saw a different share of the hard photo on each
/// side, depending on where each device was in its loop, and once stopped a good version for a 0.125 drop.
fn steady_photos() -> Vec<PathBuf> {
    let rt = Runtime::init(None).expect("ONNX Runtime");
    let mut zoo = Vision::load(rt, &read(DETECTOR), VisionOptions::default()).expect("zoo model loads");
    let steady = ConfidenceHistogram::bin(0.925);
    let mut chosen = Vec::new();
    for photo in defect_images("val") {
        let bytes = std::fs::read(&photo).unwrap_or_else(|e| panic!("{}: {e}", photo.display()));
        let result = zoo.infer_encoded(&bytes).unwrap_or_else(|e| panic!("{}: {e}", photo.display()));
        let uncertain = matches!(result.confidence, Confidence::Detect { uncertain, .. } if uncertain > 0);
        if !uncertain && result.confidence.headline().and_then(ConfidenceHistogram::bin) == steady {
            chosen.push(photo);
            if chosen.len() == PHOTOS {
                return chosen;
            }
        }
    }
    panic!("only {} validation photos in the steady confidence bin: {chosen:?}", chosen.len());
}

/// Starts the fleet, pushes v1 (the zoo detector) and `versions` (artifact, version), and starts `count` agents
/// named `{prefix}-{i}` over `sites`, each replaying the [`steady_photos`] at `fps`, and waits until each reports v1.
pub async fn rig(prefix: &str, count: usize, sites: &[&str], fps: f64, versions: &[(&str, u64)]) -> Rig {
    rig_with(prefix, count, sites, fps, versions, "").await
}

/// [`rig`] with more `[updates]` settings for the agents.
pub async fn rig_with(
    prefix: &str,
    count: usize,
    sites: &[&str],
    fps: f64,
    versions: &[(&str, u64)],
    updates: &str,
) -> Rig {
    let tmp = tempfile::tempdir().expect("tempdir");
    let extra = fleet_toml();
    let fleet = Fleet::start(tmp.path(), &FleetOptions { extra: &extra, ..FleetOptions::default() }).await;
    push(&fleet, DETECTOR, 1).await;
    for (artifact, version) in versions {
        push(&fleet, artifact, *version).await;
    }
    let photos = steady_photos();
    let mut agents = Vec::new();
    for i in 0..count {
        let mut setup = AgentSetup::new(&format!("{prefix}-{i}"), sites[i % sites.len()]);
        setup.tags.push(("fleet".into(), "test".into()));
        setup.replay = Some((fps, photos.clone()));
        setup.extra = updates_toml(5).replacen("[updates]\n", &format!("[updates]\n{updates}"), 1);
        agents.push(Agent::enroll_and_start(&fleet, tmp.path(), &setup));
    }
    let rig = Rig { fleet, agents, tmp };
    for a in &rig.agents {
        rig.wait_device(&a.name, "to report v1 committed", |d| served(d) == Some((1, true))).await;
    }
    rig
}

/// Pushes `artifact` as `defect` v`version` and expects it stored.
pub async fn push(fleet: &Fleet, artifact: &str, version: u64) {
    let form = reqwest::multipart::Form::new()
        .part("manifest", reqwest::multipart::Part::bytes(signed_manifest(artifact, version)).file_name("m.json"))
        .part("artifact", reqwest::multipart::Part::bytes(read(artifact)).file_name("m.onnx"));
    let response = fleet
        .client
        .post(format!("{}/api/v1/models", fleet.base))
        .bearer_auth(&fleet.admin)
        .multipart(form)
        .send()
        .await
        .expect("push answered");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "push of {artifact} as v{version}: {status} {body}");
}

/// (active version, committed) of `defect` in a device's stored status.
pub fn served(device: &Value) -> Option<(u64, bool)> {
    let models = device["seen"]["status"]["models"].as_array()?;
    let m = models.iter().find(|m| m["name"] == "defect")?;
    Some((m["active"].as_u64()?, m["committed"].as_bool()?))
}

/// A plan for `defect` v`version` to the devices tagged `fleet=test`, with quick gates: 8 windows (1 s each) a side
/// for quality, drift and latency out of the way so only the gates a scenario is about can fire. The agents replay
/// [`steady_photos`], so the quality gate sees the model and not the photos.
pub fn plan(version: u64, stages: Value, install: Value) -> Value {
    json!({
        "model": "defect",
        "version": version,
        "target": {"tags": {"fleet": "test"}},
        "stages": stages,
        "gates": {
            "install": install,
            "quality": {"max_confidence_drop": 0.05, "max_flagged_increase": 1.0, "alpha": 0.01, "min_windows": 8},
            "latency": {"max_p95_factor": 1000.0},
            "drift": false
        }
    })
}

/// The install gate of scenarios about quality: every device must commit.
pub fn all_commit() -> Value {
    json!({"min_committed": 1.0, "max_failed": 0.0, "min_executed": 1, "timeout_secs": 600})
}

impl Rig {
    /// Creates a rollout; returns its id.
    pub async fn create(&self, plan: Value) -> String {
        let (status, body) = self.fleet.call(Method::POST, "/rollouts", &self.fleet.admin, Some(plan)).await;
        assert_eq!(status, 201, "create: {body}");
        body["id"].as_str().expect("rollout id").to_string()
    }

    /// Polls the rollout's status view until `condition` holds.
    pub async fn wait_rollout(&self, id: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        self.fleet.wait_for(what, &format!("/rollouts/{id}"), condition).await
    }

    /// Polls `/fleet/devices` until device `name` satisfies `condition`.
    pub async fn wait_device(&self, name: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let what = format!("{name} {what}");
        let devices =
            self.fleet.wait_for(&what, "/fleet/devices", |all| condition(crate::fleet::device(all, name))).await;
        crate::fleet::device(&devices, name).clone()
    }

    pub async fn devices(&self) -> Value {
        let (status, body) = self.fleet.call(Method::GET, "/fleet/devices", &self.fleet.admin, None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Windows device `name` stored for `defect` v`version` in the last hour.
    pub async fn windows(&self, name: &str, version: u64) -> Vec<Value> {
        let path = format!("/fleet/devices/{name}/windows?model=defect&version={version}");
        let (status, body) = self.fleet.call(Method::GET, &path, &self.fleet.admin, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        body.as_array().cloned().unwrap_or_else(|| body["windows"].as_array().cloned().unwrap_or_default())
    }

    pub fn agent(&self, name: &str) -> &Agent {
        self.agents.iter().find(|a| a.name == name).expect("an agent of this rig")
    }

    /// The agent's state folder for a model version: present once the version was installed there.
    pub fn slot(&self, name: &str, version: u64) -> PathBuf {
        self.tmp.path().join(name).join(format!("state/models/defect/{version}"))
    }
}

/// The devices of a status view with their phase, in position order.
pub fn phases(status: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for stage in status["stages"].as_array().into_iter().flatten() {
        for d in stage["devices"].as_array().into_iter().flatten() {
            out.push((d["device"].as_str().unwrap_or("").to_string(), d["phase"].as_str().unwrap_or("").to_string()));
        }
    }
    out
}

/// The rollout's state name (`running`, `completed`, `aborted`, ...).
pub fn state(status: &Value) -> &str {
    status["state"].as_str().unwrap_or("")
}

/// The rollout's history, its end (reason) and last gate figures: what a failed assertion should say first.
pub fn story(status: &Value) -> String {
    let history: Vec<&str> =
        status["history"].as_array().into_iter().flatten().filter_map(|h| h["what"].as_str()).collect();
    format!(
        "state {}: {}\nhistory:\n  {}\ngates: {:#}",
        state(status),
        status["reason"],
        history.join("\n  "),
        status["gates"]
    )
}

/// Polls `condition` until it holds, for conditions that are not one API answer.
pub async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + crate::fleet::WAIT;
    while !condition().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Whether an agent's log shows it was told to run `version` by rollout `id`: its command, or the same assignment
/// found by the agent's own check with the fleet.
pub fn told(log: &str, id: &str, version: u64) -> bool {
    log.contains(&format!("{id}.v{version}")) || log.contains(&format!("check-defect-{version}"))
}
