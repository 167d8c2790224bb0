//! The `outpost` operator commands, run as a user would: keygen, model sign → verify with the real zoo model, every
//! rejection as one line with exit code 1, and key rotation.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The committed zoo model (models/zoo), never a copy outside the repository.
fn zoo_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/zoo/defect-yolo11n-320.onnx")
}

fn outpost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost")).args(args).output().expect("runs outpost")
}

/// Runs the command and checks its outcome: `Ok(fragment)` expects success with `fragment` on stdout,
/// `Err(fragment)` expects exit code 1 with exactly one line on stderr containing `fragment`.
fn check(args: &[&str], expected: Result<&str, &str>) -> String {
    let out = outpost(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match expected {
        Ok(fragment) => {
            assert!(out.status.success(), "{args:?} failed: {stderr}");
            assert!(stdout.contains(fragment), "{args:?}: stdout lacks `{fragment}`:\n{stdout}");
        }
        Err(fragment) => {
            assert_eq!(out.status.code(), Some(1), "{args:?} should fail: {stdout}{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: one line expected:\n{stderr}");
            assert!(stderr.contains(fragment), "{args:?}: stderr lacks `{fragment}`: {stderr}");
        }
    }
    stdout
}

/// [`check`] for a command's fixed arguments followed by the ones a case varies.
fn check_with(command: &[&str], extra: &[&str], expected: Result<&str, &str>) -> String {
    check(&[command, extra].concat(), expected)
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().expect("temp dir"))
    }

    fn path(&self, name: &str) -> String {
        self.0.path().join(name).display().to_string()
    }

    fn keygen(&self, name: &str) {
        check(&["keygen", "--out", &self.path("keys"), "--name", name], Ok("key id:"));
    }

    fn key(&self, name: &str) -> String {
        self.path(&format!("keys/{name}.key"))
    }

    fn public(&self, name: &str) -> String {
        self.path(&format!("keys/{name}.pub"))
    }
}

#[test]
fn keygen_writes_a_private_secret_key_and_pasteable_public_key() {
    let dir = Dir::new();
    dir.keygen("release");
    let public = std::fs::read_to_string(dir.public("release")).expect("pub");
    assert!(public.starts_with("ed25519:") && public.lines().count() == 1, "{public}");
    let pem = std::fs::read_to_string(dir.path("keys/release.pub.pem")).expect("pem");
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let secret = std::fs::read_to_string(dir.key("release")).expect("key");
    assert!(secret.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM expected");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.key("release")).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    check(&["keygen", "--out", &dir.path("keys"), "--name", "release"], Err("already exists"));
    let ids = check(&["keys", "id", &dir.public("release"), public.trim()], Ok(""));
    let ids: Vec<&str> = ids.lines().map(|l| l.split_whitespace().next().unwrap_or("")).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1]);
}

#[test]
fn model_sign_then_verify_with_the_zoo_model() {
    let dir = Dir::new();
    dir.keygen("release");
    let model = zoo_model().display().to_string();
    let manifest = dir.path("defect.manifest.json");
    let signed = check(
        &[
            "model",
            "sign",
            "--key",
            &dir.key("release"),
            "--model",
            &model,
            "--name",
            "defect",
            "--version",
            "3",
            "--family",
            "x86_64-cpu",
            "--expires",
            "90d",
            "--label",
            "2.1.0",
            "--min-version",
            "2",
            "--out",
            &manifest,
        ],
        Ok("signed: defect v3 (2.1.0)"),
    );
    // Filled in from the model's own metadata through the vision library.
    assert!(signed.contains("task: detect"), "{signed}");
    assert!(signed.contains(r#""width":320,"height":320"#), "{signed}");
    assert!(signed.contains("labels: scratch, dent, stain"), "{signed}");

    let trusted = dir.public("release");
    let verify = |extra: &[&str], expected| {
        check_with(&["model", "verify", "--trusted", &trusted, "--manifest", &manifest], extra, expected)
    };
    let out =
        verify(&["--model", &model, "--family", "x86_64-cpu", "--floor", "3", "--inspect"], Ok("verified: defect v3"));
    assert!(out.contains("signed by 1 of 1 required key(s)"), "{out}");
    assert!(out.contains(&format!("matches {model}")), "{out}");
    verify(&[], Ok("not checked: pass --model"));

    // Each failure: one line, its own reason, exit code 1.
    let mut flipped = std::fs::read(&model).expect("model");
    flipped[1000] ^= 0x01;
    let tampered = dir.path("tampered.onnx");
    std::fs::write(&tampered, &flipped).expect("write");
    verify(&["--model", &tampered], Err("[artifact_hash]"));
    flipped.push(0);
    std::fs::write(&tampered, &flipped).expect("write");
    verify(&["--model", &tampered], Err("[artifact_length]"));
    verify(&["--family", "rpi4-armv7"], Err("[wrong_family]"));
    verify(&["--floor", "4"], Err("[below_floor]"));
    verify(&["--at", "2099-01-01T00:00:00Z"], Err("[expired]"));
    verify(&["--threshold", "2"], Err("threshold 2 with 1 key"));

    dir.keygen("other");
    check(&["model", "verify", "--trusted", &dir.public("other"), "--manifest", &manifest], Err("[unknown_key]"));
    check(
        &["model", "verify", "--trusted", &dir.public("other"), "--revoked", &trusted, "--manifest", &manifest],
        Err("[revoked_key]"),
    );
    check(
        &[
            "model",
            "verify",
            "--trusted",
            &trusted,
            "--trusted",
            &dir.public("other"),
            "--threshold",
            "2",
            "--manifest",
            &manifest,
        ],
        Err("[threshold_not_met]"),
    );

    // Re-serialising the envelope is harmless; editing the signed body is not.
    let envelope: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("manifest")).expect("json");
    let compact = dir.path("compact.manifest.json");
    std::fs::write(&compact, serde_json::to_vec(&envelope).expect("json")).expect("write");
    check(&["model", "verify", "--trusted", &trusted, "--manifest", &compact, "--model", &model], Ok("verified"));
    let mut edited = envelope.clone();
    edited["body"] = "eyJzY2hlbWEiOjF9".into();
    std::fs::write(&compact, serde_json::to_vec(&edited).expect("json")).expect("write");
    check(&["model", "verify", "--trusted", &trusted, "--manifest", &compact], Err("[bad_signature]"));
    check(&["model", "verify", "--trusted", &trusted, "--manifest", &dir.path("missing.json")], Err("missing.json"));
}

#[test]
fn sign_without_onnx_runtime_from_an_explicit_spec() {
    let dir = Dir::new();
    dir.keygen("release");
    let spec = dir.path("spec.json");
    std::fs::write(
        &spec,
        r#"{"task": "classify", "input": {"width": 224, "height": 224, "layout": "nchw", "color": "rgb",
            "resize": {"kind": "resize_crop"}, "normalization": {"scale": 0.003921569, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225]}}}"#,
    )
    .expect("spec");
    let artifact = dir.path("model.onnx");
    std::fs::write(&artifact, b"not really onnx").expect("artifact");
    let manifest = dir.path("m.manifest.json");
    let key = dir.key("release");
    let sign = |extra: &[&str], expected| {
        let command = [
            "model",
            "sign",
            "--key",
            &key,
            "--model",
            &artifact,
            "--name",
            "sorter",
            "--version",
            "1",
            "--no-inspect",
            "--spec",
            &spec,
            "--out",
            &manifest,
        ];
        check_with(&command, extra, expected)
    };
    sign(&[], Err("--no-inspect needs"));
    sign(&["--labels", "ok,ng"], Ok("labels: ok, ng"));
    // A usage error is clap's: exit code 2 and the reason.
    let out = outpost(&[
        "model",
        "sign",
        "--key",
        &key,
        "--model",
        &artifact,
        "--name",
        "n",
        "--version",
        "1",
        "--expires",
        "soon",
        "--out",
        &manifest,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`soon` is not a duration"));
    let trusted = dir.public("release");
    check(
        &[
            "model",
            "verify",
            "--trusted",
            &trusted,
            "--manifest",
            &manifest,
            "--model",
            &artifact,
            "--family",
            "anything",
        ],
        Ok("family: any"),
    );
    // A world-readable secret key is refused.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.key("release"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        sign(&["--labels", "ok,ng"], Err("chmod 600"));
    }
}

#[test]
fn key_rotation() {
    let dir = Dir::new();
    for name in ["old1", "old2", "new"] {
        dir.keygen(name);
    }
    let rotation = dir.path("keyset-1.json");
    let rotate = |signers: &[&str], out: &str, expected| {
        let keys: Vec<String> = signers.iter().map(|s| dir.key(s)).collect();
        let sign_with: Vec<&str> = keys.iter().flat_map(|key| ["--sign-with", key.as_str()]).collect();
        let (new, old2) = (dir.public("new"), dir.public("old2"));
        let command = [
            "keys",
            "rotate",
            "--new-key",
            &new,
            "--new-threshold",
            "1",
            "--revoke",
            &old2,
            "--version",
            "1",
            "--out",
            out,
        ];
        check_with(&command, &sign_with, expected);
    };
    rotate(&["old1", "old2"], &rotation, Ok("key set version 1: 1 of 1 key(s) must sign"));
    let short = dir.path("keyset-short.json");
    rotate(&["old1"], &short, Ok("wrote"));

    let (old1, old2) = (dir.public("old1"), dir.public("old2"));
    let current = ["--trusted", old1.as_str(), "--trusted", old2.as_str(), "--threshold", "2"];
    let keys_verify = |keyset: &str, expected| check_with(&["keys", "verify", "--keyset", keyset], &current, expected);
    let out = keys_verify(&rotation, Ok("verified: key set version 1"));
    assert!(out.contains("revoked:"), "{out}");
    keys_verify(&short, Err("[rotation_not_authorized]"));

    // A model signed with the new key verifies for a device that trusts the old keys and applies the rotation.
    let artifact = dir.path("model.onnx");
    std::fs::write(&artifact, b"model bytes").expect("artifact");
    let spec = dir.path("spec.json");
    std::fs::write(
        &spec,
        r#"{"task":"detect","labels":["a"],"input":{"width":64,"height":64,"layout":"nchw","color":"rgb",
            "resize":{"kind":"stretch"},"normalization":{"scale":1.0,"mean":[0,0,0],"std":[1,1,1]}}}"#,
    )
    .expect("spec");
    for (signer, name) in [("new", "new.manifest.json"), ("old2", "old.manifest.json")] {
        check(
            &[
                "model",
                "sign",
                "--key",
                &dir.key(signer),
                "--model",
                &artifact,
                "--name",
                "m",
                "--version",
                "1",
                "--no-inspect",
                "--spec",
                &spec,
                "--out",
                &dir.path(name),
            ],
            Ok("signed"),
        );
    }
    let model_verify = |name: &str, expected| {
        let manifest = dir.path(name);
        let command = ["model", "verify", "--keyset", &rotation, "--manifest", &manifest, "--model", &artifact];
        check_with(&command, &current, expected);
    };
    model_verify("new.manifest.json", Ok("verified: m v1"));
    model_verify("old.manifest.json", Err("[revoked_key]"));
}
