//! The `outpost model` commands end to end.

use super::*;

fn outpost(fleet: &Fleet, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .env("OUTPOST_FLEET_URL", &fleet.base)
        .env("OUTPOST_TOKEN", token)
        .current_dir(fleet.dir.as_path())
        .output()
        .expect("outpost runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_signs_pushes_lists_shows_deprecates_and_deletes() {
    let fleet = start("");
    let operator = fleet.user("olga", "operator");
    let dir = fleet.dir.as_path();
    std::fs::write(dir.join("release.key"), key(1).to_pkcs8_pem().expect("pem")).expect("key");
    std::fs::write(dir.join("other.key"), key(2).to_pkcs8_pem().expect("pem")).expect("key");
    for name in ["release.key", "other.key"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let model = root().join(DETECTOR).display().to_string();
    for (key, out) in [("release.key", "good.manifest.json"), ("other.key", "untrusted.manifest.json")] {
        let (ok, _, err) = outpost(
            &fleet,
            &operator,
            &["model", "sign", "--key", key, "--model", &model, "--name", "defect", "--version", "4", "--out", out],
        );
        assert!(ok, "{err}");
    }
    let golden = dir.join("golden");
    std::fs::create_dir_all(&golden).expect("dir");
    for name in ["00000.jpg", "00001.jpg"] {
        std::fs::write(golden.join(name), golden_image(name).1).expect("image");
    }
    std::fs::write(golden.join("labels.json"), r#"{"00000.jpg": "dent"}"#).expect("labels");

    let push = |manifest: &str| {
        outpost(&fleet, &operator, &["model", "push", &model, "--manifest", manifest, "--golden", "golden"])
    };
    let (ok, _, err) = push("untrusted.manifest.json");
    assert!(!ok && err.contains("unknown_key") && err.lines().count() == 1, "{err}");
    let (ok, _, err) = push("good.manifest.json");
    assert!(!ok && err.contains("golden_mismatch") && err.contains("00000.jpg"), "{err}");
    std::fs::write(golden.join("labels.json"), r#"{"00000.jpg": "stain", "00001.jpg": "dent"}"#).expect("labels");
    let (ok, out, err) = push("good.manifest.json");
    assert!(ok, "{err}");
    assert!(out.starts_with("stored: defect v4") && out.contains("golden images: 2 (2 with expected labels)"), "{out}");
    let (ok, out, _) = push("good.manifest.json");
    assert!(ok && out.starts_with("already stored"), "{out}");

    let (ok, out, err) = outpost(&fleet, &operator, &["model", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.lines().nth(1).is_some_and(|l| l.starts_with("defect") && l.contains(" 4 ") && l.ends_with("active")),
        "{out}"
    );
    let (ok, out, _) = outpost(&fleet, &operator, &["model", "list", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&out).expect("json list");
    assert!(ok && list.len() == 1 && list[0]["version"] == 4, "{out}");
    let (ok, out, _) = outpost(&fleet, &operator, &["model", "show", "defect", "4"]);
    assert!(ok && out.contains("artifact: sha256") && out.contains("/api/v1/models/defect/4/artifact"), "{out}");
    let (ok, out, _) =
        outpost(&fleet, &operator, &["model", "deprecate", "defect", "4", "--reason", "too slow", "--json"]);
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert!(ok && shown["deprecated"]["reason"] == "too slow", "{out}");
    let (ok, _, err) = outpost(&fleet, &operator, &["model", "delete", "defect", "4"]);
    assert!(!ok && err.contains("403"), "operators do not delete: {err}");
    let (ok, out, err) = outpost(&fleet, &fleet.admin, &["model", "delete", "defect", "4"]);
    assert!(ok && out.contains("deleted defect v4"), "{err}");
    let (ok, _, err) = outpost(&fleet, &operator, &["model", "show", "defect", "4"]);
    assert!(!ok && err.contains("not_found"), "{err}");
}
