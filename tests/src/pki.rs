//! Test certificates made on the fly with rcgen (ECDSA P-256 keys, ring): a CA, server certificates for
//! `127.0.0.1` and `localhost`, client certificates. Written as PEM files for Mosquitto and the agent's `tls` config.
//! Every key here is TEST-ONLY: generated per test, never trusted outside it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test certificate authority. Its certificate is at [`TestCa::cert`]; what it issues is written next to it.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
    /// The CA certificate (PEM): the `cafile` of a broker or the `tls.ca_file` of an agent.
    pub cert: PathBuf,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa").field("name", &self.name).field("cert", &self.cert).finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new self-signed CA with common name `name`; its files go into `dir` (which must exist).
    pub fn new(dir: &Path, name: &str) -> io::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(io::Error::other)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(io::Error::other)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(io::Error::other)?;
        let cert = dir.join(format!("{name}.ca.pem"));
        std::fs::write(&cert, issuer.pem())?;
        Ok(TestCa { issuer, dir: dir.to_path_buf(), name: name.to_string(), cert })
    }

    /// A server certificate valid for `127.0.0.1` and `localhost`.
    pub fn server(&self, name: &str) -> io::Result<CertFiles> {
        self.server_for(name, &["127.0.0.1", "localhost"])
    }

    /// A server certificate valid for `hosts` only (DNS names or IP addresses).
    pub fn server_for(&self, name: &str, hosts: &[&str]) -> io::Result<CertFiles> {
        self.issue(name, hosts.iter().map(|h| h.to_string()).collect(), ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with common name `name`.
    pub fn client(&self, name: &str) -> io::Result<CertFiles> {
        self.issue(name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> io::Result<CertFiles> {
        let mut params = CertificateParams::new(names).map_err(io::Error::other)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().map_err(io::Error::other)?;
        let cert = params.signed_by(&key, &*self.issuer).map_err(io::Error::other)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{}.{name}.pem", self.name)),
            key: self.dir.join(format!("{}.{name}.key", self.name)),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}
