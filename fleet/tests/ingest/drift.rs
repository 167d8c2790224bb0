//! Drift on the real defect model: window summaries built from its per-frame confidences on the normal validation
//! frames (`defect-val`), then on frames after a lighting change (`defect-drift`), fed through ingest as sealed
//! telemetry from two cameras at two sites.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use outpost_common::manifest::ConfidenceBaseline;
use outpost_common::protocol::{self, ConfidenceHistogram, Latency, ModelRef, Telemetry, TelemetryBody, WindowSummary};
use outpost_common::topics::DeviceId;
use outpost_common::vision::confidence::Confidence;
use outpost_common::vision::engine::Runtime;
use outpost_common::vision::{Vision, VisionOptions};
use outpost_fleet::drift::{AlertKind, BaselineSource, DriftAlert, DriftConfig, DriftGroup, DriftLevel};
use outpost_fleet::ingest::IngestConfig;

use super::support::{Fleet, model, t};

/// What the model made of one frame.
struct Scored {
    headline: Option<f32>,
    uncertain: bool,
    labels: Vec<String>,
    latency_ms: f32,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the bundled detector over each fixture set, in file order.
fn score(sets: &[&str]) -> Vec<Vec<Scored>> {
    let rt = Runtime::init(None).expect("ONNX Runtime");
    let bytes = std::fs::read(root().join("models/zoo/defect-yolo11n-320.onnx")).expect("model");
    let mut vision = Vision::load(rt, &bytes, VisionOptions::default()).expect("model loads");
    sets.iter()
        .map(|set| {
            let dir = root().join("tests/fixtures/images").join(set).join("images");
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(&dir).expect("fixtures").flatten().map(|e| e.path()).collect();
            files.sort();
            files
                .iter()
                .map(|f| {
                    let r = vision.infer_encoded(&std::fs::read(f).expect("frame")).expect("inference");
                    let uncertain = matches!(r.confidence, Confidence::Detect { uncertain, .. } if uncertain > 0);
                    let t = r.timings;
                    Scored {
                        headline: r.confidence.headline(),
                        uncertain,
                        labels: r.detections.iter().map(|d| d.label.clone()).collect(),
                        latency_ms: (t.preprocess + t.inference + t.postprocess) as f32,
                    }
                })
                .collect()
        })
        .collect()
}

fn histogram(frames: &[&Scored]) -> ConfidenceHistogram {
    let mut h = ConfidenceHistogram::default();
    for s in frames.iter().filter_map(|f| f.headline) {
        h.add(s);
    }
    h
}

/// One window summary as the agent would send it for these frames.
fn window(seq: u64, model: ModelRef, minute: i64, frames: &[&Scored]) -> Telemetry {
    let mut classes = BTreeMap::new();
    for label in frames.iter().flat_map(|f| &f.labels) {
        *classes.entry(label.clone()).or_insert(0u64) += 1;
    }
    let mut latencies: Vec<f32> = frames.iter().map(|f| f.latency_ms).collect();
    latencies.sort_by(f32::total_cmp);
    let pct = |p: f32| latencies[((latencies.len() - 1) as f32 * p).round() as usize];
    let summary = WindowSummary {
        start: t(minute),
        end: t(minute + 1),
        camera: "line-1".into(),
        model,
        frames: frames.len() as u64,
        drops: 0,
        confidence: histogram(frames),
        classes,
        latency_ms: Latency { p50: pct(0.5), p95: pct(0.95), p99: pct(0.99) },
        flagged: frames.iter().filter(|f| f.uncertain).count() as u64,
    };
    Telemetry { schema: protocol::SCHEMA, seq, body: TelemetryBody::Window(Box::new(summary)) }
}

/// A camera replaying a set of frames in a loop, one 7-frame window a minute (7 does not divide the sets, so each
/// sliding window holds a different mix of them).
struct Camera {
    id: DeviceId,
    seq: u64,
    next: usize,
}

const PER_WINDOW: usize = 7;

impl Camera {
    fn send(&mut self, fleet: &Fleet, model: ModelRef, minute: i64, frames: &[Scored]) -> Vec<DriftAlert> {
        let chunk: Vec<&Scored> = (0..PER_WINDOW).map(|i| &frames[(self.next + i) % frames.len()]).collect();
        self.next += PER_WINDOW;
        self.seq += 1;
        let got = fleet.send(&self.id, &window(self.seq, model, minute, &chunk), t(minute + 1));
        assert!(got.dropped().is_none(), "{got:?}");
        got.alerts
    }
}

fn raised_for<'a>(alerts: &'a [DriftAlert], group: &DriftGroup) -> Vec<&'a DriftAlert> {
    alerts.iter().filter(|a| &a.group == group && a.kind == AlertKind::Raised).collect()
}

#[test]
fn drifted_frames_raise_an_alert_for_their_version_and_group_and_normal_frames_do_not() {
    let scored = score(&["defect-val", "defect-drift"]);
    let (normal, drifted) = (&scored[0], &scored[1]);
    assert_eq!((normal.len(), drifted.len()), (80, 40));
    // Small numbers to suit 120 fixture frames: a baseline of 160 frames (every normal frame twice over, whichever
    // cameras contribute), a 10-minute sliding window (70 frames per camera) judged from 60 frames on. The
    // thresholds are the defaults (PSI 0.25 / 0.1, mean shift 0.1 / 0.05).
    let drift =
        DriftConfig { baseline_frames: 160, min_frames: 60, window_secs: 600, buckets: 10, ..Default::default() };
    let mut fleet = Fleet::new(IngestConfig { drift, ..IngestConfig::default() });
    let mut north = Camera { id: fleet.enroll("cam-n", &[("site", "north")]), seq: 0, next: 0 };
    let mut south = Camera { id: fleet.enroll("cam-s", &[("site", "south")]), seq: 0, next: 0 };
    let (north_group, south_group) = (DriftGroup::tag("site", "north"), DriftGroup::tag("site", "south"));

    // An hour of normal frames at both sites: baselines are learned, nothing is raised.
    let mut alerts = Vec::new();
    for minute in 0..60 {
        alerts.extend(north.send(&fleet, model(1), minute, normal));
        alerts.extend(south.send(&fleet, model(1), minute, normal));
    }
    assert!(alerts.is_empty(), "normal frames raised {alerts:?}");
    let statuses = fleet.ingest.drift_status(Some(&model(1)));
    assert_eq!(statuses.iter().map(|s| s.group.to_string()).collect::<Vec<_>>(), ["*", "site=north", "site=south"]);
    for s in &statuses {
        assert_eq!(s.baseline_source, BaselineSource::Learned, "{s:?}");
        let psi = s.psi.expect("judged");
        assert!(psi < 0.25 && s.level != Some(DriftLevel::Drift) && !s.alerting, "{}: psi {psi}", s.group);
    }

    // The lighting changes at the south site only.
    for minute in 60..80 {
        alerts.extend(north.send(&fleet, model(1), minute, normal));
        alerts.extend(south.send(&fleet, model(1), minute, drifted));
    }
    let south_alerts = raised_for(&alerts, &south_group);
    assert_eq!(south_alerts.len(), 1, "one alert, no flapping: {alerts:?}");
    let alert = south_alerts[0];
    assert_eq!((&alert.model, alert.baseline), (&model(1), BaselineSource::Learned));
    assert!(alert.psi >= 0.25 || alert.mean_shift.is_some_and(|m| m <= -0.1), "{alert:?}");
    assert!(alert.mean_shift.is_some_and(|m| m < 0.0), "the model is less confident: {alert:?}");
    assert!(alert.at > t(61) && alert.at <= t(80));
    assert!(raised_for(&alerts, &north_group).is_empty(), "north stayed normal: {alerts:?}");

    // Kept for the API, and across a fleet restart.
    let listed = fleet.ingest.drift_alerts(None, 100).expect("alerts");
    // (JSON keeps the floats to within a rounding step, so the alert is matched by what it is about.)
    let same =
        |a: &DriftAlert| (&a.model, &a.group, a.kind, a.at) == (&alert.model, &alert.group, alert.kind, alert.at);
    assert!(listed.iter().any(|a| same(&a.alert) && (a.alert.psi - alert.psi).abs() < 1e-9), "{listed:?}");
    fleet = fleet.restart();
    let after = fleet.ingest.drift_alerts(listed.last().map(|a| a.id), 100).expect("alerts");
    assert!(after.is_empty(), "ids continue after the listed ones");
    let status = |group: &DriftGroup| {
        let all = fleet.ingest.drift_status(Some(&model(1)));
        all.into_iter().find(|s| &s.group == group).expect("tracked")
    };
    let (s, n) = (status(&south_group), status(&north_group));
    assert!(s.alerting && s.since == Some(alert.at) && s.baseline_source == BaselineSource::Learned, "{s:?}");
    assert!(s.current.mean < s.baseline.mean && s.current.unscored * 2 > s.current.frames, "{s:?}");
    assert!(!n.alerting && n.psi.is_some_and(|p| p < 0.25), "{n:?}");

    // Version 2 ships with a reference baseline measured on the normal frames: judged against it from the start.
    let all_normal: Vec<&Scored> = normal.iter().collect();
    let reference = ConfidenceBaseline {
        frames: normal.len() as u64,
        histogram: histogram(&all_normal),
        flagged_rate: Some(normal.iter().filter(|f| f.uncertain).count() as f32 / normal.len() as f32),
    };
    fleet.ingest.set_drift_reference(&model(2), &reference).expect("reference stored");
    let mut east = Camera { id: fleet.enroll("cam-e", &[("site", "east")]), seq: 0, next: 0 };
    let mut alerts = Vec::new();
    for minute in 80..95 {
        alerts.extend(east.send(&fleet, model(2), minute, drifted));
    }
    let raised = raised_for(&alerts, &DriftGroup::tag("site", "east"));
    assert_eq!(raised.len(), 1, "{alerts:?}");
    assert_eq!((&raised[0].model, raised[0].baseline), (&model(2), BaselineSource::Reference));
    assert!(raised[0].baseline_flagged_share.is_some_and(|f| f > 0.0));
}
