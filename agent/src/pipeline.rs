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

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use image::RgbImage;
use outpost_common::protocol::ModelRef;
use outpost_common::vision::decode::{self, DecodeLimits};
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

/// A decoded frame on its way to inference.
#[derive(Debug)]
pub struct DecodedFrame {
    pub frame: EncodedFrame,
    pub image: RgbImage,
    pub decode_ms: f64,
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
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
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
        let input = Arc::new(StageQueue::new(depth, overflow));
        let decoded = Arc::new(StageQueue::new(1, Overflow::Wait));
        let decoder = {
            let (input, decoded, out) = (input.clone(), decoded.clone(), out.clone());
            std::thread::Builder::new()
                .name("outpost-decode".into())
                .spawn(move || decode_loop(&input, &decoded, &out, &limits))?
        };
        let inference = {
            let decoded = decoded.clone();
            std::thread::Builder::new()
                .name("outpost-infer".into())
                .spawn(move || infer_loop(&decoded, served, &out))?
        };
        Ok(Pipeline { input, decoded, threads: std::sync::Mutex::new(vec![decoder, inference]) })
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
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        self.decoded.close();
    }
}

fn decode_loop(
    input: &StageQueue<EncodedFrame>,
    decoded: &StageQueue<Work>,
    out: &OutputSender,
    limits: &DecodeLimits,
) {
    while let Some(frame) = input.pop() {
        let t = Instant::now();
        match decode::decode(&frame.bytes, limits) {
            Ok(image) => {
                let decode_ms = t.elapsed().as_secs_f64() * 1000.0;
                if decoded.push(Work::Frame(DecodedFrame { frame, image, decode_ms })) == Pushed::Closed {
                    break;
                }
            }
            Err(e) => {
                let output = FrameOutput { frame, model: None, outcome: Err(VisionError::Decode(e).into()) };
                if out.blocking_send(output).is_err() {
                    break;
                }
            }
        }
    }
    decoded.close();
}

fn infer_loop(decoded: &StageQueue<Work>, served: Served, out: &OutputSender) {
    let mut served = Some(served);
    while let Some(work) = decoded.pop() {
        let d = match work {
            Work::Frame(d) => d,
            Work::Swap(next, done) => {
                tracing::debug!(model = %next.model.name, version = next.model.version, "swapped");
                let _ = done.send(served.replace(*next));
                continue;
            }
            Work::Unload(done) => {
                let _ = done.send(served.take());
                continue;
            }
        };
        let output = match served.as_mut() {
            Some(s) => {
                let outcome = s.vision.infer_image(&d.image).map_err(FrameError::from).map(|mut r| {
                    r.timings.decode = d.decode_ms;
                    (r, d.image)
                });
                FrameOutput { frame: d.frame, model: Some(s.model.clone()), outcome }
            }
            None => FrameOutput { frame: d.frame, model: None, outcome: Err(FrameError::Unloaded) },
        };
        if out.blocking_send(output).is_err() {
            break;
        }
    }
    // Unblocks the decoder if it is waiting for room that will never come (the results receiver went away).
    decoded.close();
}
