//! Turning an RGB frame into the model's input tensor.
//!
//! Design: one [`Preprocessor`] per model keeps its resizer and scratch buffers, and writes into a caller-owned
//! `Vec<f32>` that is reused frame after frame, so steady-state preprocessing allocates nothing. The letterbox
//! reproduces Ultralytics' `LetterBox` exactly (ratio, Python's round-half-even, the `±0.1` padding split, pad 114,
//! OpenCV `INTER_LINEAR`-style bilinear without antialiasing) because detection boxes are only comparable when the
//! pixels fed to the model are the same. Classifier resizing antialiases, as torchvision and PIL do.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::spec::{ColorOrder, InputSpec, Layout, ResizeMode};

/// Maps coordinates in the model's input back to the original frame: `original = (input - pad) / gain`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    pub gain_x: f32,
    pub gain_y: f32,
    pub pad_x: f32,
    pub pad_y: f32,
    pub width: u32,
    pub height: u32,
}

impl Transform {
    /// Maps an `[x1, y1, x2, y2]` box from model-input pixels to original pixels, clipped to the frame.
    pub fn to_original(&self, b: [f32; 4]) -> [f32; 4] {
        let w = self.width as f32;
        let h = self.height as f32;
        [
            ((b[0] - self.pad_x) / self.gain_x).clamp(0.0, w),
            ((b[1] - self.pad_y) / self.gain_y).clamp(0.0, h),
            ((b[2] - self.pad_x) / self.gain_x).clamp(0.0, w),
            ((b[3] - self.pad_y) / self.gain_y).clamp(0.0, h),
        ]
    }
}

/// Geometry of an Ultralytics letterbox for a `src_w`×`src_h` frame into `dst_w`×`dst_h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LetterboxGeometry {
    /// Size of the resized frame inside the padding.
    pub new_w: u32,
    pub new_h: u32,
    pub left: u32,
    pub top: u32,
}

/// Ultralytics' `LetterBox.__call__` (scaleup on, `auto` off, centred), in integers.
pub fn letterbox_geometry(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> LetterboxGeometry {
    let r = (f64::from(dst_h) / f64::from(src_h)).min(f64::from(dst_w) / f64::from(src_w));
    let new_w = ((f64::from(src_w) * r).round_ties_even() as u32).clamp(1, dst_w);
    let new_h = ((f64::from(src_h) * r).round_ties_even() as u32).clamp(1, dst_h);
    let dw = f64::from(dst_w - new_w) / 2.0;
    let dh = f64::from(dst_h - new_h) / 2.0;
    let left = (dw - 0.1).round_ties_even().max(0.0) as u32;
    let top = (dh - 0.1).round_ties_even().max(0.0) as u32;
    LetterboxGeometry { new_w, new_h, left, top }
}

/// Ultralytics' `scale_boxes` inverse for a letterboxed frame (it recomputes gain and pad from the sizes).
fn letterbox_transform(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Transform {
    let gain = (f64::from(dst_h) / f64::from(src_h)).min(f64::from(dst_w) / f64::from(src_w));
    let pad_x = ((f64::from(dst_w) - f64::from(src_w) * gain) / 2.0 - 0.1).round_ties_even();
    let pad_y = ((f64::from(dst_h) - f64::from(src_h) * gain) / 2.0 - 0.1).round_ties_even();
    Transform {
        gain_x: gain as f32,
        gain_y: gain as f32,
        pad_x: pad_x as f32,
        pad_y: pad_y as f32,
        width: src_w,
        height: src_h,
    }
}

/// Why a frame could not be preprocessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreprocessError {
    #[error("empty frame ({0}×{1})")]
    EmptyFrame(u32, u32),
    #[error("model input size {0}×{1} is not usable")]
    BadInputSize(u32, u32),
    #[error("resize failed: {0}")]
    Resize(String),
}

/// Fits frames to one model's input and writes its tensor.
pub struct Preprocessor {
    spec: InputSpec,
    resizer: Resizer,
    scratch: Vec<u8>,
    /// `lut[c][v]`: normalised value of 8-bit `v` for output channel `c`.
    lut: [[f32; 256]; 3],
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preprocessor").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl Preprocessor {
    pub fn new(spec: &InputSpec) -> Result<Self, PreprocessError> {
        if spec.width == 0 || spec.height == 0 || spec.width > 16384 || spec.height > 16384 {
            return Err(PreprocessError::BadInputSize(spec.width, spec.height));
        }
        let n = spec.normalization;
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            let std = if n.std[c] == 0.0 { 1.0 } else { n.std[c] };
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (v as f32 * n.scale - n.mean[c]) / std;
            }
        }
        Ok(Preprocessor { spec: spec.clone(), resizer: Resizer::new(), scratch: Vec::new(), lut })
    }

    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// Number of f32 values in one input tensor.
    pub fn tensor_len(&self) -> usize {
        3 * self.spec.width as usize * self.spec.height as usize
    }

    /// Writes the input tensor for `frame` into `out` (resized to [`Self::tensor_len`]) and returns how to map model
    /// coordinates back to the frame.
    pub fn run(&mut self, frame: &RgbImage, out: &mut Vec<f32>) -> Result<Transform, PreprocessError> {
        let (src_w, src_h) = frame.dimensions();
        if src_w == 0 || src_h == 0 {
            return Err(PreprocessError::EmptyFrame(src_w, src_h));
        }
        let (dst_w, dst_h) = (self.spec.width, self.spec.height);
        out.resize(self.tensor_len(), 0.0);
        match self.spec.resize {
            ResizeMode::Letterbox { pad } => {
                let g = letterbox_geometry(src_w, src_h, dst_w, dst_h);
                let alg = ResizeAlg::Interpolation(FilterType::Bilinear);
                let resized = self.resize(frame, None, g.new_w, g.new_h, alg)?;
                self.fill(out, pad);
                let pixels = if resized { &self.scratch[..] } else { frame.as_raw() };
                self.write(out, pixels, g.new_w, g.new_h, g.left, g.top);
                Ok(letterbox_transform(src_w, src_h, dst_w, dst_h))
            }
            ResizeMode::Stretch => {
                let alg = ResizeAlg::Convolution(FilterType::Bilinear);
                let resized = self.resize(frame, None, dst_w, dst_h, alg)?;
                let pixels = if resized { &self.scratch[..] } else { frame.as_raw() };
                self.write(out, pixels, dst_w, dst_h, 0, 0);
                Ok(Transform {
                    gain_x: dst_w as f32 / src_w as f32,
                    gain_y: dst_h as f32 / src_h as f32,
                    pad_x: 0.0,
                    pad_y: 0.0,
                    width: src_w,
                    height: src_h,
                })
            }
            ResizeMode::ResizeCrop => {
                // Scale so the frame covers the input, then take the centre: the crop is done in source pixels so
                // only the pixels that survive are resized.
                let scale = (f64::from(dst_w) / f64::from(src_w)).max(f64::from(dst_h) / f64::from(src_h));
                let crop_w = f64::from(dst_w) / scale;
                let crop_h = f64::from(dst_h) / scale;
                let left = (f64::from(src_w) - crop_w) / 2.0;
                let top = (f64::from(src_h) - crop_h) / 2.0;
                let alg = ResizeAlg::Convolution(FilterType::Bilinear);
                let crop = Some((left, top, crop_w, crop_h));
                let resized = self.resize(frame, crop, dst_w, dst_h, alg)?;
                let pixels = if resized { &self.scratch[..] } else { frame.as_raw() };
                self.write(out, pixels, dst_w, dst_h, 0, 0);
                Ok(Transform {
                    gain_x: scale as f32,
                    gain_y: scale as f32,
                    pad_x: (-left * scale) as f32,
                    pad_y: (-top * scale) as f32,
                    width: src_w,
                    height: src_h,
                })
            }
        }
    }

    /// Resizes into the scratch buffer; false when the frame already has the target size and no crop is asked.
    fn resize(
        &mut self,
        frame: &RgbImage,
        crop: Option<(f64, f64, f64, f64)>,
        w: u32,
        h: u32,
        alg: ResizeAlg,
    ) -> Result<bool, PreprocessError> {
        if crop.is_none() && frame.dimensions() == (w, h) {
            return Ok(false);
        }
        let err = |e: &dyn std::fmt::Display| PreprocessError::Resize(e.to_string());
        let src = ImageRef::new(frame.width(), frame.height(), frame.as_raw(), PixelType::U8x3).map_err(|e| err(&e))?;
        self.scratch.resize(w as usize * h as usize * 3, 0);
        let mut dst = Image::from_slice_u8(w, h, &mut self.scratch, PixelType::U8x3).map_err(|e| err(&e))?;
        let mut options = ResizeOptions::new().resize_alg(alg);
        if let Some((l, t, cw, ch)) = crop {
            options = options.crop(l, t, cw, ch);
        }
        self.resizer.resize(&src, &mut dst, &options).map_err(|e| err(&e))?;
        Ok(true)
    }

    /// Fills the whole tensor with the padding colour.
    fn fill(&self, out: &mut [f32], pad: u8) {
        let plane = self.spec.width as usize * self.spec.height as usize;
        match self.spec.layout {
            Layout::Nchw => {
                for (c, chunk) in out.chunks_exact_mut(plane).enumerate() {
                    chunk.fill(self.lut[c][usize::from(pad)]);
                }
            }
            Layout::Nhwc => {
                let value = [0, 1, 2].map(|c| self.lut[c][usize::from(pad)]);
                for px in out.chunks_exact_mut(3) {
                    px.copy_from_slice(&value);
                }
            }
        }
    }

    /// Writes `w`×`h` RGB pixels at (`left`, `top`) of the tensor, normalised and in the model's channel order.
    fn write(&self, out: &mut [f32], pixels: &[u8], w: u32, h: u32, left: u32, top: u32) {
        let (tw, th) = (self.spec.width as usize, self.spec.height as usize);
        let (w, h, left, top) = (w as usize, h as usize, left as usize, top as usize);
        let plane = tw * th;
        // Output channel c reads source channel src[c].
        let src = match self.spec.color {
            ColorOrder::Rgb => [0, 1, 2],
            ColorOrder::Bgr => [2, 1, 0],
        };
        let rows = pixels.chunks_exact(w * 3).take(h.min(th.saturating_sub(top)));
        match self.spec.layout {
            Layout::Nchw => {
                let (p0, rest) = out.split_at_mut(plane);
                let (p1, p2) = rest.split_at_mut(plane);
                let (l0, l1, l2) = (&self.lut[0], &self.lut[1], &self.lut[2]);
                for (y, row) in rows.enumerate() {
                    let start = (top + y) * tw + left;
                    let n = w.min(tw - left);
                    let (d0, d1, d2) =
                        (&mut p0[start..start + n], &mut p1[start..start + n], &mut p2[start..start + n]);
                    for (x, px) in row.chunks_exact(3).take(n).enumerate() {
                        d0[x] = l0[usize::from(px[src[0]])];
                        d1[x] = l1[usize::from(px[src[1]])];
                        d2[x] = l2[usize::from(px[src[2]])];
                    }
                }
            }
            Layout::Nhwc => {
                for (y, row) in rows.enumerate() {
                    let start = ((top + y) * tw + left) * 3;
                    let n = w.min(tw - left);
                    for (x, px) in row.chunks_exact(3).take(n).enumerate() {
                        for c in 0..3 {
                            out[start + x * 3 + c] = self.lut[c][usize::from(px[src[c]])];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::spec::Normalization;

    fn spec(w: u32, h: u32, resize: ResizeMode, layout: Layout, color: ColorOrder) -> InputSpec {
        InputSpec { width: w, height: h, layout, color, resize, normalization: Normalization::UNIT }
    }

    #[test]
    fn letterbox_geometry_matches_ultralytics() {
        // (src_w, src_h, dst) -> (new_w, new_h, left, top), worked out with Ultralytics' formulas.
        let cases = [
            ((1920, 1080, 640), (640, 360, 0, 140)),
            ((1280, 720, 320), (320, 180, 0, 70)),
            ((320, 320, 320), (320, 320, 0, 0)),
            ((512, 600, 640), (546, 640, 47, 0)),
            ((100, 33, 64), (64, 21, 0, 21)),
            ((33, 100, 64), (21, 64, 21, 0)),
            ((1, 1, 640), (640, 640, 0, 0)),
        ];
        for ((w, h, d), (nw, nh, l, t)) in cases {
            assert_eq!(letterbox_geometry(w, h, d, d), LetterboxGeometry { new_w: nw, new_h: nh, left: l, top: t });
        }
    }

    #[test]
    fn letterbox_pads_with_114_and_maps_back() {
        let frame = RgbImage::from_pixel(200, 100, image::Rgb([255, 0, 0]));
        let mut pre =
            Preprocessor::new(&spec(64, 64, ResizeMode::Letterbox { pad: 114 }, Layout::Nchw, ColorOrder::Rgb))
                .expect("spec");
        let mut out = Vec::new();
        let t = pre.run(&frame, &mut out).expect("runs");
        assert_eq!(out.len(), 3 * 64 * 64);
        let at = |c: usize, x: usize, y: usize| out[c * 64 * 64 + y * 64 + x];
        assert!((at(0, 0, 0) - 114.0 / 255.0).abs() < 1e-6, "top padding");
        assert!((at(0, 32, 32) - 1.0).abs() < 1e-6 && at(1, 32, 32) == 0.0, "red content");
        assert!((at(2, 63, 63) - 114.0 / 255.0).abs() < 1e-6, "bottom padding");
        // Content rows 16..48: a box covering the content maps back to the whole frame.
        assert_eq!(t.to_original([0.0, 16.0, 64.0, 48.0]), [0.0, 0.0, 200.0, 100.0]);
        // Boxes are clipped to the frame.
        assert_eq!(t.to_original([-10.0, 0.0, 70.0, 64.0]), [0.0, 0.0, 200.0, 100.0]);
    }

    #[test]
    fn bgr_nhwc_and_normalisation() {
        let frame = RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]));
        let mut s = spec(8, 8, ResizeMode::Stretch, Layout::Nhwc, ColorOrder::Bgr);
        s.normalization = Normalization { scale: 1.0, mean: [1.0, 2.0, 3.0], std: [2.0, 2.0, 2.0] };
        let mut pre = Preprocessor::new(&s).expect("spec");
        let mut out = Vec::new();
        pre.run(&frame, &mut out).expect("runs");
        assert_eq!(&out[..3], &[(30.0 - 1.0) / 2.0, (20.0 - 2.0) / 2.0, (10.0 - 3.0) / 2.0]);
    }

    #[test]
    fn resize_crop_keeps_the_centre() {
        // Left third black, middle white, right third black: the centre crop of a 3:1 frame is all white.
        let frame = RgbImage::from_fn(300, 100, |x, _| {
            if (100..200).contains(&x) { image::Rgb([255, 255, 255]) } else { image::Rgb([0, 0, 0]) }
        });
        let mut pre =
            Preprocessor::new(&spec(32, 32, ResizeMode::ResizeCrop, Layout::Nchw, ColorOrder::Rgb)).expect("spec");
        let mut out = Vec::new();
        let t = pre.run(&frame, &mut out).expect("runs");
        assert!(out[32 * 16 + 16] > 0.99 && out[32 * 16 + 2] > 0.9, "centre is white");
        let b = t.to_original([0.0, 0.0, 32.0, 32.0]);
        assert!((b[0] - 100.0).abs() < 0.01 && (b[2] - 200.0).abs() < 0.01, "{b:?}");
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(Preprocessor::new(&spec(0, 10, ResizeMode::Stretch, Layout::Nchw, ColorOrder::Rgb)).is_err());
        let mut pre = Preprocessor::new(&spec(8, 8, ResizeMode::Stretch, Layout::Nchw, ColorOrder::Rgb)).expect("ok");
        assert_eq!(pre.run(&RgbImage::new(0, 5), &mut Vec::new()), Err(PreprocessError::EmptyFrame(0, 5)));
    }
}
