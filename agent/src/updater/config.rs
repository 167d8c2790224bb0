//! `[updates]`: who may sign models for this device, how a new version is swapped in and judged.

use std::time::Duration;

use outpost_common::manifest::{PublicKey, TrustedKeys};
use serde::{Deserialize, Serialize};

use crate::trial::TrialConfig;
use crate::update::DownloadConfig;

/// How a new version is brought in next to the serving one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwapMode {
    /// Load the new model while the old one serves; refuse the update when both do not fit in memory.
    #[default]
    SideBySide,
    /// When both do not fit: unload the old model, pause inference for the load (skipped frames are counted), and
    /// load the old one again if the new one fails.
    UnloadFirst,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdatesConfig {
    /// Public keys (`ed25519:…`, as `outpost keygen` prints them) whose signatures make a model manifest acceptable.
    /// Empty: model updates are refused.
    pub trusted_keys: Vec<String>,
    /// How many distinct trusted keys must sign.
    pub threshold: usize,
    pub swap_mode: SwapMode,
    /// Memory the agent may use, in MiB, checked before a new model is loaded; 0: only what the system has free.
    pub memory_budget_mb: u64,
    /// Starts of an uncommitted version (one that crashes the process, say) before the agent reverts on its own.
    pub max_trial_starts: u32,
    /// How often to ask the fleet for this device's assignment over HTTPS, in seconds, besides the MQTT commands
    /// (needs `[fleet]`); also done at start-up. 0 turns it off.
    pub check_interval_secs: u64,
    pub trial: TrialConfig,
    pub download: DownloadSection,
}

impl Default for UpdatesConfig {
    fn default() -> Self {
        UpdatesConfig {
            trusted_keys: Vec::new(),
            threshold: 1,
            swap_mode: SwapMode::default(),
            memory_budget_mb: 0,
            max_trial_starts: 3,
            check_interval_secs: 3600,
            trial: TrialConfig::default(),
            download: DownloadSection::default(),
        }
    }
}

/// `[updates.download]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadSection {
    /// The whole download, retries included.
    pub deadline_secs: u64,
    /// No byte for this long fails the attempt.
    pub stall_secs: u64,
    pub max_attempts: u32,
}

impl Default for DownloadSection {
    fn default() -> Self {
        let d = DownloadConfig::default();
        DownloadSection {
            deadline_secs: d.deadline.as_secs(),
            stall_secs: d.stall_timeout.as_secs(),
            max_attempts: d.max_attempts,
        }
    }
}

impl UpdatesConfig {
    /// The trusted keys; `Ok(None)` when none are configured (updates off).
    pub fn trusted(&self) -> Result<Option<TrustedKeys>, String> {
        if self.trusted_keys.is_empty() {
            return Ok(None);
        }
        let keys = self
            .trusted_keys
            .iter()
            .map(|k| PublicKey::parse(k).map_err(|e| format!("updates.trusted_keys: `{k}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        TrustedKeys::new(keys, self.threshold).map(Some).map_err(|e| format!("updates.trusted_keys: {e}"))
    }

    pub fn download_config(&self) -> DownloadConfig {
        DownloadConfig {
            deadline: Duration::from_secs(self.download.deadline_secs.max(1)),
            stall_timeout: Duration::from_secs(self.download.stall_secs.max(1)),
            max_attempts: self.download.max_attempts.max(1),
            ..DownloadConfig::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.trusted()?;
        self.trial.validate().map_err(|e| format!("updates.trial: {e}"))
    }
}
