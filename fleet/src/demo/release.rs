//! The demo's releases: an ephemeral release key (trusted by the demo's fleet and agents only), `defect` v1 and v2
//! signed with it and pushed through the API as an operator would (`outpost model push`), and the staged rollout
//! of v2 created through the API and followed until it ends.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use outpost_common::manifest::{self, Manifest, SecretKey};
use outpost_common::topics::DeviceId;
use outpost_common::vision::spec::ModelSpec;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::rollout::{Engine, State};
use crate::serve::Running;

/// The model name the demo agents serve.
pub const MODEL: &str = "defect";

/// A release: the key that signs the demo's versions, and the model they are versions of.
pub struct Release {
    key: SecretKey,
    artifact: Vec<u8>,
    spec: ModelSpec,
}

impl Release {
    /// A fresh key (it lives as long as the demo) for the model file at `path`, whose spec is `spec`.
    pub fn new(path: &Path, spec: ModelSpec) -> Result<Release> {
        let artifact = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Release { key: SecretKey::generate().context("generating the demo's release key")?, artifact, spec })
    }

    /// The public key, as `[models] trusted_keys` and the agents' `[updates] trusted_keys` take it.
    pub fn trusted_key(&self) -> String {
        self.key.public().to_line()
    }

    /// The signed manifest of version `version` (the same weights each time: a re-signed release, as a retrained
    /// model would be).
    fn manifest(&self, version: u64) -> Result<Vec<u8>> {
        let now = time::OffsetDateTime::now_utc();
        let m = Manifest {
            label: Some(format!("1.{version}")),
            ..Manifest::describing(MODEL, version, &self.artifact, &self.spec, now, time::Duration::days(7))
        };
        Ok(manifest::sign_manifest(&m, &[&self.key]).to_json_pretty())
    }

    /// Pushes version `version` to the fleet's registry, which verifies and checks it before storing it.
    pub async fn push(&self, api: &Api, version: u64) -> Result<()> {
        let form = reqwest::multipart::Form::new()
            .part("manifest", reqwest::multipart::Part::bytes(self.manifest(version)?).file_name("manifest.json"))
            .part("artifact", reqwest::multipart::Part::bytes(self.artifact.clone()).file_name("defect.onnx"));
        let request = api.client.post(format!("{}/models", api.base)).bearer_auth(&api.token).multipart(form);
        api.answer(request, &format!("pushing {MODEL} v{version}")).await.map(drop)
    }
}

/// The fleet's API, as the demo's operator.
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(running: &Running) -> Result<Api> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
        Ok(Api { client, base: format!("http://{}/api/v1", running.http), token: running.admin_token.clone() })
    }

    async fn answer(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let response = request.send().await.with_context(|| what.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{what}: {status} {body}");
        Ok(body)
    }
}

/// The demo's plan: v2 to the demo devices in three stages (one device, two, all), each dwelling 8 s, with the
/// quality gate on 5 windows a side (10 s, 50 frames of the 80 photos each camera replays: fewer would let the few
/// photos a canary happened to see decide). The latency gate allows 3× control: the demo shares a small machine
/// with three agents. Automatic promotion; no approval.
pub fn plan(devices: &[&str]) -> Value {
    let stage = |size: &str| json!({"size": size, "min_dwell_secs": 8, "min_reporting": 1});
    json!({
        "model": MODEL,
        "version": 2,
        "target": {"devices": devices},
        "stages": [stage("1"), stage("2"), stage("100%")],
        "gates": {
            "install": {"min_committed": 1.0, "max_failed": 0.0, "min_executed": 1, "timeout_secs": 120},
            "quality": {"max_confidence_drop": 0.05, "max_flagged_increase": 0.05, "alpha": 0.01, "min_windows": 5},
            "latency": {"max_p95_factor": 3.0},
            "drift": true
        }
    })
}

/// Waits until every device reports `version` of the demo model active (false if `stop` came first).
pub async fn reported(running: &Running, devices: &[&str], version: u64, stop: &CancellationToken) -> bool {
    let on = |name: &str| {
        let view = DeviceId::new(name).ok().and_then(|id| running.ingest.device(&id).ok().flatten());
        view.and_then(|v| v.status).is_some_and(|s| s.models.iter().any(|m| m.name == MODEL && m.active == version))
    };
    loop {
        if devices.iter().all(|d| on(d)) {
            return true;
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Creates the rollout through the API; returns its id.
pub async fn create(api: &Api, plan: Value) -> Result<String> {
    let request = api.client.post(format!("{}/rollouts", api.base)).bearer_auth(&api.token).json(&plan);
    let body = api.answer(request, "creating the rollout").await?;
    body["id"].as_str().map(str::to_string).context("the fleet's answer names no rollout id")
}

/// Prints the rollout's history as it happens, until it ends or `stop` is cancelled; returns its last state.
pub async fn follow(engine: &Engine, id: &str, stop: &CancellationToken) -> Option<State> {
    let mut printed = 0;
    loop {
        let rollout = engine.get(id)?;
        for entry in rollout.header.history.iter().skip(printed) {
            let after = (entry.at - rollout.header.created_at).whole_seconds();
            println!("  rollout {id} +{after:>3}s: {}", entry.what);
        }
        printed = rollout.header.history.len();
        if !rollout.header.state.is_active() {
            return Some(rollout.header.state);
        }
        tokio::select! {
            _ = stop.cancelled() => return Some(rollout.header.state),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
