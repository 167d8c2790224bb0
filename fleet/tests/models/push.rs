//! Pushes: a good version checked, stored and listed; every refusal with its code and nothing stored; a fleet
//! without trusted keys or room.

use super::*;

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
