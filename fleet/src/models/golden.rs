//! Golden images: a few frames a pushed model must run on with finite outputs, some with the label it must give.
//!
//! Format (docs/PROTOCOL.md, "Model registry"): images (JPEG or PNG) named by file name, and optionally a JSON object
//! mapping an image's name to what the model must say about it:
//!
//! ```json
//! {"00000.jpg": "stain", "00001.jpg": ["dent", "scratch"], "00002.jpg": []}
//! ```
//!
//! For a classifier the value is one label, the expected top-1 class. For a detector it is a label or a list of
//! labels that must each be among the detections (at the default thresholds); an empty list means no detection.
//! Images without an entry only have to run with finite outputs. On disk (`outpost model push --golden DIR`) the
//! images are DIR's `*.jpg`, `*.jpeg` and `*.png` files and the mapping is DIR/labels.json.
//!
//! Design: parsing and judging are pure; running the model is the caller's ([`super::check`]).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use outpost_common::manifest::Manifest;
use outpost_common::vision::FrameResult;
use outpost_common::vision::spec::Task;
use serde::Deserialize;

use super::ModelError;

/// The file name of the label mapping in a golden folder, and the multipart part that carries it.
pub const LABELS_FILE: &str = "labels.json";

/// One golden image as uploaded.
#[derive(Debug, Clone)]
pub struct GoldenImage {
    pub name: String,
    pub bytes: Bytes,
}

/// What the model must say about one image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Expected {
    One(String),
    All(Vec<String>),
}

impl Expected {
    fn labels(&self) -> &[String] {
        match self {
            Expected::One(label) => std::slice::from_ref(label),
            Expected::All(labels) => labels,
        }
    }
}

/// The golden images of a push and the labels expected of some of them.
#[derive(Debug, Clone, Default)]
pub struct GoldenSet {
    pub images: Vec<GoldenImage>,
    pub expected: BTreeMap<String, Expected>,
}

/// Whether `name` is acceptable as a golden image's name: a plain file name.
pub fn valid_image_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.chars().all(|c| !c.is_control())
}

/// Parses a label mapping (`labels.json`).
pub fn parse_labels(bytes: &[u8]) -> Result<BTreeMap<String, Expected>, ModelError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ModelError::BadGolden(format!("{LABELS_FILE} must map image names to a label or a list of labels: {e}"))
    })
}

impl GoldenSet {
    /// Checks the set against the manifest before anything runs: unique plain names, every mapping entry names an
    /// uploaded image, every expected label is one of the manifest's, a classifier expects exactly one label.
    pub fn validate(&self, manifest: &Manifest) -> Result<(), ModelError> {
        let mut names = BTreeSet::new();
        for image in &self.images {
            if !valid_image_name(&image.name) {
                return Err(ModelError::BadGolden(format!("`{}` is not a plain file name", image.name)));
            }
            if !names.insert(image.name.as_str()) {
                return Err(ModelError::BadGolden(format!("`{}` is uploaded twice", image.name)));
            }
        }
        for (name, expected) in &self.expected {
            if !names.contains(name.as_str()) {
                return Err(ModelError::BadGolden(format!("{LABELS_FILE} names `{name}`, which was not uploaded")));
            }
            if manifest.task == Task::Classify && expected.labels().len() != 1 {
                return Err(ModelError::BadGolden(format!(
                    "`{name}`: a classifier's golden image expects exactly one label (its top-1 class)"
                )));
            }
            if let Some(unknown) = expected.labels().iter().find(|l| !manifest.labels.contains(l)) {
                return Err(ModelError::BadGolden(format!(
                    "`{name}` expects `{unknown}`, which is not one of the manifest's labels"
                )));
            }
        }
        Ok(())
    }
}

/// Judges one image's result against its expectation. Returns whether the image had one.
pub fn judge(image: &str, expected: Option<&Expected>, result: &FrameResult) -> Result<bool, ModelError> {
    let Some(expected) = expected else { return Ok(false) };
    let mismatch =
        |expected: String, actual: String| Err(ModelError::GoldenLabel { image: image.to_string(), expected, actual });
    match result.task {
        Task::Classify => {
            let top = result.classes.first().map(|c| c.label.as_str());
            let want = expected.labels().first().map(String::as_str);
            if top != want {
                return mismatch(
                    format!("top-1 `{}`", want.unwrap_or_default()),
                    top.map_or_else(|| "no class".to_string(), |t| format!("`{t}`")),
                );
            }
        }
        Task::Detect => {
            let found: BTreeSet<&str> = result.detections.iter().map(|d| d.label.as_str()).collect();
            let describe = |found: &BTreeSet<&str>| {
                if found.is_empty() { "no detection".to_string() } else { format!("{found:?}") }
            };
            let labels = expected.labels();
            if labels.is_empty() && !found.is_empty() {
                return mismatch("no detection".into(), describe(&found));
            }
            if let Some(missing) = labels.iter().find(|l| !found.contains(l.as_str())) {
                return mismatch(format!("a `{missing}` detection"), describe(&found));
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use outpost_common::vision::confidence::Confidence;
    use outpost_common::vision::pipeline::{LabeledClass, LabeledDetection, Timings};

    use super::*;

    fn result(task: Task, labels: &[&str]) -> FrameResult {
        let detections = match task {
            Task::Detect => labels
                .iter()
                .enumerate()
                .map(|(i, l)| LabeledDetection { class: i, label: l.to_string(), score: 0.9, bbox: [0.0; 4] })
                .collect(),
            Task::Classify => Vec::new(),
        };
        let classes = match task {
            Task::Classify => labels
                .iter()
                .enumerate()
                .map(|(i, l)| LabeledClass { class: i, label: l.to_string(), score: 0.5 })
                .collect(),
            Task::Detect => Vec::new(),
        };
        let confidence = match task {
            Task::Classify => Confidence::Classify { top1: 0.5, margin: 0.1, entropy: 0.5 },
            Task::Detect => Confidence::Detect { max: None, mean: None, count: labels.len(), uncertain: 0 },
        };
        FrameResult { width: 1, height: 1, task, detections, classes, confidence, timings: Timings::default() }
    }

    fn check(task: Task, said: &[&str], expected: Option<Expected>, outcome: Result<bool, &str>) {
        let got = judge("a.jpg", expected.as_ref(), &result(task, said)).map_err(|e| e.to_string());
        match (got, outcome) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{said:?} vs {expected:?}"),
            (Err(e), Err(fragment)) => assert!(e.contains(fragment), "`{e}` lacks `{fragment}`"),
            (got, want) => panic!("{said:?} vs {expected:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn results_are_judged_by_task() {
        let one = |l: &str| Some(Expected::One(l.into()));
        let all = |l: &[&str]| Some(Expected::All(l.iter().map(|s| s.to_string()).collect()));
        check(Task::Classify, &["cat", "dog"], one("cat"), Ok(true));
        check(Task::Classify, &["dog", "cat"], one("cat"), Err("expected top-1 `cat`, the model said `dog`"));
        check(Task::Classify, &[], one("cat"), Err("no class"));
        check(Task::Classify, &["dog"], None, Ok(false));
        check(Task::Detect, &["stain", "dent"], one("dent"), Ok(true));
        check(Task::Detect, &["stain", "dent"], all(&["dent", "stain"]), Ok(true));
        check(Task::Detect, &["stain"], all(&["dent", "stain"]), Err("a `dent` detection"));
        check(Task::Detect, &[], all(&[]), Ok(true));
        check(Task::Detect, &["stain"], all(&[]), Err("expected no detection"));
        check(Task::Detect, &[], one("dent"), Err("no detection"));
    }

    #[test]
    fn sets_are_validated_against_the_manifest() {
        let image = |n: &str| GoldenImage { name: n.into(), bytes: Bytes::new() };
        let manifest = |task: Task| {
            let mut m: Manifest = serde_json::from_value(serde_json::json!({
                "schema": 1, "name": "m", "version": 1, "artifact": {"sha256": "00".repeat(32), "length": 1},
                "task": "detect",
                "input": {"width": 32, "height": 32, "layout": "nchw", "color": "rgb",
                    "resize": {"kind": "stretch"}, "normalization": {"scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}},
                "labels": ["a", "b"], "created_at": "2026-01-01T00:00:00Z", "expires_at": "2027-01-01T00:00:00Z"
            }))
            .expect("manifest");
            m.task = task;
            m
        };
        let set = |names: &[&str], labels: &str| GoldenSet {
            images: names.iter().map(|n| image(n)).collect(),
            expected: parse_labels(labels.as_bytes()).expect("labels"),
        };
        let cases: [(Task, GoldenSet, Option<&str>); 7] = [
            (Task::Detect, set(&["x.jpg", "y.png"], r#"{"x.jpg": ["a", "b"], "y.png": []}"#), None),
            (Task::Classify, set(&["x.jpg"], r#"{"x.jpg": "b"}"#), None),
            (Task::Classify, set(&["x.jpg"], r#"{"x.jpg": ["a", "b"]}"#), Some("exactly one label")),
            (Task::Detect, set(&["x.jpg"], r#"{"z.jpg": "a"}"#), Some("not uploaded")),
            (Task::Detect, set(&["x.jpg"], r#"{"x.jpg": "c"}"#), Some("not one of the manifest's labels")),
            (Task::Detect, set(&["x.jpg", "x.jpg"], "{}"), Some("twice")),
            (Task::Detect, set(&["../x.jpg"], "{}"), Some("plain file name")),
        ];
        for (task, set, fragment) in cases {
            match (set.validate(&manifest(task)), fragment) {
                (Ok(()), None) => {}
                (Err(e), Some(f)) => assert!(e.to_string().contains(f), "`{e}` lacks `{f}`"),
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
        assert!(parse_labels(b"[1]").is_err());
        assert!(parse_labels(br#"{"a": 3}"#).is_err());
    }
}
