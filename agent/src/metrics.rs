//! The agent's counters, and the local HTTP endpoints that expose them: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers) and `/readyz` (models loaded and sources started).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::link::LinkHandle;
use crate::samples::SampleStats;

/// Per-camera counters.
#[derive(Debug, Default)]
pub struct CameraCounters {
    pub processed: AtomicU64,
    pub dropped: AtomicU64,
    pub flagged: AtomicU64,
    pub source_errors: AtomicU64,
    /// Files whose frames were processed but whose acknowledgement waits for the telemetry counting them to be
    /// durable (see `acks.rs`); a gauge.
    pub awaiting_ack: AtomicU64,
    /// Frames that could not be used, by error kind (`truncated`, `too_large`, `not_an_image`, ...).
    pub rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl CameraCounters {
    /// Counts a rejected frame; returns true the first time this kind is seen (log it once).
    pub fn reject(&self, kind: &'static str) -> bool {
        let mut r = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        let count = r.entry(kind).or_insert(0);
        *count += 1;
        *count == 1
    }
}

/// Reads one counter of a camera.
type CounterRead = fn(&CameraCounters) -> u64;

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    pub cameras: BTreeMap<String, Arc<CameraCounters>>,
    pub samples: Arc<SampleStats>,
    pub link: LinkHandle,
    pub ready: AtomicBool,
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        let per_camera: [(&str, &str, CounterRead); 4] = [
            ("outpost_frames_processed_total", "Frames inferred.", |c| c.processed.load(Ordering::Relaxed)),
            ("outpost_frames_dropped_total", "Live frames dropped because inference fell behind.", |c| {
                c.dropped.load(Ordering::Relaxed)
            }),
            ("outpost_frames_flagged_total", "Frames queued as samples for annotation.", |c| {
                c.flagged.load(Ordering::Relaxed)
            }),
            ("outpost_source_errors_total", "Failures reading from a camera.", |c| {
                c.source_errors.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, read) in per_camera {
            counter(&mut out, name, help);
            for (camera, c) in &self.cameras {
                let _ = writeln!(out, "{name}{{camera=\"{}\"}} {}", label(camera), read(c));
            }
        }
        let name = "outpost_frames_awaiting_ack";
        let _ = writeln!(
            out,
            "# HELP {name} Files processed whose acknowledgement waits for their window to be durable.\n# TYPE {name} gauge"
        );
        for (camera, c) in &self.cameras {
            let _ = writeln!(out, "{name}{{camera=\"{}\"}} {}", label(camera), c.awaiting_ack.load(Ordering::Relaxed));
        }
        counter(&mut out, "outpost_frames_rejected_total", "Frames that could not be used, by reason.");
        for (camera, c) in &self.cameras {
            for (kind, n) in c.rejected.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let _ = writeln!(
                    out,
                    "outpost_frames_rejected_total{{camera=\"{}\",reason=\"{kind}\"}} {n}",
                    label(camera)
                );
            }
        }
        let s = &self.samples;
        for (name, help, v) in [
            ("outpost_samples_uploaded_total", "Samples the fleet accepted.", s.uploaded.load(Ordering::Relaxed)),
            (
                "outpost_samples_dropped_total",
                "Samples dropped because the queue was full.",
                s.dropped.load(Ordering::Relaxed),
            ),
            ("outpost_samples_rejected_total", "Samples the fleet refused.", s.rejected.load(Ordering::Relaxed)),
            (
                "outpost_sample_upload_retries_total",
                "Sample upload attempts that failed and were retried.",
                s.retries.load(Ordering::Relaxed),
            ),
        ] {
            counter(&mut out, name, help);
            let _ = writeln!(out, "{name} {v}");
        }
        let l = self.link.stats();
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(&mut out, "outpost_mqtt_connected", "1 while connected to the broker.", u64::from(l.connected));
        gauge(&mut out, "outpost_outbox_messages", "Messages waiting in the durable outbox.", l.outbox_messages);
        gauge(&mut out, "outpost_outbox_bytes", "Bytes waiting in the durable outbox.", l.outbox_bytes);
        gauge(&mut out, "outpost_outbox_durable_seq", "The seq of the last message made durable.", l.durable_seq);
        counter(&mut out, "outpost_outbox_dropped_total", "Messages dropped because the outbox was full.");
        let _ = writeln!(out, "outpost_outbox_dropped_total {}", l.dropped);
        counter(&mut out, "outpost_mqtt_connect_failures_total", "Broker connection attempts that failed.");
        let _ = writeln!(out, "outpost_mqtt_connect_failures_total {}", l.connect_failures);
        let _ = writeln!(
            out,
            "# HELP outpost_mqtt_connect_error Why the last connection attempt failed (unreachable, tls, \
             not_authorized, refused, closed); absent once connected.\n# TYPE outpost_mqtt_connect_error gauge"
        );
        if let Some(failure) = l.connect_error {
            let _ = writeln!(out, "outpost_mqtt_connect_error{{reason=\"{}\"}} 1", failure.as_str());
        }
        out
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}

async fn ready(State(m): State<Arc<Metrics>>) -> StatusCode {
    if m.ready.load(Ordering::Acquire) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

/// The local operations endpoints.
pub fn router(m: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(m)
}
