//! Decoding camera frames (JPEG, PNG) into RGB pixels, with hard limits on size and memory.
//!
//! Design: the header is read first and checked against [`DecodeLimits`] before any pixel buffer is allocated, so a
//! 60000×60000 header in a 1 KB file costs nothing. Truncated files are errors, never half-grey frames: a JPEG must
//! end with its end-of-image marker.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

/// Bounds on what a frame may cost to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// Bytes the decoder may allocate for one frame.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    /// Up to 8K frames (8192×8192), 512 MiB of decoder memory.
    fn default() -> Self {
        DecodeLimits { max_width: 8192, max_height: 8192, max_alloc: 512 << 20 }
    }
}

/// Why a frame could not be decoded. Each kind is counted separately by the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty file")]
    Empty,
    #[error("not a JPEG or PNG image")]
    NotAnImage,
    #[error("{width}×{height} exceeds the limit of {max_width}×{max_height}")]
    TooLarge { width: u32, height: u32, max_width: u32, max_height: u32 },
    #[error("decoding would need more than {max_alloc} bytes")]
    TooMuchMemory { max_alloc: u64 },
    #[error("truncated image")]
    Truncated,
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

impl DecodeError {
    /// A short stable name for metrics and logs (`outpost_frames_rejected_total{reason=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::NotAnImage => "not_an_image",
            DecodeError::TooLarge { .. } | DecodeError::TooMuchMemory { .. } => "too_large",
            DecodeError::Truncated => "truncated",
            DecodeError::Corrupt(_) => "corrupt",
        }
    }
}

/// The container format of an encoded frame, when it is one Outpost decodes.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => Some(f),
        _ => None,
    }
}

/// Reads the width and height from the header without decoding pixels.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), DecodeError> {
    let format = check_container(bytes)?;
    let reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.into_dimensions().map_err(|e| map_error(e, &DecodeLimits::default()))
}

fn check_container(bytes: &[u8]) -> Result<ImageFormat, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = sniff(bytes).ok_or(DecodeError::NotAnImage)?;
    if format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        return Err(DecodeError::Truncated);
    }
    Ok(format)
}

/// A complete JPEG ends with the EOI marker `FF D9`; some cameras pad a few bytes after it.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

fn map_error(e: image::ImageError, limits: &DecodeLimits) -> DecodeError {
    use image::ImageError;
    use image::error::LimitErrorKind;
    match e {
        ImageError::Limits(l) => match l.kind() {
            LimitErrorKind::DimensionError => DecodeError::TooLarge {
                width: 0,
                height: 0,
                max_width: limits.max_width,
                max_height: limits.max_height,
            },
            _ => DecodeError::TooMuchMemory { max_alloc: limits.max_alloc },
        },
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => DecodeError::Truncated,
        ImageError::Unsupported(_) => DecodeError::NotAnImage,
        other => {
            let msg = other.to_string();
            if msg.contains("EOF") || msg.contains("end of file") || msg.contains("No more bytes") {
                DecodeError::Truncated
            } else {
                DecodeError::Corrupt(msg)
            }
        }
    }
}

/// Decodes a JPEG or PNG into 8-bit RGB. Grey images are expanded, alpha is dropped.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    let format = check_container(bytes)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // Check the declared size ourselves first, so the error can name it.
    if let Ok((width, height)) = ImageReader::with_format(Cursor::new(bytes), format).into_dimensions()
        && (width > limits.max_width || height > limits.max_height)
    {
        return Err(DecodeError::TooLarge {
            width,
            height,
            max_width: limits.max_width,
            max_height: limits.max_height,
        });
    }
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    let img = reader.decode().map_err(|e| map_error(e, limits))?;
    Ok(match img {
        image::DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).expect("encode");
        out.into_inner()
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::GrayAlphaImage::from_pixel(width, height, image::LumaA([200, 10]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).expect("encode");
        out.into_inner()
    }

    /// A real JPEG whose frame header (SOF0) is patched to declare `width`×`height`: a hostile file that costs
    /// nothing to send and would cost gigabytes to decode.
    fn giant_jpeg_header(width: u16, height: u16) -> Vec<u8> {
        let mut b = jpeg(16, 16);
        let sof = b.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline JPEG has SOF0");
        b[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        b[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        b
    }

    fn check(bytes: &[u8], limits: DecodeLimits, expected: Result<(u32, u32), &str>) {
        match (decode(bytes, &limits), expected) {
            (Ok(img), Ok(dims)) => assert_eq!(img.dimensions(), dims),
            (Err(e), Err(kind)) => assert_eq!(e.kind(), kind, "{e}"),
            (got, want) => panic!("got {:?}, expected {want:?}", got.map(|i| i.dimensions())),
        }
    }

    #[test]
    fn decodes_and_rejects() {
        let ok = jpeg(64, 48);
        check(&ok, DecodeLimits::default(), Ok((64, 48)));
        check(&png(10, 7), DecodeLimits::default(), Ok((10, 7)));
        check(&[], DecodeLimits::default(), Err("empty"));
        check(b"hello, not an image at all", DecodeLimits::default(), Err("not_an_image"));
        check(&ok[..ok.len() / 2], DecodeLimits::default(), Err("truncated"));
        let p = png(32, 32);
        check(&p[..p.len() - 20], DecodeLimits::default(), Err("truncated"));
        check(&giant_jpeg_header(60000, 60000), DecodeLimits::default(), Err("too_large"));
        check(&ok, DecodeLimits { max_width: 32, ..Default::default() }, Err("too_large"));
        check(&ok, DecodeLimits { max_alloc: 1000, ..Default::default() }, Err("too_large"));
        let mut garbage = ok.clone();
        for b in garbage.iter_mut().skip(200).take(400) {
            *b = 0x5A;
        }
        // Scrambled entropy data decodes to noise or fails; it must never panic.
        let _ = decode(&garbage, &DecodeLimits::default());
    }

    #[test]
    fn giant_header_error_names_the_size() {
        let err = decode(&giant_jpeg_header(60000, 60000), &DecodeLimits::default()).expect_err("rejected");
        assert_eq!(err.to_string(), "60000×60000 exceeds the limit of 8192×8192");
    }

    #[test]
    fn dimensions_without_decoding() {
        assert_eq!(dimensions(&giant_jpeg_header(60000, 40000)), Ok((60000, 40000)));
        assert_eq!(dimensions(&jpeg(33, 21)), Ok((33, 21)));
    }
}
