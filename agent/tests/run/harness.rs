//! Driving `outpost-agent run` from the outside: a config written for the test, the real binary as a child process
//! (stopped with SIGTERM or SIGKILL), its `/metrics` and `/readyz`, and the MQTT messages a subscriber received,
//! opened with the device's key and de-duplicated by seq as the fleet does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use outpost_common::protocol::auth::{self, DeviceKey, derive_device_key};
use outpost_common::protocol::{self, Event, EventBody, FrameBatch, Status, Telemetry, TelemetryBody, WindowSummary};
use outpost_common::topics::{self, Channel, DeviceId};
use outpost_tests::broker::free_port;
use outpost_tests::process::Process;
use outpost_tests::subscriber::{Received, Subscriber};
use serde_json::Value;

/// The device family every test agent declares.
pub const FAMILY: &str = "test-cpu";

/// The longest any test waits for a condition; generous, because two cores run the whole workspace's tests.
pub const WAIT: Duration = Duration::from_secs(90);

pub use outpost_tests::fixtures::{defect_images, defect_model, root};

/// Copies `files` into `dir` the way a camera uploading over FTP finishes a file: written under a hidden name, then
/// renamed into place. Names get a prefix so that several copies of one photo are distinct files.
pub fn drop_files(dir: &Path, prefix: &str, files: &[PathBuf]) {
    std::fs::create_dir_all(dir).expect("camera folder");
    for f in files {
        let name = format!("{prefix}{}", f.file_name().expect("file name").to_string_lossy());
        let hidden = dir.join(format!(".{name}.part"));
        std::fs::copy(f, &hidden).expect("copy");
        std::fs::rename(&hidden, dir.join(name)).expect("rename into place");
    }
}

/// Writes `bytes` as one finished file in a camera folder.
pub fn drop_bytes(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("camera folder");
    let hidden = dir.join(format!(".{name}.part"));
    std::fs::write(&hidden, bytes).expect("write");
    std::fs::rename(&hidden, dir.join(name)).expect("rename into place");
}

/// A device identity: the id and the message-authentication key enrollment would have issued.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: DeviceId,
    pub key: DeviceKey,
}

impl Device {
    pub fn new(name: &str) -> Device {
        let id = DeviceId::new(name).expect("device id");
        let key = derive_device_key(b"end-to-end test master secret", &id);
        Device { id, key }
    }

    /// The MQTT filter for everything this device publishes.
    pub fn filter(&self) -> String {
        format!("outpost/v1/devices/{}/#", self.id)
    }
}

/// The parts of `agent.toml` a test varies; the rest is fixed (1 s windows, fast reconnects, one ORT thread).
#[derive(Debug, Clone)]
pub struct Setup {
    pub broker: String,
    pub window_secs: u64,
    pub per_frame: bool,
    pub outbox_max_bytes: Option<u64>,
    /// `(url, token)` of the sample-upload server.
    pub fleet: Option<(String, String)>,
    pub shutdown_deadline_secs: u64,
    /// More tables (e.g. `[updates]`), as TOML.
    pub extra: String,
    /// `[[models]]` and `[[cameras]]` tables, as TOML.
    pub cameras: String,
}

impl Setup {
    pub fn new(broker: &str, cameras: String) -> Setup {
        Setup {
            broker: broker.to_string(),
            window_secs: 1,
            per_frame: false,
            outbox_max_bytes: None,
            fleet: None,
            shutdown_deadline_secs: 10,
            extra: String::new(),
            cameras,
        }
    }
}

/// `[[models]]` for the defect detector, named `defect`, version `version`.
pub fn defect_model_toml(version: u64) -> String {
    format!("[[models]]\nname = \"defect\"\nversion = {version}\npath = {:?}\n\n", defect_model())
}

/// A `[[cameras]]` table on the defect model; `flagging` is the body of `[cameras.flagging]` (empty: no flagging).
pub fn camera_toml(name: &str, source: &str, flagging: &str) -> String {
    let flagging = if flagging.is_empty() { "enabled = false\n" } else { flagging };
    format!("[[cameras]]\nname = \"{name}\"\nmodel = \"defect\"\nsource = {source}\n\n[cameras.flagging]\n{flagging}\n")
}

/// A dir source that keeps files (remembered as processed) and reads them as soon as they are renamed into place.
/// Creates the folder: the agent refuses to start on a camera folder that does not exist.
pub fn dir_source(path: &Path) -> String {
    std::fs::create_dir_all(path).expect("camera folder");
    format!("{{ kind = \"dir\", path = {path:?}, after = \"keep\", settle_ms = 0, poll_interval_ms = 50 }}")
}

pub fn replay_source(path: &Path, fps: f64) -> String {
    format!("{{ kind = \"replay\", path = {path:?}, fps = {fps:.1} }}")
}

/// One agent process and its state directory.
#[derive(Debug)]
pub struct Agent {
    pub device: Device,
    pub config: PathBuf,
    pub metrics_port: u16,
    process: Process,
    http: reqwest::Client,
}

impl Agent {
    /// Writes the config into `dir` (the agent's state directory too) and starts `outpost-agent run`.
    pub fn start(dir: &Path, device: &Device, setup: &Setup) -> Agent {
        let metrics_port = free_port().expect("free port");
        let mut toml = format!(
            "state_dir = {dir:?}\nshutdown_deadline_secs = {}\n\n[device]\nid = \"{}\"\nfamily = \"{FAMILY}\"\nkey = \"{}\"\n\n",
            setup.shutdown_deadline_secs,
            device.id,
            device.key.to_hex()
        );
        let _ = write!(
            toml,
            "[link]\nbroker = \"{}\"\nreconnect_min_ms = 50\nreconnect_max_ms = 500\nshutdown_timeout_ms = 5000\n",
            setup.broker
        );
        if let Some(max) = setup.outbox_max_bytes {
            let _ = write!(toml, "[link.outbox]\nmax_bytes = {max}\n");
        }
        if let Some((url, token)) = &setup.fleet {
            let _ = write!(toml, "\n[fleet]\nurl = \"{url}\"\ntoken = \"{token}\"\n");
        }
        let _ = write!(
            toml,
            "\n[telemetry]\nwindow_secs = {}\nper_frame = {}\n\n[runtime]\nthreads = 1\n\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n{}\n{}",
            setup.window_secs, setup.per_frame, setup.extra, setup.cameras
        );
        let config = dir.join("agent.toml");
        std::fs::create_dir_all(dir).expect("state dir");
        std::fs::write(&config, toml).expect("write config");
        let mut agent = Agent {
            device: device.clone(),
            metrics_port,
            process: Process::new("the agent", env!("CARGO_BIN_EXE_outpost-agent"), dir.join("agent.log"))
                .arg("run")
                .arg("--config")
                .arg(&config)
                .env("OUTPOST_LOG", "info,outpost_agent=debug"),
            config,
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client"),
        };
        agent.spawn();
        agent
    }

    /// Starts the process (again) on the same config and state; its stderr is appended to the log.
    pub fn spawn(&mut self) {
        self.process.spawn();
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Fails the test with the agent's log if it exited.
    fn check_alive(&mut self) {
        self.process.check_alive();
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        let response = self.http.get(url).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.check_alive();
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            assert!(Instant::now() < deadline, "the agent never became ready:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/healthz` answers.
    pub async fn healthy(&self) -> bool {
        matches!(self.get("/healthz").await, Some((200, _)))
    }

    /// The value of one series of `/metrics`, e.g. `outpost_frames_processed_total{camera="a"}`; 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let Some((200, text)) = self.get("/metrics").await else { return 0.0 };
        outpost_tests::process::metric(&text, series).unwrap_or(0.0)
    }

    /// Waits until `metric(series)` satisfies `condition`; returns the value.
    pub async fn wait_metric(&mut self, series: &str, condition: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            self.check_alive();
            let v = self.metric(series).await;
            if condition(v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{series} stayed at {v}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits up to `within` for the exit; returns the status and how long it took.
    pub fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        self.process.terminate(within)
    }

    /// SIGKILL: the process vanishes with whatever it held in memory.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }
}

/// Every message the device published, opened with its key (a message that fails is a test failure), with
/// telemetry and events de-duplicated by seq.
#[derive(Debug, Default)]
pub struct Seen {
    pub windows: BTreeMap<u64, WindowSummary>,
    pub frames: BTreeMap<u64, FrameBatch>,
    pub events: BTreeMap<u64, Event>,
    pub statuses: Vec<Status>,
}

impl Seen {
    pub fn of(received: &[Received], device: &Device) -> Seen {
        let mut seen = Seen::default();
        for m in received {
            let Ok((id, channel)) = topics::parse(&m.topic) else { continue };
            if id != device.id {
                continue;
            }
            let payload = auth::open(&m.payload, &device.id, &device.key)
                .unwrap_or_else(|e| panic!("{}: not sealed with the device key: {e}", m.topic));
            match channel {
                Channel::Telemetry => {
                    let t: Telemetry = protocol::decode(&payload).expect("valid telemetry");
                    match t.body {
                        TelemetryBody::Window(w) => {
                            seen.windows.insert(t.seq, *w);
                        }
                        TelemetryBody::Frames(b) => {
                            seen.frames.insert(t.seq, b);
                        }
                    }
                }
                Channel::Events => {
                    let e: Event = protocol::decode(&payload).expect("valid event");
                    seen.events.insert(e.seq, e);
                }
                Channel::Status => seen.statuses.push(protocol::decode(&payload).expect("valid status")),
                _ => {}
            }
        }
        seen
    }

    /// Every seq of telemetry and events.
    pub fn seqs(&self) -> BTreeSet<u64> {
        self.windows.keys().chain(self.frames.keys()).chain(self.events.keys()).copied().collect()
    }

    /// Seqs missing below the highest one received.
    pub fn gaps(&self) -> Vec<u64> {
        let seqs = self.seqs();
        let max = seqs.last().copied().unwrap_or(0);
        (1..=max).filter(|s| !seqs.contains(s)).collect()
    }

    /// Frames processed per camera, summed over window summaries.
    pub fn frames_per_camera(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for w in self.windows.values() {
            *out.entry(w.camera.clone()).or_insert(0) += w.frames;
        }
        out
    }

    pub fn drops_per_camera(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for w in self.windows.values() {
            *out.entry(w.camera.clone()).or_insert(0) += w.drops;
        }
        out
    }

    /// Predictions per label for one camera, summed over window summaries.
    pub fn classes(&self, camera: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for w in self.windows.values().filter(|w| w.camera == camera) {
            for (label, n) in &w.classes {
                *out.entry(label.clone()).or_insert(0) += n;
            }
        }
        out
    }

    pub fn flagged_events(&self) -> Vec<&Event> {
        self.events.values().filter(|e| matches!(e.body, EventBody::SampleFlagged(_))).collect()
    }
}

/// Subscribes to everything `device` publishes on the broker at `port`.
pub async fn subscribe(port: u16, device: &Device) -> Subscriber {
    Subscriber::start(port, &format!("{}-test", device.id), &device.filter()).await
}

/// Waits until what `sub` received satisfies `condition`; fails with `what` and the agent's log otherwise.
pub async fn wait_seen(sub: &Subscriber, agent: &Agent, what: &str, condition: impl Fn(&Seen) -> bool) -> Seen {
    let ok = sub.wait_until(WAIT, |r| condition(&Seen::of(r, &agent.device))).await;
    let seen = Seen::of(&sub.received(), &agent.device);
    assert!(ok, "timed out waiting for {what}; seen {:?}\n{}", seen.frames_per_camera(), agent.log());
    seen
}

/// Runs `outpost-agent infer` on `images` with the defect model; one JSON value per image.
pub fn infer(images: &[PathBuf]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .arg("infer")
        .arg("--model")
        .arg(defect_model())
        .args(images)
        .output()
        .expect("outpost-agent infer runs");
    assert!(out.status.success(), "infer failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// Detection counts per label over `infer`'s output.
pub fn class_counts(results: &[Value]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in results {
        for d in r["detections"].as_array().into_iter().flatten() {
            *out.entry(d["label"].as_str().expect("label").to_string()).or_insert(0) += 1;
        }
    }
    out
}

/// How many times the log says `needle`.
pub fn count_in(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}
