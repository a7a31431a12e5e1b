//! The final check of an assembled checkpoint and its promotion into
//! place (or, for bytes that do not verify, their return to the fetch).

use super::Result;
use super::staging::Staging;
use super::target::Target;
use statesync_manifest::format::Manifest;
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Fraction of trusted (kept or linked) chunks rehashed at the end of a
/// sync, up to 32 MiB (`statesync_manifest::build::DEFAULT_SAMPLE_BUDGET`):
/// the rate for states up to 2 GiB, a fixed budget beyond.
pub const TRUSTED_SAMPLE_RATE: f64 = 1.0 / 64.0;

/// What the final check before promotion found.
#[derive(Debug)]
pub enum Promotion {
    /// Verified and renamed into place.
    Done,
    /// Staged bytes did not verify (a seed file changed after the plan used
    /// it, or the disk altered them): the files holding them were replaced
    /// by empty ones and their chunks dropped from the progress record, so
    /// they must be fetched (from peers) before promoting again.
    Refetch {
        /// The chunks to fetch again.
        chunks: Vec<u64>,
        /// The files that did not verify.
        files: Vec<String>,
    },
}

/// Checks the assembled checkpoint of `staging` (every chunk not written
/// by this sync, and a sample of those that were; all with `full_verify`)
/// and renames it to `out`, its manifest landing first beside it; or hands
/// back what did not verify.
pub fn promote(
    staging: &Staging,
    m: &Manifest,
    out: &Path,
    full_verify: bool,
) -> Result<Promotion> {
    use std::os::unix::fs::PermissionsExt;
    for f in m.files() {
        let p = statesync_manifest::path::join(&staging.state_dir(), &f.path);
        let mode = std::fs::symlink_metadata(&p)?.permissions().mode() & 0o7777;
        if (mode & 0o100 != 0) != f.executable {
            let want = if f.executable {
                mode | 0o111
            } else {
                mode & !0o111
            };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(want))?;
        }
    }
    // Chunks this sync wrote were verified before they went to disk (and a
    // sample read back after); they are sampled like trusted ones, with
    // another key than the read-back sample. Everything else (linked files,
    // chunks from older staging formats) is verified whole; with
    // full_verify, every chunk is.
    let trusted = if full_verify {
        HashSet::new()
    } else {
        let mut t = staging.trusted()?;
        t.extend(staging.written()?);
        t
    };
    // The sample costs a bounded budget, not a share of the state: at most
    // `DEFAULT_SAMPLE_BUDGET` bytes (32 MiB) whatever the state's size.
    let trusted_bytes = trusted.len() as u64 * u64::from(m.chunk_size());
    let rate = statesync_manifest::build::sample_rate_within(
        TRUSTED_SAMPLE_RATE,
        statesync_manifest::build::DEFAULT_SAMPLE_BUDGET,
        trusted_bytes,
    );
    let threshold = (rate * u64::MAX as f64) as u64;
    let seed = staging.sample_seed() ^ 0x9e37_79b9_7f4a_7c15;
    let check = |i: u64| {
        !trusted.contains(&i) || statesync_manifest::build::sample_selected(seed, i, threshold)
    };
    let rep = statesync_manifest::verify_dir_filtered(&staging.state_dir(), m, None, &check)?;
    if let Some(u) = rep.unsupported.first() {
        return Err(format!(
            "the staging area holds a {} ({}), which no checkpoint may hold; it was not made by this sync",
            u.kind, u.path
        )
        .into());
    }
    if !rep.ok {
        let state = staging.state_dir();
        for path in &rep.extra {
            let p = statesync_manifest::path::join(&state, path);
            std::fs::remove_file(&p).map_err(|e| format!("remove {}: {e}", p.display()))?;
        }
        let mut files: Vec<String> = rep
            .corrupt
            .iter()
            .map(|c| c.path.clone())
            .chain(rep.missing.iter().cloned())
            .chain(rep.size_mismatch.iter().map(|x| x.path.clone()))
            .collect();
        files.sort();
        files.dedup();
        let mut chunks = Vec::new();
        let mut fis = Vec::new();
        for path in &files {
            let fi = m
                .find(path)
                .ok_or_else(|| format!("verification named {path}, not in the manifest"))?;
            let first = m.first_chunk(fi);
            chunks.extend(first..first + m.file_chunks(fi).len() as u64);
            fis.push(fi);
        }
        // Not done any more before anything is touched: a crash in between
        // leaves chunks to fetch, never a recreated file recorded as done.
        staging.forget(&chunks)?;
        for (path, &fi) in files.iter().zip(&fis) {
            let p = statesync_manifest::path::join(&state, path);
            // Unlink first: a hard-linked file is its source's inode, which
            // the refetch must not write into.
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("remove {}: {e}", p.display()).into()),
            }
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            Target::open(&p, staging.io)
                .and_then(|t| t.file.set_len(m.files()[fi].size))
                .map_err(|e| format!("recreate {}: {e}", p.display()))?;
        }
        if files.is_empty() && rep.extra.is_empty() {
            return Err(format!(
                "assembled checkpoint does not verify: {} files with wrong modes",
                rep.mode_mismatch.len()
            )
            .into());
        }
        for path in &files {
            if let Some(parent) = statesync_manifest::path::join(&state, path).parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        return Ok(Promotion::Refetch { chunks, files });
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    // The manifest lands first (written aside, made durable, renamed), then
    // the state in one rename: wherever a crash falls, OUT never exists
    // without its manifest, and a rerun finds either the staging area to
    // resume or the finished checkpoint.
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(format!(
            "{} appeared during the sync; the verified checkpoint stays staged",
            out.display()
        )
        .into());
    }
    let manifest_out = manifest_path_for(out);
    let mut tmp = manifest_out.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let f = File::create(&tmp).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    f.write_all_at(&m.encode(), 0)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &manifest_out)?;
    if let Err(e) = std::fs::rename(staging.state_dir(), out) {
        let _ = std::fs::remove_file(&manifest_out);
        return Err(format!("move checkpoint to {}: {e}", out.display()).into());
    }
    File::open(&parent)?.sync_all()?;
    Ok(Promotion::Done)
}

/// Where `fetch` leaves the manifest of a checkpoint written to `out`.
pub fn manifest_path_for(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".manifest");
    PathBuf::from(s)
}
