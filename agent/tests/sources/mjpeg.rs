//! The MJPEG source against a real streaming server: exact frames, a cut stream, oversized parts, wrong streams.

use std::time::Duration;

use outpost_agent::source::{FrameSource, HttpMode};

use super::server::{Reply, Server, http_source};
use crate::{fixtures, next_frame, next_within};

const LIMIT: Duration = Duration::from_secs(10);

fn mjpeg(url: String, max_frame_bytes: usize) -> Box<dyn FrameSource> {
    http_source(url, HttpMode::Mjpeg, 1000, max_frame_bytes)
}

/// One multipart part as a camera writes it.
fn part(boundary: &str, body: &[u8], content_length: bool) -> Vec<u8> {
    let mut out = format!("--{boundary}\r\nContent-Type: image/jpeg\r\n").into_bytes();
    if content_length {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
    out
}

#[tokio::test]
async fn a_stream_of_n_parts_yields_n_identical_frames() {
    let images: Vec<Vec<u8>> = fixtures(12).into_iter().map(|(_, b)| b).collect();
    // With Content-Length and the standard header; without it and with the `boundary=--x` quirk.
    for (content_type, wire_boundary, counted) in [
        ("multipart/x-mixed-replace; boundary=frame", "frame", true),
        ("multipart/x-mixed-replace;boundary=--myboundary", "myboundary", false),
    ] {
        let mut parts: Vec<Vec<u8>> = images.iter().map(|b| part(wire_boundary, b, counted)).collect();
        // Without Content-Length a part ends only when the next boundary arrives: close the stream properly.
        parts.push(format!("--{wire_boundary}--\r\n").into_bytes());
        let server = Server::always(Reply::stream(content_type, parts, Duration::from_millis(10))).await;
        let mut src = mjpeg(server.url("/video"), 1 << 20);
        assert!(src.is_live());
        for (seq, image) in images.iter().enumerate() {
            let frame = next_within(src.as_mut(), LIMIT).await.expect("ok").expect("frame");
            assert_eq!(frame.bytes, image, "{content_type}: frame {seq}");
            assert_eq!(frame.seq, seq as u64);
        }
        // Then the server closes the stream: reported, and the source reconnects to a fresh stream.
        let err = next_within(src.as_mut(), LIMIT).await.expect_err("ended");
        assert_eq!(err.kind(), "stream", "{err}");
        let (frame, _) = next_frame(src.as_mut(), LIMIT).await;
        assert_eq!(frame.bytes, images[0]);
        assert_eq!(server.hits(), 2);
    }
}

#[tokio::test]
async fn a_stream_cut_mid_part_reconnects() {
    let images: Vec<Vec<u8>> = fixtures(3).into_iter().map(|(_, b)| b).collect();
    let full: Vec<Vec<u8>> = images.iter().map(|b| part("f", b, true)).collect();
    let mut cut = full[..2].to_vec();
    cut.push(full[2][..full[2].len() / 2].to_vec());
    let server = Server::start(move |_, n| {
        let parts = if n == 0 { cut.clone() } else { full.clone() };
        Reply::stream("multipart/x-mixed-replace; boundary=f", parts, Duration::from_millis(5))
    })
    .await;
    let mut src = mjpeg(server.url("/video"), 1 << 20);
    let mut frames = Vec::new();
    let mut errors = Vec::new();
    while frames.len() < 5 {
        let (frame, errs) = next_frame(src.as_mut(), LIMIT).await;
        frames.push(frame.bytes.to_vec());
        errors.extend(errs);
    }
    let expected: Vec<Vec<u8>> = [0, 1, 0, 1, 2].iter().map(|&i| images[i].clone()).collect();
    assert_eq!(frames, expected, "the half part is never a frame");
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[tokio::test]
async fn oversized_parts_are_skipped_and_the_stream_goes_on() {
    let small = b"\xFF\xD8small\xFF\xD9".to_vec();
    let big = vec![0xAB; 50_000];
    let parts = vec![
        part("f", &small, false),
        part("f", &big, false),
        part("f", &small, true),
        part("f", &big, true),
        part("f", b"end", true),
    ];
    let server = Server::always(Reply::stream("multipart/x-mixed-replace; boundary=f", parts, Duration::ZERO)).await;
    let mut src = mjpeg(server.url("/video"), 10_000);
    let mut got = Vec::new();
    for _ in 0..5 {
        match next_within(src.as_mut(), LIMIT).await {
            Ok(Some(f)) => got.push(String::from_utf8_lossy(&f.bytes[..]).into_owned()),
            Ok(None) => panic!("ended"),
            Err(e) => got.push(e.kind().to_owned()),
        }
    }
    let small = String::from_utf8_lossy(&small).into_owned();
    assert_eq!(got, [small.as_str(), "too_large", small.as_str(), "too_large", "end"]);
}

#[tokio::test]
async fn a_snapshot_url_in_mjpeg_mode_is_a_clear_error() {
    let server = Server::always(Reply::ok("image/jpeg", b"jpeg".to_vec())).await;
    let mut src = mjpeg(server.url("/snap.jpg"), 1 << 20);
    let err = next_within(src.as_mut(), LIMIT).await.expect_err("not multipart");
    assert!(err.to_string().contains("not multipart") && err.to_string().contains("snapshot"), "{err}");
}
