//! Files of a staging area as the fetcher writes them: direct I/O where
//! the filesystem allows it, buffered otherwise; extent clones (reflinks)
//! for local chunk copies on filesystems that share extents.

use statesync_manifest::hash::{Hash, chunk_hash};
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

fn open_target(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
}

/// Block alignment of direct I/O (a multiple of every logical block size
/// in use: 512 and 4096).
const DIRECT_ALIGN: usize = 4096;

/// How staged files are written: switches for the two I/O optimisations,
/// both on by default. Turn one off to measure without it, or on a
/// filesystem that misbehaves with it (the CLI maps `STATESYNC_DIRECT_IO=0`
/// and `STATESYNC_REFLINK=0` onto these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoOptions {
    /// Write fetched chunks with `O_DIRECT` where the filesystem allows it.
    pub direct_io: bool,
    /// Clone local chunk copies (FICLONERANGE) where the filesystem shares
    /// extents (XFS, btrfs).
    pub reflink: bool,
}

impl Default for IoOptions {
    fn default() -> Self {
        IoOptions {
            direct_io: true,
            reflink: true,
        }
    }
}

thread_local! {
    /// One reusable aligned buffer per writing thread: fresh pages are slow
    /// to touch on a VM, and a chunk-sized allocation per write would touch
    /// new ones every time.
    pub(super) static ALIGNED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The same for reading chunks back.
    pub(super) static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a `len`-byte slice of `cell`'s buffer aligned for direct I/O.
pub(super) fn with_aligned<R>(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Vec<u8>>>,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> R {
    cell.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < len + DIRECT_ALIGN {
            b.resize(len + DIRECT_ALIGN, 0);
        }
        let at = b.as_ptr().align_offset(DIRECT_ALIGN);
        f(&mut b[at..at + len])
    })
}

/// A file of the staging area, opened for buffered writes and, where the
/// filesystem allows, a second time with `O_DIRECT`.
///
/// Fetched chunks are written with direct I/O: the device reads them from
/// our buffer, so the kernel neither copies them into fresh page-cache
/// pages (the most expensive step of a fetch on this kind of machine) nor
/// writes them back later on its own schedule. The unaligned tail of a
/// file's last chunk goes through the page cache. `fdatasync` is still what
/// makes either durable (extent metadata, device cache).
pub struct Target {
    pub(super) path: PathBuf,
    pub(super) file: File,
    direct: Option<File>,
    direct_ok: std::sync::atomic::AtomicBool,
    reflink: bool,
}

impl Target {
    /// Opens (creating if needed, never through a symlink) a staged file.
    pub fn open(path: &Path, io: IoOptions) -> std::io::Result<Target> {
        let file = open_target(path)?;
        let direct = if io.direct_io {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECT)
                .open(path)
                .ok()
        } else {
            None
        };
        let direct_ok = std::sync::atomic::AtomicBool::new(direct.is_some());
        Ok(Target {
            path: path.to_path_buf(),
            file,
            direct,
            direct_ok,
            reflink: io.reflink,
        })
    }

    /// The direct handle, if `offset` and this file allow direct I/O, and
    /// how many bytes of `len` it covers.
    fn direct_part(&self, offset: u64, len: usize) -> Option<(&File, usize)> {
        let d = self.direct.as_ref()?;
        let n = len / DIRECT_ALIGN * DIRECT_ALIGN;
        (offset.is_multiple_of(DIRECT_ALIGN as u64)
            && n > 0
            && self.direct_ok.load(std::sync::atomic::Ordering::Relaxed))
        .then_some((d, n))
    }

    /// Direct I/O was refused with EINVAL: buffered from now on.
    fn refused(&self, e: &std::io::Error) -> bool {
        let refused = e.raw_os_error() == Some(libc::EINVAL);
        if refused {
            self.direct_ok
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        refused
    }

    /// Reads `len` bytes at `offset` back from the device (past the page
    /// cache where direct I/O is in use) and returns their chunk hash.
    pub fn read_back_hash(&self, offset: u64, len: usize) -> std::io::Result<Hash> {
        with_aligned(&READ_BUF, len.next_multiple_of(DIRECT_ALIGN), |buf| {
            let buf = &mut buf[..len];
            let mut from = 0;
            if let Some((d, n)) = self.direct_part(offset, len) {
                match d.read_exact_at(&mut buf[..n], offset) {
                    Ok(()) => from = n,
                    Err(e) if self.refused(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            self.file
                .read_exact_at(&mut buf[from..], offset + from as u64)?;
            Ok(chunk_hash(buf))
        })
    }

    /// Writes `data` at `offset`: the block-aligned part directly, the rest
    /// (or everything, where direct I/O is refused) through the page cache.
    pub fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        if let Some((d, n)) = self.direct_part(offset, data.len()) {
            // Chunks read off the network arrive in aligned buffers
            // (statesync_net::chunkbuf) and go to the device as they are;
            // others are copied into this thread's aligned buffer first.
            let r = if (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
                d.write_all_at(&data[..n], offset)
            } else {
                with_aligned(&ALIGNED, n, |buf| {
                    buf.copy_from_slice(&data[..n]);
                    d.write_all_at(buf, offset)
                })
            };
            match r {
                Ok(()) => return self.file.write_all_at(&data[n..], offset + n as u64),
                // Opened with O_DIRECT but the write refused: the whole
                // chunk goes through the page cache.
                Err(e) if self.refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(data, offset)
    }

    /// `fdatasync`: what was written is durable.
    pub fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Makes `len` bytes at `offset` share the extents of `src` at
    /// `src_offset` (FICLONERANGE: XFS, btrfs; nothing is copied or
    /// written). False where that is not possible (another filesystem,
    /// unaligned ranges, no support): the caller copies instead; `enabled`
    /// is cleared when the staging filesystem cannot clone at all (a source
    /// on another filesystem, EXDEV, does not clear it).
    pub fn clone_range(
        &self,
        src: &File,
        src_offset: u64,
        len: u64,
        offset: u64,
        enabled: &std::sync::atomic::AtomicBool,
    ) -> bool {
        use std::os::fd::AsRawFd;
        let a = DIRECT_ALIGN as u64;
        if !self.reflink
            || !enabled.load(std::sync::atomic::Ordering::Relaxed)
            || len == 0
            || !len.is_multiple_of(a)
            || !src_offset.is_multiple_of(a)
            || !offset.is_multiple_of(a)
        {
            return false;
        }
        let arg = libc::file_clone_range {
            src_fd: i64::from(src.as_raw_fd()),
            src_offset,
            src_length: len,
            dest_offset: offset,
        };
        // SAFETY: both descriptors stay open for the call and the kernel
        // only reads `arg`.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::FICLONERANGE, &arg) };
        if r == 0 {
            return true;
        }
        let e = std::io::Error::last_os_error();
        if matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS)
        ) {
            enabled.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of every shape (aligned or not, shorter or longer than a
    /// block, a file's short tail) land exactly where they belong, whether
    /// the filesystem takes direct I/O (ext4, tmpfs on new kernels) or not.
    #[test]
    fn direct_and_buffered_writes_land_byte_exact() {
        for base in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
            let Ok(dir) = tempfile::tempdir_in(&base) else {
                continue;
            };
            let path = dir.path().join("f");
            let t = Target::open(&path, IoOptions::default()).expect("open");
            // (offset, len): aligned 1 MiB, aligned with a tail, sub-block,
            // unaligned offset (1 KiB chunks), one byte.
            let writes: [(u64, usize); 6] = [
                (0, 1 << 20),
                (1 << 20, (1 << 20) + 7),
                (3 << 20, 4095),
                (4 << 20, 4096),
                ((5 << 20) + 1024, 5000),
                (6 << 20, 1),
            ];
            let size = (6 << 20) + 1;
            t.file.set_len(size).expect("size");
            let mut want = vec![0u8; size as usize];
            for (k, &(off, len)) in writes.iter().enumerate() {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 + k * 7 + 1) as u8).collect();
                t.write_at(&data, off).expect("write");
                want[off as usize..off as usize + len].copy_from_slice(&data);
                assert_eq!(
                    t.read_back_hash(off, len).expect("read back"),
                    chunk_hash(&data),
                    "{} offset {off} len {len}",
                    base.display()
                );
            }
            t.sync_data().expect("fdatasync");
            assert_eq!(
                std::fs::read(&path).expect("read"),
                want,
                "{}",
                base.display()
            );
            // Where the filesystem opened the file for direct I/O, the
            // aligned writes above really went that way.
            if t.direct.is_some() {
                assert!(
                    t.direct_ok.load(std::sync::atomic::Ordering::Relaxed),
                    "{}: direct I/O fell back to buffered",
                    base.display()
                );
            }
        }
    }
}
