//! A new model version, loaded beside the serving one and checked before it may serve: its inputs and outputs
//! against the signed manifest, then a warm-up on real frames whose outputs must all be usable (finite, decodable).
//! Only bytes whose hash the manifest vouches for reach this module: the agent's `update::artifact`, the fleet's
//! registry after checking the pushed artifact against its manifest. Shared, so the fleet refuses exactly what a
//! device would refuse.

use image::RgbImage;

use super::engine::Runtime;
use super::{Vision, VisionError, VisionOptions};
use crate::manifest::VerifiedManifest;

/// Why a candidate model was refused.
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    #[error("the model does not load: {0}")]
    Load(VisionError),
    #[error("the model does not match its manifest: {0}")]
    Mismatch(crate::manifest::VerifyError),
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

/// Loads `bytes` (already checked against the manifest's hash and length) and checks the model is the one the
/// verified manifest describes: task, input size and layout, classes ([`VerifiedManifest::check_spec`]).
pub fn load(
    rt: &Runtime,
    bytes: &[u8],
    verified: &VerifiedManifest,
    options: VisionOptions,
) -> Result<Vision, CandidateError> {
    let options = VisionOptions { hints: verified.manifest().spec_hints(), ..options };
    let vision = Vision::load(rt, bytes, options).map_err(CandidateError::Load)?;
    verified.check_spec(vision.spec()).map_err(CandidateError::Mismatch)?;
    Ok(vision)
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
