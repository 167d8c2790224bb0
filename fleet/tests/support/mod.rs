//! What the fleet's sample, queue and export tests share: a fleet in a temp dir, the defect fixtures (real JPEGs
//! with their ground-truth boxes) and real `SampleMeta` values built the way the agent builds them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::{FlagReason, ModelRef, Prediction, SampleMeta};
use outpost_common::store::SledStore;
use outpost_common::vision::confidence::{self, Confidence, UncertaintyBand};
use outpost_common::vision::postprocess::Detection;
use outpost_fleet::annotate::{BoxLabel, Label, Queue, QueueConfig, StaticCatalog};
use outpost_fleet::samples::{IntakeLimits, Samples, Stored, Upload, local_dir};
use time::OffsetDateTime;
use time::macros::datetime;

pub const T0: OffsetDateTime = datetime!(2026-11-21 10:00 UTC);
pub const NAMES: [&str; 3] = ["scratch", "dent", "stain"];
pub const DETECTOR: &str = "defect";
pub const CLASSIFIER: &str = "defect-cls";

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images/defect-val")
}

/// One fixture frame: its bytes and its ground-truth boxes in pixels, `(class, [x1, y1, x2, y2])`.
#[derive(Debug, Clone)]
pub struct Frame {
    pub name: String,
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub truth: Vec<(usize, [f32; 4])>,
}

impl Frame {
    pub fn sha(&self) -> Sha256Sum {
        Sha256Sum::of(&self.bytes)
    }

    /// The ground truth as a detector label.
    pub fn label(&self) -> Label {
        Label::Detect {
            boxes: self.truth.iter().map(|(c, b)| BoxLabel { class: NAMES[*c].to_string(), bbox: *b }).collect(),
        }
    }
}

/// The first `n` fixture frames (320×320 JPEGs) with their YOLO labels read back into pixels.
pub fn frames(n: usize) -> Vec<Frame> {
    let dir = fixtures_dir();
    let mut names: Vec<String> = std::fs::read_dir(dir.join("images"))
        .expect("fixtures")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".jpg"))
        .collect();
    names.sort();
    names
        .into_iter()
        .take(n)
        .map(|name| {
            let bytes = std::fs::read(dir.join("images").join(&name)).expect("image");
            let (width, height) = outpost_common::vision::decode::dimensions(&bytes).expect("dimensions");
            let stem = name.trim_end_matches(".jpg");
            let text = std::fs::read_to_string(dir.join("labels").join(format!("{stem}.txt"))).unwrap_or_default();
            let (w, h) = (width as f32, height as f32);
            let truth = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|line| {
                    let v: Vec<f32> = line.split_whitespace().map(|x| x.parse().expect("number")).collect();
                    let (cx, cy, bw, bh) = (v[1] * w, v[2] * h, v[3] * w, v[4] * h);
                    let clamp = |x: f32, max: f32| x.clamp(0.0, max);
                    let bbox = [
                        clamp(cx - bw / 2.0, w),
                        clamp(cy - bh / 2.0, h),
                        clamp(cx + bw / 2.0, w),
                        clamp(cy + bh / 2.0, h),
                    ];
                    (v[0] as usize, bbox)
                })
                .collect();
            Frame { name, bytes, width, height, truth }
        })
        .collect()
}

/// A detector's meta for `frame`: the ground-truth boxes as predictions scored `score`, summarised as the agent does.
pub fn detector_meta(frame: &Frame, device: &str, score: f32) -> SampleMeta {
    let detections: Vec<Detection> =
        frame.truth.iter().map(|(c, b)| Detection { class: *c, score, bbox: *b }).collect();
    let predictions = detections
        .iter()
        .map(|d| Prediction { class: d.class as u32, label: NAMES[d.class].into(), score: d.score, bbox: Some(d.bbox) })
        .collect();
    meta(frame, device, DETECTOR, confidence::of_detections(&detections, &UncertaintyBand::default()), predictions)
}

/// A classifier's meta for `frame`: `top` is the top-1 class with probability `p`.
pub fn classifier_meta(frame: &Frame, device: &str, top: usize, p: f32) -> SampleMeta {
    let rest = (1.0 - p) / 2.0;
    let mut probs = [rest; 3];
    probs[top] = p;
    let predictions = vec![Prediction { class: top as u32, label: NAMES[top].into(), score: p, bbox: None }];
    meta(frame, device, CLASSIFIER, confidence::of_probabilities(&probs), predictions)
}

pub fn meta(
    frame: &Frame,
    device: &str,
    model: &str,
    confidence: Confidence,
    predictions: Vec<Prediction>,
) -> SampleMeta {
    SampleMeta {
        schema: 1,
        sample: frame.sha(),
        device: device.into(),
        camera: "line-3".into(),
        model: ModelRef { name: model.into(), version: 7 },
        captured_at: T0,
        reason: FlagReason::LowConfidence,
        confidence,
        predictions,
        width: frame.width,
        height: frame.height,
        content_type: "image/jpeg".into(),
    }
}

/// A fleet's sample store and queue in a temp dir.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub store: Arc<SledStore>,
    pub samples: Samples,
    pub queue: Queue,
}

pub fn catalog() -> StaticCatalog {
    let mut catalog = StaticCatalog::default();
    let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    catalog.labels.insert(DETECTOR.into(), names.clone());
    catalog.labels.insert(CLASSIFIER.into(), names);
    for (device, site) in [("press-1", "plant-a"), ("press-2", "plant-a"), ("press-3", "plant-b")] {
        catalog.sites.insert(device.into(), site.into());
    }
    catalog
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet::with(IntakeLimits::default(), QueueConfig::default())
    }

    pub fn with(limits: IntakeLimits, config: QueueConfig) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(&dir.path().join("state")).expect("store");
        let blobs = local_dir(&dir.path().join("blobs")).expect("blobs");
        let samples = Samples::new(store.clone(), blobs, limits);
        let queue = Queue::new(samples.clone(), Arc::new(catalog()), config);
        Fleet { dir, store, samples, queue }
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.dir.path().join("blobs")
    }

    /// Uploads `image` with `meta` as `device`, exactly as the HTTP layer would hand it over.
    pub async fn upload_as(
        &self,
        device: &str,
        path_sha: &str,
        meta: &SampleMeta,
        image: &[u8],
    ) -> Result<Stored, outpost_fleet::samples::SampleError> {
        let meta = serde_json::to_vec(meta).expect("meta json");
        self.samples.ingest(Upload { sample: path_sha, device, meta: &meta, image }, T0).await
    }

    pub async fn upload(&self, frame: &Frame, meta: &SampleMeta) -> Stored {
        self.upload_as(&meta.device, &frame.sha().to_string(), meta, &frame.bytes).await.expect("upload")
    }
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).expect("under root").to_string_lossy().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
