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
use crate::ingest::Ingest;
use crate::mqtt::ClientConfig;
use crate::registry::{self, Registry, Role};

/// What a running fleet tells its caller (the demo, tests).
#[derive(Debug, Clone)]
pub struct Running {
    pub http: std::net::SocketAddr,
    pub mqtt: String,
    pub admin_token: String,
    pub registry: Registry,
    pub ingest: Arc<Ingest>,
    /// Sends commands to devices.
    pub commands: crate::mqtt::Commands,
    pub rollouts: crate::rollout::Engine,
}

/// Sites from the registry's `site=` tags, class names from the configuration.
#[derive(Debug)]
struct FleetCatalog {
    registry: Registry,
    labels: std::collections::BTreeMap<String, Vec<String>>,
}

impl crate::annotate::Catalog for FleetCatalog {
    fn site(&self, device: &str) -> Option<String> {
        self.registry.device(device).ok().and_then(|d| d.tags.get("site").cloned())
    }

    fn labels(&self, model: &outpost_common::protocol::ModelRef) -> Option<Vec<String>> {
        self.labels.get(&model.name).cloned()
    }
}

/// What the service does with each ingested message, on the ingest worker that handled it: status, events and
/// stored windows go to the rollout engine (its window cache must see every window), drift alerts to the log and
/// the webhook.
fn after_ingest(
    alerts: crate::webhook::Alerts,
    rollouts: crate::rollout::Engine,
) -> crate::ingest_workers::AfterIngest {
    Arc::new(move |done: &crate::ingest::Ingested, now| {
        if matches!(
            done.outcome,
            crate::ingest::Outcome::Status(_)
                | crate::ingest::Outcome::Event(_)
                | crate::ingest::Outcome::Window { .. }
        ) {
            rollouts.observe(done, now);
        }
        for alert in &done.alerts {
            tracing::warn!(model = %alert.model.name, version = alert.model.version, psi = alert.psi, "drift alert");
            alerts.send(alert.clone());
        }
    })
}

/// Makes ingest state durable every second and applies retention every ten minutes.
async fn maintain(ingest: Arc<Ingest>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let ingest = ingest.clone();
        let compact = n % 600 == 0;
        let result = tokio::task::spawn_blocking(move || {
            if compact { ingest.compact(time::OffsetDateTime::now_utc()).map(|_| ()) } else { ingest.flush() }
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "ingest maintenance failed");
        }
    }
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
    // A certificate that cannot be used stops the start before anything listens.
    let https = match &config.http.tls {
        Some(tls) => Some((
            api::tls::acceptor(&tls.cert_file, &tls.key_file).context("http.tls")?,
            Duration::from_secs(tls.handshake_timeout_secs.max(1)),
        )),
        None => None,
    };
    std::fs::create_dir_all(&config.state_dir).with_context(|| format!("creating {}", config.state_dir.display()))?;
    let store: Arc<dyn Store> = SledStore::open(&config.state_dir.join("db")).context("opening the fleet's store")?;
    let master = registry::load_master(&config.state_dir.join("master.key"))?;
    let registry = Registry::new(store.clone(), master);
    let admin = admin_token(&config, &registry)?;

    let ingest = Arc::new(
        Ingest::open(store.clone(), Arc::new(registry.clone()), config.ingest.clone()).context("opening the ingest")?,
    );

    // The broker, and the fleet's own client on it.
    let client = if config.broker.embedded {
        let embedded = crate::broker::start_embedded(&config.broker, registry.clone(), shutdown.clone()).await?;
        tracing::info!(v4 = %embedded.listen, v5 = %embedded.listen_v5, "embedded broker listening");
        ClientConfig {
            host: embedded.listen.ip().to_string(),
            port: embedded.listen.port(),
            client_id: format!("{}-ingest", embedded.internal.username),
            username: embedded.internal.username.clone(),
            password: embedded.internal.password.clone(),
            shared_group: None,
        }
    } else {
        let b = &config.broker;
        let url = b.url.as_deref().context("broker.url")?;
        let mut c = ClientConfig::from_url(
            url,
            &format!("outpost-fleet-{}", std::process::id()),
            b.username.as_deref().unwrap_or("outpost-fleet"),
            b.password.as_deref().unwrap_or_default(),
        )
        .map_err(anyhow::Error::msg)?;
        c.shared_group = b.shared_group.clone();
        c
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let commands = crate::mqtt::start(client, tx, shutdown.clone());
    let alerts = match &config.alerts.webhook_url {
        Some(url) => {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
            crate::webhook::start(url.clone(), client, shutdown.clone())
        }
        None => crate::webhook::Alerts::none(),
    };
    let maintenance = tokio::spawn(maintain(ingest.clone(), shutdown.clone()));

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding the HTTP API on {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let mut public = PublicUrls { mqtt: config.public_mqtt(), http: config.public_http() };
    if config.http.public_url.is_none() {
        public.http = format!("{}://{http_addr}", config.http_scheme());
    }
    let blobs = crate::samples::local_dir(&config.state_dir.join("blobs")).context("opening the image store")?;
    let models =
        crate::models::Models::from_config(store.clone(), blobs.clone(), &config.models, config.state_dir.join("tmp"))
            .map_err(anyhow::Error::msg)?;
    let rollouts = crate::rollout::Engine::open(
        store.clone(),
        ingest.clone(),
        registry.clone(),
        Arc::new(RegistryVersions { models: models.clone(), public_http: public.http.clone() }),
        config.rollouts.clone(),
    )
    .context("loading rollouts")?;
    let workers = crate::ingest_workers::Workers::start(
        ingest.clone(),
        config.ingest.workers(),
        rx,
        after_ingest(alerts, rollouts.clone()),
    )
    .context("starting the ingest workers")?;
    let rollout_task = tokio::spawn(crate::rollout::engine::run(rollouts.clone(), commands.clone(), shutdown.clone()));
    let ready_flag = Arc::new(AtomicBool::new(false));
    let mosquitto = match (&config.broker.mosquitto_dir, &config.broker.username, &config.broker.password) {
        (Some(dir), Some(user), Some(password)) => Some((dir.clone(), user.clone(), password.clone())),
        (Some(_), _, _) => {
            anyhow::bail!("broker.mosquitto_dir needs broker.username and broker.password (the fleet's own user)")
        }
        _ => None,
    };
    let samples = crate::samples::Samples::new(store.clone(), blobs.clone(), crate::samples::IntakeLimits::default());
    let catalog = Arc::new(FleetCatalog { registry: registry.clone(), labels: config.annotation.labels.clone() });
    let queue = Arc::new(crate::annotate::Queue::new(samples.clone(), catalog, config.annotation.queue.clone()));
    {
        let queue = queue.clone();
        let rebuilt = tokio::task::spawn_blocking(move || queue.rebuild_indexes(time::OffsetDateTime::now_utc())).await;
        if let Ok(Err(e)) = rebuilt {
            tracing::warn!(error = %e, "annotation indexes not rebuilt");
        }
    }
    let state = AppState {
        registry: registry.clone(),
        ingest: ingest.clone(),
        samples,
        queue,
        models,
        models_in_use: Arc::new(rollouts.clone()),
        public: public.clone(),
        ready: ready_flag.clone(),
        mosquitto,
        rollouts: rollouts.clone(),
    };
    state.refresh_mosquitto().map_err(|e| anyhow::anyhow!(e.message))?;
    let http =
        {
            let stop = shutdown.clone();
            let app = api::router(state);
            match https {
                None => tokio::spawn(async move {
                    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
                }),
                Some((acceptor, timeout)) => {
                    let listener = api::tls::TlsListener::start(listener, acceptor, timeout, shutdown.clone())?;
                    tokio::spawn(async move {
                        axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
                    })
                }
            }
        };
    ready_flag.store(true, Ordering::Release);
    tracing::info!(api = %public.http, mqtt = %public.mqtt, "fleet ready");
    ready(Running {
        http: http_addr,
        mqtt: public.mqtt.clone(),
        admin_token: admin,
        registry,
        ingest: ingest.clone(),
        commands,
        rollouts,
    });

    shutdown.cancelled().await;
    ready_flag.store(false, Ordering::Release);
    let deadline = Duration::from_secs(config.shutdown_deadline_secs.max(1));
    if tokio::time::timeout(deadline, http).await.is_err() {
        tracing::warn!("the HTTP API did not stop within the deadline");
    }
    let _ = maintenance.await;
    let _ = rollout_task.await;
    // The client's task ends with the shutdown and drops the sender, which ends the router; the workers drain their
    // queues and exit.
    if tokio::time::timeout(deadline, workers.join()).await.is_err() {
        tracing::warn!("ingest did not finish within the deadline");
    }
    // Everything to its records, so the next start has no journal to replay.
    if let Err(e) = ingest.checkpoint() {
        tracing::warn!(error = %e, "ingest state not written; the next start replays the journal");
    }
    let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::warn!("the store was not flushed cleanly");
    }
    tracing::info!("fleet stopped");
    Ok(())
}

/// The model registry as the rollout engine sees it: a stored version's signed manifest and where to fetch it.
#[derive(Debug)]
struct RegistryVersions {
    models: crate::models::Models,
    public_http: String,
}

impl crate::rollout::VersionSource for RegistryVersions {
    fn version(&self, name: &str, version: u64) -> Result<Option<crate::rollout::StoredVersion>, String> {
        let stored = self.models.get(name, version).map_err(|e| e.to_string())?;
        Ok(stored.map(|m| crate::rollout::StoredVersion {
            artifact_url: crate::models::artifact_url(&self.public_http, name, version),
            min_version: m.manifest.min_version.unwrap_or(0),
            deprecated: m.deprecated.is_some(),
            expires_at: m.manifest.expires_at,
            manifest: m.envelope,
        }))
    }
}
