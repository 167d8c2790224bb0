//! `outpost keygen`: a new signing key pair on disk.

use std::path::PathBuf;

use anyhow::Context;
use outpost_common::manifest::{KeyFiles, SecretKey};

use crate::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write the key files into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Base name of the files.
    #[arg(long, default_value = "outpost-signing")]
    name: String,
}

pub fn run(args: &Args) -> anyhow::Result<Outcome> {
    let name_ok = !args.name.is_empty()
        && args.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !args.name.starts_with('.');
    anyhow::ensure!(name_ok, "--name `{}` may only contain A-Z a-z 0-9 . _ -", args.name);
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let files = KeyFiles::in_dir(&args.out, &args.name);
    let key = SecretKey::generate()?;
    files.write(&key)?;
    let public = key.public();
    println!("key id:     {}", public.id());
    println!("public key: {}", public.to_line());
    println!("secret key: {} (mode 0600; keep it offline, never on the fleet server)", files.secret.display());
    println!("public:     {} and {}", files.public.display(), files.public_pem.display());
    Ok(Outcome::Done)
}
