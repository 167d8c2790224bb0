//! The frame pipeline: encoded frames → decode thread → inference thread → results.
//!
//! Design: decoding and inference run on their own OS threads, joined by [`StageQueue`]s, so the next frame is
//! decoded while the current one is inferred and neither ever runs on an async worker. A model swap travels down the
//! decoded queue like a frame ([`Pipeline::swap`]): every frame queued before it finishes on the old model, every
//! frame after it runs on the new one, and none is dropped. The decode queue's overflow
//! policy is the camera's: live cameras drop the oldest frame when inference falls behind, file sources wait. The
//! decoded queue holds one frame: deeper would only add latency. Every output names the model version that
//! produced it; a frame that cannot be decoded or inferred is an output too (with its error), so it is counted,
//! never silently lost.
//!
//! Pacing: when the model is the slow stage (it has taken more than [`BACKGROUND_RATIO`] times as long as decoding,
//! [`BACKGROUND_AFTER`] frames in a row), the decode thread moves to the lowest scheduling priority and also
//! prepares the model's input (resize, normalisation). ONNX Runtime's threads leave the cores idle for short moments
//! inside every run (between operators, in the parts that do not parallelise); at background priority decoding and
//! preprocessing fill those moments instead of preempting the model, so a frame costs little more than the model run
//! itself (measured in `benches/versus_python.rs`, docs/BENCHMARKS.md). When decoding is the slow stage (small
//! models on big frames), nothing changes: decoding keeps its priority and the inference thread preprocesses. The
//! switch is one-way (a thread may not raise its priority again without privileges).
//!
//! Which thread preprocesses never changes a result: both run the same [`Preprocessor`] code on the same input
//! spec. A swap changes the model under frames the decode thread may already have prepared, so every prepared input
//! carries the generation of the model it was prepared for (one more at each swap or unload, counted by the
//! inference thread); the inference thread uses it only when the generation is the one it serves, and otherwise
//! preprocesses the frame again for the model it now serves. After a swap the inference thread hands the decode
//! thread a preprocessor for the new model.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use image::RgbImage;
use outpost_common::protocol::ModelRef;
use outpost_common::vision::decode::{self, DecodeLimits};
use outpost_common::vision::preprocess::{PreprocessError, Preprocessor, Transform};
use outpost_common::vision::{FrameResult, Vision, VisionError};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::queue::{Overflow, Pushed, StageQueue};
use crate::source::Ack;

/// An encoded frame as a source produced it.
#[derive(Debug)]
pub struct EncodedFrame {
    pub camera: Arc<str>,
    /// The camera's frame counter.
    pub seq: u64,
    pub captured_at: OffsetDateTime,
    /// The original bytes, kept for sample upload (never re-encoded).
    pub bytes: Bytes,
    /// For sources whose input is disposed of once the frame is done with (folders): travels with the frame and is
    /// acknowledged by whoever handles the output.
    pub ack: Option<Ack>,
}

/// Decoding moves to background priority once inference takes more than this many times as long as decoding...
pub const BACKGROUND_RATIO: f64 = 2.0;
/// ... on this many frames in a row (a model's first runs are slow).
pub const BACKGROUND_AFTER: u32 = 3;

/// Which thread prepares the model's input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Prepare {
    /// The decode thread once inference is the slow stage (see the module doc), the inference thread until then.
    #[default]
    Paced,
    /// Always the inference thread.
    Inference,
    /// Always the decode thread, from the first frame (and at background priority).
    Decode,
}

/// A decoded frame on its way to inference.
#[derive(Debug)]
struct DecodedFrame {
    frame: EncodedFrame,
    image: RgbImage,
    decode_ms: f64,
    /// The model's input, when the decode thread prepared it.
    prepared: Option<Prepared>,
}

/// A model input written by the decode thread.
struct Prepared {
    /// The model generation whose preprocessor wrote it.
    generation: u64,
    tensor: Vec<f32>,
    transform: Result<Transform, PreprocessError>,
    ms: f64,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("generation", &self.generation)
            .field("len", &self.tensor.len())
            .field("ms", &self.ms)
            .finish_non_exhaustive()
    }
}

/// The preprocessor the decode thread should use: the served model's, tagged with its generation.
#[derive(Debug)]
struct PreSlot {
    generation: u64,
    /// Taken by the decode thread; `None` once taken or when nothing is served.
    pre: Option<Preprocessor>,
}

/// What the two threads share besides the decoded queue.
#[derive(Debug)]
struct Shared {
    /// The inference thread's latest model time (engine + postprocess, ms as f64 bits), for the decode thread to
    /// compare its own with.
    inference_ms: AtomicU64,
    /// Input tensors the inference thread is done with, reused by the decode thread (no per-frame allocation).
    spare: Mutex<Vec<Vec<f32>>>,
    slot: Mutex<PreSlot>,
    /// Inputs prepared for a model that had been swapped out by the time they reached inference (and so were
    /// prepared again).
    stale: AtomicU64,
}

/// One tensor in the decoded queue, one being inferred, one being written.
const SPARE_TENSORS: usize = 3;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn new() -> Shared {
        Shared {
            inference_ms: AtomicU64::new(0),
            spare: Mutex::new(Vec::with_capacity(SPARE_TENSORS)),
            slot: Mutex::new(PreSlot { generation: 0, pre: None }),
            stale: AtomicU64::new(0),
        }
    }

    fn record_inference(&self, ms: f64) {
        self.inference_ms.store(ms.to_bits(), Ordering::Relaxed);
    }

    fn inference_ms(&self) -> f64 {
        f64::from_bits(self.inference_ms.load(Ordering::Relaxed))
    }

    fn take_spare(&self) -> Vec<f32> {
        lock(&self.spare).pop().unwrap_or_default()
    }

    fn give_back(&self, tensor: Vec<f32>) {
        let mut spare = lock(&self.spare);
        if spare.len() < SPARE_TENSORS {
            spare.push(tensor);
        }
    }

    /// Publishes the preprocessor of the model served from now on (`None` when nothing is served).
    fn publish(&self, generation: u64, served: Option<&Served>) {
        // A loaded model's spec already built one preprocessor, so this cannot fail; without one the inference
        // thread preprocesses.
        let pre = served.and_then(|s| s.vision.preprocessor().ok());
        *lock(&self.slot) = PreSlot { generation, pre };
    }
}

/// What the inference thread takes next: a frame, or an instruction placed between two frames.
#[derive(Debug)]
enum Work {
    Frame(DecodedFrame),
    /// Serve this model from the next frame on; hand back the one it replaces.
    Swap(Box<Served>, oneshot::Sender<Option<Served>>),
    /// Stop serving (unload the model to make room); hand it back. Frames until the next swap are skipped.
    Unload(oneshot::Sender<Option<Served>>),
}

/// Why a swap did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("the pipeline has stopped")]
    Stopped,
}

/// What became of one frame.
#[derive(Debug)]
pub struct FrameOutput {
    pub frame: EncodedFrame,
    /// The model that produced the result; `None` when the frame never reached a model (decode failed).
    pub model: Option<ModelRef>,
    pub outcome: Result<(FrameResult, RgbImage), FrameError>,
}

/// Why a frame produced no result.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Vision(#[from] VisionError),
    /// No model was loaded: the camera's model was unloaded to make room for a new one (`swap_mode = "unload-first"`).
    #[error("skipped while the model was being replaced")]
    Unloaded,
}

impl FrameError {
    /// A short stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::Vision(e) => e.kind(),
            FrameError::Unloaded => "model_swap",
        }
    }
}

/// Where outputs go. A closed receiver ends the pipeline's threads.
pub type OutputSender = tokio::sync::mpsc::Sender<FrameOutput>;

/// A model being served, with the version it is known by.
#[derive(Debug)]
pub struct Served {
    pub model: ModelRef,
    pub vision: Vision,
}

/// The running threads of one pipeline.
#[derive(Debug)]
pub struct Pipeline {
    pub input: Arc<StageQueue<EncodedFrame>>,
    decoded: Arc<StageQueue<Work>>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pipeline {
    /// Starts the decode and inference threads for one model. `depth` is the decode queue's capacity.
    pub fn start(
        served: Served,
        overflow: Overflow,
        depth: usize,
        limits: DecodeLimits,
        out: OutputSender,
    ) -> std::io::Result<Pipeline> {
        Self::start_with(served, overflow, depth, limits, Prepare::default(), out)
    }

    /// [`Pipeline::start`], choosing which thread prepares the model's input.
    pub fn start_with(
        served: Served,
        overflow: Overflow,
        depth: usize,
        limits: DecodeLimits,
        prepare: Prepare,
        out: OutputSender,
    ) -> std::io::Result<Pipeline> {
        let input = Arc::new(StageQueue::new(depth, overflow));
        let decoded = Arc::new(StageQueue::new(1, Overflow::Wait));
        let shared = Arc::new(Shared::new());
        if prepare != Prepare::Inference {
            shared.publish(0, Some(&served));
        }
        let decoder = {
            let (input, decoded, out, shared) = (input.clone(), decoded.clone(), out.clone(), shared.clone());
            std::thread::Builder::new()
                .name("outpost-decode".into())
                .spawn(move || decode_loop(&input, &decoded, &out, &limits, prepare, &shared))?
        };
        let inference = {
            let (decoded, shared) = (decoded.clone(), shared.clone());
            std::thread::Builder::new()
                .name("outpost-infer".into())
                .spawn(move || infer_loop(&decoded, served, &out, prepare, &shared))?
        };
        Ok(Pipeline { input, decoded, shared, threads: Mutex::new(vec![decoder, inference]) })
    }

    /// Inputs the decode thread prepared for a model that was swapped out before they were used (each was prepared
    /// again for the model that replaced it).
    pub fn stale_inputs(&self) -> u64 {
        self.shared.stale.load(Ordering::Relaxed)
    }

    /// Offers a frame; returns what the overflow policy did (with [`Overflow::Wait`] this blocks while full — call
    /// it from a blocking context).
    pub fn push(&self, frame: EncodedFrame) -> Pushed {
        self.input.push(frame)
    }

    /// Frames dropped because inference fell behind.
    pub fn dropped(&self) -> u64 {
        self.input.dropped()
    }

    /// Replaces the served model between two frames; resolves to the model replaced (`None` if it had been
    /// unloaded) once the inference thread has switched. Blocks while the decoded queue is full (one frame): call
    /// it from a blocking context.
    pub fn swap(&self, served: Served) -> Result<oneshot::Receiver<Option<Served>>, SwapError> {
        let (tx, rx) = oneshot::channel();
        match self.decoded.push(Work::Swap(Box::new(served), tx)) {
            Pushed::Closed => Err(SwapError::Stopped),
            _ => Ok(rx),
        }
    }

    /// Unloads the served model between two frames, freeing its memory; frames until the next [`Pipeline::swap`]
    /// are skipped (each an output with [`FrameError::Unloaded`]). Resolves to the model unloaded.
    pub fn unload(&self) -> Result<oneshot::Receiver<Option<Served>>, SwapError> {
        let (tx, rx) = oneshot::channel();
        match self.decoded.push(Work::Unload(tx)) {
            Pushed::Closed => Err(SwapError::Stopped),
            _ => Ok(rx),
        }
    }

    /// Stops taking frames, lets the frames already queued finish, and joins the threads. Later calls return at once.
    pub fn drain(&self) {
        self.input.close();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
        self.decoded.close();
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Moves the calling thread to the lowest scheduling priority (nice 19; on Linux the nice value is per thread).
fn lower_priority() -> std::io::Result<()> {
    rustix::process::setpriority_process(None, 19)?;
    Ok(())
}

/// The decode thread's view of who prepares inputs.
struct Pacer {
    prepare: Prepare,
    background: bool,
    slower: u32,
    /// The preprocessor of the model generation it was made for.
    pre: Option<(u64, Preprocessor)>,
    generation: Option<u64>,
}

impl Pacer {
    /// Whether this thread should prepare the input of a frame it decoded in `decode_ms`; moves to background
    /// priority the first time it should.
    fn prepares(&mut self, decode_ms: f64, shared: &Shared, camera: &str) -> bool {
        if !self.background {
            let slow_model = match self.prepare {
                Prepare::Inference => return false,
                Prepare::Decode => true,
                Prepare::Paced => {
                    self.slower =
                        if shared.inference_ms() > BACKGROUND_RATIO * decode_ms { self.slower + 1 } else { 0 };
                    self.slower >= BACKGROUND_AFTER
                }
            };
            if !slow_model {
                return false;
            }
            self.background = true;
            match lower_priority() {
                Ok(()) => tracing::debug!(
                    camera,
                    inference_ms = shared.inference_ms(),
                    decode_ms,
                    "inference is the slow stage: decoding and preprocessing move to background priority"
                ),
                Err(e) => tracing::debug!(
                    camera,
                    error = %e,
                    "inference is the slow stage; the decode thread's priority could not be lowered"
                ),
            }
        }
        true
    }

    /// Prepares the input for the model served now (as far as this thread knows); `None` when nothing is served.
    fn prepare(&mut self, image: &RgbImage, shared: &Shared) -> Option<Prepared> {
        {
            let mut slot = lock(&shared.slot);
            if self.generation != Some(slot.generation) {
                self.generation = Some(slot.generation);
                self.pre = slot.pre.take().map(|p| (slot.generation, p));
            }
        }
        let (generation, pre) = self.pre.as_mut()?;
        let mut tensor = shared.take_spare();
        let t = Instant::now();
        let transform = pre.run(image, &mut tensor);
        Some(Prepared { generation: *generation, tensor, transform, ms: ms(t) })
    }
}

fn decode_loop(
    input: &StageQueue<EncodedFrame>,
    decoded: &StageQueue<Work>,
    out: &OutputSender,
    limits: &DecodeLimits,
    prepare: Prepare,
    shared: &Shared,
) {
    let mut pacer = Pacer { prepare, background: false, slower: 0, pre: None, generation: None };
    while let Some(frame) = input.pop() {
        let t = Instant::now();
        let image = match decode::decode(&frame.bytes, limits) {
            Ok(image) => image,
            Err(e) => {
                let output = FrameOutput { frame, model: None, outcome: Err(VisionError::Decode(e).into()) };
                if out.blocking_send(output).is_err() {
                    break;
                }
                continue;
            }
        };
        let decode_ms = ms(t);
        let prepared =
            if pacer.prepares(decode_ms, shared, &frame.camera) { pacer.prepare(&image, shared) } else { None };
        if decoded.push(Work::Frame(DecodedFrame { frame, image, decode_ms, prepared })) == Pushed::Closed {
            break;
        }
    }
    decoded.close();
}

/// Runs one frame on the served model (generation `generation`), using the decode thread's input when it was
/// prepared for that model.
fn infer(s: &mut Served, generation: u64, d: DecodedFrame, shared: &Shared) -> FrameOutput {
    let outcome = match d.prepared {
        Some(p) if p.generation == generation => {
            let result = match &p.transform {
                Ok(transform) => s.vision.infer_prepared(&p.tensor, transform).map(|mut r| {
                    r.timings.preprocess = p.ms;
                    r
                }),
                Err(e) => Err(VisionError::Preprocess(e.clone())),
            };
            shared.give_back(p.tensor);
            result
        }
        stale => {
            if let Some(p) = stale {
                shared.stale.fetch_add(1, Ordering::Relaxed);
                shared.give_back(p.tensor);
            }
            s.vision.infer_image(&d.image)
        }
    };
    if let Ok(r) = &outcome {
        shared.record_inference(r.timings.inference + r.timings.postprocess);
    }
    let outcome = outcome.map_err(FrameError::from).map(|mut r| {
        r.timings.decode = d.decode_ms;
        (r, d.image)
    });
    FrameOutput { frame: d.frame, model: Some(s.model.clone()), outcome }
}

fn infer_loop(decoded: &StageQueue<Work>, served: Served, out: &OutputSender, prepare: Prepare, shared: &Shared) {
    let mut served = Some(served);
    let mut generation = 0u64;
    while let Some(work) = decoded.pop() {
        let d = match work {
            Work::Frame(d) => d,
            Work::Swap(next, done) => {
                tracing::debug!(model = %next.model.name, version = next.model.version, "swapped");
                generation += 1;
                if prepare != Prepare::Inference {
                    shared.publish(generation, Some(&next));
                }
                let _ = done.send(served.replace(*next));
                continue;
            }
            Work::Unload(done) => {
                generation += 1;
                shared.publish(generation, None);
                let _ = done.send(served.take());
                continue;
            }
        };
        let output = match served.as_mut() {
            Some(s) => infer(s, generation, d, shared),
            None => FrameOutput { frame: d.frame, model: None, outcome: Err(FrameError::Unloaded) },
        };
        if out.blocking_send(output).is_err() {
            break;
        }
    }
    // Unblocks the decoder if it is waiting for room that will never come (the results receiver went away).
    decoded.close();
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use outpost_common::vision::VisionOptions;
    use outpost_common::vision::engine::Runtime;
    use outpost_common::vision::pipeline::Timings;

    use super::*;

    fn served(model: &str, version: u64) -> Served {
        let rt = Runtime::init(None).expect("ONNX Runtime");
        let bytes =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/zoo").join(model)).expect("model");
        let vision = Vision::load(rt, &bytes, VisionOptions::default()).expect("model loads");
        Served { model: ModelRef { name: "m".into(), version }, vision }
    }

    fn image(path: &str) -> RgbImage {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images");
        image::open(dir.join(path)).expect("fixture").into_rgb8()
    }

    /// A decoded `image` whose input was prepared from `prepared_from` by `by`'s preprocessor, for `generation`.
    fn frame(image: RgbImage, prepared_from: &RgbImage, by: &Served, generation: u64) -> DecodedFrame {
        let mut pre = by.vision.preprocessor().expect("preprocessor");
        let mut tensor = Vec::new();
        let transform = pre.run(prepared_from, &mut tensor);
        let frame = EncodedFrame {
            camera: Arc::from("c"),
            seq: 1,
            captured_at: OffsetDateTime::UNIX_EPOCH,
            bytes: Bytes::new(),
            ack: None,
        };
        DecodedFrame {
            frame,
            image,
            decode_ms: 0.0,
            prepared: Some(Prepared { generation, tensor, transform, ms: 1.0 }),
        }
    }

    fn result(output: FrameOutput) -> FrameResult {
        let (r, _) = output.outcome.expect("a result");
        FrameResult { timings: Timings::default(), ..r }
    }

    fn direct(s: &mut Served, image: &RgbImage) -> FrameResult {
        FrameResult { timings: Timings::default(), ..s.vision.infer_image(image).expect("a result") }
    }

    #[test]
    fn an_input_is_used_only_by_the_generation_it_was_prepared_for() {
        let (a, b) = (image("defect-val/images/00000.jpg"), image("defect-1280x720/images/00000.jpg"));
        let mut detector = served("defect-yolo11n-320.onnx", 1);
        let mut classifier = served("yolo11n-cls-224.onnx", 2);
        let shared = Shared::new();

        // The generation served: the prepared input is used as it is (prepared from `b`, carried with `a`).
        let prepared = frame(a.clone(), &b, &detector, 0);
        let out = infer(&mut detector, 0, prepared, &shared);
        assert_eq!(result(out), direct(&mut detector, &b), "the prepared input was used");
        assert_eq!(shared.stale.load(Ordering::Relaxed), 0);

        // Prepared for the detector, which has been swapped for the classifier since: prepared again, from the frame.
        let out = infer(&mut classifier, 1, frame(a.clone(), &b, &detector, 0), &shared);
        assert_eq!(out.model.as_ref().map(|m| m.version), Some(2));
        assert_eq!(result(out), direct(&mut classifier, &a), "the new model's own preprocessing of the frame");
        assert_eq!(shared.stale.load(Ordering::Relaxed), 1);

        // Even when the input sizes happen to match, another generation's input is never used.
        let mut detector_again = served("defect-yolo11n-320.onnx", 3);
        let out = infer(&mut detector_again, 2, frame(a.clone(), &b, &detector, 0), &shared);
        assert_eq!(result(out), direct(&mut detector_again, &a));
        assert_eq!(shared.stale.load(Ordering::Relaxed), 2);
        assert_eq!(lock(&shared.spare).len(), SPARE_TENSORS, "tensors go back to the pool, at most the pool's size");
    }
}
