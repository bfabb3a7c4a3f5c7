//! The host's view of the guest's receive buffer: one section of
//! fixed-size sub-allocations ("slots"), each holding one RNDIS message the
//! host writes for the guest (a received frame, a control completion, a
//! status indication) and names in a transfer-page range. A slot is busy
//! from the moment the host fills it until the guest completes the
//! transfer-page packet (`SEND_RNDIS_PACKET_COMPLETE` with the packet's
//! transaction id); then it is free again.
//!
//! Layout rules Linux 6.1 enforces on `SEND_RECEIVE_BUFFER_COMPLETE`
//! (`netvsc_init_buf`): exactly one section, at offset 0, sub-allocation size
//! ≥ 68, size × count ≤ the buffer; and each received range must be no
//! longer than the sub-allocation size (`netvsc_receive`), because the
//! guest copies it into a buffer of that size. OpenVMM sizes slots for the
//! MTU: 256 header bytes + MTU (with Ethernet header) + 36 bytes Windows'
//! netvsc may not use (`buffers.rs`, `sub_allocation_size_for_mtu`).
//!
//! Bounded: at most `max_slots` slots (and never more than fit the
//! buffer), a fixed free list, no allocation after construction.

use crate::message::ReceiveBufferSection;
use crate::transfer_page::TransferPageRange;
use alloc::vec;
use alloc::vec::Vec;

/// Header room OpenVMM reserves in each slot for RNDIS headers and PPIs.
pub const RX_HEADER_LEN: u32 = 256;
/// Bytes at the end of each slot Windows' netvsc may not use (OpenVMM).
pub const FOOTER_LEN: u32 = 36;

/// The sub-allocation size for frames of up to `max_frame` bytes (Ethernet
/// header included): 1806 for 1514.
pub const fn sub_allocation_size_for(max_frame: u32) -> u32 {
    RX_HEADER_LEN + max_frame + FOOTER_LEN
}

/// Why a receive buffer layout was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// The slot size is below Linux's minimum (68) (host configuration).
    SlotTooSmall(u32),
    /// Not a single slot fits the guest's buffer (guest's buffer too small).
    BufferTooSmall {
        /// Bytes of the guest's buffer.
        buffer_len: u64,
        /// Bytes per slot.
        slot_size: u32,
    },
}

/// Why a slot could not be freed: the guest completed something the host
/// does not have outstanding (guest fault), or a host bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeError {
    /// No such slot.
    OutOfRange(u64),
    /// The slot is not in use.
    NotInUse(u32),
}

/// Fixed-size slots of the guest's receive buffer.
#[derive(Debug, Clone)]
pub struct ReceiveSections {
    slot_size: u32,
    count: u32,
    /// Free slot indices (a stack: the most recently freed slot is reused
    /// first, which keeps the guest's cache warm).
    free: Vec<u32>,
    /// One bit per slot: in use.
    busy: Vec<u64>,
}

impl ReceiveSections {
    /// Slots of `slot_size` bytes in a guest buffer of `buffer_len` bytes,
    /// as many as fit, at most `max_slots` (and at most `u32::MAX`).
    pub fn new(buffer_len: u64, slot_size: u32, max_slots: u32) -> Result<Self, LayoutError> {
        if slot_size < crate::message::MIN_SECTION_SIZE {
            return Err(LayoutError::SlotTooSmall(slot_size));
        }
        let fit = buffer_len / slot_size as u64;
        let count = fit.min(max_slots as u64) as u32;
        if count == 0 {
            return Err(LayoutError::BufferTooSmall {
                buffer_len,
                slot_size,
            });
        }
        Ok(Self {
            slot_size,
            count,
            free: (0..count).rev().collect(),
            busy: vec![0; (count as usize).div_ceil(64)],
        })
    }

    /// The section to announce in `SEND_RECEIVE_BUFFER_COMPLETE`: offset 0,
    /// the slot size and count, `end_offset` = size × count.
    pub fn section(&self) -> ReceiveBufferSection {
        ReceiveBufferSection {
            offset: 0.into(),
            sub_allocation_size: self.slot_size.into(),
            num_sub_allocations: self.count.into(),
            end_offset: ((self.slot_size as u64 * self.count as u64).min(u32::MAX as u64) as u32).into(),
        }
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> u32 {
        self.slot_size
    }

    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.count
    }

    /// Slots free now.
    pub fn available(&self) -> u32 {
        self.free.len() as u32
    }

    /// Slots in use now.
    pub fn in_use(&self) -> u32 {
        self.count - self.available()
    }

    /// Take a free slot, or `None` when all are in use (the host must wait
    /// for completions: back-pressure, not an error).
    pub fn alloc(&mut self) -> Option<u32> {
        let i = self.free.pop()?;
        self.set_busy(i, true);
        Some(i)
    }

    /// Byte offset of slot `index` in the guest's buffer (where the host
    /// writes the message), or `None` for no such slot.
    pub fn offset(&self, index: u32) -> Option<u64> {
        (index < self.count).then(|| index as u64 * self.slot_size as u64)
    }

    /// The transfer-page range naming the first `len` bytes of slot
    /// `index`, or `None` if there is no such slot or `len` is 0 or larger
    /// than a slot.
    pub fn range(&self, index: u32, len: u32) -> Option<TransferPageRange> {
        let offset = u32::try_from(self.offset(index)?).ok()?;
        (len != 0 && len <= self.slot_size).then(|| TransferPageRange::new(offset, len))
    }

    /// Free slot `index` (its transfer-page packet was completed).
    pub fn free(&mut self, index: u32) -> Result<(), FreeError> {
        if index >= self.count {
            return Err(FreeError::OutOfRange(index as u64));
        }
        if !self.is_busy(index) {
            return Err(FreeError::NotInUse(index));
        }
        self.set_busy(index, false);
        self.free.push(index);
        Ok(())
    }

    /// Free the slot whose transfer-page packet carried `transaction_id`,
    /// for a host that uses the slot index as the transaction id (the
    /// simplest mapping; OpenVMM does this for control messages). Any other
    /// id is the guest's fault.
    pub fn complete(&mut self, transaction_id: u64) -> Result<u32, FreeError> {
        let index = u32::try_from(transaction_id).map_err(|_| FreeError::OutOfRange(transaction_id))?;
        self.free(index).map(|()| index)
    }

    /// Free every slot (the guest revoked the buffer or the channel reset).
    pub fn reset(&mut self) {
        self.free = (0..self.count).rev().collect();
        self.busy.iter_mut().for_each(|w| *w = 0);
    }

    fn is_busy(&self, i: u32) -> bool {
        self.busy
            .get(i as usize / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    fn set_busy(&mut self, i: u32, on: bool) {
        if let Some(w) = self.busy.get_mut(i as usize / 64) {
            if on {
                *w |= 1u64 << (i % 64);
            } else {
                *w &= !(1u64 << (i % 64));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_default_buffer() {
        // Linux's default receive buffer: 16 MiB (NETVSC_RECEIVE_BUFFER_DEFAULT).
        let size = sub_allocation_size_for(1514);
        assert_eq!(size, 1806);
        let s = ReceiveSections::new(16 << 20, size, u32::MAX).unwrap();
        assert_eq!(s.capacity(), (16 << 20) / 1806);
        let sec = s.section();
        assert_eq!(sec.offset.get(), 0);
        assert_eq!(sec.sub_allocation_size.get(), 1806);
        // Linux: size * count <= buffer.
        assert!(sec.sub_allocation_size.get() as u64 * sec.num_sub_allocations.get() as u64 <= 16 << 20);
        assert_eq!(sec.end_offset.get(), 1806 * s.capacity());
        let capped = ReceiveSections::new(16 << 20, size, 64).unwrap();
        assert_eq!(capped.capacity(), 64);
    }

    #[test]
    fn alloc_free_reuse() {
        let mut s = ReceiveSections::new(4 * 2000, 2000, 100).unwrap();
        assert_eq!(s.capacity(), 4);
        let a: Vec<u32> = (0..4).map(|_| s.alloc().unwrap()).collect();
        assert_eq!(a, [0, 1, 2, 3]);
        assert_eq!(s.alloc(), None);
        assert_eq!(s.in_use(), 4);
        assert_eq!(s.range(2, 100), Some(TransferPageRange::new(4000, 100)));
        assert_eq!(s.range(2, 2001), None);
        assert_eq!(s.range(2, 0), None);
        assert_eq!(s.range(4, 1), None);
        assert_eq!(s.complete(2), Ok(2));
        assert_eq!(s.complete(2), Err(FreeError::NotInUse(2)));
        assert_eq!(s.complete(9), Err(FreeError::OutOfRange(9)));
        assert_eq!(s.complete(u64::MAX), Err(FreeError::OutOfRange(u64::MAX)));
        assert_eq!(s.alloc(), Some(2));
        s.reset();
        assert_eq!(s.available(), 4);
        assert_eq!(s.free(0), Err(FreeError::NotInUse(0)));
    }

    #[test]
    fn refused_layouts() {
        assert_eq!(
            ReceiveSections::new(1 << 20, 67, 10).unwrap_err(),
            LayoutError::SlotTooSmall(67)
        );
        assert!(matches!(
            ReceiveSections::new(100, 1806, 10),
            Err(LayoutError::BufferTooSmall { .. })
        ));
        assert!(ReceiveSections::new(1 << 20, 1806, 0).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_double_allocates(ops in proptest::collection::vec(proptest::prelude::any::<(bool, u8)>(), 0..200)) {
            let mut s = ReceiveSections::new(16 * 100, 100, 16).unwrap();
            let mut held = alloc::collections::BTreeSet::new();
            for (take, i) in ops {
                if take {
                    if let Some(x) = s.alloc() {
                        proptest::prop_assert!(held.insert(x));
                    } else {
                        proptest::prop_assert_eq!(held.len(), 16);
                    }
                } else {
                    let r = s.free(i as u32 % 20);
                    proptest::prop_assert_eq!(r.is_ok(), held.remove(&(i as u32 % 20)));
                }
                proptest::prop_assert_eq!(s.in_use() as usize, held.len());
            }
        }
    }
}
