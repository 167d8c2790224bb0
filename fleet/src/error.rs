//! The kinds every library error of the fleet falls into, and the HTTP status each one means.
//!
//! Design: each module keeps its own `thiserror` enum with a stable machine-readable `code()` (for the JSON error
//! body, logs and metrics); `kind()` folds it into one of these few kinds, so the HTTP layer maps errors with one
//! `match` instead of one per module.

use std::fmt;

/// What went wrong, as far as a caller deciding on an answer needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is well-formed HTTP but its content is refused: bad hash, meta, image, label or query. `422`.
    Invalid,
    /// A part or a body is over its size cap, or an image is over its pixel limits. `413`.
    TooLarge,
    /// No such sample (or nothing to export). `404`.
    NotFound,
    /// The sample is not in a state that allows this: the lease was lost or belongs to someone else, it was
    /// already labelled, an output folder is not empty. Re-read and decide again. `409`.
    Conflict,
    /// The caller's role may do this in general but not here (a reviewer reviewing their own label). `403`.
    Forbidden,
    /// The fleet is not set up to do this (no trusted keys for model pushes, no ONNX Runtime). `503`.
    Unavailable,
    /// Ours: the store or the object store failed, or a stored record does not parse. `500`.
    Internal,
}

impl ErrorKind {
    /// The HTTP status this kind answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 422,
            ErrorKind::TooLarge => 413,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Forbidden => 403,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
