//! The trusted key set as the command line describes it: public keys, a threshold, revocations, rotations.

use std::path::{Path, PathBuf};

use anyhow::Context;
use outpost_common::manifest::keys::{read_public_key, read_secret_key};
use outpost_common::manifest::{KeyId, PublicKey, SecretKey, TrustedKeys, VerifyError};

#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// A trusted public key: a .pub or .pem file, or the one-line `ed25519:...` form. Repeat for several keys.
    #[arg(long = "trusted", required = true, value_name = "PUB")]
    trusted: Vec<String>,
    /// How many distinct trusted keys must sign.
    #[arg(long, default_value_t = 1)]
    threshold: usize,
    /// A revoked key: its id, a .pub file or the one-line form. Repeatable.
    #[arg(long = "revoked", value_name = "KEY")]
    revoked: Vec<String>,
    /// A signed key-set rotation to apply (after verifying it) before anything else. Repeatable, oldest first.
    #[arg(long = "keyset", value_name = "FILE")]
    keysets: Vec<PathBuf>,
}

/// A public key from a command-line value: the one-line form itself, or a file holding either form.
pub fn public_key(value: &str) -> anyhow::Result<PublicKey> {
    if value.starts_with(outpost_common::manifest::keys::PUBLIC_KEY_PREFIX) {
        return Ok(PublicKey::parse(value)?);
    }
    Ok(read_public_key(Path::new(value))?)
}

/// A key id from a command-line value: the id itself, or any form of the public key.
pub fn key_id(value: &str) -> anyhow::Result<KeyId> {
    match value.parse::<KeyId>() {
        Ok(id) => Ok(id),
        Err(_) => Ok(public_key(value)
            .with_context(|| format!("`{value}` is neither a key id nor a public key"))?
            .id()
            .clone()),
    }
}

pub fn secret_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<SecretKey>> {
    paths.iter().map(|p| Ok(read_secret_key(p)?)).collect()
}

/// The trusted keys before rotations, or an error in how they were given.
fn root(args: &TrustArgs) -> anyhow::Result<TrustedKeys> {
    let keys = args.trusted.iter().map(|k| public_key(k)).collect::<anyhow::Result<Vec<_>>>()?;
    let revoked = args.revoked.iter().map(|k| key_id(k)).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(TrustedKeys::new(keys, args.threshold)?.with_revoked(revoked)?)
}

/// The trusted keys after verifying and applying every `--keyset`: `Ok(Err(_))` when a rotation is rejected.
pub fn load(args: &TrustArgs) -> anyhow::Result<Result<TrustedKeys, (PathBuf, VerifyError)>> {
    let mut trusted = root(args)?;
    for path in &args.keysets {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        trusted = match trusted.rotate(&bytes) {
            Ok(next) => next,
            Err(e) => return Ok(Err((path.clone(), e))),
        };
    }
    Ok(Ok(trusted))
}

/// One line per key, for output.
pub fn describe(trusted: &TrustedKeys) -> String {
    let keys: Vec<String> = trusted.keys().map(|k| format!("  {}  {}", k.id(), k.to_line())).collect();
    let revoked: Vec<&str> = trusted.revoked().map(KeyId::as_str).collect();
    let mut out = format!(
        "key set version {}: {} of {} key(s) must sign\n{}",
        trusted.version(),
        trusted.threshold(),
        keys.len(),
        keys.join("\n")
    );
    if !revoked.is_empty() {
        out.push_str(&format!("\n  revoked: {}", revoked.join(", ")));
    }
    out
}
