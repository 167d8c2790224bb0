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

/// A Mosquitto process on a free loopback port with a generated config; killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// How to configure Mosquitto.
#[derive(Debug, Clone, Default)]
pub struct MosquittoOptions {
    /// Keep sessions and queued messages across a graceful stop ([`Mosquitto::stop`]) and start.
    pub persistence: bool,
    /// `(username, password)` pairs; none means anonymous access.
    pub users: Vec<(String, String)>,
}

/// The Mosquitto binary: on PATH, or where Debian puts it.
pub fn mosquitto_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("mosquitto")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path.into_iter().chain([PathBuf::from("/usr/sbin/mosquitto")]).find(|p| p.is_file())
}

impl Mosquitto {
    pub fn start(options: MosquittoOptions) -> io::Result<Mosquitto> {
        let port = free_port()?;
        let dir = tempfile::tempdir()?;
        // Mosquitto started as root drops to the `mosquitto` user, which must be able to write its database here.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        let mut config = format!("listener {port} 127.0.0.1\nlog_dest stdout\nmax_queued_messages 100000\n");
        if options.persistence {
            config.push_str(&format!("persistence true\npersistence_location {}/\n", dir.path().display()));
        } else {
            config.push_str("persistence false\n");
        }
        if options.users.is_empty() {
            config.push_str("allow_anonymous true\n");
        } else {
            let passwords = dir.path().join("passwords");
            write_password_file(&passwords, &options.users)?;
            config.push_str(&format!("allow_anonymous false\npassword_file {}\n", passwords.display()));
        }
        std::fs::write(dir.path().join("mosquitto.conf"), config)?;
        let mut mosquitto = Mosquitto { port, dir, child: None };
        mosquitto.restart()?;
        Ok(mosquitto)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Starts the process again (same port, same config) and waits until it listens.
    pub fn restart(&mut self) -> io::Result<()> {
        let binary = mosquitto_binary().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "mosquitto is not installed (apt-get install mosquitto)")
        })?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("mosquitto.log"))?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10))
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

    /// Mosquitto's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_password_file(path: &Path, users: &[(String, String)]) -> io::Result<()> {
    std::fs::write(path, "")?;
    for (user, password) in users {
        let status = Command::new("mosquitto_passwd").arg("-b").arg(path).arg(user).arg(password).status()?;
        if !status.success() {
            return Err(io::Error::other(format!("mosquitto_passwd failed for {user}")));
        }
    }
    Ok(())
}
