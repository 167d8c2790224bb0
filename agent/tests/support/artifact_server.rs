//! A model-artifact server for tests: `GET /a/{name}` serves what was put under that name — the bytes, the bytes
//! trickled slowly (so a test can interrupt a download), or an endless stream (a hostile server). It also answers
//! the fleet's assignment check, `GET /api/v1/devices/{id}/assignment`, with what was put there (204 otherwise).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

/// What a name serves.
#[derive(Debug, Clone)]
pub enum Served {
    Bytes(Vec<u8>),
    /// The bytes in `chunk`-sized pieces with `pause` between them.
    Slow {
        bytes: Vec<u8>,
        chunk: usize,
        pause: Duration,
    },
    /// Zeros without end and without a length.
    Endless,
}

type Files = Arc<Mutex<HashMap<String, Served>>>;

#[derive(Debug, Clone)]
pub struct ArtifactServer {
    pub base: String,
    files: Files,
}

/// The name the assignment of `device` is kept under.
fn assignment_key(device: &str) -> String {
    format!("assignment/{device}")
}

impl ArtifactServer {
    pub async fn start() -> ArtifactServer {
        let files: Files = Arc::default();
        let app = axum::Router::new()
            .route("/a/{name}", get(serve))
            .route("/api/v1/devices/{device}/assignment", get(assignment))
            .with_state(files.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        ArtifactServer { base, files }
    }

    /// Serves `what` under `name`; returns its URL.
    pub fn put(&self, name: &str, what: Served) -> String {
        self.files.lock().expect("lock").insert(name.to_string(), what);
        format!("{}/a/{name}", self.base)
    }

    /// Answers `device`'s assignment check with `body` (JSON).
    pub fn assign(&self, device: &str, body: Vec<u8>) {
        self.files.lock().expect("lock").insert(assignment_key(device), Served::Bytes(body));
    }
}

async fn assignment(State(files): State<Files>, Path(device): Path<String>) -> Response {
    match files.lock().expect("lock").get(&assignment_key(&device)) {
        Some(Served::Bytes(body)) => ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response(),
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn serve(State(files): State<Files>, Path(name): Path<String>) -> Response {
    let Some(what) = files.lock().expect("lock").get(&name).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match what {
        Served::Bytes(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Served::Slow { bytes, chunk, pause } => {
            let len = bytes.len();
            let chunks: Vec<Bytes> = bytes.chunks(chunk.max(1)).map(Bytes::copy_from_slice).collect();
            let stream = futures_util::stream::unfold(chunks.into_iter(), move |mut it| async move {
                let next = it.next()?;
                tokio::time::sleep(pause).await;
                Some((Ok::<_, std::io::Error>(next), it))
            });
            Response::builder()
                .header(header::CONTENT_LENGTH, len)
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Served::Endless => {
            let stream =
                futures_util::stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 64 * 1024])));
            Body::from_stream(stream).into_response()
        }
    }
}
