//! Privileged x86-64 instructions, wrapped once so the rest of the kernel
//! states its intent instead of writing asm.

use core::arch::asm;

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
        let v: u8;
        // SAFETY: `Port::new`'s contract: the caller owns this device register.
        unsafe { asm!("in al, dx", in("dx") self.0, out("al") v, options(nomem, nostack, preserves_flags)) };
        v
    }

    /// Write a byte.
    pub fn write8(self, v: u8) {
        // SAFETY: as for `read8`.
        unsafe { asm!("out dx, al", in("dx") self.0, in("al") v, options(nomem, nostack, preserves_flags)) };
    }

    /// Read a dword.
    pub fn read32(self) -> u32 {
        let v: u32;
        // SAFETY: as for `read8`.
        unsafe {
            asm!("in eax, dx", in("dx") self.0, out("eax") v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    /// Write a dword.
    pub fn write32(self, v: u32) {
        // SAFETY: as for `read8`.
        unsafe {
            asm!("out dx, eax", in("dx") self.0, in("eax") v, options(nomem, nostack, preserves_flags))
        };
    }
}

/// CPUID `leaf`.`subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> hv1_abi::cpuid::CpuidResult {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: CPUID has no side effects on memory; RBX is reserved by LLVM, so
    // it is saved in a scratch register around the instruction.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags)
        )
    };
    hv1_abi::cpuid::CpuidResult { eax, ebx, ecx, edx }
}

/// Read an MSR.
///
/// # Safety
/// Reading some MSRs has side effects or faults when absent.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    ((hi as u64) << 32) | lo as u64
}

/// Write an MSR.
///
/// # Safety
/// MSR writes can change paging, system-call entry points and more.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// CR2 (the faulting address of the last #PF).
pub fn read_cr2() -> u64 {
    let v;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// CR3.
pub fn read_cr3() -> u64 {
    let v;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Load CR3.
///
/// # Safety
/// `pml4` must be a page table that maps all code and data in use.
pub unsafe fn write_cr3(pml4: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) };
}

/// Stop this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: with interrupts off this parks the CPU; nothing is touched.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}

/// Read the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    ((hi as u64) << 32) | lo as u64
}
