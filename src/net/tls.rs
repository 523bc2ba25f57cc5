//! The TLS client side shared by the HTTP client: one rustls configuration per process (ring,
//! TLS 1.2 and 1.3, the webpki root certificates), built on first use.

use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

/// The process's client configuration. Building it parses the root certificates, so it is
/// done once, not per connection; an error (which would be a build problem) is kept too.
pub fn client_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            #[allow(unused_mut)]
            let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            // Unit tests also trust their own CA (src/net/test_tls/), for real handshakes
            // against a loopback server; the binary never does.
            #[cfg(test)]
            roots.add(rustls::pki_types::CertificateDer::from(TEST_CA)).map_err(|e| format!("test CA: {e}"))?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// A new client session for `host` (a DNS name or an IP address).
pub fn session(host: &str) -> Result<rustls::ClientConnection, String> {
    let name = ServerName::try_from(host.to_string()).map_err(|_| format!("{host} is not a valid TLS server name"))?;
    rustls::ClientConnection::new(client_config()?, name).map_err(|e| format!("TLS setup for {host}: {e}"))
}

/// The CA of the unit tests' TLS server (`localhost`, 127.0.0.1; made with openssl, valid
/// until 2126; its key was thrown away).
#[cfg(test)]
const TEST_CA: &[u8] = include_bytes!("test_tls/ca.der");

/// The unit tests' TLS server configuration: the leaf certificate the test CA signed.
#[cfg(test)]
pub(crate) fn test_server_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let leaf = CertificateDer::from(include_bytes!("test_tls/leaf.der").as_slice());
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(include_bytes!("test_tls/leaf.key.der").as_slice()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf], key)
        .unwrap();
    Arc::new(config)
}
