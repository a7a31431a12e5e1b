//! Hostile peers on real libp2p connections: an independent libp2p node
//! (its own swarm and codec, in this test process) that advertises the
//! root and then resets, truncates, refuses, stalls or trickles every data
//! answer, against the real `statesync fetch` process and real servers.
//!
//! A fetch must finish on the honest peers, and the hostile ones must get a
//! bounded number of requests (they are cooled off with growing backoff),
//! however quickly they fail.

mod common;

use common::*;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use serde_json::Value;
use statesync_net::libp2p::request_response::{self, ProtocolSupport};
use statesync_net::libp2p::swarm::SwarmEvent;
use statesync_net::libp2p::{Multiaddr, StreamProtocol, noise, tcp, yamux};
use statesync_proto::{Advert, AdvertEntry, Hash, Request, Response};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
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

/// A hostile node running in this process; dropped with the test.
struct Hostile {
    addr: String,
    /// Data requests (everything but adverts) it received.
    requests: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

fn hostile(mode: Mode, root: Hash) -> Hostile {
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

fn peer_record<'a>(sum: &'a Value, addr: &str) -> &'a Value {
    let id = peer_id(addr);
    sum["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == id.as_str())
        .unwrap_or_else(|| panic!("no record of {id} in {sum}"))
}

/// Three peers that reset, truncate or refuse every data stream, and one
/// honest peer that becomes reachable two seconds after the fetch starts.
#[test]
fn peers_that_reset_truncate_or_refuse_cannot_keep_a_fetch_from_finishing() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 120, "24MiB", "21");
    let r = Hash::from_hex(&root).unwrap();
    let bad: Vec<Hostile> = [Mode::Reset, Mode::Truncate, Mode::Refuse]
        .into_iter()
        .map(|m| hostile(m, r))
        .collect();
    // The honest server: identity and port chosen now, started later.
    let honest_data = d.path().join("honest");
    let honest_id = peer_of(&honest_data);
    let port = free_port();
    let honest_addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{honest_id}");
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let starter = {
        let (store, data, log) = (
            store.clone(),
            honest_data.clone(),
            d.path().join("honest.log"),
        );
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            spawn(
                &[
                    "serve",
                    "--store",
                    s(&store),
                    "--data",
                    s(&data),
                    "--listen",
                    &listen,
                ],
                &log,
            )
        })
    };
    let out = d.path().join("out");
    let mut peers: Vec<&str> = bad.iter().map(|h| h.addr.as_str()).collect();
    peers.push(&honest_addr);
    let o = fetch(d.path(), "f", &root, &out, &peers, &[]);
    let _honest = starter.join().unwrap();
    let sum = summary(&o, d.path(), "f");
    verify(&out, &root);
    for h in &bad {
        let n = h.requests.load(Ordering::Relaxed);
        assert!(n >= 1, "{} was never asked", h.addr);
        assert!(
            n < 60,
            "{} data requests to a peer that failed every one",
            n
        );
        let rec = peer_record(&sum, &h.addr);
        assert_eq!(rec["bytes"], 0, "{rec}");
        assert!(
            rec["failures"].as_u64().unwrap() + rec["timeouts"].as_u64().unwrap() >= 1,
            "failures not counted: {rec}"
        );
    }
    assert!(peer_record(&sum, &honest_addr)["bytes"].as_u64().unwrap() > 0);
    assert!(sum["peers_banned"].as_array().unwrap().is_empty(), "{sum}");
}

/// Two stallers and a peer that answers at one byte per second next to one
/// honest peer: the manifest and the last chunks do not wait for them.
#[test]
fn stalling_and_trickling_peers_get_few_requests_and_the_fetch_completes() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 120, "24MiB", "22");
    let r = Hash::from_hex(&root).unwrap();
    let bad: Vec<Hostile> = [Mode::Stall, Mode::Stall, Mode::Trickle]
        .into_iter()
        .map(|m| hostile(m, r))
        .collect();
    let (_good, good_addr) = serve(d.path(), "good", &store, &[]);
    let out = d.path().join("out");
    let mut peers: Vec<&str> = bad.iter().map(|h| h.addr.as_str()).collect();
    peers.push(&good_addr);
    let o = fetch(d.path(), "f", &root, &out, &peers, &[]);
    let sum = summary(&o, d.path(), "f");
    verify(&out, &root);
    for h in &bad {
        let n = h.requests.load(Ordering::Relaxed);
        assert!(n < 30, "{n} data requests to a staller");
        assert_eq!(peer_record(&sum, &h.addr)["bytes"], 0);
    }
}
