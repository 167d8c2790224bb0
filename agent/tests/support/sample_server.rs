//! A sample-upload server for tests: `PUT /api/v1/samples/{sha}` as docs/PROTOCOL.md defines it, storing each sample
//! once, and optionally misbehaving: every other request refused with 503, every fifth stored but answered 500 (a
//! lost response), so the uploader's retries and idempotency are exercised.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::put;
use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::SampleMeta;

/// The bearer token the server accepts.
pub const TOKEN: &str = "device-token";

#[derive(Default)]
pub struct Server {
    /// sha → (meta, image) as stored; a PUT of a stored sha stores nothing new.
    pub stored: HashMap<String, (SampleMeta, Vec<u8>)>,
    pub requests: usize,
    /// Refuse every other request with 503, and every fifth one after storing it (a lost response).
    pub flaky: bool,
}

pub type Shared = Arc<Mutex<Server>>;

async fn put_sample(
    State(server): State<Shared>,
    Path(sha): Path<String>,
    headers: HeaderMap,
    mut form: Multipart,
) -> StatusCode {
    let n = {
        let mut s = server.lock().expect("lock");
        s.requests += 1;
        s.requests
    };
    let flaky = server.lock().expect("lock").flaky;
    if flaky && n % 2 == 0 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(format!("Bearer {TOKEN}").as_str()) {
        return StatusCode::UNAUTHORIZED;
    }
    let (mut meta, mut image) = (None, None);
    while let Ok(Some(field)) = form.next_field().await {
        let name = field.name().map(str::to_string);
        let Ok(bytes) = field.bytes().await else { return StatusCode::BAD_REQUEST };
        match name.as_deref() {
            Some("meta") => meta = SampleMeta::from_json(&bytes).ok(),
            Some("image") => image = Some(bytes.to_vec()),
            _ => return StatusCode::BAD_REQUEST,
        }
    }
    let (Some(meta), Some(image)) = (meta, image) else { return StatusCode::BAD_REQUEST };
    if Sha256Sum::of(&image).to_string() != sha || meta.sample.to_string() != sha {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    if meta.camera == "forbidden" {
        return StatusCode::FORBIDDEN;
    }
    server.lock().expect("lock").stored.entry(sha).or_insert((meta, image));
    if flaky && n % 5 == 0 { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::CREATED }
}

pub async fn start_server(flaky: bool) -> (String, Shared) {
    let server: Shared = Arc::new(Mutex::new(Server { flaky, ..Default::default() }));
    let app = axum::Router::new().route("/api/v1/samples/{sha}", put(put_sample)).with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), server)
}
