//! The on-disk model store against real folders: install, trial, commit, revert, restarts, and what crashes and
//! damaged files leave behind. Every `SlotStore::open` below stands for a process (re)start.

use std::fs;
use std::path::Path;

use outpost_agent::update::{SlotError, SlotState, SlotStore, Start, VerifiedArtifact};
use outpost_common::manifest::{
    self, Artifact, Floors, Manifest, Policy, SecretKey, Sha256Sum, TrustedKeys, VerifiedManifest,
};
use outpost_common::vision::spec::{ColorOrder, InputSpec, Layout, Normalization, ResizeMode, Task};
use time::OffsetDateTime;
use time::macros::datetime;

const NAME: &str = "defect";
const MAX_STARTS: u32 = 3;

/// TEST-ONLY signing key from a fixed seed: public in this file, never to be trusted by a real device.
fn key() -> SecretKey {
    SecretKey::from_seed(&[42; 32])
}

fn trusted() -> TrustedKeys {
    TrustedKeys::new([key().public()], 1).expect("key set")
}

fn model_bytes(version: u64) -> Vec<u8> {
    format!("pretend ONNX bytes of model version {version} ").repeat(100).into_bytes()
}

fn manifest(name: &str, version: u64, artifact: &[u8]) -> Manifest {
    Manifest {
        schema: manifest::MANIFEST_SCHEMA,
        name: name.into(),
        version,
        label: None,
        artifact: Artifact { sha256: Sha256Sum::of(artifact), length: artifact.len() as u64 },
        task: Task::Detect,
        input: InputSpec {
            width: 320,
            height: 320,
            layout: Layout::Nchw,
            color: ColorOrder::Rgb,
            resize: ResizeMode::Letterbox { pad: 114 },
            normalization: Normalization::UNIT,
        },
        labels: vec!["scratch".into(), "dent".into()],
        family: None,
        // Fixed dates: the same (name, version, bytes) always signs to the same envelope, as it does in the registry.
        created_at: datetime!(2026-01-01 00:00:00 UTC),
        expires_at: datetime!(2099-01-01 00:00:00 UTC),
        min_version: None,
        baseline: None,
    }
}

fn verify(envelope: &[u8]) -> VerifiedManifest {
    let floors = Floors::default();
    let policy = Policy { now: OffsetDateTime::now_utc(), family: None, floors: &floors };
    manifest::verify_manifest(envelope, &trusted(), &policy).expect("manifest verifies")
}

fn verified(name: &str, version: u64, artifact: &[u8]) -> VerifiedManifest {
    verify(&manifest::sign_manifest(&manifest(name, version, artifact), &[&key()]).to_json_pretty())
}

/// Puts `bytes` in the staging folder, as a finished download would.
fn staged(store: &SlotStore, bytes: &[u8]) -> VerifiedArtifact {
    let declared = Artifact { sha256: Sha256Sum::of(bytes), length: bytes.len() as u64 };
    let path = store.staging_dir().join(format!("{}.artifact", declared.sha256));
    fs::write(&path, bytes).expect("stage");
    VerifiedArtifact::from_file(path, &declared).expect("staged artifact verifies")
}

fn install(store: &SlotStore, version: u64) {
    let bytes = model_bytes(version);
    store.install(&verified(NAME, version, &bytes), staged(store, &bytes)).expect("install");
}

/// A store where `committed` is the committed version and, optionally, `trial` is on trial over it.
fn store_with(root: &Path, committed: u64, trial: Option<u64>) -> SlotStore {
    let store = SlotStore::open(root, MAX_STARTS).expect("open");
    install(&store, committed);
    store.begin_trial(NAME, committed).expect("trial");
    store.commit(NAME, committed).expect("commit");
    if let Some(trial) = trial {
        install(&store, trial);
        store.begin_trial(NAME, trial).expect("trial");
    }
    store
}

/// A process start: open the store and run the start-up step.
fn restart(root: &Path) -> Start {
    SlotStore::open(root, MAX_STARTS).expect("open").on_start(NAME).expect("start")
}

fn served(start: &Start) -> Option<u64> {
    start.serve.as_ref().map(|slot| slot.version)
}

fn states(store: &SlotStore) -> Vec<(u64, SlotState)> {
    let entries = store.list().expect("list");
    let entry = entries.iter().find(|e| e.name == NAME).expect("the model is listed");
    entry.slots.iter().map(|s| (s.version, s.state.clone())).collect()
}

fn kind<T: std::fmt::Debug>(result: Result<T, SlotError>) -> &'static str {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind(),
    }
}

#[test]
fn install_trial_commit_and_restart_serve_the_committed_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SlotStore::open(dir.path(), MAX_STARTS).expect("open");
    install(&store, 1);
    assert_eq!(restart(dir.path()).serve, None, "installed is not active");
    store.begin_trial(NAME, 1).expect("trial");
    let start = restart(dir.path());
    assert_eq!((served(&start), start.committed, start.trial_start), (Some(1), false, Some(1)));
    store.commit(NAME, 1).expect("commit");

    let start = restart(dir.path());
    assert_eq!((served(&start), start.committed, start.trial_start), (Some(1), true, None));
    // What the caller needs at start-up: the envelope to verify again, and the model file to check and load.
    let slot = start.serve.expect("slot");
    let again = verify(&slot.envelope_bytes().expect("envelope"));
    assert_eq!((again.manifest().name.as_str(), again.manifest().version), (NAME, 1));
    let model = slot.verify_model(&again.manifest().artifact).expect("model bytes intact");
    assert_eq!(fs::read(model.path()).expect("read"), model_bytes(1));

    install(&store, 2);
    store.begin_trial(NAME, 2).expect("trial");
    let start = restart(dir.path());
    assert_eq!((served(&start), start.trial_start, start.max_trial_starts), (Some(2), Some(1), MAX_STARTS));
    store.commit(NAME, 2).expect("commit");
    assert_eq!(states(&store), [(1, SlotState::Previous), (2, SlotState::Active { committed: true, trial_starts: 0 })]);
    assert_eq!(served(&restart(dir.path())), Some(2));
    // Nothing of the install is left in staging: the artifacts were moved into their slots.
    assert_eq!(fs::read_dir(store.staging_dir()).expect("staging").count(), 0);
}

#[test]
fn a_model_never_committed_reverts_after_n_starts_without_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 1, Some(2));
    // The process crashes every time it runs version 2: no commit, only starts.
    for n in 1..=MAX_STARTS {
        let start = restart(dir.path());
        assert_eq!((served(&start), start.trial_start), (Some(2), Some(n)), "start {n}");
        assert!(start.reverted.is_empty());
    }
    let start = restart(dir.path());
    assert_eq!((served(&start), start.committed), (Some(1), true));
    assert_eq!(start.reverted.len(), 1);
    assert_eq!((start.reverted[0].from, start.reverted[0].to), (2, Some(1)));
    assert!(start.reverted[0].reason.contains("not committed after 3 starts"), "{:?}", start.reverted);
    assert_eq!(served(&restart(dir.path())), Some(1), "stays reverted");

    // An update cannot bring it back; the list says why; an operator can.
    assert_eq!(kind(store.begin_trial(NAME, 2)), "bad_version");
    let reason = "not committed after 3 starts".to_string();
    assert_eq!(
        states(&store),
        [(1, SlotState::Active { committed: true, trial_starts: 0 }), (2, SlotState::Bad { reason })]
    );
    let record = store.activate(NAME, 2).expect("operator activation");
    assert_eq!((record.active, record.previous, record.committed), (Some(2), Some(1), false));
    assert!(record.bad.is_empty());
}

#[test]
fn a_failed_health_window_reverts_and_a_late_verdict_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 1, Some(2));
    assert_eq!(kind(store.commit(NAME, 3)), "not_active", "a verdict for another version");
    let reverted = store.revert(NAME, 2, "outputs are NaN").expect("revert");
    assert_eq!((reverted.from, reverted.to), (2, Some(1)));
    assert_eq!(kind(store.commit(NAME, 2)), "not_active", "a late commit of the reverted version");
    let start = restart(dir.path());
    assert_eq!((served(&start), start.committed), (Some(1), true));
    assert_eq!(store.record(NAME).expect("record").bad_reason(2), Some("outputs are NaN"));

    // Reverting the only version leaves nothing installed serving: the configured model takes over.
    let reverted = store.revert(NAME, 1, "operator rollback").expect("revert");
    assert_eq!(reverted.to, None);
    assert_eq!(restart(dir.path()).serve, None);
}

#[test]
fn interrupted_installs_and_writes_are_never_slots_and_are_cleaned_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 1, None);
    let name_dir = dir.path().join(NAME);
    // A crash while installing version 2 (model half written, no manifest), while deleting version 3, and while
    // replacing the record.
    fs::create_dir(name_dir.join(".2.tmp")).expect("mkdir");
    fs::write(name_dir.join(".2.tmp/model.onnx"), &model_bytes(2)[..100]).expect("half a model");
    fs::create_dir(name_dir.join(".3.trash.tmp")).expect("mkdir");
    fs::write(name_dir.join("active.json.tmp"), b"{\"schema\":1,\"act").expect("torn record");

    assert_eq!(kind(store.slot(NAME, 2)), "not_installed");
    assert_eq!(kind(store.begin_trial(NAME, 2)), "not_installed");
    let reopened = SlotStore::open(dir.path(), MAX_STARTS).expect("reopen");
    let mut left: Vec<String> =
        fs::read_dir(&name_dir).expect("dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["1", "active.json", "committed.json"]);
    assert_eq!(served(&reopened.on_start(NAME).expect("start")), Some(1));

    // An install over debris from the same version still works.
    fs::create_dir(name_dir.join(".2.tmp")).expect("mkdir");
    install(&reopened, 2);
    assert!(reopened.slot(NAME, 2).is_ok());
}

#[test]
fn damaged_or_vanished_slots_are_not_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 1, Some(2));
    // A version folder that lost its manifest (by hand, or a disk fault) is incomplete, never served.
    let damaged = dir.path().join(NAME).join("4");
    fs::create_dir(&damaged).expect("mkdir");
    fs::write(damaged.join("model.onnx"), b"?").expect("write");
    assert!(states(&store).contains(&(4, SlotState::Incomplete)));
    assert_eq!(kind(store.begin_trial(NAME, 4)), "not_installed");
    install(&store, 4);
    assert!(store.slot(NAME, 4).is_ok(), "an install replaces the damaged folder");

    // The trial's slot vanished: the start falls back to the committed version, without marking it bad.
    fs::remove_dir_all(dir.path().join(NAME).join("2")).expect("remove");
    let start = restart(dir.path());
    assert_eq!(served(&start), Some(1));
    assert!(start.reverted[0].reason.contains("missing"), "{:?}", start.reverted);
    assert_eq!(store.record(NAME).expect("record").bad_reason(2), None);
}

#[test]
fn a_corrupt_active_record_falls_back_to_the_last_committed_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 1, Some(2));
    let active = dir.path().join(NAME).join("active.json");
    for garbage in
        [&b"{not json"[..], b"", br#"{"schema":99,"active":2,"previous":1,"committed":false,"trial_starts":0}"#]
    {
        fs::write(&active, garbage).expect("corrupt the record");
        let err = store.record(NAME).expect_err("corrupt");
        assert_eq!(err.kind(), "corrupt_record");
        assert!(err.to_string().contains("active.json"), "{err}");
        assert_eq!(kind(store.begin_trial(NAME, 2)), "corrupt_record", "no change over an unreadable record");
        let entries = store.list().expect("list still works");
        assert!(entries[0].record_error.is_some());

        let start = restart(dir.path());
        assert_eq!((served(&start), start.committed), (Some(1), true));
        assert!(start.recovered.as_deref().is_some_and(|r| r.contains("active.json")), "{:?}", start.recovered);
        assert!(dir.path().join(NAME).join("active.json.corrupt").exists(), "kept for inspection");
        assert_eq!(store.record(NAME).expect("rebuilt").active, Some(1));
        store.begin_trial(NAME, 2).expect("the store works again");
    }

    // A deleted record is rebuilt from the committed one too.
    fs::remove_file(&active).expect("delete");
    assert_eq!(served(&restart(dir.path())), Some(1));

    // Both records unusable: nothing installed serves, and nothing panics.
    fs::write(&active, b"\xff\xfe").expect("corrupt");
    fs::write(dir.path().join(NAME).join("committed.json"), b"[]").expect("corrupt");
    let start = restart(dir.path());
    assert_eq!(start.serve, None);
    assert!(start.recovered.is_some());
    // An operator can still choose a version.
    fs::write(&active, b"garbage").expect("corrupt");
    assert_eq!(store.activate(NAME, 1).expect("activate").active, Some(1));
}

#[test]
fn installing_is_idempotent_and_versions_are_immutable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SlotStore::open(dir.path(), MAX_STARTS).expect("open");
    install(&store, 1);
    install(&store, 1);
    assert_eq!(fs::read_dir(store.staging_dir()).expect("staging").count(), 0, "the second copy was dropped");

    // Another signed manifest for an installed version, with other bytes: refused, the slot unchanged.
    let other = b"other bytes".to_vec();
    let err = store.install(&verified(NAME, 1, &other), staged(&store, &other)).expect_err("conflict");
    assert_eq!(err.kind(), "conflict");
    let slot = store.slot(NAME, 1).expect("slot");
    assert_eq!(fs::read(slot.model_path()).expect("read"), model_bytes(1));

    // An artifact that is not the one the manifest declares.
    let err =
        store.install(&verified(NAME, 2, &model_bytes(2)), staged(&store, &model_bytes(3))).expect_err("mismatch");
    assert_eq!(err.kind(), "artifact_mismatch");
    assert_eq!(kind(store.slot(NAME, 2)), "not_installed");

    // An artifact outside the staging folder is copied and left where it was.
    let outside = tempfile::tempdir().expect("tempdir");
    let path = outside.path().join("m.onnx");
    fs::write(&path, model_bytes(5)).expect("write");
    let declared = Artifact { sha256: Sha256Sum::of(&model_bytes(5)), length: model_bytes(5).len() as u64 };
    let artifact = VerifiedArtifact::from_file(&path, &declared).expect("verifies");
    let slot = store.install(&verified(NAME, 5, &model_bytes(5)), artifact).expect("install by copy");
    assert_eq!(fs::read(slot.model_path()).expect("read"), model_bytes(5));
    assert!(path.exists());

    // Signed names that cannot be a folder of the store.
    for name in ["..", ".staging"] {
        let bytes = model_bytes(6);
        let err = store.install(&verified(name, 6, &bytes), staged(&store, &bytes)).expect_err("refused");
        assert_eq!(err.kind(), "invalid_name", "{name}");
    }
}

#[test]
fn garbage_collection_keeps_the_active_and_previous_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 1, Some(2));
    store.commit(NAME, 2).expect("commit");
    install(&store, 3);
    install(&store, 4);
    store.begin_trial(NAME, 3).expect("trial");
    assert_eq!(store.gc(NAME).expect("gc"), [1, 4]);
    assert_eq!(
        states(&store),
        [(2, SlotState::Previous), (3, SlotState::Active { committed: false, trial_starts: 0 })]
    );
    // The fallback still works after the collection.
    store.revert(NAME, 3, "confidence collapsed").expect("revert");
    assert_eq!(served(&restart(dir.path())), Some(2));
    assert_eq!(store.gc(NAME).expect("gc"), [3]);
    assert_eq!(store.gc("never-installed").expect("gc"), Vec::<u64>::new());

    // Staging: leftovers of other downloads go, the one named is kept.
    let keep = Sha256Sum::of(b"keep");
    fs::write(store.staging_dir().join(format!("{keep}.part")), b"k").expect("write");
    fs::write(store.staging_dir().join(format!("{}.part", Sha256Sum::of(b"old"))), b"o").expect("write");
    assert_eq!(store.prune_staging(&[keep]).expect("prune"), 1);
    assert!(store.staging_dir().join(format!("{keep}.part")).exists());
}

#[test]
fn concurrent_starts_from_two_handles_are_all_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_with(dir.path(), 1, Some(2));
    let root = dir.path().to_path_buf();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || {
                let store = SlotStore::open(&root, 1000).expect("open");
                for _ in 0..25 {
                    store.on_start(NAME).expect("start");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let store = SlotStore::open(&root, 1000).expect("open");
    assert_eq!(store.record(NAME).expect("record").trial_starts, 50, "the lock lets no start be lost");
}
