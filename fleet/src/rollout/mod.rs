//! Staged rollouts of model versions, gated on model quality, with automatic abort and rollback.
//!
//! The pure core: `plan` (what an operator asks for), `select` (canary order spread across sites), `stats` (the
//! quality test), `gates` (a stage's verdict from its figures) and `machine` (the rollout as a state machine).
//! The edge: `store` (persistence), `telemetry` (the windows a tick judges, cached between ticks), `engine` (fed by
//! the ingest, ticking gates) and `runner` (its loop: ticks, then the commands sent).

pub mod gates;
pub mod machine;
pub mod plan;
pub mod select;
pub mod stats;

pub use gates::{ControlKind, GateReport, InstallCounts, Telemetry, Verdict, WindowPoint};
pub use machine::{Changes, DeviceRollout, Header, Member, NotNow, Phase, Report, Rollout, State};
pub use plan::{Gates, RolloutPlan, StagePlan, StageSize, Target};

pub mod engine;
mod runner;
pub mod store;
pub mod telemetry;

pub use engine::{Action, Engine, RolloutConfig, RolloutError, StoredVersion, TickStats, VersionSource};
