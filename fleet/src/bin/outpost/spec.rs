//! What a model is, for its manifest: read from the ONNX file through the vision library, or given explicitly.

use std::path::PathBuf;

use anyhow::Context;
use outpost_common::vision::engine::{EngineOptions, Model, Runtime};
use outpost_common::vision::spec::{ModelSpec, SpecHints, Task};

#[derive(Debug, Clone, clap::Args)]
pub struct SpecArgs {
    /// Task, when the model's metadata does not say (classify, detect).
    #[arg(long, value_parser = parse_task)]
    task: Option<Task>,
    /// Labels in class order, comma-separated, when the model's metadata does not carry them.
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// A JSON file with any of `task`, `input` (size, layout, colour order, resize, normalisation) and `labels`.
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    /// Describe the model only from --spec/--task/--labels, without loading it in ONNX Runtime.
    #[arg(long)]
    no_inspect: bool,
    /// The ONNX Runtime library to load (default: ORT_DYLIB_PATH, lib/ next to the executable, the build cache).
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
}

fn parse_task(text: &str) -> Result<Task, String> {
    match text {
        "classify" => Ok(Task::Classify),
        "detect" => Ok(Task::Detect),
        other => Err(format!("unknown task `{other}` (classify or detect)")),
    }
}

/// What the manifest will state: task, input spec and labels.
#[derive(Debug)]
pub struct Described {
    pub hints: SpecHints,
    /// The resolved spec when the model was loaded.
    pub spec: Option<ModelSpec>,
}

impl SpecArgs {
    fn hints(&self) -> anyhow::Result<SpecHints> {
        let mut hints = match &self.spec {
            Some(path) => {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_slice(&bytes).with_context(|| format!("{} is not a spec file", path.display()))?
            }
            None => SpecHints::default(),
        };
        if self.task.is_some() {
            hints.task = self.task;
        }
        if self.labels.is_some() {
            hints.labels = self.labels.clone();
        }
        Ok(hints)
    }

    /// Loads the model to resolve its spec (unless --no-inspect), filling what the flags leave open.
    pub fn describe(&self, model: &[u8]) -> anyhow::Result<Described> {
        let hints = self.hints()?;
        if self.no_inspect {
            anyhow::ensure!(
                hints.task.is_some() && hints.input.is_some() && hints.labels.is_some(),
                "--no-inspect needs the task, input and labels from --spec, --task and --labels"
            );
            return Ok(Described { hints, spec: None });
        }
        let spec = inspect(model, &hints, self.ort_lib.as_deref())?;
        let hints =
            SpecHints { task: Some(spec.task), input: Some(spec.input.clone()), labels: Some(spec.labels.clone()) };
        Ok(Described { hints, spec: Some(spec) })
    }
}

/// Loads the model in ONNX Runtime and resolves its spec.
pub fn inspect(model: &[u8], hints: &SpecHints, ort_lib: Option<&std::path::Path>) -> anyhow::Result<ModelSpec> {
    let runtime = Runtime::init(ort_lib).context("loading ONNX Runtime to read the model (or use --no-inspect)")?;
    let model = Model::from_bytes(runtime, model, &EngineOptions::default()).context("loading the model")?;
    model.spec(hints).context("understanding the model")
}
