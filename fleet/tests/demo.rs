//! The README's first command, `outpost-fleet demo`, run as a newcomer runs it (bounded with `--seconds`): three
//! agents report to the fleet, and v2 of their model is pushed and rolled out to them in stages.

use std::process::Command;

#[test]
fn demo_runs_a_fleet_with_three_agents_rolls_out_v2_and_stops_cleanly() {
    // The rollout starts once the agents report v1 (a few seconds) and takes about 35 s: three stages of 10–12 s.
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-fleet"))
        .args(["demo", "--seconds", "70", "--port", "0"])
        .output()
        .expect("demo starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Outpost demo is running."), "{stdout}");
    assert!(stdout.contains("http://127.0.0.1:") && stdout.contains("/api/v1"), "the API URL is printed: {stdout}");
    assert!(stdout.contains("admin token:"), "{stdout}");
    for device in ["demo-cam-1", "demo-cam-2", "demo-cam-3"] {
        assert!(stdout.contains(device), "{device} in: {stdout}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The summary: every device's frames reached the fleet.
    for device in ["demo-cam-1", "demo-cam-2", "demo-cam-3"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(device) && l.contains("frames"))
            .unwrap_or_else(|| panic!("no summary line for {device}: {stdout}"));
        let frames: u64 = line.split_whitespace().rev().nth(3).and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(frames > 0, "{device} reported frames: {line}");
        // The rollout reached it: it ends on v2, as the fleet last heard from it.
        assert!(line.split_whitespace().any(|w| w == "v2"), "{device} runs v2: {line}");
    }
    // The stages went by one after the other, while the agents kept processing frames.
    let stages: Vec<&str> = stdout.lines().filter(|l| l.contains("rollout r1") && l.contains("started")).collect();
    assert_eq!(stages.len(), 3, "three stages: {stdout}");
    assert!(stdout.contains("Rollout r1 completed"), "{stdout}");
    assert!(stdout.contains("rollout r1: defect v2 completed"), "{stdout}");
}
