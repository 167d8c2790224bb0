//! `outpost`: the operator's command line — signing keys, signed model manifests, key rotation, devices.
//!
//! Signing happens here, on the operator's machine, with keys that never reach the fleet server.

mod device;
mod duration;
mod fleet;
mod keygen;
mod keys;
mod model;
mod registry;
mod rollout;
mod samples;
mod spec;
mod trust;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "outpost", version, about = "Outpost operator commands: keys, signed models, key rotation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate an ed25519 signing key: NAME.key (secret, mode 0600), NAME.pub and NAME.pub.pem.
    Keygen(keygen::Args),
    /// Sign and verify model manifests.
    #[command(subcommand)]
    Model(model::Command),
    /// Rotate the trusted key set.
    #[command(subcommand)]
    Keys(keys::Command),
    /// Enroll, list and revoke devices (through the fleet's API).
    #[command(subcommand)]
    Device(device::Command),
    /// Export labelled samples as a dataset (through the fleet's API).
    #[command(subcommand)]
    Samples(samples::Command),
    /// Staged rollouts of model versions (through the fleet's API).
    #[command(subcommand)]
    Rollout(rollout::Command),
}

/// How a command ended: success, or a verification that said no (a one-line reason, exit code 1).
#[derive(Debug)]
pub enum Outcome {
    Done,
    Rejected(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen(args) => keygen::run(&args),
        Command::Model(command) => model::run(command),
        Command::Keys(command) => keys::run(command),
        Command::Device(command) => device::run(command),
        Command::Samples(command) => samples::run(command),
        Command::Rollout(command) => rollout::run(command),
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Rejected(reason)) => {
            eprintln!("rejected: {reason}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("outpost: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
