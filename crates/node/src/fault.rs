//! Fault injection for tests (cargo feature `fault-injection`; the release
//! binary is built without it): a serving node that stays silent, lies
//! about chunks or serves a forged manifest, and a crash at a known point.

use crate::serve::{Job, Served, Server};
use statesync_manifest::hash::Hash;
use statesync_proto::{AdvertEntry, Request, Response};
use std::sync::Arc;

/// How a serving node misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServeFault {
    /// Accept data requests and never answer them.
    Silent,
    /// Advertise and serve a forged manifest whose paths escape with `../`.
    Traversal,
    /// Serve chunks with their first byte flipped: a lying peer (an honest
    /// one whose disk is damaged finds out by itself and stops serving).
    Corrupt,
}

/// Ends this process the way a crash would (SIGKILL), saying why on stderr
/// first (a test hook, so the one place the library writes to stderr).
pub(crate) fn die(why: &str) -> ! {
    eprintln!("{why}");
    // SAFETY: sends a signal to this process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    std::process::abort()
}

/// A forged manifest: every path prefixed with `../`, under a root
/// recomputed over the forged file table, so that a fetcher given that root
/// must reject it by its paths, not by its hashes.
pub struct Evil {
    /// The forged root.
    pub root: Hash,
    header: statesync_manifest::RootHeader,
    files: Vec<statesync_manifest::FileEntry>,
    tree: statesync_manifest::merkle::MerkleTree,
    pub(crate) real: Arc<Served>,
}

fn build_evil(real: Arc<Served>) -> Evil {
    use statesync_manifest::format::file_leaf;
    let files: Vec<_> = real
        .manifest
        .files()
        .iter()
        .map(|f| statesync_manifest::FileEntry {
            path: format!("../escape-{}", f.path),
            ..f.clone()
        })
        .collect();
    let tree = statesync_manifest::merkle::MerkleTree::new(files.iter().map(file_leaf).collect());
    let header = statesync_manifest::RootHeader {
        files_root: tree.root(),
        ..*real.manifest.header()
    };
    Evil {
        root: header.root(),
        header,
        files,
        tree,
        real,
    }
}

/// Turns on the forged-manifest fault; its root once a checkpoint exists.
pub(crate) fn enable_evil(s: &mut Server) -> Option<Hash> {
    s.evil_wanted = true;
    s.refresh(true);
    s.evil.as_ref().map(|e| e.root)
}

/// The forged-manifest part of [`Server::refresh`]: `Some(changed)` when
/// the fault decides the advert.
pub(crate) fn refresh_evil(s: &mut Server) -> Option<bool> {
    if s.evil_wanted
        && s.evil.is_none()
        && let Some(real) = s.served_any()
    {
        let e = Arc::new(build_evil(real));
        s.next_seq();
        s.set_advert(vec![AdvertEntry {
            height: e.real.height,
            root: e.root,
            bytes: e.real.manifest.total_size(),
        }]);
        s.evil = Some(e);
        return Some(true);
    }
    s.evil.is_some().then_some(false)
}

/// The forged answer to a header or file piece request for the forged root.
pub(crate) fn evil_answer(job: &Job) -> Option<Response> {
    let e = job.evil.as_ref()?;
    match &job.req {
        Request::GetHeader { .. } => Some(Response::Header {
            header: e.header.encode(),
        }),
        Request::GetFilePiece { index, .. } => {
            use statesync_manifest::format::{FILE_PIECE_LEVEL, piece_level, piece_range};
            let n = e.files.len() as u64;
            let level = piece_level(n, FILE_PIECE_LEVEL);
            let Some((lo, hi)) = piece_range(n, FILE_PIECE_LEVEL, *index) else {
                return Some(Response::NotFound);
            };
            Some(Response::FilePiece {
                index: *index,
                entries: e.files[lo..hi].to_vec(),
                proof: e.tree.proof(level, *index).unwrap_or_default(),
            })
        }
        _ => None,
    }
}

/// Flips the first byte of every chunk of a response (a lying peer).
pub(crate) fn corrupt(resp: &mut Response) {
    if let Response::Chunks { chunks } = resp {
        for (_, c) in chunks.iter_mut() {
            let mut v = c.to_vec();
            if let Some(b) = v.first_mut() {
                *b ^= 0xff;
            }
            *c = v.into();
        }
    }
}
