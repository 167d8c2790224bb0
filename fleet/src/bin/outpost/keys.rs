//! `outpost keys`: rotate the key set devices trust, verify a rotation, show key ids.

use std::path::PathBuf;

use anyhow::Context;
use outpost_common::manifest::{self, KEY_SET_SCHEMA, KeySet, TrustedKeys};

use crate::Outcome;
use crate::trust::{self, TrustArgs};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sign a new key set with the current keys (a threshold of them) so devices adopt it.
    Rotate(RotateArgs),
    /// Verify key-set rotations (--keyset, oldest first) against the keys trusted now, and print the result.
    Verify(TrustArgs),
    /// Print the key id of public keys.
    Id {
        /// Public key files or one-line `ed25519:...` keys.
        #[arg(required = true, value_name = "PUB")]
        keys: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// A current secret key to sign the rotation with. Repeat to reach the current threshold.
    #[arg(long = "sign-with", required = true, value_name = "KEY")]
    sign_with: Vec<PathBuf>,
    /// A public key of the new set. Repeatable.
    #[arg(long = "new-key", required = true, value_name = "PUB")]
    new_keys: Vec<String>,
    /// How many distinct keys of the new set must sign from now on.
    #[arg(long = "new-threshold", default_value_t = 1)]
    new_threshold: usize,
    /// A key to revoke (id, .pub file or one-line form); its signatures are refused from now on. Repeatable.
    #[arg(long = "revoke", value_name = "KEY")]
    revoke: Vec<String>,
    /// The new set's version; it must be above the version devices hold (their configured root is 0).
    #[arg(long)]
    version: u64,
    /// Where to write the signed key set.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Rotate(args) => rotate(&args),
        Command::Verify(args) => verify(&args),
        Command::Id { keys } => {
            for key in &keys {
                let public = trust::public_key(key)?;
                println!("{}  {}", public.id(), public.to_line());
            }
            Ok(Outcome::Done)
        }
    }
}

fn rotate(args: &RotateArgs) -> anyhow::Result<Outcome> {
    let signers = trust::secret_keys(&args.sign_with)?;
    let keys = args.new_keys.iter().map(|k| trust::public_key(k)).collect::<anyhow::Result<Vec<_>>>()?;
    let revoked = args.revoke.iter().map(|k| trust::key_id(k)).collect::<anyhow::Result<Vec<_>>>()?;
    let set = KeySet { schema: KEY_SET_SCHEMA, version: args.version, threshold: args.new_threshold, keys, revoked };
    // The same checks a device makes when it adopts the set, so a set devices would refuse is never written.
    let trusted = TrustedKeys::from_key_set(&set).context("the new key set is not valid")?;
    let refs: Vec<_> = signers.iter().collect();
    let envelope = manifest::sign_key_set(&set, &refs);
    std::fs::write(&args.out, envelope.to_json_pretty()).with_context(|| format!("writing {}", args.out.display()))?;
    let ids: Vec<String> = signers.iter().map(|k| k.public().id().to_string()).collect();
    println!("signed by {}", ids.join(", "));
    println!("{}", trust::describe(&trusted));
    println!("wrote {}", args.out.display());
    Ok(Outcome::Done)
}

fn verify(args: &TrustArgs) -> anyhow::Result<Outcome> {
    match trust::load(args)? {
        Ok(trusted) => {
            println!("verified: {}", trust::describe(&trusted));
            Ok(Outcome::Done)
        }
        Err((path, e)) => Ok(Outcome::Rejected(format!("{}: {e} [{}]", path.display(), e.code()))),
    }
}
