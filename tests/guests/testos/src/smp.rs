//! Mode `smp-ipi` (a child with 2 VPs): IPIs between a partition's VPs as
//! hv-core routes them (`vlapic::route_ipi`), checked from inside. VP 1 sets
//! up its own tables and x2APIC, enables interrupts and halts; VP 0 sends it
//! fixed IPIs one at a time (each must arrive: VP 1 counts them), then a
//! broadcast to all but itself, a lowest-priority IPI, an IPI to an APIC id
//! nobody has, a Startup IPI to VP 1 while it runs (ignored: it is not
//! waiting for one), an NMI (not emulated: dropped) and INIT to itself, the
//! boot processor (dropped). One result line,
//! `testos NAME: smp-ipi: ... ok|FAILED`.
//!
//! Then Hyper-V's synthetic IPIs and guest idle, as Linux's paravirtual
//! spinlocks use them: fast HvCallSendSyntheticClusterIpi calls to VP 1,
//! each waited for; a call with a bad vector, a mask naming a VP that does
//! not exist and a rep count are refused; and VP 0, with interrupts off,
//! asks VP 1 to kick it back and reads HV_X64_MSR_GUEST_IDLE: it idles
//! until VP 1's synthetic IPI arrives (which it must, IF clear or not) and
//! takes it once it enables interrupts. A second result line,
//! `testos NAME: smp-ipi: synthetic ... ok|FAILED`, then `smp-ipi done`.

use crate::guest::{enable_hypercalls, halt_forever, hypercall, init_heap, on_exception, say_line, wrmsr};
use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use hv1_abi::{HvCallCode, HvStatus, HypercallControl};

const IPI_VECTOR: u8 = 0x41;
/// What VP 1 sends VP 0 when asked (`SPIN_FOR_KICK`, `PLEASE_KICK`).
const KICK_VECTOR: u8 = 0x42;
const SYNTHETIC_IPIS: u64 = 50;
const FIXED_IPIS: u64 = 100;

const APIC_BASE_MSR: u32 = 0x1B;
const X2APIC_EOI: u32 = 0x80B;
const X2APIC_SVR: u32 = 0x80F;
const X2APIC_ICR: u32 = 0x830;

/// ICR fields (SDM vol. 3A §10.12.9, x2APIC: destination in bits 63:32).
const MODE_LOWEST: u64 = 1 << 8;
const MODE_NMI: u64 = 4 << 8;
const MODE_INIT: u64 = 5 << 8;
const MODE_STARTUP: u64 = 6 << 8;
const LEVEL_ASSERT: u64 = 1 << 14;
const ALL_EXCLUDING_SELF: u64 = 3 << 18;

/// VP 0 has set up the heap: VP 1 may allocate its tables.
static HEAP_READY: AtomicBool = AtomicBool::new(false);
/// VP 1 takes interrupts.
static AP_READY: AtomicBool = AtomicBool::new(false);
/// IPIs VP 1 received.
static AP_IPIS: AtomicU64 = AtomicU64::new(0);
/// VP 1's next IPI makes it spin until [`PLEASE_KICK`], then kick VP 0
/// with a synthetic IPI.
static SPIN_FOR_KICK: AtomicBool = AtomicBool::new(false);
/// VP 0 is about to idle: kick it.
static PLEASE_KICK: AtomicBool = AtomicBool::new(false);
/// VP 1 sent the kick.
static KICK_SENT: AtomicBool = AtomicBool::new(false);
/// Kicks VP 0 received.
static KICKS: AtomicU64 = AtomicU64::new(0);

fn rdmsr(index: u32) -> u64 {
    // SAFETY: APIC MSRs of the x2APIC this mode enables.
    unsafe { kernel_x86::arch::rdmsr(index) }
}

/// x2APIC mode, software-enabled; interrupts on this VP's own tables.
fn enable_x2apic() {
    let base = rdmsr(APIC_BASE_MSR);
    wrmsr(APIC_BASE_MSR, base | (1 << 10) | (1 << 11));
    wrmsr(X2APIC_SVR, 0x100 | 0xFF);
}

fn init_tables() {
    kernel_x86::traps::init(
        alloc::boxed::Box::leak(alloc::boxed::Box::new(kernel_x86::traps::CpuTables::new())),
        on_exception,
    );
    kernel_x86::traps::set_irq_handler(IPI_VECTOR, on_ipi);
    kernel_x86::traps::set_irq_handler(KICK_VECTOR, on_kick);
}

fn on_ipi() {
    AP_IPIS.fetch_add(1, Ordering::Relaxed);
    wrmsr(X2APIC_EOI, 0);
    if SPIN_FOR_KICK.swap(false, Ordering::AcqRel) {
        // Spinning yields the CPU (PAUSE), so VP 0 runs on to its idle.
        while !PLEASE_KICK.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        KICK_SENT.store(true, Ordering::Release);
        let _ = send_synthetic_ipi(u64::from(KICK_VECTOR), 0b01);
    }
}

fn on_kick() {
    KICKS.fetch_add(1, Ordering::Relaxed);
    wrmsr(X2APIC_EOI, 0);
}

/// HvCallSendSyntheticClusterIpi, fast: RDX = vector (and VTL, reserved),
/// R8 = the VP mask.
fn send_synthetic_ipi(vector_word: u64, mask: u64) -> HvStatus {
    let control = HypercallControl {
        fast: true,
        ..HypercallControl::simple(HvCallCode::SEND_IPI)
    };
    hypercall(control.encode(), vector_word, mask).status
}

/// TSC ticks per millisecond, from HV_X64_MSR_TSC_FREQUENCY.
fn per_ms() -> u64 {
    (rdmsr(hv1_abi::msr::TSC_FREQUENCY) / 1000).max(1)
}

/// Spin until `done` or `ms` pass; whether `done` held.
fn wait(ms: u64, done: impl Fn() -> bool) -> bool {
    let per_ms = per_ms();
    let start = kernel_x86::arch::rdtsc();
    while kernel_x86::arch::rdtsc().wrapping_sub(start) / per_ms < ms {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    done()
}

fn ipis() -> u64 {
    AP_IPIS.load(Ordering::Relaxed)
}

/// VP 1: tables, APIC, then halt with interrupts on, forever.
pub(crate) fn ap() -> ! {
    while !HEAP_READY.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    init_tables();
    enable_x2apic();
    AP_READY.store(true, Ordering::Release);
    loop {
        // SAFETY: interrupts on this VP go to its own IDT (`init_tables`);
        // the HLT ends at each one.
        unsafe { asm!("sti; hlt", options(nomem, nostack)) };
    }
}

/// VP 0: the checks.
pub(crate) fn run(name: &str, vp_count: u32) -> ! {
    let say = |args: core::fmt::Arguments| say_line(format_args!("testos {name}: {args}"));
    if vp_count != 2 {
        say(format_args!("smp-ipi: FAILED: needs 2 VPs, has {vp_count}"));
        halt_forever()
    }
    init_heap();
    init_tables();
    enable_x2apic();
    HEAP_READY.store(true, Ordering::Release);
    if !wait(5000, || AP_READY.load(Ordering::Acquire)) {
        say(format_args!("smp-ipi: FAILED: VP 1 never got ready"));
        halt_forever()
    }
    let to_vp1 = 1u64 << 32;
    // Fixed IPIs to APIC id 1, each waited for (one IRR bit per vector: a
    // second sent before the first is taken would merge with it).
    let mut fixed = 0;
    for i in 0..FIXED_IPIS {
        wrmsr(X2APIC_ICR, to_vp1 | u64::from(IPI_VECTOR));
        if !wait(1000, || ipis() == i + 1) {
            break;
        }
        fixed += 1;
    }
    let before = ipis();
    wrmsr(X2APIC_ICR, ALL_EXCLUDING_SELF | u64::from(IPI_VECTOR));
    let broadcast = wait(1000, || ipis() == before + 1);
    wrmsr(X2APIC_ICR, to_vp1 | MODE_LOWEST | u64::from(IPI_VECTOR));
    let lowest = wait(1000, || ipis() == before + 2);
    // Nobody has APIC id 7.
    wrmsr(X2APIC_ICR, (7u64 << 32) | u64::from(IPI_VECTOR));
    let nobody = !wait(100, || ipis() != before + 2);
    // A SIPI to a VP that is not waiting for one, an NMI, INIT to the BSP:
    // none may change VP 1 (it still counts the next IPI) or stop VP 0.
    wrmsr(X2APIC_ICR, to_vp1 | MODE_STARTUP | 0x10);
    wrmsr(X2APIC_ICR, to_vp1 | MODE_NMI);
    wrmsr(X2APIC_ICR, MODE_INIT | LEVEL_ASSERT);
    wrmsr(X2APIC_ICR, to_vp1 | u64::from(IPI_VECTOR));
    let still = wait(1000, || ipis() == before + 3);
    say(format_args!(
        "smp-ipi: fixed {fixed}/{FIXED_IPIS}, all-but-self {broadcast}, lowest priority {lowest}, \
         unknown id ignored {nobody}, after SIPI/NMI/INIT VP 1 still counts {still}: {}",
        if fixed == FIXED_IPIS && broadcast && lowest && nobody && still {
            "ok"
        } else {
            "FAILED"
        }
    ));
    say(format_args!("{}", synthetic()));
    say(format_args!("smp-ipi done"));
    halt_forever()
}

/// The synthetic IPI and guest idle checks (VP 0), as one result line.
fn synthetic() -> alloc::string::String {
    enable_hypercalls();
    let mut sent = 0;
    for _ in 0..SYNTHETIC_IPIS {
        let before = ipis();
        if send_synthetic_ipi(u64::from(IPI_VECTOR), 0b10) != HvStatus::SUCCESS
            || !wait(1000, || ipis() == before + 1)
        {
            break;
        }
        sent += 1;
    }
    // Refused without effect: vector 5, target VTL 1, VP 2 (there are two
    // VPs), and a rep count on this simple call.
    let before = ipis();
    let refused = [
        send_synthetic_ipi(5, 0b10),
        send_synthetic_ipi(1 << 32 | u64::from(IPI_VECTOR), 0b10),
        send_synthetic_ipi(u64::from(IPI_VECTOR), 0b110),
    ];
    let rep_call = HypercallControl {
        fast: true,
        rep_count: 1,
        ..HypercallControl::simple(HvCallCode::SEND_IPI)
    };
    let rep_status = hypercall(rep_call.encode(), u64::from(IPI_VECTOR), 0b10).status;
    let none_arrived = !wait(100, || ipis() != before);
    let refusals_ok = refused == [HvStatus::INVALID_PARAMETER; 3]
        && rep_status == HvStatus::INVALID_HYPERCALL_INPUT
        && none_arrived;
    // Guest idle with interrupts off: VP 1, woken by an IPI, spins until
    // VP 0 asks for a kick; VP 0 then reads GUEST_IDLE with nothing
    // pending. Only VP 1's kick can end that idle, and VP 1 runs only
    // while VP 0 idles (one CPU for both).
    let mut idle_value = u64::MAX;
    SPIN_FOR_KICK.store(true, Ordering::Release);
    let sent_ok = send_synthetic_ipi(u64::from(IPI_VECTOR), 0b10) == HvStatus::SUCCESS;
    // SAFETY: interrupts go to this VP's own IDT (`init_tables`); they are
    // off only between the CLI and the STI below.
    unsafe { asm!("cli", options(nomem, nostack)) };
    PLEASE_KICK.store(true, Ordering::Release);
    if sent_ok {
        idle_value = rdmsr(hv1_abi::msr::GUEST_IDLE);
    }
    // VP 1 ran while VP 0 idled: the read did not just return.
    let ap_ran = KICK_SENT.load(Ordering::Acquire);
    // The kick is pending, not taken, until interrupts are on again.
    let before_sti = KICKS.load(Ordering::Relaxed);
    // SAFETY: as above.
    unsafe { asm!("sti", options(nomem, nostack)) };
    let kicked = wait(1000, || KICKS.load(Ordering::Relaxed) == 1);
    let idle_ok = sent_ok && idle_value == 0 && ap_ran && before_sti == 0 && kicked;
    alloc::format!(
        "smp-ipi: synthetic {sent}/{SYNTHETIC_IPIS}, refused {refused:?} rep {rep_status:?} none arrived \
         {none_arrived}, guest idle read {idle_value:#x} let VP 1 run {ap_ran}, woke with IF clear and took \
         the kick after STI {}: {}",
        before_sti == 0 && kicked,
        if sent == SYNTHETIC_IPIS && refusals_ok && idle_ok {
            "ok"
        } else {
            "FAILED"
        }
    )
}
