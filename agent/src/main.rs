//! `outpost-agent`: the Outpost edge daemon and its one-shot model tools.

mod oneshot;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "outpost-agent", version, about = "Outpost edge agent: runs ONNX vision models on camera frames")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a model on image files and print one JSON object per image per line.
    Infer(oneshot::InferArgs),
    /// Print what the agent understood of a model (task, input size, layout, labels, normalisation) as JSON.
    CheckModel {
        /// The ONNX model file.
        model: PathBuf,
        #[command(flatten)]
        runtime: oneshot::RuntimeArgs,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Infer(args) => oneshot::infer(&args),
        Command::CheckModel { model, runtime } => oneshot::check_model(&model, &runtime),
    }
}
