//! What serves where: each model name's cameras (their pipelines), the version active on them, and the state the
//! frame consumer shares with the updater (trials under way, each camera's latest frame for warm-ups).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use image::RgbImage;
use outpost_common::manifest::{Policy, TrustedKeys, VerifiedManifest};
use outpost_common::protocol::{ModelRef, ServedModel};
use outpost_common::vision::engine::Runtime;
use outpost_common::vision::{Vision, VisionOptions};
use time::OffsetDateTime;

use crate::candidate;
use crate::pipeline::Pipeline;
use crate::trial::Trial;
use crate::update::{Reverted, SlotStore};

/// State shared by the frame consumer (which feeds it) and the updater (which reads it).
#[derive(Debug, Default)]
pub struct Shared {
    /// Models in their health window, by version.
    pub trials: Mutex<BTreeMap<ModelRef, Trial>>,
    /// Each camera's most recent decoded frame, for warming up a new model on what the camera really sees.
    pub last_frames: Mutex<BTreeMap<String, RgbImage>>,
}

impl Shared {
    pub fn lock_trials(&self) -> std::sync::MutexGuard<'_, BTreeMap<ModelRef, Trial>> {
        self.trials.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn last_frames(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RgbImage>> {
        self.last_frames.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One model name as served: the cameras running it and what is active.
#[derive(Debug)]
pub struct Serving {
    pub name: String,
    pub options: VisionOptions,
    pub cameras: Vec<(String, Arc<Pipeline>)>,
    pub active: u64,
    pub previous: Option<u64>,
    pub committed: bool,
    /// The configured model (unsigned, from `[[models]] path`), the fallback when no installed version serves.
    pub configured: ModelRef,
    pub configured_path: std::path::PathBuf,
}

impl Serving {
    pub fn active_ref(&self) -> ModelRef {
        ModelRef { name: self.name.clone(), version: self.active }
    }

    pub fn status(&self) -> ServedModel {
        ServedModel { name: self.name.clone(), active: self.active, previous: self.previous, committed: self.committed }
    }
}

/// What to load for one model name at start-up.
#[derive(Debug)]
pub struct Chosen {
    pub model: ModelRef,
    /// The verified manifest of an installed version; `None` for the configured model.
    pub verified: Option<VerifiedManifest>,
    pub bytes: Vec<u8>,
    pub previous: Option<u64>,
    pub committed: bool,
    /// Reverts made while choosing (a trial started too often, an installed version that no longer verifies).
    pub reverted: Vec<Reverted>,
}

/// Inputs to [`choose`].
#[derive(Debug)]
pub struct Choice<'a> {
    pub slots: &'a SlotStore,
    pub trusted: Option<&'a TrustedKeys>,
    pub family: &'a str,
    pub floors: &'a outpost_common::manifest::Floors,
    pub configured: &'a crate::config::ModelConfig,
}

/// Picks the version of `configured.name` to serve after a (re)start: the installed version the slot store names
/// (after counting this start of an uncommitted one), verified again — signature, family, floor, and the file's
/// hash — or, failing that, the previous one, and finally the configured model file.
pub fn choose(c: &Choice<'_>) -> anyhow::Result<Chosen> {
    use anyhow::Context as _;
    let name = &c.configured.name;
    let mut reverted = Vec::new();
    for _ in 0..4 {
        let start =
            c.slots.on_start(name).with_context(|| format!("model `{name}`: reading its installed versions"))?;
        reverted.extend(start.reverted.iter().cloned());
        let Some(slot) = start.serve else { break };
        match load_slot(&slot, c) {
            Ok((verified, bytes)) => {
                let record = c.slots.record(name).ok();
                return Ok(Chosen {
                    model: ModelRef { name: name.clone(), version: slot.version },
                    verified: Some(verified),
                    bytes,
                    previous: record.and_then(|r| r.previous),
                    committed: start.committed,
                    reverted,
                });
            }
            Err(reason) => {
                tracing::error!(model = %name, version = slot.version, reason = %reason, "installed version unusable; reverting");
                let r = c
                    .slots
                    .revert(name, slot.version, &reason)
                    .with_context(|| format!("model `{name}`: reverting"))?;
                reverted.push(r);
            }
        }
    }
    let path = &c.configured.path;
    let bytes = std::fs::read(path).with_context(|| format!("reading model {}", path.display()))?;
    Ok(Chosen {
        model: ModelRef { name: name.clone(), version: c.configured.version },
        verified: None,
        bytes,
        previous: None,
        committed: true,
        reverted,
    })
}

/// An installed slot's manifest verified again and its file checked against it.
fn load_slot(slot: &crate::update::Slot, c: &Choice<'_>) -> Result<(VerifiedManifest, Vec<u8>), String> {
    let trusted = c.trusted.ok_or("no trusted keys are configured, so installed versions cannot be verified")?;
    let envelope = slot.envelope_bytes().map_err(|e| e.to_string())?;
    // Expiry guards installation, not serving: a version verified when it was installed keeps serving after its
    // manifest expires. Signatures, family and floor are checked again against what is on disk now.
    let policy = Policy { now: OffsetDateTime::UNIX_EPOCH, family: Some(c.family), floors: c.floors };
    let verified = outpost_common::manifest::verify_manifest(&envelope, trusted, &policy).map_err(|e| e.to_string())?;
    if (verified.manifest().name.as_str(), verified.manifest().version) != (slot.name.as_str(), slot.version) {
        return Err("the stored manifest names another version".into());
    }
    let bytes = std::fs::read(slot.model_path()).map_err(|e| format!("{}: {e}", slot.model_path().display()))?;
    verified.check_artifact_bytes(&bytes).map_err(|e| e.to_string())?;
    Ok((verified, bytes))
}

/// Loads `bytes` once per camera (each camera's pipeline owns its session); checked against the manifest when there
/// is one.
pub fn load_sessions(
    rt: &Runtime,
    bytes: &[u8],
    verified: Option<&VerifiedManifest>,
    options: &VisionOptions,
    count: usize,
) -> Result<Vec<Vision>, candidate::CandidateError> {
    (0..count)
        .map(|_| match verified {
            Some(v) => candidate::load(rt, bytes, v, options.clone()),
            None => Vision::load(rt, bytes, options.clone()).map_err(candidate::CandidateError::Load),
        })
        .collect()
}
