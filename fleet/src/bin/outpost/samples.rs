//! `outpost samples export`: labelled samples out as a training dataset, through the fleet's API (operator token).

use std::path::PathBuf;

use clap::Subcommand;
use outpost_fleet::export::ExportReport;

use crate::Outcome;
use crate::fleet::{Fleet, FleetArgs};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export a model's labelled samples: yolo, coco, imagenet or label-studio, with a deterministic train/val split.
    Export {
        /// The model name whose samples to export (every version).
        #[arg(long)]
        model: String,
        #[arg(long, default_value = "yolo")]
        format: String,
        /// Share of samples in the validation split.
        #[arg(long, default_value_t = 0.2)]
        val_ratio: f64,
        /// The folder to create, on the fleet's machine (it must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// For Label Studio: the base URL its tasks use for images.
        #[arg(long)]
        image_base_url: Option<String>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

pub fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Export { model, format, val_ratio, out, image_base_url, fleet } => {
            let mut body =
                serde_json::json!({"model": model, "format": format, "val_ratio": val_ratio, "out_dir": out});
            if let Some(url) = image_base_url {
                body["image_base_url"] = url.into();
            }
            let report: ExportReport = Fleet::new(&fleet)?.post("/api/v1/exports", &body)?;
            println!(
                "exported {} train + {} val samples ({} classes) to {}",
                report.train,
                report.val,
                report.names.len(),
                report.out_dir.display()
            );
            Ok(Outcome::Done)
        }
    }
}
