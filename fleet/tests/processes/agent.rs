//! Real `outpost-agent run` processes for the fleet's end-to-end tests: enrolled with `outpost device enroll` (which
//! writes the agent's config), given the defect model and a camera folder, started, stopped with SIGTERM or SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use outpost_tests::broker::free_port;
use outpost_tests::process::Process;

use outpost_tests::fixtures::defect_model;

use crate::fleet::{Fleet, WAIT, root};

/// The `outpost-agent` binary. Cargo only tells a test where its own package's binaries are, so it is looked up in
/// the target directory this test runs from (`cargo test --workspace` builds it there). When it is missing it is
/// built once, into the same target directory and profile.
pub fn agent_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's own path");
        // <target>/<profile>/deps/<test>-<hash>
        let profile_dir = exe.parent().and_then(Path::parent).expect("the test runs from <target>/<profile>/deps");
        let binary = profile_dir.join(format!("outpost-agent{}", std::env::consts::EXE_SUFFIX));
        if binary.is_file() {
            return binary;
        }
        let target_dir = profile_dir.parent().expect("target dir");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!(
            "{} is missing: building it with `cargo build -p outpost-agent --bin outpost-agent --profile {profile}` \
             (`cargo test --workspace` builds it beforehand)",
            binary.display()
        );
        let status = Command::new(cargo)
            .args(["build", "-p", "outpost-agent", "--bin", "outpost-agent", "--profile", profile])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(root())
            .status()
            .expect("cargo runs");
        assert!(
            status.success() && binary.is_file(),
            "building outpost-agent failed; build it first with \
             `cargo build -p outpost-agent --bin outpost-agent`"
        );
        binary
    })
}

/// What an agent gets besides what enrollment wrote.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    pub name: String,
    pub tags: Vec<(String, String)>,
    /// `[cameras.flagging]` body; empty: no flagging.
    pub flagging: String,
    /// Replaces the broker URL enrollment wrote (e.g. a proxy in front of it).
    pub broker: Option<String>,
    /// `[link] keepalive_secs`, e.g. long enough that lost answers do not end the connection during a test.
    pub keepalive_secs: Option<u64>,
    /// A replay camera (these files copied into the camera folder, looped at this rate, a 32-frame queue) instead
    /// of a dir source: steady frame load for as long as the agent runs.
    pub replay: Option<(f64, Vec<PathBuf>)>,
    /// More tables for `agent.toml` (e.g. `[updates]`), appended last.
    pub extra: String,
}

impl AgentSetup {
    pub fn new(name: &str, site: &str) -> AgentSetup {
        AgentSetup {
            name: name.into(),
            tags: vec![("site".into(), site.into())],
            flagging: String::new(),
            broker: None,
            keepalive_secs: None,
            replay: None,
            extra: String::new(),
        }
    }
}

/// An enrolled agent process with its state dir and camera folder.
#[derive(Debug)]
pub struct Agent {
    pub name: String,
    /// The camera's folder (a dir source that keeps files and remembers them as processed).
    pub frames: PathBuf,
    metrics_port: u16,
    process: Process,
    http: reqwest::Client,
}

impl Agent {
    /// Enrolls the device with `outpost device enroll`, completes the config it wrote (state here, the defect model,
    /// one camera on a folder, 1 s windows) and starts the agent.
    pub fn enroll_and_start(fleet: &Fleet, dir: &Path, setup: &AgentSetup) -> Agent {
        let dir = dir.join(&setup.name);
        let frames = dir.join("frames");
        std::fs::create_dir_all(&frames).expect("camera folder");
        let config = dir.join("agent.toml");
        let mut enroll = Command::new(env!("CARGO_BIN_EXE_outpost"));
        enroll.args(["device", "enroll", &setup.name, "--out"]).arg(&config);
        for (k, v) in &setup.tags {
            enroll.arg("--tag").arg(format!("{k}={v}"));
        }
        enroll.env("OUTPOST_FLEET_URL", &fleet.base).env("OUTPOST_TOKEN", &fleet.admin);
        if let Some(ca) = &fleet.ca {
            enroll.env("OUTPOST_CA_FILE", ca);
        }
        let out = enroll.output().expect("outpost runs");
        assert!(out.status.success(), "enroll {}: {}", setup.name, String::from_utf8_lossy(&out.stderr));

        let mut toml = std::fs::read_to_string(&config).expect("enrollment wrote the agent config");
        toml = toml.replace("/var/lib/outpost-agent", &dir.join("state").display().to_string());
        if let Some(broker) = &setup.broker {
            let line = toml.lines().find(|l| l.starts_with("broker = ")).expect("a broker line").to_string();
            toml = toml.replace(&line, &format!("broker = \"{broker}\""));
        }
        if let Some(secs) = setup.keepalive_secs {
            toml = toml.replace("[link]\n", &format!("[link]\nkeepalive_secs = {secs}\n"));
        }
        // `[fleet]` is the last table enrollment writes: its CA goes right below it.
        if let Some(ca) = &fleet.ca {
            toml.push_str(&format!("ca_file = {ca:?}\n"));
        }
        let metrics_port = free_port().expect("port");
        let flagging = if setup.flagging.is_empty() { "enabled = false\n" } else { &setup.flagging };
        let source = match &setup.replay {
            None => format!(
                "source = {{ kind = \"dir\", path = {frames:?}, after = \"keep\", settle_ms = 0, poll_interval_ms = 50 }}"
            ),
            Some((fps, files)) => {
                for f in files {
                    std::fs::copy(f, frames.join(f.file_name().expect("file name"))).expect("copy a replay frame");
                }
                format!("queue_depth = 32\nsource = {{ kind = \"replay\", path = {frames:?}, fps = {fps:.1} }}")
            }
        };
        toml.push_str(&format!(
            "\n[telemetry]\nwindow_secs = 1\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n\
             [runtime]\nthreads = 1\n\n\
             [[models]]\nname = \"defect\"\nversion = 1\npath = {:?}\n\n\
             [[cameras]]\nname = \"cam\"\nmodel = \"defect\"\n{source}\n\n\
             [cameras.flagging]\n{flagging}\n{}",
            defect_model(),
            setup.extra
        ));
        std::fs::write(&config, toml).expect("agent config");
        let mut process = Process::new(&setup.name, agent_binary(), dir.join("agent.log"))
            .args(["run", "--config"])
            .arg(&config)
            .env("OUTPOST_LOG", "info");
        process.spawn();
        Agent {
            name: setup.name.clone(),
            frames,
            metrics_port,
            process,
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client"),
        }
    }

    /// Starts the process again on the same config and state.
    pub fn spawn(&mut self) {
        self.process.spawn();
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Copies `files` into the camera folder as a camera uploading over FTP finishes them (a hidden name, then a
    /// rename), with `prefix` so that several copies of one photo are distinct files.
    pub fn feed(&self, prefix: &str, files: &[PathBuf]) {
        for f in files {
            let name = format!("{prefix}{}", f.file_name().expect("file name").to_string_lossy());
            let hidden = self.frames.join(format!(".{name}.part"));
            std::fs::copy(f, &hidden).expect("copy");
            std::fs::rename(&hidden, self.frames.join(name)).expect("rename into place");
        }
    }

    /// One series of the agent's `/metrics` (e.g. `outpost_outbox_messages`); 0 when absent or unreachable.
    pub async fn metric(&self, series: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let Ok(response) = self.http.get(url).send().await else { return 0.0 };
        outpost_tests::process::metric(&response.text().await.unwrap_or_default(), series).unwrap_or(0.0)
    }

    /// Waits until `metric(series)` satisfies `condition`; fails with the agent's log otherwise.
    pub async fn wait_metric(&mut self, series: &str, condition: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            self.process.check_alive();
            let v = self.metric(series).await;
            if condition(v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{}: {series} stayed at {v}:\n{}", self.name, self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, and the exit status once it exits (fails the test after `WAIT`).
    pub fn terminate(&mut self) -> ExitStatus {
        self.process.terminate(WAIT).0
    }

    /// SIGKILL: the process vanishes with whatever it held in memory.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }
}
