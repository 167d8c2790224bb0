//! `outpost-agent`: the Outpost edge daemon and its one-shot model tools.

mod oneshot;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use outpost_agent::config::{AgentConfig, DEFAULT_CONFIG};
use tokio_util::sync::CancellationToken;

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
    /// Run the daemon: cameras → inference → confidence over MQTT, flagged samples to the fleet.
    Run {
        #[arg(long, default_value = "/etc/outpost/agent.toml")]
        config: PathBuf,
    },
    /// Print the commented default configuration.
    PrintConfig,
    /// The model versions installed on this device.
    Models {
        #[arg(long, global = true, default_value = "/etc/outpost/agent.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: ModelsCommand,
    },
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

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// What is on disk per model name: active, previous, bad and installed versions, as JSON.
    List,
    /// Make an installed version the active one (on trial, as after an update); the agent loads it at its next
    /// start. Lifts a bad mark.
    Activate { name: String, version: u64 },
}

fn init_tracing(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_tracing(cli.log_format, "info");
            run(&config)
        }
        Command::PrintConfig => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::SUCCESS
        }
        Command::Models { config, command } => {
            init_tracing(cli.log_format, "warn");
            match models(&config, command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Infer(args) => {
            init_tracing(cli.log_format, "warn");
            oneshot::infer(&args)
        }
        Command::CheckModel { model, runtime } => {
            init_tracing(cli.log_format, "warn");
            oneshot::check_model(&model, &runtime)
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match AgentConfig::load(path, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signals.cancel();
        });
        outpost_agent::app::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn models(path: &std::path::Path, command: ModelsCommand) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config = AgentConfig::parse(&text, path)?;
    let root = config.state_dir.join("models");
    let slots = outpost_agent::update::SlotStore::open(&root, config.updates.max_trial_starts)
        .with_context(|| format!("opening the model store in {}", root.display()))?;
    match command {
        ModelsCommand::List => {
            println!("{}", serde_json::to_string_pretty(&slots.list()?)?);
        }
        ModelsCommand::Activate { name, version } => {
            let record = slots.activate(&name, version)?;
            println!("{name} v{version} is active (on trial, previous: {:?}).", record.previous);
            println!("Restart the agent to load it, e.g. `systemctl restart outpost-agent`.");
        }
    }
    Ok(())
}
