//! The fleet under load, as the load benches drive it: `outpost-fleet serve` as a child process (so its resident
//! memory and CPU time can be read from `/proc`), enrollment through its API, and its `/metrics` counters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::registry::Credentials;

#[derive(Debug, thiserror::Error)]
pub enum FleetProcError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{what}: HTTP {status}")]
    Status { what: String, status: u16 },
    #[error("the fleet exited ({status}); see {log}")]
    Exited { status: String, log: String },
    #[error("the fleet was not ready within 60 s")]
    NotReady,
    #[error("no {0} in /metrics")]
    Metric(&'static str),
    #[error("an enrollment worker failed: {0}")]
    Worker(String),
}

pub fn free_addr() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

/// A child process, killed when dropped if still running.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn new(child: Child, name: &'static str) -> Proc {
        Proc { child, name }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after `deadline`.
    pub fn stop(mut self, deadline: Duration) -> std::io::Result<()> {
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
        self.kill()
    }

    /// SIGKILL.
    pub fn kill(mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
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
    /// The `outpost-fleet` binary (`env!("CARGO_BIN_EXE_outpost-fleet")` in a bench).
    pub bin: PathBuf,
    /// More fleet.toml tables, appended to the generated ones.
    pub extra: String,
}

/// A started fleet.
#[derive(Debug)]
pub struct Fleet {
    pub proc: Proc,
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
}

impl Fleet {
    pub fn base(&self) -> String {
        format!("http://{}", self.http)
    }
}

impl FleetSetup {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("fleet")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("fleet.log")
    }

    /// The admin token the fleet wrote at its first start.
    pub fn admin_token(&self) -> std::io::Result<String> {
        Ok(std::fs::read_to_string(self.state_dir().join("admin.token"))?.trim().to_string())
    }

    /// Starts `outpost-fleet serve` and waits until `/readyz` answers 200.
    pub async fn start(&self, http_client: &reqwest::Client) -> Result<Fleet, FleetProcError> {
        let (http, mqtt, mqtt5) = (free_addr()?, free_addr()?, free_addr()?);
        let config = format!(
            "state_dir = {:?}\nshutdown_deadline_secs = 20\n\n[broker]\nlisten = \"{mqtt}\"\nlisten_v5 = \"{mqtt5}\"\n\n\
             [http]\nlisten = \"{http}\"\n\n{}",
            self.state_dir(),
            self.extra
        );
        let path = self.dir.join("fleet.toml");
        std::fs::write(&path, config)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log())?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("OUTPOST_LOG", "warn,rumqttd=error")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut proc = Proc::new(child, "outpost-fleet");
        let url = format!("http://{http}/readyz");
        let start = Instant::now();
        loop {
            if http_client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(Fleet { proc, http, mqtt });
            }
            if let Some(status) = proc.exited()? {
                return Err(FleetProcError::Exited {
                    status: status.to_string(),
                    log: self.log().display().to_string(),
                });
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(FleetProcError::NotReady);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Enrolls `n` devices named `load-{i:05}` through the API, 16 requests at a time, tagged `site=site-{i % 10}`
/// plus `tags`. Returns their credentials in index order.
pub async fn enroll(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    n: usize,
    tags: &[(&str, &str)],
) -> Result<Vec<Credentials>, FleetProcError> {
    const WORKERS: usize = 16;
    let tags: Vec<(String, String)> = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (http, url, token, tags) =
            (http.clone(), format!("{base}/api/v1/devices"), token.to_string(), tags.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (w..n).step_by(WORKERS) {
                let mut t: serde_json::Map<String, serde_json::Value> =
                    tags.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
                t.insert("site".into(), format!("site-{}", i % 10).into());
                let body = serde_json::json!({ "name": format!("load-{i:05}"), "tags": t });
                let response = http.post(&url).bearer_auth(&token).json(&body).send().await?;
                if !response.status().is_success() {
                    let what = format!("enrolling load-{i:05}");
                    return Err(FleetProcError::Status { what, status: response.status().as_u16() });
                }
                let enrolled: crate::api::devices::Enrolled = response.json().await?;
                out.push((i, enrolled.credentials));
            }
            Ok(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.map_err(|e| FleetProcError::Worker(e.to_string()))??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, c)| c).collect())
}

/// `outpost_fleet_messages_accepted_total` from the fleet's `/metrics`.
pub async fn accepted(http: &reqwest::Client, fleet: &Fleet) -> Result<u64, FleetProcError> {
    Ok(metric(http, fleet, "outpost_fleet_messages_accepted_total").await? as u64)
}

/// One unlabelled sample from the fleet's `/metrics`.
pub async fn metric(http: &reqwest::Client, fleet: &Fleet, name: &'static str) -> Result<f64, FleetProcError> {
    let text = http.get(format!("{}/metrics", fleet.base())).send().await?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or(FleetProcError::Metric(name))
}

/// Waits until `count()` reaches `target` or stops moving for `idle`; returns the seconds it took.
pub async fn settle<F, Fut>(mut count: F, target: u64, idle: Duration, limit: Duration) -> Result<f64, FleetProcError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, FleetProcError>>,
{
    let start = Instant::now();
    let (mut last, mut since) = (count().await?, Instant::now());
    while last < target && since.elapsed() < idle && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = count().await?;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    Ok(start.elapsed().as_secs_f64())
}
