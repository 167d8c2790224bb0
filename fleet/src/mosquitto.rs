//! For deployments on Mosquitto: the password file and the ACL file that confine each device to its own topics.
//!
//! The password lines use Mosquitto's own PBKDF2-SHA512 format (`$7$<iterations>$<salt>$<hash>`, what
//! `mosquitto_passwd` writes), computed at enrollment from the password the fleet hands out once; the registry keeps
//! that hash, never the password. The ACL gives each device (username = device id) write access to its own
//! status/telemetry/events and read access to its own commands, and the fleet's user the other side for all devices.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use outpost_common::topics::{self, Channel};
use sha2::Sha512;

/// Mosquitto's default iteration count for `$7$` hashes.
const ITERATIONS: u32 = 101;

/// The `$7$` hash of `password` with a fresh 12-byte salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 12];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    Ok(hash_with_salt(password, &salt))
}

fn hash_with_salt(password: &str, salt: &[u8]) -> String {
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, ITERATIONS, &mut out);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("$7${ITERATIONS}${}${}", b64.encode(salt), b64.encode(out))
}

/// The ACL file's text: the fleet's user, then one pattern per channel for devices.
pub fn acl(fleet_user: &str) -> String {
    let mut out = format!("# Written by outpost-fleet; reload Mosquitto (SIGHUP) after changes.\nuser {fleet_user}\n");
    for c in Channel::ALL {
        let access = if c.from_agent() { "read" } else { "write" };
        out.push_str(&format!("topic {access} {}\n", topics::all_devices(c)));
    }
    out.push_str("\n# Every device: its own topics only.\n");
    for line in topics::mosquitto_acl_patterns() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Writes `passwd` and `acl` into `dir` (each atomically, mode 0600): the unrevoked devices' hashes and the fleet's
/// user. Returns both paths.
pub fn write_files(
    dir: &Path,
    devices: &[(String, String)],
    fleet_user: (&str, &str),
) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut passwd = format!("{}:{}\n", fleet_user.0, hash_password(fleet_user.1)?);
    for (user, hash) in devices {
        passwd.push_str(&format!("{user}:{hash}\n"));
    }
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        crate::registry::write_private(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    };
    Ok((write("passwd", &passwd)?, write("acl", &acl(fleet_user.0))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_mosquitto_passwd() {
        // A line `mosquitto_passwd -b` (Mosquitto 2.0.11) wrote for the password `secret`.
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64.decode("u1D25NAWvwtwwt5F").expect("salt");
        assert_eq!(
            hash_with_salt("secret", &salt),
            "$7$101$u1D25NAWvwtwwt5F$uA5Ujw1FQZkpcTkqU7oSQCJ5c9zyPO6NEuCJVO+G7YAVDXxpwua7LYJGt3kKn6sIC0Vfir09kZOvv3ehr8BwBQ=="
        );
        assert_ne!(hash_password("x").expect("hash"), hash_password("x").expect("hash"), "salted");
    }

    #[test]
    fn the_acl_confines_devices_to_their_own_topics() {
        let acl = acl("outpost-fleet");
        assert!(acl.contains("pattern write outpost/v1/devices/%u/telemetry"));
        assert!(acl.contains("pattern read outpost/v1/devices/%u/commands"));
        assert!(acl.contains("user outpost-fleet\ntopic read outpost/v1/devices/+/status"));
        assert!(acl.contains("topic write outpost/v1/devices/+/commands"));
    }
}
