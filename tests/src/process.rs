//! A daemon under test (`outpost-agent run`, `outpost-fleet serve`): started and restarted with the same command,
//! its stderr appended to a log file, stopped with SIGTERM (the exit awaited) or SIGKILL, killed when dropped.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Process {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// A process named `name` in failure messages; not started yet.
    pub fn new(name: &str, program: impl Into<OsString>, log: PathBuf) -> Process {
        Process { name: name.into(), program: program.into(), args: Vec::new(), env: Vec::new(), log, child: None }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Process {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: Into<OsString>>(mut self, args: impl IntoIterator<Item = I>) -> Process {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Process {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the process (again); its stderr is appended to the log.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", self.name));
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test with the log if the process exited.
    pub fn check_alive(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }

    /// SIGTERM, then waits up to `within` for the exit; returns the status and how long it took.
    pub fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let mut child = self.child.take().unwrap_or_else(|| panic!("{} is not running", self.name));
        let sent = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM delivered to {}", self.name);
        let sent = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, sent.elapsed());
            }
            if sent.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within {within:?} of SIGTERM:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process vanishes with whatever it held in memory.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The value of one series in a Prometheus text exposition, e.g. `outpost_frames_processed_total{camera="a"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_finds_one_series_exactly() {
        let text = "# HELP x\nx{a=\"1\"} 3\nx{a=\"10\"} 4\nx 5\n";
        assert_eq!(super::metric(text, "x{a=\"1\"}"), Some(3.0));
        assert_eq!(super::metric(text, "x"), Some(5.0));
        assert_eq!(super::metric(text, "y"), None);
    }
}
