//! The frame pipeline on real frames and the real model: nothing lost from file sources, oldest dropped for live
//! ones, bad frames counted, the same predictions as `outpost-agent infer` whichever thread preprocesses, and swaps
//! that never feed a model an input prepared for another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use outpost_agent::pipeline::{EncodedFrame, FrameOutput, Pipeline, Prepare, Served};
use outpost_agent::queue::{Overflow, Pushed};
use outpost_common::protocol::ModelRef;
use outpost_common::vision::engine::Runtime;
use outpost_common::vision::pipeline::Timings;
use outpost_common::vision::{FrameResult, Vision, VisionOptions};

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

/// The parts of a result that do not depend on the clock.
fn predictions(o: &FrameOutput) -> Option<(u64, FrameResult)> {
    let (r, _) = o.outcome.as_ref().ok()?;
    Some((o.model.as_ref()?.version, FrameResult { timings: Timings::default(), ..r.clone() }))
}

/// Every val frame through a pipeline whose input is prepared by `prepare`'s thread.
fn outputs_prepared_by(prepare: Prepare) -> Vec<FrameOutput> {
    let files = val_files();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<FrameOutput>(4096);
    let pipeline =
        Pipeline::start_with(served(), Overflow::Wait, 4, Default::default(), prepare, tx).expect("threads start");
    for (i, path) in files.iter().enumerate() {
        pipeline.push(frame(i as u64 + 1, std::fs::read(path).expect("fixture")));
    }
    pipeline.drain();
    let mut outputs = Vec::new();
    while let Ok(o) = rx.try_recv() {
        outputs.push(o);
    }
    assert_eq!(outputs.len(), files.len(), "every frame answered");
    outputs
}

#[test]
fn results_are_the_same_whichever_thread_preprocesses() {
    let by_inference: Vec<_> = outputs_prepared_by(Prepare::Inference).iter().map(predictions).collect();
    assert!(by_inference.iter().all(Option::is_some), "every frame has a result");
    assert!(by_inference.iter().flatten().any(|(_, r)| !r.detections.is_empty()), "the frames are not all empty");
    for prepare in [Prepare::Decode, Prepare::Paced] {
        let outputs = outputs_prepared_by(prepare);
        if prepare == Prepare::Decode {
            assert!(
                outputs.iter().all(|o| o.outcome.as_ref().is_ok_and(|(r, _)| r.timings.preprocess > 0.0)),
                "the decode thread's preprocessing time is reported"
            );
        }
        let got: Vec<_> = outputs.iter().map(predictions).collect();
        assert!(got == by_inference, "{prepare:?}: the same predictions, frame by frame, as the inference thread's");
    }
}

fn classifier_as(version: u64) -> Served {
    let rt = Runtime::init(None).expect("ONNX Runtime");
    let bytes = std::fs::read(root().join("models/zoo/yolo11n-cls-224.onnx")).expect("model");
    let vision = Vision::load(rt, &bytes, VisionOptions::default()).expect("model loads");
    Served { model: ModelRef { name: "defect".into(), version }, vision }
}

/// Odd versions are the 320 detector, even ones the 224 classifier: inputs of different sizes, so a tensor prepared
/// for one and fed to the other fails, and the results tell the models apart.
fn alternating(version: u64) -> Served {
    if version % 2 == 1 { served_as(version) } else { classifier_as(version) }
}

#[test]
fn swaps_under_inputs_prepared_by_the_decode_thread_give_the_new_models_results() {
    let files = val_files();
    let n = 160u64;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<FrameOutput>(4096);
    let pipeline = Pipeline::start_with(served_as(1), Overflow::Wait, 4, Default::default(), Prepare::Decode, tx)
        .expect("threads start");
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..n {
                pipeline.push(frame(i + 1, std::fs::read(&files[i as usize % files.len()]).expect("fixture")));
            }
        });
        // Swaps while the decode thread keeps preparing inputs for the model it last heard of.
        for (version, after) in [(2, 20), (3, 50), (4, 80), (5, 110), (6, 130)] {
            wait_outputs(&rx, after);
            let old = pipeline.swap(alternating(version)).expect("swap queued").blocking_recv().expect("swapped");
            assert_eq!(old.map(|s| s.model.version), Some(version - 1));
        }
    });
    let stale = pipeline.stale_inputs();
    pipeline.drain();
    let mut outputs = Vec::new();
    while let Ok(o) = rx.try_recv() {
        outputs.push(o);
    }
    let seqs: Vec<u64> = outputs.iter().map(|o| o.frame.seq).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "every frame answered exactly once, in order");
    let versions: Vec<u64> = outputs.iter().filter_map(|o| o.model.as_ref().map(|m| m.version)).collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "versions only move forward, between frames");
    assert_eq!(versions.last(), Some(&6));
    // Each frame's result is what the model that answered gives on that frame alone.
    let mut models: BTreeMap<u64, Served> = BTreeMap::new();
    for o in &outputs {
        let (version, got) = predictions(o).unwrap_or_else(|| panic!("frame {} failed: {:?}", o.frame.seq, o.outcome));
        let model = models.entry(version).or_insert_with(|| alternating(version));
        let mut want = model.vision.infer_encoded(&o.frame.bytes).expect("direct inference");
        want.timings = Timings::default();
        assert!(
            got == want,
            "frame {} on version {version}: the model's own result ({stale} stale inputs)",
            o.frame.seq
        );
    }
}
