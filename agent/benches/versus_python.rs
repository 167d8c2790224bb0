//! The agent end to end against a plain Python pipeline, on the same folder of 1080p JPEGs and the same models.
//!
//! `cargo bench -p outpost-agent --bench versus_python` writes a folder of 1920×1080 JPEGs (quality 90, made from the
//! committed 1280×720 fixtures), then, for YOLO11n detect 640 and YOLO11n classify 224, one after the other:
//!
//! 1. the agent, in a fresh process (this binary re-run with `--agent-child`): the default configuration
//!    (`default-config.toml`) with its camera's source pointed at the folder (`kind = "dir"`, `settle_ms = 0`),
//!    `app::read_source` feeding a `Pipeline` (decode thread, inference thread) exactly as `outpost-agent run` does,
//!    every output acknowledged to the source and written as a JSON line. It reports frames/s from the first frame
//!    read to the last output, its RSS with the model loaded and its peak RSS; then the bare engine run
//!    (`Model::run` on a preprocessed frame, same model, same options) as the inference-bound rate;
//! 2. `models/reference/pipeline.py` (onnxruntime + OpenCV, one frame after the other) on the same folder with the
//!    same intra-op thread count; skipped, with a message, when python3, onnxruntime or cv2 are missing (install
//!    them with `python3 -m pip install -r models/reference/requirements.txt`);
//!
//! then the ratios the issue sets targets for. Prints figures; asserts nothing about time. Both sides warm their
//! model up with one run before timing. `OUTPOST_BENCH_FRAMES` (default 300) and `OUTPOST_BENCH_THREADS` (default:
//! the agent's configured `threads`, 0 = ONNX Runtime's choice) change the run.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use image::RgbImage;
use outpost_agent::app::{read_source, vision_options};
use outpost_agent::config::{AgentConfig, DEFAULT_CONFIG};
use outpost_agent::metrics::CameraCounters;
use outpost_agent::pipeline::{Pipeline, Served};
use outpost_agent::queue::Overflow;
use outpost_agent::source::{Outcome, SourceConfig, SourceContext};
use outpost_agent::updater::serving::load_sessions;
use outpost_common::protocol::ModelRef;
use outpost_common::vision::decode::{self, DecodeLimits};
use outpost_common::vision::engine::{EngineOptions, Model, Runtime};
use outpost_common::vision::pipeline::Timings;
use outpost_common::vision::preprocess::Preprocessor;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const MODELS: [(&str, &str); 2] =
    [("detector", "models/zoo/yolo11n-det-640.onnx"), ("classifier", "models/zoo/yolo11n-cls-224.onnx")];
const PYTHON: &str = "models/reference/pipeline.py";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`); 0 where there is no procfs.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) spent so far by each of this process's threads, by thread id, with its name.
fn thread_cpu() -> BTreeMap<u32, (String, f64)> {
    let mut threads = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: f64 = fields.get(11..13).into_iter().flatten().filter_map(|v| v.parse::<f64>().ok()).sum();
        // Clock ticks are 1/100 s on Linux (USER_HZ).
        threads.insert(tid, (stat[open + 1..close].to_string(), ticks / 100.0));
    }
    threads
}

fn cpu_total() -> f64 {
    thread_cpu().values().map(|(_, s)| s).sum()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Writes `n` 1920×1080 JPEGs (quality 90) made from the committed 1280×720 fixtures, cycled.
fn make_frames(dir: &Path, n: usize) -> Result<u64> {
    let fixtures = root().join("tests/fixtures/images/defect-1280x720/images");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&fixtures)?.flatten().map(|e| e.path()).collect();
    sources.sort();
    let mut encoded = Vec::new();
    for path in &sources {
        let img = image::open(path).with_context(|| format!("reading {}", path.display()))?;
        let hd = img.resize_exact(1920, 1080, image::imageops::FilterType::Triangle).into_rgb8();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&hd)?;
        encoded.push(jpeg);
    }
    if encoded.is_empty() {
        bail!("no fixtures in {}", fixtures.display());
    }
    std::fs::create_dir_all(dir)?;
    let mut bytes = 0;
    for i in 0..n {
        let jpeg = &encoded[i % encoded.len()];
        std::fs::write(dir.join(format!("{i:05}.jpg")), jpeg)?;
        bytes += jpeg.len() as u64;
    }
    Ok(bytes / n.max(1) as u64)
}

/// The agent's side, run in a fresh process so that its RSS is its own. Prints one JSON line.
fn agent_child(model: &Path, folder: &Path, frames: usize, bare_runs: usize, threads: Option<usize>) -> Result<()> {
    let state = tempfile::tempdir()?;
    let mut config = AgentConfig::parse(DEFAULT_CONFIG, Path::new("default-config.toml"))?;
    config.state_dir = state.path().to_path_buf();
    if let Some(t) = threads {
        config.runtime.threads = t;
    }
    let mut model_config = config.models[0].clone();
    model_config.path = model.to_path_buf();
    let mut camera = config.cameras[0].clone();
    camera.source = serde_json::from_value::<SourceConfig>(json!({ "kind": "dir", "path": folder, "settle_ms": 0 }))?;
    let options = vision_options(&config.runtime, &model_config);

    let rt = Runtime::init(config.runtime.ort_lib.as_deref())?;
    let bytes = std::fs::read(model)?;
    // Loaded as `run` loads a configured model that has no installed update.
    let mut vision = load_sessions(rt, &bytes, None, &options, 1)?.pop().context("no session")?;
    vision.infer_image(&RgbImage::new(1920, 1080))?; // warm-up, as the Python side does
    let rss_loaded = status_kib("VmRSS");

    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let ctx = SourceContext { camera: camera.name.clone(), state_dir: config.state_dir.join("sources") };
    let source = camera.source.build(&ctx)?;
    let overflow = if source.is_live() { Overflow::DropOldest } else { Overflow::Wait };
    // The same output queue size as `app::run`.
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let served = Served { model: ModelRef { name: model_config.name.clone(), version: model_config.version }, vision };
    let out_path = state.path().join("agent.jsonl");
    let cpu_before = thread_cpu();
    let (elapsed, failed, sums, cpu) = tokio.block_on(async {
        let shutdown = CancellationToken::new();
        let start = Instant::now();
        let pipeline = Arc::new(Pipeline::start(served, overflow, camera.queue_depth, DecodeLimits::default(), tx)?);
        let counters = Arc::new(CameraCounters::default());
        let reader = tokio::spawn(read_source(camera.name.clone(), source, pipeline, counters, shutdown.clone()));
        let mut out = BufWriter::new(std::fs::File::create(&out_path)?);
        let (mut seen, mut failed, mut elapsed) = (0usize, 0usize, None);
        let mut sums = Timings::default();
        let mut cpu = BTreeMap::new();
        loop {
            let output = match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
                Ok(Some(o)) => o,
                Ok(None) => break,
                Err(_) => {
                    shutdown.cancel();
                    bail!("no output for 120 s after {seen} of {frames} frames");
                }
            };
            let outcome = match &output.outcome {
                Ok((result, _)) => {
                    serde_json::to_writer(&mut out, result)?;
                    out.write_all(b"\n")?;
                    let t = result.timings;
                    sums.decode += t.decode;
                    sums.preprocess += t.preprocess;
                    sums.inference += t.inference;
                    sums.postprocess += t.postprocess;
                    Outcome::Processed
                }
                Err(_) => {
                    failed += 1;
                    Outcome::Rejected
                }
            };
            if let Some(ack) = output.frame.ack {
                ack.done(outcome);
            }
            seen += 1;
            if seen == frames {
                out.flush()?;
                elapsed = Some(start.elapsed());
                cpu = thread_cpu();
                shutdown.cancel();
            }
        }
        reader.await?;
        Ok::<_, anyhow::Error>((elapsed.context("the source ended early")?, failed, sums, cpu))
    })?;
    let rss_peak = status_kib("VmHWM");
    let rss_after = status_kib("VmRSS");

    // The bare engine: the same model and options, one preprocessed frame, nothing else running.
    let first = std::fs::read(folder.join("00000.jpg"))?;
    let frame = decode::decode(&first, &DecodeLimits::default())?;
    let bare = |engine: &EngineOptions| -> Result<(f64, f64, f64)> {
        let mut model = Model::from_bytes(rt, &bytes, engine)?;
        let spec = model.spec(&options.hints)?;
        let mut pre = Preprocessor::new(&spec.input)?;
        let mut tensor = Vec::new();
        pre.run(&frame, &mut tensor)?;
        let shape = [1, 3, spec.input.height as usize, spec.input.width as usize];
        for _ in 0..3 {
            model.run(&tensor, shape, |_| ())?;
        }
        let mut runs = Vec::with_capacity(bare_runs);
        let cpu_start = cpu_total();
        let start = Instant::now();
        for _ in 0..bare_runs.max(1) {
            let t = Instant::now();
            model.run(&tensor, shape, |o| std::hint::black_box(o.data[0]))?;
            runs.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mean = start.elapsed().as_secs_f64() * 1e3 / runs.len() as f64;
        let cpu = (cpu_total() - cpu_start) * 1e3 / runs.len() as f64;
        runs.sort_by(f64::total_cmp);
        Ok((mean, runs[runs.len() / 2], cpu))
    };
    let (bare_mean, bare_median, bare_cpu) = bare(&options.engine)?;
    let (spin_mean, spin_median, _) = bare(&EngineOptions { spinning: true, ..options.engine.clone() })?;
    // CPU per frame by thread: the pipeline's two threads, ONNX Runtime's pool, the rest (async runtime, main).
    let mut cpu_ms = BTreeMap::new();
    for (tid, (name, secs)) in &cpu {
        let main_name = cpu.get(&std::process::id()).map(|(n, _)| n.as_str()).unwrap_or_default();
        let group = match name.as_str() {
            _ if *tid == std::process::id() => "main (results)".to_string(),
            "outpost-decode" => "decode".to_string(),
            "outpost-infer" => "inference".to_string(),
            n if n.starts_with("tokio") => "tokio (source)".to_string(),
            // ONNX Runtime's pool threads are started by the main thread while loading and inherit its name.
            n if n == main_name => "onnxruntime pool".to_string(),
            n => n.to_string(),
        };
        let before = cpu_before.get(tid).map_or(0.0, |(_, s)| *s);
        *cpu_ms.entry(group).or_insert(0.0) += (secs - before) * 1e3 / frames as f64;
    }

    let n = (frames - failed).max(1) as f64;
    let summary = json!({
        "frames": frames,
        "failed": failed,
        "seconds": elapsed.as_secs_f64(),
        "fps": frames as f64 / elapsed.as_secs_f64(),
        "threads": config.runtime.threads,
        "rss_loaded_kib": rss_loaded,
        "peak_rss_kib": rss_peak,
        "rss_after_kib": rss_after,
        "bare_run_ms_mean": bare_mean,
        "bare_run_ms_median": bare_median,
        "bare_spinning_ms_mean": spin_mean,
        "bare_spinning_ms_median": spin_median,
        "bare_cpu_ms": bare_cpu,
        "cpu_ms_per_frame": cpu_ms,
        "stage_ms": {
            "decode": sums.decode / n,
            "preprocess": sums.preprocess / n,
            "inference": sums.inference / n,
            "postprocess": sums.postprocess / n,
        },
    });
    println!("{summary}");
    Ok(())
}

fn last_json_line(text: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(text);
    let line = text.lines().rev().find(|l| l.starts_with('{')).context("no summary line")?;
    Ok(serde_json::from_str(line)?)
}

fn run_agent(model: &Path, folder: &Path, frames: usize, bare_runs: usize, threads: Option<usize>) -> Result<Value> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--agent-child").arg(model).arg(folder).arg(frames.to_string()).arg(bare_runs.to_string());
    if let Some(t) = threads {
        cmd.arg(t.to_string());
    }
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("the agent run failed ({})", out.status);
    }
    last_json_line(&out.stdout)
}

/// Why the Python reference cannot run here, if it cannot.
fn python_missing() -> Option<String> {
    match Command::new("python3").args(["-c", "import onnxruntime, cv2, numpy"]).output() {
        Err(e) => Some(format!("python3 not found ({e})")),
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            Some(err.lines().last().unwrap_or("import failed").to_string())
        }
        Ok(_) => None,
    }
}

fn run_python(model: &Path, folder: &Path, threads: usize, bare_runs: usize, out: &Path) -> Result<Value> {
    let result = Command::new("python3")
        .arg(root().join(PYTHON))
        .arg(model)
        .arg(folder)
        .args(["--threads", &threads.to_string(), "--bare-runs", &bare_runs.to_string(), "--out"])
        .arg(out)
        .stdout(Stdio::null())
        .output()?;
    if !result.status.success() {
        bail!("the Python reference failed ({}): {}", result.status, String::from_utf8_lossy(&result.stderr));
    }
    last_json_line(&result.stderr)
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn mib(kib: f64) -> String {
    format!("{:.0} MiB", kib / 1024.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--agent-child") {
        let arg = |k: usize| args.get(i + k).context("--agent-child MODEL FOLDER FRAMES BARE_RUNS [THREADS]");
        return agent_child(
            Path::new(arg(1)?),
            Path::new(arg(2)?),
            arg(3)?.parse()?,
            arg(4)?.parse()?,
            args.get(i + 5).and_then(|t| t.parse().ok()),
        );
    }
    // `cargo test --benches` runs this without `--bench`: a smoke run then.
    let full = args.iter().any(|a| a == "--bench");
    let frames = env_usize("OUTPOST_BENCH_FRAMES").unwrap_or(if full { 300 } else { 4 }).max(1);
    let bare_runs = if full { 100 } else { 3 };
    let threads = env_usize("OUTPOST_BENCH_THREADS");
    let default_threads = AgentConfig::parse(DEFAULT_CONFIG, Path::new("default-config.toml"))?.runtime.threads;
    let python_threads = threads.unwrap_or(default_threads);

    let dir = tempfile::tempdir()?;
    let folder = dir.path().join("frames");
    let size = make_frames(&folder, frames)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("{frames} JPEGs 1920×1080 (quality 90, {} KiB on average) in {}", size / 1024, folder.display());
    println!(
        "{cores} cores; intra-op threads: {python_threads} (0 = ONNX Runtime's choice, one per physical core) on both \
         sides; load average before: {}",
        load_average()
    );
    let python = python_missing();
    if let Some(why) = &python {
        println!(
            "Python reference skipped: {why} (install it with `python3 -m pip install -r \
             models/reference/requirements.txt`)"
        );
    }

    let mut rows = Vec::new();
    for (name, model) in MODELS {
        let model = root().join(model);
        println!("\n{name}: {}", model.file_name().and_then(|n| n.to_str()).unwrap_or_default());
        let agent = run_agent(&model, &folder, frames, bare_runs, threads)?;
        let stage = &agent["stage_ms"];
        println!(
            "  agent   {:>7.1} frames/s ({} frames, {} failed); per frame: decode {:.2} ms, preprocess {:.2} ms, \
             inference {:.2} ms, postprocess {:.2} ms",
            f(&agent, "fps"),
            agent["frames"],
            agent["failed"],
            f(stage, "decode"),
            f(stage, "preprocess"),
            f(stage, "inference"),
            f(stage, "postprocess"),
        );
        let cpu: Vec<String> = agent["cpu_ms_per_frame"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {:.1}", v.as_f64().unwrap_or(0.0)))
            .collect();
        println!("          CPU ms per frame by thread: {}", cpu.join(", "));
        println!(
            "  bare    {:>7.1} runs/s (Model::run mean {:.2} ms, median {:.2} ms, {:.1} CPU ms per run; with spinning \
             on: mean {:.2} ms)",
            1000.0 / f(&agent, "bare_run_ms_mean"),
            f(&agent, "bare_run_ms_mean"),
            f(&agent, "bare_run_ms_median"),
            f(&agent, "bare_cpu_ms"),
            f(&agent, "bare_spinning_ms_mean"),
        );
        println!(
            "  agent   RSS {} with the model loaded, peak {}",
            mib(f(&agent, "rss_loaded_kib")),
            mib(f(&agent, "peak_rss_kib"))
        );
        let py = if python.is_none() {
            let py = run_python(&model, &folder, python_threads, bare_runs, &dir.path().join("python.jsonl"))?;
            println!(
                "  python  {:>7.1} frames/s; bare session.run mean {:.2} ms, median {:.2} ms; RSS {} with the model \
                 loaded, peak {}",
                f(&py, "fps"),
                f(&py, "bare_run_ms_mean"),
                f(&py, "bare_run_ms_median"),
                mib(f(&py, "rss_loaded_kib")),
                mib(f(&py, "peak_rss_kib")),
            );
            Some(py)
        } else {
            None
        };
        rows.push((name, agent, py));
    }

    println!("\nload average after: {}", load_average());
    println!(
        "\n{:<11} {:>10} {:>10} {:>10} {:>11} {:>12} {:>13} {:>16} {:>16}",
        "model",
        "agent fps",
        "python fps",
        "bare rate",
        "agent/bare",
        "python/bare",
        "agent/python",
        "agent RSS",
        "python RSS"
    );
    for (name, agent, py) in &rows {
        let bare = 1000.0 / f(agent, "bare_run_ms_mean");
        let (py_fps, py_rss) = match py {
            Some(p) => (f(p, "fps"), format!("{}/{}", mib(f(p, "rss_loaded_kib")), mib(f(p, "peak_rss_kib")))),
            None => (f64::NAN, "-".into()),
        };
        // A skipped Python reference shows as "-", not NaN.
        let or_dash = |v: f64, decimals: usize| if v.is_finite() { format!("{v:.decimals$}") } else { "-".into() };
        println!(
            "{:<11} {:>10.1} {:>10} {:>10.1} {:>11.2} {:>12} {:>13} {:>16} {:>16}",
            name,
            f(agent, "fps"),
            or_dash(py_fps, 1),
            bare,
            f(agent, "fps") / bare,
            or_dash(py_fps / bare, 2),
            or_dash(f(agent, "fps") / py_fps, 2),
            format!("{}/{}", mib(f(agent, "rss_loaded_kib")), mib(f(agent, "peak_rss_kib"))),
            py_rss,
        );
    }
    println!("(RSS: with the model loaded / peak during the run; bare rate = 1000 ÷ mean Model::run ms)");
    if let Some((_, agent, _)) = rows.first() {
        println!(
            "\ndetector:   agent frames/s ÷ bare inference-bound rate = {:.2} (target ≥ 0.9)",
            f(agent, "fps") * f(agent, "bare_run_ms_mean") / 1000.0
        );
    }
    if let Some((_, agent, Some(py))) = rows.get(1) {
        println!(
            "classifier: agent frames/s ÷ Python frames/s          = {:.2} (target ≥ 1.6)",
            f(agent, "fps") / f(py, "fps")
        );
    }
    Ok(())
}
