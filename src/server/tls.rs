//! TLS for `[[listen]]` entries with `tls`: rustls (ring provider) with ALPN h2 and http/1.1,
//! certificate chain and key read from PEM files.
//!
//! Each TLS listener's `ServerConfig` asks a [`CertResolver`] for its certificate, so a reload
//! swaps the certificate atomically without rebuilding the listener: handshakes already under
//! way finish with the old key, every later one gets the new.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("{}: cannot read certificate chain: {reason}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key file could not be read or holds no PEM private key.
    #[error("{}: cannot read private key: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("{}: certificate and key cannot be used together: {reason}", cert.display())]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

pub(crate) use crate::crypto::crypto_provider;

/// Loads a server configuration from PEM files, offering ALPN `h2` and `http/1.1`.
pub(crate) fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let key = load_certified_key(cert, key)?;
    server_config(Arc::new(CertResolver::new(key)), cert)
}

/// The certificate a TLS listener presents, replaceable at any time (reload).
#[derive(Debug)]
pub(crate) struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    /// A resolver presenting `key`.
    pub(crate) fn new(key: Arc<CertifiedKey>) -> Self {
        Self { current: ArcSwap::new(key) }
    }

    /// Presents `key` from the next handshake on.
    pub(crate) fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A rustls configuration (ALPN `h2`, `http/1.1`) whose certificate comes from `resolver`.
/// `cert` only names the file in errors.
pub(crate) fn server_config(resolver: Arc<CertResolver>, cert: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_no_client_auth().with_cert_resolver(resolver))
        .map_err(|e| TlsError::Config { cert: cert.to_owned(), reason: e.to_string() })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads a certificate chain and its private key from PEM files and checks that they belong
/// together.
pub(crate) fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate { path: cert.to_owned(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate { path: cert.to_owned(), reason: "no CERTIFICATE block found".into() });
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.to_owned(), reason: e.to_string() })?;
    let certified = CertifiedKey::from_der(chain, key_der, &crypto_provider())
        .map_err(|e| TlsError::Config { cert: cert.to_owned(), reason: e.to_string() })?;
    Ok(Arc::new(certified))
}
