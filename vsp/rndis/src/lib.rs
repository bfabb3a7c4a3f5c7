//! The device side of RNDIS on a Hyper-V synthetic NIC: the state machine a
//! Linux `hv_netvsc` (6.1, `drivers/net/hyperv/rndis_filter.c`) talks to
//! once NVSP has set up the receive and send buffers.
//!
//! The VMBus device (netvsp) owns the channel, the buffers and the NVSP
//! messages; it hands this crate the bytes of each RNDIS message the guest
//! sent (the `send_buffer_section_size` bytes of a send-buffer section, or
//! the bytes of the GPA-direct ranges) and gets back a [`Response`]: RNDIS
//! messages to put in receive-buffer slots for the guest (completions) and
//! Ethernet frames to forward to the switch. The other way, it turns frames
//! for the guest into RNDIS `PACKET` messages ([`Rndis::frame_to_guest`])
//! and link changes into status indications ([`Rndis::set_link_up`]).
//!
//! ```text
//! Uninitialized --INITIALIZE--> Initialized --SET packet filter != 0--> DataInitialized
//!       ^                          |   ^                                      |
//!       +----------HALT------------+   +-----SET packet filter = 0 / RESET----+
//! ```
//!
//! What Linux asks, in order (`rndis_filter_device_add`, `rndis_filter_open`),
//! and what this device answers:
//!
//! | request | answer |
//! |---|---|
//! | `INITIALIZE` 1.0, max transfer 0x4000 | 1.0, connectionless 802.3, 8 packets per message, alignment 2^3 |
//! | `QUERY GEN_MAXIMUM_FRAME_SIZE` | the MTU (1500; Linux takes it as its MTU) |
//! | `QUERY 802_3_PERMANENT_ADDRESS` | the configured MAC (exactly 6 bytes) |
//! | `QUERY GEN_FRIENDLY_NAME` | NOT_SUPPORTED (Linux ignores the failure) |
//! | `QUERY TCP_OFFLOAD_HARDWARE_CAPABILITIES` | an all-zero `ndis_offload` ("no offloads") of the revision asked |
//! | `SET TCP_OFFLOAD_PARAMETERS` | SUCCESS while nothing is enabled, else NOT_SUPPORTED |
//! | `QUERY GEN_MEDIA_CONNECT_STATUS` | 0 connected / 1 disconnected |
//! | `QUERY GEN_LINK_SPEED` (NVSP ≥ 5) | the configured speed, 100 bps units |
//! | `QUERY GEN_RECEIVE_SCALE_CAPABILITIES` (NVSP ≥ 5) | NOT_SUPPORTED: Linux stays on one channel |
//! | `SET GEN_CURRENT_PACKET_FILTER` | stored; non-zero → DataInitialized |
//! | `SET GEN_RNDIS_CONFIG_PARAMETER` "NetworkAddress" | NOT_SUPPORTED: the root assigns MACs |
//!
//! Every other OID is answered NOT_SUPPORTED (never dropped: Linux waits for
//! each completion without a timeout). Malformed messages (lengths, offsets
//! or counts that do not fit) are refused with a typed [`RndisError`] and no
//! reply; all of those are the guest's fault.
//!
//! Sources: Linux 6.1 `drivers/net/hyperv/rndis_filter.c`, `netvsc.c`,
//! `netvsc_drv.c` (what the guest sends and checks), `hyperv_net.h`,
//! `include/linux/rndis.h`; microsoft/openvmm
//! `vm/devices/net/netvsp/src/lib.rs` (host answers). Written fresh.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod fuzzing;

use alloc::vec::Vec;
use core::fmt;
use nvsp_protocol::rndis::{
    self as wire, ConfigParameterInfo, IndicateStatus, InitializeComplete, InitializeRequest, MessageType,
    NdisObjectHeader, NdisOffload, Oid, OidRequest, Packet, ParseError, PerPacketInfo, QueryComplete,
    RequestComplete, RequestId, ResetComplete, Status, mac_options, packet_filter, ppi,
};
use zerocopy::FromBytes;

/// Bytes of an Ethernet header.
pub const ETHERNET_HEADER_LEN: u32 = 14;
/// Bytes an RNDIS `PACKET` message adds in front of a received frame
/// (header 8 + `rndis_packet` 36): a receive slot must hold this plus the
/// largest frame.
pub const RX_OVERHEAD: usize = wire::HEADER_SIZE + size_of::<Packet>();
/// Extra bytes allowed for an 802.1Q/802.1ad tag carried inline in a frame.
pub const VLAN_TAG_LEN: u32 = 4;

/// The device's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The MAC address the root assigned (`OID_802_3_PERMANENT_ADDRESS`).
    pub mac: [u8; 6],
    /// MTU without the Ethernet header (`OID_GEN_MAXIMUM_FRAME_SIZE`; 1500).
    pub mtu: u32,
    /// Link speed in 100 bps units (`OID_GEN_LINK_SPEED`; 10 Gbit/s =
    /// 100 000 000).
    pub link_speed: u32,
    /// Whether the link starts up.
    pub link_up: bool,
    /// Most RNDIS messages accepted in one buffer, announced in
    /// `INITIALIZE_COMPLETE` (Linux batches up to this many packets; 8).
    pub max_packets_per_message: u32,
    /// Batched packets are aligned to `1 << factor` bytes (3: 8 bytes).
    pub packet_alignment_factor: u32,
    /// Largest buffer of RNDIS messages accepted (announced as
    /// `max_transfer_size`).
    pub max_message_len: u32,
    /// Most multicast addresses kept (`OID_802_3_MAXIMUM_LIST_SIZE`).
    pub max_multicast: u32,
}

impl Config {
    /// The defaults for `mac`: MTU 1500, 10 Gbit/s, link up, 8 packets per
    /// message aligned to 8, 64 KiB messages, 32 multicast addresses.
    pub const fn new(mac: [u8; 6]) -> Self {
        Self {
            mac,
            mtu: 1500,
            link_speed: 100_000_000,
            link_up: true,
            max_packets_per_message: 8,
            packet_alignment_factor: 3,
            max_message_len: 64 * 1024,
            max_multicast: 32,
        }
    }

    /// Largest frame with its Ethernet header, without a VLAN tag (1514).
    pub const fn max_frame_size(&self) -> u32 {
        self.mtu.saturating_add(ETHERNET_HEADER_LEN)
    }
}

/// Where the device is in RNDIS's life cycle (`enum rndis_device_state` in
/// `hyperv_net.h`, seen from the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Before `INITIALIZE`, or after `HALT`.
    Uninitialized,
    /// Initialized, packet filter 0: the guest may send, nothing is
    /// delivered to it.
    Initialized,
    /// Packet filter non-zero: frames the filter accepts are delivered.
    DataInitialized,
}

/// An 802.1Q tag a frame carries out of band (the `IEEE_8021Q_INFO`
/// per-packet info Linux sends when `NETIF_F_HW_VLAN_CTAG_TX` is on): the
/// switch must insert it, or drop the frame if it does not do VLANs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag {
    /// VLAN id (12 bits).
    pub id: u16,
    /// Priority (3 bits).
    pub priority: u8,
    /// Canonical format indicator / drop eligible.
    pub cfi: bool,
}

impl VlanTag {
    /// The tag control information (priority, CFI, id) as on the wire.
    pub fn tci(&self) -> u16 {
        ((self.priority as u16) << 13) | ((self.cfi as u16) << 12) | (self.id & 0x0FFF)
    }
}

/// An Ethernet frame the guest sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxFrame<'a> {
    /// The frame, from the destination MAC on, within the buffer passed to
    /// [`Rndis::handle`].
    pub data: &'a [u8],
    /// A tag sent out of band, if any.
    pub vlan: Option<VlanTag>,
}

/// What [`Rndis::handle`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response<'a> {
    /// RNDIS messages for the guest, in order: each goes into one
    /// receive-buffer slot, sent as a transfer-page packet with NVSP
    /// `SEND_RNDIS_PACKET`, channel type control. At most one per call.
    pub messages: Vec<Vec<u8>>,
    /// Frames to forward, in order (at most
    /// [`Config::max_packets_per_message`]).
    pub frames: Vec<TxFrame<'a>>,
}

/// Why the guest's RNDIS bytes were refused. Every variant is the guest's
/// fault; the device completes the NVSP packet with
/// [`RndisError::nvsp_status`] and sends no RNDIS reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RndisError {
    /// The buffer is longer than [`Config::max_message_len`].
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// Empty buffer.
    Empty,
    /// A header, body or range does not fit.
    Parse(ParseError),
    /// More messages in one buffer than [`Config::max_packets_per_message`].
    TooManyMessages {
        /// The limit.
        max: u32,
    },
    /// A control message shared its buffer with other messages (Linux sends
    /// each control message alone; only data packets are batched).
    MixedBatch,
    /// A message type RNDIS does not define.
    UnknownMessageType(MessageType),
    /// A message only the device sends (completions, indications).
    UnexpectedMessage(MessageType),
    /// A request other than `INITIALIZE` or `HALT` before `INITIALIZE`.
    NotInitialized(MessageType),
    /// A packet field this device does not accept (out-of-band data, a VC
    /// handle, data overlapping the packet header).
    BadPacket {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// A frame shorter than an Ethernet header or longer than the MTU allows.
    FrameLength {
        /// Its length.
        len: u32,
        /// The largest allowed.
        max: u32,
    },
    /// A per-packet info element's size or offset does not fit.
    BadPerPacketInfo {
        /// Its size.
        size: u32,
        /// Its data offset.
        offset: u32,
    },
    /// A checksum or segmentation offload was requested although the device
    /// announced none.
    OffloadRequested {
        /// The per-packet info type.
        kind: u32,
        /// Its value.
        value: u32,
    },
}

impl From<ParseError> for RndisError {
    fn from(e: ParseError) -> Self {
        RndisError::Parse(e)
    }
}

impl RndisError {
    /// The NVSP status to complete the guest's `SEND_RNDIS_PACKET` with.
    pub fn nvsp_status(&self) -> nvsp_protocol::Status {
        nvsp_protocol::Status::INVALID_RNDIS_PACKET
    }
}

impl fmt::Display for RndisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { len, max } => write!(f, "guest sent {len} RNDIS bytes, limit {max}"),
            Self::Empty => write!(f, "guest sent an empty RNDIS buffer"),
            Self::Parse(e) => write!(f, "{e}"),
            Self::TooManyMessages { max } => write!(f, "guest batched more than {max} RNDIS messages"),
            Self::MixedBatch => write!(f, "guest batched a control message with others"),
            Self::UnknownMessageType(t) => write!(f, "guest sent unknown RNDIS message {t:?}"),
            Self::UnexpectedMessage(t) => write!(f, "guest sent device-only RNDIS message {t:?}"),
            Self::NotInitialized(t) => write!(f, "guest sent {t:?} before INITIALIZE"),
            Self::BadPacket { field, value } => write!(f, "guest's RNDIS packet has {field} = {value:#x}"),
            Self::FrameLength { len, max } => write!(f, "guest sent a {len}-byte frame (14..={max})"),
            Self::BadPerPacketInfo { size, offset } => {
                write!(f, "guest's per-packet info has size {size}, offset {offset}")
            }
            Self::OffloadRequested { kind, value } => {
                write!(
                    f,
                    "guest asked for offload (ppi {kind}, {value:#x}) none was offered"
                )
            }
        }
    }
}

/// Why a frame was not turned into a message for the guest (none is a
/// fault; the switch counts them as drops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The guest has not set a packet filter (or has halted).
    NotReady,
    /// The packet filter does not accept the destination.
    Filtered,
    /// Shorter than an Ethernet header.
    TooShort(usize),
    /// Longer than the MTU allows, or than the guest's transfer size.
    TooLong(usize),
}

/// The OIDs answered by queries (`OID_GEN_SUPPORTED_LIST`).
pub const SUPPORTED_OIDS: &[Oid] = &[
    Oid::GEN_SUPPORTED_LIST,
    Oid::GEN_HARDWARE_STATUS,
    Oid::GEN_MEDIA_SUPPORTED,
    Oid::GEN_MEDIA_IN_USE,
    Oid::GEN_MAXIMUM_LOOKAHEAD,
    Oid::GEN_MAXIMUM_FRAME_SIZE,
    Oid::GEN_LINK_SPEED,
    Oid::GEN_TRANSMIT_BLOCK_SIZE,
    Oid::GEN_RECEIVE_BLOCK_SIZE,
    Oid::GEN_CURRENT_PACKET_FILTER,
    Oid::GEN_CURRENT_LOOKAHEAD,
    Oid::GEN_MAXIMUM_TOTAL_SIZE,
    Oid::GEN_MAC_OPTIONS,
    Oid::GEN_MEDIA_CONNECT_STATUS,
    Oid::GEN_MAXIMUM_SEND_PACKETS,
    Oid::OID_802_3_PERMANENT_ADDRESS,
    Oid::OID_802_3_CURRENT_ADDRESS,
    Oid::OID_802_3_MULTICAST_LIST,
    Oid::OID_802_3_MAXIMUM_LIST_SIZE,
    Oid::OID_802_3_RCV_ERROR_ALIGNMENT,
    Oid::OID_802_3_XMIT_ONE_COLLISION,
    Oid::OID_802_3_XMIT_MORE_COLLISIONS,
    Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES,
    Oid::TCP_OFFLOAD_CURRENT_CONFIG,
];

/// The packet filter bits this device implements.
pub const SUPPORTED_FILTER: u32 = packet_filter::DIRECTED
    | packet_filter::MULTICAST
    | packet_filter::ALL_MULTICAST
    | packet_filter::BROADCAST
    | packet_filter::PROMISCUOUS;

/// The RNDIS device of one synthetic NIC.
#[derive(Debug, Clone)]
pub struct Rndis {
    config: Config,
    state: State,
    packet_filter: u32,
    multicast: Vec<[u8; 6]>,
    link_up: bool,
    link_speed: u32,
    guest_max_transfer: u32,
}

impl Rndis {
    /// A device in [`State::Uninitialized`].
    pub fn new(config: Config) -> Self {
        Self {
            state: State::Uninitialized,
            packet_filter: 0,
            multicast: Vec::new(),
            link_up: config.link_up,
            link_speed: config.link_speed,
            guest_max_transfer: 0,
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The packet filter the guest set (0 until it sets one).
    pub fn packet_filter(&self) -> u32 {
        self.packet_filter
    }

    /// The multicast addresses the guest set.
    pub fn multicast_list(&self) -> &[[u8; 6]] {
        &self.multicast
    }

    /// Whether the link is up.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Back to [`State::Uninitialized`], as after the channel closes (the
    /// link state and speed are kept: they belong to the host).
    pub fn reset(&mut self) {
        self.state = State::Uninitialized;
        self.packet_filter = 0;
        self.multicast.clear();
        self.guest_max_transfer = 0;
    }

    /// Handle the RNDIS bytes of one NVSP `SEND_RNDIS_PACKET`: either one
    /// control message, or one or more data packets (concatenated, each
    /// `message_length` long including any alignment padding, as Linux
    /// batches them in a send-buffer section). The buffer must hold exactly
    /// those messages.
    pub fn handle<'a>(&mut self, buf: &'a [u8]) -> Result<Response<'a>, RndisError> {
        if buf.len() > self.config.max_message_len as usize {
            return Err(RndisError::TooLong {
                len: buf.len(),
                max: self.config.max_message_len,
            });
        }
        if buf.is_empty() {
            return Err(RndisError::Empty);
        }
        let (header, body, mut rest) = wire::split_message(buf)?;
        let kind = MessageType(header.message_type.get());
        let mut response = Response::default();
        if kind != MessageType::PACKET {
            if !rest.is_empty() {
                return Err(RndisError::MixedBatch);
            }
            if let Some(reply) = self.control(kind, body)? {
                response.messages.push(reply);
            }
            return Ok(response);
        }
        if self.state == State::Uninitialized {
            return Err(RndisError::NotInitialized(kind));
        }
        response.frames.push(self.tx_packet(body)?);
        while !rest.is_empty() {
            if response.frames.len() >= self.config.max_packets_per_message as usize {
                return Err(RndisError::TooManyMessages {
                    max: self.config.max_packets_per_message,
                });
            }
            let (header, body, next) = wire::split_message(rest)?;
            if header.message_type.get() != MessageType::PACKET.0 {
                return Err(RndisError::MixedBatch);
            }
            response.frames.push(self.tx_packet(body)?);
            rest = next;
        }
        Ok(response)
    }

    /// One control message: validate, then change state, then answer.
    fn control(&mut self, kind: MessageType, body: &[u8]) -> Result<Option<Vec<u8>>, RndisError> {
        match kind {
            MessageType::INITIALIZE => {
                let r: InitializeRequest = wire::read_body(kind, body)?;
                // A re-INITIALIZE (after HALT, or by a guest restarting its
                // driver) starts over.
                self.state = State::Initialized;
                self.packet_filter = 0;
                self.multicast.clear();
                self.guest_max_transfer = r.max_transfer_size.get();
                let c = InitializeComplete {
                    request_id: r.request_id,
                    status: Status::SUCCESS.0.into(),
                    major_version: wire::MAJOR_VERSION.into(),
                    minor_version: wire::MINOR_VERSION.into(),
                    device_flags: wire::DF_CONNECTIONLESS.into(),
                    medium: wire::MEDIUM_802_3.into(),
                    max_packets_per_message: self.config.max_packets_per_message.into(),
                    max_transfer_size: self.config.max_message_len.into(),
                    packet_alignment_factor: self.config.packet_alignment_factor.into(),
                    af_list_offset: 0.into(),
                    af_list_size: 0.into(),
                };
                Ok(Some(wire::build_message(
                    MessageType::INITIALIZE_COMPLETE,
                    &c,
                    &[],
                )))
            }
            MessageType::HALT => {
                let _: RequestId = wire::read_body(kind, body)?;
                self.state = State::Uninitialized;
                self.packet_filter = 0;
                self.multicast.clear();
                Ok(None)
            }
            MessageType::QUERY | MessageType::SET | MessageType::RESET | MessageType::KEEPALIVE
                if self.state == State::Uninitialized =>
            {
                Err(RndisError::NotInitialized(kind))
            }
            MessageType::QUERY => {
                let r: OidRequest = wire::read_body(kind, body)?;
                let info = wire::sub_range(
                    "query information buffer",
                    body,
                    r.information_buffer_offset.get(),
                    r.information_buffer_length.get(),
                )?;
                let (status, answer) = match self.query(Oid(r.oid.get()), info) {
                    Ok(answer) => (Status::SUCCESS, answer),
                    Err(status) => (status, Vec::new()),
                };
                let c = QueryComplete {
                    request_id: r.request_id,
                    status: status.0.into(),
                    information_buffer_length: (answer.len() as u32).into(),
                    information_buffer_offset: (size_of::<QueryComplete>() as u32).into(),
                };
                Ok(Some(wire::build_message(
                    MessageType::QUERY_COMPLETE,
                    &c,
                    &answer,
                )))
            }
            MessageType::SET => {
                let r: OidRequest = wire::read_body(kind, body)?;
                let info = wire::sub_range(
                    "set information buffer",
                    body,
                    r.information_buffer_offset.get(),
                    r.information_buffer_length.get(),
                )?;
                let status = self.set(Oid(r.oid.get()), info);
                Ok(Some(complete(
                    MessageType::SET_COMPLETE,
                    r.request_id.get(),
                    status,
                )))
            }
            MessageType::RESET => {
                let _: RequestId = wire::read_body(kind, body)?;
                // The filter and multicast list are lost: tell the guest to
                // restore them (addressing_reset = 1).
                self.state = State::Initialized;
                self.packet_filter = 0;
                self.multicast.clear();
                let c = ResetComplete {
                    status: Status::SUCCESS.0.into(),
                    addressing_reset: 1.into(),
                };
                Ok(Some(wire::build_message(MessageType::RESET_COMPLETE, &c, &[])))
            }
            MessageType::KEEPALIVE => {
                let r: RequestId = wire::read_body(kind, body)?;
                Ok(Some(complete(
                    MessageType::KEEPALIVE_COMPLETE,
                    r.request_id.get(),
                    Status::SUCCESS,
                )))
            }
            MessageType::INDICATE_STATUS
            | MessageType::INITIALIZE_COMPLETE
            | MessageType::QUERY_COMPLETE
            | MessageType::SET_COMPLETE
            | MessageType::RESET_COMPLETE
            | MessageType::KEEPALIVE_COMPLETE => Err(RndisError::UnexpectedMessage(kind)),
            _ => Err(RndisError::UnknownMessageType(kind)),
        }
    }

    /// The answer to a query of `oid` (`info`: the guest's information
    /// buffer), or the status to refuse it with.
    fn query(&self, oid: Oid, info: &[u8]) -> Result<Vec<u8>, Status> {
        let u32v = |v: u32| Ok(v.to_le_bytes().to_vec());
        match oid {
            Oid::GEN_SUPPORTED_LIST => Ok(SUPPORTED_OIDS.iter().flat_map(|o| o.0.to_le_bytes()).collect()),
            Oid::GEN_HARDWARE_STATUS => u32v(0),
            Oid::GEN_MEDIA_SUPPORTED | Oid::GEN_MEDIA_IN_USE => u32v(wire::MEDIUM_802_3),
            Oid::GEN_MAXIMUM_LOOKAHEAD | Oid::GEN_CURRENT_LOOKAHEAD | Oid::GEN_MAXIMUM_FRAME_SIZE => {
                u32v(self.config.mtu)
            }
            Oid::GEN_MAXIMUM_TOTAL_SIZE | Oid::GEN_TRANSMIT_BLOCK_SIZE | Oid::GEN_RECEIVE_BLOCK_SIZE => {
                u32v(self.config.max_frame_size())
            }
            Oid::GEN_LINK_SPEED => u32v(self.link_speed),
            Oid::GEN_CURRENT_PACKET_FILTER => u32v(self.packet_filter),
            Oid::GEN_MAC_OPTIONS => u32v(
                mac_options::COPY_LOOKAHEAD_DATA
                    | mac_options::TRANSFERS_NOT_PEND
                    | mac_options::NO_LOOPBACK
                    | mac_options::FULL_DUPLEX,
            ),
            Oid::GEN_MEDIA_CONNECT_STATUS => u32v(if self.link_up {
                wire::MEDIA_STATE_CONNECTED
            } else {
                wire::MEDIA_STATE_DISCONNECTED
            }),
            Oid::GEN_MAXIMUM_SEND_PACKETS => u32v(self.config.max_packets_per_message),
            Oid::OID_802_3_PERMANENT_ADDRESS | Oid::OID_802_3_CURRENT_ADDRESS => Ok(self.config.mac.to_vec()),
            Oid::OID_802_3_MULTICAST_LIST => Ok(self.multicast.iter().flatten().copied().collect()),
            Oid::OID_802_3_MAXIMUM_LIST_SIZE => u32v(self.config.max_multicast),
            Oid::OID_802_3_RCV_ERROR_ALIGNMENT
            | Oid::OID_802_3_XMIT_ONE_COLLISION
            | Oid::OID_802_3_XMIT_MORE_COLLISIONS => u32v(0),
            Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES | Oid::TCP_OFFLOAD_CURRENT_CONFIG => {
                // Linux sends an `ndis_offload` header whose revision
                // follows its NVSP version (rndis_filter_query_device);
                // answer "nothing offloaded" in that revision.
                let revision = NdisObjectHeader::read_from_prefix(info)
                    .map(|(h, _)| h.revision)
                    .unwrap_or(1);
                Ok(NdisOffload::none(revision))
            }
            _ => Err(Status::NOT_SUPPORTED),
        }
    }

    /// Apply a set of `oid` to `info`; the status to complete it with.
    /// Nothing changes unless the status is SUCCESS.
    fn set(&mut self, oid: Oid, info: &[u8]) -> Status {
        match oid {
            Oid::GEN_CURRENT_PACKET_FILTER => {
                let Ok(bytes) = <[u8; 4]>::try_from(info) else {
                    return Status::INVALID_LENGTH;
                };
                let filter = u32::from_le_bytes(bytes);
                if filter & !SUPPORTED_FILTER != 0 {
                    return Status::NOT_SUPPORTED;
                }
                self.packet_filter = filter;
                self.state = if filter == 0 {
                    State::Initialized
                } else {
                    State::DataInitialized
                };
                Status::SUCCESS
            }
            Oid::OID_802_3_MULTICAST_LIST => {
                if !info.len().is_multiple_of(6) {
                    return Status::INVALID_LENGTH;
                }
                if info.len() / 6 > self.config.max_multicast as usize {
                    return Status::MULTICAST_FULL;
                }
                self.multicast = info
                    .chunks_exact(6)
                    .map(|c| {
                        let mut a = [0u8; 6];
                        a.copy_from_slice(c);
                        a
                    })
                    .collect();
                Status::SUCCESS
            }
            Oid::TCP_OFFLOAD_PARAMETERS => offload_parameters(info),
            Oid::GEN_RNDIS_CONFIG_PARAMETER => config_parameter(info),
            // Windows guests tell the device their IP addresses; nothing to do.
            Oid::GEN_NETWORK_LAYER_ADDRESSES => Status::SUCCESS,
            _ => Status::NOT_SUPPORTED,
        }
    }

    /// One data packet's frame, with every offset and length checked
    /// against the message body (Linux's layout: `rndis_packet`, then
    /// per-packet info, then the frame).
    fn tx_packet<'a>(&self, body: &'a [u8]) -> Result<TxFrame<'a>, RndisError> {
        let p: Packet = wire::read_body(MessageType::PACKET, body)?;
        for (field, value) in [
            ("oob_data_offset", p.oob_data_offset.get()),
            ("oob_data_length", p.oob_data_length.get()),
            ("num_oob_data_elements", p.num_oob_data_elements.get()),
            ("vc_handle", p.vc_handle.get()),
        ] {
            if value != 0 {
                return Err(RndisError::BadPacket { field, value });
            }
        }
        let header = size_of::<Packet>() as u32;
        if p.data_offset.get() < header {
            return Err(RndisError::BadPacket {
                field: "data_offset",
                value: p.data_offset.get(),
            });
        }
        let data = wire::sub_range("packet data", body, p.data_offset.get(), p.data_length.get())?;
        let mut vlan = None;
        if p.per_packet_info_length.get() != 0 {
            if p.per_packet_info_offset.get() < header {
                return Err(RndisError::BadPacket {
                    field: "per_packet_info_offset",
                    value: p.per_packet_info_offset.get(),
                });
            }
            let mut ppis = wire::sub_range(
                "per-packet info",
                body,
                p.per_packet_info_offset.get(),
                p.per_packet_info_length.get(),
            )?;
            while !ppis.is_empty() {
                let (h, _) =
                    PerPacketInfo::read_from_prefix(ppis).map_err(|_| RndisError::BadPerPacketInfo {
                        size: ppis.len() as u32,
                        offset: 0,
                    })?;
                let (size, offset) = (h.size.get(), h.per_packet_information_offset.get());
                let bad = RndisError::BadPerPacketInfo { size, offset };
                if (size as usize) < size_of::<PerPacketInfo>()
                    || size as usize > ppis.len()
                    || (offset as usize) < size_of::<PerPacketInfo>()
                    || offset > size
                {
                    return Err(bad);
                }
                let value = ppis
                    .get(offset as usize..size as usize)
                    .and_then(|d| d.get(..4))
                    .map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]));
                let kind = h.kind.get();
                if kind & ppi::INTERNAL == 0 {
                    match kind {
                        ppi::IEEE_8021Q => {
                            let v = value.ok_or(bad)?;
                            vlan = Some(VlanTag {
                                priority: (v & 0x7) as u8,
                                cfi: v & 0x8 != 0,
                                id: ((v >> 4) & 0x0FFF) as u16,
                            });
                        }
                        // Transmit bits: is_ipv4 (0), is_ipv6 (1) describe
                        // the packet; tcp (2), udp (3), ip header (4)
                        // checksums ask for work.
                        ppi::TCPIP_CHECKSUM => {
                            let v = value.ok_or(bad)?;
                            if v & 0x1C != 0 {
                                return Err(RndisError::OffloadRequested { kind, value: v });
                            }
                        }
                        ppi::TCP_LARGE_SEND => {
                            let v = value.ok_or(bad)?;
                            if v != 0 {
                                return Err(RndisError::OffloadRequested { kind, value: v });
                            }
                        }
                        _ => {}
                    }
                }
                ppis = &ppis[size as usize..];
            }
        }
        let len = data.len() as u32;
        let max = self
            .config
            .max_frame_size()
            .saturating_add(if has_inline_tag(data) { VLAN_TAG_LEN } else { 0 });
        if len < ETHERNET_HEADER_LEN || len > max {
            return Err(RndisError::FrameLength { len, max });
        }
        Ok(TxFrame { data, vlan })
    }

    /// Whether the guest's packet filter (and multicast list) accepts a
    /// frame to `frame`'s destination MAC.
    pub fn accepts(&self, frame: &[u8]) -> bool {
        let Some(dest) = frame.get(..6) else {
            return false;
        };
        let f = self.packet_filter;
        if f & packet_filter::PROMISCUOUS != 0 {
            return true;
        }
        if dest == [0xFF; 6] {
            return f & packet_filter::BROADCAST != 0;
        }
        if dest[0] & 1 != 0 {
            return f & packet_filter::ALL_MULTICAST != 0
                || (f & packet_filter::MULTICAST != 0 && self.multicast.iter().any(|m| m[..] == *dest));
        }
        f & packet_filter::DIRECTED != 0 && dest == self.config.mac
    }

    /// The RNDIS `PACKET` message carrying `frame` to the guest (no
    /// per-packet info: no checksum claims, no tag extraction), for a
    /// receive slot of at least [`RX_OVERHEAD`] + frame bytes. Refused when
    /// the guest has no packet filter set, when the filter does not accept
    /// the destination, or when the frame's length is out of range.
    pub fn frame_to_guest(&self, frame: &[u8]) -> Result<Vec<u8>, FrameError> {
        if self.state != State::DataInitialized {
            return Err(FrameError::NotReady);
        }
        if frame.len() < ETHERNET_HEADER_LEN as usize {
            return Err(FrameError::TooShort(frame.len()));
        }
        let max = self.config.max_frame_size() as usize + if has_inline_tag(frame) { 4 } else { 0 };
        if frame.len() > max || RX_OVERHEAD + frame.len() > self.guest_max_transfer as usize {
            return Err(FrameError::TooLong(frame.len()));
        }
        if !self.accepts(frame) {
            return Err(FrameError::Filtered);
        }
        Ok(wire::packet_message(frame, &[]))
    }

    /// Record a link change; if it is one and the guest is initialized,
    /// the `INDICATE_STATUS` (MEDIA_CONNECT / MEDIA_DISCONNECT) to send it.
    pub fn set_link_up(&mut self, up: bool) -> Option<Vec<u8>> {
        if self.link_up == up {
            return None;
        }
        self.link_up = up;
        let status = if up {
            Status::MEDIA_CONNECT
        } else {
            Status::MEDIA_DISCONNECT
        };
        self.indication(status, &[])
    }

    /// Record a link speed change (100 bps units); if it is one and the
    /// guest is initialized, the `INDICATE_STATUS` (LINK_SPEED_CHANGE, u32
    /// payload) to send it. Linux 6.1 reads the payload without checking
    /// its length, so it is always present.
    pub fn set_link_speed(&mut self, speed: u32) -> Option<Vec<u8>> {
        if self.link_speed == speed {
            return None;
        }
        self.link_speed = speed;
        self.indication(Status::LINK_SPEED_CHANGE, &speed.to_le_bytes())
    }

    /// An `INDICATE_STATUS` NETWORK_CHANGE (the NIC moved to another
    /// network: Linux bounces the link and renews DHCP), if the guest is
    /// initialized.
    pub fn network_change(&self) -> Option<Vec<u8>> {
        self.indication(Status::NETWORK_CHANGE, &[])
    }

    fn indication(&self, status: Status, payload: &[u8]) -> Option<Vec<u8>> {
        if self.state == State::Uninitialized {
            return None;
        }
        let offset = if payload.is_empty() {
            0
        } else {
            size_of::<IndicateStatus>() as u32
        };
        let i = IndicateStatus {
            status: status.0.into(),
            status_buffer_length: (payload.len() as u32).into(),
            status_buffer_offset: offset.into(),
        };
        Some(wire::build_message(MessageType::INDICATE_STATUS, &i, payload))
    }
}

/// A `SET_COMPLETE` or `KEEPALIVE_COMPLETE`.
fn complete(kind: MessageType, request_id: u32, status: Status) -> Vec<u8> {
    wire::build_message(
        kind,
        &RequestComplete {
            request_id: request_id.into(),
            status: status.0.into(),
        },
        &[],
    )
}

/// Whether a frame carries an 802.1Q / 802.1ad tag inline.
fn has_inline_tag(frame: &[u8]) -> bool {
    matches!(frame.get(12..14), Some([0x81, 0x00]) | Some([0x88, 0xA8]))
}

/// `OID_TCP_OFFLOAD_PARAMETERS`: accept "no change" (0) and "disabled" (1)
/// for every offload; anything enabled is NOT_SUPPORTED (the device
/// announced no offloads). Linux sends `ip_v4_csum = 1`, the rest 0.
fn offload_parameters(info: &[u8]) -> Status {
    const FEATURES: usize = 4 + 11; // header + the 11 per-feature bytes
    if info.len() < FEATURES {
        return Status::INVALID_LENGTH;
    }
    if info[0] != wire::NDIS_OBJECT_TYPE_DEFAULT {
        return Status::INVALID_DATA;
    }
    let rsc = info
        .get(wire::VERSION_4_OFFLOAD_SIZE..wire::VERSION_4_OFFLOAD_SIZE + 2)
        .unwrap_or(&[]);
    if info[4..FEATURES].iter().chain(rsc).any(|&v| v > 1) {
        return Status::NOT_SUPPORTED;
    }
    Status::SUCCESS
}

/// `OID_GEN_RNDIS_CONFIG_PARAMETER`: check the structure; refuse
/// "NetworkAddress" (the root assigns MACs; Linux's `ip link set address`
/// then fails with EIO), accept and ignore anything else.
fn config_parameter(info: &[u8]) -> Status {
    let Ok((p, _)) = ConfigParameterInfo::read_from_prefix(info) else {
        return Status::INVALID_LENGTH;
    };
    let Ok(name) = wire::sub_range("name", info, p.name_offset.get(), p.name_length.get()) else {
        return Status::INVALID_DATA;
    };
    if wire::sub_range("value", info, p.value_offset.get(), p.value_length.get()).is_err() {
        return Status::INVALID_DATA;
    }
    const NETWORK_ADDRESS: &str = "NetworkAddress";
    let is_network_address = name.len() == 2 * NETWORK_ADDRESS.len()
        && name
            .chunks_exact(2)
            .zip(NETWORK_ADDRESS.bytes())
            .all(|(c, b)| c[1] == 0 && c[0].eq_ignore_ascii_case(&b));
    if is_network_address {
        Status::NOT_SUPPORTED
    } else {
        Status::SUCCESS
    }
}

#[cfg(test)]
mod tests;
