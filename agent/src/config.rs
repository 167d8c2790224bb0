//! The agent's configuration: parsed strictly, secrets from the environment, validated once into a [`Config`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use outpost_common::protocol::auth::DeviceKey;
use outpost_common::topics::DeviceId;
use serde::{Deserialize, Serialize};

use crate::flagging::FlaggingConfig;
use crate::link::LinkConfig;
use crate::samples::SamplesConfig;
use crate::source::SourceConfig;
use crate::updater::config::UpdatesConfig;

/// The commented default configuration, printed by `outpost-agent print-config`.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// `agent.toml` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_deadline")]
    pub shutdown_deadline_secs: u64,
    pub device: DeviceConfig,
    pub link: LinkConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub samples: SamplesSection,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub updates: UpdatesConfig,
    pub models: Vec<ModelConfig>,
    pub cameras: Vec<CameraConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
    #[serde(default)]
    pub family: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for the fleet's HTTPS, besides the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl FleetConfig {
    /// The certificates of `ca_file` (none when unset), for every HTTP client that talks to the fleet.
    pub fn roots(&self) -> Result<Vec<reqwest::Certificate>, ConfigError> {
        let Some(path) = &self.ca_file else { return Ok(Vec::new()) };
        let pem = std::fs::read(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ConfigError::Invalid(format!("fleet.ca_file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ConfigError::Invalid(format!("fleet.ca_file {}: no certificate", path.display())));
        }
        Ok(certs)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub window_secs: u64,
    /// Also send every frame's result (batched per window), not only the window summaries.
    pub per_frame: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { window_secs: 10, per_frame: false }
    }
}

/// `[samples]`: the queue settings, with `dir` defaulting under `state_dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplesSection {
    pub dir: Option<PathBuf>,
    pub max_bytes: u64,
    pub max_count: usize,
}

impl Default for SamplesSection {
    fn default() -> Self {
        let d = SamplesConfig::default();
        SamplesSection { dir: None, max_bytes: d.max_bytes, max_count: d.max_count }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub ort_lib: Option<PathBuf>,
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: "127.0.0.1:9464".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub version: u64,
    pub path: PathBuf,
    #[serde(default = "default_conf")]
    pub conf: f32,
    #[serde(default = "default_iou")]
    pub iou: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub name: String,
    pub model: String,
    pub source: SourceConfig,
    #[serde(default = "default_depth")]
    pub queue_depth: usize,
    #[serde(default)]
    pub flagging: FlaggingConfig,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/outpost-agent")
}
fn default_deadline() -> u64 {
    10
}
fn default_conf() -> f32 {
    0.25
}
fn default_iou() -> f32 {
    0.7
}
fn default_depth() -> usize {
    4
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A validated configuration: what the app runs from.
#[derive(Debug, Clone)]
pub struct Config {
    pub raw: AgentConfig,
    pub device: DeviceId,
    pub key: DeviceKey,
    pub samples: SamplesConfig,
}

impl AgentConfig {
    /// Parses TOML text (unknown keys are errors).
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Reads, applies environment overrides (through `env`, for testing) and validates.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut raw = Self::parse(&text, path)?;
        if let Some(v) = env("OUTPOST_DEVICE_KEY") {
            raw.device.key = Some(v);
        }
        if let Some(v) = env("OUTPOST_MQTT_PASSWORD") {
            raw.link.password = Some(v);
        }
        if let Some(v) = env("OUTPOST_HTTP_TOKEN") {
            raw.fleet.token = Some(v);
        }
        raw.validate()
    }

    /// Checks everything that can be checked without starting anything.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let device = DeviceId::new(&self.device.id).map_err(|e| invalid(format!("device.id: {e}")))?;
        let key_hex = self
            .device
            .key
            .as_deref()
            .ok_or_else(|| invalid("device.key is missing (set it, or OUTPOST_DEVICE_KEY)".into()))?;
        let key = DeviceKey::from_hex(key_hex).map_err(|e| invalid(format!("device.key: {e}")))?;
        if self.telemetry.window_secs == 0 {
            return Err(invalid("telemetry.window_secs must be at least 1".into()));
        }
        if self.cameras.is_empty() {
            return Err(invalid("no [[cameras]]: the agent would have nothing to do".into()));
        }
        let mut models = BTreeSet::new();
        for m in &self.models {
            if !models.insert(m.name.as_str()) {
                return Err(invalid(format!("model `{}` is defined twice", m.name)));
            }
            if !(0.0..=1.0).contains(&m.conf) || !(0.0..=1.0).contains(&m.iou) {
                return Err(invalid(format!("model `{}`: conf and iou must lie in 0..1", m.name)));
            }
        }
        let mut cameras = BTreeSet::new();
        for c in &self.cameras {
            if c.name.is_empty() || c.name.len() > 128 || c.name.contains(['/', '\\']) {
                return Err(invalid(format!("camera name `{}` must be 1..128 characters without slashes", c.name)));
            }
            if !cameras.insert(c.name.as_str()) {
                return Err(invalid(format!("camera `{}` is defined twice", c.name)));
            }
            if !models.contains(c.model.as_str()) {
                return Err(invalid(format!(
                    "camera `{}` uses model `{}`, which no [[models]] defines",
                    c.name, c.model
                )));
            }
            c.flagging.validate().map_err(|e| invalid(format!("camera `{}` flagging: {e}", c.name)))?;
            if c.queue_depth == 0 {
                return Err(invalid(format!("camera `{}`: queue_depth must be at least 1", c.name)));
            }
        }
        self.updates.validate().map_err(invalid)?;
        let samples = SamplesConfig {
            dir: self.samples.dir.clone().unwrap_or_else(|| self.state_dir.join("samples")),
            max_bytes: self.samples.max_bytes,
            max_count: self.samples.max_count,
            ..SamplesConfig::default()
        };
        Ok(Config { raw: self, device, key, samples })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).expect("write");
        AgentConfig::load(&path, |k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn the_default_config_parses_and_validates_with_a_key() {
        let cfg = load(DEFAULT_CONFIG, &[("OUTPOST_DEVICE_KEY", KEY), ("OUTPOST_MQTT_PASSWORD", "s3cret")])
            .expect("default config is valid");
        assert_eq!(cfg.device.as_str(), "device-1");
        assert_eq!(cfg.raw.link.password.as_deref(), Some("s3cret"), "environment overrides the file");
        assert_eq!(cfg.samples.dir, PathBuf::from("/var/lib/outpost-agent/samples"));
        assert_eq!(cfg.raw.cameras[0].flagging.rate.per_hour, Some(60));
    }

    #[test]
    fn the_fleet_ca_file_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fleet = |ca: Option<PathBuf>| FleetConfig { ca_file: ca, ..FleetConfig::default() };
        assert!(fleet(None).roots().expect("no file, no roots").is_empty());
        let ca = outpost_tests::pki::TestCa::new(dir.path(), "fleet").expect("test CA");
        assert_eq!(fleet(Some(ca.cert.clone())).roots().expect("a PEM certificate").len(), 1);
        let err = fleet(Some(dir.path().join("absent.pem"))).roots().expect_err("missing").to_string();
        assert!(err.contains("absent.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = fleet(Some(empty)).roots().expect_err("no certificate").to_string();
        assert!(err.contains("no certificate"), "{err}");
    }

    #[test]
    fn mistakes_get_clear_errors() {
        let check = |edit: &dyn Fn(&str) -> String, fragment: &str| {
            let err = load(&edit(DEFAULT_CONFIG), &[("OUTPOST_DEVICE_KEY", KEY)]).expect_err(fragment).to_string();
            assert!(err.contains(fragment), "`{err}` lacks `{fragment}`");
        };
        check(&|t| t.replace("window_secs = 10", "window_secs = 10\nwindow = 3"), "unknown field `window`");
        check(&|t| t.replace("model = \"defect\"", "model = \"other\""), "no [[models]] defines");
        check(&|t| t.replace("id = \"device-1\"", "id = \"dev/1\""), "device.id");
        check(&|t| t.replace("window_secs = 10", "window_secs = 0"), "window_secs");
        check(&|t| t.replace("low = 0.25, high = 0.5", "low = 0.5, high = 0.25"), "flagging");
        check(&|t| t.replace("kind = \"dir\"", "kind = \"ftp\""), "unknown variant `ftp`");
        let err = load(DEFAULT_CONFIG, &[]).expect_err("no key").to_string();
        assert!(err.contains("OUTPOST_DEVICE_KEY"), "{err}");
        let err = load(DEFAULT_CONFIG, &[("OUTPOST_DEVICE_KEY", "xyz")]).expect_err("bad key").to_string();
        assert!(err.contains("device.key"), "{err}");
    }
}
