//! Why an export or an import failed.

use std::path::PathBuf;

use crate::annotate::QueueError;
use crate::error::ErrorKind;
use crate::samples::SampleError;

/// A failed export or import. [`ExportError::kind`] gives the HTTP status (see [`ErrorKind`]):
///
/// | variant | code | status |
/// | --- | --- | --- |
/// | `Invalid` (bad query, a format for the other task, a class missing from `names`), `BadImport` | `invalid`, `bad_import` | 422 |
/// | `ImportTooLarge` | `too_large` | 413 |
/// | `NothingToExport` | `nothing_to_export` | 404 |
/// | `OutputNotEmpty` | `output_not_empty` | 409 |
/// | `Queue(e)`, `Sample(e)` | `e.code()` | `e.kind()` |
/// | `Io` | `io` | 500 |
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Invalid(String),
    #[error("no exportable samples of model `{model}`")]
    NothingToExport { model: String },
    #[error("{} exists and is not an empty directory", .0.display())]
    OutputNotEmpty(PathBuf),
    #[error("the import is {size} bytes; at most {max}")]
    ImportTooLarge { size: usize, max: usize },
    #[error("not a Label Studio JSON export: {0}")]
    BadImport(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Sample(#[from] SampleError),
}

impl ExportError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExportError::Invalid(_) | ExportError::BadImport(_) => ErrorKind::Invalid,
            ExportError::ImportTooLarge { .. } => ErrorKind::TooLarge,
            ExportError::NothingToExport { .. } => ErrorKind::NotFound,
            ExportError::OutputNotEmpty(_) => ErrorKind::Conflict,
            ExportError::Io { .. } => ErrorKind::Internal,
            ExportError::Queue(e) => e.kind(),
            ExportError::Sample(e) => e.kind(),
        }
    }

    /// A stable machine-readable name (JSON error bodies, logs, metric labels).
    pub fn code(&self) -> &'static str {
        match self {
            ExportError::Invalid(_) => "invalid",
            ExportError::NothingToExport { .. } => "nothing_to_export",
            ExportError::OutputNotEmpty(_) => "output_not_empty",
            ExportError::ImportTooLarge { .. } => "too_large",
            ExportError::BadImport(_) => "bad_import",
            ExportError::Io { .. } => "io",
            ExportError::Queue(e) => e.code(),
            ExportError::Sample(e) => e.code(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> ExportError {
        ExportError::Io { path: path.to_path_buf(), source }
    }
}
