//! `/api/v1/rollouts` (operator): create, list, status, pause, resume, approve, abort; and
//! `/api/v1/devices/{id}/assignment` (the device itself, or an operator): what the device should run.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{ApiError, AppState, Caller, JsonBody};
use crate::registry::{Principal, Role};
use crate::rollout::{Action, DeviceRollout, Header, RolloutError, RolloutPlan};

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/rollouts", get(list).post(create))
        .route("/rollouts/{id}", get(status))
        .route("/rollouts/{id}/{action}", post(act))
        .route("/devices/{id}/assignment", get(assignment))
}

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> ApiError {
        ApiError::new(e.kind().http_status(), e.code(), e)
    }
}

fn who(caller: &Caller) -> String {
    match &caller.0 {
        Principal::User { name, .. } => name.clone(),
        Principal::Device(d) => d.as_str().to_string(),
    }
}

/// Runs blocking engine work (store reads and writes) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RolloutError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::new(500, "internal", e))?.map_err(ApiError::from)
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(plan): JsonBody<RolloutPlan>,
) -> Result<(StatusCode, Json<Header>), ApiError> {
    caller.require(Role::Operator)?;
    let by = who(&caller);
    let engine = state.rollouts.clone();
    let header = blocking(move || engine.create(plan, &by, OffsetDateTime::now_utc())).await?;
    Ok((StatusCode::CREATED, Json(header)))
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<Header>>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Json(state.rollouts.list()))
}

/// One device in the status view.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceView {
    pub device: String,
    #[serde(flatten)]
    pub rollout: DeviceRollout,
    /// The version the fleet wants it to run.
    pub target: Option<u64>,
}

/// One stage in the status view: its devices (those that join at it) and their states.
#[derive(Debug, Serialize, Deserialize)]
pub struct StageView {
    pub stage: usize,
    pub size: String,
    /// Devices on the new version once this stage has started (cumulative).
    pub cutoff: usize,
    pub state: String,
    pub devices: Vec<DeviceView>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RolloutStatus {
    #[serde(flatten)]
    pub header: Header,
    pub stages: Vec<StageView>,
}

async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutStatus>, ApiError> {
    caller.require(Role::Operator)?;
    let r = state.rollouts.get(&id).ok_or_else(|| ApiError::from(RolloutError::NotFound(id.clone())))?;
    let version = r.version();
    let mut stages: Vec<StageView> = r
        .header
        .plan
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| StageView {
            stage: i + 1,
            size: s.size.to_string(),
            cutoff: r.header.cutoffs.get(i).copied().unwrap_or(0),
            state: match i.cmp(&r.header.stage) {
                std::cmp::Ordering::Less => "passed".into(),
                std::cmp::Ordering::Equal => r.header.state.name().into(),
                std::cmp::Ordering::Greater => "pending".into(),
            },
            devices: Vec::new(),
        })
        .collect();
    let mut devices: Vec<(&String, &DeviceRollout)> = r.devices.iter().collect();
    devices.sort_by_key(|(_, d)| d.position);
    for (id, d) in devices {
        let stage = r.header.cutoffs.iter().position(|c| (d.position as usize) < *c).unwrap_or(0);
        if let Some(s) = stages.get_mut(stage) {
            s.devices.push(DeviceView { device: id.clone(), rollout: d.clone(), target: d.target(version) });
        }
    }
    Ok(Json(RolloutStatus { header: r.header, stages }))
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActRequest {
    #[serde(default)]
    pub reason: String,
}

async fn act(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Header>, ApiError> {
    caller.require(Role::Operator)?;
    let action = match action.as_str() {
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "approve" => Action::Approve,
        "abort" => Action::Abort,
        other => return Err(ApiError::new(404, "not_found", format!("no rollout action `{other}`"))),
    };
    // The body is optional: `{"reason": "..."}`.
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        String::new()
    } else {
        serde_json::from_slice::<ActRequest>(&body).map_err(|e| ApiError::new(400, "bad_request", e))?.reason
    };
    if reason.len() > 1024 {
        return Err(ApiError::new(422, "invalid", "reason: at most 1024 bytes"));
    }
    let by = who(&caller);
    let engine = state.rollouts.clone();
    let header = blocking(move || engine.act(&id, action, &by, &reason, OffsetDateTime::now_utc())).await?;
    Ok(Json(header))
}

async fn assignment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match &caller.0 {
        Principal::Device(d) if d.as_str() == id => {}
        Principal::Device(_) => {
            return Err(ApiError::new(403, "forbidden", "a device may read only its own assignment"));
        }
        Principal::User { .. } => caller.require(Role::Operator)?,
    }
    let engine = state.rollouts.clone();
    match blocking(move || engine.assignment(&id)).await? {
        Some(assign) => Ok(Json(assign).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
