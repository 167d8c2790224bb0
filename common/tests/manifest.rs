//! Acceptance tests for signed manifests: every attack is rejected with its own error kind, and nothing a rejected
//! manifest touches changes state.

use std::path::Path;

use outpost_common::manifest::{
    self, ArtifactDigest, Envelope, FloorStore, Floors, KeySet, Manifest, Policy, PublicKey, Purpose, SecretKey,
    Sha256Sum, SignatureEntry, TrustedKeys, VerifyError,
};
use outpost_common::vision::spec::{
    ColorOrder, ElementType, InputSpec, Layout, ModelInfo, Normalization, ResizeMode, SpecHints, Task, TensorInfo,
    resolve,
};
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-11-21 12:00:00 UTC);
const FAMILY: &str = "x86_64-cpu";

/// TEST-ONLY signing keys from fixed seeds: public in this file, never to be trusted by a real device.
fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn model_a() -> Vec<u8> {
    b"pretend ONNX bytes of model A ".repeat(64)
}

fn model_b() -> Vec<u8> {
    b"pretend ONNX bytes of model B, a classifier ".repeat(64)
}

fn manifest_for(artifact: &[u8]) -> Manifest {
    Manifest {
        schema: manifest::MANIFEST_SCHEMA,
        name: "defect".into(),
        version: 7,
        label: Some("2.1.0".into()),
        artifact: manifest::Artifact { sha256: Sha256Sum::of(artifact), length: artifact.len() as u64 },
        task: Task::Detect,
        input: InputSpec {
            width: 320,
            height: 320,
            layout: Layout::Nchw,
            color: ColorOrder::Rgb,
            resize: ResizeMode::Letterbox { pad: 114 },
            normalization: Normalization::UNIT,
        },
        labels: vec!["scratch".into(), "dent".into(), "stain".into()],
        family: Some(FAMILY.into()),
        created_at: datetime!(2026-11-20 12:00:00 UTC),
        expires_at: datetime!(2027-02-18 12:00:00 UTC),
        min_version: Some(5),
        baseline: None,
    }
}

fn signed(manifest: &Manifest, keys: &[&SecretKey]) -> Vec<u8> {
    manifest::sign_manifest(manifest, keys).to_json_pretty()
}

fn trust(keys: &[&SecretKey], threshold: usize) -> TrustedKeys {
    TrustedKeys::new(keys.iter().map(|k| k.public()), threshold).expect("valid key set")
}

/// One verification attempt: the envelope bytes, the device's view, and the artifact bytes that arrived.
struct Case {
    name: &'static str,
    envelope: Vec<u8>,
    trusted: TrustedKeys,
    family: &'static str,
    floors: Floors,
    artifact: Vec<u8>,
}

impl Case {
    fn valid(name: &'static str) -> Case {
        Case {
            name,
            envelope: signed(&manifest_for(&model_a()), &[&key(1)]),
            trusted: trust(&[&key(1), &key(2)], 1),
            family: FAMILY,
            floors: Floors::default(),
            artifact: model_a(),
        }
    }
}

/// Verifies the case as an agent would (manifest, then artifact, then commit the floor on success) against a floor
/// file, and checks the outcome. A rejection must leave the floor file byte-for-byte as it was.
fn check(case: Case, expected: Result<(), &str>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("floors.json");
    let mut seed = FloorStore::open(&path).expect("open");
    let none = Floors::default();
    let seed_policy = Policy { now: NOW, family: Some(FAMILY), floors: &none };
    let other = manifest::verify_manifest(&signed(&other_manifest(), &[&key(1)]), &trust(&[&key(1)], 1), &seed_policy)
        .expect("seed manifest verifies");
    assert!(seed.commit(&other).expect("seed floor"));
    let before = std::fs::read(&path).expect("floor file");

    let result = (|| {
        let policy = policy(&case);
        let verified = manifest::verify_manifest(&case.envelope, &case.trusted, &policy)?;
        verified.check_artifact_bytes(&case.artifact)?;
        Ok::<_, VerifyError>(verified)
    })();
    match (&result, expected) {
        (Ok(verified), Ok(())) => {
            let mut store = FloorStore::open(&path).expect("reopen");
            store.commit(verified).expect("commit");
        }
        (Err(e), Err(code)) => {
            assert_eq!(e.code(), code, "{}: wrong kind, message: {e}", case.name);
            assert!(!e.to_string().is_empty());
            assert_eq!(std::fs::read(&path).expect("floor file"), before, "{}: state changed", case.name);
            assert_eq!(dir.path().read_dir().expect("dir").count(), 1, "{}: stray files", case.name);
        }
        (got, expected) => panic!("{}: got {got:?}, expected {expected:?}", case.name),
    }
}

fn policy(case: &Case) -> Policy<'_> {
    Policy { now: NOW, family: Some(case.family), floors: &case.floors }
}

fn other_manifest() -> Manifest {
    Manifest { name: "other-model".into(), ..manifest_for(&model_b()) }
}

fn body_of(envelope: &[u8]) -> Vec<u8> {
    Envelope::from_slice(envelope).expect("envelope").body
}

fn with_body(envelope: &[u8], body: Vec<u8>) -> Vec<u8> {
    Envelope { body, ..Envelope::from_slice(envelope).expect("envelope") }.to_json_pretty()
}

fn with_signatures(envelope: &[u8], signatures: Vec<SignatureEntry>) -> Vec<u8> {
    Envelope { signatures, ..Envelope::from_slice(envelope).expect("envelope") }.to_json_pretty()
}

#[test]
fn a_valid_manifest_verifies_and_commits_its_floor() {
    check(Case::valid("valid"), Ok(()));
    let case = Case::valid("valid");
    let verified = manifest::verify_manifest(&case.envelope, &case.trusted, &policy(&case)).expect("verifies");
    assert_eq!(verified.manifest(), &manifest_for(&model_a()));
    assert_eq!(verified.signers(), [key(1).public().id().clone()]);
    assert_eq!(verified.manifest().display_name(), "defect v7 (2.1.0)");
    // The same check through the convenience entry point and the streaming one.
    manifest::verify_manifest_with_artifact(&case.envelope, &case.trusted, &policy(&case), &model_a())
        .expect("verifies with artifact");
    let mut stream = verified.artifact_check();
    for chunk in model_a().chunks(100) {
        stream.update(chunk).expect("chunk within length");
    }
    stream.finish().expect("streamed artifact matches");
}

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

#[test]
fn key_attacks() {
    check(
        Case { envelope: signed(&manifest_for(&model_a()), &[&key(9)]), ..Case::valid("unknown key") },
        Err("unknown_key"),
    );
    let revoked = trust(&[&key(1), &key(2)], 1).with_revoked([key(3).public().id().clone()]).expect("revoke");
    check(
        Case {
            envelope: signed(&manifest_for(&model_a()), &[&key(3), &key(1)]),
            trusted: revoked,
            ..Case::valid("revoked key")
        },
        Err("revoked_key"),
    );
    // An unknown signature next to a valid one is skipped, not counted (a newer key during a rotation).
    check(
        Case { envelope: signed(&manifest_for(&model_a()), &[&key(9), &key(1)]), ..Case::valid("extra key") },
        Ok(()),
    );
}

#[test]
fn re_serialised_json_does_not_verify() {
    let envelope = Case::valid("").envelope;
    let value: serde_json::Value = serde_json::from_slice(&body_of(&envelope)).expect("body json");
    // Same content, compact: only whitespace differs.
    let compact = serde_json::to_vec(&value).expect("json");
    check(Case { envelope: with_body(&envelope, compact), ..Case::valid("whitespace") }, Err("bad_signature"));
    // Same content, pretty, keys sorted (serde_json's Value orders them): only key order differs.
    let reordered = serde_json::to_vec_pretty(&value).expect("json");
    assert_ne!(reordered, body_of(&envelope));
    check(Case { envelope: with_body(&envelope, reordered), ..Case::valid("key order") }, Err("bad_signature"));
    // The envelope itself may be re-encoded freely: the signed body bytes travel as base64.
    let reencoded =
        serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&envelope).expect("json")).expect("json");
    check(Case { envelope: reencoded, ..Case::valid("envelope re-encoded") }, Ok(()));
}

#[test]
fn threshold_counts_distinct_keys() {
    let two_of_three = || trust(&[&key(1), &key(2), &key(3)], 2);
    let once = manifest::sign_manifest(&manifest_for(&model_a()), &[&key(1)]);
    let entry = once.signatures[0].clone();
    let twice = with_signatures(&once.to_json_pretty(), vec![entry.clone(), entry.clone()]);
    check(
        Case { envelope: twice, trusted: two_of_three(), ..Case::valid("same signature twice") },
        Err("duplicate_signature"),
    );

    // The same key's signature again under a second id: ids are derived from keys, so the second id names no
    // trusted key and cannot count.
    let alias = SignatureEntry { key_id: "00112233aabbccdd".parse().expect("id"), ..entry };
    let two_ids = with_signatures(&once.to_json_pretty(), vec![once.signatures[0].clone(), alias]);
    check(
        Case { envelope: two_ids, trusted: two_of_three(), ..Case::valid("one key, two ids") },
        Err("threshold_not_met"),
    );

    // A key set cannot list one key twice, nor under another encoding of the same point.
    let err = TrustedKeys::new([key(1).public(), key(1).public()], 2).expect_err("duplicate key");
    assert_eq!(err.code(), "duplicate_key", "{err}");
    let mut second_encodings = 0;
    for y in 2u8..=18 {
        // y and y + p encode the same curve point; only the first is canonical.
        let mut canonical = [0u8; 32];
        canonical[0] = y;
        let mut other = [0xffu8; 32];
        other[0] = 0xed + y;
        other[31] = 0x7f;
        if let Ok(public) = PublicKey::from_bytes(&canonical) {
            let err = VerifyError::from(PublicKey::from_bytes(&other).expect_err("second encoding refused"));
            assert_eq!(err.code(), "non_canonical_key", "y = {y}: {err}");
            assert_eq!(public.to_bytes(), canonical);
            second_encodings += 1;
        }
    }
    assert!(second_encodings > 0, "no large-order point with a second encoding among y < 19");
    check(
        Case {
            envelope: signed(&manifest_for(&model_a()), &[&key(1), &key(3)]),
            trusted: two_of_three(),
            ..Case::valid("two of three")
        },
        Ok(()),
    );
    check(
        Case {
            envelope: signed(&manifest_for(&model_a()), &[&key(2)]),
            trusted: two_of_three(),
            ..Case::valid("one of three")
        },
        Err("threshold_not_met"),
    );
}

#[test]
fn policy_attacks() {
    let expired = Manifest { expires_at: NOW, ..manifest_for(&model_a()) };
    check(Case { envelope: signed(&expired, &[&key(1)]), ..Case::valid("expired") }, Err("expired"));
    check(Case { family: "rpi4-armv7", ..Case::valid("wrong family") }, Err("wrong_family"));
    let any_family = Manifest { family: None, ..manifest_for(&model_a()) };
    check(
        Case { envelope: signed(&any_family, &[&key(1)]), family: "rpi4-armv7", ..Case::valid("any family") },
        Ok(()),
    );
    let mut floors = Floors::default();
    floors.raise("defect", 8);
    check(Case { floors, ..Case::valid("below the floor") }, Err("below_floor"));
    check(Case { floors: Floors::uniform(7), ..Case::valid("at the floor") }, Ok(()));
    let inverted = Manifest { min_version: Some(9), ..manifest_for(&model_a()) };
    check(
        Case { envelope: signed(&inverted, &[&key(1)]), ..Case::valid("min above version") },
        Err("invalid_manifest"),
    );
}

#[test]
fn below_the_floor_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state").join("floors.json");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let trusted = trust(&[&key(1)], 1);
    let v9 = Manifest { version: 9, min_version: Some(9), ..manifest_for(&model_a()) };
    {
        let mut store = FloorStore::open(&path).expect("open");
        let policy = Policy { now: NOW, family: Some(FAMILY), floors: store.floors() };
        let verified = manifest::verify_manifest(&signed(&v9, &[&key(1)]), &trusted, &policy).expect("v9 verifies");
        assert!(store.commit(&verified).expect("commit"));
        assert!(!store.commit(&verified).expect("commit again"), "a floor does not rise twice");
    }
    // A new process: the floor comes back from disk, and the older, validly signed v7 is refused.
    let store = FloorStore::open(&path).expect("reopen");
    assert_eq!(store.floors().get("defect"), 9);
    let policy = Policy { now: NOW, family: Some(FAMILY), floors: store.floors() };
    let err = manifest::verify_manifest(&signed(&manifest_for(&model_a()), &[&key(1)]), &trusted, &policy)
        .expect_err("rollback refused");
    assert_eq!(err.code(), "below_floor", "{err}");
    assert!(err.to_string().contains("below this device's floor 9"), "{err}");
    let leftovers: Vec<_> = path.parent().expect("parent").read_dir().expect("dir").collect();
    assert_eq!(leftovers.len(), 1, "only the floor file, no temp file");
    // A corrupt floor file is an error, never an empty (floor 0) store.
    std::fs::write(&path, b"{\"by_name\": {\"defect\": \"nine\"}}").expect("write");
    assert!(FloorStore::open(&path).is_err());
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

#[test]
fn rotation() {
    let current = trust(&[&key(1), &key(2), &key(3)], 2);
    let next = KeySet {
        schema: manifest::KEY_SET_SCHEMA,
        version: 1,
        threshold: 1,
        keys: vec![key(2).public(), key(4).public()],
        revoked: vec![key(1).public().id().clone()],
    };
    let by = |keys: &[&SecretKey]| manifest::sign_key_set(&next, keys).to_json_pretty();
    let check_rotation = |bytes: &[u8], expected: Result<(), &str>| match (current.rotate(bytes), expected) {
        (Ok(_), Ok(())) => {}
        (Err(e), Err(code)) => assert_eq!(e.code(), code, "{e}"),
        (got, expected) => panic!("got {got:?}, expected {expected:?}"),
    };
    check_rotation(&by(&[&key(2)]), Err("rotation_not_authorized"));
    check_rotation(&by(&[&key(4)]), Err("rotation_not_authorized"));
    check_rotation(&by(&[&key(4), &key(9)]), Err("rotation_not_authorized"));
    check_rotation(&by(&[&key(2), &key(2)]), Err("duplicate_signature"));
    // A manifest signature is not a key set signature, even over the same bytes.
    let wrong_purpose = manifest::sign_body(Purpose::Manifest, next.to_json_pretty(), &[&key(1), &key(2)]);
    check_rotation(&wrong_purpose.to_json_pretty(), Err("bad_signature"));

    let rotated = current.rotate(&by(&[&key(1), &key(3)])).expect("rotation by 2 of 3");
    assert_eq!(rotated.version(), 1);
    assert_eq!(rotated.threshold(), 1);
    assert!(rotated.is_revoked(key(1).public().id()));
    // After the rotation, the revoked key's manifests are refused and the new key's accepted.
    check(
        Case {
            envelope: signed(&manifest_for(&model_a()), &[&key(1)]),
            trusted: rotated.clone(),
            ..Case::valid("after rotation, old key")
        },
        Err("revoked_key"),
    );
    check(
        Case {
            envelope: signed(&manifest_for(&model_a()), &[&key(4)]),
            trusted: rotated.clone(),
            ..Case::valid("after rotation, new key")
        },
        Ok(()),
    );
    // Replaying the same rotation, or an older one, is refused; so is un-revoking a key.
    assert_eq!(
        rotated.rotate(&manifest::sign_key_set(&next, &[&key(2)]).to_json_pretty()).map_err(|e| e.code()).err(),
        Some("key_set_rollback")
    );
    let unrevoke = KeySet { version: 2, keys: vec![key(1).public(), key(4).public()], revoked: vec![], ..next.clone() };
    let err = rotated.rotate(&manifest::sign_key_set(&unrevoke, &[&key(4)]).to_json_pretty()).expect_err("un-revoke");
    assert_eq!(err.code(), "invalid_key_set", "{err}");
    // The persisted form round-trips.
    let persisted = rotated.to_key_set();
    let restored =
        TrustedKeys::from_key_set(&KeySet::from_json(&persisted.to_json_pretty()).expect("parses")).expect("valid");
    assert_eq!(restored, rotated);
}

/// The identity point: a small-order public key for which `R = identity, S = 0` "verifies" any message.
const IDENTITY: [u8; 32] = {
    let mut b = [0u8; 32];
    b[0] = 1;
    b
};

#[test]
fn non_canonical_signatures_and_small_order_keys() {
    // S + L: the same signature with a non-reduced scalar.
    let once = manifest::sign_manifest(&manifest_for(&model_a()), &[&key(1)]);
    let mut entry = once.signatures[0].clone();
    let l: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (s, l) in entry.sig[32..].iter_mut().zip(l) {
        let sum = u16::from(*s) + u16::from(l) + carry;
        *s = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    let envelope = with_signatures(&once.to_json_pretty(), vec![entry]);
    check(Case { envelope, ..Case::valid("S >= L") }, Err("non_canonical_signature"));

    // The identity point is refused as a key, though the lax check would accept a forged signature under it.
    use ed25519_dalek::Verifier;
    let weak = ed25519_dalek::VerifyingKey::from_bytes(&IDENTITY).expect("decodes");
    let mut forged = [0u8; 64];
    forged[..32].copy_from_slice(&IDENTITY);
    let forged = ed25519_dalek::Signature::from_bytes(&forged);
    assert!(weak.verify(b"anything at all", &forged).is_ok(), "the lax check accepts it");
    assert!(weak.verify_strict(b"anything at all", &forged).is_err());
    let check_key = |bytes: [u8; 32], code: &str| {
        let err = VerifyError::from(PublicKey::from_bytes(&bytes).expect_err("refused"));
        assert_eq!(err.code(), code, "{err}");
    };
    check_key(IDENTITY, "weak_key");
    // The identity again, with the x sign bit set: a second encoding of the same point.
    let mut negative_zero = IDENTITY;
    negative_zero[31] |= 0x80;
    assert!(matches!(
        PublicKey::from_bytes(&negative_zero).map_err(|e| VerifyError::from(e).code()),
        Err("weak_key" | "non_canonical_key" | "malformed_key")
    ));
    // Key sets carrying such a key are refused the same way.
    let line = format!("ed25519:{}", base64_std(&IDENTITY));
    let body = format!(r#"{{"schema":1,"version":1,"threshold":1,"keys":["{line}"]}}"#);
    assert_eq!(KeySet::from_json(body.as_bytes()).map_err(|e| e.code()).err(), Some("weak_key"));
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn size_cap_and_unknown_fields() {
    let huge = vec![b' '; manifest::MAX_ENVELOPE_BYTES + 1];
    check(Case { envelope: huge, ..Case::valid("over the cap") }, Err("too_large"));
    // A signed body that is itself too large is refused before its signatures are checked.
    let big_body = manifest::sign_body(Purpose::Manifest, vec![b' '; manifest::MAX_ENVELOPE_BYTES], &[&key(1)]);
    let err = manifest::verify_envelope(&big_body, &trust(&[&key(1)], 1), &policy(&Case::valid(""))).expect_err("big");
    assert_eq!(err.code(), "too_large");

    let envelope = Case::valid("").envelope;
    let mut value: serde_json::Value = serde_json::from_slice(&envelope).expect("json");
    value["comment"] = "hello".into();
    check(
        Case { envelope: serde_json::to_vec(&value).expect("json"), ..Case::valid("envelope field") },
        Err("unknown_field"),
    );
    let mut value: serde_json::Value = serde_json::from_slice(&envelope).expect("json");
    value["signatures"][0]["alg"] = "ed25519".into();
    check(
        Case { envelope: serde_json::to_vec(&value).expect("json"), ..Case::valid("signature field") },
        Err("unknown_field"),
    );

    // An unknown field inside the signed body (validly signed, so only the field check stops it).
    let mut body: serde_json::Value = serde_json::to_value(manifest_for(&model_a())).expect("json");
    body["priority"] = 1.into();
    let envelope = manifest::sign_body(Purpose::Manifest, serde_json::to_vec(&body).expect("json"), &[&key(1)]);
    check(Case { envelope: envelope.to_json_pretty(), ..Case::valid("body field") }, Err("unknown_field"));
    body["input"]["gamma"] = 2.2.into();
    body.as_object_mut().expect("object").remove("priority");
    let envelope = manifest::sign_body(Purpose::Manifest, serde_json::to_vec(&body).expect("json"), &[&key(1)]);
    check(Case { envelope: envelope.to_json_pretty(), ..Case::valid("nested body field") }, Err("unknown_field"));

    let mut future: serde_json::Value = serde_json::to_value(manifest_for(&model_a())).expect("json");
    future["schema"] = 2.into();
    future["new_thing"] = true.into();
    let envelope = manifest::sign_body(Purpose::Manifest, serde_json::to_vec(&future).expect("json"), &[&key(1)]);
    check(Case { envelope: envelope.to_json_pretty(), ..Case::valid("schema 2") }, Err("unsupported_schema"));
    check(
        Case { envelope: b"{\"body\": \"%%%\", \"signatures\": []}".to_vec(), ..Case::valid("bad base64") },
        Err("malformed"),
    );
    check(Case { envelope: b"\xff\xfe".to_vec(), ..Case::valid("not json") }, Err("malformed"));
}

#[test]
fn keys_round_trip_through_their_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = manifest::keys::KeyFiles::in_dir(dir.path(), "release");
    let secret = SecretKey::generate().expect("random");
    files.write(&secret).expect("write");
    assert!(matches!(files.write(&secret), Err(manifest::KeyError::Exists { .. })), "never overwrites");
    assert_eq!(mode(&files.secret), 0o600);
    let read = manifest::keys::read_secret_key(&files.secret).expect("read secret");
    assert_eq!(read.public(), secret.public());
    let one_line = std::fs::read_to_string(&files.public).expect("read pub");
    assert_eq!(one_line.lines().count(), 1);
    assert!(one_line.starts_with("ed25519:"));
    assert_eq!(manifest::keys::read_public_key(&files.public).expect("one-line"), secret.public());
    assert_eq!(manifest::keys::read_public_key(&files.public_pem).expect("pem"), secret.public());
    assert_eq!(secret.public().id().as_str().len(), 16);
    assert!(!format!("{secret:?}").contains(&secret.to_pkcs8_pem().expect("pem")));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&files.secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = manifest::keys::read_secret_key(&files.secret).expect_err("world-readable");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    for bad in
        ["", "ed25519:", "ed25519:AAAA", "rsa:AAAA", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"]
    {
        assert!(PublicKey::parse(bad).is_err(), "{bad:?} accepted");
    }
}

fn mode(path: &Path) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        0o600
    }
}

#[test]
fn hostile_envelopes_never_panic() {
    let trusted = trust(&[&key(1)], 1);
    let case = Case::valid("");
    let valid = case.envelope.clone();
    // Every truncation and a byte flip at every position of a valid envelope: errors, never panics.
    for i in 0..valid.len() {
        let _ = manifest::verify_manifest(&valid[..i], &trusted, &policy(&case));
        let mut flipped = valid.clone();
        flipped[i] ^= 0x20;
        if let Ok(v) = manifest::verify_manifest(&flipped, &trusted, &policy(&case)) {
            // Only flips in the envelope's JSON syntax-insensitive spots (none in the body or signature) may pass.
            assert_eq!(v.manifest(), &manifest_for(&model_a()));
        }
    }
}
