//! An IP camera's MJPEG stream (`multipart/x-mixed-replace`), read continuously and reconnected when it breaks.
//!
//! `Design:` the bytes go through the pure [`MultipartParser`]; this file only connects, feeds it and reconnects.
//! A stream that ends, errors or stays silent longer than `timeout_ms` is dropped; the next call reconnects after an
//! exponential backoff that the first frame of a new connection resets. Oversized parts come out as
//! [`SourceError::TooLarge`] without ending the stream.

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::Client;
use tokio::time::Instant;

use super::config::HttpConfig;
use super::http::{Endpoint, client};
use super::multipart::{Event, MultipartParser, boundary_from_content_type};
use super::{Backoff, BoxFuture, Frame, FrameSource, SourceError};

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

struct Connection {
    stream: ByteStream,
    parser: MultipartParser,
}

/// See the module documentation.
pub struct MjpegSource {
    endpoint: Endpoint,
    client: Client,
    connection: Option<Connection>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    seq: u64,
}

impl std::fmt::Debug for MjpegSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MjpegSource")
            .field("url", &self.endpoint.origin)
            .field("connected", &self.connection.is_some())
            .field("seq", &self.seq)
            .finish()
    }
}

impl MjpegSource {
    pub fn new(c: &HttpConfig) -> Result<Self, SourceError> {
        let endpoint = Endpoint::new(c)?;
        // No total timeout: the response never ends. Silence is caught per read instead.
        let client = client("http", None, endpoint.timeout)?;
        let backoff = Backoff::new(Duration::from_millis(250).min(endpoint.retry_max), endpoint.retry_max);
        Ok(Self { endpoint, client, connection: None, retry_at: None, backoff, seq: 0 })
    }

    async fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            let Some(conn) = self.connection.as_mut() else {
                if let Some(at) = self.retry_at {
                    tokio::time::sleep_until(at).await;
                }
                match connect(&self.endpoint, &self.client).await {
                    Ok(conn) => {
                        self.retry_at = None;
                        self.connection = Some(conn);
                        continue;
                    }
                    Err(e) => return Err(self.broken(e)),
                }
            };
            match conn.parser.next_event() {
                Some(Event::Part(bytes)) => {
                    self.backoff.succeed();
                    let frame = Frame::new(bytes, SystemTime::now(), self.endpoint.origin.clone(), self.seq);
                    self.seq += 1;
                    return Ok(Some(frame));
                }
                Some(Event::Oversized) => {
                    let limit = self.endpoint.max_frame_bytes;
                    return Err(SourceError::TooLarge { origin: self.endpoint.origin.clone(), limit });
                }
                Some(Event::Malformed) => {
                    return Err(self.stream_error("a part's headers were too long; skipped"));
                }
                None => {}
            }
            match tokio::time::timeout(self.endpoint.timeout, conn.stream.next()).await {
                Ok(Some(Ok(chunk))) => conn.parser.push(&chunk),
                Ok(Some(Err(e))) => {
                    let err = SourceError::http(&self.endpoint.origin, &e);
                    return Err(self.broken(err));
                }
                Ok(None) => {
                    let err = self.stream_error("the stream ended");
                    return Err(self.broken(err));
                }
                Err(_) => {
                    let err = self.stream_error(format!("no data for {} ms", self.endpoint.timeout.as_millis()));
                    return Err(self.broken(err));
                }
            }
        }
    }

    /// Drops the connection and schedules the reconnection.
    fn broken(&mut self, err: SourceError) -> SourceError {
        self.connection = None;
        let wait = self.backoff.fail();
        self.retry_at = Some(Instant::now() + wait);
        tracing::debug!(url = %self.endpoint.origin, error = %err, retry_in_ms = wait.as_millis() as u64,
            "MJPEG stream lost");
        err
    }

    fn stream_error(&self, reason: impl Into<String>) -> SourceError {
        SourceError::Stream { url: self.endpoint.origin.clone(), reason: reason.into() }
    }
}

impl FrameSource for MjpegSource {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Frame>, SourceError>> {
        Box::pin(self.next_frame())
    }

    fn is_live(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("http mjpeg {}", self.endpoint.origin)
    }
}

/// Opens the stream and checks that it is multipart with a usable boundary. A free function: the source holds the
/// (non-`Sync`) body stream, so borrowing the whole source across these awaits would make `next` non-`Send`.
async fn connect(endpoint: &Endpoint, client: &Client) -> Result<Connection, SourceError> {
    let origin = &endpoint.origin;
    let stream_error = |reason: String| SourceError::Stream { url: origin.clone(), reason };
    let send = endpoint.get(client).send();
    let response = match tokio::time::timeout(endpoint.timeout, send).await {
        Ok(r) => r.map_err(|e| SourceError::http(origin, &e))?,
        Err(_) => return Err(stream_error("no response headers in time".into())),
    };
    let status = response.status();
    if !status.is_success() {
        return Err(SourceError::Status { url: origin.clone(), status: status.as_u16() });
    }
    let content_type =
        response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(boundary) = boundary_from_content_type(content_type) else {
        return Err(stream_error(format!(
            "content type {content_type:?} is not multipart with a boundary (a snapshot URL? use mode = \"snapshot\")"
        )));
    };
    let Some(parser) = MultipartParser::new(&boundary, endpoint.max_frame_bytes) else {
        return Err(stream_error(format!("unusable boundary {boundary:?}")));
    };
    tracing::debug!(url = %origin, boundary, "MJPEG stream connected");
    Ok(Connection { stream: Box::pin(response.bytes_stream()), parser })
}
