//! The ONNX engine: loading a model, introspecting it, running it.
//!
//! Invariant: this module is the only one in the workspace that imports `ort`. Everything above it sees
//! [`ModelInfo`], [`Model::run`] and plain slices.

mod runtime;

use std::collections::BTreeMap;
use std::path::Path;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};

pub use runtime::{LibrarySource, PROVISIONED_VERSION, Runtime, RuntimeError, candidates as library_candidates};

use super::spec::{self, ElementType, ModelInfo, ModelSpec, SpecError, SpecHints, TensorInfo};

/// How a session is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineOptions {
    /// Threads inside one operator; 0 lets ONNX Runtime choose (one per physical core).
    pub intra_threads: usize,
    /// Busy-wait between operators. Off by default: spinning steals the cores decode and preprocessing need when
    /// the pipeline overlaps them with inference (measured up to 1.8× slower throughput here).
    pub spinning: bool,
}

/// Why a model could not be loaded or run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("model file {path} could not be read: {reason}")]
    Read { path: String, reason: String },
    #[error("the model file is empty")]
    Empty,
    #[error("not a loadable ONNX model: {0}")]
    Load(String),
    #[error("session options rejected: {0}")]
    Options(String),
    #[error("input has {got} values but shape {shape:?} needs {want}")]
    InputSize { got: usize, want: usize, shape: Vec<usize> },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("output `{name}` could not be read as float32: {reason}")]
    Output { name: String, reason: String },
}

/// One output tensor of a run, borrowed from ONNX Runtime's buffer.
#[derive(Debug, Clone, Copy)]
pub struct OutputView<'a> {
    pub shape: &'a [i64],
    pub data: &'a [f32],
}

/// A loaded model: one ONNX Runtime session and what it reported about itself.
#[derive(Debug)]
pub struct Model {
    session: Session,
    info: ModelInfo,
}

fn element(ty: TensorElementType) -> ElementType {
    match ty {
        TensorElementType::Float32 => ElementType::F32,
        TensorElementType::Float16 => ElementType::F16,
        TensorElementType::Uint8 => ElementType::U8,
        TensorElementType::Int64 => ElementType::I64,
        _ => ElementType::Other,
    }
}

fn tensor_info(name: &str, ty: &ValueType) -> TensorInfo {
    match ty {
        ValueType::Tensor { ty, shape, .. } => TensorInfo {
            name: name.to_string(),
            element: element(*ty),
            shape: shape.iter().map(|&d| usize::try_from(d).ok()).collect(),
        },
        _ => TensorInfo { name: name.to_string(), element: ElementType::Other, shape: Vec::new() },
    }
}

impl Model {
    /// Loads a model from a file.
    pub fn from_path(rt: &Runtime, path: &Path, options: &EngineOptions) -> Result<Model, EngineError> {
        let bytes = std::fs::read(path)
            .map_err(|e| EngineError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::from_bytes(rt, &bytes, options)
    }

    /// Loads a model from its bytes. The bytes are copied into ONNX Runtime and can be dropped afterwards.
    pub fn from_bytes(rt: &Runtime, bytes: &[u8], options: &EngineOptions) -> Result<Model, EngineError> {
        if bytes.is_empty() {
            return Err(EngineError::Empty);
        }
        let opt = |e: ort::Error<ort::session::builder::SessionBuilder>| {
            EngineError::Options(ort::Error::<()>::from(e).to_string())
        };
        let mut builder = Session::builder(&rt.env)
            .map_err(|e| EngineError::Options(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(opt)?
            .with_intra_op_spinning(options.spinning)
            .map_err(opt)?
            .with_inter_op_spinning(options.spinning)
            .map_err(opt)?
            .with_inter_threads(1)
            .map_err(opt)?;
        if options.intra_threads > 0 {
            builder = builder.with_intra_threads(options.intra_threads).map_err(opt)?;
        }
        let session = builder.commit_from_memory(bytes).map_err(|e| EngineError::Load(e.to_string()))?;

        let mut metadata = BTreeMap::new();
        if let Ok(meta) = session.metadata() {
            for key in meta.custom_keys().unwrap_or_default() {
                if let Some(value) = meta.custom(&key) {
                    metadata.insert(key, value);
                }
            }
        }
        let info = ModelInfo {
            inputs: session.inputs().iter().map(|o| tensor_info(o.name(), o.dtype())).collect(),
            outputs: session.outputs().iter().map(|o| tensor_info(o.name(), o.dtype())).collect(),
            metadata,
        };
        Ok(Model { session, info })
    }

    /// Inputs, outputs and metadata as ONNX Runtime reports them.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Resolves what this model is (see [`spec::resolve`]).
    pub fn spec(&self, hints: &SpecHints) -> Result<ModelSpec, SpecError> {
        spec::resolve(&self.info, hints)
    }

    /// True when the model takes a batch of any size in one run.
    pub fn batch_dynamic(&self) -> bool {
        self.info.inputs.first().and_then(|i| i.shape.first()).is_some_and(Option::is_none)
    }

    /// Runs the model on one input tensor and hands the first output to `read` without copying it.
    pub fn run<R>(
        &mut self,
        input: &[f32],
        shape: [usize; 4],
        read: impl FnOnce(OutputView<'_>) -> R,
    ) -> Result<R, EngineError> {
        let want = shape.iter().product::<usize>();
        if input.len() != want {
            return Err(EngineError::InputSize { got: input.len(), want, shape: shape.to_vec() });
        }
        let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| EngineError::Run(e.to_string()))?;
        let input_name = self.info.inputs.first().map(|i| i.name.clone()).unwrap_or_default();
        let outputs =
            self.session.run(ort::inputs![input_name => tensor]).map_err(|e| EngineError::Run(e.to_string()))?;
        let name = self.info.outputs.first().map(|o| o.name.as_str()).unwrap_or_default();
        let value = &outputs[0];
        let (shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| EngineError::Output { name: name.to_string(), reason: e.to_string() })?;
        Ok(read(OutputView { shape, data }))
    }
}
