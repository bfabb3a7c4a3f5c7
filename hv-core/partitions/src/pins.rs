//! Pinned root pages with a count per page.
//!
//! hv-core writes into some root pages on its own (the root's hypercall page,
//! its SynIC message and event-flag pages, every child VP's intercept-message
//! page). Such a page must never be lent to a child, or the child could
//! rewrite what hv-core hands the root. Two uses may share a page (two VPs
//! with one message page), so a pin is a count: the page stays pinned until
//! its last user lets go. The table has a fixed capacity, so no caller can
//! make hv-core's memory grow.

/// Why a pin was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinError {
    /// Every slot holds another page.
    TableFull,
    /// The page's count would overflow.
    TooManyPins,
    /// Unpinning a page that is not pinned (a hypervisor bug).
    NotPinned,
}

/// Up to `N` distinct pinned pages, each with its number of users.
#[derive(Debug, Clone)]
pub struct PinTable<const N: usize> {
    slots: [(u64, u32); N],
}

impl<const N: usize> Default for PinTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> PinTable<N> {
    /// An empty table.
    pub const fn new() -> Self {
        Self { slots: [(0, 0); N] }
    }

    fn page(addr: u64) -> u64 {
        addr & !0xFFF
    }

    /// One more user of the page holding `addr`.
    pub fn pin(&mut self, addr: u64) -> Result<(), PinError> {
        let page = Self::page(addr);
        if let Some(slot) = self.slots.iter_mut().find(|(p, n)| *n > 0 && *p == page) {
            slot.1 = slot.1.checked_add(1).ok_or(PinError::TooManyPins)?;
            return Ok(());
        }
        let free = self
            .slots
            .iter_mut()
            .find(|(_, n)| *n == 0)
            .ok_or(PinError::TableFull)?;
        *free = (page, 1);
        Ok(())
    }

    /// One user fewer; the page is free to lend when the count reaches 0.
    pub fn unpin(&mut self, addr: u64) -> Result<(), PinError> {
        let page = Self::page(addr);
        let slot = self
            .slots
            .iter_mut()
            .find(|(p, n)| *n > 0 && *p == page)
            .ok_or(PinError::NotPinned)?;
        slot.1 -= 1;
        Ok(())
    }

    /// Users of the page holding `addr` (0: not pinned).
    pub fn count(&self, addr: u64) -> u32 {
        let page = Self::page(addr);
        self.slots
            .iter()
            .find(|(p, n)| *n > 0 && *p == page)
            .map_or(0, |(_, n)| *n)
    }

    /// Distinct pages pinned.
    pub fn pages(&self) -> usize {
        self.slots.iter().filter(|(_, n)| *n > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_page_stays_pinned_until_its_last_user_goes() {
        let mut t = PinTable::<4>::new();
        t.pin(0x5000).unwrap();
        t.pin(0x5008).unwrap(); // same page, second user
        assert_eq!(t.count(0x5000), 2);
        t.unpin(0x5000).unwrap();
        assert_eq!(t.count(0x5FFF), 1, "one user left: still pinned");
        t.unpin(0x5000).unwrap();
        assert_eq!(t.count(0x5000), 0);
        assert_eq!(t.unpin(0x5000), Err(PinError::NotPinned));
    }

    #[test]
    fn the_table_is_bounded_and_slots_are_reused() {
        let mut t = PinTable::<2>::new();
        t.pin(0x1000).unwrap();
        t.pin(0x2000).unwrap();
        assert_eq!(t.pin(0x3000), Err(PinError::TableFull));
        // More users of a pinned page need no slot.
        t.pin(0x2000).unwrap();
        t.unpin(0x1000).unwrap();
        t.pin(0x3000).unwrap();
        assert_eq!(t.pages(), 2);
        assert_eq!(t.count(0x1000), 0);
    }

    #[test]
    fn counts_do_not_overflow() {
        let mut t = PinTable::<1> {
            slots: [(0x1000, u32::MAX)],
        };
        assert_eq!(t.pin(0x1000), Err(PinError::TooManyPins));
        assert_eq!(t.count(0x1000), u32::MAX);
    }
}
