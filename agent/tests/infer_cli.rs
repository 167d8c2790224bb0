//! `outpost-agent infer` and `check-model`, run as a user runs them: the real binary, real models, real images.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn zoo(name: &str) -> PathBuf {
    root().join("models/zoo").join(name)
}

fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

fn agent(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost-agent")).args(args).output().expect("outpost-agent starts")
}

fn assert_no_panic(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "the agent panicked: {stderr}");
    assert_ne!(out.status.code(), Some(101), "exit code 101 is a panic: {stderr}");
}

/// Runs `infer` and returns (exit code, one JSON value per line).
fn infer(model: &Path, images: &[PathBuf]) -> (i32, Vec<Value>) {
    let mut args: Vec<&std::ffi::OsStr> = vec!["infer".as_ref(), "--model".as_ref(), model.as_os_str()];
    args.extend(images.iter().map(|p| p.as_os_str()));
    let out = agent(&args);
    assert_no_panic(&out);
    let lines = String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

#[derive(Debug, Clone)]
struct Det {
    class: u64,
    score: f64,
    bbox: [f64; 4],
}

fn dets(v: &Value, key: &str, box_key: &str) -> Vec<Det> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    let b: Vec<f64> = d[box_key].as_array().expect("box").iter().filter_map(Value::as_f64).collect();
                    Det {
                        class: d["class"].as_u64().expect("class"),
                        score: d["score"].as_f64().expect("score"),
                        bbox: [b[0], b[1], b[2], b[3]],
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: [f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

/// The acceptance rule: every reference detection scoring ≥ 0.35 has a match (same class, IoU ≥ 0.9, score within
/// 0.03), and none of ours scoring ≥ 0.35 is missing from the reference (same class, IoU ≥ 0.9).
fn compare(image: &str, ours: &[Det], reference: &[Det]) -> Vec<String> {
    const FLOOR: f64 = 0.35;
    let mut problems = Vec::new();
    for r in reference.iter().filter(|r| r.score >= FLOOR) {
        let matched =
            ours.iter().any(|o| o.class == r.class && iou(o.bbox, r.bbox) >= 0.9 && (o.score - r.score).abs() <= 0.03);
        if !matched {
            problems.push(format!("{image}: reference {r:?} not matched in {ours:?}"));
        }
    }
    for o in ours.iter().filter(|o| o.score >= FLOOR) {
        if !reference.iter().any(|r| r.class == o.class && iou(o.bbox, r.bbox) >= 0.9) {
            problems.push(format!("{image}: extra detection {o:?}"));
        }
    }
    problems
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixture("reference/defect-yolo11n-320.predictions.json")).expect("reference");
    serde_json::from_str(&text).expect("reference JSON")
}

#[test]
fn reproduces_ultralytics_predictions() {
    let reference = reference();
    let preds = reference["predictions"].as_object().expect("predictions");
    let keys: Vec<&String> = preds.keys().collect();
    assert_eq!(keys.len(), 132, "80 validation, 40 drifted, 12 at 1280×720");
    let images: Vec<PathBuf> = keys.iter().map(|k| fixture(&format!("images/{k}"))).collect();
    let (code, lines) = infer(&zoo("defect-yolo11n-320.onnx"), &images);
    assert_eq!(code, 0);
    assert_eq!(lines.len(), images.len());
    let mut problems = Vec::new();
    let mut compared = 0;
    for (key, line) in keys.iter().zip(&lines) {
        assert!(line["image"].as_str().expect("image").ends_with(key.as_str()));
        let refs: Vec<Det> = dets(&serde_json::json!({ "d": preds[key.as_str()] }), "d", "xyxy");
        compared += refs.iter().filter(|r| r.score >= 0.35).count();
        problems.extend(compare(key, &dets(line, "detections", "box"), &refs));
        if key.starts_with("defect-1280x720") {
            assert_eq!((line["width"].as_u64(), line["height"].as_u64()), (Some(1280), Some(720)));
        }
    }
    assert!(compared > 100, "the comparison covers {compared} reference detections");
    assert!(problems.is_empty(), "{} mismatches:\n{}", problems.len(), problems.join("\n"));
}

/// Upscaled copies of the 1280×720 fixtures (1920×1080 and 2560×1440): the letterbox maps the same content through
/// a different scale, so Ultralytics' boxes, scaled by the same factor, must still be found. (A downscaled copy is
/// not a fair check: resampling twice below the model's input size changes the pixels the model sees.)
#[test]
fn letterbox_mapping_on_large_and_small_frames() {
    let reference = reference();
    let preds = reference["predictions"].as_object().expect("predictions");
    let dir = tempfile::tempdir().expect("tempdir");
    for (w, h) in [(1920u32, 1080u32), (2560, 1440)] {
        let factor = f64::from(w) / 1280.0;
        let mut images = Vec::new();
        let mut refs = Vec::new();
        for i in 0..12 {
            let key = format!("defect-1280x720/images/{i:05}.jpg");
            // DynamicImage's methods are compiled (optimised) inside `image`; the generic `imageops` would be
            // instantiated here, unoptimised, and take half a minute.
            let src = image::open(fixture(&format!("images/{key}"))).expect("fixture decodes");
            let scaled = src.resize_exact(w, h, image::imageops::FilterType::Triangle);
            let path = dir.path().join(format!("{w}x{h}-{i:05}.png"));
            let file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
            let encoder = image::codecs::png::PngEncoder::new_with_quality(
                file,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::NoFilter,
            );
            scaled.write_with_encoder(encoder).expect("write rescaled frame");
            images.push(path);
            let mut r = dets(&serde_json::json!({ "d": preds[&key] }), "d", "xyxy");
            for d in &mut r {
                d.bbox = d.bbox.map(|v| v * factor);
            }
            refs.push((key, r));
        }
        let (code, lines) = infer(&zoo("defect-yolo11n-320.onnx"), &images);
        assert_eq!(code, 0);
        let mut problems = Vec::new();
        for ((key, r), line) in refs.iter().zip(&lines) {
            assert_eq!((line["width"].as_u64(), line["height"].as_u64()), (Some(u64::from(w)), Some(u64::from(h))));
            problems.extend(compare(&format!("{key} at {w}x{h}"), &dets(line, "detections", "box"), r));
        }
        assert!(problems.is_empty(), "{} mismatches:\n{}", problems.len(), problems.join("\n"));
    }
}

fn check_model(model: &Path) -> (i32, String, String) {
    let out = agent(&["check-model".as_ref(), model.as_os_str()]);
    assert_no_panic(&out);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_model_understands_each_layout() {
    // (model, task, width, height, dynamic, output kind, labels, first label, last label)
    let cases = [
        (zoo("defect-yolo11n-320.onnx"), "detect", 320, 320, false, "yolo_detect", 3, "scratch", "stain"),
        (zoo("yolo11n-det-640.onnx"), "detect", 640, 640, false, "yolo_detect", 80, "0", "79"),
        (zoo("yolo26n-det-640-e2e.onnx"), "detect", 640, 640, false, "end_to_end", 80, "0", "79"),
        (zoo("yolo11n-cls-224.onnx"), "classify", 224, 224, false, "classify", 1000, "0", "999"),
        (fixture("models/dynamic-cls.onnx"), "classify", 128, 96, true, "classify", 4, "ok", "stain"),
        (fixture("models/dynamic-nometa.onnx"), "classify", 640, 640, true, "classify", 4, "0", "3"),
    ];
    for (model, task, w, h, dynamic, kind, n, first, last) in cases {
        let (code, stdout, stderr) = check_model(&model);
        assert_eq!(code, 0, "{}: {stderr}", model.display());
        let spec: Value = serde_json::from_str(&stdout).expect("JSON");
        let labels = spec["labels"].as_array().expect("labels");
        let got = (
            spec["task"].as_str(),
            spec["input"]["width"].as_u64(),
            spec["input"]["height"].as_u64(),
            spec["dynamic_input"].as_bool(),
            spec["output"]["kind"].as_str(),
            labels.len(),
            labels.first().and_then(Value::as_str),
            labels.last().and_then(Value::as_str),
        );
        assert_eq!(
            got,
            (Some(task), Some(w), Some(h), Some(dynamic), Some(kind), n, Some(first), Some(last)),
            "{}",
            model.display()
        );
    }
    // A dynamic model runs at the size it declared, on any frame.
    let (code, lines) = infer(&fixture("models/dynamic-cls.onnx"), &[fixture("images/grace_hopper.jpg")]);
    assert_eq!(code, 0);
    let classes = lines[0]["classes"].as_array().expect("classes");
    assert_eq!(classes.len(), 4);
    let total: f64 = classes.iter().filter_map(|c| c["score"].as_f64()).sum();
    assert!((total - 1.0).abs() < 1e-4, "logits were turned into probabilities: {total}");
}

#[test]
fn classifier_reports_top_k_and_confidence() {
    let (code, lines) = infer(&zoo("yolo11n-cls-224.onnx"), &[fixture("images/grace_hopper.jpg")]);
    assert_eq!(code, 0);
    let line = &lines[0];
    assert_eq!(line["task"], "classify");
    assert_eq!(line["classes"].as_array().map(Vec::len), Some(5));
    let c = &line["confidence"];
    let (top1, margin, entropy) = (c["top1"].as_f64(), c["margin"].as_f64(), c["entropy"].as_f64());
    assert_eq!(top1, line["classes"][0]["score"].as_f64());
    assert!(margin.is_some_and(|m| m >= 0.0) && entropy.is_some_and(|e| (0.0..=1.0).contains(&e)), "{c}");
    for stage in ["decode", "preprocess", "inference", "postprocess"] {
        assert!(line["timings_ms"][stage].as_f64().is_some_and(|t| t >= 0.0), "timing {stage}");
    }
}

/// A real JPEG whose frame header is patched to declare 60000×60000.
fn giant_jpeg() -> Vec<u8> {
    let mut bytes = std::fs::read(fixture("images/defect-val/images/00000.jpg")).expect("fixture");
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline JPEG");
    bytes[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    bytes
}

/// Peak resident memory of all waited-for children, in KiB.
#[allow(unsafe_code)]
fn children_peak_rss_kib() -> i64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss
    }
}

#[test]
fn hostile_images_are_reported_and_the_rest_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read(fixture("images/defect-val/images/00001.jpg")).expect("fixture");
    let files: [(&str, Vec<u8>); 6] = [
        ("giant.jpg", giant_jpeg()),
        ("truncated.jpg", good[..good.len() / 2].to_vec()),
        ("text.jpg", b"GET / HTTP/1.1\r\nHost: camera\r\n\r\n".to_vec()),
        ("empty.jpg", Vec::new()),
        ("good.jpg", good.clone()),
        ("random.png", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()),
    ];
    let mut paths = Vec::new();
    for (name, bytes) in &files {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        paths.push(p);
    }
    paths.push(dir.path().join("missing.jpg"));
    let (code, lines) = infer(&zoo("defect-yolo11n-320.onnx"), &paths);
    assert_eq!(code, 1, "some images failed");
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| l["error"]["kind"].as_str().unwrap_or(if l["task"].is_string() { "ok" } else { "?" }))
        .collect();
    assert_eq!(kinds, ["too_large", "truncated", "not_an_image", "empty", "ok", "not_an_image", "io"]);
    assert!(lines[0]["error"]["message"].as_str().is_some_and(|m| m.contains("60000×60000")), "{}", lines[0]);
    // Nothing near the 10 GiB the giant header asks for was allocated.
    let peak_mib = children_peak_rss_kib() / 1024;
    assert!(peak_mib < 1024, "peak RSS of the agent was {peak_mib} MiB");
}

#[test]
fn unusable_models_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_onnx = dir.path().join("weights.onnx");
    std::fs::write(&not_onnx, b"PK\x03\x04 this is a zip file, not a model").expect("write");
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").expect("write");
    let cases = [
        (not_onnx, "not a loadable ONNX model"),
        (empty, "the model file is empty"),
        (dir.path().join("absent.onnx"), "could not be read"),
        (fixture("models/bad-layout.onnx"), "not a layout Outpost understands"),
    ];
    for (model, message) in cases {
        for args in [vec!["check-model".as_ref(), model.as_os_str()], {
            let img = fixture("images/grace_hopper.jpg");
            vec!["infer".as_ref(), "--model".as_ref(), model.as_os_str(), img.into_os_string().leak()]
        }] {
            let out = agent(&args);
            assert_no_panic(&out);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(stderr.contains(message), "`{stderr}` lacks `{message}`");
            assert!(out.stdout.is_empty());
        }
    }
}

#[test]
fn missing_or_broken_onnx_runtime_is_a_clear_error() {
    let model = zoo("defect-yolo11n-320.onnx");
    // An explicit path that does not exist.
    let out =
        agent(&["check-model".as_ref(), model.as_os_str(), "--ort-lib".as_ref(), "/nonexistent/libort.so".as_ref()]);
    assert_no_panic(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("/nonexistent/libort.so") && stderr.contains("ORT_DYLIB_PATH"), "{stderr}");
    // ORT_DYLIB_PATH naming a file that is not a shared library.
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["check-model".as_ref(), model.as_os_str()])
        .env("ORT_DYLIB_PATH", &model)
        .output()
        .expect("starts");
    assert_no_panic(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("(ORT_DYLIB_PATH) could not be loaded"), "{stderr}");
    // A shared library that is not ONNX Runtime.
    let libc_path =
        ["/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib/aarch64-linux-gnu/libz.so.1"]
            .into_iter()
            .find(|p| Path::new(p).exists());
    if let Some(lib) = libc_path {
        let out = agent(&["check-model".as_ref(), model.as_os_str(), "--ort-lib".as_ref(), lib.as_ref()]);
        assert_no_panic(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr.contains("OrtGetApiBase"), "{stderr}");
    }
}
