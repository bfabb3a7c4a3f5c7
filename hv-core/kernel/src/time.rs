//! hv-core's time base: the TSC, calibrated once at launch against the PIT.
//!
//! The root's handoff carries no TSC frequency, so hv-core measures it before
//! the root partition runs: PIT channel 2 counts down ~10 ms in mode 0 with
//! its gate held high through port 0x61, and the TSC ticks over that time
//! give the rate (Linux `arch/x86/kernel/tsc.c` `pit_calibrate_tsc` does the
//! same). Channel 2 is the speaker timer: the root's own clock (the local
//! APIC timer, `root-partition/kernel/src/timer.rs`) is not disturbed, and
//! port 0x61 is put back as it was.
//!
//! Children run with a zero TSC offset, so the TSC they read is the host's
//! (under QEMU TCG: the host machine's TSC rate); [`now_ns`] and the guest
//! TSC therefore share one timeline.

use core::sync::atomic::{AtomicU64, Ordering};
use kernel_x86::arch::{Port, rdtsc};

/// The PIT's input clock (Hz).
const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 10 ms of PIT ticks.
const PIT_LATCH: u64 = PIT_HZ / 100;
/// Used when the PIT does not answer (no port 0x61 OUT2 bit): a plausible
/// rate, above the 10 MHz the reference clock needs (`synic::ReferenceClock`).
const FALLBACK_TSC_HZ: u64 = 1_000_000_000;
/// Rates outside this range are taken as a failed measurement.
const PLAUSIBLE_HZ: core::ops::RangeInclusive<u64> = 50_000_000..=20_000_000_000;
/// Port 0x61 polls before giving up (TCG makes each a VM exit into QEMU:
/// slow, but far more than 10 ms' worth).
const MAX_POLLS: u64 = 200_000_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(FALLBACK_TSC_HZ);
/// TSC at calibration: [`now_ns`] counts from here.
static TSC_ZERO: AtomicU64 = AtomicU64::new(0);

/// Measure the TSC rate. Call once, before the root partition is launched
/// (hv-core still owns the machine's ports then), with interrupts off.
pub fn calibrate() {
    let hz = measure().filter(|hz| PLAUSIBLE_HZ.contains(hz));
    match hz {
        Some(hz) => {
            TSC_HZ.store(hz, Ordering::Relaxed);
            hvlog!("TSC calibrated against PIT channel 2: {} kHz", hz / 1000);
        }
        None => hvlog!(
            "TSC calibration failed (no PIT channel 2 answer); assuming {} kHz",
            FALLBACK_TSC_HZ / 1000
        ),
    }
    TSC_ZERO.store(rdtsc(), Ordering::Relaxed);
}

fn measure() -> Option<u64> {
    // Before the root is launched hv-core owns the machine; port 0x61
    // (speaker gate / PIT OUT2) and PIT channel 2 (0x42, mode port 0x43)
    // drive only the PC speaker, whose output stays off (bit 1 clear), and
    // port 0x61's other bits are restored below.
    // SAFETY: ports of devices nobody else uses yet (see above).
    let (ctl, mode, ch2) = unsafe { (Port::new(0x61), Port::new(0x43), Port::new(0x42)) };
    let saved = ctl.read8();
    // Gate high, speaker data off.
    ctl.write8((saved & !0x02) | 0x01);
    // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
    mode.write8(0xB0);
    ch2.write8((PIT_LATCH & 0xFF) as u8);
    ch2.write8((PIT_LATCH >> 8) as u8);
    let start = rdtsc();
    let mut done = false;
    for _ in 0..MAX_POLLS {
        // OUT2 (bit 5) goes high at terminal count.
        if ctl.read8() & 0x20 != 0 {
            done = true;
            break;
        }
    }
    let end = rdtsc();
    ctl.write8(saved);
    if !done {
        return None;
    }
    let ticks = end.wrapping_sub(start);
    Some(((u128::from(ticks) * u128::from(PIT_HZ)) / u128::from(PIT_LATCH)) as u64)
}

/// The TSC rate in Hz (always above 10 MHz).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// The TSC value [`now_ns`] counts from.
pub fn tsc_zero() -> u64 {
    TSC_ZERO.load(Ordering::Relaxed)
}

/// Nanoseconds since calibration, from the TSC.
pub fn now_ns() -> u64 {
    tsc_to_ns(rdtsc())
}

/// A TSC value on [`now_ns`]'s timeline (values before calibration read 0).
pub fn tsc_to_ns(tsc: u64) -> u64 {
    let ticks = tsc.saturating_sub(tsc_zero());
    let ns = (u128::from(ticks) * 1_000_000_000) / u128::from(tsc_hz());
    u64::try_from(ns).unwrap_or(u64::MAX)
}
