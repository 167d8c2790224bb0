//! Samples and the annotators' queue over HTTP: devices upload flagged frames (`PUT /samples/{sha256}`, as
//! docs/PROTOCOL.md defines); annotators claim, fetch, label, skip or reject; operators review, count and export.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use outpost_common::manifest::Sha256Sum;
use serde::Deserialize;
use time::OffsetDateTime;

use super::{ApiError, AppState, Caller, JsonBody};
use crate::annotate::{Counts, Label, ReviewDecision, SampleView};
use crate::error::ErrorKind;
use crate::export::{ExportQuery, ExportReport, ImportReport};
use crate::registry::{Principal, Role};
use crate::samples::{Stored, Upload};

/// The routes; sample uploads may carry `max_upload` bytes (the image cap plus the meta part).
pub fn routes(max_upload: usize) -> axum::Router<AppState> {
    axum::Router::new()
        .route("/samples/{sha}", put(upload).layer(axum::extract::DefaultBodyLimit::max(max_upload)))
        .route("/annotate/claim", post(claim))
        .route("/annotate/counts", get(counts))
        .route("/annotate/samples/{sha}", get(view))
        .route("/annotate/samples/{sha}/image", get(image))
        .route("/annotate/samples/{sha}/label", post(label))
        .route("/annotate/samples/{sha}/skip", post(skip))
        .route("/annotate/samples/{sha}/reject", post(reject))
        .route("/annotate/samples/{sha}/review", post(review))
        .route("/exports", post(export))
        .route("/imports/label-studio", post(import))
}

/// Folds a library error (samples, queue, export) into the API's error.
fn lib(kind: ErrorKind, code: &'static str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(kind.http_status(), code, e)
}

macro_rules! lib_err {
    ($e:expr) => {{
        let e = $e;
        lib(e.kind(), e.code(), &e)
    }};
}

fn sha(text: &str) -> Result<Sha256Sum, ApiError> {
    text.parse().map_err(|_| ApiError::new(422, "invalid_sha256", "the sample id is 64 lowercase hex digits"))
}

fn user_name(caller: &Caller) -> String {
    match &caller.0 {
        Principal::User { name, .. } => name.clone(),
        Principal::Device(d) => d.to_string(),
    }
}

async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(sample): Path<String>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    // The role first, then the body: a caller that may not upload learns nothing about the body's shape.
    let Principal::Device(device) = &caller.0 else {
        return Err(ApiError::new(403, "forbidden", "only devices upload samples"));
    };
    let mut form = <Multipart as axum::extract::FromRequest<()>>::from_request(request, &())
        .await
        .map_err(|e| ApiError::new(e.status().as_u16(), "bad_multipart", e.body_text()))?;
    let (mut meta, mut image): (Option<Bytes>, Option<Bytes>) = (None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(ApiError::new(e.status().as_u16(), "bad_multipart", e.body_text())),
        };
        let name = field.name().map(str::to_string);
        let bytes =
            field.bytes().await.map_err(|e| ApiError::new(e.status().as_u16(), "bad_multipart", e.body_text()))?;
        match name.as_deref() {
            Some("meta") => meta = Some(bytes),
            Some("image") => image = Some(bytes),
            other => return Err(ApiError::new(422, "unexpected_part", format!("unexpected part {other:?}"))),
        }
    }
    let (Some(meta), Some(image)) = (meta, image) else {
        return Err(ApiError::new(422, "missing_part", "both `meta` and `image` parts are needed"));
    };
    let upload = Upload { sample: &sample, device: device.as_str(), meta: &meta, image: &image };
    match state.samples.ingest(upload, OffsetDateTime::now_utc()).await {
        Ok(Stored::New) => Ok((StatusCode::CREATED, "stored").into_response()),
        Ok(Stored::Already) => Ok((StatusCode::OK, "already stored").into_response()),
        Err(e) => Err(lib_err!(e)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The model name whose samples to label.
    pub model: String,
    #[serde(default = "one")]
    pub count: usize,
}

fn one() -> usize {
    1
}

/// Runs a blocking queue call off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::new(500, "internal", e))?
}

async fn claim(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<ClaimRequest>,
) -> Result<Json<Vec<SampleView>>, ApiError> {
    caller.require(Role::Annotator)?;
    let who = user_name(&caller);
    let queue = state.queue.clone();
    blocking(move || queue.claim(&req.model, &who, req.count, OffsetDateTime::now_utc()).map_err(|e| lib_err!(e)))
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountQuery {
    pub model: Option<String>,
}

async fn counts(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<CountQuery>,
) -> Result<Json<Counts>, ApiError> {
    caller.require(Role::Annotator)?;
    let queue = state.queue.clone();
    blocking(move || queue.counts(q.model.as_deref(), OffsetDateTime::now_utc()).map_err(|e| lib_err!(e)))
        .await
        .map(Json)
}

async fn view(
    State(state): State<AppState>,
    caller: Caller,
    Path(s): Path<String>,
) -> Result<Json<SampleView>, ApiError> {
    caller.require(Role::Annotator)?;
    let (queue, s) = (state.queue.clone(), sha(&s)?);
    blocking(move || queue.view(&s, OffsetDateTime::now_utc()).map_err(|e| lib_err!(e))).await.map(Json)
}

async fn image(State(state): State<AppState>, caller: Caller, Path(s): Path<String>) -> Result<Response, ApiError> {
    caller.require(Role::Annotator)?;
    let image = state.queue.image(&sha(&s)?).await.map_err(|e| lib_err!(e))?;
    Ok(([(header::CONTENT_TYPE, image.content_type)], image.bytes).into_response())
}

async fn label(
    State(state): State<AppState>,
    caller: Caller,
    Path(s): Path<String>,
    JsonBody(label): JsonBody<Label>,
) -> Result<Json<SampleView>, ApiError> {
    caller.require(Role::Annotator)?;
    let (queue, s, who) = (state.queue.clone(), sha(&s)?, user_name(&caller));
    blocking(move || queue.submit(&s, &who, label, OffsetDateTime::now_utc()).map_err(|e| lib_err!(e))).await.map(Json)
}

async fn skip(
    State(state): State<AppState>,
    caller: Caller,
    Path(s): Path<String>,
) -> Result<Json<SampleView>, ApiError> {
    caller.require(Role::Annotator)?;
    let (queue, s, who) = (state.queue.clone(), sha(&s)?, user_name(&caller));
    blocking(move || queue.skip(&s, &who, OffsetDateTime::now_utc()).map_err(|e| lib_err!(e))).await.map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    pub reason: String,
}

async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(s): Path<String>,
    JsonBody(req): JsonBody<RejectRequest>,
) -> Result<Json<SampleView>, ApiError> {
    caller.require(Role::Annotator)?;
    let (queue, s, who) = (state.queue.clone(), sha(&s)?, user_name(&caller));
    blocking(move || queue.reject(&s, &who, &req.reason, OffsetDateTime::now_utc()).map_err(|e| lib_err!(e)))
        .await
        .map(Json)
}

async fn review(
    State(state): State<AppState>,
    caller: Caller,
    Path(s): Path<String>,
    JsonBody(decision): JsonBody<ReviewDecision>,
) -> Result<Json<SampleView>, ApiError> {
    caller.require(Role::Operator)?;
    let (queue, s, who) = (state.queue.clone(), sha(&s)?, user_name(&caller));
    blocking(move || queue.review(&s, &who, &decision, OffsetDateTime::now_utc()).map_err(|e| lib_err!(e)))
        .await
        .map(Json)
}

/// `POST /exports` (operator): writes the dataset into `out_dir` on the fleet's machine.
async fn export(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(query): JsonBody<ExportQuery>,
) -> Result<Json<ExportReport>, ApiError> {
    caller.require(Role::Operator)?;
    crate::export::export(&state.queue, &query).await.map(Json).map_err(|e| lib_err!(e))
}

/// `POST /imports/label-studio` (operator): a Label Studio JSON export, applied as labels.
async fn import(State(state): State<AppState>, caller: Caller, body: Bytes) -> Result<Json<ImportReport>, ApiError> {
    caller.require(Role::Operator)?;
    let (queue, who) = (state.queue.clone(), user_name(&caller));
    blocking(move || {
        crate::export::import_label_studio(&queue, &body, &who, OffsetDateTime::now_utc()).map_err(|e| lib_err!(e))
    })
    .await
    .map(Json)
}
