//! The processes the benchmark starts: the fleet (`outpost-fleet serve`, the real binary) and, for the baseline,
//! the same embedded broker alone (this bench binary again, in its broker role).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Environment variable that turns this binary into the baseline broker: the fleet's state folder to read the
/// registry from.
pub const BROKER_ROLE: &str = "OUTPOST_LOAD_BROKER_STATE";
const BROKER_PORT: &str = "OUTPOST_LOAD_BROKER_PORT";

pub fn free_addr() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A child process, killed when dropped if still running.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after `deadline`.
    pub fn stop(mut self, deadline: Duration) -> Result<()> {
        use rustix::process::{Pid, Signal, kill_process};
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    tracing::warn!(process = self.name, %status, "exited with an error");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(process = self.name, "did not stop within the deadline; killing it");
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Proc {
    /// SIGKILL: for the baseline broker, which has no graceful shutdown (rumqttd cannot be stopped).
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A fleet to start: its state folder stays across starts; ports are chosen at every start.
#[derive(Debug)]
pub struct FleetSetup {
    pub dir: PathBuf,
    /// `[ingest] workers` for the fleet; `None`: its default.
    pub workers: Option<usize>,
}

/// A started fleet.
#[derive(Debug)]
pub struct Fleet {
    pub proc: Proc,
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
}

impl FleetSetup {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("fleet")
    }

    /// Starts `outpost-fleet serve` and waits until `/readyz` answers 200.
    pub async fn start(&self, http_client: &reqwest::Client) -> Result<Fleet> {
        let (http, mqtt, mqtt5) = (free_addr()?, free_addr()?, free_addr()?);
        let mut config = format!(
            "state_dir = {:?}\nshutdown_deadline_secs = 20\n\n[broker]\nlisten = \"{mqtt}\"\nlisten_v5 = \"{mqtt5}\"\n\n\
             [http]\nlisten = \"{http}\"\n",
            self.state_dir()
        );
        if let Some(workers) = self.workers {
            config.push_str(&format!("\n[ingest]\nworkers = {workers}\n"));
        }
        let path = self.dir.join("fleet.toml");
        std::fs::write(&path, config)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("fleet.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_outpost-fleet"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("OUTPOST_LOG", "warn,rumqttd=error")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting outpost-fleet")?;
        let mut proc = Proc { child, name: "outpost-fleet" };
        let url = format!("http://{http}/readyz");
        let start = Instant::now();
        loop {
            if http_client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(Fleet { proc, http, mqtt });
            }
            if let Some(status) = proc.child.try_wait()? {
                bail!("the fleet exited ({status}); see {}", self.dir.join("fleet.log").display());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("the fleet was not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the baseline broker on the fleet's registry (the fleet must be stopped: one process per store).
    /// Returns it with its address and the credentials of its internal client.
    pub fn start_broker(&self) -> Result<(Proc, SocketAddr, String, String)> {
        let addr = free_addr()?;
        let mut child = Command::new(std::env::current_exe()?)
            .env(BROKER_ROLE, self.state_dir())
            .env(BROKER_PORT, addr.port().to_string())
            .env("OUTPOST_LOG", "warn,rumqttd=error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.join("broker.log"))?)
            .spawn()
            .context("starting the baseline broker")?;
        let stdout = child.stdout.take().context("the broker's stdout")?;
        let proc = Proc { child, name: "baseline broker" };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("ready"), Some(user), Some(password)) => Ok((proc, addr, user.to_string(), password.to_string())),
            _ => bail!("the baseline broker did not start; see {}", self.dir.join("broker.log").display()),
        }
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
