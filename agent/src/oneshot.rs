//! One-shot commands: `infer` (run a model on files, JSON lines out) and `check-model`.
//!
//! Exit codes: 0 all images succeeded; 1 at least one image failed (its line says why, the rest go on);
//! 2 the model or ONNX Runtime could not be loaded (one line on stderr).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use outpost_common::vision::engine::{EngineOptions, Model, Runtime};
use outpost_common::vision::postprocess::DetectParams;
use outpost_common::vision::spec::{ModelSpec, SpecHints, TensorInfo};
use outpost_common::vision::{FrameResult, Vision, VisionOptions};
use serde::Serialize;

/// Where to find ONNX Runtime and how to run it.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Path to libonnxruntime.so (default: ORT_DYLIB_PATH, then lib/ next to the executable, then the build cache).
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Intra-op threads (0: one per physical core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// The ONNX model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Minimum detection score.
    #[arg(long, default_value_t = 0.25)]
    pub conf: f32,
    /// IoU threshold of non-maximum suppression.
    #[arg(long, default_value_t = 0.7)]
    pub iou: f32,
    /// Maximum detections per image.
    #[arg(long, default_value_t = 300)]
    pub max_det: usize,
    /// Classes reported per image by classifiers.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Image files (JPEG or PNG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

#[derive(Serialize)]
struct Line<'a> {
    image: &'a str,
    #[serde(flatten)]
    result: &'a FrameResult,
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    image: &'a str,
    error: ErrorBody,
}

#[derive(Serialize)]
struct ErrorBody {
    kind: &'static str,
    message: String,
}

#[derive(Serialize)]
struct CheckReport<'a> {
    #[serde(flatten)]
    spec: &'a ModelSpec,
    inputs: &'a [TensorInfo],
    outputs: &'a [TensorInfo],
    runtime: RuntimeReport,
}

#[derive(Serialize)]
struct RuntimeReport {
    library: String,
    found_by: String,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn engine_options(args: &RuntimeArgs) -> EngineOptions {
    EngineOptions { intra_threads: args.threads, ..EngineOptions::default() }
}

fn load(path: &Path, args: &RuntimeArgs) -> Result<(&'static Runtime, Model), String> {
    let rt = Runtime::init(args.ort_lib.as_deref()).map_err(|e| e.to_string())?;
    let model = Model::from_path(rt, path, &engine_options(args)).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((rt, model))
}

pub fn infer(args: &InferArgs) -> ExitCode {
    let (_, model) = match load(&args.model, &args.runtime) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let options = VisionOptions {
        engine: engine_options(&args.runtime),
        hints: SpecHints::default(),
        detect: DetectParams { conf: args.conf, iou: args.iou, max_det: args.max_det, ..DetectParams::default() },
        top_k: args.top_k,
        ..VisionOptions::default()
    };
    let mut vision = match Vision::from_model(model, options) {
        Ok(v) => v,
        Err(e) => return fail(format!("{}: {e}", args.model.display())),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0usize;
    for path in &args.images {
        let name = path.to_string_lossy();
        let outcome =
            std::fs::read(path).map_err(|e| ErrorBody { kind: "io", message: e.to_string() }).and_then(|bytes| {
                vision.infer_encoded(&bytes).map_err(|e| ErrorBody { kind: e.kind(), message: e.to_string() })
            });
        let line = match &outcome {
            Ok(result) => serde_json::to_string(&Line { image: &name, result }),
            Err(error) => {
                failed += 1;
                let error = ErrorBody { kind: error.kind, message: error.message.clone() };
                serde_json::to_string(&ErrorLine { image: &name, error })
            }
        };
        let written = line.map_err(std::io::Error::other).and_then(|l| writeln!(out, "{l}"));
        if written.is_err() {
            // stdout closed (e.g. piped into `head`): nothing more can be reported.
            return ExitCode::from(1);
        }
    }
    if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

pub fn check_model(path: &Path, args: &RuntimeArgs) -> ExitCode {
    let (rt, model) = match load(path, args) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let spec = match model.spec(&SpecHints::default()) {
        Ok(s) => s,
        Err(e) => return fail(format!("{}: model not understood: {e}", path.display())),
    };
    let report = CheckReport {
        spec: &spec,
        inputs: &model.info().inputs,
        outputs: &model.info().outputs,
        runtime: RuntimeReport { library: rt.library().display().to_string(), found_by: rt.source().to_string() },
    };
    match serde_json::to_string_pretty(&report) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
