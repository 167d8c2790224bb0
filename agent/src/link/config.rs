//! `LinkConfig`, the `[link]` table of the agent's TOML config, and the pure parts of connecting: broker URL parsing
//! and reconnect backoff.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::LinkError;

/// How the agent reaches the fleet's MQTT broker. Embedded in the app's config; the app may fill `password` from
/// the environment before calling [`super::Link::start`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// `mqtt://host:port` (default port 1883) or `mqtts://host:port` (default 8883).
    pub broker: String,
    #[serde(default)]
    pub protocol: MqttVersion,
    #[serde(default = "defaults::keepalive_secs")]
    pub keepalive_secs: u64,
    /// Defaults to the device id, which is what enrollment issues.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub tls: TlsFiles,
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Publishes awaiting PUBACK at once.
    #[serde(default = "defaults::inflight")]
    pub inflight: u16,
    #[serde(default = "defaults::reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// How long a graceful shutdown may spend delivering the outbox before it disconnects anyway.
    #[serde(default = "defaults::shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// MQTT 5 session expiry: how long the broker keeps the session (and queued commands) while offline.
    #[serde(default = "defaults::session_expiry_secs")]
    pub session_expiry_secs: u32,
}

/// The durable outbox: where, how big, how often it is made durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// The store directory, for [`LinkConfig::open_store`]; the app may pass its own store instead.
    #[serde(default = "defaults::outbox_path")]
    pub path: PathBuf,
    /// The cap; past it the oldest messages are dropped (and counted).
    #[serde(default = "defaults::outbox_max_bytes")]
    pub max_bytes: u64,
    /// Group commit: appends within this interval share one fsync. Also the most a `kill -9` can lose.
    #[serde(default = "defaults::flush_interval_ms")]
    pub flush_interval_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            path: defaults::outbox_path(),
            max_bytes: defaults::outbox_max_bytes(),
            flush_interval_ms: defaults::flush_interval_ms(),
        }
    }
}

/// PEM files for `mqtts://`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MqttVersion {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

mod defaults {
    use std::path::PathBuf;

    pub fn keepalive_secs() -> u64 {
        30
    }
    pub fn inflight() -> u16 {
        64
    }
    pub fn reconnect_min_ms() -> u64 {
        200
    }
    pub fn reconnect_max_ms() -> u64 {
        30_000
    }
    pub fn shutdown_timeout_ms() -> u64 {
        5_000
    }
    pub fn session_expiry_secs() -> u32 {
        7 * 24 * 3600
    }
    pub fn outbox_path() -> PathBuf {
        PathBuf::from("/var/lib/outpost-agent/state")
    }
    pub fn outbox_max_bytes() -> u64 {
        64 * 1024 * 1024
    }
    pub fn flush_interval_ms() -> u64 {
        20
    }
}

impl LinkConfig {
    /// A config with every default, for `broker`.
    pub fn new(broker: impl Into<String>) -> LinkConfig {
        LinkConfig {
            broker: broker.into(),
            protocol: MqttVersion::default(),
            keepalive_secs: defaults::keepalive_secs(),
            username: None,
            password: None,
            tls: TlsFiles::default(),
            outbox: OutboxConfig::default(),
            inflight: defaults::inflight(),
            reconnect_min_ms: defaults::reconnect_min_ms(),
            reconnect_max_ms: defaults::reconnect_max_ms(),
            shutdown_timeout_ms: defaults::shutdown_timeout_ms(),
            session_expiry_secs: defaults::session_expiry_secs(),
        }
    }

    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<Broker, LinkError> {
        let broker = parse_broker_url(&self.broker)?;
        let bad = |what: &str| Err(LinkError::Config(what.to_string()));
        if self.keepalive_secs < 5 {
            return bad("keepalive_secs must be at least 5");
        }
        if self.inflight == 0 {
            return bad("inflight must be at least 1");
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return bad("reconnect_min_ms must be > 0 and <= reconnect_max_ms");
        }
        // A message larger than the cap is refused (and logged) when it is appended; below this, ordinary window
        // summaries and per-frame batches would start to be refused too.
        if self.outbox.max_bytes < 64 * 1024 {
            return bad("outbox.max_bytes must be at least 64 KiB");
        }
        if broker.tls && self.tls.ca_file.is_none() {
            return bad("mqtts:// needs tls.ca_file");
        }
        Ok(broker)
    }
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`; IPv6 hosts in brackets.
pub fn parse_broker_url(url: &str) -> Result<Broker, LinkError> {
    let bad = |why: &str| LinkError::Config(format!("broker `{url}`: {why}"));
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(bad("expected mqtt://host:port or mqtts://host:port"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') {
        return Err(bad("no path or user info allowed"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("bad port"))?,
        None if tls => 8883,
        None => 1883,
    };
    Ok(Broker { host: host.to_string(), port, tls })
}

/// The delay before reconnect attempt `attempt` (0-based): exponential from `min`, capped at `max`, with "equal
/// jitter" (half fixed, half random by `jitter` in 0..1) so a fleet restarting together does not reconnect together.
pub fn backoff(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let base = min.saturating_mul(2u32.saturating_pow(attempt.min(20))).min(max);
    let half = base / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, expected: Result<(&str, u16, bool), &str>) {
        match (parse_broker_url(url), expected) {
            (Ok(b), Ok((host, port, tls))) => assert_eq!((b.host.as_str(), b.port, b.tls), (host, port, tls), "{url}"),
            (Err(e), Err(fragment)) => assert!(e.to_string().contains(fragment), "{url}: `{e}` lacks `{fragment}`"),
            (got, want) => panic!("{url}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn broker_urls() {
        check("mqtt://localhost:1884", Ok(("localhost", 1884, false)));
        check("mqtt://fleet.example", Ok(("fleet.example", 1883, false)));
        check("mqtts://fleet.example/", Ok(("fleet.example", 8883, true)));
        check("mqtts://[::1]:9000", Ok(("::1", 9000, true)));
        check("mqtt://[::1]", Ok(("::1", 1883, false)));
        check("http://x:1", Err("expected mqtt://"));
        check("mqtt://:1883", Err("no host"));
        check("mqtt://h:0", Err("bad port"));
        check("mqtt://h:99999", Err("bad port"));
        check("mqtt://u:p@h:1", Err("user info"));
        check("mqtt://h:1/topic", Err("no path"));
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(30));
        assert_eq!(backoff(0, min, max, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(0, min, max, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(3, min, max, 1.0), Duration::from_millis(1600));
        assert_eq!(backoff(30, min, max, 1.0), max);
        assert_eq!(backoff(u32::MAX, min, max, 0.5), Duration::from_millis(22_500));
    }

    #[test]
    fn config_parses_with_defaults_and_refuses_unknown_fields() {
        let config: LinkConfig =
            toml::from_str("broker = \"mqtt://h:1\"\nprotocol = \"5\"\n[outbox]\nmax_bytes = 2097152\n")
                .expect("parses");
        assert_eq!(config.protocol, MqttVersion::V5);
        assert_eq!(config.outbox.max_bytes, 2 * 1024 * 1024);
        assert_eq!(config.outbox.flush_interval_ms, 20);
        assert!(config.validate().is_ok());
        assert!(toml::from_str::<LinkConfig>("broker = \"mqtt://h\"\nbrokr = 1\n").is_err());
        let mut small = LinkConfig::new("mqtt://h");
        small.outbox.max_bytes = 10;
        assert!(small.validate().is_err_and(|e| e.to_string().contains("max_bytes")));
        assert!(LinkConfig::new("mqtts://h").validate().is_err_and(|e| e.to_string().contains("ca_file")));
    }
}
