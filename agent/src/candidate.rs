//! A new model version, loaded beside the serving one and checked before it may serve: its inputs and outputs
//! against the signed manifest, then a warm-up on real frames whose outputs must all be usable (finite, decodable).
//! Only bytes whose hash the manifest vouches for reach this module (see `update::artifact`).

use image::RgbImage;
use outpost_common::manifest::Manifest;
use outpost_common::vision::engine::Runtime;
use outpost_common::vision::{Vision, VisionError, VisionOptions};

/// Why a candidate model was refused.
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    #[error("the model does not load: {0}")]
    Load(VisionError),
    #[error("the model does not match its manifest: {0}")]
    Mismatch(String),
    #[error("the model failed its warm-up on frame {frame}: {error}")]
    WarmUp { frame: usize, error: VisionError },
}

impl CandidateError {
    /// A short stable name for events.
    pub fn code(&self) -> &'static str {
        match self {
            CandidateError::Load(_) => "load_failed",
            CandidateError::Mismatch(_) => "spec_mismatch",
            CandidateError::WarmUp { .. } => "warm_up_failed",
        }
    }
}

/// Loads `bytes` (already verified against `manifest`) and checks the model is the one the manifest describes: same
/// task, input size and layout, and labels.
pub fn load(rt: &Runtime, bytes: &[u8], manifest: &Manifest, options: VisionOptions) -> Result<Vision, CandidateError> {
    let options = VisionOptions { hints: manifest.spec_hints(), ..options };
    let vision = Vision::load(rt, bytes, options).map_err(CandidateError::Load)?;
    check(&vision, manifest)?;
    Ok(vision)
}

/// Compares the model as resolved from its own graph and metadata with what the manifest declares.
pub fn check(vision: &Vision, manifest: &Manifest) -> Result<(), CandidateError> {
    let spec = vision.spec();
    let mismatch = |what: String| Err(CandidateError::Mismatch(what));
    if spec.task != manifest.task {
        return mismatch(format!("task {} where the manifest says {}", spec.task.as_str(), manifest.task.as_str()));
    }
    let (got, want) = (&spec.input, &manifest.input);
    if (got.width, got.height) != (want.width, want.height) {
        return mismatch(format!(
            "input {}×{} where the manifest says {}×{}",
            got.width, got.height, want.width, want.height
        ));
    }
    if got.layout != want.layout {
        return mismatch(format!("input layout {:?} where the manifest says {:?}", got.layout, want.layout));
    }
    if spec.labels.len() != manifest.labels.len() {
        return mismatch(format!("{} classes where the manifest lists {}", spec.labels.len(), manifest.labels.len()));
    }
    if let Some((i, (a, b))) = spec.labels.iter().zip(&manifest.labels).enumerate().find(|(_, (a, b))| a != b) {
        return mismatch(format!("class {i} is `{a}` where the manifest says `{b}`"));
    }
    Ok(())
}

/// Runs the model on `frames` (recent frames from its cameras, or a neutral frame when there are none yet); every
/// output must be usable. This also pays the first-run costs (allocations, kernel selection) before the swap.
pub fn warm_up(vision: &mut Vision, frames: &[RgbImage]) -> Result<(), CandidateError> {
    let neutral;
    let frames = if frames.is_empty() {
        let (w, h) = (vision.spec().input.width.max(1), vision.spec().input.height.max(1));
        neutral = [RgbImage::from_pixel(w, h, image::Rgb([114, 114, 114]))];
        &neutral[..]
    } else {
        frames
    };
    for (i, frame) in frames.iter().enumerate() {
        vision.infer_image(frame).map_err(|error| CandidateError::WarmUp { frame: i, error })?;
    }
    Ok(())
}
