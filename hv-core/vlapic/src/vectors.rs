//! A 256-bit vector bitmap in the register layout of IRR/ISR/TMR: vector `v`
//! is bit `v % 32` of word `v / 32` (SDM Vol. 3A §10.8.4, Figure 10-20).

/// 256 bits, one per vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct VectorSet([u32; 8]);

impl VectorSet {
    /// The word index and mask of `v`; `v >> 5` is at most 7.
    fn locate(v: u8) -> (usize, u32) {
        (usize::from(v >> 5), 1 << (v & 31))
    }

    pub(crate) fn set(&mut self, v: u8) {
        let (i, m) = Self::locate(v);
        if let Some(w) = self.0.get_mut(i) {
            *w |= m;
        }
    }

    pub(crate) fn clear(&mut self, v: u8) {
        let (i, m) = Self::locate(v);
        if let Some(w) = self.0.get_mut(i) {
            *w &= !m;
        }
    }

    pub(crate) fn test(&self, v: u8) -> bool {
        let (i, m) = Self::locate(v);
        self.0.get(i).is_some_and(|w| w & m != 0)
    }

    /// The highest vector set.
    pub(crate) fn highest(&self) -> Option<u8> {
        self.0
            .iter()
            .enumerate()
            .rev()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| {
                // i ≤ 7 and leading_zeros ≤ 31, so this fits in a u8.
                (i as u8) * 32 + (31 - w.leading_zeros() as u8)
            })
    }

    /// Register word `i` (0 for an index out of range).
    pub(crate) fn word(&self, i: usize) -> u32 {
        self.0.get(i).copied().unwrap_or(0)
    }

    pub(crate) fn words(&self) -> [u32; 8] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::VectorSet;

    #[test]
    fn set_clear_highest() {
        let mut s = VectorSet::default();
        assert_eq!(s.highest(), None);
        for v in [16u8, 31, 32, 200, 255] {
            s.set(v);
            assert!(s.test(v));
        }
        assert_eq!(s.highest(), Some(255));
        s.clear(255);
        assert_eq!(s.highest(), Some(200));
        assert_eq!(s.word(1), 1);
        assert_eq!(s.word(0), 1 << 16 | 1 << 31);
        assert_eq!(s.word(8), 0);
        s.clear(200);
        s.clear(32);
        s.clear(31);
        assert_eq!(s.highest(), Some(16));
    }
}
