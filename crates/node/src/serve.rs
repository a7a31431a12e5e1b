//! The serving side: answers state requests from a checkpoint store within
//! limits decided by the sans-IO admission core
//! ([`statesync_engine::admission`]: fair shares of the global rate,
//! bounded requests and bytes in progress per peer and in total, refusal of
//! peers that do not drain their answers), and an explicit BUSY /
//! NOT_FOUND / REFUSED for every request that is not served. Only promoted checkpoints are ever served; served
//! checkpoints are leased (pinned) while peers fetch them; a sample of
//! served chunks is checked against the manifest, and a checkpoint found
//! damaged on disk is withdrawn (docs/sync.md).

use statesync_engine::admission::{Admission, AdmissionConfig, Outcome, Ticket, Verdict};
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::Hash;
use statesync_net::libp2p::PeerId;
use statesync_proto::{Advert, AdvertEntry, MAX_BATCH_BYTES, Request, Response};
use statesync_store::Store;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Serving limits (docs/sync.md, "Serving").
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServeLimits {
    /// Bytes per second one peer may get at most (token bucket, burst of
    /// one second); less when the global rate is shared.
    pub peer_bytes_per_sec: u64,
    /// All peers together, shared evenly among the active ones.
    pub global_bytes_per_sec: u64,
    /// Requests in progress for one peer (read, or being sent).
    pub max_concurrent_per_peer: usize,
    /// Bytes of answers in progress for one peer.
    pub max_inflight_per_peer: u64,
    /// Bytes of answers in progress over all peers (bounds the memory
    /// answers can hold, whatever peers do).
    pub max_inflight_total: u64,
}

impl Default for ServeLimits {
    fn default() -> Self {
        let a = AdmissionConfig::default();
        ServeLimits {
            peer_bytes_per_sec: a.peer_bytes_per_sec,
            global_bytes_per_sec: a.global_bytes_per_sec,
            max_concurrent_per_peer: a.max_concurrent_per_peer,
            max_inflight_per_peer: a.max_inflight_per_peer,
            max_inflight_total: a.max_inflight_total,
        }
    }
}

impl ServeLimits {
    fn admission(&self) -> AdmissionConfig {
        AdmissionConfig {
            peer_bytes_per_sec: self.peer_bytes_per_sec,
            global_bytes_per_sec: self.global_bytes_per_sec,
            max_concurrent_per_peer: self.max_concurrent_per_peer,
            max_inflight_per_peer: self.max_inflight_per_peer,
            max_inflight_total: self.max_inflight_total,
            ..AdmissionConfig::default()
        }
    }
}

/// A checkpoint being served.
pub struct Served {
    /// Its height.
    pub height: u64,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its files.
    pub state_dir: PathBuf,
    /// Set when a served chunk read from disk did not match its manifest:
    /// what was found. The checkpoint is then no longer served.
    pub damaged: std::sync::Mutex<Option<String>>,
}

impl Served {
    fn new(height: u64, manifest: Manifest, state_dir: PathBuf) -> Served {
        Served {
            height,
            manifest,
            state_dir,
            damaged: std::sync::Mutex::new(None),
        }
    }

    fn is_damaged(&self) -> bool {
        self.damaged.lock().map_or(true, |d| d.is_some())
    }
}

/// Served chunks checked against their manifest before they leave: the
/// first and then every [`SELF_CHECK_EVERY`]th chunk this process serves
/// (BLAKE3 of 1/64 of the bytes: about a thousandth of a core at 100 MB/s).
/// A checkpoint damaged on disk would otherwise be served until every
/// fetcher had banned this node, with nothing said here.
pub const SELF_CHECK_EVERY: u64 = 64;
static SERVED_CHUNKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counters for metrics and status.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ServeStats {
    /// State requests received.
    pub requests: u64,
    /// Chunk bytes sent.
    pub bytes_served: u64,
    /// Requests answered BUSY.
    pub busy: u64,
    /// Requests answered NOT_FOUND.
    pub not_found: u64,
    /// Requests answered REFUSED (peers that did not drain their answers,
    /// cooling off).
    pub refused: u64,
    /// Answers that could not be delivered (the peer stopped reading).
    pub undelivered: u64,
    /// Bytes of answers in progress now.
    pub inflight_bytes: u64,
    /// Block bytes sent (chain node).
    pub block_bytes_served: u64,
    /// Checkpoints withdrawn because a served chunk did not match.
    pub damaged: u64,
}

/// The serving state of a node: what it serves, its limits, its leases.
pub struct Server {
    store: Option<Store>,
    served: HashMap<Hash, Arc<Served>>,
    last_scan: Option<Instant>,
    admission: Admission<PeerId>,
    /// Counters.
    pub stats: ServeStats,
    advert_seq: u64,
    advert_entries: Vec<AdvertEntry>,
    /// Heights leased (pinned in the store) because peers are fetching them,
    /// with the time of the last request.
    leases: HashMap<u64, Instant>,
    /// Roots found damaged on disk: never served again by this process.
    damaged: std::collections::HashSet<Hash>,
    /// Checkpoints found damaged since the last [`Server::take_damaged`].
    newly_damaged: Vec<(u64, Hash, String)>,
    /// Fault injection: a forged manifest served in place of the real one.
    #[cfg(feature = "fault-injection")]
    pub(crate) evil: Option<Arc<crate::fault::Evil>>,
    #[cfg(feature = "fault-injection")]
    pub(crate) evil_wanted: bool,
}

impl Server {
    /// Serves the checkpoints of `store` (none without one) within `limits`.
    pub fn new(store: Option<Store>, limits: ServeLimits) -> Server {
        Server {
            admission: Admission::new(limits.admission(), Instant::now()),
            store,
            served: HashMap::new(),
            last_scan: None,
            stats: ServeStats::default(),
            advert_seq: 0,
            advert_entries: Vec::new(),
            damaged: std::collections::HashSet::new(),
            newly_damaged: Vec::new(),
            #[cfg(feature = "fault-injection")]
            evil: None,
            #[cfg(feature = "fault-injection")]
            evil_wanted: false,
            leases: HashMap::new(),
        }
    }

    /// How long a checkpoint stays pinned after its last request.
    pub const LEASE_IDLE: Duration = Duration::from_secs(60);

    /// Pins `height` while peers fetch it, so that retention (in this or any
    /// other process) cannot delete it mid-transfer. The pin is a lease named
    /// after this process: released after [`Server::LEASE_IDLE`] without
    /// requests, on exit, and, after a crash, by the next `Store::open`.
    fn lease(&mut self, height: u64) {
        let now = Instant::now();
        if self.leases.insert(height, now).is_none()
            && let Some(st) = &self.store
        {
            let _ = st.pin(
                height,
                &statesync_store::lease_name("serving"),
                "being served to peers",
            );
        }
    }

    /// Releases idle leases (or all, on shutdown).
    pub fn release_leases(&mut self, all: bool) {
        let idle: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, t)| all || t.elapsed() >= Self::LEASE_IDLE)
            .map(|(h, _)| *h)
            .collect();
        for h in idle {
            self.leases.remove(&h);
            if let Some(st) = &self.store {
                let _ = st.unpin(h, &statesync_store::lease_name("serving"));
            }
        }
    }

    /// Re-reads the store's checkpoint list (at most once a second unless
    /// forced). Returns true if the set of served roots changed.
    pub fn refresh(&mut self, force: bool) -> bool {
        if !force
            && self
                .last_scan
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        self.last_scan = Some(Instant::now());
        let Some(store) = &self.store else {
            return false;
        };
        let Ok(list) = store.list() else { return false };
        let mut next = HashMap::new();
        for (root, s) in &self.served {
            if let Ok(d) = s.damaged.lock()
                && let Some(what) = d.as_ref()
                && self.damaged.insert(*root)
            {
                self.stats.damaged += 1;
                tracing::error!(
                    height = s.height,
                    %root,
                    "checkpoint {} is damaged on disk: {what}; no longer served",
                    s.height
                );
                self.newly_damaged.push((s.height, *root, what.clone()));
            }
        }
        for c in list {
            if self.damaged.contains(&c.root) {
                continue;
            }
            if let Some(s) = self.served.get(&c.root) {
                next.insert(c.root, s.clone());
                continue;
            }
            if let Ok(m) = store.load_manifest(c.height) {
                next.insert(
                    c.root,
                    Arc::new(Served::new(c.height, m, store.state_dir(c.height))),
                );
            }
        }
        let changed =
            next.len() != self.served.len() || next.keys().any(|k| !self.served.contains_key(k));
        self.served = next;
        #[cfg(feature = "fault-injection")]
        if let Some(changed) = crate::fault::refresh_evil(self) {
            return changed;
        }
        if changed {
            self.advert_seq = statesync_manifest::stats::now_ns() as u64;
            let mut e: Vec<AdvertEntry> = self
                .served
                .iter()
                .map(|(root, s)| AdvertEntry {
                    height: s.height,
                    root: *root,
                    bytes: s.manifest.total_size(),
                })
                .collect();
            e.sort_by_key(|x| std::cmp::Reverse(x.height));
            e.truncate(statesync_proto::MAX_ADVERT_ENTRIES);
            self.advert_entries = e;
        }
        changed
    }

    /// Checkpoints found damaged on disk since the last call: (height,
    /// root, what did not match).
    pub fn take_damaged(&mut self) -> Vec<(u64, Hash, String)> {
        std::mem::take(&mut self.newly_damaged)
    }

    /// Heights served now.
    pub fn heights(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.served.values().map(|s| s.height).collect();
        v.sort_unstable();
        v
    }

    /// Wall-clock nanoseconds as the advert sequence number: newer
    /// adverts of this node always compare higher.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn next_seq(&mut self) {
        self.advert_seq = statesync_manifest::stats::now_ns() as u64;
    }

    #[cfg(feature = "fault-injection")]
    pub(crate) fn served_any(&self) -> Option<Arc<Served>> {
        self.served.values().next().cloned()
    }

    #[cfg(feature = "fault-injection")]
    pub(crate) fn set_advert(&mut self, entries: Vec<AdvertEntry>) {
        self.advert_entries = entries;
    }

    /// What this node advertises.
    pub fn advert(&self) -> Advert {
        Advert {
            seq: self.advert_seq,
            entries: self.advert_entries.clone(),
        }
    }

    /// Admission for a request from `peer`: either a job to run off the
    /// event loop (it reads files), or an immediate answer.
    pub fn admit(&mut self, peer: PeerId, req: &Request) -> Result<Job, Response> {
        self.stats.requests += 1;
        let root = match req {
            Request::GetHeader { root }
            | Request::GetFilePiece { root, .. }
            | Request::GetChunkPiece { root, .. }
            | Request::GetChunks { root, .. } => *root,
            Request::GetAdvert | Request::Announce { .. } => {
                return Err(Response::Refused {
                    reason: "handled by the node".into(),
                });
            }
        };
        #[cfg(feature = "fault-injection")]
        if let Some(e) = &self.evil
            && e.root == root
        {
            return Ok(Job {
                served: e.real.clone(),
                ticket: None,
                req: req.clone(),
                evil: Some(e.clone()),
            });
        }
        if !self.served.contains_key(&root) {
            // A checkpoint promoted a moment ago: look again before saying no.
            self.refresh(true);
        }
        let Some(served) = self.served.get(&root).cloned() else {
            self.stats.not_found += 1;
            return Err(Response::NotFound);
        };
        let cost = match req {
            Request::GetChunks { indices, .. } => indices
                .iter()
                .filter_map(|&i| served.manifest.chunks().get(i as usize))
                .map(|c| u64::from(c.len))
                .sum::<u64>()
                .min(MAX_BATCH_BYTES as u64),
            _ => 256 * 1024,
        };
        let ticket = self.charge(peer, cost)?;
        self.lease(served.height);
        Ok(Job {
            served,
            ticket: Some(ticket),
            req: req.clone(),
            #[cfg(feature = "fault-injection")]
            evil: None,
        })
    }

    /// Admission of `cost` bytes of work for `peer` (see
    /// [`statesync_engine::admission`]): a ticket to hand back to
    /// [`Server::done`] once the answer was sent or failed, or the answer
    /// to give instead (BUSY with a retry time, or REFUSED).
    pub fn charge(&mut self, peer: PeerId, cost: u64) -> Result<Ticket, Response> {
        match self.admission.admit(&peer, cost, Instant::now()) {
            Verdict::Admit(t) => Ok(t),
            Verdict::Busy { retry_after, .. } => {
                self.stats.busy += 1;
                Err(Response::Busy {
                    retry_after_ms: retry_after.as_millis().clamp(10, 30_000) as u32,
                })
            }
            Verdict::Refused { for_ } => {
                self.stats.refused += 1;
                Err(Response::Refused {
                    reason: format!(
                        "answers to this peer went undelivered; refused for {} s",
                        for_.as_secs().max(1)
                    ),
                })
            }
        }
    }

    /// An admitted request ended: its answer was delivered, could not be
    /// (the peer's doing), or was dropped for a reason that is nobody's.
    pub fn done(&mut self, peer: PeerId, ticket: Ticket, outcome: Outcome) {
        self.admission.done(&peer, ticket, outcome, Instant::now());
        let a = self.admission.stats();
        self.stats.undelivered = a.undelivered;
        self.stats.inflight_bytes = a.inflight_bytes;
    }

    /// Counts what an answer carries (before it is sent).
    pub fn record(&mut self, resp: &Response) {
        match resp {
            Response::Chunks { chunks } => {
                self.stats.bytes_served += chunks.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
            }
            Response::NotFound => self.stats.not_found += 1,
            _ => {}
        }
        self.stats.inflight_bytes = self.admission.stats().inflight_bytes;
    }
}

/// A request admitted for serving; [`Job::run`] does the file I/O.
pub struct Job {
    pub(crate) served: Arc<Served>,
    /// Handed back by [`Job::run`] for [`Server::done`].
    ticket: Option<Ticket>,
    pub(crate) req: Request,
    #[cfg(feature = "fault-injection")]
    pub(crate) evil: Option<Arc<crate::fault::Evil>>,
}

impl Job {
    /// Reads what was asked from disk (on a blocking thread) and builds
    /// the answer.
    /// Reads what was asked and builds the answer; returns it with the
    /// admission ticket.
    pub fn run(mut self) -> (Response, Option<Ticket>) {
        let t = self.ticket.take();
        (self.answer(), t)
    }

    fn answer(self) -> Response {
        let m = &self.served.manifest;
        #[cfg(feature = "fault-injection")]
        if let Some(resp) = crate::fault::evil_answer(&self) {
            return resp;
        }
        match self.req {
            Request::GetHeader { .. } => Response::Header {
                header: m.header().encode(),
            },
            Request::GetFilePiece { index, .. } => match m.file_piece(index) {
                Some((e, proof)) => Response::FilePiece {
                    index,
                    entries: e.to_vec(),
                    proof,
                },
                None => Response::NotFound,
            },
            Request::GetChunkPiece { index, .. } => match m.chunk_piece(index) {
                Some((e, proof)) => Response::ChunkPiece {
                    index,
                    entries: e.to_vec(),
                    proof,
                },
                None => Response::NotFound,
            },
            Request::GetChunks { indices, .. } => {
                if self.served.is_damaged() {
                    return Response::NotFound;
                }
                let mut out = Vec::with_capacity(indices.len());
                let mut total = 0usize;
                let mut open: Option<(u32, std::fs::File)> = None;
                for i in indices {
                    let Some(c) = m.chunks().get(i as usize) else {
                        return Response::NotFound;
                    };
                    if !out.is_empty() && total + c.len as usize > MAX_BATCH_BYTES {
                        break;
                    }
                    if open.as_ref().is_none_or(|(f, _)| *f != c.file) {
                        let path = statesync_manifest::path::join(
                            &self.served.state_dir,
                            &m.files()[c.file as usize].path,
                        );
                        match std::fs::File::open(&path) {
                            Ok(f) => open = Some((c.file, f)),
                            // Pruned while we serve: say so, the fetcher
                            // moves to other peers.
                            Err(_) => return Response::NotFound,
                        }
                    }
                    let Some((_, f)) = &open else {
                        return Response::NotFound;
                    };
                    let Ok(buf) = read_uninit_at(f, c.len as usize, c.offset) else {
                        return Response::NotFound;
                    };
                    let n = SERVED_CHUNKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n.is_multiple_of(SELF_CHECK_EVERY)
                        && statesync_manifest::hash::chunk_hash(&buf) != c.hash
                    {
                        // Our fault, not the fetcher's: withdraw the
                        // checkpoint (the node's loop notices within a
                        // second) and send nothing of it.
                        if let Ok(mut d) = self.served.damaged.lock() {
                            d.get_or_insert_with(|| {
                                format!(
                                    "chunk {i} ({} at offset {}) does not match its manifest",
                                    m.files()[c.file as usize].path,
                                    c.offset
                                )
                            });
                        }
                        return Response::NotFound;
                    }
                    total += buf.len();
                    out.push((i, buf.into()));
                }
                // Another request of this checkpoint found it damaged while
                // this one was reading: send none of it either.
                if self.served.is_damaged() {
                    return Response::NotFound;
                }
                Response::Chunks { chunks: out }
            }
            Request::GetAdvert | Request::Announce { .. } => Response::Refused {
                reason: "not a data request".into(),
            },
        }
    }
}

/// Reads exactly `len` bytes at `offset` into a new buffer without zeroing
/// it first (zeroing every served chunk cost a twentieth of a server's CPU).
fn read_uninit_at(f: &std::fs::File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let got = buf.len();
        let at = libc::off_t::try_from(offset + got as u64)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: the destination is the vector's spare capacity, at least
        // `len - got` bytes from `got`; pread writes at most that many bytes
        // there and only what it reports written is counted as initialised.
        let n = unsafe {
            libc::pread(
                f.as_raw_fd(),
                buf.as_mut_ptr().add(got).cast(),
                len - got,
                at,
            )
        };
        match n {
            n if n > 0 => {
                // SAFETY: pread initialised bytes [got, got + n), n <= len - got.
                unsafe { buf.set_len(got + n as usize) };
            }
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf)
}
