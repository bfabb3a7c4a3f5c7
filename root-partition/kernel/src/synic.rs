//! The root's own SynIC (TLFS "Synthetic Interrupt Controller"): a message
//! page and an event-flag page, SINT 2 (the SINT VMBus uses,
//! `VMBUS_MESSAGE_SINT` in Linux `drivers/hv/hyperv_vmbus.h`) on its own
//! vector with auto-EOI, and the drain loop that hands each message to its
//! partition's worker. Interrupt handlers only count; messages are read by the
//! main loop, after an interrupt says one is there.

use crate::memory;
use core::sync::atomic::{AtomicU64, Ordering, fence};
use hv1_abi::message::Message;
use hv1_abi::msr;
use kernel_x86::arch::wrmsr;
use zerocopy::FromBytes;

/// The SynIC interrupt vector.
pub const VECTOR: u8 = 0x40;
/// SINT the root receives partition messages on.
pub const MESSAGE_SINT: u64 = 2;
/// SINTx bit 17: hv-core raises the vector without an APIC EOI owed.
const SINT_AUTO_EOI: u64 = 1 << 17;

static SIMP: AtomicU64 = AtomicU64::new(0);
static SIEF: AtomicU64 = AtomicU64::new(0);
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);

fn on_interrupt() {
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
}

/// Why the SynIC could not be set up.
#[derive(Debug, Clone, Copy)]
pub struct OutOfMemory;

/// Allocate the pages and enable the SynIC (interrupts stay off until the
/// caller enables them).
pub fn init() -> Result<(), OutOfMemory> {
    let simp = memory::alloc_frames(1).ok_or(OutOfMemory)?;
    let sief = memory::alloc_frames(1).ok_or(OutOfMemory)?;
    SIMP.store(simp, Ordering::Relaxed);
    SIEF.store(sief, Ordering::Relaxed);
    kernel_x86::traps::set_irq_handler(VECTOR, on_interrupt);
    // The SynIC MSRs are hv-core's HV#1 interface (the root holds
    // AccessSynicRegs); VECTOR has a handler.
    // SAFETY: both pages are the root's own zeroed RAM, kept for good.
    unsafe {
        wrmsr(msr::SIMP, simp | 1);
        wrmsr(msr::SIEFP, sief | 1);
        wrmsr(msr::SINT0 + MESSAGE_SINT as u32, VECTOR as u64 | SINT_AUTO_EOI);
        wrmsr(msr::SCONTROL, 1);
    }
    Ok(())
}

/// SynIC interrupts taken so far.
pub fn interrupts() -> u64 {
    INTERRUPTS.load(Ordering::Relaxed)
}

/// Take every message waiting on [`MESSAGE_SINT`], handing each to `deliver`.
/// Follows the TLFS slot protocol: copy the message, free the slot (type 0),
/// then write EOM if MessagePending says hv-core has more queued.
pub fn drain(mut deliver: impl FnMut(&Message)) -> usize {
    let simp = SIMP.load(Ordering::Relaxed);
    if simp == 0 {
        return 0;
    }
    let slot = simp + MESSAGE_SINT * 256;
    let mut taken = 0;
    loop {
        // hv-core writes a slot only while the root is stopped.
        // SAFETY: the root's own SIMP page (from `init`), read only here.
        let bytes = unsafe { memory::phys_slice(slot, 256) };
        let Ok(message) = Message::read_from_bytes(bytes) else {
            break;
        };
        if message.header.message_type == 0 {
            break;
        }
        // SAFETY: as above; the slot's type field is 4-byte aligned.
        unsafe { (slot as *mut u32).write_volatile(0) };
        fence(Ordering::SeqCst);
        if message.header.message_flags & 1 != 0 {
            // SAFETY: EOM is a write-only SynIC MSR; it asks hv-core to
            // redeliver into the slot just freed.
            unsafe { wrmsr(msr::EOM, 0) };
        }
        taken += 1;
        deliver(&message);
    }
    taken
}

/// Event flags per SINT (TLFS: the SIEF page gives each SINT 2048 bits).
pub const EVENT_FLAGS: usize = 2048;

/// Clear and return the event flags of [`MESSAGE_SINT`]: bit n of word
/// n / 64 is flag n (each open channel of each child has its own flag, see
/// `worker::channel_flag`).
pub fn take_events() -> [u64; EVENT_FLAGS / 64] {
    let mut taken = [0u64; EVENT_FLAGS / 64];
    let sief = SIEF.load(Ordering::Relaxed);
    if sief == 0 {
        return taken;
    }
    let flags = sief + MESSAGE_SINT * 256;
    for (word, out) in taken.iter_mut().enumerate() {
        // SAFETY: the SIEF page is the root's (allocated in `init`); hv-core
        // sets bits only while the root is stopped; an aligned u64 swap.
        let w = unsafe { &*((flags + word as u64 * 8) as *const core::sync::atomic::AtomicU64) };
        *out = w.swap(0, Ordering::AcqRel);
    }
    taken
}
