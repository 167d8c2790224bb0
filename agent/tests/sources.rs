//! The frame sources against real folders and real HTTP servers on 127.0.0.1. Waits are on conditions with
//! deadlines; the only sleeps are a simulated camera's pacing.

mod sources {
    pub mod dir;
    pub mod http;
    pub mod mjpeg;
    pub mod replay;
    pub mod server;
}

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_agent::source::{Frame, FrameSource, SourceError};

/// The committed validation images: 80 small JPEGs.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images/defect-val/images")
}

/// The first `n` fixture images (file-name order) with their names.
pub fn fixtures(n: usize) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("fixture dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8 name"))
        .filter(|n| n.ends_with(".jpg"))
        .collect();
    names.sort();
    names
        .into_iter()
        .take(n)
        .map(|name| {
            let bytes = std::fs::read(fixture_dir().join(&name)).expect("read fixture");
            (name, bytes)
        })
        .collect()
}

/// One call to `next`, bounded in time.
pub async fn next_within(source: &mut dyn FrameSource, limit: Duration) -> Result<Option<Frame>, SourceError> {
    match tokio::time::timeout(limit, source.next()).await {
        Ok(r) => r,
        Err(_) => panic!("{} gave nothing within {limit:?}", source.describe()),
    }
}

/// Calls `next` until a frame arrives (errors are collected), bounded in time.
pub async fn next_frame(source: &mut dyn FrameSource, limit: Duration) -> (Frame, Vec<SourceError>) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut errors = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, source.next()).await {
            Ok(Ok(Some(frame))) => return (frame, errors),
            Ok(Ok(None)) => panic!("{} ended", source.describe()),
            Ok(Err(e)) => errors.push(e),
            Err(_) => panic!("{} gave no frame within {limit:?}; errors: {errors:?}", source.describe()),
        }
    }
}

/// Asserts that `next` yields nothing (no frame, no error) for `window`: used after everything was consumed.
pub async fn assert_quiet(source: &mut dyn FrameSource, window: Duration) {
    if let Ok(r) = tokio::time::timeout(window, source.next()).await {
        panic!("{} was expected to stay quiet, got {r:?}", source.describe());
    }
}
