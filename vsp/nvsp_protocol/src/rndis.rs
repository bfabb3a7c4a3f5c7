//! Remote NDIS wire format as Hyper-V's synthetic NIC carries it: every
//! message is an 8-byte header (`ndis_msg_type`, `msg_len` counting from the
//! header's first byte) followed by a type-specific body. Offsets inside a
//! body (`info_buf_offset`, `data_offset`, ...) count from the start of the
//! body, i.e. the first byte after the 8-byte header.
//!
//! Sources: Linux 6.1 `include/linux/rndis.h` (message types, statuses,
//! OIDs), `drivers/net/hyperv/hyperv_net.h` (`struct rndis_message` and
//! members, `ndis_offload`, `ndis_offload_params`, per-packet info),
//! microsoft/openvmm `vm/devices/net/netvsp/src/rndisprot.rs`. Sizes checked
//! with gcc against the Linux structs.

use crate::message::wire;
use alloc::vec::Vec;
use core::fmt;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

open_enum! {
    /// `RNDIS_MSG_*`: the header's message type.
    pub struct MessageType(u32) {
        /// A data packet (`REMOTE_NDIS_PACKET_MSG`), both ways.
        PACKET = 0x0000_0001,
        /// Guest → device: initialize.
        INITIALIZE = 0x0000_0002,
        /// Guest → device: halt (no completion).
        HALT = 0x0000_0003,
        /// Guest → device: query an OID.
        QUERY = 0x0000_0004,
        /// Guest → device: set an OID.
        SET = 0x0000_0005,
        /// Guest → device: soft reset.
        RESET = 0x0000_0006,
        /// Device → guest: status indication (link up/down, speed).
        INDICATE_STATUS = 0x0000_0007,
        /// Either way: keep-alive.
        KEEPALIVE = 0x0000_0008,
        /// Device → guest completion of [`Self::INITIALIZE`].
        INITIALIZE_COMPLETE = 0x8000_0002,
        /// Device → guest completion of [`Self::QUERY`].
        QUERY_COMPLETE = 0x8000_0004,
        /// Device → guest completion of [`Self::SET`].
        SET_COMPLETE = 0x8000_0005,
        /// Device → guest completion of [`Self::RESET`].
        RESET_COMPLETE = 0x8000_0006,
        /// Completion of [`Self::KEEPALIVE`].
        KEEPALIVE_COMPLETE = 0x8000_0008,
    }
}

open_enum! {
    /// `RNDIS_STATUS_*` (NDIS_STATUS values).
    pub struct Status(u32) {
        /// Success.
        SUCCESS = 0x0000_0000,
        /// Indication: the medium connected.
        MEDIA_CONNECT = 0x4001_000B,
        /// Indication: the medium disconnected.
        MEDIA_DISCONNECT = 0x4001_000C,
        /// Indication: the link speed changed (payload: u32, 100 bps units).
        LINK_SPEED_CHANGE = 0x4001_0013,
        /// Indication: the network changed (Linux re-runs DHCP).
        NETWORK_CHANGE = 0x4001_0018,
        /// A response would not fit.
        BUFFER_OVERFLOW = 0x8000_0005,
        /// Generic failure.
        FAILURE = 0xC000_0001,
        /// Out of resources.
        RESOURCES = 0xC000_009A,
        /// The OID or feature is not supported.
        NOT_SUPPORTED = 0xC000_00BB,
        /// The multicast list is full.
        MULTICAST_FULL = 0xC001_0009,
        /// An information buffer had the wrong length.
        INVALID_LENGTH = 0xC001_0014,
        /// An information buffer held invalid data.
        INVALID_DATA = 0xC001_0015,
        /// The OID is not valid.
        INVALID_OID = 0xC001_0017,
    }
}

open_enum! {
    /// NDIS object identifiers (`RNDIS_OID_*`, `OID_*`).
    pub struct Oid(u32) {
        /// The OIDs the device supports (u32 array).
        GEN_SUPPORTED_LIST = 0x0001_0101,
        /// Hardware status (u32, 0 = ready).
        GEN_HARDWARE_STATUS = 0x0001_0102,
        /// Media supported (u32, 0 = 802.3).
        GEN_MEDIA_SUPPORTED = 0x0001_0103,
        /// Media in use (u32, 0 = 802.3).
        GEN_MEDIA_IN_USE = 0x0001_0104,
        /// Maximum lookahead (u32).
        GEN_MAXIMUM_LOOKAHEAD = 0x0001_0105,
        /// Maximum frame size without the Ethernet header (u32): Linux uses
        /// it as the MTU (`rndis_filter_device_add`).
        GEN_MAXIMUM_FRAME_SIZE = 0x0001_0106,
        /// Link speed (u32, 100 bps units).
        GEN_LINK_SPEED = 0x0001_0107,
        /// Transmit buffer space (u32).
        GEN_TRANSMIT_BUFFER_SPACE = 0x0001_0108,
        /// Receive buffer space (u32).
        GEN_RECEIVE_BUFFER_SPACE = 0x0001_0109,
        /// Transmit block size (u32).
        GEN_TRANSMIT_BLOCK_SIZE = 0x0001_010A,
        /// Receive block size (u32).
        GEN_RECEIVE_BLOCK_SIZE = 0x0001_010B,
        /// Vendor id (u32).
        GEN_VENDOR_ID = 0x0001_010C,
        /// Vendor description (string).
        GEN_VENDOR_DESCRIPTION = 0x0001_010D,
        /// Packet filter (u32, [`packet_filter`] bits).
        GEN_CURRENT_PACKET_FILTER = 0x0001_010E,
        /// Current lookahead (u32).
        GEN_CURRENT_LOOKAHEAD = 0x0001_010F,
        /// Driver version (u16).
        GEN_DRIVER_VERSION = 0x0001_0110,
        /// Maximum total frame size including the header (u32).
        GEN_MAXIMUM_TOTAL_SIZE = 0x0001_0111,
        /// Protocol options.
        GEN_PROTOCOL_OPTIONS = 0x0001_0112,
        /// MAC options (u32, [`mac_options`] bits).
        GEN_MAC_OPTIONS = 0x0001_0113,
        /// Media connect status (u32: 0 connected, 1 disconnected).
        GEN_MEDIA_CONNECT_STATUS = 0x0001_0114,
        /// Maximum packets per send (u32).
        GEN_MAXIMUM_SEND_PACKETS = 0x0001_0115,
        /// Vendor driver version (u32).
        GEN_VENDOR_DRIVER_VERSION = 0x0001_0116,
        /// Network layer addresses (set by Windows guests).
        GEN_NETWORK_LAYER_ADDRESSES = 0x0001_0118,
        /// Transport header offset.
        GEN_TRANSPORT_HEADER_OFFSET = 0x0001_0119,
        /// RSS capabilities (Linux queries it from NVSP 5 on).
        GEN_RECEIVE_SCALE_CAPABILITIES = 0x0001_0203,
        /// RSS parameters (Linux sets it when it has sub-channels).
        GEN_RECEIVE_SCALE_PARAMETERS = 0x0001_0204,
        /// NDIS 6 maximum link speed.
        GEN_MAX_LINK_SPEED = 0x0001_0206,
        /// NDIS 6 link state.
        GEN_LINK_STATE = 0x0001_0207,
        /// NDIS 6 link parameters.
        GEN_LINK_PARAMETERS = 0x0001_0208,
        /// Machine name.
        GEN_MACHINE_NAME = 0x0001_021A,
        /// RNDIS configuration parameter ([`ConfigParameterInfo`]); Linux
        /// sets "NetworkAddress" to change the MAC.
        GEN_RNDIS_CONFIG_PARAMETER = 0x0001_021B,
        /// Friendly name (UTF-16; Linux queries it, failure is ignored).
        GEN_FRIENDLY_NAME = 0x0002_0216,
        /// The burned-in MAC address (6 bytes).
        OID_802_3_PERMANENT_ADDRESS = 0x0101_0101,
        /// The current MAC address (6 bytes).
        OID_802_3_CURRENT_ADDRESS = 0x0101_0102,
        /// Multicast list (6-byte addresses).
        OID_802_3_MULTICAST_LIST = 0x0101_0103,
        /// Maximum multicast list size (u32).
        OID_802_3_MAXIMUM_LIST_SIZE = 0x0101_0104,
        /// 802.3 MAC options.
        OID_802_3_MAC_OPTIONS = 0x0101_0105,
        /// Offload encapsulation (NDIS 6).
        OFFLOAD_ENCAPSULATION = 0x0101_010A,
        /// Frames received with alignment errors (u32).
        OID_802_3_RCV_ERROR_ALIGNMENT = 0x0102_0101,
        /// Frames sent after one collision (u32).
        OID_802_3_XMIT_ONE_COLLISION = 0x0102_0102,
        /// Frames sent after more collisions (u32).
        OID_802_3_XMIT_MORE_COLLISIONS = 0x0102_0103,
        /// Current offload configuration ([`NdisOffload`]).
        TCP_OFFLOAD_CURRENT_CONFIG = 0xFC01_020B,
        /// Offload parameters to set ([`NdisOffloadParams`]).
        TCP_OFFLOAD_PARAMETERS = 0xFC01_020C,
        /// Offload capabilities ([`NdisOffload`]); Linux fails the device if
        /// the answer is not a valid object.
        TCP_OFFLOAD_HARDWARE_CAPABILITIES = 0xFC01_020D,
        /// Connection offload configuration.
        TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG = 0xFC01_020E,
        /// Connection offload capabilities.
        TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES = 0xFC01_020F,
    }
}

/// `NDIS_PACKET_TYPE_*`: bits of [`Oid::GEN_CURRENT_PACKET_FILTER`].
pub mod packet_filter {
    /// Frames addressed to the adapter's MAC.
    pub const DIRECTED: u32 = 0x0000_0001;
    /// Multicast frames to addresses in the multicast list.
    pub const MULTICAST: u32 = 0x0000_0002;
    /// All multicast frames.
    pub const ALL_MULTICAST: u32 = 0x0000_0004;
    /// Broadcast frames.
    pub const BROADCAST: u32 = 0x0000_0008;
    /// Source routing (token ring).
    pub const SOURCE_ROUTING: u32 = 0x0000_0010;
    /// Every frame.
    pub const PROMISCUOUS: u32 = 0x0000_0020;
    /// The filter Linux sets when the interface opens
    /// (`rndis_filter_open_device`).
    pub const LINUX_OPEN: u32 = BROADCAST | ALL_MULTICAST | DIRECTED;
}

/// `NDIS_MAC_OPTION_*`: bits of [`Oid::GEN_MAC_OPTIONS`].
pub mod mac_options {
    /// The lookahead buffer holds the whole frame.
    pub const COPY_LOOKAHEAD_DATA: u32 = 0x0000_0001;
    /// Transfers never pend.
    pub const TRANSFERS_NOT_PEND: u32 = 0x0000_0004;
    /// The adapter does not loop frames back.
    pub const NO_LOOPBACK: u32 = 0x0000_0008;
    /// Full duplex.
    pub const FULL_DUPLEX: u32 = 0x0000_0010;
}

/// RNDIS protocol version the device answers with (1.0).
pub const MAJOR_VERSION: u32 = 1;
/// RNDIS minor version.
pub const MINOR_VERSION: u32 = 0;
/// `RNDIS_DF_CONNECTIONLESS`: device flags of an Ethernet adapter.
pub const DF_CONNECTIONLESS: u32 = 0x0000_0001;
/// `RNDIS_MEDIUM_802_3`.
pub const MEDIUM_802_3: u32 = 0;
/// `OID_GEN_MEDIA_CONNECT_STATUS`: connected.
pub const MEDIA_STATE_CONNECTED: u32 = 0;
/// `OID_GEN_MEDIA_CONNECT_STATUS`: disconnected.
pub const MEDIA_STATE_DISCONNECTED: u32 = 1;
/// `max_xfer_size` Linux puts in its `INITIALIZE` (`rndis_filter_init_device`).
pub const LINUX_MAX_TRANSFER_SIZE: u32 = 0x4000;
/// Linux accepts a control response only up to
/// `sizeof(struct rndis_message) + RNDIS_EXT_LEN` = 52 + 4096 bytes
/// (`rndis_filter_receive_response`).
pub const LINUX_MAX_RESPONSE_SIZE: usize = 52 + 4096;

/// Bytes of the RNDIS message header.
pub const HEADER_SIZE: usize = 8;

wire! {
    /// The 8-byte header of every RNDIS message.
    pub struct Header {
        /// [`MessageType`].
        pub message_type: U32,
        /// Length of the whole message, header included.
        pub message_length: U32,
    } = 8;
}

wire! {
    /// `struct rndis_initialize_request`.
    pub struct InitializeRequest {
        /// Request id, echoed in the completion.
        pub request_id: U32,
        /// RNDIS major version (1).
        pub major_version: U32,
        /// RNDIS minor version (0).
        pub minor_version: U32,
        /// Largest message the guest accepts (Linux: 0x4000).
        pub max_transfer_size: U32,
    } = 16;
}

wire! {
    /// `struct rndis_initialize_complete`.
    pub struct InitializeComplete {
        /// Echoed request id.
        pub request_id: U32,
        /// [`Status`].
        pub status: U32,
        /// RNDIS major version.
        pub major_version: U32,
        /// RNDIS minor version.
        pub minor_version: U32,
        /// [`DF_CONNECTIONLESS`].
        pub device_flags: U32,
        /// [`MEDIUM_802_3`].
        pub medium: U32,
        /// Most data packets the guest may batch in one message (Linux
        /// honours it when batching in a send section).
        pub max_packets_per_message: U32,
        /// Largest message the device accepts.
        pub max_transfer_size: U32,
        /// Batched packets are aligned to `1 << factor` bytes.
        pub packet_alignment_factor: U32,
        /// Call-manager address families (0).
        pub af_list_offset: U32,
        /// Call-manager address families (0).
        pub af_list_size: U32,
    } = 44;
}

wire! {
    /// `struct rndis_halt_request`, `rndis_keepalive_request` (a request id).
    pub struct RequestId {
        /// Request id.
        pub request_id: U32,
    } = 4;
}

wire! {
    /// `struct rndis_query_request` and `rndis_set_request` (same layout;
    /// the information buffer follows at `information_buffer_offset`).
    pub struct OidRequest {
        /// Request id.
        pub request_id: U32,
        /// [`Oid`].
        pub oid: U32,
        /// Bytes of the information buffer.
        pub information_buffer_length: U32,
        /// Offset of the information buffer from the start of this struct.
        pub information_buffer_offset: U32,
        /// 0 for connectionless devices.
        pub device_vc_handle: U32,
    } = 20;
}

wire! {
    /// `struct rndis_query_complete` (the answer follows at
    /// `information_buffer_offset`, counted from `request_id`; Linux
    /// requires the offset to be at least 16 even when empty).
    pub struct QueryComplete {
        /// Echoed request id.
        pub request_id: U32,
        /// [`Status`].
        pub status: U32,
        /// Bytes of the answer.
        pub information_buffer_length: U32,
        /// Offset of the answer.
        pub information_buffer_offset: U32,
    } = 16;
}

wire! {
    /// `struct rndis_set_complete`, `rndis_keepalive_complete`.
    pub struct RequestComplete {
        /// Echoed request id.
        pub request_id: U32,
        /// [`Status`].
        pub status: U32,
    } = 8;
}

wire! {
    /// `struct rndis_reset_complete` (no request id).
    pub struct ResetComplete {
        /// [`Status`].
        pub status: U32,
        /// 1: the guest must restore its packet filter and multicast list.
        pub addressing_reset: U32,
    } = 8;
}

wire! {
    /// `struct rndis_indicate_status` (the status buffer follows at
    /// `status_buffer_offset`, counted from `status`).
    pub struct IndicateStatus {
        /// [`Status`] being indicated.
        pub status: U32,
        /// Bytes of the status buffer.
        pub status_buffer_length: U32,
        /// Offset of the status buffer (0 when empty).
        pub status_buffer_offset: U32,
    } = 12;
}

wire! {
    /// `struct rndis_packet`: a data packet's header. Offsets count from
    /// `data_offset`'s own first byte (the start of this struct).
    pub struct Packet {
        /// Offset of the Ethernet frame.
        pub data_offset: U32,
        /// Length of the Ethernet frame.
        pub data_length: U32,
        /// Out-of-band data offset (unused: 0).
        pub oob_data_offset: U32,
        /// Out-of-band data length (unused: 0).
        pub oob_data_length: U32,
        /// Out-of-band elements (unused: 0).
        pub num_oob_data_elements: U32,
        /// Offset of the per-packet info.
        pub per_packet_info_offset: U32,
        /// Bytes of per-packet info.
        pub per_packet_info_length: U32,
        /// 0 for connectionless devices.
        pub vc_handle: U32,
        /// Reserved.
        pub reserved: U32,
    } = 36;
}

wire! {
    /// `struct rndis_per_packet_info`: one element of a packet's per-packet
    /// info; its data is `[per_packet_information_offset, size)` of the
    /// element.
    pub struct PerPacketInfo {
        /// Bytes of this element, header included.
        pub size: U32,
        /// Bits 0-30: [`ppi`] type; bit 31: "internal" (RNDIS-private).
        pub kind: U32,
        /// Offset of the data from the start of this element (Linux: 12).
        pub per_packet_information_offset: U32,
    } = 12;
}

/// Per-packet info types (`enum ndis_per_pkt_info_type`).
pub mod ppi {
    /// TCP/IP checksum info (`ndis_tcp_ip_checksum_info`, u32).
    pub const TCPIP_CHECKSUM: u32 = 0;
    /// IPsec.
    pub const IPSEC: u32 = 1;
    /// TCP large send (`ndis_tcp_lso_info`, u32).
    pub const TCP_LARGE_SEND: u32 = 2;
    /// 802.1Q tag (`ndis_pkt_8021q_info`, u32).
    pub const IEEE_8021Q: u32 = 6;
    /// RSS hash value (u32).
    pub const HASH_VALUE: u32 = 8;
    /// Bit 31 of [`super::PerPacketInfo::kind`]: an RNDIS-internal type.
    pub const INTERNAL: u32 = 1 << 31;
}

wire! {
    /// `struct ndis_object_header`.
    pub struct NdisObjectHeader {
        /// Object type (`NDIS_OBJECT_TYPE_*`).
        pub object_type: u8,
        /// Revision.
        pub revision: u8,
        /// Size of the object in bytes.
        pub size: U16,
    } = 4;
}

/// `NDIS_OBJECT_TYPE_DEFAULT` (offload parameters).
pub const NDIS_OBJECT_TYPE_DEFAULT: u8 = 0x80;
/// `NDIS_OBJECT_TYPE_OFFLOAD` (offload capabilities / configuration).
pub const NDIS_OBJECT_TYPE_OFFLOAD: u8 = 0xA7;

wire! {
    /// `struct ndis_offload` (NDIS 6.30, 156 bytes): offload capabilities.
    /// The groups are kept as arrays of their little-endian words and bytes;
    /// all zero means "no offloads".
    pub struct NdisOffload {
        /// Object header (type [`NDIS_OBJECT_TYPE_OFFLOAD`]).
        pub header: NdisObjectHeader,
        /// `ndis_csum_offload`: ip4 tx encap/csum, rx encap/csum, ip6 the same.
        pub checksum: [U32; 8],
        /// `ndis_lsov1_offload`.
        pub lsov1: [U32; 4],
        /// `ndis_ipsecv1_offload`.
        pub ipsecv1: [U32; 7],
        /// `ndis_lsov2_offload`.
        pub lsov2: [U32; 7],
        /// Flags.
        pub flags: U32,
        /// `ndis_ipsecv2_offload` (NDIS ≥ 6.1; 32 bytes with padding).
        pub ipsecv2: [u8; 32],
        /// `ndis_rsc_offload` ip4, ip6 (NDIS ≥ 6.30).
        pub rsc: [u8; 2],
        /// Padding before the 4-aligned `encap_gre`.
        pub padding: [u8; 2],
        /// `ndis_encap_offload` flags, maxhdr.
        pub encap_gre: [U32; 2],
    } = 156;
}

/// `NDIS_OFFLOAD_SIZE_6_0`: [`NdisOffload`] up to `ipsecv2`.
pub const NDIS_OFFLOAD_SIZE_6_0: usize = 112;
/// `NDIS_OFFLOAD_SIZE_6_1`: [`NdisOffload`] up to `rsc`.
pub const NDIS_OFFLOAD_SIZE_6_1: usize = 144;
/// `NDIS_OFFLOAD_SIZE`: the whole [`NdisOffload`].
pub const NDIS_OFFLOAD_SIZE: usize = 156;

impl NdisOffload {
    /// "No offloads" in the object revision the guest asked for (Linux
    /// puts a header with revision 1, 2 or 3 in its query, by NVSP version):
    /// revision 1 → 112 bytes, 2 → 144, 3 (or newer) → 156; anything else
    /// is answered as revision 1. Returns the object's bytes (`size` of
    /// them). Linux checks type, revision ≥ 1 and 112 ≤ size ≤ 156
    /// (`rndis_query_hwcaps`).
    pub fn none(requested_revision: u8) -> Vec<u8> {
        let (revision, size) = match requested_revision {
            2 => (2, NDIS_OFFLOAD_SIZE_6_1),
            3.. => (3, NDIS_OFFLOAD_SIZE),
            _ => (1, NDIS_OFFLOAD_SIZE_6_0),
        };
        let mut o = NdisOffload::new_zeroed();
        o.header = NdisObjectHeader {
            object_type: NDIS_OBJECT_TYPE_OFFLOAD,
            revision,
            size: (size as u16).into(),
        };
        o.as_bytes()[..size].to_vec()
    }
}

wire! {
    /// `struct ndis_offload_params` (28 bytes; NVSP ≤ 4 guests send the
    /// first 22). Per-feature bytes: 0 = no change, 1 = disabled, ≥ 2 =
    /// some direction enabled (`NDIS_OFFLOAD_PARAMETERS_*`).
    pub struct NdisOffloadParams {
        /// Object header (type [`NDIS_OBJECT_TYPE_DEFAULT`]).
        pub header: NdisObjectHeader,
        /// IPv4 header checksum.
        pub ip_v4_checksum: u8,
        /// TCP/IPv4 checksum.
        pub tcp_ip_v4_checksum: u8,
        /// UDP/IPv4 checksum.
        pub udp_ip_v4_checksum: u8,
        /// TCP/IPv6 checksum.
        pub tcp_ip_v6_checksum: u8,
        /// UDP/IPv6 checksum.
        pub udp_ip_v6_checksum: u8,
        /// LSO v1.
        pub lso_v1: u8,
        /// IPsec v1.
        pub ip_sec_v1: u8,
        /// LSO v2 IPv4.
        pub lso_v2_ipv4: u8,
        /// LSO v2 IPv6.
        pub lso_v2_ipv6: u8,
        /// TCP connection offload IPv4.
        pub tcp_connection_ip_v4: u8,
        /// TCP connection offload IPv6.
        pub tcp_connection_ip_v6: u8,
        /// Padding.
        pub padding0: u8,
        /// Flags.
        pub flags: U32,
        /// IPsec v2.
        pub ip_sec_v2: u8,
        /// IPsec v2 IPv4.
        pub ip_sec_v2_ip_v4: u8,
        /// RSC IPv4 (offset 22 = `VERSION_4_OFFLOAD_SIZE`).
        pub rsc_ip_v4: u8,
        /// RSC IPv6.
        pub rsc_ip_v6: u8,
        /// Encapsulated packet task offload.
        pub encapsulated_packet_task_offload: u8,
        /// Encapsulation types.
        pub encapsulation_types: u8,
        /// Padding.
        pub padding1: [u8; 2],
    } = 28;
}

/// `VERSION_4_OFFLOAD_SIZE`: the part of [`NdisOffloadParams`] NVSP ≤ 4
/// guests send.
pub const VERSION_4_OFFLOAD_SIZE: usize = 22;

wire! {
    /// `struct rndis_config_parameter_info` (offsets count from the start of
    /// this struct; name and string values are UTF-16LE).
    pub struct ConfigParameterInfo {
        /// Offset of the name.
        pub name_offset: U32,
        /// Bytes of the name.
        pub name_length: U32,
        /// 0 integer, 2 string.
        pub parameter_type: U32,
        /// Offset of the value.
        pub value_offset: U32,
        /// Bytes of the value.
        pub value_length: U32,
    } = 20;
}

/// Why bytes from the peer are not an RNDIS message (the peer is at fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer than 8 bytes left: no header.
    NoHeader {
        /// Bytes there.
        have: usize,
    },
    /// `message_length` is below 8 or past the bytes there.
    BadLength {
        /// The claimed length.
        message_length: u32,
        /// Bytes there.
        have: usize,
    },
    /// The body is shorter than the type's struct.
    Short {
        /// The message type.
        kind: MessageType,
        /// Body bytes needed.
        need: usize,
        /// Body bytes there.
        have: usize,
    },
    /// A sub-range (`offset`, `length`) does not lie inside its container of
    /// `within` bytes.
    OutOfBounds {
        /// What the range is.
        what: &'static str,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
        /// Bytes of the container.
        within: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHeader { have } => write!(f, "peer sent {have} bytes: no RNDIS header"),
            Self::BadLength { message_length, have } => {
                write!(
                    f,
                    "peer's RNDIS message_length {message_length} with {have} bytes there"
                )
            }
            Self::Short { kind, need, have } => {
                write!(f, "peer sent a short {kind:?}: {have} body bytes, need {need}")
            }
            Self::OutOfBounds {
                what,
                offset,
                length,
                within,
            } => write!(f, "peer's {what} [{offset}, +{length}) is outside {within} bytes"),
        }
    }
}

/// Split the first RNDIS message off `bytes`: its header, its body
/// (`message_length - 8` bytes) and the rest. The length must be at least 8
/// and within `bytes`.
pub fn split_message(bytes: &[u8]) -> Result<(Header, &[u8], &[u8]), ParseError> {
    let (header, _) =
        Header::read_from_prefix(bytes).map_err(|_| ParseError::NoHeader { have: bytes.len() })?;
    let len = header.message_length.get();
    let bad = ParseError::BadLength {
        message_length: len,
        have: bytes.len(),
    };
    let len = usize::try_from(len).map_err(|_| bad)?;
    if len < HEADER_SIZE || len > bytes.len() {
        return Err(bad);
    }
    let (message, rest) = bytes.split_at(len);
    Ok((header, &message[HEADER_SIZE..], rest))
}

/// Read a `T` from the front of a message body of type `kind`.
pub fn read_body<T: FromBytes>(kind: MessageType, body: &[u8]) -> Result<T, ParseError> {
    T::read_from_prefix(body)
        .map(|(t, _)| t)
        .map_err(|_| ParseError::Short {
            kind,
            need: size_of::<T>(),
            have: body.len(),
        })
}

/// The sub-slice `[offset, offset + length)` of `within`, if it lies inside.
pub fn sub_range<'a>(
    what: &'static str,
    within: &'a [u8],
    offset: u32,
    length: u32,
) -> Result<&'a [u8], ParseError> {
    let err = ParseError::OutOfBounds {
        what,
        offset,
        length,
        within: within.len(),
    };
    let start = usize::try_from(offset).map_err(|_| err)?;
    let end = start
        .checked_add(usize::try_from(length).map_err(|_| err)?)
        .ok_or(err)?;
    within.get(start..end).ok_or(err)
}

/// Build an RNDIS message: header (type, length = 8 + body + tail), `body`,
/// then `tail` (an information or status buffer, a frame).
pub fn build_message<T: IntoBytes + Immutable>(kind: MessageType, body: &T, tail: &[u8]) -> Vec<u8> {
    let b = body.as_bytes();
    let len = HEADER_SIZE + b.len() + tail.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&kind.0.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(tail);
    out
}

/// A guest's `INITIALIZE` as Linux builds it (`rndis_filter_init_device`):
/// version 1.0, `max_transfer_size` 0x4000.
pub fn initialize_request(request_id: u32) -> Vec<u8> {
    build_message(
        MessageType::INITIALIZE,
        &InitializeRequest {
            request_id: request_id.into(),
            major_version: MAJOR_VERSION.into(),
            minor_version: MINOR_VERSION.into(),
            max_transfer_size: LINUX_MAX_TRANSFER_SIZE.into(),
        },
        &[],
    )
}

/// A guest's `QUERY` or `SET` (`kind`) of `oid` with information buffer
/// `info` right after the request (offset 20, as Linux does).
pub fn oid_request(kind: MessageType, request_id: u32, oid: Oid, info: &[u8]) -> Vec<u8> {
    build_message(
        kind,
        &OidRequest {
            request_id: request_id.into(),
            oid: oid.0.into(),
            information_buffer_length: (info.len() as u32).into(),
            information_buffer_offset: (size_of::<OidRequest>() as u32).into(),
            device_vc_handle: 0.into(),
        },
        info,
    )
}

/// A `PACKET` message carrying `frame` after `ppis` (already-encoded
/// per-packet info elements), as Linux's `netvsc_xmit` lays it out:
/// `per_packet_info_offset` 36, `data_offset` 36 + PPI bytes.
pub fn packet_message(frame: &[u8], ppis: &[u8]) -> Vec<u8> {
    let header = size_of::<Packet>() as u32;
    let mut tail = Vec::with_capacity(ppis.len() + frame.len());
    tail.extend_from_slice(ppis);
    tail.extend_from_slice(frame);
    build_message(
        MessageType::PACKET,
        &Packet {
            data_offset: (header + ppis.len() as u32).into(),
            data_length: (frame.len() as u32).into(),
            oob_data_offset: 0.into(),
            oob_data_length: 0.into(),
            num_oob_data_elements: 0.into(),
            per_packet_info_offset: (if ppis.is_empty() { 0 } else { header }).into(),
            per_packet_info_length: (ppis.len() as u32).into(),
            vc_handle: 0.into(),
            reserved: 0.into(),
        },
        &tail,
    )
}

/// One per-packet info element of `kind` carrying a u32 `value` (12-byte
/// header + 4 bytes, data offset 12), as Linux's `init_ppi_data` builds them.
pub fn ppi_u32(kind: u32, value: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&16u32.to_le_bytes());
    out[4..8].copy_from_slice(&kind.to_le_bytes());
    out[8..12].copy_from_slice(&12u32.to_le_bytes());
    out[12..].copy_from_slice(&value.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_linux() {
        assert_eq!(size_of::<InitializeComplete>(), 44);
        assert_eq!(size_of::<OidRequest>(), 20);
        assert_eq!(size_of::<Packet>(), 36);
        assert_eq!(size_of::<PerPacketInfo>(), 12);
        assert_eq!(core::mem::offset_of!(NdisOffload, ipsecv2), NDIS_OFFLOAD_SIZE_6_0);
        assert_eq!(core::mem::offset_of!(NdisOffload, rsc), NDIS_OFFLOAD_SIZE_6_1);
        assert_eq!(
            core::mem::offset_of!(NdisOffloadParams, rsc_ip_v4),
            VERSION_4_OFFLOAD_SIZE
        );
        assert_eq!(core::mem::offset_of!(NdisOffloadParams, flags), 16);
    }

    #[test]
    fn linux_initialize_bytes() {
        let m = initialize_request(1);
        assert_eq!(
            m,
            [2u32, 24, 1, 1, 0, 0x4000]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<_>>()
        );
        let (h, body, rest) = split_message(&m).unwrap();
        assert_eq!(h.message_type.get(), MessageType::INITIALIZE.0);
        assert_eq!(body.len(), 16);
        assert!(rest.is_empty());
        let r: InitializeRequest = read_body(MessageType::INITIALIZE, body).unwrap();
        assert_eq!(r.max_transfer_size.get(), 0x4000);
    }

    #[test]
    fn offload_none_revisions() {
        for (rev, size) in [(0, 112), (1, 112), (2, 144), (3, 156), (9, 156)] {
            let o = NdisOffload::none(rev);
            assert_eq!(o.len(), size);
            assert_eq!(o[0], NDIS_OBJECT_TYPE_OFFLOAD);
            assert!(o[1] >= 1);
            assert_eq!(u16::from_le_bytes([o[2], o[3]]) as usize, size);
            assert!(o[4..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn hostile_lengths() {
        assert_eq!(
            split_message(&[0; 7]).unwrap_err(),
            ParseError::NoHeader { have: 7 }
        );
        let mut m = initialize_request(1);
        m[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert!(matches!(
            split_message(&m),
            Err(ParseError::BadLength {
                message_length: 7,
                ..
            })
        ));
        m[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(split_message(&m), Err(ParseError::BadLength { .. })));
        assert!(sub_range("x", &[0; 10], u32::MAX, 2).is_err());
        assert!(sub_range("x", &[0; 10], 2, u32::MAX).is_err());
        assert!(sub_range("x", &[0; 10], 10, 1).is_err());
        assert_eq!(sub_range("x", &[0; 10], 10, 0).unwrap().len(), 0);
        assert!(read_body::<Packet>(MessageType::PACKET, &[0; 35]).is_err());
    }
}
