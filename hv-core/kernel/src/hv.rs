//! The hypervisor's state once the root runs: the root partition (its memory
//! view, synthetic MSRs, counters), the child partitions, and the root's exit
//! handler.

use crate::child::{Child, SharedMaps};
use crate::iommu::RootConfigIo;
use crate::ipc::Bus;
use crate::memory::RootRam;
use crate::vcpu::{self, ExitStats, Outcome, SyntheticMsrs, Vcpu};
use crate::vmrun::GuestRegs;
use amd_iommu::pci::PortAccess;
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
    /// The root VP's HV_X64_MSR_VP_ASSIST_PAGE.
    pub root_vp_assist: u64,
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
            vp_assist: &mut self.root_vp_assist,
            platform: None,
        }
    }

    /// Handle one exit of the root's VP.
    pub fn handle_root_exit(&mut self, vmcb: &mut Vmcb, regs: &mut GuestRegs) {
        let code = ExitCode(vmcb.control.exit_code);
        self.root_stats.count(code, vmcb.control.exit_info1, regs.rcx);
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
            features: 0,
            hints: 0,
        };
        if code == ExitCode::VMMCALL {
            return self.root_hypercall(vmcb, regs, profile);
        }
        if code == ExitCode::IOIO {
            return self.root_ioio(vmcb);
        }
        let hv_region = self.hv_region.clone();
        let iommu = self.dma.iommu.as_ref();
        let iommu_window = iommu.map(|i| i.mmio_window());
        let npf_ecam_name = iommu.and_then(|i| i.config.ecam_name(vmcb.control.exit_info2));
        let mut cpu = self.root_cpu(vmcb, regs, profile);
        let outcome = match code {
            ExitCode::CPUID => cpu.cpuid(),
            ExitCode::MSR if cpu.vmcb.control.exit_info1 == 0 => cpu.rdmsr(),
            ExitCode::MSR => cpu.wrmsr(),
            ExitCode::NPF => {
                // The root touched a GPA its NPT does not map: hv-core's region,
                // the IOMMU's registers, the ECAM page of a PCI function whose
                // configuration hv-core guards, or beyond the mapped range. It
                // gets #GP(0) at the faulting instruction; nothing is touched.
                let gpa = cpu.vmcb.control.exit_info2;
                let info = cpu.vmcb.control.exit_info1;
                let iommu = iommu_window.as_ref().is_some_and(|w| w.contains(&gpa));
                let what = if hv_region.contains(&gpa) {
                    "hv-core's region"
                } else if iommu {
                    "the IOMMU's registers"
                } else {
                    // A guarded function's ECAM page, or nothing at all.
                    npf_ecam_name.unwrap_or("unmapped memory")
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

    /// A root IOIO exit. The intercepted ports are hv-core's log port
    /// (writes dropped, reads float high) and, with an IOMMU, the PCI
    /// configuration ports 0xCF8..=0xCFF, done on the root's behalf except
    /// writes to registers hv-core guards and string I/O, which are dropped
    /// (`iommu::ConfigGuards::root_io`). RIP moves to the next instruction
    /// either way, which IOIO exits report in EXITINFO2 (APM vol. 2
    /// §15.10.2: EXITINFO1 bit 0 = IN, bit 2 string, bit 3 REP, bits 6:4
    /// operand size one-hot, bits 31:16 port).
    fn root_ioio(&mut self, vmcb: &mut Vmcb) {
        let info = vmcb.control.exit_info1;
        let access = PortAccess {
            port: (info >> 16) as u16,
            size: match (info >> 4) & 0x7 {
                0b100 => 4,
                0b010 => 2,
                _ => 1,
            },
            write: info & 1 == 0,
        };
        let string = info & (1 << 2) != 0;
        vmcb.save.rip = vmcb.control.exit_info2;
        let logged = &mut self.root_logged;
        let root = hv1_abi::ROOT_PARTITION_ID;
        let guards = self.dma.iommu.as_mut().map(|i| &mut i.config);
        match guards {
            Some(guards) if access.touches_config_ports() => {
                let (port, size) = (access.port, access.size);
                match guards.root_io(access, string, &mut vmcb.save.rax) {
                    RootConfigIo::Done => {}
                    RootConfigIo::Refused(r) => vcpu::log_limited(
                        logged,
                        root,
                        format_args!(
                            "{}-bit PCI config write at port {port:#x} to {:02x}:{:02x}.{} offset {:#x} refused: {} is hv-core's (dropped; {} refused)",
                            u32::from(size) * 8,
                            r.devid >> 8,
                            (r.devid >> 3) & 0x1F,
                            r.devid & 7,
                            r.offset,
                            r.what,
                            guards.refused
                        ),
                    ),
                    RootConfigIo::StringRefused => vcpu::log_limited(
                        logged,
                        root,
                        format_args!(
                            "string I/O on PCI config port {port:#x} refused (dropped; {} refused)",
                            guards.refused
                        ),
                    ),
                }
            }
            _ => {
                if !access.write {
                    vmcb.save.rax |= 0xFF;
                }
                if access.port != self.log_port {
                    vcpu::log_limited(
                        logged,
                        root,
                        format_args!("unexpected port {:#x} intercept", access.port),
                    );
                }
            }
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
