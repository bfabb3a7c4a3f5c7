//! Hypervisor CPUID leaves 0x4000_0000.. (TLFS "Feature Discovery").

use bitflags::bitflags;

/// Vendor and max-leaf leaf.
pub const LEAF_VENDOR: u32 = 0x4000_0000;
/// Interface signature leaf ("Hv#1" in EAX).
pub const LEAF_INTERFACE: u32 = 0x4000_0001;
/// Hypervisor version leaf.
pub const LEAF_VERSION: u32 = 0x4000_0002;
/// Partition privileges (EAX/EBX) and feature identification (EDX).
pub const LEAF_FEATURES: u32 = 0x4000_0003;
/// Implementation recommendations.
pub const LEAF_ENLIGHTENMENTS: u32 = 0x4000_0004;
/// Implementation limits.
pub const LEAF_LIMITS: u32 = 0x4000_0005;
/// Hardware features in use by the hypervisor.
pub const LEAF_HW_FEATURES: u32 = 0x4000_0006;
/// Highest leaf this hypervisor implements (Linux requires >= 0x4000_0005).
pub const MAX_LEAF: u32 = LEAF_HW_FEATURES;

/// "Microsoft Hv" as EBX, ECX, EDX of leaf 0x4000_0000.
pub const VENDOR_MICROSOFT_HV: [u32; 3] = [0x7263_694D, 0x666F_736F, 0x7648_2074];
/// "Hv#1" in EAX of leaf 0x4000_0001.
pub const INTERFACE_HV1: u32 = 0x3123_7648;

/// CPUID.1:ECX bit 31: "a hypervisor is present".
pub const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;

bitflags! {
    /// Partition privilege mask, the 64-bit HV_PARTITION_PRIVILEGE_MASK; the low
    /// half is CPUID 0x4000_0003.EAX, the high half EBX.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PartitionPrivileges: u64 {
        /// AccessVpRunTimeReg.
        const ACCESS_VP_RUNTIME = 1 << 0;
        /// AccessPartitionReferenceCounter.
        const ACCESS_PARTITION_REFERENCE_COUNTER = 1 << 1;
        /// AccessSynicRegs.
        const ACCESS_SYNIC_REGS = 1 << 2;
        /// AccessSyntheticTimerRegs.
        const ACCESS_SYNTHETIC_TIMER_REGS = 1 << 3;
        /// AccessIntrCtrlRegs (APIC MSRs).
        const ACCESS_APIC_MSRS = 1 << 4;
        /// AccessHypercallMsrs (GUEST_OS_ID, HYPERCALL).
        const ACCESS_HYPERCALL_MSRS = 1 << 5;
        /// AccessVpIndex.
        const ACCESS_VP_INDEX = 1 << 6;
        /// AccessResetReg.
        const ACCESS_RESET_REG = 1 << 7;
        /// AccessStatsReg.
        const ACCESS_STATS_REG = 1 << 8;
        /// AccessPartitionReferenceTsc.
        const ACCESS_PARTITION_REFERENCE_TSC = 1 << 9;
        /// AccessGuestIdleReg.
        const ACCESS_GUEST_IDLE_REG = 1 << 10;
        /// AccessFrequencyRegs.
        const ACCESS_FREQUENCY_REGS = 1 << 11;
        /// AccessTscInvariantControls (HV_ACCESS_TSC_INVARIANT, EAX bit 15):
        /// HV_X64_MSR_TSC_INVARIANT_CONTROL (0x40000118).
        const ACCESS_TSC_INVARIANT_CONTROLS = 1 << 15;
        /// CreatePartitions (EBX bit 0).
        const CREATE_PARTITIONS = 1 << 32;
        /// AccessPartitionId (EBX bit 1).
        const ACCESS_PARTITION_ID = 1 << 33;
        /// AccessMemoryPool (EBX bit 2).
        const ACCESS_MEMORY_POOL = 1 << 34;
        /// PostMessages (EBX bit 4).
        const POST_MESSAGES = 1 << 36;
        /// SignalEvents (EBX bit 5).
        const SIGNAL_EVENTS = 1 << 37;
        /// CreatePort (EBX bit 6).
        const CREATE_PORT = 1 << 38;
        /// ConnectPort (EBX bit 7).
        const CONNECT_PORT = 1 << 39;
        /// AccessStats (EBX bit 8).
        const ACCESS_STATS = 1 << 40;
        /// Debugging (EBX bit 11).
        const DEBUGGING = 1 << 43;
        /// CpuManagement (EBX bit 12): only the root partition has it.
        const CPU_MANAGEMENT = 1 << 44;
    }
}

impl PartitionPrivileges {
    /// What the root partition is granted: everything a partition manager
    /// needs. AccessVpRunTimeReg is not granted: hv-core does not keep VP run
    /// time (HV_X64_MSR_VP_RUNTIME), and nothing is advertised that is not
    /// implemented (Windows reads that MSR when the bit is set).
    pub const ROOT: Self = Self::ACCESS_SYNIC_REGS
        .union(Self::ACCESS_HYPERCALL_MSRS)
        .union(Self::ACCESS_VP_INDEX)
        .union(Self::CREATE_PARTITIONS)
        .union(Self::ACCESS_PARTITION_ID)
        .union(Self::ACCESS_MEMORY_POOL)
        .union(Self::POST_MESSAGES)
        .union(Self::SIGNAL_EVENTS)
        .union(Self::CREATE_PORT)
        .union(Self::CONNECT_PORT)
        .union(Self::ACCESS_STATS)
        .union(Self::CPU_MANAGEMENT);

    /// CPUID 0x4000_0003 EAX (low half of the mask).
    pub const fn eax(self) -> u32 {
        self.bits() as u32
    }

    /// CPUID 0x4000_0003 EBX (high half of the mask).
    pub const fn ebx(self) -> u32 {
        (self.bits() >> 32) as u32
    }

    /// Rebuild the mask from the EAX/EBX a guest read.
    pub const fn from_cpuid(eax: u32, ebx: u32) -> Self {
        Self::from_bits_retain(((ebx as u64) << 32) | eax as u64)
    }
}

/// The four registers a CPUID leaf returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidResult {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// CPUID 0x4000_0003 EDX: feature identification (TLFS "Feature
/// Discovery"; Linux `include/asm-generic/hyperv-tlfs.h`).
pub mod features {
    /// Guest debugging support.
    pub const GUEST_DEBUGGING: u32 = 1 << 1;
    /// Virtual guest idle state.
    pub const GUEST_IDLE_STATE: u32 = 1 << 5;
    /// HV_FEATURE_FREQUENCY_MSRS_AVAILABLE: TSC_FREQUENCY (0x40000022) and
    /// APIC_FREQUENCY (0x40000023) can be read (Linux 6.1 `mshyperv.c`
    /// needs it together with AccessFrequencyRegs).
    pub const FREQUENCY_MSRS_AVAILABLE: u32 = 1 << 8;
    /// HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE: the guest crash MSRs
    /// (`msr::CRASH_P0`..`msr::CRASH_CTL`, 0x4000_0100-0x4000_0105).
    pub const GUEST_CRASH_MSR_AVAILABLE: u32 = 1 << 10;
    /// HV_STIMER_DIRECT_MODE_AVAILABLE.
    pub const STIMER_DIRECT_MODE_AVAILABLE: u32 = 1 << 19;
}

/// CPUID 0x4000_0004 EAX: implementation recommendations (TLFS "Feature
/// Discovery"; Linux `arch/x86/include/asm/hyperv-tlfs.h`, read into
/// `ms_hyperv.hints`).
pub mod hints {
    /// HV_X64_CLUSTER_IPI_RECOMMENDED: send IPIs with
    /// HvCallSendSyntheticClusterIpi (0x000B) rather than the APIC's ICR.
    /// Linux 6.1 `hv_apic.c` then sends every fixed IPI with vector
    /// 0x10-0xFF through the hypercall (falling back to the APIC when it
    /// fails), and `hv_spinlock.c` needs it, with AccessGuestIdleReg, to
    /// turn on paravirtual spinlocks.
    pub const CLUSTER_IPI_RECOMMENDED: u32 = 1 << 10;
}

/// What a partition is told about the hypervisor.
#[derive(Debug, Clone, Copy)]
pub struct HvCpuidProfile {
    /// Privileges granted to the partition.
    pub privileges: PartitionPrivileges,
    /// Number of virtual processors in the partition.
    pub vp_count: u32,
    /// Number of logical processors the hypervisor runs on.
    pub lp_count: u32,
    /// Feature identification bits (leaf 0x4000_0003 EDX, [`features`]).
    pub features: u32,
    /// Implementation recommendations (leaf 0x4000_0004 EAX, [`hints`]).
    pub hints: u32,
}

/// Our hypervisor version, reported in leaf 0x4000_0002 (major.minor in EBX).
pub const HV_VERSION_MAJOR: u32 = 0;
/// Minor version.
pub const HV_VERSION_MINOR: u32 = 1;

impl HvCpuidProfile {
    /// The value of hypervisor leaf `leaf`, or `None` if the leaf is outside
    /// the 0x4000_0000..=0x4000_FFFF range this profile answers for.
    pub fn leaf(&self, leaf: u32) -> Option<CpuidResult> {
        if !(0x4000_0000..=0x4000_FFFF).contains(&leaf) {
            return None;
        }
        let r = match leaf {
            LEAF_VENDOR => CpuidResult {
                eax: MAX_LEAF,
                ebx: VENDOR_MICROSOFT_HV[0],
                ecx: VENDOR_MICROSOFT_HV[1],
                edx: VENDOR_MICROSOFT_HV[2],
            },
            LEAF_INTERFACE => CpuidResult {
                eax: INTERFACE_HV1,
                ..Default::default()
            },
            LEAF_VERSION => CpuidResult {
                eax: 1,
                ebx: (HV_VERSION_MAJOR << 16) | HV_VERSION_MINOR,
                ..Default::default()
            },
            LEAF_FEATURES => CpuidResult {
                eax: self.privileges.eax(),
                ebx: self.privileges.ebx(),
                ecx: 0,
                edx: self.features,
            },
            // EBX = 0xFFFF_FFFF: never notify about long spin waits
            // (HvCallNotifyLongSpinWait is not implemented).
            LEAF_ENLIGHTENMENTS => CpuidResult {
                eax: self.hints,
                ebx: 0xFFFF_FFFF,
                ..Default::default()
            },
            LEAF_LIMITS => CpuidResult {
                eax: self.vp_count,
                ebx: self.lp_count,
                ..Default::default()
            },
            // Every other leaf in the range (including 0x4000_0081, which Linux
            // reads unconditionally) is zero.
            _ => CpuidResult::default(),
        };
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_ascii(words: [u32; 3]) -> String {
        words
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .map(char::from)
            .collect()
    }

    #[test]
    fn vendor_and_interface_signatures_spell_the_tlfs_strings() {
        assert_eq!(as_ascii(VENDOR_MICROSOFT_HV), "Microsoft Hv");
        assert_eq!(&INTERFACE_HV1.to_le_bytes(), b"Hv#1");
    }

    #[test]
    fn root_profile_has_linux_mandatory_bits_and_cpu_management() {
        let p = HvCpuidProfile {
            privileges: PartitionPrivileges::ROOT,
            vp_count: 1,
            lp_count: 1,
            features: 0,
            hints: 0,
        };
        let v = p.leaf(LEAF_VENDOR).unwrap();
        assert!((0x4000_0005..=0x4000_FFFF).contains(&v.eax));
        let f = p.leaf(LEAF_FEATURES).unwrap();
        // Linux: EAX bits 5 (hypercall MSRs) and 6 (VP index) are mandatory.
        assert_eq!(f.eax & 0x60, 0x60);
        assert_ne!(f.ebx & (1 << 12), 0, "root has CpuManagement");
        assert_ne!(f.ebx & 1, 0, "root has CreatePartitions");
        assert_eq!(
            PartitionPrivileges::from_cpuid(f.eax, f.ebx),
            PartitionPrivileges::ROOT
        );
        assert_eq!(p.leaf(0x4000_0081), Some(CpuidResult::default()));
        assert_eq!(p.leaf(0x3FFF_FFFF), None);
        assert_eq!(p.leaf(0x4001_0000), None);
    }

    #[test]
    fn features_land_in_edx() {
        let p = HvCpuidProfile {
            privileges: PartitionPrivileges::ACCESS_FREQUENCY_REGS,
            vp_count: 1,
            lp_count: 1,
            features: features::FREQUENCY_MSRS_AVAILABLE,
            hints: 0,
        };
        let f = p.leaf(LEAF_FEATURES).unwrap();
        assert_eq!(f.eax, 1 << 11);
        assert_eq!(f.edx, 1 << 8);
    }

    #[test]
    fn hints_land_in_the_enlightenment_leaf_eax() {
        let p = HvCpuidProfile {
            privileges: PartitionPrivileges::ACCESS_GUEST_IDLE_REG,
            vp_count: 2,
            lp_count: 1,
            features: 0,
            hints: hints::CLUSTER_IPI_RECOMMENDED,
        };
        let e = p.leaf(LEAF_ENLIGHTENMENTS).unwrap();
        // Linux: HV_X64_CLUSTER_IPI_RECOMMENDED is bit 10 of `ms_hyperv.hints`,
        // HV_MSR_GUEST_IDLE_AVAILABLE bit 10 of `ms_hyperv.features` (EAX of
        // 0x4000_0003): both are what `hv_init_spinlocks` checks.
        assert_eq!(e.eax, 1 << 10);
        assert_eq!(e.ebx, u32::MAX);
        assert_eq!(p.leaf(LEAF_FEATURES).unwrap().eax, 1 << 10);
    }
}
