//! What can go wrong with a frame source. Every variant names what it was reading, so one log line is enough.

use std::io;
use std::path::PathBuf;

/// A source failure. `kind()` gives a short stable label for metrics (`outpost_source_errors_total{kind=...}`).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The configuration is unusable; only [`crate::source::SourceConfig::build`] returns this.
    #[error("invalid {kind} source: {reason}")]
    Config { kind: &'static str, reason: String },

    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The source's persisted state (processed files) could not be read or written.
    #[error("state file {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },

    /// The request did not complete: refused connection, timeout, reset.
    #[error("request to {url} failed: {reason}")]
    Http { url: String, reason: String },

    /// The server answered with a status other than success.
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },

    /// A frame was larger than the configured cap and was skipped.
    #[error("frame from {origin} is larger than the {limit}-byte cap; skipped")]
    TooLarge { origin: String, limit: usize },

    /// An MJPEG stream was not what it should be (wrong content type, no boundary, ended, garbled part).
    #[error("stream {url}: {reason}")]
    Stream { url: String, reason: String },

    /// A V4L2 device is missing, busy or does not offer what was configured.
    #[error("video device {device}: {reason}")]
    Device { device: String, reason: String },
}

impl SourceError {
    /// A short, stable label for metrics and once-per-kind logging.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Config { .. } => "config",
            SourceError::Io { .. } => "io",
            SourceError::State { .. } => "state",
            SourceError::Http { .. } => "http",
            SourceError::Status { .. } => "status",
            SourceError::TooLarge { .. } => "too_large",
            SourceError::Stream { .. } => "stream",
            SourceError::Device { .. } => "device",
        }
    }

    pub(crate) fn config(kind: &'static str, reason: impl Into<String>) -> Self {
        SourceError::Config { kind, reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        SourceError::Io { path: path.into(), source }
    }

    /// A reqwest error with its cause chain spelled out (reqwest's own message is often just "error sending request").
    pub(crate) fn http(url: &str, err: &reqwest::Error) -> Self {
        let mut reason = err.to_string();
        let mut cause = std::error::Error::source(err);
        while let Some(c) = cause {
            reason.push_str(": ");
            reason.push_str(&c.to_string());
            cause = c.source();
        }
        SourceError::Http { url: url.to_owned(), reason }
    }
}
