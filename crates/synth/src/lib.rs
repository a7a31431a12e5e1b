//! Deterministic synthetic state for tests, benchmarks and the demo.
//!
//! `generate` writes `files` files totalling about `size` bytes: sizes are
//! log-uniform (many small files, a few large ones), content is BLAKE3 XOF
//! output keyed by (seed, file, block), a configurable share of 1 MiB blocks is
//! all zeros and a share of files duplicates another file. `mutate` derives the
//! next version: a share of chunks rewritten in place, files appended to,
//! deleted and added, and writes the exact change set.

use rayon::prelude::*;
use statesync_manifest::build::ChangeSet;
use statesync_manifest::rng::SplitMix64;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const BLOCK: u64 = 1 << 20;

#[derive(Clone, Debug, serde::Serialize)]
pub struct GenSpec {
    pub files: u64,
    pub size: u64,
    pub seed: u64,
    /// Percent of 1 MiB blocks that are all zeros.
    pub zero_pct: f64,
    /// Percent of files that are copies of another file.
    pub dup_pct: f64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GenReport {
    pub files: u64,
    pub bytes: u64,
    pub zero_blocks: u64,
    pub duplicate_files: u64,
}

/// The deterministic PRNG of synthetic states, seeded so that different
/// uses of one seed give unrelated sequences.
#[derive(Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed ^ 0x5173_7465_7379_6e63))
    }
    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0.unit()
    }
    /// Uniform in 0..n (0 for n = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
}

fn file_path(i: u64) -> String {
    format!("d{:02}/s{}/f{:06}.bin", i % 16, (i / 16) % 8, i)
}

/// Fills `buf` with the content of block `block` of content stream `stream`.
fn fill(seed: u64, stream: u64, block: u64, buf: &mut [u8]) {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    key[16..24].copy_from_slice(&block.to_le_bytes());
    blake3::Hasher::new_keyed(&key).finalize_xof().fill(buf);
}

fn is_zero_block(seed: u64, stream: u64, block: u64, zero_pct: f64) -> bool {
    let mut r = Rng::new(seed ^ stream.rotate_left(17) ^ block.rotate_left(41) ^ 0x7a65_726f);
    r.unit() * 100.0 < zero_pct
}

/// Sizes: log-uniform weights over four decades, scaled to `total`.
fn sizes(spec: &GenSpec) -> Vec<u64> {
    let mut r = Rng::new(spec.seed);
    let w: Vec<f64> = (0..spec.files)
        .map(|_| 10f64.powf(r.unit() * 4.0))
        .collect();
    let sum: f64 = w.iter().sum();
    w.iter()
        .map(|x| ((spec.size as f64) * x / sum) as u64)
        .collect()
}

/// Writes a new state into `dir`, which must not exist: a tool that
/// overwrote an existing state would write through its hard links into
/// every other state and checkpoint that shares them.
pub fn generate(dir: &Path, spec: &GenSpec) -> std::io::Result<GenReport> {
    create_new_dir(dir)?;
    let sizes = sizes(spec);
    let mut r = Rng::new(spec.seed ^ 0xd0d0);
    // Content stream per file: its own, or another file's (a duplicate).
    let streams: Vec<u64> = (0..spec.files)
        .map(|i| {
            if i > 0 && r.unit() * 100.0 < spec.dup_pct {
                r.below(i)
            } else {
                i
            }
        })
        .collect();
    let results: Vec<std::io::Result<(u64, u64, bool)>> = (0..spec.files)
        .into_par_iter()
        .map(|i| {
            let stream = streams[i as usize];
            // A duplicate has its source's size.
            let size = sizes[stream as usize];
            let p = dir.join(file_path(i));
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // A new file in a new directory: never through a link.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)?;
            let mut f = std::io::BufWriter::with_capacity(1 << 20, f);
            let mut buf = vec![0u8; BLOCK as usize];
            let mut zeros = 0;
            for b in 0..size.div_ceil(BLOCK) {
                let len = (size - b * BLOCK).min(BLOCK) as usize;
                if is_zero_block(spec.seed, stream, b, spec.zero_pct) {
                    buf[..len].fill(0);
                    zeros += 1;
                } else {
                    fill(spec.seed, stream, b, &mut buf[..len]);
                }
                f.write_all(&buf[..len])?;
            }
            f.flush()?;
            Ok((size, zeros, stream != i))
        })
        .collect();
    let mut rep = GenReport::default();
    for res in results {
        let (size, zeros, dup) = res?;
        rep.files += 1;
        rep.bytes += size;
        rep.zero_blocks += zeros;
        rep.duplicate_files += u64::from(dup);
    }
    Ok(rep)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MutateSpec {
    pub seed: u64,
    /// Chunk size the percentages refer to.
    pub chunk_size: u64,
    /// Percent of all chunks that get a 4 KiB region rewritten.
    pub changed_pct: f64,
    /// Percent of files that get data appended.
    pub appended_pct: f64,
    /// Percent of files deleted.
    pub deleted_pct: f64,
    /// New files, as a percent of the file count.
    pub added_pct: f64,
    /// Modify `from` itself instead of writing a new directory.
    pub in_place: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MutateReport {
    pub chunks_changed: u64,
    pub files_appended: u64,
    pub files_deleted: u64,
    pub files_added: u64,
    pub files_linked: u64,
    pub bytes_written: u64,
}

/// Produces the next version of a generated state. Unless `in_place`, `out`
/// gets hard links of the unchanged files and private copies of the changed
/// ones (the old version stays intact).
pub fn mutate(
    from: &Path,
    out: &Path,
    spec: &MutateSpec,
) -> Result<(MutateReport, ChangeSet), Box<dyn std::error::Error + Send + Sync>> {
    let files = statesync_manifest::build::scan(from)?;
    let mut r = Rng::new(spec.seed ^ 0x6d75_7461_7465);
    let total_chunks: u64 = files
        .iter()
        .map(|f| f.stat.size.div_ceil(spec.chunk_size))
        .sum();
    let target_changes = ((total_chunks as f64) * spec.changed_pct / 100.0).round() as u64;
    let mut changes = ChangeSet::default();
    let mut rep = MutateReport::default();
    // Chunk picks: (file index, chunk index), by a global chunk index.
    let mut picks: std::collections::BTreeMap<usize, Vec<u64>> = Default::default();
    let mut starts = Vec::with_capacity(files.len());
    let mut acc = 0u64;
    for f in &files {
        starts.push(acc);
        acc += f.stat.size.div_ceil(spec.chunk_size);
    }
    let mut chosen = std::collections::BTreeSet::new();
    while (chosen.len() as u64) < target_changes.min(total_chunks) {
        chosen.insert(r.below(total_chunks));
    }
    for g in chosen {
        let fi = starts.partition_point(|&s| s <= g) - 1;
        picks.entry(fi).or_default().push(g - starts[fi]);
    }
    let n = files.len() as u64;
    let mut deleted = std::collections::BTreeSet::new();
    for _ in 0..((n as f64) * spec.deleted_pct / 100.0).round() as u64 {
        deleted.insert(r.below(n) as usize);
    }
    let mut appended = std::collections::BTreeSet::new();
    for _ in 0..((n as f64) * spec.appended_pct / 100.0).round() as u64 {
        appended.insert(r.below(n) as usize);
    }
    if !spec.in_place {
        create_new_dir(out)?;
    }
    let target = if spec.in_place { from } else { out };
    let mut buf = vec![0u8; 4096];
    for (i, f) in files.iter().enumerate() {
        let dst = statesync_manifest::path::join(target, &f.path);
        if deleted.contains(&i) {
            if spec.in_place {
                std::fs::remove_file(&dst)?;
            }
            changes.removed.insert(f.path.clone());
            rep.files_deleted += 1;
            continue;
        }
        let touched = picks.contains_key(&i) || appended.contains(&i);
        if !spec.in_place {
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if touched {
                std::fs::copy(&f.abs, &dst)?;
            } else {
                std::fs::hard_link(&f.abs, &dst)?;
                rep.files_linked += 1;
            }
        }
        if !touched {
            continue;
        }
        if spec.in_place {
            // Other states or checkpoints may share this file's inode:
            // write into a private copy, never through their link.
            break_link(&dst)?;
        }
        let file = std::fs::OpenOptions::new().write(true).open(&dst)?;
        let ranges = changes.written.entry(f.path.clone()).or_default();
        for &k in picks.get(&i).into_iter().flatten() {
            let start = k * spec.chunk_size;
            let len = (f.stat.size - start).min(spec.chunk_size);
            let w = (buf.len() as u64).min(len);
            let at = start + r.below(len - w + 1);
            fill(spec.seed ^ 0xc4a9, i as u64, k, &mut buf[..w as usize]);
            file.write_all_at(&buf[..w as usize], at)?;
            ranges.push((at, at + w));
            rep.chunks_changed += 1;
            rep.bytes_written += w;
        }
        if appended.contains(&i) {
            let len = 1 + r.below(spec.chunk_size);
            let mut data = vec![0u8; len as usize];
            fill(spec.seed ^ 0xa99e, i as u64, 0, &mut data);
            file.write_all_at(&data, f.stat.size)?;
            ranges.push((f.stat.size, f.stat.size + len));
            rep.files_appended += 1;
            rep.bytes_written += len;
        }
        file.sync_data()?;
    }
    let added = ((n as f64) * spec.added_pct / 100.0).round() as u64;
    for a in 0..added {
        let path = format!("new/g{:016x}/f{a:06}.bin", spec.seed);
        let len = 1 + r.below(4 * spec.chunk_size);
        let mut data = vec![0u8; len as usize];
        fill(spec.seed ^ 0xadd, a, 0, &mut data);
        let dst: PathBuf = statesync_manifest::path::join(target, &path);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Unlink first: an existing path may be a hard link into the old
        // version, which must stay intact.
        let _ = std::fs::remove_file(&dst);
        std::fs::write(&dst, &data)?;
        changes.written.insert(path, vec![(0, len)]);
        rep.files_added += 1;
        rep.bytes_written += len;
    }
    Ok((rep, changes))
}

/// Creates `dir` (and its parents); an existing `dir` is an error.
fn create_new_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::create_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{} already exists; give a new directory (existing files may be hard links shared with other states)",
                    dir.display()
                ),
            )
        } else {
            e
        }
    })
}

/// Replaces `path` by a private copy of itself if other links share its
/// inode (copy beside it, then rename over it).
fn break_link(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::symlink_metadata(path)?.nlink() <= 1 {
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".unlink-tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::fs::copy(path, &tmp)?;
    std::fs::rename(&tmp, path)
}

/// Parses sizes like `4096`, `64KiB`, `256MiB`, `2GiB`, `1.5GB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        "t" | "tib" => 1 << 40,
        u => return Err(format!("unknown size unit {u:?} in {s:?}")),
    };
    Ok((v * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn generation_is_deterministic_and_mutation_exact() {
        let spec = GenSpec {
            files: 30,
            size: 3 << 20,
            seed: 7,
            zero_pct: 20.0,
            dup_pct: 10.0,
        };
        let (ta, tb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (ta.path().join("s"), tb.path().join("s"));
        generate(&a, &spec).unwrap();
        generate(&b, &spec).unwrap();
        let o = statesync_manifest::build::BuildOptions {
            chunk_size: 4096,
            ..Default::default()
        };
        let ma = statesync_manifest::build(&a, &o).unwrap().manifest;
        let mb = statesync_manifest::build(&b, &o).unwrap().manifest;
        assert_eq!(ma.root(), mb.root());

        let ms = MutateSpec {
            seed: 1,
            chunk_size: 4096,
            changed_pct: 5.0,
            appended_pct: 10.0,
            deleted_pct: 10.0,
            added_pct: 10.0,
            in_place: false,
        };
        let c = tempfile::tempdir().unwrap();
        let (rep, changes) = mutate(&a, &c.path().join("v2"), &ms).unwrap();
        // Neither tool writes over an existing directory.
        assert!(generate(&a, &spec).is_err());
        assert!(mutate(&a, &c.path().join("v2"), &ms).is_err());
        assert!(rep.chunks_changed > 0 && rep.files_deleted > 0 && rep.files_added > 0);
        // The old version is intact and the change set is exact: an
        // incremental build from it equals a full build.
        let again = statesync_manifest::build(&a, &o).unwrap().manifest;
        assert_eq!(again.root(), ma.root());
        let prev = statesync_manifest::Previous {
            manifest: &ma,
            dir: None,
            stats: None,
        };
        let inc = statesync_manifest::build_incremental(
            &c.path().join("v2"),
            &o,
            &prev,
            statesync_manifest::Hint::Exact(&changes),
        )
        .unwrap();
        let full = statesync_manifest::build(&c.path().join("v2"), &o).unwrap();
        assert_eq!(inc.manifest.root(), full.manifest.root());
        assert!(inc.report.chunks_hashed < full.report.chunks_hashed);
    }
}

#[cfg(test)]
mod link_tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A state whose files are hard links shared with another state (as a
    /// checkpoint store makes them): mutating it in place must leave the
    /// other state's bytes alone.
    #[test]
    fn mutate_in_place_never_writes_through_a_shared_link() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let spec = GenSpec {
            files: 12,
            size: 1 << 20,
            seed: 3,
            zero_pct: 0.0,
            dup_pct: 0.0,
        };
        generate(&a, &spec).unwrap();
        // b shares every file of a.
        let files = statesync_manifest::build::scan(&a).unwrap();
        let b = d.path().join("b");
        for f in &files {
            let dst = statesync_manifest::path::join(&b, &f.path);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::hard_link(&f.abs, &dst).unwrap();
        }
        let before: Vec<Vec<u8>> = files
            .iter()
            .map(|f| std::fs::read(&f.abs).unwrap())
            .collect();
        let ms = MutateSpec {
            seed: 5,
            chunk_size: 4096,
            changed_pct: 20.0,
            appended_pct: 20.0,
            deleted_pct: 0.0,
            added_pct: 0.0,
            in_place: true,
        };
        let (rep, _) = mutate(&b, &b, &ms).unwrap();
        assert!(rep.chunks_changed > 0);
        let after: Vec<Vec<u8>> = files
            .iter()
            .map(|f| std::fs::read(&f.abs).unwrap())
            .collect();
        assert!(before == after, "a state sharing links was changed");
        let changed = files
            .iter()
            .filter(|f| {
                let bm = std::fs::metadata(statesync_manifest::path::join(&b, &f.path)).unwrap();
                bm.ino() != std::fs::metadata(&f.abs).unwrap().ino()
            })
            .count();
        assert!(changed > 0);
    }
}
