//! The checks an upload passes before anything is stored; pure (hashing and header reading only).
//!
//! Order: cheap refusals first (the id's syntax, the size caps), then the meta, then the hashes, then the image
//! header. No pixel is decoded: `dimensions` reads the header only.

use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::{MAX_SAMPLE_META_BYTES, SampleMeta};
use outpost_common::vision::decode::{self, DecodeError};
use serde::{Deserialize, Serialize};

use super::SampleError;

/// Bounds on what an upload may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeLimits {
    /// Largest image part, in bytes.
    pub max_image_bytes: usize,
    /// Largest image, in pixels, as declared by its header.
    pub max_width: u32,
    pub max_height: u32,
}

impl Default for IntakeLimits {
    /// 20 MiB and 8192×8192: a full-resolution camera frame fits, a decompression bomb does not.
    fn default() -> Self {
        IntakeLimits { max_image_bytes: 20 << 20, max_width: 8192, max_height: 8192 }
    }
}

/// One `PUT /api/v1/samples/{sha256}` as the HTTP layer received it.
#[derive(Debug, Clone, Copy)]
pub struct Upload<'a> {
    /// The `{sha256}` of the URL, as written.
    pub sample: &'a str,
    /// The device the bearer token belongs to.
    pub device: &'a str,
    /// The `meta` part's bytes.
    pub meta: &'a [u8],
    /// The `image` part's bytes.
    pub image: &'a [u8],
}

/// An upload that passed every check.
#[derive(Debug)]
pub(crate) struct Checked {
    pub sample: Sha256Sum,
    pub meta: SampleMeta,
}

/// Checks an upload against the protocol and the limits.
pub(crate) fn check(upload: &Upload<'_>, limits: &IntakeLimits) -> Result<Checked, SampleError> {
    let sample: Sha256Sum = upload.sample.parse().map_err(|_| SampleError::BadSampleId(short(upload.sample)))?;
    if upload.meta.len() > MAX_SAMPLE_META_BYTES {
        return Err(SampleError::MetaTooLarge { size: upload.meta.len(), max: MAX_SAMPLE_META_BYTES });
    }
    if upload.image.len() > limits.max_image_bytes {
        return Err(SampleError::ImageTooLarge { size: upload.image.len(), max: limits.max_image_bytes });
    }
    let meta = SampleMeta::from_json(upload.meta).map_err(|detail| {
        if detail.starts_with("unknown field") {
            SampleError::UnknownMetaField(detail)
        } else {
            SampleError::BadMeta(detail)
        }
    })?;
    if meta.device != upload.device {
        return Err(SampleError::DeviceMismatch { meta: meta.device, authenticated: upload.device.to_string() });
    }
    if meta.sample != sample {
        return Err(SampleError::MetaHashMismatch { path: sample, meta: meta.sample });
    }
    let actual = Sha256Sum::of(upload.image);
    if actual != sample {
        return Err(SampleError::ImageHashMismatch { path: sample, actual });
    }
    check_image(upload.image, &meta, limits)?;
    Ok(Checked { sample, meta })
}

fn check_image(image: &[u8], meta: &SampleMeta, limits: &IntakeLimits) -> Result<(), SampleError> {
    let format = decode::sniff(image).ok_or(SampleError::NotAnImage)?;
    let actual = format.to_mime_type();
    if actual != meta.content_type {
        return Err(SampleError::ContentTypeMismatch { meta: meta.content_type.clone(), actual });
    }
    let (width, height) = decode::dimensions(image).map_err(|e| match e {
        DecodeError::NotAnImage | DecodeError::Empty => SampleError::NotAnImage,
        other => SampleError::BadImage(other),
    })?;
    if width > limits.max_width || height > limits.max_height {
        return Err(SampleError::PixelsTooLarge {
            width,
            height,
            max_width: limits.max_width,
            max_height: limits.max_height,
        });
    }
    if width == 0 || height == 0 || (width, height) != (meta.width, meta.height) {
        return Err(SampleError::DimensionMismatch { meta_width: meta.width, meta_height: meta.height, width, height });
    }
    Ok(())
}

/// The start of an untrusted string, for an error message.
fn short(s: &str) -> String {
    s.chars().take(80).collect::<String>().escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cuts_and_escapes() {
        assert_eq!(short("ab\ncd"), "ab\\ncd");
        assert_eq!(short(&"x".repeat(200)).len(), 80);
    }

    #[test]
    fn syntax_and_caps_are_checked_before_parsing() {
        let limits = IntakeLimits { max_image_bytes: 4, ..IntakeLimits::default() };
        let check_kind = |sample: &str, meta: &[u8], image: &[u8], code: &str| {
            let upload = Upload { sample, device: "d", meta, image };
            let err = check(&upload, &limits).expect_err("refused");
            assert_eq!(err.code(), code, "{err}");
        };
        let good = "a".repeat(64);
        check_kind("ABC", b"{}", b"", "bad_sample_id");
        check_kind(&"A".repeat(64), b"{}", b"", "bad_sample_id");
        check_kind(&good, &vec![b' '; MAX_SAMPLE_META_BYTES + 1], b"", "meta_too_large");
        check_kind(&good, b"{}", b"12345", "image_too_large");
        check_kind(&good, b"not json", b"", "bad_meta");
        check_kind(&good, b"", b"", "bad_meta");
    }
}
