//! Launching the root partition: validate the handoff, capture the caller's
//! CPU state, take over the machine (own tables, stack, GDT/IDT), enable SVM,
//! build the root's VMCB and nested page tables, and run it.

use crate::child::SharedMaps;
use crate::entry::root_resume;
use crate::hv::Hv;
use crate::ipc::Bus;
use crate::memory::{self, RootRam};
use crate::vcpu::{ExitStats, SyntheticMsrs};
use crate::vmrun::{self, GuestRegs};
use boot_proto::handoff::Handoff;
use core::arch::asm;
use kernel_x86::arch::{cpuid, rdmsr, read_cr3, write_cr3, wrmsr};
use kernel_x86::traps::{self, CpuTables, ExceptionFrame};
use partitions::Table;
use svm::vmcb::{EFER_SVME, NP_ENABLE, TLB_DO_NOTHING, TLB_FLUSH_ALL, intercept, msrpm};
use svm::{Segment, Vmcb};
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment as _};
use x86_64::instructions::tables::{sgdt, sidt};
use x86_64::registers::control::{Cr0, Cr4, Cr4Flags};
use zerocopy::FromBytes;

/// Errors returned to the root when it cannot be launched (nothing changed).
#[repr(u64)]
#[derive(Debug, Clone, Copy)]
pub enum LaunchRefused {
    /// The handoff block failed validation.
    BadHandoff = 1,
    /// CPUID reports no SVM.
    NoSvm = 2,
    /// CPUID reports no nested paging.
    NoNestedPaging = 3,
    /// VM_CR.SVMDIS is set (firmware disabled SVM).
    SvmDisabled = 4,
    /// The root called with paging or long mode off.
    NotLongMode = 5,
}

const MSR_EFER: u32 = 0xC000_0080;
const MSR_VM_CR: u32 = 0xC001_0114;
const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;
const MSR_PAT: u32 = 0x277;
const EFER_LMA: u64 = 1 << 10;

/// The root's control registers and descriptor tables at the call.
struct CapturedState {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    gdtr: (u16, u64),
    idtr: (u16, u64),
    cs: u16,
    ss: u16,
    ds: u16,
    es: u16,
}

fn capture() -> CapturedState {
    let (gdtr, idtr) = (sgdt(), sidt());
    // SAFETY: EFER exists on every x86-64 CPU.
    let efer = unsafe { rdmsr(MSR_EFER) };
    CapturedState {
        cr0: Cr0::read_raw(),
        cr3: read_cr3(),
        cr4: Cr4::read_raw(),
        efer,
        gdtr: (gdtr.limit, gdtr.base.as_u64()),
        idtr: (idtr.limit, idtr.base.as_u64()),
        cs: CS::get_reg().0,
        ss: SS::get_reg().0,
        ds: DS::get_reg().0,
        es: ES::get_reg().0,
    }
}

/// Read the root's descriptor for `selector` from its GDT (still mapped: we
/// run on the root's page tables when this is called).
fn root_segment(state: &CapturedState, selector: u16) -> Segment {
    let index = (selector >> 3) as u64;
    if selector & !3 == 0 || index * 8 + 7 > state.gdtr.0 as u64 {
        return Segment {
            selector,
            ..Default::default()
        };
    }
    // SAFETY: the entry lies inside the root's live GDT (limit checked above),
    // mapped by the root's page tables, which are active during capture.
    let desc = unsafe { ((state.gdtr.1 + index * 8) as *const u64).read_volatile() };
    Segment::from_descriptor(selector, desc)
}

/// Called by the entry asm on hv-core's boot stack with the root's page tables.
pub extern "sysv64" fn hv_core_main(handoff_phys: u64) -> u64 {
    match launch(handoff_phys) {
        Ok(never) => match never {},
        Err(refused) => {
            hvlog!("launch refused: {refused:?}");
            refused as u64
        }
    }
}

fn launch(handoff_phys: u64) -> Result<core::convert::Infallible, LaunchRefused> {
    // SAFETY: the root passes the physical (== virtual, identity) address of a
    // handoff block it owns; it is copied before use.
    let bytes = unsafe { core::slice::from_raw_parts(handoff_phys as *const u8, size_of::<Handoff>()) };
    let handoff = Handoff::read_from_bytes(bytes).map_err(|_| LaunchRefused::BadHandoff)?;
    handoff.validate().map_err(|_| LaunchRefused::BadHandoff)?;
    crate::log::set_port(handoff.log_port);
    hvlog!(
        "hv-core {} starting: region {:#x}..{:#x}, image {} KiB at {:#x}",
        env!("CARGO_PKG_VERSION"),
        handoff.region_base,
        handoff.region_base + handoff.region_size,
        handoff.image_size / 1024,
        handoff.image_va
    );

    // Feature checks before touching anything (QEMU `target/i386/tcg/sysemu/svm_helper.c`).
    if cpuid(0x8000_0001, 0).ecx & (1 << 2) == 0 {
        return Err(LaunchRefused::NoSvm);
    }
    let svm_features = cpuid(0x8000_000A, 0);
    if svm_features.edx & 1 == 0 {
        return Err(LaunchRefused::NoNestedPaging);
    }
    // SAFETY: VM_CR exists when CPUID reports SVM (QEMU returns 0).
    if unsafe { rdmsr(MSR_VM_CR) } & (1 << 4) != 0 {
        return Err(LaunchRefused::SvmDisabled);
    }
    let state = capture();
    if state.efer & EFER_LMA == 0 || state.cr0 & (1 << 31) == 0 {
        return Err(LaunchRefused::NotLongMode);
    }
    hvlog!(
        "SVM rev {} with NPT, {} ASIDs, nRIP save {}, decode assists {}",
        svm_features.eax & 0xFF,
        svm_features.ebx,
        if svm_features.edx & (1 << 3) != 0 {
            "yes"
        } else {
            "no"
        },
        if svm_features.edx & (1 << 7) != 0 {
            "yes"
        } else {
            "no"
        }
    );

    // hv-core's time base, measured while it still owns the machine's ports.
    crate::time::calibrate();

    // From here on the launch cannot be refused: failures are fatal.
    let region = handoff.region_base..handoff.region_base + handoff.region_size;
    memory::init(region.clone(), handoff.image_size, memory::ram_top(&handoff));
    let gib_pages = cpuid(0x8000_0001, 0).edx & (1 << 26) != 0;

    // Enable SVM and capture the root's hidden segment state with VMSAVE
    // before hv-core loads its own GDT/TR.
    // SAFETY: SVM is present and enabled by firmware (checked above); setting
    // EFER.SVME changes nothing else.
    unsafe { wrmsr(MSR_EFER, state.efer | EFER_SVME) };
    let vmcb_pa = memory::alloc_pages(1).expect("region has room for the root VMCB");
    // VMSAVE stores FS/GS/TR/LDTR/KernelGsBase/STAR/LSTAR/CSTAR/SFMASK/SYSENTER:
    // SAFETY: `vmcb_pa` is a zeroed, 4 KiB-aligned page of hv-core's region.
    unsafe { asm!("vmsave rax", in("rax") vmcb_pa, options(nostack)) };

    let resume = root_resume();
    let cs = root_segment(&state, state.cs);
    let ss = root_segment(&state, state.ss);
    let ds = root_segment(&state, state.ds);
    let es = root_segment(&state, state.es);

    // hv-core's own world: page tables, GDT/TSS/IDT, then SVM's host pages.
    let host_cr3 = memory::build_host_tables(&handoff, gib_pages);
    // The new tables identity-map all physical memory (boot stack, every page hv-core uses).
    // SAFETY: they also map the image at its link address, as the root's tables did.
    unsafe { write_cr3(host_cr3) };
    let tables_pa =
        memory::alloc_pages(size_of::<CpuTables>().div_ceil(4096) as u64).expect("room for GDT/IDT");
    // SAFETY: fresh pages of hv-core's region, used for nothing else, large and
    // aligned enough for `CpuTables`; a valid value is written before the borrow.
    let tables: &'static mut CpuTables = unsafe {
        let p = tables_pa as *mut CpuTables;
        p.write(CpuTables::new());
        &mut *p
    };
    traps::init(tables, hv_exception);
    // FXSAVE/FXRSTOR of children's SSE state need CR4.OSFXSR in the host
    // (the root's own CR4 is in its VMCB and unaffected).
    // SAFETY: setting OSFXSR/OSXMMEXCPT only enables FXSAVE of XMM state and
    // SSE exceptions; hv-core itself is built without SSE.
    unsafe { Cr4::update(|f| f.insert(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE)) };

    let hsave = memory::alloc_pages(1).expect("room for HSAVE");
    let host_save = memory::alloc_pages(1).expect("room for the host save area");
    // SAFETY: `hsave` is a zeroed page of hv-core's region never touched by software.
    unsafe { wrmsr(MSR_VM_HSAVE_PA, hsave) };

    let iopm = memory::alloc_pages(3).expect("room for the IOPM");
    let msrpm_pa = memory::alloc_pages(2).expect("room for the MSRPM");
    // SAFETY: two zeroed pages of hv-core's region, exclusively ours.
    let msrpm_map: &mut [u8; msrpm::SIZE] = unsafe { &mut *(msrpm_pa as *mut [u8; msrpm::SIZE]) };
    // EFER is shadowed (the root must not clear SVME, nor see it); the SVM control
    // MSRs belong to hv-core. Synthetic MSRs (0x4000_xxxx) always exit.
    msrpm::intercept(msrpm_map, MSR_EFER, true, true);
    msrpm::intercept(msrpm_map, MSR_VM_HSAVE_PA, true, true);
    msrpm::intercept(msrpm_map, MSR_VM_CR, true, true);
    // MSRs through which the root could reach around its NPT hole into
    // hv-core's region: moving the local APIC's MMIO page over it
    // (APIC_BASE), changing the memory type or DRAM decoding of physical
    // memory machine-wide (MTRRs, SYSCFG, TOP_MEM/TOP_MEM2, IORRs, HWCR),
    // SMM ranges, or loading microcode (PATCH_LOADER). Reads pass through;
    // writes exit and `vcpu::Vcpu::wrmsr` decides (docs/architecture.md).
    for m in crate::vcpu::ROOT_GUARDED_MSRS.iter().flat_map(|r| r.clone()) {
        msrpm::intercept(msrpm_map, m, false, true);
    }
    // hv-core's log port: the root may not write lines that look like
    // hv-core's own. (With an IOMMU, the PCI configuration ports too: below.)
    // SAFETY: three zeroed pages of hv-core's region, exclusively ours.
    let iopm_map = unsafe { core::slice::from_raw_parts_mut(iopm as *mut u8, 3 * 4096) };
    let port = usize::from(handoff.log_port);
    iopm_map[port / 8] |= 1 << (port % 8);

    // Device DMA: the IOMMU translates every bus-0 device through tables
    // that leave hv-core's region out; its registers leave the root's NPT.
    let dma = crate::iommu::init(&handoff, region.clone(), gib_pages);
    let mut holes: [core::ops::Range<u64>; memory::MAX_ROOT_NPT_HOLES] = Default::default();
    holes[0] = region.clone();
    if let Some(iommu) = dma.iommu.as_ref() {
        // The IOMMU's PCI configuration: the root's accesses to ports
        // 0xCF8..=0xCFF exit and are filtered (`iommu::ConfigGuards`), and
        // the guarded functions' ECAM pages leave its NPT.
        for port in amd_iommu::pci::PORTS {
            let port = usize::from(port);
            iopm_map[port / 8] |= 1 << (port % 8);
        }
        holes[1] = iommu.mmio_window();
        // Room for every guarded function's page (checked at compile time).
        const _: () = assert!(memory::MAX_ROOT_NPT_HOLES >= 2 + crate::iommu::MAX_GUARDS);
        for (hole, page) in holes[2..].iter_mut().zip(iommu.config.ecam_pages()) {
            *hole = page;
        }
    }
    let npt = memory::build_root_npt(&holes, gib_pages);
    hvlog!(
        "root NPT at {:#x}: identity 0..{} GiB, hv-core region excluded{}",
        npt,
        memory::ROOT_GPA_LIMIT >> 30,
        match dma.iommu.as_ref().map(|i| i.config.ecam_pages().count()) {
            Some(0) => ", IOMMU registers excluded",
            Some(_) => ", IOMMU registers and guarded ECAM pages excluded",
            None => "",
        }
    );

    // SAFETY: a zeroed page of hv-core's region, 4 KiB aligned, exclusively ours.
    let vmcb: &mut Vmcb = unsafe { &mut *(vmcb_pa as *mut Vmcb) };
    let c = &mut vmcb.control;
    c.intercept_misc1 = intercept::CPUID
        | intercept::MSR_PROT
        | intercept::IOIO_PROT
        | intercept::SHUTDOWN
        | intercept::INVD
        | intercept::INVLPGA;
    c.intercept_misc2 = intercept::VMRUN
        | intercept::VMMCALL
        | intercept::VMLOAD
        | intercept::VMSAVE
        | intercept::STGI
        | intercept::CLGI
        | intercept::SKINIT;
    c.iopm_base_pa = iopm;
    c.msrpm_base_pa = msrpm_pa;
    // The root's own ASID. Its NPT never changes after this (lending a page
    // to a child leaves it mapped for the root), so only the first entry
    // flushes, and later ones only when an emulated write to paging state
    // asks for it (`vcpu.rs`).
    c.guest_asid = 1;
    c.tlb_control = TLB_FLUSH_ALL;
    c.nested_ctl = NP_ENABLE;
    c.nested_cr3 = npt;
    // Passthrough interrupts: no INTR intercept, V_INTR_MASKING = 0, so the
    // root's IF gates its own devices' interrupts (APM vol. 2 §15.21.1; QEMU `svm_helper.c`).
    c.int_ctl = 0;

    let s = &mut vmcb.save;
    s.cs = cs;
    s.ss = ss;
    s.ds = ds;
    s.es = es;
    s.gdtr = Segment {
        selector: 0,
        attrib: 0,
        limit: state.gdtr.0 as u32,
        base: state.gdtr.1,
    };
    s.idtr = Segment {
        selector: 0,
        attrib: 0,
        limit: state.idtr.0 as u32,
        base: state.idtr.1,
    };
    s.cpl = ss.dpl();
    s.efer = state.efer | EFER_SVME;
    s.cr0 = state.cr0;
    s.cr3 = state.cr3;
    s.cr4 = state.cr4;
    s.dr7 = 0x400;
    s.dr6 = 0xFFFF_0FF0;
    s.rflags = resume.rflags;
    s.rip = resume.rip;
    s.rsp = resume.rsp;
    s.rax = 0; // the launch call returns 0: "you are the root partition now"
    // SAFETY: PAT exists on every x86-64 CPU.
    s.g_pat = unsafe { rdmsr(MSR_PAT) };

    let mut regs = GuestRegs {
        rbx: resume.rbx,
        rbp: resume.rbp,
        r12: resume.r12,
        r13: resume.r13,
        r14: resume.r14,
        r15: resume.r15,
        ..Default::default()
    };
    let mut hv = Hv {
        root_ram: RootRam::new(&handoff, region.clone()),
        root_msrs: SyntheticMsrs::default(),
        root_efer: state.efer,
        root_stats: ExitStats::default(),
        root_logged: 0,
        root_vp_assist: 0,
        hv_region: region,
        log_port: handoff.log_port,
        children: Table::new(2),
        maps: SharedMaps::new(),
        host_save,
        bus: Bus::new(),
        dma,
    };
    hvlog!(
        "launching the root partition at rip {:#x} rsp {:#x} (cs {:#x}, cpl {}); hv-core uses {} KiB",
        resume.rip,
        resume.rsp,
        cs.selector,
        s.cpl,
        memory::region_used() / 1024
    );
    loop {
        // The VMCB, IOPM, MSRPM and NPT were set up above in hv-core's region;
        // the root's VMCB passes interrupts through, so hv-core's IF stays clear.
        // SAFETY: complete VMCB, SVME and VM_HSAVE_PA set, this CPU alone runs it.
        unsafe { vmrun::run(&mut regs, vmcb_pa, host_save, false) };
        vmcb.control.tlb_control = TLB_DO_NOTHING;
        hv.handle_root_exit(vmcb, &mut regs);
        crate::ipc::inject_pending(vmcb, &mut hv.bus.root_pending);
    }
}

/// Any exception in hv-core is a hypervisor bug: report and stop the machine.
fn hv_exception(frame: &ExceptionFrame) -> ! {
    crate::log::emergency(format_args!("FATAL {frame}"));
    crate::log::fatal_stop()
}
