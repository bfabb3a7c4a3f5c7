//! NVSP messages: a 4-byte type header followed by a type-specific body,
//! sent in VMBus in-band packets (and completions) on the NIC's channel.
//! Linux 6.1 `drivers/net/hyperv/hyperv_net.h`, `struct nvsp_message`.

use core::fmt;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

// ---------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------

/// `sizeof(struct nvsp_message)` in Linux 6.1: the 4-byte header plus the
/// largest body (the v6 PD API completion, 36 bytes). Linux sends every
/// message it originates with this length, except the 8-byte receive
/// completion (`send_recv_completions` in `netvsc.c`), and copies this many
/// bytes out of every completion it receives (`netvsc_send_completion`).
pub const MESSAGE_SIZE: usize = 40;

/// The message size before NVSP 6.1 (header + the largest v1 body, the
/// one-section receive-buffer completion): `NVSP_LEGACY_MESSAGE_SIZE` in
/// Hyper-V's header as quoted by OpenVMM (`PACKET_SIZE_V1`, 0x1c).
pub const LEGACY_MESSAGE_SIZE: usize = 28;

/// Bytes of the message header.
pub const HEADER_SIZE: usize = 4;

/// The size the host should give the messages it originates for a guest
/// that negotiated `version` (OpenVMM `PACKET_SIZE_V1` / `PACKET_SIZE_V61`):
/// 40 from NVSP 6.1 on, 28 before.
pub const fn message_size(version: Version) -> usize {
    if version.0 >= Version::V61.0 {
        MESSAGE_SIZE
    } else {
        LEGACY_MESSAGE_SIZE
    }
}

// ---------------------------------------------------------------------------
// Open enums
// ---------------------------------------------------------------------------

open_enum! {
    /// `NVSP_MSG*_TYPE_*`: the message type in the header.
    pub struct MessageType(u32) {
        /// No message.
        NONE = 0,
        /// Guest → host: protocol version range (`nvsp_message_init`).
        INIT = 1,
        /// Host → guest completion of [`Self::INIT`].
        INIT_COMPLETE = 2,
        /// v1, guest → host: the guest's NDIS version, no completion.
        SEND_NDIS_VERSION = 100,
        /// v1, guest → host: the receive buffer's GPADL.
        SEND_RECEIVE_BUFFER = 101,
        /// v1, host → guest completion of [`Self::SEND_RECEIVE_BUFFER`].
        SEND_RECEIVE_BUFFER_COMPLETE = 102,
        /// v1, guest → host: stop using the receive buffer.
        REVOKE_RECEIVE_BUFFER = 103,
        /// v1, guest → host: the send buffer's GPADL.
        SEND_SEND_BUFFER = 104,
        /// v1, host → guest completion of [`Self::SEND_SEND_BUFFER`].
        SEND_SEND_BUFFER_COMPLETE = 105,
        /// v1, guest → host: stop using the send buffer.
        REVOKE_SEND_BUFFER = 106,
        /// v1, both ways: an RNDIS message follows (send buffer section,
        /// GPA-direct ranges or transfer pages).
        SEND_RNDIS_PACKET = 107,
        /// v1, both ways: completion of [`Self::SEND_RNDIS_PACKET`].
        SEND_RNDIS_PACKET_COMPLETE = 108,
        /// v2 chimney (TCP offload) messages, never used by Linux.
        SEND_CHIMNEY_DELEGATED_BUFFER = 109,
        /// v2 chimney.
        SEND_CHIMNEY_DELEGATED_BUFFER_COMPLETE = 110,
        /// v2 chimney.
        REVOKE_CHIMNEY_DELEGATED_BUFFER = 111,
        /// v2 chimney.
        RESUME_CHIMNEY_RX_INDICATION = 112,
        /// v2 chimney.
        TERMINATE_CHIMNEY = 113,
        /// v2 chimney.
        TERMINATE_CHIMNEY_COMPLETE = 114,
        /// v2 chimney.
        INDICATE_CHIMNEY_EVENT = 115,
        /// v2 chimney.
        SEND_CHIMNEY_PACKET = 116,
        /// v2 chimney.
        SEND_CHIMNEY_PACKET_COMPLETE = 117,
        /// v2 chimney.
        POST_CHIMNEY_RECV_REQUEST = 118,
        /// v2 chimney.
        POST_CHIMNEY_RECV_REQUEST_COMPLETE = 119,
        /// v2, deprecated.
        ALLOCATE_RECEIVE_BUFFER = 120,
        /// v2, deprecated.
        ALLOCATE_RECEIVE_BUFFER_COMPLETE = 121,
        /// v2, deprecated.
        FREE_RECEIVE_BUFFER = 122,
        /// v2, deprecated.
        SEND_VMQ_RNDIS_PACKET = 123,
        /// v2, deprecated.
        SEND_VMQ_RNDIS_PACKET_COMPLETE = 124,
        /// v2, guest → host: MTU and capability bits, no completion.
        SEND_NDIS_CONFIG = 125,
        /// v2 chimney.
        ALLOCATE_CHIMNEY_HANDLE = 126,
        /// v2 chimney.
        ALLOCATE_CHIMNEY_HANDLE_COMPLETE = 127,
        /// v4, host → guest: an SR-IOV VF to team with.
        SEND_VF_ASSOCIATION = 128,
        /// v4, guest → host: switch the data path (synthetic / VF).
        SWITCH_DATA_PATH = 129,
        /// v4, deprecated.
        UPLINK_CONNECT_STATE_DEPRECATED = 130,
        /// v5, extended OID query.
        OID_QUERY_EX = 131,
        /// v5, completion of [`Self::OID_QUERY_EX`].
        OID_QUERY_EX_COMPLETE = 132,
        /// v5, guest → host (and its completion): allocate sub-channels.
        SUBCHANNEL = 133,
        /// v5, host → guest: the send indirection table (vRSS).
        SEND_INDIRECTION_TABLE = 134,
        /// v6 PacketDirect API.
        PD_API = 135,
        /// v6 PacketDirect batch.
        PD_POST_BATCH = 136,
    }
}

open_enum! {
    /// `NVSP_STAT_*`: the status in completions.
    pub struct Status(u32) {
        /// No status (OpenVMM answers a refused `INIT` with it).
        NONE = 0,
        /// Success: the only value Linux accepts.
        SUCCESS = 1,
        /// Failure.
        FAIL = 2,
        /// The requested protocol is newer than the peer's.
        PROTOCOL_TOO_NEW = 3,
        /// The requested protocol is older than the peer's.
        PROTOCOL_TOO_OLD = 4,
        /// An RNDIS packet was malformed.
        INVALID_RNDIS_PACKET = 5,
        /// Busy, try again.
        BUSY = 6,
        /// Protocol not supported (never used in practice).
        PROTOCOL_UNSUPPORTED = 7,
    }
}

open_enum! {
    /// NVSP protocol versions (`NVSP_PROTOCOL_VERSION_*`): major in the high
    /// 16 bits, minor in the low 16.
    pub struct Version(u32) {
        /// NVSP 1 (Windows Server 2008).
        V1 = 0x2,
        /// NVSP 2 (Windows Server 2008 R2).
        V2 = 0x30002,
        /// NVSP 4 (Windows Server 2012).
        V4 = 0x40000,
        /// NVSP 5 (Windows Server 2012 R2): sub-channels, vRSS.
        V5 = 0x50000,
        /// NVSP 6 (Windows Server 2016).
        V6 = 0x60000,
        /// NVSP 6.1: 40-byte messages, RSC over VMBus.
        V61 = 0x60001,
    }
}

impl Version {
    /// Every version Linux 6.1 tries, oldest first (`netvsc_connect_vsp`'s
    /// `ver_list`).
    pub const ALL: [Version; 6] = [
        Version::V1,
        Version::V2,
        Version::V4,
        Version::V5,
        Version::V6,
        Version::V61,
    ];

    /// Whether this is one of [`Self::ALL`].
    pub fn is_known(self) -> bool {
        Self::ALL.contains(&self)
    }
}

/// The version the host should accept for an `INIT` carrying `min..=max`:
/// the newest of `supported` inside the range (Linux sends `min == max`, one
/// version per attempt), or `None` — then the host answers
/// [`init_complete`]`(None, _)` and the guest tries the next one. A range
/// with `min > max` matches nothing.
pub fn negotiate(init: &Init, supported: &[Version]) -> Option<Version> {
    let (min, max) = (init.min_protocol_version.get(), init.max_protocol_version.get());
    supported
        .iter()
        .copied()
        .filter(|v| min <= v.0 && v.0 <= max)
        .max()
}

/// `channel_type` of [`SendRndisPacket`]: the RNDIS message is a data
/// packet (`RMC_DATA`).
pub const CHANNEL_TYPE_DATA: u32 = 0;
/// `channel_type` of [`SendRndisPacket`]: the RNDIS message is a control
/// message (`RMC_CONTROL`).
pub const CHANNEL_TYPE_CONTROL: u32 = 1;
/// `send_buffer_section_index` meaning "not in the send buffer"
/// (`NETVSC_INVALID_INDEX`).
pub const NO_SEND_BUFFER_SECTION: u32 = 0xFFFF_FFFF;
/// The receive buffer id Linux uses (`NETVSC_RECEIVE_BUFFER_ID`); the host
/// must put it in every transfer-page packet's `xfer_pageset_id`.
pub const LINUX_RECEIVE_BUFFER_ID: u16 = 0xCAFE;
/// The send buffer id Linux uses (`NETVSC_SEND_BUFFER_ID`).
pub const LINUX_SEND_BUFFER_ID: u16 = 0;
/// The `negotiated_protocol_version` field of an `INIT_COMPLETE` for
/// versions other than 1 (deprecated; OpenVMM writes this).
pub const INVALID_PROTOCOL_VERSION: u32 = 0xFFFF_FFFF;
/// `max_mdl_chain_length` OpenVMM and Hyper-V put in `INIT_COMPLETE`.
pub const DEFAULT_MAX_MDL_CHAIN_LENGTH: u32 = 34;
/// The send-buffer section size Hyper-V and OpenVMM choose (and Linux's own
/// default, `NETVSC_SEND_SECTION_SIZE`).
pub const DEFAULT_SEND_SECTION_SIZE: u32 = 6144;
/// Linux refuses send or receive sections smaller than this
/// (`NETVSC_MTU_MIN`, `ETH_MIN_MTU`).
pub const MIN_SECTION_SIZE: u32 = 68;

/// `nvsp_2_vsc_capability` bits in [`SendNdisConfig::capability`].
pub mod capability {
    /// VMQ.
    pub const VMQ: u64 = 1 << 0;
    /// TCP chimney.
    pub const CHIMNEY: u64 = 1 << 1;
    /// SR-IOV (Linux sets it from NVSP 5 on).
    pub const SRIOV: u64 = 1 << 2;
    /// 802.1Q tagging (Linux always sets it).
    pub const IEEE_8021Q: u64 = 1 << 3;
    /// Correlation id.
    pub const CORRELATION_ID: u64 = 1 << 4;
    /// Teaming (Linux sets it from NVSP 5 on, to get link-speed updates).
    pub const TEAMING: u64 = 1 << 5;
    /// Virtual subnet id.
    pub const VIRTUAL_SUBNET_ID: u64 = 1 << 6;
    /// RSC over VMBus (Linux sets it from NVSP 6.1 on).
    pub const RSC: u64 = 1 << 7;
}

// ---------------------------------------------------------------------------
// Wire structs (bodies after the 4-byte header)
// ---------------------------------------------------------------------------

/// Wire structs are plain old data: all of zerocopy's traits.
macro_rules! wire {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident: $t:ty,)* } = $size:expr;) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
        pub struct $name { $($(#[$fm])* pub $f: $t,)* }
        const _: () = assert!(core::mem::size_of::<$name>() == $size);
    };
}
pub(crate) use wire;

wire! {
    /// `struct nvsp_message_header`.
    pub struct Header {
        /// [`MessageType`].
        pub message_type: U32,
    } = 4;
}

wire! {
    /// `struct nvsp_message_init` (guest → host).
    pub struct Init {
        /// Oldest version the guest accepts.
        pub min_protocol_version: U32,
        /// Newest version the guest accepts.
        pub max_protocol_version: U32,
    } = 8;
}

wire! {
    /// `struct nvsp_message_init_complete` (host → guest).
    pub struct InitComplete {
        /// Deprecated: 2 for NVSP 1, else [`INVALID_PROTOCOL_VERSION`].
        pub negotiated_protocol_version: U32,
        /// Longest MDL chain the host handles.
        pub max_mdl_chain_length: U32,
        /// [`Status`]: Linux accepts only [`Status::SUCCESS`].
        pub status: U32,
    } = 12;
}

wire! {
    /// `struct nvsp_1_message_send_ndis_version` (guest → host).
    pub struct SendNdisVersion {
        /// NDIS major version (6).
        pub ndis_major_version: U32,
        /// NDIS minor version (30, or 1 when NVSP ≤ 4).
        pub ndis_minor_version: U32,
    } = 8;
}

wire! {
    /// `struct nvsp_1_message_send_receive_buffer` and
    /// `nvsp_1_message_send_send_buffer` (guest → host, packed: 6 bytes).
    pub struct SendBuffer {
        /// GPADL handle of the buffer.
        pub gpadl_handle: U32,
        /// Buffer id (receive: echoed in every transfer-page packet).
        pub id: U16,
    } = 6;
}

wire! {
    /// `struct nvsp_1_receive_buffer_section`.
    pub struct ReceiveBufferSection {
        /// Byte offset of the section in the buffer (Linux requires 0).
        pub offset: U32,
        /// Size of each sub-allocation (Linux requires ≥ 68).
        pub sub_allocation_size: U32,
        /// Number of sub-allocations (Linux requires size × count ≤ buffer).
        pub num_sub_allocations: U32,
        /// `offset + size × count`.
        pub end_offset: U32,
    } = 16;
}

wire! {
    /// `struct nvsp_1_message_send_receive_buffer_complete` with its one
    /// section (host → guest; Linux requires `num_sections == 1`).
    pub struct SendReceiveBufferComplete {
        /// [`Status`].
        pub status: U32,
        /// Number of sections (1).
        pub num_sections: U32,
        /// The section.
        pub section: ReceiveBufferSection,
    } = 24;
}

wire! {
    /// `struct nvsp_1_message_revoke_receive_buffer` / `_send_buffer`.
    pub struct RevokeBuffer {
        /// Buffer id.
        pub id: U16,
    } = 2;
}

wire! {
    /// `struct nvsp_1_message_send_send_buffer_complete` (host → guest).
    pub struct SendSendBufferComplete {
        /// [`Status`].
        pub status: U32,
        /// Section size the host chose (Linux requires ≥ 68).
        pub section_size: U32,
    } = 8;
}

wire! {
    /// `struct nvsp_1_message_send_rndis_packet` (both ways).
    pub struct SendRndisPacket {
        /// [`CHANNEL_TYPE_DATA`] or [`CHANNEL_TYPE_CONTROL`].
        pub channel_type: U32,
        /// Send-buffer section holding the RNDIS message, or
        /// [`NO_SEND_BUFFER_SECTION`] (data in GPA-direct ranges).
        pub send_buffer_section_index: U32,
        /// Bytes used in that section (0 when there is none).
        pub send_buffer_section_size: U32,
    } = 12;
}

wire! {
    /// `struct nvsp_1_message_send_rndis_packet_complete` (both ways).
    pub struct SendRndisPacketComplete {
        /// [`Status`].
        pub status: U32,
    } = 4;
}

wire! {
    /// `struct nvsp_2_send_ndis_config` (guest → host, packed: 16 bytes).
    pub struct SendNdisConfig {
        /// The guest's MTU + 14 (Ethernet header).
        pub mtu: U32,
        /// Reserved.
        pub reserved: U32,
        /// [`capability`] bits.
        pub capability: U64,
    } = 16;
}

wire! {
    /// `struct nvsp_4_send_vf_association` (host → guest).
    pub struct SendVfAssociation {
        /// 1: a VF is allocated and `serial` is valid.
        pub allocated: U32,
        /// Serial number of the VF.
        pub serial: U32,
    } = 8;
}

wire! {
    /// `struct nvsp_4_sw_datapath` (guest → host).
    pub struct SwitchDataPath {
        /// 0 synthetic, 1 VF (`enum nvsp_vm_datapath`).
        pub active_datapath: U32,
    } = 4;
}

wire! {
    /// `struct nvsp_5_subchannel_request` (guest → host).
    pub struct SubchannelRequest {
        /// 0 none, 1 allocate (`enum nvsp_subchannel_operation`).
        pub operation: U32,
        /// Sub-channels wanted.
        pub num_subchannels: U32,
    } = 8;
}

wire! {
    /// `struct nvsp_5_subchannel_complete` (host → guest).
    pub struct SubchannelComplete {
        /// [`Status`].
        pub status: U32,
        /// Sub-channels allocated (Linux refuses more than it asked for).
        pub num_subchannels: U32,
    } = 8;
}

wire! {
    /// `struct nvsp_5_send_indirect_table` (host → guest).
    pub struct SendIndirectionTable {
        /// Entries (Linux requires 16).
        pub count: U32,
        /// Offset of the table from the start of the NVSP message.
        pub offset: U32,
    } = 8;
}

// Linux's union is 36 bytes (the v6 PD API completion); checked with gcc.
const _: () = assert!(HEADER_SIZE + 36 == MESSAGE_SIZE);
const _: () = assert!(HEADER_SIZE + size_of::<SendReceiveBufferComplete>() == LEGACY_MESSAGE_SIZE);

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// A parsed NVSP message. Types this crate has no body for (chimney, PD,
/// OID_QUERY_EX, ...) are [`Message::Other`]: an unknown type is data, not
/// an error; the caller decides whether to refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// [`MessageType::INIT`].
    Init(Init),
    /// [`MessageType::INIT_COMPLETE`].
    InitComplete(InitComplete),
    /// [`MessageType::SEND_NDIS_VERSION`].
    SendNdisVersion(SendNdisVersion),
    /// [`MessageType::SEND_RECEIVE_BUFFER`].
    SendReceiveBuffer(SendBuffer),
    /// [`MessageType::SEND_RECEIVE_BUFFER_COMPLETE`].
    SendReceiveBufferComplete(SendReceiveBufferComplete),
    /// [`MessageType::REVOKE_RECEIVE_BUFFER`].
    RevokeReceiveBuffer(RevokeBuffer),
    /// [`MessageType::SEND_SEND_BUFFER`].
    SendSendBuffer(SendBuffer),
    /// [`MessageType::SEND_SEND_BUFFER_COMPLETE`].
    SendSendBufferComplete(SendSendBufferComplete),
    /// [`MessageType::REVOKE_SEND_BUFFER`].
    RevokeSendBuffer(RevokeBuffer),
    /// [`MessageType::SEND_RNDIS_PACKET`] (`channel_type` checked).
    SendRndisPacket(SendRndisPacket),
    /// [`MessageType::SEND_RNDIS_PACKET_COMPLETE`].
    SendRndisPacketComplete(SendRndisPacketComplete),
    /// [`MessageType::SEND_NDIS_CONFIG`].
    SendNdisConfig(SendNdisConfig),
    /// [`MessageType::SEND_VF_ASSOCIATION`].
    SendVfAssociation(SendVfAssociation),
    /// [`MessageType::SWITCH_DATA_PATH`] (`active_datapath` checked).
    SwitchDataPath(SwitchDataPath),
    /// [`MessageType::SUBCHANNEL`] sent by the guest (`operation` checked).
    SubchannelRequest(SubchannelRequest),
    /// [`MessageType::SEND_INDIRECTION_TABLE`].
    SendIndirectionTable(SendIndirectionTable),
    /// Any other type; the body is not interpreted.
    Other(MessageType),
}

/// Why bytes from the peer are not an NVSP message. The peer is at fault in
/// every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer than 4 bytes: no header.
    NoHeader {
        /// Bytes there.
        have: usize,
    },
    /// The body is shorter than the type's struct.
    Short {
        /// The message type.
        kind: MessageType,
        /// Bytes needed (header included).
        need: usize,
        /// Bytes there.
        have: usize,
    },
    /// A field holds a value the protocol does not define.
    OutOfRange {
        /// The message type.
        kind: MessageType,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHeader { have } => write!(f, "peer sent a {have}-byte NVSP message (no header)"),
            Self::Short { kind, need, have } => {
                write!(f, "peer sent a short {kind:?}: {have} bytes, need {need}")
            }
            Self::OutOfRange { kind, field, value } => {
                write!(f, "peer sent {kind:?} with {field} = {value:#x}, out of range")
            }
        }
    }
}

/// Read a `T` from the front of `body` (the bytes after the header).
fn body<T: FromBytes>(kind: MessageType, body: &[u8]) -> Result<T, ParseError> {
    T::read_from_prefix(body)
        .map(|(t, _)| t)
        .map_err(|_| ParseError::Short {
            kind,
            need: HEADER_SIZE + size_of::<T>(),
            have: HEADER_SIZE + body.len(),
        })
}

fn check_range(kind: MessageType, field: &'static str, value: u32, max: u32) -> Result<(), ParseError> {
    if value > max {
        return Err(ParseError::OutOfRange { kind, field, value });
    }
    Ok(())
}

impl Message {
    /// Parse an NVSP message from untrusted bytes (the payload of an
    /// in-band or completion packet). Bytes after the type's struct are
    /// ignored: Linux pads its messages to [`MESSAGE_SIZE`], except the
    /// 8-byte receive completion.
    pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        let (header, rest) =
            Header::read_from_prefix(bytes).map_err(|_| ParseError::NoHeader { have: bytes.len() })?;
        let kind = MessageType(header.message_type.get());
        Ok(match kind {
            MessageType::INIT => Message::Init(body(kind, rest)?),
            MessageType::INIT_COMPLETE => Message::InitComplete(body(kind, rest)?),
            MessageType::SEND_NDIS_VERSION => Message::SendNdisVersion(body(kind, rest)?),
            MessageType::SEND_RECEIVE_BUFFER => Message::SendReceiveBuffer(body(kind, rest)?),
            MessageType::SEND_RECEIVE_BUFFER_COMPLETE => {
                Message::SendReceiveBufferComplete(body(kind, rest)?)
            }
            MessageType::REVOKE_RECEIVE_BUFFER => Message::RevokeReceiveBuffer(body(kind, rest)?),
            MessageType::SEND_SEND_BUFFER => Message::SendSendBuffer(body(kind, rest)?),
            MessageType::SEND_SEND_BUFFER_COMPLETE => Message::SendSendBufferComplete(body(kind, rest)?),
            MessageType::REVOKE_SEND_BUFFER => Message::RevokeSendBuffer(body(kind, rest)?),
            MessageType::SEND_RNDIS_PACKET => {
                let m: SendRndisPacket = body(kind, rest)?;
                check_range(kind, "channel_type", m.channel_type.get(), CHANNEL_TYPE_CONTROL)?;
                Message::SendRndisPacket(m)
            }
            MessageType::SEND_RNDIS_PACKET_COMPLETE => Message::SendRndisPacketComplete(body(kind, rest)?),
            MessageType::SEND_NDIS_CONFIG => Message::SendNdisConfig(body(kind, rest)?),
            MessageType::SEND_VF_ASSOCIATION => Message::SendVfAssociation(body(kind, rest)?),
            MessageType::SWITCH_DATA_PATH => {
                let m: SwitchDataPath = body(kind, rest)?;
                check_range(kind, "active_datapath", m.active_datapath.get(), 1)?;
                Message::SwitchDataPath(m)
            }
            MessageType::SUBCHANNEL => {
                let m: SubchannelRequest = body(kind, rest)?;
                check_range(kind, "operation", m.operation.get(), 1)?;
                Message::SubchannelRequest(m)
            }
            MessageType::SEND_INDIRECTION_TABLE => Message::SendIndirectionTable(body(kind, rest)?),
            other => Message::Other(other),
        })
    }

    /// The message's type.
    pub fn kind(&self) -> MessageType {
        match self {
            Message::Init(_) => MessageType::INIT,
            Message::InitComplete(_) => MessageType::INIT_COMPLETE,
            Message::SendNdisVersion(_) => MessageType::SEND_NDIS_VERSION,
            Message::SendReceiveBuffer(_) => MessageType::SEND_RECEIVE_BUFFER,
            Message::SendReceiveBufferComplete(_) => MessageType::SEND_RECEIVE_BUFFER_COMPLETE,
            Message::RevokeReceiveBuffer(_) => MessageType::REVOKE_RECEIVE_BUFFER,
            Message::SendSendBuffer(_) => MessageType::SEND_SEND_BUFFER,
            Message::SendSendBufferComplete(_) => MessageType::SEND_SEND_BUFFER_COMPLETE,
            Message::RevokeSendBuffer(_) => MessageType::REVOKE_SEND_BUFFER,
            Message::SendRndisPacket(_) => MessageType::SEND_RNDIS_PACKET,
            Message::SendRndisPacketComplete(_) => MessageType::SEND_RNDIS_PACKET_COMPLETE,
            Message::SendNdisConfig(_) => MessageType::SEND_NDIS_CONFIG,
            Message::SendVfAssociation(_) => MessageType::SEND_VF_ASSOCIATION,
            Message::SwitchDataPath(_) => MessageType::SWITCH_DATA_PATH,
            Message::SubchannelRequest(_) => MessageType::SUBCHANNEL,
            Message::SendIndirectionTable(_) => MessageType::SEND_INDIRECTION_TABLE,
            Message::Other(kind) => *kind,
        }
    }
}

impl SendRndisPacket {
    /// The send-buffer section the RNDIS message is in, or `None` when it
    /// travels in GPA-direct ranges. The index is the guest's claim: check
    /// it against the send buffer's section count before use.
    pub fn section(&self) -> Option<u32> {
        let i = self.send_buffer_section_index.get();
        (i != NO_SEND_BUFFER_SECTION).then_some(i)
    }

    /// Whether the RNDIS message is a control message.
    pub fn is_control(&self) -> bool {
        self.channel_type.get() == CHANNEL_TYPE_CONTROL
    }
}

// ---------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------

/// Build a message of `kind` with `body`, zero-padded to [`MESSAGE_SIZE`]
/// (send `&bytes[..message_size(version)]`, or all 40 bytes: Linux accepts
/// longer messages).
pub fn build<T: IntoBytes + Immutable>(kind: MessageType, body: &T) -> [u8; MESSAGE_SIZE] {
    let mut out = [0u8; MESSAGE_SIZE];
    out[..HEADER_SIZE].copy_from_slice(&kind.0.to_le_bytes());
    let b = body.as_bytes();
    // Every body above is at most 36 bytes (const-asserted by size); clamp
    // anyway so a caller's oversized T cannot panic.
    let n = b.len().min(MESSAGE_SIZE - HEADER_SIZE);
    out[HEADER_SIZE..HEADER_SIZE + n].copy_from_slice(&b[..n]);
    out
}

/// Host → guest: `INIT_COMPLETE` accepting `negotiated` (status SUCCESS) or,
/// with `None`, refusing the guest's range (status NONE, as OpenVMM does;
/// Linux then tries its next older version). `max_mdl_chain_length`:
/// [`DEFAULT_MAX_MDL_CHAIN_LENGTH`].
pub fn init_complete(negotiated: Option<Version>, max_mdl_chain_length: u32) -> [u8; MESSAGE_SIZE] {
    let (status, field) = match negotiated {
        Some(Version::V1) => (Status::SUCCESS, Version::V1.0),
        Some(_) => (Status::SUCCESS, INVALID_PROTOCOL_VERSION),
        None => (Status::NONE, INVALID_PROTOCOL_VERSION),
    };
    build(
        MessageType::INIT_COMPLETE,
        &InitComplete {
            negotiated_protocol_version: field.into(),
            max_mdl_chain_length: max_mdl_chain_length.into(),
            status: status.0.into(),
        },
    )
}

/// Host → guest: `SEND_RECEIVE_BUFFER_COMPLETE`. With `Some(section)` (from
/// [`crate::recv_buffer::ReceiveSections::section`]) status SUCCESS and one
/// section; with `None` status FAIL and no section.
pub fn send_receive_buffer_complete(section: Option<ReceiveBufferSection>) -> [u8; MESSAGE_SIZE] {
    let body = match section {
        Some(section) => SendReceiveBufferComplete {
            status: Status::SUCCESS.0.into(),
            num_sections: 1.into(),
            section,
        },
        None => SendReceiveBufferComplete {
            status: Status::FAIL.0.into(),
            num_sections: 0.into(),
            section: ReceiveBufferSection::new_zeroed(),
        },
    };
    build(MessageType::SEND_RECEIVE_BUFFER_COMPLETE, &body)
}

/// Host → guest: `SEND_SEND_BUFFER_COMPLETE` with the host's section size
/// (status SUCCESS), or with `None` status FAIL and size 0.
pub fn send_send_buffer_complete(section_size: Option<u32>) -> [u8; MESSAGE_SIZE] {
    let (status, size) = match section_size {
        Some(s) => (Status::SUCCESS, s),
        None => (Status::FAIL, 0),
    };
    build(
        MessageType::SEND_SEND_BUFFER_COMPLETE,
        &SendSendBufferComplete {
            status: status.0.into(),
            section_size: size.into(),
        },
    )
}

/// Both ways: `SEND_RNDIS_PACKET_COMPLETE` with `status` (the host answers a
/// guest's send with it; the guest answers a transfer-page packet with an
/// 8-byte one, `&bytes[..8]`).
pub fn send_rndis_packet_complete(status: Status) -> [u8; MESSAGE_SIZE] {
    build(
        MessageType::SEND_RNDIS_PACKET_COMPLETE,
        &SendRndisPacketComplete {
            status: status.0.into(),
        },
    )
}

/// `SEND_RNDIS_PACKET` for a message in transfer pages or GPA-direct
/// ranges (no send-buffer section): what the host puts in front of every
/// receive transfer-page packet, `channel_type` [`CHANNEL_TYPE_DATA`] for
/// frames and [`CHANNEL_TYPE_CONTROL`] for completions and indications.
pub fn send_rndis_packet(channel_type: u32) -> [u8; MESSAGE_SIZE] {
    send_rndis_packet_in_section(channel_type, None)
}

/// Guest → host: `SEND_RNDIS_PACKET` naming `(section, bytes used)` of the
/// send buffer, or none.
pub fn send_rndis_packet_in_section(channel_type: u32, section: Option<(u32, u32)>) -> [u8; MESSAGE_SIZE] {
    let (index, size) = section.unwrap_or((NO_SEND_BUFFER_SECTION, 0));
    build(
        MessageType::SEND_RNDIS_PACKET,
        &SendRndisPacket {
            channel_type: channel_type.into(),
            send_buffer_section_index: index.into(),
            send_buffer_section_size: size.into(),
        },
    )
}

/// Host → guest: `SUBCHANNEL` completion.
pub fn subchannel_complete(status: Status, num_subchannels: u32) -> [u8; MESSAGE_SIZE] {
    build(
        MessageType::SUBCHANNEL,
        &SubchannelComplete {
            status: status.0.into(),
            num_subchannels: num_subchannels.into(),
        },
    )
}

/// Guest → host: `INIT` for exactly `version` (what Linux sends).
pub fn init(version: Version) -> [u8; MESSAGE_SIZE] {
    build(
        MessageType::INIT,
        &Init {
            min_protocol_version: version.0.into(),
            max_protocol_version: version.0.into(),
        },
    )
}

/// Guest → host: `SEND_NDIS_CONFIG` (`mtu` includes the Ethernet header).
pub fn send_ndis_config(mtu: u32, capability: u64) -> [u8; MESSAGE_SIZE] {
    build(
        MessageType::SEND_NDIS_CONFIG,
        &SendNdisConfig {
            mtu: mtu.into(),
            reserved: 0.into(),
            capability: capability.into(),
        },
    )
}

/// Guest → host: `SEND_NDIS_VERSION`.
pub fn send_ndis_version(major: u32, minor: u32) -> [u8; MESSAGE_SIZE] {
    build(
        MessageType::SEND_NDIS_VERSION,
        &SendNdisVersion {
            ndis_major_version: major.into(),
            ndis_minor_version: minor.into(),
        },
    )
}

/// Guest → host: `SEND_RECEIVE_BUFFER` (`receive == true`) or
/// `SEND_SEND_BUFFER`.
pub fn send_buffer(receive: bool, gpadl_handle: u32, id: u16) -> [u8; MESSAGE_SIZE] {
    let kind = if receive {
        MessageType::SEND_RECEIVE_BUFFER
    } else {
        MessageType::SEND_SEND_BUFFER
    };
    build(
        kind,
        &SendBuffer {
            gpadl_handle: gpadl_handle.into(),
            id: id.into(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(words: &[u32]) -> alloc::vec::Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn sizes_match_linux() {
        // Checked against gcc's layout of the Linux 6.1 structs.
        assert_eq!(size_of::<InitComplete>(), 12);
        assert_eq!(size_of::<SendBuffer>(), 6);
        assert_eq!(size_of::<SendReceiveBufferComplete>(), 24);
        assert_eq!(size_of::<SendNdisConfig>(), 16);
        assert_eq!(MESSAGE_SIZE, 40);
        assert_eq!(message_size(Version::V61), 40);
        assert_eq!(message_size(Version::V6), 28);
    }

    #[test]
    fn parses_what_linux_sends() {
        // negotiate_nvsp_ver: INIT with min = max, padded to 40 bytes.
        let m = init(Version::V61);
        assert_eq!(&m[..12], &le(&[1, 0x60001, 0x60001])[..]);
        let Message::Init(i) = Message::parse(&m).unwrap() else {
            panic!()
        };
        assert_eq!(negotiate(&i, &Version::ALL), Some(Version::V61));
        assert_eq!(negotiate(&i, &[Version::V5, Version::V6]), None);
        // A range picks the newest supported version inside it.
        let r = Init {
            min_protocol_version: 2.into(),
            max_protocol_version: 0x50000.into(),
        };
        assert_eq!(negotiate(&r, &Version::ALL), Some(Version::V5));
        let inverted = Init {
            min_protocol_version: 0x60001.into(),
            max_protocol_version: 2.into(),
        };
        assert_eq!(negotiate(&inverted, &Version::ALL), None);

        // SEND_NDIS_CONFIG: mtu 1514, ieee8021q | sriov | teaming | rsc.
        let caps = capability::IEEE_8021Q | capability::SRIOV | capability::TEAMING | capability::RSC;
        let m = send_ndis_config(1514, caps);
        assert_eq!(&m[..16], &le(&[125, 1514, 0, caps as u32])[..]);
        let Message::SendNdisConfig(c) = Message::parse(&m).unwrap() else {
            panic!()
        };
        assert_eq!(c.capability.get(), 0xAC);

        let m = send_ndis_version(6, 30);
        assert_eq!(Message::parse(&m).unwrap().kind(), MessageType::SEND_NDIS_VERSION);

        // SEND_RECEIVE_BUFFER: packed gpadl u32 + id u16.
        let m = send_buffer(true, 0xE1E10, LINUX_RECEIVE_BUFFER_ID);
        assert_eq!(&m[..10], &[101, 0, 0, 0, 0x10, 0x1E, 0x0E, 0, 0xFE, 0xCA]);
        let Message::SendReceiveBuffer(b) = Message::parse(&m).unwrap() else {
            panic!()
        };
        assert_eq!((b.gpadl_handle.get(), b.id.get()), (0xE1E10, 0xCAFE));

        // The 8-byte receive completion (send_recv_completions).
        let Message::SendRndisPacketComplete(c) = Message::parse(&le(&[108, 1])).unwrap() else {
            panic!()
        };
        assert_eq!(c.status.get(), 1);

        let m = send_rndis_packet_in_section(CHANNEL_TYPE_DATA, Some((3, 1514)));
        let Message::SendRndisPacket(p) = Message::parse(&m).unwrap() else {
            panic!()
        };
        assert_eq!(p.section(), Some(3));
        assert!(!p.is_control());
        let Message::SendRndisPacket(p) = Message::parse(&send_rndis_packet(CHANNEL_TYPE_CONTROL)).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.section(), None);
        assert!(p.is_control());
    }

    #[test]
    fn host_messages_bytes() {
        assert_eq!(
            &init_complete(Some(Version::V61), 34)[..16],
            &le(&[2, 0xFFFF_FFFF, 34, 1])[..]
        );
        assert_eq!(
            &init_complete(Some(Version::V1), 34)[..16],
            &le(&[2, 2, 34, 1])[..]
        );
        assert_eq!(&init_complete(None, 34)[..16], &le(&[2, 0xFFFF_FFFF, 34, 0])[..]);
        let s = ReceiveBufferSection {
            offset: 0.into(),
            sub_allocation_size: 1806.into(),
            num_sub_allocations: 9289.into(),
            end_offset: (1806 * 9289).into(),
        };
        assert_eq!(
            &send_receive_buffer_complete(Some(s))[..28],
            &le(&[102, 1, 1, 0, 1806, 9289, 1806 * 9289])[..]
        );
        assert_eq!(&send_receive_buffer_complete(None)[..12], &le(&[102, 2, 0])[..]);
        assert_eq!(
            &send_send_buffer_complete(Some(6144))[..12],
            &le(&[105, 1, 6144])[..]
        );
        assert_eq!(&send_send_buffer_complete(None)[..12], &le(&[105, 2, 0])[..]);
        assert_eq!(
            &send_rndis_packet_complete(Status::SUCCESS)[..8],
            &le(&[108, 1])[..]
        );
        assert_eq!(
            &send_rndis_packet(CHANNEL_TYPE_DATA)[..16],
            &le(&[107, 0, 0xFFFF_FFFF, 0])[..]
        );
        assert_eq!(&subchannel_complete(Status::FAIL, 0)[..12], &le(&[133, 2, 0])[..]);
        // Every builder pads to 40 bytes with zeros.
        assert!(init_complete(None, 34)[16..].iter().all(|&b| b == 0));
    }

    #[test]
    fn hostile_messages() {
        assert_eq!(Message::parse(&[]), Err(ParseError::NoHeader { have: 0 }));
        assert_eq!(Message::parse(&[1, 0, 0]), Err(ParseError::NoHeader { have: 3 }));
        assert_eq!(
            Message::parse(&le(&[1, 2])),
            Err(ParseError::Short {
                kind: MessageType::INIT,
                need: 12,
                have: 8
            })
        );
        // Unknown types are data.
        assert_eq!(
            Message::parse(&le(&[0xDEAD_BEEF])),
            Ok(Message::Other(MessageType(0xDEAD_BEEF)))
        );
        assert_eq!(
            Message::parse(&le(&[116, 0])),
            Ok(Message::Other(MessageType::SEND_CHIMNEY_PACKET))
        );
        assert_eq!(
            Message::parse(&le(&[107, 2, 0, 0])),
            Err(ParseError::OutOfRange {
                kind: MessageType::SEND_RNDIS_PACKET,
                field: "channel_type",
                value: 2
            })
        );
        assert!(matches!(
            Message::parse(&le(&[129, 7])),
            Err(ParseError::OutOfRange {
                field: "active_datapath",
                ..
            })
        ));
        assert!(matches!(
            Message::parse(&le(&[133, 5, 1])),
            Err(ParseError::OutOfRange {
                field: "operation",
                ..
            })
        ));
        // Debug names known values and shows unknown ones in hex.
        assert_eq!(alloc::format!("{:?}", MessageType::INIT), "MessageType::INIT");
        assert_eq!(alloc::format!("{:?}", Status(99)), "Status(0x63)");
        assert!(Version::V5.is_known() && !Version(0x50001).is_known());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(m) = Message::parse(&bytes) {
                // A parsed message's type is the header's.
                proptest::prop_assert_eq!(m.kind().0, u32::from_le_bytes(bytes[..4].try_into().unwrap()));
            }
        }

        #[test]
        fn every_type_with_a_zero_body_parses(kind in 0u32..140) {
            // Zero fields are in range for every type: a 40-byte message parses.
            let mut m = kind.to_le_bytes().to_vec();
            m.extend_from_slice(&[0u8; 36]);
            proptest::prop_assert!(Message::parse(&m).is_ok());
        }
    }
}
