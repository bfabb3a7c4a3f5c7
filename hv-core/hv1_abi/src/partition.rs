//! Partition-management wire formats (root-only calls). Layouts from Linux
//! `include/hyperv/hvhdk.h`, `hvhdk_mini.h`, `hvgdk_mini.h`; register names from
//! the Microsoft headers rust-vmm/mshv ships (`hv-headers/hvgdk_mini.h`).
//! All little-endian and packed; offsets are asserted.

use core::mem::offset_of;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `HV_PARTITION_ID_SELF`.
pub const PARTITION_ID_SELF: u64 = u64::MAX;

/// `hv_input_create_partition` with two processor-feature banks (56 bytes,
/// as mainline Linux defines it).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CreatePartitionInput {
    /// `HV_PARTITION_CREATION_FLAG_*`.
    pub flags: u64,
    /// Proximity domain info.
    pub proximity_domain_info: u64,
    /// Compatibility version (Linux: 0x0609).
    pub compatibility_version: u32,
    /// Padding.
    pub padding: u32,
    /// Disabled processor features (two banks).
    pub disabled_processor_features: [u64; 2],
    /// Disabled XSAVE features.
    pub disabled_xsave_features: u64,
    /// Isolation properties (bits 4:0 isolation type).
    pub isolation_properties: u64,
}
const _: () = assert!(size_of::<CreatePartitionInput>() == 56);
const _: () = assert!(offset_of!(CreatePartitionInput, isolation_properties) == 48);

/// Creation flags hv-core accepts (EXO, LAPIC, intercept message page, x2APIC,
/// GPA super pages); any other bit is refused.
pub mod creation_flags {
    /// GPA_SUPER_PAGES_ENABLED.
    pub const GPA_SUPER_PAGES: u64 = 1 << 4;
    /// EXO_PARTITION.
    pub const EXO_PARTITION: u64 = 1 << 8;
    /// LAPIC_ENABLED.
    pub const LAPIC_ENABLED: u64 = 1 << 13;
    /// INTERCEPT_MESSAGE_PAGE_ENABLED.
    pub const INTERCEPT_MESSAGE_PAGE: u64 = 1 << 19;
    /// X2APIC_CAPABLE.
    pub const X2APIC_CAPABLE: u64 = 1 << 22;
    /// All of the above.
    pub const SUPPORTED: u64 =
        GPA_SUPER_PAGES | EXO_PARTITION | LAPIC_ENABLED | INTERCEPT_MESSAGE_PAGE | X2APIC_CAPABLE;
}

/// A bare partition id (Initialize/Finalize/Delete, fast or slow).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PartitionIdInput {
    /// The partition.
    pub partition_id: u64,
}
const _: () = assert!(size_of::<PartitionIdInput>() == 8);

/// `hv_input_get_partition_property` / `hv_input_set_partition_property`
/// (Get uses the first 16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PartitionPropertyInput {
    /// The partition.
    pub partition_id: u64,
    /// [`PropertyCode`] value.
    pub property_code: u32,
    /// Padding.
    pub padding: u32,
    /// The value (Set only).
    pub property_value: u64,
}
const _: () = assert!(size_of::<PartitionPropertyInput>() == 24);

/// Partition property codes hv-core implements (`enum hv_partition_property_code`).
pub mod property {
    /// PRIVILEGE_FLAGS (get): the partition's privilege mask.
    pub const PRIVILEGE_FLAGS: u32 = 0x0001_0000;
    /// SUSPEND (get/set): 1 = no VP of the partition runs.
    pub const SUSPEND: u32 = 0x0002_0000;
    /// UNIMPLEMENTED_MSR_ACTION (get/set before initialize): 0 = #GP, 1 = ignore writes / read zero.
    pub const UNIMPLEMENTED_MSR_ACTION: u32 = 0x0005_0017;
    /// GUEST_OS_ID (get).
    pub const GUEST_OS_ID: u32 = 0x0007_0000;
}

/// `hv_input_map_gpa_pages` header (24 bytes) before the `u64` source page list.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MapGpaPagesHeader {
    /// Child partition.
    pub target_partition_id: u64,
    /// First target guest page number (a GFN, not a byte address).
    pub target_gpa_base: u64,
    /// `HV_MAP_GPA_*` flags.
    pub map_flags: u32,
    /// Padding.
    pub padding: u32,
}
const _: () = assert!(size_of::<MapGpaPagesHeader>() == 24);

/// `HV_MAP_GPA_*` flags.
pub mod map_flags {
    /// Readable.
    pub const READABLE: u32 = 0x1;
    /// Writable.
    pub const WRITABLE: u32 = 0x2;
    /// Kernel-mode executable.
    pub const KERNEL_EXECUTABLE: u32 = 0x4;
    /// User-mode executable.
    pub const USER_EXECUTABLE: u32 = 0x8;
    /// Both.
    pub const EXECUTABLE: u32 = 0xC;
    /// Unmapped but reserved.
    pub const NO_ACCESS: u32 = 0x1_0000;
    /// Uncached (MMIO).
    pub const NOT_CACHED: u32 = 0x20_0000;
    /// 2 MiB pages.
    pub const LARGE_PAGE: u32 = 0x8000_0000;
    /// What hv-core accepts today.
    pub const SUPPORTED: u32 = READABLE | WRITABLE | EXECUTABLE;
}

/// `hv_input_unmap_gpa_pages` (24 bytes; the rep count is the page count).
pub type UnmapGpaPagesHeader = MapGpaPagesHeader;

/// `hv_create_vp` (40 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CreateVpInput {
    /// The partition.
    pub partition_id: u64,
    /// VP index.
    pub vp_index: u32,
    /// Padding.
    pub padding: [u8; 3],
    /// Subnode type.
    pub subnode_type: u8,
    /// Subnode id.
    pub subnode_id: u64,
    /// Proximity domain info.
    pub proximity_domain_info: u64,
    /// Flags (0 for child VPs).
    pub flags: u64,
}
const _: () = assert!(size_of::<CreateVpInput>() == 40);

/// Header of `hv_input_get_vp_registers` / `hv_input_set_vp_registers` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VpRegistersHeader {
    /// The partition.
    pub partition_id: u64,
    /// VP index.
    pub vp_index: u32,
    /// Input VTL (must be 0).
    pub input_vtl: u8,
    /// Reserved.
    pub reserved8: u8,
    /// Reserved.
    pub reserved16: u16,
}
const _: () = assert!(size_of::<VpRegistersHeader>() == 16);

/// `union hv_register_value` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RegisterValue {
    /// Low 64 bits.
    pub low: u64,
    /// High 64 bits.
    pub high: u64,
}
const _: () = assert!(size_of::<RegisterValue>() == 16);

/// `struct hv_register_assoc` (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RegisterAssoc {
    /// [`RegisterName`] value.
    pub name: u32,
    /// Reserved.
    pub reserved1: u32,
    /// Reserved.
    pub reserved2: u64,
    /// The value.
    pub value: RegisterValue,
}
const _: () = assert!(size_of::<RegisterAssoc>() == 32);

/// `struct hv_x64_segment_register` (16 bytes). Attributes use the VMX
/// access-rights layout: type 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SegmentRegister {
    /// Base.
    pub base: u64,
    /// Limit.
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Attributes.
    pub attributes: u16,
}
const _: () = assert!(size_of::<SegmentRegister>() == 16);

impl SegmentRegister {
    /// Convert SVM's 12-bit attribute encoding to Hyper-V's.
    pub const fn attributes_from_svm(svm: u16) -> u16 {
        (svm & 0xFF) | ((svm & 0xF00) << 4)
    }

    /// Convert Hyper-V's attribute encoding to SVM's.
    pub const fn attributes_to_svm(hv: u16) -> u16 {
        (hv & 0xFF) | ((hv >> 4) & 0xF00)
    }
}

/// `struct hv_x64_table_register` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TableRegister {
    /// Padding.
    pub pad: [u16; 3],
    /// Limit.
    pub limit: u16,
    /// Base.
    pub base: u64,
}
const _: () = assert!(size_of::<TableRegister>() == 16);

/// Register names (`enum hv_register_name`). Open: unknown names are data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterName(pub u32);

#[allow(missing_docs)] // the names are the documentation (TLFS register names)
impl RegisterName {
    pub const EXPLICIT_SUSPEND: Self = Self(0x0000_0000);
    pub const INTERCEPT_SUSPEND: Self = Self(0x0000_0001);
    pub const INTERNAL_ACTIVITY_STATE: Self = Self(0x0000_0004);
    pub const RAX: Self = Self(0x0002_0000);
    pub const RCX: Self = Self(0x0002_0001);
    pub const RDX: Self = Self(0x0002_0002);
    pub const RBX: Self = Self(0x0002_0003);
    pub const RSP: Self = Self(0x0002_0004);
    pub const RBP: Self = Self(0x0002_0005);
    pub const RSI: Self = Self(0x0002_0006);
    pub const RDI: Self = Self(0x0002_0007);
    pub const R8: Self = Self(0x0002_0008);
    pub const R15: Self = Self(0x0002_000F);
    pub const RIP: Self = Self(0x0002_0010);
    pub const RFLAGS: Self = Self(0x0002_0011);
    pub const CR0: Self = Self(0x0004_0000);
    pub const CR2: Self = Self(0x0004_0001);
    pub const CR3: Self = Self(0x0004_0002);
    pub const CR4: Self = Self(0x0004_0003);
    pub const CR8: Self = Self(0x0004_0004);
    pub const DR6: Self = Self(0x0005_0004);
    pub const DR7: Self = Self(0x0005_0005);
    pub const ES: Self = Self(0x0006_0000);
    pub const CS: Self = Self(0x0006_0001);
    pub const SS: Self = Self(0x0006_0002);
    pub const DS: Self = Self(0x0006_0003);
    pub const FS: Self = Self(0x0006_0004);
    pub const GS: Self = Self(0x0006_0005);
    pub const LDTR: Self = Self(0x0006_0006);
    pub const TR: Self = Self(0x0006_0007);
    pub const IDTR: Self = Self(0x0007_0000);
    pub const GDTR: Self = Self(0x0007_0001);
    pub const EFER: Self = Self(0x0008_0001);
    pub const KERNEL_GS_BASE: Self = Self(0x0008_0002);
    pub const PAT: Self = Self(0x0008_0004);
    pub const SYSENTER_CS: Self = Self(0x0008_0005);
    pub const SYSENTER_EIP: Self = Self(0x0008_0006);
    pub const SYSENTER_ESP: Self = Self(0x0008_0007);
    pub const STAR: Self = Self(0x0008_0008);
    pub const LSTAR: Self = Self(0x0008_0009);
    pub const CSTAR: Self = Self(0x0008_000A);
    pub const SFMASK: Self = Self(0x0008_000B);
    pub const GUEST_OS_ID: Self = Self(0x0009_0002);
    pub const VP_INDEX: Self = Self(0x0009_0003);
}

/// `hv_input_dispatch_vp` (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DispatchVpInput {
    /// The partition.
    pub partition_id: u64,
    /// VP index.
    pub vp_index: u32,
    /// `HV_DISPATCH_VP_FLAG_*`.
    pub flags: u32,
    /// Time slice in 100 ns units (0: until an event).
    pub time_slice: u64,
    /// SPEC_CTRL for the VP.
    pub spec_ctrl: u64,
}
const _: () = assert!(size_of::<DispatchVpInput>() == 32);

/// `hv_input_assert_virtual_interrupt` (32 bytes; TLFS "HvCallAssertVirtualInterrupt",
/// Linux `include/hyperv/hvhdk.h`): the root raises `vector` at the child's
/// local APIC(s) `destination` names, as an I/O APIC or MSI message would.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct AssertVirtualInterruptInput {
    /// The child.
    pub partition_id: u64,
    /// `hv_interrupt_control`: bits 31:0 the type ([`interrupt_type`]),
    /// bit 32 level-triggered, bit 33 logical destination mode, the rest
    /// RsvdZ.
    pub control: u64,
    /// APIC id (physical mode) or logical destination (logical mode).
    pub destination: u64,
    /// The vector (16–255).
    pub vector: u32,
    /// Target VTL (0: VTLs are not provided).
    pub target_vtl: u8,
    /// RsvdZ.
    pub reserved0: u8,
    /// RsvdZ.
    pub reserved1: u16,
}
const _: () = assert!(size_of::<AssertVirtualInterruptInput>() == 32);

impl AssertVirtualInterruptInput {
    /// Bit 32 of `control`: level-triggered.
    pub const LEVEL_TRIGGERED: u64 = 1 << 32;
    /// Bit 33 of `control`: logical destination mode.
    pub const LOGICAL_DESTINATION: u64 = 1 << 33;
    /// Bits of `control` that must be zero.
    pub const CONTROL_RESERVED: u64 = !(0xFFFF_FFFF | Self::LEVEL_TRIGGERED | Self::LOGICAL_DESTINATION);

    /// The interrupt type (bits 31:0 of `control`).
    pub fn interrupt_type(&self) -> u32 {
        self.control as u32
    }
}

/// `hv_interrupt_type` values (x64) of [`AssertVirtualInterruptInput`].
pub mod interrupt_type {
    /// Fixed: every APIC the destination names.
    pub const FIXED: u32 = 0;
    /// Lowest priority: one APIC of those the destination names.
    pub const LOWEST_PRIORITY: u32 = 1;
    /// SMI.
    pub const SMI: u32 = 2;
    /// Remote read.
    pub const REMOTE_READ: u32 = 3;
    /// NMI.
    pub const NMI: u32 = 4;
    /// INIT.
    pub const INIT: u32 = 5;
    /// Startup IPI.
    pub const SIPI: u32 = 6;
    /// ExtINT.
    pub const EXTINT: u32 = 7;
}

/// `HV_DISPATCH_VP_FLAG_*`.
pub mod dispatch_flags {
    /// The root has handled the last intercept: resume the VP.
    pub const CLEAR_INTERCEPT_SUSPEND: u32 = 0x1;
    /// Let the caller's interrupts preempt the VP.
    pub const ENABLE_CALLER_INTERRUPTS: u32 = 0x2;
    /// Speculation-control flags (accepted, no effect under hv-core).
    pub const SPECULATION_MASK: u32 = 0x4 | 0x8 | 0x10 | 0x20 | 0x40;
}

/// `HV_INTERNAL_ACTIVITY_REGISTER` (register
/// [`RegisterName::INTERNAL_ACTIVITY_STATE`]; OpenVMM `hvdef`
/// `HvInternalActivityRegister`).
pub mod internal_activity {
    /// The VP waits for a Startup IPI (an application processor after
    /// reset or INIT): it does not run until another VP sends it one.
    pub const STARTUP_SUSPEND: u64 = 1 << 0;
    /// HaltSuspend and IdleSuspend (bits 1, 2) are not provided; the other
    /// bits are reserved.
    pub const SUPPORTED: u64 = STARTUP_SUSPEND;
}

/// `hv_output_dispatch_vp` (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DispatchVpOutput {
    /// `DISPATCH_STATE_*`.
    pub dispatch_state: u32,
    /// `DISPATCH_EVENT_*`.
    pub dispatch_event: u32,
}
const _: () = assert!(size_of::<DispatchVpOutput>() == 8);

/// HV_VP_DISPATCH_STATE_BLOCKED.
pub const DISPATCH_STATE_BLOCKED: u32 = 1;
/// HV_VP_DISPATCH_STATE_READY.
pub const DISPATCH_STATE_READY: u32 = 2;
/// HV_VP_DISPATCH_EVENT_INVALID: with READY, "preempted: dispatch again"
/// (hv-core returns this when a physical interrupt for the root arrived).
pub const DISPATCH_EVENT_NONE: u32 = 0;
/// HV_VP_DISPATCH_EVENT_SUSPEND.
pub const DISPATCH_EVENT_SUSPEND: u32 = 1;
/// HV_VP_DISPATCH_EVENT_INTERCEPT: a message is in the intercept message page.
pub const DISPATCH_EVENT_INTERCEPT: u32 = 2;

/// `hv_input_map_vp_state_page` (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MapVpStatePageInput {
    /// The partition.
    pub partition_id: u64,
    /// VP index.
    pub vp_index: u32,
    /// `VP_STATE_PAGE_*`.
    pub page_type: u16,
    /// Input VTL.
    pub input_vtl: u8,
    /// Bit 0: `map_location_provided`.
    pub flags: u8,
    /// The root page (GPA page number) to use, when provided.
    pub requested_map_location: u64,
}
const _: () = assert!(size_of::<MapVpStatePageInput>() == 24);

/// `hv_output_map_vp_state_page` (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MapVpStatePageOutput {
    /// GPA page number of the state page in the caller's space.
    pub map_location: u64,
}
const _: () = assert!(size_of::<MapVpStatePageOutput>() == 8);

/// HV_VP_STATE_PAGE_INTERCEPT_MESSAGE.
pub const VP_STATE_PAGE_INTERCEPT_MESSAGE: u16 = 1;
/// HV_VP_STATE_PAGE_REGISTERS: the VP register page ([`VpRegisterPage`]).
pub const VP_STATE_PAGE_REGISTERS: u16 = 0;

/// `HV_VP_REGISTER_PAGE_VERSION_1`.
pub const VP_REGISTER_PAGE_VERSION_1: u16 = 1;

/// Bits of [`VpRegisterPage::dirty`]: `1 << HV_X64_REGISTER_CLASS_*`.
pub mod register_class {
    /// The 16 general-purpose registers.
    pub const GENERAL: u32 = 1 << 0;
    /// RIP.
    pub const IP: u32 = 1 << 1;
    /// XMM0–XMM5.
    pub const XMM: u32 = 1 << 2;
    /// ES, CS, SS, DS, FS, GS.
    pub const SEGMENT: u32 = 1 << 3;
    /// RFLAGS.
    pub const FLAGS: u32 = 1 << 4;
}

/// The start of `struct hv_vp_register_page` (Linux
/// `include/hyperv/hvhdk.h`), up to RFLAGS: the part hv-core keeps. The
/// hypervisor fills it when the VP stops at an intercept (`isvalid` 1), so
/// the root reads the VP's registers there; the root completes the
/// intercept by writing registers and setting their class in `dirty`, and
/// the next dispatch loads them, with no HvCallSetVpRegisters. The rest of
/// the page (XMM, segments, control registers) is not written.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VpRegisterPage {
    /// [`VP_REGISTER_PAGE_VERSION_1`].
    pub version: u16,
    /// 1 while the page holds the stopped VP's registers.
    pub isvalid: u8,
    /// Reserved, 0.
    pub rsvdz: u8,
    /// [`register_class`] bits the root wrote.
    pub dirty: u32,
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8–R15 (x86 encoding order).
    pub gp_registers: [u64; 16],
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
}
const _: () = assert!(size_of::<VpRegisterPage>() == 152);
const _: () = assert!(core::mem::offset_of!(VpRegisterPage, rip) == 136);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_attribute_conversion_round_trips() {
        // 64-bit code: SVM 0xA9B (type B, S, P, L, G) <-> VMX-style 0xA09B.
        assert_eq!(SegmentRegister::attributes_from_svm(0xA9B), 0xA09B);
        assert_eq!(SegmentRegister::attributes_to_svm(0xA09B), 0xA9B);
        for svm in 0..0x1000u16 {
            assert_eq!(
                SegmentRegister::attributes_to_svm(SegmentRegister::attributes_from_svm(svm)),
                svm
            );
        }
    }

    #[test]
    fn rep_lists_stay_in_one_page() {
        use crate::hypercall::reps_fitting;
        assert_eq!(reps_fitting(0x1000, 24, 8), (4096 - 24) / 8);
        assert_eq!(reps_fitting(0x1FF0, 24, 8), 0);
        assert_eq!(reps_fitting(0x1F00, 16, 32), (256 - 16) / 32);
    }
}
