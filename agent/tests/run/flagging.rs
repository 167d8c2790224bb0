//! Flagged samples end to end: the policies pick exactly the frames they should, rate limits and near-duplicate
//! suppression hold, and an upload server that fails half its requests still ends up with every sample once, with
//! the original bytes and the metadata annotators need.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::PathBuf;
use std::time::Duration;

use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::{EventBody, FlagReason};
use outpost_tests::broker::EmbeddedBroker;

use crate::harness::*;

#[path = "../support/sample_server.rs"]
mod sample_server;

/// `photo` decoded and encoded again at `quality`: the same scene, different bytes.
fn reencoded(photo: &PathBuf, quality: u8) -> Vec<u8> {
    let image = image::open(photo).expect("photo decodes").to_rgb8();
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(&image).expect("encode");
    out.into_inner()
}

fn sha(path: &PathBuf) -> String {
    Sha256Sum::of(&std::fs::read(path).expect("read")).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagged_samples_reach_a_flaky_server_exactly_once() {
    crate::init();
    let broker = EmbeddedBroker::start().expect("rumqttd starts");
    let (url, server) = sample_server::start_server(true).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let device = Device::new("e2e-flag");
    let val = defect_images("val");
    let (band_files, limited_files) = (&val[..40], &val[40..60]);

    // Three cameras, three policies.
    let no_limits = "rate = {}\ndedup = { enabled = false }\n";
    let mut cameras = defect_model_toml(2);
    cameras += &camera_toml(
        "band",
        &dir_source(&tmp.path().join("band")),
        &format!("band = {{ low = 0.25, high = 0.5 }}\n{no_limits}"),
    );
    cameras += &camera_toml(
        "limited",
        &dir_source(&tmp.path().join("limited")),
        "band = { low = 0.25, high = 1.0 }\nrate = { per_minute = 3 }\ndedup = { enabled = false }\n",
    );
    cameras += &camera_toml(
        "dedup",
        &dir_source(&tmp.path().join("dedup")),
        "band = { low = 0.25, high = 1.0 }\nrate = {}\ndedup = { enabled = true, window_secs = 600, max_distance = 6 }\n",
    );
    let mut setup = Setup::new(&broker.url(), cameras);
    setup.fleet = Some((url, sample_server::TOKEN.into()));
    let sub = subscribe(broker.v4_port, &device).await;
    let mut agent = Agent::start(&tmp.path().join("agent"), &device, &setup);
    agent.wait_ready().await;

    drop_files(&tmp.path().join("band"), "", band_files);
    drop_files(&tmp.path().join("limited"), "", limited_files);
    // One photo and three re-encodings of it (near-duplicates), then a different photo.
    let dedup_dir = tmp.path().join("dedup");
    drop_files(&dedup_dir, "a-", &val[..1]);
    for q in [90, 80, 70] {
        drop_bytes(&dedup_dir, &format!("b-copy-q{q}.jpg"), &reencoded(&val[0], q));
    }
    drop_files(&dedup_dir, "c-", &val[1..2]);

    // What the policies must pick, from `infer` on the same files.
    let in_band = |r: &serde_json::Value, low: f64, high: f64| {
        r["detections"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["score"].as_f64().is_some_and(|s| s >= low && s < high))
    };
    let band_expected: BTreeSet<String> =
        band_files.iter().zip(infer(band_files)).filter(|(_, r)| in_band(r, 0.25, 0.5)).map(|(f, _)| sha(f)).collect();
    let limited_candidates: BTreeSet<String> = limited_files
        .iter()
        .zip(infer(limited_files))
        .filter(|(_, r)| in_band(r, 0.25, 1.0))
        .map(|(f, _)| sha(f))
        .collect();
    assert!(band_expected.len() >= 5 && limited_candidates.len() > 3, "the fixtures exercise the policies");
    let expected_total = band_expected.len() + 3 + 2;

    agent.wait_metric("outpost_samples_uploaded_total", |v| v >= expected_total as f64).await;
    let stored = server.lock().expect("lock").stored.clone();
    let per_camera = |camera: &str| -> BTreeSet<String> {
        stored.iter().filter(|(_, (m, _))| m.camera == camera).map(|(sha, _)| sha.clone()).collect()
    };
    assert_eq!(per_camera("band"), band_expected, "the band policy picks exactly the uncertain frames");
    let limited = per_camera("limited");
    assert_eq!(limited.len(), 3, "per_minute = 3 holds");
    assert!(limited.is_subset(&limited_candidates));
    let dedup = per_camera("dedup");
    assert_eq!(dedup, BTreeSet::from([sha(&val[0]), sha(&val[1])]), "the re-encodings are suppressed");
    assert_eq!(stored.len(), expected_total, "nothing else was uploaded");

    // Each stored sample is the original file and carries what annotators and retraining need.
    let originals: BTreeMap<String, Vec<u8>> = [band_files, limited_files, &val[..2]]
        .concat()
        .iter()
        .map(|f| (sha(f), std::fs::read(f).expect("read")))
        .collect();
    for (sha, (meta, image)) in &stored {
        assert_eq!(originals.get(sha), Some(image), "{sha}: the original bytes, not re-encoded");
        assert_eq!(meta.device, "e2e-flag");
        assert_eq!((meta.model.name.as_str(), meta.model.version), ("defect", 2));
        assert_eq!(meta.reason, FlagReason::LowConfidence);
        assert!(!meta.predictions.is_empty(), "pre-annotations come with the sample");
        assert_eq!((meta.width, meta.height, meta.content_type.as_str()), (320, 320, "image/jpeg"));
    }
    assert!(agent.metric("outpost_sample_upload_retries_total").await > 0.0, "the flaky server made it retry");

    // One sample_flagged event per sample, naming it.
    let seen =
        wait_seen(&sub, &agent, "a sample_flagged event per sample", |s| s.flagged_events().len() == expected_total)
            .await;
    let announced: BTreeSet<String> = seen
        .flagged_events()
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::SampleFlagged(f) => Some(f.sample.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(announced, stored.keys().cloned().collect::<BTreeSet<_>>());
    let (status, _) = agent.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}:\n{}", agent.log());
}
