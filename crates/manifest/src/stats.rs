//! File metadata recorded when a manifest is built, so that the next
//! automatic incremental build can skip files that did not change.
//!
//! This is local bookkeeping (device and inode numbers mean nothing on another
//! machine); it is never part of the manifest or its root.

use crate::format::{ManifestError, Reader};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

/// Identity and change markers of one file. Two stats are equal when the
/// file is, as far as metadata can tell, the same and unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    /// Device number (`st_dev`).
    pub dev: u64,
    /// Inode number (`st_ino`).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Last status change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
}

impl FileStat {
    /// Extracts the stat from file metadata (timestamps saturate rather than
    /// overflow).
    pub fn of(md: &std::fs::Metadata) -> FileStat {
        FileStat {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.mtime_nsec()),
            ctime_ns: md
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.ctime_nsec()),
        }
    }

    /// Names what differs from `self` to `now` (identity, size, mtime,
    /// ctime), comma-separated, for error messages; empty if nothing does.
    pub fn describe_change(&self, now: &FileStat) -> String {
        let mut what = Vec::new();
        if (self.dev, self.ino) != (now.dev, now.ino) {
            what.push("replaced by another file".to_string());
        }
        if self.size != now.size {
            what.push(format!("size {} -> {}", self.size, now.size));
        }
        if self.mtime_ns != now.mtime_ns {
            what.push("mtime moved".into());
        }
        if self.ctime_ns != now.ctime_ns {
            what.push("ctime moved".into());
        }
        what.join(", ")
    }
}

/// Current wall-clock time in nanoseconds since the Unix epoch (0 if the
/// clock is before the epoch).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A file changed within this window before the cache was recorded may be
/// changed again within the same timestamp tick without its mtime/ctime
/// moving ("racy" entries, as git calls them); such entries are never trusted.
pub const RACY_WINDOW_NS: i64 = 1_000_000_000;

/// Metadata of every file of a checkpoint, as of its manifest build, keyed
/// by manifest path. Callers persist it between builds with
/// [`StatCache::encode`] and [`StatCache::decode`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatCache {
    /// When the scan started, nanoseconds since the Unix epoch; entries
    /// changed within [`RACY_WINDOW_NS`] before it are not trusted.
    pub recorded_ns: i64,
    entries: HashMap<String, FileStat>,
}

const MAGIC: [u8; 4] = *b"SSSC";
const VERSION: u16 = 1;

impl StatCache {
    /// An empty cache recorded at `recorded_ns`.
    pub fn new(recorded_ns: i64) -> StatCache {
        StatCache {
            recorded_ns,
            entries: HashMap::new(),
        }
    }

    /// Records the stat of the file at manifest path `path`, replacing any
    /// previous one.
    pub fn insert(&mut self, path: String, st: FileStat) {
        self.entries.insert(path, st);
    }

    /// The recorded stat of the file at `path`, with the recording time needed
    /// to judge it.
    pub fn get(&self, path: &str) -> Option<CachedStat<'_>> {
        self.entries.get(path).map(|st| CachedStat {
            st,
            recorded_ns: self.recorded_ns,
        })
    }

    /// Number of files recorded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no file is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Deterministic encoding: magic `SSSC`, version `u16`, `recorded_ns`
    /// `i64`, entry count `u32`, then per path in sorted order `path_len:u16
    /// || path || dev:u64 || ino:u64 || size:u64 || mtime_ns:i64 ||
    /// ctime_ns:i64`, all little-endian. Local bookkeeping, not part of the
    /// manifest format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18 + self.entries.len() * 64);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.recorded_ns.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        let mut keys: Vec<&String> = self.entries.keys().collect();
        keys.sort();
        for k in keys {
            let st = &self.entries[k];
            out.extend_from_slice(&(k.len() as u16).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            for v in [st.dev, st.ino, st.size] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&st.mtime_ns.to_le_bytes());
            out.extend_from_slice(&st.ctime_ns.to_le_bytes());
        }
        out
    }

    /// Decodes [`StatCache::encode`]'s output strictly (bounded, no trailing
    /// bytes), reporting problems as [`ManifestError`]s. Paths are not
    /// validated.
    pub fn decode(bytes: &[u8]) -> Result<StatCache, ManifestError> {
        let mut r = Reader { buf: bytes, at: 0 };
        if r.array::<4>("stat cache magic")? != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let v = r.u16("stat cache version")?;
        if v != VERSION {
            return Err(ManifestError::UnsupportedVersion(v));
        }
        let recorded_ns = r.u64("recorded time")? as i64;
        let n = r.u32("entry count")?;
        if u64::from(n) * 43 > r.left() as u64 {
            return Err(ManifestError::CountTooLarge {
                what: "stat entries",
                count: u64::from(n),
                left: r.left(),
            });
        }
        let mut entries = HashMap::with_capacity(n as usize);
        for _ in 0..n {
            let len = r.u16("path length")? as usize;
            let path = std::str::from_utf8(r.take(len, "path")?)
                .map_err(|_| ManifestError::PathNotUtf8 { index: 0 })?
                .to_string();
            let st = FileStat {
                dev: r.u64("dev")?,
                ino: r.u64("ino")?,
                size: r.u64("size")?,
                mtime_ns: r.u64("mtime")? as i64,
                ctime_ns: r.u64("ctime")? as i64,
            };
            entries.insert(path, st);
        }
        if r.left() != 0 {
            return Err(ManifestError::Trailing(r.left()));
        }
        Ok(StatCache {
            recorded_ns,
            entries,
        })
    }
}

/// A cached stat with the time its cache was recorded.
pub struct CachedStat<'a> {
    /// The recorded stat.
    pub st: &'a FileStat,
    recorded_ns: i64,
}

impl CachedStat<'_> {
    /// True if `now` is the same file, unchanged (equal stats), and the cached
    /// entry was not racy when recorded: its later of mtime and ctime is at
    /// least [`RACY_WINDOW_NS`] before the recording time.
    pub fn trustworthy_match(&self, now: &FileStat) -> bool {
        let racy = self
            .st
            .mtime_ns
            .max(self.st.ctime_ns)
            .saturating_add(RACY_WINDOW_NS)
            > self.recorded_ns;
        !racy && self.st == now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_racy() {
        let mut c = StatCache::new(10 * RACY_WINDOW_NS);
        let st = FileStat {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
        };
        c.insert("a/b".into(), st);
        let racy = FileStat {
            ctime_ns: 9 * RACY_WINDOW_NS + 1,
            ..st
        };
        c.insert("r".into(), racy);
        let d = StatCache::decode(&c.encode()).unwrap();
        assert_eq!(d, c);
        assert!(d.get("a/b").unwrap().trustworthy_match(&st));
        assert!(
            !d.get("a/b")
                .unwrap()
                .trustworthy_match(&FileStat { size: 4, ..st })
        );
        assert!(!d.get("r").unwrap().trustworthy_match(&racy));
        let enc = c.encode();
        for cut in 0..enc.len() {
            assert!(StatCache::decode(&enc[..cut]).is_err());
        }
    }
}
