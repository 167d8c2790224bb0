//! The model registry against the real `outpost-fleet serve` binary: pushes checked (signature, hash and length,
//! the model against its manifest, golden images, NaN outputs) and refused with their codes and nothing stored;
//! listing, details, deprecation, deletion; downloads with `Range`, also by the agent's own downloader resuming a
//! part file; roles; and the `outpost model` commands end to end.

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

#[path = "processes/fleet.rs"]
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

#[test]
fn a_good_version_is_checked_stored_listed_and_a_repeat_changes_nothing() {
    let fleet = start("");
    let operator = fleet.user("olga", "operator");
    let push = good_detector(7);
    let (status, answer) = fleet.push(&operator, &push);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["stored"], true);
    let model = &answer["model"];
    assert_eq!((model["name"].as_str(), model["version"].as_u64()), (Some("defect"), Some(7)));
    assert_eq!(model["golden"], serde_json::json!({"images": 3, "labelled": 3}));
    assert_eq!(model["pushed_by"], "olga");
    assert_eq!(model["signers"], serde_json::json!([key(1).public().id().as_str()]));
    assert_eq!(model["artifact_url"], "/api/v1/models/defect/7/artifact");
    assert_eq!(model["sha256"], Sha256Sum::of(&read(DETECTOR)).to_string());

    let list = fleet.list();
    assert_eq!(list.len(), 1);
    assert_eq!(&list[0], model);
    let details: Value = fleet.get(&operator, "/models/defect/7").json().expect("json");
    assert_eq!(&details, model);
    assert_eq!(fleet.model_blobs().len(), 2, "artifact and manifest: {:?}", fleet.model_blobs());

    // The same push again: nothing written, the first record kept.
    let (status, again) = fleet.push(&operator, &push);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["stored"], false);
    assert_eq!(&again["model"], model);

    // A classifier under another name, with a golden image and no labels: runs, finite outputs.
    let cls = read(CLASSIFIER);
    let mut classifier = parts(sign(&manifest_of(CLASSIFIER, &cls, "parts-cls", 1), &[key(1)]), cls);
    classifier.golden = vec![golden_image("00003.jpg")];
    let (status, answer) = fleet.push(&operator, &classifier);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["model"]["golden"], serde_json::json!({"images": 1, "labelled": 0}));
    let names: Vec<_> = fleet.list().iter().map(|m| m["name"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(names, ["defect", "parts-cls"]);
    let only: Vec<Value> = fleet.get(&operator, "/models?name=parts-cls").json().expect("json");
    assert_eq!(only.len(), 1);
}

#[test]
fn refused_pushes_say_why_and_store_nothing() {
    let fleet = start("");
    let operator = fleet.user("olga", "operator");
    let detector = read(DETECTOR);
    let manifest = |f: &dyn Fn(&mut Manifest), artifact: &[u8]| {
        let mut m = manifest_of(DETECTOR, artifact, "defect", 7);
        f(&mut m);
        sign(&m, &[key(1)])
    };
    let same = |_: &mut Manifest| {};
    let mut tampered = detector.clone();
    tampered[detector.len() / 2] ^= 1;
    let nan = read(NAN);
    let d640 = read(DETECTOR_640);
    let good = good_detector(7);
    let with_labels = |labels: &str| PushParts { labels: Some(labels.into()), ..good.clone() };
    let cases: Vec<(&str, PushParts, u16, &str)> = vec![
        ("a flipped byte", parts(manifest(&same, &detector), tampered), 422, "artifact_hash"),
        (
            "a cut artifact",
            parts(manifest(&same, &detector), detector[..detector.len() - 1].to_vec()),
            422,
            "artifact_length",
        ),
        (
            "an untrusted signer",
            parts(sign(&manifest_of(DETECTOR, &detector, "defect", 7), &[key(2)]), detector.clone()),
            422,
            "unknown_key",
        ),
        (
            "an expired manifest",
            parts(
                manifest(
                    &|m| {
                        m.created_at -= time::Duration::days(60);
                        m.expires_at = m.created_at + time::Duration::days(1);
                    },
                    &detector,
                ),
                detector.clone(),
            ),
            422,
            "expired",
        ),
        (
            "the wrong task",
            parts(manifest(&|m| m.task = Task::Classify, &detector), detector.clone()),
            422,
            "model_mismatch",
        ),
        ("a 640 model under a 320 manifest", parts(manifest(&same, &d640), d640.clone()), 422, "model_mismatch"),
        (
            "fewer labels than classes",
            parts(
                manifest(
                    &|m| {
                        m.labels.pop();
                    },
                    &detector,
                ),
                detector.clone(),
            ),
            422,
            "model_mismatch",
        ),
        ("a model with NaN outputs", parts(manifest(&same, &nan), nan.clone()), 422, "non_finite_output"),
        ("a golden label the model does not give", with_labels(r#"{"00000.jpg": "dent"}"#), 422, "golden_mismatch"),
        (
            "a golden detection where there is none",
            with_labels(r#"{"00002.jpg": ["scratch"]}"#),
            422,
            "golden_mismatch",
        ),
        ("a golden label not in the manifest", with_labels(r#"{"00000.jpg": "rust"}"#), 422, "bad_golden"),
        ("labels for an image not sent", with_labels(r#"{"00009.jpg": "dent"}"#), 422, "bad_golden"),
        ("labels that are not a mapping", with_labels("[1, 2]"), 422, "bad_golden"),
        (
            "a golden file that is no image",
            PushParts { golden: vec![("x.jpg".into(), b"not a jpeg".to_vec())], ..good.clone() },
            422,
            "bad_golden",
        ),
        ("no artifact", PushParts { artifact: None, ..good.clone() }, 422, "missing_part"),
        ("no manifest", PushParts { manifest: None, ..good.clone() }, 422, "missing_part"),
        ("a manifest that is not JSON", parts(b"{not json".to_vec(), detector.clone()), 422, "malformed"),
        ("an oversized manifest", parts(vec![b' '; 300_000], detector.clone()), 422, "too_large"),
    ];
    for (what, push, status, expected) in &cases {
        let (got, answer) = fleet.push(&operator, push);
        assert_eq!((got, code(&answer)), (*status, *expected), "{what}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {answer}");
    }
    // Not multipart at all, and a multipart body cut short.
    let r = client().post(fleet.url("/models")).bearer_auth(&operator).body("hello").send().expect("send");
    assert_eq!(r.status(), 400);
    let r = client()
        .post(fleet.url("/models"))
        .bearer_auth(&operator)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body("--XyZ\r\nContent-Disposition: form-data; name=\"artifact\"\r\n\r\nabc")
        .send()
        .expect("send");
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = client()
        .post(fleet.url("/models"))
        .bearer_auth(&operator)
        .multipart(Form::new().part("surprise", Part::text("x")))
        .send()
        .expect("send");
    assert_eq!(r.status(), 422);

    assert!(fleet.list().is_empty(), "nothing stored");
    assert!(fleet.model_blobs().is_empty(), "no objects: {:?}", fleet.model_blobs());
    assert_eq!(fleet.get(&operator, "/models/defect/7").status(), 404);

    // Versions: stored once, only rising, never another artifact under a stored number.
    let (status, answer) = fleet.push(&operator, &good_detector(7));
    assert_eq!(status, 201, "{answer}");
    let other = parts(manifest(&same, &d640), d640);
    let (status, answer) = fleet.push(&operator, &other);
    assert_eq!((status, code(&answer)), (409, "version_exists"), "{answer}");
    let relabelled = parts(manifest(&|m| m.label = Some("other".into()), &detector), detector.clone());
    let (status, answer) = fleet.push(&operator, &relabelled);
    assert_eq!((status, code(&answer)), (409, "version_exists"), "{answer}");
    let (status, answer) = fleet.push(&operator, &good_detector(6));
    assert_eq!((status, code(&answer)), (409, "version_not_above"), "{answer}");
    assert_eq!(fleet.list().len(), 1);
}

#[test]
fn artifacts_download_with_ranges_and_the_agent_resumes_them() {
    let fleet = start("");
    let pushed = good_detector(3);
    let (status, answer) = fleet.push(&fleet.admin, &pushed);
    assert_eq!(status, 201, "{answer}");
    let device = fleet.device("press-1");
    let bytes = read(DETECTOR);
    let len = bytes.len();
    let sha = Sha256Sum::of(&bytes).to_string();

    let get = |range: Option<&str>| {
        let mut r = client().get(fleet.url("/models/defect/3/artifact")).bearer_auth(&device);
        if let Some(range) = range {
            r = r.header("range", range);
        }
        r.send().expect("get")
    };
    let header = |r: &reqwest::blocking::Response, name: &str| {
        r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
    };
    let whole = get(None);
    assert_eq!(whole.status(), 200);
    assert_eq!(header(&whole, "accept-ranges"), "bytes");
    assert_eq!(header(&whole, "etag"), format!("\"{sha}\""));
    assert_eq!(header(&whole, "content-length"), len.to_string());
    assert_eq!(whole.bytes().expect("body").as_ref(), bytes.as_slice());

    for (range, start, end) in [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, len - 1),
        ("bytes=-10", len - 10, len - 1),
        (&*format!("bytes=5-{}", len + 100), 5, len - 1),
    ] {
        let r = get(Some(range));
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(header(&r, "content-range"), format!("bytes {start}-{end}/{len}"), "{range}");
        assert_eq!(header(&r, "content-length"), (end + 1 - start).to_string(), "{range}");
        assert_eq!(header(&r, "etag"), format!("\"{sha}\""));
        assert_eq!(r.bytes().expect("body").as_ref(), &bytes[start..=end], "{range}");
    }
    for range in [&*format!("bytes={len}-"), "bytes=5-2", "bytes=0-1,5-6", "lines=1-2", "bytes=x-", "bytes=-0"] {
        let r = get(Some(range));
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(header(&r, "content-range"), format!("bytes */{len}"), "{range}");
    }

    // The manifest, exactly the envelope pushed (the body bytes are the signed ones).
    let r = client().get(fleet.url("/models/defect/3/manifest")).bearer_auth(&device).send().expect("get");
    assert_eq!(r.status(), 200);
    let served = Envelope::from_slice(&r.bytes().expect("body")).expect("an envelope");
    let pushed = Envelope::from_slice(pushed.manifest.as_deref().expect("manifest")).expect("envelope");
    assert_eq!(served, pushed);
    for path in ["/models/defect/4/artifact", "/models/defect/x/artifact", "/models/nope/3/manifest"] {
        assert_eq!(fleet.get(&device, path).status(), 404, "{path}");
    }

    // The agent's downloader with the device's token: whole, then resuming a part file cut at 1 MB.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let downloads = tempfile::tempdir().expect("dir");
    let expected = Artifact { sha256: Sha256Sum::of(&bytes), length: len as u64 };
    let request = |dir: &Path| outpost_agent::update::DownloadRequest {
        url: fleet.url("/models/defect/3/artifact"),
        bearer_token: Some(device.clone()),
        expected: expected.clone(),
        dir: dir.to_path_buf(),
    };
    let downloader = outpost_agent::update::Downloader::new(outpost_agent::update::DownloadConfig {
        disk_margin: 0,
        ..Default::default()
    })
    .expect("downloader");
    let cancel = tokio_util::sync::CancellationToken::new();
    let fresh = request(&downloads.path().join("fresh"));
    let artifact = runtime.block_on(downloader.fetch(&fresh, &cancel, |_| {})).expect("downloaded");
    assert_eq!(std::fs::read(artifact.path()).expect("artifact"), bytes);

    let resumed = request(&downloads.path().join("resumed"));
    std::fs::create_dir_all(&resumed.dir).expect("dir");
    std::fs::write(resumed.part_path(), &bytes[..1 << 20]).expect("part");
    let mut seen = Vec::new();
    let artifact = runtime.block_on(downloader.fetch(&resumed, &cancel, |p| seen.push(p.done))).expect("resumed");
    assert_eq!(std::fs::read(artifact.path()).expect("artifact"), bytes);
    assert_eq!(seen.first(), Some(&(1 << 20)), "the download started from the part: {seen:?}");
}

#[test]
fn every_endpoint_checks_its_role() {
    let fleet = start("");
    let (status, answer) = fleet.push(&fleet.admin, &good_detector(1));
    assert_eq!(status, 201, "{answer}");
    let operator = fleet.user("olga", "operator");
    let annotator = fleet.user("ann", "annotator");
    let device = fleet.device("press-1");
    // A small body: a 401 comes from the authentication layer before the body is read, and the connection closes.
    let push = PushParts { manifest: good_detector(2).manifest, ..PushParts::default() };
    for (who, token) in [("annotator", &annotator), ("device", &device), ("nobody", &"not-a-token".to_string())] {
        let (status, answer) = fleet.push(token, &push);
        let expected = if who == "nobody" { 401 } else { 403 };
        assert_eq!(status, expected, "{who} pushes: {answer}");
    }
    let send = |method: reqwest::Method, path: &str, token: &str| {
        client().request(method, fleet.url(path)).bearer_auth(token).send().expect("send").status().as_u16()
    };
    use reqwest::Method as M;
    let cases: [(M, &str, [u16; 4]); 6] = [
        // admin, operator, annotator, device
        (M::GET, "/models", [200, 200, 403, 403]),
        (M::GET, "/models/defect/1", [200, 200, 403, 403]),
        (M::GET, "/models/defect/1/manifest", [200, 200, 403, 200]),
        (M::GET, "/models/defect/1/artifact", [200, 200, 403, 200]),
        (M::POST, "/models/defect/1/deprecate", [200, 200, 403, 403]),
        (M::DELETE, "/models/defect/1", [403, 403, 403, 403]),
    ];
    for (method, path, expected) in cases {
        let got: Vec<u16> = [&operator, &annotator, &device].iter().map(|t| send(method.clone(), path, t)).collect();
        let admin = if method == M::DELETE { 403 } else { send(method.clone(), path, &fleet.admin) };
        assert_eq!([admin, got[0], got[1], got[2]], expected, "{method} {path}");
        assert_eq!(send(method.clone(), path, "nope"), 401, "{method} {path}");
    }
    assert_eq!(send(M::DELETE, "/models/defect/1", &fleet.admin), 204);
    let doc: Value = fleet.get(&operator, "/openapi.json").json().expect("openapi");
    for path in [
        "/models",
        "/models/{name}/{version}",
        "/models/{name}/{version}/manifest",
        "/models/{name}/{version}/artifact",
        "/models/{name}/{version}/deprecate",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is in the OpenAPI document");
    }
    assert_eq!(send(M::GET, "/models/defect/1/artifact", &device), 404);
}

#[test]
fn versions_are_deprecated_and_deleted_and_numbers_never_reused() {
    let fleet = start("");
    let operator = fleet.user("olga", "operator");
    assert_eq!(fleet.push(&operator, &good_detector(1)).0, 201);
    assert_eq!(fleet.push(&operator, &good_detector(2)).0, 201);
    let r = client()
        .post(fleet.url("/models/defect/1/deprecate"))
        .bearer_auth(&operator)
        .json(&serde_json::json!({"reason": "misses small scratches"}))
        .send()
        .expect("deprecate");
    assert_eq!(r.status(), 200);
    let model: Value = r.json().expect("json");
    assert_eq!(model["deprecated"]["reason"], "misses small scratches");
    assert_eq!(model["deprecated"]["by"], "olga");
    // Deprecating again keeps the first deprecation; a body that is not the documented one is refused.
    let again: Value = client()
        .post(fleet.url("/models/defect/1/deprecate"))
        .bearer_auth(&operator)
        .send()
        .expect("send")
        .json()
        .expect("json");
    assert_eq!(again["deprecated"], model["deprecated"]);
    let r = client()
        .post(fleet.url("/models/defect/1/deprecate"))
        .bearer_auth(&operator)
        .body("{\"why\": 1}")
        .send()
        .expect("send");
    assert_eq!(r.status(), 422);
    // Still downloadable: devices may run it.
    assert_eq!(fleet.get(&fleet.device("press-1"), "/models/defect/1/artifact").status(), 200);

    let delete = |path: &str| client().delete(fleet.url(path)).bearer_auth(&fleet.admin).send().expect("delete");
    assert_eq!(delete("/models/defect/2").status(), 204);
    let r = delete("/models/defect/2");
    assert_eq!(r.status(), 404);
    assert_eq!(code(&r.json().expect("json")), "not_found");
    let versions: Vec<u64> = fleet.list().iter().filter_map(|m| m["version"].as_u64()).collect();
    assert_eq!(versions, [1]);
    assert_eq!(fleet.model_blobs().len(), 2, "only v1's objects remain: {:?}", fleet.model_blobs());
    let (status, answer) = fleet.push(&operator, &good_detector(2));
    assert_eq!((status, code(&answer)), (409, "version_not_above"), "a deleted number is not reused: {answer}");
    assert_eq!(fleet.push(&operator, &good_detector(3)).0, 201);
}

#[test]
fn a_fleet_without_trusted_keys_or_room_refuses_pushes() {
    let untrusting = start_with("");
    let (status, answer) = untrusting.push(&untrusting.admin, &good_detector(1));
    assert_eq!((status, code(&answer)), (503, "no_trusted_keys"), "{answer}");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("trusted_keys")), "{answer}");

    // A 1 MiB cap: the 10 MB detector is refused (the body is read to the end first, so the answer arrives); a
    // 59 kB model is not.
    let small = start("max_artifact_mb = 1");
    let (status, answer) = small.push(&small.admin, &good_detector(1));
    assert_eq!((status, code(&answer)), (413, "artifact_too_large"), "{answer}");
    let cls = read(CLASSIFIER);
    let push = parts(sign(&manifest_of(CLASSIFIER, &cls, "cls", 1), &[key(1)]), cls);
    assert_eq!(small.push(&small.admin, &push).0, 201);
    assert!(small.list().len() == 1);
}

fn outpost(fleet: &Fleet, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .env("OUTPOST_FLEET_URL", &fleet.base)
        .env("OUTPOST_TOKEN", token)
        .current_dir(fleet.dir.as_path())
        .output()
        .expect("outpost runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_signs_pushes_lists_shows_deprecates_and_deletes() {
    let fleet = start("");
    let operator = fleet.user("olga", "operator");
    let dir = fleet.dir.as_path();
    std::fs::write(dir.join("release.key"), key(1).to_pkcs8_pem().expect("pem")).expect("key");
    std::fs::write(dir.join("other.key"), key(2).to_pkcs8_pem().expect("pem")).expect("key");
    for name in ["release.key", "other.key"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let model = root().join(DETECTOR).display().to_string();
    for (key, out) in [("release.key", "good.manifest.json"), ("other.key", "untrusted.manifest.json")] {
        let (ok, _, err) = outpost(
            &fleet,
            &operator,
            &["model", "sign", "--key", key, "--model", &model, "--name", "defect", "--version", "4", "--out", out],
        );
        assert!(ok, "{err}");
    }
    let golden = dir.join("golden");
    std::fs::create_dir_all(&golden).expect("dir");
    for name in ["00000.jpg", "00001.jpg"] {
        std::fs::write(golden.join(name), golden_image(name).1).expect("image");
    }
    std::fs::write(golden.join("labels.json"), r#"{"00000.jpg": "dent"}"#).expect("labels");

    let push = |manifest: &str| {
        outpost(&fleet, &operator, &["model", "push", &model, "--manifest", manifest, "--golden", "golden"])
    };
    let (ok, _, err) = push("untrusted.manifest.json");
    assert!(!ok && err.contains("unknown_key") && err.lines().count() == 1, "{err}");
    let (ok, _, err) = push("good.manifest.json");
    assert!(!ok && err.contains("golden_mismatch") && err.contains("00000.jpg"), "{err}");
    std::fs::write(golden.join("labels.json"), r#"{"00000.jpg": "stain", "00001.jpg": "dent"}"#).expect("labels");
    let (ok, out, err) = push("good.manifest.json");
    assert!(ok, "{err}");
    assert!(out.starts_with("stored: defect v4") && out.contains("golden images: 2 (2 with expected labels)"), "{out}");
    let (ok, out, _) = push("good.manifest.json");
    assert!(ok && out.starts_with("already stored"), "{out}");

    let (ok, out, err) = outpost(&fleet, &operator, &["model", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.lines().nth(1).is_some_and(|l| l.starts_with("defect") && l.contains(" 4 ") && l.ends_with("active")),
        "{out}"
    );
    let (ok, out, _) = outpost(&fleet, &operator, &["model", "list", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&out).expect("json list");
    assert!(ok && list.len() == 1 && list[0]["version"] == 4, "{out}");
    let (ok, out, _) = outpost(&fleet, &operator, &["model", "show", "defect", "4"]);
    assert!(ok && out.contains("artifact: sha256") && out.contains("/api/v1/models/defect/4/artifact"), "{out}");
    let (ok, out, _) =
        outpost(&fleet, &operator, &["model", "deprecate", "defect", "4", "--reason", "too slow", "--json"]);
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert!(ok && shown["deprecated"]["reason"] == "too slow", "{out}");
    let (ok, _, err) = outpost(&fleet, &operator, &["model", "delete", "defect", "4"]);
    assert!(!ok && err.contains("403"), "operators do not delete: {err}");
    let (ok, out, err) = outpost(&fleet, &fleet.admin, &["model", "delete", "defect", "4"]);
    assert!(ok && out.contains("deleted defect v4"), "{err}");
    let (ok, _, err) = outpost(&fleet, &operator, &["model", "show", "defect", "4"]);
    assert!(!ok && err.contains("not_found"), "{err}");
}

/// The rollouts' side of the registry, as a library: a version a rollout uses is not deleted, and what the engine
/// reads back ([`Models::get`]) is the envelope devices verify.
#[test]
fn a_version_in_a_rollout_cannot_be_deleted_and_get_gives_the_signed_envelope() {
    use outpost_common::manifest::{Floors, Policy, TrustedKeys, verify_envelope};
    use outpost_fleet::models::{ModelLimits, Models, Push, Pushed, VersionsInUse};

    #[derive(Debug)]
    struct InRollout;
    impl VersionsInUse for InRollout {
        fn in_use(&self, name: &str, version: u64) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
            Ok(name == "defect" && version == 5)
        }
    }

    let dir = tempfile::tempdir().expect("dir");
    let store = outpost_common::store::SledStore::open(&dir.path().join("db")).expect("store");
    let blobs = outpost_fleet::samples::local_dir(&dir.path().join("blobs")).expect("blobs");
    let trusted = TrustedKeys::new([key(1).public()], 1).expect("keys");
    let limits = ModelLimits { max_artifact_bytes: 64 << 20, max_golden_images: 4, max_golden_bytes: 1 << 20 };
    let models = Models::new(store, blobs, Some(trusted.clone()), limits, None, dir.path().join("tmp"));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");

    let bytes = read(DETECTOR);
    let artifact = dir.path().join("m.onnx");
    std::fs::write(&artifact, &bytes).expect("artifact");
    for version in [5, 6] {
        let manifest = sign(&manifest_of(DETECTOR, &bytes, "defect", version), &[key(1)]);
        let push = Push { manifest: &manifest, artifact: &artifact, golden: Default::default(), by: "ci" };
        let (pushed, _) = runtime.block_on(models.push(push, time::OffsetDateTime::now_utc())).expect("stored");
        assert_eq!(pushed, Pushed::New);
    }

    let err = runtime.block_on(models.delete("defect", 5, &InRollout)).expect_err("in a rollout");
    assert_eq!((err.code(), err.kind().http_status()), ("in_use", 409));
    let stored = models.get("defect", 5).expect("read").expect("still stored");
    let floors = Floors::default();
    let policy = Policy { now: time::OffsetDateTime::now_utc(), family: Some("x86_64-cpu"), floors: &floors };
    let verified = verify_envelope(&stored.envelope, &trusted, &policy).expect("devices verify what is stored");
    assert_eq!(verified.manifest(), &stored.manifest);
    assert_eq!(
        outpost_fleet::models::artifact_url("https://fleet.example/", "defect", 5),
        "https://fleet.example/api/v1/models/defect/5/artifact"
    );

    runtime.block_on(models.delete("defect", 6, &InRollout)).expect("not in a rollout");
    assert!(models.get("defect", 6).expect("read").is_none());
    let versions: Vec<u64> = models.list(Some("defect"), 10).expect("list").iter().map(|m| m.version()).collect();
    assert_eq!(versions, [5]);
    assert!(models.get("../x", 1).expect("a bad name is no model").is_none());
}
