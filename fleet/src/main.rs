//! `outpost-fleet`: the central Outpost service.
//!
//! `serve` runs the service (broker, registry, API); `print-config` prints the commented example configuration;
//! `demo` runs the bundled defect detector over the bundled sample frames and shows the confidence signal the fleet
//! watches (it grows into the full fleet demo).

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
    /// Run the fleet service.
    Serve {
        #[arg(long, default_value = "/etc/outpost/fleet.toml")]
        config: std::path::PathBuf,
    },
    /// Print the commented example configuration.
    PrintConfig,
    /// Run the bundled defect detector over the bundled sample frames and show the confidence the fleet watches.
    Demo(outpost_fleet::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo talks to a person on stdout; the service logs what it does.
    let default = if matches!(cli.command, Command::Demo(_)) { "warn,rumqttd=error" } else { "info,rumqttd=warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = match cli.command {
        Command::Demo(args) => outpost_fleet::demo::run(&args),
        Command::Serve { config } => serve(&config),
        Command::PrintConfig => {
            print!("{}", outpost_fleet::config::DEFAULT_CONFIG);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let config = outpost_fleet::config::FleetConfig::load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
            signals.cancel();
        });
        outpost_fleet::serve::run(config, shutdown, |running| {
            eprintln!("outpost-fleet: API on http://{}, MQTT on {}", running.http, running.mqtt);
        })
        .await
    })
}
