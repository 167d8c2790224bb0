//! The README's first command, `outpost-fleet demo`, run as a newcomer runs it.

use std::process::Command;

#[test]
fn demo_runs_the_bundled_model_and_shows_the_drift() {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-fleet")).arg("demo").output().expect("demo starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    let row = |name: &str| -> Vec<f64> {
        let line = stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no `{name}` row: {stdout}"));
        line[name.len()..].split_whitespace().filter_map(|v| v.parse().ok()).collect()
    };
    let (normal, drift) = (row("normal line lighting"), row("after a lighting drift"));
    assert_eq!((normal[0], drift[0]), (80.0, 40.0), "every bundled frame is processed");
    assert!(drift[3] < normal[3], "confidence drops under the lighting drift: {stdout}");
    assert!(stdout.contains("Mean confidence fell by"), "{stdout}");
}
