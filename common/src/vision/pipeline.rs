//! One model, end to end: encoded frame → decode → preprocess → engine → postprocess → [`FrameResult`].
//!
//! The agent splits these stages across threads (decode overlaps inference); the `infer` CLI and the fleet's model
//! checks run them in sequence through [`Vision`].

use std::time::Instant;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::confidence::{self, Confidence, UncertaintyBand};
use super::decode::{self, DecodeError, DecodeLimits};
use super::engine::{EngineError, EngineOptions, Model, Runtime};
use super::postprocess::{self, Decoded, DetectParams, PostprocessError};
use super::preprocess::{PreprocessError, Preprocessor, Transform};
use super::spec::{ModelSpec, SpecError, SpecHints, Task};

/// Everything that shapes how a model is run.
#[derive(Debug, Clone, Default)]
pub struct VisionOptions {
    pub engine: EngineOptions,
    pub hints: SpecHints,
    pub detect: DetectParams,
    pub decode: DecodeLimits,
    pub band: UncertaintyBand,
    /// Classes reported per frame by classifiers (0 means 5).
    pub top_k: usize,
}

/// Why a frame (or a model) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VisionError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("model not understood: {0}")]
    Spec(#[from] SpecError),
    #[error("model output not understood: {0}")]
    Postprocess(#[from] PostprocessError),
}

impl VisionError {
    /// A short stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            VisionError::Decode(e) => e.kind(),
            VisionError::Preprocess(_) => "preprocess",
            VisionError::Engine(_) => "inference",
            VisionError::Spec(_) => "model",
            VisionError::Postprocess(PostprocessError::NonFinite(_)) => "non_finite",
            VisionError::Postprocess(_) => "output",
        }
    }
}

/// A detection with its label, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabeledDetection {
    pub class: usize,
    pub label: String,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// A class score with its label, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabeledClass {
    pub class: usize,
    pub label: String,
    pub score: f32,
}

/// Milliseconds spent in each stage for one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    pub decode: f64,
    pub preprocess: f64,
    pub inference: f64,
    pub postprocess: f64,
}

/// What a model said about one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameResult {
    pub width: u32,
    pub height: u32,
    pub task: Task,
    pub detections: Vec<LabeledDetection>,
    pub classes: Vec<LabeledClass>,
    pub confidence: Confidence,
    #[serde(rename = "timings_ms")]
    pub timings: Timings,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// A model ready to run on frames, with its reusable buffers.
#[derive(Debug)]
pub struct Vision {
    model: Model,
    spec: ModelSpec,
    pre: Preprocessor,
    tensor: Vec<f32>,
    options: VisionOptions,
}

impl Vision {
    /// Loads a model from bytes and resolves its spec.
    pub fn load(rt: &Runtime, bytes: &[u8], options: VisionOptions) -> Result<Vision, VisionError> {
        let model = Model::from_bytes(rt, bytes, &options.engine)?;
        Self::from_model(model, options)
    }

    /// Wraps an already loaded model.
    pub fn from_model(model: Model, options: VisionOptions) -> Result<Vision, VisionError> {
        let spec = model.spec(&options.hints)?;
        let pre = Preprocessor::new(&spec.input)?;
        Ok(Vision { model, spec, pre, tensor: Vec::new(), options })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn options(&self) -> &VisionOptions {
        &self.options
    }

    /// Decodes an encoded JPEG/PNG frame under the configured limits.
    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage, DecodeError> {
        decode::decode(bytes, &self.options.decode)
    }

    /// Runs the whole pipeline on an encoded frame.
    pub fn infer_encoded(&mut self, bytes: &[u8]) -> Result<FrameResult, VisionError> {
        let t = Instant::now();
        let frame = self.decode(bytes)?;
        let decode_ms = ms(t);
        let mut result = self.infer_image(&frame)?;
        result.timings.decode = decode_ms;
        Ok(result)
    }

    /// Runs preprocess, engine and postprocess on a decoded frame.
    pub fn infer_image(&mut self, frame: &RgbImage) -> Result<FrameResult, VisionError> {
        let t = Instant::now();
        let transform = self.pre.run(frame, &mut self.tensor)?;
        let preprocess = ms(t);
        let shape = [1, 3, self.spec.input.height as usize, self.spec.input.width as usize];
        let shape = self.tensor_shape(shape);
        let t = Instant::now();
        let mut post_ms = 0.0;
        let layout = self.spec.output;
        let params = self.options.detect;
        let (decoded, infer_ms) = {
            let mut infer_ms = 0.0;
            let decoded = self.model.run(&self.tensor, shape, |out| {
                infer_ms = ms(t);
                let t = Instant::now();
                let d = postprocess::decode(layout, out.data, out.shape, &params, &transform);
                post_ms = ms(t);
                d
            })??;
            (decoded, infer_ms)
        };
        let t = Instant::now();
        let mut result = self.finish(decoded, &transform);
        result.timings = Timings { decode: 0.0, preprocess, inference: infer_ms, postprocess: post_ms + ms(t) };
        Ok(result)
    }

    /// Runs a batch of decoded frames: one engine run when the model's batch size is dynamic, otherwise one run per
    /// frame. Each frame gets its own result, so one bad frame does not fail the others.
    pub fn infer_batch(&mut self, frames: &[RgbImage]) -> Vec<Result<FrameResult, VisionError>> {
        if frames.len() <= 1 || !self.model.batch_dynamic() {
            return frames.iter().map(|f| self.infer_image(f)).collect();
        }
        let per = self.pre.tensor_len();
        let mut batch = Vec::with_capacity(per * frames.len());
        let mut transforms: Vec<Result<Transform, PreprocessError>> = Vec::with_capacity(frames.len());
        let t = Instant::now();
        for f in frames {
            let r = self.pre.run(f, &mut self.tensor);
            if r.is_ok() {
                batch.extend_from_slice(&self.tensor);
            } else {
                batch.extend(std::iter::repeat_n(0.0, per));
            }
            transforms.push(r);
        }
        let preprocess = ms(t) / frames.len() as f64;
        let shape = [frames.len(), 3, self.spec.input.height as usize, self.spec.input.width as usize];
        let shape = self.tensor_shape(shape);
        let layout = self.spec.output;
        let params = self.options.detect;
        let n = frames.len();
        let t = Instant::now();
        let outputs = self.model.run(&batch, shape, |out| {
            let infer_ms = ms(t) / n as f64;
            let mut item_shape = out.shape.to_vec();
            if let Some(b) = item_shape.first_mut() {
                *b = 1;
            }
            let per_out = out.data.len() / n.max(1);
            let decoded: Vec<_> = transforms
                .iter()
                .enumerate()
                .map(|(i, tr)| {
                    let t = Instant::now();
                    let tr = tr.clone().map_err(VisionError::from)?;
                    let chunk = out.data.get(i * per_out..(i + 1) * per_out).unwrap_or(&[]);
                    let d = postprocess::decode(layout, chunk, &item_shape, &params, &tr)?;
                    Ok((d, tr, ms(t)))
                })
                .collect();
            (decoded, infer_ms)
        });
        match outputs {
            Err(e) => (0..n).map(|_| Err(VisionError::from(e.clone()))).collect(),
            Ok((decoded, infer_ms)) => decoded
                .into_iter()
                .map(|d: Result<_, VisionError>| {
                    let (decoded, tr, post) = d?;
                    let mut r = self.finish(decoded, &tr);
                    r.timings = Timings { decode: 0.0, preprocess, inference: infer_ms, postprocess: post };
                    Ok(r)
                })
                .collect(),
        }
    }

    fn tensor_shape(&self, nchw: [usize; 4]) -> [usize; 4] {
        match self.spec.input.layout {
            super::spec::Layout::Nchw => nchw,
            super::spec::Layout::Nhwc => [nchw[0], nchw[2], nchw[3], nchw[1]],
        }
    }

    fn finish(&self, decoded: Decoded, transform: &Transform) -> FrameResult {
        let (width, height) = (transform.width, transform.height);
        match decoded {
            Decoded::Detections(dets) => FrameResult {
                width,
                height,
                task: Task::Detect,
                confidence: confidence::of_detections(&dets, &self.options.band),
                detections: dets
                    .iter()
                    .map(|d| LabeledDetection {
                        class: d.class,
                        label: self.spec.label(d.class),
                        score: d.score,
                        bbox: d.bbox,
                    })
                    .collect(),
                classes: Vec::new(),
                timings: Timings::default(),
            },
            Decoded::Probabilities(probs) => {
                let k = if self.options.top_k == 0 { 5 } else { self.options.top_k };
                FrameResult {
                    width,
                    height,
                    task: Task::Classify,
                    confidence: confidence::of_probabilities(&probs),
                    detections: Vec::new(),
                    classes: postprocess::top_k(&probs, k)
                        .into_iter()
                        .map(|c| LabeledClass { class: c.class, label: self.spec.label(c.class), score: c.score })
                        .collect(),
                    timings: Timings::default(),
                }
            }
        }
    }
}
