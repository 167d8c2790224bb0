//! What can go wrong with a download, and which failures another attempt may fix.

use std::path::PathBuf;
use std::time::Duration;

use outpost_common::manifest::Sha256Sum;

/// Why a download failed. Every failure has its own variant; [`DownloadError::kind`] labels it.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("not enough disk space in {}: {needed} bytes needed (artifact and margin), {free} free", dir.display())]
    DiskFull { dir: PathBuf, needed: u64, free: u64 },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP client: {0}")]
    Client(String),
    #[error("request to {url} failed: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("no bytes from the server for {0:?}")]
    Stalled(Duration),
    #[error("the connection ended after {done} of {total} bytes")]
    Truncated { done: u64, total: u64 },
    #[error("the server's ranges did not fit the download: {0}")]
    BadRange(String),
    #[error("the server sent more than the declared {declared} bytes (at least {received}); cut off")]
    TooLong { declared: u64, received: u64 },
    #[error("the server's artifact is {actual} bytes, the manifest declares {declared}")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("artifact sha256 is {actual}, the manifest declares {expected}")]
    HashMismatch { expected: Sha256Sum, actual: Sha256Sum },
    #[error("download not finished within {deadline:?} ({done} of {total} bytes)")]
    Deadline { deadline: Duration, done: u64, total: u64 },
    #[error("download cancelled")]
    Cancelled,
}

impl DownloadError {
    /// A short, stable label for events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DownloadError::DiskFull { .. } => "disk_full",
            DownloadError::Io { .. } => "io",
            DownloadError::Client(_) => "client",
            DownloadError::Transport { .. } => "transport",
            DownloadError::Status { .. } => "status",
            DownloadError::Stalled(_) => "stalled",
            DownloadError::Truncated { .. } => "truncated",
            DownloadError::BadRange(_) => "bad_range",
            DownloadError::TooLong { .. } => "too_long",
            DownloadError::LengthMismatch { .. } => "length_mismatch",
            DownloadError::HashMismatch { .. } => "hash_mismatch",
            DownloadError::Deadline { .. } => "deadline",
            DownloadError::Cancelled => "cancelled",
        }
    }

    /// Whether another attempt may succeed: the network or the server may recover, wrong bytes and full disks do not.
    pub fn is_retryable(&self) -> bool {
        match self {
            DownloadError::Transport { .. }
            | DownloadError::Stalled(_)
            | DownloadError::Truncated { .. }
            | DownloadError::BadRange(_) => true,
            DownloadError::Status { status, .. } => status_is_retryable(*status),
            _ => false,
        }
    }
}

/// `404` is retried: a fleet or mirror may publish the artifact moments after the command that names it.
/// Authentication and "gone for good" answers are final.
fn status_is_retryable(status: u16) -> bool {
    !matches!(status, 400 | 401 | 403 | 405 | 407 | 410 | 451)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_failures() {
        let status = |s| DownloadError::Status { url: "u".into(), status: s };
        for s in [404, 408, 429, 500, 502, 503] {
            assert!(status(s).is_retryable(), "{s}");
        }
        for s in [401, 403, 410] {
            assert!(!status(s).is_retryable(), "{s}");
        }
        assert!(DownloadError::Stalled(Duration::from_secs(1)).is_retryable());
        assert!(DownloadError::Truncated { done: 1, total: 2 }.is_retryable());
        assert!(!DownloadError::TooLong { declared: 1, received: 2 }.is_retryable());
        assert!(
            !DownloadError::HashMismatch { expected: Sha256Sum([0; 32]), actual: Sha256Sum([1; 32]) }.is_retryable()
        );
        assert!(!DownloadError::Cancelled.is_retryable());
    }
}
