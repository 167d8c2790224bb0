//! What the fleet knows from telemetry (operator role): devices with their online state and totals, window series,
//! drift status and alerts, ingest counters.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use outpost_common::protocol::ModelRef;
use outpost_common::topics::DeviceId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{ApiError, AppState, Caller};
use crate::ingest::{DeviceView, StoredAlert, StoredWindow, TimeRange};
use crate::registry::{DeviceRecord, Role};

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/fleet/devices", get(devices))
        .route("/fleet/devices/{id}/windows", get(windows))
        .route("/drift", get(drift))
        .route("/drift/alerts", get(alerts))
        .route("/ingest", get(counters))
}

/// A device as enrolled, with what its messages say.
#[derive(Debug, Serialize)]
pub struct FleetDevice {
    #[serde(flatten)]
    pub record: DeviceRecord,
    pub online: bool,
    pub seen: Option<DeviceView>,
}

fn device_id(id: &str) -> Result<DeviceId, ApiError> {
    DeviceId::new(id).map_err(|e| ApiError::new(422, "invalid", e))
}

async fn devices(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<FleetDevice>>, ApiError> {
    caller.require(Role::Operator)?;
    let mut out = Vec::new();
    for record in state.registry.list()? {
        let seen = state.ingest.device(&device_id(&record.id)?)?;
        out.push(FleetDevice { online: seen.as_ref().is_some_and(|v| v.online) && !record.revoked, record, seen });
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowQuery {
    pub model: String,
    pub version: u64,
    /// RFC 3339; default: an hour ago.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub from: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub to: Option<OffsetDateTime>,
    #[serde(default)]
    pub limit: Option<usize>,
}

async fn windows(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<WindowQuery>,
) -> Result<Json<Vec<StoredWindow>>, ApiError> {
    caller.require(Role::Operator)?;
    let now = OffsetDateTime::now_utc();
    let range = TimeRange::new(q.from.unwrap_or(now - time::Duration::hours(1)), q.to.unwrap_or(now));
    let model = ModelRef { name: q.model, version: q.version };
    let limit = q.limit.unwrap_or(1000).min(10_000);
    Ok(Json(state.ingest.windows(&device_id(&id)?, &model, range, limit)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftQuery {
    pub model: Option<String>,
    pub version: Option<u64>,
}

async fn drift(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<DriftQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Operator)?;
    let model = match (q.model, q.version) {
        (Some(name), Some(version)) => Some(ModelRef { name, version }),
        (None, None) => None,
        _ => return Err(ApiError::new(422, "invalid", "give both `model` and `version`, or neither")),
    };
    let status = state.ingest.drift_status(model.as_ref());
    Ok(Json(serde_json::to_value(status).map_err(|e| ApiError::new(500, "internal", e))?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

async fn alerts(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<AlertQuery>,
) -> Result<Json<Vec<StoredAlert>>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Json(state.ingest.drift_alerts(q.after, q.limit.unwrap_or(100).min(1000))?))
}

#[derive(Debug, Serialize)]
pub struct Counters {
    pub accepted: u64,
    pub dropped: BTreeMap<String, u64>,
}

async fn counters(State(state): State<AppState>, caller: Caller) -> Result<Json<Counters>, ApiError> {
    caller.require(Role::Operator)?;
    let dropped = state.ingest.drop_counts().into_iter().map(|(k, v)| (k.as_str().to_string(), v)).collect();
    Ok(Json(Counters { accepted: state.ingest.accepted_count(), dropped }))
}
