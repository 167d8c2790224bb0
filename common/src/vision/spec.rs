//! What Outpost understood of a model: its task, how to feed it, how to read its output, and its labels.
//!
//! Design: a [`ModelSpec`] is resolved once per model from three sources, field by field, in this order:
//! Ultralytics metadata embedded in the ONNX file, an explicit [`SpecHints`] (config, CLI flags, later the signed
//! manifest), and finally what the tensor shapes imply. Resolution is pure: it takes the introspected [`ModelInfo`]
//! and returns a spec or a [`SpecError`] saying what could not be understood.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::pyliteral;

/// What the model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Classify,
    Detect,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Classify => "classify",
            Task::Detect => "detect",
        }
    }
}

/// Memory layout of the image input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// Channel order the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

/// How a frame of any size is fitted to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum ResizeMode {
    /// Keep the aspect ratio, scale to fit, pad the rest with `pad` (Ultralytics detection: 114), centred.
    Letterbox { pad: u8 },
    /// Scale the shorter side to the input size, then crop the centre (Ultralytics / torchvision classifiers).
    ResizeCrop,
    /// Scale both sides independently to the input size.
    Stretch,
}

/// `value = (pixel * scale - mean[c]) / std[c]`, per channel in the model's colour order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// Pixels scaled to 0..1, no mean or std: what Ultralytics models expect.
    pub const UNIT: Normalization = Normalization { scale: 1.0 / 255.0, mean: [0.0; 3], std: [1.0; 3] };
    /// The ImageNet statistics most torchvision-style classifiers were trained with.
    pub const IMAGENET: Normalization =
        Normalization { scale: 1.0 / 255.0, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
}

/// How to turn an image into the model's input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub color: ColorOrder,
    pub resize: ResizeMode,
    pub normalization: Normalization,
}

/// How to read the model's output tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum OutputLayout {
    /// `[1, 4 + classes, candidates]`: cx, cy, w, h then one score per class (YOLOv8, YOLO11). Needs NMS.
    YoloDetect { classes: usize, candidates: usize },
    /// `[1, max_det, 6]`: x1, y1, x2, y2, score, class (YOLO26, YOLOv10 end-to-end). No NMS.
    EndToEnd { max_det: usize },
    /// `[1, classes]`: probabilities when `probabilities`, otherwise logits that need a softmax.
    Classify { classes: usize, probabilities: bool },
}

impl OutputLayout {
    pub fn task(self) -> Task {
        match self {
            OutputLayout::YoloDetect { .. } | OutputLayout::EndToEnd { .. } => Task::Detect,
            OutputLayout::Classify { .. } => Task::Classify,
        }
    }
}

/// Where a spec's fields came from, for `check-model` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecSource {
    Metadata,
    Explicit,
    Shapes,
    Default,
}

/// Everything Outpost needs to run a model on an image and read the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub task: Task,
    pub input_name: String,
    pub output_name: String,
    pub input: InputSpec,
    /// True when the model accepts other input sizes than `input.width` × `input.height`.
    pub dynamic_input: bool,
    pub output: OutputLayout,
    pub labels: Vec<String>,
    pub stride: Option<u32>,
    pub sources: SpecSources,
}

/// Provenance of each resolved field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecSources {
    pub task: SpecSource,
    pub input_size: SpecSource,
    pub labels: SpecSource,
}

impl ModelSpec {
    /// The label of class `class`, or its number when the model carries no name for it.
    pub fn label(&self, class: usize) -> String {
        self.labels.get(class).cloned().unwrap_or_else(|| class.to_string())
    }

    pub fn num_classes(&self) -> usize {
        match self.output {
            OutputLayout::YoloDetect { classes, .. } | OutputLayout::Classify { classes, .. } => classes,
            OutputLayout::EndToEnd { .. } => self.labels.len(),
        }
    }
}

/// What a caller knows about a model beyond the ONNX file (config, CLI flags, the signed manifest).
/// Every field is optional; given fields fill what the model's metadata does not say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecHints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// Element type of a tensor, as far as Outpost cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElementType {
    F32,
    F16,
    U8,
    I64,
    Other,
}

/// One input or output of a model. Dynamic dimensions are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub element: ElementType,
    pub shape: Vec<Option<usize>>,
}

/// What ONNX Runtime reports about a loaded model.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ModelInfo {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    /// Custom metadata properties (Ultralytics writes `task`, `imgsz`, `names`, `stride`, `end2end`, ...).
    pub metadata: BTreeMap<String, String>,
}

/// Why a model's spec could not be resolved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("the model has {0} inputs; Outpost runs models with exactly one image input")]
    InputCount(usize),
    #[error("input `{name}` has shape {shape}; expected an image tensor [1, 3, H, W] or [1, H, W, 3]")]
    InputShape { name: String, shape: String },
    #[error("input `{name}` is {element:?}; Outpost feeds float32 images")]
    InputType { name: String, element: ElementType },
    #[error("the model has no outputs")]
    NoOutputs,
    #[error(
        "output `{name}` has shape {shape}, which is not a layout Outpost understands \
         (classification [1, C], YOLO detection [1, 4+C, N], end-to-end detection [1, N, 6])"
    )]
    OutputLayout { name: String, shape: String },
    #[error("output `{name}` is {element:?}; Outpost reads float32 outputs")]
    OutputType { name: String, element: ElementType },
    #[error("the model's metadata says task `{task}`, but its output {shape} is not laid out for it")]
    TaskMismatch { task: String, shape: String },
    #[error("unsupported task `{0}` in the model's metadata (Outpost runs classify and detect)")]
    UnsupportedTask(String),
    #[error("metadata `{key}` could not be read: {reason}")]
    Metadata { key: String, reason: String },
    #[error("the input size is dynamic and neither the metadata nor the caller says which size to use")]
    UnknownInputSize,
    #[error("{labels} labels were given, but the model outputs {classes} classes")]
    LabelCount { labels: usize, classes: usize },
}

/// Default input size for a model whose input is dynamic and says nothing else.
const DEFAULT_DYNAMIC_SIZE: u32 = 640;

fn fmt_shape(shape: &[Option<usize>]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.map_or_else(|| "?".to_string(), |d| d.to_string())).collect();
    format!("[{}]", dims.join(", "))
}

/// The Ultralytics metadata Outpost reads, parsed.
#[derive(Debug, Default)]
struct Ultralytics {
    task: Option<String>,
    imgsz: Option<(u32, u32)>,
    stride: Option<u32>,
    end2end: Option<bool>,
    names: Option<Vec<String>>,
}

fn meta_err(key: &str, reason: impl ToString) -> SpecError {
    SpecError::Metadata { key: key.to_string(), reason: reason.to_string() }
}

fn read_ultralytics(meta: &BTreeMap<String, String>) -> Result<Ultralytics, SpecError> {
    let mut u = Ultralytics { task: meta.get("task").map(|t| t.trim().to_string()), ..Default::default() };
    if let Some(raw) = meta.get("imgsz") {
        let sizes = pyliteral::parse_int_list(raw).map_err(|e| meta_err("imgsz", e))?;
        let to_u32 = |v: i64| u32::try_from(v).ok().filter(|v| (1..=16384).contains(v));
        u.imgsz = match sizes.as_slice() {
            [s] => to_u32(*s).map(|s| (s, s)),
            [h, w] => to_u32(*h).zip(to_u32(*w)),
            _ => None,
        };
        if u.imgsz.is_none() {
            return Err(meta_err("imgsz", format!("`{raw}` is not one or two sizes between 1 and 16384")));
        }
    }
    if let Some(raw) = meta.get("stride") {
        u.stride = Some(raw.trim().parse().map_err(|_| meta_err("stride", format!("`{raw}` is not an integer")))?);
    }
    if let Some(raw) = meta.get("end2end") {
        u.end2end = Some(pyliteral::parse_bool(raw).map_err(|e| meta_err("end2end", e))?);
    }
    if let Some(raw) = meta.get("names") {
        u.names = Some(pyliteral::parse_names(raw).map_err(|e| meta_err("names", e))?);
    }
    Ok(u)
}

/// Finds the image size in an input shape and says whether the layout is NCHW. `None` dims are dynamic.
fn image_input(input: &TensorInfo) -> Result<(Layout, Option<usize>, Option<usize>), SpecError> {
    let bad = || SpecError::InputShape { name: input.name.clone(), shape: fmt_shape(&input.shape) };
    match input.shape.as_slice() {
        [_, Some(3), h, w] => Ok((Layout::Nchw, *h, *w)),
        [_, h, w, Some(3)] => Ok((Layout::Nhwc, *h, *w)),
        // A fully dynamic rank-4 input: assume the common NCHW.
        [_, None, h, w] => Ok((Layout::Nchw, *h, *w)),
        _ => Err(bad()),
    }
}

/// Reads the output layout from its shape; `end2end` and `task` from metadata break ties.
fn output_layout(output: &TensorInfo, end2end: Option<bool>, task: Option<Task>) -> Result<OutputLayout, SpecError> {
    let bad = || SpecError::OutputLayout { name: output.name.clone(), shape: fmt_shape(&output.shape) };
    match output.shape.as_slice() {
        [_, Some(c)] if *c >= 1 && task != Some(Task::Detect) => {
            Ok(OutputLayout::Classify { classes: *c, probabilities: false })
        }
        [_, Some(n), Some(6)] if end2end != Some(false) && task != Some(Task::Classify) => {
            Ok(OutputLayout::EndToEnd { max_det: *n })
        }
        [_, Some(c), Some(n)] if *c > 4 && task != Some(Task::Classify) && end2end != Some(true) => {
            Ok(OutputLayout::YoloDetect { classes: c - 4, candidates: *n })
        }
        [_, Some(c), None] if *c > 4 && task != Some(Task::Classify) && end2end != Some(true) => {
            Ok(OutputLayout::YoloDetect { classes: c - 4, candidates: 0 })
        }
        _ => Err(bad()),
    }
}

/// Resolves what a model is and how to run it.
pub fn resolve(info: &ModelInfo, hints: &SpecHints) -> Result<ModelSpec, SpecError> {
    let input = match info.inputs.as_slice() {
        [one] => one,
        more => return Err(SpecError::InputCount(more.len())),
    };
    if input.element != ElementType::F32 {
        return Err(SpecError::InputType { name: input.name.clone(), element: input.element });
    }
    let output = info.outputs.first().ok_or(SpecError::NoOutputs)?;
    if output.element != ElementType::F32 {
        return Err(SpecError::OutputType { name: output.name.clone(), element: output.element });
    }
    let ultra = read_ultralytics(&info.metadata)?;

    let meta_task = match ultra.task.as_deref() {
        None => None,
        Some("detect") => Some(Task::Detect),
        Some("classify") => Some(Task::Classify),
        Some(other) => return Err(SpecError::UnsupportedTask(other.to_string())),
    };
    let wanted_task = meta_task.or(hints.task);
    let layout = output_layout(output, ultra.end2end, wanted_task).map_err(|e| match (wanted_task, e) {
        (Some(t), SpecError::OutputLayout { shape, .. }) if output_layout(output, None, None).is_ok() => {
            SpecError::TaskMismatch { task: t.as_str().to_string(), shape }
        }
        (_, e) => e,
    })?;
    let task = layout.task();
    let task_source = if meta_task.is_some() {
        SpecSource::Metadata
    } else if hints.task.is_some() {
        SpecSource::Explicit
    } else {
        SpecSource::Shapes
    };

    let (tensor_layout, h, w) = image_input(input)?;
    let dynamic_input = h.is_none() || w.is_none();
    let to_u32 = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let ((height, width), size_source) = if let Some(size) = ultra.imgsz {
        (size, SpecSource::Metadata)
    } else if let Some(inp) = &hints.input {
        ((inp.height, inp.width), SpecSource::Explicit)
    } else if let (Some(h), Some(w)) = (h, w) {
        ((to_u32(h), to_u32(w)), SpecSource::Shapes)
    } else if dynamic_input && (h.is_some() || w.is_some()) {
        let s = to_u32(h.or(w).unwrap_or(0));
        ((s, s), SpecSource::Shapes)
    } else {
        ((DEFAULT_DYNAMIC_SIZE, DEFAULT_DYNAMIC_SIZE), SpecSource::Default)
    };
    // A fixed input dimension wins over anything that disagrees with it: the model cannot run otherwise.
    let height = h.map_or(height, to_u32);
    let width = w.map_or(width, to_u32);

    let default_input = match task {
        Task::Detect => InputSpec {
            width,
            height,
            layout: tensor_layout,
            color: ColorOrder::Rgb,
            resize: ResizeMode::Letterbox { pad: 114 },
            normalization: Normalization::UNIT,
        },
        Task::Classify => InputSpec {
            width,
            height,
            layout: tensor_layout,
            color: ColorOrder::Rgb,
            resize: ResizeMode::ResizeCrop,
            normalization: Normalization::UNIT,
        },
    };
    // Ultralytics models are fed exactly as Ultralytics feeds them; an explicit spec describes other models.
    let input_spec = match (&hints.input, ultra.task.is_some()) {
        (Some(explicit), false) => InputSpec { width, height, layout: tensor_layout, ..explicit.clone() },
        _ => default_input,
    };

    // Ultralytics classifiers end in a softmax; any other classifier is assumed to output logits unless its
    // values say otherwise at run time (see postprocess::classify).
    let output = match layout {
        OutputLayout::Classify { classes, .. } => {
            OutputLayout::Classify { classes, probabilities: ultra.task.as_deref() == Some("classify") }
        }
        other => other,
    };

    let classes = match output {
        OutputLayout::YoloDetect { classes, .. } | OutputLayout::Classify { classes, .. } => Some(classes),
        OutputLayout::EndToEnd { .. } => None,
    };
    let (labels, labels_source) = if let Some(names) = ultra.names {
        (names, SpecSource::Metadata)
    } else if let Some(labels) = &hints.labels {
        (labels.clone(), SpecSource::Explicit)
    } else {
        ((0..classes.unwrap_or(0)).map(|i| i.to_string()).collect(), SpecSource::Shapes)
    };
    if let Some(classes) = classes
        && labels.len() != classes
    {
        return Err(SpecError::LabelCount { labels: labels.len(), classes });
    }

    Ok(ModelSpec {
        task,
        input_name: input.name.clone(),
        output_name: output_name(info),
        input: input_spec,
        dynamic_input,
        output,
        labels,
        stride: ultra.stride,
        sources: SpecSources { task: task_source, input_size: size_source, labels: labels_source },
    })
}

fn output_name(info: &ModelInfo) -> String {
    info.outputs.first().map(|o| o.name.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: &[i64]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            element: ElementType::F32,
            shape: shape.iter().map(|&d| usize::try_from(d).ok()).collect(),
        }
    }

    fn info(input: &[i64], output: &[i64], meta: &[(&str, &str)]) -> ModelInfo {
        ModelInfo {
            inputs: vec![tensor("images", input)],
            outputs: vec![tensor("output0", output)],
            metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn check(info: ModelInfo, hints: SpecHints, expected: Result<(Task, u32, u32, OutputLayout, usize), &str>) {
        let got = resolve(&info, &hints);
        match (got, expected) {
            (Ok(spec), Ok((task, w, h, layout, labels))) => {
                assert_eq!(
                    (spec.task, spec.input.width, spec.input.height, spec.output, spec.labels.len()),
                    (task, w, h, layout, labels)
                );
            }
            (Err(e), Err(fragment)) => {
                assert!(e.to_string().contains(fragment), "`{e}` lacks `{fragment}`")
            }
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    const DEFECT_META: &[(&str, &str)] = &[
        ("task", "detect"),
        ("imgsz", "[320, 320]"),
        ("stride", "32"),
        ("end2end", "False"),
        ("names", "{0: 'scratch', 1: 'dent', 2: 'stain'}"),
    ];

    #[test]
    fn ultralytics_layouts() {
        check(
            info(&[1, 3, 320, 320], &[1, 7, 2100], DEFECT_META),
            SpecHints::default(),
            Ok((Task::Detect, 320, 320, OutputLayout::YoloDetect { classes: 3, candidates: 2100 }, 3)),
        );
        check(
            info(&[1, 3, 640, 640], &[1, 300, 6], &[("task", "detect"), ("end2end", "True"), ("imgsz", "[640, 640]")]),
            SpecHints { labels: Some(vec!["a".into(), "b".into()]), ..Default::default() },
            Ok((Task::Detect, 640, 640, OutputLayout::EndToEnd { max_det: 300 }, 2)),
        );
        check(
            info(&[1, 3, 224, 224], &[1, 1000], &[("task", "classify"), ("imgsz", "[224, 224]")]),
            SpecHints::default(),
            Ok((Task::Classify, 224, 224, OutputLayout::Classify { classes: 1000, probabilities: true }, 1000)),
        );
    }

    #[test]
    fn sniffed_from_shapes_without_metadata() {
        check(
            info(&[1, 3, 256, 256], &[1, 10], &[]),
            SpecHints::default(),
            Ok((Task::Classify, 256, 256, OutputLayout::Classify { classes: 10, probabilities: false }, 10)),
        );
        check(
            info(&[1, 3, 640, 640], &[1, 84, 8400], &[]),
            SpecHints::default(),
            Ok((Task::Detect, 640, 640, OutputLayout::YoloDetect { classes: 80, candidates: 8400 }, 80)),
        );
        // Two classes in the YOLO layout is [1, 6, N]; the end-to-end layout is [1, N, 6].
        check(
            info(&[1, 3, 640, 640], &[1, 6, 8400], &[]),
            SpecHints::default(),
            Ok((Task::Detect, 640, 640, OutputLayout::YoloDetect { classes: 2, candidates: 8400 }, 2)),
        );
    }

    #[test]
    fn dynamic_input_sizes() {
        // Size from metadata, from the caller, or the default.
        check(
            info(&[-1, 3, -1, -1], &[1, 7, -1], DEFECT_META),
            SpecHints::default(),
            Ok((Task::Detect, 320, 320, OutputLayout::YoloDetect { classes: 3, candidates: 0 }, 3)),
        );
        let explicit = InputSpec {
            width: 160,
            height: 96,
            layout: Layout::Nchw,
            color: ColorOrder::Bgr,
            resize: ResizeMode::Stretch,
            normalization: Normalization::IMAGENET,
        };
        let spec = resolve(
            &info(&[1, 3, -1, -1], &[1, 4], &[]),
            &SpecHints { input: Some(explicit.clone()), ..Default::default() },
        )
        .expect("resolves");
        assert!(spec.dynamic_input);
        assert_eq!(spec.input, explicit);
        assert_eq!(spec.sources.input_size, SpecSource::Explicit);
        check(
            info(&[1, 3, -1, -1], &[1, 4], &[]),
            SpecHints::default(),
            Ok((Task::Classify, 640, 640, OutputLayout::Classify { classes: 4, probabilities: false }, 4)),
        );
    }

    #[test]
    fn layouts_not_understood() {
        check(
            info(&[1, 3, 64, 64], &[1, 3, 64, 64], &[]),
            SpecHints::default(),
            Err("not a layout Outpost understands"),
        );
        check(info(&[1, 3, 64, 64], &[10], &[]), SpecHints::default(), Err("not a layout Outpost understands"));
        check(info(&[1, 64], &[1, 10], &[]), SpecHints::default(), Err("expected an image tensor"));
        check(info(&[1, 3, 64, 64], &[1, 10], &[("task", "segment")]), SpecHints::default(), Err("unsupported task"));
        check(info(&[1, 3, 64, 64], &[1, 10], &[("task", "detect")]), SpecHints::default(), Err("not laid out for it"));
        check(
            info(&[1, 3, 64, 64], &[1, 10], &[("names", "{0: 'a'}")]),
            SpecHints::default(),
            Err("1 labels were given, but the model outputs 10 classes"),
        );
        check(info(&[1, 3, 64, 64], &[1, 10], &[("imgsz", "[0]")]), SpecHints::default(), Err("metadata `imgsz`"));
        check(info(&[1, 3, 64, 64], &[1, 10], &[("names", "{0: 'a',")]), SpecHints::default(), Err("metadata `names`"));
    }

    #[test]
    fn explicit_labels_fill_missing_metadata() {
        let hints = SpecHints { labels: Some(vec!["ok".into(), "ng".into()]), ..Default::default() };
        let spec = resolve(&info(&[1, 3, 32, 32], &[1, 2], &[]), &hints).expect("resolves");
        assert_eq!(spec.labels, ["ok", "ng"]);
        assert_eq!(spec.label(1), "ng");
        assert_eq!(spec.label(7), "7");
    }
}
