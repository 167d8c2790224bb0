//! What can go wrong in ingest: errors (the store failed; the caller should not acknowledge the message) and drop
//! reasons (the message was refused; it is counted and never retried).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_common::store::StoreError;
use serde::Serialize;

/// Ingest could not do its work. A message that met an error was not (completely) stored: redelivering it is safe,
/// every write is idempotent or de-duplicated.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a stored {what} record is unreadable: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("gave up updating a {0} record after repeated concurrent changes")]
    Contention(&'static str),
    #[error("ingest configuration: {0}")]
    Config(String),
}

impl IngestError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            IngestError::Store(_) => "store",
            IngestError::Corrupt { .. } => "corrupt",
            IngestError::Contention(_) => "contention",
            IngestError::Config(_) => "config",
        }
    }
}

/// Why a message was dropped. Each reason has a counter ([`super::Ingest::drop_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Not an `outpost/v1/devices/{id}/{channel}` topic.
    BadTopic,
    /// A topic agents do not publish on (`commands`).
    WrongChannel,
    /// The device is not enrolled, or was revoked: the directory has no key for it.
    UnknownDevice,
    /// The MAC does not match the payload under the key of the device in the topic, or the envelope names another
    /// device: another device (or anyone) publishing on this device's topic.
    Forged,
    /// Over the size cap (sealed or inner).
    TooLarge,
    /// Not a well-formed envelope or message (bad JSON, unknown fields, failed checks).
    Malformed,
    /// A schema this build does not speak.
    UnsupportedSchema,
    /// `(device, seq)` was already stored.
    Duplicate,
    /// `seq` is below the device's de-duplication window: too old to tell, so refused.
    Stale,
    /// A status older (by its own `at`) than the newest one applied, that is not a last will: a replay.
    StaleStatus,
    /// A window that ends further in the future than the allowed clock skew.
    FutureWindow,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::BadTopic,
        DropReason::WrongChannel,
        DropReason::UnknownDevice,
        DropReason::Forged,
        DropReason::TooLarge,
        DropReason::Malformed,
        DropReason::UnsupportedSchema,
        DropReason::Duplicate,
        DropReason::Stale,
        DropReason::StaleStatus,
        DropReason::FutureWindow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BadTopic => "bad_topic",
            DropReason::WrongChannel => "wrong_channel",
            DropReason::UnknownDevice => "unknown_device",
            DropReason::Forged => "forged",
            DropReason::TooLarge => "too_large",
            DropReason::Malformed => "malformed",
            DropReason::UnsupportedSchema => "unsupported_schema",
            DropReason::Duplicate => "duplicate",
            DropReason::Stale => "stale",
            DropReason::StaleStatus => "stale_status",
            DropReason::FutureWindow => "future_window",
        }
    }

    /// Reasons that point at a misbehaving or hostile sender rather than ordinary redelivery.
    pub fn is_suspicious(self) -> bool {
        matches!(self, DropReason::UnknownDevice | DropReason::Forged | DropReason::BadTopic | DropReason::WrongChannel)
    }

    fn index(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One counter per drop reason, since the process started (a Prometheus counter's life).
#[derive(Debug, Default)]
pub(crate) struct DropCounters([AtomicU64; DropReason::ALL.len()]);

impl DropCounters {
    /// Counts one drop and returns the new count.
    pub(crate) fn add(&self, reason: DropReason) -> u64 {
        self.0.get(reason.index()).map_or(0, |c| c.fetch_add(1, Ordering::Relaxed).saturating_add(1))
    }

    pub(crate) fn get(&self, reason: DropReason) -> u64 {
        self.0.get(reason.index()).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}
