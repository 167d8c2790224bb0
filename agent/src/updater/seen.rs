//! Commands already handled, remembered across restarts, so a replayed command (a broker redelivering a persistent
//! session, an attacker replaying a captured message) is ignored.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// How many command ids are remembered.
const KEEP: usize = 512;

#[derive(Debug)]
pub struct SeenCommands {
    path: PathBuf,
    ids: VecDeque<String>,
}

impl SeenCommands {
    /// Loads the remembered ids (a missing or unreadable file starts empty, with a warning for the latter).
    pub fn open(path: &Path) -> SeenCommands {
        let ids = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<VecDeque<String>>(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "seen-commands file unreadable; starting empty");
                VecDeque::new()
            }),
            Err(_) => VecDeque::new(),
        };
        SeenCommands { path: path.to_path_buf(), ids }
    }

    /// Records `id`; returns false when it was seen before (a replay).
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.ids.iter().any(|s| s == id) {
            return false;
        }
        self.ids.push_back(id.to_string());
        while self.ids.len() > KEEP {
            self.ids.pop_front();
        }
        if let Err(e) =
            crate::update::fsutil::write_atomic(&self.path, &serde_json::to_vec(&self.ids).unwrap_or_default())
        {
            tracing::warn!(path = %self.path.display(), error = %e, "seen commands not saved");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_recognised_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seen.json");
        let mut seen = SeenCommands::open(&path);
        assert!(seen.first_time("c-1"));
        assert!(!seen.first_time("c-1"));
        let mut again = SeenCommands::open(&path);
        assert!(!again.first_time("c-1"), "remembered after a restart");
        assert!(again.first_time("c-2"));
        std::fs::write(&path, "{corrupt").expect("write");
        assert!(SeenCommands::open(&path).first_time("c-1"), "a corrupt file starts over, never fails");
    }
}
