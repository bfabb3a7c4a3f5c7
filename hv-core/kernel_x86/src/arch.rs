//! Privileged x86-64 instructions, wrapped once so the rest of the kernel
//! states its intent instead of writing asm. The instructions themselves come
//! from the `x86_64` crate (CPUID and RDTSC from `core::arch`); this module
//! keeps the kernels' small, stable API on top of them.

use x86_64::PhysAddr;
use x86_64::instructions::{self, interrupts, port};
use x86_64::registers::control::{Cr2, Cr3};
use x86_64::registers::model_specific::Msr;
use x86_64::structures::paging::PhysFrame;

/// An I/O port. Constructing one is `unsafe` because writes to arbitrary ports
/// can reprogram devices (and their DMA) behind the kernel's back.
#[derive(Debug, Clone, Copy)]
pub struct Port(u16);

impl Port {
    /// # Safety
    /// The caller owns the device behind `port` and knows its register layout.
    pub const unsafe fn new(port: u16) -> Self {
        Self(port)
    }

    /// Read a byte.
    pub fn read8(self) -> u8 {
        // SAFETY: `Port::new`'s contract: the caller owns this device register.
        unsafe { port::Port::<u8>::new(self.0).read() }
    }

    /// Write a byte.
    pub fn write8(self, v: u8) {
        // SAFETY: as for `read8`.
        unsafe { port::Port::<u8>::new(self.0).write(v) }
    }

    /// Read a dword.
    pub fn read32(self) -> u32 {
        // SAFETY: as for `read8`.
        unsafe { port::Port::<u32>::new(self.0).read() }
    }

    /// Write a dword.
    pub fn write32(self, v: u32) {
        // SAFETY: as for `read8`.
        unsafe { port::Port::<u32>::new(self.0).write(v) }
    }
}

/// CPUID `leaf`.`subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> hv1_abi::cpuid::CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    hv1_abi::cpuid::CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Read an MSR.
///
/// # Safety
/// Reading some MSRs has side effects or faults when absent.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    // SAFETY: forwarded to the caller.
    unsafe { Msr::new(msr).read() }
}

/// Write an MSR.
///
/// # Safety
/// MSR writes can change paging, system-call entry points and more.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { Msr::new(msr).write(value) }
}

/// CR2 (the faulting address of the last #PF).
pub fn read_cr2() -> u64 {
    Cr2::read_raw()
}

/// CR3.
pub fn read_cr3() -> u64 {
    let (frame, flags) = Cr3::read_raw();
    frame.start_address().as_u64() | u64::from(flags)
}

/// Load CR3: the PML4's physical address with PWT/PCD (or a PCID) in bits
/// 0-11. Bits 52-63 (reserved, and the PCID no-flush bit) are not written.
///
/// # Safety
/// `pml4` must be a page table that maps all code and data in use.
pub unsafe fn write_cr3(pml4: u64) {
    let frame = PhysFrame::containing_address(PhysAddr::new(pml4 & 0x000F_FFFF_FFFF_F000));
    // SAFETY: forwarded to the caller.
    unsafe { Cr3::write_raw(frame, (pml4 & 0xFFF) as u16) };
}

/// Stop this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        // With interrupts off only an NMI (or SMI) wakes the CPU, and it halts again.
        interrupts::disable();
        instructions::hlt();
    }
}

/// Wait for the next interrupt unless `ready()` says there is nothing to
/// wait for. `ready` runs with interrupts off, and STI holds interrupts
/// for one more instruction, so an interrupt that arrives after the check
/// wakes the HLT instead of being taken just before it (the lost-wakeup
/// race of a plain check-then-HLT). Returns whether the CPU halted; with
/// interrupts off on entry it only checks (nothing could wake the HLT).
pub fn halt_unless(ready: impl FnOnce() -> bool) -> bool {
    if !interrupts::are_enabled() {
        return false;
    }
    interrupts::disable();
    if ready() {
        interrupts::enable();
        return false;
    }
    // STI; HLT: the interrupt that ends the wait is taken after HLT.
    interrupts::enable_and_hlt();
    true
}

/// Read the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}
