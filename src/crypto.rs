//! The one rustls crypto provider wsgate uses (ring), for the server's listeners and the
//! client alike, so no process-wide default is needed.

use std::sync::Arc;

/// The single crypto provider wsgate uses (ring).
pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
