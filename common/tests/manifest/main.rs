//! Acceptance tests for signed manifests: every attack is rejected with its own error kind, and nothing a rejected
//! manifest touches changes state.

use outpost_common::manifest::{
    self, Envelope, FloorStore, Floors, Manifest, Policy, SecretKey, SignatureEntry, TrustedKeys, VerifyError,
};
use time::OffsetDateTime;
use time::macros::datetime;

#[path = "../support/mod.rs"]
mod support;
use support::{FAMILY, key, manifest_for};

mod artifact;
mod envelope;
mod keys;
mod policy;
mod signatures;

const NOW: OffsetDateTime = datetime!(2026-11-21 12:00:00 UTC);

fn model_a() -> Vec<u8> {
    b"pretend ONNX bytes of model A ".repeat(64)
}

fn model_b() -> Vec<u8> {
    b"pretend ONNX bytes of model B, a classifier ".repeat(64)
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
