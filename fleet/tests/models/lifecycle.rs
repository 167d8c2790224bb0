//! Roles on every endpoint; deprecation and deletion (numbers never reused); a version a rollout holds.

use super::*;

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
