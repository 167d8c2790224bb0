//! Trusted key sets: rotation, and key files on disk.

use std::path::Path;

use outpost_common::manifest::{self, KeySet, PublicKey, Purpose, SecretKey, TrustedKeys};

use crate::{Case, check, key, manifest_for, model_a, signed, trust};

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
