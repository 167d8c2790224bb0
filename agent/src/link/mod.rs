//! The agent's link to the fleet: MQTT (3.1.1 or 5, optionally TLS) in front of the durable outbox.
//!
//! Design: producers call [`LinkHandle::publish_telemetry`] / [`LinkHandle::publish_event`], which only seal the
//! message and append it to the [`Outbox`]; they never wait for the network, so a dead broker never blocks them.
//! Three tasks do the rest: the *flusher* makes appends durable in groups (one fsync per flush interval, however
//! many appends); the *poller* owns the rumqttc event loop and always polls it (reconnecting with backoff and
//! jitter, a fresh event loop per attempt); the *driver* feeds durable messages to MQTT in seq order, deletes them
//! on PUBACK, republishes the retained status on every connect, opens incoming commands and runs the graceful
//! shutdown. After a reconnect or a restart the driver replays the outbox from its oldest message; the fleet
//! removes the duplicates by `(device, seq)`.

mod config;
mod driver;
mod mqtt;
mod tls;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use outpost_common::protocol::auth::{self, DeviceKey};
use outpost_common::protocol::{self, Command, Event, EventBody, SCHEMA, Status, Telemetry, TelemetryBody};
use outpost_common::topics::{Channel, DeviceId};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Broker, LinkConfig, MqttVersion, OutboxConfig, TlsFiles, backoff, parse_broker_url};

use crate::outbox::{Outbox, OutboxError};
use crate::store::{SledStore, Store, StoreError};

/// Commands waiting for the app; past this the link drops (and counts) new ones rather than block MQTT.
const COMMAND_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link config: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the link is shutting down and takes no new messages")]
    Closed,
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A snapshot of the link's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub connected: bool,
    /// Messages in the outbox (not yet acknowledged) and their bytes.
    pub outbox_messages: u64,
    pub outbox_bytes: u64,
    /// Messages dropped oldest-first at the outbox cap, since the store was created (survives restarts).
    pub dropped: u64,
    /// Outbox messages handed to MQTT (replays count again) and acknowledged by the broker, since start.
    pub published: u64,
    pub acked: u64,
    /// Successful connections since start.
    pub connects: u64,
    /// Connection attempts that failed before the broker accepted them, since start.
    pub connect_failures: u64,
    /// Why the latest attempt failed, while not connected; `None` once connected.
    pub connect_error: Option<ConnectFailure>,
    /// Valid commands handed to the app, and commands dropped as malformed, forged or unreadable.
    pub commands: u64,
    pub rejected_commands: u64,
    /// The last seq given to a message, and the last one made durable (only durable messages are sent).
    pub last_seq: u64,
    pub durable_seq: u64,
}

/// Why a connection attempt failed, as an operator would look for the cause. The log has the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// No connection to the broker's address: nothing listening, no route, no name, or no answer in time.
    Unreachable,
    /// The TLS handshake failed: the broker's certificate is not trusted (not signed by `tls.ca_file`, wrong name,
    /// expired) or the broker refused the agent's client certificate (or the lack of one).
    Tls,
    /// The broker refused the credentials (CONNACK "not authorized" or "bad user name or password").
    NotAuthorized,
    /// The broker refused the connection for another reason (its CONNACK code is in the log).
    Refused,
    /// The connection closed or broke before the broker accepted it.
    Closed,
}

impl ConnectFailure {
    /// A stable name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Tls => "tls",
            ConnectFailure::NotAuthorized => "not_authorized",
            ConnectFailure::Refused => "refused",
            ConnectFailure::Closed => "closed",
        }
    }

    /// What to check, in the words of the agent's config.
    fn hint(self) -> &'static str {
        match self {
            ConnectFailure::Unreachable => "cannot reach the broker (check link.broker and the network)",
            ConnectFailure::Tls => {
                "TLS handshake with the broker failed (check link.tls.ca_file, client_cert and client_key)"
            }
            ConnectFailure::NotAuthorized => {
                "the broker refused the credentials (check link.username and link.password)"
            }
            ConnectFailure::Refused => "the broker refused the connection",
            ConnectFailure::Closed => "the broker closed the connection before accepting it",
        }
    }
}

/// State shared by the handle and the tasks.
#[derive(Debug)]
struct Shared {
    device: DeviceId,
    key: DeviceKey,
    outbox: Arc<Outbox>,
    closed: AtomicBool,
    connected: AtomicBool,
    /// Wakes the flusher: something was appended or acknowledged.
    flush_wanted: Notify,
    /// Wakes the driver: the durable mark advanced, or the status changed.
    driver_wake: Notify,
    /// The outbox's durable mark, for producers that act once what they appended is durable.
    durable: watch::Sender<u64>,
    status: Mutex<Status>,
    published: AtomicU64,
    acked: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    connect_error: Mutex<Option<ConnectFailure>>,
    commands: AtomicU64,
    rejected_commands: AtomicU64,
    commands_rx: Mutex<Option<mpsc::Receiver<Command>>>,
}

impl Shared {
    fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Moves the durable mark up to `seq` (never back), waking whoever watches it.
    fn advance_durable(&self, seq: u64) {
        self.durable.send_if_modified(|d| {
            let moved = seq > *d;
            *d = (*d).max(seq);
            moved
        });
    }

    fn seal<M: protocol::Message>(&self, message: &M) -> Result<Vec<u8>, protocol::ProtocolError> {
        Ok(auth::seal(&self.key, &self.device, &protocol::encode(message)?))
    }
}

/// The producers' side of the link. Cheap to clone; every method returns at once.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    shared: Arc<Shared>,
}

impl LinkHandle {
    /// Stores a telemetry message under the next seq and returns that seq. It is sent once durable.
    pub fn publish_telemetry(&self, body: TelemetryBody) -> Result<u64, LinkError> {
        self.append(Channel::Telemetry, |seq| self.shared.seal(&Telemetry { schema: SCHEMA, seq, body }))
    }

    /// Stores an event (stamped now) under the next seq and returns that seq.
    pub fn publish_event(&self, body: EventBody) -> Result<u64, LinkError> {
        let at = time::OffsetDateTime::now_utc();
        self.append(Channel::Events, |seq| self.shared.seal(&Event { schema: SCHEMA, seq, at, body }))
    }

    fn append(
        &self,
        channel: Channel,
        make: impl FnOnce(u64) -> Result<Vec<u8>, protocol::ProtocolError>,
    ) -> Result<u64, LinkError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(LinkError::Closed);
        }
        let seq = self.shared.outbox.append(channel, |seq| make(seq).map_err(|e| e.to_string()))?;
        self.shared.flush_wanted.notify_one();
        Ok(seq)
    }

    /// Replaces the retained status (published now if connected, and on every reconnect); its offline copy becomes
    /// the last will at the next connect.
    pub fn set_status(&self, status: Status) {
        *self.shared.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
        self.shared.driver_wake.notify_one();
    }

    /// The outbox's durable mark: every seq up to its value is durable. It changes after each group flush.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    /// The receiver of valid commands, once: later calls return `None`.
    pub fn take_commands(&self) -> Option<mpsc::Receiver<Command>> {
        self.shared.commands_rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn stats(&self) -> LinkStats {
        let s = &self.shared;
        let outbox = s.outbox.stats();
        LinkStats {
            connected: s.connected.load(Ordering::Acquire),
            outbox_messages: outbox.messages,
            outbox_bytes: outbox.bytes,
            dropped: outbox.dropped,
            published: s.published.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
            connects: s.connects.load(Ordering::Relaxed),
            connect_failures: s.connect_failures.load(Ordering::Relaxed),
            connect_error: *s.connect_error.lock().unwrap_or_else(|p| p.into_inner()),
            commands: s.commands.load(Ordering::Relaxed),
            rejected_commands: s.rejected_commands.load(Ordering::Relaxed),
            last_seq: outbox.last_seq,
            durable_seq: outbox.durable_seq,
        }
    }
}

/// Starts the link.
#[derive(Debug)]
pub struct Link;

impl Link {
    /// Validates `config`, opens the outbox in `store` and starts the link's tasks. `status` is the first retained
    /// status (and, as offline, the last will). The returned task ends after `shutdown` is cancelled: it stops
    /// taking messages, delivers what it can within `shutdown_timeout_ms`, publishes the offline status,
    /// disconnects and flushes the store.
    pub fn start(
        config: &LinkConfig,
        store: Arc<dyn Store>,
        device: DeviceId,
        key: DeviceKey,
        status: Status,
        shutdown: CancellationToken,
    ) -> Result<(LinkHandle, JoinHandle<()>), LinkError> {
        let broker = config.validate()?;
        let tls = if broker.tls { Some(tls::client_config(&config.tls)?) } else { None };
        let outbox = Arc::new(Outbox::open(store, config.outbox.max_bytes)?);
        let durable = watch::Sender::new(outbox.stats().durable_seq);
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let shared = Arc::new(Shared {
            device: device.clone(),
            key,
            outbox,
            closed: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            flush_wanted: Notify::new(),
            driver_wake: Notify::new(),
            durable,
            status: Mutex::new(status),
            published: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            connect_error: Mutex::new(None),
            commands: AtomicU64::new(0),
            rejected_commands: AtomicU64::new(0),
            commands_rx: Mutex::new(Some(commands_rx)),
        });
        let options = mqtt::Options {
            v5: config.protocol == MqttVersion::V5,
            host: broker.host,
            port: broker.port,
            client_id: device.to_string(),
            username: config.username.clone().unwrap_or_else(|| device.to_string()),
            password: config.password.clone(),
            keepalive: std::time::Duration::from_secs(config.keepalive_secs),
            tls,
            inflight: config.inflight,
            session_expiry_secs: config.session_expiry_secs,
            connect_timeout_secs: 5,
            will: (String::new(), Vec::new()),
        };
        let task = driver::spawn(config, options, shared.clone(), commands_tx, shutdown);
        Ok((LinkHandle { shared }, task))
    }
}

impl LinkConfig {
    /// Opens the sled store at `outbox.path`, for apps that keep the outbox in a store of its own.
    pub fn open_store(&self) -> Result<Arc<dyn Store>, LinkError> {
        Ok(SledStore::open(&self.outbox.path)?)
    }
}
