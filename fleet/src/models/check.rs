//! The checks a pushed version passes before anything is stored, in order: the manifest verifies against the
//! fleet's trusted keys; the artifact's sha256 and length are the manifest's; the model loads and is the model the
//! manifest describes (the agent's own candidate checks, so the fleet refuses what a device would refuse); it runs
//! on a neutral frame and on every golden image with finite outputs and the expected labels.
//!
//! Blocking (ONNX Runtime): called on the blocking pool.

use outpost_common::manifest::{Floors, Policy, TrustedKeys, VerifiedManifest, verify_manifest};
use outpost_common::vision::engine::Runtime;
use outpost_common::vision::{VisionError, VisionOptions, candidate};
use time::OffsetDateTime;

use super::ModelError;
use super::golden::{self, GoldenSet};
use super::record::GoldenReport;

/// Verifies manifest bytes as the registry does: against the fleet's keys, at `now`, for any device family and with
/// no version floor (the registry's own version rule is checked against what it stores).
pub fn verify(envelope: &[u8], trusted: &TrustedKeys, now: OffsetDateTime) -> Result<VerifiedManifest, ModelError> {
    let floors = Floors::default();
    let policy = Policy { now, family: None, floors: &floors };
    Ok(verify_manifest(envelope, trusted, &policy)?)
}

/// Checks the artifact bytes against the verified manifest, then loads and runs the model.
pub fn check_model(
    rt: &Runtime,
    verified: &VerifiedManifest,
    artifact: &[u8],
    golden: &GoldenSet,
) -> Result<GoldenReport, ModelError> {
    verified.check_artifact_bytes(artifact)?;
    golden.validate(verified.manifest())?;
    let mut vision = candidate::load(rt, artifact, verified, VisionOptions::default())?;
    // A neutral frame first: a model that yields NaN or garbage is refused even without golden images.
    candidate::warm_up(&mut vision, &[])?;
    let mut report = GoldenReport::default();
    for image in &golden.images {
        let result = vision.infer_encoded(&image.bytes).map_err(|error| match error {
            VisionError::Decode(e) => {
                ModelError::BadGolden(format!("`{}` is not a usable JPEG or PNG: {e}", image.name))
            }
            error => ModelError::Golden {
                image: image.name.clone(),
                non_finite: error.kind() == "non_finite",
                reason: error.to_string(),
            },
        })?;
        if golden::judge(&image.name, golden.expected.get(&image.name), &result)? {
            report.labelled += 1;
        }
        report.images += 1;
    }
    Ok(report)
}
