//! Staged rollouts end to end: the real `outpost-fleet serve` (embedded broker, model registry, rollout engine)
//! and real `outpost-agent run` processes enrolled with `outpost device enroll`, each replaying the defect photos
//! at a steady rate and trusting the test release key. One fleet per scenario; scenarios run one at a time.
//!
//! - `quality`: a version that installs fine but is less confident (defect-lowconf) is stopped at the canary stage
//!   by the quality gate; the canary goes back to v1; the other devices never receive v2.
//! - `stages`: a good version goes through `1, 50%, 100%` to ten agents with no dropped frame; completed.
//! - `install`: a version that fails the agents' warm-up (defect-nan) is aborted by the install gate once
//!   `min_executed` devices have finished.
//! - `restart`: the fleet killed with SIGKILL mid-stage resumes at the same stage and completes; no device is sent
//!   two targets.
//! - `offline`: devices stopped during an abort come back: the canary goes back to v1, the control device never
//!   installs the aborted version.

#[path = "../processes/agent.rs"]
#[allow(dead_code)]
mod agent;
#[path = "../processes/fleet.rs"]
mod fleet;
mod install;
mod offline;
mod quality;
mod restart;
mod rig;
mod stages;

/// Scenarios run one at a time: each starts a fleet and several agents on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
