//! The artifact downloader against a real HTTP server on 127.0.0.1 that misbehaves on request: cuts, stalls,
//! ignores ranges, sends too much, sends the wrong bytes, fails with statuses.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_agent::update::{DownloadConfig, DownloadError, DownloadRequest, Downloader, Progress, VerifiedArtifact};
use outpost_common::manifest::{Artifact, Sha256Sum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How the server answers one request.
#[derive(Debug, Clone)]
enum Reply {
    /// The artifact, honouring `Range` (206) or whole (200).
    Serve,
    /// The whole artifact with 200, whatever the request asked for.
    IgnoreRange,
    /// Like `Serve`, announcing the full length but closing after this many body bytes.
    CutAfter(usize),
    /// Like `Serve`, then silence after this many body bytes, the connection held open.
    StallAfter(usize),
    /// A bare status with an empty body.
    Status(u16),
    /// These bytes with 200 and their true length, instead of the artifact.
    Body(Vec<u8>),
    /// 200 without a length, bytes until the client goes away.
    Endless,
    /// The artifact with 200, one byte per interval.
    Trickle(Duration),
}

/// What the server saw of one request.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    range: Option<String>,
    authorization: Option<String>,
}

#[derive(Clone)]
struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    /// Serves `artifact`; the first requests are answered by `script`, the rest by `Serve`.
    async fn start(artifact: Vec<u8>, script: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/api/v1/models/defect/7/artifact", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let artifact = Arc::new(artifact);
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, script, artifact) = (log.clone(), script.clone(), artifact.clone());
                tokio::spawn(async move {
                    let _ = answer(stream, &log, &script, &artifact).await;
                });
            }
        });
        Server { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    fn ranges(&self) -> Vec<Option<String>> {
        self.seen().into_iter().map(|s| s.range).collect()
    }
}

async fn answer(
    mut stream: TcpStream,
    log: &Mutex<Vec<Seen>>,
    script: &Mutex<VecDeque<Reply>>,
    artifact: &[u8],
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
        })
    };
    let seen = Seen { range: header("range"), authorization: header("authorization") };
    let offset = seen.range.as_deref().and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok());
    log.lock().expect("lock").push(seen);
    let reply = script.lock().expect("lock").pop_front().unwrap_or(Reply::Serve);

    let total = artifact.len();
    // The status line, headers and body of a `Serve`-like answer from the asked offset.
    let ranged = |offset: Option<usize>| match offset {
        Some(o) if o >= total => (format!("416 Range Not Satisfiable\r\nContent-Range: bytes */{total}"), 0..0),
        Some(o) => (format!("206 Partial Content\r\nContent-Range: bytes {o}-{}/{total}", total - 1), o..total),
        None => ("200 OK".to_string(), 0..total),
    };
    let send_head = |status: String, length: Option<usize>| {
        let length = length.map(|l| format!("Content-Length: {l}\r\n")).unwrap_or_default();
        format!("HTTP/1.1 {status}\r\n{length}Connection: close\r\n\r\n").into_bytes()
    };
    match reply {
        Reply::Serve | Reply::IgnoreRange | Reply::CutAfter(_) | Reply::StallAfter(_) => {
            let offset = if matches!(reply, Reply::IgnoreRange) { None } else { offset };
            let (status, body) = ranged(offset);
            let body = &artifact[body];
            stream.write_all(&send_head(status, Some(body.len()))).await?;
            match reply {
                Reply::CutAfter(n) => stream.write_all(&body[..n.min(body.len())]).await?,
                Reply::StallAfter(n) => {
                    stream.write_all(&body[..n.min(body.len())]).await?;
                    stream.flush().await?;
                    std::future::pending::<()>().await;
                }
                _ => stream.write_all(body).await?,
            }
        }
        Reply::Status(code) => stream.write_all(&send_head(format!("{code} Status"), Some(0))).await?,
        Reply::Body(bytes) => {
            stream.write_all(&send_head("200 OK".into(), Some(bytes.len()))).await?;
            stream.write_all(&bytes).await?;
        }
        Reply::Endless => {
            stream.write_all(&send_head("200 OK".into(), None)).await?;
            let chunk = vec![0x5a; 16 * 1024];
            loop {
                stream.write_all(&chunk).await?;
            }
        }
        Reply::Trickle(interval) => {
            stream.write_all(&send_head("200 OK".into(), Some(total))).await?;
            for byte in artifact {
                stream.write_all(&[*byte]).await?;
                stream.flush().await?;
                tokio::time::sleep(interval).await;
            }
        }
    }
    stream.shutdown().await
}

fn artifact_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

const LEN: usize = 300_000;

fn config() -> DownloadConfig {
    DownloadConfig {
        deadline: Duration::from_secs(30),
        stall_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        max_attempts: 4,
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
        disk_margin: 0,
    }
}

fn request(server: &Server, artifact: &[u8], dir: &Path) -> DownloadRequest {
    DownloadRequest {
        url: server.url.clone(),
        bearer_token: Some("device-token".into()),
        expected: Artifact { sha256: Sha256Sum::of(artifact), length: artifact.len() as u64 },
        dir: dir.to_path_buf(),
    }
}

/// Fetches with `config`, returning the result and every progress report.
async fn fetch(
    config: DownloadConfig,
    request: &DownloadRequest,
    cancel: &CancellationToken,
) -> (Result<VerifiedArtifact, DownloadError>, Vec<Progress>) {
    let downloader = Downloader::new(config).expect("downloader");
    let mut seen = Vec::new();
    let result = downloader.fetch(request, cancel, |p| seen.push(p)).await;
    (result, seen)
}

/// Asserts a verified artifact with the right bytes, and no part file left.
fn assert_verified(result: Result<VerifiedArtifact, DownloadError>, request: &DownloadRequest, bytes: &[u8]) {
    let artifact = match result {
        Ok(a) => a,
        Err(e) => panic!("download failed: {} ({e})", e.kind()),
    };
    assert_eq!(artifact.path(), request.artifact_path());
    assert_eq!((artifact.sha256(), artifact.len()), (Sha256Sum::of(bytes), bytes.len() as u64));
    assert_eq!(std::fs::read(artifact.path()).expect("artifact on disk"), bytes);
    assert!(!request.part_path().exists(), "the part file is gone");
}

/// Asserts the failure kind and that nothing of the download is left on disk.
fn assert_failed_clean(result: Result<VerifiedArtifact, DownloadError>, request: &DownloadRequest, kind: &str) {
    match result {
        Ok(_) => panic!("expected a {kind} failure"),
        Err(e) => assert_eq!(e.kind(), kind, "{e}"),
    }
    assert!(!request.part_path().exists(), "part file removed");
    assert!(!request.artifact_path().exists(), "no artifact");
}

fn offset_of(range: &Option<String>) -> u64 {
    range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("not a resume range: {range:?}"))
}

#[tokio::test]
async fn downloads_verifies_and_reports_progress() {
    let bytes = artifact_bytes(LEN);
    let server = Server::start(bytes.clone(), vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let (result, progress) = fetch(config(), &req, &CancellationToken::new()).await;
    assert_verified(result, &req, &bytes);
    assert_eq!(server.seen(), [Seen { range: None, authorization: Some("Bearer device-token".into()) }]);
    assert_eq!(progress.first().map(|p| p.percent()), Some(0));
    assert_eq!(progress.last().map(|p| p.percent()), Some(100));
    assert!(progress.windows(2).all(|w| w[0].done <= w[1].done), "progress never goes back");
    assert!(progress.iter().all(|p| p.total == LEN as u64));
}

#[tokio::test]
async fn a_cut_mid_body_resumes_from_where_it_stopped() {
    let bytes = artifact_bytes(LEN);
    let server = Server::start(bytes.clone(), vec![Reply::CutAfter(100_000)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let (result, progress) = fetch(config(), &req, &CancellationToken::new()).await;
    assert_verified(result, &req, &bytes);
    let ranges = server.ranges();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let resumed_at = offset_of(&ranges[1]);
    assert!(resumed_at > 0 && resumed_at <= 100_000, "resumed at {resumed_at}");
    assert!(progress.windows(2).all(|w| w[0].done <= w[1].done), "a resume does not start over");
}

#[tokio::test]
async fn a_stall_mid_body_resumes_and_a_silent_server_is_given_up() {
    let bytes = artifact_bytes(LEN);
    let quick_stall = DownloadConfig { stall_timeout: Duration::from_millis(300), ..config() };
    let server = Server::start(bytes.clone(), vec![Reply::StallAfter(50_000)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let (result, _) = fetch(quick_stall.clone(), &req, &CancellationToken::new()).await;
    assert_verified(result, &req, &bytes);
    assert!(offset_of(&server.ranges()[1]) > 0);

    // Headers, then nothing, every time: each attempt stalls without progress until the attempts run out.
    let silent = vec![Reply::StallAfter(0); 10];
    let server = Server::start(bytes.clone(), silent).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let config = DownloadConfig { max_attempts: 2, ..quick_stall };
    let (result, _) = fetch(config, &req, &CancellationToken::new()).await;
    assert_failed_clean(result, &req, "stalled");
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn a_server_that_ignores_range_is_restarted_cleanly() {
    let bytes = artifact_bytes(LEN);
    let server = Server::start(bytes.clone(), vec![Reply::CutAfter(100_000), Reply::IgnoreRange]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    // The second answer was the whole file from byte 0: appending it would have corrupted the artifact.
    assert_verified(result, &req, &bytes);
    assert!(offset_of(&server.ranges()[1]) > 0);
}

#[tokio::test]
async fn a_part_left_by_an_earlier_run_is_resumed() {
    let bytes = artifact_bytes(LEN);
    let server = Server::start(bytes.clone(), vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    std::fs::write(req.part_path(), &bytes[..120_000]).expect("leftover part");
    let (result, progress) = fetch(config(), &req, &CancellationToken::new()).await;
    assert_verified(result, &req, &bytes);
    assert_eq!(server.ranges(), [Some("bytes=120000-".to_string())]);
    assert_eq!(progress.first().map(|p| p.done), Some(120_000));
}

#[tokio::test]
async fn a_damaged_leftover_part_costs_one_clean_restart() {
    let bytes = artifact_bytes(LEN);
    let server = Server::start(bytes.clone(), vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    std::fs::write(req.part_path(), vec![0u8; 120_000]).expect("damaged part");
    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    assert_verified(result, &req, &bytes);
    assert_eq!(server.ranges(), [Some("bytes=120000-".to_string()), None]);
}

#[tokio::test]
async fn range_not_satisfiable_discards_the_part() {
    let bytes = artifact_bytes(LEN);
    let server = Server::start(bytes.clone(), vec![Reply::Status(416)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    std::fs::write(req.part_path(), &bytes[..120_000]).expect("leftover part");
    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    assert_verified(result, &req, &bytes);
    assert_eq!(server.ranges(), [Some("bytes=120000-".to_string()), None]);
}

#[tokio::test]
async fn more_bytes_than_declared_are_cut_off() {
    let bytes = artifact_bytes(LEN);
    // A bigger file with an honest Content-Length: refused before the body.
    let mut bigger = bytes.clone();
    bigger.extend_from_slice(b"and a tail");
    let server = Server::start(bytes.clone(), vec![Reply::Body(bigger)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    assert_failed_clean(result, &req, "too_long");
    assert_eq!(server.seen().len(), 1, "not retried");

    // Endless bytes without a length: cut off at the first byte past the declared length.
    let server = Server::start(bytes.clone(), vec![Reply::Endless]).await;
    let req = request(&server, &bytes, dir.path());
    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    match &result {
        Err(DownloadError::TooLong { declared, received }) => {
            assert_eq!(*declared, LEN as u64);
            assert!(*received > *declared);
        }
        other => panic!("expected too_long, got {other:?}"),
    }
    assert_failed_clean(result, &req, "too_long");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn wrong_bytes_are_refused_and_nothing_is_kept() {
    let bytes = artifact_bytes(LEN);
    let mut tampered = bytes.clone();
    tampered[LEN / 2] ^= 1;
    let server = Server::start(bytes.clone(), vec![Reply::Body(tampered.clone())]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    match &result {
        Err(DownloadError::HashMismatch { expected, actual }) => {
            assert_eq!((*expected, *actual), (Sha256Sum::of(&bytes), Sha256Sum::of(&tampered)));
        }
        other => panic!("expected hash_mismatch, got {other:?}"),
    }
    assert_failed_clean(result, &req, "hash_mismatch");
    assert_eq!(server.seen().len(), 1, "a fresh download with wrong bytes is not retried");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0, "the staging folder is empty");
}

#[tokio::test]
async fn not_found_and_server_errors_are_retried_until_success() {
    let bytes = artifact_bytes(LEN);
    let script = vec![Reply::Status(404), Reply::Status(500), Reply::Status(503)];
    let server = Server::start(bytes.clone(), script).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    assert_verified(result, &req, &bytes);
    assert_eq!(server.seen().len(), 4);
}

#[tokio::test]
async fn retries_end_after_max_attempts_and_forbidden_is_final() {
    let bytes = artifact_bytes(LEN);
    let server = Server::start(bytes.clone(), vec![Reply::Status(500); 10]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    assert!(matches!(result, Err(DownloadError::Status { status: 500, .. })), "{result:?}");
    assert_failed_clean(result, &req, "status");
    assert_eq!(server.seen().len(), 4);

    let server = Server::start(bytes.clone(), vec![Reply::Status(403)]).await;
    let req = request(&server, &bytes, dir.path());
    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    assert!(matches!(result, Err(DownloadError::Status { status: 403, .. })), "{result:?}");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn the_overall_deadline_ends_a_trickling_download() {
    let bytes = artifact_bytes(LEN);
    let server = Server::start(bytes.clone(), vec![Reply::Trickle(Duration::from_millis(10))]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let config = DownloadConfig { deadline: Duration::from_millis(500), ..config() };
    let (result, _) = fetch(config, &req, &CancellationToken::new()).await;
    match &result {
        Err(DownloadError::Deadline { done, total, .. }) => assert!(*done > 0 && *done < *total, "{done}/{total}"),
        other => panic!("expected deadline, got {other:?}"),
    }
    assert_failed_clean(result, &req, "deadline");
}

#[tokio::test]
async fn cancelling_keeps_the_part_and_the_next_run_resumes() {
    let bytes = artifact_bytes(LEN);
    let server = Server::start(bytes.clone(), vec![Reply::StallAfter(100_000)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let cancel = CancellationToken::new();
    let downloader = Downloader::new(config()).expect("downloader");
    let trigger = cancel.clone();
    let result = downloader
        .fetch(&req, &cancel, move |p| {
            if p.done >= 50_000 {
                trigger.cancel();
            }
        })
        .await;
    assert!(matches!(result, Err(DownloadError::Cancelled)), "{result:?}");
    let kept = std::fs::metadata(req.part_path()).expect("part kept").len();
    assert!(kept >= 50_000, "{kept}");

    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    assert_verified(result, &req, &bytes);
    assert_eq!(server.ranges().last().cloned().flatten(), Some(format!("bytes={kept}-")));
}

#[tokio::test]
async fn without_disk_space_nothing_is_requested() {
    let bytes = artifact_bytes(LEN);
    let server = Server::start(bytes.clone(), vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let config = DownloadConfig { disk_margin: u64::MAX / 2, ..config() };
    let (result, _) = fetch(config, &req, &CancellationToken::new()).await;
    let message = result.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("not enough disk space"), "{message}");
    assert_failed_clean(result, &req, "disk_full");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn a_verified_artifact_from_an_earlier_run_needs_no_request() {
    let bytes = artifact_bytes(LEN);
    let server = Server::start(bytes.clone(), vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&server, &bytes, dir.path());
    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    assert_verified(result, &req, &bytes);
    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    assert_verified(result, &req, &bytes);
    assert_eq!(server.seen().len(), 1);

    // A damaged one is not trusted: it is fetched again.
    std::fs::write(req.artifact_path(), b"damaged").expect("damage");
    let (result, _) = fetch(config(), &req, &CancellationToken::new()).await;
    assert_verified(result, &req, &bytes);
    assert_eq!(server.seen().len(), 2);
}
