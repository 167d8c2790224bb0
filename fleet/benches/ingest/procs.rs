//! The baseline's process: the same embedded broker the fleet runs, alone (this bench binary again, in its broker
//! role). The fleet process itself is `outpost_fleet::load::fleet`.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use outpost_fleet::load::fleet::{FleetSetup, Proc, free_addr};

/// Environment variable that turns this binary into the baseline broker: the fleet's state folder to read the
/// registry from.
pub const BROKER_ROLE: &str = "OUTPOST_LOAD_BROKER_STATE";
const BROKER_PORT: &str = "OUTPOST_LOAD_BROKER_PORT";

/// Starts the baseline broker on the fleet's registry (the fleet must be stopped: one process per store).
/// Returns it with its address and the credentials of its internal client.
pub fn start_broker(setup: &FleetSetup) -> Result<(Proc, SocketAddr, String, String)> {
    let addr = free_addr()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(BROKER_ROLE, setup.state_dir())
        .env(BROKER_PORT, addr.port().to_string())
        .env("OUTPOST_LOG", "warn,rumqttd=error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(setup.dir.join("broker.log"))?)
        .spawn()
        .context("starting the baseline broker")?;
    let stdout = child.stdout.take().context("the broker's stdout")?;
    let proc = Proc::new(child, "baseline broker");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("ready"), Some(user), Some(password)) => Ok((proc, addr, user.to_string(), password.to_string())),
        _ => bail!("the baseline broker did not start; see {}", setup.dir.join("broker.log").display()),
    }
}

/// The broker role: the fleet's embedded broker exactly as `serve` starts it (registry authentication, same
/// settings), with nothing subscribed until the benchmark's no-op subscriber connects. Prints `ready <user>
/// <password>` and runs until killed.
pub fn broker_main(state: &Path) -> Result<()> {
    use outpost_common::store::SledStore;
    use outpost_fleet::registry::{self, Registry};
    let port: u16 = std::env::var(BROKER_PORT)?.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = SledStore::open(&state.join("db"))?;
        let master = registry::load_master(&state.join("master.key"))?;
        let registry = Registry::new(store, master);
        let config = outpost_fleet::broker::BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            listen_v5: free_addr()?,
            ..Default::default()
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let embedded = outpost_fleet::broker::start_embedded(&config, registry, shutdown).await?;
        println!("ready {} {}", embedded.internal.username, embedded.internal.password);
        std::future::pending::<()>().await;
        Ok(())
    })
}
