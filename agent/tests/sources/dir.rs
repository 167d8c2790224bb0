//! The dir source on real folders: settling, exactly-once, restarts, keep/move/delete, filtering.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_agent::source::{After, DirConfig, FrameSource, Outcome, SourceConfig, SourceContext};

use crate::{assert_quiet, fixtures, next_frame};

const SETTLE_MS: u64 = 250;
const LIMIT: Duration = Duration::from_secs(10);

struct Dirs {
    _tmp: tempfile::TempDir,
    inbox: PathBuf,
    done: PathBuf,
    state: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("tempdir");
    let inbox = tmp.path().join("inbox");
    std::fs::create_dir(&inbox).expect("inbox");
    Dirs { inbox, done: tmp.path().join("done"), state: tmp.path().join("state"), _tmp: tmp }
}

fn source(d: &Dirs, after: After, extensions: Option<Vec<String>>) -> Box<dyn FrameSource> {
    let config = SourceConfig::Dir(DirConfig {
        path: d.inbox.clone(),
        extensions: extensions.unwrap_or_else(|| vec!["jpg".into(), "jpeg".into(), "png".into()]),
        after,
        move_to: (after == After::Move).then(|| d.done.clone()),
        poll_interval_ms: 20,
        settle_ms: SETTLE_MS,
        max_frame_bytes: 1 << 20,
    });
    let ctx = SourceContext { camera: "line-1".into(), state_dir: d.state.clone() };
    config.build(&ctx).expect("dir source builds")
}

/// Writes a file in `pieces` chunks with pauses shorter than the settle time, like a slow FTP upload.
async fn write_slowly(path: &Path, bytes: &[u8], pieces: usize) {
    let mut file = std::fs::File::create(path).expect("create");
    for chunk in bytes.chunks(bytes.len().div_ceil(pieces)) {
        file.write_all(chunk).expect("write");
        file.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(SETTLE_MS / 5)).await;
    }
}

/// Takes `n` frames, acknowledging each as processed; returns (name, bytes) in the order received.
async fn take(source: &mut dyn FrameSource, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (frame, errors) = next_frame(source, LIMIT).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert!(frame.needs_ack());
        out.push((frame.origin.clone(), frame.bytes.to_vec()));
        frame.done(Outcome::Processed);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_yielded_once_complete_in_arrival_order_and_not_again_after_a_restart() {
    let d = dirs();
    let images = fixtures(5);
    let mut src = source(&d, After::Keep, None);
    assert!(!src.is_live());

    // Two files dropped one by one, then one written slowly in chunks over more than the settle time.
    std::fs::write(d.inbox.join("a0.jpg"), &images[0].1).expect("write");
    std::fs::write(d.inbox.join("a1.jpg"), &images[1].1).expect("write");
    let slow = images[2].1.clone();
    let slow_path = d.inbox.join("a2.jpg");
    let writer = tokio::spawn(async move { write_slowly(&slow_path, &slow, 8).await });
    let got = take(src.as_mut(), 3).await;
    writer.await.expect("writer");
    let expected: Vec<(String, Vec<u8>)> =
        ["a0.jpg", "a1.jpg", "a2.jpg"].iter().zip(&images).map(|(n, (_, b))| (n.to_string(), b.clone())).collect();
    assert_eq!(got, expected, "complete files, each once, in arrival order");
    assert_quiet(src.as_mut(), Duration::from_millis(SETTLE_MS * 4)).await;
    src.close().await.expect("close");
    drop(src);

    // A restart on the same folders: nothing again, but a new file is taken.
    let mut src = source(&d, After::Keep, None);
    assert_quiet(src.as_mut(), Duration::from_millis(SETTLE_MS * 4)).await;
    std::fs::write(d.inbox.join("b0.jpg"), &images[3].1).expect("write");
    let got = take(src.as_mut(), 1).await;
    assert_eq!(got, [("b0.jpg".to_string(), images[3].1.clone())]);
    src.close().await.expect("close");

    // Kept files stay where they were; the state file names them.
    let state = std::fs::read_to_string(d.state.join("dir-source-line-1.json")).expect("state file");
    for name in ["a0.jpg", "a1.jpg", "a2.jpg", "b0.jpg"] {
        assert!(d.inbox.join(name).exists(), "{name} kept");
        assert!(state.contains(name), "{name} in {state}");
    }
    // Pruning: a deleted file leaves the state file at the next scan.
    std::fs::remove_file(d.inbox.join("a0.jpg")).expect("rm");
    let mut src = source(&d, After::Keep, None);
    assert_quiet(src.as_mut(), Duration::from_millis(SETTLE_MS * 2)).await;
    src.close().await.expect("close");
    let state = std::fs::read_to_string(d.state.join("dir-source-line-1.json")).expect("state file");
    assert!(!state.contains("a0.jpg") && state.contains("a1.jpg"), "{state}");
}

#[tokio::test]
async fn an_unacknowledged_frame_is_processed_again_after_a_restart() {
    let d = dirs();
    let images = fixtures(1);
    std::fs::write(d.inbox.join("x.jpg"), &images[0].1).expect("write");
    let mut src = source(&d, After::Keep, None);
    let (frame, _) = next_frame(src.as_mut(), LIMIT).await;
    drop(frame); // the agent died before the pipeline finished with it
    drop(src);
    let mut src = source(&d, After::Keep, None);
    let got = take(src.as_mut(), 1).await;
    assert_eq!(got, [("x.jpg".to_string(), images[0].1.clone())]);
}

#[tokio::test]
async fn move_and_delete_happen_after_the_acknowledgement() {
    let images = fixtures(2);
    for after in [After::Move, After::Delete] {
        let d = dirs();
        let mut src = source(&d, after, None);
        std::fs::write(d.inbox.join("m.jpg"), &images[0].1).expect("write");
        let (frame, _) = next_frame(src.as_mut(), LIMIT).await;
        assert!(d.inbox.join("m.jpg").exists(), "{after:?}: still there while the pipeline works");
        frame.done(Outcome::Rejected);
        src.close().await.expect("close");
        assert!(!d.inbox.join("m.jpg").exists(), "{after:?}: gone from the inbox");
        match after {
            After::Move => assert_eq!(std::fs::read(d.done.join("m.jpg")).expect("moved"), images[0].1),
            _ => assert!(!d.done.join("m.jpg").exists()),
        }
        // A restart finds nothing to do; a new file with the same name is new work.
        let mut src = source(&d, after, None);
        assert_quiet(src.as_mut(), Duration::from_millis(SETTLE_MS * 3)).await;
        std::fs::write(d.inbox.join("m.jpg"), &images[1].1).expect("write");
        let got = take(src.as_mut(), 1).await;
        assert_eq!(got, [("m.jpg".to_string(), images[1].1.clone())], "{after:?}");
    }
}

#[tokio::test]
async fn extensions_filter_and_hidden_uploads_are_ignored() {
    let images = fixtures(1);
    let d = dirs();
    let mut src = source(&d, After::Keep, None);
    std::fs::write(d.inbox.join(".upload.jpg"), &images[0].1).expect("write");
    std::fs::write(d.inbox.join("notes.txt"), b"not an image").expect("write");
    std::fs::write(d.inbox.join("z.JPG"), &images[0].1).expect("write");
    let got = take(src.as_mut(), 1).await;
    assert_eq!(got[0].0, "z.JPG");
    assert_quiet(src.as_mut(), Duration::from_millis(SETTLE_MS * 3)).await;
    drop(src);

    // With no extension list every file goes to the pipeline, which counts a non-image as a bad frame.
    let d = dirs();
    let mut src = source(&d, After::Keep, Some(vec![]));
    std::fs::write(d.inbox.join("notes.txt"), b"not an image").expect("write");
    let got = take(src.as_mut(), 1).await;
    assert_eq!(got, [("notes.txt".to_string(), b"not an image".to_vec())]);
}

#[tokio::test]
async fn an_oversized_file_is_an_error_and_is_not_retried() {
    let d = dirs();
    let mut src = source(&d, After::Keep, None);
    std::fs::write(d.inbox.join("huge.jpg"), vec![0u8; (1 << 20) + 1]).expect("write");
    std::fs::write(d.inbox.join("ok.jpg"), b"fine").expect("write");
    let (frame, errors) = next_frame(src.as_mut(), LIMIT).await;
    assert_eq!(frame.origin, "ok.jpg");
    assert_eq!(errors.iter().map(|e| e.kind()).collect::<Vec<_>>(), ["too_large"], "{errors:?}");
    frame.done(Outcome::Processed);
    assert_quiet(src.as_mut(), Duration::from_millis(SETTLE_MS * 3)).await;
}
