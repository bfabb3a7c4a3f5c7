//! Physical memory bookkeeping without allocation: a sorted set of disjoint
//! half-open ranges with carving (remove a region from a memory map) and a
//! first-fit range allocator. Used by the root to build its memory map from
//! the firmware's, to set aside hv-core's region, and as its frame allocator.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::ops::Range;

/// 4 KiB.
pub const PAGE_SIZE: u64 = 4096;

/// Why a range-set operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// The set would need more than its fixed capacity of ranges.
    CapacityExceeded,
    /// The range is empty or its end overflows.
    Invalid,
    /// The range overlaps one already present (insert).
    Overlap,
}

/// A set of disjoint, sorted, non-adjacent half-open ranges, at most `N` of them.
#[derive(Clone, Debug)]
pub struct RangeSet<const N: usize> {
    ranges: [Range<u64>; N],
    len: usize,
}

impl<const N: usize> Default for RangeSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RangeSet<N> {
    /// An empty set.
    pub const fn new() -> Self {
        Self {
            ranges: [const { 0..0 }; N],
            len: 0,
        }
    }

    /// The ranges, sorted.
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges[..self.len].iter().cloned()
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no range.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sum of range lengths.
    pub fn total(&self) -> u64 {
        self.iter().map(|r| r.end - r.start).sum()
    }

    /// True if `r` lies entirely inside one range of the set.
    pub fn contains(&self, r: Range<u64>) -> bool {
        if r.start >= r.end {
            return false;
        }
        self.iter().any(|s| s.start <= r.start && r.end <= s.end)
    }

    /// True if any byte of `r` is in the set.
    pub fn overlaps(&self, r: Range<u64>) -> bool {
        self.iter().any(|s| s.start < r.end && r.start < s.end)
    }

    fn insert_at(&mut self, index: usize, r: Range<u64>) -> Result<(), RangeError> {
        if self.len == N {
            return Err(RangeError::CapacityExceeded);
        }
        self.ranges[index..=self.len].rotate_right(1);
        self.ranges[index] = r;
        self.len += 1;
        Ok(())
    }

    fn remove_at(&mut self, index: usize) {
        self.ranges[index..self.len].rotate_left(1);
        self.len -= 1;
        self.ranges[self.len] = 0..0;
    }

    /// Add `r`, merging with neighbours; fails if it overlaps the set.
    pub fn insert(&mut self, r: Range<u64>) -> Result<(), RangeError> {
        if r.start >= r.end {
            return Err(RangeError::Invalid);
        }
        if self.overlaps(r.clone()) {
            return Err(RangeError::Overlap);
        }
        let index = self.ranges[..self.len].partition_point(|s| s.end <= r.start);
        let merge_prev = index > 0 && self.ranges[index - 1].end == r.start;
        let merge_next = index < self.len && self.ranges[index].start == r.end;
        match (merge_prev, merge_next) {
            (true, true) => {
                self.ranges[index - 1].end = self.ranges[index].end;
                self.remove_at(index);
            }
            (true, false) => self.ranges[index - 1].end = r.end,
            (false, true) => self.ranges[index].start = r.start,
            (false, false) => self.insert_at(index, r)?,
        }
        Ok(())
    }

    /// Add `r`, merging with anything it overlaps or touches.
    pub fn union(&mut self, r: Range<u64>) -> Result<(), RangeError> {
        if r.start >= r.end {
            return Err(RangeError::Invalid);
        }
        let mut merged = r;
        let mut i = 0;
        while i < self.len {
            let s = self.ranges[i].clone();
            if s.start <= merged.end && merged.start <= s.end {
                merged = merged.start.min(s.start)..merged.end.max(s.end);
                self.remove_at(i);
            } else {
                i += 1;
            }
        }
        self.insert(merged)
    }

    /// Remove every byte of `r` from the set (it need not be present).
    pub fn remove(&mut self, r: Range<u64>) -> Result<(), RangeError> {
        if r.start >= r.end {
            return Err(RangeError::Invalid);
        }
        let mut i = 0;
        while i < self.len {
            let s = self.ranges[i].clone();
            if s.end <= r.start || r.end <= s.start {
                i += 1;
                continue;
            }
            match (s.start < r.start, r.end < s.end) {
                (true, true) => {
                    // Split in two.
                    self.insert_at(i + 1, r.end..s.end)?;
                    self.ranges[i].end = r.start;
                    i += 2;
                }
                (true, false) => {
                    self.ranges[i].end = r.start;
                    i += 1;
                }
                (false, true) => {
                    self.ranges[i].start = r.end;
                    i += 1;
                }
                (false, false) => self.remove_at(i),
            }
        }
        Ok(())
    }

    /// Allocate `size` bytes aligned to `align` (a power of two), first fit
    /// from the lowest address; the bytes leave the set.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        self.alloc_where(size, align, false)
    }

    /// Like [`Self::alloc`] but takes the highest fitting address.
    pub fn alloc_top(&mut self, size: u64, align: u64) -> Option<u64> {
        self.alloc_where(size, align, true)
    }

    fn alloc_where(&mut self, size: u64, align: u64, top: bool) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let fits = |s: &Range<u64>| -> Option<u64> {
            if top {
                let start = s.end.checked_sub(size)? & !(align - 1);
                (start >= s.start).then_some(start)
            } else {
                let start = s.start.checked_next_multiple_of(align)?;
                (start.checked_add(size)? <= s.end).then_some(start)
            }
        };
        let found = if top {
            self.ranges[..self.len].iter().rev().find_map(fits)
        } else {
            self.ranges[..self.len].iter().find_map(fits)
        }?;
        self.remove(found..found + size).ok()?;
        Some(found)
    }
}

/// Round `r` inward to whole pages (drops partial pages at either end).
pub fn page_align_inward(r: Range<u64>) -> Range<u64> {
    let start = r.start.next_multiple_of(PAGE_SIZE);
    let end = r.end & !(PAGE_SIZE - 1);
    if start >= end { 0..0 } else { start..end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn insert_merges_neighbours() {
        let mut s = RangeSet::<8>::new();
        s.insert(0..10).unwrap();
        s.insert(20..30).unwrap();
        s.insert(10..20).unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..30]);
        assert_eq!(s.insert(5..6), Err(RangeError::Overlap));
        assert_eq!(s.insert(6..6), Err(RangeError::Invalid));
    }

    #[test]
    fn remove_splits_and_trims() {
        let mut s = RangeSet::<8>::new();
        s.insert(0..100).unwrap();
        s.remove(40..60).unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..40, 60..100]);
        s.remove(30..70).unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..30, 70..100]);
        s.remove(0..1000).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn carving_a_region_removes_exactly_it() {
        // A QEMU-like map: low RAM, then RAM from 1 MiB to 512 MiB.
        let mut ram = RangeSet::<16>::new();
        ram.insert(0..0x9_fc00).unwrap();
        ram.insert(0x10_0000..0x2000_0000).unwrap();
        let before = ram.total();
        let region = ram.alloc_top(16 << 20, 2 << 20).unwrap();
        assert_eq!(region % (2 << 20), 0);
        assert_eq!(region + (16 << 20), 0x2000_0000);
        assert_eq!(ram.total(), before - (16 << 20));
        assert!(!ram.overlaps(region..region + (16 << 20)));
        assert!(ram.contains(region - 4096..region));
    }

    #[test]
    fn capacity_is_enforced() {
        let mut s = RangeSet::<2>::new();
        s.insert(0..10).unwrap();
        s.insert(20..30).unwrap();
        assert_eq!(s.insert(40..50), Err(RangeError::CapacityExceeded));
        assert_eq!(s.remove(2..3), Err(RangeError::CapacityExceeded));
        // Failure changed nothing.
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..10, 20..30]);
    }

    #[test]
    fn alloc_respects_alignment_and_exhaustion() {
        let mut s = RangeSet::<4>::new();
        s.insert(0x1000..0x5000).unwrap();
        assert_eq!(s.alloc(0x1000, 0x2000), Some(0x2000));
        assert_eq!(s.alloc(0x2000, 0x1000), Some(0x3000));
        assert_eq!(s.alloc(0x1000, 0x1000), Some(0x1000));
        assert_eq!(s.alloc(0x1000, 0x1000), None);
        assert_eq!(s.alloc(0x1000, 3), None);
        assert_eq!(page_align_inward(0x10..0x3010), 0x1000..0x3000);
    }

    proptest! {
        /// The set always stays sorted, disjoint and non-adjacent, and its total
        /// matches a byte-level model.
        #[test]
        fn behaves_like_a_bitmap(ops in proptest::collection::vec((any::<bool>(), 0u64..64, 1u64..16), 0..60)) {
            let mut set = RangeSet::<64>::new();
            let mut model = [false; 80];
            for (add, start, len) in ops {
                let r = start..start + len;
                if add {
                    if set.union(r.clone()).is_ok() {
                        for b in r { model[b as usize] = true; }
                    }
                } else if set.remove(r.clone()).is_ok() {
                    for b in r { model[b as usize] = false; }
                }
                let v: Vec<_> = set.iter().collect();
                for w in v.windows(2) { prop_assert!(w[0].end < w[1].start); }
                prop_assert_eq!(set.total(), model.iter().filter(|&&b| b).count() as u64);
                for (i, &present) in model.iter().enumerate() {
                    prop_assert_eq!(set.contains(i as u64..i as u64 + 1), present);
                }
            }
        }
    }
}
