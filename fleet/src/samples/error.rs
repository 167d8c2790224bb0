//! Why an upload was refused, or a stored sample could not be read.

use outpost_common::manifest::Sha256Sum;
use outpost_common::store::StoreError;
use outpost_common::vision::decode::DecodeError;

use crate::error::ErrorKind;

/// A refused upload or a failed read. [`SampleError::kind`] gives the HTTP status (see [`ErrorKind`]):
///
/// | variant | code | status |
/// | --- | --- | --- |
/// | `BadSampleId` | `bad_sample_id` | 422 |
/// | `MetaTooLarge`, `ImageTooLarge`, `PixelsTooLarge` | `meta_too_large`, `image_too_large` | 413 |
/// | `UnknownMetaField`, `BadMeta` | `unknown_field`, `bad_meta` | 422 |
/// | `DeviceMismatch` | `device_mismatch` | 422 |
/// | `MetaHashMismatch`, `ImageHashMismatch` | `hash_mismatch` | 422 |
/// | `NotAnImage`, `BadImage` | `not_an_image`, `bad_image` | 422 |
/// | `ContentTypeMismatch`, `DimensionMismatch` | `content_type_mismatch`, `dimension_mismatch` | 422 |
/// | `NotFound` | `not_found` | 404 |
/// | `Store`, `Blob`, `Corrupt` | `store`, `blob`, `corrupt` | 500 |
///
/// A meta naming another device than the token's is `422` (the documented answer for an invalid meta), not `403`:
/// agents read `401`/`403` as "my token is wrong or revoked".
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("`{0}` is not a sample id (64 lowercase hex digits of the image's sha256)")]
    BadSampleId(String),
    #[error("meta is {size} bytes; at most {max}")]
    MetaTooLarge { size: usize, max: usize },
    #[error("image is {size} bytes; at most {max}")]
    ImageTooLarge { size: usize, max: usize },
    #[error("image is {width}×{height}; at most {max_width}×{max_height}")]
    PixelsTooLarge { width: u32, height: u32, max_width: u32, max_height: u32 },
    #[error("meta has an unknown field: {0}")]
    UnknownMetaField(String),
    #[error("meta is invalid: {0}")]
    BadMeta(String),
    #[error("meta names device `{meta}` but the upload is authenticated as `{authenticated}`")]
    DeviceMismatch { meta: String, authenticated: String },
    #[error("meta names sample {meta} but the URL names {path}")]
    MetaHashMismatch { path: Sha256Sum, meta: Sha256Sum },
    #[error("the image's sha256 is {actual}, not {path}")]
    ImageHashMismatch { path: Sha256Sum, actual: Sha256Sum },
    #[error("the image is not a JPEG or PNG")]
    NotAnImage,
    #[error("the image header is unreadable: {0}")]
    BadImage(DecodeError),
    #[error("meta says {meta} but the image is {actual}")]
    ContentTypeMismatch { meta: String, actual: &'static str },
    #[error("meta says {meta_width}×{meta_height} but the image is {width}×{height}")]
    DimensionMismatch { meta_width: u32, meta_height: u32, width: u32, height: u32 },
    #[error("no sample {0}")]
    NotFound(Sha256Sum),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("object store: {0}")]
    Blob(#[from] object_store::Error),
    #[error("stored record of sample {sample} is unreadable: {detail}")]
    Corrupt { sample: Sha256Sum, detail: String },
}

impl SampleError {
    pub fn kind(&self) -> ErrorKind {
        use SampleError::*;
        match self {
            MetaTooLarge { .. } | ImageTooLarge { .. } | PixelsTooLarge { .. } => ErrorKind::TooLarge,
            BadSampleId(_)
            | UnknownMetaField(_)
            | BadMeta(_)
            | DeviceMismatch { .. }
            | MetaHashMismatch { .. }
            | ImageHashMismatch { .. }
            | NotAnImage
            | BadImage(_)
            | ContentTypeMismatch { .. }
            | DimensionMismatch { .. } => ErrorKind::Invalid,
            NotFound(_) => ErrorKind::NotFound,
            Store(_) | Blob(_) | Corrupt { .. } => ErrorKind::Internal,
        }
    }

    /// A stable machine-readable name (JSON error bodies, logs, metric labels).
    pub fn code(&self) -> &'static str {
        use SampleError::*;
        match self {
            BadSampleId(_) => "bad_sample_id",
            MetaTooLarge { .. } => "meta_too_large",
            ImageTooLarge { .. } | PixelsTooLarge { .. } => "image_too_large",
            UnknownMetaField(_) => "unknown_field",
            BadMeta(_) => "bad_meta",
            DeviceMismatch { .. } => "device_mismatch",
            MetaHashMismatch { .. } | ImageHashMismatch { .. } => "hash_mismatch",
            NotAnImage => "not_an_image",
            BadImage(_) => "bad_image",
            ContentTypeMismatch { .. } => "content_type_mismatch",
            DimensionMismatch { .. } => "dimension_mismatch",
            NotFound(_) => "not_found",
            Store(_) => "store",
            Blob(_) => "blob",
            Corrupt { .. } => "corrupt",
        }
    }
}
