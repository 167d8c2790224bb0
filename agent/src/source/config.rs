//! Source configuration: what a camera entry of the agent's TOML says, validated once by [`SourceConfig::build`].
//!
//! Durations are integers with their unit in the name (`poll_interval_ms`), so a config file needs no unit parser.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::dir::DirSource;
use super::http::SnapshotSource;
use super::mjpeg::MjpegSource;
use super::replay::ReplaySource;
use super::{FrameSource, SourceError};

/// One camera's source, tagged by `kind`:
///
/// ```toml
/// kind = "dir"
/// path = "/srv/ftp/line1"
/// after = "move"
/// move_to = "/srv/ftp/line1-done"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    Dir(DirConfig),
    Http(HttpConfig),
    V4l2(V4l2Config),
    Replay(ReplayConfig),
}

/// What a source needs from the agent besides its own table.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The camera's name, unique per agent; names the source's state file.
    pub camera: String,
    /// Where sources keep state across restarts (the dir source's processed files).
    pub state_dir: PathBuf,
}

/// A folder that a camera fills with image files (typically over FTP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirConfig {
    pub path: PathBuf,
    /// File extensions to pick up, case-insensitive; an empty list takes every file (non-images then reach the
    /// pipeline, which counts them as bad frames). Hidden files (`.name`) are always ignored: FTP servers upload
    /// into them.
    #[serde(default = "default_extensions")]
    pub extensions: Vec<String>,
    /// What to do with a file once the pipeline is done with it.
    #[serde(default)]
    pub after: After,
    /// The folder that `after = "move"` moves files into (created if missing).
    #[serde(default)]
    pub move_to: Option<PathBuf>,
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// A file is read only once its size and modification time have not changed for this long, so a file still
    /// being uploaded is never read half-way. `0` suits cameras that write elsewhere and rename into place.
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
    #[serde(default = "default_dir_max_frame_bytes")]
    pub max_frame_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum After {
    /// Leave the file; it is remembered as processed in the state file.
    #[default]
    Keep,
    /// Move it into `move_to`.
    Move,
    Delete,
}

/// An IP camera over HTTP(S): a snapshot URL polled at an interval, or an MJPEG stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub url: String,
    #[serde(default)]
    pub mode: HttpMode,
    /// Snapshot mode: time between requests.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Snapshot mode: the whole request. MJPEG mode: connecting, and the longest silence inside the stream.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The longest wait between retries after consecutive failures.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// HTTP basic authentication.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Larger responses or stream parts are cut off, counted and skipped.
    #[serde(default = "default_http_max_frame_bytes")]
    pub max_frame_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpMode {
    #[default]
    Snapshot,
    /// `multipart/x-mixed-replace` (Motion JPEG over HTTP).
    Mjpeg,
}

/// A USB camera through Video4Linux2 (agent built with the `v4l2` feature). Frames are taken in the camera's own
/// Motion-JPEG encoding, so they stay byte-exact and cheap to upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4l2Config {
    #[serde(default = "default_device")]
    pub device: PathBuf,
    pub width: u32,
    pub height: u32,
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// Only compressed formats are accepted: `MJPG` (or `JPEG`).
    #[serde(default = "default_fourcc")]
    pub fourcc: String,
}

/// A folder replayed at a fixed rate, in file-name order, for demos and benchmarks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    pub path: PathBuf,
    /// Frames per second; absent or 0 hands frames out as fast as the pipeline takes them (benchmarks).
    #[serde(default)]
    pub fps: Option<f64>,
    /// Start over after the last file.
    #[serde(default = "default_true", rename = "loop")]
    pub looping: bool,
    #[serde(default = "default_extensions")]
    pub extensions: Vec<String>,
    /// The files are loaded into memory once; this caps their total size.
    #[serde(default = "default_replay_max_total_bytes")]
    pub max_total_bytes: usize,
}

fn default_extensions() -> Vec<String> {
    ["jpg", "jpeg", "png"].map(String::from).to_vec()
}
fn default_poll_interval_ms() -> u64 {
    250
}
fn default_settle_ms() -> u64 {
    1000
}
fn default_dir_max_frame_bytes() -> usize {
    64 << 20
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_retry_max_ms() -> u64 {
    30_000
}
fn default_http_max_frame_bytes() -> usize {
    16 << 20
}
fn default_device() -> PathBuf {
    PathBuf::from("/dev/video0")
}
fn default_fps() -> u32 {
    15
}
fn default_fourcc() -> String {
    "MJPG".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_replay_max_total_bytes() -> usize {
    1 << 30
}

pub(crate) fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl SourceConfig {
    /// The `kind` tag, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Dir(_) => "dir",
            SourceConfig::Http(_) => "http",
            SourceConfig::V4l2(_) => "v4l2",
            SourceConfig::Replay(_) => "replay",
        }
    }

    /// Validates the configuration and builds the source. Does blocking file I/O (the dir source's state file, the
    /// replay folder's contents): call it at startup, or inside `spawn_blocking`. A V4L2 device is opened on the
    /// first `next`, so an unplugged camera is an error to retry, not a failed start.
    pub fn build(&self, ctx: &SourceContext) -> Result<Box<dyn FrameSource>, SourceError> {
        Ok(match self {
            SourceConfig::Dir(c) => Box::new(DirSource::new(c, ctx)?),
            SourceConfig::Http(c) => match c.mode {
                HttpMode::Snapshot => Box::new(SnapshotSource::new(c)?),
                HttpMode::Mjpeg => Box::new(MjpegSource::new(c)?),
            },
            SourceConfig::Replay(c) => Box::new(ReplaySource::new(c)?),
            SourceConfig::V4l2(c) => build_v4l2(c)?,
        })
    }
}

#[cfg(feature = "v4l2")]
fn build_v4l2(c: &V4l2Config) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(Box::new(super::v4l2::V4l2Source::new(c)?))
}

#[cfg(not(feature = "v4l2"))]
fn build_v4l2(c: &V4l2Config) -> Result<Box<dyn FrameSource>, SourceError> {
    c.validate()?;
    Err(SourceError::config("v4l2", "this agent was built without the `v4l2` feature (cargo build --features v4l2)"))
}

impl V4l2Config {
    pub(crate) fn validate(&self) -> Result<(), SourceError> {
        let err = |r: &str| Err(SourceError::config("v4l2", r));
        if self.width == 0 || self.height == 0 || self.width > 16384 || self.height > 16384 {
            return err("width and height must be between 1 and 16384");
        }
        if self.fps == 0 || self.fps > 1000 {
            return err("fps must be between 1 and 1000");
        }
        if !matches!(self.fourcc.as_str(), "MJPG" | "JPEG") {
            return err("fourcc must be \"MJPG\" or \"JPEG\": frames are kept in the camera's own encoding");
        }
        Ok(())
    }
}

/// Whether a file name has one of the extensions (case-insensitive); an empty list accepts every name.
pub(crate) fn extension_matches(extensions: &[String], name: &str) -> bool {
    if extensions.is_empty() {
        return true;
    }
    let Some(ext) = Path::new(name).extension().and_then(|e| e.to_str()) else { return false };
    extensions.iter().any(|e| e.trim_start_matches('.').eq_ignore_ascii_case(ext))
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
