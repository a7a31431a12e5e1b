//! The `/tls/1.0.0` upgrade over real TCP sockets on 127.0.0.1: which bulk
//! cipher two statesync nodes settle on, that stock libp2p peers (TLS or
//! noise only) still connect, and that a certificate without libp2p's
//! extension is refused.

use futures::StreamExt;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
use libp2p::identity::{Keypair, PeerId};
use libp2p::swarm::SwarmEvent;
use libp2p::tcp::tokio::TcpStream;
use libp2p::{Multiaddr, noise, ping, tcp, yamux};
use rustls::CipherSuite;
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256,
};
use statesync_net::tls::{self, TlsStream};
use std::time::Duration;

type Conn = TlsStream<TcpStream>;

/// A connected pair of TCP sockets on 127.0.0.1 (client, server).
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (TcpStream(client.unwrap()), TcpStream(server.unwrap().0))
}

fn suite(c: &Conn) -> CipherSuite {
    let (_, state) = c.get_ref();
    state.negotiated_cipher_suite().unwrap().suite()
}

/// Runs a client upgrade against a server upgrade; returns what each side
/// saw (the peer id it authenticated and its stream).
async fn handshake<U, V>(
    client: U,
    server: V,
) -> (
    Result<(PeerId, Conn), String>,
    Result<(PeerId, Conn), String>,
)
where
    U: OutboundConnectionUpgrade<TcpStream, Info = &'static str, Output = (PeerId, Conn)>,
    U::Error: std::fmt::Display,
    V: InboundConnectionUpgrade<TcpStream, Info = &'static str, Output = (PeerId, Conn)>,
    V::Error: std::fmt::Display,
{
    let (c, s) = socket_pair().await;
    let (a, b) = tokio::join!(
        client.upgrade_outbound(c, "/tls/1.0.0"),
        server.upgrade_inbound(s, "/tls/1.0.0")
    );
    (a.map_err(|e| e.to_string()), b.map_err(|e| e.to_string()))
}

#[test]
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn aes_detection_agrees_with_the_kernel() {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap()
        .split_whitespace()
        .collect();
    let has = |f: &str| flags.contains(&f);
    assert_eq!(
        tls::aes_in_hardware(),
        has("aes") && has("pclmulqdq") && has("avx")
    );
}

#[tokio::test]
async fn two_statesync_nodes_use_the_cheapest_cipher_of_this_cpu() {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (a, b) = handshake(
        tls::Config::new(&ka).unwrap(),
        tls::Config::new(&kb).unwrap(),
    )
    .await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.0,
        kb.public().to_peer_id(),
        "client authenticated the server"
    );
    assert_eq!(
        b.0,
        ka.public().to_peer_id(),
        "server authenticated the client"
    );
    let want = if tls::aes_in_hardware() {
        TLS13_AES_128_GCM_SHA256
    } else {
        TLS13_CHACHA20_POLY1305_SHA256
    };
    assert_eq!(suite(&a.1), want.suite());
    assert_eq!(suite(&b.1), want.suite());
    eprintln!(
        "AES in hardware: {}; negotiated {:?}",
        tls::aes_in_hardware(),
        suite(&a.1)
    );
}

#[tokio::test]
async fn stock_libp2p_tls_peers_interoperate_both_ways() {
    let (ours, stock) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    // A stock libp2p-tls client asks for ChaCha20-Poly1305 first: our server
    // follows the client's order, as the libp2p TLS server does.
    let (a, b) = handshake(
        libp2p::tls::Config::new(&stock).unwrap(),
        tls::Config::new(&ours).unwrap(),
    )
    .await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.0, ours.public().to_peer_id());
    assert_eq!(b.0, stock.public().to_peer_id());
    assert_eq!(suite(&b.1), TLS13_CHACHA20_POLY1305_SHA256.suite());

    // Our client against a stock server gets its own preference.
    let (a, b) = handshake(
        tls::Config::new(&ours).unwrap(),
        libp2p::tls::Config::new(&stock).unwrap(),
    )
    .await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.0, stock.public().to_peer_id());
    assert_eq!(b.0, ours.public().to_peer_id());
    assert_eq!(suite(&a.1), tls::preferred_suites()[0].suite());

    // And a client limited to one suite gets exactly that one.
    let only_aes = tls::Config::with_suites(&ours, &[TLS13_AES_128_GCM_SHA256]).unwrap();
    let (a, _) = handshake(only_aes, libp2p::tls::Config::new(&stock).unwrap()).await;
    assert_eq!(suite(&a.unwrap().1), TLS13_AES_128_GCM_SHA256.suite());
}

/// Our client against a rustls server presenting `cert` while signing the
/// handshake with `key`: Ok if our client completed the handshake.
async fn client_against(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<(), String> {
    #[derive(Debug)]
    struct Fixed(std::sync::Arc<rustls::sign::CertifiedKey>);
    impl rustls::server::ResolvesServerCert for Fixed {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    // No check that the key matches the certificate (with_single_cert has
    // one): an impostor controls its own server.
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![cert], signer);
    let server = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(std::sync::Arc::new(Fixed(std::sync::Arc::new(certified))));
    let (c, s) = socket_pair().await;
    let acceptor = futures_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let ours = tls::Config::new(&Keypair::generate_ed25519()).unwrap();
    let (client, _server) = tokio::join!(ours.upgrade_outbound(c, "/tls/1.0.0"), async move {
        // Bounded: a refused handshake closes the socket.
        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(s)).await
    });
    client.map(|_| ()).map_err(|e| e.to_string())
}

fn ecdsa_key() -> rustls::pki_types::PrivateKeyDer<'static> {
    let k = rcgen::KeyPair::generate().unwrap();
    rustls::pki_types::PrivateKeyDer::try_from(k.serialize_der()).unwrap()
}

#[tokio::test]
async fn a_server_certificate_without_the_libp2p_extension_is_refused() {
    // A plain self-signed certificate, as any TLS server has: it proves no
    // libp2p identity.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let err = client_against(cert.cert.der().clone(), key)
        .await
        .unwrap_err();
    assert!(err.contains("invalid peer certificate"), "{err}");
}

#[tokio::test]
async fn a_server_replaying_another_nodes_certificate_is_refused() {
    // Anyone who connects to a node gets its certificate. An impostor that
    // presents it without the matching private key must fail the
    // handshake's signature check (this is what proves the peer id).
    let victim = Keypair::generate_ed25519();
    let (cert, _victims_key) = libp2p::tls::certificate::generate(&victim).unwrap();
    let err = client_against(cert, ecdsa_key()).await.unwrap_err();
    assert!(err.contains("invalid peer certificate"), "{err}");
    // The same kind of certificate with its own key is accepted (the server
    // here asks for no client certificate): the refusal above is the
    // signature's, not the certificate's.
    let (cert, key) = libp2p::tls::certificate::generate(&victim).unwrap();
    client_against(cert, key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_to_the_wrong_peer_id_fails() {
    use libp2p::swarm::DialError;
    let cfg = statesync_net::NetConfig::default();
    let mut server = statesync_net::build_swarm(Keypair::generate_ed25519(), &cfg).unwrap();
    let mut client = statesync_net::build_swarm(Keypair::generate_ed25519(), &cfg).unwrap();
    let addr = listen(&mut server).await;
    let other = Keypair::generate_ed25519().public().to_peer_id();
    client
        .dial(addr.with(libp2p::multiaddr::Protocol::P2p(other)))
        .unwrap();
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            e = client.select_next_some() => match e {
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    assert!(matches!(error, DialError::WrongPeerId { .. }), "{error}");
                    return;
                }
                SwarmEvent::ConnectionEstablished { .. } => panic!("connected to the wrong peer"),
                _ => {}
            },
            _ = server.select_next_some() => {}
            _ = &mut deadline => panic!("no dial result within 30 s"),
        }
    }
}

/// A stock libp2p node that speaks only noise (no TLS) on TCP.
fn noise_only_swarm() -> libp2p::Swarm<ping::Behaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| ping::Behaviour::default())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

async fn listen<B: libp2p::swarm::NetworkBehaviour>(s: &mut libp2p::Swarm<B>) -> Multiaddr {
    s.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = s.select_next_some().await {
            return address;
        }
    }
}

/// Drives both swarms until each has a connection to the other.
async fn until_connected<A, B>(a: &mut libp2p::Swarm<A>, b: &mut libp2p::Swarm<B>)
where
    A: libp2p::swarm::NetworkBehaviour,
    B: libp2p::swarm::NetworkBehaviour,
{
    let (pa, pb) = (*a.local_peer_id(), *b.local_peer_id());
    let (mut a_ok, mut b_ok) = (false, false);
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    while !(a_ok && b_ok) {
        tokio::select! {
            e = a.select_next_some() => match e {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == pb => a_ok = true,
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
                SwarmEvent::IncomingConnectionError { error, .. } => panic!("accept failed: {error}"),
                _ => {}
            },
            e = b.select_next_some() => match e {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == pa => b_ok = true,
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
                SwarmEvent::IncomingConnectionError { error, .. } => panic!("accept failed: {error}"),
                _ => {}
            },
            _ = &mut deadline => panic!("no connection within 30 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noise_only_libp2p_node_connects_to_us_and_we_to_it() {
    let cfg = statesync_net::NetConfig::default();
    // It dials us: we offer TLS and noise as a listener.
    let mut ours = statesync_net::build_swarm(Keypair::generate_ed25519(), &cfg).unwrap();
    let mut stock = noise_only_swarm();
    let addr = listen(&mut ours).await;
    stock.dial(addr).unwrap();
    until_connected(&mut stock, &mut ours).await;

    // We dial it: TLS is proposed first, refused, and noise is used.
    let mut ours = statesync_net::build_swarm(Keypair::generate_ed25519(), &cfg).unwrap();
    let mut stock = noise_only_swarm();
    let addr = listen(&mut stock).await;
    ours.dial(addr).unwrap();
    until_connected(&mut ours, &mut stock).await;
}

/// Which security protocol a node built by `build_swarm` proposes first:
/// a raw listener supporting both reports what the dialer asked for.
async fn proposed_by(security: statesync_net::Security) -> &'static str {
    let cfg = statesync_net::NetConfig {
        security,
        ..Default::default()
    };
    let mut ours = statesync_net::build_swarm(Keypair::generate_ed25519(), &cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    ours.dial(
        format!("/ip4/127.0.0.1/tcp/{port}")
            .parse::<Multiaddr>()
            .unwrap(),
    )
    .unwrap();
    let driver = tokio::spawn(async move {
        loop {
            ours.select_next_some().await;
        }
    });
    let (socket, _) = listener.accept().await.unwrap();
    // The listener's side of multistream-select: it accepts the first of
    // the dialer's proposals it supports, and it supports both.
    let (proto, _io) = tokio::time::timeout(
        Duration::from_secs(30),
        multistream_select::listener_select_proto(TcpStream(socket), ["/tls/1.0.0", "/noise"]),
    )
    .await
    .expect("negotiation within 30 s")
    .unwrap();
    driver.abort();
    proto
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialer_proposes_the_configured_security_first() {
    assert_eq!(
        proposed_by(statesync_net::Security::Tls).await,
        "/tls/1.0.0"
    );
    assert_eq!(proposed_by(statesync_net::Security::Noise).await, "/noise");
}
