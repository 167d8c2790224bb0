//! `outpost model push|list|show|deprecate|delete`: the fleet's model registry, through its API (operator token;
//! delete needs the admin's).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use outpost_fleet::api::models::{ModelView, PushAnswer};
use outpost_fleet::models::golden::LABELS_FILE;
use reqwest::multipart::{Form, Part};
use time::format_description::well_known::Rfc3339;

use crate::Outcome;
use crate::fleet::{Fleet, FleetArgs};

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The ONNX model file.
    model: PathBuf,
    /// Its signed manifest (`outpost model sign`).
    #[arg(long)]
    manifest: PathBuf,
    /// A folder of golden images (*.jpg, *.jpeg, *.png) the fleet runs the model on before storing it, with an
    /// optional labels.json mapping image names to expected labels (docs/PROTOCOL.md, "Model registry").
    #[arg(long)]
    golden: Option<PathBuf>,
    /// Print the fleet's answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fleet: FleetArgs,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this model's versions.
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fleet: FleetArgs,
}

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    name: String,
    version: u64,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fleet: FleetArgs,
}

#[derive(Debug, clap::Args)]
pub struct DeprecateArgs {
    name: String,
    version: u64,
    /// Why, for whoever reads the registry later.
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fleet: FleetArgs,
}

/// Golden images `(file name, bytes)` in name order, and the labels file when there is one.
struct GoldenDir {
    images: Vec<(String, Vec<u8>)>,
    labels: Option<Vec<u8>>,
}

fn golden_parts(dir: &Path) -> anyhow::Result<GoldenDir> {
    let mut images = Vec::new();
    let mut labels = None;
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        if !path.is_file() {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if name == LABELS_FILE {
            labels = Some(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
        } else if [".jpg", ".jpeg", ".png"].iter().any(|ext| lower.ends_with(ext)) {
            images.push((name, std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?));
        }
    }
    images.sort();
    anyhow::ensure!(!images.is_empty(), "no *.jpg, *.jpeg or *.png images in {}", dir.display());
    Ok(GoldenDir { images, labels })
}

/// A time as the CLI prints it: RFC 3339, to the second.
pub(crate) fn time(t: time::OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<Outcome> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(Outcome::Done)
}

fn describe(m: &ModelView) -> String {
    let label = m.label.as_deref().map(|l| format!(" ({l})")).unwrap_or_default();
    let labels = if m.labels.len() > 8 {
        format!("{}, ... ({} labels)", m.labels[..8].join(", "), m.labels.len())
    } else {
        m.labels.join(", ")
    };
    let deprecated = match &m.deprecated {
        Some(d) => format!(
            "\n  deprecated: {} by {}{}",
            time(d.at),
            d.by,
            d.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
        ),
        None => String::new(),
    };
    format!(
        "{} v{}{label}\n  artifact: sha256 {} length {}\n  task: {}\n  labels: {labels}\n  family: {}\n  \
         signed by: {}\n  created {}, expires {}\n  pushed {} by {}; golden images: {} ({} with expected labels)\n  \
         download: {} and {}{deprecated}",
        m.name,
        m.version,
        m.sha256,
        m.length,
        m.task,
        m.family.as_deref().unwrap_or("any"),
        m.signers.join(", "),
        time(m.created_at),
        time(m.expires_at),
        time(m.pushed_at),
        m.pushed_by,
        m.golden.images,
        m.golden.labelled,
        m.manifest_url,
        m.artifact_url,
    )
}

pub fn push(args: &PushArgs) -> anyhow::Result<Outcome> {
    let manifest = std::fs::read(&args.manifest).with_context(|| format!("reading {}", args.manifest.display()))?;
    let length = std::fs::metadata(&args.model).with_context(|| format!("reading {}", args.model.display()))?.len();
    let golden = args.golden.as_deref().map(golden_parts).transpose()?;
    let file_name =
        args.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.onnx".into());
    let fleet = Fleet::new(&args.fleet)?;
    let model = args.model.clone();
    let answer: PushAnswer = fleet.send_built(
        move |client, url| {
            let file = std::fs::File::open(&model).with_context(|| format!("opening {}", model.display()))?;
            let body = reqwest::Body::from(tokio::fs::File::from_std(file));
            let mut form = Form::new()
                .part("manifest", Part::bytes(manifest).file_name("manifest.json"))
                .part("artifact", Part::stream_with_length(body, length).file_name(file_name));
            if let Some(GoldenDir { images, labels }) = golden {
                for (name, bytes) in images {
                    form = form.part("golden", Part::bytes(bytes).file_name(name));
                }
                if let Some(labels) = labels {
                    form = form.part("golden_labels", Part::bytes(labels).file_name(LABELS_FILE));
                }
            }
            // Checking a large model takes a while; the client's default timeout is for small requests.
            Ok(client.post(url).multipart(form).timeout(std::time::Duration::from_secs(3600)))
        },
        "/api/v1/models",
    )?;
    if args.json {
        return print_json(&answer);
    }
    let verb = if answer.stored { "stored" } else { "already stored (nothing changed)" };
    println!("{verb}: {}", describe(&answer.model));
    Ok(Outcome::Done)
}

pub fn list(args: &ListArgs) -> anyhow::Result<Outcome> {
    let path = match &args.name {
        Some(name) => format!("/api/v1/models?name={name}"),
        None => "/api/v1/models".to_string(),
    };
    let models: Vec<ModelView> = Fleet::new(&args.fleet)?.get(&path)?;
    if args.json {
        return print_json(&models);
    }
    println!("{:<24} {:>8} {:<12} {:<8} {:>12}  {:<20} STATE", "NAME", "VERSION", "LABEL", "TASK", "BYTES", "PUSHED");
    for m in &models {
        let state = if m.deprecated.is_some() { "deprecated" } else { "active" };
        println!(
            "{:<24} {:>8} {:<12} {:<8} {:>12}  {:<20} {state}",
            m.name,
            m.version,
            m.label.as_deref().unwrap_or("-"),
            m.task,
            m.length,
            time(m.pushed_at),
        );
    }
    Ok(Outcome::Done)
}

pub fn show(args: &VersionArgs) -> anyhow::Result<Outcome> {
    let model: ModelView = Fleet::new(&args.fleet)?.get(&format!("/api/v1/models/{}/{}", args.name, args.version))?;
    if args.json {
        return print_json(&model);
    }
    println!("{}", describe(&model));
    Ok(Outcome::Done)
}

pub fn deprecate(args: &DeprecateArgs) -> anyhow::Result<Outcome> {
    let body = serde_json::json!({"reason": args.reason});
    let model: ModelView =
        Fleet::new(&args.fleet)?.post(&format!("/api/v1/models/{}/{}/deprecate", args.name, args.version), &body)?;
    if args.json {
        return print_json(&model);
    }
    println!("deprecated: {}", describe(&model));
    Ok(Outcome::Done)
}

pub fn delete(args: &VersionArgs) -> anyhow::Result<Outcome> {
    Fleet::new(&args.fleet)?.delete(&format!("/api/v1/models/{}/{}", args.name, args.version))?;
    if args.json {
        return print_json(&serde_json::json!({"deleted": {"name": args.name, "version": args.version}}));
    }
    println!("deleted {} v{}", args.name, args.version);
    Ok(Outcome::Done)
}
