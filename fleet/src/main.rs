//! `outpost-fleet`: the central Outpost service.
//!
//! Today it offers `demo`, which runs the bundled defect detector over the bundled sample frames (normal ones, then
//! frames after a lighting drift) and shows the confidence signal the fleet watches. The service itself (`serve`:
//! broker, ingest, drift, annotation queue, rollouts) arrives with the fleet issues; `demo` grows with it.

mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "outpost-fleet", version, about = "Outpost fleet service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bundled defect detector over the bundled sample frames and show the confidence the fleet watches.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
