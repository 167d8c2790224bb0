//! The HTTP API, `/api/v1`: bearer-token authentication, one role check per endpoint, JSON errors with stable
//! codes, body limits. Handlers are thin: they check the caller and call the library.

pub mod annotate;
pub mod devices;
pub mod models;
pub mod openapi;
pub mod rollouts;
pub mod telemetry;
pub mod tls;

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::registry::{Principal, Registry, Role};

/// Largest request body outside sample uploads.
pub const MAX_BODY: usize = 1024 * 1024;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub registry: Registry,
    pub ingest: Arc<crate::ingest::Ingest>,
    pub samples: crate::samples::Samples,
    pub queue: Arc<crate::annotate::Queue>,
    pub models: crate::models::Models,
    /// Whether a model version is in a rollout (it cannot be deleted then).
    pub models_in_use: Arc<dyn crate::models::VersionsInUse>,
    /// How devices reach the fleet, written into enrollment configs.
    pub public: PublicUrls,
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// Where Mosquitto's password and ACL files are kept current, with the fleet's own user: `(dir, user, password)`.
    pub mosquitto: Option<(std::path::PathBuf, String, String)>,
    pub rollouts: crate::rollout::Engine,
}

impl AppState {
    /// Rewrites Mosquitto's files after the registry changed (when the fleet keeps them).
    pub fn refresh_mosquitto(&self) -> Result<(), ApiError> {
        let Some((dir, user, password)) = &self.mosquitto else { return Ok(()) };
        let users = self.registry.mosquitto_users()?;
        crate::mosquitto::write_files(dir, &users, (user, password))
            .map(|_| ())
            .map_err(|e| ApiError::new(500, "mosquitto_files", e))
    }
}

/// The addresses a device is told to use.
#[derive(Debug, Clone)]
pub struct PublicUrls {
    pub mqtt: String,
    pub http: String,
}

/// An API error: an HTTP status, a stable code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: message.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response()
    }
}

impl From<crate::ingest::IngestError> for ApiError {
    fn from(e: crate::ingest::IngestError) -> ApiError {
        ApiError::new(500, "ingest", e)
    }
}

impl From<crate::registry::RegistryError> for ApiError {
    fn from(e: crate::registry::RegistryError) -> ApiError {
        let code = match e.status() {
            404 => "not_found",
            409 => "conflict",
            422 => "invalid",
            _ => "internal",
        };
        ApiError::new(e.status(), code, e)
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// Refuses the request (403) unless the caller holds `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.0.may(role) {
            Ok(())
        } else {
            Err(ApiError::new(403, "forbidden", format!("this needs the {role:?} role").to_lowercase()))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(401, "unauthenticated", "an `Authorization: Bearer <token>` header is needed")
            })?;
        state
            .registry
            .authenticate(token.trim())
            .map(Caller)
            .ok_or_else(|| ApiError::new(401, "unauthenticated", "unknown or revoked token"))
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> axum::Router {
    let max_upload = state.samples.limits().max_image_bytes.saturating_add(64 * 1024);
    axum::Router::new()
        .nest(
            "/api/v1",
            devices::routes()
                .merge(telemetry::routes())
                .merge(annotate::routes(max_upload))
                .merge(models::routes(state.models.limits().max_body()))
                .merge(rollouts::routes())
                .route("/openapi.json", get(openapi::document)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/readyz", get(ready))
        .fallback(|| async { ApiError::new(404, "not_found", "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn ready(State(state): State<AppState>) -> StatusCode {
    if state.ready.load(std::sync::atomic::Ordering::Acquire) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// JSON bodies: a malformed body or a wrong content type is a 4xx with a code, never a 5xx.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<JsonBody<T>, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError::new(e.status().as_u16(), "bad_request", e.body_text())),
        }
    }
}

/// `/metrics`, Prometheus text format: ingest counters and devices known/online. Local scrapers only (no token), as
/// for the agent; keep the API's listener on loopback or behind a proxy that hides it.
async fn metrics(State(state): State<AppState>) -> Response {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP outpost_fleet_messages_accepted_total Device messages stored.");
    let _ = writeln!(out, "# TYPE outpost_fleet_messages_accepted_total counter");
    let _ = writeln!(out, "outpost_fleet_messages_accepted_total {}", state.ingest.accepted_count());
    let _ = writeln!(out, "# HELP outpost_fleet_messages_dropped_total Device messages dropped, by reason.");
    let _ = writeln!(out, "# TYPE outpost_fleet_messages_dropped_total counter");
    for (reason, n) in state.ingest.drop_counts() {
        let _ = writeln!(out, "outpost_fleet_messages_dropped_total{{reason=\"{}\"}} {n}", reason.as_str());
    }
    let ticks = state.rollouts.tick_stats();
    let _ =
        writeln!(out, "# HELP outpost_fleet_rollout_ticks_total Rollout engine ticks (gates, timeouts, due commands).");
    let _ = writeln!(out, "# TYPE outpost_fleet_rollout_ticks_total counter");
    let _ = writeln!(out, "outpost_fleet_rollout_ticks_total {}", ticks.count);
    let _ = writeln!(out, "# HELP outpost_fleet_rollout_tick_seconds_total Wall time spent in rollout ticks.");
    let _ = writeln!(out, "# TYPE outpost_fleet_rollout_tick_seconds_total counter");
    let _ = writeln!(out, "outpost_fleet_rollout_tick_seconds_total {:.6}", ticks.total.as_secs_f64());
    let _ = writeln!(out, "# HELP outpost_fleet_rollout_tick_seconds_max The longest rollout tick since start.");
    let _ = writeln!(out, "# TYPE outpost_fleet_rollout_tick_seconds_max gauge");
    let _ = writeln!(out, "outpost_fleet_rollout_tick_seconds_max {:.6}", ticks.max.as_secs_f64());
    let _ = writeln!(out, "# HELP outpost_fleet_rollout_windows_read_total Windows rollout ticks read from the store.");
    let _ = writeln!(out, "# TYPE outpost_fleet_rollout_windows_read_total counter");
    let _ = writeln!(out, "outpost_fleet_rollout_windows_read_total {}", ticks.windows.read);
    let _ = writeln!(out, "# HELP outpost_fleet_rollout_windows_judged_total Window points rollout ticks judged.");
    let _ = writeln!(out, "# TYPE outpost_fleet_rollout_windows_judged_total counter");
    let _ = writeln!(out, "outpost_fleet_rollout_windows_judged_total {}", ticks.windows.served);
    let ingest = state.ingest.clone();
    let devices = tokio::task::spawn_blocking(move || ingest.devices(None, 100_000)).await;
    if let Ok(Ok(devices)) = devices {
        let online = devices.iter().filter(|d| d.online).count();
        let _ = writeln!(out, "# HELP outpost_fleet_devices Devices that have reported, and those online now.");
        let _ = writeln!(out, "# TYPE outpost_fleet_devices gauge");
        let _ = writeln!(out, "outpost_fleet_devices{{state=\"reported\"}} {}", devices.len());
        let _ = writeln!(out, "outpost_fleet_devices{{state=\"online\"}} {online}");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
