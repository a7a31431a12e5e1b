//! Block-aligned buffers for chunk data read off a stream, recycled through
//! a small pool (one per process, keeping at most 256 MiB).
//!
//! The fetcher reads each chunk of a `Chunks` response straight into one of
//! these, and its writer hands the very same memory to the device with
//! direct I/O: no copy into an aligned buffer, and, since buffers come back
//! to the pool when the last `Bytes` referring to them is dropped, no
//! zeroing of fresh memory per response.

use statesync_proto::Bytes;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Mutex;

/// Alignment of every buffer: a multiple of the logical block sizes in use
/// (512, 4096), as direct I/O requires.
pub const ALIGN: usize = 4096;

/// Buffers kept for reuse at most, in bytes (the rest are freed).
const POOL_BYTES: usize = 256 << 20;

/// An allocation of `cap` bytes aligned to [`ALIGN`], every byte
/// initialised (zeroed when allocated, then overwritten by reads).
struct Raw {
    ptr: NonNull<u8>,
    cap: usize,
    layout: Layout,
}

// SAFETY: `Raw` owns its allocation exclusively; nothing else aliases it.
unsafe impl Send for Raw {}

impl Raw {
    /// `None` if `cap` is too large for any allocation.
    fn new(cap: usize) -> Option<Raw> {
        let layout = Layout::from_size_align(cap, ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size (cap >= ALIGN).
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        match NonNull::new(p) {
            Some(ptr) => Some(Raw { ptr, cap, layout }),
            None => std::alloc::handle_alloc_error(layout),
        }
    }

    fn free(self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

struct Pool {
    free: Vec<Raw>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

/// An aligned buffer of `len` initialised bytes; back to the pool on drop.
pub struct ChunkBuf {
    raw: Option<Raw>,
    len: usize,
}

impl ChunkBuf {
    /// A buffer of `len` bytes (their content is unspecified: zeros or what
    /// an earlier user left; the caller overwrites all of them). `None` if
    /// `len` is beyond any allocation (callers bound it far lower).
    pub fn take(len: usize) -> Option<ChunkBuf> {
        let cap = len.max(1).checked_next_multiple_of(ALIGN)?;
        let reused = POOL.lock().ok().and_then(|mut p| {
            // The smallest free buffer that fits.
            let at = p
                .free
                .iter()
                .enumerate()
                .filter(|(_, r)| r.cap >= cap)
                .min_by_key(|(_, r)| r.cap)
                .map(|(i, _)| i)?;
            let r = p.free.swap_remove(at);
            p.bytes -= r.cap;
            Some(r)
        });
        let raw = match reused {
            Some(r) => r,
            None => Raw::new(cap)?,
        };
        Some(ChunkBuf {
            raw: Some(raw),
            len,
        })
    }

    /// The buffer's `len` bytes, to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &self.raw {
            // SAFETY: `len <= cap` bytes, all initialised, exclusively ours.
            Some(r) => unsafe { std::slice::from_raw_parts_mut(r.ptr.as_ptr(), self.len) },
            None => &mut [],
        }
    }

    /// Shares the buffer as `Bytes` (it returns to the pool when the last
    /// clone is dropped).
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

/// Frees every buffer kept for reuse (after a sync: a node may run for
/// days before the next one). Buffers still in use return to the pool later.
pub fn release_pooled() {
    let free = match POOL.lock() {
        Ok(mut p) => {
            p.bytes = 0;
            std::mem::take(&mut p.free)
        }
        Err(_) => return,
    };
    for r in free {
        r.free();
    }
}

/// Bytes currently kept for reuse.
pub fn pooled_bytes() -> usize {
    POOL.lock().map(|p| p.bytes).unwrap_or(0)
}

impl AsRef<[u8]> for ChunkBuf {
    fn as_ref(&self) -> &[u8] {
        match &self.raw {
            // SAFETY: `len <= cap` bytes, all initialised; shared reads only.
            Some(r) => unsafe { std::slice::from_raw_parts(r.ptr.as_ptr(), self.len) },
            None => &[],
        }
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        let Some(r) = self.raw.take() else {
            return;
        };
        if let Ok(mut p) = POOL.lock()
            && p.bytes + r.cap <= POOL_BYTES
        {
            p.bytes += r.cap;
            p.free.push(r);
            return;
        }
        r.free();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_sized_and_recycled() {
        let mut a = ChunkBuf::take(5000).expect("buffer");
        assert_eq!(a.as_mut_slice().len(), 5000);
        a.as_mut_slice().fill(7);
        let pa = a.as_ref().as_ptr() as usize;
        assert_eq!(pa % ALIGN, 0);
        let b = a.freeze();
        assert_eq!(b.as_ptr() as usize, pa);
        assert!(b.iter().all(|&x| x == 7));
        let c = b.clone();
        drop(b);
        assert_eq!(c.len(), 5000);
        drop(c);
        // Back in the pool: a buffer of the same size class is reused
        // (other tests may take it first, so only alignment is certain).
        let d = ChunkBuf::take(8192).expect("buffer");
        assert_eq!(d.as_ref().as_ptr() as usize % ALIGN, 0);
        assert_eq!(d.as_ref().len(), 8192);
        drop(d);
        release_pooled();
        assert_eq!(pooled_bytes(), 0);
        let e = ChunkBuf::take(0).expect("buffer");
        assert!(ChunkBuf::take(usize::MAX).is_none());
        assert!(e.as_ref().is_empty());
    }
}
