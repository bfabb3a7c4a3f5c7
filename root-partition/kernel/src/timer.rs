//! The root's clock: the local APIC timer in periodic mode, driving the
//! scheduler's time slices (a physical interrupt ends any child's run: children
//! intercept INTR). The legacy PICs are masked; the root drives the real
//! xAPIC through its identity map (0xFEE0_0000), which its NPT passes through.

use core::sync::atomic::{AtomicU64, Ordering};
use kernel_x86::arch::Port;

/// Timer vector.
pub const TIMER_VECTOR: u8 = 0x20;
/// Spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// Ticks per second.
pub const HZ: u64 = 100;

const APIC_BASE: u64 = 0xFEE0_0000;
const REG_ID: u64 = 0x20;
const REG_EOI: u64 = 0xB0;
const REG_SVR: u64 = 0xF0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_INITIAL_COUNT: u64 = 0x380;
const REG_DIVIDE: u64 = 0x3E0;
/// QEMU's APIC timer counts at 1 GHz before the divider; with ÷16 this is
/// 10 ms. (On hardware this would be calibrated; HZ only sets time slices.)
const INITIAL_COUNT: u32 = 625_000;

static TICKS: AtomicU64 = AtomicU64::new(0);
/// The TSC when the timer started: with the ticks since, the TSC's rate.
static START_TSC: AtomicU64 = AtomicU64::new(0);

fn write(reg: u64, value: u32) {
    // SAFETY: the local APIC's MMIO page is identity-mapped in the root's page
    // tables and passed through by its NPT; `reg` is a valid register offset.
    unsafe { ((APIC_BASE + reg) as *mut u32).write_volatile(value) };
}

fn on_tick() {
    TICKS.fetch_add(1, Ordering::Relaxed);
    eoi();
}

/// End of interrupt: the local APIC may deliver the next one.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// This CPU's local APIC id (the ID register's top byte).
pub fn apic_id() -> u8 {
    // SAFETY: as in `write`: the ID register (0x20) of the identity-mapped
    // local APIC page.
    let id = unsafe { ((APIC_BASE + REG_ID) as *const u32).read_volatile() };
    (id >> 24) as u8
}

fn on_spurious() {
    // No EOI for a spurious interrupt.
}

/// Mask the PICs, enable the local APIC and start the periodic timer.
/// Interrupts stay disabled until the caller enables them.
pub fn init() {
    // SAFETY: the root owns the legacy PICs; masking every line is harmless.
    unsafe {
        Port::new(0x21).write8(0xFF);
        Port::new(0xA1).write8(0xFF);
    }
    kernel_x86::traps::set_irq_handler(TIMER_VECTOR, on_tick);
    kernel_x86::traps::set_irq_handler(SPURIOUS_VECTOR, on_spurious);
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; setting the global
    // enable bit (11) keeps the base address.
    unsafe {
        let base = kernel_x86::arch::rdmsr(0x1B);
        kernel_x86::arch::wrmsr(0x1B, base | (1 << 11));
    }
    write(REG_SVR, 0x100 | SPURIOUS_VECTOR as u32);
    write(REG_DIVIDE, 0x3); // ÷16
    write(REG_LVT_TIMER, (1 << 17) | TIMER_VECTOR as u32); // periodic
    write(REG_INITIAL_COUNT, INITIAL_COUNT);
    START_TSC.store(kernel_x86::arch::rdtsc(), Ordering::Relaxed);
}

/// The TSC's rate in Hz, measured against the timer since it started (`None`
/// in the first second: too few ticks to say). Finer than the ticks for
/// timing short work such as `disk bench`.
pub fn tsc_hz() -> Option<u64> {
    let ticks = ticks();
    if ticks < HZ {
        return None;
    }
    let cycles = kernel_x86::arch::rdtsc().wrapping_sub(START_TSC.load(Ordering::Relaxed));
    Some(cycles / ticks * HZ)
}

/// Microseconds between two TSC reads, at [`tsc_hz`] (or from the ticks'
/// 10 ms resolution when the rate is not known yet: 0).
pub fn tsc_us(from: u64, to: u64) -> u64 {
    tsc_hz().map_or(0, |hz| {
        (u128::from(to.wrapping_sub(from)) * 1_000_000 / u128::from(hz.max(1))) as u64
    })
}

/// Ticks since the timer started.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// The root's clock in milliseconds (`ticks` at [`HZ`]).
pub fn now_ms() -> u64 {
    ticks() * (1000 / HZ)
}

/// Enable interrupts.
pub fn enable_interrupts() {
    // SAFETY: the IDT routes every vector, the timer and spurious handlers are
    // installed, and the root is ready to be interrupted.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
}
