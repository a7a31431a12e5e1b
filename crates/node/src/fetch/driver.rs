//! One state sync inside a node's event loop: the sans-IO [`Fetch`] core,
//! its staging area, the planning task, the writer thread and the final
//! verification and promotion.
//!
//! The driver never touches the network: the event loop hands it the
//! responses and failures of its requests and performs what it asks for
//! (`FetchOut`). A node may replace a driver by one for a newer root at
//! any time (what was fetched stays in its staging area and is reused by
//! the next plan); messages of helper tasks carry the driver's id, so a
//! replaced driver's late messages are dropped.

use super::local::{self, LocalReport};
use super::promote::{self, Promotion};
pub use super::request::{FetchRequest, FetchSummary, PeerReport};
use super::staging::{self, Staging};
use super::target::IoOptions;
use super::writer::Writer;
use crate::event::{FetchError, FetchEvent, FetchId, FetchProgress};
use crate::runtime::Task;
use statesync_engine::fetch::{
    Action, Ask, Config as FetchConfig, Failure, Fetch, PeerState, Progress,
};
use statesync_manifest::diff::LocalSource;
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::Hash;
use statesync_net::libp2p::PeerId;
use statesync_net::libp2p::request_response::OutboundFailure;
use statesync_proto::{Request, Response};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// What the event loop must do for a driver.
#[derive(Debug)]
pub(crate) enum FetchOut {
    /// Send `req` to `peer`; report its outcome with `sched` (the
    /// scheduler's request id).
    Send {
        peer: PeerId,
        sched: u64,
        req: Request,
    },
    /// The peer sent bad data: keep it away for a while.
    Penalize(PeerId),
    /// For the embedder.
    Event(FetchEvent),
}

/// Messages from the driver's helper tasks and threads.
pub(crate) enum FetchMsg {
    /// The fast part of the local plan is done: chunks to fetch, what was
    /// reused, and the local copies (chunks, bytes) now running.
    Planned(super::Result<(Vec<u64>, LocalReport, (u64, u64))>),
    /// The local copies are done: chunks whose source did not match (to
    /// fetch after all) and what was copied.
    LocalCopied(super::Result<(Vec<u64>, LocalReport)>),
    Written {
        id: u64,
        results: Vec<(u64, std::result::Result<(), String>)>,
    },
    Flushed(std::result::Result<(), String>),
    Promoted(super::Result<Promotion>),
    LocalFailure(String),
}

enum WriteJob {
    Chunks {
        id: u64,
        chunks: Vec<(u64, statesync_proto::Bytes)>,
    },
    Flush,
    /// Files were replaced on disk: reopen them.
    Reset,
}

/// One running state sync (see the module doc).
pub(crate) struct FetchDriver {
    pub id: FetchId,
    fetch: Fetch<PeerId>,
    staging: Arc<Staging>,
    manifest: Option<Arc<Manifest>>,
    writer_tx: Option<std::sync::mpsc::Sender<WriteJob>>,
    writer: Option<std::thread::JoinHandle<()>>,
    summary: FetchSummary,
    received: u64,
    finishing: bool,
    /// Local chunk copies still running (the fetch cannot finish before).
    local_pending: bool,
    /// Set to end the local copies early (the sync is stopped or replaced).
    local_cancel: Arc<std::sync::atomic::AtomicBool>,
    local_task: Option<tokio::task::JoinHandle<()>>,
    /// Times the final check sent chunks back to be fetched (at most once).
    repairs: u32,
    /// Progress of the fetch before such a repair reset it.
    bytes_before_repair: u64,
    chunks_before_repair: u64,
    promoting: bool,
    /// Set once the driver finished or failed: it does nothing more.
    ended: bool,
    req: FetchRequest,
    data: PathBuf,
    start: Instant,
    tx: mpsc::UnboundedSender<Task>,
    out: VecDeque<FetchOut>,
}

fn ask_to_request(root: Hash, ask: Ask) -> Request {
    match ask {
        Ask::Header => Request::GetHeader { root },
        Ask::FilePiece(index) => Request::GetFilePiece { root, index },
        Ask::ChunkPiece(index) => Request::GetChunkPiece { root, index },
        Ask::Chunks(indices) => Request::GetChunks { root, indices },
    }
}

/// A response's kind, for messages.
pub(crate) fn kind(r: &Response) -> &'static str {
    match r {
        Response::Header { .. } => "header",
        Response::FilePiece { .. } => "file piece",
        Response::ChunkPiece { .. } => "chunk piece",
        Response::Chunks { .. } => "chunks",
        Response::Advert { .. } => "advert",
        Response::Ack => "ack",
        Response::Busy { .. } => "busy",
        Response::NotFound => "not found",
        Response::Refused { .. } => "refused",
    }
}

impl FetchDriver {
    /// Opens (or resumes) the staging area of `req.root` under `data` and
    /// starts the scheduler. `seed` makes this node's fetch order its own.
    pub fn start(
        id: FetchId,
        data: PathBuf,
        io: IoOptions,
        req: FetchRequest,
        seed: u64,
        tx: mpsc::UnboundedSender<Task>,
    ) -> Result<FetchDriver, FetchError> {
        let st = Arc::new(Staging::open(&data, req.root, io).map_err(FetchError::local)?);
        if let Some((dir, old)) = &req.in_place {
            st.consume_in_place(dir, old).map_err(FetchError::local)?;
            info!(dir = %dir.display(), "in place: consumed the stale checkpoint as the starting point");
        }
        let mut fcfg = FetchConfig::default();
        if let Some(w) = req.max_window {
            fcfg.max_window = w;
            fcfg.initial_window = fcfg.initial_window.min(w);
            fcfg.max_batch_bytes = fcfg.max_batch_bytes.min(w);
        }
        let saved = st.saved_manifest();
        let resumed = saved.is_some();
        let fetch = match saved {
            Some(m) => {
                info!(root = %req.root, "resuming the sync (manifest already fetched)");
                Fetch::with_manifest(req.root, seed, fcfg, m)
            }
            None => Fetch::new(req.root, seed, fcfg),
        };
        let summary = FetchSummary {
            root: req.root.to_hex(),
            out: req.out.clone(),
            ..Default::default()
        };
        let mut out = VecDeque::new();
        out.push_back(FetchOut::Event(FetchEvent::Started {
            root: req.root,
            resumed,
        }));
        Ok(FetchDriver {
            id,
            fetch,
            staging: st,
            manifest: None,
            writer_tx: None,
            writer: None,
            summary,
            received: 0,
            finishing: false,
            local_pending: false,
            local_cancel: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            local_task: None,
            repairs: 0,
            bytes_before_repair: 0,
            chunks_before_repair: 0,
            promoting: false,
            ended: false,
            req,
            data,
            start: Instant::now(),
            tx,
            out,
        })
    }

    /// The root being fetched.
    pub fn root(&self) -> Hash {
        self.fetch.root()
    }

    /// Where it lands.
    pub fn out_dir(&self) -> &std::path::Path {
        &self.req.out
    }

    /// The scheduler's counters.
    pub fn scheduler_progress(&self) -> &Progress {
        self.fetch.progress()
    }

    /// Bytes fetched by this sync so far (including before a repair).
    pub fn bytes_fetched(&self) -> u64 {
        self.bytes_before_repair + self.fetch.progress().bytes_done
    }

    /// Chunk bytes received per peer so far.
    pub fn bytes_per_peer(&self) -> &HashMap<String, u64> {
        &self.summary.bytes_per_peer
    }

    /// What the scheduler thinks of each peer it knows.
    pub fn peer_states(&self) -> impl Iterator<Item = (&PeerId, &PeerState)> {
        self.fetch.peer_stats().map(|(p, s)| (p, &s.state))
    }

    /// Peers that may still be asked.
    pub fn usable_peers(&self) -> usize {
        self.fetch.usable_peers()
    }

    /// Every chunk is in (and local copies are done).
    pub fn is_done(&self) -> bool {
        self.fetch.is_done() && !self.local_pending
    }

    /// Finished or failed: nothing more will happen.
    pub fn has_ended(&self) -> bool {
        self.ended
    }

    /// A progress report for the embedder.
    pub fn progress(&self) -> FetchProgress {
        let p = self.fetch.progress();
        FetchProgress {
            bytes_done: p.bytes_done,
            bytes_needed: p.bytes_needed,
            chunks_done: p.chunks_done,
            chunks_needed: p.chunks_needed,
            peers_usable: self.fetch.usable_peers(),
            requests: p.requests_sent,
            seconds: self.start.elapsed().as_secs_f64(),
            stage: if self.finishing {
                "finishing"
            } else if self.manifest.is_none() {
                "manifest"
            } else if self.local_pending && p.bytes_needed == 0 {
                "planning"
            } else {
                "chunks"
            },
        }
    }

    fn send_task(&self, msg: FetchMsg) {
        let _ = self.tx.send(Task::Fetch {
            id: self.id,
            msg: Box::new(msg),
        });
    }

    /// A peer advertises the root.
    pub fn add_peer(&mut self, p: PeerId, now: Instant) {
        self.fetch.add_peer(p, now);
    }

    /// A round-trip time measured to a peer.
    pub fn peer_rtt(&mut self, p: &PeerId, rtt: std::time::Duration) {
        self.fetch.handle_rtt(p, rtt);
    }

    /// A peer disconnected.
    pub fn remove_peer(&mut self, p: &PeerId, now: Instant) {
        self.fetch.remove_peer(p, now);
    }

    /// What the loop must do now: requests, penalties, events.
    pub fn poll(&mut self) -> Option<FetchOut> {
        if self.ended {
            return self.out.pop_front();
        }
        let now = Instant::now();
        while let Some(a) = self.fetch.poll_action() {
            match a {
                Action::Send { peer, id, ask } => {
                    let req = ask_to_request(self.fetch.root(), ask);
                    self.out.push_back(FetchOut::Send {
                        peer,
                        sched: id,
                        req,
                    });
                }
                Action::ManifestReady => {
                    if let Err(e) = self.manifest_ready() {
                        self.fail(FetchError::local(e));
                        break;
                    }
                }
                Action::Banned { peer, reason } => {
                    warn!(%peer, %reason, "peer banned for this sync");
                    self.summary.peers_banned.push(format!("{peer}: {reason}"));
                    self.out.push_back(FetchOut::Penalize(peer));
                    self.out
                        .push_back(FetchOut::Event(FetchEvent::PeerBanned { peer, reason }));
                }
            }
        }
        if !self.ended && self.is_done() && !self.finishing {
            self.finishing = true;
            match &self.writer_tx {
                Some(w) => {
                    let _ = w.send(WriteJob::Flush);
                }
                None => self.send_task(FetchMsg::Flushed(Ok(()))),
            }
        }
        if !self.ended
            && let Some(why) = self.fetch.failure()
        {
            let e = FetchError::input(format!(
                "sync of {} cannot complete: {why}",
                self.fetch.root()
            ));
            self.fail(e);
        }
        let _ = now;
        self.out.pop_front()
    }

    /// Ends the driver with `e` (durable progress is kept).
    fn fail(&mut self, e: FetchError) {
        if self.ended {
            return;
        }
        self.stop();
        self.ended = true;
        self.out.push_back(FetchOut::Event(FetchEvent::Failed(e)));
    }

    fn manifest_ready(&mut self) -> super::Result<()> {
        let Some(m) = self.fetch.manifest().cloned() else {
            return Ok(());
        };
        let st = self.staging.clone();
        st.save_manifest(&m)?;
        let m = Arc::new(m);
        self.manifest = Some(m.clone());
        self.summary.files = m.files().len() as u64;
        self.summary.bytes = m.total_size();
        info!(
            files = m.files().len(),
            bytes = m.total_size(),
            "manifest verified: {} files, {}; planning local reuse",
            m.files().len(),
            crate::bytes(m.total_size())
        );
        self.out
            .push_back(FetchOut::Event(FetchEvent::ManifestVerified {
                files: m.files().len() as u64,
                bytes: m.total_size(),
            }));
        let seeds = self.req.seeds.clone();
        let data = self.data.clone();
        let tx = self.tx.clone();
        let id = self.id;
        let (m2, st2) = (m.clone(), st.clone());
        let cancel = self.local_cancel.clone();
        self.local_task = Some(tokio::task::spawn_blocking(move || {
            let others = staging::other_stagings(&data, &st2.root);
            let mut sources: Vec<LocalSource<'_>> = seeds
                .iter()
                .map(|(d, sm)| LocalSource::complete(d, sm))
                .collect();
            for (d, om, done) in &others {
                sources.push(LocalSource {
                    dir: d,
                    manifest: om,
                    only_chunks: Some(done),
                });
            }
            let plan = statesync_manifest::plan(&m2, &sources);
            let inplace = st2.in_place_manifest();
            let send = |msg| {
                let _ = tx.send(Task::Fetch {
                    id,
                    msg: Box::new(msg),
                });
            };
            match local::prepare_local(&st2, &m2, &plan, &sources, inplace.as_ref()) {
                Err(e) => send(FetchMsg::Planned(Err(e))),
                Ok((need, rep, copies)) => {
                    // Peers start on the chunks nobody has locally while
                    // the local copies run.
                    let size = (copies.chunks(), copies.bytes());
                    send(FetchMsg::Planned(Ok((need, rep, size))));
                    send(FetchMsg::LocalCopied(copies.run(&st2, &cancel)));
                }
            }
        }));
        self.local_pending = true;
        // The writer for fetched chunks.
        let (wtx, wrx) = std::sync::mpsc::channel::<WriteJob>();
        self.writer_tx = Some(wtx);
        let commit_bytes = self.req.commit_bytes;
        let tx = self.tx.clone();
        self.writer = Some(
            std::thread::Builder::new()
                .name(format!("fetch-writer-{id}"))
                .spawn(move || {
                    let mut w = Writer::new(st);
                    if let Some(c) = commit_bytes {
                        w.commit_bytes = c;
                    }
                    let send = |msg| {
                        let _ = tx.send(Task::Fetch {
                            id,
                            msg: Box::new(msg),
                        });
                    };
                    while let Ok(job) = wrx.recv() {
                        match job {
                            WriteJob::Chunks { id: rid, chunks } => match w.write(&m, chunks) {
                                Ok(results) => send(FetchMsg::Written { id: rid, results }),
                                Err(e) => {
                                    send(FetchMsg::LocalFailure(e));
                                    return;
                                }
                            },
                            WriteJob::Flush => send(FetchMsg::Flushed(w.flush())),
                            WriteJob::Reset => w.forget_files(),
                        }
                    }
                })?,
        );
        Ok(())
    }

    /// A response to scheduler request `id` arrived from `peer`.
    pub fn on_response(&mut self, id: u64, peer: PeerId, response: Response, now: Instant) {
        if self.ended {
            return;
        }
        let f = &mut self.fetch;
        match response {
            Response::Header { header } => f.handle_header(id, &header, now),
            Response::FilePiece {
                index,
                entries,
                proof,
            } => f.handle_file_piece(id, index, entries, &proof, now),
            Response::ChunkPiece {
                index,
                entries,
                proof,
            } => f.handle_chunk_piece(id, index, entries, &proof, now),
            Response::Chunks { chunks } => {
                let n = chunks.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
                self.received += n;
                *self
                    .summary
                    .bytes_per_peer
                    .entry(peer.to_string())
                    .or_default() += n;
                if self.finishing {
                    // A late endgame duplicate: everything is in and being
                    // verified; nothing may touch the files now.
                } else {
                    match &self.writer_tx {
                        Some(w) => {
                            let _ = w.send(WriteJob::Chunks { id, chunks });
                        }
                        None => f.handle_failure(
                            id,
                            Failure::Malformed("chunks before the manifest".into()),
                            now,
                        ),
                    }
                }
                #[cfg(feature = "fault-injection")]
                if self
                    .req
                    .crash_after_bytes
                    .is_some_and(|c| self.received >= c)
                {
                    crate::fault::die(&format!(
                        "crash hook: SIGKILL after {} bytes received",
                        self.received
                    ));
                }
            }
            Response::Busy { retry_after_ms } => f.handle_failure(
                id,
                Failure::Busy {
                    retry_after: Duration::from_millis(u64::from(retry_after_ms)),
                },
                now,
            ),
            Response::NotFound => f.handle_failure(id, Failure::NotFound, now),
            Response::Refused { .. } => f.handle_failure(id, Failure::Refused, now),
            other => f.handle_failure(
                id,
                Failure::Malformed(format!("unexpected {}", kind(&other))),
                now,
            ),
        }
    }

    /// Scheduler request `id` failed at the transport.
    pub fn on_failure(&mut self, id: u64, error: &OutboundFailure, now: Instant) {
        use OutboundFailure as F;
        let fl = match error {
            // Bytes that do not decode (an oversized length, a bad tag):
            // the peer's fault.
            F::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Failure::Malformed(e.to_string())
            }
            // It does not speak the protocol: it has nothing for us.
            F::UnsupportedProtocols => Failure::NotFound,
            // A stream reset or cut short, a closed connection, a transport
            // timeout: a strike (the scheduler cools repeat offenders off).
            F::Io(_) | F::Timeout | F::ConnectionClosed | F::DialFailure => Failure::Io,
        };
        self.fetch.handle_failure(id, fl, now);
    }

    /// A helper task reported.
    pub fn on_msg(&mut self, msg: FetchMsg, now: Instant) {
        if self.ended {
            return;
        }
        if let Err(e) = self.handle_msg(msg, now) {
            self.fail(e);
        }
    }

    fn handle_msg(&mut self, msg: FetchMsg, now: Instant) -> Result<(), FetchError> {
        match msg {
            FetchMsg::Planned(r) => {
                let (need, rep, (copy_chunks, copy_bytes)) = r.map_err(FetchError::local)?;
                let fetch_bytes: u64 = self
                    .manifest
                    .as_ref()
                    .map(|m| {
                        need.iter()
                            .map(|&i| u64::from(m.chunks()[i as usize].len))
                            .sum()
                    })
                    .unwrap_or(0);
                info!(
                    "local reuse: {} files linked ({}), {} zero chunks, {} chunks from an earlier run{}; {} chunks ({}) to copy locally while {} chunks ({}) are fetched",
                    rep.files_linked,
                    crate::bytes(rep.bytes_linked),
                    rep.chunks_zero,
                    rep.chunks_resumed,
                    if rep.chunks_kept > 0 {
                        format!(
                            ", {} kept in place ({})",
                            rep.chunks_kept,
                            crate::bytes(rep.bytes_kept)
                        )
                    } else {
                        String::new()
                    },
                    copy_chunks,
                    crate::bytes(copy_bytes),
                    need.len(),
                    crate::bytes(fetch_bytes),
                );
                self.out.push_back(FetchOut::Event(FetchEvent::Planned {
                    local: rep.clone(),
                    copy_chunks,
                    copy_bytes,
                    fetch_chunks: need.len() as u64,
                    fetch_bytes,
                }));
                self.summary.local = rep;
                self.fetch.set_needed(need, now);
            }
            FetchMsg::LocalCopied(r) => {
                let (bad, rep) = r.map_err(FetchError::local)?;
                if rep.chunks_copied > 0 || !bad.is_empty() {
                    info!(
                        "local copies done: {} chunks ({}{}){}",
                        rep.chunks_copied,
                        crate::bytes(rep.bytes_copied),
                        if rep.bytes_cloned > 0 {
                            format!(", {} of it cloned", crate::bytes(rep.bytes_cloned))
                        } else {
                            String::new()
                        },
                        if bad.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; {} did not match their source and are fetched instead",
                                bad.len()
                            )
                        }
                    );
                }
                self.summary.local.add_copies(&rep);
                self.fetch.add_needed(bad, now);
                self.local_pending = false;
            }
            FetchMsg::Written { id, results } => self.fetch.handle_chunks(id, &results, now),
            FetchMsg::Flushed(r) => {
                r.map_err(FetchError::local)?;
                if self.finishing && !self.promoting {
                    self.promoting = true;
                    let Some(m) = self.manifest.clone() else {
                        return Err(FetchError::local("sync finished without a manifest"));
                    };
                    let st = self.staging.clone();
                    let out = self.req.out.clone();
                    let full_verify = self.req.full_verify;
                    let tx = self.tx.clone();
                    let id = self.id;
                    info!(
                        "all chunks in and durable; {} before promotion",
                        if full_verify {
                            "re-reading every chunk"
                        } else {
                            "checking files and a sample of chunks"
                        }
                    );
                    tokio::task::spawn_blocking(move || {
                        let r = promote::promote(&st, &m, &out, full_verify);
                        let _ = tx.send(Task::Fetch {
                            id,
                            msg: Box::new(FetchMsg::Promoted(r)),
                        });
                    });
                }
            }
            FetchMsg::Promoted(r) => {
                let p = r.map_err(|e| {
                    // A promotion refused for an OUT that appeared is the
                    // caller's matter; everything else is this disk's.
                    let msg = e.to_string();
                    if msg.contains("appeared during the sync") {
                        FetchError::input(msg)
                    } else {
                        FetchError::local(msg)
                    }
                })?;
                if let Promotion::Refetch { chunks, files } = p {
                    return self.repair(chunks, files, now);
                }
                self.finish();
            }
            FetchMsg::LocalFailure(e) => {
                return Err(FetchError::local(format!(
                    "{e}; progress is kept for a restart"
                )));
            }
        }
        Ok(())
    }

    /// Bytes a local source or the disk got wrong: fetched from peers
    /// (verified in memory) and checked again. A second failure is the
    /// disk's, not the sources'.
    fn repair(
        &mut self,
        chunks: Vec<u64>,
        files: Vec<String>,
        now: Instant,
    ) -> Result<(), FetchError> {
        if self.repairs > 0 {
            return Err(FetchError::local(format!(
                "the assembled checkpoint failed its final check again ({} files: {}); the disk is altering written data",
                files.len(),
                files.join(", ")
            )));
        }
        self.repairs += 1;
        warn!(
            "final check: {} files did not verify (a seed changed after it was planned, or the disk altered them): {}; fetching their {} chunks from peers",
            files.len(),
            files.join(", "),
            chunks.len()
        );
        if let Some(m) = &self.manifest {
            self.summary.local.bytes_refetched += files
                .iter()
                .filter_map(|f| m.find(f))
                .map(|fi| m.files()[fi].size)
                .sum::<u64>();
        }
        self.out.push_back(FetchOut::Event(FetchEvent::Repairing {
            files,
            chunks: chunks.len() as u64,
        }));
        self.bytes_before_repair += self.fetch.progress().bytes_done;
        self.chunks_before_repair += self.fetch.progress().chunks_done;
        self.finishing = false;
        self.promoting = false;
        // Before any refetched chunk: the writer must not write into the
        // handles of the files just replaced.
        if let Some(w) = &self.writer_tx {
            let _ = w.send(WriteJob::Reset);
        }
        self.fetch.set_needed(chunks, now);
        Ok(())
    }

    fn finish(&mut self) {
        // The staging area and older unfinished ones are no longer needed:
        // nothing leaks.
        let _ = std::fs::remove_dir_all(self.data.join("fetch"));
        // The chunk buffers kept for reuse are not needed until the next
        // sync: give their memory back.
        statesync_net::chunkbuf::release_pooled();
        let p = self.fetch.progress();
        self.summary.bytes_fetched = self.bytes_before_repair + p.bytes_done;
        self.summary.chunks_fetched = self.chunks_before_repair + p.chunks_done;
        self.summary.requests = p.requests_sent;
        self.summary.rejected_chunks = p.rejected_chunks;
        self.summary.peers_used = self.summary.bytes_per_peer.len();
        self.summary.seconds = self.start.elapsed().as_secs_f64();
        self.summary.peers = self
            .fetch
            .peer_stats()
            .map(|(p, st)| PeerReport {
                peer: p.to_string(),
                state: match &st.state {
                    PeerState::Active => "active".into(),
                    PeerState::Waiting(_) => "cooling off".into(),
                    PeerState::NotFound => "not found".into(),
                    PeerState::Banned(why) => format!("banned: {why}"),
                },
                bytes: st.bytes_received,
                requests: st.requests,
                timeouts: st.timeouts,
                failures: st.failures,
                busy: st.busy,
                cool_offs: st.cool_offs,
            })
            .collect();
        self.stop();
        self.ended = true;
        let summary = std::mem::take(&mut self.summary);
        self.out
            .push_back(FetchOut::Event(FetchEvent::Done(Box::new(summary))));
    }

    /// The earliest deadline of the scheduler.
    pub fn deadline(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        self.fetch.poll_timeout()
    }

    /// The deadline passed.
    pub fn on_timeout(&mut self, now: Instant) {
        if !self.ended {
            self.fetch.handle_timeout(now);
        }
    }

    /// Makes progress durable and stops the writer and the local copies
    /// (shutdown, a failure, or a switch to another root). Blocks for at
    /// most a few seconds.
    pub fn stop(&mut self) {
        // Local copies end between chunks; their staging area (and its
        // lock) is free for the next sync once they have.
        self.local_cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.local_task.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(w) = self.writer_tx.take() {
            let _ = w.send(WriteJob::Flush);
            drop(w);
        }
        if let Some(h) = self.writer.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for FetchDriver {
    fn drop(&mut self) {
        self.stop();
    }
}
