//! The fleet and its agents as real processes: `outpost-fleet serve`, `outpost-agent run` (enrolled with
//! `outpost device enroll`), the embedded broker or Mosquitto, camera folders with known files.
//!
//! - `agents`: three agents on each broker: online, windows stored, frame counts equal to the files fed, SIGTERM
//!   shows offline; on the embedded broker one agent is also killed with SIGKILL while the fleet holds windows the
//!   agent never saw acknowledged, and its replayed outbox is stored once.
//! - `drift`: drifted frames after normal ones raise an alert for that version and site; normal frames do not.
//! - `https`: the API over TLS: enrollment, an agent's sample upload, plain HTTP refused, idle connections harmless.

mod agent;
mod agents;
mod drift;
mod fleet;
mod https;
