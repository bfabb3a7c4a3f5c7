//! Project-private hypercalls. Hyper-V defines no call codes in
//! `0xC000..=0xC0FF`; ours live only there, and only where Hyper-V has no
//! equivalent (docs/hypercall-abi.md).

use crate::HvCallCode;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The private call-code range.
pub const RANGE: core::ops::RangeInclusive<u16> = 0xC000..=0xC0FF;

/// HvPrivGetCoreStats (root only): writes a [`CoreStats`] to the output GPA.
pub const GET_CORE_STATS: HvCallCode = HvCallCode(0xC001);

/// HvPrivGetPartitionStats (root only): input a partition id (8 bytes),
/// output a [`PartitionStats`].
pub const GET_PARTITION_STATS: HvCallCode = HvCallCode(0xC002);

/// HvPrivResetPartition (root only): input a partition id (8 bytes, or in
/// RDX as a fast call). Puts the partition back to power-on as a VM reset
/// does: every VP to the x86 reset state (registers, VMCB with no pending
/// event, x87/SSE and debug registers), its SynIC to reset values with its
/// queue and pending vectors emptied, the partition's synthetic MSRs
/// (GUEST_OS_ID, a locked HYPERCALL MSR) cleared, suspend flags cleared.
/// Memory, VPs, intercept-message pages and ports stay (the worker reloads
/// memory itself). Hyper-V has no hypercall for this: its VM worker resets a
/// partition through the VID driver (`WHvResetPartition` in the Windows
/// Hypervisor Platform API).
pub const RESET_PARTITION: HvCallCode = HvCallCode(0xC003);

/// Exit-reason buckets counted by hv-core, in [`CoreStats::exits`] order.
pub const EXIT_REASONS: [&str; EXIT_REASON_COUNT] = [
    "cpuid",
    "msr_read",
    "msr_write",
    "vmmcall",
    "npf",
    "hlt",
    "ioio",
    "shutdown",
    "intr",
    "other",
    "pause",
    "guest_idle",
];
/// Number of buckets.
pub const EXIT_REASON_COUNT: usize = 12;

/// Index of each bucket.
pub mod reason {
    /// CPUID.
    pub const CPUID: usize = 0;
    /// RDMSR.
    pub const MSR_READ: usize = 1;
    /// WRMSR.
    pub const MSR_WRITE: usize = 2;
    /// VMMCALL (hypercalls).
    pub const VMMCALL: usize = 3;
    /// Nested page fault.
    pub const NPF: usize = 4;
    /// HLT.
    pub const HLT: usize = 5;
    /// I/O port.
    pub const IOIO: usize = 6;
    /// Shutdown (triple fault).
    pub const SHUTDOWN: usize = 7;
    /// Physical interrupt.
    pub const INTR: usize = 8;
    /// Anything else.
    pub const OTHER: usize = 9;
    /// PAUSE (intercepted only while a signal grace runs: see
    /// [`property::SIGNAL_GRACE`]).
    pub const PAUSE: usize = 10;
    /// RDMSR of HV_X64_MSR_GUEST_IDLE: the VP idles until an interrupt
    /// (Linux's paravirtual spinlock wait); not counted under MSR_READ.
    pub const GUEST_IDLE: usize = 11;
}

/// Project-private partition properties (codes in `0xC000_0000..`, which
/// Hyper-V's `hv_partition_property_code` does not use).
pub mod property {
    /// SIGNAL_GRACE (get/set, children; 0 or 1, default 0). With 0, a VP
    /// that posts or signals to the root ends its dispatch right after that
    /// hypercall, so the root serves it at once. With 1 it runs on to its
    /// next exit of any kind: a HLT (which hv-core completes, leaving the VP
    /// halted), a PAUSE (a spin-wait; intercepted only then), an intercept
    /// for the root, the root's timer. On one CPU the root runs only when
    /// the child's dispatch returns: without a grace, a guest that signals
    /// whenever its ring was empty (Linux `hv_ringbuffer_write`) finds the
    /// root has drained it before its next write and signals for every
    /// packet; with one it queues its burst behind one signal. For guests
    /// that halt when idle (a Linux kernel); a spin-waiting guest would pay
    /// a PAUSE exit per signal.
    pub const SIGNAL_GRACE: u32 = 0xC000_0001;
}

/// Output of [`GET_CORE_STATS`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CoreStats {
    /// Physical base of hv-core's region.
    pub region_base: u64,
    /// Its size.
    pub region_size: u64,
    /// Bytes of the region hv-core has allocated (image, tables, VMCBs, stacks).
    pub region_used: u64,
    /// All exits since launch.
    pub total_exits: u64,
    /// Exits by reason ([`EXIT_REASONS`]).
    pub exits: [u64; EXIT_REASON_COUNT],
    /// Exceptions hv-core injected into the root (e.g. #GP for its region).
    pub injected_exceptions: u64,
    /// Hypercalls that returned a status other than success.
    pub failed_hypercalls: u64,
    /// Child partitions that exist.
    pub partitions: u64,
    /// Root pages currently lent to children.
    pub lent_pages: u64,
    /// Root pages pinned (written by hv-core itself: the root's hypercall,
    /// SIMP and SIEF pages, child VPs' intercept-message pages), never lent.
    pub pinned_pages: u64,
}
const _: () = assert!(size_of::<CoreStats>() == 4 * 8 + 8 * EXIT_REASON_COUNT + 40);

/// Output of [`GET_PARTITION_STATS`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PartitionStats {
    /// 0 created, 1 initialized, 2 finalized.
    pub state: u32,
    /// VPs.
    pub vp_count: u32,
    /// Root pages mapped into it.
    pub mapped_pages: u64,
    /// All exits.
    pub total_exits: u64,
    /// Exits by reason ([`EXIT_REASONS`]).
    pub exits: [u64; EXIT_REASON_COUNT],
    /// Exceptions hv-core injected into it.
    pub injected_exceptions: u64,
    /// Its hypercalls that did not succeed.
    pub failed_hypercalls: u64,
    /// Its GUEST_OS_ID.
    pub guest_os_id: u64,
    /// Entries into its VPs that flushed the TLB (the child ASID's entries
    /// were another VP's or made under an older NPT, or the VP's paging
    /// state was set from outside).
    pub tlb_flushes: u64,
}
const _: () = assert!(size_of::<PartitionStats>() == 8 * 7 + 8 * EXIT_REASON_COUNT);

/// HvPrivGetDmaGuard (root only): writes a [`DmaGuard`] to the output GPA.
/// Reports how hv-core keeps device DMA out of its region (the AMD IOMMU)
/// and the DMA canary, a page of hv-core's region filled with a known
/// pattern that no device may change (the `iommu` self-test aims a disk
/// read at it). Reading it also drains the IOMMU's event log.
pub const GET_DMA_GUARD: HvCallCode = HvCallCode(0xC004);

/// HvPrivGetReferenceTime (root only): input the child's partition id (8
/// bytes), output its partition reference time now (8 bytes, 100 ns units,
/// what its TIME_REF_COUNT MSR reads). The root stamps time-sync samples
/// with it (Linux `hv_util.c` `hv_get_adj_host_time` adds the reference
/// time elapsed since the sample). Hyper-V's host reads it inside the
/// hypervisor's partition; ours asks.
pub const GET_REFERENCE_TIME: HvCallCode = HvCallCode(0xC005);

/// HvPrivSignalAndDispatchVp (root only): the root's HvCallSignalEvent for
/// up to [`MAX_QUEUED_SIGNALS`] (connection, flag) pairs, then
/// HvCallDispatchVp, in one call. Input a [`SignalDispatchInput`] followed
/// by `signal_count` [`QueuedSignal`]s (one page at most, as every input);
/// output a [`SignalDispatchOutput`].
///
/// Why: hv-core runs on one CPU, so a child runs only inside the root's
/// DispatchVp, and an event the root signals to a child is seen by no one
/// before the root next dispatches one. Each HvCallSignalEvent is a world
/// switch out of the root and back; a device answering a child at once
/// (a completion, then the dispatch that lets the child take it) paid two
/// where one does. Hyper-V's root signals through the hypervisor from
/// another CPU while the child runs, and has no call like this.
///
/// Order and failures: the whole input is checked first (count, reserved
/// fields, the partition the dispatch names, the output), and nothing
/// happens if it is bad. Then each signal is made in input order exactly as
/// HvCallSignalEvent makes it; one that fails (no such connection) is
/// counted in the output and does not stop the others or the dispatch.
/// The dispatch then runs as HvCallDispatchVp would; if it fails, the call
/// returns its status (the signals were made).
pub const SIGNAL_AND_DISPATCH_VP: HvCallCode = HvCallCode(0xC006);

/// Most signals one [`SIGNAL_AND_DISPATCH_VP`] carries.
pub const MAX_QUEUED_SIGNALS: usize = 64;

/// Input header of [`SIGNAL_AND_DISPATCH_VP`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SignalDispatchInput {
    /// The dispatch, as HvCallDispatchVp takes it.
    pub dispatch: crate::partition::DispatchVpInput,
    /// [`QueuedSignal`]s following this header (at most [`MAX_QUEUED_SIGNALS`]).
    pub signal_count: u32,
    /// Must be 0.
    pub reserved: u32,
}
const _: () = assert!(size_of::<SignalDispatchInput>() == 40);

/// One signal of [`SIGNAL_AND_DISPATCH_VP`]: what a fast HvCallSignalEvent
/// carries in RDX.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct QueuedSignal {
    /// The connection to signal.
    pub connection_id: u32,
    /// The event flag to set.
    pub flag: u16,
    /// Must be 0.
    pub reserved: u16,
}
const _: () = assert!(size_of::<QueuedSignal>() == 8);

impl QueuedSignal {
    /// The fast HvCallSignalEvent input word for this signal.
    pub fn signal_event_input(&self) -> u64 {
        u64::from(self.connection_id) | (u64::from(self.flag) << 32) | (u64::from(self.reserved) << 48)
    }
}

/// Output of [`SIGNAL_AND_DISPATCH_VP`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SignalDispatchOutput {
    /// The dispatch's result, as HvCallDispatchVp writes it.
    pub dispatch: crate::partition::DispatchVpOutput,
    /// Signals that failed.
    pub signals_failed: u32,
    /// The status of the first that failed (0 if none did).
    pub first_failure: u16,
    /// 0.
    pub reserved: u16,
}
const _: () = assert!(size_of::<SignalDispatchOutput>() == 16);

/// [`DmaGuard::flags`]: the IOMMU translates every bus-0 device's DMA.
pub const DMA_GUARD_IOMMU_ENABLED: u64 = 1 << 0;

/// Output of [`GET_DMA_GUARD`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DmaGuard {
    /// [`DMA_GUARD_IOMMU_ENABLED`].
    pub flags: u64,
    /// Physical base of the IOMMU's MMIO registers (0: none found).
    pub iommu_mmio: u64,
    /// The IOMMU's PCI requester ID (bus << 8 | devfn).
    pub iommu_devid: u64,
    /// Physical address of the DMA canary page (inside hv-core's region).
    pub canary_pa: u64,
    /// FNV-1a of the canary page now.
    pub canary_fnv: u64,
    /// FNV-1a the canary page had when hv-core filled it.
    pub canary_expected_fnv: u64,
    /// IOMMU events logged since launch.
    pub events: u64,
    /// Of those, IO_PAGE_FAULTs.
    pub page_faults: u64,
    /// The last event's two quadwords as the IOMMU wrote them.
    pub last_event: [u64; 2],
    /// Times hv-core found Signaled Target Abort set in the IOMMU's PCI
    /// status, which the IOMMU sets when it refuses a DMA.
    pub target_aborts: u64,
}
const _: () = assert!(size_of::<DmaGuard>() == 11 * 8);

/// Private intercept-message types: hv-core's messages to the root on a VP's
/// intercept-message page where Hyper-V has no message of its own (its VM
/// worker learns of these through the VID driver instead). They live in
/// `0xC000_0000..=0xC000_00FF`, the call-code range's twin; Hyper-V defines
/// no message types there (its own are `0x8000_0000..=0x8002_FFFF`).
pub mod message_type {
    /// The private message-type range.
    pub const RANGE: core::ops::RangeInclusive<u32> = 0xC000_0000..=0xC000_00FF;
    /// A child wrote HV_X64_MSR_CRASH_CTL with CrashNotify: payload
    /// [`super::GuestCrash`]. The VP is stopped for good: it does not run
    /// again until HvPrivResetPartition (DispatchVp answers
    /// INVALID_VP_STATE; setting registers does not revive it).
    pub const GUEST_CRASH: u32 = 0xC000_0001;
}

/// Payload of [`message_type::GUEST_CRASH`] (88 bytes): the x64 intercept
/// header of the WRMSR (RIP already past it, access WRITE), the partition's
/// crash parameters P0-P4 and the value the guest wrote to CRASH_CTL. All
/// guest data, forwarded unchecked: P3/P4 (a message page's GPA and length
/// when CrashMessage is set) must be checked by whoever reads them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GuestCrash {
    /// Intercept header.
    pub header: crate::message::InterceptHeader,
    /// HV_X64_MSR_CRASH_P0..P4 as last written.
    pub parameters: [u64; 5],
    /// The CRASH_CTL value written (CrashNotify set; CrashMessage maybe).
    pub control: u64,
}
const _: () = assert!(size_of::<GuestCrash>() == 88);
const _: () = assert!(core::mem::offset_of!(GuestCrash, parameters) == 40);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_crash_round_trips_through_a_message() {
        let c = GuestCrash {
            parameters: [1, 2, 3, 0x1000, 42],
            control: crate::msr::CRASH_CTL_NOTIFY | crate::msr::CRASH_CTL_MESSAGE,
            ..Default::default()
        };
        let m = crate::message::Message::new(message_type::GUEST_CRASH, c.as_bytes());
        assert_eq!(m.header.payload_size as usize, size_of::<GuestCrash>());
        let back = GuestCrash::read_from_prefix(&m.payload).unwrap().0;
        assert_eq!(back.parameters, [1, 2, 3, 0x1000, 42]);
        assert_eq!(back.control >> 62, 0b11);
        assert!(message_type::RANGE.contains(&message_type::GUEST_CRASH));
    }

    #[test]
    fn a_queued_signal_is_the_signal_event_word() {
        let s = QueuedSignal {
            connection_id: 0x0123_4567,
            flag: 0x89,
            reserved: 0xAB,
        };
        let word = s.signal_event_input();
        assert_eq!(crate::synic::decode_signal_event(word), (0x0123_4567, 0x89, 0xAB));
        // The most signals fit one input page after the header.
        assert!(size_of::<SignalDispatchInput>() + MAX_QUEUED_SIGNALS * size_of::<QueuedSignal>() <= 4096);
        assert!(RANGE.contains(&SIGNAL_AND_DISPATCH_VP.0));
    }
}
