//! Memory a ring lives in. In a partition it is guest memory described by a
//! GPADL; on the host it is a buffer. Rings only need byte copies at offsets
//! and 32-bit loads/stores with ordering for the control words.

use core::sync::atomic::{AtomicU64, Ordering, fence};

/// An access outside the memory (a bug in the caller or a lying peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBounds {
    /// Offset asked for.
    pub offset: u64,
    /// Length asked for.
    pub len: u64,
}

/// Byte-addressed memory shared with another party.
pub trait SharedMemory {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// True if it has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy `buf.len()` bytes from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfBounds>;
    /// Copy `data` to `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), OutOfBounds>;
    /// Load a 4-byte-aligned u32 with acquire ordering.
    fn load_u32(&self, offset: u64) -> Result<u32, OutOfBounds>;
    /// Store a 4-byte-aligned u32 with release ordering.
    fn store_u32(&self, offset: u64, value: u32) -> Result<(), OutOfBounds>;
    /// A full memory barrier (the rings' "mb()").
    fn barrier(&self) {
        fence(Ordering::SeqCst);
    }
}

impl<T: SharedMemory + ?Sized> SharedMemory for &T {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        (**self).read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        (**self).write_at(offset, data)
    }
    fn load_u32(&self, offset: u64) -> Result<u32, OutOfBounds> {
        (**self).load_u32(offset)
    }
    fn store_u32(&self, offset: u64, value: u32) -> Result<(), OutOfBounds> {
        (**self).store_u32(offset, value)
    }
    fn barrier(&self) {
        (**self).barrier()
    }
}

/// Host memory built from atomics, so two threads may share it safely: it
/// stands in for memory a guest may write at any time, and with atomics a
/// racing write is only data, never undefined behaviour. Copies move whole
/// 64-bit words with relaxed loads and stores in unrolled loops; only the
/// partial words at unaligned ends (and `store_u32`, whose neighbour half
/// may belong to the other party) need a compare-exchange loop.
pub struct AtomicMemory {
    words: alloc::boxed::Box<[AtomicU64]>,
}

impl AtomicMemory {
    /// `len` zeroed bytes (rounded up to 8).
    pub fn new(len: u64) -> Self {
        let words = (0..len.div_ceil(8))
            .map(|_| AtomicU64::new(0))
            .collect::<alloc::vec::Vec<_>>();
        Self {
            words: words.into_boxed_slice(),
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), OutOfBounds> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(OutOfBounds { offset, len }),
        }
    }

    /// Store the bytes of `value` selected by `mask` into word `index`,
    /// leaving the others as they are (another party may be writing them:
    /// a compare-exchange loop, never a plain read-modify-write).
    fn store_masked(&self, index: usize, value: u64, mask: u64, order: Ordering) {
        let word = &self.words[index];
        let mut cur = word.load(Ordering::Relaxed);
        loop {
            let new = (cur & !mask) | (value & mask);
            match word.compare_exchange_weak(cur, new, order, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Words copied per step of the bulk loops: enough independent loads and
/// stores in flight to keep the core's load/store ports busy (atomics are
/// never vectorised, so the unrolling is ours to do).
const UNROLL: usize = 8;

/// Copy whole words out of `words` into `out` (`out.len() == 8 * words.len()`).
fn load_words(words: &[AtomicU64], out: &mut [u8]) {
    let mut out_chunks = out.chunks_exact_mut(8 * UNROLL);
    let mut word_chunks = words.chunks_exact(UNROLL);
    for (o, w) in (&mut out_chunks).zip(&mut word_chunks) {
        let mut v = [0u64; UNROLL];
        for (v, w) in v.iter_mut().zip(w) {
            *v = w.load(Ordering::Relaxed);
        }
        for (o, v) in o.chunks_exact_mut(8).zip(v) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
    for (o, w) in out_chunks
        .into_remainder()
        .chunks_exact_mut(8)
        .zip(word_chunks.remainder())
    {
        o.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
}

/// Copy `data` into whole words (`data.len() == 8 * words.len()`).
fn store_words(words: &[AtomicU64], data: &[u8]) {
    let mut data_chunks = data.chunks_exact(8 * UNROLL);
    let mut word_chunks = words.chunks_exact(UNROLL);
    for (d, w) in (&mut data_chunks).zip(&mut word_chunks) {
        for (d, w) in d.chunks_exact(8).zip(w) {
            w.store(
                u64::from_le_bytes(d.try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
        }
    }
    for (d, w) in data_chunks
        .remainder()
        .chunks_exact(8)
        .zip(word_chunks.remainder())
    {
        w.store(
            u64::from_le_bytes(d.try_into().expect("8 bytes")),
            Ordering::Relaxed,
        );
    }
}

/// How a byte range `[offset, offset + len)` splits over 8-byte words: a
/// partial first word, whole words, a partial last word.
struct Split {
    /// Bytes before the first whole word (at most 7, or `len` if shorter).
    head: usize,
    /// Whole words after the head.
    words: usize,
    /// Bytes after the whole words (at most 7).
    tail: usize,
}

impl Split {
    fn new(offset: u64, len: usize) -> Self {
        let head = ((8 - offset % 8) % 8).min(len as u64) as usize;
        let rest = len - head;
        Self {
            head,
            words: rest / 8,
            tail: rest % 8,
        }
    }
}

impl SharedMemory for AtomicMemory {
    fn len(&self) -> u64 {
        self.words.len() as u64 * 8
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, buf.len() as u64)?;
        // In bounds: every word index below is < ceil((offset + len) / 8).
        let split = Split::new(offset, buf.len());
        let mut word = (offset / 8) as usize;
        let (head, rest) = buf.split_at_mut(split.head);
        if !head.is_empty() {
            let skip = (offset % 8) as usize;
            let w = self.words[word].load(Ordering::Relaxed).to_le_bytes();
            head.copy_from_slice(&w[skip..skip + head.len()]);
            word += 1;
        }
        let (body, tail) = rest.split_at_mut(split.words * 8);
        load_words(&self.words[word..word + split.words], body);
        word += split.words;
        if !tail.is_empty() {
            let w = self.words[word].load(Ordering::Relaxed).to_le_bytes();
            tail.copy_from_slice(&w[..split.tail]);
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        self.check(offset, data.len() as u64)?;
        let split = Split::new(offset, data.len());
        let mut word = (offset / 8) as usize;
        let (head, rest) = data.split_at(split.head);
        if !head.is_empty() {
            let skip = (offset % 8) as usize;
            let mut bytes = [0u8; 8];
            bytes[skip..skip + head.len()].copy_from_slice(head);
            let mask = (u64::MAX >> (64 - 8 * head.len())) << (8 * skip);
            self.store_masked(word, u64::from_le_bytes(bytes), mask, Ordering::Relaxed);
            word += 1;
        }
        let (body, tail) = rest.split_at(split.words * 8);
        store_words(&self.words[word..word + split.words], body);
        word += split.words;
        if !tail.is_empty() {
            let mut bytes = [0u8; 8];
            bytes[..tail.len()].copy_from_slice(tail);
            let mask = u64::MAX >> (64 - 8 * tail.len());
            self.store_masked(word, u64::from_le_bytes(bytes), mask, Ordering::Relaxed);
        }
        Ok(())
    }

    fn load_u32(&self, offset: u64) -> Result<u32, OutOfBounds> {
        self.check(offset, 4)?;
        if !offset.is_multiple_of(4) {
            return Err(OutOfBounds { offset, len: 4 });
        }
        let w = self.words[(offset / 8) as usize].load(Ordering::Acquire);
        Ok((w >> ((offset % 8) * 8)) as u32)
    }

    fn store_u32(&self, offset: u64, value: u32) -> Result<(), OutOfBounds> {
        self.check(offset, 4)?;
        if !offset.is_multiple_of(4) {
            return Err(OutOfBounds { offset, len: 4 });
        }
        let shift = (offset % 8) * 8;
        self.store_masked(
            (offset / 8) as usize,
            (value as u64) << shift,
            0xFFFF_FFFF << shift,
            Ordering::Release,
        );
        Ok(())
    }
}

/// A window `[base, base + len)` of another memory (one ring of a GPADL that
/// holds both).
pub struct Window<'a, M: SharedMemory + ?Sized> {
    inner: &'a M,
    base: u64,
    len: u64,
}

impl<'a, M: SharedMemory + ?Sized> Window<'a, M> {
    /// The window, if it lies inside `inner`.
    pub fn new(inner: &'a M, base: u64, len: u64) -> Result<Self, OutOfBounds> {
        match base.checked_add(len) {
            Some(end) if end <= inner.len() => Ok(Self { inner, base, len }),
            _ => Err(OutOfBounds { offset: base, len }),
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<u64, OutOfBounds> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.base + offset),
            _ => Err(OutOfBounds { offset, len }),
        }
    }
}

impl<M: SharedMemory + ?Sized> SharedMemory for Window<'_, M> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        let at = self.check(offset, buf.len() as u64)?;
        self.inner.read_at(at, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        let at = self.check(offset, data.len() as u64)?;
        self.inner.write_at(at, data)
    }
    fn load_u32(&self, offset: u64) -> Result<u32, OutOfBounds> {
        let at = self.check(offset, 4)?;
        self.inner.load_u32(at)
    }
    fn store_u32(&self, offset: u64, value: u32) -> Result<(), OutOfBounds> {
        let at = self.check(offset, 4)?;
        self.inner.store_u32(at, value)
    }
}

/// Memory described by a page list over another memory (a GPADL over guest
/// physical memory): offset `o` is byte `o % 4096` of page `pages[o / 4096]`.
pub struct PagedMemory<'a, M: SharedMemory + ?Sized> {
    physical: &'a M,
    pages: alloc::vec::Vec<u64>,
}

impl<'a, M: SharedMemory + ?Sized> PagedMemory<'a, M> {
    /// Pages `pages` (page numbers) of `physical`; every page must lie inside it.
    pub fn new(physical: &'a M, pages: alloc::vec::Vec<u64>) -> Result<Self, OutOfBounds> {
        for &p in &pages {
            let at = p.checked_mul(4096).ok_or(OutOfBounds {
                offset: u64::MAX,
                len: 4096,
            })?;
            if at.checked_add(4096).is_none_or(|end| end > physical.len()) {
                return Err(OutOfBounds {
                    offset: at,
                    len: 4096,
                });
            }
        }
        Ok(Self { physical, pages })
    }

    fn locate(&self, offset: u64) -> Result<u64, OutOfBounds> {
        let page = self
            .pages
            .get((offset / 4096) as usize)
            .ok_or(OutOfBounds { offset, len: 1 })?;
        Ok(page * 4096 + offset % 4096)
    }

    fn each_chunk(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), OutOfBounds>,
    ) -> Result<(), OutOfBounds> {
        if offset.checked_add(len as u64).is_none_or(|end| end > self.len()) {
            return Err(OutOfBounds {
                offset,
                len: len as u64,
            });
        }
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            let n = ((4096 - at % 4096) as usize).min(len - done);
            f(self.locate(at)?, done, n)?;
            done += n;
        }
        Ok(())
    }
}

impl<M: SharedMemory + ?Sized> SharedMemory for PagedMemory<'_, M> {
    fn len(&self) -> u64 {
        self.pages.len() as u64 * 4096
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        let len = buf.len();
        self.each_chunk(offset, len, |phys, done, n| {
            self.physical.read_at(phys, &mut buf[done..done + n])
        })
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        self.each_chunk(offset, data.len(), |phys, done, n| {
            self.physical.write_at(phys, &data[done..done + n])
        })
    }
    fn load_u32(&self, offset: u64) -> Result<u32, OutOfBounds> {
        if !offset.is_multiple_of(4) || offset.checked_add(4).is_none_or(|end| end > self.len()) {
            return Err(OutOfBounds { offset, len: 4 });
        }
        self.physical.load_u32(self.locate(offset)?)
    }
    fn store_u32(&self, offset: u64, value: u32) -> Result<(), OutOfBounds> {
        if !offset.is_multiple_of(4) || offset.checked_add(4).is_none_or(|end| end > self.len()) {
            return Err(OutOfBounds { offset, len: 4 });
        }
        self.physical.store_u32(self.locate(offset)?, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_words_and_bounds() {
        let m = AtomicMemory::new(32);
        m.write_at(3, b"hello world").unwrap();
        let mut buf = [0u8; 11];
        m.read_at(3, &mut buf).unwrap();
        assert_eq!(&buf, b"hello world");
        m.store_u32(12, 0xDEAD_BEEF).unwrap();
        assert_eq!(m.load_u32(12).unwrap(), 0xDEAD_BEEF);
        assert_eq!(m.load_u32(13), Err(OutOfBounds { offset: 13, len: 4 }));
        assert!(m.write_at(30, &[0; 3]).is_err());
        assert!(m.read_at(u64::MAX, &mut [0; 1]).is_err());
        let w = Window::new(&m, 8, 16).unwrap();
        assert_eq!(w.load_u32(4).unwrap(), 0xDEAD_BEEF);
        assert!(w.load_u32(16).is_err());
        assert!(Window::new(&m, 24, 16).is_err());
    }

    proptest::proptest! {
        /// The bulk paths (partial head word, unrolled whole words, partial
        /// tail word) against a byte array: every offset and length, writes
        /// touch exactly their bytes, out-of-bounds accesses touch nothing.
        #[test]
        fn bulk_copies_match_a_byte_model(
            ops in proptest::collection::vec((0u64..300, 0usize..200, proptest::prelude::any::<u8>()), 1..64)
        ) {
            let m = AtomicMemory::new(256);
            let mut model = [0u8; 256];
            for (offset, len, seed) in ops {
                let data: alloc::vec::Vec<u8> =
                    (0..len).map(|i| seed.wrapping_add(i as u8).wrapping_mul(31)).collect();
                let fits = offset as usize + len <= 256;
                proptest::prop_assert_eq!(m.write_at(offset, &data).is_ok(), fits);
                if fits {
                    model[offset as usize..offset as usize + len].copy_from_slice(&data);
                }
                let mut buf = alloc::vec![0xEEu8; len];
                proptest::prop_assert_eq!(m.read_at(offset, &mut buf).is_ok(), fits);
                if fits {
                    proptest::prop_assert_eq!(&buf[..], &model[offset as usize..offset as usize + len]);
                }
                let mut all = [0u8; 256];
                m.read_at(0, &mut all).unwrap();
                proptest::prop_assert_eq!(&all[..], &model[..]);
            }
        }
    }
}
