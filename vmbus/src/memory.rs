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

/// Host memory built from atomics, so two threads may share it safely.
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

    fn byte(&self, at: u64) -> u8 {
        (self.words[(at / 8) as usize].load(Ordering::Relaxed) >> ((at % 8) * 8)) as u8
    }

    fn set_byte(&self, at: u64, b: u8) {
        let shift = (at % 8) * 8;
        let word = &self.words[(at / 8) as usize];
        let mut cur = word.load(Ordering::Relaxed);
        loop {
            let new = (cur & !(0xFF << shift)) | ((b as u64) << shift);
            match word.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }
}

impl SharedMemory for AtomicMemory {
    fn len(&self) -> u64 {
        self.words.len() as u64 * 8
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, buf.len() as u64)?;
        let mut i = 0;
        while i < buf.len() {
            let at = offset + i as u64;
            if at.is_multiple_of(8) && buf.len() - i >= 8 {
                let w = self.words[(at / 8) as usize].load(Ordering::Relaxed);
                buf[i..i + 8].copy_from_slice(&w.to_le_bytes());
                i += 8;
            } else {
                buf[i] = self.byte(at);
                i += 1;
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        self.check(offset, data.len() as u64)?;
        let mut i = 0;
        while i < data.len() {
            let at = offset + i as u64;
            if at.is_multiple_of(8) && data.len() - i >= 8 {
                let w = u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
                self.words[(at / 8) as usize].store(w, Ordering::Relaxed);
                i += 8;
            } else {
                self.set_byte(at, data[i]);
                i += 1;
            }
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
        let word = &self.words[(offset / 8) as usize];
        let mut cur = word.load(Ordering::Relaxed);
        loop {
            let new = (cur & !(0xFFFF_FFFF << shift)) | ((value as u64) << shift);
            match word.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
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
}
