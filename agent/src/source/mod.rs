//! Frame sources: where the agent's images come from.
//!
//! Every camera is one [`FrameSource`]: a folder that an industrial camera fills over FTP ([`dir`]), an IP camera's
//! snapshot URL or MJPEG stream ([`http`], [`mjpeg`]), a USB camera ([`v4l2`], behind the `v4l2` feature), or a folder
//! replayed at a fixed rate for demos and benchmarks ([`replay`]). A [`SourceConfig`] (one `kind = "..."` table in the
//! agent's TOML) is validated once by [`SourceConfig::build`] into a boxed source.
//!
//! Design: sources hand out the encoded bytes exactly as they arrived ([`Frame::bytes`]); nothing here decodes or
//! re-encodes, so a flagged sample is uploaded byte for byte. A source never panics on input: anything that goes
//! wrong while running is an `Err` from [`FrameSource::next`], which the caller counts before asking again; the
//! source applies its own retry backoff inside the next call. Configuration mistakes surface once, from `build`.

mod backoff;
mod config;
pub mod dir;
mod dir_scan;
mod dir_state;
mod error;
pub mod http;
pub mod mjpeg;
pub mod multipart;
pub mod replay;
#[cfg(feature = "v4l2")]
pub mod v4l2;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;

pub use backoff::Backoff;
pub use config::{After, DirConfig, HttpConfig, HttpMode, ReplayConfig, SourceConfig, SourceContext, V4l2Config};
pub use error::SourceError;

/// A boxed future, so that [`FrameSource`] stays object-safe (`Box<dyn FrameSource>`) without `async_trait`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One image as the camera delivered it.
///
/// Not `Clone`: a frame from a folder carries the [`Ack`] that disposes of its file, and that must happen once.
/// Clone [`Frame::bytes`] (a cheap reference count) to keep the image for a sample upload.
pub struct Frame {
    /// The encoded image (JPEG or PNG, or whatever the file held), never re-encoded.
    pub bytes: Bytes,
    /// When the source obtained it: the file's modification time for folders, the response time for HTTP.
    pub captured_at: SystemTime,
    /// Where it came from: a file name, a URL (without credentials) or a device path.
    pub origin: String,
    /// Per-source sequence number, from 0, in the order frames were handed out.
    pub seq: u64,
    ack: Option<Ack>,
}

impl Frame {
    /// A frame that needs no acknowledgement (live sources, replay, tests).
    pub fn new(bytes: Bytes, captured_at: SystemTime, origin: String, seq: u64) -> Self {
        Self { bytes, captured_at, origin, seq, ack: None }
    }

    pub(crate) fn with_ack(mut self, ack: Ack) -> Self {
        self.ack = Some(ack);
        self
    }

    /// Takes the acknowledgement out of the frame, for a pipeline that sends bytes and ack down different paths.
    pub fn take_ack(&mut self) -> Option<Ack> {
        self.ack.take()
    }

    /// Tells the source the pipeline has finished with this frame (see [`Ack::done`]). A no-op for sources that
    /// need no acknowledgement.
    pub fn done(mut self, outcome: Outcome) {
        if let Some(ack) = self.ack.take() {
            ack.done(outcome);
        }
    }

    /// Whether this frame must be acknowledged with [`Frame::done`] or [`Ack::done`].
    pub fn needs_ack(&self) -> bool {
        self.ack.is_some()
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("bytes", &self.bytes.len())
            .field("captured_at", &self.captured_at)
            .field("origin", &self.origin)
            .field("seq", &self.seq)
            .field("ack", &self.ack.is_some())
            .finish()
    }
}

/// What the pipeline made of a frame. Both outcomes count as processed: the file is recorded and disposed of per
/// the folder's `after` setting, so a bad file is not retried forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Inference ran and its result was recorded.
    Processed,
    /// The frame was unusable (not an image, truncated, too large) and was counted as such.
    Rejected,
}

/// The acknowledgement of a frame whose input must be disposed of after processing (files of a [`dir`] source).
///
/// [`Ack::done`] records the file as processed and keeps, moves or deletes it; the source does that work on its own
/// task the next time it is polled (and in [`FrameSource::close`]). Dropping an `Ack` without calling `done` gives
/// the file back: it is handed out again later (after a restart at the latest), so no input is lost.
pub struct Ack {
    key: AckKey,
    tx: mpsc::UnboundedSender<AckMsg>,
    sent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AckKey {
    pub(crate) name: String,
    pub(crate) fingerprint: dir_scan::Fingerprint,
}

#[derive(Debug)]
pub(crate) enum AckMsg {
    Done(AckKey, Outcome),
    Released(AckKey),
}

impl Ack {
    pub(crate) fn new(key: AckKey, tx: mpsc::UnboundedSender<AckMsg>) -> Self {
        Self { key, tx, sent: false }
    }

    /// The pipeline has finished with the frame.
    pub fn done(mut self, outcome: Outcome) {
        self.sent = true;
        // A closed channel means the source is gone; the file is then picked up again after a restart.
        let _ = self.tx.send(AckMsg::Done(self.key.clone(), outcome));
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.tx.send(AckMsg::Released(self.key.clone()));
        }
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ack").field("name", &self.key.name).finish()
    }
}

/// A camera.
///
/// `next` is cancel-safe: dropping its future (a `select!` on shutdown) loses no frame that a later call would have
/// returned, except for a live frame that was still being received.
pub trait FrameSource: Send + fmt::Debug {
    /// The next frame; `Ok(None)` when the source has ended for good (a replay without `loop`). An `Err` is one
    /// failure (a refused connection, an oversized frame): count it and call again; the source waits out its own
    /// backoff before retrying.
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Frame>, SourceError>>;

    /// Live sources (HTTP, MJPEG, V4L2) move on without the pipeline: when inference falls behind, the oldest
    /// waiting frame is dropped and counted. File sources (dir, replay) wait for the pipeline and never drop.
    fn is_live(&self) -> bool;

    /// What this source reads from, for logs (a folder, a URL without credentials, a device).
    fn describe(&self) -> String;

    /// Finishes pending work (acknowledgements received so far, state files) before shutdown.
    fn close(&mut self) -> BoxFuture<'_, Result<(), SourceError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Installs ring as the process-wide rustls provider, which reqwest needs before any client is built. Idempotent.
pub fn install_crypto_provider() {
    // An Err means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
