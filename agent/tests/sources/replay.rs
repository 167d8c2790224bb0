//! The replay source on the committed fixture folder.

use std::time::Duration;

use outpost_agent::source::{ReplayConfig, SourceConfig, SourceContext};

use crate::{fixture_dir, fixtures, next_within};

const LIMIT: Duration = Duration::from_secs(10);

fn replay(path: std::path::PathBuf, fps: Option<f64>, looping: bool) -> Box<dyn outpost_agent::source::FrameSource> {
    let config = SourceConfig::Replay(ReplayConfig {
        path,
        fps,
        looping,
        extensions: vec!["jpg".into()],
        max_total_bytes: 64 << 20,
    });
    config.build(&SourceContext { camera: "demo".into(), state_dir: "/nonexistent".into() }).expect("builds")
}

#[tokio::test]
async fn replays_the_folder_in_name_order_looping_byte_identical() {
    let files = fixtures(80);
    assert_eq!(files.len(), 80);
    let mut src = replay(fixture_dir(), None, true);
    assert!(!src.is_live());
    for i in 0..85 {
        let frame = next_within(src.as_mut(), LIMIT).await.expect("ok").expect("frame");
        let (name, bytes) = &files[i % 80];
        assert_eq!((&frame.origin, &frame.bytes[..]), (name, &bytes[..]), "frame {i}");
        assert_eq!(frame.seq, i as u64);
    }
}

#[tokio::test]
async fn paces_frames_at_the_configured_rate() {
    let mut src = replay(fixture_dir(), Some(50.0), true);
    let started = tokio::time::Instant::now();
    for _ in 0..11 {
        next_within(src.as_mut(), LIMIT).await.expect("ok").expect("frame");
    }
    // Eleven frames at 50 fps: the first is immediate, ten more periods of 20 ms follow (a lower bound only).
    assert!(started.elapsed() >= Duration::from_millis(190), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_gets_no_burst() {
    let mut src = replay(fixture_dir(), Some(10.0), true);
    next_within(src.as_mut(), LIMIT).await.expect("ok").expect("frame");
    // The pipeline stalls for 1 s (ten periods); afterwards frames come on the grid again, not ten at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = tokio::time::Instant::now();
    next_within(src.as_mut(), LIMIT).await.expect("ok").expect("frame");
    next_within(src.as_mut(), LIMIT).await.expect("ok").expect("frame");
    assert!(t0.elapsed() >= Duration::from_millis(50), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn without_loop_it_ends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, bytes) in fixtures(3) {
        std::fs::write(tmp.path().join(name), bytes).expect("write");
    }
    let mut src = replay(tmp.path().to_owned(), Some(0.0), false);
    for _ in 0..3 {
        next_within(src.as_mut(), LIMIT).await.expect("ok").expect("frame");
    }
    assert!(next_within(src.as_mut(), LIMIT).await.expect("ok").is_none());
}
