//! The device's policy: expiry, family, the version floor (also after a restart).

use outpost_common::manifest::{self, FloorStore, Floors, Manifest, Policy};

use crate::{Case, FAMILY, NOW, check, key, manifest_for, model_a, signed, trust};

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
