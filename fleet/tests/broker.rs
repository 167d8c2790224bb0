//! The embedded broker as devices meet it: registry credentials (right, wrong, revoked, someone else's client id),
//! and the TLS port, which an idle connection must not block.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_common::store::SledStore;
use outpost_fleet::broker::{self, BrokerConfig, TlsListen};
use outpost_fleet::registry::{self, Registry};
use outpost_tests::broker::free_port;
use outpost_tests::pki::TestCa;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject as _;
use tokio_util::sync::CancellationToken;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn registry(dir: &std::path::Path) -> Registry {
    let store = SledStore::open(&dir.join("db")).expect("store");
    Registry::new(store, registry::load_master(&dir.join("master.key")).expect("master"))
}

fn config() -> BrokerConfig {
    let port = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    BrokerConfig {
        listen: port(free_port().expect("port")),
        listen_v5: port(free_port().expect("port")),
        ..BrokerConfig::default()
    }
}

/// Connects and returns whether the broker accepted (CONNACK success) within 5 s.
async fn connects(port: u16, client: &str, user: &str, pass: &str, tls: Option<&std::path::Path>) -> bool {
    let mut options = MqttOptions::new(client, "127.0.0.1", port);
    options.set_credentials(user, pass).set_keep_alive(Duration::from_secs(5));
    if let Some(ca) = tls {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("ca").flatten() {
            roots.add(cert).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
    }
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    let attempt = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return ack.code == rumqttc::ConnectReturnCode::Success,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt).await.unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_connect_with_their_credentials_only() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = registry(dir.path());
    let config = config();
    let embedded = broker::start_embedded(&config, reg.clone(), CancellationToken::new()).await.expect("starts");
    let port = embedded.listen.port();
    let a = reg.enroll("cam-a", Default::default()).expect("enroll");
    let b = reg.enroll("cam-b", Default::default()).expect("enroll");
    assert!(connects(port, "cam-a", "cam-a", &a.mqtt_password, None).await, "right credentials");
    assert!(!connects(port, "cam-a", "cam-a", "wrong", None).await, "wrong password");
    assert!(!connects(port, "cam-a", "cam-a", &b.mqtt_password, None).await, "another device's password");
    assert!(!connects(port, "cam-b", "cam-a", &a.mqtt_password, None).await, "another device's client id");
    assert!(!connects(port, "ghost", "ghost", "x", None).await, "not enrolled");
    reg.revoke("cam-a").expect("revoke");
    assert!(!connects(port, "cam-a", "cam-a", &a.mqtt_password, None).await, "revoked");
    let i = &embedded.internal;
    assert!(connects(port, &format!("{}-ingest", i.username), &i.username, &i.password, None).await, "the fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_does_not_delay_other_devices_on_the_tls_port() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = registry(dir.path());
    let ca = TestCa::new(dir.path(), "fleet").expect("ca");
    let server = ca.server("broker").expect("server cert");
    let tls_port = free_port().expect("port");
    let mut config = config();
    config.tls = Some(TlsListen {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], tls_port)),
        listen_v5: None,
        cert_file: server.cert.clone(),
        key_file: server.key.clone(),
        handshake_timeout_secs: 30,
    });
    broker::start_embedded(&config, reg.clone(), CancellationToken::new()).await.expect("starts");
    let creds = reg.enroll("cam-tls", Default::default()).expect("enroll");
    // Idle connections that never send a ClientHello, held open for the whole test.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await.expect("tcp"));
    }
    let started = Instant::now();
    assert!(connects(tls_port, "cam-tls", "cam-tls", &creds.mqtt_password, Some(&ca.cert)).await, "TLS connect");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "connected in {took:?} despite {} idle connections", idle.len());
    // A certificate from another CA is refused.
    let other = TestCa::new(dir.path(), "other").expect("ca");
    assert!(!connects(tls_port, "cam-tls", "cam-tls", &creds.mqtt_password, Some(&other.cert)).await);
}
