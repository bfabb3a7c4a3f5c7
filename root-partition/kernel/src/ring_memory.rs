//! The hypervisor-facing half of a VMBus channel in the root: the memory its
//! rings live in. The rings are in the child's memory, which the root lent
//! and so can reach through its identity map; devices (the `vsp` crates)
//! only see it through `vmbus::memory::SharedMemory`, and every index and
//! length the child wrote is checked by `vmbus::ring`.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use vmbus::memory::{OutOfBounds, SharedMemory};
use vmbus::ring::RingError;

/// Root frames backing a run of guest pages, in order: a ring's GPADL
/// pages, or a child's whole RAM (offset = guest-physical address), shared
/// with the worker that owns the frames.
pub struct FrameMemory {
    frames: Rc<[u64]>,
}

impl FrameMemory {
    /// The child's whole RAM, for GPA-direct data a device reads or writes:
    /// `frames[n]` backs guest page `n`.
    pub fn child_ram(frames: Rc<[u64]>) -> Self {
        Self { frames }
    }
}

impl FrameMemory {
    fn span(&self, offset: u64, len: usize) -> Result<(), OutOfBounds> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > self.len()) {
            return Err(OutOfBounds {
                offset,
                len: len as u64,
            });
        }
        Ok(())
    }

    /// Root physical address of byte `offset` (checked by the caller).
    fn phys(&self, offset: u64) -> u64 {
        self.frames[(offset / 4096) as usize] + offset % 4096
    }
}

impl SharedMemory for FrameMemory {
    fn len(&self) -> u64 {
        self.frames.len() as u64 * 4096
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        self.span(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = (4096 - (at % 4096) as usize).min(buf.len() - done);
            // `at..at+n` lies in one frame the root lent to this child (checked
            // above); a racing child only changes bytes that are copied, never trusted.
            // SAFETY: identity-mapped RAM the root owns, in bounds.
            unsafe {
                core::ptr::copy_nonoverlapping(self.phys(at) as *const u8, buf[done..].as_mut_ptr(), n)
            };
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        self.span(offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let n = (4096 - (at % 4096) as usize).min(data.len() - done);
            // SAFETY: as in `read_at`; the frame is the child's ring memory,
            // which the ring protocol gives this side to write.
            unsafe { core::ptr::copy_nonoverlapping(data[done..].as_ptr(), self.phys(at) as *mut u8, n) };
            done += n;
        }
        Ok(())
    }

    fn load_u32(&self, offset: u64) -> Result<u32, OutOfBounds> {
        self.span(offset, 4)?;
        if !offset.is_multiple_of(4) {
            return Err(OutOfBounds { offset, len: 4 });
        }
        // SAFETY: an aligned u32 inside a lent frame (checked above).
        let word = unsafe { &*(self.phys(offset) as *const AtomicU32) };
        Ok(word.load(Ordering::Acquire))
    }

    fn store_u32(&self, offset: u64, value: u32) -> Result<(), OutOfBounds> {
        self.span(offset, 4)?;
        if !offset.is_multiple_of(4) {
            return Err(OutOfBounds { offset, len: 4 });
        }
        // SAFETY: as in `load_u32`.
        let word = unsafe { &*(self.phys(offset) as *const AtomicU32) };
        word.store(value, Ordering::Release);
        Ok(())
    }
}

/// Where a child's RAM lies for the root's devices: `frames[n]` backs guest
/// page `n` (the frames the root lent, identity-mapped, in the IOMMU's map
/// of the root's RAM), so a backend can DMA a read straight into them.
pub struct ChildDma {
    frames: Rc<[u64]>,
}

impl ChildDma {
    /// The child whose pages are `frames`.
    pub fn new(frames: Rc<[u64]>) -> Self {
        Self { frames }
    }
}

impl vsp::GuestDma for ChildDma {
    fn dma_address(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        if len == 0 || end > self.frames.len() as u64 * 4096 {
            return None;
        }
        let first = (gpa / 4096) as usize;
        let last = ((end - 1) / 4096) as usize;
        // One physically contiguous run: storvsp asks once per run of
        // consecutive guest pages (up to an SRB's 256), so this walks each
        // page's frame once, an array compare.
        for page in first..last {
            if self.frames[page + 1] != self.frames[page] + 4096 {
                return None;
            }
        }
        Some(self.frames[first] + gpa % 4096)
    }
}

/// Split a ring GPADL's frames into the channel's two rings: pages
/// `[0, downstream)` carry guest-to-host packets, the rest host-to-guest
/// (Linux `channel.c` `__vmbus_open`). Returns (guest-to-host, host-to-guest).
pub fn ring_pair(mut frames: Vec<u64>, downstream: usize) -> Result<(FrameMemory, FrameMemory), RingError> {
    if downstream == 0 || downstream >= frames.len() {
        return Err(RingError::BadGeometry);
    }
    let down = frames.split_off(downstream);
    Ok((
        FrameMemory {
            frames: frames.into(),
        },
        FrameMemory { frames: down.into() },
    ))
}
