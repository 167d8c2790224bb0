//! The sample queue and uploader against a real HTTP server that misbehaves.

use std::time::Duration;

use outpost_agent::samples::{SampleQueue, SamplesConfig, UploadTarget, run_uploader};
use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::{FlagReason, ModelRef, SampleMeta};
use outpost_common::vision::confidence::Confidence;
use tokio_util::sync::CancellationToken;

#[path = "support/sample_server.rs"]
mod sample_server;
use sample_server::start_server;

fn meta(image: &[u8], camera: &str) -> SampleMeta {
    SampleMeta {
        schema: 1,
        sample: Sha256Sum::of(image),
        device: "dev-1".into(),
        camera: camera.into(),
        model: ModelRef { name: "defect".into(), version: 3 },
        captured_at: time::OffsetDateTime::now_utc(),
        reason: FlagReason::LowConfidence,
        confidence: Confidence::Detect { max: Some(0.4), mean: Some(0.4), count: 1, uncertain: 1 },
        predictions: Vec::new(),
        width: 320,
        height: 320,
        content_type: "image/jpeg".into(),
    }
}

fn config(dir: &std::path::Path) -> SamplesConfig {
    SamplesConfig { dir: dir.join("samples"), min_backoff_ms: 5, max_backoff_secs: 1, ..SamplesConfig::default() }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client")
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fixture_images() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images/defect-val/images");
    (0..20).map(|i| std::fs::read(dir.join(format!("{i:05}.jpg"))).expect("fixture")).collect()
}

#[tokio::test]
async fn every_sample_arrives_once_through_a_flaky_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = config(tmp.path());
    let queue = SampleQueue::open(&config).expect("queue");
    let images = fixture_images();
    for img in &images {
        assert!(queue.push(img, &meta(img, "line-1")).expect("push"));
    }
    assert!(!queue.push(&images[0], &meta(&images[0], "line-1")).expect("push"), "the same image is queued once");
    let (url, server) = start_server(true).await;
    let shutdown = CancellationToken::new();
    let target = UploadTarget { base_url: url, token: "device-token".into() };
    let task = tokio::spawn(run_uploader(queue.clone(), client(), target, config, shutdown.clone()));
    wait_until("the queue to drain", || queue.pending().map(|p| p.is_empty()).unwrap_or(false)).await;
    shutdown.cancel();
    task.await.expect("uploader stops");
    let s = server.lock().expect("lock");
    assert_eq!(s.stored.len(), images.len(), "every sample stored");
    for img in &images {
        let (m, stored) = &s.stored[&Sha256Sum::of(img).to_string()];
        assert_eq!(stored, img, "original bytes, not re-encoded");
        assert_eq!(m.camera, "line-1");
    }
    assert!(s.requests > images.len(), "the server's failures were retried ({} requests)", s.requests);
    assert!(queue.stats.retries.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn refused_samples_move_aside_and_the_rest_go_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = config(tmp.path());
    let queue = SampleQueue::open(&config).expect("queue");
    let images = fixture_images();
    queue.push(&images[0], &meta(&images[0], "forbidden")).expect("push");
    queue.push(&images[1], &meta(&images[1], "line-1")).expect("push");
    let (url, server) = start_server(false).await;
    let shutdown = CancellationToken::new();
    let target = UploadTarget { base_url: url, token: "device-token".into() };
    let task = tokio::spawn(run_uploader(queue.clone(), client(), target, config.clone(), shutdown.clone()));
    wait_until("the queue to drain", || queue.pending().map(|p| p.is_empty()).unwrap_or(false)).await;
    shutdown.cancel();
    task.await.expect("uploader stops");
    assert_eq!(server.lock().expect("lock").stored.len(), 1);
    let rejected = config.dir.join("rejected").join(format!("{}.img", Sha256Sum::of(&images[0])));
    assert!(rejected.exists(), "the refused sample is kept for an operator to look at");
}

#[test]
fn the_queue_is_bounded_and_survives_interrupted_writes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = SamplesConfig { max_count: 5, ..config(tmp.path()) };
    let queue = SampleQueue::open(&config).expect("queue");
    let images = fixture_images();
    for img in &images[..8] {
        queue.push(img, &meta(img, "line-1")).expect("push");
    }
    let pending = queue.pending().expect("pending");
    assert_eq!(pending.len(), 5);
    assert_eq!(queue.stats.dropped.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(pending[0].sha, Sha256Sum::of(&images[3]).to_string(), "the oldest went first");
    // Debris of a crash mid-write: a temp file and an image whose meta never landed.
    std::fs::write(config.dir.join("abc.img.tmp"), b"partial").expect("write");
    std::fs::write(config.dir.join("def.img"), b"orphan").expect("write");
    let reopened = SampleQueue::open(&config).expect("reopen");
    assert_eq!(reopened.pending().expect("pending").len(), 5);
    assert!(!config.dir.join("abc.img.tmp").exists() && !config.dir.join("def.img").exists());
    // A byte budget holds too.
    let small = SamplesConfig { dir: tmp.path().join("small"), max_bytes: 70_000, ..config };
    let q = SampleQueue::open(&small).expect("queue");
    for img in &images[..6] {
        q.push(img, &meta(img, "line-1")).expect("push");
    }
    let bytes: u64 = q
        .pending()
        .expect("pending")
        .iter()
        .map(|p| {
            std::fs::metadata(&p.image).map(|m| m.len()).unwrap_or(0)
                + std::fs::metadata(&p.meta).map(|m| m.len()).unwrap_or(0)
        })
        .sum();
    assert!(bytes <= 70_000, "{bytes} bytes queued");
    assert!(q.push(&[0u8; 80_000], &meta(&[0u8; 80_000], "line-1")).is_err(), "a sample larger than the queue");
}
