//! A USB camera through Video4Linux2 (the `v4l2` cargo feature), read in its own Motion-JPEG encoding.
//!
//! `Design:` capture is blocking (`VIDIOC_DQBUF`), so it runs on its own OS thread that hands frames to the async side
//! over a small channel; a full channel drops the new frame (the pipeline already treats this source as live). The
//! device is opened on the first `next`, and again after any failure with backoff, so a camera that is unplugged or
//! not yet present is an error to count, not a failed start. Uses the pure-Rust `linuxvideo` crate (no bindgen or
//! libclang at build time, which the `v4l` crate needs), so the feature cross-compiles like the rest.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use linuxvideo::Device;
use linuxvideo::Fract;
use linuxvideo::format::{PixFormat, PixelFormat};
use linuxvideo::stream::ReadBufferView;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::V4l2Config;
use super::{Backoff, BoxFuture, Frame, FrameSource, SourceError};

type Captured = Result<Bytes, SourceError>;

/// See the module documentation.
#[derive(Debug)]
pub struct V4l2Source {
    config: V4l2Config,
    device: String,
    frames: Option<mpsc::Receiver<Captured>>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    seq: u64,
}

impl V4l2Source {
    pub fn new(c: &V4l2Config) -> Result<Self, SourceError> {
        c.validate()?;
        let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let device = c.device.display().to_string();
        Ok(Self { config: c.clone(), device, frames: None, retry_at: None, backoff, seq: 0 })
    }

    async fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.frames.is_none() {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
            }
            let (tx, rx) = mpsc::channel(2);
            let config = self.config.clone();
            std::thread::Builder::new()
                .name("outpost-v4l2".into())
                .spawn(move || capture(&config, &tx))
                .map_err(|e| SourceError::Device { device: self.device.clone(), reason: format!("thread: {e}") })?;
            self.frames = Some(rx);
        }
        let received = match self.frames.as_mut() {
            Some(rx) => rx.recv().await,
            None => None,
        };
        match received {
            Some(Ok(bytes)) => {
                self.backoff.succeed();
                let frame = Frame::new(bytes, SystemTime::now(), self.device.clone(), self.seq);
                self.seq += 1;
                Ok(Some(frame))
            }
            Some(Err(e)) => Err(self.failed(e)),
            None => {
                let e = SourceError::Device { device: self.device.clone(), reason: "capture stopped".into() };
                Err(self.failed(e))
            }
        }
    }

    fn failed(&mut self, err: SourceError) -> SourceError {
        self.frames = None;
        self.retry_at = Some(Instant::now() + self.backoff.fail());
        err
    }
}

impl FrameSource for V4l2Source {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Frame>, SourceError>> {
        Box::pin(self.next_frame())
    }

    fn is_live(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("v4l2 {}", self.device)
    }
}

/// The capture thread: opens and configures the device, then forwards frames until the receiver is gone or the
/// device fails (the failure is sent as the last message).
fn capture(c: &V4l2Config, tx: &mpsc::Sender<Captured>) {
    if let Err(e) = capture_loop(c, tx) {
        let _ = tx.blocking_send(Err(e));
    }
}

fn capture_loop(c: &V4l2Config, tx: &mpsc::Sender<Captured>) -> Result<(), SourceError> {
    let path: PathBuf = c.device.clone();
    let err = |what: &str, e: std::io::Error| SourceError::Device {
        device: path.display().to_string(),
        reason: format!("{what}: {e}"),
    };
    let wanted = if c.fourcc == "JPEG" { PixelFormat::JPEG } else { PixelFormat::MJPG };
    let device = Device::open(&path).map_err(|e| err("cannot open", e))?;
    let capture =
        device.video_capture(PixFormat::new(c.width, c.height, wanted)).map_err(|e| err("cannot set the format", e))?;
    let got = capture.format();
    let (width, height, chosen) = (got.width(), got.height(), got.pixel_format());
    if chosen != wanted {
        return Err(SourceError::Device {
            device: path.display().to_string(),
            reason: format!("does not offer {} (it chose {chosen})", c.fourcc),
        });
    }
    if (width, height) != (c.width, c.height) {
        tracing::warn!(device = %path.display(), width, height,
            "camera chose another frame size than configured");
    }
    if let Err(e) = capture.set_frame_interval(Fract::new(1, c.fps)) {
        tracing::warn!(device = %path.display(), error = %e, "camera refused the frame rate");
    }
    let mut stream = capture.into_stream().map_err(|e| err("cannot start streaming", e))?;
    tracing::info!(device = %path.display(), width, height, "camera streaming");
    loop {
        let frame =
            stream.dequeue(|buf: ReadBufferView<'_>| Ok((!buf.is_error()).then(|| Bytes::copy_from_slice(&buf))));
        match frame.map_err(|e| err("capture failed", e))? {
            Some(bytes) if !bytes.is_empty() => match tx.try_send(Ok(bytes)) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            },
            _ => {}
        }
        if tx.is_closed() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_device_is_a_clear_error_not_a_panic() {
        let c = V4l2Config {
            device: PathBuf::from("/dev/outpost-no-such-camera"),
            width: 640,
            height: 480,
            fps: 15,
            fourcc: "MJPG".into(),
        };
        let mut source = V4l2Source::new(&c).expect("valid config");
        assert!(source.is_live());
        let err = source.next().await.expect_err("no device");
        assert_eq!(err.kind(), "device");
        let msg = err.to_string();
        assert!(msg.contains("/dev/outpost-no-such-camera") && msg.contains("cannot open"), "{msg}");
    }
}
