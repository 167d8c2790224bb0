//! The link's tasks: the flusher (group commit), the poller (always polls rumqttc, reconnects with backoff and
//! jitter) and the driver (feeds the outbox to MQTT, matches PUBACKs, status, commands, graceful shutdown).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use outpost_common::protocol::auth::{self, AuthError};
use outpost_common::protocol::{self, Command, ProtocolError, Status};
use outpost_common::topics::{self, Channel};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::mqtt::{self, Client, Down, Wire};
use super::{ConnectFailure, LinkConfig, Shared, backoff};

/// What the poller tells the driver, tagged with the connection attempt it belongs to.
#[derive(Debug)]
enum Polled {
    Client(u64, Client),
    Wire(u64, Wire),
    Down(u64, Down),
}

/// What a packet id in flight stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Outbox(u64),
    Status { offline: bool },
}

pub(super) fn spawn(
    config: &LinkConfig,
    options: mqtt::Options,
    shared: Arc<Shared>,
    commands_tx: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let stop = CancellationToken::new();
    let interval = Duration::from_millis(config.outbox.flush_interval_ms);
    let flusher = tokio::spawn(flusher(shared.clone(), interval, stop.clone()));
    let (tx, rx) = mpsc::unbounded_channel();
    let delays = (Duration::from_millis(config.reconnect_min_ms), Duration::from_millis(config.reconnect_max_ms));
    let poller = tokio::spawn(poller(options, shared.clone(), delays, tx, stop.clone()));
    let driver = Driver {
        shared: shared.clone(),
        commands_tx,
        window: usize::from(config.inflight),
        generation: 0,
        client: None,
        connected: false,
        sent: VecDeque::new(),
        inflight: HashMap::new(),
        cursor: 0,
        published_status: None,
        logged_kinds: HashSet::new(),
        logged_failure: None,
        draining: false,
        offline_sent: false,
        offline_acked: false,
        disconnect_requested: false,
        disconnected: false,
    };
    let timeout = Duration::from_millis(config.shutdown_timeout_ms);
    tokio::spawn(async move {
        driver.run(rx, shutdown, timeout).await;
        stop.cancel();
        let _ = poller.await;
        let _ = flusher.await;
        let outbox = shared.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.flush()).await {
            Ok(Ok(seq)) => {
                shared.advance_durable(seq);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "final outbox flush failed"),
            Err(e) => tracing::error!(error = %e, "final outbox flush panicked"),
        }
        let stats = shared.outbox.stats();
        tracing::info!(pending = stats.messages, dropped = stats.dropped, "link stopped");
    })
}

/// Makes appends and acknowledgements durable, many per fsync.
async fn flusher(shared: Arc<Shared>, interval: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = shared.flush_wanted.notified() => {}
            _ = stop.cancelled() => return,
        }
        // Let the appends of the next `interval` join this group.
        if !interval.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
        }
        let outbox = shared.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.flush()).await {
            Ok(Ok(seq)) => {
                shared.advance_durable(seq);
                shared.driver_wake.notify_one();
            }
            Ok(Err(e)) => tracing::error!(error = %e, "outbox flush failed; retrying at the next append"),
            Err(e) => tracing::error!(error = %e, "outbox flush panicked"),
        }
    }
}

/// Owns the event loop and always polls it; a fresh client and event loop per connection attempt.
async fn poller(
    base: mqtt::Options,
    shared: Arc<Shared>,
    (min, max): (Duration, Duration),
    tx: mpsc::UnboundedSender<Polled>,
    stop: CancellationToken,
) {
    let status_topic = topics::topic(&shared.device, Channel::Status);
    let mut attempt = 0u32;
    let mut generation = 0u64;
    loop {
        generation += 1;
        let mut options = base.clone();
        let will = shared.seal(&shared.status().last_will()).unwrap_or_default();
        options.will = (status_topic.clone(), will);
        let (client, mut eventloop) = mqtt::connect(&options);
        if tx.send(Polled::Client(generation, client)).is_err() {
            return;
        }
        loop {
            let polled = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                polled = eventloop.poll() => polled,
            };
            match polled {
                Ok(Wire::Other) => {}
                Ok(wire) => {
                    if matches!(wire, Wire::Connected { .. }) {
                        attempt = 0;
                    }
                    let done = wire == Wire::DisconnectSent;
                    if tx.send(Polled::Wire(generation, wire)).is_err() || done {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Polled::Down(generation, e));
                    break;
                }
            }
        }
        let delay = backoff(attempt, min, max, fastrand::f64());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

struct Driver {
    shared: Arc<Shared>,
    commands_tx: mpsc::Sender<Command>,
    window: usize,
    generation: u64,
    client: Option<Client>,
    connected: bool,
    /// Handed to the client, not yet written (no packet id yet), in order.
    sent: VecDeque<Sent>,
    inflight: HashMap<u16, Sent>,
    /// The highest seq handed to the current connection.
    cursor: u64,
    published_status: Option<Status>,
    logged_kinds: HashSet<&'static str>,
    /// The connect failure last logged at WARN: each new kind is logged once, repeats at debug.
    logged_failure: Option<ConnectFailure>,
    draining: bool,
    offline_sent: bool,
    offline_acked: bool,
    disconnect_requested: bool,
    disconnected: bool,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Polled>, shutdown: CancellationToken, timeout: Duration) {
        let mut deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                polled = rx.recv() => match polled {
                    Some(polled) => self.on_polled(polled),
                    None => break,
                },
                _ = self.shared.driver_wake.notified() => self.on_status(),
                _ = shutdown.cancelled(), if deadline.is_none() => {
                    self.shared.closed.store(true, Ordering::Release);
                    self.shared.flush_wanted.notify_one();
                    self.draining = true;
                    deadline = Some(Instant::now() + timeout);
                    tracing::info!(pending = self.shared.outbox.stats().messages, "link shutting down");
                }
                _ = sleep_until(deadline) => {
                    let pending = self.shared.outbox.stats().messages;
                    if pending > 0 {
                        tracing::warn!(pending, "link shutdown deadline reached; the rest stays in the outbox");
                    } else {
                        // Everything was delivered; only the goodbye was not confirmed in time.
                        tracing::warn!(
                            offline_sent = self.offline_sent,
                            offline_acked = self.offline_acked,
                            "link shutdown deadline reached before the broker confirmed the offline status; it \
                             publishes the last will instead"
                        );
                    }
                    break;
                }
            }
            self.feed();
            if self.draining && self.shutdown_step() {
                break;
            }
        }
        self.shared.connected.store(false, Ordering::Release);
    }

    fn on_polled(&mut self, polled: Polled) {
        match polled {
            Polled::Client(generation, client) => {
                self.generation = generation;
                self.client = Some(client);
                self.reset();
            }
            Polled::Wire(generation, wire) if generation == self.generation => self.on_wire(wire),
            Polled::Down(generation, down) if generation == self.generation => {
                if self.connected {
                    tracing::warn!(
                        error = %down.detail,
                        "lost the broker connection; replaying unacknowledged messages later"
                    );
                } else {
                    self.on_connect_failure(down);
                }
                self.client = None;
                self.reset();
            }
            Polled::Wire(..) | Polled::Down(..) => {}
        }
    }

    fn on_connect_failure(&mut self, down: Down) {
        let Down { failure, detail } = down;
        self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
        *self.shared.connect_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
        let reason = failure.as_str();
        if self.logged_failure != Some(failure) {
            tracing::warn!(reason, error = %detail, "{}; retrying with backoff", failure.hint());
        } else {
            tracing::debug!(reason, error = %detail, "cannot connect to the broker");
        }
        self.logged_failure = Some(failure);
    }

    fn reset(&mut self) {
        self.connected = false;
        self.shared.connected.store(false, Ordering::Release);
        self.sent.clear();
        self.inflight.clear();
        self.cursor = 0;
        self.published_status = None;
    }

    fn on_wire(&mut self, wire: Wire) {
        match wire {
            Wire::Connected { session_present } => {
                self.connected = true;
                self.logged_failure = None;
                *self.shared.connect_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.shared.connected.store(true, Ordering::Release);
                self.shared.connects.fetch_add(1, Ordering::Relaxed);
                let pending = self.shared.outbox.stats().messages;
                tracing::info!(session_present, pending, "connected to the broker");
                if let Some(client) = &self.client {
                    client.subscribe(&topics::topic(&self.shared.device, Channel::Commands));
                }
                self.on_status();
            }
            Wire::PublishSent(pkid) => match self.sent.pop_front() {
                Some(sent) => {
                    self.inflight.insert(pkid, sent);
                }
                None => tracing::debug!(pkid, "a publish was written that the link did not send"),
            },
            Wire::PubAck { pkid, accepted } => self.on_puback(pkid, accepted),
            Wire::Message { topic, payload } => self.on_command(&topic, &payload),
            Wire::DisconnectSent => self.disconnected = true,
            Wire::Other => {}
        }
    }

    fn on_puback(&mut self, pkid: u16, accepted: bool) {
        match self.inflight.remove(&pkid) {
            Some(Sent::Outbox(seq)) => {
                if !accepted {
                    tracing::warn!(seq, "the broker refused a message; dropping it rather than retrying forever");
                }
                if let Err(e) = self.shared.outbox.ack(seq) {
                    tracing::error!(seq, error = %e, "cannot delete an acknowledged message; it will be resent");
                }
                self.shared.acked.fetch_add(1, Ordering::Relaxed);
                self.shared.flush_wanted.notify_one();
            }
            Some(Sent::Status { offline }) => self.offline_acked |= offline,
            None => tracing::debug!(pkid, "PUBACK for a packet id not in flight"),
        }
    }

    /// Publishes the retained status if it changed since this connection last published it.
    fn on_status(&mut self) {
        if !self.connected || self.offline_sent {
            return;
        }
        let status = self.shared.status();
        if self.published_status.as_ref() == Some(&status) {
            return;
        }
        if self.publish_status(&status, false) {
            self.published_status = Some(status);
        }
    }

    fn publish_status(&mut self, status: &Status, offline: bool) -> bool {
        let Some(client) = &self.client else { return false };
        let payload = match self.shared.seal(status) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the status");
                return false;
            }
        };
        let sent = client.publish(&topics::topic(&self.shared.device, Channel::Status), true, payload);
        if sent {
            self.sent.push_back(Sent::Status { offline });
        }
        sent
    }

    /// Hands durable messages after the cursor to MQTT while the window has room.
    fn feed(&mut self) {
        if !self.connected || self.offline_sent {
            return;
        }
        let Some(client) = &self.client else { return };
        let room = self.window.saturating_sub(self.sent.len() + self.inflight.len());
        if room == 0 {
            return;
        }
        let pending = match self.shared.outbox.pending_after(self.cursor, room) {
            Ok(pending) => pending,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return;
            }
        };
        for message in pending {
            let topic = topics::topic(&self.shared.device, message.channel);
            if !client.publish(&topic, false, message.payload) {
                break;
            }
            self.sent.push_back(Sent::Outbox(message.seq));
            self.cursor = message.seq;
            self.shared.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One step of the graceful shutdown; true when it is complete.
    fn shutdown_step(&mut self) -> bool {
        if self.disconnected {
            return true;
        }
        let outbox = &self.shared.outbox;
        let drained = outbox.stats().messages == 0 && !outbox.needs_flush();
        if !self.connected {
            // The broker already published the last will when the connection dropped.
            return drained;
        }
        if drained && !self.offline_sent {
            let offline = self.shared.status().last_will();
            self.offline_sent = self.publish_status(&offline, true);
        }
        if self.offline_acked && !self.disconnect_requested {
            if let Some(client) = &self.client {
                self.disconnect_requested = client.disconnect();
            }
        }
        false
    }

    fn on_command(&mut self, topic: &str, payload: &[u8]) {
        let device = &self.shared.device;
        let result = if topic != topics::topic(device, Channel::Commands) {
            Err(("wrong_topic", topic.chars().take(200).collect()))
        } else {
            auth::open(payload, device, &self.shared.key)
                .map_err(|e| (auth_kind(&e), e.to_string()))
                .and_then(|bytes| protocol::decode::<Command>(&bytes).map_err(|e| (protocol_kind(&e), e.to_string())))
        };
        let (kind, detail) = match result {
            Ok(command) => match self.commands_tx.try_send(command) {
                Ok(()) => {
                    self.shared.commands.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(mpsc::error::TrySendError::Full(c)) => ("queue_full", format!("command {} not taken", c.id)),
                Err(mpsc::error::TrySendError::Closed(c)) => ("no_receiver", format!("command {} not taken", c.id)),
            },
            Err(rejected) => rejected,
        };
        self.shared.rejected_commands.fetch_add(1, Ordering::Relaxed);
        // Once per kind at WARN: a flood of forged commands must not flood the log.
        if self.logged_kinds.insert(kind) {
            tracing::warn!(kind, error = %detail, "dropped a command (further ones of this kind are logged at debug)");
        } else {
            tracing::debug!(kind, error = %detail, "dropped a command");
        }
    }
}

fn auth_kind(error: &AuthError) -> &'static str {
    match error {
        AuthError::TooLarge { .. } => "too_large",
        AuthError::Malformed(_) => "malformed_envelope",
        AuthError::DeviceMismatch { .. } => "device_mismatch",
        AuthError::BadMac(_) => "bad_mac",
        AuthError::Key(_) => "key",
    }
}

fn protocol_kind(error: &ProtocolError) -> &'static str {
    match error {
        ProtocolError::TooLarge { .. } => "too_large",
        ProtocolError::UnsupportedSchema { .. } => "unsupported_schema",
        ProtocolError::UnknownField(_) => "unknown_field",
        ProtocolError::Malformed(_) => "malformed_command",
        ProtocolError::Invalid(_) => "invalid_command",
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
