//! The frame pipeline on real frames and the real model: nothing lost from file sources, oldest dropped for live
//! ones, bad frames counted, and the same predictions as `outpost-agent infer`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use outpost_agent::pipeline::{EncodedFrame, FrameOutput, Pipeline, Served};
use outpost_agent::queue::{Overflow, Pushed};
use outpost_common::protocol::ModelRef;
use outpost_common::vision::engine::Runtime;
use outpost_common::vision::{Vision, VisionOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn served() -> Served {
    served_as(1)
}

fn served_as(version: u64) -> Served {
    let rt = Runtime::init(None).expect("ONNX Runtime");
    let bytes = std::fs::read(root().join("models/zoo/defect-yolo11n-320.onnx")).expect("model");
    let vision = Vision::load(rt, &bytes, VisionOptions::default()).expect("model loads");
    Served { model: ModelRef { name: "defect".into(), version }, vision }
}

fn frame(seq: u64, bytes: Vec<u8>) -> EncodedFrame {
    EncodedFrame {
        camera: Arc::from("line-1"),
        seq,
        captured_at: time::OffsetDateTime::now_utc(),
        bytes: bytes.into(),
        ack: None,
    }
}

fn val_files() -> Vec<PathBuf> {
    let dir = root().join("tests/fixtures/images/defect-val/images");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).expect("fixtures").flatten().map(|e| e.path()).collect();
    files.sort();
    files
}

/// Per-label counts from `outpost-agent infer` on the same files.
fn infer_counts(files: &[PathBuf]) -> BTreeMap<String, u64> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["infer", "--model"])
        .arg(root().join("models/zoo/defect-yolo11n-320.onnx"))
        .args(files)
        .output()
        .expect("infer runs");
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        for d in v["detections"].as_array().into_iter().flatten() {
            *counts.entry(d["label"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn file_frames_are_all_processed_and_match_infer() {
    let files = val_files();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<FrameOutput>(4);
    let pipeline = Pipeline::start(served(), Overflow::Wait, 4, Default::default(), tx).expect("threads start");
    let collector = std::thread::spawn(move || {
        let mut outputs = Vec::new();
        while let Some(o) = rx.blocking_recv() {
            outputs.push(o);
        }
        outputs
    });
    let good = std::fs::read(&files[0]).expect("fixture");
    let bad = [good[..good.len() / 3].to_vec(), b"not an image".to_vec(), Vec::new()];
    let mut seq = 0;
    for (i, path) in files.iter().enumerate() {
        seq += 1;
        assert_eq!(pipeline.push(frame(seq, std::fs::read(path).expect("fixture"))), Pushed::Queued);
        if i % 30 == 0 {
            seq += 1;
            pipeline.push(frame(seq, bad[i / 30].clone()));
        }
    }
    pipeline.drain();
    let outputs = collector.join().expect("collector");
    assert_eq!(outputs.len() as u64, seq, "every frame fed has exactly one output");
    let failed: Vec<&str> = outputs.iter().filter_map(|o| o.outcome.as_ref().err().map(|e| e.kind())).collect();
    assert_eq!(failed, ["truncated", "not_an_image", "empty"]);
    let mut counts = BTreeMap::new();
    for o in &outputs {
        if let Ok((r, _)) = &o.outcome {
            assert_eq!(o.model.as_ref().map(|m| m.version), Some(1), "every result names its model version");
            for d in &r.detections {
                *counts.entry(d.label.clone()).or_insert(0u64) += 1;
            }
        }
    }
    let mut seqs: Vec<u64> = outputs.iter().map(|o| o.frame.seq).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=seq).collect::<Vec<_>>());
    assert_eq!(counts, infer_counts(&files), "per-class counts match `infer` on the same files");
}

#[test]
fn live_frames_drop_the_oldest_when_inference_falls_behind() {
    let files = val_files();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<FrameOutput>(1024);
    let pipeline = Pipeline::start(served(), Overflow::DropOldest, 2, Default::default(), tx).expect("threads start");
    // A camera far faster than the model: push 200 frames as fast as possible.
    let pushed = 200u64;
    for i in 0..pushed {
        pipeline.push(frame(i + 1, std::fs::read(&files[i as usize % files.len()]).expect("fixture")));
    }
    let dropped = pipeline.dropped();
    pipeline.drain();
    let mut processed = 0u64;
    let mut last = 0;
    while let Ok(o) = rx.try_recv() {
        assert!(o.outcome.is_ok());
        assert!(o.frame.seq > last, "frames stay in order");
        last = o.frame.seq;
        processed += 1;
    }
    assert!(dropped > 0, "inference could not keep up, so frames were dropped");
    assert_eq!(processed + dropped, pushed, "every frame is either processed or counted as dropped");
    assert_eq!(last, pushed, "the newest frame is always processed");
}

type Outputs = tokio::sync::mpsc::Receiver<FrameOutput>;

/// Waits until `rx` holds at least `n` outputs.
fn wait_outputs(rx: &Outputs, n: usize) {
    while rx.len() < n {
        std::thread::yield_now();
    }
}

/// Outputs of a pipeline fed `n` frames by another thread, with `act` run on the pipeline after `at` outputs while
/// frames keep flowing.
fn run_with(n: u64, at: usize, act: impl FnOnce(&Pipeline, &Outputs)) -> Vec<FrameOutput> {
    let files = val_files();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<FrameOutput>(4096);
    let pipeline = Pipeline::start(served_as(1), Overflow::Wait, 4, Default::default(), tx).expect("threads start");
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..n {
                pipeline.push(frame(i + 1, std::fs::read(&files[i as usize % files.len()]).expect("fixture")));
            }
        });
        wait_outputs(&rx, at);
        act(&pipeline, &rx);
    });
    pipeline.drain();
    let mut outputs = Vec::new();
    while let Ok(o) = rx.try_recv() {
        outputs.push(o);
    }
    outputs
}

#[test]
fn a_swap_between_frames_drops_nothing_and_splits_the_versions() {
    let n = 120;
    let outputs = run_with(n, 40, |p, _| {
        let old = p.swap(served_as(2)).expect("swap queued").blocking_recv().expect("swapped");
        assert_eq!(old.map(|s| s.model.version), Some(1), "the replaced model is handed back");
    });
    let seqs: Vec<u64> = outputs.iter().map(|o| o.frame.seq).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "every frame answered exactly once, in order");
    let versions: Vec<u64> = outputs.iter().map(|o| o.model.as_ref().expect("served").version).collect();
    let switch = versions.iter().position(|v| *v == 2).expect("version 2 served");
    assert!(switch >= 40, "the swap happened after the first frames");
    assert!(versions[..switch].iter().all(|v| *v == 1) && versions[switch..].iter().all(|v| *v == 2), "A…A B…B");
    assert!(outputs.iter().all(|o| o.outcome.is_ok()));
}

#[test]
fn unloading_skips_frames_until_the_next_model_arrives() {
    let files = val_files();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<FrameOutput>(4096);
    let pipeline = Pipeline::start(served_as(1), Overflow::Wait, 4, Default::default(), tx).expect("threads start");
    let feed = |range: std::ops::Range<u64>| {
        for i in range {
            pipeline.push(frame(i + 1, std::fs::read(&files[i as usize % files.len()]).expect("fixture")));
        }
    };
    feed(0..20);
    wait_outputs(&rx, 20);
    let old = pipeline.unload().expect("unload queued").blocking_recv().expect("unloaded");
    assert_eq!(old.map(|s| s.model.version), Some(1));
    // Frames arriving while no model is loaded are answered as skipped.
    feed(20..30);
    wait_outputs(&rx, 30);
    pipeline.swap(served_as(2)).expect("swap queued").blocking_recv().expect("swapped");
    feed(30..40);
    pipeline.drain();
    let mut outputs = Vec::new();
    while let Ok(o) = rx.try_recv() {
        outputs.push(o);
    }
    assert_eq!(outputs.len(), 40, "every frame answered");
    let kinds: Vec<&str> = outputs.iter().map(|o| o.outcome.as_ref().err().map_or("ok", |e| e.kind())).collect();
    assert!(kinds[..20].iter().chain(&kinds[30..]).all(|k| *k == "ok"));
    assert!(kinds[20..30].iter().all(|k| *k == "model_swap"), "{kinds:?}");
    assert!(outputs[30..].iter().all(|o| o.model.as_ref().is_some_and(|m| m.version == 2)));
}
