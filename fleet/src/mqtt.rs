//! The fleet's own MQTT client: subscribes to every device's status, telemetry and events (through a shared
//! subscription when several replicas share an external broker), hands each message on, and publishes commands
//! sealed for their device.

use std::time::Duration;

use outpost_common::protocol::{self, Command, auth};
use outpost_common::topics::{self, Channel, DeviceId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One message from a device, as received.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: bytes::Bytes,
}

/// Where and as whom the fleet connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: String,
    pub password: String,
    pub shared_group: Option<String>,
}

impl ClientConfig {
    /// From an `mqtt://host:port` URL.
    pub fn from_url(url: &str, client_id: &str, username: &str, password: &str) -> Result<ClientConfig, String> {
        let rest = url.strip_prefix("mqtt://").ok_or_else(|| format!("`{url}`: only mqtt:// is supported here"))?;
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.trim_end_matches('/').parse().map_err(|_| format!("`{url}`: bad port"))?),
            None => (rest.trim_end_matches('/').to_string(), 1883),
        };
        Ok(ClientConfig {
            host,
            port,
            client_id: client_id.into(),
            username: username.into(),
            password: password.into(),
            shared_group: None,
        })
    }
}

/// Publishes commands; cheap to clone.
#[derive(Debug, Clone)]
pub struct Commands {
    client: AsyncClient,
}

impl Commands {
    /// Seals `command` with the device's key and publishes it (QoS 1) on the device's command topic.
    pub async fn send(&self, device: &DeviceId, key: &auth::DeviceKey, command: &Command) -> Result<(), String> {
        let bytes = protocol::encode(command).map_err(|e| e.to_string())?;
        let sealed = auth::seal(key, device, &bytes);
        self.client
            .publish(topics::topic(device, Channel::Commands), QoS::AtLeastOnce, false, sealed)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The options of one of the fleet's connections.
fn options(config: &ClientConfig, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, &config.host, config.port);
    options
        .set_credentials(&config.username, &config.password)
        .set_keep_alive(Duration::from_secs(15))
        .set_clean_session(false)
        .set_max_packet_size(2 << 20, 2 << 20);
    options
}

/// Connects, subscribes (again after every reconnect) and forwards device messages to `out` until `shutdown`.
/// Commands leave on a second connection (client id `<client_id>-commands`) with its own event loop: the
/// subscriber's loop waits whenever the ingest is behind, and commands must not wait behind telemetry.
pub fn start(config: ClientConfig, out: mpsc::Sender<Incoming>, shutdown: CancellationToken) -> Commands {
    let commands = start_publisher(&config, shutdown.clone());
    let (client, mut eventloop) = AsyncClient::new(options(&config, &config.client_id), 1024);
    let filters: Vec<String> = [Channel::Status, Channel::Telemetry, Channel::Events]
        .into_iter()
        .map(|c| {
            let filter = topics::all_devices(c);
            match &config.shared_group {
                Some(group) => topics::shared(group, &filter),
                None => filter,
            }
        })
        .collect();
    tokio::spawn(async move {
        let mut failures = 0u32;
        let lost = "fleet MQTT connection lost; reconnecting";
        while let Some(event) = next_event(&mut eventloop, &shutdown, &mut failures, lost).await {
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    tracing::info!(host = %config.host, port = config.port, "fleet connected to the broker");
                    for f in &filters {
                        let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    // The ingest has stopped: nothing left to hand messages to.
                    let handed = out.send(Incoming { topic: p.topic, payload: p.payload }).await;
                    if handed.is_err() {
                        break;
                    }
                }
                _ => {}
            }
        }
        let _ = client.try_disconnect();
    });
    commands
}

/// The commands connection: publishes only, and its loop does nothing but drive the connection.
fn start_publisher(config: &ClientConfig, shutdown: CancellationToken) -> Commands {
    let (client, mut eventloop) = AsyncClient::new(options(config, &format!("{}-commands", config.client_id)), 4096);
    let publisher = client.clone();
    tokio::spawn(async move {
        let mut failures = 0u32;
        let lost = "fleet commands connection lost; reconnecting";
        while next_event(&mut eventloop, &shutdown, &mut failures, lost).await.is_some() {}
        let _ = publisher.try_disconnect();
    });
    Commands { client }
}

/// The next event of a connection, `None` once `shutdown` is cancelled. A failed poll is logged (the first of a run)
/// and waited out, longer after each (up to 5 s); a ConnAck resets the count.
async fn next_event(
    eventloop: &mut rumqttc::EventLoop,
    shutdown: &CancellationToken,
    failures: &mut u32,
    lost: &'static str,
) -> Option<Event> {
    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => return None,
            e = eventloop.poll() => e,
        };
        match polled {
            Ok(event) => {
                if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                    *failures = 0;
                }
                return Some(event);
            }
            Err(e) => {
                *failures += 1;
                if *failures == 1 {
                    tracing::warn!(error = %e, "{lost}");
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from((*failures).min(25)))).await;
            }
        }
    }
}
