//! Datasets out of the labelled samples — YOLO, COCO, ImageNet-style class folders, Label Studio tasks — and a
//! Label Studio export back in as labels. `outpost samples export` and the API call [`export`] and
//! [`import_label_studio`].
//!
//! Design: [`dataset`] picks the samples (labelled, or accepted when reviewed; never labels still in review) and
//! their split ([`Split`]: by sample id, so stable across exports); each format module is pure and returns the list
//! of files to write; `write.rs` is the I/O edge (a hidden staging folder renamed into place at the end). Images are
//! copied as uploaded, never re-encoded, named `<sample sha256>.<jpg|png>`.

mod coco;
mod dataset;
mod error;
mod imagenet;
mod label_studio;
mod split;
mod write;
mod yolo;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::annotate::Queue;
use crate::samples::Task;

pub use error::ExportError;
pub use label_studio::{
    CHOICES as LABEL_STUDIO_CHOICES, IMAGE as LABEL_STUDIO_IMAGE, RECTANGLES as LABEL_STUDIO_RECTANGLES,
};
pub use split::Split;

use dataset::Output;

/// Largest Label Studio export [`import_label_studio`] reads.
pub const MAX_IMPORT_BYTES: usize = 256 << 20;

/// A dataset format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Ultralytics YOLO detection: `images/`, `labels/`, `data.yaml`. Detectors.
    Yolo,
    /// COCO detection JSON per split. Detectors.
    Coco,
    /// `train/<class>/`, `val/<class>/` folders. Classifiers.
    Imagenet,
    /// Label Studio tasks with predictions (and annotations for labelled samples). Both.
    LabelStudio,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Yolo => "yolo",
            Format::Coco => "coco",
            Format::Imagenet => "imagenet",
            Format::LabelStudio => "label-studio",
        }
    }

    /// The task whose labels the format holds; `None`: either.
    pub fn task(self) -> Option<Task> {
        match self {
            Format::Yolo | Format::Coco => Some(Task::Detect),
            Format::Imagenet => Some(Task::Classify),
            Format::LabelStudio => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "yolo" => Ok(Format::Yolo),
            "coco" => Ok(Format::Coco),
            "imagenet" => Ok(Format::Imagenet),
            "label-studio" | "labelstudio" => Ok(Format::LabelStudio),
            other => Err(format!("unknown format `{other}` (yolo, coco, imagenet, label-studio)")),
        }
    }
}

fn default_val_ratio() -> f64 {
    0.2
}

/// What to export, where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// The model name whose samples are exported (every version).
    pub model: String,
    pub format: Format,
    /// Share of samples in the validation split, 0..=1 (default 0.2).
    #[serde(default = "default_val_ratio")]
    pub val_ratio: f64,
    /// The folder to create; it must not exist or be empty.
    pub out_dir: PathBuf,
    /// Class names in index order. Default: the model's classes as recorded with its labels (newest version).
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// Label Studio: the URL the export's `images/` folder will be served at. Required for that format.
    #[serde(default)]
    pub image_base_url: Option<String>,
    /// Label Studio: also export queued and claimed samples (predictions only), to be labelled there.
    #[serde(default)]
    pub include_unlabelled: bool,
}

impl ExportQuery {
    /// A query with the defaults: 20 % validation, the model's own class names.
    pub fn new(model: &str, format: Format, out_dir: impl Into<PathBuf>) -> ExportQuery {
        ExportQuery {
            model: model.to_string(),
            format,
            val_ratio: default_val_ratio(),
            out_dir: out_dir.into(),
            names: None,
            image_base_url: None,
            include_unlabelled: false,
        }
    }

    fn validate(&self) -> Result<(), ExportError> {
        if self.model.is_empty() {
            return Err(ExportError::Invalid("the model name is empty".into()));
        }
        if !(self.val_ratio.is_finite() && (0.0..=1.0).contains(&self.val_ratio)) {
            return Err(ExportError::Invalid(format!("val_ratio {} is not within 0..=1", self.val_ratio)));
        }
        if let Some(names) = &self.names {
            dataset::check_unique(names)?;
        }
        if self.format == Format::LabelStudio {
            match &self.image_base_url {
                Some(url) if url.starts_with("http://") || url.starts_with("https://") || url.starts_with('/') => {}
                Some(url) => return Err(ExportError::Invalid(format!("`{url}` is not an http(s) URL or a path"))),
                None => return Err(ExportError::Invalid("a Label Studio export needs image_base_url".into())),
            }
        } else if self.include_unlabelled {
            return Err(ExportError::Invalid("include_unlabelled is for Label Studio exports only".into()));
        }
        Ok(())
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportReport {
    pub format: Format,
    /// The absolute path of the export.
    pub out_dir: PathBuf,
    /// Class names in index order (YOLO class ids; COCO category ids are these + 1).
    pub names: Vec<String>,
    pub train: usize,
    pub val: usize,
    /// Labelled boxes written (detector formats).
    pub boxes: usize,
    /// Samples exported without a label (Label Studio with `include_unlabelled`).
    pub unlabelled: usize,
    /// Samples of the model left out because they belong to the other task.
    pub other_task: usize,
    /// Things a trainer may trip over (an empty split, a class in one split only).
    pub warnings: Vec<String>,
}

/// Exports the query's samples. Reads the store (blocking, short) and the object store; writes the folder.
pub async fn export(queue: &Queue, query: &ExportQuery) -> Result<ExportReport, ExportError> {
    query.validate()?;
    let mut items = dataset::collect(queue, query)?;
    if items.is_empty() {
        return Err(ExportError::NothingToExport { model: query.model.clone() });
    }
    // Label Studio takes either task, but one config per export: the task most samples have.
    let task = query.format.task().unwrap_or_else(|| {
        let detect = items.iter().filter(|i| i.record.task() == Task::Detect).count();
        if detect * 2 >= items.len() { Task::Detect } else { Task::Classify }
    });
    let other_task;
    (items, other_task) = dataset::of_task(items, task, query)?;
    let mut warnings = Vec::new();
    let names = dataset::names(query, queue.class_names(&query.model)?, &items, &mut warnings)?;
    dataset::check_unique(&names)?;
    let classes = dataset::index(&names);
    let staging = write::Staging::create(&query.out_dir)?;
    let (outputs, boxes): (Vec<Output>, usize) = match query.format {
        Format::Yolo => yolo::plan(&items, &names, &classes, staging.target()),
        Format::Coco => coco::plan(&items, &names, &classes, &query.model)?,
        Format::Imagenet => (imagenet::plan(&items, &names, &mut warnings)?, 0),
        Format::LabelStudio => label_studio_plan(&items, &names, task, query)?,
    };
    let train = items.iter().filter(|i| i.split == Split::Train).count();
    let val = items.len() - train;
    for (split, n) in [("train", train), ("val", val)] {
        if n == 0 && query.format != Format::LabelStudio {
            warnings.push(format!("the {split} split is empty"));
        }
    }
    staging.write_all(&outputs, &items, queue.samples()).await?;
    let out_dir = staging.commit()?;
    let report = ExportReport {
        format: query.format,
        out_dir,
        names,
        train,
        val,
        boxes,
        unlabelled: items.iter().filter(|i| i.label.is_none()).count(),
        other_task,
        warnings,
    };
    tracing::info!(
        model = %query.model,
        format = %query.format,
        out_dir = %report.out_dir.display(),
        train,
        val,
        boxes,
        "samples exported"
    );
    Ok(report)
}

fn label_studio_plan(
    items: &[dataset::Item],
    names: &[String],
    task: Task,
    query: &ExportQuery,
) -> Result<(Vec<Output>, usize), ExportError> {
    let base = query.image_base_url.as_deref().unwrap_or_default();
    // The config lists every class a prediction uses too, so Label Studio can show every pre-annotation.
    let mut config_names = names.to_vec();
    for p in items.iter().flat_map(|i| &i.record.meta.predictions) {
        if !config_names.contains(&p.label) {
            config_names.push(p.label.clone());
        }
    }
    let mut out: Vec<Output> = items
        .iter()
        .enumerate()
        .map(|(index, item)| Output::Image { path: format!("images/{}", item.file_name()), index })
        .collect();
    out.push(Output::File {
        path: "tasks.json".into(),
        bytes: dataset::json_bytes(&label_studio::tasks(items, base), "tasks.json")?,
    });
    out.push(Output::File {
        path: "label_config.xml".into(),
        bytes: label_studio::label_config(task, &config_names).into_bytes(),
    });
    let boxes = items
        .iter()
        .map(|i| match &i.label {
            Some(crate::annotate::Label::Detect { boxes }) => boxes.len(),
            _ => 0,
        })
        .sum();
    Ok((out, boxes))
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportReport {
    /// Tasks whose label was applied.
    pub imported: usize,
    /// Tasks without an annotation (or with cancelled ones only): nothing to apply.
    pub without_annotation: usize,
    /// Tasks that could not be applied, with why.
    pub refused: Vec<ImportRefusal>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportRefusal {
    /// The task's id in Label Studio, or `#<position>`.
    pub task: String,
    pub reason: String,
}

/// Applies a Label Studio JSON export (an array of tasks with `annotations[].result`) as labels: each task's last
/// annotation that was not cancelled becomes its sample's label, checked like a submitted one (see
/// [`Queue::import_label`]). A task that cannot be applied is reported, not fatal; a body that is not such an
/// array is refused whole.
pub fn import_label_studio(
    queue: &Queue,
    json: &[u8],
    importer: &str,
    now: OffsetDateTime,
) -> Result<ImportReport, ExportError> {
    if json.len() > MAX_IMPORT_BYTES {
        return Err(ExportError::ImportTooLarge { size: json.len(), max: MAX_IMPORT_BYTES });
    }
    let tasks: Vec<serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| ExportError::BadImport(e.to_string()))?;
    let mut report = ImportReport::default();
    for (position, value) in tasks.into_iter().enumerate() {
        let task: label_studio::LsTask = match serde_json::from_value(value) {
            Ok(task) => task,
            Err(e) => {
                report.refused.push(ImportRefusal { task: format!("#{position}"), reason: e.to_string() });
                continue;
            }
        };
        let name = task.name(position);
        let Some(annotation) = task.annotation() else {
            report.without_annotation += 1;
            continue;
        };
        match import_task(queue, &task, annotation, importer, now)? {
            Ok(()) => report.imported += 1,
            Err(reason) => report.refused.push(ImportRefusal { task: name, reason }),
        }
    }
    tracing::info!(importer, imported = report.imported, refused = report.refused.len(), "label studio import");
    Ok(report)
}

fn import_task(
    queue: &Queue,
    task: &label_studio::LsTask,
    annotation: &label_studio::LsAnnotation,
    importer: &str,
    now: OffsetDateTime,
) -> Result<Result<(), String>, ExportError> {
    // The task's own faults are refusals (`Ok(Err(reason))`); the fleet's (store, object store) end the import.
    let sample = match task.sample() {
        Ok(sample) => sample,
        Err(reason) => return Ok(Err(reason)),
    };
    let Some(record) = queue.samples().get(&sample)? else { return Ok(Err(format!("no sample {sample}"))) };
    let label = match label_studio::to_label(annotation, record.task(), record.meta.width, record.meta.height) {
        Ok(label) => label,
        Err(reason) => return Ok(Err(reason)),
    };
    match queue.import_label(&sample, label, importer, now) {
        Ok(_) => Ok(Ok(())),
        Err(e) if e.kind() == crate::error::ErrorKind::Internal => Err(e.into()),
        Err(e) => Ok(Err(e.to_string())),
    }
}
