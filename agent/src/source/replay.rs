//! A folder replayed at a fixed frame rate, looping: the demo camera, and a steady load for benchmarks.
//!
//! `Design:` the files are read into memory once, at build, so the replay measures the pipeline and not the disk;
//! every frame shares its file's bytes (a reference count, no copy). Timing follows a fixed grid (a tokio interval
//! that skips missed ticks), so a slow pipeline gets fewer frames, never a burst.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::{Interval, MissedTickBehavior};

use super::config::{ReplayConfig, extension_matches};
use super::dir_scan::is_hidden;
use super::{BoxFuture, Frame, FrameSource, SourceError};

/// See the module documentation.
pub struct ReplaySource {
    folder: PathBuf,
    files: Vec<(String, Bytes)>,
    period: Option<Duration>,
    interval: Option<Interval>,
    looping: bool,
    index: usize,
    seq: u64,
}

impl std::fmt::Debug for ReplaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplaySource")
            .field("folder", &self.folder)
            .field("files", &self.files.len())
            .field("period", &self.period)
            .field("looping", &self.looping)
            .field("seq", &self.seq)
            .finish()
    }
}

impl ReplaySource {
    /// Loads the folder's files (file-name order). Blocking.
    pub fn new(c: &ReplayConfig) -> Result<Self, SourceError> {
        let err = |r: String| SourceError::config("replay", r);
        let period = match c.fps {
            None => None,
            Some(0.0) => None,
            Some(fps) if fps.is_finite() && fps > 0.0 && fps <= 1000.0 => Some(Duration::from_secs_f64(1.0 / fps)),
            Some(fps) => return Err(err(format!("fps {fps} must be between 0 and 1000"))),
        };
        let read = std::fs::read_dir(&c.path).map_err(|e| SourceError::io(&c.path, e))?;
        let mut names = Vec::new();
        for item in read {
            let item = item.map_err(|e| SourceError::io(&c.path, e))?;
            let Ok(name) = item.file_name().into_string() else { continue };
            if is_hidden(&name) || !extension_matches(&c.extensions, &name) {
                continue;
            }
            if std::fs::metadata(item.path()).is_ok_and(|m| m.is_file()) {
                names.push(name);
            }
        }
        names.sort();
        let mut files = Vec::with_capacity(names.len());
        let mut total = 0usize;
        for name in names {
            let path = c.path.join(&name);
            let bytes = std::fs::read(&path).map_err(|e| SourceError::io(&path, e))?;
            total = total.saturating_add(bytes.len());
            if total > c.max_total_bytes {
                return Err(err(format!(
                    "{} holds more than max_total_bytes = {} of images",
                    c.path.display(),
                    c.max_total_bytes
                )));
            }
            files.push((name, Bytes::from(bytes)));
        }
        if files.is_empty() {
            return Err(err(format!("no files with extensions {:?} in {}", c.extensions, c.path.display())));
        }
        tracing::debug!(folder = %c.path.display(), files = files.len(), bytes = total, "replay loaded");
        Ok(Self { folder: c.path.clone(), files, period, interval: None, looping: c.looping, index: 0, seq: 0 })
    }

    /// How many files one pass replays.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Never true: an empty folder is refused at build.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    async fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.index >= self.files.len() {
            if !self.looping {
                return Ok(None);
            }
            self.index = 0;
        }
        if let Some(period) = self.period {
            // Created on first use: an interval needs the runtime, and its first tick is immediate.
            let interval = self.interval.get_or_insert_with(|| {
                let mut i = tokio::time::interval(period);
                i.set_missed_tick_behavior(MissedTickBehavior::Skip);
                i
            });
            interval.tick().await;
        }
        let Some((name, bytes)) = self.files.get(self.index) else { return Ok(None) };
        let frame = Frame::new(bytes.clone(), SystemTime::now(), name.clone(), self.seq);
        self.index += 1;
        self.seq += 1;
        Ok(Some(frame))
    }
}

impl FrameSource for ReplaySource {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Frame>, SourceError>> {
        Box::pin(self.next_frame())
    }

    fn is_live(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("replay {}", self.folder.display())
    }
}
