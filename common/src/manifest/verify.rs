//! Manifest verification: the pure core that turns bytes into a [`VerifiedManifest`] or says why not.

use sha2::Digest;
use time::OffsetDateTime;

use super::VerifyError;
use super::body::{MANIFEST_SCHEMA, Manifest, Sha256Sum};
use super::envelope::{Envelope, Purpose, check_signatures};
use super::floor::Floors;
use super::keys::KeyId;
use super::keyset::TrustedKeys;
use crate::vision::spec::{ModelInfo, ModelSpec, SpecSource, resolve};

/// What the device knows when it verifies: values only, so verification needs no clock or disk.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub now: OffsetDateTime,
    /// This device's model family / hardware id. `None` skips the family check, for verifiers that are not a device
    /// (the fleet's registry, `outpost model verify` without `--family`); a device always gives its family.
    pub family: Option<&'a str>,
    /// The anti-rollback floors this device has committed.
    pub floors: &'a Floors,
}

/// A manifest whose signatures, expiry, family and floor have been checked.
///
/// Design: the fields are private and the only constructor is [`verify_envelope`], so holding one is proof the
/// checks ran. The artifact is checked against it separately, because the bytes usually arrive later (streamed).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedManifest {
    manifest: Manifest,
    envelope: Envelope,
    signers: Vec<KeyId>,
}

impl VerifiedManifest {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The envelope exactly as verified, to store or forward (for example inside an `assign_model` command).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The distinct trusted keys whose signatures counted.
    pub fn signers(&self) -> &[KeyId] {
        &self.signers
    }

    /// Checks a whole artifact's digest and length against the manifest.
    pub fn check_artifact(&self, artifact: &ArtifactDigest) -> Result<(), VerifyError> {
        let declared = &self.manifest.artifact;
        if artifact.length != declared.length {
            return Err(VerifyError::ArtifactLength { declared: declared.length, actual: artifact.length });
        }
        if artifact.sha256 != declared.sha256 {
            return Err(VerifyError::ArtifactHash { declared: declared.sha256, actual: artifact.sha256 });
        }
        Ok(())
    }

    /// Checks artifact bytes already in memory.
    pub fn check_artifact_bytes(&self, bytes: &[u8]) -> Result<(), VerifyError> {
        self.check_artifact(&ArtifactDigest::of(bytes))
    }

    /// A streaming check for a download: feed chunks, then [`ArtifactCheck::finish`]. Refuses the first byte past
    /// the declared length, so a mirror cannot fill the disk.
    pub fn artifact_check(&self) -> ArtifactCheck<'_> {
        ArtifactCheck { verified: self, hasher: sha2::Sha256::new(), length: 0 }
    }

    /// Resolves the loaded model's spec with the manifest as hints and checks the two agree: what the agent runs
    /// after loading a verified artifact and before warming it up.
    pub fn resolve_spec(&self, info: &ModelInfo) -> Result<ModelSpec, VerifyError> {
        let spec = resolve(info, &self.manifest.spec_hints())
            .map_err(|e| VerifyError::ModelMismatch(format!("the model does not fit its manifest: {e}")))?;
        self.check_spec(&spec)?;
        Ok(spec)
    }

    /// Checks that the loaded model is the one the manifest describes. Stops a manifest for model A that carries
    /// the artifact hash of model B: the bytes match, but the model does not.
    pub fn check_spec(&self, spec: &ModelSpec) -> Result<(), VerifyError> {
        let m = &self.manifest;
        let mismatch = |what: &str, manifest: String, model: String| {
            Err(VerifyError::ModelMismatch(format!("{what}: the manifest says {manifest}, the model is {model}")))
        };
        if spec.task != m.task {
            return mismatch("task", m.task.as_str().into(), spec.task.as_str().into());
        }
        if !spec.dynamic_input && (spec.input.width, spec.input.height) != (m.input.width, m.input.height) {
            return mismatch(
                "input size",
                format!("{}x{}", m.input.width, m.input.height),
                format!("{}x{}", spec.input.width, spec.input.height),
            );
        }
        if spec.input.layout != m.input.layout {
            return mismatch("input layout", format!("{:?}", m.input.layout), format!("{:?}", spec.input.layout));
        }
        let classes = spec.num_classes();
        if classes != 0 && classes != m.labels.len() {
            return mismatch("class count", m.labels.len().to_string(), classes.to_string());
        }
        if spec.sources.labels == SpecSource::Metadata && spec.labels != m.labels {
            return mismatch("labels", format!("{:?}", m.labels), format!("{:?}", spec.labels));
        }
        Ok(())
    }
}

/// The sha256 and length of an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactDigest {
    pub sha256: Sha256Sum,
    pub length: u64,
}

impl ArtifactDigest {
    pub fn of(bytes: &[u8]) -> ArtifactDigest {
        ArtifactDigest { sha256: Sha256Sum::of(bytes), length: bytes.len() as u64 }
    }
}

/// An artifact download being checked against its verified manifest.
#[derive(Debug)]
pub struct ArtifactCheck<'a> {
    verified: &'a VerifiedManifest,
    hasher: sha2::Sha256,
    length: u64,
}

impl ArtifactCheck<'_> {
    /// Hashes the next chunk; fails as soon as the artifact runs past its declared length.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), VerifyError> {
        let length = self.length.saturating_add(chunk.len() as u64);
        let declared = self.verified.manifest.artifact.length;
        if length > declared {
            return Err(VerifyError::ArtifactLength { declared, actual: length });
        }
        self.length = length;
        self.hasher.update(chunk);
        Ok(())
    }

    pub fn finish(self) -> Result<(), VerifyError> {
        let digest = ArtifactDigest { sha256: Sha256Sum(self.hasher.finalize().into()), length: self.length };
        self.verified.check_artifact(&digest)
    }
}

/// Verifies manifest envelope bytes: size cap, then signatures over the exact body bytes, then the body, expiry,
/// family and floor. The artifact is checked afterwards against the result.
pub fn verify_manifest(
    envelope: &[u8],
    trusted: &TrustedKeys,
    policy: &Policy<'_>,
) -> Result<VerifiedManifest, VerifyError> {
    verify_envelope(&Envelope::from_slice(envelope)?, trusted, policy)
}

/// [`verify_manifest`], then the artifact bytes against it, when they are already at hand.
pub fn verify_manifest_with_artifact(
    envelope: &[u8],
    trusted: &TrustedKeys,
    policy: &Policy<'_>,
    artifact: &[u8],
) -> Result<VerifiedManifest, VerifyError> {
    let verified = verify_manifest(envelope, trusted, policy)?;
    verified.check_artifact_bytes(artifact)?;
    Ok(verified)
}

/// [`verify_manifest`] for an envelope that arrived already parsed (inside an `assign_model` command).
pub fn verify_envelope(
    envelope: &Envelope,
    trusted: &TrustedKeys,
    policy: &Policy<'_>,
) -> Result<VerifiedManifest, VerifyError> {
    // Authenticate first: the body is parsed only once its bytes are known to be signed.
    let signers = check_signatures(envelope, Purpose::Manifest, trusted)?;
    let manifest = parse_body(&envelope.body)?;
    if let Some(problem) = manifest.problems() {
        return Err(VerifyError::InvalidManifest(problem));
    }
    if policy.now >= manifest.expires_at {
        return Err(VerifyError::Expired { expires_at: manifest.expires_at, now: policy.now });
    }
    if let (Some(family), Some(device)) = (&manifest.family, policy.family)
        && family != device
    {
        return Err(VerifyError::WrongFamily { manifest: family.clone(), device: device.to_string() });
    }
    let floor = policy.floors.get(&manifest.name);
    if manifest.version < floor {
        return Err(VerifyError::BelowFloor { name: manifest.name.clone(), version: manifest.version, floor });
    }
    Ok(VerifiedManifest { manifest, envelope: envelope.clone(), signers })
}

fn parse_body(body: &[u8]) -> Result<Manifest, VerifyError> {
    #[derive(serde::Deserialize)]
    struct Schema {
        schema: u32,
    }
    // Read the schema first so a newer manifest says so instead of failing on its new fields.
    let schema: Schema = serde_json::from_slice(body).map_err(|e| VerifyError::from_json("manifest", &e))?;
    if schema.schema != MANIFEST_SCHEMA {
        return Err(VerifyError::UnsupportedSchema { got: schema.schema, supported: MANIFEST_SCHEMA });
    }
    serde_json::from_slice(body).map_err(|e| VerifyError::from_json("manifest", &e))
}
