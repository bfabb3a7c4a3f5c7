//! Synthetic MSR numbers (TLFS; Linux `arch/x86/include/asm/hyperv-tlfs.h`).

/// HV_X64_MSR_GUEST_OS_ID.
pub const GUEST_OS_ID: u32 = 0x4000_0000;
/// HV_X64_MSR_HYPERCALL: bit 0 enable, bit 1 locked, bits 63:12 GPFN.
pub const HYPERCALL: u32 = 0x4000_0001;
/// HV_X64_MSR_VP_INDEX (read-only).
pub const VP_INDEX: u32 = 0x4000_0002;
/// HV_X64_MSR_RESET.
pub const RESET: u32 = 0x4000_0003;
/// HV_X64_MSR_VP_RUNTIME.
pub const VP_RUNTIME: u32 = 0x4000_0010;
/// HV_X64_MSR_TIME_REF_COUNT.
pub const TIME_REF_COUNT: u32 = 0x4000_0020;
/// HV_X64_MSR_REFERENCE_TSC.
pub const REFERENCE_TSC: u32 = 0x4000_0021;
/// HV_X64_MSR_TSC_FREQUENCY.
pub const TSC_FREQUENCY: u32 = 0x4000_0022;
/// HV_X64_MSR_APIC_FREQUENCY.
pub const APIC_FREQUENCY: u32 = 0x4000_0023;
/// HV_X64_MSR_GUEST_IDLE (read-only): reading it idles the VP until an
/// interrupt is pending for it, even with RFLAGS.IF clear (TLFS "Virtual
/// Processor Idle Sleep State"). Linux 6.1 `hv_qlock_wait` reads it, with
/// interrupts off, to wait for a spinlock's holder to kick it with an IPI.
/// Available with the AccessGuestIdleReg privilege.
pub const GUEST_IDLE: u32 = 0x4000_00F0;
/// HV_X64_MSR_VP_ASSIST_PAGE.
pub const VP_ASSIST_PAGE: u32 = 0x4000_0073;
/// HV_X64_MSR_SCONTROL.
pub const SCONTROL: u32 = 0x4000_0080;
/// HV_X64_MSR_SVERSION.
pub const SVERSION: u32 = 0x4000_0081;
/// HV_X64_MSR_SIEFP.
pub const SIEFP: u32 = 0x4000_0082;
/// HV_X64_MSR_SIMP.
pub const SIMP: u32 = 0x4000_0083;
/// HV_X64_MSR_EOM.
pub const EOM: u32 = 0x4000_0084;
/// HV_X64_MSR_SINT0 (SINTn = SINT0 + n).
pub const SINT0: u32 = 0x4000_0090;
/// HV_X64_MSR_STIMER0_CONFIG (STIMERn_CONFIG = STIMER0_CONFIG + 2n, n < 4).
pub const STIMER0_CONFIG: u32 = 0x4000_00B0;
/// HV_X64_MSR_STIMER0_COUNT (STIMERn_COUNT = STIMER0_COUNT + 2n, n < 4).
pub const STIMER0_COUNT: u32 = 0x4000_00B1;
/// HV_X64_MSR_TSC_INVARIANT_CONTROL: bit 0 exposes the invariant TSC in
/// CPUID 0x8000_0007 EDX bit 8 (Linux 6.1 `mshyperv.c`, writes
/// HV_EXPOSE_INVARIANT_TSC when HV_ACCESS_TSC_INVARIANT is set).
pub const TSC_INVARIANT_CONTROL: u32 = 0x4000_0118;

/// HV_X64_MSR_CRASH_P0: the first of five guest crash parameters (TLFS
/// "Guest Crash Reporting"; CRASH_Pn = CRASH_P0 + n, n < 5). Available when
/// CPUID 0x4000_0003 EDX bit 10 is set. Partition-wide; guest data the
/// hypervisor only stores and forwards. Linux 6.1 writes P0 = error code,
/// P1 = GUEST_OS_ID, P2 = RIP, P3 = RAX, P4 = RSP (`hyperv_report_panic`),
/// or P0-P2 = 0, P3 = GPA of a message page, P4 = its length in bytes
/// (`hv_kmsg_dump`, with [`CRASH_CTL_MESSAGE`]).
pub const CRASH_P0: u32 = 0x4000_0100;
/// HV_X64_MSR_CRASH_P4.
pub const CRASH_P4: u32 = 0x4000_0104;
/// HV_X64_MSR_CRASH_CTL: a guest reads it to learn which bits the
/// hypervisor supports; writing it with [`CRASH_CTL_NOTIFY`] reports the
/// crash described by P0-P4.
pub const CRASH_CTL: u32 = 0x4000_0105;
/// CRASH_CTL bit 63, CrashNotify: the guest crashed, P0-P4 say how.
pub const CRASH_CTL_NOTIFY: u64 = 1 << 63;
/// CRASH_CTL bit 62, CrashMessage (HV_CRASH_CTL_CRASH_NOTIFY_MSG): P3 is
/// the GPA of a page of text and P4 its length.
pub const CRASH_CTL_MESSAGE: u64 = 1 << 62;

/// The synthetic MSR range the hypervisor owns.
pub const SYNTHETIC_RANGE: core::ops::RangeInclusive<u32> = 0x4000_0000..=0x4000_FFFF;

/// HYPERCALL MSR: enable bit.
pub const HYPERCALL_ENABLE: u64 = 1 << 0;
/// HYPERCALL MSR: locked bit.
pub const HYPERCALL_LOCKED: u64 = 1 << 1;
/// HYPERCALL MSR: the GPA page-number field (bits 63:12).
pub const HYPERCALL_GPFN_MASK: u64 = !0xFFF;

/// The bytes of the hypercall page on AMD: `VMMCALL; RET` (KVM writes the same;
/// TLFS "Hypercall Interface").
pub const HYPERCALL_PAGE_SVM: [u8; 4] = [0x0F, 0x01, 0xD9, 0xC3];
