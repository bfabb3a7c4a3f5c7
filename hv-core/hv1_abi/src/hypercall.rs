//! Hypercall control word, result word, status codes and call codes
//! (TLFS "Hypercall Interface"; Linux `include/asm-generic/hyperv-tlfs.h`).

use core::fmt;

/// Declares an open newtype over an integer with named constants: an unknown
/// value from a guest stays representable.
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($ty:ty) {
            $( $(#[$cmeta:meta])* $variant:ident = $value:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(transparent)]
        pub struct $name(pub $ty);

        impl $name {
            $( $(#[$cmeta])* pub const $variant: Self = Self($value); )*

            /// The constant's name, if this value has one.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $( Self::$variant => Some(stringify!($variant)), )*
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({:#x})", stringify!($name), self.0),
                }
            }
        }
    };
}

open_enum! {
    /// HV_STATUS: the low 16 bits of a hypercall result.
    pub struct HvStatus(u16) {
        /// The call succeeded.
        SUCCESS = 0x0000,
        /// The call code is not supported.
        INVALID_HYPERCALL_CODE = 0x0002,
        /// Rep count/start index or reserved bits of the control word are wrong.
        INVALID_HYPERCALL_INPUT = 0x0003,
        /// A parameter (e.g. an input or output GPA) is misaligned.
        INVALID_ALIGNMENT = 0x0004,
        /// A parameter is invalid.
        INVALID_PARAMETER = 0x0005,
        /// The caller lacks the privilege.
        ACCESS_DENIED = 0x0006,
        /// The partition or VP is in the wrong state.
        INVALID_PARTITION_STATE = 0x0007,
        /// The operation is denied.
        OPERATION_DENIED = 0x0008,
        /// Unknown property.
        UNKNOWN_PROPERTY = 0x0009,
        /// Property value out of range.
        PROPERTY_VALUE_OUT_OF_RANGE = 0x000A,
        /// Not enough memory.
        INSUFFICIENT_MEMORY = 0x000B,
        /// Partition depth exceeded.
        PARTITION_TOO_DEEP = 0x000C,
        /// The partition id is not valid.
        INVALID_PARTITION_ID = 0x000D,
        /// The VP index is not valid.
        INVALID_VP_INDEX = 0x000E,
        /// The port id is not valid.
        INVALID_PORT_ID = 0x0011,
        /// The connection id is not valid.
        INVALID_CONNECTION_ID = 0x0012,
        /// Message buffers are exhausted.
        INSUFFICIENT_BUFFERS = 0x0013,
        /// The VP is not in a state to accept it.
        INVALID_VP_STATE = 0x0015,
        /// The object was not found.
        NOT_FOUND = 0x0010,
        /// The SynIC is not enabled.
        INVALID_SYNIC_STATE = 0x0018,
        /// A register value is invalid.
        INVALID_REGISTER_VALUE = 0x0050,
    }
}

open_enum! {
    /// HV_CALL_CODE: bits 15:0 of the control word.
    pub struct HvCallCode(u16) {
        /// HvCallFlushVirtualAddressSpace.
        FLUSH_VIRTUAL_ADDRESS_SPACE = 0x0002,
        /// HvCallFlushVirtualAddressList.
        FLUSH_VIRTUAL_ADDRESS_LIST = 0x0003,
        /// HvCallNotifyLongSpinWait.
        NOTIFY_LONG_SPIN_WAIT = 0x0008,
        /// HvCallSendSyntheticClusterIpi.
        SEND_IPI = 0x000B,
        /// HvCallCreatePartition.
        CREATE_PARTITION = 0x0040,
        /// HvCallInitializePartition.
        INITIALIZE_PARTITION = 0x0041,
        /// HvCallFinalizePartition.
        FINALIZE_PARTITION = 0x0042,
        /// HvCallDeletePartition.
        DELETE_PARTITION = 0x0043,
        /// HvCallGetPartitionProperty.
        GET_PARTITION_PROPERTY = 0x0044,
        /// HvCallSetPartitionProperty.
        SET_PARTITION_PROPERTY = 0x0045,
        /// HvCallGetPartitionId.
        GET_PARTITION_ID = 0x0046,
        /// HvCallDepositMemory.
        DEPOSIT_MEMORY = 0x0048,
        /// HvCallWithdrawMemory.
        WITHDRAW_MEMORY = 0x0049,
        /// HvCallMapGpaPages.
        MAP_GPA_PAGES = 0x004B,
        /// HvCallUnmapGpaPages.
        UNMAP_GPA_PAGES = 0x004C,
        /// HvCallInstallIntercept.
        INSTALL_INTERCEPT = 0x004D,
        /// HvCallCreateVp.
        CREATE_VP = 0x004E,
        /// HvCallDeleteVp.
        DELETE_VP = 0x004F,
        /// HvCallGetVpRegisters.
        GET_VP_REGISTERS = 0x0050,
        /// HvCallSetVpRegisters.
        SET_VP_REGISTERS = 0x0051,
        /// HvCallTranslateVirtualAddress.
        TRANSLATE_VIRTUAL_ADDRESS = 0x0052,
        /// HvCallReadGpa.
        READ_GPA = 0x0053,
        /// HvCallWriteGpa.
        WRITE_GPA = 0x0054,
        /// HvCallDeletePort.
        DELETE_PORT = 0x0058,
        /// HvCallDisconnectPort.
        DISCONNECT_PORT = 0x005B,
        /// HvCallPostMessage.
        POST_MESSAGE = 0x005C,
        /// HvCallSignalEvent.
        SIGNAL_EVENT = 0x005D,
        /// HvCallAssertVirtualInterrupt (the root raises an interrupt in a
        /// child's virtual APIC: its emulated devices' lines).
        ASSERT_VIRTUAL_INTERRUPT = 0x0094,
        /// HvCallCreatePort.
        CREATE_PORT = 0x0095,
        /// HvCallConnectPort.
        CONNECT_PORT = 0x0096,
        /// HvCallDispatchVp (root scheduler).
        DISPATCH_VP = 0x00C2,
        /// HvCallMapVpStatePage.
        MAP_VP_STATE_PAGE = 0x00E1,
        /// HvCallUnmapVpStatePage.
        UNMAP_VP_STATE_PAGE = 0x00E2,
    }
}

/// Why a control word is malformed (each maps to a TLFS status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlError {
    /// A RsvdZ field (bits 31:27, 47:44 or 63:60) is non-zero.
    ReservedBitsSet,
    /// The rep start index is not below the rep count.
    RepStartBeyondCount,
}

impl ControlError {
    /// The status the guest receives.
    pub fn status(self) -> HvStatus {
        HvStatus::INVALID_HYPERCALL_INPUT
    }
}

/// A decoded hypercall input value (RCX on x64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallControl {
    /// Bits 15:0.
    pub code: HvCallCode,
    /// Bit 16: register-based ("fast") calling convention.
    pub fast: bool,
    /// Bits 26:17: variable header size in 8-byte units.
    pub variable_header_qwords: u16,
    /// Bits 43:32: total reps (0 for a simple call).
    pub rep_count: u16,
    /// Bits 59:48: first rep to process.
    pub rep_start: u16,
}

impl HypercallControl {
    const RSVDZ_MASK: u64 = (0x1F << 27) | (0xF << 44) | (0xF << 60);

    /// Decode and validate a control word.
    pub fn decode(raw: u64) -> Result<Self, ControlError> {
        if raw & Self::RSVDZ_MASK != 0 {
            return Err(ControlError::ReservedBitsSet);
        }
        let c = Self {
            code: HvCallCode(raw as u16),
            fast: raw & (1 << 16) != 0,
            variable_header_qwords: ((raw >> 17) & 0x3FF) as u16,
            rep_count: ((raw >> 32) & 0xFFF) as u16,
            rep_start: ((raw >> 48) & 0xFFF) as u16,
        };
        if c.rep_count != 0 && c.rep_start >= c.rep_count {
            return Err(ControlError::RepStartBeyondCount);
        }
        if c.rep_count == 0 && c.rep_start != 0 {
            return Err(ControlError::RepStartBeyondCount);
        }
        Ok(c)
    }

    /// Encode (used by callers of hypercalls).
    pub const fn encode(&self) -> u64 {
        self.code.0 as u64
            | ((self.fast as u64) << 16)
            | (((self.variable_header_qwords & 0x3FF) as u64) << 17)
            | (((self.rep_count & 0xFFF) as u64) << 32)
            | (((self.rep_start & 0xFFF) as u64) << 48)
    }

    /// A simple (non-rep, slow) call of `code`.
    pub const fn simple(code: HvCallCode) -> Self {
        Self {
            code,
            fast: false,
            variable_header_qwords: 0,
            rep_count: 0,
            rep_start: 0,
        }
    }
}

/// A hypercall result value (RAX on x64): status in 15:0, reps completed in 43:32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallResult {
    /// The status.
    pub status: HvStatus,
    /// Reps completed (absolute, counting from rep 0).
    pub reps_completed: u16,
}

impl HypercallResult {
    /// Encode into the RAX value.
    pub const fn encode(&self) -> u64 {
        self.status.0 as u64 | (((self.reps_completed & 0xFFF) as u64) << 32)
    }

    /// Decode a RAX value.
    pub const fn decode(raw: u64) -> Self {
        Self {
            status: HvStatus(raw as u16),
            reps_completed: ((raw >> 32) & 0xFFF) as u16,
        }
    }

    /// A result with only a status.
    pub const fn status(status: HvStatus) -> Self {
        Self {
            status,
            reps_completed: 0,
        }
    }
}

/// Output of HvCallGetPartitionId (`struct hv_get_partition_id`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable, zerocopy::KnownLayout,
)]
pub struct HvOutputGetPartitionId {
    /// The caller's partition id.
    pub partition_id: u64,
}
const _: () = assert!(size_of::<HvOutputGetPartitionId>() == 8);

/// Input of HvCallSendSyntheticClusterIpi (TLFS "Virtual Interrupt
/// Control"; Linux `struct hv_send_ipi`). In the fast form RDX holds the
/// first eight bytes (vector, target VTL, reserved) and R8 the mask.
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
pub struct HvInputSendSyntheticClusterIpi {
    /// The vector to request on each target, 0x10-0xFF.
    pub vector: u32,
    /// The target VTL: only VTL 0 exists.
    pub target_vtl: u8,
    /// RsvdZ.
    pub reserved: [u8; 3],
    /// Bit n names VP n.
    pub processor_mask: u64,
}
const _: () = assert!(size_of::<HvInputSendSyntheticClusterIpi>() == 16);

/// A synthetic cluster IPI that passed [`HvInputSendSyntheticClusterIpi::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterIpi {
    /// The vector.
    pub vector: u8,
    /// The VPs it goes to (bit n = VP n), all below the partition's VP count.
    pub targets: u64,
}

impl HvInputSendSyntheticClusterIpi {
    /// The lowest vector an IPI may carry (Linux `HV_IPI_LOW_VECTOR`): 0-15
    /// are exceptions and reserved.
    pub const LOWEST_VECTOR: u32 = 0x10;

    /// The input of a fast call: RDX (vector, VTL, reserved) and R8 (mask).
    pub fn from_registers(rdx: u64, r8: u64) -> Self {
        let [_, _, _, _, target_vtl, r0, r1, r2] = rdx.to_le_bytes();
        Self {
            vector: rdx as u32,
            target_vtl,
            reserved: [r0, r1, r2],
            processor_mask: r8,
        }
    }

    /// Check a guest's request against a partition of `vp_count` VPs: a
    /// vector 0x10-0xFF, VTL 0, reserved bytes zero, and a mask naming only
    /// VPs that exist. Anything else is HV_STATUS_INVALID_PARAMETER and no
    /// VP receives anything (the caller falls back to its APIC, as Linux
    /// `hv_send_ipi` does). An empty mask is a valid request for nothing.
    pub fn validate(&self, vp_count: u32) -> Result<ClusterIpi, HvStatus> {
        if !(Self::LOWEST_VECTOR..=0xFF).contains(&self.vector)
            || self.target_vtl != 0
            || self.reserved != [0; 3]
        {
            return Err(HvStatus::INVALID_PARAMETER);
        }
        let existing = match vp_count {
            0 => 0,
            n if n >= 64 => u64::MAX,
            n => (1u64 << n) - 1,
        };
        if self.processor_mask & !existing != 0 {
            return Err(HvStatus::INVALID_PARAMETER);
        }
        Ok(ClusterIpi {
            vector: self.vector as u8,
            targets: self.processor_mask,
        })
    }
}

/// How many reps of `element_size` bytes, after a `header_size`-byte header,
/// fit in the rest of the page holding `gpa` (rep lists may not cross a page).
pub const fn reps_fitting(gpa: u64, header_size: u64, element_size: u64) -> u64 {
    let room = 4096 - (gpa & 0xFFF);
    if room < header_size || element_size == 0 {
        0
    } else {
        (room - header_size) / element_size
    }
}

/// Hypercall input and output GPAs must be 8-byte aligned (TLFS).
pub const HYPERCALL_PARAM_ALIGN: u64 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_word_round_trips() {
        let c = HypercallControl {
            code: HvCallCode::POST_MESSAGE,
            fast: true,
            variable_header_qwords: 3,
            rep_count: 10,
            rep_start: 4,
        };
        assert_eq!(HypercallControl::decode(c.encode()), Ok(c));
    }

    #[test]
    fn control_word_field_positions_match_tlfs() {
        // code 0x46, fast, rep count 2 at bit 32, rep start 1 at bit 48.
        let raw = 0x46 | (1 << 16) | (2u64 << 32) | (1u64 << 48);
        let c = HypercallControl::decode(raw).unwrap();
        assert_eq!(c.code, HvCallCode::GET_PARTITION_ID);
        assert!(c.fast);
        assert_eq!((c.rep_count, c.rep_start), (2, 1));
    }

    #[test]
    fn reserved_bits_are_rejected() {
        for bit in [27, 31, 44, 47, 60, 63] {
            assert_eq!(
                HypercallControl::decode(1u64 << bit),
                Err(ControlError::ReservedBitsSet),
                "bit {bit}"
            );
        }
        assert_eq!(
            ControlError::ReservedBitsSet.status(),
            HvStatus::INVALID_HYPERCALL_INPUT
        );
    }

    #[test]
    fn rep_start_must_be_below_rep_count() {
        assert!(HypercallControl::decode((3u64 << 32) | (3u64 << 48)).is_err());
        assert!(HypercallControl::decode(1u64 << 48).is_err());
    }

    #[test]
    fn result_encoding() {
        let r = HypercallResult {
            status: HvStatus::INVALID_HYPERCALL_CODE,
            reps_completed: 7,
        };
        assert_eq!(r.encode(), 2 | (7 << 32));
        assert_eq!(HypercallResult::decode(r.encode()), r);
    }

    #[test]
    fn unknown_values_are_data() {
        assert_eq!(format!("{:?}", HvStatus(0x1234)), "HvStatus(0x1234)");
        assert_eq!(format!("{:?}", HvCallCode::GET_PARTITION_ID), "GET_PARTITION_ID");
        assert_eq!(HvCallCode(0xBEEF).name(), None);
    }

    #[test]
    fn cluster_ipi_takes_vector_and_mask_from_registers() {
        let input = HvInputSendSyntheticClusterIpi::from_registers(0xF7, 0b10);
        assert_eq!(
            input.validate(2),
            Ok(ClusterIpi {
                vector: 0xF7,
                targets: 0b10
            })
        );
        // The same request as the slow call's 16 bytes.
        let mut bytes = [0u8; 16];
        bytes[0] = 0xF7;
        bytes[8] = 0b10;
        let slow =
            <HvInputSendSyntheticClusterIpi as zerocopy::FromBytes>::read_from_bytes(&bytes[..]).unwrap();
        assert_eq!(slow, input);
    }

    #[test]
    fn cluster_ipi_refuses_bad_vectors_vtls_reserved_bits_and_absent_vps() {
        let bad = HvStatus::INVALID_PARAMETER;
        for vector in [0u64, 2, 0x0F, 0x100, 0x1F7] {
            assert_eq!(
                HvInputSendSyntheticClusterIpi::from_registers(vector, 1).validate(4),
                Err(bad),
                "vector {vector:#x}"
            );
        }
        // Target VTL 1 and a reserved byte.
        assert_eq!(
            HvInputSendSyntheticClusterIpi::from_registers(0x1_0000_00F7, 1).validate(4),
            Err(bad)
        );
        assert_eq!(
            HvInputSendSyntheticClusterIpi::from_registers(1 << 56 | 0xF7, 1).validate(4),
            Err(bad)
        );
        // VP 2 of a two-VP partition does not exist; all 64 bits of a 64-VP one do.
        assert_eq!(
            HvInputSendSyntheticClusterIpi::from_registers(0xF7, 0b100).validate(2),
            Err(bad)
        );
        assert_eq!(
            HvInputSendSyntheticClusterIpi::from_registers(0xF7, 1).validate(0),
            Err(bad)
        );
        assert!(
            HvInputSendSyntheticClusterIpi::from_registers(0xF7, u64::MAX)
                .validate(64)
                .is_ok()
        );
        // Vectors 0x10 and 0xFF are the range's ends; an empty mask sends nothing.
        assert!(
            HvInputSendSyntheticClusterIpi::from_registers(0x10, 0)
                .validate(1)
                .is_ok()
        );
        assert!(
            HvInputSendSyntheticClusterIpi::from_registers(0xFF, 1)
                .validate(1)
                .is_ok()
        );
    }
}
