//! `outpost model sign` and `outpost model verify`; the registry commands are in `registry.rs`.

use std::path::PathBuf;

use anyhow::Context;
use outpost_common::manifest::{
    self, Artifact, Floors, MANIFEST_SCHEMA, Manifest, Policy, Sha256Sum, TrustedKeys, VerifiedManifest,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Outcome;
use crate::spec::{self, SpecArgs};
use crate::trust::{self, TrustArgs};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write a signed manifest for an ONNX model (task, input spec and labels read from the model).
    Sign(SignArgs),
    /// Verify a signed manifest (and the model file) as a device would; exit code 1 with the reason if not.
    Verify(VerifyArgs),
    /// Upload a signed model to the fleet's registry, which checks it (signature, hash, model, golden images).
    Push(crate::registry::PushArgs),
    /// List the versions in the fleet's registry.
    List(crate::registry::ListArgs),
    /// One version's details.
    Show(crate::registry::VersionArgs),
    /// Mark a version deprecated (it stays downloadable; no new rollout should use it).
    Deprecate(crate::registry::DeprecateArgs),
    /// Delete a version that no rollout uses (admin token).
    Delete(crate::registry::VersionArgs),
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// Secret signing key (PKCS#8 PEM). Repeat to sign with several keys for a threshold.
    #[arg(long = "key", required = true, value_name = "KEY")]
    keys: Vec<PathBuf>,
    /// The ONNX model file.
    #[arg(long)]
    model: PathBuf,
    /// Model name, shared by all its versions ([A-Za-z0-9._-]).
    #[arg(long)]
    name: String,
    /// Version number; must be above every version signed before under this name.
    #[arg(long)]
    version: u64,
    /// Human label such as 2.1.0.
    #[arg(long)]
    label: Option<String>,
    /// Model family / hardware id devices must match (default: any device).
    #[arg(long)]
    family: Option<String>,
    /// How long the manifest stays valid (90d, 12h, 2w, ...).
    #[arg(long, default_value = "365d", value_parser = crate::duration::parse)]
    expires: time::Duration,
    /// Raise devices' anti-rollback floor for this name to this version once they commit the model.
    #[arg(long)]
    min_version: Option<u64>,
    #[command(flatten)]
    spec: SpecArgs,
    /// Where to write the signed manifest (conventionally M.manifest.json).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    trust: TrustArgs,
    /// The signed manifest.
    #[arg(long)]
    manifest: PathBuf,
    /// The model file to check against the manifest's sha256 and length.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The device's model family (default: whatever the manifest names, reported as not checked).
    #[arg(long)]
    family: Option<String>,
    /// The device's stored version floor.
    #[arg(long, default_value_t = 0)]
    floor: u64,
    /// Verify as of this time (RFC 3339) instead of now.
    #[arg(long, value_parser = parse_time)]
    at: Option<OffsetDateTime>,
    /// Also load the model in ONNX Runtime and check it is the model the manifest describes.
    #[arg(long, requires = "model")]
    inspect: bool,
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}"))
}

pub fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Sign(args) => sign(&args),
        Command::Verify(args) => verify(&args),
        Command::Push(args) => crate::registry::push(&args),
        Command::List(args) => crate::registry::list(&args),
        Command::Show(args) => crate::registry::show(&args),
        Command::Deprecate(args) => crate::registry::deprecate(&args),
        Command::Delete(args) => crate::registry::delete(&args),
    }
}

fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn sign(args: &SignArgs) -> anyhow::Result<Outcome> {
    let keys = trust::secret_keys(&args.keys)?;
    let bytes = std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let described = args.spec.describe(&bytes)?;
    let hints = described.hints;
    let (Some(task), Some(input), Some(labels)) = (hints.task, hints.input, hints.labels) else {
        anyhow::bail!("the model's task, input and labels could not all be determined");
    };
    let created_at = now();
    let manifest = Manifest {
        schema: MANIFEST_SCHEMA,
        name: args.name.clone(),
        version: args.version,
        label: args.label.clone(),
        artifact: Artifact { sha256: Sha256Sum::of(&bytes), length: bytes.len() as u64 },
        task,
        input,
        labels,
        family: args.family.clone(),
        created_at,
        expires_at: created_at.checked_add(args.expires).context("--expires is too far in the future")?,
        min_version: args.min_version,
        baseline: None,
    };
    let refs: Vec<_> = keys.iter().collect();
    let envelope = manifest::sign_manifest(&manifest, &refs);

    // Verify what was just signed, as a device of the stated family would, before writing it.
    let trusted = TrustedKeys::new(keys.iter().map(|k| k.public()), keys.len())?;
    let floors = Floors::default();
    let policy = Policy { now: created_at, family: manifest.family.as_deref(), floors: &floors };
    let verified = manifest::verify_envelope(&envelope, &trusted, &policy)
        .and_then(|v| v.check_artifact_bytes(&bytes).map(|()| v))
        .context("the manifest just signed does not verify")?;
    if let Some(spec) = &described.spec {
        verified.check_spec(spec).context("the manifest does not describe the model")?;
    }
    std::fs::write(&args.out, envelope.to_json_pretty()).with_context(|| format!("writing {}", args.out.display()))?;
    println!("signed: {}", summary(&verified, Some(&args.model.display().to_string()), None));
    println!("wrote {}", args.out.display());
    Ok(Outcome::Done)
}

fn verify(args: &VerifyArgs) -> anyhow::Result<Outcome> {
    let trusted = match trust::load(&args.trust)? {
        Ok(trusted) => trusted,
        Err((path, e)) => return Ok(Outcome::Rejected(format!("{}: {e} [{}]", path.display(), e.code()))),
    };
    let bytes = std::fs::read(&args.manifest).with_context(|| format!("reading {}", args.manifest.display()))?;
    let model = match &args.model {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let floors = Floors::uniform(args.floor);
    // Without --family the family is not checked, and the output says so.
    let policy = Policy { now: args.at.unwrap_or_else(now), family: args.family.as_deref(), floors: &floors };
    let result = manifest::verify_manifest(&bytes, &trusted, &policy).and_then(|verified| {
        if let Some(model) = &model {
            verified.check_artifact_bytes(model)?;
        }
        Ok(verified)
    });
    let verified = match result {
        Ok(v) => v,
        Err(e) => return Ok(Outcome::Rejected(format!("{e} [{}]", e.code()))),
    };
    if let (true, Some(model)) = (args.inspect, &model) {
        let spec = spec::inspect(model, &verified.manifest().spec_hints(), None)?;
        if let Err(e) = verified.check_spec(&spec) {
            return Ok(Outcome::Rejected(format!("{e} [{}]", e.code())));
        }
    }
    let model_name = args.model.as_ref().map(|p| p.display().to_string());
    let family_note = if args.family.is_some() { None } else { Some("not checked: pass --family") };
    println!("verified: {}", summary(&verified, model_name.as_deref(), family_note));
    println!("  signed by {} of {} required key(s): {}", verified.signers().len(), trusted.threshold(), ids(&verified));
    Ok(Outcome::Done)
}

fn ids(verified: &VerifiedManifest) -> String {
    verified.signers().iter().map(|id| id.as_str()).collect::<Vec<_>>().join(", ")
}

fn summary(verified: &VerifiedManifest, model: Option<&str>, family_note: Option<&str>) -> String {
    let m = verified.manifest();
    let artifact = match model {
        Some(path) => format!("matches {path}"),
        None => "not checked: pass --model".into(),
    };
    let family = match (&m.family, family_note) {
        (Some(f), Some(note)) => format!("{f} ({note})"),
        (Some(f), None) => f.clone(),
        (None, _) => "any".into(),
    };
    let time = crate::registry::time;
    let labels = if m.labels.len() > 8 {
        format!("{}, ... ({} labels)", m.labels[..8].join(", "), m.labels.len())
    } else {
        m.labels.join(", ")
    };
    let floor = m.min_version.map(|v| format!("\n  raises the floor to: {v}")).unwrap_or_default();
    // The input spec as it reads in the manifest's JSON, one line.
    let input = serde_json::to_string(&m.input).unwrap_or_default();
    format!(
        "{}\n  artifact: sha256 {} length {} ({artifact})\n  family: {family}\n  task: {}\n  input: {input}\n  \
         labels: {labels}\n  created {}, expires {}{floor}",
        m.display_name(),
        m.artifact.sha256,
        m.artifact.length,
        m.task.as_str(),
        time(m.created_at),
        time(m.expires_at),
    )
}
