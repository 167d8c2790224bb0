//! Frames a camera can produce on a bad day: garbage, cut short, or declaring an absurd size. Each is counted by
//! kind, skipped and logged once per kind; the good frames around them are processed; the agent keeps running.

use std::time::Duration;

use outpost_tests::broker::EmbeddedBroker;

use crate::harness::*;

/// A real JPEG whose frame header is patched to declare 60000×60000 (would need ~10 GiB decoded).
fn giant_jpeg(photo: &[u8]) -> Vec<u8> {
    let mut bytes = photo.to_vec();
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline JPEG");
    bytes[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_counted_skipped_and_logged_once_per_kind() {
    crate::init();
    let broker = EmbeddedBroker::start().expect("rumqttd starts");
    let tmp = tempfile::tempdir().expect("tempdir");
    let device = Device::new("e2e-bad");
    let folder = tmp.path().join("line-1");
    let setup = Setup::new(&broker.url(), defect_model_toml(1) + &camera_toml("line-1", &dir_source(&folder), ""));
    let sub = subscribe(broker.v4_port, &device).await;
    let mut agent = Agent::start(&tmp.path().join("agent"), &device, &setup);
    agent.wait_ready().await;

    let val = defect_images("val");
    let photo = std::fs::read(&val[0]).expect("photo");
    let round = |n: usize| {
        drop_files(&folder, &format!("good{n}-"), &val[n * 5..n * 5 + 5]);
        drop_bytes(&folder, &format!("garbage{n}-a.jpg"), b"this was never an image");
        drop_bytes(&folder, &format!("garbage{n}-b.png"), &[0x42; 4096]);
        drop_bytes(&folder, &format!("cut{n}.jpg"), &photo[..photo.len() / 2]);
        drop_bytes(&folder, &format!("giant{n}.jpg"), &giant_jpeg(&photo));
    };
    round(0);
    agent.wait_metric("outpost_frames_processed_total{camera=\"line-1\"}", |v| v >= 5.0).await;
    for (reason, n) in [("not_an_image", 2.0), ("truncated", 1.0), ("too_large", 1.0)] {
        let series = format!("outpost_frames_rejected_total{{camera=\"line-1\",reason=\"{reason}\"}}");
        agent.wait_metric(&series, |v| v == n).await;
    }
    // A second bad day: counted again, logged no more.
    round(1);
    agent.wait_metric("outpost_frames_processed_total{camera=\"line-1\"}", |v| v >= 10.0).await;
    agent.wait_metric("outpost_frames_rejected_total{camera=\"line-1\",reason=\"too_large\"}", |v| v == 2.0).await;
    assert!(agent.healthy().await);
    let log = agent.log();
    for reason in ["not_an_image", "truncated", "too_large"] {
        let lines = log.lines().filter(|l| l.contains("frame rejected") && l.contains(reason)).count();
        assert_eq!(lines, 1, "`{reason}` logged once:\n{log}");
    }
    assert!(log.contains("60000×60000"), "the log says what was wrong with the giant frame");
    assert!(!log.contains("panicked"), "{log}");

    let (status, _) = agent.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}:\n{}", agent.log());
    let seen = wait_seen(&sub, &agent, "all windows", |s| {
        s.frames_per_camera().get("line-1") == Some(&10) && s.drops_per_camera().get("line-1") == Some(&8)
    })
    .await;
    assert_eq!(seen.gaps(), Vec::<u64>::new());
}
