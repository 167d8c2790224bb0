//! The Outpost fleet service as a library: telemetry ingest and drift, sample intake and the annotators' queue,
//! dataset exports. The binaries (`outpost-fleet`, `outpost`) are thin layers over it.

pub mod annotate;
pub mod error;
pub mod export;
pub mod samples;
