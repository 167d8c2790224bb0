//! Downloading a model artifact: resumable, capped, hashed while streaming, verified before it is handed on.
//!
//! Design: the bytes go to `<dir>/<sha256>.part`, named by the hash the manifest declares, so a part file can only
//! ever resume the artifact it was started for. Each attempt asks for `Range: bytes=N-` when N bytes are already on
//! disk; a `206` from offset N appends, a `200` (a server that ignores ranges) truncates and starts over, a `416`
//! discards the part. A part found at the start (a crash, a cancelled run) is hashed again to restore the hash state.
//! The byte count can never pass the declared length: a larger `Content-Length` or `Content-Range` is refused before
//! the body, and the first byte past the length ends the download with [`DownloadError::TooLong`]. The sha256 is
//! computed while streaming and compared at the end; a match renames the part to `<dir>/<sha256>.artifact` and
//! yields a [`VerifiedArtifact`]. Network failures, stalls (no byte for `stall_timeout`), `5xx`, `404`, `408` and
//! `429` are retried with jittered exponential backoff ([`Backoff`]); progress resets the backoff, so a link that
//! drops every few megabytes still finishes within the overall `deadline`. On any failure the part file is removed,
//! except on cancellation, where it is kept for the next run to resume (as after a crash).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outpost_common::manifest::{Artifact, Sha256Sum};
use reqwest::header::{CONTENT_RANGE, RANGE};
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::source::Backoff;
use crate::update::artifact::VerifiedArtifact;
use crate::update::fsutil;

mod error;
mod response;
pub use error::DownloadError;
use response::{Plan, plan};

/// How a download behaves. Durations are plain values so tests can use short ones; the agent's configuration
/// builds one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadConfig {
    /// The whole download, all attempts and waits included.
    pub deadline: Duration,
    /// The longest wait for the response headers or the next body bytes before the attempt counts as failed.
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    /// Consecutive failed attempts (without a byte of progress) before giving up.
    pub max_attempts: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Free space that must remain on the disk after the artifact is written.
    pub disk_margin: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            deadline: Duration::from_secs(30 * 60),
            stall_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(15),
            max_attempts: 8,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            disk_margin: 64 << 20,
        }
    }
}

/// One artifact to fetch.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub url: String,
    /// Sent as `Authorization: Bearer ...` (the device token) when set.
    pub bearer_token: Option<String>,
    /// The sha256 and length the verified manifest declares.
    pub expected: Artifact,
    /// The staging folder; on the same file system as the slot store, so installing is a rename.
    pub dir: PathBuf,
}

impl DownloadRequest {
    /// Where the bytes are written while they arrive.
    pub fn part_path(&self) -> PathBuf {
        self.dir.join(format!("{}.part", self.expected.sha256))
    }

    /// Where the verified artifact is left.
    pub fn artifact_path(&self) -> PathBuf {
        self.dir.join(format!("{}.artifact", self.expected.sha256))
    }
}

/// Bytes on disk out of the declared total, for "downloading 42%" events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

impl Progress {
    /// Whole percent, rounded down; an empty artifact is complete.
    pub fn percent(&self) -> u8 {
        if self.total == 0 || self.done >= self.total {
            return 100;
        }
        // done < total, so the quotient is below 100.
        u8::try_from(u128::from(self.done) * 100 / u128::from(self.total)).unwrap_or(99)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io { path: path.to_path_buf(), source }
}

/// Calls the progress callback when the whole percent changes, and at the start of every attempt.
struct Reporter<F> {
    total: u64,
    last: Option<u8>,
    callback: F,
}

impl<F: FnMut(Progress)> Reporter<F> {
    fn report(&mut self, done: u64, force: bool) {
        let progress = Progress { done, total: self.total };
        let percent = progress.percent();
        if force || self.last != Some(percent) {
            self.last = Some(percent);
            (self.callback)(progress);
        }
    }
}

/// The part file and the hash of what it holds.
struct Part {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: sha2::Sha256,
    done: u64,
    /// Some bytes came from before the latest `Restart` (an earlier response or run).
    resumed: bool,
}

impl Part {
    /// Opens (creating) the part, hashing what an earlier run left in it. A part longer than the artifact is
    /// emptied: it cannot be a prefix of it.
    async fn open(path: PathBuf, total: u64) -> Result<Part, DownloadError> {
        let blocking_path = path.clone();
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<(std::fs::File, sha2::Sha256, u64)> {
            let file = std::fs::OpenOptions::new().read(true).append(true).create(true).open(&blocking_path)?;
            let mut hasher = sha2::Sha256::new();
            if file.metadata()?.len() > total {
                file.set_len(0)?;
                return Ok((file, hasher, 0));
            }
            let done = fsutil::hash_stream(&file, &mut hasher, None)?;
            Ok((file, hasher, done))
        })
        .await
        .map_err(|e| DownloadError::Io { path: path.clone(), source: std::io::Error::other(e) })?;
        let (file, hasher, done) = opened.map_err(io(&path))?;
        Ok(Part { file: tokio::fs::File::from_std(file), hasher, done, resumed: done > 0, path })
    }

    async fn append(&mut self, bytes: &[u8]) -> Result<(), DownloadError> {
        self.file.write_all(bytes).await.map_err(io(&self.path))?;
        self.hasher.update(bytes);
        self.done += bytes.len() as u64;
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), DownloadError> {
        self.file.flush().await.map_err(io(&self.path))?;
        self.file.set_len(0).await.map_err(io(&self.path))?;
        self.hasher = sha2::Sha256::new();
        self.done = 0;
        self.resumed = false;
        Ok(())
    }

    /// Flushes and fsyncs; returns the sha256 of the bytes written.
    async fn finish(&mut self) -> Result<Sha256Sum, DownloadError> {
        self.file.flush().await.map_err(io(&self.path))?;
        self.file.sync_all().await.map_err(io(&self.path))?;
        Ok(Sha256Sum(self.hasher.clone().finalize().into()))
    }
}

/// Fetches artifacts with one HTTP client.
#[derive(Debug, Clone)]
pub struct Downloader {
    client: reqwest::Client,
    config: DownloadConfig,
}

impl Downloader {
    /// A downloader with its own client (system trust roots through rustls/ring, no total timeout: the deadline is
    /// ours).
    pub fn new(config: DownloadConfig) -> Result<Downloader, DownloadError> {
        Downloader::trusting(config, Vec::new())
    }

    /// The same, trusting `roots` (e.g. the fleet's CA) besides the system roots.
    pub fn trusting(config: DownloadConfig, roots: Vec<reqwest::Certificate>) -> Result<Downloader, DownloadError> {
        crate::source::install_crypto_provider();
        let client = reqwest::Client::builder()
            .tls_certs_merge(roots)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("outpost-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DownloadError::Client(e.to_string()))?;
        Ok(Downloader { client, config })
    }

    /// A downloader over a client the caller built (for example with the fleet's CA as the only root).
    pub fn with_client(client: reqwest::Client, config: DownloadConfig) -> Downloader {
        Downloader { client, config }
    }

    pub fn config(&self) -> &DownloadConfig {
        &self.config
    }

    /// Downloads `request` and verifies it. `progress` sees bytes on disk out of the total whenever the whole
    /// percent changes and at the start of each attempt. Cancelling `cancel` stops at once with
    /// [`DownloadError::Cancelled`] and keeps the part file for the next run; every other failure removes it.
    pub async fn fetch(
        &self,
        request: &DownloadRequest,
        cancel: &CancellationToken,
        progress: impl FnMut(Progress) + Send,
    ) -> Result<VerifiedArtifact, DownloadError> {
        let (part_path, total) = (request.part_path(), request.expected.length);
        let done = AtomicU64::new(0);
        let deadline = tokio::time::Instant::now() + self.config.deadline;
        // Cancellation is checked inside, at every wait, so the part file is flushed before returning; the deadline
        // drops the work wherever it is, which is fine because the part is removed then.
        let result =
            tokio::time::timeout_at(deadline, self.run(request, cancel, &done, progress)).await.unwrap_or_else(|_| {
                Err(DownloadError::Deadline {
                    deadline: self.config.deadline,
                    done: done.load(Ordering::Relaxed),
                    total,
                })
            });
        match &result {
            Ok(artifact) => {
                tracing::info!(url = %request.url, sha256 = %artifact.sha256(), bytes = artifact.len(),
                    "artifact downloaded and verified");
            }
            Err(DownloadError::Cancelled) => {
                tracing::info!(url = %request.url, done = done.load(Ordering::Relaxed), total,
                    "download cancelled; part kept for resuming");
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&part_path).await;
                tracing::warn!(url = %request.url, kind = e.kind(), error = %e, "download failed");
            }
        }
        result
    }

    async fn run(
        &self,
        request: &DownloadRequest,
        cancel: &CancellationToken,
        done: &AtomicU64,
        progress: impl FnMut(Progress),
    ) -> Result<VerifiedArtifact, DownloadError> {
        let (dir, artifact_path) = (&request.dir, request.artifact_path());
        tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;

        // A verified artifact left by an earlier run that stopped before installing it needs no network.
        if tokio::fs::try_exists(&artifact_path).await.unwrap_or(false) {
            let (path, expected) = (artifact_path.clone(), request.expected.clone());
            match tokio::task::spawn_blocking(move || VerifiedArtifact::from_file(path, &expected)).await {
                Ok(Ok(artifact)) => return Ok(artifact),
                _ => {
                    let _ = tokio::fs::remove_file(&artifact_path).await;
                }
            }
        }

        let total = request.expected.length;
        let mut part = Part::open(request.part_path(), total).await?;
        done.store(part.done, Ordering::Relaxed);
        self.check_space(dir, total.saturating_sub(part.done))?;
        if part.done > 0 {
            tracing::info!(url = %request.url, offset = part.done, total, "resuming download from a part file");
        }
        let result = self.transfer(request, cancel, &mut part, done, progress).await;
        if result.is_err() {
            // Waits for a write still in flight, so the part on disk is whole for the next run.
            let _ = part.file.flush().await;
        }
        result
    }

    /// The attempts, then the verification and the rename.
    async fn transfer(
        &self,
        request: &DownloadRequest,
        cancel: &CancellationToken,
        part: &mut Part,
        done: &AtomicU64,
        progress: impl FnMut(Progress),
    ) -> Result<VerifiedArtifact, DownloadError> {
        let (expected, total) = (&request.expected, request.expected.length);
        let (dir, artifact_path) = (&request.dir, request.artifact_path());
        let mut reporter = Reporter { total, last: None, callback: progress };
        let mut backoff = Backoff::new(self.config.min_backoff, self.config.max_backoff);
        let mut failures = 0u32;
        let mut restarted_after_mismatch = false;
        loop {
            if part.done < total {
                reporter.report(part.done, true);
                let before = part.done;
                if let Err(error) = self.attempt(request, cancel, part, done, &mut reporter).await {
                    if !error.is_retryable() {
                        return Err(error);
                    }
                    if part.done > before {
                        backoff.succeed();
                        failures = 0;
                    }
                    failures = failures.saturating_add(1);
                    if failures >= self.config.max_attempts.max(1) {
                        return Err(error);
                    }
                    let delay = backoff.fail();
                    tracing::warn!(url = %request.url, attempt = failures, done = part.done, total,
                        kind = error.kind(), error = %error, ?delay, "download attempt failed; retrying");
                    cancellable(cancel, async {
                        tokio::time::sleep(delay).await;
                        Ok(())
                    })
                    .await?;
                    continue;
                }
            }
            reporter.report(part.done, false);
            let sha256 = part.finish().await?;
            if sha256 != expected.sha256 {
                // Bytes from an earlier response or run may be stale (a server whose file changed between two
                // ranges, a damaged leftover); one clean start settles whether the artifact itself is wrong.
                if part.resumed && !restarted_after_mismatch {
                    tracing::warn!(url = %request.url, "hash mismatch after a resumed download; starting over");
                    restarted_after_mismatch = true;
                    part.reset().await?;
                    done.store(0, Ordering::Relaxed);
                    continue;
                }
                return Err(DownloadError::HashMismatch { expected: expected.sha256, actual: sha256 });
            }
            tokio::fs::rename(&part.path, &artifact_path).await.map_err(io(&artifact_path))?;
            let dir_for_sync = dir.clone();
            let _ = tokio::task::spawn_blocking(move || fsutil::sync_dir(&dir_for_sync)).await;
            return Ok(VerifiedArtifact::hashed_while_written(artifact_path, sha256, part.done));
        }
    }

    fn check_space(&self, dir: &Path, remaining: u64) -> Result<(), DownloadError> {
        let free = fsutil::free_bytes(dir).map_err(io(dir))?;
        let needed = remaining.saturating_add(self.config.disk_margin);
        if free < needed {
            return Err(DownloadError::DiskFull { dir: dir.to_path_buf(), needed, free });
        }
        Ok(())
    }

    /// One request: headers, then the body appended to the part until it ends, stalls or overflows.
    async fn attempt(
        &self,
        request: &DownloadRequest,
        cancel: &CancellationToken,
        part: &mut Part,
        done: &AtomicU64,
        reporter: &mut Reporter<impl FnMut(Progress)>,
    ) -> Result<(), DownloadError> {
        let (url, total, stall) = (&request.url, request.expected.length, self.config.stall_timeout);
        let transport = |e: reqwest::Error| DownloadError::Transport { url: url.clone(), reason: error_chain(&e) };
        let mut builder = self.client.get(url);
        if part.done > 0 {
            builder = builder.header(RANGE, format!("bytes={}-", part.done));
        }
        if let Some(token) = &request.bearer_token {
            builder = builder.bearer_auth(token);
        }
        let mut response = cancellable(cancel, async {
            tokio::time::timeout(stall, builder.send())
                .await
                .map_err(|_| DownloadError::Stalled(stall))?
                .map_err(transport)
        })
        .await?;
        let content_range = response.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let status = response.status().as_u16();
        match plan(url, status, content_range.as_deref(), response.content_length(), part.done, total) {
            Ok(Plan::Append) => part.resumed |= part.done > 0,
            Ok(Plan::Restart) => {
                if part.done > 0 {
                    tracing::info!(url = %url, offset = part.done, "server ignored the range; starting over");
                    part.reset().await?;
                    done.store(0, Ordering::Relaxed);
                }
            }
            Err(error) => {
                // A part the server cannot continue (416, another offset) is useless: the next attempt starts at 0.
                if matches!(error, DownloadError::BadRange(_)) {
                    part.reset().await?;
                    done.store(0, Ordering::Relaxed);
                }
                return Err(error);
            }
        }
        loop {
            let chunk = cancellable(cancel, async {
                tokio::time::timeout(stall, response.chunk())
                    .await
                    .map_err(|_| DownloadError::Stalled(stall))?
                    .map_err(transport)
            })
            .await?;
            let Some(bytes) = chunk else { break };
            let received = part.done.saturating_add(bytes.len() as u64);
            if received > total {
                return Err(DownloadError::TooLong { declared: total, received });
            }
            part.append(&bytes).await?;
            done.store(part.done, Ordering::Relaxed);
            reporter.report(part.done, false);
        }
        if part.done < total {
            return Err(DownloadError::Truncated { done: part.done, total });
        }
        Ok(())
    }
}

/// `work`, or [`DownloadError::Cancelled`] as soon as `cancel` is.
async fn cancellable<T>(
    cancel: &CancellationToken,
    work: impl Future<Output = Result<T, DownloadError>>,
) -> Result<T, DownloadError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(DownloadError::Cancelled),
        result = work => result,
    }
}

/// A reqwest error with its causes: "error sending request" alone does not say what failed.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_percent_and_reporting() {
        let p = |done, total| Progress { done, total }.percent();
        assert_eq!([p(0, 200), p(1, 200), p(2, 200), p(199, 200), p(200, 200), p(0, 0)], [0, 0, 1, 99, 100, 100]);
        assert_eq!(p(u64::MAX - 1, u64::MAX), 99);
        let mut seen = Vec::new();
        let mut reporter = Reporter { total: 1000, last: None, callback: |p: Progress| seen.push(p.done) };
        for done in [0, 5, 9, 10, 11, 500, 500, 1000] {
            reporter.report(done, false);
        }
        reporter.report(1000, true);
        assert_eq!(seen, [0, 10, 500, 1000, 1000]);
    }
}
