//! The gates of a stage: install, quality, latency and drift, judged on the stage's devices (canary) against the
//! targeted devices still on their previous version (control) over the same period. Pure: the figures come in,
//! a verdict with everything that led to it comes out (the status view shows it as is).

use serde::{Deserialize, Serialize};

use super::plan::{Gates, StagePlan};
use super::stats::{self, Shift};

/// One telemetry window of the rolled-out model, reduced to what the gates compare.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowPoint {
    pub device: String,
    pub frames: u64,
    /// The window's mean confidence; `None` for a window without frames.
    pub mean_confidence: Option<f64>,
    /// Flagged frames ÷ frames.
    pub flagged_share: f64,
    pub p95_ms: f64,
}

/// Where the control figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlKind {
    /// Targeted devices not yet in a stage, over the same period.
    Concurrent,
    /// No device is left on the previous version (the last stage): the stage's devices themselves, over an equally
    /// long period before the stage started.
    BeforeAfter,
}

/// The telemetry a stage is judged on, gathered by the engine from the ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub canary: Vec<WindowPoint>,
    pub control: Vec<WindowPoint>,
    pub control_kind: ControlKind,
    /// An active drift alert on the new version, described.
    pub drift_alert: Option<String>,
}

/// Install progress of the devices assigned so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallCounts {
    pub devices: u32,
    pub committed: u32,
    pub failed: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Wait(String),
    Fail(String),
}

/// Mean and count of one side's windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Side {
    pub windows: u32,
    pub devices: u32,
    pub frames: u64,
    pub mean_confidence: Option<f64>,
    pub flagged_share: Option<f64>,
    /// Frame-weighted mean of the windows' p95 latency.
    pub p95_ms: Option<f64>,
}

/// Everything a stage evaluation looked at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    pub verdict: Verdict,
    pub install: InstallCounts,
    pub canary: Side,
    pub control: Side,
    pub control_kind: ControlKind,
    /// The confidence drop test (control − canary against the margin).
    pub confidence: Option<Shift>,
    /// The flagged-share rise test (canary − control against the margin).
    pub flagged: Option<Shift>,
    /// canary p95 ÷ control p95.
    pub latency_factor: Option<f64>,
    pub drift_alert: Option<String>,
    /// Why the stage is not promoted yet, besides the verdict's first reason.
    pub waiting_for: Vec<String>,
}

fn side(points: &[WindowPoint]) -> Side {
    let frames: u64 = points.iter().map(|p| p.frames).sum();
    let mut devices: Vec<&str> = points.iter().map(|p| p.device.as_str()).collect();
    devices.sort_unstable();
    devices.dedup();
    let weighted = |f: &dyn Fn(&WindowPoint) -> Option<f64>| {
        let (sum, weight) = points
            .iter()
            .filter_map(|p| f(p).filter(|v| v.is_finite()).map(|v| (v * p.frames as f64, p.frames as f64)))
            .fold((0.0, 0.0), |(s, w), (v, f)| (s + v, w + f));
        (weight > 0.0).then(|| sum / weight)
    };
    Side {
        windows: u32::try_from(points.len()).unwrap_or(u32::MAX),
        devices: u32::try_from(devices.len()).unwrap_or(u32::MAX),
        frames,
        mean_confidence: weighted(&|p| p.mean_confidence),
        flagged_share: weighted(&|p| Some(p.flagged_share)),
        p95_ms: weighted(&|p| Some(p.p95_ms)),
    }
}

fn values(points: &[WindowPoint], f: impl Fn(&WindowPoint) -> Option<f64>) -> Vec<f64> {
    points.iter().filter(|p| p.frames > 0).filter_map(f).filter(|v| v.is_finite()).collect()
}

/// Judges a stage. `dwell_done`: the stage's minimum dwell time has passed.
pub fn evaluate(
    gates: &Gates,
    stage: &StagePlan,
    install: InstallCounts,
    telemetry: &Telemetry,
    dwell_done: bool,
) -> GateReport {
    let canary = side(&telemetry.canary);
    let control = side(&telemetry.control);
    let q = &gates.quality;
    let min_windows = q.min_windows as usize;
    let judged = |a: &[f64], b: &[f64]| a.len() >= min_windows && b.len() >= min_windows;

    let control_conf = values(&telemetry.control, |p| p.mean_confidence);
    let canary_conf = values(&telemetry.canary, |p| p.mean_confidence);
    let confidence = judged(&control_conf, &canary_conf)
        .then(|| stats::drop_beyond_margin(&control_conf, &canary_conf, q.max_confidence_drop, q.alpha))
        .flatten();
    // A rise in the flagged share is a drop of its negation.
    let control_flag = values(&telemetry.control, |p| Some(-p.flagged_share));
    let canary_flag = values(&telemetry.canary, |p| Some(-p.flagged_share));
    let flagged = judged(&control_flag, &canary_flag)
        .then(|| stats::drop_beyond_margin(&control_flag, &canary_flag, q.max_flagged_increase, q.alpha))
        .flatten();
    let latency_factor = match (canary.p95_ms, control.p95_ms) {
        (Some(a), Some(b)) if b > 0.0 && judged(&canary_conf, &control_conf) => Some(a / b),
        _ => None,
    };

    let mut failures = Vec::new();
    let i = &gates.install;
    let executed = install.committed + install.failed;
    if executed >= i.min_executed.max(1) && f64::from(install.failed) > i.max_failed * f64::from(executed) {
        failures.push(format!(
            "install: {} of {} devices that finished failed (more than {:.0}%)",
            install.failed,
            executed,
            i.max_failed * 100.0
        ));
    }
    let best_share =
        f64::from(install.devices - install.failed.min(install.devices)) / f64::from(install.devices.max(1));
    if install.devices > 0 && best_share < i.min_committed {
        failures.push(format!(
            "install: {} of {} devices failed, so at most {:.0}% can commit ({:.0}% needed)",
            install.failed,
            install.devices,
            best_share * 100.0,
            i.min_committed * 100.0
        ));
    }
    if let Some(s) = confidence.filter(|s| s.significant) {
        failures.push(format!(
            "quality: mean confidence {:.3} below control (margin {:.3}, t = {:.2} > {:.2})",
            s.difference, q.max_confidence_drop, s.t, s.critical
        ));
    }
    if let Some(s) = flagged.filter(|s| s.significant) {
        failures.push(format!(
            "quality: flagged share {:.3} above control (margin {:.3}, t = {:.2} > {:.2})",
            -s.difference, q.max_flagged_increase, s.t, s.critical
        ));
    }
    if let Some(f) = latency_factor.filter(|f| *f > gates.latency.max_p95_factor) {
        failures.push(format!("latency: p95 is {f:.2}× control's (at most {:.2}×)", gates.latency.max_p95_factor));
    }
    if gates.drift
        && let Some(alert) = &telemetry.drift_alert
    {
        failures.push(format!("drift: {alert}"));
    }

    let mut waiting = Vec::new();
    if !dwell_done {
        waiting.push(format!("the stage's minimum dwell of {} s", stage.min_dwell_secs));
    }
    let needed = (i.min_committed * f64::from(install.devices) - 1e-9).ceil().max(0.0) as u32;
    if install.committed < needed {
        waiting.push(format!("{} of {} devices committed ({} needed)", install.committed, install.devices, needed));
    }
    if canary.devices < stage.min_reporting {
        waiting.push(format!("{} of {} devices reporting on the new version", canary.devices, stage.min_reporting));
    }
    // The last stage of a rollout whose devices never reported the previous version has nothing to compare with:
    // the earlier stages judged quality; this one needs its own windows only.
    let no_control = telemetry.control_kind == ControlKind::BeforeAfter && telemetry.control.is_empty();
    if no_control {
        if canary_conf.len() < min_windows {
            waiting.push(format!("{} canary windows ({min_windows} needed)", canary_conf.len()));
        }
    } else if confidence.is_none() {
        waiting.push(format!(
            "{} canary and {} control windows ({} each needed)",
            canary_conf.len(),
            control_conf.len(),
            min_windows
        ));
    }

    let verdict = match (failures.first(), waiting.first()) {
        (Some(f), _) => Verdict::Fail(f.clone()),
        (None, Some(w)) => Verdict::Wait(w.clone()),
        (None, None) => Verdict::Pass,
    };
    GateReport {
        verdict,
        install,
        canary,
        control,
        control_kind: telemetry.control_kind,
        confidence,
        flagged,
        latency_factor,
        drift_alert: telemetry.drift_alert.clone(),
        waiting_for: waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::plan::StageSize;

    fn stage() -> StagePlan {
        StagePlan { size: StageSize::Devices(2), min_dwell_secs: 60, min_reporting: 2, approval: false }
    }

    fn windows(device: &str, n: usize, mean: f64, spread: f64) -> Vec<WindowPoint> {
        (0..n)
            .map(|i| WindowPoint {
                device: device.into(),
                frames: 50,
                // A deterministic zig-zag around the mean.
                mean_confidence: Some(mean + spread * if i % 2 == 0 { 1.0 } else { -1.0 } * ((i % 5) as f64 / 4.0)),
                flagged_share: 0.1,
                p95_ms: 20.0,
            })
            .collect()
    }

    fn telemetry(canary: Vec<WindowPoint>, control: Vec<WindowPoint>) -> Telemetry {
        Telemetry { canary, control, control_kind: ControlKind::Concurrent, drift_alert: None }
    }

    const INSTALLED: InstallCounts = InstallCounts { devices: 2, committed: 2, failed: 0 };

    #[test]
    fn noise_within_the_margin_passes() {
        let canary = [windows("a", 10, 0.78, 0.03), windows("b", 10, 0.79, 0.03)].concat();
        let control = [windows("c", 10, 0.80, 0.03), windows("d", 10, 0.80, 0.03)].concat();
        let r = evaluate(&Gates::default(), &stage(), INSTALLED, &telemetry(canary, control), true);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
    }

    #[test]
    fn a_real_confidence_drop_fails() {
        let canary = [windows("a", 10, 0.55, 0.03), windows("b", 10, 0.56, 0.03)].concat();
        let control = [windows("c", 10, 0.80, 0.03), windows("d", 10, 0.80, 0.03)].concat();
        let r = evaluate(&Gates::default(), &stage(), INSTALLED, &telemetry(canary, control), false);
        match &r.verdict {
            Verdict::Fail(reason) => assert!(reason.starts_with("quality: mean confidence"), "{reason}"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn too_few_devices_or_windows_waits() {
        let canary = windows("a", 10, 0.80, 0.01);
        let control = windows("c", 10, 0.80, 0.01);
        let r = evaluate(&Gates::default(), &stage(), INSTALLED, &telemetry(canary, control.clone()), true);
        assert!(matches!(&r.verdict, Verdict::Wait(w) if w.contains("1 of 2 devices reporting")), "{r:?}");
        // Two devices, but only three windows each side: not judged yet, even though the canary looks terrible.
        let canary = [windows("a", 2, 0.2, 0.0), windows("b", 1, 0.2, 0.0)].concat();
        let r = evaluate(&Gates::default(), &stage(), INSTALLED, &telemetry(canary, control[..3].to_vec()), true);
        assert!(matches!(&r.verdict, Verdict::Wait(w) if w.contains("windows")), "{r:?}");
        assert!(r.confidence.is_none());
    }

    #[test]
    fn install_failures_abort_only_after_the_minimum_executed() {
        let ok = || telemetry(windows("a", 10, 0.8, 0.01), windows("c", 10, 0.8, 0.01));
        let mut gates = Gates::default();
        gates.install.min_executed = 3;
        gates.install.min_committed = 0.5;
        let big = StagePlan { size: StageSize::Devices(10), ..stage() };
        // One failure out of one finished, ten devices: below the minimum executed, and most can still commit.
        let r = evaluate(&gates, &big, InstallCounts { devices: 10, committed: 0, failed: 1 }, &ok(), true);
        assert!(matches!(r.verdict, Verdict::Wait(_)), "{r:?}");
        // Three failures out of three finished: abort.
        let r = evaluate(&gates, &big, InstallCounts { devices: 10, committed: 0, failed: 3 }, &ok(), true);
        assert!(matches!(&r.verdict, Verdict::Fail(f) if f.starts_with("install: 3 of 3")), "{r:?}");
        // A single canary that failed can never reach the committed share: abort at once.
        let one = StagePlan { size: StageSize::Devices(1), min_reporting: 1, ..stage() };
        let r = evaluate(&Gates::default(), &one, InstallCounts { devices: 1, committed: 0, failed: 1 }, &ok(), true);
        assert!(matches!(&r.verdict, Verdict::Fail(f) if f.contains("at most 0%")), "{r:?}");
    }

    #[test]
    fn slower_and_drifting_versions_fail() {
        let mut canary = [windows("a", 10, 0.8, 0.01), windows("b", 10, 0.8, 0.01)].concat();
        for w in &mut canary {
            w.p95_ms = 45.0;
        }
        let control = [windows("c", 10, 0.8, 0.01), windows("d", 10, 0.8, 0.01)].concat();
        let r = evaluate(&Gates::default(), &stage(), INSTALLED, &telemetry(canary.clone(), control.clone()), true);
        assert!(matches!(&r.verdict, Verdict::Fail(f) if f.starts_with("latency")), "{r:?}");
        for w in &mut canary {
            w.p95_ms = 21.0;
        }
        let mut t = telemetry(canary, control);
        t.drift_alert = Some("psi 0.4 for site=a".into());
        let r = evaluate(&Gates::default(), &stage(), INSTALLED, &t, true);
        assert!(matches!(&r.verdict, Verdict::Fail(f) if f.starts_with("drift")), "{r:?}");
    }

    #[test]
    fn more_flagged_frames_fail() {
        let mut canary = [windows("a", 10, 0.8, 0.01), windows("b", 10, 0.8, 0.01)].concat();
        for (i, w) in canary.iter_mut().enumerate() {
            w.flagged_share = 0.4 + 0.01 * (i % 3) as f64;
        }
        let control = [windows("c", 10, 0.8, 0.01), windows("d", 10, 0.8, 0.01)].concat();
        let r = evaluate(&Gates::default(), &stage(), INSTALLED, &telemetry(canary, control), true);
        assert!(matches!(&r.verdict, Verdict::Fail(f) if f.starts_with("quality: flagged")), "{r:?}");
    }

    #[test]
    fn a_last_stage_without_any_control_needs_only_its_own_windows() {
        let canary = [windows("a", 3, 0.8, 0.01), windows("b", 3, 0.8, 0.01)].concat();
        let mut t = telemetry(canary, Vec::new());
        t.control_kind = ControlKind::BeforeAfter;
        let r = evaluate(&Gates::default(), &stage(), INSTALLED, &t, true);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        t.control_kind = ControlKind::Concurrent;
        let r = evaluate(&Gates::default(), &stage(), INSTALLED, &t, true);
        assert!(matches!(r.verdict, Verdict::Wait(_)), "{r:?}");
    }
}
