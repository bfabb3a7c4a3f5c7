//! Mode `apic-timer`: the platform a Linux child needs from hv-core, checked
//! from inside a child. The xAPIC page (MMIO), then x2APIC mode: the timer
//! one-shot and periodic, EOI, task-priority masking and self IPIs; the
//! reference counter, the reference TSC page and the frequency MSRs; a
//! synthetic timer in message mode. One result line per check, each
//! `testos NAME: CHECK: ... ok|FAILED`, then `apic-timer done`.

use crate::guest::{enable_hypercalls, halt_forever, init_heap, on_exception, say_line, wrmsr};
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use hv1_abi::msr;

const TIMER_VECTOR: u8 = 0x40;
const IPI_VECTOR: u8 = 0x41;
const SYNIC_VECTOR: u8 = 0x50;
/// SINT the synthetic timer posts to.
const TIMER_SINT: u64 = 3;

const APIC_BASE_MSR: u32 = 0x1B;
const XAPIC_PAGE: u64 = 0xFEE0_0000;
const X2APIC_ID: u32 = 0x802;
const X2APIC_VERSION: u32 = 0x803;
const X2APIC_TPR: u32 = 0x808;
const X2APIC_EOI: u32 = 0x80B;
const X2APIC_SVR: u32 = 0x80F;
const X2APIC_ISR0: u32 = 0x810;
const X2APIC_ICR: u32 = 0x830;
const X2APIC_LVT_TIMER: u32 = 0x832;
const X2APIC_INITIAL_COUNT: u32 = 0x838;
const X2APIC_DIVIDE: u32 = 0x83E;
const X2APIC_SELF_IPI: u32 = 0x83F;
const STIMER0_CONFIG: u32 = 0x4000_00B0;
const STIMER0_COUNT: u32 = 0x4000_00B1;
const HVMSG_TIMER_EXPIRED: u32 = 0x8000_0010;

static TIMER_IRQS: AtomicU64 = AtomicU64::new(0);
static IPI_IRQS: AtomicU64 = AtomicU64::new(0);
static SYNIC_IRQS: AtomicU64 = AtomicU64::new(0);
/// ISR bits seen in service inside the SynIC handler (must be none: AutoEOI).
static SYNIC_IN_SERVICE: AtomicU64 = AtomicU64::new(0);

/// Pages for the SynIC message page and the reference TSC page (the child
/// runs on an identity map: the address is the GPA).
#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut SIMP_PAGE: Page = Page([0; 4096]);
static mut TSC_PAGE: Page = Page([0; 4096]);

fn rdmsr(index: u32) -> u64 {
    // SAFETY: MSRs this mode's checks read; a refused one would #GP into
    // `on_exception`, which reports it.
    unsafe { kernel_x86::arch::rdmsr(index) }
}

fn eoi() {
    wrmsr(X2APIC_EOI, 0);
}

fn on_timer() {
    TIMER_IRQS.fetch_add(1, Ordering::Relaxed);
    eoi();
}

fn on_ipi() {
    IPI_IRQS.fetch_add(1, Ordering::Relaxed);
    eoi();
}

fn on_synic() {
    // AutoEOI SINT: the vector must not be in service, and no EOI is sent.
    let isr = rdmsr(X2APIC_ISR0 + u32::from(SYNIC_VECTOR >> 5));
    if isr & (1 << (SYNIC_VECTOR & 31)) != 0 {
        SYNIC_IN_SERVICE.fetch_add(1, Ordering::Relaxed);
    }
    SYNIC_IRQS.fetch_add(1, Ordering::Relaxed);
}

fn sti() {
    // SAFETY: the IDT routes every vector this mode enables.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

fn cli() {
    // SAFETY: only masks interrupts.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

fn ok(b: bool) -> &'static str {
    if b { "ok" } else { "FAILED" }
}

/// TSC ticks per millisecond, from HV_X64_MSR_TSC_FREQUENCY.
struct Clock {
    per_ms: u64,
}

impl Clock {
    fn ms_since(&self, start: u64) -> u64 {
        kernel_x86::arch::rdtsc().wrapping_sub(start) / self.per_ms
    }

    /// Spin (interrupts as they are) until `done` or `ms` pass; returns
    /// whether `done` held.
    fn wait(&self, ms: u64, done: impl Fn() -> bool) -> bool {
        let start = kernel_x86::arch::rdtsc();
        while self.ms_since(start) < ms {
            if done() {
                return true;
            }
            core::hint::spin_loop();
        }
        done()
    }
}

/// Run every check and halt.
pub(crate) fn run(name: &str) -> ! {
    let say = |args: core::fmt::Arguments| say_line(format_args!("testos {name}: {args}"));
    init_heap();
    kernel_x86::traps::init(
        alloc::boxed::Box::leak(alloc::boxed::Box::new(kernel_x86::traps::CpuTables::new())),
        on_exception,
    );
    kernel_x86::traps::set_irq_handler(TIMER_VECTOR, on_timer);
    kernel_x86::traps::set_irq_handler(IPI_VECTOR, on_ipi);
    kernel_x86::traps::set_irq_handler(SYNIC_VECTOR, on_synic);

    // CPUID: APIC, x2APIC, the time enlightenments.
    let leaf1 = kernel_x86::arch::cpuid(1, 0);
    let hv = kernel_x86::arch::cpuid(0x4000_0003, 0);
    let time_bits = (1 << 1) | (1 << 3) | (1 << 9) | (1 << 11);
    let cpuid_ok = leaf1.edx & (1 << 9) != 0
        && leaf1.ecx & (1 << 21) != 0
        && leaf1.ebx >> 24 == 0
        && hv.eax & time_bits == time_bits
        && hv.edx & (1 << 8) != 0;
    say(format_args!(
        "cpuid: apic {} x2apic {} apic id {} hv eax {:#x} edx {:#x}: {}",
        leaf1.edx >> 9 & 1,
        leaf1.ecx >> 21 & 1,
        leaf1.ebx >> 24,
        hv.eax,
        hv.edx,
        ok(cpuid_ok)
    ));

    // xAPIC page first (the APIC starts in xAPIC mode at 0xFEE00000).
    let base = rdmsr(APIC_BASE_MSR);
    // SAFETY: the xAPIC page, identity-mapped; hv-core emulates the accesses.
    let (id, version) = unsafe {
        (
            core::ptr::read_volatile((XAPIC_PAGE + 0x20) as *const u32),
            core::ptr::read_volatile((XAPIC_PAGE + 0x30) as *const u32),
        )
    };
    // SAFETY: as above; TPR is a plain register.
    unsafe { core::ptr::write_volatile((XAPIC_PAGE + 0x80) as *mut u32, 0x20) };
    // SAFETY: as above.
    let tpr = unsafe { core::ptr::read_volatile((XAPIC_PAGE + 0x80) as *const u32) };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile((XAPIC_PAGE + 0x80) as *mut u32, 0) };
    say(format_args!(
        "xapic: base {base:#x} id {id:#x} version {version:#x} tpr {tpr:#x}: {}",
        ok(base & !0xFFF == XAPIC_PAGE
            && base & (1 << 11) != 0
            && id >> 24 == 0
            && version & 0xFF == 0x14
            && tpr == 0x20)
    ));

    // x2APIC mode, software-enabled.
    wrmsr(APIC_BASE_MSR, base | (1 << 10) | (1 << 11));
    wrmsr(X2APIC_SVR, 0x100 | 0xFF);
    let x2id = rdmsr(X2APIC_ID);
    let x2version = rdmsr(X2APIC_VERSION);
    say(format_args!(
        "x2apic: enabled, id {x2id} version {x2version:#x}: {}",
        ok(rdmsr(APIC_BASE_MSR) & (1 << 10) != 0 && x2id == 0 && x2version & 0xFF == 0x14)
    ));

    let freq = rdmsr(msr::TSC_FREQUENCY);
    let apic_freq = rdmsr(msr::APIC_FREQUENCY);
    say(format_args!(
        "frequencies: tsc {freq} Hz, apic {apic_freq} Hz: {}",
        ok(freq > 10_000_000 && apic_freq == 200_000_000)
    ));
    let clock = Clock {
        per_ms: (freq / 1000).max(1),
    };

    // One-shot: 10 ms at 200 MHz / 1.
    wrmsr(X2APIC_DIVIDE, 0xB);
    wrmsr(X2APIC_LVT_TIMER, u64::from(TIMER_VECTOR));
    let start = kernel_x86::arch::rdtsc();
    wrmsr(X2APIC_INITIAL_COUNT, 2_000_000);
    sti();
    let fired = clock.wait(2000, || TIMER_IRQS.load(Ordering::Relaxed) >= 1);
    let after = clock.ms_since(start);
    clock.wait(100, || false);
    let once = TIMER_IRQS.load(Ordering::Relaxed) == 1;
    say(format_args!(
        "one-shot timer: fired {fired} after {after} ms, once {once}: {}",
        ok(fired && once && after >= 9)
    ));

    // EOI: nothing left in service.
    let isr_clear = (0..8).all(|i| rdmsr(X2APIC_ISR0 + i) == 0);
    say(format_args!("eoi: isr clear {isr_clear}: {}", ok(isr_clear)));

    // Periodic: 10 ms period for 300 ms.
    let before = TIMER_IRQS.load(Ordering::Relaxed);
    wrmsr(X2APIC_LVT_TIMER, u64::from(TIMER_VECTOR) | (1 << 17));
    wrmsr(X2APIC_INITIAL_COUNT, 2_000_000);
    clock.wait(300, || false);
    wrmsr(X2APIC_INITIAL_COUNT, 0);
    let ticks = TIMER_IRQS.load(Ordering::Relaxed) - before;
    say(format_args!(
        "periodic timer: {ticks} interrupts in 300 ms: {}",
        ok((5..=40).contains(&ticks))
    ));

    // TPR masking: vector 0x41 is class 4; TPR 0x40 holds it back.
    cli();
    wrmsr(X2APIC_TPR, 0x40);
    wrmsr(X2APIC_SELF_IPI, u64::from(IPI_VECTOR));
    sti();
    let held = !clock.wait(50, || IPI_IRQS.load(Ordering::Relaxed) != 0);
    wrmsr(X2APIC_TPR, 0);
    let delivered = clock.wait(1000, || IPI_IRQS.load(Ordering::Relaxed) == 1);
    say(format_args!(
        "tpr: self ipi held while TPR = 0x40 {held}, delivered after TPR = 0 {delivered}: {}",
        ok(held && delivered)
    ));

    // A self IPI through the ICR (shorthand self, fixed).
    wrmsr(X2APIC_ICR, (1 << 18) | u64::from(IPI_VECTOR));
    let icr = clock.wait(1000, || IPI_IRQS.load(Ordering::Relaxed) == 2);
    say(format_args!("self ipi via icr: delivered {icr}: {}", ok(icr)));

    // Reference counter: ~100 ns units, advancing with the TSC.
    let r0 = rdmsr(msr::TIME_REF_COUNT);
    clock.wait(20, || false);
    let r1 = rdmsr(msr::TIME_REF_COUNT);
    let delta = r1.wrapping_sub(r0);
    say(format_args!(
        "reference counter: +{delta} in 20 ms: {}",
        ok((150_000..=2_000_000).contains(&delta))
    ));

    // Reference TSC page: agrees with the counter.
    let page = &raw const TSC_PAGE as u64;
    wrmsr(msr::REFERENCE_TSC, page | 1);
    // SAFETY: our own page; hv-core filled it before the WRMSR returned.
    let (seq, scale, offset) = unsafe {
        (
            core::ptr::read_volatile(page as *const u32),
            core::ptr::read_volatile((page + 8) as *const u64),
            core::ptr::read_volatile((page + 16) as *const i64),
        )
    };
    let from_page =
        |tsc: u64| (((u128::from(tsc) * u128::from(scale)) >> 64) as u64).wrapping_add(offset as u64);
    let p0 = from_page(kernel_x86::arch::rdtsc());
    let m0 = rdmsr(msr::TIME_REF_COUNT);
    clock.wait(20, || false);
    let p1 = from_page(kernel_x86::arch::rdtsc());
    let diff = m0.abs_diff(p0);
    say(format_args!(
        "reference tsc page: seq {seq}, page vs counter {diff} units apart, advancing {}: {}",
        p1 > p0,
        ok(seq != 0 && diff < 100_000 && p1 > p0)
    ));

    // Synthetic timer 0, message mode on SINT 3, AutoEOI (as Linux sets
    // SINTs): HVMSG_TIMER_EXPIRED in the slot and the vector taken.
    enable_hypercalls();
    let simp = &raw const SIMP_PAGE as u64;
    wrmsr(msr::SIMP, simp | 1);
    wrmsr(
        msr::SINT0 + TIMER_SINT as u32,
        (1 << 17) | u64::from(SYNIC_VECTOR),
    );
    wrmsr(msr::SCONTROL, 1);
    let now = rdmsr(msr::TIME_REF_COUNT);
    // Enable | AutoEnable | SINTx; one-shot 10 ms from now.
    wrmsr(STIMER0_CONFIG, 1 | (1 << 3) | (TIMER_SINT << 16));
    wrmsr(STIMER0_COUNT, now + 100_000);
    let start = kernel_x86::arch::rdtsc();
    let taken = clock.wait(2000, || SYNIC_IRQS.load(Ordering::Relaxed) != 0);
    let after = clock.ms_since(start);
    let slot = simp + TIMER_SINT * 256;
    // SAFETY: our SIMP page; hv-core wrote the slot before the interrupt.
    let (kind, timer, expiration) = unsafe {
        (
            core::ptr::read_volatile(slot as *const u32),
            core::ptr::read_volatile((slot + 16) as *const u32),
            core::ptr::read_volatile((slot + 24) as *const u64),
        )
    };
    let auto_eoi = SYNIC_IN_SERVICE.load(Ordering::Relaxed) == 0;
    say(format_args!(
        "synthetic timer: message {kind:#x} timer {timer} expiration {} after {after} ms, taken {taken}, auto-eoi {auto_eoi}: {}",
        expiration.wrapping_sub(now),
        ok(taken && kind == HVMSG_TIMER_EXPIRED && timer == 0 && expiration == now + 100_000 && auto_eoi)
    ));
    // Free the slot as a guest does (type to 0, then EOM).
    // SAFETY: our SIMP page.
    unsafe { core::ptr::write_volatile(slot as *mut u32, 0) };
    wrmsr(msr::EOM, 0);

    say(format_args!("apic-timer done"));
    halt_forever()
}
