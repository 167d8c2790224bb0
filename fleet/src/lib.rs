//! The Outpost fleet service as a library: telemetry ingest and drift, sample intake and the annotators' queue,
//! dataset exports. The binaries (`outpost-fleet`, `outpost`) are thin layers over it.

pub mod annotate;
pub mod api;
pub mod broker;
pub mod config;
pub mod demo;
pub mod drift;
pub mod error;
pub mod export;
pub mod ingest;
pub mod ingest_workers;
pub mod load;
pub mod models;
pub mod mosquitto;
pub mod mqtt;
pub mod registry;
pub mod rollout;
pub mod samples;
pub mod serve;
pub mod webhook;
