//! One VP's SynIC.

use hv1_abi::msr;

/// SINTs per VP.
pub const SINT_COUNT: usize = 16;
/// Messages queued behind busy slots, per VP (shared by its SINTs, kept in
/// arrival order). A flooding sender gets HV_STATUS_INSUFFICIENT_BUFFERS
/// beyond this; hv-core's memory never grows.
pub const QUEUE_DEPTH: usize = 8;
/// Size of one message slot.
pub const SLOT_SIZE: u64 = 256;
/// Event flags per SINT.
pub const FLAGS_PER_SINT: u32 = 2048;

const ENABLE: u64 = 1;
const SINT_MASKED: u64 = 1 << 16;
const SINT_AUTO_EOI: u64 = 1 << 17;
const SINT_POLLING: u64 = 1 << 18;
const SINT_WRITABLE: u64 = 0xFF | SINT_MASKED | SINT_AUTO_EOI | SINT_POLLING;

/// Access to the partition's memory for the SIMP and SIEF pages.
pub trait SynicMemory {
    /// Read the 4-byte message type at `gpa` (0 = slot free).
    fn slot_type(&self, gpa: u64) -> Option<u32>;
    /// Write a whole 256-byte message at `gpa`.
    fn write_slot(&mut self, gpa: u64, message: &[u8; 256]) -> Option<()>;
    /// Set bit 0 (MessagePending) of the flags byte at `gpa + 5`.
    fn set_message_pending(&mut self, gpa: u64) -> Option<()>;
    /// Atomically set bit `bit` of the byte at `gpa`; true if it was clear.
    fn test_and_set_bit(&mut self, gpa: u64, bit: u8) -> Option<bool>;
}

/// A synthetic MSR index (for matching).
pub fn msr_index(sint: usize) -> u32 {
    msr::SINT0 + sint as u32
}

/// A refused MSR access: the guest gets #GP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrError {
    /// Not a SynIC MSR.
    NotSynic,
    /// Read-only (SVERSION) or write-only (EOM reads 0, not an error).
    ReadOnly,
    /// A SINT vector below 16.
    BadVector(u64),
    /// SIMP/SIEFP enabled on a page that is not the partition's RAM.
    BadPage(u64),
}

/// Why a post or signal failed (TLFS statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostError {
    /// SCONTROL, SIMP or SIEFP is not enabled (HV_STATUS_INVALID_SYNIC_STATE).
    InvalidSynicState,
    /// The slot and its queue are full (HV_STATUS_INSUFFICIENT_BUFFERS).
    InsufficientBuffers,
    /// The flag number is beyond the SINT's 2048 (HV_STATUS_INVALID_PARAMETER).
    BadFlag,
    /// The page is not the partition's RAM any more (HV_STATUS_INVALID_SYNIC_STATE).
    Memory,
}

/// What hv-core must do after a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Raise this vector on the VP (None: masked SINT, or nothing new).
    pub interrupt: Option<u8>,
}

/// A message waiting for its SINT's slot.
#[derive(Debug, Clone, Copy)]
struct Queued {
    sint: u8,
    message: [u8; 256],
}

/// One VP's SynIC state.
#[derive(Debug, Clone)]
pub struct SynicVp {
    scontrol: u64,
    siefp: u64,
    simp: u64,
    sint: [u64; SINT_COUNT],
    queue: [Option<Queued>; QUEUE_DEPTH],
    /// Messages delivered, queued, refused (for statistics).
    pub delivered: u64,
    /// Messages that had to wait in a queue.
    pub queued: u64,
    /// Posts refused for lack of buffers.
    pub refused: u64,
}

impl Default for SynicVp {
    fn default() -> Self {
        Self::new()
    }
}

impl SynicVp {
    /// Reset state: everything disabled, every SINT masked (TLFS: reset value
    /// of SINTx is 0x10000).
    pub const fn new() -> Self {
        Self {
            scontrol: 0,
            siefp: 0,
            simp: 0,
            sint: [SINT_MASKED; SINT_COUNT],
            queue: [None; QUEUE_DEPTH],
            delivered: 0,
            queued: 0,
            refused: 0,
        }
    }

    fn enabled(&self) -> bool {
        self.scontrol & ENABLE != 0
    }

    fn simp_page(&self) -> Option<u64> {
        (self.enabled() && self.simp & ENABLE != 0).then_some(self.simp & !0xFFF)
    }

    fn sief_page(&self) -> Option<u64> {
        (self.enabled() && self.siefp & ENABLE != 0).then_some(self.siefp & !0xFFF)
    }

    /// RDMSR.
    pub fn read(&self, index: u32) -> Result<u64, MsrError> {
        match index {
            msr::SCONTROL => Ok(self.scontrol),
            msr::SVERSION => Ok(1),
            msr::SIEFP => Ok(self.siefp),
            msr::SIMP => Ok(self.simp),
            msr::EOM => Ok(0),
            i if (msr::SINT0..msr::SINT0 + SINT_COUNT as u32).contains(&i) => {
                Ok(self.sint[(i - msr::SINT0) as usize])
            }
            _ => Err(MsrError::NotSynic),
        }
    }

    /// WRMSR. `page_ok(gpa)` says whether a page may back SIMP/SIEF (the
    /// partition's RAM); writing EOM re-delivers queued messages through `mem`.
    pub fn write(
        &mut self,
        index: u32,
        value: u64,
        page_ok: impl Fn(u64) -> bool,
        mem: &mut dyn SynicMemory,
    ) -> Result<Option<u8>, MsrError> {
        match index {
            msr::SCONTROL => self.scontrol = value & ENABLE,
            msr::SVERSION => return Err(MsrError::ReadOnly),
            msr::SIEFP | msr::SIMP => {
                if value & ENABLE != 0 && !page_ok(value & !0xFFF) {
                    return Err(MsrError::BadPage(value & !0xFFF));
                }
                // Bits 11:1 are RsvdP: keep what was there.
                let old = if index == msr::SIMP { self.simp } else { self.siefp };
                let new = (value & !0xFFE) | (old & 0xFFE);
                if index == msr::SIMP {
                    self.simp = new
                } else {
                    self.siefp = new
                }
            }
            msr::EOM => return Ok(self.redeliver(mem)),
            i if (msr::SINT0..msr::SINT0 + SINT_COUNT as u32).contains(&i) => {
                let vector = value & 0xFF;
                if vector < 16 && value & SINT_MASKED == 0 {
                    return Err(MsrError::BadVector(vector));
                }
                let s = &mut self.sint[(i - msr::SINT0) as usize];
                *s = (value & SINT_WRITABLE) | (*s & !SINT_WRITABLE);
            }
            _ => return Err(MsrError::NotSynic),
        }
        Ok(None)
    }

    fn interrupt_for(&self, sint: usize) -> Option<u8> {
        let s = self.sint[sint];
        (s & (SINT_MASKED | SINT_POLLING) == 0).then_some(s as u8)
    }

    /// Post `message` (a full 256-byte `hv_message`) to `sint`.
    pub fn post(
        &mut self,
        sint: usize,
        message: &[u8; 256],
        mem: &mut dyn SynicMemory,
    ) -> Result<Delivery, PostError> {
        let page = self.simp_page().ok_or(PostError::InvalidSynicState)?;
        let slot = page + sint as u64 * SLOT_SIZE;
        let busy = mem.slot_type(slot).ok_or(PostError::Memory)? != 0;
        if !busy && self.queued_on(sint) == 0 {
            mem.write_slot(slot, message).ok_or(PostError::Memory)?;
            self.delivered += 1;
            return Ok(Delivery {
                interrupt: self.interrupt_for(sint),
            });
        }
        let free = self.queue.iter_mut().find(|q| q.is_none());
        let Some(free) = free else {
            self.refused += 1;
            return Err(PostError::InsufficientBuffers);
        };
        *free = Some(Queued {
            sint: sint as u8,
            message: *message,
        });
        self.queued += 1;
        if busy {
            // Ask the guest to write EOM when it frees the slot.
            mem.set_message_pending(slot).ok_or(PostError::Memory)?;
        }
        Ok(Delivery { interrupt: None })
    }

    /// EOM: move queued messages into free slots, oldest first.
    fn redeliver(&mut self, mem: &mut dyn SynicMemory) -> Option<u8> {
        let page = self.simp_page()?;
        let mut interrupt = None;
        for sint in 0..SINT_COUNT {
            let Some(at) = self
                .queue
                .iter()
                .position(|q| matches!(q, Some(q) if usize::from(q.sint) == sint))
            else {
                continue;
            };
            let Some(next) = self.queue[at] else { continue };
            let slot = page + sint as u64 * SLOT_SIZE;
            if mem.slot_type(slot) != Some(0) || mem.write_slot(slot, &next.message).is_none() {
                continue;
            }
            // Close the gap so the queue stays in arrival order.
            self.queue[at..].rotate_left(1);
            self.queue[QUEUE_DEPTH - 1] = None;
            self.delivered += 1;
            if self.queued_on(sint) > 0 {
                let _ = mem.set_message_pending(slot);
            }
            interrupt = interrupt.or(self.interrupt_for(sint));
        }
        interrupt
    }

    /// Messages waiting behind `sint`'s slot.
    pub fn queued_on(&self, sint: usize) -> usize {
        self.queue
            .iter()
            .flatten()
            .filter(|q| usize::from(q.sint) == sint)
            .count()
    }

    /// Set event flag `flag` of `sint`.
    pub fn signal(
        &mut self,
        sint: usize,
        flag: u32,
        mem: &mut dyn SynicMemory,
    ) -> Result<Delivery, PostError> {
        if flag >= FLAGS_PER_SINT {
            return Err(PostError::BadFlag);
        }
        let page = self.sief_page().ok_or(PostError::InvalidSynicState)?;
        let byte = page + sint as u64 * (FLAGS_PER_SINT as u64 / 8) + (flag / 8) as u64;
        let newly = mem
            .test_and_set_bit(byte, (flag % 8) as u8)
            .ok_or(PostError::Memory)?;
        Ok(Delivery {
            interrupt: if newly { self.interrupt_for(sint) } else { None },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Mem {
        bytes: HashMap<u64, u8>,
    }

    impl SynicMemory for Mem {
        fn slot_type(&self, gpa: u64) -> Option<u32> {
            Some(u32::from_le_bytes(std::array::from_fn(|i| {
                *self.bytes.get(&(gpa + i as u64)).unwrap_or(&0)
            })))
        }
        fn write_slot(&mut self, gpa: u64, m: &[u8; 256]) -> Option<()> {
            for (i, b) in m.iter().enumerate() {
                self.bytes.insert(gpa + i as u64, *b);
            }
            Some(())
        }
        fn set_message_pending(&mut self, gpa: u64) -> Option<()> {
            *self.bytes.entry(gpa + 5).or_default() |= 1;
            Some(())
        }
        fn test_and_set_bit(&mut self, gpa: u64, bit: u8) -> Option<bool> {
            let b = self.bytes.entry(gpa).or_default();
            let was = *b & (1 << bit) != 0;
            *b |= 1 << bit;
            Some(!was)
        }
    }

    fn msg(t: u32, tag: u8) -> [u8; 256] {
        let mut m = [tag; 256];
        m[..4].copy_from_slice(&t.to_le_bytes());
        m[5] = 0;
        m
    }

    fn enabled(mem: &mut Mem) -> SynicVp {
        let mut v = SynicVp::new();
        v.write(msr::SIMP, 0x5000 | 1, |_| true, mem).unwrap();
        v.write(msr::SIEFP, 0x6000 | 1, |_| true, mem).unwrap();
        v.write(msr_index(2), 0xF3, |_| true, mem).unwrap();
        v.write(msr::SCONTROL, 1, |_| true, mem).unwrap();
        v
    }

    #[test]
    fn registers_reset_and_validation() {
        let mut mem = Mem::default();
        let mut v = SynicVp::new();
        assert_eq!(v.read(msr::SVERSION), Ok(1));
        assert_eq!(v.read(msr_index(5)), Ok(0x10000), "SINTs reset masked");
        assert_eq!(
            v.write(msr::SVERSION, 2, |_| true, &mut mem),
            Err(MsrError::ReadOnly)
        );
        assert_eq!(
            v.write(msr_index(2), 0x0F, |_| true, &mut mem),
            Err(MsrError::BadVector(0x0F))
        );
        assert_eq!(
            v.write(msr::SIMP, 0x7000 | 1, |_| false, &mut mem),
            Err(MsrError::BadPage(0x7000))
        );
        assert_eq!(v.read(msr::EOM), Ok(0));
        assert_eq!(v.read(0x4000_00A0), Err(MsrError::NotSynic));
    }

    #[test]
    fn post_needs_an_enabled_synic() {
        let mut mem = Mem::default();
        let mut v = SynicVp::new();
        assert_eq!(v.post(2, &msg(1, 1), &mut mem), Err(PostError::InvalidSynicState));
        assert_eq!(v.signal(2, 3, &mut mem), Err(PostError::InvalidSynicState));
    }

    #[test]
    fn slot_queue_pending_and_eom() {
        let mut mem = Mem::default();
        let mut v = enabled(&mut mem);
        let slot = 0x5000 + 2 * 256;
        assert_eq!(
            v.post(2, &msg(1, 0xA1), &mut mem),
            Ok(Delivery {
                interrupt: Some(0xF3)
            })
        );
        assert_eq!(mem.slot_type(slot), Some(1));
        // Slot busy: queued, MessagePending set, no interrupt.
        assert_eq!(
            v.post(2, &msg(1, 0xA2), &mut mem),
            Ok(Delivery { interrupt: None })
        );
        assert_eq!(mem.bytes[&(slot + 5)] & 1, 1);
        for i in 0..QUEUE_DEPTH - 1 {
            v.post(2, &msg(1, 0xB0 + i as u8), &mut mem).unwrap();
        }
        assert_eq!(
            v.post(2, &msg(1, 0xFF), &mut mem),
            Err(PostError::InsufficientBuffers)
        );
        assert_eq!(v.queued_on(2), QUEUE_DEPTH);
        // EOM with the slot still busy does nothing.
        assert_eq!(v.write(msr::EOM, 0, |_| true, &mut mem), Ok(None));
        // The guest consumes: type back to 0, then EOM delivers the next one.
        mem.bytes.insert(slot, 0);
        assert_eq!(v.write(msr::EOM, 0, |_| true, &mut mem), Ok(Some(0xF3)));
        assert_eq!(mem.bytes[&(slot + 8)], 0xA2, "FIFO order");
        assert_eq!(
            mem.bytes[&(slot + 5)] & 1,
            1,
            "more are queued: pending set again"
        );
        assert_eq!(v.queued_on(2), QUEUE_DEPTH - 1);
        assert_eq!((v.delivered, v.refused), (2, 1));
    }

    #[test]
    fn masked_sint_keeps_the_message_without_interrupt() {
        let mut mem = Mem::default();
        let mut v = enabled(&mut mem);
        v.write(msr_index(2), 0xF3 | SINT_MASKED, |_| true, &mut mem)
            .unwrap();
        assert_eq!(v.post(2, &msg(1, 1), &mut mem), Ok(Delivery { interrupt: None }));
        assert_eq!(mem.slot_type(0x5000 + 512), Some(1));
    }

    #[test]
    fn event_flags_interrupt_only_when_newly_set() {
        let mut mem = Mem::default();
        let mut v = enabled(&mut mem);
        assert_eq!(
            v.signal(2, 9, &mut mem),
            Ok(Delivery {
                interrupt: Some(0xF3)
            })
        );
        assert_eq!(mem.bytes[&(0x6000 + 2 * 256 + 1)], 1 << 1);
        assert_eq!(v.signal(2, 9, &mut mem), Ok(Delivery { interrupt: None }));
        assert_eq!(v.signal(2, 2048, &mut mem), Err(PostError::BadFlag));
    }
}
