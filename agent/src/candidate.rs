//! A new model version, loaded beside the serving one and checked before it may serve. The checks live in
//! `outpost_common::vision::candidate`, shared with the fleet's model registry, which runs the same ones before it
//! stores a pushed version.

pub use outpost_common::vision::candidate::{CandidateError, load, warm_up};
