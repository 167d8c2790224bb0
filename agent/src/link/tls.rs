//! The rustls client configuration for `mqtts://`: ring as the only crypto provider, the CA file as the only trust
//! root, and an optional client certificate for mTLS.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{LinkError, TlsFiles};

/// Builds the client configuration from PEM files. `ca_file` is required: the agent trusts no system roots, so a
/// device only ever talks to the fleet's broker.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, LinkError> {
    // Harmless when a provider is already installed; rumqttc and other crates may look for the default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_file = files.ca_file.as_deref().ok_or_else(|| tls("mqtts:// needs tls.ca_file".into()))?;
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_file)? {
        roots.add(cert).map_err(|e| tls(format!("{}: {e}", ca_file.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => {
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(format!("{}: {e}", key.display())))?;
            builder.with_client_auth_cert(certs(cert)?, key).map_err(|e| tls(e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(tls("tls.client_cert and tls.client_key go together".into())),
    };
    Ok(Arc::new(config))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, LinkError> {
    let read = |e: &dyn std::fmt::Display| tls(format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(&e))?;
    if certs.is_empty() {
        return Err(tls(format!("{}: no PEM certificate in it", path.display())));
    }
    Ok(certs)
}

fn tls(detail: String) -> LinkError {
    LinkError::Tls(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_unreadable_files_are_errors() {
        let none = TlsFiles::default();
        assert!(client_config(&none).is_err_and(|e| e.to_string().contains("ca_file")));
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let files = TlsFiles { ca_file: Some(empty), ..TlsFiles::default() };
        assert!(client_config(&files).is_err_and(|e| e.to_string().contains("no PEM certificate")));
        let files = TlsFiles { ca_file: Some(dir.path().join("absent.pem")), ..TlsFiles::default() };
        assert!(client_config(&files).is_err());
    }
}
