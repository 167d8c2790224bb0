//! Signatures and keys: unknown and revoked keys, re-serialised bodies, thresholds counted over distinct keys,
//! non-canonical signatures and small-order keys.

use outpost_common::manifest::{self, KeySet, PublicKey, SignatureEntry, TrustedKeys, VerifyError};

use crate::{Case, body_of, check, key, manifest_for, model_a, signed, trust, with_body, with_signatures};

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
