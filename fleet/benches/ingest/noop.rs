//! The broker-alone baseline's no-op subscriber: the fleet's subscriptions (every device's status, telemetry and
//! events, QoS 1 as the fleet subscribes), each message counted and dropped.
//!
//! It runs on its own thread with its own single-threaded runtime, so the thousands of simulated devices on the
//! bench's runtime cannot starve it: what it counts is what the broker delivered, not how often it was polled.
//! [`Subscriber::start`] returns only once the broker acknowledged every subscription (SUBACK), and connection
//! losses are counted, so a baseline taken over a broken session shows as such.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use outpost_common::topics::{self, Channel};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// A running no-op subscriber.
#[derive(Debug)]
pub struct Subscriber {
    received: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// Connects to `host:port`, subscribes, and returns once the SUBACK granted every filter (or fails after
    /// `timeout`).
    pub async fn start(host: &str, port: u16, user: &str, password: &str, timeout: Duration) -> Result<Subscriber> {
        let mut options = MqttOptions::new(format!("{user}-noop"), host, port);
        options
            .set_credentials(user, password)
            .set_keep_alive(Duration::from_secs(60))
            .set_clean_session(true)
            .set_max_packet_size(2 << 20, 2 << 20);
        let received = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (count, losses, token) = (received.clone(), lost.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("noop-subscriber".into())
            .spawn(move || runtime.block_on(run(options, count, losses, token, ready_tx)))?;
        let subscriber = Subscriber { received, lost, stop, thread: Some(thread) };
        match tokio::time::timeout(timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(subscriber),
            Ok(Ok(Err(e))) => bail!("no-op subscriber: {e}"),
            Ok(Err(_)) => bail!("no-op subscriber: stopped before subscribing"),
            Err(_) => bail!("no-op subscriber: no SUBACK within {timeout:?}"),
        }
    }

    /// Messages received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Connection losses so far (each one followed by a reconnect and new subscriptions).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(
    options: MqttOptions,
    received: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    stop: CancellationToken,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let filters: Vec<String> =
        [Channel::Status, Channel::Telemetry, Channel::Events].into_iter().map(topics::all_devices).collect();
    let mut ready = Some(ready);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(_))) => {
                received.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let subscribe = filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(subscribe) {
                    tracing::warn!(error = %e, "no-op subscriber: subscribe not queued");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack.return_codes.iter().all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                if let Some(tx) = ready.take() {
                    let _ = tx.send(if granted { Ok(()) } else { Err(format!("subscription refused: {ack:?}")) });
                } else if !granted {
                    tracing::warn!(?ack, "no-op subscriber: resubscription refused");
                }
            }
            Ok(_) => {}
            Err(e) => {
                lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "no-op subscriber: connection lost; reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let _ = client.try_disconnect();
}
