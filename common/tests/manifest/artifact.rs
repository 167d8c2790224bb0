//! The artifact does not match what was signed: flipped, longer, shorter or swapped bytes, and a manifest that
//! describes one model while carrying the hash of another.

use outpost_common::manifest::{self, ArtifactDigest, Manifest};
use outpost_common::vision::spec::{ElementType, ModelInfo, SpecHints, TensorInfo, resolve};

use crate::{Case, check, key, manifest_for, model_a, model_b, policy, signed};

#[test]
fn artifact_attacks() {
    let mut flipped = model_a();
    flipped[10] ^= 0x04;
    check(Case { artifact: flipped, ..Case::valid("one bit flipped") }, Err("artifact_hash"));
    let mut longer = model_a();
    longer.push(0);
    check(Case { artifact: longer.clone(), ..Case::valid("one byte longer") }, Err("artifact_length"));
    let shorter = model_a()[1..].to_vec();
    check(Case { artifact: shorter.clone(), ..Case::valid("one byte shorter") }, Err("artifact_length"));
    // Model A's manifest served with model B's bytes.
    check(Case { artifact: model_b(), ..Case::valid("artifact swapped") }, Err("artifact_length"));

    // Streaming stops at the first byte past the declared length, and a short stream fails at the end.
    let case = Case::valid("stream");
    let verified = manifest::verify_manifest(&case.envelope, &case.trusted, &policy(&case)).expect("verifies");
    let mut stream = verified.artifact_check();
    let err = stream.update(&longer).expect_err("too long");
    assert_eq!(err.code(), "artifact_length");
    assert!(err.to_string().contains("longer"), "{err}");
    let mut stream = verified.artifact_check();
    stream.update(&shorter).expect("within length");
    let err = stream.finish().expect_err("too short");
    assert!(err.to_string().contains("shorter"), "{err}");
    let digest = ArtifactDigest::of(&model_a());
    assert_eq!(verified.check_artifact(&digest).map_err(|e| e.code()), Ok(()));
}

/// What ONNX Runtime would report for model B: a 1000-class classifier with Ultralytics metadata.
fn model_b_info() -> ModelInfo {
    let tensor = |name: &str, shape: &[usize]| TensorInfo {
        name: name.into(),
        element: ElementType::F32,
        shape: shape.iter().map(|&d| Some(d)).collect(),
    };
    ModelInfo {
        inputs: vec![tensor("images", &[1, 3, 224, 224])],
        outputs: vec![tensor("output0", &[1, 1000])],
        metadata: [("task", "classify"), ("imgsz", "[224, 224]")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn a_manifest_for_model_a_carrying_model_b_hash() {
    // Model A's description, model B's bytes: the hash matches, the model does not.
    let mislabelled = Manifest { artifact: manifest_for(&model_b()).artifact, ..manifest_for(&model_a()) };
    let case =
        Case { envelope: signed(&mislabelled, &[&key(1)]), artifact: model_b(), ..Case::valid("A with B's hash") };
    let verified = manifest::verify_manifest(&case.envelope, &case.trusted, &policy(&case)).expect("signature ok");
    verified.check_artifact_bytes(&model_b()).expect("the bytes are the ones signed");
    let err = verified.resolve_spec(&model_b_info()).expect_err("not model A");
    assert_eq!(err.code(), "model_mismatch", "{err}");
    let spec = resolve(&model_b_info(), &SpecHints::default()).expect("model B resolves on its own");
    let err = verified.check_spec(&spec).expect_err("not model A");
    assert_eq!(err.code(), "model_mismatch", "{err}");
    assert!(err.to_string().contains("task"), "{err}");

    // The correctly described model passes the same check.
    let detector = ModelInfo {
        inputs: model_b_info()
            .inputs
            .into_iter()
            .map(|t| TensorInfo { shape: vec![Some(1), Some(3), Some(320), Some(320)], ..t })
            .collect(),
        outputs: vec![TensorInfo {
            name: "output0".into(),
            element: ElementType::F32,
            shape: vec![Some(1), Some(7), Some(2100)],
        }],
        metadata: [("task", "detect"), ("names", "{0: 'scratch', 1: 'dent', 2: 'stain'}")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    verified.resolve_spec(&detector).expect("model A matches its manifest");
    let renamed = ModelInfo {
        metadata: [("task", "detect"), ("names", "{0: 'scratch', 1: 'dent', 2: 'crack'}")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..detector
    };
    let spec = resolve(&renamed, &SpecHints::default()).expect("resolves");
    assert_eq!(verified.check_spec(&spec).map_err(|e| e.code()), Err("model_mismatch"));
}
