//! `fleet.toml`: parsed strictly, validated once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::broker::BrokerConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How long a graceful shutdown (SIGTERM) may take.
    #[serde(default = "default_deadline")]
    pub shutdown_deadline_secs: u64,
    #[serde(default)]
    pub broker: BrokerConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// Retention, roll-ups, de-duplication and drift settings.
    #[serde(default)]
    pub ingest: crate::ingest::IngestConfig,
    #[serde(default)]
    pub annotation: AnnotationConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The model registry: trusted signing keys, size caps.
    #[serde(default)]
    pub models: crate::models::ModelsConfig,
    #[serde(default)]
    pub rollouts: crate::rollout::RolloutConfig,
}

/// `[alerts]`: where drift alerts go besides the store, the log and the API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Each alert is POSTed here as JSON (retried with backoff).
    pub webhook_url: Option<String>,
}

/// `[annotation]`: the queue, and each model's class names (until the model registry provides them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnnotationConfig {
    pub queue: crate::annotate::QueueConfig,
    /// Class names by model name, in class-id order: what labels may name.
    pub labels: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The API, the console and `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// The base URL devices and people use (written into enrolled agents' configs); defaults to `http://<listen>`.
    pub public_url: Option<String>,
    /// The MQTT URL devices use; defaults to the embedded broker's listener (or `broker.url`).
    pub public_mqtt_url: Option<String>,
    /// Serve HTTPS instead of plain HTTP.
    pub tls: Option<crate::api::tls::HttpTls>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            public_mqtt_url: None,
            tls: None,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/outpost-fleet")
}

fn default_deadline() -> u64 {
    10
}

/// The commented example printed by `outpost-fleet print-config`.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl FleetConfig {
    pub fn parse(text: &str, path: &Path) -> Result<FleetConfig, ConfigError> {
        let mut config: FleetConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        config.models.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<FleetConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let b = &self.broker;
        if !b.embedded && b.url.is_none() {
            return Err(ConfigError::Invalid("broker: set `embedded = true` or an external `url`".into()));
        }
        if b.embedded && b.listen == b.listen_v5 {
            return Err(ConfigError::Invalid("broker.listen and broker.listen_v5 must differ".into()));
        }
        self.models.validate().map_err(ConfigError::Invalid)?;
        self.ingest.validate().map_err(|e| ConfigError::Invalid(format!("ingest: {e}")))?;
        Ok(())
    }

    pub fn public_http(&self) -> String {
        self.http.public_url.clone().unwrap_or_else(|| format!("{}://{}", self.http_scheme(), self.http.listen))
    }

    /// `https` when the API serves TLS.
    pub fn http_scheme(&self) -> &'static str {
        if self.http.tls.is_some() { "https" } else { "http" }
    }

    pub fn public_mqtt(&self) -> String {
        if let Some(url) = &self.http.public_mqtt_url {
            return url.clone();
        }
        match (&self.broker.url, self.broker.embedded) {
            (Some(url), false) => url.clone(),
            _ => format!("mqtt://{}", self.broker.listen),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_mistakes_are_named() {
        let path = Path::new("fleet.toml");
        let config = FleetConfig::parse(DEFAULT_CONFIG, path).expect("the example is valid");
        assert!(config.broker.embedded);
        let err = FleetConfig::parse("[broker]\nembeded = true\n", path).expect_err("typo").to_string();
        assert!(err.contains("embeded"), "{err}");
        let err = FleetConfig::parse("[broker]\nembedded = false\n", path).expect_err("no broker").to_string();
        assert!(err.contains("external `url`"), "{err}");
        let err = FleetConfig::parse("[ingest]\nworkers = 0\n", path).expect_err("no worker").to_string();
        assert!(err.contains("workers"), "{err}");
        assert_eq!(FleetConfig::parse("[ingest]\nworkers = 3\n", path).expect("valid").ingest.workers(), 3);
    }

    #[test]
    fn https_is_optional_and_changes_the_public_url() {
        let path = Path::new("fleet.toml");
        let plain = FleetConfig::parse("[http]\nlisten = \"127.0.0.1:9000\"\n", path).expect("valid");
        assert_eq!(plain.public_http(), "http://127.0.0.1:9000");
        let text = "[http]\nlisten = \"127.0.0.1:9000\"\ntls = { cert_file = \"c.pem\", key_file = \"k.pem\" }\n";
        let tls = FleetConfig::parse(text, path).expect("valid");
        assert_eq!(tls.public_http(), "https://127.0.0.1:9000");
        assert_eq!(tls.http.tls.as_ref().map(|t| t.handshake_timeout_secs), Some(10));
        let err = FleetConfig::parse("[http.tls]\ncert_file = \"c.pem\"\n", path).expect_err("no key").to_string();
        assert!(err.contains("key_file"), "{err}");
    }
}
