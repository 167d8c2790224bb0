//! Loading a new model version beside the serving one: refused when it does not load, when it is not the model its
//! manifest describes, or when its outputs on real frames are unusable.

use std::path::{Path, PathBuf};

use outpost_agent::candidate::{self, CandidateError};
use outpost_common::manifest::{
    self, Artifact, Floors, MANIFEST_SCHEMA, Manifest, Policy, SecretKey, Sha256Sum, TrustedKeys, VerifiedManifest,
};
use outpost_common::vision::engine::Runtime;
use outpost_common::vision::{Vision, VisionOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(root().join(rel)).expect("fixture")
}

/// A verified manifest describing the zoo's defect detector (320×320, three classes) for `bytes`.
fn defect_manifest(bytes: &[u8]) -> VerifiedManifest {
    let key = SecretKey::from_seed(&[7; 32]);
    let envelope = manifest::sign_manifest(&describe_defect(bytes), &[&key]);
    let trusted = TrustedKeys::new([key.public()], 1).expect("trusted");
    let policy = Policy { now: time::OffsetDateTime::now_utc(), family: None, floors: &Floors::default() };
    manifest::verify_envelope(&envelope, &trusted, &policy).expect("verifies")
}

fn describe_defect(bytes: &[u8]) -> Manifest {
    let rt = Runtime::init(None).expect("ONNX Runtime");
    let zoo = Vision::load(rt, &read("models/zoo/defect-yolo11n-320.onnx"), VisionOptions::default()).expect("loads");
    let now = time::OffsetDateTime::now_utc();
    Manifest {
        schema: MANIFEST_SCHEMA,
        name: "defect".into(),
        version: 2,
        label: None,
        artifact: Artifact { sha256: Sha256Sum::of(bytes), length: bytes.len() as u64 },
        task: zoo.spec().task,
        input: zoo.spec().input.clone(),
        labels: zoo.spec().labels.clone(),
        family: None,
        created_at: now,
        expires_at: now + time::Duration::days(30),
        min_version: None,
        baseline: None,
    }
}

fn frames() -> Vec<image::RgbImage> {
    (0..3)
        .map(|i| {
            image::open(root().join(format!("tests/fixtures/images/defect-val/images/0000{i}.jpg")))
                .expect("jpg")
                .to_rgb8()
        })
        .collect()
}

fn load(rel: &str) -> Result<Vision, CandidateError> {
    let bytes = read(rel);
    candidate::load(Runtime::init(None).expect("ORT"), &bytes, &defect_manifest(&bytes), VisionOptions::default())
}

#[test]
fn the_model_its_manifest_describes_loads_and_warms_up() {
    let mut vision = load("models/zoo/defect-yolo11n-320.onnx").expect("matches its manifest");
    candidate::warm_up(&mut vision, &frames()).expect("usable outputs");
    candidate::warm_up(&mut vision, &[]).expect("a neutral frame when no camera frame is at hand");
}

#[test]
fn a_model_with_other_inputs_than_its_manifest_is_refused() {
    let err = load("tests/fixtures/models/defect-640.onnx").expect_err("640 is not 320");
    assert_eq!(err.code(), "spec_mismatch");
    assert!(err.to_string().contains("input size: the manifest says 320x320, the model is 640x640"), "{err}");
    let err = load("tests/fixtures/models/dynamic-cls.onnx").expect_err("a classifier is not a detector");
    assert!(err.to_string().contains("the model is classify"), "{err}");
}

#[test]
fn a_model_that_outputs_nan_fails_its_warm_up() {
    let mut vision = load("tests/fixtures/models/defect-nan.onnx").expect("loads and matches");
    let err = candidate::warm_up(&mut vision, &frames()).expect_err("NaN outputs");
    assert_eq!(err.code(), "warm_up_failed");
    assert!(err.to_string().contains("non-finite"), "{err}");
}

#[test]
fn bytes_that_are_no_model_fail_to_load() {
    let bytes = b"\x08\x07 not an ONNX graph at all".repeat(100);
    let err =
        candidate::load(Runtime::init(None).expect("ORT"), &bytes, &defect_manifest(&bytes), VisionOptions::default())
            .expect_err("garbage");
    assert_eq!(err.code(), "load_failed");
}
