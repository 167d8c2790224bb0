//! HTTPS for the API: an [`axum::serve::Listener`] that hands axum only connections whose TLS handshake finished.
//!
//! `Design:` the TCP accept loop never waits on a handshake. Each connection is handshaken on its own task under a
//! deadline and, once done, queued for axum; so a client that connects and never sends a ClientHello costs one task
//! until its deadline and delays nobody (the same shape as the broker's TLS front). A failed or timed-out handshake
//! (plain HTTP to the TLS port, an untrusted client, a port scanner) is logged at debug and dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// `[http.tls]`: serve the API over HTTPS with this certificate (PEM chain) and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// A connection that has not finished its handshake by then is closed.
    #[serde(default = "default_handshake")]
    pub handshake_timeout_secs: u64,
}

/// The TLS handshake timeout of the API's and the broker's listeners unless configured.
pub(crate) fn default_handshake() -> u64 {
    10
}

/// A certificate or key that cannot be used, with the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// A server-side TLS acceptor (TLS 1.2 and 1.3, ring, no client certificates) from PEM files.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("{}: {e}", cert_file.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{}: no certificate", cert_file.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError(format!("{}: {e}", key_file.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Connections that completed their handshake, for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

/// Handshakes in flight at most; beyond that, new connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 1024;

impl TlsListener {
    /// Starts accepting on `listener`; the accept loop ends with `shutdown` (or when axum drops the listener).
    pub fn start(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    a = listener.accept() => a,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTPS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ended (shutdown): nothing more will come; axum's graceful shutdown ends the serve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
