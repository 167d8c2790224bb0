//! The per-frame confidence summary: the number the fleet watches for drift and the agent uses to flag samples.

use serde::{Deserialize, Serialize};

use super::postprocess::Detection;

/// Scores inside this band count as uncertain detections (default 0.25 to 0.5, Roboflow's "close to threshold").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UncertaintyBand {
    pub low: f32,
    pub high: f32,
}

impl Default for UncertaintyBand {
    fn default() -> Self {
        UncertaintyBand { low: 0.25, high: 0.5 }
    }
}

impl UncertaintyBand {
    pub fn contains(&self, score: f32) -> bool {
        score >= self.low && score < self.high
    }
}

/// How confident the model was on one frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Confidence {
    Classify {
        /// Probability of the best class.
        top1: f32,
        /// Best minus second-best probability (small: the model hesitates between two classes).
        margin: f32,
        /// Shannon entropy of the probabilities divided by ln(classes): 0 is certain, 1 is uniform.
        entropy: f32,
    },
    Detect {
        /// Highest detection score, `None` when nothing was detected.
        max: Option<f32>,
        /// Mean detection score, `None` when nothing was detected.
        mean: Option<f32>,
        count: usize,
        /// Detections whose score lies inside the uncertainty band.
        uncertain: usize,
    },
}

impl Confidence {
    /// One number per frame, for histograms: top-1 for classifiers, the mean detection score for detectors
    /// (`None` for a frame without detections).
    pub fn headline(&self) -> Option<f32> {
        match *self {
            Confidence::Classify { top1, .. } => Some(top1),
            Confidence::Detect { mean, .. } => mean,
        }
    }
}

/// Summarises a classifier's probability vector.
pub fn of_probabilities(probs: &[f32]) -> Confidence {
    let (mut first, mut second) = (0f32, 0f32);
    for &p in probs {
        if p > first {
            second = first;
            first = p;
        } else if p > second {
            second = p;
        }
    }
    let h: f32 = probs.iter().filter(|&&p| p > 0.0).map(|&p| -p * p.ln()).sum();
    let entropy = if probs.len() > 1 { (h / (probs.len() as f32).ln()).clamp(0.0, 1.0) } else { 0.0 };
    Confidence::Classify { top1: first, margin: first - second, entropy }
}

/// Summarises a detector's output.
pub fn of_detections(dets: &[Detection], band: &UncertaintyBand) -> Confidence {
    let count = dets.len();
    let max = dets.iter().map(|d| d.score).reduce(f32::max);
    let mean = (count > 0).then(|| dets.iter().map(|d| d.score).sum::<f32>() / count as f32);
    let uncertain = dets.iter().filter(|d| band.contains(d.score)).count();
    Confidence::Detect { max, mean, count, uncertain }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(score: f32) -> Detection {
        Detection { class: 0, score, bbox: [0.0; 4] }
    }

    #[test]
    fn classifier_summary() {
        let Confidence::Classify { top1, margin, entropy } = of_probabilities(&[0.7, 0.2, 0.1]) else {
            panic!("classify")
        };
        assert!((top1 - 0.7).abs() < 1e-6 && (margin - 0.5).abs() < 1e-6);
        assert!(entropy > 0.0 && entropy < 1.0);
        let Confidence::Classify { entropy, margin, .. } = of_probabilities(&[0.25; 4]) else { panic!("classify") };
        assert!((entropy - 1.0).abs() < 1e-5 && margin == 0.0);
        let Confidence::Classify { entropy, .. } = of_probabilities(&[1.0, 0.0]) else { panic!("classify") };
        assert_eq!(entropy, 0.0);
    }

    #[test]
    fn detector_summary() {
        let band = UncertaintyBand::default();
        assert_eq!(
            of_detections(&[det(0.9), det(0.3), det(0.5)], &band),
            Confidence::Detect { max: Some(0.9), mean: Some((0.9 + 0.3 + 0.5) / 3.0), count: 3, uncertain: 1 }
        );
        let none = of_detections(&[], &band);
        assert_eq!(none, Confidence::Detect { max: None, mean: None, count: 0, uncertain: 0 });
        assert_eq!(none.headline(), None);
    }
}
