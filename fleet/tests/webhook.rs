//! Drift alerts reach the webhook, retried through a failing first attempt.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use outpost_common::protocol::ModelRef;
use outpost_fleet::drift::{AlertKind, BaselineSource, DriftAlert, DriftGroup};
use tokio_util::sync::CancellationToken;

type Received = Arc<Mutex<(u32, Vec<serde_json::Value>)>>;

async fn hook(State(seen): State<Received>, Json(body): Json<serde_json::Value>) -> StatusCode {
    let mut s = seen.lock().expect("lock");
    s.0 += 1;
    if s.0 == 1 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    s.1.push(body);
    StatusCode::NO_CONTENT
}

#[tokio::test]
async fn alerts_are_posted_and_retried() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seen: Received = Arc::default();
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let stop = CancellationToken::new();
    let alerts = outpost_fleet::webhook::start(url, reqwest::Client::new(), stop.clone());
    alerts.send(DriftAlert {
        model: ModelRef { name: "defect".into(), version: 3 },
        group: DriftGroup::Tag { key: "site".into(), value: "south".into() },
        kind: AlertKind::Raised,
        psi: 0.42,
        mean_shift: Some(-0.2),
        flagged_share: Some(0.3),
        baseline_flagged_share: Some(0.1),
        frames: 400,
        baseline: BaselineSource::Learned,
        at: time::OffsetDateTime::now_utc(),
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().expect("lock").1.is_empty() {
        assert!(Instant::now() < deadline, "the alert never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (attempts, bodies) = seen.lock().expect("lock").clone();
    assert_eq!(attempts, 2, "delivered on the retry after a 503");
    assert_eq!(bodies[0]["model"]["version"], 3);
    assert_eq!(bodies[0]["psi"], 0.42);
    stop.cancel();
}
