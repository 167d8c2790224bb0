//! `/api/v1/devices`: enroll (admin), list and read (operator), revoke (admin).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Caller, JsonBody};
use crate::registry::{Credentials, DeviceRecord, Role};

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/devices", get(list).post(enroll))
        .route("/devices/{id}", get(read))
        .route("/devices/{id}/revoke", post(revoke))
        .route("/users", post(create_user))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub name: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Enrolled {
    pub credentials: Credentials,
    /// A ready-to-use `agent.toml` for the device (cameras still to fill in).
    pub agent_config: String,
}

async fn enroll(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<EnrollRequest>,
) -> Result<Json<Enrolled>, ApiError> {
    caller.require(Role::Admin)?;
    if req.tags.len() > 32 || req.tags.iter().any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 128) {
        return Err(ApiError::new(422, "invalid", "at most 32 tags, keys 1..64 and values up to 128 bytes"));
    }
    let credentials = state.registry.enroll(&req.name, req.tags)?;
    state.refresh_mosquitto()?;
    let agent_config = agent_config(&credentials, &state.public.mqtt, &state.public.http);
    Ok(Json(Enrolled { credentials, agent_config }))
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<DeviceRecord>>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Json(state.registry.list()?))
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeviceRecord>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Json(state.registry.device(&id)?))
}

async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeviceRecord>, ApiError> {
    caller.require(Role::Admin)?;
    let record = state.registry.revoke(&id)?;
    state.refresh_mosquitto()?;
    Ok(Json(record))
}

/// The agent configuration for freshly enrolled credentials: identity, secrets and where the fleet is; the
/// `[[models]]` and `[[cameras]]` tables are left for the installer (examples in `outpost-agent print-config`).
pub fn agent_config(c: &Credentials, mqtt: &str, http: &str) -> String {
    // The fleet cannot know where its CA lands on the device, only that a private one will need it.
    let ca_hint = if http.starts_with("https://") {
        "# ca_file = \"/etc/outpost/fleet-ca.pem\"   # when the fleet's certificate is not from a public CA\n"
    } else {
        ""
    };
    let config = format!(
        "# Outpost agent configuration for `{device}`, written at enrollment. Keep it private: it holds secrets.\n\
         # Add [[models]] and [[cameras]] (see `outpost-agent print-config`).\n\
         state_dir = \"/var/lib/outpost-agent\"\n\n\
         [device]\nid = \"{device}\"\nkey = \"{key}\"\n\n\
         [link]\nbroker = \"{mqtt}\"\nusername = \"{user}\"\npassword = \"{password}\"\n\n\
         [fleet]\nurl = \"{http}\"\ntoken = \"{token}\"\n",
        device = c.device,
        key = c.device_key,
        user = c.mqtt_username,
        password = c.mqtt_password,
        token = c.http_token,
    );
    config + ca_hint
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UserToken {
    pub name: String,
    pub role: Role,
    /// Shown once.
    pub token: String,
}

/// `POST /api/v1/users` (admin): an API token for a person or a tool.
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<UserRequest>,
) -> Result<Json<UserToken>, ApiError> {
    caller.require(Role::Admin)?;
    if req.role == Role::Device {
        return Err(ApiError::new(422, "invalid", "device tokens come from enrollment"));
    }
    let token = state.registry.create_user(&req.name, req.role)?;
    Ok(Json(UserToken { name: req.name, role: req.role, token }))
}
