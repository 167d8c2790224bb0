//! `[models]` in fleet.toml: whose signatures the registry accepts, and how large a pushed model may be.

use std::path::{Path, PathBuf};

use outpost_common::manifest::keys::{PUBLIC_KEY_PREFIX, read_public_key};
use outpost_common::manifest::{KeyId, PublicKey, TrustedKeys};
use serde::{Deserialize, Serialize};

/// `[models]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Public keys whose signatures make a pushed manifest acceptable: the one-line `ed25519:…` form that
    /// `outpost keygen` prints (as the agent's `[updates] trusted_keys` takes them), a PEM key, or the path of a
    /// `.pub`/`.pem` file. Empty: pushes are refused (the fleet holds no signing key and trusts nobody by default).
    pub trusted_keys: Vec<String>,
    /// How many distinct trusted keys must sign a manifest.
    pub threshold: usize,
    /// Revoked keys: key ids (16 hex digits) or public keys in any of the forms above.
    pub revoked_keys: Vec<String>,
    /// The largest artifact accepted, in MiB. The artifact is held in memory while it is checked.
    pub max_artifact_mb: u64,
    /// Golden images per push, and their total size in MiB.
    pub max_golden_images: usize,
    pub max_golden_mb: u64,
    /// The ONNX Runtime library used to check pushed models; default: the usual lookup (`ORT_DYLIB_PATH`, next to
    /// the executable, the build-time copy).
    pub ort_lib: Option<PathBuf>,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            trusted_keys: Vec::new(),
            threshold: 1,
            revoked_keys: Vec::new(),
            max_artifact_mb: 512,
            max_golden_images: 32,
            max_golden_mb: 64,
            ort_lib: None,
        }
    }
}

fn is_inline(value: &str) -> bool {
    let text = value.trim();
    text.starts_with(PUBLIC_KEY_PREFIX) || text.starts_with("-----BEGIN")
}

/// A key given inline or as a file.
fn public_key(value: &str) -> Result<PublicKey, String> {
    if is_inline(value) {
        return PublicKey::parse(value).map_err(|e| format!("models.trusted_keys: `{value}`: {e}"));
    }
    let path = Path::new(value.trim());
    read_public_key(path).map_err(|e| format!("models: key file {}: {e}", path.display()))
}

impl ModelsConfig {
    pub fn max_artifact_bytes(&self) -> u64 {
        self.max_artifact_mb.saturating_mul(1 << 20)
    }

    pub fn max_golden_bytes(&self) -> u64 {
        self.max_golden_mb.saturating_mul(1 << 20)
    }

    /// Makes relative key file paths relative to `base` (the config file's folder) instead of the working directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        for entry in self.trusted_keys.iter_mut().chain(self.revoked_keys.iter_mut()) {
            if !is_inline(entry) && entry.trim().parse::<KeyId>().is_err() && Path::new(entry.trim()).is_relative() {
                *entry = base.join(entry.trim()).display().to_string();
            }
        }
    }

    /// The trusted keys; `Ok(None)` when none are configured (pushes refused).
    pub fn trusted(&self) -> Result<Option<TrustedKeys>, String> {
        if self.trusted_keys.is_empty() {
            return Ok(None);
        }
        let keys = self.trusted_keys.iter().map(|k| public_key(k)).collect::<Result<Vec<_>, _>>()?;
        let revoked = self
            .revoked_keys
            .iter()
            .map(|k| match k.trim().parse::<KeyId>() {
                Ok(id) => Ok(id),
                Err(_) => public_key(k).map(|key| key.id().clone()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        TrustedKeys::new(keys, self.threshold)
            .and_then(|t| t.with_revoked(revoked))
            .map(Some)
            .map_err(|e| format!("models.trusted_keys: {e}"))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_artifact_mb == 0 {
            return Err("models.max_artifact_mb must be at least 1".into());
        }
        self.trusted().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use outpost_common::manifest::SecretKey;

    use super::*;

    fn config(keys: &[String], threshold: usize) -> ModelsConfig {
        ModelsConfig { trusted_keys: keys.to_vec(), threshold, ..ModelsConfig::default() }
    }

    #[test]
    fn keys_are_lines_pem_or_files() {
        let dir = tempfile::tempdir().expect("dir");
        let (a, b, c) = (
            SecretKey::from_seed(&[1; 32]).public(),
            SecretKey::from_seed(&[2; 32]).public(),
            SecretKey::from_seed(&[3; 32]).public(),
        );
        std::fs::write(dir.path().join("c.pub"), c.to_line()).expect("write");
        let keys = [a.to_line(), b.to_pem().expect("pem"), "c.pub".to_string()];
        let mut c = config(&keys, 2);
        c.resolve_paths(dir.path());
        let trusted = c.trusted().expect("valid").expect("some");
        assert_eq!(trusted.keys().count(), 3);
        assert_eq!(trusted.threshold(), 2);
        assert_eq!(config(&[], 1).trusted(), Ok(None));
    }

    #[test]
    fn mistakes_are_named() {
        let line = SecretKey::from_seed(&[1; 32]).public().to_line();
        let check = |c: ModelsConfig, fragment: &str| {
            let err = c.validate().expect_err("invalid");
            assert!(err.contains(fragment), "`{err}` lacks `{fragment}`");
        };
        check(config(&["ed25519:AAAA".into()], 1), "ed25519:AAAA");
        check(config(&["/nonexistent/missing.pub".into()], 1), "missing.pub");
        check(config(std::slice::from_ref(&line), 2), "models.trusted_keys");
        check(ModelsConfig { max_artifact_mb: 0, ..config(&[line], 1) }, "max_artifact_mb");
    }
}
