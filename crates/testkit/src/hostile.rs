//! A hostile libp2p peer of the state protocol, independent of the node
//! library (its own swarm and codec): it advertises a root, signed with its
//! own identity, and then answers every data request the way its [`Mode`]
//! says. Runs on its own tokio runtime in the test process; dropping the
//! [`Hostile`] stops it.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use statesync_net::libp2p::request_response::{self, ProtocolSupport};
use statesync_net::libp2p::swarm::SwarmEvent;
use statesync_net::libp2p::{Multiaddr, StreamProtocol, noise, tcp, yamux};
use statesync_proto::{Advert, AdvertEntry, Hash, Request, Response};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How a hostile peer answers data requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Resets every data stream instead of answering.
    Reset,
    /// Announces a whole answer and closes the stream after a part of it.
    Truncate,
    /// Answers REFUSED.
    Refuse,
    /// Sends a 17 MiB length prefix, then nothing.
    Stall,
    /// Answers at one byte per second.
    Trickle,
}

#[derive(Clone)]
struct HostileCodec {
    mode: Mode,
}

async fn read_request<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Request> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let n = u32::from_le_bytes(len) as usize;
    if n > statesync_proto::MAX_REQUEST_LEN {
        return Err(io::ErrorKind::InvalidData.into());
    }
    let mut buf = vec![0u8; n];
    io.read_exact(&mut buf).await?;
    Request::decode(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_all<T: AsyncWrite + Unpin + Send>(io: &mut T, b: &[u8]) -> io::Result<()> {
    io.write_all(b).await?;
    io.flush().await
}

#[async_trait::async_trait]
impl request_response::Codec for HostileCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_request(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::ErrorKind::Unsupported.into())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::ErrorKind::Unsupported.into())
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let body: Vec<u8> = res.encode_parts().iter().flat_map(|p| p.to_vec()).collect();
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        // Adverts are answered honestly: the fetcher must believe it has the
        // root.
        if matches!(res, Response::Advert { .. } | Response::Ack) {
            return write_all(io, &frame).await;
        }
        match self.mode {
            Mode::Reset => Err(io::ErrorKind::ConnectionReset.into()),
            Mode::Refuse => {
                let r = Response::Refused {
                    reason: "go away".into(),
                };
                let body: Vec<u8> = r.encode_parts().iter().flat_map(|p| p.to_vec()).collect();
                let mut f = (body.len() as u32).to_le_bytes().to_vec();
                f.extend_from_slice(&body);
                write_all(io, &f).await
            }
            Mode::Truncate => {
                // A well-formed start of one 1 MiB chunk, then a tenth of
                // its data.
                let len = 1u32 << 20;
                let mut f = (1 + 2 + 12 + len).to_le_bytes().to_vec();
                f.push(0x84);
                f.extend_from_slice(&1u16.to_le_bytes());
                f.extend_from_slice(&0u64.to_le_bytes());
                f.extend_from_slice(&len.to_le_bytes());
                f.extend_from_slice(&[0u8; 100 * 1024]);
                write_all(io, &f).await?;
                io.close().await
            }
            Mode::Stall => {
                write_all(io, &(17u32 << 20).to_le_bytes()).await?;
                futures::future::pending::<()>().await;
                Ok(())
            }
            Mode::Trickle => {
                for b in frame {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    write_all(io, &[b]).await?;
                }
                Ok(())
            }
        }
    }
}

/// A hostile node running in this process (stopped when dropped).
pub struct Hostile {
    /// Its address, ending in `/p2p/<peer id>`.
    pub addr: String,
    /// Data requests (everything but adverts) it received.
    pub requests: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

/// Starts a hostile node on 127.0.0.1 that advertises `root` and answers
/// data requests as `mode` says.
pub fn start(mode: Mode, root: Hash) -> Hostile {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let count = requests.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let kp = statesync_net::libp2p::identity::Keypair::generate_ed25519();
        let mut swarm = statesync_net::libp2p::SwarmBuilder::with_existing_identity(kp.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    HostileCodec { mode },
                    [(
                        StreamProtocol::new(statesync_proto::PROTOCOL),
                        ProtocolSupport::Inbound,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(3600)),
                )
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse::<Multiaddr>().unwrap())
            .unwrap();
        let me = *swarm.local_peer_id();
        let mut sent = false;
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } if !sent => {
                    sent = true;
                    let _ = tx.send(format!("{address}/p2p/{me}"));
                }
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                }) => {
                    let resp = match request {
                        Request::GetAdvert => Response::Advert {
                            advert: statesync_net::advert::sign(
                                &kp,
                                &Advert {
                                    seq: 1,
                                    entries: vec![AdvertEntry {
                                        height: 10,
                                        root,
                                        bytes: 1,
                                    }],
                                },
                            ),
                        },
                        Request::Announce { .. } => Response::Ack,
                        _ => {
                            count.fetch_add(1, Ordering::Relaxed);
                            Response::NotFound
                        }
                    };
                    let _ = swarm.behaviour_mut().send_response(channel, resp);
                }
                _ => {}
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    Hostile {
        addr,
        requests,
        _rt: rt,
    }
}

/// How a hostile client misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientMode {
    /// Opens streams, asks for chunks and never reads the answers (a
    /// half-open stream attack on the server's memory).
    NeverReads,
    /// Sends requests whose length prefix exceeds the protocol's limit.
    Oversized,
}

#[derive(Clone)]
struct ClientCodec {
    mode: ClientMode,
}

#[async_trait::async_trait]
impl request_response::Codec for ClientCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::ErrorKind::Unsupported.into())
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        // Never reads: the answer stays in the server's buffers.
        futures::future::pending::<()>().await;
        Err(io::ErrorKind::Unsupported.into())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let body = req.encode();
        match self.mode {
            ClientMode::NeverReads => {
                let mut f = (body.len() as u32).to_le_bytes().to_vec();
                f.extend_from_slice(&body);
                write_all(io, &f).await
            }
            ClientMode::Oversized => {
                let mut f = ((statesync_proto::MAX_REQUEST_LEN as u32) + 1)
                    .to_le_bytes()
                    .to_vec();
                f.extend_from_slice(&body);
                write_all(io, &f).await
            }
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// A hostile client running in this process (stopped when dropped).
pub struct HostileClient {
    /// Requests sent so far.
    pub sent: Arc<AtomicU64>,
    /// Times its connection to the server was closed.
    pub disconnects: Arc<AtomicU64>,
    /// Connections established.
    pub connects: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

/// Starts a client that connects to `server` (`.../p2p/<id>`) and sends
/// requests for chunks `0..chunks` of `root` the way `mode` says: `burst`
/// at once, then one every 50 ms, `total` at most; it redials when
/// disconnected.
pub fn client(
    mode: ClientMode,
    server: &str,
    root: Hash,
    chunks: u64,
    burst: u64,
    total: u64,
) -> HostileClient {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let sent = Arc::new(AtomicU64::new(0));
    let disconnects = Arc::new(AtomicU64::new(0));
    let connects = Arc::new(AtomicU64::new(0));
    let (s2, d2, c2) = (sent.clone(), disconnects.clone(), connects.clone());
    let addr: Multiaddr = server.parse().expect("server address");
    rt.spawn(async move {
        let Ok(b) = statesync_net::libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
        else {
            return;
        };
        let Ok(b) = b.with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                ClientCodec { mode },
                [(
                    StreamProtocol::new(statesync_proto::PROTOCOL),
                    ProtocolSupport::Outbound,
                )],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(3600))
                    .with_max_concurrent_streams(1000),
            )
        });
        let mut swarm = b
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build();
        let Some(statesync_net::libp2p::multiaddr::Protocol::P2p(server_id)) = addr.iter().last()
        else {
            return;
        };
        let _ = swarm.dial(addr.clone());
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut connected = false;
        loop {
            tokio::select! {
                ev = swarm.select_next_some() => match ev {
                    SwarmEvent::ConnectionEstablished { .. } => {
                        connected = true;
                        c2.fetch_add(1, Ordering::Relaxed);
                    }
                    SwarmEvent::ConnectionClosed { num_established: 0, .. } => {
                        connected = false;
                        d2.fetch_add(1, Ordering::Relaxed);
                    }
                    SwarmEvent::OutgoingConnectionError { .. } => connected = false,
                    _ => {}
                },
                _ = tick.tick() => {
                    if !connected {
                        let _ = swarm.dial(addr.clone());
                        continue;
                    }
                    let n = if sent == 0 { burst } else { 1 };
                    for _ in 0..n {
                        if sent >= total {
                            break;
                        }
                        let indices: Vec<u64> = (0..chunks).collect();
                        swarm.behaviour_mut().send_request(&server_id, Request::GetChunks { root, indices });
                        sent += 1;
                        s2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    HostileClient {
        sent,
        disconnects,
        connects,
        _rt: rt,
    }
}
