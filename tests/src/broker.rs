//! Real MQTT brokers for tests, each on a free loopback port: the embedded rumqttd (as a library, on its own OS
//! thread) and a Mosquitto process that can be stopped and started again on the same port.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port: bind port 0, read it, release it. Another process could take it in between; tests accept
/// that small race because neither rumqttd nor Mosquitto can listen on port 0 and report the port.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `N` distinct free loopback ports: each stays bound until all are chosen, so two of them cannot be the same port
/// (which calling [`free_port`] `N` times allows).
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let listeners = (0..N).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<io::Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(io::Error::new(e.kind(), format!("nothing listens on port {port}: {e}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The embedded rumqttd broker, MQTT 3.1.1 and 5 listeners. It cannot be stopped (rumqttd has no shutdown): it
/// lives until the test process exits. Use [`Mosquitto`] for tests that need the broker to go away.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBroker {
    pub v4_port: u16,
    pub v5_port: u16,
}

impl EmbeddedBroker {
    pub fn start() -> io::Result<EmbeddedBroker> {
        let (v4_port, v5_port) = (free_port()?, free_port()?);
        let settings = |name: &str, port: u16| rumqttd::ServerSettings {
            name: name.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: None,
            next_connection_delay_ms: 1,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 1024 * 1024,
                max_inflight_count: 500,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = rumqttd::Config {
            id: 0,
            // Filled explicitly: `RouterConfig::default()` has a zero segment size and panics.
            router: rumqttd::RouterConfig {
                max_connections: 1_000,
                max_outgoing_packet_count: 1_000,
                max_segment_size: 16 * 1024 * 1024,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: rumqttd::Strategy::default(),
            },
            v4: Some(HashMap::from([("v4".to_string(), settings("v4", v4_port))])),
            v5: Some(HashMap::from([("v5".to_string(), settings("v5", v5_port))])),
            ..rumqttd::Config::default()
        };
        std::thread::Builder::new().name("rumqttd".into()).spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })?;
        wait_for_port(v4_port, Duration::from_secs(10))?;
        wait_for_port(v5_port, Duration::from_secs(10))?;
        Ok(EmbeddedBroker { v4_port, v5_port })
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.v4_port)
    }

    pub fn url_v5(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.v5_port)
    }
}

/// Mosquitto's log file and its stdout/stderr, in its directory.
const LOG: &str = "mosquitto.log";
const OUT: &str = "mosquitto.out";

/// A Mosquitto process on a free loopback port with a generated config; killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    port: u16,
    /// The plain, anonymous listener for test subscribers when the main one is guarded (TLS or passwords).
    open_port: Option<u16>,
    tls: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// How to configure Mosquitto.
#[derive(Debug, Clone, Default)]
pub struct MosquittoOptions {
    /// Keep sessions and queued messages across a graceful stop ([`Mosquitto::stop`]) and start.
    pub persistence: bool,
    /// `(username, password)` pairs for the main listener; none means anonymous access.
    pub users: Vec<(String, String)>,
    /// Serve the main listener over TLS (`mqtts://`).
    pub tls: Option<MosquittoTls>,
    /// A password file and an ACL file (as the fleet writes them) for the main listener, instead of `users`.
    pub auth_files: Option<(PathBuf, PathBuf)>,
}

/// The main listener's TLS: PEM files (copied into the broker's directory, so any path works) and whether a client
/// certificate signed by `cafile` is required.
#[derive(Debug, Clone)]
pub struct MosquittoTls {
    pub cafile: PathBuf,
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub require_certificate: bool,
}

/// The Mosquitto binary: on PATH, or where Debian puts it.
pub fn mosquitto_binary() -> Option<PathBuf> {
    find_binary("mosquitto", "/usr/sbin")
}

/// `name` on PATH, or in `fallback` (Debian puts `mosquitto` in /usr/sbin, often not on a user's PATH).
fn find_binary(name: &str, fallback: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path.into_iter().chain([Path::new(fallback).join(name)]).find(|p| p.is_file())
}

impl Mosquitto {
    /// Starts Mosquitto. A guarded main listener (TLS or passwords) comes with a second, plain and anonymous
    /// loopback listener ([`Mosquitto::open_port`]) where tests watch what arrives, like the fleet's own client would.
    pub fn start(options: MosquittoOptions) -> io::Result<Mosquitto> {
        let dir = tempfile::tempdir()?;
        // Mosquitto started as root drops to the `mosquitto` user, which must be able to write its database and log
        // here and read the certificates and the password file.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        let guarded = options.tls.is_some() || !options.users.is_empty() || options.auth_files.is_some();
        // Written to a file by Mosquitto itself, which flushes every line (its stdout is block-buffered).
        let mut common = format!("log_dest file {}\nmax_queued_messages 100000\n", dir.path().join(LOG).display());
        if options.persistence {
            common.push_str(&format!("persistence true\npersistence_location {}/\n", dir.path().display()));
        } else {
            common.push_str("persistence false\n");
        }
        if guarded {
            // Authentication settings below apply to the listener above them.
            common.push_str("per_listener_settings true\n");
        }
        let mut main = String::new();
        if let Some(tls) = &options.tls {
            let copy = |from: &Path, name: &str| -> io::Result<PathBuf> {
                let to = dir.path().join(name);
                std::fs::copy(from, &to)?;
                Ok(to)
            };
            main.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                copy(&tls.cafile, "ca.pem")?.display(),
                copy(&tls.certfile, "server.pem")?.display(),
                copy(&tls.keyfile, "server.key")?.display(),
                tls.require_certificate,
            ));
        }
        if let Some((passwords, acl)) = &options.auth_files {
            let (p, a) = (dir.path().join("fleet.passwd"), dir.path().join("fleet.acl"));
            // Copies the `mosquitto` user (Mosquitto drops to it when started as root) can read.
            for (from, to) in [(passwords, &p), (acl, &a)] {
                std::fs::copy(from, to)?;
                std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
            }
            main.push_str(&format!("allow_anonymous false\npassword_file {}\nacl_file {}\n", p.display(), a.display()));
        } else if options.users.is_empty() {
            main.push_str("allow_anonymous true\n");
        } else {
            let passwords = dir.path().join("passwords");
            write_password_file(&passwords, &options.users)?;
            main.push_str(&format!("allow_anonymous false\npassword_file {}\n", passwords.display()));
        }
        let mut mosquitto = Mosquitto { port: 0, open_port: None, tls: options.tls.is_some(), dir, child: None };
        // Another process (another test, another checkout's tests) can take a free port between `free_port` and
        // Mosquitto binding it; Mosquitto then exits, and fresh ports are tried.
        let mut attempts = 0;
        loop {
            mosquitto.port = free_port()?;
            mosquitto.open_port = None;
            let mut config = format!("{common}listener {} 127.0.0.1\n{main}", mosquitto.port);
            if guarded {
                let open_port = std::iter::repeat_with(free_port)
                    .take(10)
                    .find(|p| p.as_ref().map_or(true, |p| *p != mosquitto.port))
                    .unwrap_or_else(|| Err(io::Error::other("no second free port")))?;
                config.push_str(&format!("listener {open_port} 127.0.0.1\nallow_anonymous true\n"));
                mosquitto.open_port = Some(open_port);
            }
            std::fs::write(mosquitto.dir.path().join("mosquitto.conf"), config)?;
            attempts += 1;
            match mosquitto.restart() {
                Ok(()) => return Ok(mosquitto),
                Err(e) if attempts >= 5 => return Err(e),
                Err(_) => mosquitto.kill(),
            }
        }
    }

    /// The main listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A plain, anonymous listener: the second one of a guarded broker, else the main one.
    pub fn open_port(&self) -> u16 {
        self.open_port.unwrap_or(self.port)
    }

    /// The main listener's URL: `mqtts://` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts the process again (same ports, same config) and waits until it runs: its log says so after every
    /// listener is bound; a bind failure makes it exit instead.
    pub fn restart(&mut self) -> io::Result<()> {
        let binary = mosquitto_binary().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "mosquitto is not installed (apt-get install mosquitto)")
        })?;
        let running = |log: &str| log.matches(" running\n").count();
        let before = running(&self.log());
        // Anything printed before the log file is open (a config error) goes here.
        let out = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(OUT))?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                return Err(io::Error::other(format!("mosquitto exited ({status}):\n{}", self.log())));
            }
            if running(&self.log()) > before {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("mosquitto not running:\n{}", self.log())));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: the broker vanishes at once, sessions and queues with it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: with persistence on, sessions and queued messages are saved for the next start.
    pub fn stop(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Mosquitto's own log (and anything it printed), for failure messages.
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        read(OUT) + &read(LOG)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_password_file(path: &Path, users: &[(String, String)]) -> io::Result<()> {
    // Mosquitto's own tool writes its hash format (`$7$`, PBKDF2-SHA512); it ships in the same Debian package.
    let tool = find_binary("mosquitto_passwd", "/usr/bin").ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "mosquitto_passwd is not installed (apt-get install mosquitto)")
    })?;
    std::fs::write(path, "")?;
    for (user, password) in users {
        let status = Command::new(&tool).arg("-b").arg(path).arg(user).arg(password).status()?;
        if !status.success() {
            return Err(io::Error::other(format!("mosquitto_passwd failed for {user}")));
        }
    }
    Ok(())
}
