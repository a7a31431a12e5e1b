//! One state sync inside a node's event loop: the sans-IO [`Fetch`] core,
//! its staging area, the planning task, the writer thread and the final
//! verification and promotion. The event loop owns the swarm and hands this
//! driver the responses; a node may replace the driver by one for a newer
//! root at any time (what was fetched stays in its staging area and is
//! reused by the next plan).

use crate::p2p::{FetchJob, FetchSummary, LoopMsg, PeerReport, Pending};
use crate::session::{self, LocalReport, Staging, Writer};
use statesync_engine::fetch::{
    Action, Ask, Config as FetchConfig, Failure, Fetch, PeerState, Progress,
};
use statesync_engine::peers::PeerManager;
use statesync_manifest::diff::LocalSource;
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::Hash;
use statesync_net::Behaviour;
use statesync_net::libp2p::request_response::{self, OutboundRequestId};
use statesync_net::libp2p::{Multiaddr, PeerId, Swarm};
use statesync_proto::{Request, Response};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

/// Messages from the driver's helper tasks and threads.
pub enum FetchMsg {
    /// The fast part of the local plan is done: chunks to fetch, what was
    /// reused, and the local copies (chunks, bytes) now running.
    Planned(Result<(Vec<u64>, LocalReport, (u64, u64))>),
    /// The local copies are done: chunks whose source did not match (to
    /// fetch after all) and what was copied.
    LocalCopied(Result<(Vec<u64>, LocalReport)>),
    Written {
        id: u64,
        results: Vec<(u64, std::result::Result<(), String>)>,
    },
    Flushed(std::result::Result<(), String>),
    Promoted(Result<session::Promotion>),
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

pub struct FetchDriver {
    /// Distinguishes this driver's messages from a replaced one's.
    pub generation: u64,
    fetch: Fetch<PeerId>,
    staging: Arc<Staging>,
    manifest: Option<Arc<Manifest>>,
    writer_tx: Option<std::sync::mpsc::Sender<WriteJob>>,
    writer: Option<std::thread::JoinHandle<()>>,
    pub summary: FetchSummary,
    received: u64,
    finishing: bool,
    /// Local chunk copies still running (the fetch cannot finish before).
    local_pending: bool,
    /// Set to end the local copies early (the sync is stopped or replaced);
    /// the task running them.
    local_cancel: Arc<std::sync::atomic::AtomicBool>,
    local_task: Option<tokio::task::JoinHandle<()>>,
    /// Times the final check sent chunks back to be fetched (at most once).
    repairs: u32,
    /// Progress of the fetch before such a repair reset it.
    bytes_before_repair: u64,
    chunks_before_repair: u64,
    promoting: bool,
    bar: Option<indicatif::ProgressBar>,
    job: FetchJob,
    data: PathBuf,
    quiet: bool,
    start: Instant,
    last_log: Instant,
    tx: mpsc::UnboundedSender<LoopMsg>,
}

fn ask_to_request(root: Hash, ask: Ask) -> Request {
    match ask {
        Ask::Header => Request::GetHeader { root },
        Ask::FilePiece(index) => Request::GetFilePiece { root, index },
        Ask::ChunkPiece(index) => Request::GetChunkPiece { root, index },
        Ask::Chunks(indices) => Request::GetChunks { root, indices },
    }
}

pub fn kind(r: &Response) -> &'static str {
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
    pub fn start(
        data: PathBuf,
        quiet: bool,
        json: bool,
        job: FetchJob,
        local_id: PeerId,
        generation: u64,
        tx: mpsc::UnboundedSender<LoopMsg>,
    ) -> Result<FetchDriver> {
        let st = Arc::new(Staging::open(&data, job.root)?);
        if let Some((dir, old)) = &job.in_place {
            st.consume_in_place(dir, old)?;
            if !quiet {
                eprintln!("in place: consumed {} as the starting point", dir.display());
            }
        }
        let seed = u64::from_le_bytes(local_id.to_bytes()[..8].try_into().unwrap_or([7; 8]));
        let mut fcfg = FetchConfig::default();
        if let Some(w) = job.max_window {
            fcfg.max_window = w;
            fcfg.initial_window = fcfg.initial_window.min(w);
            fcfg.max_batch_bytes = fcfg.max_batch_bytes.min(w);
        }
        let fetch = match st.saved_manifest() {
            Some(m) => {
                if !quiet {
                    eprintln!("resuming sync of {} (manifest already fetched)", job.root);
                }
                Fetch::with_manifest(job.root, seed, fcfg, m)
            }
            None => Fetch::new(job.root, seed, fcfg),
        };
        let bar = if !quiet && !json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let pb = indicatif::ProgressBar::new(0);
            if let Ok(st) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                pb.set_style(st.progress_chars("=> "));
            }
            Some(pb)
        } else {
            None
        };
        let summary = FetchSummary {
            root: job.root.to_hex(),
            out: job.out.clone(),
            ..Default::default()
        };
        Ok(FetchDriver {
            generation,
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
            bar,
            job,
            data,
            quiet,
            start: Instant::now(),
            last_log: Instant::now(),
            tx,
        })
    }

    pub fn root(&self) -> Hash {
        self.fetch.root()
    }

    pub fn progress(&self) -> &Progress {
        self.fetch.progress()
    }

    /// Bytes fetched by this sync so far (including before a repair).
    pub fn bytes_fetched(&self) -> u64 {
        self.bytes_before_repair + self.fetch.progress().bytes_done
    }

    pub fn usable_peers(&self) -> usize {
        self.fetch.usable_peers()
    }

    pub fn is_done(&self) -> bool {
        self.fetch.is_done() && !self.local_pending
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn log(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }

    fn send(&self, msg: FetchMsg) {
        let _ = self.tx.send(LoopMsg::Fetch {
            generation: self.generation,
            msg: Box::new(msg),
        });
    }

    pub fn add_peer(&mut self, p: PeerId, now: Instant) {
        self.fetch.add_peer(p, now);
    }

    pub fn remove_peer(&mut self, p: &PeerId, now: Instant) {
        self.fetch.remove_peer(p, now);
    }

    /// Sends the scheduler's requests and starts planning/writing when the
    /// manifest is complete.
    pub fn poll(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        pending: &mut HashMap<OutboundRequestId, Pending>,
        peers: &mut PeerManager<PeerId, Multiaddr>,
    ) -> Result<()> {
        let now = Instant::now();
        while let Some(a) = self.fetch.poll_action() {
            match a {
                Action::Send { peer, id, ask } => {
                    let req = ask_to_request(self.fetch.root(), ask);
                    let rid = swarm.behaviour_mut().state.send_request(&peer, req);
                    pending.insert(
                        rid,
                        Pending::Fetch {
                            generation: self.generation,
                            id,
                        },
                    );
                }
                Action::ManifestReady => self.manifest_ready()?,
                Action::Banned { peer, reason } => {
                    self.log(format!("banned {peer} for this sync: {reason}"));
                    self.summary.peers_banned.push(format!("{peer}: {reason}"));
                    peers.penalize(&peer, now);
                }
            }
        }
        if self.is_done() && !self.finishing {
            self.finishing = true;
            match &self.writer_tx {
                Some(w) => {
                    let _ = w.send(WriteJob::Flush);
                }
                None => self.send(FetchMsg::Flushed(Ok(()))),
            }
        }
        if let Some(why) = self.fetch.failure() {
            return Err(format!("sync of {} cannot complete: {why}", self.fetch.root()).into());
        }
        Ok(())
    }

    fn manifest_ready(&mut self) -> Result<()> {
        let Some(m) = self.fetch.manifest().cloned() else {
            return Ok(());
        };
        let st = self.staging.clone();
        st.save_manifest(&m)?;
        let m = Arc::new(m);
        self.manifest = Some(m.clone());
        self.summary.files = m.files().len() as u64;
        self.summary.bytes = m.total_size();
        self.log(format!(
            "manifest verified: {} files, {}; planning local reuse",
            m.files().len(),
            crate::bytes(m.total_size())
        ));
        let seeds = self.job.seeds.clone();
        let data = self.data.clone();
        let tx = self.tx.clone();
        let generation = self.generation;
        let (m2, st2) = (m.clone(), st.clone());
        let cancel = self.local_cancel.clone();
        self.local_task = Some(tokio::task::spawn_blocking(move || {
            let others = session::other_stagings(&data, &st2.root);
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
                let _ = tx.send(LoopMsg::Fetch {
                    generation,
                    msg: Box::new(msg),
                });
            };
            match session::prepare_local(&st2, &m2, &plan, &sources, inplace.as_ref()) {
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
        let commit_bytes = self.job.commit_bytes;
        let tx = self.tx.clone();
        self.writer = Some(std::thread::spawn(move || {
            let mut w = Writer::new(st);
            if let Some(c) = commit_bytes {
                w.commit_bytes = c;
            }
            let send = |msg| {
                let _ = tx.send(LoopMsg::Fetch {
                    generation,
                    msg: Box::new(msg),
                });
            };
            while let Ok(job) = wrx.recv() {
                match job {
                    WriteJob::Chunks { id, chunks } => match w.write(&m, chunks) {
                        Ok(results) => send(FetchMsg::Written { id, results }),
                        Err(e) => {
                            send(FetchMsg::LocalFailure(e));
                            return;
                        }
                    },
                    WriteJob::Flush => send(FetchMsg::Flushed(w.flush())),
                    WriteJob::Reset => w.forget_files(),
                }
            }
        }));
        Ok(())
    }

    pub fn on_response(&mut self, id: u64, peer: PeerId, response: Response, now: Instant) {
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
                if self
                    .job
                    .crash_after_bytes
                    .is_some_and(|c| self.received >= c)
                {
                    // Test hook: die by SIGKILL at a known point.
                    eprintln!("crash hook: SIGKILL after {} bytes received", self.received);
                    // SAFETY: sends a signal to this process.
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
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

    pub fn on_failure(&mut self, id: u64, error: &request_response::OutboundFailure, now: Instant) {
        use request_response::OutboundFailure as F;
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

    /// Returns the summary once the checkpoint is verified and promoted.
    pub fn on_msg(&mut self, msg: FetchMsg, now: Instant) -> Result<Option<FetchSummary>> {
        match msg {
            FetchMsg::Planned(r) => {
                let (need, rep, (copy_chunks, copy_bytes)) = r?;
                let fetch_bytes: u64 = self
                    .manifest
                    .as_ref()
                    .map(|m| {
                        need.iter()
                            .map(|&i| u64::from(m.chunks()[i as usize].len))
                            .sum()
                    })
                    .unwrap_or(0);
                self.log(format!(
                    "local reuse: {} files linked ({}), {} zero chunks, {} chunks from an earlier run{}; {} chunks ({}) to copy locally while {} chunks ({}) are fetched",
                    rep.files_linked,
                    crate::bytes(rep.bytes_linked),
                    rep.chunks_zero,
                    rep.chunks_resumed,
                    if rep.chunks_kept > 0 {
                        format!(", {} kept in place ({})", rep.chunks_kept, crate::bytes(rep.bytes_kept))
                    } else {
                        String::new()
                    },
                    copy_chunks,
                    crate::bytes(copy_bytes),
                    need.len(),
                    crate::bytes(fetch_bytes),
                ));
                self.summary.local = rep;
                self.fetch.set_needed(need, now);
                if let Some(pb) = &self.bar {
                    pb.set_length(self.fetch.progress().bytes_needed);
                }
            }
            FetchMsg::LocalCopied(r) => {
                let (bad, rep) = r.map_err(|e| format!("local failure (no peer at fault): {e}"))?;
                if rep.chunks_copied > 0 || !bad.is_empty() {
                    self.log(format!(
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
                    ));
                }
                self.summary.local.add_copies(&rep);
                self.fetch.add_needed(bad, now);
                self.local_pending = false;
                if let Some(pb) = &self.bar {
                    pb.set_length(self.fetch.progress().bytes_needed);
                }
            }
            FetchMsg::Written { id, results } => self.fetch.handle_chunks(id, &results, now),
            FetchMsg::Flushed(r) => {
                r.map_err(|e| format!("local failure (no peer at fault): {e}"))?;
                if self.finishing && !self.promoting {
                    self.promoting = true;
                    let Some(m) = self.manifest.clone() else {
                        return Err("sync finished without a manifest".into());
                    };
                    let st = self.staging.clone();
                    let out = self.job.out.clone();
                    let full_verify = self.job.full_verify;
                    let tx = self.tx.clone();
                    let generation = self.generation;
                    self.log(if full_verify {
                        "all chunks in and durable; re-reading every chunk before promotion"
                    } else {
                        "all chunks in and durable; checking files and a sample of chunks before promotion"
                    });
                    tokio::task::spawn_blocking(move || {
                        let r = session::promote(&st, &m, &out, full_verify);
                        let _ = tx.send(LoopMsg::Fetch {
                            generation,
                            msg: Box::new(FetchMsg::Promoted(r)),
                        });
                    });
                }
            }
            FetchMsg::Promoted(r) => {
                if let session::Promotion::Refetch { chunks, files } = r? {
                    // Bytes a local source or the disk got wrong: fetched
                    // from peers (verified in memory) and checked again. A
                    // second failure is the disk's, not the sources'.
                    if self.repairs > 0 {
                        return Err(format!(
                            "local failure (no peer at fault): the assembled checkpoint failed its final check again ({} files: {}); the disk is altering written data",
                            files.len(),
                            files.join(", ")
                        )
                        .into());
                    }
                    self.repairs += 1;
                    self.log(format!(
                        "final check: {} files did not verify (a seed changed after it was planned, or the disk altered them): {}; fetching their {} chunks from peers",
                        files.len(),
                        files.join(", "),
                        chunks.len()
                    ));
                    if let Some(m) = &self.manifest {
                        self.summary.local.bytes_refetched += files
                            .iter()
                            .filter_map(|f| m.find(f))
                            .map(|fi| m.files()[fi].size)
                            .sum::<u64>();
                    }
                    self.bytes_before_repair += self.fetch.progress().bytes_done;
                    self.chunks_before_repair += self.fetch.progress().chunks_done;
                    self.finishing = false;
                    self.promoting = false;
                    // Before any refetched chunk: the writer must not write
                    // into the handles of the files just replaced.
                    if let Some(w) = &self.writer_tx {
                        let _ = w.send(WriteJob::Reset);
                    }
                    self.fetch.set_needed(chunks, now);
                    return Ok(None);
                }
                if let Some(pb) = &self.bar {
                    pb.finish_and_clear();
                }
                // The staging area and older unfinished ones are no longer
                // needed: nothing leaks.
                let _ = std::fs::remove_dir_all(self.data.join("fetch"));
                // The chunk buffers kept for reuse are not needed until the
                // next sync: give their memory back.
                statesync_net::chunkbuf::release_pooled();
                let p = self.fetch.progress();
                self.summary.bytes_fetched = self.bytes_before_repair + p.bytes_done;
                self.summary.chunks_fetched = self.chunks_before_repair + p.chunks_done;
                self.summary.requests = p.requests_sent;
                self.summary.rejected_chunks = p.rejected_chunks;
                self.summary.peers_used = self.summary.bytes_per_peer.len();
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
                self.summary.seconds = self.start.elapsed().as_secs_f64();
                return Ok(Some(std::mem::take(&mut self.summary)));
            }
            FetchMsg::LocalFailure(e) => {
                return Err(format!(
                    "local failure (no peer at fault), progress is kept for a restart: {e}"
                )
                .into());
            }
        }
        Ok(None)
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.fetch.poll_timeout()
    }

    pub fn on_timeout(&mut self, now: Instant) {
        self.fetch.handle_timeout(now);
    }

    /// Progress bar or periodic log line.
    pub fn report(&mut self, label: &str) {
        let p = self.fetch.progress();
        if let Some(pb) = &self.bar {
            pb.set_length(p.bytes_needed.max(1));
            pb.set_position(p.bytes_done);
            pb.set_message(format!("{label} ({} peers)", self.fetch.usable_peers()));
        } else if !self.quiet && self.last_log.elapsed() > Duration::from_secs(2) {
            self.last_log = Instant::now();
            let secs = self.start.elapsed().as_secs_f64();
            eprintln!(
                "{label}: {}/{} ({:.0}%), {} chunks, {}, {} peers usable, {} requests",
                crate::bytes(p.bytes_done),
                crate::bytes(p.bytes_needed),
                100.0 * p.bytes_done as f64 / p.bytes_needed.max(1) as f64,
                p.chunks_done,
                crate::rate(p.bytes_done, secs),
                self.fetch.usable_peers(),
                p.requests_sent
            );
        }
    }

    /// Makes progress durable and stops the writer (SIGTERM, or before a
    /// switch to another root). Blocks for at most a few seconds.
    pub fn stop(&mut self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
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
