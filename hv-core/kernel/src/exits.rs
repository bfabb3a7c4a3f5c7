//! #VMEXIT handling for a partition (today: the root). Every value read from
//! the guest — MSR numbers and values, hypercall GPAs, RIP for instruction
//! fetch — is checked before use; a bad one gets the architectural answer
//! (#GP, #UD or an HV_STATUS), never a crash of hv-core.

use crate::memory::{GuestRam, RegionAllocator};
use crate::vmrun::GuestRegs;
use core::ops::Range;
use hv1_abi::cpuid::{CPUID1_ECX_HYPERVISOR, HvCpuidProfile, PartitionPrivileges};
use hv1_abi::msr;
use hv1_abi::private::{EXIT_REASON_COUNT, reason};
use svm::insn::{self, Intercepted};
use svm::vmcb::{EFER_SVME, event};
use svm::{ExitCode, Vmcb};

const VECTOR_UD: u8 = 6;
const VECTOR_GP: u8 = 13;
const MSR_EFER: u32 = 0xC000_0080;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// EFER bits a guest may set: SCE, LME, LMA, NXE, SVME, LMSLE, FFXSR, TCE.
const EFER_ALLOWED: u64 =
    (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15);

/// Per-partition synthetic MSR state (TLFS partition-wide MSRs).
#[derive(Debug, Default)]
pub struct SyntheticMsrs {
    /// HV_X64_MSR_GUEST_OS_ID.
    pub guest_os_id: u64,
    /// HV_X64_MSR_HYPERCALL as last accepted.
    pub hypercall: u64,
}

/// What hv-core counts per partition.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExitStats {
    /// All exits.
    pub total: u64,
    /// Exits by reason (`hv1_abi::private::EXIT_REASONS`).
    pub by_reason: [u64; EXIT_REASON_COUNT],
    /// Exceptions injected into the partition.
    pub injected: u64,
    /// Hypercalls that did not succeed.
    pub failed_hypercalls: u64,
}

/// A partition as hv-core sees it while handling its exits.
pub struct Partition {
    /// Partition id.
    pub id: u64,
    /// What the partition may do (CPUID 0x4000_0003 tells it the same).
    pub privileges: PartitionPrivileges,
    /// EFER as the guest believes it is (the VMCB copy always has SVME set).
    pub guest_efer: u64,
    /// Guest RAM hv-core may access on its behalf.
    pub ram: GuestRam,
    /// hv-core's own region (never mapped for guests).
    pub hv_region: Range<u64>,
    /// Synthetic MSRs.
    pub msrs: SyntheticMsrs,
    /// Counters.
    pub stats: ExitStats,
    /// hv-core's region allocator (for accounting).
    pub alloc: RegionAllocator,
}

/// Result of emulating an instruction.
enum Outcome {
    /// Done: step over the instruction.
    Advance(Intercepted),
    /// Deliver an exception instead (RIP stays on the instruction).
    Inject(u32, u32),
}

impl Partition {
    /// The CPUID profile this partition sees.
    pub fn cpuid_profile(&self) -> HvCpuidProfile {
        HvCpuidProfile {
            privileges: PartitionPrivileges::ROOT,
            vp_count: 1,
            lp_count: 1,
        }
    }

    /// Handle one exit of the VP whose VMCB is `vmcb`.
    pub fn handle_exit(&mut self, vmcb: &mut Vmcb, regs: &mut GuestRegs) {
        let code = ExitCode(vmcb.control.exit_code);
        self.stats.total += 1;
        if code.is_invalid() {
            crate::log::emergency(format_args!(
                "FATAL: VMRUN failed (VMEXIT_INVALID): inconsistent root VMCB"
            ));
            dump(vmcb, regs);
            crate::log::fatal_stop();
        }
        let bucket = match code {
            ExitCode::CPUID => reason::CPUID,
            ExitCode::MSR if vmcb.control.exit_info1 == 0 => reason::MSR_READ,
            ExitCode::MSR => reason::MSR_WRITE,
            ExitCode::VMMCALL => reason::VMMCALL,
            ExitCode::NPF => reason::NPF,
            ExitCode::HLT => reason::HLT,
            ExitCode::IOIO => reason::IOIO,
            ExitCode::SHUTDOWN => reason::SHUTDOWN,
            ExitCode::INTR => reason::INTR,
            _ => reason::OTHER,
        };
        self.stats.by_reason[bucket] += 1;

        let outcome = match code {
            ExitCode::CPUID => self.cpuid(vmcb, regs),
            ExitCode::MSR if vmcb.control.exit_info1 == 0 => self.rdmsr(vmcb, regs),
            ExitCode::MSR => self.wrmsr(vmcb, regs),
            ExitCode::VMMCALL => self.vmmcall(vmcb, regs),
            ExitCode::NPF => self.nested_page_fault(vmcb),
            ExitCode::SHUTDOWN => {
                crate::log::emergency(format_args!("partition {}: shutdown (triple fault)", self.id));
                dump(vmcb, regs);
                // The root is the machine's OS: when it dies, the machine stops.
                crate::log::fatal_stop()
            }
            // SVM instructions are not offered to partitions (no nested virtualization).
            ExitCode(0x80..=0x86) | ExitCode(0x76) => Outcome::Inject(event::exception(VECTOR_UD), 0),
            other => {
                crate::log::emergency(format_args!(
                    "FATAL: unexpected exit {other:?} from partition {}",
                    self.id
                ));
                dump(vmcb, regs);
                crate::log::fatal_stop()
            }
        };
        match outcome {
            Outcome::Advance(kind) => self.advance_rip(vmcb, kind),
            Outcome::Inject(event, error) => {
                vmcb.control.event_inj = event;
                vmcb.control.event_inj_err = error;
                self.stats.injected += 1;
            }
        }
    }

    /// Step over the intercepted instruction. Without NRIP save (QEMU TCG) the
    /// length comes from decoding the bytes at RIP, which also confirms they
    /// are the instruction the exit reported.
    fn advance_rip(&mut self, vmcb: &mut Vmcb, kind: Intercepted) {
        let rip = vmcb.save.rip;
        let mut bytes = [0u8; insn::MAX_LEN];
        let mut fetched = 0;
        for (i, slot) in bytes.iter_mut().enumerate() {
            match self.read_guest_virt_u8(vmcb, vmcb.save.cs.base.wrapping_add(rip).wrapping_add(i as u64)) {
                Some(b) => {
                    *slot = b;
                    fetched += 1;
                }
                None => break,
            }
        }
        match insn::length(&bytes[..fetched], kind) {
            Ok(len) => vmcb.save.rip = rip.wrapping_add(len as u64),
            Err(e) => {
                // The bytes at RIP are not what the CPU said it executed: a
                // self-modifying race or a hypervisor bug. Refuse to guess.
                hvlog!(
                    "partition {}: cannot step over {kind:?} at {rip:#x}: {e:?}; injecting #UD",
                    self.id
                );
                vmcb.control.event_inj = event::exception(VECTOR_UD);
                self.stats.injected += 1;
            }
        }
    }

    /// Read a byte at a guest virtual address through the guest's page tables.
    fn read_guest_virt_u8(&self, vmcb: &Vmcb, va: u64) -> Option<u8> {
        let paging = vmcb.save.cr0 & (1 << 31) != 0;
        let gpa = if paging {
            x86_paging::walk(|gpa| self.ram.read_u64(gpa), vmcb.save.cr3, va)
                .ok()?
                .phys
        } else {
            va
        };
        self.ram.read_u8(gpa)
    }

    fn cpuid(&mut self, vmcb: &mut Vmcb, regs: &mut GuestRegs) -> Outcome {
        let leaf = vmcb.save.rax as u32;
        let subleaf = regs.rcx as u32;
        let r = match self.cpuid_profile().leaf(leaf) {
            Some(r) => r,
            None => {
                let mut r = kernel_x86::arch::cpuid(leaf, subleaf);
                match leaf {
                    1 => r.ecx |= CPUID1_ECX_HYPERVISOR,
                    // No nested virtualization: hide SVM from partitions.
                    0x8000_0001 => r.ecx &= !(1 << 2),
                    0x8000_000A => r = Default::default(),
                    _ => {}
                }
                r
            }
        };
        vmcb.save.rax = r.eax as u64;
        regs.rbx = r.ebx as u64;
        regs.rcx = r.ecx as u64;
        regs.rdx = r.edx as u64;
        Outcome::Advance(Intercepted::Cpuid)
    }

    fn rdmsr(&mut self, vmcb: &mut Vmcb, regs: &mut GuestRegs) -> Outcome {
        let index = regs.rcx as u32;
        let value = match index {
            msr::GUEST_OS_ID => self.msrs.guest_os_id,
            msr::HYPERCALL => self.msrs.hypercall,
            msr::VP_INDEX => 0,
            MSR_EFER => self.guest_efer,
            // The SVM control MSRs belong to hv-core: the partition sees SVM off.
            0xC001_0117 | 0xC001_0114 => 0,
            _ => {
                hvlog!("partition {}: rdmsr {index:#x} not provided: #GP", self.id);
                return Outcome::Inject(event::exception_with_error(VECTOR_GP), 0);
            }
        };
        vmcb.save.rax = value & 0xFFFF_FFFF;
        regs.rdx = value >> 32;
        Outcome::Advance(Intercepted::Rdmsr)
    }

    fn wrmsr(&mut self, vmcb: &mut Vmcb, regs: &mut GuestRegs) -> Outcome {
        let index = regs.rcx as u32;
        let value = (vmcb.save.rax & 0xFFFF_FFFF) | (regs.rdx << 32);
        let gp = Outcome::Inject(event::exception_with_error(VECTOR_GP), 0);
        match index {
            MSR_EFER => {
                let paging = vmcb.save.cr0 & (1 << 31) != 0;
                let lme_changed = (value ^ self.guest_efer) & EFER_LME != 0;
                if value & !EFER_ALLOWED != 0 || (paging && lme_changed) {
                    return gp;
                }
                // LMA is read-only. SVME stays set in the VMCB whatever the guest
                // writes (VMRUN requires it, and QEMU turns VMMCALL into #UD
                // without it); the guest reads back what it wrote.
                let value = (value & !EFER_LMA) | (self.guest_efer & EFER_LMA);
                self.guest_efer = value;
                vmcb.save.efer = value | EFER_SVME;
            }
            msr::GUEST_OS_ID => {
                self.msrs.guest_os_id = value;
                if value == 0 {
                    // TLFS: clearing the guest OS id disables the hypercall page.
                    self.msrs.hypercall &= !msr::HYPERCALL_ENABLE;
                }
            }
            msr::HYPERCALL => return self.write_hypercall_msr(value),
            _ => {
                hvlog!(
                    "partition {}: wrmsr {index:#x} <- {value:#x} refused: #GP",
                    self.id
                );
                return gp;
            }
        }
        Outcome::Advance(Intercepted::Wrmsr)
    }

    /// HV_X64_MSR_HYPERCALL: bit 0 enable, bit 1 locked, bits 11:2 reserved
    /// (preserved), 63:12 the GPA page where hv-core writes the call stub.
    fn write_hypercall_msr(&mut self, value: u64) -> Outcome {
        let gp = Outcome::Inject(event::exception_with_error(VECTOR_GP), 0);
        if self.msrs.hypercall & msr::HYPERCALL_LOCKED != 0 {
            return gp;
        }
        if value & msr::HYPERCALL_ENABLE != 0 {
            if self.msrs.guest_os_id == 0 {
                // TLFS: the page cannot be enabled before the guest identifies itself.
                hvlog!(
                    "partition {}: hypercall page enable ignored: GUEST_OS_ID is 0",
                    self.id
                );
                self.msrs.hypercall = value & !msr::HYPERCALL_ENABLE;
                return Outcome::Advance(Intercepted::Wrmsr);
            }
            let page = value & msr::HYPERCALL_GPFN_MASK;
            if self.ram.write(page, &msr::HYPERCALL_PAGE_SVM, 1).is_err() {
                hvlog!(
                    "partition {}: hypercall page GPA {page:#x} is not its RAM: #GP",
                    self.id
                );
                return gp;
            }
            hvlog!("partition {}: hypercall page enabled at {page:#x}", self.id);
        }
        self.msrs.hypercall = value;
        Outcome::Advance(Intercepted::Wrmsr)
    }

    fn vmmcall(&mut self, vmcb: &mut Vmcb, regs: &mut GuestRegs) -> Outcome {
        // TLFS: hypercalls from CPL > 0 or outside long mode raise #UD.
        let long_mode = vmcb.save.efer & (1 << 10) != 0 && vmcb.save.cs.attrib & (1 << 9) != 0;
        if vmcb.save.cpl != 0 || !long_mode || self.msrs.hypercall & msr::HYPERCALL_ENABLE == 0 {
            return Outcome::Inject(event::exception(VECTOR_UD), 0);
        }
        let result = crate::hypercall::dispatch(self, regs.rcx, regs.rdx, regs.r8);
        if result.status != hv1_abi::HvStatus::SUCCESS {
            self.stats.failed_hypercalls += 1;
        }
        vmcb.save.rax = result.encode();
        Outcome::Advance(Intercepted::Vmmcall)
    }

    /// The root touched a GPA its NPT does not map: hv-core's region, or
    /// beyond the mapped physical range. It gets #GP(0) at the faulting
    /// instruction; hv-core's memory is untouched.
    fn nested_page_fault(&mut self, vmcb: &mut Vmcb) -> Outcome {
        let gpa = vmcb.control.exit_info2;
        let info = vmcb.control.exit_info1;
        let what = if self.hv_region.contains(&gpa) {
            "hv-core's region"
        } else {
            "unmapped memory"
        };
        hvlog!(
            "partition {}: {} of {what} at GPA {gpa:#x} (rip {:#x}, npf info {info:#x}): #GP",
            self.id,
            if info & svm::vmcb::npf::WRITE != 0 {
                "write"
            } else {
                "read"
            },
            vmcb.save.rip
        );
        Outcome::Inject(event::exception_with_error(VECTOR_GP), 0)
    }
}

fn dump(vmcb: &Vmcb, regs: &GuestRegs) {
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
