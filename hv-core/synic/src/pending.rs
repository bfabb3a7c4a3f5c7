//! Interrupt vectors waiting to be injected into one VP.
//!
//! hv-core injects a SynIC interrupt through EVENTINJ when the VP can take it
//! (RFLAGS.IF set, no interrupt shadow, no other event queued). Until then the
//! vector waits here; several SINTs on different vectors can wait at once, and
//! the highest vector goes first, as a local APIC would order them.

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

    #[test]
    fn highest_first_and_no_duplicates() {
        let mut p = PendingVectors::new();
        assert!(p.is_empty());
        for v in [0x40, 0xFF, 0x20, 0x40, 0x7F] {
            p.set(v);
        }
        let order: std::vec::Vec<u8> = core::iter::from_fn(|| p.take_highest()).collect();
        assert_eq!(order, [0xFF, 0x7F, 0x40, 0x20]);
        assert!(p.is_empty());
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
            let got: std::vec::Vec<u8> = core::iter::from_fn(|| p.take_highest()).collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }
}
