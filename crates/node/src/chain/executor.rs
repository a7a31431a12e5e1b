//! The executor thread: the only owner of the [`Replica`]. Block imports,
//! production, backfill, adoption of a synced checkpoint and the genesis
//! state run here, one at a time, off the event loop; each ends with an
//! [`ExecDone`] carrying the replica's new heights.

use crate::runtime::Task;
use statesync_chain::replica::ImportReport;
use statesync_chain::{Block, ImportError, Replica, ValidatorKey};
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::Hash;
use statesync_net::libp2p::PeerId;
use std::path::PathBuf;
use std::time::Instant;
use tokio::sync::mpsc;

/// Why blocks are imported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ImportTag {
    /// A batch of the forward range sync.
    Range(u64),
    /// New blocks at the head.
    Follow,
    /// This proposer's proposal with its quorum.
    Finalized,
}

/// Work for the executor.
pub(crate) enum ExecCmd {
    Import {
        tag: ImportTag,
        blocks: Vec<Block>,
        from: Option<PeerId>,
    },
    Produce {
        time_ms: u64,
    },
    /// The proposer's step (committee mode): execute and sign a proposal.
    Propose {
        time_ms: u64,
    },
    /// A validator's step: execute a gossiped proposal and vote.
    Vote {
        block: Box<Block>,
    },
    Backfill {
        batch: u64,
        desc: Vec<Block>,
    },
    Adopt {
        anchor: Box<Block>,
        dir: PathBuf,
        manifest: Box<Manifest>,
    },
    InitGenesis,
}

/// What a command did, with the replica's heights afterwards.
pub(crate) struct ExecDone {
    pub kind: ExecKind,
    pub head: (u64, Hash),
    pub low: u64,
    pub checkpoint: u64,
    pub has_state: bool,
}

pub(crate) enum ExecKind {
    Imported {
        tag: ImportTag,
        from: Option<PeerId>,
        result: Result<ImportReport, ImportError>,
        count: u64,
        secs: f64,
        last: Option<Block>,
    },
    Produced(Result<Block, String>),
    Proposed(Result<Block, String>),
    Voted {
        block: Box<Block>,
        result: Result<[u8; 64], ImportError>,
    },
    Backfilled {
        batch: u64,
        result: Result<(), ImportError>,
    },
    Adopted(Result<u64, String>),
    Genesis(Result<(), String>),
}

/// Starts the executor on its own thread; it ends when `rx` closes.
pub(crate) fn spawn(
    r: Replica,
    keys: Vec<(u16, ValidatorKey)>,
    rx: std::sync::mpsc::Receiver<ExecCmd>,
    tx: mpsc::UnboundedSender<Task>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("executor".into())
        .spawn(move || run(r, keys, rx, tx))
        .map(|_| ())
}

fn run(
    mut r: Replica,
    keys: Vec<(u16, ValidatorKey)>,
    rx: std::sync::mpsc::Receiver<ExecCmd>,
    tx: mpsc::UnboundedSender<Task>,
) {
    while let Ok(cmd) = rx.recv() {
        let kind = match cmd {
            ExecCmd::Import { tag, blocks, from } => {
                let t = Instant::now();
                let count = blocks.len() as u64;
                let last = blocks.last().cloned();
                let result = r.import(&blocks);
                ExecKind::Imported {
                    tag,
                    from,
                    result,
                    count,
                    secs: t.elapsed().as_secs_f64(),
                    last,
                }
            }
            ExecCmd::Produce { time_ms } => {
                ExecKind::Produced(r.produce(&keys, time_ms).map_err(|e| e.to_string()))
            }
            ExecCmd::Propose { time_ms } => ExecKind::Proposed(match keys.first() {
                Some((_, k)) => r.propose(k, time_ms).map_err(|e| e.to_string()),
                None => Err("no validator key".into()),
            }),
            ExecCmd::Vote { block } => {
                let result = match keys.first() {
                    Some((i, k)) => r.vote(*i, k, &block),
                    None => Err(ImportError::Local("no validator key".into())),
                };
                ExecKind::Voted { block, result }
            }
            ExecCmd::Backfill { batch, desc } => ExecKind::Backfilled {
                batch,
                result: r.backfill(&desc),
            },
            ExecCmd::Adopt {
                anchor,
                dir,
                manifest,
            } => {
                let h = anchor.height();
                ExecKind::Adopted(
                    r.adopt(&anchor, &dir, &manifest)
                        .map(|()| h)
                        .map_err(|e| e.to_string()),
                )
            }
            ExecCmd::InitGenesis => ExecKind::Genesis(r.init_genesis().map_err(|e| e.to_string())),
        };
        // The latest checkpoint of a final block (a pending proposal's is
        // not offered).
        let head = r.head().0;
        let checkpoint = r
            .store
            .list()
            .ok()
            .and_then(|l| l.iter().map(|c| c.height).filter(|h| *h <= head).max())
            .unwrap_or(0);
        let done = ExecDone {
            kind,
            head: r.head(),
            low: r.low(),
            checkpoint,
            has_state: r.has_state(),
        };
        if tx.send(Task::Exec(Box::new(done))).is_err() {
            return;
        }
    }
}
