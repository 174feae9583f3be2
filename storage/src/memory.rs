//! The backend of an in-memory store: redb's pages in fixed-size chunks allocated on
//! first write.
//!
//! redb's own `InMemoryBackend` keeps one `Vec<u8>` and zero-fills every growth. redb
//! trims the end of its file after durable commits and grows it again soon after, so on
//! a store that keeps growing that zero-filling took about half the time of an
//! in-memory step (the engine's step benchmark, under perf); freeing the trimmed memory
//! instead made the kernel zero fresh pages at about a sixth of it. Here nothing is freed
//! before the store closes: a shrink only moves the length, and a growth zeroes only
//! bytes that were written before (below the high-water mark) and are now past the end.

use std::io;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::StorageBackend;

/// Large enough that a step's pages rarely straddle two chunks, small enough that the
/// allocator maps each one from the OS lazily and returns it when freed.
const CHUNK: usize = 1 << 20;

#[derive(Default)]
struct Chunks {
    len: u64,
    /// Every byte at or past this offset is zero, written or not.
    high_water: u64,
    /// Chunk `i` holds bytes `i * CHUNK ..`; `None` reads as zeros.
    chunks: Vec<Option<Box<[u8]>>>,
}

impl Chunks {
    fn zero(&mut self, from: u64, to: u64) {
        for (index, within, take) in pieces(from, (to - from) as usize) {
            if let Some(Some(chunk)) = self.chunks.get_mut(index) {
                chunk[within..within + take].fill(0);
            }
        }
    }
}

/// redb's storage for a store in memory.
#[derive(Default)]
pub(crate) struct MemoryBackend(RwLock<Chunks>);

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("len", &self.read_chunks().len)
            .finish()
    }
}

fn out_of_range(offset: u64, len: usize, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("bytes {offset}..{offset}+{len} are past the end ({size}) of the in-memory store"),
    )
}

/// The chunk index, offset inside it, and length of the part of `offset..offset+len`
/// that lies in that chunk, in order.
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let mut at = offset;
    let end = offset + len as u64;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        // Both fit in usize: the caller checked `end` against the length, which is the size
        // of memory that exists.
        let index = (at / CHUNK as u64) as usize;
        let within = (at % CHUNK as u64) as usize;
        let take = (CHUNK - within).min((end - at) as usize);
        at += take as u64;
        Some((index, within, take))
    })
}

impl MemoryBackend {
    fn read_chunks(&self) -> RwLockReadGuard<'_, Chunks> {
        // A panic while holding the lock cannot leave `Chunks` half-updated in a way that
        // matters more than the panic itself: redb treats the database as failed anyway.
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_chunks(&self) -> RwLockWriteGuard<'_, Chunks> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl StorageBackend for MemoryBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.read_chunks().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let chunks = self.read_chunks();
        if offset
            .checked_add(out.len() as u64)
            .is_none_or(|end| end > chunks.len)
        {
            return Err(out_of_range(offset, out.len(), chunks.len));
        }
        let mut done = 0;
        for (index, within, take) in pieces(offset, out.len()) {
            let target = &mut out[done..done + take];
            match chunks.chunks.get(index).and_then(Option::as_ref) {
                Some(chunk) => target.copy_from_slice(&chunk[within..within + take]),
                None => target.fill(0),
            }
            done += take;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut chunks = self.write_chunks();
        if len > chunks.len {
            // What was written past the old end must read as zeros again.
            let stale_end = len.min(chunks.high_water);
            if stale_end > chunks.len {
                let from = chunks.len;
                chunks.zero(from, stale_end);
            }
            if len >= chunks.high_water {
                chunks.high_water = chunks.len;
            }
        }
        chunks.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut chunks = self.write_chunks();
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > chunks.len)
        {
            return Err(out_of_range(offset, data.len(), chunks.len));
        }
        let mut done = 0;
        for (index, within, take) in pieces(offset, data.len()) {
            if chunks.chunks.len() <= index {
                chunks.chunks.resize_with(index + 1, || None);
            }
            let chunk = chunks.chunks[index].get_or_insert_with(|| vec![0u8; CHUNK].into());
            chunk[within..within + take].copy_from_slice(&data[done..done + take]);
            done += take;
        }
        chunks.high_water = chunks.high_water.max(offset + data.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(backend: &MemoryBackend, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0xAA; len];
        backend.read(offset, &mut out).expect("read");
        out
    }

    #[test]
    fn grown_space_reads_as_zeros_and_writes_cross_chunks() {
        let backend = MemoryBackend::default();
        backend.set_len(3 * CHUNK as u64).expect("grow");
        assert_eq!(read(&backend, CHUNK as u64 - 2, 4), vec![0; 4]);
        let data: Vec<u8> = (1..=10).collect();
        backend.write(CHUNK as u64 - 5, &data).expect("write");
        assert_eq!(read(&backend, CHUNK as u64 - 5, 10), data);
        assert_eq!(read(&backend, CHUNK as u64 - 6, 1), vec![0]);
        assert_eq!(read(&backend, CHUNK as u64 + 5, 1), vec![0]);
    }

    #[test]
    fn shrinking_then_growing_reads_zeros_past_the_old_end() {
        let backend = MemoryBackend::default();
        backend.set_len(2 * CHUNK as u64).expect("grow");
        backend.write(10, &[7; 100]).expect("write");
        backend.write(CHUNK as u64 + 10, &[8; 100]).expect("write");
        backend.set_len(50).expect("shrink");
        assert_eq!(backend.len().expect("len"), 50);
        backend.set_len(80).expect("grow a little");
        assert_eq!(read(&backend, 10, 40), vec![7; 40]);
        assert_eq!(read(&backend, 50, 30), vec![0; 30]);
        backend.write(60, &[9; 5]).expect("write past the old end");
        backend.set_len(70).expect("shrink again");
        backend.set_len(2 * CHUNK as u64).expect("grow again");
        assert_eq!(
            read(&backend, 50, 60),
            [&[0u8; 10][..], &[9; 5], &[0; 45]].concat()
        );
        assert_eq!(read(&backend, 70, 40), vec![0; 40]);
        assert_eq!(read(&backend, CHUNK as u64 + 10, 100), vec![0; 100]);
    }

    #[test]
    fn access_past_the_end_is_an_error_naming_the_range() {
        let backend = MemoryBackend::default();
        backend.set_len(100).expect("grow");
        let mut out = [0u8; 10];
        let err = backend.read(95, &mut out).expect_err("past the end");
        assert!(err.to_string().contains("95..95+10"), "{err}");
        assert!(backend.write(u64::MAX, &[1]).is_err());
    }
}
