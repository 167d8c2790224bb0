//! `outpost-fleet serve`: the store, the registry, the broker (embedded or external), the HTTP API; one
//! cancellation token and a deadline for shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use outpost_common::store::{SledStore, Store};
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, PublicUrls};
use crate::config::FleetConfig;
use crate::registry::{self, Registry, Role};

/// What a running fleet tells its caller (the demo, tests).
#[derive(Debug, Clone)]
pub struct Running {
    pub http: std::net::SocketAddr,
    pub mqtt: String,
    pub admin_token: String,
    pub registry: Registry,
}

/// The admin token: read from `<state_dir>/admin.token`, or created there (0600) on first start.
fn admin_token(config: &FleetConfig, registry: &Registry) -> anyhow::Result<String> {
    let path = config.state_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(token) if registry.authenticate(token.trim()).is_some_and(|p| p.may(Role::Admin)) => {
            Ok(token.trim().to_string())
        }
        _ => {
            let token = registry.create_user("admin", Role::Admin)?;
            registry::write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "admin token created");
            Ok(token)
        }
    }
}

/// Starts the fleet; `ready` is called once everything listens. Returns when `shutdown` is cancelled and the parts
/// have stopped (or the deadline passed).
pub async fn run(
    config: FleetConfig,
    shutdown: CancellationToken,
    ready: impl FnOnce(Running) + Send,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&config.state_dir).with_context(|| format!("creating {}", config.state_dir.display()))?;
    let store: Arc<dyn Store> = SledStore::open(&config.state_dir.join("db")).context("opening the fleet's store")?;
    let master = registry::load_master(&config.state_dir.join("master.key"))?;
    let registry = Registry::new(store.clone(), master);
    let admin = admin_token(&config, &registry)?;

    if config.broker.embedded {
        let embedded = crate::broker::start_embedded(&config.broker, registry.clone(), shutdown.clone()).await?;
        tracing::info!(v4 = %embedded.listen, v5 = %embedded.listen_v5, "embedded broker listening");
    }

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding the HTTP API on {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let mut public = PublicUrls { mqtt: config.public_mqtt(), http: config.public_http() };
    if config.http.public_url.is_none() {
        public.http = format!("http://{http_addr}");
    }
    let ready_flag = Arc::new(AtomicBool::new(false));
    let mosquitto = match (&config.broker.mosquitto_dir, &config.broker.username, &config.broker.password) {
        (Some(dir), Some(user), Some(password)) => Some((dir.clone(), user.clone(), password.clone())),
        (Some(_), _, _) => {
            anyhow::bail!("broker.mosquitto_dir needs broker.username and broker.password (the fleet's own user)")
        }
        _ => None,
    };
    let state = AppState { registry: registry.clone(), public: public.clone(), ready: ready_flag.clone(), mosquitto };
    state.refresh_mosquitto().map_err(|e| anyhow::anyhow!(e.message))?;
    let http = {
        let stop = shutdown.clone();
        let app = api::router(state);
        tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await })
    };
    ready_flag.store(true, Ordering::Release);
    tracing::info!(api = %public.http, mqtt = %public.mqtt, "fleet ready");
    ready(Running { http: http_addr, mqtt: public.mqtt.clone(), admin_token: admin, registry });

    shutdown.cancelled().await;
    ready_flag.store(false, Ordering::Release);
    let deadline = Duration::from_secs(config.shutdown_deadline_secs.max(1));
    if tokio::time::timeout(deadline, http).await.is_err() {
        tracing::warn!("the HTTP API did not stop within the deadline");
    }
    let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::warn!("the store was not flushed cleanly");
    }
    tracing::info!("fleet stopped");
    Ok(())
}
