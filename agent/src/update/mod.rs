//! Signed model updates on the device: fetching an artifact and keeping model versions on disk.
//!
//! Design: three parts, each usable on its own, joined by types that carry proof.
//! - [`download`] fetches an artifact over HTTP(S) into a staging folder: resumable, capped at the declared length,
//!   hashed while streaming. Its only success value is a [`VerifiedArtifact`], a file whose sha256 and length were
//!   checked against what the manifest declares; nothing else can be installed.
//! - [`slots`] is the on-disk model store: one complete slot per (name, version), written to a temporary folder and
//!   renamed into place, so a slot exists exactly when it is whole. Installing needs a [`VerifiedArtifact`] and the
//!   `VerifiedManifest` it matches.
//! - [`record`] is the pure state machine of the `active` record (active, previous, committed, trial starts, bad
//!   versions) that [`slots`] persists: trial, commit, revert, and the start-up decision that reverts a model which
//!   was started too often without being committed.
//!
//! What this module does not do (the caller's part): verify the manifest (`outpost_common::manifest`), load the
//! model, swap it in and judge its health. The slot store hands back paths and the stored envelope so the caller can
//! verify the manifest again at every start.

pub mod artifact;
pub mod download;
pub(crate) mod fsutil;
pub mod record;
pub mod slots;

pub use artifact::{ArtifactError, VerifiedArtifact};
pub use download::{DownloadConfig, DownloadError, DownloadRequest, Downloader, Progress};
pub use record::{ActiveRecord, Reverted, StartPlan, TransitionError};
pub use slots::{ModelEntry, Slot, SlotError, SlotInfo, SlotState, SlotStore, Start};
