//! The embedded MQTT broker: rumqttd on loopback, devices authenticated against the registry, and our own TLS front.
//!
//! Design: rumqttd's TLS listener handshakes inline in its accept loop with no timeout, so one idle connection
//! stalls every device (see ../shared/DEPENDENCIES.md). Its plain listeners therefore stay on loopback, and the TLS
//! port is ours: each connection is accepted on its own task, must finish its handshake within a timeout, and is then
//! spliced to the loopback listener. A slow or idle client only ever holds its own task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `embedded` runs rumqttd in-process; otherwise `url` names an external broker (Mosquitto, EMQX, …).
    pub embedded: bool,
    /// Plain MQTT 3.1.1 listener of the embedded broker. Keep it on loopback unless devices are on a trusted network.
    pub listen: SocketAddr,
    /// Plain MQTT 5 listener of the embedded broker.
    pub listen_v5: SocketAddr,
    pub tls: Option<TlsListen>,
    /// The external broker, `mqtt://host:port`, when not embedded.
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Shared-subscription group, so several fleet replicas on one external broker split the ingest.
    pub shared_group: Option<String>,
    /// For Mosquitto: the folder where the fleet keeps a `passwd` and an `acl` file current (at start and after
    /// every enrollment or revocation); point Mosquitto's `password_file`/`acl_file` at them and reload it (SIGHUP).
    pub mosquitto_dir: Option<PathBuf>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            embedded: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            listen_v5: SocketAddr::from(([127, 0, 0, 1], 1884)),
            tls: None,
            url: None,
            username: None,
            password: None,
            shared_group: None,
            mosquitto_dir: None,
        }
    }
}

/// `[broker.tls]`: the devices' TLS port, in front of the embedded broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListen {
    /// MQTT 3.1.1 over TLS (8883 by convention).
    pub listen: SocketAddr,
    /// MQTT 5 over TLS, when wanted.
    #[serde(default)]
    pub listen_v5: Option<SocketAddr>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default = "crate::api::tls::default_handshake")]
    pub handshake_timeout_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("the embedded broker did not start: {0}")]
    Start(String),
}

/// The credentials the fleet's own MQTT client uses on the embedded broker (generated per start).
#[derive(Debug, Clone)]
pub struct InternalClient {
    pub username: String,
    pub password: String,
}

/// A running embedded broker. rumqttd cannot be stopped: it lives as long as the process.
#[derive(Debug)]
pub struct Embedded {
    pub listen: SocketAddr,
    pub listen_v5: SocketAddr,
    pub internal: InternalClient,
}

/// Starts rumqttd with registry authentication on its plain listeners, and the TLS front when configured.
pub async fn start_embedded(
    config: &BrokerConfig,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<Embedded, BrokerError> {
    let internal = InternalClient {
        username: "outpost-fleet".into(),
        password: crate::registry::new_secret().map_err(|e| BrokerError::Start(e.to_string()))?,
    };
    let settings = |name: &str, listen: SocketAddr| {
        let mut connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 1024 * 1024,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let (registry, internal) = (registry.clone(), internal.clone());
        connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
            // A device connects as itself only (client id = username = device id), so it cannot take over another
            // device's session; the fleet's own client has a per-start secret.
            let ok = if user == internal.username {
                pass == internal.password && client_id.starts_with(&internal.username)
            } else {
                client_id == user && registry.check_mqtt(&user, &pass)
            };
            if !ok {
                tracing::warn!(client = %client_id, user = %user, "MQTT connection refused: bad credentials or revoked");
            }
            async move { ok }
        });
        rumqttd::ServerSettings { name: name.to_string(), listen, tls: None, next_connection_delay_ms: 1, connections }
    };
    let broker_config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 100_000,
            max_outgoing_packet_count: 1_000,
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: rumqttd::Strategy::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), settings("v4", config.listen))])),
        v5: Some(HashMap::from([("v5".to_string(), settings("v5", config.listen_v5))])),
        ..rumqttd::Config::default()
    };
    // Check the ports first: rumqttd reports a busy port only in its log, from its own thread.
    for addr in [config.listen, config.listen_v5] {
        drop(std::net::TcpListener::bind(addr).map_err(|source| BrokerError::Listen { addr, source })?);
    }
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(broker_config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| BrokerError::Start(e.to_string()))?;
    wait_listening(config.listen).await?;
    wait_listening(config.listen_v5).await?;
    if let Some(tls) = &config.tls {
        let acceptor = tls_acceptor(tls)?;
        let timeout = Duration::from_secs(tls.handshake_timeout_secs.max(1));
        let mut fronts = vec![(tls.listen, config.listen)];
        if let Some(v5) = tls.listen_v5 {
            fronts.push((v5, config.listen_v5));
        }
        for (public, inner) in fronts {
            let listener =
                TcpListener::bind(public).await.map_err(|source| BrokerError::Listen { addr: public, source })?;
            tokio::spawn(tls_front(listener, acceptor.clone(), inner, timeout, shutdown.clone()));
            tracing::info!(listen = %public, "MQTT over TLS");
        }
    }
    Ok(Embedded { listen: config.listen, listen_v5: config.listen_v5, internal })
}

async fn wait_listening(addr: SocketAddr) -> Result<(), BrokerError> {
    for _ in 0..500 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(BrokerError::Start(format!("nothing listens on {addr}")))
}

/// The server side of the devices' TLS port, from PEM files.
pub fn tls_acceptor(tls: &TlsListen) -> Result<tokio_rustls::TlsAcceptor, BrokerError> {
    crate::api::tls::acceptor(&tls.cert_file, &tls.key_file).map_err(|e| BrokerError::Tls(e.to_string()))
}

/// Accepts TLS connections, each on its own task with a handshake deadline, and splices them to `inner`.
async fn tls_front(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    inner: SocketAddr,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "TLS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let mut plain = match TcpStream::connect(inner).await {
                Ok(s) => s,
                Err(e) => return tracing::warn!(%peer, error = %e, "the embedded broker is not reachable"),
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        });
    }
}
