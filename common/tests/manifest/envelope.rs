//! Hostile envelopes: the size cap, unknown fields at every level, schema and encoding errors, and every
//! truncation and bit flip of a valid envelope.

use outpost_common::manifest::{self, Purpose};

use crate::{Case, check, key, manifest_for, model_a, policy, trust};

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
