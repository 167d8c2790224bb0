//! The model registry against the real `outpost-fleet serve` binary: pushes checked (signature, hash and length,
//! the model against its manifest, golden images, NaN outputs) and refused with their codes and nothing stored;
//! listing, details, deprecation, deletion; downloads with `Range`, also by the agent's own downloader resuming a
//! part file; roles; and the `outpost model` commands end to end.
//!
//! Scenarios by file: `push.rs` (checks, refusals, a fleet that cannot take pushes), `download.rs` (ranges and the
//! agent's resume), `lifecycle.rs` (roles, deprecation, deletion, rollouts holding a version), `cli.rs` (the
//! `outpost model` commands).

mod cli;
mod download;
mod lifecycle;
mod push;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use outpost_common::manifest::{self, Artifact, Envelope, MANIFEST_SCHEMA, Manifest, SecretKey, Sha256Sum};
use outpost_common::vision::engine::Runtime;
use outpost_common::vision::spec::Task;
use outpost_common::vision::{Vision, VisionOptions};
use reqwest::blocking::multipart::{Form, Part};
use serde_json::Value;

/// TEST-ONLY signing keys from fixed seeds (as in common/tests/support): never trusted by a real fleet.
fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const DETECTOR: &str = "models/zoo/defect-yolo11n-320.onnx";
const NAN: &str = "tests/fixtures/models/defect-nan.onnx";
const DETECTOR_640: &str = "tests/fixtures/models/defect-640.onnx";
const CLASSIFIER: &str = "tests/fixtures/models/dynamic-cls.onnx";

/// A manifest describing `model` (task, input, labels as the model states them), for `artifact`'s bytes.
fn manifest_of(model: &str, artifact: &[u8], name: &str, version: u64) -> Manifest {
    let rt = Runtime::init(None).expect("ONNX Runtime");
    let vision = Vision::load(rt, &read(model), VisionOptions::default()).expect("model loads");
    let spec = vision.spec();
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("whole seconds");
    Manifest {
        schema: MANIFEST_SCHEMA,
        name: name.into(),
        version,
        label: Some(format!("1.{version}")),
        artifact: Artifact { sha256: Sha256Sum::of(artifact), length: artifact.len() as u64 },
        task: spec.task,
        input: spec.input.clone(),
        labels: spec.labels.clone(),
        family: None,
        created_at: now,
        expires_at: now + time::Duration::days(30),
        min_version: None,
        baseline: None,
    }
}

fn sign(manifest: &Manifest, keys: &[SecretKey]) -> Vec<u8> {
    let refs: Vec<&SecretKey> = keys.iter().collect();
    manifest::sign_manifest(manifest, &refs).to_json_pretty()
}

#[path = "../processes/fleet.rs"]
mod processes;

/// The real fleet, in its own temp dir (see `processes/fleet.rs`).
type Fleet = processes::Owned;

fn client() -> reqwest::blocking::Client {
    // No connection reuse: a server refusing a body may close the connection.
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// A fleet trusting the test key 1, with `extra` lines added to its `[models]` section.
fn start(extra: &str) -> Fleet {
    start_with(&format!("trusted_keys = [{:?}]\n{extra}", key(1).public().to_line()))
}

fn start_with(models: &str) -> Fleet {
    let extra = format!("[models]\n{models}\n");
    processes::Owned::start_blocking(&processes::FleetOptions { extra: &extra, ..Default::default() })
}

impl Fleet {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn user(&self, name: &str, role: &str) -> String {
        let r = client()
            .post(self.url("/users"))
            .bearer_auth(&self.admin)
            .json(&serde_json::json!({"name": name, "role": role}))
            .send()
            .expect("create user");
        assert_eq!(r.status(), 200);
        r.json::<Value>().expect("json")["token"].as_str().expect("token").to_string()
    }

    fn device(&self, name: &str) -> String {
        let r = client()
            .post(self.url("/devices"))
            .bearer_auth(&self.admin)
            .json(&serde_json::json!({"name": name}))
            .send()
            .expect("enroll");
        assert_eq!(r.status(), 200);
        r.json::<Value>().expect("json")["credentials"]["http_token"].as_str().expect("token").to_string()
    }

    /// Pushes as `token`; returns the status and the JSON answer.
    fn push(&self, token: &str, p: &PushParts) -> (u16, Value) {
        let mut form = Form::new();
        if let Some(m) = &p.manifest {
            form = form.part("manifest", Part::bytes(m.clone()).file_name("m.manifest.json"));
        }
        if let Some(a) = &p.artifact {
            form = form.part("artifact", Part::bytes(a.clone()).file_name("m.onnx"));
        }
        for (name, bytes) in &p.golden {
            form = form.part("golden", Part::bytes(bytes.clone()).file_name(name.clone()));
        }
        if let Some(labels) = &p.labels {
            form = form.part("golden_labels", Part::text(labels.clone()));
        }
        let r = client().post(self.url("/models")).bearer_auth(token).multipart(form).send().expect("push");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    fn get(&self, token: &str, path: &str) -> reqwest::blocking::Response {
        client().get(self.url(path)).bearer_auth(token).send().expect("get")
    }

    fn list(&self) -> Vec<Value> {
        let r = self.get(&self.admin, "/models");
        assert_eq!(r.status(), 200);
        r.json::<Vec<Value>>().expect("list")
    }

    /// Files under the object store's `models/` folder.
    fn model_blobs(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs = vec![self.state_dir().join("blobs/models")];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    out.push(path.display().to_string());
                }
            }
        }
        out.sort();
        out
    }
}

#[derive(Clone, Default)]
struct PushParts {
    manifest: Option<Vec<u8>>,
    artifact: Option<Vec<u8>>,
    golden: Vec<(String, Vec<u8>)>,
    labels: Option<String>,
}

fn parts(manifest: Vec<u8>, artifact: Vec<u8>) -> PushParts {
    PushParts { manifest: Some(manifest), artifact: Some(artifact), ..PushParts::default() }
}

fn golden_image(name: &str) -> (String, Vec<u8>) {
    (name.to_string(), read(&format!("tests/fixtures/images/defect-val/images/{name}")))
}

/// The detector v`version` signed by the trusted key, with three golden images and what the model finds on them
/// (Ultralytics' reference predictions: a stain, a dent, nothing).
fn good_detector(version: u64) -> PushParts {
    let bytes = read(DETECTOR);
    let manifest = sign(&manifest_of(DETECTOR, &bytes, "defect", version), &[key(1)]);
    PushParts {
        golden: vec![golden_image("00000.jpg"), golden_image("00001.jpg"), golden_image("00002.jpg")],
        labels: Some(r#"{"00000.jpg": "stain", "00001.jpg": ["dent"], "00002.jpg": []}"#.into()),
        ..parts(manifest, bytes)
    }
}

fn code(answer: &Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or("")
}
