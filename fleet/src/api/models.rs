//! `/api/v1/models`: operators push (multipart), list, read, deprecate; admins delete; devices (and operators)
//! download a version's signed manifest and its artifact, with `Range` for resuming (docs/PROTOCOL.md, "Model
//! registry").

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use outpost_common::manifest::MAX_ENVELOPE_BYTES;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt as _;

use super::{ApiError, AppState, Caller};
use crate::models::golden::{self, GoldenImage, GoldenSet};
use crate::models::range::{self, Ranged};
use crate::models::{Deprecation, GoldenReport, ModelError, Push, Pushed, StoredModel};
use crate::registry::{Principal, Role};

/// The largest `golden_labels` part.
const MAX_LABELS_BYTES: usize = 1 << 20;
/// The most versions one list answers with.
const MAX_LIST: usize = 10_000;

/// The routes; a push body may carry `max_push` bytes (see `ModelLimits::max_body`).
pub fn routes(max_push: usize) -> axum::Router<AppState> {
    axum::Router::new()
        .route("/models", post(push).layer(axum::extract::DefaultBodyLimit::max(max_push)).get(list))
        .route("/models/{name}/{version}", get(details).delete(delete))
        .route("/models/{name}/{version}/manifest", get(manifest))
        .route("/models/{name}/{version}/artifact", get(artifact))
        .route("/models/{name}/{version}/deprecate", post(deprecate))
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> ApiError {
        ApiError::new(e.kind().http_status(), e.code(), e)
    }
}

/// A stored version as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelView {
    pub name: String,
    pub version: u64,
    pub label: Option<String>,
    pub task: String,
    pub labels: Vec<String>,
    pub family: Option<String>,
    pub sha256: String,
    pub length: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub min_version: Option<u64>,
    /// Key ids of the trusted keys whose signatures counted at push time.
    pub signers: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub pushed_at: OffsetDateTime,
    pub pushed_by: String,
    pub golden: GoldenReport,
    pub deprecated: Option<Deprecation>,
    /// Relative to the fleet's base URL.
    pub manifest_url: String,
    pub artifact_url: String,
}

impl From<&StoredModel> for ModelView {
    fn from(m: &StoredModel) -> ModelView {
        let body = &m.manifest;
        ModelView {
            name: body.name.clone(),
            version: body.version,
            label: body.label.clone(),
            task: body.task.as_str().to_string(),
            labels: body.labels.clone(),
            family: body.family.clone(),
            sha256: body.artifact.sha256.to_string(),
            length: body.artifact.length,
            created_at: body.created_at,
            expires_at: body.expires_at,
            min_version: body.min_version,
            signers: m.signers.iter().map(|k| k.as_str().to_string()).collect(),
            pushed_at: m.pushed_at,
            pushed_by: m.pushed_by.clone(),
            golden: m.golden.clone(),
            deprecated: m.deprecated.clone(),
            manifest_url: crate::models::manifest_path(&body.name, body.version),
            artifact_url: crate::models::artifact_path(&body.name, body.version),
        }
    }
}

/// The answer to a push.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushAnswer {
    /// `false`: this exact version was stored before and nothing was written.
    pub stored: bool,
    pub model: ModelView,
}

fn caller_name(caller: &Caller) -> String {
    match &caller.0 {
        Principal::User { name, .. } => name.clone(),
        Principal::Device(d) => d.to_string(),
    }
}

/// Devices fetch manifests and artifacts; so may operators and admins.
fn may_download(caller: &Caller) -> Result<(), ApiError> {
    if matches!(caller.0, Principal::Device(_)) || caller.0.may(Role::Operator) {
        Ok(())
    } else {
        Err(ApiError::new(403, "forbidden", "this needs the device or operator role"))
    }
}

fn version(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| ApiError::new(404, "not_found", format!("`{text}` is not a version number")))
}

fn multipart_error(e: &MultipartError) -> ApiError {
    let status = e.status().as_u16();
    let code = if status == 413 { "body_too_large" } else { "bad_multipart" };
    ApiError::new(status, code, e.body_text())
}

/// Why reading one part stopped.
enum PartError {
    /// The request itself is broken (malformed multipart, the body limit): answer now.
    Transport(ApiError),
    /// The part is refused (too large): the rest of the body is read and dropped first, so the client, which is
    /// still sending, gets the answer rather than a reset connection.
    Refused(ModelError),
}

/// Reads a whole part of at most `max` bytes.
async fn read_part(
    field: &mut Field<'_>,
    max: usize,
    too_large: impl Fn() -> ModelError,
) -> Result<Vec<u8>, PartError> {
    let mut out = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| PartError::Transport(multipart_error(&e)))? {
        if out.len().saturating_add(chunk.len()) > max {
            return Err(PartError::Refused(too_large()));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Streams the artifact part into the staging file, at most `max` bytes.
async fn stream_part(field: &mut Field<'_>, file: &mut tokio::fs::File, max: u64) -> Result<u64, PartError> {
    let mut written = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(|e| PartError::Transport(multipart_error(&e)))? {
        written = written.saturating_add(chunk.len() as u64);
        if written > max {
            return Err(PartError::Refused(ModelError::ArtifactTooLarge { max }));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| PartError::Transport(ModelError::Internal(format!("staging the artifact: {e}")).into()))?;
    }
    file.flush().await.map_err(|e| PartError::Transport(ModelError::Internal(format!("staging: {e}")).into()))?;
    Ok(written)
}

async fn drain(field: &mut Field<'_>) -> Result<(), ApiError> {
    while field.chunk().await.map_err(|e| multipart_error(&e))?.is_some() {}
    Ok(())
}

/// `POST /models`, multipart: `manifest` (the signed envelope), `artifact` (the ONNX file), any number of `golden`
/// parts (an image each, named by the part's filename) and an optional `golden_labels` (labels.json).
async fn push(
    State(state): State<AppState>,
    caller: Caller,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    // The role first, then the configuration, then the body. A refusal reads the rest of the body first (bounded
    // by the route's body limit): the client is still sending, and should get the answer, not a reset connection.
    let refusal = match caller.require(Role::Operator) {
        Err(e) => Some(e),
        Ok(()) if !state.models.accepts_pushes() => Some(ModelError::NoTrustedKeys.into()),
        Ok(()) => None,
    };
    if let Some(e) = refusal {
        // The raw body has no limit of its own: stop reading at the push limit.
        let (mut body, mut left) = (request.into_body().into_data_stream(), state.models.limits().max_body());
        while let Some(Ok(chunk)) = body.next().await {
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                break;
            }
        }
        return Err(e);
    }
    let mut form = <Multipart as axum::extract::FromRequest<()>>::from_request(request, &())
        .await
        .map_err(|e| ApiError::new(e.status().as_u16(), "bad_multipart", e.body_text()))?;
    let limits = *state.models.limits();
    let staging = state.models.staging_file()?;
    let mut file =
        tokio::fs::File::from_std(staging.reopen().map_err(|e| ModelError::Internal(format!("staging file: {e}")))?);
    let (mut manifest, mut artifact, mut labels) = (None::<Vec<u8>>, false, None::<Vec<u8>>);
    let mut golden = GoldenSet::default();
    let mut golden_bytes = 0u64;
    let mut refused: Option<ModelError> = None;
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(&e)),
        };
        if refused.is_some() {
            drain(&mut field).await?;
            continue;
        }
        let name = field.name().map(str::to_string);
        let duplicate =
            || ApiError::new(422, "bad_push", format!("more than one `{}` part", name.as_deref().unwrap_or("")));
        let result = match name.as_deref() {
            Some("manifest") if manifest.is_some() => return Err(duplicate()),
            Some("manifest") => read_part(&mut field, MAX_ENVELOPE_BYTES, || {
                ModelError::Verify(outpost_common::manifest::VerifyError::TooLarge {
                    size: MAX_ENVELOPE_BYTES + 1,
                    max: MAX_ENVELOPE_BYTES,
                })
            })
            .await
            .map(|bytes| manifest = Some(bytes)),
            Some("artifact") if artifact => return Err(duplicate()),
            Some("artifact") => {
                artifact = true;
                stream_part(&mut field, &mut file, limits.max_artifact_bytes).await.map(|_| ())
            }
            Some("golden_labels") if labels.is_some() => return Err(duplicate()),
            Some("golden_labels") => read_part(&mut field, MAX_LABELS_BYTES, || {
                ModelError::GoldenTooLarge("the labels part is over 1 MiB".into())
            })
            .await
            .map(|bytes| labels = Some(bytes)),
            Some("golden") => {
                let image = field.file_name().map(str::to_string).unwrap_or_default();
                if !golden::valid_image_name(&image) {
                    return Err(ModelError::BadGolden(format!(
                        "a `golden` part needs a plain file name, not {image:?}"
                    ))
                    .into());
                }
                let left = limits.max_golden_bytes.saturating_sub(golden_bytes);
                let max = usize::try_from(left).unwrap_or(usize::MAX);
                let too_large =
                    || ModelError::GoldenTooLarge(format!("more than {} bytes of images", limits.max_golden_bytes));
                match read_part(&mut field, max, too_large).await {
                    Ok(bytes) => {
                        golden_bytes = golden_bytes.saturating_add(bytes.len() as u64);
                        golden.images.push(GoldenImage { name: image, bytes: Bytes::from(bytes) });
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            other => {
                return Err(ApiError::new(
                    422,
                    "unexpected_part",
                    format!("unexpected part {other:?}: manifest, artifact, golden, golden_labels"),
                ));
            }
        };
        match result {
            Ok(()) => {}
            Err(PartError::Transport(e)) => return Err(e),
            Err(PartError::Refused(e)) => {
                drain(&mut field).await?;
                refused = Some(e);
            }
        }
    }
    if let Some(e) = refused {
        tracing::info!(code = e.code(), error = %e, "model push refused");
        return Err(e.into());
    }
    let (Some(manifest), true) = (manifest, artifact) else {
        return Err(ApiError::new(422, "missing_part", "both `manifest` and `artifact` parts are needed"));
    };
    if let Some(labels) = labels {
        golden.expected = golden::parse_labels(&labels)?;
    }
    drop(file);
    let by = caller_name(&caller);
    let push = Push { manifest: &manifest, artifact: staging.path(), golden, by: &by };
    let (pushed, model) = state.models.push(push, OffsetDateTime::now_utc()).await?;
    let status = StatusCode::from_u16(pushed.http_status()).unwrap_or(StatusCode::OK);
    Ok((status, Json(PushAnswer { stored: pushed == Pushed::New, model: ModelView::from(&model) })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    name: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<ModelView>>, ApiError> {
    caller.require(Role::Operator)?;
    let models = state.models.list(query.name.as_deref(), MAX_LIST)?;
    Ok(Json(models.iter().map(ModelView::from).collect()))
}

async fn details(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, v)): Path<(String, String)>,
) -> Result<Json<ModelView>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Json(ModelView::from(&state.models.require(&name, version(&v)?)?)))
}

/// The signed manifest exactly as pushed (the envelope; its body bytes are the signed ones).
async fn manifest(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, v)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    may_download(&caller)?;
    let model = state.models.require(&name, version(&v)?)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], model.envelope.to_json_pretty()).into_response())
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The artifact, whole (`200`) or one byte range (`206`); `416` for anything else. `ETag` is the quoted sha256.
async fn artifact(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, v)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    may_download(&caller)?;
    let model = state.models.require(&name, version(&v)?)?;
    let length = model.manifest.artifact.length;
    let range_header = headers.get(header::RANGE).map(|v| v.to_str().unwrap_or("invalid"));
    let (status, start, end) = match range::decide(range_header, length) {
        Ranged::Full => (StatusCode::OK, 0, length.saturating_sub(1)),
        Ranged::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        Ranged::Unsatisfiable => {
            let mut response = ApiError::new(
                416,
                "range_not_satisfiable",
                format!("one byte range within 0-{} is served", length.saturating_sub(1)),
            )
            .into_response();
            let h = response.headers_mut();
            h.insert(header::CONTENT_RANGE, header_value(&format!("bytes */{length}")));
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            return Ok(response);
        }
    };
    let stream = state.models.artifact(&model, start..end.saturating_add(1)).await?;
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end.saturating_add(1).saturating_sub(start)));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, header_value(&format!("\"{}\"", model.manifest.artifact.sha256)));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(header::CONTENT_RANGE, header_value(&format!("bytes {start}-{end}/{length}")));
    }
    Ok(response)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeprecateRequest {
    reason: Option<String>,
}

/// `POST .../deprecate`, with an optional JSON body `{"reason": "..."}`.
async fn deprecate(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, v)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<ModelView>, ApiError> {
    caller.require(Role::Operator)?;
    let version = version(&v)?;
    let request: DeprecateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DeprecateRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(422, "bad_request", format!("expected {{\"reason\": \"...\"}}: {e}")))?
    };
    if request.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(ApiError::new(422, "bad_request", "the reason is at most 1000 bytes"));
    }
    let model = state
        .models
        .deprecate(&name, version, &caller_name(&caller), request.reason, OffsetDateTime::now_utc())
        .await?;
    Ok(Json(ModelView::from(&model)))
}

/// `DELETE /models/{name}/{version}` (admin): refused with `409 in_use` while a rollout uses the version.
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, v)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    state.models.delete(&name, version(&v)?, state.models_in_use.as_ref()).await?;
    Ok(StatusCode::NO_CONTENT)
}
