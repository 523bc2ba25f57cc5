//! The TLS client side shared by the HTTP client: one rustls configuration per process (ring,
//! TLS 1.2 and 1.3, the webpki root certificates), built on first use, and what it offers.
//!
//! What it offers is narrower than rustls's ring provider, for size: AES-GCM only, ECDHE on
//! P-256 and P-384, no Ed25519, no private keys: what TLS 1.3 requires every server to accept
//! (RFC 8446, 9.1), and what TLS 1.2 servers offer with ECDHE. Leaving the rest out takes
//! 0.13 MB off the static x86_64 binary (2,759,424 -> 2,624,256 bytes before code placement,
//! 2026-12-05): ChaCha20-Poly1305 about 50 KB, Curve25519 (X25519 and Ed25519) 45 KB, the
//! signing code of ring's key provider the rest.

use std::sync::{Arc, OnceLock};

use rustls::crypto::ring::{cipher_suite, kx_group};
use rustls::crypto::{
    CryptoProvider, GetRandomFailed, KeyProvider, SecureRandom, SupportedKxGroup, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::sign::SigningKey;
use rustls::{ClientConfig, SignatureScheme, SupportedCipherSuite};

/// The cipher suites offered: AES-GCM, which every TLS 1.3 server must accept (RFC 8446,
/// 9.1) and TLS 1.2 servers offer with ECDHE. No ChaCha20-Poly1305: a board without AES
/// instructions pays some microseconds per message for that.
static CIPHER_SUITES: &[SupportedCipherSuite] = &[
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
];

/// The key exchange groups offered, the first with a key share. No X25519: P-256 is the one
/// group every TLS 1.3 server must support (RFC 8446, 9.1), and its code is linked anyway, for
/// the ECDSA certificates.
static KEY_EXCHANGE_GROUPS: &[&dyn SupportedKxGroup] = &[kx_group::SECP256R1, kx_group::SECP384R1];

/// The certificate and handshake signatures tether checks: those of rustls's ring provider,
/// in its mapping (rustls 0.23, `crypto/ring/mod.rs`), less Ed25519, which no public CA
/// issues (and no root in webpki-roots has).
static SIGNATURE_CHECKS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        webpki::ring::ECDSA_P256_SHA256,
        webpki::ring::ECDSA_P256_SHA384,
        webpki::ring::ECDSA_P384_SHA256,
        webpki::ring::ECDSA_P384_SHA384,
        webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
        webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        webpki::ring::RSA_PKCS1_2048_8192_SHA384,
        webpki::ring::RSA_PKCS1_2048_8192_SHA512,
        webpki::ring::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
        webpki::ring::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
        webpki::ring::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
    ],
    mapping: &[
        // In TLS 1.2 the scheme does not fix the curve; in TLS 1.3 it does.
        (SignatureScheme::ECDSA_NISTP384_SHA384, &[webpki::ring::ECDSA_P384_SHA384, webpki::ring::ECDSA_P256_SHA384]),
        (SignatureScheme::ECDSA_NISTP256_SHA256, &[webpki::ring::ECDSA_P256_SHA256, webpki::ring::ECDSA_P384_SHA256]),
        (SignatureScheme::RSA_PSS_SHA512, &[webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY]),
        (SignatureScheme::RSA_PSS_SHA384, &[webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY]),
        (SignatureScheme::RSA_PSS_SHA256, &[webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY]),
        (SignatureScheme::RSA_PKCS1_SHA512, &[webpki::ring::RSA_PKCS1_2048_8192_SHA512]),
        (SignatureScheme::RSA_PKCS1_SHA384, &[webpki::ring::RSA_PKCS1_2048_8192_SHA384]),
        (SignatureScheme::RSA_PKCS1_SHA256, &[webpki::ring::RSA_PKCS1_2048_8192_SHA256]),
    ],
};

/// tether shows no client certificate, so it loads no private key. ring's own key provider
/// would link RSA, ECDSA and Ed25519 signing, which a client that only verifies never runs.
#[derive(Debug)]
struct NoPrivateKeys;

impl KeyProvider for NoPrivateKeys {
    fn load_private_key(&self, _key: PrivateKeyDer<'static>) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        Err(rustls::Error::General("tether loads no private keys (it shows no client certificate)".into()))
    }
}

/// The handshakes' random numbers, from the operating system (as ring's own provider does).
#[derive(Debug)]
struct SystemRandom;

impl SecureRandom for SystemRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        getrandom::fill(buf).map_err(|_| GetRandomFailed)
    }
}

/// The provider: ring's primitives, chosen as above. Built field by field, not from ring's
/// `default_provider()`: what that names stays linked even when it is replaced.
fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        kx_groups: KEY_EXCHANGE_GROUPS.to_vec(),
        signature_verification_algorithms: SIGNATURE_CHECKS,
        secure_random: &SystemRandom,
        key_provider: &NoPrivateKeys,
    }
}

/// The process's client configuration. Building it parses the root certificates, so it is
/// done once, not per connection; an error (which would be a build problem) is kept too.
pub fn client_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG.get_or_init(|| new_client_config().map(Arc::new)).clone()
}

/// A client configuration, with its own cache of sessions to resume.
fn new_client_config() -> Result<ClientConfig, String> {
    #[allow(unused_mut)]
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    // Unit tests also trust their own CA (src/net/test_tls/), for real handshakes against a
    // loopback server; the binary never does.
    #[cfg(test)]
    roots.add(rustls::pki_types::CertificateDer::from(TEST_CA)).map_err(|e| format!("test CA: {e}"))?;
    let config = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
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
    test_server_config_with(rustls::crypto::ring::default_provider())
}

/// The same server with its own choice of suites and groups.
#[cfg(test)]
fn test_server_config_with(provider: CryptoProvider) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    let leaf = CertificateDer::from(include_bytes!("test_tls/leaf.der").as_slice());
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(include_bytes!("test_tls/leaf.key.der").as_slice()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf], key)
        .unwrap();
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use rustls::crypto::ring::{cipher_suite as suite, kx_group as group};
    use rustls::{CipherSuite, NamedGroup, ProtocolVersion, ServerConnection};

    use super::*;

    type Agreed = (ProtocolVersion, CipherSuite, NamedGroup);
    type Groups<'a> = &'a [&'static dyn SupportedKxGroup];

    /// A whole handshake in memory between tether's client and a server that offers only
    /// `suites` and `groups` (the test certificate: ECDSA P-256): what they agreed on, or why
    /// either side gave up.
    fn handshake(suites: &[SupportedCipherSuite], groups: &[&'static dyn SupportedKxGroup]) -> Result<Agreed, String> {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = suites.to_vec();
        provider.kx_groups = groups.to_vec();
        let mut server = ServerConnection::new(test_server_config_with(provider)).unwrap();
        // A configuration of its own: a session resumed from an earlier case would test
        // resumption, not what the two sides can agree on.
        let config = Arc::new(new_client_config()?);
        let mut client = rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
        for _ in 0..8 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            // An empty read would tell the side that its peer closed.
            if !wire.is_empty() {
                server.read_tls(&mut wire.as_slice()).unwrap();
            }
            server.process_new_packets().map_err(|e| format!("server: {e}"))?;
            wire.clear();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            if !wire.is_empty() {
                client.read_tls(&mut wire.as_slice()).unwrap();
            }
            client.process_new_packets().map_err(|e| format!("client: {e}"))?;
            if !client.is_handshaking() && !server.is_handshaking() {
                let agreed = (
                    client.protocol_version().unwrap(),
                    client.negotiated_cipher_suite().unwrap().suite(),
                    client.negotiated_key_exchange_group().unwrap().name(),
                );
                return Ok(agreed);
            }
        }
        Err("the handshake did not end".into())
    }

    /// The servers tether can talk to, and the ones it cannot: those that accept only what it
    /// leaves out (ChaCha20-Poly1305, X25519).
    #[test]
    fn handshakes_with_servers_of_each_suite_and_group() {
        use CipherSuite::*;
        use NamedGroup::{secp256r1, secp384r1};
        use ProtocolVersion::{TLSv1_2, TLSv1_3};
        let table: &[(&[SupportedCipherSuite], Groups<'_>, Result<Agreed, &str>)] = &[
            (
                &[suite::TLS13_AES_128_GCM_SHA256],
                &[group::SECP256R1],
                Ok((TLSv1_3, TLS13_AES_128_GCM_SHA256, secp256r1)),
            ),
            (
                &[suite::TLS13_AES_256_GCM_SHA384],
                &[group::SECP384R1],
                Ok((TLSv1_3, TLS13_AES_256_GCM_SHA384, secp384r1)),
            ),
            // A server that prefers X25519 and also has P-256 agrees on P-256.
            (
                &[suite::TLS13_AES_128_GCM_SHA256],
                &[group::X25519, group::SECP256R1],
                Ok((TLSv1_3, TLS13_AES_128_GCM_SHA256, secp256r1)),
            ),
            // A TLS 1.2 server (it has no TLS 1.3 suite).
            (
                &[suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
                &[group::SECP256R1],
                Ok((TLSv1_2, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, secp256r1)),
            ),
            (
                &[suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384],
                &[group::SECP384R1],
                Ok((TLSv1_2, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, secp384r1)),
            ),
            (&[suite::TLS13_CHACHA20_POLY1305_SHA256], &[group::SECP256R1], Err("server: ")),
            (&[suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256], &[group::SECP256R1], Err("server: ")),
            (&[suite::TLS13_AES_128_GCM_SHA256], &[group::X25519], Err("server: ")),
        ];
        for (suites, groups, want) in table {
            let got = handshake(suites, groups);
            match (want, &got) {
                (Ok(want), Ok(got)) => assert_eq!(got, want, "{suites:?} {groups:?}"),
                (Err(prefix), Err(why)) => assert!(why.starts_with(prefix), "{suites:?} {groups:?}: {why}"),
                _ => panic!("{suites:?} {groups:?}: expected {want:?}, got {got:?}"),
            }
        }
    }

    /// No private key can be loaded: there is no client certificate to show.
    #[test]
    fn loads_no_private_key() {
        let key = PrivateKeyDer::from(rustls::pki_types::PrivatePkcs8KeyDer::from(
            include_bytes!("test_tls/leaf.key.der").as_slice(),
        ));
        assert!(provider().key_provider.load_private_key(key).is_err());
    }
}
