//! Reading model outputs: detections (YOLO and end-to-end layouts) and class scores.
//!
//! Design: pure functions over `&[f32]` and a shape, so they are tested without ONNX Runtime. Detection decoding
//! follows Ultralytics' `non_max_suppression`: a candidate's score is its best class score, candidates above the
//! threshold are sorted, class-aware NMS drops a box whose IoU with a kept box of the same class is above the IoU
//! threshold, and at most `max_det` remain. A malformed output is an error, never a panic.

use serde::{Deserialize, Serialize};

use super::preprocess::Transform;
use super::spec::OutputLayout;

/// Thresholds for detection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectParams {
    /// Minimum score kept (Ultralytics `conf`).
    pub conf: f32,
    /// IoU above which NMS suppresses the lower-scoring box of the same class (Ultralytics `iou`).
    pub iou: f32,
    pub max_det: usize,
    /// Candidates considered by NMS, best first (Ultralytics `max_nms`).
    pub max_nms: usize,
    /// NMS across classes instead of per class.
    pub agnostic: bool,
}

impl Default for DetectParams {
    fn default() -> Self {
        DetectParams { conf: 0.25, iou: 0.7, max_det: 300, max_nms: 30000, agnostic: false }
    }
}

/// One detected object, in original-frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub class: usize,
    pub score: f32,
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
}

/// One class score of a classifier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    pub class: usize,
    pub score: f32,
}

/// Why an output could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostprocessError {
    #[error("output shape {got:?} does not match the expected {expected}")]
    Shape { got: Vec<i64>, expected: String },
    #[error("output holds {got} values, shape says {want}")]
    Length { got: usize, want: usize },
    #[error("the model produced {0} non-finite values (NaN or infinity)")]
    NonFinite(usize),
}

fn dims(shape: &[i64]) -> Vec<usize> {
    shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect()
}

fn check_len(data: &[f32], want: usize) -> Result<(), PostprocessError> {
    if data.len() == want { Ok(()) } else { Err(PostprocessError::Length { got: data.len(), want }) }
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// Greedy NMS over candidates sorted best first; returns the kept ones.
fn nms(mut cands: Vec<Detection>, params: &DetectParams) -> Vec<Detection> {
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    cands.truncate(params.max_nms);
    let mut kept: Vec<Detection> = Vec::new();
    for c in cands {
        if kept.len() >= params.max_det {
            break;
        }
        let suppressed =
            kept.iter().any(|k| (params.agnostic || k.class == c.class) && iou(k.bbox, c.bbox) > params.iou);
        if !suppressed {
            kept.push(c);
        }
    }
    kept
}

/// Decodes the YOLOv8 / YOLO11 layout `[1, 4 + classes, candidates]` (boxes in model-input pixels as cx, cy, w, h).
pub fn decode_yolo(
    data: &[f32],
    shape: &[i64],
    params: &DetectParams,
    transform: &Transform,
) -> Result<Vec<Detection>, PostprocessError> {
    let d = dims(shape);
    let (rows, n) = match d.as_slice() {
        [1, rows, n] if *rows > 4 => (*rows, *n),
        _ => {
            return Err(PostprocessError::Shape { got: shape.to_vec(), expected: "[1, 4+classes, N]".into() });
        }
    };
    check_len(data, rows * n)?;
    let classes = rows - 4;
    let row = |r: usize| &data[r * n..(r + 1) * n];
    let (cx, cy, w, h) = (row(0), row(1), row(2), row(3));
    let mut best = vec![(0usize, f32::NEG_INFINITY); n];
    for c in 0..classes {
        for (b, &s) in best.iter_mut().zip(row(4 + c)) {
            if s > b.1 {
                *b = (c, s);
            }
        }
    }
    let mut non_finite = 0;
    let mut cands = Vec::new();
    for (i, &(class, score)) in best.iter().enumerate() {
        if !score.is_finite() || !cx[i].is_finite() || !cy[i].is_finite() || !w[i].is_finite() || !h[i].is_finite() {
            non_finite += 1;
            continue;
        }
        if score > params.conf {
            let (hw, hh) = (w[i] / 2.0, h[i] / 2.0);
            let bbox = [cx[i] - hw, cy[i] - hh, cx[i] + hw, cy[i] + hh];
            cands.push(Detection { class, score, bbox });
        }
    }
    if non_finite > 0 {
        return Err(PostprocessError::NonFinite(non_finite));
    }
    let mut kept = nms(cands, params);
    for det in &mut kept {
        det.bbox = transform.to_original(det.bbox);
    }
    Ok(kept)
}

/// Decodes the end-to-end layout `[1, max_det, 6]`: x1, y1, x2, y2, score, class, already deduplicated.
pub fn decode_end2end(
    data: &[f32],
    shape: &[i64],
    params: &DetectParams,
    transform: &Transform,
) -> Result<Vec<Detection>, PostprocessError> {
    let d = dims(shape);
    let n = match d.as_slice() {
        [1, n, 6] => *n,
        _ => {
            return Err(PostprocessError::Shape { got: shape.to_vec(), expected: "[1, N, 6]".into() });
        }
    };
    check_len(data, n * 6)?;
    let mut non_finite = 0;
    let mut out = Vec::new();
    for r in data.chunks_exact(6) {
        if r.iter().any(|v| !v.is_finite()) {
            non_finite += 1;
            continue;
        }
        if r[4] > params.conf && r[5] >= 0.0 {
            out.push(Detection {
                class: r[5] as usize,
                score: r[4],
                bbox: transform.to_original([r[0], r[1], r[2], r[3]]),
            });
        }
    }
    if non_finite > 0 {
        return Err(PostprocessError::NonFinite(non_finite));
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out.truncate(params.max_det);
    Ok(out)
}

/// Turns a classifier output `[1, classes]` into probabilities. Values that already are a probability distribution
/// (all in 0..1, summing to 1) are kept, whatever the model declared; anything else is treated as logits and goes
/// through a softmax. `declared` (the spec's belief) only decides the tie for a single-class output.
pub fn class_probabilities(data: &[f32], shape: &[i64], declared: bool) -> Result<Vec<f32>, PostprocessError> {
    let d = dims(shape);
    let classes = match d.as_slice() {
        [1, c] => *c,
        _ => {
            return Err(PostprocessError::Shape { got: shape.to_vec(), expected: "[1, classes]".into() });
        }
    };
    check_len(data, classes)?;
    let non_finite = data.iter().filter(|v| !v.is_finite()).count();
    if non_finite > 0 {
        return Err(PostprocessError::NonFinite(non_finite));
    }
    let sum: f32 = data.iter().sum();
    let looks_like_probs = data.iter().all(|v| (0.0..=1.0).contains(v)) && (sum - 1.0).abs() < 1e-3;
    if looks_like_probs && (classes > 1 || declared) {
        return Ok(data.to_vec());
    }
    let max = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = data.iter().map(|v| (v - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    Ok(exp.into_iter().map(|e| e / total).collect())
}

/// The `k` most probable classes, best first.
pub fn top_k(probs: &[f32], k: usize) -> Vec<ClassScore> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|class| ClassScore { class, score: probs[class] }).collect()
}

/// Dispatches on the layout. For classifiers, returns the full probability vector in `probs`.
pub fn decode(
    layout: OutputLayout,
    data: &[f32],
    shape: &[i64],
    params: &DetectParams,
    transform: &Transform,
) -> Result<Decoded, PostprocessError> {
    Ok(match layout {
        OutputLayout::YoloDetect { .. } => Decoded::Detections(decode_yolo(data, shape, params, transform)?),
        OutputLayout::EndToEnd { .. } => Decoded::Detections(decode_end2end(data, shape, params, transform)?),
        OutputLayout::Classify { probabilities, .. } => {
            Decoded::Probabilities(class_probabilities(data, shape, probabilities)?)
        }
    })
}

/// A decoded output.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Detections(Vec<Detection>),
    Probabilities(Vec<f32>),
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDENTITY: Transform = Transform { gain_x: 1.0, gain_y: 1.0, pad_x: 0.0, pad_y: 0.0, width: 100, height: 100 };

    /// Builds a `[1, 4+classes, n]` tensor from (cx, cy, w, h, scores) candidates.
    fn yolo(cands: &[([f32; 4], &[f32])]) -> (Vec<f32>, Vec<i64>) {
        let classes = cands[0].1.len();
        let n = cands.len();
        let mut data = vec![0.0; (4 + classes) * n];
        for (i, (b, scores)) in cands.iter().enumerate() {
            for r in 0..4 {
                data[r * n + i] = b[r];
            }
            for (c, s) in scores.iter().enumerate() {
                data[(4 + c) * n + i] = *s;
            }
        }
        (data, vec![1, (4 + classes) as i64, n as i64])
    }

    fn check(cands: &[([f32; 4], &[f32])], params: DetectParams, expected: &[(usize, f32)]) {
        let (data, shape) = yolo(cands);
        let got = decode_yolo(&data, &shape, &params, &IDENTITY).expect("decodes");
        let got: Vec<(usize, f32)> = got.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn nms_is_class_aware_and_thresholded() {
        let p = DetectParams::default();
        // Two overlapping boxes of the same class: the weaker one goes.
        check(&[([50., 50., 20., 20.], &[0.9, 0.0]), ([51., 50., 20., 20.], &[0.8, 0.0])], p, &[(0, 0.9)]);
        // The same boxes in different classes both stay, unless NMS is agnostic.
        check(&[([50., 50., 20., 20.], &[0.9, 0.0]), ([51., 50., 20., 20.], &[0.0, 0.8])], p, &[(0, 0.9), (1, 0.8)]);
        check(
            &[([50., 50., 20., 20.], &[0.9, 0.0]), ([51., 50., 20., 20.], &[0.0, 0.8])],
            DetectParams { agnostic: true, ..p },
            &[(0, 0.9)],
        );
        // Below or at the threshold is dropped; disjoint boxes are kept, best first.
        check(
            &[([10., 10., 5., 5.], &[0.25]), ([80., 80., 5., 5.], &[0.3]), ([30., 30., 5., 5.], &[0.7])],
            p,
            &[(0, 0.7), (0, 0.3)],
        );
        check(
            &[([10., 10., 5., 5.], &[0.9]), ([80., 80., 5., 5.], &[0.8])],
            DetectParams { max_det: 1, ..p },
            &[(0, 0.9)],
        );
    }

    #[test]
    fn malformed_outputs_are_errors() {
        let t = &IDENTITY;
        let p = &DetectParams::default();
        assert!(matches!(decode_yolo(&[0.0; 8], &[1, 4, 2], p, t), Err(PostprocessError::Shape { .. })));
        assert!(matches!(decode_yolo(&[0.0; 9], &[1, 5, 2], p, t), Err(PostprocessError::Length { .. })));
        assert!(matches!(decode_yolo(&[0.0; 10], &[1, -5, 2], p, t), Err(PostprocessError::Shape { .. })));
        let (mut data, shape) = yolo(&[([50., 50., 20., 20.], &[0.9])]);
        data[0] = f32::NAN;
        assert_eq!(decode_yolo(&data, &shape, p, t), Err(PostprocessError::NonFinite(1)));
        assert!(matches!(decode_end2end(&[0.0; 7], &[1, 1, 7], p, t), Err(PostprocessError::Shape { .. })));
        assert_eq!(class_probabilities(&[f32::NAN, 1.0], &[1, 2], false), Err(PostprocessError::NonFinite(1)));
    }

    #[test]
    fn end_to_end_layout() {
        let data = [
            10., 10., 20., 20., 0.9, 3., //
            30., 30., 40., 40., 0.2, 1., //
            50., 50., 60., 60., 0.6, 0., //
        ];
        let t = Transform { gain_x: 0.5, gain_y: 0.5, pad_x: 0.0, pad_y: 10.0, width: 200, height: 200 };
        let got = decode_end2end(&data, &[1, 3, 6], &DetectParams::default(), &t).expect("decodes");
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].class, got[0].bbox), (3, [20.0, 0.0, 40.0, 20.0]));
        assert_eq!(got[1].class, 0);
    }

    #[test]
    fn classification() {
        let probs = class_probabilities(&[1.0, 2.0, 3.0], &[1, 3], false).expect("softmax");
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-6 && probs[2] > probs[1]);
        // Probabilities are kept as they are, declared or not ...
        assert_eq!(class_probabilities(&[0.2, 0.8], &[1, 2], true).expect("ok"), [0.2, 0.8]);
        assert_eq!(class_probabilities(&[0.2, 0.8], &[1, 2], false).expect("ok"), [0.2, 0.8]);
        // ... and logits get a softmax even when the model claimed probabilities.
        let p = class_probabilities(&[-3.0, 5.0], &[1, 2], true).expect("ok");
        assert!(p[1] > 0.99);
        let top = top_k(&[0.1, 0.5, 0.4], 2);
        assert_eq!(top, [ClassScore { class: 1, score: 0.5 }, ClassScore { class: 2, score: 0.4 }]);
    }

    #[test]
    fn iou_of_boxes() {
        assert_eq!(iou([0., 0., 10., 10.], [0., 0., 10., 10.]), 1.0);
        assert_eq!(iou([0., 0., 10., 10.], [20., 20., 30., 30.]), 0.0);
        assert!((iou([0., 0., 10., 10.], [5., 0., 15., 10.]) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(iou([0., 0., 0., 0.], [0., 0., 0., 0.]), 0.0);
    }
}
