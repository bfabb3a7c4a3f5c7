//! Inputs of the inter-partition communication calls (TLFS "Inter-Partition
//! Communication"; Linux `include/hyperv/hvhdk_mini.h` `hv_input_create_port`,
//! `hv_input_connect_port`, `include/asm-generic/hyperv-tlfs.h`
//! `hv_input_post_message`, `hv_input_signal_event`).

use core::mem::offset_of;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Payload bytes a message carries at most (HV_MESSAGE_PAYLOAD_BYTE_COUNT).
pub const MESSAGE_PAYLOAD_MAX: usize = 240;

/// `hv_port_type`.
pub mod port_type {
    /// Messages to a SINT slot.
    pub const MESSAGE: u32 = 1;
    /// Flags in a SINT's event-flag page.
    pub const EVENT: u32 = 2;
}

/// `struct hv_input_post_message` (256 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PostMessageInput {
    /// The sender's connection id.
    pub connection_id: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Message type (bit 31 set is reserved for the hypervisor).
    pub message_type: u32,
    /// Payload bytes (at most 240).
    pub payload_size: u32,
    /// Payload.
    pub payload: [u8; MESSAGE_PAYLOAD_MAX],
}
const _: () = assert!(size_of::<PostMessageInput>() == 256);

impl PostMessageInput {
    /// The TLFS checks of an HvPostMessage input (reserved field 0, payload
    /// at most 240 bytes, a message type that is neither 0 — "slot empty" —
    /// nor one of the hypervisor's own with bit 31 set); on success the
    /// connection id and the message to deliver, its sender left 0 for the
    /// router to fill in and its payload zero past `payload_size`.
    pub fn to_message(&self) -> Result<(u32, crate::message::Message), crate::HvStatus> {
        let size = self.payload_size as usize;
        if self.reserved != 0
            || size > MESSAGE_PAYLOAD_MAX
            || self.message_type == 0
            || self.message_type >> 31 != 0
        {
            return Err(crate::HvStatus::INVALID_PARAMETER);
        }
        let mut message = crate::message::Message {
            header: crate::message::MessageHeader {
                message_type: self.message_type,
                payload_size: size as u8,
                message_flags: 0,
                reserved: [0; 2],
                sender: 0,
            },
            payload: [0; MESSAGE_PAYLOAD_MAX],
        };
        message.payload[..size].copy_from_slice(&self.payload[..size]);
        Ok((self.connection_id, message))
    }
}

/// HvSignalEvent is a fast call with one input register: connection id in
/// bits 31:0, flag number in bits 47:32, bits 63:48 reserved.
pub fn decode_signal_event(input: u64) -> (u32, u16, u16) {
    (input as u32, (input >> 32) as u16, (input >> 48) as u16)
}

/// `struct hv_port_info` (24 bytes): type, then a type-specific union.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PortInfo {
    /// [`port_type`] value.
    pub port_type: u32,
    /// Reserved.
    pub padding: u32,
    /// Message: target_sint. Event: target_sint.
    pub target_sint: u32,
    /// Target VP index.
    pub target_vp: u32,
    /// Event: base flag number.
    pub base_flag_number: u16,
    /// Event: flags in the port's range.
    pub flag_count: u16,
    /// Reserved.
    pub reserved: u32,
}
const _: () = assert!(size_of::<PortInfo>() == 24);

/// `struct hv_input_create_port` (56 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CreatePortInput {
    /// The partition that owns (receives on) the port.
    pub port_partition_id: u64,
    /// Port id.
    pub port_id: u32,
    /// VTL of the port (only 0).
    pub port_vtl: u8,
    /// Lowest VTL that may connect (only 0).
    pub min_connection_vtl: u8,
    /// Reserved.
    pub padding: u16,
    /// The only partition that may connect.
    pub connection_partition_id: u64,
    /// Where the port delivers.
    pub port_info: PortInfo,
    /// NUMA proximity (ignored).
    pub proximity_domain_info: u64,
}
const _: () = assert!(size_of::<CreatePortInput>() == 56);
const _: () = assert!(offset_of!(CreatePortInput, port_info) == 24);

/// `struct hv_input_connect_port` (56 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ConnectPortInput {
    /// The sending partition.
    pub connection_partition_id: u64,
    /// Connection id (unique within the sending partition).
    pub connection_id: u32,
    /// VTL (only 0).
    pub connection_vtl: u8,
    /// Reserved.
    pub rsvd: [u8; 3],
    /// The port's owner.
    pub port_partition_id: u64,
    /// The port.
    pub port_id: u32,
    /// Reserved.
    pub reserved2: u32,
    /// `hv_connection_info` (type-specific; only reserved fields used here).
    pub connection_info: [u64; 2],
    /// NUMA proximity (ignored).
    pub proximity_domain_info: u64,
}
const _: () = assert!(size_of::<ConnectPortInput>() == 56);
const _: () = assert!(offset_of!(ConnectPortInput, port_partition_id) == 16);

/// `struct hv_input_delete_port` / `hv_input_disconnect_port` (16 bytes):
/// a partition id and a port or connection id.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PortRefInput {
    /// Port owner (delete) or connecting partition (disconnect).
    pub partition_id: u64,
    /// Port id or connection id.
    pub id: u32,
    /// Reserved.
    pub reserved: u32,
}
const _: () = assert!(size_of::<PortRefInput>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_event_fields() {
        assert_eq!(decode_signal_event(0x0000_0007_0000_0012), (0x12, 7, 0));
        assert_eq!(decode_signal_event(0xABCD_0000_0000_0001), (1, 0, 0xABCD));
    }
}
