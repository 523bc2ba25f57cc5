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
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
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
