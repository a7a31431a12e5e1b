//! libp2p's TLS 1.3 handshake (`/tls/1.0.0`, the libp2p TLS specification)
//! with the bulk cipher chosen for this machine.
//!
//! `libp2p-tls` proposes ChaCha20-Poly1305 first, and a TLS 1.3 server
//! follows the client's order, so every libp2p TLS connection ends up on
//! ChaCha20-Poly1305, as every noise connection does. On a CPU with AES and
//! carry-less multiply instructions AES-128-GCM costs a fraction of that
//! (ring's AES-GCM on this project's 2-core VM: fetcher user time 1.6 s
//! instead of 2.8 s for 2 GiB, server CPU 2.4 s instead of 3.4 s; see
//! docs/benchmarks.md). This upgrade is `libp2p-tls`'s, with one change:
//! as a client it proposes AES-128-GCM first where the CPU has those
//! instructions, and ChaCha20-Poly1305 first where it has not. The server
//! side is `libp2p-tls`'s own configuration: it offers all three TLS 1.3
//! suites and follows the client's order. Certificates, their libp2p
//! extension and the peer id check are `libp2p-tls`'s code.
//!
//! The wire protocol is unchanged: any libp2p TLS peer interoperates (a stock
//! `libp2p-tls` client gets ChaCha20-Poly1305 from us, as it asks).

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::{Keypair, PeerId};
use libp2p::tls::certificate;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme, SupportedCipherSuite};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

pub use libp2p::tls::TlsStream;

/// The libp2p TLS protocol name.
pub const PROTOCOL: &str = "/tls/1.0.0";

/// This node's TLS 1.3 cipher suites as a client, most preferred first:
/// AES-GCM first where [`aes_in_hardware`], ChaCha20-Poly1305 first
/// elsewhere. The server follows the client's order, so the first suite is
/// the bulk cipher of the TLS connections this node dials.
pub fn preferred_suites() -> [SupportedCipherSuite; 3] {
    if aes_in_hardware() {
        [
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ]
    } else {
        [
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ]
    }
}

/// What a TLS connection this node dials encrypts bulk data with, for
/// humans: "TLS 1.3, AES-128-GCM" or "TLS 1.3, ChaCha20-Poly1305".
pub fn bulk_cipher() -> &'static str {
    if aes_in_hardware() {
        "TLS 1.3, AES-128-GCM"
    } else {
        "TLS 1.3, ChaCha20-Poly1305"
    }
}

/// AES rounds and GHASH's carry-less multiply in hardware: where ring's
/// AES-GCM beats its ChaCha20-Poly1305. Without them ring's AES is a
/// constant-time software fallback several times slower than ChaCha20.
/// x86_64: AES-NI, PCLMULQDQ and AVX; aarch64: AES and PMULL; false on
/// other architectures.
pub fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The `/tls/1.0.0` security upgrade; see the module documentation.
#[derive(Clone)]
pub struct Config {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The self-signed certificate carrying our identity could not be made.
    #[error("TLS certificate for our identity: {0}")]
    Certificate(#[from] certificate::GenError),
    /// rustls refused the client configuration (cipher suites that do not
    /// support TLS 1.3, say).
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The handshake of an inbound connection failed (certificate checks
    /// included).
    #[error("TLS handshake as server: {0}")]
    Server(std::io::Error),
    /// The handshake of an outbound connection failed (certificate checks
    /// included).
    #[error("TLS handshake as client: {0}")]
    Client(std::io::Error),
    /// The peer's certificate is not a valid libp2p certificate.
    #[error("peer's certificate: {0}")]
    BadCertificate(#[from] certificate::ParseError),
    /// The handshake completed without exactly one peer certificate (the
    /// verifiers should have refused it).
    #[error("TLS handshake completed without exactly one peer certificate")]
    NoCertificate,
}

impl Config {
    /// Like `libp2p::tls::Config::new`: a certificate for `identity`, with
    /// the client preference of [`preferred_suites`].
    pub fn new(identity: &Keypair) -> Result<Self, ConfigError> {
        Self::with_suites(identity, &preferred_suites())
    }

    /// With the client's cipher suite preference given (tests,
    /// benchmarks); the server side is `libp2p-tls`'s either way.
    pub fn with_suites(
        identity: &Keypair,
        suites: &[SupportedCipherSuite],
    ) -> Result<Self, ConfigError> {
        let server = libp2p::tls::make_server_config(identity)?;
        // libp2p-tls's client config, for its certificate resolver (the
        // certificate carrying our identity's signature).
        let stock = libp2p::tls::make_client_config(identity, None)?;
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = suites.to_vec();
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(ConfigError::Rustls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier))
            .with_client_cert_resolver(stock.client_auth_cert_resolver.clone());
        client.alpn_protocols = stock.alpn_protocols.clone();
        Ok(Config {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = UpgradeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept(socket)
                .await
                .map_err(UpgradeError::Server)?;
            let peer_id = peer_of(stream.get_ref().1)?;
            Ok((peer_id, stream.into()))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = UpgradeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // The specification: a client MUST NOT send a server name; an
            // unspecified IP address turns SNI off in rustls.
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, socket)
                .await
                .map_err(UpgradeError::Client)?;
            let peer_id = peer_of(stream.get_ref().1)?;
            Ok((peer_id, stream.into()))
        }
        .boxed()
    }
}

/// The peer id of the one certificate the verifiers let through.
fn peer_of(state: &rustls::CommonState) -> Result<PeerId, UpgradeError> {
    match state.peer_certificates() {
        Some([cert]) => Ok(certificate::parse(cert)?.peer_id()),
        // Both verifiers refuse anything but exactly one certificate, so
        // this is a handshake that should not have completed.
        _ => Err(UpgradeError::NoCertificate),
    }
}

/// The client's check of a server certificate, as `libp2p-tls`'s: exactly
/// one self-signed certificate with a valid libp2p extension; the handshake
/// signature checked by that certificate's key. Which peer id the server
/// must have is checked by the swarm against the dialed address.
#[derive(Debug)]
struct ServerVerifier;

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "libp2p TLS requires exactly one certificate".into(),
            ));
        }
        certificate::parse(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is configured; refuse rather than panic.
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        certificate::parse(cert)?
            .verify_signature(dss.scheme, message, dss.signature())
            .map_err(rustls::Error::from)?;
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // libp2p-tls's list, in its order.
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}
