//! Simulated devices: each one is the agent's own link (durable-outbox code, seq numbering, sealing with the
//! device's key, retained status and last will, reconnects with backoff) over a real MQTT connection, with its
//! outbox in memory. Windows are built by the agent's window accumulator from synthetic frames, so they carry what
//! a real agent's do (confidence histogram, per-class counts, latency percentiles, flagged count), on the version
//! the device serves (one template per version, shifted by its `VersionBehaviour`). Each device answers the commands
//! its link receives as the agent's updater does (`agent_sim.rs`), and its status lists the model it serves as the
//! agent's does (`models`: active, previous, committed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use outpost_agent::link::{Link, LinkConfig, LinkHandle};
use outpost_agent::window::{FrameOutcome, Window};
use outpost_common::protocol::auth::DeviceKey;
use outpost_common::protocol::{AgentState, EventBody, Health, ModelRef, SCHEMA, Status, TelemetryBody, WindowSummary};
use outpost_common::topics::DeviceId;
use outpost_common::vision::confidence::Confidence;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::agent_sim::{self, Behaviour, Serving, VersionBehaviour};
use super::memstore::MemStore;
use crate::registry::Credentials;

/// Frames in each simulated window: 10 s at 10 fps.
const FRAMES_PER_WINDOW: usize = 100;
const LABELS: [&str; 3] = ["scratch", "dent", "stain"];

/// The `family` simulated devices report (and verify manifests against).
pub const FAMILY: &str = "load-sim";

/// What one simulated device has sent and received.
#[derive(Debug, Default)]
pub struct Counts {
    pub commands: AtomicU64,
    pub events: AtomicU64,
    pub statuses: AtomicU64,
    pub windows: AtomicU64,
}

/// A device's mutable side: what it serves, its window templates per version, when commands arrived.
#[derive(Debug)]
pub struct SimState {
    pub serving: Serving,
    templates: BTreeMap<u64, WindowSummary>,
    /// Each command id with the moment it first arrived.
    pub commands: Vec<(String, OffsetDateTime)>,
    /// Each version committed (or restored by a revert), with when.
    pub commits: Vec<(u64, OffsetDateTime)>,
}

/// One simulated device.
#[derive(Debug)]
pub struct Sim {
    pub device: String,
    /// Its place in the swarm: the seed of its synthetic frames and of its failure draws.
    pub index: u64,
    link: LinkHandle,
    behaviour: Arc<Behaviour>,
    state: Mutex<SimState>,
    pub counts: Counts,
}

impl Sim {
    pub fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an event on the link (as the agent does, a refused append is logged and dropped).
    pub fn event(&self, body: EventBody) {
        match self.link.publish_event(body) {
            Ok(_) => {
                self.counts.events.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(device = %self.device, error = %e, "simulated event not queued"),
        }
    }

    /// Replaces the retained status with the current serving state.
    pub fn publish_status(&self, state: AgentState) {
        self.publish_status_with(state, None);
    }

    fn publish_status_with(&self, state: AgentState, health: Option<Health>) {
        let served = self.state().serving.clone();
        self.link.set_status(status(&served, state, health));
        self.counts.statuses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn note_command(&self, id: &str) {
        let mut state = self.state();
        if !state.commands.iter().any(|(c, _)| c == id) {
            state.commands.push((id.to_string(), OffsetDateTime::now_utc()));
        }
    }

    /// A window on the version serving now.
    fn window(&self) -> WindowSummary {
        let mut state = self.state();
        let model = state.serving.active_ref();
        let behaviour = self.behaviour.version(model.version);
        let index = self.index;
        state.templates.entry(model.version).or_insert_with(|| template(&model, index, behaviour)).clone()
    }
}

/// Many simulated devices on one tokio runtime.
#[derive(Debug)]
pub struct Swarm {
    devices: Vec<Arc<Sim>>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
}

/// One stretch of publishing: every device sends a window every `interval`, starting at a random offset within
/// it so the fleet sees a steady stream, and a status every `status_every` windows.
#[derive(Debug, Clone)]
pub struct Phase {
    /// The camera name the windows carry, so the stored windows of each phase can be told apart.
    pub camera: String,
    pub interval: Duration,
    pub duration: Duration,
    pub status_every: u64,
}

/// What a phase handed to the devices' links.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    pub windows: u64,
    pub statuses: u64,
    /// Appends the link refused (outbox full or closing).
    pub refused: u64,
}

/// Messages over the whole swarm since it connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Messages {
    pub commands: u64,
    /// The most commands one device received.
    pub max_commands: u64,
    pub events: u64,
    pub statuses: u64,
    pub windows: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("device `{device}`: {detail}")]
    Device { device: String, detail: String },
}

fn status(serving: &Serving, state: AgentState, health: Option<Health>) -> Status {
    Status {
        schema: SCHEMA,
        state,
        at: OffsetDateTime::now_utc(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        family: FAMILY.into(),
        model: Some(serving.active_ref()),
        models: vec![serving.served()],
        health,
    }
}

/// A window of synthetic detector frames, summarised by the agent's own accumulator; `behaviour` shifts the
/// frames' confidence and latency.
fn template(model: &ModelRef, seed: u64, behaviour: VersionBehaviour) -> WindowSummary {
    let mut rng = fastrand::Rng::with_seed(seed);
    let start = OffsetDateTime::now_utc() - time::Duration::seconds(10);
    let mut window = Window::new("line-1", start);
    for _ in 0..FRAMES_PER_WINDOW {
        let count = rng.usize(0..4);
        let labels: Vec<&str> = (0..count).map(|_| LABELS[rng.usize(0..LABELS.len())]).collect();
        let mean = (count > 0).then(|| (0.35 + 0.6 * rng.f32() + behaviour.confidence_shift).clamp(0.0, 1.0));
        let confidence = Confidence::Detect {
            max: mean.map(|m| (m + 0.05).min(1.0)),
            mean,
            count,
            uncertain: usize::from(mean.is_some_and(|m| m < 0.5)),
        };
        window.record(&FrameOutcome {
            model,
            confidence: &confidence,
            labels: &labels,
            latency_ms: (15.0 + 10.0 * rng.f32()) * behaviour.latency_factor,
            flagged: mean.is_some_and(|m| m < 0.4),
        });
    }
    window.finish(OffsetDateTime::now_utc()).into_iter().next().unwrap_or_else(|| unreachable!("frames recorded"))
}

impl Swarm {
    /// Starts one link per device against `broker` (`mqtt://host:port`), `batch` at a time, waiting up to
    /// `batch_timeout` for each batch to connect before starting the next (devices still connecting carry on in
    /// the background). Every device serves `behaviour.model` at `behaviour.initial_version` and answers commands
    /// as `behaviour` says. Returns once every link is started.
    pub async fn connect(
        broker: &str,
        credentials: &[Credentials],
        behaviour: Behaviour,
        batch: usize,
        batch_timeout: Duration,
    ) -> Result<Swarm, SwarmError> {
        let shutdown = CancellationToken::new();
        let behaviour = Arc::new(behaviour);
        let mut swarm = Swarm { devices: Vec::with_capacity(credentials.len()), tasks: Vec::new(), shutdown };
        for (i, c) in credentials.iter().enumerate() {
            let fail = |detail: String| SwarmError::Device { device: c.device.clone(), detail };
            let device = DeviceId::new(&c.device).map_err(|e| fail(e.to_string()))?;
            let key = DeviceKey::from_hex(&c.device_key).map_err(|e| fail(e.to_string()))?;
            let mut config = LinkConfig::new(broker);
            config.username = Some(c.mqtt_username.clone());
            config.password = Some(c.mqtt_password.clone());
            // The outbox is in memory: there is no fsync to group, so appends are handed on at once.
            config.outbox.flush_interval_ms = 0;
            config.outbox.max_bytes = 1 << 20;
            config.shutdown_timeout_ms = 2_000;
            let store = Arc::new(MemStore::default());
            let serving = Serving::new(&behaviour.model, behaviour.initial_version);
            let first = status(&serving, AgentState::Running, None);
            let (link, task) = Link::start(&config, store, device, key, first, swarm.shutdown.child_token())
                .map_err(|e| fail(e.to_string()))?;
            let commands = link.take_commands();
            let sim = Arc::new(Sim {
                device: c.device.clone(),
                index: i as u64,
                link,
                behaviour: behaviour.clone(),
                state: Mutex::new(SimState {
                    serving,
                    templates: BTreeMap::new(),
                    commands: Vec::new(),
                    commits: Vec::new(),
                }),
                counts: Counts::default(),
            });
            if let Some(commands) = commands {
                let answering = agent_sim::answer(sim.clone(), commands, behaviour.clone(), swarm.shutdown.clone());
                swarm.tasks.push(tokio::spawn(answering));
            }
            swarm.devices.push(sim);
            swarm.tasks.push(task);
            if swarm.devices.len() % batch.max(1) == 0 || swarm.devices.len() == credentials.len() {
                let deadline = Instant::now() + batch_timeout;
                while swarm.connected() < swarm.devices.len() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Ok(swarm)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The devices, in the order of the credentials they were started with.
    pub fn devices(&self) -> &[Arc<Sim>] {
        &self.devices
    }

    /// Devices whose link is connected now.
    pub fn connected(&self) -> usize {
        self.devices.iter().filter(|d| d.link.stats().connected).count()
    }

    /// Messages in the devices' outboxes not yet acknowledged by the broker.
    pub fn unacked(&self) -> u64 {
        self.devices.iter().map(|d| d.link.stats().outbox_messages).sum()
    }

    /// What the devices received and handed to their links so far.
    pub fn messages(&self) -> Messages {
        let mut m = Messages::default();
        for d in &self.devices {
            let commands = d.counts.commands.load(Ordering::Relaxed);
            m.commands += commands;
            m.max_commands = m.max_commands.max(commands);
            m.events += d.counts.events.load(Ordering::Relaxed);
            m.statuses += d.counts.statuses.load(Ordering::Relaxed);
            m.windows += d.counts.windows.load(Ordering::Relaxed);
        }
        m
    }

    /// Waits until every connected device's outbox is empty, or `timeout`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.unacked() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Runs `phase` on every device and returns what was handed to the links.
    pub async fn run(&self, phase: &Phase) -> Published {
        self.run_until(phase, &CancellationToken::new()).await
    }

    /// Runs `phase` on every device until its duration has passed or `stop` is cancelled.
    pub async fn run_until(&self, phase: &Phase, stop: &CancellationToken) -> Published {
        let windows = Arc::new(AtomicU64::new(0));
        let statuses = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let end = Instant::now() + phase.duration;
        let mut tasks = Vec::with_capacity(self.devices.len());
        for (i, sim) in self.devices.iter().enumerate() {
            let (sim, phase, stop) = (sim.clone(), phase.clone(), stop.clone());
            let (windows, statuses, refused) = (windows.clone(), statuses.clone(), refused.clone());
            let offset = phase.interval.mul_f64(fastrand::Rng::with_seed(i as u64 ^ 0x5eed).f64());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + offset, phase.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let span = time::Duration::try_from(phase.interval).unwrap_or(time::Duration::seconds(10));
                let mut sent = 0u64;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    if Instant::now() >= end {
                        break;
                    }
                    let mut window = sim.window();
                    window.end = OffsetDateTime::now_utc();
                    window.start = window.end - span;
                    window.camera.clone_from(&phase.camera);
                    match sim.link.publish_telemetry(TelemetryBody::Window(Box::new(window))) {
                        Ok(_) => {
                            sim.counts.windows.fetch_add(1, Ordering::Relaxed);
                            windows.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                    sent += 1;
                    if phase.status_every > 0 && sent % phase.status_every == 0 {
                        let stats = sim.link.stats();
                        let health = Health {
                            uptime_secs: sent * phase.interval.as_secs().max(1),
                            fps: 10.0,
                            outbox_pending: stats.outbox_messages,
                            outbox_dropped: stats.dropped,
                            frames_dropped: 0,
                            errors: 0,
                        };
                        let state =
                            if sim.state().serving.committed { AgentState::Running } else { AgentState::Updating };
                        sim.publish_status_with(state, Some(health));
                        statuses.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        Published {
            windows: windows.load(Ordering::Relaxed),
            statuses: statuses.load(Ordering::Relaxed),
            refused: refused.load(Ordering::Relaxed),
        }
    }

    /// Shuts every link down (offline status, disconnect), waiting at most `deadline`.
    pub async fn stop(self, deadline: Duration) {
        self.shutdown.cancel();
        let all = async {
            for t in self.tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(devices = self.devices.len(), "some simulated devices did not stop in time");
        }
    }
}
