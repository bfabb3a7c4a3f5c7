//! Interrupt vectors waiting to be injected into one VP.
//!
//! hv-core injects a SynIC interrupt through EVENTINJ when the VP can take it
//! (RFLAGS.IF set, no interrupt shadow, no other event queued). Until then the
//! vector waits here; several SINTs on different vectors can wait at once, and
//! the highest vector goes first, as a local APIC would order them (the IRR
//! is a 256-bit set and the highest set bit wins; Intel SDM vol. 3 §11.8.4).
//!
//! The same type doubles as the set of vectors one SynIC operation asks the
//! caller to raise (see [`crate::SynicVp::write`]); fold it into the VP's set
//! with [`PendingVectors::merge`].

/// A set of pending vectors (256 bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingVectors([u64; 4]);

impl PendingVectors {
    /// Nothing pending.
    pub const fn new() -> Self {
        Self([0; 4])
    }

    /// Mark `vector` pending (a vector already pending stays pending once:
    /// interrupts are edge events, not counts).
    pub fn set(&mut self, vector: u8) {
        self.0[usize::from(vector / 64)] |= 1 << (vector % 64);
    }

    /// Whether `vector` is pending.
    pub fn contains(&self, vector: u8) -> bool {
        self.0[usize::from(vector / 64)] & (1 << (vector % 64)) != 0
    }

    /// Add every vector of `other` (set union).
    pub fn merge(&mut self, other: &PendingVectors) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine |= theirs;
        }
    }

    /// The highest pending vector, without taking it.
    pub fn highest(&self) -> Option<u8> {
        (0..4).rev().find_map(|word| {
            let bits = self.0[word];
            (bits != 0).then(|| (word * 64 + 63 - bits.leading_zeros() as usize) as u8)
        })
    }

    /// Take the highest pending vector.
    pub fn take_highest(&mut self) -> Option<u8> {
        let v = self.highest()?;
        self.0[usize::from(v / 64)] &= !(1 << (v % 64));
        Some(v)
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    fn drain(p: &mut PendingVectors) -> Vec<u8> {
        core::iter::from_fn(|| p.take_highest()).collect()
    }

    #[test]
    fn highest_first_and_no_duplicates() {
        let mut p = PendingVectors::new();
        assert!(p.is_empty());
        for v in [0x40, 0xFF, 0x20, 0x40, 0x7F] {
            p.set(v);
        }
        assert_eq!(drain(&mut p), [0xFF, 0x7F, 0x40, 0x20]);
        assert!(p.is_empty());
    }

    #[test]
    fn empty_set_yields_nothing_repeatedly() {
        let mut p = PendingVectors::default();
        assert_eq!(p, PendingVectors::new());
        for _ in 0..3 {
            assert_eq!(p.highest(), None);
            assert_eq!(p.take_highest(), None);
            assert!(p.is_empty());
        }
        assert!((0..=255).all(|v| !p.contains(v)));
    }

    #[test]
    fn highest_peeks_without_taking() {
        let mut p = PendingVectors::new();
        p.set(0x31);
        assert_eq!(p.highest(), Some(0x31));
        assert_eq!(p.highest(), Some(0x31));
        assert!(p.contains(0x31));
        assert_eq!(p.take_highest(), Some(0x31));
        assert!(!p.contains(0x31));
        assert_eq!(p.take_highest(), None);
    }

    #[test]
    fn duplicates_are_taken_once() {
        let mut p = PendingVectors::new();
        for _ in 0..1000 {
            p.set(0x93);
        }
        assert_eq!(drain(&mut p), [0x93]);
        // Taken and set again: pending again, once.
        p.set(0x93);
        p.set(0x93);
        assert_eq!(drain(&mut p), [0x93]);
    }

    #[test]
    fn word_boundaries_and_extremes() {
        // 16 is the lowest vector a SINT may use; 63/64, 127/128, 191/192
        // straddle the u64 words; 255 is the top.
        let edges = [16u8, 17, 62, 63, 64, 65, 127, 128, 191, 192, 254, 255];
        let mut p = PendingVectors::new();
        for v in edges {
            p.set(v);
        }
        for v in edges {
            assert!(p.contains(v), "{v}");
        }
        let mut expected = edges.to_vec();
        expected.reverse();
        assert_eq!(drain(&mut p), expected);
        // Each vector alone is found as the highest.
        for v in 16..=255u8 {
            let mut one = PendingVectors::new();
            one.set(v);
            assert_eq!(one.highest(), Some(v));
            assert_eq!(one.take_highest(), Some(v));
            assert!(one.is_empty());
        }
    }

    #[test]
    fn every_synic_vector_drains_in_order() {
        let mut p = PendingVectors::new();
        for v in 16..=255u8 {
            p.set(v);
        }
        let expected: Vec<u8> = (16..=255u8).rev().collect();
        assert_eq!(drain(&mut p), expected);
    }

    #[test]
    fn merge_is_a_union() {
        let mut a = PendingVectors::new();
        let mut b = PendingVectors::new();
        a.set(0x20);
        a.set(0xF3);
        b.set(0xF3);
        b.set(0x80);
        a.merge(&b);
        assert_eq!(drain(&mut a), [0xF3, 0x80, 0x20]);
        // Merging nothing changes nothing.
        let mut c = PendingVectors::new();
        c.set(0x41);
        c.merge(&PendingVectors::new());
        assert_eq!(drain(&mut c), [0x41]);
    }

    proptest::proptest! {
        #[test]
        fn drains_in_descending_order(vectors in proptest::collection::vec(0u8..=255, 0..40)) {
            let mut p = PendingVectors::new();
            for v in &vectors {
                p.set(*v);
            }
            let mut expected: std::vec::Vec<u8> = vectors.clone();
            expected.sort_unstable_by(|a, b| b.cmp(a));
            expected.dedup();
            proptest::prop_assert_eq!(drain(&mut p), expected);
        }

        /// Interleaved sets and takes over the SynIC range behave like an
        /// ordered set.
        #[test]
        fn matches_an_ordered_set(ops in proptest::collection::vec(proptest::option::of(16u8..=255), 0..200)) {
            let mut p = PendingVectors::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Some(v) => {
                        p.set(v);
                        model.insert(v);
                    }
                    None => {
                        let want = model.iter().next_back().copied();
                        if let Some(v) = want {
                            model.remove(&v);
                        }
                        proptest::prop_assert_eq!(p.take_highest(), want);
                    }
                }
                proptest::prop_assert_eq!(p.highest(), model.iter().next_back().copied());
                proptest::prop_assert_eq!(p.is_empty(), model.is_empty());
            }
        }
    }
}
