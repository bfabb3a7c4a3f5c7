//! One VP's SynIC (TLFS "Inter-Partition Communication": "SynIC Messages",
//! "SynIC Event Flags", "SynIC MSRs"; Linux `drivers/hv/hv.c`
//! `hv_synic_enable_regs`, `drivers/hv/vmbus_drv.c` `vmbus_signal_eom` for
//! the guest side of the slot protocol).
//!
//! Message delivery follows the TLFS: a message goes into its SINT's slot in
//! the SIM page if the slot is empty (type 0), else it waits in a queue and
//! the slot's MessagePending flag asks the guest to write EOM once it has
//! emptied the slot. Queued messages are moved into free slots (oldest first
//! per SINT) whenever the TLFS says the hypervisor scans its queues: another
//! message is posted, EOM is written, and here also whenever delivery is
//! re-enabled (SCONTROL, SIMP or a SINT written). Every message whose slot
//! becomes free that way is delivered, not just the first one.

use crate::pending::PendingVectors;
use hv1_abi::msr;

/// SINTs per VP.
pub const SINT_COUNT: usize = 16;
/// Messages queued behind busy slots, per VP, shared by its SINTs and kept in
/// arrival order (per SINT, delivery is first in, first out).
///
/// Fairness: the queue has no per-SINT quota, so one SINT's flood may take
/// every entry. It cannot starve another SINT entirely: a post to a SINT
/// whose slot is empty and which has nothing queued goes straight into the
/// slot without needing an entry, so every SINT always has its slot. Only a
/// post that would have to wait (its slot busy) is refused while the queue is
/// full. Refused posts get HV_STATUS_INSUFFICIENT_BUFFERS and are counted in
/// [`SynicVp::refused`]; hv-core's memory never grows.
pub const QUEUE_DEPTH: usize = 8;
/// Size of one message slot (`HV_MESSAGE`, TLFS "SIM Page").
pub const SLOT_SIZE: u64 = 256;
/// Event flags per SINT (`HV_SYNIC_EVENT_FLAGS`, 256 bytes, TLFS "SIEF Page").
pub const FLAGS_PER_SINT: u32 = 2048;

/// SCONTROL/SIMP/SIEFP bit 0.
const ENABLE: u64 = 1;
/// SIMP/SIEFP bits 63:12: the page's GPA. Bits 11:1 are RsvdP.
const PAGE_BASE: u64 = !0xFFF;
/// SINTx bits 7:0.
const SINT_VECTOR: u64 = 0xFF;
/// SINTx bit 16. Reset value of every SINT (TLFS "SINTx Registers").
const SINT_MASKED: u64 = 1 << 16;
/// SINTx bit 17.
const SINT_AUTO_EOI: u64 = 1 << 17;
/// SINTx bit 18: unmasked, but no interrupt is generated (TLFS).
const SINT_POLLING: u64 = 1 << 18;
/// The SINTx bits the TLFS defines; 15:8 and 63:19 are RsvdP.
const SINT_WRITABLE: u64 = SINT_VECTOR | SINT_MASKED | SINT_AUTO_EOI | SINT_POLLING;
/// Lowest vector a SINT may use (TLFS "SINTx Registers": 16-255).
const FIRST_VECTOR: u64 = 16;
/// `HV_MESSAGE_HEADER.MessageFlags` is byte 5 of a slot; bit 0 is
/// MessagePending (Linux `union hv_message_flags`).
const FLAGS_BYTE: usize = 5;
const MESSAGE_PENDING: u8 = 1;

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
    /// A SINT vector below 16 written with the SINT unmasked (or polling).
    BadVector(u64),
    /// SIMP/SIEFP enabled on a page that is not the partition's RAM.
    BadPage(u64),
}

/// Why a post or signal failed (TLFS statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostError {
    /// SCONTROL, SIMP or SIEFP is not enabled, the SINT is masked (signals
    /// only), or the SINT number is above 15 (HV_STATUS_INVALID_SYNIC_STATE).
    InvalidSynicState,
    /// The slot and its queue are full (HV_STATUS_INSUFFICIENT_BUFFERS).
    InsufficientBuffers,
    /// The flag number is beyond the SINT's 2048 (HV_STATUS_INVALID_PARAMETER).
    BadFlag,
    /// The page is not the partition's RAM any more (HV_STATUS_INVALID_SYNIC_STATE).
    Memory,
}

/// What hv-core must do after a post or signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Raise this vector on the VP (None: masked or polling SINT, or nothing
    /// new in the slot / flag already set).
    pub interrupt: Option<u8>,
}

/// A message waiting for its SINT's slot.
#[derive(Debug, Clone, Copy)]
struct Queued {
    sint: u8,
    /// Who posted it (hv-core: the sending partition), for per-sender shares.
    sender: u64,
    message: [u8; 256],
}

/// One VP's SynIC state.
#[derive(Debug, Clone)]
pub struct SynicVp {
    scontrol: u64,
    siefp: u64,
    simp: u64,
    sint: [u64; SINT_COUNT],
    /// Arrival order; occupied entries first, then `None`s.
    queue: [Option<Queued>; QUEUE_DEPTH],
    /// Messages written into a slot (directly or from the queue).
    pub delivered: u64,
    /// Messages that had to wait in the queue.
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
    /// Power-on state (TLFS "SynIC MSRs"): SCONTROL, SIEFP and SIMP 0
    /// (disabled), every SINTx 0x10000 (masked), no message queued.
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

    /// VP reset (INIT/HvCallResetVp-style): every register back to its
    /// power-on value and the queue emptied, as the TLFS requires ("All
    /// message queues of a virtual processor are empty upon creation or
    /// reset"; SCONTROL, SIMP, SIEFP and SINTx "upon processor reset").
    /// Messages still queued are dropped. The statistics
    /// ([`Self::delivered`], [`Self::queued`], [`Self::refused`]) are kept:
    /// they count over the VP's life, for hv-core's diagnostics, not guest
    /// state. The SIM/SIEF pages are the guest's RAM and are not touched
    /// (they are disabled after reset anyway).
    pub fn reset(&mut self) {
        *self = Self {
            delivered: self.delivered,
            queued: self.queued,
            refused: self.refused,
            ..Self::new()
        };
    }

    fn enabled(&self) -> bool {
        self.scontrol & ENABLE != 0
    }

    fn simp_page(&self) -> Option<u64> {
        (self.enabled() && self.simp & ENABLE != 0).then_some(self.simp & PAGE_BASE)
    }

    fn sief_page(&self) -> Option<u64> {
        (self.enabled() && self.siefp & ENABLE != 0).then_some(self.siefp & PAGE_BASE)
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
    /// partition's RAM).
    ///
    /// Returns the vectors to raise on this VP (merge them into its pending
    /// set with [`PendingVectors::merge`]; empty almost always). Writing EOM,
    /// SCONTROL, SIMP or a SINTx scans the queue and moves every queued
    /// message whose slot is free into it (TLFS "EOM Register"; a SIM page
    /// or SINT that comes back must not leave messages stranded), so one
    /// write can raise several SINTs' vectors.
    ///
    /// Reserved bits (TLFS RsvdP: SCONTROL 63:1, SIMP/SIEFP 11:1, SINTx 15:8
    /// and 63:19) are ignored on write and read back as zero, so nothing
    /// here ever interprets them; a guest that preserves what it read writes
    /// zero. EOM is RsvdZ and write-only: any value triggers the scan.
    pub fn write(
        &mut self,
        index: u32,
        value: u64,
        page_ok: impl Fn(u64) -> bool,
        mem: &mut dyn SynicMemory,
    ) -> Result<PendingVectors, MsrError> {
        match index {
            msr::SCONTROL => self.scontrol = value & ENABLE,
            msr::SVERSION => return Err(MsrError::ReadOnly),
            msr::SIEFP | msr::SIMP => {
                let base = value & PAGE_BASE;
                if value & ENABLE != 0 && !page_ok(base) {
                    return Err(MsrError::BadPage(base));
                }
                let new = value & (PAGE_BASE | ENABLE);
                if index == msr::SIMP {
                    self.simp = new;
                } else {
                    // Event flags are never queued: nothing to scan.
                    self.siefp = new;
                    return Ok(PendingVectors::new());
                }
            }
            msr::EOM => {}
            i if (msr::SINT0..msr::SINT0 + SINT_COUNT as u32).contains(&i) => {
                // TLFS: "Valid values for vector are 16-255 inclusive." Like
                // KVM (`synic_set_sint`) a masked SINT may carry any vector:
                // guests write the reset value 0x10000 back.
                let vector = value & SINT_VECTOR;
                if vector < FIRST_VECTOR && value & SINT_MASKED == 0 {
                    return Err(MsrError::BadVector(vector));
                }
                self.sint[(i - msr::SINT0) as usize] = value & SINT_WRITABLE;
            }
            _ => return Err(MsrError::NotSynic),
        }
        Ok(self.deliver_queued(mem))
    }

    /// The vector a delivery on `sint` raises: none while it is masked (TLFS:
    /// "If ... the SINTx is masked, the interrupt is lost") or polling.
    fn interrupt_for(&self, sint: usize) -> Option<u8> {
        let s = self.sint[sint];
        (s & (SINT_MASKED | SINT_POLLING) == 0).then_some((s & SINT_VECTOR) as u8)
    }

    fn slot_gpa(page: u64, sint: usize) -> u64 {
        page + sint as u64 * SLOT_SIZE
    }

    /// Index and copy of the oldest message queued for `sint`.
    fn head_of(&self, sint: usize) -> Option<(usize, [u8; 256])> {
        self.queue.iter().enumerate().find_map(|(at, q)| match q {
            Some(q) if usize::from(q.sint) == sint => Some((at, q.message)),
            _ => None,
        })
    }

    /// Drop entry `at`, closing the gap so the queue stays in arrival order.
    fn remove(&mut self, at: usize) {
        self.queue[at..].rotate_left(1);
        self.queue[QUEUE_DEPTH - 1] = None;
    }

    /// Append to the queue; false if it is full.
    fn push(&mut self, sint: usize, sender: u64, message: &[u8; 256]) -> bool {
        let Some(free) = self.queue.iter_mut().find(|q| q.is_none()) else {
            return false;
        };
        *free = Some(Queued {
            sint: sint as u8,
            sender,
            message: *message,
        });
        self.queued += 1;
        true
    }

    /// Write `message` into `slot` with MessagePending saying whether more
    /// wait behind it. The flag goes in with the message itself, so a guest
    /// that empties the slot always sees it (no window between the two).
    fn fill_slot(
        &mut self,
        slot: u64,
        message: &[u8; 256],
        more: bool,
        mem: &mut dyn SynicMemory,
    ) -> Option<()> {
        let mut m = *message;
        if more {
            m[FLAGS_BYTE] |= MESSAGE_PENDING;
        } else {
            m[FLAGS_BYTE] &= !MESSAGE_PENDING;
        }
        mem.write_slot(slot, &m)?;
        self.delivered += 1;
        Some(())
    }

    /// Post `message` (a full 256-byte `hv_message`) to `sint`.
    ///
    /// TLFS "Messages": into the slot if it is empty, with an interrupt
    /// unless the SINT is masked or polling; else queued, with MessagePending
    /// set in the busy slot so the guest writes EOM. If the slot is empty but
    /// messages for `sint` are already queued, the oldest of them goes into
    /// the slot (with the interrupt) and `message` joins the back of the
    /// queue: per-SINT order is arrival order, and a posted message is never
    /// left waiting behind an empty slot.
    pub fn post(
        &mut self,
        sint: usize,
        message: &[u8; 256],
        mem: &mut dyn SynicMemory,
    ) -> Result<Delivery, PostError> {
        self.post_from(sint, message, 0, QUEUE_DEPTH, mem)
    }

    /// [`Self::post`] for a VP shared by several senders (the root's, which
    /// every child posts to): `sender` may hold at most `sender_limit` of the
    /// queue's entries, so one flooding sender leaves room for the others
    /// (its excess gets INSUFFICIENT_BUFFERS and is retried by the sender, as
    /// Linux's `vmbus_post_msg` does).
    pub fn post_from(
        &mut self,
        sint: usize,
        message: &[u8; 256],
        sender: u64,
        sender_limit: usize,
        mem: &mut dyn SynicMemory,
    ) -> Result<Delivery, PostError> {
        if sint >= SINT_COUNT {
            return Err(PostError::InvalidSynicState);
        }
        let page = self.simp_page().ok_or(PostError::InvalidSynicState)?;
        let slot = Self::slot_gpa(page, sint);
        let busy = mem.slot_type(slot).ok_or(PostError::Memory)? != 0;
        let held = self.queue.iter().flatten().filter(|q| q.sender == sender).count();
        if !busy {
            if let Some((at, head)) = self.head_of(sint) {
                // `message` will wait behind `head`, which leaves the queue.
                let head_is_senders = self.queue[at].as_ref().is_some_and(|q| q.sender == sender);
                if held - usize::from(head_is_senders) >= sender_limit {
                    self.refused += 1;
                    return Err(PostError::InsufficientBuffers);
                }
                self.fill_slot(slot, &head, true, mem).ok_or(PostError::Memory)?;
                self.remove(at);
                let queued = self.push(sint, sender, message);
                debug_assert!(queued, "an entry was just freed");
            } else {
                self.fill_slot(slot, message, false, mem)
                    .ok_or(PostError::Memory)?;
            }
            return Ok(Delivery {
                interrupt: self.interrupt_for(sint),
            });
        }
        if self.queue[QUEUE_DEPTH - 1].is_some() || held >= sender_limit {
            self.refused += 1;
            return Err(PostError::InsufficientBuffers);
        }
        // Ask the guest to write EOM when it frees the slot. Done before
        // queuing so a failure leaves nothing behind the caller's back.
        mem.set_message_pending(slot).ok_or(PostError::Memory)?;
        let queued = self.push(sint, sender, message);
        debug_assert!(queued, "checked for room above");
        Ok(Delivery { interrupt: None })
    }

    /// Scan the queue (TLFS "EOM Register"): for every SINT with messages
    /// queued, move the oldest into its slot if the slot is empty (setting
    /// MessagePending if more remain), or make sure the busy slot has
    /// MessagePending set. Returns the vectors to raise (masked and polling
    /// SINTs raise none; the TLFS allows EOM to drain a masked SINT).
    ///
    /// [`Self::write`] calls this for EOM, SCONTROL, SIMP and SINTx writes.
    /// hv-core may also call it when the guest writes the APIC EOI register,
    /// the third event the TLFS names as triggering a scan. With nothing
    /// queued it returns at once without touching guest memory.
    pub fn deliver_queued(&mut self, mem: &mut dyn SynicMemory) -> PendingVectors {
        let mut raise = PendingVectors::new();
        // Occupied entries come first: an empty first entry means empty.
        if self.queue[0].is_none() {
            return raise;
        }
        let Some(page) = self.simp_page() else {
            return raise;
        };
        for sint in 0..SINT_COUNT {
            let Some((at, head)) = self.head_of(sint) else {
                continue;
            };
            let slot = Self::slot_gpa(page, sint);
            match mem.slot_type(slot) {
                Some(0) => {}
                Some(_) => {
                    let _ = mem.set_message_pending(slot);
                    continue;
                }
                None => continue,
            }
            let more = self.queued_on(sint) > 1;
            if self.fill_slot(slot, &head, more, mem).is_none() {
                continue;
            }
            self.remove(at);
            if let Some(vector) = self.interrupt_for(sint) {
                raise.set(vector);
            }
        }
        raise
    }

    /// Messages waiting behind `sint`'s slot.
    pub fn queued_on(&self, sint: usize) -> usize {
        self.queue
            .iter()
            .flatten()
            .filter(|q| usize::from(q.sint) == sint)
            .count()
    }

    /// Messages waiting in the queue, all SINTs (at most [`QUEUE_DEPTH`]).
    pub fn queue_len(&self) -> usize {
        self.queue.iter().flatten().count()
    }

    /// Set event flag `flag` of `sint` (TLFS "Event Flag Delivery").
    ///
    /// The interrupt is raised only if the flag was clear. A masked SINT is
    /// refused with [`PostError::InvalidSynicState`] and its flag is left
    /// alone (TLFS: "If the SINTx is masked, HvSignalEvent returns
    /// HV_STATUS_INVALID_SYNIC_STATE"; OpenVMM `hv1_emulator` synic.rs
    /// `signal_event` likewise sets nothing). A polling SINT counts as
    /// unmasked: the flag is set, no interrupt is raised.
    pub fn signal(
        &mut self,
        sint: usize,
        flag: u32,
        mem: &mut dyn SynicMemory,
    ) -> Result<Delivery, PostError> {
        if flag >= FLAGS_PER_SINT {
            return Err(PostError::BadFlag);
        }
        if sint >= SINT_COUNT {
            return Err(PostError::InvalidSynicState);
        }
        let page = self.sief_page().ok_or(PostError::InvalidSynicState)?;
        if self.sint[sint] & SINT_MASKED != 0 {
            return Err(PostError::InvalidSynicState);
        }
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
    use std::cell::Cell;
    use std::collections::HashMap;

    /// Guest memory as a sparse byte map, counting every access.
    #[derive(Default)]
    struct Mem {
        bytes: HashMap<u64, u8>,
        accesses: Cell<u64>,
    }

    impl Mem {
        fn touch(&self) {
            self.accesses.set(self.accesses.get() + 1);
        }
        fn byte(&self, gpa: u64) -> u8 {
            *self.bytes.get(&gpa).unwrap_or(&0)
        }
        /// The guest takes the message in `slot`: type back to 0 (Linux
        /// `vmbus_signal_eom`), and returns whether MessagePending was set.
        fn consume(&mut self, slot: u64) -> bool {
            for i in 0..4 {
                self.bytes.insert(slot + i, 0);
            }
            self.byte(slot + 5) & 1 != 0
        }
    }

    impl SynicMemory for Mem {
        fn slot_type(&self, gpa: u64) -> Option<u32> {
            self.touch();
            Some(u32::from_le_bytes(std::array::from_fn(|i| {
                self.byte(gpa + i as u64)
            })))
        }
        fn write_slot(&mut self, gpa: u64, m: &[u8; 256]) -> Option<()> {
            self.touch();
            for (i, b) in m.iter().enumerate() {
                self.bytes.insert(gpa + i as u64, *b);
            }
            Some(())
        }
        fn set_message_pending(&mut self, gpa: u64) -> Option<()> {
            self.touch();
            *self.bytes.entry(gpa + 5).or_default() |= 1;
            Some(())
        }
        fn test_and_set_bit(&mut self, gpa: u64, bit: u8) -> Option<bool> {
            self.touch();
            let b = self.bytes.entry(gpa).or_default();
            let was = *b & (1 << bit) != 0;
            *b |= 1 << bit;
            Some(!was)
        }
    }

    const SIMP: u64 = 0x5000;
    const SIEF: u64 = 0x6000;
    const SLOT2: u64 = SIMP + 2 * SLOT_SIZE;
    const SLOT3: u64 = SIMP + 3 * SLOT_SIZE;

    fn msg(t: u32, tag: u8) -> [u8; 256] {
        let mut m = [tag; 256];
        m[..4].copy_from_slice(&t.to_le_bytes());
        m[5] = 0;
        m
    }

    /// The tag of the message in `slot` (payload byte).
    fn tag(mem: &Mem, slot: u64) -> u8 {
        mem.byte(slot + 16)
    }

    fn irq(v: u8) -> Result<Delivery, PostError> {
        Ok(Delivery { interrupt: Some(v) })
    }

    const NO_IRQ: Result<Delivery, PostError> = Ok(Delivery { interrupt: None });

    fn vectors(vs: &[u8]) -> Result<PendingVectors, MsrError> {
        let mut p = PendingVectors::new();
        for v in vs {
            p.set(*v);
        }
        Ok(p)
    }

    fn wr(v: &mut SynicVp, index: u32, value: u64, mem: &mut Mem) -> Result<PendingVectors, MsrError> {
        v.write(index, value, |_| true, mem)
    }

    /// SynIC, SIMP and SIEF enabled; SINT 2 on 0xF3, SINT 3 on 0xE0.
    fn enabled(mem: &mut Mem) -> SynicVp {
        let mut v = SynicVp::new();
        wr(&mut v, msr::SIMP, SIMP | 1, mem).unwrap();
        wr(&mut v, msr::SIEFP, SIEF | 1, mem).unwrap();
        wr(&mut v, msr_index(2), 0xF3, mem).unwrap();
        wr(&mut v, msr_index(3), 0xE0, mem).unwrap();
        wr(&mut v, msr::SCONTROL, 1, mem).unwrap();
        v
    }

    /// SINT 2's slot holds message 0xA0 and `n` more wait in the queue.
    fn busy_with_queue(n: usize, mem: &mut Mem) -> SynicVp {
        let mut v = enabled(mem);
        assert_eq!(v.post(2, &msg(1, 0xA0), mem), irq(0xF3));
        for i in 0..n {
            assert_eq!(v.post(2, &msg(1, 0xA1 + i as u8), mem), NO_IRQ);
        }
        assert_eq!(v.queued_on(2), n);
        v
    }

    fn assert_power_on(v: &SynicVp) {
        assert_eq!(v.read(msr::SCONTROL), Ok(0));
        assert_eq!(v.read(msr::SIMP), Ok(0));
        assert_eq!(v.read(msr::SIEFP), Ok(0));
        assert_eq!(v.read(msr::SVERSION), Ok(1));
        assert_eq!(v.read(msr::EOM), Ok(0));
        for sint in 0..SINT_COUNT {
            assert_eq!(v.read(msr_index(sint)), Ok(0x10000), "SINT{sint} resets masked");
        }
        assert_eq!(v.queue_len(), 0);
    }

    #[test]
    fn registers_reset_and_validation() {
        let mut mem = Mem::default();
        let mut v = SynicVp::new();
        assert_power_on(&v);
        assert_eq!(wr(&mut v, msr::SVERSION, 2, &mut mem), Err(MsrError::ReadOnly));
        assert_eq!(
            wr(&mut v, msr_index(2), 0x0F, &mut mem),
            Err(MsrError::BadVector(0x0F))
        );
        assert_eq!(
            v.write(msr::SIMP, 0x7000 | 1, |_| false, &mut mem),
            Err(MsrError::BadPage(0x7000))
        );
        assert_eq!(
            v.write(msr::SIEFP, 0x7000 | 1, |_| false, &mut mem),
            Err(MsrError::BadPage(0x7000))
        );
        // Disabled, the page is not checked.
        assert_eq!(v.write(msr::SIMP, 0x7000, |_| false, &mut mem), vectors(&[]));
        assert_eq!(v.read(0x4000_00A0), Err(MsrError::NotSynic));
        assert_eq!(wr(&mut v, 0x4000_00A0, 0, &mut mem), Err(MsrError::NotSynic));
    }

    /// Item 3: vectors 0–15 are refused (#GP) whenever the SINT would be
    /// live (unmasked, polling included); a masked SINT takes any vector (the
    /// reset value 0x10000 is written back by guests). A refused write
    /// changes nothing.
    #[test]
    fn sint_vector_below_16_is_refused_unless_masked() {
        let mut mem = Mem::default();
        let mut v = SynicVp::new();
        wr(&mut v, msr_index(4), 0x20, &mut mem).unwrap();
        for vector in 0..16u64 {
            for extra in [0, SINT_AUTO_EOI, SINT_POLLING] {
                assert_eq!(
                    wr(&mut v, msr_index(4), vector | extra, &mut mem),
                    Err(MsrError::BadVector(vector))
                );
                assert_eq!(v.read(msr_index(4)), Ok(0x20), "refused write kept out");
            }
            assert_eq!(
                wr(&mut v, msr_index(5), vector | SINT_MASKED, &mut mem),
                vectors(&[])
            );
            assert_eq!(v.read(msr_index(5)), Ok(vector | SINT_MASKED));
        }
        for vector in [16u64, 0x80, 0xFF] {
            assert_eq!(wr(&mut v, msr_index(4), vector, &mut mem), vectors(&[]));
            assert_eq!(v.read(msr_index(4)), Ok(vector));
        }
    }

    /// Item 3: RsvdP bits are ignored and read back as zero, so a guest
    /// cannot smuggle state the code would later misread (a vector, the
    /// mask, an enable bit, a page offset).
    #[test]
    fn reserved_bits_are_ignored_and_read_as_zero() {
        let mut mem = Mem::default();
        let mut v = SynicVp::new();
        // SCONTROL: all of 63:1 set, Enable clear: still disabled.
        assert_eq!(wr(&mut v, msr::SCONTROL, !1, &mut mem), vectors(&[]));
        assert_eq!(v.read(msr::SCONTROL), Ok(0));
        // SIMP/SIEFP: 11:1 set, Enable clear: still disabled, base kept.
        wr(&mut v, msr::SIMP, SIMP | 0xFFE, &mut mem).unwrap();
        wr(&mut v, msr::SIEFP, SIEF | 0xFFE, &mut mem).unwrap();
        assert_eq!(v.read(msr::SIMP), Ok(SIMP));
        assert_eq!(v.read(msr::SIEFP), Ok(SIEF));
        wr(&mut v, msr::SCONTROL, 1 | !1, &mut mem).unwrap();
        assert_eq!(v.read(msr::SCONTROL), Ok(1));
        assert_eq!(v.post(2, &msg(1, 1), &mut mem), Err(PostError::InvalidSynicState));
        // Enabled with reserved bits: the slot is at the page base, not at
        // base + 0xFFE.
        wr(&mut v, msr::SIMP, SIMP | 0xFFF, &mut mem).unwrap();
        wr(&mut v, msr::SIEFP, SIEF | 0xFFF, &mut mem).unwrap();
        assert_eq!(v.read(msr::SIMP), Ok(SIMP | 1));
        assert_eq!(v.read(msr::SIEFP), Ok(SIEF | 1));
        // SINTx: 15:8 and 63:19 set around vector 0x40, unmasked.
        let reserved = 0xFF00 | !0x7_FFFF;
        wr(&mut v, msr_index(2), reserved | 0x40, &mut mem).unwrap();
        assert_eq!(v.read(msr_index(2)), Ok(0x40));
        assert_eq!(v.post(2, &msg(1, 0x11), &mut mem), irq(0x40));
        assert_eq!(tag(&mem, SLOT2), 0x11);
        assert_eq!(v.signal(2, 0, &mut mem), irq(0x40));
        assert_eq!(mem.byte(SIEF + 2 * 256), 1);
        // Reserved bits next to the mask do not mask or unmask.
        wr(&mut v, msr_index(2), reserved | SINT_MASKED | 0x40, &mut mem).unwrap();
        assert_eq!(v.read(msr_index(2)), Ok(SINT_MASKED | 0x40));
    }

    #[test]
    fn post_needs_an_enabled_synic() {
        let mut mem = Mem::default();
        let mut v = SynicVp::new();
        assert_eq!(v.post(2, &msg(1, 1), &mut mem), Err(PostError::InvalidSynicState));
        assert_eq!(v.signal(2, 3, &mut mem), Err(PostError::InvalidSynicState));
        let mut v = enabled(&mut mem);
        assert_eq!(
            v.post(16, &msg(1, 1), &mut mem),
            Err(PostError::InvalidSynicState)
        );
        assert_eq!(v.signal(16, 3, &mut mem), Err(PostError::InvalidSynicState));
    }

    #[test]
    fn slot_queue_pending_and_eom() {
        let mut mem = Mem::default();
        let mut v = enabled(&mut mem);
        assert_eq!(v.post(2, &msg(1, 0xA1), &mut mem), irq(0xF3));
        assert_eq!(mem.slot_type(SLOT2), Some(1));
        assert_eq!(mem.byte(SLOT2 + 5) & 1, 0, "nothing queued: no pending");
        // Slot busy: queued, MessagePending set, no interrupt.
        assert_eq!(v.post(2, &msg(1, 0xA2), &mut mem), NO_IRQ);
        assert_eq!(mem.byte(SLOT2 + 5) & 1, 1);
        for i in 0..QUEUE_DEPTH - 1 {
            v.post(2, &msg(1, 0xB0 + i as u8), &mut mem).unwrap();
        }
        assert_eq!(
            v.post(2, &msg(1, 0xFF), &mut mem),
            Err(PostError::InsufficientBuffers)
        );
        assert_eq!(v.queued_on(2), QUEUE_DEPTH);
        // EOM with the slot still busy delivers nothing.
        assert_eq!(wr(&mut v, msr::EOM, 0, &mut mem), vectors(&[]));
        // The guest consumes: type back to 0, then EOM delivers the next one.
        assert!(mem.consume(SLOT2));
        assert_eq!(wr(&mut v, msr::EOM, 0, &mut mem), vectors(&[0xF3]));
        assert_eq!(tag(&mem, SLOT2), 0xA2, "FIFO order");
        assert_eq!(mem.byte(SLOT2 + 5) & 1, 1, "more are queued: pending set again");
        assert_eq!(v.queued_on(2), QUEUE_DEPTH - 1);
        assert_eq!((v.delivered, v.queued, v.refused), (2, QUEUE_DEPTH as u64, 1));
        // Draining the rest: the last one arrives without MessagePending.
        let mut tags = std::vec::Vec::new();
        while mem.consume(SLOT2) {
            assert_eq!(wr(&mut v, msr::EOM, 0, &mut mem), vectors(&[0xF3]));
            tags.push(tag(&mem, SLOT2));
        }
        let expected: std::vec::Vec<u8> = (0..QUEUE_DEPTH as u8 - 1).map(|i| 0xB0 + i).collect();
        assert_eq!(tags, expected);
        assert_eq!(v.queue_len(), 0);
    }

    /// Defect 1: a post that finds its slot free while older messages for
    /// that SINT are queued delivers the oldest (with the interrupt and
    /// MessagePending) and queues the new one behind the rest. Before the
    /// fix it was queued silently and nothing arrived until an EOM that the
    /// guest (seeing no MessagePending) would never write.
    #[test]
    fn post_to_a_free_slot_delivers_the_queue_head_first() {
        let mut mem = Mem::default();
        let mut v = busy_with_queue(2, &mut mem); // slot A0, queue A1 A2
        // The guest empties the slot but writes no EOM (say it polled and
        // raced the MessagePending update).
        mem.consume(SLOT2);
        mem.bytes.insert(SLOT2 + 5, 0);
        assert_eq!(v.post(2, &msg(1, 0xA3), &mut mem), irq(0xF3));
        assert_eq!(tag(&mem, SLOT2), 0xA1, "oldest first");
        assert_eq!(mem.byte(SLOT2 + 5) & 1, 1, "more queued: MessagePending");
        assert_eq!(v.queued_on(2), 2);
        // The guest follows the protocol from here: everything in order.
        let mut tags = std::vec::Vec::new();
        while mem.consume(SLOT2) {
            assert_eq!(wr(&mut v, msr::EOM, 0, &mut mem), vectors(&[0xF3]));
            tags.push(tag(&mem, SLOT2));
        }
        assert_eq!(tags, [0xA2, 0xA3]);
        assert_eq!(v.queue_len(), 0);
    }

    /// Defect 1 with a full queue: the free slot takes the head, so the new
    /// post fits instead of being refused.
    #[test]
    fn post_to_a_free_slot_with_a_full_queue_is_accepted() {
        let mut mem = Mem::default();
        let mut v = busy_with_queue(QUEUE_DEPTH, &mut mem);
        mem.consume(SLOT2);
        assert_eq!(v.post(2, &msg(1, 0xEE), &mut mem), irq(0xF3));
        assert_eq!(tag(&mem, SLOT2), 0xA1);
        assert_eq!(v.queued_on(2), QUEUE_DEPTH);
        assert_eq!(v.refused, 0);
    }

    /// Defect 1 (re-delivery): messages queued while the SIM page was off
    /// are delivered when it comes back, and the caller learns the vector.
    #[test]
    fn enabling_simp_delivers_queued_messages() {
        let mut mem = Mem::default();
        let mut v = busy_with_queue(1, &mut mem);
        wr(&mut v, msr::SIMP, SIMP, &mut mem).unwrap();
        mem.consume(SLOT2);
        // EOM with the page off: nowhere to deliver.
        assert_eq!(wr(&mut v, msr::EOM, 0, &mut mem), vectors(&[]));
        assert_eq!(
            v.post(2, &msg(1, 0xCC), &mut mem),
            Err(PostError::InvalidSynicState)
        );
        assert_eq!(wr(&mut v, msr::SIMP, SIMP | 1, &mut mem), vectors(&[0xF3]));
        assert_eq!(tag(&mem, SLOT2), 0xA1);
        assert_eq!(mem.byte(SLOT2 + 5) & 1, 0, "nothing more queued");
        assert_eq!(v.queue_len(), 0);
    }

    /// Defect 1 (re-delivery) through SCONTROL, for two SINTs at once: one
    /// write reports both vectors.
    #[test]
    fn enabling_scontrol_delivers_queued_messages_on_every_sint() {
        let mut mem = Mem::default();
        let mut v = busy_with_queue(1, &mut mem);
        assert_eq!(v.post(3, &msg(1, 0xB0), &mut mem), irq(0xE0));
        assert_eq!(v.post(3, &msg(1, 0xB1), &mut mem), NO_IRQ);
        wr(&mut v, msr::SCONTROL, 0, &mut mem).unwrap();
        mem.consume(SLOT2);
        mem.consume(SLOT3);
        assert_eq!(wr(&mut v, msr::SCONTROL, 1, &mut mem), vectors(&[0xF3, 0xE0]));
        assert_eq!((tag(&mem, SLOT2), tag(&mem, SLOT3)), (0xA1, 0xB1));
        assert_eq!(v.queue_len(), 0);
    }

    /// Defect 1 (re-delivery): one EOM delivers to every SINT whose slot is
    /// free and reports every vector, not just the first.
    #[test]
    fn eom_reports_every_delivered_sints_vector() {
        let mut mem = Mem::default();
        let mut v = busy_with_queue(1, &mut mem);
        v.post(3, &msg(1, 0xB0), &mut mem).unwrap();
        v.post(3, &msg(1, 0xB1), &mut mem).unwrap();
        mem.consume(SLOT2);
        mem.consume(SLOT3);
        assert_eq!(wr(&mut v, msr::EOM, 0, &mut mem), vectors(&[0xF3, 0xE0]));
        assert_eq!((tag(&mem, SLOT2), tag(&mem, SLOT3)), (0xA1, 0xB1));
    }

    /// Defect 1 (re-delivery): a SINT unmasked with a message queued behind
    /// an emptied slot gets it, with its vector, without waiting for EOM.
    #[test]
    fn unmasking_a_sint_delivers_its_queued_messages() {
        let mut mem = Mem::default();
        let mut v = busy_with_queue(2, &mut mem);
        wr(&mut v, msr_index(2), SINT_MASKED | 0xF3, &mut mem).unwrap();
        mem.consume(SLOT2);
        assert_eq!(wr(&mut v, msr_index(2), 0xF3, &mut mem), vectors(&[0xF3]));
        assert_eq!(tag(&mem, SLOT2), 0xA1);
        assert_eq!(mem.byte(SLOT2 + 5) & 1, 1);
        assert_eq!(v.queued_on(2), 1);
    }

    /// TLFS "EOM Register": EOM also drains a masked SINT's queue, with no
    /// interrupt; a message posted to a masked SINT lands without one.
    #[test]
    fn masked_sint_takes_messages_without_interrupt() {
        let mut mem = Mem::default();
        let mut v = enabled(&mut mem);
        wr(&mut v, msr_index(2), 0xF3 | SINT_MASKED, &mut mem).unwrap();
        assert_eq!(v.post(2, &msg(1, 1), &mut mem), NO_IRQ);
        assert_eq!(mem.slot_type(SLOT2), Some(1));
        assert_eq!(v.post(2, &msg(1, 2), &mut mem), NO_IRQ);
        mem.consume(SLOT2);
        assert_eq!(wr(&mut v, msr::EOM, 0, &mut mem), vectors(&[]));
        assert_eq!(tag(&mem, SLOT2), 2);
        // Polling: delivered, no interrupt either.
        wr(&mut v, msr_index(3), 0xE0 | SINT_POLLING, &mut mem).unwrap();
        assert_eq!(v.post(3, &msg(1, 3), &mut mem), NO_IRQ);
        assert_eq!(tag(&mem, SLOT3), 3);
    }

    #[test]
    fn event_flags_interrupt_only_when_newly_set() {
        let mut mem = Mem::default();
        let mut v = enabled(&mut mem);
        assert_eq!(v.signal(2, 9, &mut mem), irq(0xF3));
        assert_eq!(mem.byte(SIEF + 2 * 256 + 1), 1 << 1);
        assert_eq!(v.signal(2, 9, &mut mem), NO_IRQ);
        assert_eq!(v.signal(2, 2047, &mut mem), irq(0xF3));
        assert_eq!(mem.byte(SIEF + 2 * 256 + 255), 1 << 7);
        assert_eq!(v.signal(2, 2048, &mut mem), Err(PostError::BadFlag));
    }

    /// Defect 2: TLFS "Event Flag Delivery": "If the SINTx is masked,
    /// HvSignalEvent returns HV_STATUS_INVALID_SYNIC_STATE" (OpenVMM drops
    /// it too). The flag must stay clear: setting it would make the guest
    /// see an event it was never interrupted for once it unmasks.
    #[test]
    fn signal_to_a_masked_sint_is_refused_and_sets_no_flag() {
        let mut mem = Mem::default();
        let mut v = enabled(&mut mem);
        wr(&mut v, msr_index(2), SINT_MASKED | 0xF3, &mut mem).unwrap();
        assert_eq!(v.signal(2, 9, &mut mem), Err(PostError::InvalidSynicState));
        assert_eq!(mem.byte(SIEF + 2 * 256 + 1), 0, "flag untouched");
        // SINTs never unmasked (reset value) refuse too.
        assert_eq!(v.signal(7, 0, &mut mem), Err(PostError::InvalidSynicState));
        assert_eq!(mem.byte(SIEF + 7 * 256), 0);
        // Unmasked again: delivered normally.
        wr(&mut v, msr_index(2), 0xF3, &mut mem).unwrap();
        assert_eq!(v.signal(2, 9, &mut mem), irq(0xF3));
        // Polling counts as unmasked: flag set, no interrupt.
        wr(&mut v, msr_index(2), SINT_POLLING | 0xF3, &mut mem).unwrap();
        assert_eq!(v.signal(2, 10, &mut mem), NO_IRQ);
        assert_eq!(mem.byte(SIEF + 2 * 256 + 1), 0b110);
    }

    /// Item 4: reset goes back to the power-on state: registers, an empty
    /// queue, posts and signals refused; statistics are kept.
    #[test]
    fn reset_returns_to_power_on_state() {
        let mut mem = Mem::default();
        let mut v = busy_with_queue(3, &mut mem);
        v.post(2, &msg(1, 0xFF), &mut mem).unwrap();
        let stats = (v.delivered, v.queued, v.refused);
        v.reset();
        assert_power_on(&v);
        assert_eq!((v.delivered, v.queued, v.refused), stats, "statistics kept");
        assert_eq!(v.post(2, &msg(1, 1), &mut mem), Err(PostError::InvalidSynicState));
        assert_eq!(v.signal(2, 1, &mut mem), Err(PostError::InvalidSynicState));
        assert_eq!(v.queued_on(2), 0);
        // Re-enabled after the guest cleared its page: none of the old
        // messages comes back.
        mem.consume(SLOT2);
        let mut v2 = v.clone();
        for (index, value) in [
            (msr::SIMP, SIMP | 1),
            (msr::SIEFP, SIEF | 1),
            (msr_index(2), 0xF3),
            (msr::SCONTROL, 1),
            (msr::EOM, 0),
        ] {
            assert_eq!(wr(&mut v2, index, value, &mut mem), vectors(&[]));
        }
        assert_eq!(mem.slot_type(SLOT2), Some(0));
        assert_eq!(v2.post(2, &msg(1, 0x77), &mut mem), irq(0xF3));
        assert_eq!(tag(&mem, SLOT2), 0x77);
    }

    /// Item 5: a flood is refused beyond the queue's depth and nothing
    /// grows; the flood cannot take another SINT's slot, and that SINT can
    /// queue again as soon as an entry frees.
    #[test]
    fn flood_is_bounded_and_cannot_starve_another_sint() {
        let mut mem = Mem::default();
        let mut v = busy_with_queue(QUEUE_DEPTH, &mut mem);
        for i in 0..1000u32 {
            assert_eq!(
                v.post(2, &msg(1, i as u8), &mut mem),
                Err(PostError::InsufficientBuffers)
            );
            assert_eq!(v.queue_len(), QUEUE_DEPTH);
        }
        assert_eq!(v.refused, 1000);
        assert_eq!(v.queued, QUEUE_DEPTH as u64);
        // SINT 3's empty slot needs no queue entry.
        assert_eq!(v.post(3, &msg(1, 0xB0), &mut mem), irq(0xE0));
        assert_eq!(tag(&mem, SLOT3), 0xB0);
        // Its next message would have to wait: refused while the flood holds
        // the queue.
        assert_eq!(
            v.post(3, &msg(1, 0xB1), &mut mem),
            Err(PostError::InsufficientBuffers)
        );
        // SINT 2's guest takes one message: an entry frees, SINT 3 queues.
        mem.consume(SLOT2);
        assert_eq!(wr(&mut v, msr::EOM, 0, &mut mem), vectors(&[0xF3]));
        assert_eq!(v.post(3, &msg(1, 0xB1), &mut mem), NO_IRQ);
        assert_eq!(v.queued_on(3), 1);
        assert!(mem.consume(SLOT3), "MessagePending set on SINT 3's slot");
        assert_eq!(wr(&mut v, msr::EOM, 0, &mut mem), vectors(&[0xE0]));
        assert_eq!(tag(&mem, SLOT3), 0xB1);
        assert_eq!(core::mem::size_of::<SynicVp>(), core::mem::size_of_val(&v));
    }

    /// A sender may hold only its share of a shared VP's queue: one child
    /// flooding the root's SynIC leaves room for another child's messages.
    #[test]
    fn a_flooding_sender_holds_only_its_share_of_the_queue() {
        let mut mem = Mem::default();
        let mut v = enabled(&mut mem);
        let share = QUEUE_DEPTH / 2;
        // Child 7 fills the slot, then its share of the queue; the rest of
        // its flood is refused although the queue has room.
        assert_eq!(v.post_from(2, &msg(1, 0), 7, share, &mut mem), irq(0xF3));
        for i in 1..=share as u8 {
            assert_eq!(v.post_from(2, &msg(1, i), 7, share, &mut mem), NO_IRQ);
        }
        for i in 0..100u8 {
            assert_eq!(
                v.post_from(2, &msg(1, 0x40 + i), 7, share, &mut mem),
                Err(PostError::InsufficientBuffers)
            );
        }
        assert_eq!(v.queue_len(), share);
        // Child 9 still gets its messages queued.
        for i in 0..share as u8 {
            assert_eq!(v.post_from(2, &msg(1, 0x90 + i), 9, share, &mut mem), NO_IRQ);
        }
        assert_eq!(v.queue_len(), QUEUE_DEPTH);
        // When the guest takes the slot, child 7's next queued message moves
        // in and one of its entries frees: it may queue one more, not two.
        mem.consume(SLOT2);
        assert_eq!(wr(&mut v, msr::EOM, 0, &mut mem), vectors(&[0xF3]));
        assert_eq!(tag(&mem, SLOT2), 1);
        assert_eq!(v.post_from(2, &msg(1, 0x50), 7, share, &mut mem), NO_IRQ);
        assert_eq!(
            v.post_from(2, &msg(1, 0x51), 7, share, &mut mem),
            Err(PostError::InsufficientBuffers)
        );
    }

    /// An EOM storm with nothing queued does nothing: no vector, no state
    /// change and not a single guest-memory access, so each EOM costs O(1).
    #[test]
    fn eom_storm_with_an_empty_queue_does_nothing() {
        let mut mem = Mem::default();
        let mut v = enabled(&mut mem);
        assert_eq!(v.post(2, &msg(1, 0xA0), &mut mem), irq(0xF3));
        let before = (v.delivered, v.queued, v.refused);
        let slot_before: std::vec::Vec<u8> = (0..256).map(|i| mem.byte(SLOT2 + i)).collect();
        mem.accesses.set(0);
        for i in 0..100_000u64 {
            assert_eq!(wr(&mut v, msr::EOM, i, &mut mem), vectors(&[]));
        }
        assert_eq!(mem.accesses.get(), 0, "EOM with an empty queue reads no memory");
        assert_eq!((v.delivered, v.queued, v.refused), before);
        let slot_after: std::vec::Vec<u8> = (0..256).map(|i| mem.byte(SLOT2 + i)).collect();
        assert_eq!(slot_before, slot_after);
        assert_eq!(v.queue_len(), 0);
    }

    /// Posting never loses or reorders a message, whatever the guest does
    /// between posts (consume with or without EOM, toggle SIMP).
    #[test]
    fn per_sint_order_survives_any_interleaving() {
        let mut mem = Mem::default();
        let mut v = enabled(&mut mem);
        let mut seen = std::vec::Vec::new();
        let mut posted = 0u8;
        let take = |mem: &mut Mem, seen: &mut std::vec::Vec<u8>| {
            if mem.slot_type(SLOT2) != Some(0) {
                seen.push(tag(mem, SLOT2));
                mem.consume(SLOT2)
            } else {
                false
            }
        };
        for round in 0..200u32 {
            match round % 5 {
                0 | 1 => {
                    if v.post(2, &msg(1, posted), &mut mem).is_ok() {
                        posted = posted.wrapping_add(1);
                    }
                }
                2 => {
                    if take(&mut mem, &mut seen) {
                        wr(&mut v, msr::EOM, 0, &mut mem).unwrap();
                    }
                }
                3 => {
                    // Consume without EOM.
                    take(&mut mem, &mut seen);
                }
                _ => {
                    wr(&mut v, msr::SIMP, SIMP, &mut mem).unwrap();
                    wr(&mut v, msr::SIMP, SIMP | 1, &mut mem).unwrap();
                }
            }
        }
        while take(&mut mem, &mut seen) || v.queue_len() > 0 {
            wr(&mut v, msr::EOM, 0, &mut mem).unwrap();
        }
        let expected: std::vec::Vec<u8> = (0..posted).collect();
        assert_eq!(seen, expected);
    }
}
