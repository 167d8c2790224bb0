//! An IP camera's snapshot URL, polled at an interval; and what the HTTP sources share (client, URL checks).

use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use futures_util::StreamExt;
use reqwest::{Client, RequestBuilder, Url};
use tokio::time::Instant;

use super::config::{HttpConfig, ms};
use super::{Backoff, BoxFuture, Frame, FrameSource, SourceError, install_crypto_provider};

/// The parts of an HTTP camera's configuration both modes use, validated.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub url: Url,
    /// The URL without credentials, for frames' origin and logs.
    pub origin: String,
    pub auth: Option<(String, Option<String>)>,
    pub timeout: Duration,
    pub retry_max: Duration,
    pub max_frame_bytes: usize,
}

impl Endpoint {
    pub fn new(c: &HttpConfig) -> Result<Self, SourceError> {
        let err = |r: String| SourceError::config("http", r);
        let mut url = Url::parse(&c.url).map_err(|e| err(format!("url {:?}: {e}", c.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err(format!("url {:?} must be http or https", c.url)));
        }
        // Credentials may come in the URL (`http://user:pass@cam/`) or as fields; they never reach logs.
        let mut auth = c.username.clone().map(|u| (u, c.password.clone()));
        if auth.is_none() && !url.username().is_empty() {
            auth = Some((url.username().to_owned(), url.password().map(str::to_owned)));
        }
        if c.password.is_some() && c.username.is_none() {
            return Err(err("password needs username".into()));
        }
        // Both setters fail only for URLs that cannot have credentials, which http(s) URLs can.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if c.timeout_ms == 0 || c.max_frame_bytes == 0 {
            return Err(err("timeout_ms and max_frame_bytes must be at least 1".into()));
        }
        Ok(Self {
            origin: url.to_string(),
            url,
            auth,
            timeout: ms(c.timeout_ms),
            retry_max: ms(c.retry_max_ms.max(1)),
            max_frame_bytes: c.max_frame_bytes,
        })
    }

    pub fn get(&self, client: &Client) -> RequestBuilder {
        let req = client.get(self.url.clone());
        match &self.auth {
            Some((user, pass)) => req.basic_auth(user, pass.as_deref()),
            None => req,
        }
    }
}

/// A reqwest client for cameras. Installs the ring crypto provider first (reqwest panics without one).
pub(crate) fn client(
    kind: &'static str,
    total_timeout: Option<Duration>,
    connect_timeout: Duration,
) -> Result<Client, SourceError> {
    install_crypto_provider();
    let mut builder = Client::builder()
        .connect_timeout(connect_timeout)
        .user_agent(concat!("outpost-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(t) = total_timeout {
        builder = builder.timeout(t);
    }
    builder.build().map_err(|e| SourceError::config(kind, format!("HTTP client: {e}")))
}

/// A snapshot URL polled every `interval_ms`.
///
/// `Design:` requests follow a deadline schedule (one every interval, missed slots are skipped, never bunched). A
/// failure makes the next attempt wait an exponential backoff from the interval up to `retry_max_ms`; the first
/// success resets it. The body is read as a stream and abandoned as soon as it passes the cap.
#[derive(Debug)]
pub struct SnapshotSource {
    endpoint: Endpoint,
    client: Client,
    interval: Duration,
    next_at: Option<Instant>,
    backoff: Backoff,
    seq: u64,
}

impl SnapshotSource {
    pub fn new(c: &HttpConfig) -> Result<Self, SourceError> {
        let endpoint = Endpoint::new(c)?;
        if c.interval_ms == 0 {
            return Err(SourceError::config("http", "interval_ms must be at least 1"));
        }
        let client = client("http", Some(endpoint.timeout), endpoint.timeout)?;
        let interval = ms(c.interval_ms);
        let backoff = Backoff::new(interval.min(endpoint.retry_max), endpoint.retry_max);
        Ok(Self { endpoint, client, interval, next_at: None, backoff, seq: 0 })
    }

    async fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if let Some(at) = self.next_at {
            tokio::time::sleep_until(at).await;
        }
        let started = Instant::now();
        let slot = self.next_at.unwrap_or(started);
        let mut next = slot + self.interval;
        if next <= started {
            next = started + self.interval;
        }
        self.next_at = Some(next);
        match self.fetch().await {
            Ok(frame) => {
                self.backoff.succeed();
                Ok(Some(frame))
            }
            Err(e @ SourceError::TooLarge { .. }) => Err(e),
            Err(e) => {
                let wait = self.backoff.fail();
                self.next_at = Some(Instant::now() + wait);
                tracing::debug!(url = %self.endpoint.origin, error = %e, retry_in_ms = wait.as_millis() as u64,
                    "snapshot failed");
                Err(e)
            }
        }
    }

    async fn fetch(&mut self) -> Result<Frame, SourceError> {
        let origin = &self.endpoint.origin;
        let limit = self.endpoint.max_frame_bytes;
        let response = self.endpoint.get(&self.client).send().await.map_err(|e| SourceError::http(origin, &e))?;
        let captured_at = SystemTime::now();
        let status = response.status();
        if !status.is_success() {
            return Err(SourceError::Status { url: origin.clone(), status: status.as_u16() });
        }
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(SourceError::TooLarge { origin: origin.clone(), limit });
        }
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| SourceError::http(origin, &e))?;
            if body.len() + chunk.len() > limit {
                return Err(SourceError::TooLarge { origin: origin.clone(), limit });
            }
            body.extend_from_slice(&chunk);
        }
        let frame = Frame::new(body.freeze(), captured_at, origin.clone(), self.seq);
        self.seq += 1;
        Ok(frame)
    }
}

impl FrameSource for SnapshotSource {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Frame>, SourceError>> {
        Box::pin(self.next_frame())
    }

    fn is_live(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("http snapshot {}", self.endpoint.origin)
    }
}
