//! Child partitions: their lifecycle, memory (lent root pages mapped through
//! a per-child NPT), VPs (one VMCB each), register access, and running a VP
//! on the root's behalf until something needs the root (DispatchVp).
//!
//! A child sees nothing but its own pages: its NPT maps only what the root
//! lent it (each root page to one child at most), it intercepts every I/O
//! port, every MSR hv-core does not pass through, INTR (so the root's timer
//! always gets control back), HLT, shutdown and the SVM instructions.

use crate::ipc::{Bus, SynicMem, post_status};
use crate::memory::{self, ChildRam, GpaError, GuestMemory, RegionTables, RootRam};
use crate::platform::{PartitionTime, VpPlatform};
use crate::vcpu::{ExitStats, Outcome, SyntheticMsrs, Vcpu};
use crate::vmrun::{self, GuestRegs};
use core::sync::atomic::{AtomicU64, Ordering};
use hv1_abi::cpuid::{HvCpuidProfile, PartitionPrivileges};
use hv1_abi::hypercall::ClusterIpi;
use hv1_abi::message::{
    InterceptHeader, IoPortIntercept, MemoryIntercept, Message, access, execution_state, io_access,
    message_type,
};
use hv1_abi::partition::{
    DISPATCH_EVENT_INTERCEPT, DISPATCH_EVENT_NONE, DISPATCH_EVENT_SUSPEND, DISPATCH_STATE_BLOCKED,
    DISPATCH_STATE_READY, RegisterName, RegisterValue, SegmentRegister, TableRegister,
    VP_REGISTER_PAGE_VERSION_1, VpRegisterPage, dispatch_flags, internal_activity, map_flags,
};
use hv1_abi::private::{self, GuestCrash};
use hv1_abi::{HvCallCode, HvStatus, HypercallResult, msr};
use partitions::PartitionState;
use svm::insn::Intercepted;
use svm::vmcb::{EFER_SVME, NP_ENABLE, TLB_DO_NOTHING, TLB_FLUSH_ALL, event, intercept, msrpm, npf};
use svm::{ExitCode, Segment, Vmcb};
use synic::{PendingVectors, SynicVp};
use vlapic::{Ipi, IpiDelivery, Trigger};
use x86_64::registers::debug::{DebugAddressRegister, Dr0, Dr1, Dr2, Dr3};
use x86_paging::{MaxPage, PageTables, flags};
use zerocopy::{FromBytes, IntoBytes};

/// Most VPs per child.
pub const MAX_VPS: usize = 4;
/// A child's guest-physical space ends here (its worker maps 4 GiB of page tables).
pub const CHILD_GPA_LIMIT: u64 = 4 << 30;
/// Internal exits (CPUID, MSRs, hypercalls) handled in one dispatch before
/// hv-core hands control back to the root anyway.
const MAX_INTERNAL_EXITS: u32 = 100_000;

/// Pages shared by every child VP: an IOPM that intercepts every port and an
/// MSRPM that intercepts every MSR except those VMLOAD/VMSAVE switch.
#[derive(Debug, Clone, Copy)]
pub struct SharedMaps {
    /// IOPM (3 pages).
    pub iopm: u64,
    /// MSRPM (2 pages).
    pub msrpm: u64,
}

impl SharedMaps {
    /// Build them in hv-core's region.
    pub fn new() -> Self {
        let iopm = memory::alloc_pages(3).expect("room for the child IOPM");
        let msrpm_pa = memory::alloc_pages(2).expect("room for the child MSRPM");
        // SAFETY: fresh pages of hv-core's region, exclusively ours.
        unsafe {
            core::ptr::write_bytes(iopm as *mut u8, 0xFF, 3 * 4096);
            core::ptr::write_bytes(msrpm_pa as *mut u8, 0xFF, 2 * 4096);
        }
        // SAFETY: as above; two pages, exactly `msrpm::SIZE` bytes.
        let map: &mut [u8; msrpm::SIZE] = unsafe { &mut *(msrpm_pa as *mut [u8; msrpm::SIZE]) };
        // FS/GS/KernelGS bases, STAR/LSTAR/CSTAR/SFMASK and SYSENTER_* are
        // switched per guest by VMLOAD/VMSAVE: the child owns them outright.
        for m in [
            0xC000_0100,
            0xC000_0101,
            0xC000_0102,
            0xC000_0081,
            0xC000_0082,
            0xC000_0083,
            0xC000_0084,
            0x174,
            0x175,
            0x176,
        ] {
            if let Some((byte, bit)) = msrpm::position(m) {
                map[byte] &= !(0b11 << bit);
            }
        }
        Self {
            iopm,
            msrpm: msrpm_pa,
        }
    }
}

/// One virtual processor.
pub struct Vp {
    vmcb_pa: u64,
    /// FXSAVE area (x87/SSE/MXCSR), switched with the root's around a run.
    fx_pa: u64,
    /// DR0–DR3 (DR6/DR7 live in the VMCB).
    debug: [u64; 4],
    /// GPRs other than RAX/RSP.
    pub regs: GuestRegs,
    /// EFER as the guest sees it.
    pub guest_efer: u64,
    /// Its SynIC.
    synic: SynicVp,
    /// SynIC vectors waiting to be injected.
    pending: PendingVectors,
    /// Root page receiving this VP's intercept messages.
    pub message_page: Option<u64>,
    /// Root page holding its registers while it is stopped at an intercept
    /// (HV_VP_STATE_PAGE_REGISTERS, [`VpRegisterPage`]).
    register_page: Option<u64>,
    /// Reset since the root last saw its registers: what the register page
    /// holds (and any change the root wrote there) is void.
    register_page_void: bool,
    /// Stopped at an intercept until the root dispatches with
    /// CLEAR_INTERCEPT_SUSPEND.
    pub intercept_suspended: bool,
    /// HV_REGISTER_EXPLICIT_SUSPEND.
    pub explicit_suspend: bool,
    /// Cannot run until the root sets its registers again (triple fault,
    /// invalid state).
    pub unrecoverable: bool,
    /// Reported a guest crash (CRASH_CTL with CrashNotify): stopped until
    /// the partition is reset (setting registers does not revive it).
    pub crashed: bool,
    /// HV_X64_MSR_VP_ASSIST_PAGE.
    vp_assist: u64,
    /// Its local APIC, synthetic timers and halt state.
    platform: VpPlatform,
    /// Waiting for a Startup IPI (InternalActivityState StartupSuspend):
    /// an application processor the root left for the guest to start, or
    /// one that took an INIT. Not entered until a SIPI arrives.
    startup_suspended: bool,
    /// The start page of a SIPI received while startup-suspended; the next
    /// dispatch starts the VP there in real mode.
    sipi_vector: Option<u8>,
}

impl Vp {
    /// Load the registers the root changed in the register page (its
    /// `dirty` classes: GENERAL, IP and FLAGS; XMM and SEGMENT are not
    /// kept here and are refused), then mark the page stale: the VP runs.
    fn load_register_page(&mut self, root: &RootRam) -> ChildResult<()> {
        use hv1_abi::partition::register_class as class;
        let Some(page) = self.register_page else {
            return Ok(());
        };
        let mut bytes = [0u8; size_of::<VpRegisterPage>()];
        root.read(page, &mut bytes, 8)
            .map_err(|_| HvStatus::INVALID_PARAMETER)?;
        let r = VpRegisterPage::read_from_bytes(&bytes).map_err(|_| HvStatus::INVALID_PARAMETER)?;
        let stale = VpRegisterPage {
            version: VP_REGISTER_PAGE_VERSION_1,
            isvalid: 0,
            rsvdz: 0,
            dirty: 0,
            ..r
        };
        let mark_stale = || {
            root.write(page, &stale.as_bytes()[..8], 8)
                .map_err(|_| HvStatus::INVALID_PARAMETER)
        };
        // Registers written for the VP before a reset are not loaded into it.
        if core::mem::take(&mut self.register_page_void) || r.dirty == 0 {
            return if r.isvalid != 0 || r.dirty != 0 {
                mark_stale()
            } else {
                Ok(())
            };
        }
        if r.version != VP_REGISTER_PAGE_VERSION_1
            || r.dirty & !(class::GENERAL | class::IP | class::FLAGS) != 0
        {
            return Err(HvStatus::INVALID_PARAMETER);
        }
        if r.dirty & class::GENERAL != 0 {
            for (n, &value) in r.gp_registers.iter().enumerate() {
                self.regs.set(n as u8, value);
            }
            let s = &mut self.vmcb().save;
            s.rax = r.gp_registers[0];
            s.rsp = r.gp_registers[4];
        }
        if r.dirty & class::IP != 0 {
            self.vmcb().save.rip = r.rip;
        }
        if r.dirty & class::FLAGS != 0 {
            // Bit 1 is fixed to 1, as HvCallSetVpRegisters keeps it.
            self.vmcb().save.rflags = r.rflags | 2;
        }
        mark_stale()
    }

    /// Leave the stopped VP's registers in its register page, if it has one.
    fn store_register_page(&mut self, root: &RootRam) {
        let Some(page) = self.register_page else {
            return;
        };
        let s = &self.vmcb_ref().save;
        let (rax, rsp, rip, rflags) = (s.rax, s.rsp, s.rip, s.rflags);
        let mut gp_registers = [0u64; 16];
        for (n, slot) in gp_registers.iter_mut().enumerate() {
            *slot = self.regs.get(n as u8);
        }
        gp_registers[0] = rax;
        gp_registers[4] = rsp;
        let r = VpRegisterPage {
            version: VP_REGISTER_PAGE_VERSION_1,
            isvalid: 1,
            rsvdz: 0,
            dirty: 0,
            gp_registers,
            rip,
            rflags,
        };
        // The page is pinned root RAM (checked when it was mapped): a
        // failure here would be hv-core's bug; the root then sees
        // `isvalid` 0 and sets registers by hypercall.
        let _ = root.write(page, r.as_bytes(), 8);
    }

    /// Whether a dispatch could run it now: started, not suspended or
    /// stopped, and not halted unless an interrupt waits for it.
    fn may_run(&self) -> bool {
        let waits_for_sipi = self.startup_suspended && self.sipi_vector.is_none();
        let halted_for_good = self.platform.halted
            && self.platform.apic.pending().is_none()
            && self.pending.highest().is_none();
        !(waits_for_sipi || self.explicit_suspend || self.unrecoverable || self.crashed || halted_for_good)
    }

    /// Return its pages (and the pins on its message and register pages).
    fn free(self) {
        if let Some(page) = self.message_page {
            memory::unpin(page);
        }
        if let Some(page) = self.register_page {
            memory::unpin(page);
        }
        memory::free_pages(self.vmcb_pa, 1);
        memory::free_pages(self.fx_pa, 1);
    }

    fn vmcb_ref(&self) -> &Vmcb {
        // SAFETY: as in `vmcb`; shared, for as long as `self` is.
        unsafe { &*(self.vmcb_pa as *const Vmcb) }
    }

    fn vmcb(&mut self) -> &mut Vmcb {
        // SAFETY: `vmcb_pa` is this VP's VMCB page in hv-core's region; the
        // borrow of `self` makes this the only reference.
        unsafe { &mut *(self.vmcb_pa as *mut Vmcb) }
    }

    /// Power-on state for everything a guest could have changed: registers
    /// (the architectural reset state), x87/SSE, debug registers, SynIC,
    /// APIC and timers, suspend states. Used for a partition reset and for
    /// an INIT IPI.
    fn reset(&mut self, maps: &SharedMaps, npt_root: u64, asid: u32) {
        init_vmcb(self.vmcb(), maps, npt_root, asid);
        // SAFETY: the VP's own FXSAVE page in hv-core's region; the VP is
        // not running (one CPU, and hv-core is outside its dispatch).
        unsafe { core::ptr::write_bytes(self.fx_pa as *mut u8, 0, 4096) };
        init_fx_area(self.fx_pa);
        self.debug = [0; 4];
        self.regs = GuestRegs::default();
        self.guest_efer = 0;
        self.synic.reset();
        self.pending = PendingVectors::new();
        self.intercept_suspended = false;
        self.explicit_suspend = false;
        self.unrecoverable = false;
        self.crashed = false;
        self.vp_assist = 0;
        self.platform.reset();
        self.startup_suspended = false;
        self.sipi_vector = None;
        self.register_page_void = true;
    }

    /// A Startup IPI's effect (SDM vol. 3A §8.4.4.1, "typical AP
    /// initialization"): real mode, CS = vector << 8 (base vector << 12),
    /// IP 0; everything else stays as reset/INIT left it.
    fn start_at_sipi(&mut self, vector: u8) {
        let s = &mut self.vmcb().save;
        s.cs.selector = u16::from(vector) << 8;
        s.cs.base = u64::from(vector) << 12;
        s.rip = 0;
        self.startup_suspended = false;
        self.platform.halted = false;
    }
}

/// A child partition.
pub struct Child {
    /// Lifecycle.
    pub state: PartitionState,
    npt: Option<PageTables<RegionTables>>,
    vps: [Option<Vp>; MAX_VPS],
    /// Synthetic MSRs.
    pub msrs: SyntheticMsrs,
    /// Partition property SUSPEND.
    pub suspended: bool,
    /// Partition property UNIMPLEMENTED_MSR_ACTION (1 = ignore).
    pub ignore_unknown_msrs: bool,
    /// Root pages lent to it.
    pub mapped_pages: u64,
    /// Exit counters.
    pub stats: ExitStats,
    /// Refusals logged (rate limit).
    logged: u32,
    /// IOPM/MSRPM shared by all child VPs.
    maps: SharedMaps,
    /// ASID its VPs run with.
    asid: u32,
    /// What its VPs' TLB entries were made from, as [`ChildAsid`] compares
    /// it: renewed whenever its NPT changes.
    tlb_epoch: u64,
    /// Reference time (TIME_REF_COUNT, the reference TSC page).
    time: PartitionTime,
    /// Private property SIGNAL_GRACE.
    pub signal_grace: bool,
}

/// Why an operation on a child failed.
pub type ChildResult<T> = Result<T, HvStatus>;

impl Child {
    /// A freshly created partition (its creation flags were validated by the
    /// caller). Children share ASID 2; an entry flushes it only when its
    /// entries may belong to something else ([`ChildAsid`]).
    pub fn new(maps: SharedMaps) -> Self {
        Self {
            logged: 0,
            maps,
            asid: 2,
            tlb_epoch: ChildAsid::new_epoch(),
            state: PartitionState::Created,
            npt: None,
            vps: [const { None }; MAX_VPS],
            msrs: SyntheticMsrs::default(),
            suspended: false,
            ignore_unknown_msrs: false,
            mapped_pages: 0,
            stats: ExitStats::default(),
            time: PartitionTime::new(),
            signal_grace: false,
        }
    }

    /// Privileges a child gets: the guest interface, nothing to manage
    /// others (no AccessVpRunTimeReg: see `PartitionPrivileges::ROOT`).
    /// The time enlightenments are `platform`'s: TIME_REF_COUNT,
    /// REFERENCE_TSC, the frequency MSRs, the synthetic timers (message mode
    /// only: direct mode is not offered) and TSC_INVARIANT_CONTROL.
    /// AccessIntrCtrlRegs (HV_X64_MSR_EOI/ICR/TPR) is not offered: the APIC
    /// is reached through its own MSRs and page.
    pub const PRIVILEGES: PartitionPrivileges = PartitionPrivileges::ACCESS_HYPERCALL_MSRS
        .union(PartitionPrivileges::ACCESS_VP_INDEX)
        .union(PartitionPrivileges::ACCESS_SYNIC_REGS)
        .union(PartitionPrivileges::POST_MESSAGES)
        .union(PartitionPrivileges::SIGNAL_EVENTS)
        .union(PartitionPrivileges::ACCESS_PARTITION_REFERENCE_COUNTER)
        .union(PartitionPrivileges::ACCESS_PARTITION_REFERENCE_TSC)
        .union(PartitionPrivileges::ACCESS_FREQUENCY_REGS)
        .union(PartitionPrivileges::ACCESS_SYNTHETIC_TIMER_REGS)
        .union(PartitionPrivileges::ACCESS_TSC_INVARIANT_CONTROLS)
        .union(PartitionPrivileges::ACCESS_GUEST_IDLE_REG);

    /// CPUID 0x4000_0004 EAX: IPIs through HvCallSendSyntheticClusterIpi.
    /// With AccessGuestIdleReg this turns on Linux's paravirtual spinlocks
    /// (`hv_spinlock.c`): a VP that waits for a lock reads
    /// HV_X64_MSR_GUEST_IDLE and idles, so the root runs its siblings (the
    /// holder among them) instead of letting it spin to the end of its
    /// slice, and the holder's unlock kicks it with a synthetic IPI.
    pub const HINTS: u32 = hv1_abi::cpuid::hints::CLUSTER_IPI_RECOMMENDED;

    /// CPUID 0x4000_0003 EDX: the frequency MSRs can be read (Linux needs
    /// this with AccessFrequencyRegs to take the TSC and APIC timer rates
    /// from them instead of calibrating against a PIT a child lacks), and
    /// the guest crash MSRs (a panic is reported to the root, which stops
    /// the child: `private::message_type::GUEST_CRASH`).
    pub const FEATURES: u32 = hv1_abi::cpuid::features::FREQUENCY_MSRS_AVAILABLE
        | hv1_abi::cpuid::features::GUEST_CRASH_MSR_AVAILABLE;

    /// HvCallInitializePartition: build the (empty) NPT.
    pub fn initialize(&mut self) -> ChildResult<()> {
        let next = self.state.initialize().map_err(|e| e.status())?;
        let npt = PageTables::new(RegionTables).map_err(|_| HvStatus::INSUFFICIENT_MEMORY)?;
        self.npt = Some(npt);
        self.tlb_epoch = ChildAsid::new_epoch();
        self.state = next;
        Ok(())
    }

    /// HvCallFinalizePartition: stop for good, return every lent page and VMCB.
    pub fn finalize(&mut self) -> ChildResult<()> {
        self.state = self.state.finalize().map_err(|e| e.status())?;
        self.release();
        Ok(())
    }

    /// Free everything (also used when deleting).
    pub fn release(&mut self) {
        if let Some(npt) = self.npt.take() {
            npt.teardown(|_, spa, size| {
                let mut page = spa;
                while page < spa + size {
                    memory::unlend(page);
                    page += 4096;
                }
            });
        }
        self.mapped_pages = 0;
        for slot in self.vps.iter_mut() {
            if let Some(vp) = slot.take() {
                vp.free();
            }
        }
    }

    /// HvPrivResetPartition: power-on state for everything hv-core keeps
    /// for the partition that a guest could have changed (a VM reset). The
    /// root-owned configuration stays: memory map, VPs and their message
    /// pages, ports, properties other than SUSPEND, exit counters.
    pub fn reset(&mut self) -> ChildResult<()> {
        self.state.check_active("reset").map_err(|e| e.status())?;
        let npt_root = self.npt.as_ref().ok_or(HvStatus::INVALID_PARTITION_STATE)?.root();
        let (maps, asid) = (self.maps, self.asid);
        for vp in self.vps.iter_mut().flatten() {
            vp.reset(&maps, npt_root, asid);
        }
        self.msrs = SyntheticMsrs::default();
        self.time.reset();
        self.suspended = false;
        self.logged = 0;
        Ok(())
    }

    fn vp_mut(&mut self, index: u32) -> ChildResult<&mut Vp> {
        self.vps
            .get_mut(index as usize)
            .and_then(Option::as_mut)
            .ok_or(HvStatus::INVALID_VP_INDEX)
    }

    /// The partition's reference time now (100 ns units).
    pub fn reference_time(&self) -> u64 {
        self.time.reference_now()
    }

    /// Number of VPs.
    pub fn vp_count(&self) -> u32 {
        self.vps.iter().flatten().count() as u32
    }

    /// The guest memory view hv-core uses for this child.
    pub fn ram(&self) -> Option<ChildRam> {
        self.npt.as_ref().map(|npt| ChildRam { npt_root: npt.root() })
    }

    /// Deliver a message to VP `index`'s SynIC (a root-to-child port).
    pub fn synic_post(&mut self, index: u32, sint: usize, message: &Message) -> ChildResult<()> {
        let ram = self.ram().ok_or(HvStatus::INVALID_PARTITION_STATE)?;
        let vp = self.vp_mut(index)?;
        let bytes: &[u8; 256] = zerocopy::transmute_ref!(message);
        let d = vp
            .synic
            .post(sint, bytes, &mut SynicMem(&ram))
            .map_err(post_status)?;
        if let Some(vector) = d.interrupt {
            vp.pending.set(vector);
        }
        Ok(())
    }

    /// Set an event flag on VP `index`'s SynIC (a root-to-child event port).
    pub fn synic_signal(&mut self, index: u32, sint: usize, flag: u32) -> ChildResult<()> {
        let ram = self.ram().ok_or(HvStatus::INVALID_PARTITION_STATE)?;
        let vp = self.vp_mut(index)?;
        let d = vp
            .synic
            .signal(sint, flag, &mut SynicMem(&ram))
            .map_err(post_status)?;
        if let Some(vector) = d.interrupt {
            vp.pending.set(vector);
        }
        Ok(())
    }

    /// HvCallAssertVirtualInterrupt, checked: an edge-triggered `vector`
    /// for the APICs `destination` names (physical or logical, in each
    /// APIC's own mode: `Vlapic::matches_destination`), or for the first of
    /// them that takes it when `lowest` (lowest priority). A halted VP
    /// wakes at its next dispatch. Interrupts only reach a running
    /// partition.
    pub fn assert_interrupt(
        &mut self,
        destination: u32,
        logical: bool,
        vector: u8,
        lowest: bool,
    ) -> ChildResult<()> {
        self.state
            .check_active("assert an interrupt")
            .map_err(|e| e.status())?;
        for vp in self.vps.iter_mut().flatten() {
            if vp.platform.apic.matches_destination(destination, logical)
                && vp.platform.apic.request(vector, Trigger::Edge)
                && lowest
            {
                break;
            }
        }
        Ok(())
    }

    /// One rep of HvCallMapGpaPages: lend root page `source_pfn` at child GFN `gfn`.
    pub fn map_page(
        &mut self,
        gfn: u64,
        source_pfn: u64,
        map_flags_value: u32,
        root: &RootRam,
    ) -> ChildResult<()> {
        self.state.check_active("map").map_err(|e| e.status())?;
        if map_flags_value & !map_flags::SUPPORTED != 0 || map_flags_value & map_flags::READABLE == 0 {
            return Err(HvStatus::INVALID_PARAMETER);
        }
        let gpa = gfn
            .checked_mul(4096)
            .filter(|&g| g < CHILD_GPA_LIMIT)
            .ok_or(HvStatus::INVALID_PARAMETER)?;
        let spa = source_pfn.checked_mul(4096).ok_or(HvStatus::INVALID_PARAMETER)?;
        // The source must be the root's RAM (never hv-core's region, never MMIO).
        root.check(spa, 4096, 4096)
            .map_err(|_| HvStatus::INVALID_PARAMETER)?;
        let npt = self.npt.as_mut().ok_or(HvStatus::INVALID_PARTITION_STATE)?;
        if npt.translate(gpa).is_ok() {
            return Err(HvStatus::INVALID_PARAMETER);
        }
        // One owner per page: a page already lent (to any child) is refused.
        if !memory::lend(spa) {
            return Err(HvStatus::INVALID_PARAMETER);
        }
        let mut leaf = flags::PRESENT | flags::USER;
        if map_flags_value & map_flags::WRITABLE != 0 {
            leaf |= flags::WRITABLE;
        }
        if map_flags_value & map_flags::EXECUTABLE == 0 {
            leaf |= flags::NO_EXECUTE;
        }
        if let Err(e) = npt.map(gpa, spa, 4096, leaf, MaxPage::Size4K) {
            memory::unlend(spa);
            return Err(match e {
                x86_paging::MapError::OutOfTables => HvStatus::INSUFFICIENT_MEMORY,
                _ => HvStatus::INVALID_PARAMETER,
            });
        }
        self.mapped_pages += 1;
        self.tlb_epoch = ChildAsid::new_epoch();
        Ok(())
    }

    /// One rep of HvCallUnmapGpaPages.
    pub fn unmap_page(&mut self, gfn: u64) -> ChildResult<()> {
        self.state.check_active("unmap").map_err(|e| e.status())?;
        let gpa = gfn
            .checked_mul(4096)
            .filter(|&g| g < CHILD_GPA_LIMIT)
            .ok_or(HvStatus::INVALID_PARAMETER)?;
        let npt = self.npt.as_mut().ok_or(HvStatus::INVALID_PARTITION_STATE)?;
        let spa = npt.unmap_4k(gpa).map_err(|_| HvStatus::INVALID_PARAMETER)?;
        memory::unlend(spa);
        self.mapped_pages -= 1;
        // Its VPs may hold translations to the page: none may survive.
        self.tlb_epoch = ChildAsid::new_epoch();
        Ok(())
    }

    /// HvCallCreateVp: a VP in the architectural reset state.
    pub fn create_vp(&mut self, index: u32) -> ChildResult<()> {
        self.state.check_active("create vp").map_err(|e| e.status())?;
        let slot = self
            .vps
            .get_mut(index as usize)
            .ok_or(HvStatus::INVALID_VP_INDEX)?;
        if slot.is_some() {
            return Err(HvStatus::INVALID_VP_STATE);
        }
        let npt_root = self.npt.as_ref().ok_or(HvStatus::INVALID_PARTITION_STATE)?.root();
        let vmcb_pa = memory::alloc_pages(1).ok_or(HvStatus::INSUFFICIENT_MEMORY)?;
        let Some(fx_pa) = memory::alloc_pages(1) else {
            memory::free_pages(vmcb_pa, 1);
            return Err(HvStatus::INSUFFICIENT_MEMORY);
        };
        init_fx_area(fx_pa);
        let mut vp = Vp {
            vmcb_pa,
            fx_pa,
            debug: [0; 4],
            regs: GuestRegs::default(),
            guest_efer: 0,
            synic: SynicVp::new(),
            pending: PendingVectors::new(),
            message_page: None,
            register_page: None,
            register_page_void: false,
            intercept_suspended: false,
            explicit_suspend: false,
            unrecoverable: false,
            crashed: false,
            vp_assist: 0,
            platform: VpPlatform::new(index),
            startup_suspended: false,
            sipi_vector: None,
        };
        init_vmcb(vp.vmcb(), &self.maps, npt_root, self.asid);
        *slot = Some(vp);
        Ok(())
    }

    /// HvCallDeleteVp.
    pub fn delete_vp(&mut self, index: u32) -> ChildResult<()> {
        let slot = self
            .vps
            .get_mut(index as usize)
            .ok_or(HvStatus::INVALID_VP_INDEX)?;
        let vp = slot.take().ok_or(HvStatus::INVALID_VP_INDEX)?;
        vp.free();
        Ok(())
    }

    /// HvCallMapVpStatePage with a root-provided page for intercept messages
    /// (`None`: unmap).
    pub fn set_message_page(&mut self, index: u32, page: Option<u64>) -> ChildResult<()> {
        repin(&mut self.vp_mut(index)?.message_page, page)
    }

    /// HvCallMapVpStatePage / HvCallUnmapVpStatePage with
    /// HV_VP_STATE_PAGE_REGISTERS: the root page where hv-core leaves the
    /// VP's registers at each intercept and from which the next dispatch
    /// loads those the root changed.
    pub fn set_register_page(&mut self, index: u32, page: Option<u64>) -> ChildResult<()> {
        repin(&mut self.vp_mut(index)?.register_page, page)
    }

    /// One register of HvCallGetVpRegisters.
    pub fn get_register(&mut self, index: u32, name: RegisterName) -> ChildResult<RegisterValue> {
        let msrs = self.msrs;
        let vp = self.vp_mut(index)?;
        let (explicit, intercept_suspended, efer, regs) = (
            vp.explicit_suspend,
            vp.intercept_suspended,
            vp.guest_efer,
            vp.regs,
        );
        let activity = if vp.startup_suspended {
            internal_activity::STARTUP_SUSPEND
        } else {
            0
        };
        let v = vp.vmcb();
        let s = &v.save;
        let r64 = |x: u64| RegisterValue { low: x, high: 0 };
        let seg = |g: &Segment| {
            let hv = SegmentRegister {
                base: g.base,
                limit: g.limit,
                selector: g.selector,
                attributes: SegmentRegister::attributes_from_svm(g.attrib),
            };
            let b = hv.as_bytes();
            RegisterValue {
                low: u64::from_le_bytes(b[..8].try_into().expect("8")),
                high: u64::from_le_bytes(b[8..].try_into().expect("8")),
            }
        };
        let table = |g: &Segment| {
            let t = TableRegister {
                pad: [0; 3],
                limit: g.limit as u16,
                base: g.base,
            };
            let b = t.as_bytes();
            RegisterValue {
                low: u64::from_le_bytes(b[..8].try_into().expect("8")),
                high: u64::from_le_bytes(b[8..].try_into().expect("8")),
            }
        };
        let value = match name {
            RegisterName::EXPLICIT_SUSPEND => r64(explicit as u64),
            RegisterName::INTERCEPT_SUSPEND => r64(intercept_suspended as u64),
            RegisterName::INTERNAL_ACTIVITY_STATE => r64(activity),
            RegisterName::RAX => r64(s.rax),
            RegisterName::RSP => r64(s.rsp),
            RegisterName::RIP => r64(s.rip),
            RegisterName::RFLAGS => r64(s.rflags),
            RegisterName(n @ 0x0002_0001..=0x0002_000F) => {
                r64(gpr(&regs, n).ok_or(HvStatus::INVALID_PARAMETER)?)
            }
            RegisterName::CR0 => r64(s.cr0),
            RegisterName::CR2 => r64(s.cr2),
            RegisterName::CR3 => r64(s.cr3),
            RegisterName::CR4 => r64(s.cr4),
            RegisterName::CR8 => r64((v.control.int_ctl & 0xF) as u64),
            RegisterName::DR6 => r64(s.dr6),
            RegisterName::DR7 => r64(s.dr7),
            RegisterName::ES => seg(&s.es),
            RegisterName::CS => seg(&s.cs),
            RegisterName::SS => seg(&s.ss),
            RegisterName::DS => seg(&s.ds),
            RegisterName::FS => seg(&s.fs),
            RegisterName::GS => seg(&s.gs),
            RegisterName::LDTR => seg(&s.ldtr),
            RegisterName::TR => seg(&s.tr),
            RegisterName::IDTR => table(&s.idtr),
            RegisterName::GDTR => table(&s.gdtr),
            RegisterName::EFER => r64((efer & !(1 << 10)) | (s.efer & (1 << 10))),
            RegisterName::KERNEL_GS_BASE => r64(s.kernel_gs_base),
            RegisterName::PAT => r64(s.g_pat),
            RegisterName::SYSENTER_CS => r64(s.sysenter_cs),
            RegisterName::SYSENTER_EIP => r64(s.sysenter_eip),
            RegisterName::SYSENTER_ESP => r64(s.sysenter_esp),
            RegisterName::STAR => r64(s.star),
            RegisterName::LSTAR => r64(s.lstar),
            RegisterName::CSTAR => r64(s.cstar),
            RegisterName::SFMASK => r64(s.sfmask),
            RegisterName::GUEST_OS_ID => r64(msrs.guest_os_id),
            RegisterName::VP_INDEX => r64(index as u64),
            _ => return Err(HvStatus::INVALID_PARAMETER),
        };
        Ok(value)
    }

    /// One register of HvCallSetVpRegisters. Values the CPU would refuse at
    /// VMRUN are caught there and reported as an intercept, not trusted here.
    pub fn set_register(&mut self, index: u32, name: RegisterName, value: RegisterValue) -> ChildResult<()> {
        let vp = self.vp_mut(index)?;
        let x = value.low;
        let to_seg = |value: RegisterValue| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&value.low.to_le_bytes());
            b[8..].copy_from_slice(&value.high.to_le_bytes());
            let hv = <SegmentRegister as zerocopy::FromBytes>::read_from_bytes(&b).expect("16 bytes");
            Segment {
                selector: hv.selector,
                attrib: SegmentRegister::attributes_to_svm(hv.attributes),
                limit: hv.limit,
                base: hv.base,
            }
        };
        let to_table = |value: RegisterValue| Segment {
            selector: 0,
            attrib: 0,
            limit: ((value.low >> 48) & 0xFFFF) as u32,
            base: value.high,
        };
        match name {
            RegisterName::EXPLICIT_SUSPEND => vp.explicit_suspend = x & 1 != 0,
            RegisterName::INTERCEPT_SUSPEND => vp.intercept_suspended = x & 1 != 0,
            // The root starts a guest's application processors this way: they
            // wait for the guest's INIT-SIPI (Linux `wakeup_secondary_cpu_via_init`).
            RegisterName::INTERNAL_ACTIVITY_STATE => {
                if x & !internal_activity::SUPPORTED != 0 || value.high != 0 {
                    return Err(HvStatus::INVALID_PARAMETER);
                }
                vp.startup_suspended = x & internal_activity::STARTUP_SUSPEND != 0;
                vp.sipi_vector = None;
            }
            RegisterName(n @ 0x0002_0001..=0x0002_000F) if n != RegisterName::RSP.0 => {
                *gpr_mut(&mut vp.regs, n).ok_or(HvStatus::INVALID_PARAMETER)? = x
            }
            RegisterName::EFER => {
                if x & !crate::vcpu::efer_allowed() != 0 {
                    return Err(HvStatus::INVALID_REGISTER_VALUE);
                }
                vp.guest_efer = x & !EFER_SVME;
                vp.vmcb().save.efer = x | EFER_SVME;
                vp.vmcb().control.tlb_control = TLB_FLUSH_ALL;
            }
            _ => {
                let v = vp.vmcb();
                // New paging state from the root: the VP's TLB entries
                // were made under the old one.
                if matches!(name, RegisterName::CR0 | RegisterName::CR3 | RegisterName::CR4) {
                    v.control.tlb_control = TLB_FLUSH_ALL;
                }
                let s = &mut v.save;
                match name {
                    RegisterName::RAX => s.rax = x,
                    RegisterName::RSP => s.rsp = x,
                    RegisterName::RIP => s.rip = x,
                    RegisterName::RFLAGS => s.rflags = x | 2,
                    RegisterName::CR0 => s.cr0 = x,
                    RegisterName::CR2 => s.cr2 = x,
                    RegisterName::CR3 => s.cr3 = x,
                    RegisterName::CR4 => {
                        if x & !crate::vcpu::cr4_allowed() != 0 {
                            return Err(HvStatus::INVALID_REGISTER_VALUE);
                        }
                        s.cr4 = x
                    }
                    RegisterName::CR8 => v.control.int_ctl = (v.control.int_ctl & !0xF) | (x as u32 & 0xF),
                    RegisterName::DR6 => s.dr6 = x,
                    RegisterName::DR7 => s.dr7 = x,
                    RegisterName::ES => s.es = to_seg(value),
                    RegisterName::CS => {
                        s.cs = to_seg(value);
                    }
                    RegisterName::SS => {
                        s.ss = to_seg(value);
                        // QEMU takes CPL from SS.DPL; keep the VMCB field equal.
                        s.cpl = s.ss.dpl();
                    }
                    RegisterName::DS => s.ds = to_seg(value),
                    RegisterName::FS => s.fs = to_seg(value),
                    RegisterName::GS => s.gs = to_seg(value),
                    RegisterName::LDTR => s.ldtr = to_seg(value),
                    RegisterName::TR => s.tr = to_seg(value),
                    RegisterName::IDTR => s.idtr = to_table(value),
                    RegisterName::GDTR => s.gdtr = to_table(value),
                    RegisterName::KERNEL_GS_BASE => s.kernel_gs_base = x,
                    RegisterName::PAT => s.g_pat = x,
                    RegisterName::SYSENTER_CS => s.sysenter_cs = x,
                    RegisterName::SYSENTER_EIP => s.sysenter_eip = x,
                    RegisterName::SYSENTER_ESP => s.sysenter_esp = x,
                    RegisterName::STAR => s.star = x,
                    RegisterName::LSTAR => s.lstar = x,
                    RegisterName::CSTAR => s.cstar = x,
                    RegisterName::SFMASK => s.sfmask = x,
                    _ => return Err(HvStatus::INVALID_PARAMETER),
                }
            }
        }
        // New state: the VP may run again.
        vp.unrecoverable = false;
        Ok(())
    }

    /// HvCallDispatchVp: run VP `index` until something needs the root.
    /// Returns (dispatch state, dispatch event).
    pub fn dispatch(
        &mut self,
        id: u64,
        index: u32,
        flags_value: u32,
        root: &RootRam,
        bus: &mut Bus,
        host_save: u64,
    ) -> ChildResult<(u32, u32)> {
        self.state.check_active("dispatch").map_err(|e| e.status())?;
        if flags_value
            & !(dispatch_flags::CLEAR_INTERCEPT_SUSPEND
                | dispatch_flags::ENABLE_CALLER_INTERRUPTS
                | dispatch_flags::SPECULATION_MASK)
            != 0
        {
            return Err(HvStatus::INVALID_PARAMETER);
        }
        let ram = self.ram().ok_or(HvStatus::INVALID_PARTITION_STATE)?;
        let suspended = self.suspended;
        let ignore_unknown_msrs = self.ignore_unknown_msrs;
        let vp_count = self.vp_count();
        // A spin-wait (PAUSE) yields the CPU while a sibling could run: on
        // one CPU the VP it waits for (a lock holder, an IPI's target) runs
        // only when this dispatch ends.
        let yield_on_pause = self
            .vps
            .iter()
            .enumerate()
            .any(|(i, v)| i != index as usize && v.as_ref().is_some_and(Vp::may_run));
        let (msrs, stats, time) = (&mut self.msrs, &mut self.stats, &mut self.time);
        let vp = self
            .vps
            .get_mut(index as usize)
            .and_then(Option::as_mut)
            .ok_or(HvStatus::INVALID_VP_INDEX)?;
        let message_page = vp.message_page.ok_or(HvStatus::INVALID_VP_STATE)?;
        if vp.unrecoverable || vp.crashed {
            return Err(HvStatus::INVALID_VP_STATE);
        }
        vp.load_register_page(root)?;
        if vp.intercept_suspended {
            if flags_value & dispatch_flags::CLEAR_INTERCEPT_SUSPEND == 0 {
                return Ok((DISPATCH_STATE_BLOCKED, DISPATCH_EVENT_SUSPEND));
            }
            vp.intercept_suspended = false;
        }
        if vp.explicit_suspend || suspended {
            return Ok((DISPATCH_STATE_BLOCKED, DISPATCH_EVENT_SUSPEND));
        }
        // An application processor waiting for its Startup IPI stays
        // blocked until another VP sends one (`route_ipi`).
        if vp.startup_suspended {
            match vp.sipi_vector.take() {
                Some(vector) => vp.start_at_sipi(vector),
                None => return Ok((DISPATCH_STATE_BLOCKED, DISPATCH_EVENT_SUSPEND)),
            }
        }
        // A halted VP (the root completed its HLT, RIP is past it) runs
        // again only when an interrupt would wake it: timers are advanced
        // and SynIC vectors taken in first; otherwise it stays halted and
        // the root hears so again at once, without a VM entry. Same message,
        // instruction length 0: RIP is already past the HLT.
        if vp.platform.halted {
            vp.platform.refresh(time, &mut vp.synic, &mut vp.pending, &ram);
            if !vp.platform.wakes(vp.vmcb_ref(), &vp.pending) {
                vp.intercept_suspended = true;
                vp.store_register_page(root);
                return report_halt(root, message_page, vp.vmcb_ref(), index, 0);
            }
            vp.platform.halted = false;
            vp.platform.idle_ignores_if = false;
        }
        let profile = HvCpuidProfile {
            privileges: Self::PRIVILEGES,
            vp_count,
            lp_count: 1,
            features: Self::FEATURES,
            hints: Self::HINTS,
        };
        let shared = Shared {
            signal_grace: self.signal_grace,
            yield_on_pause,
            id,
            index,
            message_page,
            root,
            host_save,
            ram: &ram,
            profile,
            ignore_unknown_msrs,
            maps: &self.maps,
            asid: self.asid,
            tlb_epoch: self.tlb_epoch,
        };
        // State VMRUN does not switch: x87/SSE (FXSAVE) and DR0-DR3. The root's
        // is put aside for the whole dispatch (hv-core itself never uses it).
        let mut root_fx = FxArea::new();
        let root_debug = read_debug();
        // SAFETY: `root_fx` is a 16-byte-aligned 512-byte buffer; `vp.fx_pa` is
        // this VP's FXSAVE area in hv-core's region, initialised at creation.
        unsafe {
            fxsave(root_fx.0.as_mut_ptr());
            fxrstor(vp.fx_pa as *const u8);
        }
        write_debug(&vp.debug);
        let result = run_vp(vp, msrs, time, stats, &mut self.logged, &shared, bus);
        if result == Ok((DISPATCH_STATE_READY, DISPATCH_EVENT_INTERCEPT)) {
            vp.store_register_page(root);
        }
        vp.debug = read_debug();
        // SAFETY: as above, in the other direction.
        unsafe {
            fxsave(vp.fx_pa as *mut u8);
            fxrstor(root_fx.0.as_ptr());
        }
        write_debug(&root_debug);
        let outgoing = vp.platform.outgoing.take();
        let cluster = vp.platform.outgoing_cluster.take();
        if let Some(ipi) = outgoing {
            self.route_ipi(id, index, ipi);
        }
        if let Some(ipi) = cluster {
            self.deliver_cluster_ipi(ipi);
        }
        result
    }

    /// Request a synthetic cluster IPI's vector in each target VP's APIC
    /// (the sender's own share went in when it made the call). The mask was
    /// checked against the VP count; a VP slot that is empty (deleted since)
    /// gets nothing. A halted target wakes at its next dispatch.
    fn deliver_cluster_ipi(&mut self, ipi: ClusterIpi) {
        for (i, slot) in self.vps.iter_mut().enumerate() {
            let named = 1u64
                .checked_shl(i as u32)
                .is_some_and(|bit| ipi.targets & bit != 0);
            if let Some(vp) = slot.as_mut().filter(|_| named) {
                let _ = vp.platform.apic.request(ipi.vector, Trigger::Edge);
            }
        }
    }

    /// Deliver an IPI VP `from` sent to the VPs it names
    /// (`vlapic::route_ipi`: SDM vol. 3A §10.6, §8.4.4.1): vectors into
    /// their APICs (a halted VP wakes at its next dispatch), INIT resets an
    /// application processor to wait for a Startup IPI, a Startup IPI starts
    /// one that waits (and is ignored by any other); NMI, SMI and INIT to
    /// VP 0 are dropped and counted (`ipis_dropped`). Everything comes from
    /// the guest's ICR write as the vlapic decoded it; nothing indexes
    /// anything.
    fn route_ipi(&mut self, id: u64, from: u32, ipi: Ipi) {
        let Some(npt_root) = self.npt.as_ref().map(|n| n.root()) else {
            return;
        };
        let apics: [Option<&vlapic::Vlapic>; MAX_VPS] =
            core::array::from_fn(|i| self.vps[i].as_ref().map(|vp| &vp.platform.apic));
        let deliveries = vlapic::route_ipi(&ipi, from as usize, apics);
        let (maps, asid) = (self.maps, self.asid);
        let mut dropped = 0u64;
        for (slot, delivery) in self.vps.iter_mut().zip(deliveries) {
            let Some(vp) = slot.as_mut() else {
                continue;
            };
            match delivery {
                IpiDelivery::None => {}
                // Refused by an APIC that is disabled or for a vector below 16
                // (it sets ESR): as on hardware, nothing else happens.
                IpiDelivery::Interrupt { vector, trigger } => {
                    let _ = vp.platform.apic.request(vector, trigger);
                }
                IpiDelivery::Init => {
                    vp.reset(&maps, npt_root, asid);
                    vp.startup_suspended = true;
                }
                IpiDelivery::Startup(vector) => {
                    if vp.startup_suspended && vp.sipi_vector.is_none() {
                        vp.sipi_vector = Some(vector);
                    }
                }
                IpiDelivery::Dropped => dropped += 1,
            }
        }
        if dropped > 0
            && let Some(vp) = self.vps.get_mut(from as usize).and_then(Option::as_mut)
        {
            vp.platform.ipis_dropped += dropped;
            crate::vcpu::log_limited(
                &mut self.logged,
                id,
                format_args!("VP {from}: {:?} IPI not emulated: dropped", ipi.mode),
            );
        }
    }
}

/// The one ASID all child VPs run with, and whose TLB entries it holds.
///
/// An entry flushes only when the entries the CPU may hold for the ASID
/// could be wrong for the VP entering: they were made by another VP (a
/// sibling or another child: guest-virtual translations are per VP), or
/// under an NPT that has changed since (a page mapped or unmapped renews
/// the partition's epoch). State the CPU would have flushed for had it
/// executed the change itself (CR0/CR3/CR4/EFER written by the root or
/// emulated by hv-core, a rebuilt VMCB) sets TLB_CONTROL in that VP's VMCB
/// directly. Flushing on every entry, as hv-core did before, costs on
/// hardware a TLB refill per exit; under QEMU it cost a flush of the whole
/// soft TLB and jump cache per entry on top of the one its CR3 load makes
/// (`target/i386/tcg/sysemu/svm_helper.c` `helper_vmrun`).
struct ChildAsid;

/// Owner of the child ASID's TLB entries: `epoch << 8 | vp`, 0 for none.
static CHILD_ASID_OWNER: AtomicU64 = AtomicU64::new(0);
/// Source of epochs (one CPU: plain counting).
static TLB_EPOCHS: AtomicU64 = AtomicU64::new(1);

impl ChildAsid {
    /// A number no partition's TLB state had before.
    fn new_epoch() -> u64 {
        TLB_EPOCHS.fetch_add(1, Ordering::Relaxed)
    }

    /// VP `index` of the partition at `epoch` enters: whether the ASID's
    /// entries may be someone else's (the entry must flush). It owns them
    /// from now on.
    fn enter(epoch: u64, index: u32) -> bool {
        let owner = (epoch << 8) | u64::from(index);
        CHILD_ASID_OWNER.swap(owner, Ordering::Relaxed) != owner
    }
}

/// What a dispatch needs besides the VP itself.
struct Shared<'a> {
    /// SIGNAL_GRACE: a post or signal to the root ends the dispatch at
    /// the VP's next exit, not at once.
    signal_grace: bool,
    /// A sibling VP could run: a PAUSE (a spin-wait) ends the dispatch, so
    /// the root's scheduler runs the sibling, which is what the spinning VP
    /// most likely waits for (a lock it holds, an IPI it must take). Under
    /// QEMU every PAUSE exits; on hardware the VMCB's pause filter would
    /// make this pause-loop exiting. Without a sibling to run, a spinning
    /// VP has nothing to yield to and PAUSE runs unintercepted.
    yield_on_pause: bool,
    id: u64,
    index: u32,
    message_page: u64,
    root: &'a RootRam,
    host_save: u64,
    ram: &'a ChildRam,
    profile: HvCpuidProfile,
    ignore_unknown_msrs: bool,
    maps: &'a SharedMaps,
    asid: u32,
    tlb_epoch: u64,
}

/// Run the VP until something needs the root.
fn run_vp(
    vp: &mut Vp,
    msrs: &mut SyntheticMsrs,
    time: &mut PartitionTime,
    stats: &mut ExitStats,
    logged: &mut u32,
    sh: &Shared<'_>,
    bus: &mut Bus,
) -> ChildResult<(u32, u32)> {
    let (maps, asid) = (sh.maps, sh.asid);
    let (id, index) = (sh.id, sh.index);
    let vmcb_pa = vp.vmcb_pa;
    // PAUSE is intercepted when a sibling could run (`yield_on_pause`) and
    // inside a signal grace (below).
    if sh.yield_on_pause {
        vp.vmcb().control.intercept_misc1 |= intercept::PAUSE;
    } else {
        vp.vmcb().control.intercept_misc1 &= !intercept::PAUSE;
    }
    let mut in_grace = false;
    for _ in 0..MAX_INTERNAL_EXITS {
        // Children share an ASID: flush when its entries may be another's.
        if ChildAsid::enter(sh.tlb_epoch, index) {
            vp.vmcb().control.tlb_control = TLB_FLUSH_ALL;
        }
        if vp.vmcb_ref().control.tlb_control != TLB_DO_NOTHING {
            stats.tlb_flushes += 1;
        }
        // Timers and SynIC vectors up to date; an interrupt the VP can take
        // now goes in with this entry, one it cannot take opens a window.
        vp.platform.refresh(time, &mut vp.synic, &mut vp.pending, sh.ram);
        // SAFETY: as in `Vp::vmcb` (field borrows of `vp` are live, so the
        // helper method cannot be used here).
        let vmcb: &mut Vmcb = unsafe { &mut *(vmcb_pa as *mut Vmcb) };
        vp.platform.prepare_entry(vmcb, &mut vp.pending);
        // The VMCB was set up by `init_vmcb` in hv-core's region with the
        // shared IOPM/MSRPM and this child's NPT; it intercepts INTR with
        // V_INTR_MASKING, so running with the host's IF set is allowed (and a
        // physical interrupt always ends the run: no child can keep the CPU).
        // SAFETY: a complete VMCB (above) that this CPU alone runs.
        unsafe { vmrun::run(&mut vp.regs, vmcb_pa, sh.host_save, true) };
        // SAFETY: as in `Vp::vmcb`; `vp.regs` is borrowed separately below.
        let vmcb: &mut Vmcb = unsafe { &mut *(vmcb_pa as *mut Vmcb) };
        // Flushed, if it was asked for: the next entry flushes only if
        // something asks again.
        vmcb.control.tlb_control = TLB_DO_NOTHING;
        let code = ExitCode(vmcb.control.exit_code);
        stats.count(code, vmcb.control.exit_info1, vp.regs.rcx);
        // A CR8 write since the entry is the APIC's new TPR.
        vp.platform.sync_tpr_from(vmcb);
        // An exit during event delivery: deliver the event again on the next
        // entry unless this exit injects something of its own.
        let pending = vmcb.control.exit_int_info;
        if pending & event::VALID != 0 {
            vmcb.control.event_inj = pending;
            vmcb.control.event_inj_err = vmcb.control.exit_int_info_err;
        }
        let mut cpu = Vcpu {
            vmcb,
            regs: &mut vp.regs,
            guest_efer: &mut vp.guest_efer,
            mem: sh.ram,
            msrs: &mut *msrs,
            synic: &mut vp.synic,
            pending: &mut vp.pending,
            partition: id,
            vp_index: index,
            profile: sh.profile,
            ignore_unknown_msrs: sh.ignore_unknown_msrs,
            logged: &mut *logged,
            vp_assist: &mut vp.vp_assist,
            platform: Some((&mut vp.platform, &mut *time)),
        };
        let outcome = match code {
            c if c.is_invalid() => {
                crate::vcpu::log_limited(
                    cpu.logged,
                    id,
                    format_args!("VP {index}: VMRUN refused its state (VMEXIT_INVALID)"),
                );
                vp.unrecoverable = true;
                let mut payload = [0u8; 8];
                payload[..4].copy_from_slice(&index.to_le_bytes());
                let m = Message::new(message_type::INVALID_VP_REGISTER_VALUE, &payload);
                return deliver(sh.root, sh.message_page, &m);
            }
            ExitCode::INTR | ExitCode::NMI => return Ok((DISPATCH_STATE_READY, DISPATCH_EVENT_NONE)),
            // A spin-wait inside a signal grace: the VP waits for something,
            // most likely the root's answer. The grace ends; the PAUSE runs
            // again at the next entry (it has no effect to repeat).
            ExitCode::PAUSE if !sh.yield_on_pause => {
                cpu.vmcb.control.intercept_misc1 &= !intercept::PAUSE;
                return Ok((DISPATCH_STATE_READY, DISPATCH_EVENT_NONE));
            }
            // A spin-wait while a sibling could run: the PAUSE completes
            // (it has no effect to emulate) and the dispatch ends, so the
            // root runs the sibling; the loop goes on at the next dispatch.
            // The intercept stays: an entry here always makes progress.
            ExitCode::PAUSE => {
                if cpu.finish(Outcome::Advance(Intercepted::Pause)) {
                    stats.injected += 1;
                }
                return Ok((DISPATCH_STATE_READY, DISPATCH_EVENT_NONE));
            }
            // The interrupt window opened: the next entry injects.
            ExitCode::VINTR => {
                crate::platform::close_window(cpu.vmcb);
                continue;
            }
            ExitCode::CPUID => {
                let (leaf, subleaf) = (cpu.vmcb.save.rax as u32, cpu.regs.rcx as u32);
                let o = cpu.cpuid();
                // Features whose state hv-core does not switch per partition
                // are hidden here and refused in CR4 (`svm::cr`): MONITOR,
                // XSAVE/OSXSAVE, PKU, CET, LA57; leaf 0xD (XSAVE) is empty.
                match (leaf, subleaf) {
                    (1, _) => {
                        cpu.regs.rcx &= !(svm::cr::LEAF1_ECX_HIDDEN as u64);
                        // The virtual APIC (`platform`): APIC (EDX 9),
                        // x2APIC (ECX 21), TSC-deadline (ECX 24); the
                        // initial APIC id (EBX 31:24) is the VP index, as
                        // the APIC's id and leaf 0xB say.
                        cpu.regs.rdx |= 1 << 9;
                        cpu.regs.rcx |= (1 << 21) | (1 << 24);
                        // No machine-check architecture (MCE 7, MCA 14):
                        // its banks (MCG_CAP 0x179, ...) are not emulated,
                        // and Linux panics when they #GP.
                        cpu.regs.rdx &= !((1 << 7) | (1 << 14));
                        cpu.regs.rbx = (cpu.regs.rbx & 0x00FF_FFFF) | (u64::from(index) << 24);
                    }
                    // x2APIC topology (SDM vol. 2A CPUID leaf 0Bh/1Fh): one
                    // thread per core, `vp_count` cores; EDX the x2APIC id.
                    (0xB | 0x1F, level) => {
                        let (shift, count, kind) = match level {
                            0 => (0, 1, 1),
                            1 => (
                                32 - (sh.profile.vp_count.max(1) - 1).leading_zeros(),
                                sh.profile.vp_count,
                                2,
                            ),
                            _ => (0, 0, 0),
                        };
                        cpu.vmcb.save.rax = u64::from(shift);
                        cpu.regs.rbx = u64::from(count);
                        cpu.regs.rcx = u64::from((kind << 8) | (level & 0xFF));
                        cpu.regs.rdx = u64::from(index);
                    }
                    // AMD's copies of MCE/MCA (EDX 7, 14) hidden as in
                    // leaf 1; RDTSCP (EDX 27) reads TSC_AUX (0xC0000103),
                    // which is neither switched nor emulated.
                    (0x8000_0001, _) => cpu.regs.rdx &= !((1 << 7) | (1 << 14) | (1 << 27)),
                    // AMD extended APIC id (topology extensions).
                    (0x8000_001E, _) => {
                        cpu.vmcb.save.rax = u64::from(index);
                        cpu.regs.rbx = 0;
                        cpu.regs.rcx = 0;
                    }
                    // Invariant TSC (EDX 8) only once the guest asked for it
                    // through HV_X64_MSR_TSC_INVARIANT_CONTROL (TLFS; Linux
                    // 6.1 `mshyperv.c`).
                    (0x8000_0007, _) => {
                        let exposed = cpu
                            .platform
                            .as_ref()
                            .is_some_and(|(_, t)| t.tsc_invariant & 1 != 0);
                        if !exposed {
                            cpu.regs.rdx &= !(1 << 8);
                        }
                    }
                    (7, 0) => {
                        cpu.regs.rcx &= !(svm::cr::LEAF7_ECX_HIDDEN as u64);
                        // RDPID (ECX 22) reads TSC_AUX, which VMRUN does not
                        // switch: hidden with RDTSCP below.
                        cpu.regs.rcx &= !(1 << 22);
                        cpu.regs.rdx &= !(svm::cr::LEAF7_EDX_HIDDEN as u64);
                    }
                    (0xD, _) => {
                        cpu.vmcb.save.rax = 0;
                        cpu.regs.rbx = 0;
                        cpu.regs.rcx = 0;
                        cpu.regs.rdx = 0;
                    }
                    _ => {}
                }
                o
            }
            // HV_X64_MSR_GUEST_IDLE (Linux's paravirtual spinlock wait,
            // interrupts off): the read returns 0 and completes here; the VP
            // then idles unless an interrupt is already deliverable (a kick
            // that came before the read must not be lost). Idle, it goes to
            // the root as halted, so the root runs its siblings, and any
            // deliverable interrupt ends the idle whatever RFLAGS.IF says.
            ExitCode::MSR
                if cpu.vmcb.control.exit_info1 == 0
                    && cpu.regs.rcx as u32 == msr::GUEST_IDLE
                    && sh
                        .profile
                        .privileges
                        .contains(PartitionPrivileges::ACCESS_GUEST_IDLE_REG) =>
            {
                cpu.vmcb.save.rax = 0;
                cpu.regs.rdx = 0;
                if cpu.finish(Outcome::Advance(Intercepted::Rdmsr)) {
                    stats.injected += 1;
                    continue;
                }
                let Some((platform, time)) = cpu.platform.as_mut() else {
                    continue;
                };
                platform.refresh(time, cpu.synic, cpu.pending, sh.ram);
                if platform.deliverable(cpu.vmcb, cpu.pending) {
                    continue;
                }
                platform.halted = true;
                platform.idle_ignores_if = true;
                vp.intercept_suspended = true;
                return report_halt(sh.root, sh.message_page, cpu.vmcb, index, 0);
            }
            ExitCode::MSR if cpu.vmcb.control.exit_info1 == 0 => cpu.rdmsr(),
            ExitCode::MSR => cpu.wrmsr(),
            ExitCode::CR4_WRITE => cpu.mov_to_cr4(),
            ExitCode::VMMCALL if !cpu.hypercall_allowed() => Outcome::UD,
            // HvCallSendSyntheticClusterIpi needs the VPs' APICs: served
            // here, delivered when the dispatch ends (below), like an IPI
            // through the ICR.
            ExitCode::VMMCALL if HvCallCode(cpu.regs.rcx as u16) == HvCallCode::SEND_IPI => {
                let request = crate::hypercall::cluster_ipi_input(
                    cpu.regs.rcx,
                    cpu.regs.rdx,
                    cpu.regs.r8,
                    sh.ram,
                    sh.profile.vp_count,
                );
                let status = match (request, cpu.platform.as_mut()) {
                    (Ok(ipi), Some((platform, _))) => {
                        platform.send_cluster_ipi(index, ipi);
                        HvStatus::SUCCESS
                    }
                    (Ok(_), None) => HvStatus::INVALID_HYPERCALL_CODE,
                    (Err(status), _) => status,
                };
                if status != HvStatus::SUCCESS {
                    stats.failed_hypercalls += 1;
                }
                cpu.vmcb.save.rax = HypercallResult::status(status).encode();
                Outcome::Advance(Intercepted::Vmmcall)
            }
            ExitCode::VMMCALL => {
                let (control, input, output) = (cpu.regs.rcx, cpu.regs.rdx, cpu.regs.r8);
                let result = crate::hypercall::child_call(id, control, input, output, sh.ram, bus, sh.root);
                if result.status != HvStatus::SUCCESS {
                    stats.failed_hypercalls += 1;
                }
                cpu.vmcb.save.rax = result.encode();
                Outcome::Advance(Intercepted::Vmmcall)
            }
            // INVD would drop dirty cache lines machine-wide: do nothing instead.
            ExitCode::INVD => Outcome::Advance(Intercepted::Invd),
            c if c.is_refused_instruction() => Outcome::UD,
            ExitCode::IOIO => {
                vp.intercept_suspended = true;
                return deliver(sh.root, sh.message_page, &io_message(&cpu, index));
            }
            // An interrupt is waiting and would wake the CPU: the HLT ends
            // at once and the vector goes in with the next entry.
            ExitCode::HLT if hlt_wakes(&mut cpu) => Outcome::Advance(Intercepted::Hlt),
            // Idle inside a signal grace: the root's turn. hv-core completes
            // the HLT itself (one byte) and reports the VP halted, as a later
            // dispatch of a halted VP does (X64_HALT, instruction length 0:
            // RIP is already past it). The root, which must serve the signal
            // first, is spared the RIP write of an X64_HALT it completes,
            // and marks the VP halted rather than dispatching it again only
            // to hear that it still is.
            ExitCode::HLT if in_grace => {
                cpu.vmcb.control.intercept_misc1 &= !intercept::PAUSE;
                cpu.vmcb.save.rip = cpu.vmcb.save.rip.wrapping_add(1);
                // The STI shadow that may have covered it ends there.
                cpu.vmcb.control.int_state &= !1;
                if let Some((platform, _)) = cpu.platform.as_mut() {
                    platform.halted = true;
                }
                vp.intercept_suspended = true;
                return report_halt(sh.root, sh.message_page, cpu.vmcb, index, 0);
            }
            ExitCode::HLT => {
                vp.intercept_suspended = true;
                if let Some((platform, _)) = cpu.platform.as_mut() {
                    platform.halted = true;
                }
                // The root steps over the HLT (length 1); the STI shadow
                // that may have covered it ends there.
                cpu.vmcb.control.int_state &= !1;
                return report_halt(sh.root, sh.message_page, cpu.vmcb, index, 1);
            }
            ExitCode::NPF => {
                if let Some(outcome) = cpu.apic_mmio() {
                    if cpu.finish(outcome) {
                        stats.injected += 1;
                    }
                    // An ICR write through the xAPIC page: as below.
                    if vp.platform.has_outgoing() {
                        return Ok((DISPATCH_STATE_READY, DISPATCH_EVENT_NONE));
                    }
                    continue;
                }
                vp.intercept_suspended = true;
                return deliver(sh.root, sh.message_page, &memory_message(&cpu, index));
            }
            ExitCode::SHUTDOWN => {
                let rip = cpu.vmcb.save.rip;
                crate::vcpu::log_limited(
                    cpu.logged,
                    id,
                    format_args!("VP {index}: shutdown (triple fault) at rip {rip:#x}"),
                );
                let header = intercept_header(cpu.vmcb, index, 0, access::EXECUTE);
                // The VMCB is undefined after a shutdown (APM): rebuild it; the
                // root must set the VP's registers before it runs again.
                vp.unrecoverable = true;
                let npt = cpu.vmcb.control.nested_cr3;
                init_vmcb(vp.vmcb(), maps, npt, asid);
                let m = Message::new(message_type::UNRECOVERABLE_EXCEPTION, header.as_bytes());
                return deliver(sh.root, sh.message_page, &m);
            }
            other => {
                crate::vcpu::log_limited(
                    cpu.logged,
                    id,
                    format_args!("VP {index}: unexpected exit {other:?}: VP stopped"),
                );
                vp.unrecoverable = true;
                let header = intercept_header(cpu.vmcb, index, 0, access::EXECUTE);
                let m = Message::new(message_type::UNRECOVERABLE_EXCEPTION, header.as_bytes());
                return deliver(sh.root, sh.message_page, &m);
            }
        };
        if cpu.finish(outcome) {
            stats.injected += 1;
        }
        // The guest reported a crash (CRASH_CTL with CrashNotify, the WRMSR
        // now complete): the VP stops for good and the root hears P0-P4.
        if let Some(control) = cpu.msrs.crash_notify.take() {
            let parameters = cpu.msrs.crash_parameters;
            crate::vcpu::log_limited(
                cpu.logged,
                id,
                format_args!(
                    "VP {index}: guest crash report (CRASH_CTL {control:#x}, P0 {:#x}): VP stopped",
                    parameters[0]
                ),
            );
            let report = GuestCrash {
                header: intercept_header(cpu.vmcb, index, 0, access::WRITE),
                parameters,
                control,
            };
            vp.crashed = true;
            let m = Message::new(private::message_type::GUEST_CRASH, report.as_bytes());
            return deliver(sh.root, sh.message_page, &m);
        }
        // The child just posted or signalled to the root: end the dispatch so
        // the root takes its SynIC interrupt now rather than at its next timer
        // tick (one CPU: the root is the one waiting).
        // With a signal grace (private property SIGNAL_GRACE) it runs on to
        // its next exit (a HLT or PAUSE ends it above), so a guest writing a
        // burst of packets queues them all behind its first signal.
        if !bus.root_pending.is_empty() {
            if sh.signal_grace && !in_grace {
                in_grace = true;
                cpu.vmcb.control.intercept_misc1 |= intercept::PAUSE;
            } else {
                cpu.vmcb.control.intercept_misc1 &= !intercept::PAUSE;
                return Ok((DISPATCH_STATE_READY, DISPATCH_EVENT_NONE));
            }
        }
        // The VP sent an IPI to other VPs: end the dispatch so the partition
        // routes it and the root's scheduler can run its target (one CPU:
        // a sender spinning for an answer would otherwise hold it to the
        // end of its slice).
        if vp.platform.has_outgoing() {
            return Ok((DISPATCH_STATE_READY, DISPATCH_EVENT_NONE));
        }
    }
    Ok((DISPATCH_STATE_READY, DISPATCH_EVENT_NONE))
}

/// A 512-byte, 16-byte-aligned FXSAVE area.
#[repr(C, align(16))]
struct FxArea([u8; 512]);

impl FxArea {
    fn new() -> Self {
        Self([0; 512])
    }
}

/// FXSAVE64 to `area` (512 bytes, 16-byte aligned).
///
/// # Safety
/// `area` must be valid for 512 bytes of writes and 16-byte aligned.
unsafe fn fxsave(area: *mut u8) {
    // SAFETY: forwarded to the caller; CR4.OSFXSR is set by hv-core at launch.
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) area, options(nostack)) };
}

/// FXRSTOR64 from `area`.
///
/// # Safety
/// `area` must hold a valid FXSAVE image (reserved MXCSR bits clear).
unsafe fn fxrstor(area: *const u8) {
    // SAFETY: forwarded to the caller.
    unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) area, options(nostack)) };
}

/// The power-on x87/SSE state: FCW 0x037F, MXCSR 0x1F80, everything else 0.
fn init_fx_area(pa: u64) {
    // SAFETY: a fresh, zeroed page of hv-core's region owned by the new VP.
    let area = unsafe { core::slice::from_raw_parts_mut(pa as *mut u8, 512) };
    area[0..2].copy_from_slice(&0x037Fu16.to_le_bytes());
    area[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
}

fn read_debug() -> [u64; 4] {
    [Dr0::read(), Dr1::read(), Dr2::read(), Dr3::read()]
}

fn write_debug(v: &[u64; 4]) {
    // DR0-DR3 only take effect through DR7, which each side's VMCB (or the
    // root's own state) controls; the values are that side's own.
    Dr0::write(v[0]);
    Dr1::write(v[1]);
    Dr2::write(v[2]);
    Dr3::write(v[3]);
}

/// Control area of a child VMCB, plus the architectural reset state.
fn init_vmcb(v: &mut Vmcb, maps: &SharedMaps, npt_root: u64, asid: u32) {
    // SAFETY: `Vmcb` is plain data (FromZeros); zeroing is a valid start.
    *v = zerocopy::FromZeros::new_zeroed();
    let c = &mut v.control;
    c.intercept_misc1 = intercept::INTR
        | intercept::NMI
        | intercept::SHUTDOWN
        | intercept::HLT
        | intercept::IOIO_PROT
        | intercept::MSR_PROT
        | intercept::CPUID
        | intercept::INVD
        | intercept::INVLPGA;
    c.intercept_misc2 = intercept::VMRUN
        | intercept::VMMCALL
        | intercept::VMLOAD
        | intercept::VMSAVE
        | intercept::STGI
        | intercept::CLGI
        | intercept::SKINIT
        | intercept::MONITOR
        | intercept::MWAIT
        | intercept::MWAIT_COND
        | intercept::XSETBV;
    // CR4 writes: a child may not enable what hv-core does not switch.
    c.intercept_cr = 1 << (16 + 4);
    c.iopm_base_pa = maps.iopm;
    c.msrpm_base_pa = maps.msrpm;
    c.guest_asid = asid;
    c.tlb_control = TLB_FLUSH_ALL;
    c.nested_ctl = NP_ENABLE;
    c.nested_cr3 = npt_root;
    // With the INTR intercept, V_INTR_MASKING must be set (APM vol. 2 §15.21.1; QEMU `svm_helper.c`).
    c.int_ctl = 1 << 24;
    reset_state(v);
}

/// Write `m` to the VP's message page in root memory.
fn deliver(root: &RootRam, page: u64, m: &Message) -> ChildResult<(u32, u32)> {
    root.write(page, m.as_bytes(), 8).map_err(|e: GpaError| match e {
        GpaError::Misaligned => HvStatus::INVALID_ALIGNMENT,
        GpaError::OutOfRange => HvStatus::INVALID_PARAMETER,
    })?;
    Ok((DISPATCH_STATE_READY, DISPATCH_EVENT_INTERCEPT))
}

/// Put `page` (or nothing) in a VP's state-page `slot`. A page is pinned
/// (one count per use): never lent to a child while a VP uses it. The new
/// pin is taken first, so mapping the same page again keeps it.
fn repin(slot: &mut Option<u64>, page: Option<u64>) -> ChildResult<()> {
    if let Some(p) = page
        && !memory::pin(p)
    {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    if let Some(old) = slot.take() {
        memory::unpin(old);
    }
    *slot = page;
    Ok(())
}

/// Tell the root VP `index` is halted (X64_HALT; `length` 1 for a HLT the
/// root completes, 0 when RIP is already past it).
fn report_halt(root: &RootRam, page: u64, vmcb: &Vmcb, index: u32, length: u8) -> ChildResult<(u32, u32)> {
    let header = intercept_header(vmcb, index, length, access::EXECUTE);
    deliver(
        root,
        page,
        &Message::new(message_type::X64_HALT, header.as_bytes()),
    )
}

/// Whether a HLT ends at once: RFLAGS.IF is set and, with timers advanced
/// and SynIC vectors taken in, an interrupt is deliverable (Linux idles in
/// `sti; hlt` and waits for its timer or the SynIC vector).
fn hlt_wakes(cpu: &mut Vcpu<'_>) -> bool {
    if cpu.vmcb.save.rflags & (1 << 9) == 0 {
        return false;
    }
    let Some((vp, time)) = cpu.platform.as_mut() else {
        return crate::ipc::wakes_from_hlt(cpu.vmcb, cpu.pending);
    };
    vp.refresh(time, cpu.synic, cpu.pending, cpu.mem);
    vp.deliverable(cpu.vmcb, cpu.pending)
}

fn intercept_header(vmcb: &Vmcb, vp_index: u32, length: u8, access_type: u8) -> InterceptHeader {
    let s = &vmcb.save;
    let mut state = s.cpl as u16 & execution_state::CPL_MASK;
    if s.cr0 & 1 != 0 {
        state |= execution_state::CR0_PE;
    }
    if s.efer & (1 << 10) != 0 {
        state |= execution_state::EFER_LMA;
    }
    if vmcb.control.int_state & 1 != 0 {
        state |= execution_state::INTERRUPT_SHADOW;
    }
    InterceptHeader {
        vp_index,
        instruction_length_cr8: length & 0xF,
        intercept_access_type: access_type,
        execution_state: state,
        cs: SegmentRegister {
            base: s.cs.base,
            limit: s.cs.limit,
            selector: s.cs.selector,
            attributes: SegmentRegister::attributes_from_svm(s.cs.attrib),
        },
        rip: s.rip,
        rflags: s.rflags,
    }
}

fn hv_segment(g: &Segment) -> SegmentRegister {
    SegmentRegister {
        base: g.base,
        limit: g.limit,
        selector: g.selector,
        attributes: SegmentRegister::attributes_from_svm(g.attrib),
    }
}

/// IOIO: EXITINFO1 bit 0 = IN, bit 2 string, bit 3 REP, bits 6:4 size (one-hot
/// 1/2/4), bits 31:16 port; EXITINFO2 = next RIP (APM 15.10.2).
fn io_message(cpu: &Vcpu<'_>, vp_index: u32) -> Message {
    let info = cpu.vmcb.control.exit_info1;
    let length = cpu
        .vmcb
        .control
        .exit_info2
        .wrapping_sub(cpu.vmcb.save.rip)
        .min(15) as u8;
    let size = match (info >> 4) & 0x7 {
        0b001 => 1,
        0b010 => 2,
        _ => 4,
    };
    let mut access_info = size & io_access::SIZE_MASK;
    if info & (1 << 2) != 0 {
        access_info |= io_access::STRING_OP;
    }
    if info & (1 << 3) != 0 {
        access_info |= io_access::REP_PREFIX;
    }
    let is_in = info & 1 != 0;
    let (bytes, fetched) = cpu.fetch_instruction();
    let mut instruction_bytes = [0u8; 16];
    instruction_bytes[..fetched].copy_from_slice(&bytes[..fetched]);
    let m = IoPortIntercept {
        header: intercept_header(
            cpu.vmcb,
            vp_index,
            length,
            if is_in { access::READ } else { access::WRITE },
        ),
        port_number: (info >> 16) as u16,
        access_info,
        instruction_byte_count: fetched as u8,
        reserved: 0,
        rax: cpu.vmcb.save.rax,
        instruction_bytes,
        ds: hv_segment(&cpu.vmcb.save.ds),
        es: hv_segment(&cpu.vmcb.save.es),
        rcx: cpu.regs.rcx,
        rsi: cpu.regs.rsi,
        rdi: cpu.regs.rdi,
    };
    Message::new(message_type::X64_IO_PORT_INTERCEPT, m.as_bytes())
}

/// NPF on a GPA the child's NPT does not map.
fn memory_message(cpu: &Vcpu<'_>, vp_index: u32) -> Message {
    let info = cpu.vmcb.control.exit_info1;
    let access_type = if info & npf::FETCH != 0 {
        access::EXECUTE
    } else if info & npf::WRITE != 0 {
        access::WRITE
    } else {
        access::READ
    };
    let (bytes, fetched) = cpu.fetch_instruction();
    let mut instruction_bytes = [0u8; 16];
    instruction_bytes[..fetched].copy_from_slice(&bytes[..fetched]);
    let m = MemoryIntercept {
        header: intercept_header(cpu.vmcb, vp_index, 0, access_type),
        cache_type: 6, // write-back
        instruction_byte_count: fetched as u8,
        memory_access_info: 0,
        tpr_priority: 0,
        reserved: 0,
        guest_virtual_address: 0,
        guest_physical_address: cpu.vmcb.control.exit_info2,
        instruction_bytes,
    };
    // A page that is mapped but does not allow this access is a GPA
    // intercept, not an unmapped GPA (mapping it again would not help).
    let kind = if info & npf::PRESENT != 0 {
        message_type::GPA_INTERCEPT
    } else {
        message_type::UNMAPPED_GPA
    };
    Message::new(kind, m.as_bytes())
}

fn gpr(regs: &GuestRegs, name: u32) -> Option<u64> {
    Some(match name {
        0x0002_0001 => regs.rcx,
        0x0002_0002 => regs.rdx,
        0x0002_0003 => regs.rbx,
        0x0002_0005 => regs.rbp,
        0x0002_0006 => regs.rsi,
        0x0002_0007 => regs.rdi,
        0x0002_0008 => regs.r8,
        0x0002_0009 => regs.r9,
        0x0002_000A => regs.r10,
        0x0002_000B => regs.r11,
        0x0002_000C => regs.r12,
        0x0002_000D => regs.r13,
        0x0002_000E => regs.r14,
        0x0002_000F => regs.r15,
        _ => return None,
    })
}

fn gpr_mut(regs: &mut GuestRegs, name: u32) -> Option<&mut u64> {
    Some(match name {
        0x0002_0001 => &mut regs.rcx,
        0x0002_0002 => &mut regs.rdx,
        0x0002_0003 => &mut regs.rbx,
        0x0002_0005 => &mut regs.rbp,
        0x0002_0006 => &mut regs.rsi,
        0x0002_0007 => &mut regs.rdi,
        0x0002_0008 => &mut regs.r8,
        0x0002_0009 => &mut regs.r9,
        0x0002_000A => &mut regs.r10,
        0x0002_000B => &mut regs.r11,
        0x0002_000C => &mut regs.r12,
        0x0002_000D => &mut regs.r13,
        0x0002_000E => &mut regs.r14,
        0x0002_000F => &mut regs.r15,
        _ => return None,
    })
}

/// The x86 power-on state (APM vol. 2 §14.1.3): real mode at F000:FFF0.
fn reset_state(v: &mut Vmcb) {
    let s = &mut v.save;
    let data = Segment {
        selector: 0,
        attrib: 0x93,
        limit: 0xFFFF,
        base: 0,
    };
    s.cs = Segment {
        selector: 0xF000,
        attrib: 0x9B,
        limit: 0xFFFF,
        base: 0xFFFF_0000,
    };
    s.ds = data;
    s.es = data;
    s.ss = data;
    s.fs = data;
    s.gs = data;
    s.gdtr = Segment {
        selector: 0,
        attrib: 0,
        limit: 0xFFFF,
        base: 0,
    };
    s.idtr = Segment {
        selector: 0,
        attrib: 0,
        limit: 0xFFFF,
        base: 0,
    };
    s.ldtr = Segment {
        selector: 0,
        attrib: 0x82,
        limit: 0xFFFF,
        base: 0,
    };
    s.tr = Segment {
        selector: 0,
        attrib: 0x8B,
        limit: 0xFFFF,
        base: 0,
    };
    s.cpl = 0;
    s.efer = EFER_SVME;
    s.cr0 = 0x6000_0010;
    s.cr3 = 0;
    s.cr4 = 0;
    s.rflags = 2;
    s.rip = 0xFFF0;
    s.rsp = 0;
    s.rax = 0;
    s.dr6 = 0xFFFF_0FF0;
    s.dr7 = 0x400;
    s.g_pat = 0x0007_0406_0007_0406;
}
