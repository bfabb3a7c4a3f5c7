//! A bitmap over page frames `[base, base + pages * 4096)`.

/// Why a bitmap operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitmapError {
    /// The address is not page aligned or not covered by the bitmap.
    OutOfRange,
    /// Marking a page that is already set.
    AlreadySet,
    /// Clearing a page that is not set.
    NotSet,
    /// No run of free pages is long enough.
    Exhausted,
}

const PAGE: u64 = 4096;

/// One bit per page over a caller-provided word buffer.
pub struct PageBitmap<'a> {
    base: u64,
    pages: u64,
    words: &'a mut [u64],
    set_count: u64,
}

impl<'a> PageBitmap<'a> {
    /// A bitmap for `pages` pages from `base`, all clear; `words` must hold
    /// at least `pages` bits (it is cleared).
    pub fn new(base: u64, pages: u64, words: &'a mut [u64]) -> Option<Self> {
        if !base.is_multiple_of(PAGE) || (words.len() as u64) * 64 < pages {
            return None;
        }
        words.fill(0);
        Some(Self {
            base,
            pages,
            words,
            set_count: 0,
        })
    }

    /// Words needed for `pages` pages.
    pub const fn words_for(pages: u64) -> usize {
        pages.div_ceil(64) as usize
    }

    fn index(&self, addr: u64) -> Result<u64, BitmapError> {
        if !addr.is_multiple_of(PAGE) || addr < self.base {
            return Err(BitmapError::OutOfRange);
        }
        let i = (addr - self.base) / PAGE;
        if i >= self.pages {
            return Err(BitmapError::OutOfRange);
        }
        Ok(i)
    }

    fn bit(&self, i: u64) -> bool {
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn put(&mut self, i: u64, value: bool) {
        let w = &mut self.words[(i / 64) as usize];
        if value {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }

    /// Is the page at `addr` set? (`None` if outside the bitmap.)
    pub fn is_set(&self, addr: u64) -> Option<bool> {
        self.index(addr).ok().map(|i| self.bit(i))
    }

    /// Set the page at `addr`, refusing if it already is.
    pub fn set(&mut self, addr: u64) -> Result<(), BitmapError> {
        let i = self.index(addr)?;
        if self.bit(i) {
            return Err(BitmapError::AlreadySet);
        }
        self.put(i, true);
        self.set_count += 1;
        Ok(())
    }

    /// Clear the page at `addr`, refusing if it is not set.
    pub fn clear(&mut self, addr: u64) -> Result<(), BitmapError> {
        let i = self.index(addr)?;
        if !self.bit(i) {
            return Err(BitmapError::NotSet);
        }
        self.put(i, false);
        self.set_count -= 1;
        Ok(())
    }

    /// Find `count` consecutive clear pages, set them, return the first address.
    pub fn alloc(&mut self, count: u64) -> Result<u64, BitmapError> {
        if count == 0 || count > self.pages {
            return Err(BitmapError::Exhausted);
        }
        let mut run = 0;
        for i in 0..self.pages {
            if self.bit(i) {
                run = 0;
                continue;
            }
            run += 1;
            if run == count {
                let first = i + 1 - count;
                for j in first..=i {
                    self.put(j, true);
                }
                self.set_count += count;
                return Ok(self.base + first * PAGE);
            }
        }
        Err(BitmapError::Exhausted)
    }

    /// Clear `count` pages from `addr`; all must be set (checked first, so a
    /// bad free changes nothing).
    pub fn free(&mut self, addr: u64, count: u64) -> Result<(), BitmapError> {
        let first = self.index(addr)?;
        let last = first
            .checked_add(count)
            .filter(|&e| e <= self.pages)
            .ok_or(BitmapError::OutOfRange)?;
        if (first..last).any(|i| !self.bit(i)) {
            return Err(BitmapError::NotSet);
        }
        for i in first..last {
            self.put(i, false);
        }
        self.set_count -= count;
        Ok(())
    }

    /// Pages set.
    pub fn set_pages(&self) -> u64 {
        self.set_count
    }

    /// Pages covered.
    pub fn pages(&self) -> u64 {
        self.pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn alloc_free_and_double_free() {
        let mut words = [0u64; 2];
        let mut b = PageBitmap::new(0x10_0000, 100, &mut words).unwrap();
        let a = b.alloc(3).unwrap();
        assert_eq!(a, 0x10_0000);
        let c = b.alloc(1).unwrap();
        assert_eq!(c, 0x10_3000);
        assert_eq!(b.set_pages(), 4);
        b.free(a, 3).unwrap();
        assert_eq!(b.free(a, 3), Err(BitmapError::NotSet));
        assert_eq!(
            b.free(c, 2),
            Err(BitmapError::NotSet),
            "partially set: refused whole"
        );
        assert_eq!(b.is_set(c), Some(true));
        assert_eq!(b.alloc(4).unwrap(), 0x10_4000, "the 3-page hole is too small");
        assert_eq!(b.alloc(3).unwrap(), 0x10_0000);
        assert_eq!(b.alloc(1000), Err(BitmapError::Exhausted));
    }

    #[test]
    fn ownership_marks() {
        let mut words = [0u64; 1];
        let mut b = PageBitmap::new(0, 64, &mut words).unwrap();
        b.set(0x5000).unwrap();
        assert_eq!(b.set(0x5000), Err(BitmapError::AlreadySet));
        assert_eq!(b.set(0x5001), Err(BitmapError::OutOfRange));
        assert_eq!(b.set(64 * 4096), Err(BitmapError::OutOfRange));
        b.clear(0x5000).unwrap();
        assert_eq!(b.clear(0x5000), Err(BitmapError::NotSet));
        assert!(PageBitmap::new(0, 65, &mut words).is_none());
    }

    proptest! {
        #[test]
        fn set_count_matches_bits(ops in proptest::collection::vec((any::<bool>(), 1u64..5, 0u64..40), 0..80)) {
            let mut words = [0u64; 1];
            let mut b = PageBitmap::new(0, 40, &mut words).unwrap();
            let mut held: Vec<(u64, u64)> = Vec::new();
            for (alloc, count, pick) in ops {
                if alloc {
                    if let Ok(a) = b.alloc(count) { held.push((a, count)); }
                } else if !held.is_empty() {
                    let (a, c) = held.remove((pick as usize) % held.len());
                    b.free(a, c).unwrap();
                }
                prop_assert_eq!(b.set_pages(), held.iter().map(|h| h.1).sum::<u64>());
            }
        }
    }
}
