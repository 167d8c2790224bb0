//! `outpost-fleet demo`: the bundled model on the bundled frames, with the numbers the fleet watches.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use outpost_common::vision::engine::Runtime;
use outpost_common::vision::{Vision, VisionOptions};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The detector to run.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/zoo/defect-yolo11n-320.onnx"))]
    model: PathBuf,
    /// Folder with `defect-val/images` (normal frames) and `defect-drift/images` (after a lighting change).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/images"))]
    frames: PathBuf,
}

/// What one set of frames looked like to the model.
struct SetSummary {
    frames: usize,
    failed: usize,
    detections: usize,
    uncertain: usize,
    mean_confidence: f64,
    mean_ms: f64,
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading sample frames in {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "png"))
        .collect();
    files.sort();
    Ok(files)
}

fn run_set(vision: &mut Vision, files: &[PathBuf]) -> SetSummary {
    let mut s = SetSummary { frames: 0, failed: 0, detections: 0, uncertain: 0, mean_confidence: 0.0, mean_ms: 0.0 };
    let mut scored = 0usize;
    for path in files {
        let outcome = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| vision.infer_encoded(&b).map_err(|e| e.to_string()));
        match outcome {
            Ok(r) => {
                s.frames += 1;
                s.detections += r.detections.len();
                if let outpost_common::vision::confidence::Confidence::Detect { uncertain, .. } = r.confidence {
                    s.uncertain += uncertain;
                }
                if let Some(c) = r.confidence.headline() {
                    s.mean_confidence += f64::from(c);
                    scored += 1;
                }
                let t = r.timings;
                s.mean_ms += t.decode + t.preprocess + t.inference + t.postprocess;
            }
            Err(e) => {
                s.failed += 1;
                tracing::warn!(file = %path.display(), error = %e, "frame skipped");
            }
        }
    }
    s.mean_confidence /= scored.max(1) as f64;
    s.mean_ms /= s.frames.max(1) as f64;
    s
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let rt = Runtime::init(None)?;
    let bytes = std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let mut vision = Vision::load(rt, &bytes, VisionOptions::default())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let spec = vision.spec().clone();
    println!(
        "Outpost demo — {} ({} {}×{}, classes: {})",
        short(&args.model),
        spec.task.as_str(),
        spec.input.width,
        spec.input.height,
        spec.labels.join(", ")
    );
    println!("ONNX Runtime: {}\n", rt.library().display());
    println!(
        "{:<34} {:>6} {:>10} {:>10} {:>15} {:>9}",
        "frames", "count", "detections", "uncertain", "mean confidence", "ms/frame"
    );
    let mut rows = Vec::new();
    for (name, dir) in
        [("normal line lighting", "defect-val/images"), ("after a lighting drift", "defect-drift/images")]
    {
        let files = images_in(&args.frames.join(dir))?;
        let s = run_set(&mut vision, &files);
        println!(
            "{name:<34} {:>6} {:>10} {:>10} {:>15.3} {:>9.1}",
            s.frames, s.detections, s.uncertain, s.mean_confidence, s.mean_ms
        );
        rows.push(s);
    }
    if let [normal, drift] = rows.as_slice()
        && normal.mean_confidence > 0.0
    {
        let drop = 100.0 * (1.0 - drift.mean_confidence / normal.mean_confidence);
        println!(
            "\nMean confidence fell by {drop:.0}% after the lighting change: the signal Outpost's fleet watches per \
             model version to flag drift and queue the hard frames for annotation."
        );
        if normal.failed + drift.failed > 0 {
            println!("{} frames could not be read (see the log).", normal.failed + drift.failed);
        }
    }
    Ok(())
}

fn short(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}
