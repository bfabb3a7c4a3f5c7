//! The hypervisor's state once the root runs: the root partition (its memory
//! view, synthetic MSRs, counters), the child partitions, and the root's exit
//! handler.

use crate::child::{Child, SharedMaps};
use crate::ipc::Bus;
use crate::memory::RootRam;
use crate::vcpu::{self, ExitStats, Outcome, SyntheticMsrs, Vcpu};
use crate::vmrun::GuestRegs;
use core::ops::Range;
use hv1_abi::HvStatus;
use hv1_abi::cpuid::{HvCpuidProfile, PartitionPrivileges};
use partitions::Table;
use svm::insn::Intercepted;
use svm::{ExitCode, Vmcb};

/// Most child partitions at once.
pub const MAX_CHILDREN: usize = 16;

/// Everything hv-core keeps.
pub struct Hv {
    /// The root's RAM (GPA == SPA).
    pub root_ram: RootRam,
    /// The root's synthetic MSRs.
    pub root_msrs: SyntheticMsrs,
    /// EFER as the root believes it is.
    pub root_efer: u64,
    /// The root's exit counters.
    pub root_stats: ExitStats,
    /// Refusals logged for the root.
    pub root_logged: u32,
    /// hv-core's region.
    pub hv_region: Range<u64>,
    /// hv-core's log port (the root's accesses to it are intercepted).
    pub log_port: u16,
    /// Child partitions, ids from 2 (the root is 1).
    pub children: Table<Child, MAX_CHILDREN>,
    /// IOPM/MSRPM shared by every child VP.
    pub maps: SharedMaps,
    /// This CPU's host save area (VMSAVE of hv-core's own state).
    pub host_save: u64,
    /// The root's SynIC and the port tables.
    pub bus: Bus,
    /// The IOMMU and the DMA canary.
    pub dma: crate::iommu::DmaGuard,
}

impl Hv {
    /// The root's VP as the common emulation sees it.
    fn root_cpu<'a>(
        &'a mut self,
        vmcb: &'a mut Vmcb,
        regs: &'a mut GuestRegs,
        profile: HvCpuidProfile,
    ) -> Vcpu<'a> {
        Vcpu {
            vmcb,
            regs,
            guest_efer: &mut self.root_efer,
            mem: &self.root_ram,
            msrs: &mut self.root_msrs,
            synic: &mut self.bus.root,
            pending: &mut self.bus.root_pending,
            partition: hv1_abi::ROOT_PARTITION_ID,
            vp_index: 0,
            profile,
            ignore_unknown_msrs: false,
            logged: &mut self.root_logged,
        }
    }

    /// Handle one exit of the root's VP.
    pub fn handle_root_exit(&mut self, vmcb: &mut Vmcb, regs: &mut GuestRegs) {
        let code = ExitCode(vmcb.control.exit_code);
        self.root_stats.count(code, vmcb.control.exit_info1);
        if code.is_invalid() {
            crate::log::emergency(format_args!(
                "FATAL: VMRUN failed (VMEXIT_INVALID): inconsistent root VMCB"
            ));
            vcpu::dump(vmcb, regs);
            crate::log::fatal_stop();
        }
        let profile = HvCpuidProfile {
            privileges: PartitionPrivileges::ROOT,
            vp_count: 1,
            lp_count: 1,
        };
        if code == ExitCode::VMMCALL {
            return self.root_hypercall(vmcb, regs, profile);
        }
        let hv_region = self.hv_region.clone();
        let log_port = self.log_port;
        let iommu_window = self.dma.iommu.as_ref().map(|i| i.mmio_window());
        let mut cpu = self.root_cpu(vmcb, regs, profile);
        let outcome = match code {
            ExitCode::CPUID => cpu.cpuid(),
            ExitCode::MSR if cpu.vmcb.control.exit_info1 == 0 => cpu.rdmsr(),
            ExitCode::MSR => cpu.wrmsr(),
            ExitCode::NPF => {
                // The root touched a GPA its NPT does not map: hv-core's region,
                // or beyond the mapped range. It gets #GP(0) at the faulting
                // instruction; hv-core's memory is untouched.
                let gpa = cpu.vmcb.control.exit_info2;
                let info = cpu.vmcb.control.exit_info1;
                let iommu = iommu_window.as_ref().is_some_and(|w| w.contains(&gpa));
                let what = if hv_region.contains(&gpa) {
                    "hv-core's region"
                } else if iommu {
                    "the IOMMU's registers"
                } else {
                    "unmapped memory"
                };
                hvlog!(
                    "partition 1: {} of {what} at GPA {gpa:#x} (rip {:#x}, npf info {info:#x}): #GP",
                    if info & svm::vmcb::npf::WRITE != 0 {
                        "write"
                    } else {
                        "read"
                    },
                    cpu.vmcb.save.rip
                );
                Outcome::GP
            }
            // Only hv-core's log port is intercepted for the root: writes are
            // dropped (counted as exits), reads float high. RIP moves to the
            // next instruction, which IOIO exits report in EXITINFO2.
            ExitCode::IOIO => {
                let info = cpu.vmcb.control.exit_info1;
                let port = (info >> 16) as u16;
                if info & 1 != 0 {
                    cpu.vmcb.save.rax |= 0xFF;
                }
                cpu.vmcb.save.rip = cpu.vmcb.control.exit_info2;
                if port != log_port {
                    cpu.log_refusal(format_args!("unexpected port {port:#x} intercept"));
                }
                Outcome::Skip(0)
            }
            ExitCode::SHUTDOWN => {
                crate::log::emergency(format_args!("partition 1: shutdown (triple fault)"));
                vcpu::dump(cpu.vmcb, cpu.regs);
                // The root is the machine's OS: when it dies, the machine stops.
                crate::log::fatal_stop()
            }
            // SVM instructions are not offered to partitions (no nested virtualization).
            // INVD would drop dirty cache lines machine-wide (hv-core's too).
            ExitCode::INVD => Outcome::Advance(Intercepted::Invd),
            c if c.is_refused_instruction() => Outcome::UD,
            other => {
                crate::log::emergency(format_args!("FATAL: unexpected exit {other:?} from the root"));
                vcpu::dump(cpu.vmcb, cpu.regs);
                crate::log::fatal_stop()
            }
        };
        if cpu.finish(outcome) {
            self.root_stats.injected += 1;
        }
    }

    fn root_hypercall(&mut self, vmcb: &mut Vmcb, regs: &mut GuestRegs, profile: HvCpuidProfile) {
        let allowed = self.root_cpu(&mut *vmcb, &mut *regs, profile).hypercall_allowed();
        let outcome = if allowed {
            let result = crate::hypercall::root_call(self, regs.rcx, regs.rdx, regs.r8);
            if result.status != HvStatus::SUCCESS {
                self.root_stats.failed_hypercalls += 1;
            }
            vmcb.save.rax = result.encode();
            Outcome::Advance(Intercepted::Vmmcall)
        } else {
            Outcome::UD
        };
        let mut cpu = self.root_cpu(vmcb, regs, profile);
        if cpu.finish(outcome) {
            self.root_stats.injected += 1;
        }
    }
}
