//! The snapshot source against a real HTTP server: pacing, retries, a server that vanishes, oversized answers.

use std::sync::Arc;
use std::time::Duration;

use outpost_agent::source::{FrameSource, HttpMode};

use super::server::{Reply, Server, http_source};
use crate::{fixtures, next_frame, next_within};

const LIMIT: Duration = Duration::from_secs(10);

fn snapshot(url: String, interval_ms: u64, max_frame_bytes: usize) -> Box<dyn FrameSource> {
    http_source(url, HttpMode::Snapshot, interval_ms, max_frame_bytes)
}

#[tokio::test]
async fn snapshots_arrive_at_the_interval_byte_identical() {
    let image = fixtures(1).remove(0).1;
    let server = Server::always(Reply::ok("image/jpeg", image.clone())).await;
    let mut src = snapshot(server.url("/snap.jpg"), 100, 1 << 20);
    assert!(src.is_live());
    let started = tokio::time::Instant::now();
    for seq in 0..4 {
        let frame = next_within(src.as_mut(), LIMIT).await.expect("ok").expect("frame");
        assert_eq!(frame.bytes, image);
        assert_eq!(frame.seq, seq);
        assert_eq!(frame.origin, server.url("/snap.jpg"));
    }
    // Four requests on a 100 ms grid span at least three intervals (a lower bound only: never faster).
    assert!(started.elapsed() >= Duration::from_millis(290), "{:?}", started.elapsed());
    assert_eq!(server.hits(), 4);
}

#[tokio::test]
async fn server_errors_are_reported_and_retried() {
    let server =
        Server::start(|_, n| if n < 2 { Reply::status(503) } else { Reply::ok("image/jpeg", b"jpeg".to_vec()) }).await;
    let mut src = snapshot(server.url("/snap.jpg"), 20, 1 << 20);
    let (frame, errors) = next_frame(src.as_mut(), LIMIT).await;
    assert_eq!(frame.bytes.as_ref(), b"jpeg");
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages.iter().all(|m| m.ends_with("answered HTTP 503")), "{messages:?}");
}

#[tokio::test]
async fn a_server_that_goes_away_is_retried_until_it_returns() {
    let handler: super::server::Handler = Arc::new(|_, _| Reply::ok("image/jpeg", b"first".to_vec()));
    let server = Server::start_on("127.0.0.1:0".parse().expect("addr"), handler).await;
    let addr = server.addr;
    let mut src = snapshot(server.url("/snap.jpg"), 20, 1 << 20);
    let (frame, _) = next_frame(src.as_mut(), LIMIT).await;
    assert_eq!(frame.bytes.as_ref(), b"first");

    server.stop().await;
    let err = next_within(src.as_mut(), LIMIT).await.expect_err("server gone");
    assert_eq!(err.kind(), "http", "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    let server = Server::start_on(addr, Arc::new(|_, _| Reply::ok("image/jpeg", b"back".to_vec()))).await;
    let (frame, _) = next_frame(src.as_mut(), LIMIT).await;
    assert_eq!(frame.bytes.as_ref(), b"back");
    server.stop().await;
}

#[tokio::test]
async fn oversized_responses_are_cut_off() {
    let big = vec![7u8; 300_000];
    let server = Server::start(move |path, _| match path {
        "/counted" => Reply::ok("image/jpeg", big.clone()),
        // No Content-Length: the cap is enforced while the body streams in.
        "/streamed" => Reply::stream("image/jpeg", big.chunks(10_000).map(<[u8]>::to_vec).collect(), Duration::ZERO),
        _ => Reply::ok("image/jpeg", b"small".to_vec()),
    })
    .await;
    for path in ["/counted", "/streamed"] {
        let mut src = snapshot(server.url(path), 20, 100_000);
        let err = next_within(src.as_mut(), LIMIT).await.expect_err("too large");
        assert_eq!(err.kind(), "too_large", "{path}: {err}");
        assert!(err.to_string().contains("100000-byte cap"), "{err}");
    }
    let mut src = snapshot(server.url("/small"), 20, 100_000);
    let frame = next_within(src.as_mut(), LIMIT).await.expect("ok").expect("frame");
    assert_eq!(frame.bytes.as_ref(), b"small");
}
