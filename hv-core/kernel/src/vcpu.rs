//! What every VP's exits share, root or child: CPUID, the synthetic and
//! shadowed MSRs, stepping over an emulated instruction (TCG has no NRIP
//! save) and fetching instruction bytes through the guest's page tables.
//! Every value read from the guest is checked before use.

use crate::ipc::SynicMem;
use crate::memory::GuestMemory;
use crate::platform::{PartitionTime, VpPlatform};
use crate::vmrun::GuestRegs;
use hv1_abi::cpuid::{CPUID1_ECX_HYPERVISOR, HvCpuidProfile};
use hv1_abi::msr;
use svm::Vmcb;
use svm::insn::{self, Intercepted};
use svm::vmcb::{EFER_SVME, TLB_FLUSH_ALL, event};

/// #UD.
pub const VECTOR_UD: u8 = 6;
/// #GP.
pub const VECTOR_GP: u8 = 13;
/// EFER.
pub const MSR_EFER: u32 = 0xC000_0080;
const MSR_PAT: u32 = 0x277;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// EFER bits a guest may set on this CPU: SCE, LME, LMA and SVME always;
/// NXE, FFXSR and TCE when CPUID has them. (LMSLE is left out: newer CPUs and
/// QEMU treat it as reserved, and VMRUN would refuse the state.)
pub fn efer_allowed() -> u64 {
    let ext = kernel_x86::arch::cpuid(0x8000_0001, 0);
    let mut bits = (1 << 0) | EFER_LME | EFER_LMA | EFER_SVME;
    if ext.edx & (1 << 20) != 0 {
        bits |= 1 << 11;
    }
    if ext.edx & (1 << 25) != 0 {
        bits |= 1 << 14;
    }
    if ext.ecx & (1 << 17) != 0 {
        bits |= 1 << 15;
    }
    bits
}

/// CR4 bits a child may set on this CPU (`svm::cr::cr4_allowed`).
pub fn cr4_allowed() -> u64 {
    let leaf1 = kernel_x86::arch::cpuid(1, 0);
    let leaf7 = kernel_x86::arch::cpuid(7, 0);
    svm::cr::cr4_allowed(svm::cr::CpuFeatures {
        leaf1_ecx: leaf1.ecx,
        leaf7_ebx: leaf7.ebx,
        leaf7_ecx: leaf7.ecx,
    })
}

/// MSRs whose writes are intercepted for the root, because through them it
/// could reach around its NPT hole into hv-core's region (AMD APM vol. 2
/// §7.7 MTRRs, §7.9 TOP_MEM/IORRs, BKDG SYSCFG/HWCR, §10 SMM, microcode
/// PATCH_LOADER). Reads pass through. A child intercepts every MSR anyway.
pub const ROOT_GUARDED_MSRS: [core::ops::RangeInclusive<u32>; 11] = [
    MSR_APIC_BASE..=MSR_APIC_BASE,
    0x200..=0x20F,             // variable-range MTRR base/mask pairs
    0x250..=0x250,             // fixed MTRR 64K
    0x258..=0x259,             // fixed MTRR 16K
    0x268..=0x26F,             // fixed MTRR 4K
    0x2FF..=0x2FF,             // MTRRdefType
    0xC001_0010..=0xC001_0010, // SYSCFG
    0xC001_0015..=0xC001_001D, // HWCR, IORR base/mask x2, TOP_MEM, TOP_MEM2 (and the gaps)
    0xC001_0020..=0xC001_0020, // PATCH_LOADER
    0xC001_0058..=0xC001_0058, // MMIO_CFG_BASE_ADDR: where ECAM (PCI config MMIO) sits
    0xC001_0111..=0xC001_0113, // SMM_BASE, SMM_ADDR, SMM_MASK
];

/// IA32_APIC_BASE.
const MSR_APIC_BASE: u32 = 0x1B;
/// APIC_BASE bits 51:12: the local APIC's MMIO page.
const APIC_BASE_ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;

/// SCONTROL..SINT15 (TLFS "SynIC MSRs"); the synthetic timers are not
/// provided yet.
const SYNIC_MSRS: core::ops::RangeInclusive<u32> = msr::SCONTROL..=msr::SINT0 + 15;

/// Refused accesses logged per partition before going quiet (a hostile guest
/// could otherwise flood hv-core's log).
const LOG_LIMIT: u32 = 16;

/// Per-partition synthetic MSR state (TLFS partition-wide MSRs).
#[derive(Debug, Default, Clone, Copy)]
pub struct SyntheticMsrs {
    /// HV_X64_MSR_GUEST_OS_ID.
    pub guest_os_id: u64,
    /// HV_X64_MSR_HYPERCALL as last accepted.
    pub hypercall: u64,
    /// HV_X64_MSR_REFERENCE_TSC as last written. The TSC page is not
    /// provided (AccessPartitionReferenceTsc is not advertised), so enabling
    /// it is refused; a write that leaves it disabled is kept, because Linux
    /// read-modify-writes it unconditionally on kexec (`hyperv_cleanup`).
    pub reference_tsc: u64,
    /// HV_X64_MSR_CRASH_P0..P4 (guest data, stored and forwarded).
    pub crash_parameters: [u64; 5],
    /// A CRASH_CTL write with CrashNotify not yet reported to the root: the
    /// value written. The dispatch loop takes it, stops the VP and sends
    /// the root `private::message_type::GUEST_CRASH`.
    pub crash_notify: Option<u64>,
}

/// CRASH_CTL as a guest reads it: the bits hv-core supports (TLFS; Linux
/// 6.1 `vmbus_bus_init` reads it and registers its kmsg dumper, which sends
/// the panic text, only if CrashMessage is set).
pub const CRASH_CTL_SUPPORTED: u64 = msr::CRASH_CTL_NOTIFY | msr::CRASH_CTL_MESSAGE;

// Architectural MSRs a child (Linux 6.1 on AMD) reads at boot, and what it
// gets. Nothing is passed through from the host: each value is a constant
// describing the virtual machine. Writes are refused with #GP unless listed.
//
// | MSR        | Name             | Read                     | Write                         |
// |------------|------------------|--------------------------|-------------------------------|
// | 0x8B       | PATCH_LEVEL (AMD) / BIOS_SIGN_ID (Intel) | 0 (no microcode rev) | accepted, ignored (Intel `intel_get_microcode_revision` writes 0) |
// | 0xFE       | MTRRcap          | 0: no variable or fixed MTRRs, no WC | #GP (read-only)      |
// | 0x2FF      | MTRRdefType      | 0x806: MTRRs enabled (E), default type WB | valid values accepted, not applied; #GP otherwise |
// | 0x200-0x20F, 0x250, 0x258-0x259, 0x268-0x26F | MTRR ranges | #GP (MTRRcap says none) | #GP |
// | 0x1B, 0x6E0, 0x800-0x8FF | APIC     | `vlapic` (platform.rs)   | `vlapic`                      |
// | 0xC0010010 | SYSCFG           | 0 (no MtrrFixDram, no TOM2, no SME) | #GP               |
// | 0xC0010015 | HWCR             | 0x0100_0000: TscFreqSel (TSC at P0 rate) | accepted, ignored (`init_amd` sets feature bits with `msr_set_bit`) |
// | 0xC001001A | TOP_MEM          | 0 (Linux reads it only with MTRR cleanup on K8) | #GP   |
// | 0xC0010055 | INT_PENDING_MSG  | 0: no C1E on CMP halt (`amd_e400_c1e_apic_setup`, E400 parts) | #GP |
// | 0xC0011029 | DE_CFG           | 0x2: LFENCE serializing (`init_amd_zn`: sets bit 1 if clear) | accepted, ignored |
//
// MTRRdefType is a constant: a valid write is accepted and not applied (the
// NPT maps a child's RAM write-back whatever it asks).

/// A child's read of a boot-time architectural MSR (table above).
fn child_boot_msr(index: u32) -> Option<u64> {
    Some(match index {
        0x8B => 0,
        0xFE => 0,
        0x2FF => MTRR_DEF_TYPE,
        0xC001_0010 => 0,
        0xC001_0015 => 1 << 24,
        0xC001_001A => 0,
        0xC001_0055 => 0,
        0xC001_1029 => 1 << 1,
        _ => return None,
    })
}

/// MTRRdefType as a child reads it: E (bit 11) set, FE (bit 10) clear (no
/// fixed-range MTRRs), default type WB (6).
const MTRR_DEF_TYPE: u64 = (1 << 11) | 6;

/// A child's write of a boot-time MSR: `Some(true)` accepted (and ignored),
/// `Some(false)` refused, `None` not one of them.
fn child_boot_msr_write(index: u32, value: u64) -> Option<bool> {
    Some(match index {
        0x8B | 0xC001_0015 | 0xC001_1029 => true,
        // Type in bits 7:0 (UC, WC, WT, WP, WB), FE (10), E (11); the rest
        // is reserved (SDM vol. 3A §11.11.2.1).
        0x2FF => value & !0xCFF == 0 && matches!(value & 0xFF, 0 | 1 | 4 | 5 | 6),
        _ => return None,
    })
}

/// Log a line a partition's behaviour caused, at most [`LOG_LIMIT`] per
/// partition (`logged` is its budget so far): every such line goes through
/// here, so a hostile guest cannot flood hv-core's log channel.
pub fn log_limited(logged: &mut u32, partition: u64, args: core::fmt::Arguments) {
    if *logged < LOG_LIMIT {
        *logged += 1;
        hvlog!(
            "partition {partition}: {args}{}",
            if *logged == LOG_LIMIT {
                " (further refusals not logged)"
            } else {
                ""
            }
        );
    }
}

/// What emulating an instruction came to.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Done: step over the instruction.
    Advance(Intercepted),
    /// Done, and the instruction (already decoded) is this long.
    Skip(usize),
    /// Deliver an exception instead (RIP stays on the instruction).
    Inject(u32, u32),
}

impl Outcome {
    /// #GP(0).
    pub const GP: Self = Self::Inject(event::exception_with_error(VECTOR_GP), 0);
    /// #UD.
    pub const UD: Self = Self::Inject(event::exception(VECTOR_UD), 0);
}

/// One VP's exit, with everything needed to emulate it.
pub struct Vcpu<'a> {
    /// Its VMCB.
    pub vmcb: &'a mut Vmcb,
    /// Its GPRs.
    pub regs: &'a mut GuestRegs,
    /// EFER as the guest believes it is (the VMCB copy always has SVME set).
    pub guest_efer: &'a mut u64,
    /// Its partition's memory.
    pub mem: &'a dyn GuestMemory,
    /// Its partition's synthetic MSRs.
    pub msrs: &'a mut SyntheticMsrs,
    /// Its SynIC.
    pub synic: &'a mut synic::SynicVp,
    /// SynIC vectors waiting to be injected into it.
    pub pending: &'a mut synic::PendingVectors,
    /// Partition id (for logs).
    pub partition: u64,
    /// VP index (VP_INDEX MSR).
    pub vp_index: u32,
    /// What CPUID's hypervisor leaves say.
    pub profile: HvCpuidProfile,
    /// Partition property UNIMPLEMENTED_MSR_ACTION: unknown MSRs read 0 and
    /// ignore writes instead of #GP.
    pub ignore_unknown_msrs: bool,
    /// Refusals logged so far for this partition.
    pub logged: &'a mut u32,
    /// HV_X64_MSR_VP_ASSIST_PAGE of this VP.
    pub vp_assist: &'a mut u64,
    /// A child VP's APIC, timers and its partition's reference time (`None`
    /// for the root, whose APIC is the real one).
    pub platform: Option<(&'a mut VpPlatform, &'a mut PartitionTime)>,
}

impl Vcpu<'_> {
    /// Log a refusal, at most [`LOG_LIMIT`] per partition.
    pub fn log_refusal(&mut self, args: core::fmt::Arguments) {
        log_limited(self.logged, self.partition, args);
    }

    /// Apply an outcome: step over the instruction or queue the exception.
    /// Returns true if an exception was injected.
    pub fn finish(&mut self, outcome: Outcome) -> bool {
        match outcome {
            // An STI/MOV SS shadow covers only the next instruction, which
            // hv-core just completed: it ends with it.
            Outcome::Advance(kind) => {
                self.vmcb.control.int_state &= !1;
                self.advance_rip(kind)
            }
            Outcome::Skip(len) => {
                self.vmcb.control.int_state &= !1;
                self.vmcb.save.rip = self.vmcb.save.rip.wrapping_add(len as u64);
                false
            }
            Outcome::Inject(event, error) => {
                self.vmcb.control.event_inj = event;
                self.vmcb.control.event_inj_err = error;
                true
            }
        }
    }

    /// Up to 15 bytes at the guest's CS:RIP, through its page tables.
    pub fn fetch_instruction(&self) -> ([u8; insn::MAX_LEN], usize) {
        let mut bytes = [0u8; insn::MAX_LEN];
        let mut fetched = 0;
        let start = self.vmcb.save.cs.base.wrapping_add(self.vmcb.save.rip);
        for (i, slot) in bytes.iter_mut().enumerate() {
            match self.read_virt_u8(start.wrapping_add(i as u64)) {
                Some(b) => {
                    *slot = b;
                    fetched += 1;
                }
                None => break,
            }
        }
        (bytes, fetched)
    }

    /// Step over the intercepted instruction. Without NRIP save (QEMU TCG) the
    /// length comes from decoding the bytes at RIP, which also confirms they
    /// are the instruction the exit reported. Returns true if that failed and
    /// #UD was injected instead.
    fn advance_rip(&mut self, kind: Intercepted) -> bool {
        let (bytes, fetched) = self.fetch_instruction();
        let rip = self.vmcb.save.rip;
        match insn::length(&bytes[..fetched], kind) {
            Ok(len) => {
                self.vmcb.save.rip = rip.wrapping_add(len as u64);
                false
            }
            Err(e) => {
                self.log_refusal(format_args!(
                    "cannot step over {kind:?} at {rip:#x}: {e:?}; injecting #UD"
                ));
                self.vmcb.control.event_inj = event::exception(VECTOR_UD);
                true
            }
        }
    }

    /// Read a byte at a guest virtual address through the guest's page tables.
    fn read_virt_u8(&self, va: u64) -> Option<u8> {
        let paging = self.vmcb.save.cr0 & (1 << 31) != 0;
        let gpa = if paging {
            x86_paging::walk(|gpa| self.mem.read_u64(gpa), self.vmcb.save.cr3, va)
                .ok()?
                .phys
        } else {
            va
        };
        self.mem.read_u8(gpa)
    }

    /// CPUID: hypervisor leaves from the profile, the rest from the CPU with
    /// the hypervisor bit set and SVM hidden (no nested virtualization).
    pub fn cpuid(&mut self) -> Outcome {
        let leaf = self.vmcb.save.rax as u32;
        let subleaf = self.regs.rcx as u32;
        let r = match self.profile.leaf(leaf) {
            Some(r) => r,
            None => {
                let mut r = kernel_x86::arch::cpuid(leaf, subleaf);
                match leaf {
                    1 => r.ecx |= CPUID1_ECX_HYPERVISOR,
                    0x8000_0001 => r.ecx &= !(1 << 2),
                    0x8000_000A => r = Default::default(),
                    _ => {}
                }
                r
            }
        };
        self.vmcb.save.rax = r.eax as u64;
        self.regs.rbx = r.ebx as u64;
        self.regs.rcx = r.ecx as u64;
        self.regs.rdx = r.edx as u64;
        Outcome::Advance(Intercepted::Cpuid)
    }

    /// MOV to CR4 (intercepted for children): refuse what the partition may
    /// not enable (`svm::cr`: features whose state hv-core does not switch),
    /// with #GP as a CPU without them would. Without decode assists (QEMU
    /// TCG) the source register comes from decoding the instruction.
    pub fn mov_to_cr4(&mut self) -> Outcome {
        let (bytes, fetched) = self.fetch_instruction();
        let mov = match insn::decode_mov_to_cr(&bytes[..fetched]) {
            Ok(m) if m.cr == 4 => m,
            other => {
                self.log_refusal(format_args!("CR4 write exit, but {other:?} at rip: #UD"));
                return Outcome::UD;
            }
        };
        let value = match mov.gpr {
            0 => self.vmcb.save.rax,
            4 => self.vmcb.save.rsp,
            n => self.regs.get(n),
        };
        let s = &self.vmcb.save;
        let long_mode = s.efer & EFER_LMA != 0;
        match svm::cr::check_cr4(value, cr4_allowed(), long_mode, s.cr4, s.cr3) {
            Ok(()) => {
                self.vmcb.save.cr4 = value;
                // The CPU did not execute the write, so it did not flush the
                // guest's TLB as the write would have (PGE, PCIDE, ...):
                // the next entry does.
                self.vmcb.control.tlb_control = TLB_FLUSH_ALL;
                Outcome::Skip(mov.len)
            }
            Err(e) => {
                self.log_refusal(format_args!("mov cr4 <- {value:#x} refused ({e:?}): #GP"));
                Outcome::GP
            }
        }
    }

    /// RDMSR of an intercepted MSR.
    pub fn rdmsr(&mut self) -> Outcome {
        let index = self.regs.rcx as u32;
        let platform = match self.platform.as_mut() {
            Some((vp, time)) => vp.rdmsr(time, index),
            None => None,
        };
        let value = match platform {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                self.log_refusal(format_args!("rdmsr {index:#x} refused ({e:?}): #GP"));
                return Outcome::GP;
            }
            None if self.partition != hv1_abi::ROOT_PARTITION_ID => match child_boot_msr(index) {
                Some(v) => v,
                None => return self.rdmsr_common(index),
            },
            None => return self.rdmsr_common(index),
        };
        self.vmcb.save.rax = value & 0xFFFF_FFFF;
        self.regs.rdx = value >> 32;
        Outcome::Advance(Intercepted::Rdmsr)
    }

    /// The guest crash MSRs exist for this partition (advertised in CPUID
    /// 0x4000_0003 EDX bit 10: children, not the root).
    fn crash_msrs(&self) -> bool {
        self.profile.features & hv1_abi::cpuid::features::GUEST_CRASH_MSR_AVAILABLE != 0
    }

    /// RDMSR of the MSRs root and children share.
    fn rdmsr_common(&mut self, index: u32) -> Outcome {
        let value = match index {
            msr::GUEST_OS_ID => self.msrs.guest_os_id,
            msr::HYPERCALL => self.msrs.hypercall,
            msr::VP_INDEX => self.vp_index as u64,
            msr::VP_ASSIST_PAGE => *self.vp_assist,
            msr::REFERENCE_TSC => self.msrs.reference_tsc,
            msr::CRASH_P0..=msr::CRASH_P4 if self.crash_msrs() => {
                self.msrs.crash_parameters[(index - msr::CRASH_P0) as usize]
            }
            msr::CRASH_CTL if self.crash_msrs() => CRASH_CTL_SUPPORTED,
            _ if SYNIC_MSRS.contains(&index) => match self.synic.read(index) {
                Ok(v) => v,
                Err(e) => {
                    self.log_refusal(format_args!("rdmsr {index:#x} refused ({e:?}): #GP"));
                    return Outcome::GP;
                }
            },
            // LMA as the hardware has it (the guest may have entered long mode since).
            MSR_EFER => (*self.guest_efer & !EFER_LMA) | (self.vmcb.save.efer & EFER_LMA),
            MSR_PAT => self.vmcb.save.g_pat,
            // The SVM control MSRs belong to hv-core: the partition sees SVM off.
            0xC001_0117 | 0xC001_0114 => 0,
            _ if self.ignore_unknown_msrs && !msr::SYNTHETIC_RANGE.contains(&index) => 0,
            _ => {
                self.log_refusal(format_args!("rdmsr {index:#x} not provided: #GP"));
                return Outcome::GP;
            }
        };
        self.vmcb.save.rax = value & 0xFFFF_FFFF;
        self.regs.rdx = value >> 32;
        Outcome::Advance(Intercepted::Rdmsr)
    }

    /// WRMSR of an intercepted MSR.
    pub fn wrmsr(&mut self) -> Outcome {
        let index = self.regs.rcx as u32;
        let value = (self.vmcb.save.rax & 0xFFFF_FFFF) | (self.regs.rdx << 32);
        let platform = match self.platform.as_mut() {
            Some((vp, time)) => vp.wrmsr(time, self.mem, index, value),
            None => None,
        };
        match platform {
            Some(Ok(())) => return Outcome::Advance(Intercepted::Wrmsr),
            Some(Err(e)) => {
                self.log_refusal(format_args!(
                    "wrmsr {index:#x} <- {value:#x} refused ({e:?}): #GP"
                ));
                return Outcome::GP;
            }
            None => {}
        }
        if self.partition != hv1_abi::ROOT_PARTITION_ID
            && let Some(accepted) = child_boot_msr_write(index, value)
        {
            if accepted {
                return Outcome::Advance(Intercepted::Wrmsr);
            }
            self.log_refusal(format_args!("wrmsr {index:#x} <- {value:#x} refused: #GP"));
            return Outcome::GP;
        }
        match index {
            MSR_EFER => return self.write_efer(value),
            // Guest PAT lives in the VMCB (on hardware it is G_PAT under NPT).
            MSR_PAT => {
                let valid = (0..8).all(|i| matches!((value >> (i * 8)) & 0xFF, 0 | 1 | 4 | 5 | 6 | 7));
                if !valid {
                    return Outcome::GP;
                }
                self.vmcb.save.g_pat = value;
            }
            msr::GUEST_OS_ID => {
                self.msrs.guest_os_id = value;
                if value == 0 {
                    // TLFS: clearing the guest OS id disables the hypercall page.
                    self.msrs.hypercall &= !msr::HYPERCALL_ENABLE;
                }
            }
            msr::HYPERCALL => return self.write_hypercall_msr(value),
            msr::CRASH_P0..=msr::CRASH_P4 if self.crash_msrs() => {
                self.msrs.crash_parameters[(index - msr::CRASH_P0) as usize] = value;
            }
            // Any value is accepted (reads keep answering the supported
            // bits); CrashNotify reports the crash once the write completes.
            msr::CRASH_CTL if self.crash_msrs() => {
                if value & msr::CRASH_CTL_NOTIFY != 0 {
                    self.msrs.crash_notify = Some(value);
                }
            }
            // The VP assist page (bit 0 enable, 63:12 its GPA): accepted and
            // kept so that a guest that writes it unconditionally (Linux 6.1
            // `hv_cpu_init`) gets no #GP; hv-core does not use the page (none
            // of the features it serves is advertised). An enabled page must
            // be the partition's own RAM.
            msr::VP_ASSIST_PAGE => {
                if value & 1 != 0 && self.mem.translate(value & !0xFFF, 4096, true).is_none() {
                    self.log_refusal(format_args!("VP assist page {value:#x} is not its RAM: #GP"));
                    return Outcome::GP;
                }
                *self.vp_assist = value;
            }
            msr::REFERENCE_TSC => {
                if value & 1 != 0 {
                    self.log_refusal(format_args!("reference TSC page not provided: #GP"));
                    return Outcome::GP;
                }
                self.msrs.reference_tsc = value;
            }
            // The root may enable or disable its APIC (and x2APIC mode) but
            // not move its MMIO page, which could then sit over hv-core's
            // region in every physical access there.
            MSR_APIC_BASE if self.partition == hv1_abi::ROOT_PARTITION_ID => {
                // SAFETY: APIC_BASE exists on every x86-64 CPU; reading it has
                // no side effects.
                let current = unsafe { kernel_x86::arch::rdmsr(MSR_APIC_BASE) };
                if (value ^ current) & APIC_BASE_ADDRESS != 0 || value & !(APIC_BASE_ADDRESS | 0xD00) != 0 {
                    self.log_refusal(format_args!(
                        "wrmsr APIC_BASE <- {value:#x} would move or break the APIC: #GP"
                    ));
                    return Outcome::GP;
                }
                // SAFETY: the same MMIO page, only the enable bits (BSP is
                // read-only and ignored by the CPU) change, as the root asked.
                unsafe { kernel_x86::arch::wrmsr(MSR_APIC_BASE, value) };
            }
            _ if self.partition == hv1_abi::ROOT_PARTITION_ID
                && ROOT_GUARDED_MSRS.iter().any(|r| r.contains(&index)) =>
            {
                self.log_refusal(format_args!(
                    "wrmsr {index:#x} <- {value:#x} refused: it could reach hv-core's region: #GP"
                ));
                return Outcome::GP;
            }
            _ if SYNIC_MSRS.contains(&index) => return self.write_synic_msr(index, value),
            _ if self.ignore_unknown_msrs && !hv1_abi::msr::SYNTHETIC_RANGE.contains(&index) => {}
            _ => {
                self.log_refusal(format_args!("wrmsr {index:#x} <- {value:#x} refused: #GP"));
                return Outcome::GP;
            }
        }
        Outcome::Advance(Intercepted::Wrmsr)
    }

    /// A SynIC MSR. The root's SIMP and SIEF pages are written by hv-core
    /// (messages and flags from children), so while enabled they are pinned:
    /// never lent to a child, which could otherwise forge what the root reads.
    fn write_synic_msr(&mut self, index: u32, value: u64) -> Outcome {
        let pins = self.partition == hv1_abi::ROOT_PARTITION_ID && matches!(index, msr::SIMP | msr::SIEFP);
        let old = self.synic.read(index).unwrap_or(0);
        let enabled_page = |v: u64| (v & 1 != 0).then_some(v & !0xFFF);
        if pins
            && let Some(page) = enabled_page(value)
            && !crate::memory::pin(page)
        {
            self.log_refusal(format_args!(
                "wrmsr {index:#x} <- {value:#x}: page lent to a child or pin table full: #GP"
            ));
            return Outcome::GP;
        }
        let mem = self.mem;
        let page_ok = |gpa| mem.translate(gpa, 4096, true).is_some();
        match self.synic.write(index, value, page_ok, &mut SynicMem(mem)) {
            Ok(raise) => self.pending.merge(&raise),
            Err(e) => {
                if pins && let Some(page) = enabled_page(value) {
                    crate::memory::unpin(page);
                }
                self.log_refusal(format_args!(
                    "wrmsr {index:#x} <- {value:#x} refused ({e:?}): #GP"
                ));
                return Outcome::GP;
            }
        }
        if pins && let Some(page) = enabled_page(old) {
            crate::memory::unpin(page);
        }
        Outcome::Advance(Intercepted::Wrmsr)
    }

    /// EFER: reserved bits and toggling LME with paging on fault; LMA is
    /// read-only. SVME stays set in the VMCB whatever the guest writes (VMRUN
    /// requires it, and QEMU turns VMMCALL into #UD without it); the guest
    /// reads back what it wrote.
    pub fn write_efer(&mut self, value: u64) -> Outcome {
        let paging = self.vmcb.save.cr0 & (1 << 31) != 0;
        let current = self.vmcb.save.efer;
        let lme_changed = (value ^ current) & EFER_LME != 0;
        if value & !efer_allowed() != 0 || (paging && lme_changed) {
            return Outcome::GP;
        }
        // LMA is read-only: keep what the hardware has. SVME is never the
        // guest's (SVM is hidden); it stays set underneath.
        let value = (value & !(EFER_LMA | EFER_SVME)) | (current & EFER_LMA);
        *self.guest_efer = value;
        self.vmcb.save.efer = value | EFER_SVME;
        // Emulated, so no flush happened for NXE and the like: the next
        // entry flushes.
        self.vmcb.control.tlb_control = TLB_FLUSH_ALL;
        Outcome::Advance(Intercepted::Wrmsr)
    }

    /// HV_X64_MSR_HYPERCALL: bit 0 enable, bit 1 locked, bits 11:2 reserved
    /// (preserved), 63:12 the GPA page where hv-core writes the call stub.
    ///
    /// The root's hypercall page is pinned while enabled: hv-core wrote the
    /// call stub there and the root executes it, so no child may ever be
    /// lent that page.
    fn write_hypercall_msr(&mut self, value: u64) -> Outcome {
        if self.msrs.hypercall & msr::HYPERCALL_LOCKED != 0 {
            self.log_refusal(format_args!("write to the locked HYPERCALL MSR: #GP"));
            return Outcome::GP;
        }
        let pins = self.partition == hv1_abi::ROOT_PARTITION_ID;
        let old_page = (self.msrs.hypercall & msr::HYPERCALL_ENABLE != 0)
            .then_some(self.msrs.hypercall & msr::HYPERCALL_GPFN_MASK);
        let mut value = value;
        if value & msr::HYPERCALL_ENABLE != 0 {
            if self.msrs.guest_os_id == 0 {
                // TLFS: the page cannot be enabled before the guest identifies itself.
                self.log_refusal(format_args!("hypercall page enable ignored: GUEST_OS_ID is 0"));
                value &= !msr::HYPERCALL_ENABLE;
            } else {
                let page = value & msr::HYPERCALL_GPFN_MASK;
                if pins && !crate::memory::pin(page) {
                    self.log_refusal(format_args!("hypercall page {page:#x} is lent to a child: #GP"));
                    return Outcome::GP;
                }
                if self.mem.write(page, &msr::HYPERCALL_PAGE_SVM, 1).is_err() {
                    if pins {
                        crate::memory::unpin(page);
                    }
                    self.log_refusal(format_args!("hypercall page GPA {page:#x} is not its RAM: #GP"));
                    return Outcome::GP;
                }
            }
        }
        if pins && let Some(old) = old_page {
            crate::memory::unpin(old);
        }
        self.msrs.hypercall = value;
        Outcome::Advance(Intercepted::Wrmsr)
    }

    /// May this VP make a hypercall now? TLFS: from CPL > 0 or outside long
    /// mode VMMCALL raises #UD; so does a disabled hypercall interface.
    pub fn hypercall_allowed(&self) -> bool {
        let long_mode = self.vmcb.save.efer & EFER_LMA != 0 && self.vmcb.save.cs.attrib & (1 << 9) != 0;
        self.vmcb.save.cpl == 0 && long_mode && self.msrs.hypercall & msr::HYPERCALL_ENABLE != 0
    }
}

/// A one-line dump of a VMCB for fatal logs.
pub fn dump(vmcb: &Vmcb, regs: &GuestRegs) {
    let (c, s) = (&vmcb.control, &vmcb.save);
    crate::log::emergency(format_args!(
        "  exit {:#x} info1 {:#x} info2 {:#x} intinfo {:#x}",
        c.exit_code, c.exit_info1, c.exit_info2, c.exit_int_info
    ));
    crate::log::emergency(format_args!(
        "  rip {:#x} rsp {:#x} rax {:#x} rflags {:#x} cpl {} efer {:#x}",
        s.rip, s.rsp, s.rax, s.rflags, s.cpl, s.efer
    ));
    crate::log::emergency(format_args!(
        "  cr0 {:#x} cr3 {:#x} cr4 {:#x} cs {:#x}/{:#x} ss {:#x}/{:#x}",
        s.cr0, s.cr3, s.cr4, s.cs.selector, s.cs.attrib, s.ss.selector, s.ss.attrib
    ));
    crate::log::emergency(format_args!("  {regs:x?}"));
}

/// What hv-core counts per partition.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExitStats {
    /// All exits.
    pub total: u64,
    /// Exits by reason (`hv1_abi::private::EXIT_REASONS`).
    pub by_reason: [u64; hv1_abi::private::EXIT_REASON_COUNT],
    /// Exceptions injected into the partition.
    pub injected: u64,
    /// Hypercalls that did not succeed.
    pub failed_hypercalls: u64,
    /// Entries that flushed the TLB (children only).
    pub tlb_flushes: u64,
}

impl ExitStats {
    /// Count one exit of `code` (`info1` tells MSR reads from writes, `rcx`
    /// the MSR).
    pub fn count(&mut self, code: svm::ExitCode, info1: u64, rcx: u64) {
        use hv1_abi::private::reason;
        use svm::ExitCode;
        self.total += 1;
        let bucket = match code {
            ExitCode::CPUID => reason::CPUID,
            ExitCode::MSR if info1 == 0 && rcx as u32 == hv1_abi::msr::GUEST_IDLE => reason::GUEST_IDLE,
            ExitCode::MSR if info1 == 0 => reason::MSR_READ,
            ExitCode::MSR => reason::MSR_WRITE,
            ExitCode::VMMCALL => reason::VMMCALL,
            ExitCode::NPF => reason::NPF,
            ExitCode::HLT => reason::HLT,
            ExitCode::IOIO => reason::IOIO,
            ExitCode::SHUTDOWN => reason::SHUTDOWN,
            ExitCode::INTR => reason::INTR,
            ExitCode::PAUSE => reason::PAUSE,
            _ => reason::OTHER,
        };
        self.by_reason[bucket] += 1;
    }
}
