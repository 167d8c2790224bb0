//! Flagged samples: a bounded on-disk queue and the uploader that empties it into the fleet.
//!
//! Design: a sample is two files named by the image's sha256: `<sha>.img` (the frame's original bytes) and
//! `<sha>.json` (its [`SampleMeta`]). Both are written to temporary names, fsynced and renamed; the meta file is
//! renamed last, so a sample exists exactly when its meta does and a crash mid-write leaves only debris that the next
//! start removes. The queue is capped in bytes and count; when full, the oldest sample is dropped and counted. The
//! uploader sends the oldest first with `PUT /api/v1/samples/{sha256}` (multipart: `meta`, `image`); the PUT is
//! idempotent, so a retry after a lost response is harmless. Server errors and network failures are retried with
//! exponential backoff and full jitter; a 4xx other than 408/429 means the fleet will never take this sample, so it
//! moves to `rejected/` instead of blocking the queue.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::SampleMeta;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Queue and upload settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplesConfig {
    /// Where samples wait for upload.
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_count: usize,
    /// First retry delay; doubles up to `max_backoff_secs`, with full jitter.
    pub min_backoff_ms: u64,
    pub max_backoff_secs: u64,
    pub request_timeout_secs: u64,
}

impl Default for SamplesConfig {
    fn default() -> Self {
        SamplesConfig {
            dir: PathBuf::from("/var/lib/outpost-agent/samples"),
            max_bytes: 512 << 20,
            max_count: 10_000,
            min_backoff_ms: 500,
            max_backoff_secs: 300,
            request_timeout_secs: 30,
        }
    }
}

/// Why the queue could not take or give a sample.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("sample queue I/O at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("sample metadata: {0}")]
    Meta(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SampleError + '_ {
    move |source| SampleError::Io { path: path.to_path_buf(), source }
}

/// Counters the agent reports in its metrics.
#[derive(Debug, Default)]
pub struct SampleStats {
    pub queued: AtomicU64,
    pub uploaded: AtomicU64,
    pub dropped: AtomicU64,
    pub rejected: AtomicU64,
    pub retries: AtomicU64,
}

/// The on-disk queue. Cheap to clone; all clones share one directory and one set of counters.
#[derive(Debug, Clone)]
pub struct SampleQueue {
    dir: PathBuf,
    max_bytes: u64,
    max_count: usize,
    notify: Arc<Notify>,
    pub stats: Arc<SampleStats>,
}

/// One sample waiting in the queue.
#[derive(Debug, Clone)]
pub struct Pending {
    pub sha: String,
    pub image: PathBuf,
    pub meta: PathBuf,
}

impl SampleQueue {
    /// Opens (creating) the queue and removes debris of interrupted writes.
    pub fn open(config: &SamplesConfig) -> Result<SampleQueue, SampleError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(dir.join("rejected")).map_err(io(&dir))?;
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan_image = name.ends_with(".img") && !path.with_extension("json").exists();
            if name.ends_with(".tmp") || orphan_image {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(SampleQueue {
            dir,
            max_bytes: config.max_bytes,
            max_count: config.max_count,
            notify: Arc::new(Notify::new()),
            stats: Arc::new(SampleStats::default()),
        })
    }

    /// Adds a sample. Returns false when the same image is already queued. Drops the oldest samples when full.
    pub fn push(&self, image: &[u8], meta: &SampleMeta) -> Result<bool, SampleError> {
        let sha = Sha256Sum::of(image).to_string();
        if meta.sample.to_string() != sha {
            return Err(SampleError::Meta("meta names another image than the bytes given".into()));
        }
        let meta_path = self.dir.join(format!("{sha}.json"));
        if meta_path.exists() {
            return Ok(false);
        }
        let meta_bytes = serde_json::to_vec(meta).map_err(|e| SampleError::Meta(e.to_string()))?;
        self.make_room(image.len() as u64 + meta_bytes.len() as u64)?;
        let image_path = self.dir.join(format!("{sha}.img"));
        write_atomic(&image_path, image)?;
        write_atomic(&meta_path, &meta_bytes)?;
        sync_dir(&self.dir);
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
        Ok(true)
    }

    /// Samples waiting, oldest first.
    pub fn pending(&self) -> Result<Vec<Pending>, SampleError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let modified = entry.metadata().and_then(|m| m.modified()).ok();
                let sha = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                out.push((modified, Pending { image: path.with_extension("img"), meta: path, sha }));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.sha.cmp(&b.1.sha)));
        Ok(out.into_iter().map(|(_, p)| p).collect())
    }

    fn make_room(&self, incoming: u64) -> Result<(), SampleError> {
        if incoming > self.max_bytes {
            return Err(SampleError::Meta(format!(
                "a {incoming}-byte sample exceeds the queue's {} bytes",
                self.max_bytes
            )));
        }
        let pending = self.pending()?;
        let sizes: Vec<u64> = pending
            .iter()
            .map(|p| {
                let len = |f: &Path| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                len(&p.image) + len(&p.meta)
            })
            .collect();
        let mut total: u64 = sizes.iter().sum::<u64>() + incoming;
        let mut count = pending.len() + 1;
        for (p, size) in pending.iter().zip(&sizes) {
            if total <= self.max_bytes && count <= self.max_count {
                break;
            }
            self.remove(p);
            total -= size;
            count -= 1;
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sample = %p.sha, "sample queue full: oldest sample dropped");
        }
        Ok(())
    }

    fn remove(&self, p: &Pending) {
        // Meta first: once it is gone the sample no longer exists, whatever happens to the image.
        let _ = std::fs::remove_file(&p.meta);
        let _ = std::fs::remove_file(&p.image);
    }

    fn reject(&self, p: &Pending) {
        let to = self.dir.join("rejected");
        let _ = std::fs::rename(&p.image, to.join(format!("{}.img", p.sha)));
        let _ = std::fs::rename(&p.meta, to.join(format!("{}.json", p.sha)));
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SampleError> {
    use std::io::Write;
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("x")));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct UploadTarget {
    /// The fleet's base URL, e.g. `https://fleet.example:8443`.
    pub base_url: String,
    pub token: String,
}

/// The result of one upload attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Done,
    Retry(String),
    Rejected(String),
}

/// Full-jitter exponential backoff: a random delay in `0..min(max, base · 2^attempt)`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(20)).min(max);
    ceiling.mul_f64(fastrand::f64())
}

async fn upload_one(client: &reqwest::Client, target: &UploadTarget, p: &Pending) -> Attempt {
    let (image, meta) = match (tokio::fs::read(&p.image).await, tokio::fs::read(&p.meta).await) {
        (Ok(i), Ok(m)) => (i, m),
        (Err(e), _) | (_, Err(e)) => return Attempt::Rejected(format!("unreadable queue entry: {e}")),
    };
    let content_type = serde_json::from_slice::<SampleMeta>(&meta)
        .map(|m| m.content_type)
        .unwrap_or_else(|_| "application/octet-stream".into());
    let image_part = match reqwest::multipart::Part::bytes(image).mime_str(&content_type) {
        Ok(part) => part.file_name(format!("{}.img", p.sha)),
        Err(e) => return Attempt::Rejected(format!("content type: {e}")),
    };
    let meta_part = match reqwest::multipart::Part::bytes(meta).mime_str("application/json") {
        Ok(part) => part,
        Err(e) => return Attempt::Rejected(format!("meta part: {e}")),
    };
    let form = reqwest::multipart::Form::new().part("meta", meta_part).part("image", image_part);
    let url = format!("{}/api/v1/samples/{}", target.base_url.trim_end_matches('/'), p.sha);
    match client.put(&url).bearer_auth(&target.token).multipart(form).send().await {
        Err(e) => Attempt::Retry(e.to_string()),
        Ok(resp) => {
            let status = resp.status();
            if status.is_success() {
                Attempt::Done
            } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                Attempt::Retry(format!("HTTP {status}"))
            } else {
                let body = resp.text().await.unwrap_or_default();
                Attempt::Rejected(format!("HTTP {status}: {}", body.chars().take(200).collect::<String>()))
            }
        }
    }
}

/// Uploads queued samples until `shutdown`, oldest first, retrying with backoff.
pub async fn run_uploader(
    queue: SampleQueue,
    client: reqwest::Client,
    target: UploadTarget,
    config: SamplesConfig,
    shutdown: CancellationToken,
) {
    let base = Duration::from_millis(config.min_backoff_ms.max(1));
    let max = Duration::from_secs(config.max_backoff_secs.max(1));
    let mut failures = 0u32;
    loop {
        let next = match queue.pending() {
            Ok(p) => p.into_iter().next(),
            Err(e) => {
                tracing::warn!(error = %e, "sample queue unreadable");
                None
            }
        };
        let Some(p) = next else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = queue.notify.notified() => continue,
                _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
            }
        };
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = upload_one(&client, &target, &p) => a,
        };
        match attempt {
            Attempt::Done => {
                failures = 0;
                queue.remove(&p);
                queue.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(sample = %p.sha, "sample uploaded");
            }
            Attempt::Rejected(reason) => {
                failures = 0;
                queue.reject(&p);
                tracing::warn!(sample = %p.sha, %reason, "sample refused by the fleet; kept in rejected/");
            }
            Attempt::Retry(reason) => {
                queue.stats.retries.fetch_add(1, Ordering::Relaxed);
                let delay = backoff(failures, base, max);
                failures = failures.saturating_add(1);
                tracing::debug!(sample = %p.sha, %reason, ?delay, "sample upload failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_capped() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..40 {
            let d = backoff(attempt, base, max);
            let ceiling = base.saturating_mul(1 << attempt.min(20)).min(max);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        let spread: Vec<Duration> = (0..50).map(|_| backoff(5, base, max)).collect();
        assert!(spread.iter().any(|d| *d != spread[0]), "jitter varies the delay");
    }
}
