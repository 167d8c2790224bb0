//! The real `outpost-fleet serve` process for end-to-end tests: a config in a temp dir (embedded or external broker,
//! optional HTTPS, extra tables), readiness, API calls with the admin token, polling with a generous deadline.
//! Shared by `tests/agents.rs`, `tests/models.rs`, `tests/serve.rs` and the `processes` and `rollouts` test binaries.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outpost_tests::broker::free_ports;
use outpost_tests::pki::CertFiles;
use outpost_tests::process::Process;
use serde_json::Value;

/// The longest any step waits; generous, because two cores run the whole workspace's tests.
pub const WAIT: Duration = Duration::from_secs(90);

#[allow(unused_imports)] // not every test binary that includes this file uses them
pub use outpost_tests::fixtures::{defect_images, root};

/// How to run the fleet.
#[derive(Debug, Default)]
pub struct FleetOptions<'a> {
    /// An external broker's URL; none: the embedded broker.
    pub external: Option<&'a str>,
    /// Serve the API over HTTPS with this certificate (handshake timeout 120 s); the path is the CA clients trust.
    pub tls: Option<(&'a CertFiles, &'a Path)>,
    /// More tables for `fleet.toml` (e.g. `[ingest.drift]`).
    pub extra: &'a str,
}

pub struct Fleet {
    process: Process,
    /// `http(s)://127.0.0.1:<port>`.
    pub base: String,
    pub admin: String,
    pub dir: PathBuf,
    /// The embedded broker's MQTT 3.1.1 port (0 with an external broker).
    pub mqtt_port: u16,
    /// The CA clients must trust (HTTPS only).
    pub ca: Option<PathBuf>,
    pub client: reqwest::Client,
}

impl Fleet {
    /// Starts `outpost-fleet serve` with its state and log in `dir`, and waits until `/readyz` answers 200.
    pub async fn start(dir: &Path, options: &FleetOptions<'_>) -> Fleet {
        let mut fleet = Fleet::spawn(dir, options);
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = fleet.client.get(format!("{}/readyz", fleet.base)).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            fleet.process.check_alive();
            assert!(Instant::now() < deadline, "fleet not ready:\n{}", fleet.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fleet.read_admin();
        fleet
    }

    /// [`Fleet::start`] for tests without an async runtime (they call the API with a blocking client; the
    /// fleet's own `client` needs a runtime). HTTP only.
    pub fn start_blocking(dir: &Path, options: &FleetOptions<'_>) -> Fleet {
        let mut fleet = Fleet::spawn(dir, options);
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
        let deadline = Instant::now() + WAIT;
        loop {
            if client.get(format!("{}/readyz", fleet.base)).send().is_ok_and(|r| r.status() == 200) {
                break;
            }
            fleet.process.check_alive();
            assert!(Instant::now() < deadline, "fleet not ready:\n{}", fleet.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        fleet.read_admin();
        fleet
    }

    /// Writes `fleet.toml` in `dir` and starts the process (not ready yet).
    fn spawn(dir: &Path, options: &FleetOptions<'_>) -> Fleet {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let [http, v4, v5] = free_ports().expect("ports");
        let broker = match options.external {
            None => format!("[broker]\nlisten = \"127.0.0.1:{v4}\"\nlisten_v5 = \"127.0.0.1:{v5}\"\n"),
            Some(url) => format!(
                "[broker]\nembedded = false\nurl = \"{url}\"\nusername = \"outpost-fleet\"\npassword = \"x\"\n\
                 shared_group = \"fleet\"\n"
            ),
        };
        let tls = match options.tls {
            Some((files, _)) => format!(
                "tls = {{ cert_file = {:?}, key_file = {:?}, handshake_timeout_secs = 120 }}\n",
                files.cert, files.key
            ),
            None => String::new(),
        };
        let config = format!(
            "state_dir = {:?}\n{broker}[http]\nlisten = \"127.0.0.1:{http}\"\n{tls}\
             [annotation.labels]\ndefect = [\"scratch\", \"dent\", \"stain\"]\n{}",
            dir.join("fleet"),
            options.extra
        );
        std::fs::write(dir.join("fleet.toml"), config).expect("config");
        let mut process = Process::new("the fleet", env!("CARGO_BIN_EXE_outpost-fleet"), dir.join("fleet.log"))
            .args(["serve", "--config"])
            .arg(dir.join("fleet.toml"));
        process.spawn();
        let ca = options.tls.map(|(_, ca)| ca.to_path_buf());
        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = &ca {
            let pem = std::fs::read(ca).expect("CA file");
            client = client.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("CA certificate"));
        }
        let scheme = if ca.is_some() { "https" } else { "http" };
        Fleet {
            process,
            base: format!("{scheme}://127.0.0.1:{http}"),
            admin: String::new(),
            dir: dir.to_path_buf(),
            mqtt_port: if options.external.is_some() { 0 } else { v4 },
            ca,
            client: client.build().expect("HTTP client"),
        }
    }

    fn read_admin(&mut self) {
        let token = std::fs::read_to_string(self.state_dir().join("admin.token")).expect("admin token");
        self.admin = token.trim().to_string();
    }

    /// The fleet's `state_dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("fleet")
    }

    /// SIGKILL: the fleet vanishes with whatever it had not written.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Starts the process again on the same config, state and ports, and waits until `/readyz` answers 200.
    pub async fn restart(&mut self) {
        self.process.spawn();
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = self.client.get(format!("{}/readyz", self.base)).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return;
            }
            self.process.check_alive();
            assert!(Instant::now() < deadline, "fleet not ready after a restart:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// SIGTERM; the fleet must exit cleanly. Returns how long it took.
    pub fn terminate(&mut self) -> Duration {
        let (status, took) = self.process.terminate(WAIT);
        assert!(status.success(), "the fleet exited with {status}:\n{}", self.log());
        took
    }

    /// `/api/v1{path}` with `token`; the status and the JSON body (null when not JSON).
    pub async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}/api/v1{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("answer");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls `GET /api/v1{path}` as admin until `condition` holds; fails with the last answer and the fleet's log.
    pub async fn wait_for(&self, what: &str, path: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.call(reqwest::Method::GET, path, &self.admin, None).await;
            if status == 200 && condition(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {body}\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(format!("{}/metrics", self.base)).send().await.expect("metrics");
        response.text().await.expect("text")
    }
}

/// A fleet that owns its temp dir (removed after the fleet stops), for tests that start one each without an async
/// runtime; everything else is the [`Fleet`]'s.
pub struct Owned {
    fleet: Fleet,
    _dir: tempfile::TempDir,
}

impl Owned {
    /// [`Fleet::start_blocking`] in a fresh temp dir.
    pub fn start_blocking(options: &FleetOptions<'_>) -> Owned {
        let dir = tempfile::tempdir().expect("tempdir");
        Owned { fleet: Fleet::start_blocking(dir.path(), options), _dir: dir }
    }
}

impl std::ops::Deref for Owned {
    type Target = Fleet;

    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

impl std::ops::DerefMut for Owned {
    fn deref_mut(&mut self) -> &mut Fleet {
        &mut self.fleet
    }
}

/// One device of `GET /fleet/devices`, or null.
pub fn device<'a>(devices: &'a Value, name: &str) -> &'a Value {
    devices.as_array().and_then(|a| a.iter().find(|d| d["id"] == name)).unwrap_or(&Value::Null)
}

/// The frames a device's stored windows add up to.
pub fn frames(devices: &Value, name: &str) -> u64 {
    device(devices, name)["seen"]["totals"]["frames"].as_u64().unwrap_or(0)
}
