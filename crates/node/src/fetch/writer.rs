//! Verified chunk writes with batched durability (the fetcher's writer and
//! syncer threads).

use std::sync::Arc;

use super::promote::TRUSTED_SAMPLE_RATE;
use super::staging::Staging;
use super::target::Target;
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::Hash;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Per-chunk verdicts for the scheduler.
pub type ChunkResults = Vec<(u64, std::result::Result<(), String>)>;

/// Verified chunk writes with batched durability.
///
/// Chunks of a response are verified and written in place in parallel
/// (rayon). Durability runs on a separate syncer thread so that the writer
/// never waits for it: every `commit_bytes` or `commit_every`, the files
/// touched and the chunks written are handed to the syncer, which
/// `fdatasync`s those files, reads a sample of the chunks back from the
/// device, and only then commits the indices to redb.
/// At most [`SYNC_QUEUE`] batches wait for it (backpressure), so after a
/// crash at most that many batches plus what was in flight are refetched.
pub struct Writer {
    staging_state: PathBuf,
    io: super::target::IoOptions,
    files: HashMap<u32, Arc<Target>>,
    dirty: HashMap<u32, Arc<Target>>,
    pending: Vec<Written>,
    pending_bytes: u64,
    last_commit: Instant,
    /// Commit after this many bytes or this long, whichever first.
    pub commit_bytes: u64,
    /// See `commit_bytes`.
    pub commit_every: Duration,
    syncer: Option<std::sync::mpsc::SyncSender<SyncJob>>,
    syncer_handle: Option<std::thread::JoinHandle<()>>,
    sync_error: Arc<std::sync::Mutex<Option<String>>>,
}

/// A chunk written and not yet durable.
struct Written {
    index: u64,
    target: Arc<Target>,
    offset: u64,
    len: u32,
    hash: Hash,
}

/// Reads a sample of a synced batch back from the device (in parallel, so
/// it sees more than one request at a time) and checks each chunk against
/// the hash its bytes were verified with before they were written. A
/// mismatch is a local storage fault: nothing of the batch is recorded and
/// the sync stops. `seed` keys the sample (the root: each sync samples
/// other chunks).
fn read_back_sample(chunks: &[Written], seed: u64) -> std::result::Result<(), String> {
    use rayon::prelude::*;
    let threshold = (TRUSTED_SAMPLE_RATE * u64::MAX as f64) as u64;
    let sampled =
        |w: &&Written| statesync_manifest::build::sample_selected(seed, w.index, threshold);
    chunks.par_iter().filter(sampled).try_for_each(|w| {
        let h = w
            .target
            .read_back_hash(w.offset, w.len as usize)
            .map_err(|e| format!("read back {}: {e}", w.target.path.display()))?;
        if h == w.hash {
            Ok(())
        } else {
            Err(format!(
                "chunk {} of {} read back from disk differs from the verified bytes written \
                 at offset {} (local storage fault)",
                w.index,
                w.target.path.display(),
                w.offset
            ))
        }
    })
}

/// Batches waiting for the syncer at most.
pub const SYNC_QUEUE: usize = 2;

enum SyncJob {
    Batch {
        files: Vec<Arc<Target>>,
        chunks: Vec<Written>,
    },
    Barrier(std::sync::mpsc::Sender<()>),
}

impl Writer {
    /// A writer into `staging`, with its syncer thread.
    pub fn new(staging: Arc<Staging>) -> Writer {
        let (tx, rx) = std::sync::mpsc::sync_channel::<SyncJob>(SYNC_QUEUE);
        let err = Arc::new(std::sync::Mutex::new(None));
        let err2 = err.clone();
        let st = staging.clone();
        let handle = std::thread::spawn(move || {
            while let Ok(job) = rx.recv() {
                match job {
                    SyncJob::Batch { files, chunks } => {
                        let r = files
                            .iter()
                            .try_for_each(|f| f.sync_data())
                            .map_err(|e| format!("fsync: {e}"))
                            .and_then(|()| read_back_sample(&chunks, st.sample_seed()))
                            .and_then(|()| {
                                let indices: Vec<u64> = chunks.iter().map(|w| w.index).collect();
                                st.commit_written(&indices)
                                    .map_err(|e| format!("commit progress: {e}"))
                            });
                        if let Err(e) = r
                            && let Ok(mut g) = err2.lock()
                        {
                            g.get_or_insert(e);
                        }
                    }
                    SyncJob::Barrier(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Writer {
            staging_state: staging.state_dir(),
            io: staging.io,
            files: HashMap::new(),
            dirty: HashMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            last_commit: Instant::now(),
            commit_bytes: 64 << 20,
            commit_every: Duration::from_millis(500),
            syncer: Some(tx),
            syncer_handle: Some(handle),
            sync_error: err,
        }
    }

    fn sync_failed(&self) -> Option<String> {
        self.sync_error.lock().ok().and_then(|g| g.clone())
    }

    /// Verifies and writes chunks; returns per-chunk results for the
    /// scheduler. A local failure is returned as `Err` (no peer is at fault).
    pub fn write(
        &mut self,
        m: &Manifest,
        chunks: Vec<(u64, statesync_proto::Bytes)>,
    ) -> std::result::Result<ChunkResults, String> {
        use rayon::prelude::*;
        if let Some(e) = self.sync_failed() {
            return Err(e);
        }
        // Open the target files first (sequential: the handle cache), then
        // verify and write every chunk in parallel: the kernel's copy into
        // the page cache is the most expensive step of a fetch, and a single
        // writer thread would serialise it.
        let mut targets: Vec<Option<Arc<Target>>> = Vec::with_capacity(chunks.len());
        for (i, _) in &chunks {
            let Some(c) = m.chunks().get(*i as usize) else {
                targets.push(None);
                continue;
            };
            let file = match self.files.entry(c.file) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut().clone(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let p = statesync_manifest::path::join(
                        &self.staging_state,
                        &m.files()[c.file as usize].path,
                    );
                    v.insert(Arc::new(
                        Target::open(&p, self.io)
                            .map_err(|e| format!("open {}: {e}", p.display()))?,
                    ))
                    .clone()
                }
            };
            targets.push(Some(file));
        }
        // Per chunk: Ok(Ok(())) written, Ok(Err) bad data (the peer's
        // fault), Err a local write failure.
        type Outcome = std::result::Result<std::result::Result<(), String>, String>;
        let outcomes: Vec<Outcome> = chunks
            .par_iter()
            .zip(targets.par_iter())
            .map(|((i, data), file)| {
                let (Some(c), Some(file)) = (m.chunks().get(*i as usize), file) else {
                    return Ok(Err(format!("no chunk {i} in the manifest")));
                };
                if let Err(e) = statesync_manifest::format::verify_chunk_data(*i, c, data) {
                    return Ok(Err(e.to_string()));
                }
                file.write_at(data, c.offset)
                    .map(Ok)
                    .map_err(|e| format!("write {}: {e}", m.files()[c.file as usize].path))
            })
            .collect();
        let mut out = Vec::with_capacity(chunks.len());
        for (((i, data), outcome), file) in chunks.into_iter().zip(outcomes).zip(targets) {
            match outcome? {
                Err(bad) => out.push((i, Err(bad))),
                Ok(()) => {
                    if let (Some(f), Some(c)) = (file, m.chunks().get(i as usize)) {
                        self.dirty.insert(c.file, f.clone());
                        self.pending.push(Written {
                            index: i,
                            target: f,
                            offset: c.offset,
                            len: c.len,
                            hash: c.hash,
                        });
                    }
                    self.pending_bytes += data.len() as u64;
                    out.push((i, Ok(())));
                }
            }
        }
        if self.pending_bytes >= self.commit_bytes
            || self.last_commit.elapsed() >= self.commit_every
        {
            self.hand_off()?;
        }
        Ok(out)
    }

    /// Hands the current batch to the syncer (blocks only if it is
    /// [`SYNC_QUEUE`] batches behind).
    fn hand_off(&mut self) -> std::result::Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let files = self.dirty.drain().map(|(_, f)| f).collect();
        let chunks = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.last_commit = Instant::now();
        self.syncer
            .as_ref()
            .ok_or("syncer stopped")?
            .send(SyncJob::Batch { files, chunks })
            .map_err(|_| "syncer stopped".to_string())?;
        // Keep the number of open files bounded.
        if self.files.len() > 256 {
            self.files.clear();
        }
        Ok(())
    }

    /// Drops every open file handle: files were replaced on disk (by a
    /// repair in `promote`), so later writes must open them again.
    pub fn forget_files(&mut self) {
        self.files.clear();
        self.dirty.clear();
    }

    /// Makes everything written so far durable and recorded; waits for it.
    pub fn flush(&mut self) -> std::result::Result<(), String> {
        self.hand_off()?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.syncer
            .as_ref()
            .ok_or("syncer stopped")?
            .send(SyncJob::Barrier(tx))
            .map_err(|_| "syncer stopped".to_string())?;
        rx.recv().map_err(|_| "syncer stopped".to_string())?;
        match self.sync_failed() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.syncer.take();
        if let Some(h) = self.syncer_handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statesync_manifest::hash::chunk_hash;
    use std::os::unix::fs::FileExt;

    /// A chunk whose bytes on disk differ from what was verified and
    /// written is caught by the read-back sample as a local fault.
    #[test]
    fn read_back_catches_bytes_changed_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let t = Arc::new(Target::open(&path, Default::default()).expect("open"));
        let data = vec![5u8; 64 << 10];
        let seed = 7;
        let threshold = (TRUSTED_SAMPLE_RATE * u64::MAX as f64) as u64;
        // Chunk indices the sample picks for this seed, and one it skips.
        let picked: Vec<u64> = (0..10_000)
            .filter(|&i| statesync_manifest::build::sample_selected(seed, i, threshold))
            .take(2)
            .collect();
        assert_eq!(picked.len(), 2);
        let chunk = |index: u64, offset: u64| Written {
            index,
            target: t.clone(),
            offset,
            len: data.len() as u32,
            hash: chunk_hash(&data),
        };
        t.write_at(&data, 0).expect("write");
        t.write_at(&data, 64 << 10).expect("write");
        t.sync_data().expect("sync");
        let batch = [chunk(picked[0], 0), chunk(picked[1], 64 << 10)];
        assert_eq!(read_back_sample(&batch, seed), Ok(()));
        // The device (or anything else) changes a byte under us.
        t.file
            .write_all_at(&[6], (64 << 10) + 100)
            .expect("corrupt");
        let err = read_back_sample(&batch, seed).expect_err("corruption not caught");
        assert!(err.contains("local storage fault"), "{err}");
        assert!(err.contains(&format!("chunk {}", picked[1])), "{err}");
    }
}
