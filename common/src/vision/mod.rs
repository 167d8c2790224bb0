//! The vision library both agent and fleet use to run a model on an image:
//! [`decode`] → [`preprocess`] → [`engine`] → [`postprocess`] → [`confidence`], wired together by [`pipeline`].
//!
//! Everything but [`engine`] is pure and tested without ONNX Runtime.

pub mod candidate;
pub mod confidence;
pub mod decode;
pub mod engine;
pub mod pipeline;
pub mod postprocess;
pub mod preprocess;
mod pyliteral;
pub mod spec;

pub use pipeline::{FrameResult, Vision, VisionError, VisionOptions};
