//! `outpost device enroll|list|revoke`: the device registry, through the fleet's API (admin token).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args as ClapArgs, Subcommand};
use outpost_fleet::api::devices::Enrolled;
use outpost_fleet::registry::DeviceRecord;

use crate::Outcome;
use crate::fleet::{Fleet, FleetArgs};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll a device: prints its credentials once and writes a ready-to-use agent config.
    Enroll(EnrollArgs),
    /// List enrolled devices.
    List {
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Revoke a device: it can no longer connect, upload, or be trusted.
    Revoke {
        name: String,
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

#[derive(Debug, ClapArgs)]
pub struct EnrollArgs {
    /// The device id (also its MQTT username).
    name: String,
    /// A `key=value` tag for grouping (site, line, ...); repeat for several.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Where to write the agent config (mode 0600); default `<name>.agent.toml`.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    fleet: FleetArgs,
}

pub fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Enroll(args) => {
            let tags = outpost_fleet::registry::parse_tags(&args.tags)?;
            let body = serde_json::json!({"name": args.name, "tags": tags});
            let enrolled: Enrolled = Fleet::new(&args.fleet)?.post("/api/v1/devices", &body)?;
            let out = args.out.unwrap_or_else(|| PathBuf::from(format!("{}.agent.toml", args.name)));
            outpost_fleet::registry::write_private(&out, &enrolled.agent_config)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("enrolled {}", enrolled.credentials.device);
            println!("agent config (with its secrets): {}", out.display());
            Ok(Outcome::Done)
        }
        Command::List { fleet } => {
            let devices: Vec<DeviceRecord> = Fleet::new(&fleet)?.get("/api/v1/devices")?;
            for d in devices {
                let tags: Vec<String> = d.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let state = if d.revoked { "revoked" } else { "enrolled" };
                println!("{:<32} {:<9} {}", d.id, state, tags.join(","));
            }
            Ok(Outcome::Done)
        }
        Command::Revoke { name, fleet } => {
            let d: DeviceRecord = Fleet::new(&fleet)?.post(&format!("/api/v1/devices/{name}/revoke"), &())?;
            println!("revoked {}", d.id);
            Ok(Outcome::Done)
        }
    }
}
