//! The synthetic NIC a Hyper-V guest's netvsc binds: NVSP and RNDIS over a
//! VMBus channel, frames to and from a switch port.
//!
//! A VMBus device (`vsp::Device`) offering the network interface
//! ([`NIC_INTERFACE_GUID`]). The NVSP conversation (`nvsp_protocol`) sets
//! up the guest's receive and send buffers; the RNDIS messages it carries
//! go to the `rndis` crate's state machine; Ethernet frames come out
//! through a bounded outbox the host drains ([`Netvsp::take_tx_frame`]) and
//! go in through [`Netvsp::deliver_rx_frame`].
//!
//! # What Linux sends, what the device answers
//!
//! Linux 6.1 `drivers/net/hyperv/netvsc.c` (`netvsc_connect_vsp`,
//! `netvsc_init_buf`, `netvsc_send_pkt`, `netvsc_receive`) and
//! `rndis_filter.c`:
//!
//! | guest sends | device answers |
//! |---|---|
//! | `INIT` (1), `min = max` = 0x60001, 0x60000, 0x50000, 0x40000, 0x30002, 0x2 in turn, completion requested | a completion with `INIT_COMPLETE` (2): SUCCESS for a version it supports ([`NetvspConfig::max_version`] and older), status NONE otherwise (OpenVMM; Linux tries the next) |
//! | `SEND_NDIS_CONFIG` (125), `SEND_NDIS_VERSION` (100), no completion | nothing (MTU, capabilities and NDIS version are recorded) |
//! | `SEND_RECEIVE_BUFFER` (101, GPADL handle, id 0xCAFE) | `SEND_RECEIVE_BUFFER_COMPLETE` (102): one section at offset 0 of fixed-size sub-allocations; FAIL for an unknown GPADL, a buffer too large or too small, or a second buffer |
//! | `SEND_SEND_BUFFER` (104, GPADL handle, id 0) | `SEND_SEND_BUFFER_COMPLETE` (105) with the section size (6144, as Hyper-V and OpenVMM), FAIL as above |
//! | `SEND_RNDIS_PACKET` (107), control or data, the RNDIS bytes in a send-buffer section (in-band packet) or in GPA-direct page buffers (`vmbus_sendpacket_pagebuffer`: control messages always, data that does not fit a section) | `SEND_RNDIS_PACKET_COMPLETE` (108): SUCCESS, `INVALID_RNDIS_PACKET` for RNDIS bytes `rndis` refuses, FAIL for a section or range that does not describe guest memory |
//! | `REVOKE_RECEIVE_BUFFER` / `REVOKE_SEND_BUFFER` | nothing (the buffer is forgotten) |
//! | a completion (type 11) of a transfer-page packet | the receive section it named is free again |
//!
//! RNDIS messages for the guest (completions of its requests, status
//! indications, received frames as `PACKET` messages) are written into a
//! free section of the receive buffer and announced by a transfer-page
//! packet (type 7, `xfer_pageset_id` = the id the guest gave, one range,
//! payload an NVSP `SEND_RNDIS_PACKET` with channel type control or data);
//! its transaction id is the section's index, and the guest's completion
//! with that id frees the section (OpenVMM does the same for control
//! messages). [`CONTROL_RESERVE`] sections are kept from received frames so
//! RNDIS completions, which Linux waits for without a timeout, always find
//! room while the guest keeps completing.
//!
//! # Bounds and flow control
//!
//! [`vsp::Device::poll`] reads at most `budget` packets, one per channel
//! poll, copying each out of the ring (at most 4 KiB) so it can touch the
//! guest's RAM between channel polls. Everything the device writes goes
//! through the channel in order; when the host-to-guest ring is full the
//! channel holds one packet and asks the guest to signal when it has made
//! room, the device queues what follows (at most [`MAX_PENDING`] RNDIS
//! messages; completions of guest packets are never dropped, and at most
//! one guest packet is read per packet the guest lets through), and reads
//! nothing else. Buffers are at most [`NetvspConfig::max_receive_buffer`]
//! / [`NetvspConfig::max_send_buffer`] bytes, the outbox holds at most
//! [`NetvspConfig::outbox_depth`] frames (more are dropped and counted),
//! and an RNDIS message is at most `rndis::Config::max_message_len` bytes.
//! Every index, length, GPADL handle and page number the guest sent is
//! checked; a fault fails only that packet ([`GuestError`], counted, the
//! last one shown by `inspect`) and the channel keeps working.
//!
//! # Not yet done
//!
//! - Sub-channels (vRSS): the RSS capabilities query is answered
//!   NOT_SUPPORTED, so Linux stays on the primary channel; a `SUBCHANNEL`
//!   request is refused.
//! - Offloads (checksum, LSO, RSC): none is announced.
//! - SR-IOV / VF association; the data-path switch is acknowledged only.
//! - The receive and send buffers' pages are looked up once, when the
//!   guest hands the buffer over; a GPADL torn down before the buffer is
//!   revoked leaves the device writing pages the guest owned (still its
//!   own RAM: every access goes through `Channel::guest_ram`).
//!
//! Sources: Linux 6.1 `drivers/net/hyperv/{netvsc.c,rndis_filter.c,
//! hyperv_net.h}`, `drivers/hv/channel.c` (`vmbus_sendpacket_pagebuffer`),
//! `include/linux/hyperv.h`; microsoft/openvmm `vm/devices/net/netvsp`
//! (host behaviour: section sizes, INIT answers, transaction ids). Written
//! fresh.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::format;
use alloc::vec::Vec;
use core::fmt;
use nvsp_protocol::recv_buffer::{self, FreeError, ReceiveSections};
use nvsp_protocol::{
    CHANNEL_TYPE_CONTROL, CHANNEL_TYPE_DATA, DEFAULT_MAX_MDL_CHAIN_LENGTH, DEFAULT_SEND_SECTION_SIZE,
    MESSAGE_SIZE, MIN_SECTION_SIZE, Message, MessageType, ParseError, SendRndisPacket, Status, Version,
    transfer_page,
};
use rndis::{FrameError, Rndis, RndisError};
use vmbus::memory::SharedMemory;
use vmbus::packet::{FLAG_COMPLETION_REQUESTED, PacketType};
use vsp::{
    Channel, Device, GpadlMap, IncomingPacket, InspectSink, OfferParams, OpenError, PacketWork, PollResult,
};

#[cfg(test)]
mod tests;

use vmbus::protocol::guid;

/// The synthetic network interface type, f8615163-df3e-46c5-913f-f2d2f965ed0e
/// (`HV_NIC_GUID`, Linux `include/linux/hyperv.h`), in wire byte order.
pub const NIC_INTERFACE_GUID: [u8; 16] = guid(
    0xf861_5163,
    0xdf3e,
    0x46c5,
    [0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65, 0xed, 0x0e],
);

/// Bytes of a guest page (GPADLs and GPA-direct ranges count in these).
pub const PAGE_SIZE: u64 = 4096;

/// Largest receive buffer accepted unless configured otherwise: 32 MiB
/// (Linux's default is 16 MiB, its maximum 31 MiB,
/// `NETVSC_RECEIVE_BUFFER_SIZE`).
pub const DEFAULT_MAX_RECEIVE_BUFFER: u64 = 32 << 20;
/// Largest send buffer accepted unless configured otherwise: 16 MiB
/// (Linux's default is 1 MiB, its maximum 15 MiB, `NETVSC_SEND_BUFFER_SIZE`).
pub const DEFAULT_MAX_SEND_BUFFER: u64 = 16 << 20;
/// Most receive sections unless configured otherwise.
pub const DEFAULT_MAX_RECEIVE_SECTIONS: u32 = 16 * 1024;
/// Frames the outbox holds unless configured otherwise.
pub const DEFAULT_OUTBOX_DEPTH: usize = 256;
/// Receive sections a received frame may not take: kept for RNDIS
/// completions and indications.
pub const CONTROL_RESERVE: u32 = 4;
/// Most RNDIS messages queued behind a full host-to-guest ring; more are
/// dropped and counted (a guest flooding control requests while not
/// reading its ring; Linux has one control request outstanding).
pub const MAX_PENDING: usize = 8;

/// The device's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetvspConfig {
    /// The RNDIS device: MAC address, MTU, link state and speed, limits.
    pub rndis: rndis::Config,
    /// The offer's instance GUID, or `None` to let the host number it.
    pub instance: Option<[u8; 16]>,
    /// The newest NVSP version accepted (all older ones Linux knows are
    /// accepted too).
    pub max_version: Version,
    /// Largest receive buffer accepted, in bytes.
    pub max_receive_buffer: u64,
    /// Largest send buffer accepted, in bytes.
    pub max_send_buffer: u64,
    /// Bytes per receive section (sub-allocation).
    pub receive_section_size: u32,
    /// Most receive sections.
    pub max_receive_sections: u32,
    /// Bytes per send-buffer section, announced in
    /// `SEND_SEND_BUFFER_COMPLETE`.
    pub send_section_size: u32,
    /// Most frames waiting in the outbox.
    pub outbox_depth: usize,
}

impl NetvspConfig {
    /// The defaults for `mac`: `rndis::Config::new(mac)`, NVSP up to 6.1,
    /// buffers up to [`DEFAULT_MAX_RECEIVE_BUFFER`] and
    /// [`DEFAULT_MAX_SEND_BUFFER`], receive sections sized for the MTU as
    /// OpenVMM sizes them (1806 bytes for 1514-byte frames), 6144-byte send
    /// sections, an outbox of [`DEFAULT_OUTBOX_DEPTH`].
    pub fn new(mac: [u8; 6]) -> Self {
        let rndis = rndis::Config::new(mac);
        Self {
            receive_section_size: recv_buffer::sub_allocation_size_for(rndis.max_frame_size()),
            rndis,
            instance: None,
            max_version: Version::V61,
            max_receive_buffer: DEFAULT_MAX_RECEIVE_BUFFER,
            max_send_buffer: DEFAULT_MAX_SEND_BUFFER,
            max_receive_sections: DEFAULT_MAX_RECEIVE_SECTIONS,
            send_section_size: DEFAULT_SEND_SECTION_SIZE,
            outbox_depth: DEFAULT_OUTBOX_DEPTH,
        }
    }

    /// Check the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let needed =
            rndis::RX_OVERHEAD as u64 + self.rndis.max_frame_size() as u64 + rndis::VLAN_TAG_LEN as u64;
        if self.receive_section_size < MIN_SECTION_SIZE || (self.receive_section_size as u64) < needed {
            return Err(ConfigError::ReceiveSectionSize(self.receive_section_size));
        }
        if self.max_receive_sections <= CONTROL_RESERVE {
            return Err(ConfigError::ReceiveSections(self.max_receive_sections));
        }
        if self.send_section_size < MIN_SECTION_SIZE {
            return Err(ConfigError::SendSectionSize(self.send_section_size));
        }
        if self.outbox_depth == 0 {
            return Err(ConfigError::OutboxDepth);
        }
        if !self.max_version.is_known() {
            return Err(ConfigError::Version(self.max_version));
        }
        Ok(())
    }
}

/// Why a configuration was refused (host fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// Receive sections must hold an RNDIS `PACKET` with the largest
    /// (tagged) frame, and Linux refuses sections under 68 bytes.
    ReceiveSectionSize(u32),
    /// There must be more receive sections than [`CONTROL_RESERVE`].
    ReceiveSections(u32),
    /// Linux refuses send sections under 68 bytes.
    SendSectionSize(u32),
    /// The outbox must hold at least one frame.
    OutboxDepth,
    /// Not an NVSP version Linux knows.
    Version(Version),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReceiveSectionSize(s) => write!(f, "receive section size {s} cannot hold a frame"),
            Self::ReceiveSections(n) => write!(f, "{n} receive sections is too few"),
            Self::SendSectionSize(s) => write!(f, "send section size {s} is below 68"),
            Self::OutboxDepth => f.write_str("the outbox must hold at least one frame"),
            Self::Version(v) => write!(f, "{v:?} is not an NVSP version"),
        }
    }
}

/// Why a guest packet was refused (or only partly done). Every variant is
/// the guest's fault; the packet is completed with a failure status if it
/// asked for a completion, and the channel keeps working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestError {
    /// A packet type the device does not take.
    PacketType(PacketType),
    /// Bytes that are no NVSP message.
    Nvsp(ParseError),
    /// A message the guest may not send, or not now.
    UnexpectedMessage(MessageType),
    /// A message before `INIT` agreed on a version.
    NotNegotiated(MessageType),
    /// No GPADL with this handle.
    UnknownGpadl(u32),
    /// A buffer larger than the configured maximum.
    BufferTooLarge {
        /// Its bytes.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A receive buffer that holds no section.
    BufferTooSmall(u64),
    /// A second receive or send buffer.
    BufferAlreadySet(MessageType),
    /// An RNDIS message before the receive buffer was set.
    NoReceiveBuffer,
    /// A send-buffer section named before the send buffer was set.
    NoSendBuffer,
    /// A send-buffer section index past the buffer.
    SectionIndex {
        /// The index.
        index: u32,
        /// Sections in the buffer.
        count: u32,
    },
    /// A send-buffer section size of 0 or past the section.
    SectionSize {
        /// Bytes claimed.
        size: u32,
        /// Bytes per section.
        max: u32,
    },
    /// An RNDIS packet with neither a section nor GPA-direct ranges.
    NoData,
    /// A GPA-direct range list that does not parse.
    BadRanges,
    /// GPA-direct ranges describing more bytes than an RNDIS message may have.
    RangesTooLong {
        /// Bytes described.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// A page outside the guest's RAM (or an address that overflows).
    GuestMemory,
    /// RNDIS bytes the state machine refused.
    Rndis(RndisError),
    /// A completion naming no outstanding receive section.
    Completion(FreeError),
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PacketType(t) => write!(f, "unexpected packet type {t:?}"),
            Self::Nvsp(e) => write!(f, "bad NVSP message: {e:?}"),
            Self::UnexpectedMessage(t) => write!(f, "unexpected NVSP message {t:?}"),
            Self::NotNegotiated(t) => write!(f, "{t:?} before INIT"),
            Self::UnknownGpadl(h) => write!(f, "unknown GPADL {h:#x}"),
            Self::BufferTooLarge { len, max } => write!(f, "buffer of {len} bytes (limit {max})"),
            Self::BufferTooSmall(len) => write!(f, "buffer of {len} bytes holds no section"),
            Self::BufferAlreadySet(t) => write!(f, "{t:?} with a buffer already set"),
            Self::NoReceiveBuffer => f.write_str("RNDIS before the receive buffer"),
            Self::NoSendBuffer => f.write_str("send section before the send buffer"),
            Self::SectionIndex { index, count } => write!(f, "send section {index} of {count}"),
            Self::SectionSize { size, max } => write!(f, "send section size {size} (limit {max})"),
            Self::NoData => f.write_str("RNDIS packet with no data"),
            Self::BadRanges => f.write_str("bad GPA-direct ranges"),
            Self::RangesTooLong { len, max } => write!(f, "{len} RNDIS bytes in ranges (limit {max})"),
            Self::GuestMemory => f.write_str("page outside guest RAM"),
            Self::Rndis(e) => write!(f, "{e}"),
            Self::Completion(e) => write!(f, "bad completion: {e:?}"),
        }
    }
}

/// Why a frame for the guest was not delivered. None is a fault; each is
/// counted as a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxError {
    /// The channel is not open (or stopped).
    NotOpen,
    /// No receive buffer yet.
    NoReceiveBuffer,
    /// RNDIS refused it (not data-initialized, filtered, bad length).
    Frame(FrameError),
    /// No free receive section (the guest has not completed enough).
    NoSection,
    /// The host-to-guest ring is full.
    RingFull,
    /// The receive buffer's pages are not in the guest's RAM.
    GuestMemory,
}

impl fmt::Display for RxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOpen => f.write_str("the channel is not open"),
            Self::NoReceiveBuffer => f.write_str("no receive buffer"),
            Self::Frame(e) => write!(f, "refused by RNDIS: {e:?}"),
            Self::NoSection => f.write_str("no free receive section"),
            Self::RingFull => f.write_str("the guest's ring is full"),
            Self::GuestMemory => f.write_str("receive buffer outside guest RAM"),
        }
    }
}

/// The device's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetvspStats {
    /// Packets read from the guest.
    pub packets: u64,
    /// Guest packets refused (see [`GuestError`]).
    pub guest_errors: u64,
    /// RNDIS messages handled.
    pub rndis_messages: u64,
    /// Frames the guest sent (into the outbox).
    pub tx_frames: u64,
    /// Frames the guest sent that the full outbox dropped.
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames for the guest that were dropped.
    pub rx_dropped: u64,
    /// RNDIS control messages (completions, indications) sent.
    pub control_messages: u64,
    /// RNDIS control messages dropped (no section, or too many queued).
    pub control_dropped: u64,
    /// Receive sections the guest completed.
    pub sections_completed: u64,
}

/// The guest's receive buffer.
#[derive(Debug)]
struct ReceiveBuffer {
    /// `xfer_pageset_id` for the transfer-page packets (0xCAFE for Linux).
    id: u16,
    pages: Vec<u64>,
    sections: ReceiveSections,
}

/// The guest's send buffer.
#[derive(Debug)]
struct SendBuffer {
    pages: Vec<u64>,
    section_size: u32,
    count: u32,
}

/// A packet copied out of the guest's ring.
struct Stashed {
    kind: PacketType,
    flags: u16,
    transaction_id: u64,
    offset8: u16,
    /// Everything after the descriptor.
    after_descriptor: Vec<u8>,
}

impl Stashed {
    fn new(p: &IncomingPacket<'_>) -> Self {
        Self {
            kind: p.kind,
            flags: p.flags,
            transaction_id: p.transaction_id,
            offset8: p.offset8,
            after_descriptor: p.after_descriptor.to_vec(),
        }
    }

    fn wants_completion(&self) -> bool {
        self.flags & FLAG_COMPLETION_REQUESTED != 0
    }

    /// The in-band data (from `offset8 * 8`).
    fn payload(&self) -> &[u8] {
        let start = (self.offset8 as usize * 8).saturating_sub(16);
        self.after_descriptor.get(start..).unwrap_or(&[])
    }
}

/// A VMBus completion packet (type 11, flags 0) carrying `payload`.
fn completion_packet(transaction_id: u64, payload: &[u8]) -> Vec<u8> {
    let d = vmbus::packet::Descriptor::new(PacketType::COMPLETION, 16, payload.len(), 0, transaction_id);
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(zerocopy_bytes(&d));
    out.extend_from_slice(payload);
    out
}

fn zerocopy_bytes(d: &vmbus::packet::Descriptor) -> &[u8] {
    use nvsp_protocol::IntoBytes;
    d.as_bytes()
}

/// Copy between `buf` and the guest buffer made of `pages`, from byte
/// `offset` of the buffer, page by page through the guest's RAM.
fn buffer_io<M: SharedMemory>(
    ram: &M,
    pages: &[u64],
    offset: u64,
    len: usize,
    mut op: impl FnMut(&M, u64, core::ops::Range<usize>) -> bool,
) -> Result<(), GuestError> {
    let mut done = 0usize;
    while done < len {
        let pos = offset.checked_add(done as u64).ok_or(GuestError::GuestMemory)?;
        let page = usize::try_from(pos / PAGE_SIZE).map_err(|_| GuestError::GuestMemory)?;
        let in_page = pos % PAGE_SIZE;
        let n = ((PAGE_SIZE - in_page) as usize).min(len - done);
        let gpn = *pages.get(page).ok_or(GuestError::GuestMemory)?;
        let gpa = gpn
            .checked_mul(PAGE_SIZE)
            .and_then(|a| a.checked_add(in_page))
            .ok_or(GuestError::GuestMemory)?;
        if !op(ram, gpa, done..done + n) {
            return Err(GuestError::GuestMemory);
        }
        done += n;
    }
    Ok(())
}

fn read_buffer<M: SharedMemory>(
    ram: &M,
    pages: &[u64],
    offset: u64,
    buf: &mut [u8],
) -> Result<(), GuestError> {
    let len = buf.len();
    buffer_io(ram, pages, offset, len, |ram, gpa, r| {
        ram.read_at(gpa, &mut buf[r]).is_ok()
    })
}

fn write_buffer<M: SharedMemory>(ram: &M, pages: &[u64], offset: u64, data: &[u8]) -> Result<(), GuestError> {
    buffer_io(ram, pages, offset, data.len(), |ram, gpa, r| {
        ram.write_at(gpa, &data[r]).is_ok()
    })
}

/// Insert an 802.1Q tag after the source MAC (a tag the guest sent out of
/// band, the `IEEE_8021Q_INFO` per-packet info).
fn insert_tag(frame: &[u8], tci: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(frame.get(..12).unwrap_or(frame));
    out.extend_from_slice(&[0x81, 0x00]);
    out.extend_from_slice(&tci.to_be_bytes());
    out.extend_from_slice(frame.get(12..).unwrap_or(&[]));
    out
}

/// Everything but the channel.
struct Core {
    config: NetvspConfig,
    rndis: Rndis,
    version: Option<Version>,
    ndis_version: Option<(u32, u32)>,
    ndis_mtu: Option<u32>,
    recv: Option<ReceiveBuffer>,
    send: Option<SendBuffer>,
    outbox: VecDeque<Vec<u8>>,
    /// Packets waiting for the channel (behind one it holds), in order.
    pending: VecDeque<Vec<u8>>,
    stats: NetvspStats,
    last_error: Option<GuestError>,
}

impl Core {
    fn msg_size(&self) -> usize {
        self.version.map_or(MESSAGE_SIZE, nvsp_protocol::message_size)
    }

    fn fault(&mut self, e: GuestError) {
        self.stats.guest_errors += 1;
        self.last_error = Some(e);
    }

    fn complete(&mut self, p: &Stashed, msg: &[u8; MESSAGE_SIZE]) {
        if p.wants_completion() {
            let n = self.msg_size();
            self.pending
                .push_back(completion_packet(p.transaction_id, &msg[..n]));
        }
    }

    /// Back to the state just after offering (the buffers are forgotten).
    fn reset(&mut self) {
        self.rndis.reset();
        self.version = None;
        self.ndis_version = None;
        self.ndis_mtu = None;
        self.recv = None;
        self.send = None;
        self.pending.clear();
        self.outbox.clear();
    }

    /// Handle one packet the guest sent; what goes back is queued.
    fn process<M: SharedMemory>(&mut self, p: &Stashed, ram: Option<&M>, gpadls: Option<&dyn GpadlMap>) {
        self.stats.packets += 1;
        match p.kind {
            PacketType::COMPLETION => {
                // The guest finished with a transfer-page packet (Linux
                // `netvsc_send_recv_completion`: an 8-byte
                // SEND_RNDIS_PACKET_COMPLETE with our transaction id).
                let r = match self.recv.as_mut() {
                    Some(recv) => recv
                        .sections
                        .complete(p.transaction_id)
                        .map_err(GuestError::Completion),
                    None => Err(GuestError::NoReceiveBuffer),
                };
                match r {
                    Ok(_) => self.stats.sections_completed += 1,
                    Err(e) => self.fault(e),
                }
            }
            PacketType::DATA_INBAND | PacketType::DATA_USING_GPA_DIRECT => {
                let msg = match Message::parse(p.payload()) {
                    Ok(m) => m,
                    Err(e) => return self.fault(GuestError::Nvsp(e)),
                };
                if p.kind == PacketType::DATA_USING_GPA_DIRECT && !matches!(msg, Message::SendRndisPacket(_))
                {
                    return self.fault(GuestError::UnexpectedMessage(msg.kind()));
                }
                self.message(p, msg, ram, gpadls);
            }
            other => self.fault(GuestError::PacketType(other)),
        }
    }

    fn message<M: SharedMemory>(
        &mut self,
        p: &Stashed,
        msg: Message,
        ram: Option<&M>,
        gpadls: Option<&dyn GpadlMap>,
    ) {
        let kind = msg.kind();
        if let Message::Init(init) = msg {
            // `netvsc_connect_vsp` → `negotiate_nvsp_ver`: one version per
            // INIT; anything but SUCCESS makes Linux try the next.
            let supported: Vec<Version> = Version::ALL
                .iter()
                .copied()
                .filter(|v| v.0 <= self.config.max_version.0)
                .collect();
            let v = if self.version.is_none() {
                nvsp_protocol::negotiate(&init, &supported)
            } else {
                self.fault(GuestError::UnexpectedMessage(kind));
                None
            };
            if p.wants_completion() {
                let m = nvsp_protocol::init_complete(v, DEFAULT_MAX_MDL_CHAIN_LENGTH);
                // Before a version is agreed: the full 40 bytes (Linux
                // copies `sizeof(struct nvsp_message)` out of it).
                self.pending.push_back(completion_packet(p.transaction_id, &m));
            }
            if v.is_some() {
                self.version = v;
            }
            return;
        }
        if self.version.is_none() {
            self.fault(GuestError::NotNegotiated(kind));
            return self.refuse(p, kind);
        }
        match msg {
            Message::SendNdisConfig(c) => self.ndis_mtu = Some(c.mtu.get()),
            Message::SendNdisVersion(v) => {
                self.ndis_version = Some((v.ndis_major_version.get(), v.ndis_minor_version.get()))
            }
            Message::SendReceiveBuffer(b) => {
                let r = self.receive_buffer(b.gpadl_handle.get(), b.id.get(), gpadls);
                let section = match r {
                    Ok(s) => Some(s),
                    Err(e) => {
                        self.fault(e);
                        None
                    }
                };
                self.complete(p, &nvsp_protocol::send_receive_buffer_complete(section));
            }
            Message::SendSendBuffer(b) => {
                let r = self.send_buffer(b.gpadl_handle.get(), gpadls);
                let size = match r {
                    Ok(s) => Some(s),
                    Err(e) => {
                        self.fault(e);
                        None
                    }
                };
                self.complete(p, &nvsp_protocol::send_send_buffer_complete(size));
            }
            Message::RevokeReceiveBuffer(_) => self.recv = None,
            Message::RevokeSendBuffer(_) => self.send = None,
            Message::SendRndisPacket(m) => {
                let status = match self.rndis_packet(p, &m, ram) {
                    Ok(()) => Status::SUCCESS,
                    Err(e) => {
                        let s = match e {
                            GuestError::Rndis(r) => r.nvsp_status(),
                            _ => Status::FAIL,
                        };
                        self.fault(e);
                        s
                    }
                };
                self.complete(p, &nvsp_protocol::send_rndis_packet_complete(status));
            }
            Message::SwitchDataPath(_) => {
                // No VF is ever offered; acknowledge (Linux 6.1
                // `netvsc_switch_datapath` waits for the completion).
                if p.wants_completion() {
                    let n = self.msg_size();
                    let mut payload = p.payload().to_vec();
                    payload.resize(n, 0);
                    self.pending
                        .push_back(completion_packet(p.transaction_id, &payload));
                }
            }
            Message::SubchannelRequest(_) => {
                self.fault(GuestError::UnexpectedMessage(kind));
                self.complete(p, &nvsp_protocol::subchannel_complete(Status::FAIL, 0));
            }
            _ => {
                self.fault(GuestError::UnexpectedMessage(kind));
                self.refuse(p, kind);
            }
        }
    }

    /// Complete a refused request if the guest waits for one: for the
    /// messages that have a completion, with its FAIL form.
    fn refuse(&mut self, p: &Stashed, kind: MessageType) {
        let m = match kind {
            MessageType::SEND_RECEIVE_BUFFER => nvsp_protocol::send_receive_buffer_complete(None),
            MessageType::SEND_SEND_BUFFER => nvsp_protocol::send_send_buffer_complete(None),
            MessageType::SEND_RNDIS_PACKET => nvsp_protocol::send_rndis_packet_complete(Status::FAIL),
            _ => return,
        };
        self.complete(p, &m);
    }

    fn gpadl_pages(handle: u32, max: u64, gpadls: Option<&dyn GpadlMap>) -> Result<Vec<u64>, GuestError> {
        let pages = gpadls
            .and_then(|g| g.pages(handle))
            .ok_or(GuestError::UnknownGpadl(handle))?;
        let len = (pages.len() as u64).saturating_mul(PAGE_SIZE);
        if len > max {
            return Err(GuestError::BufferTooLarge { len, max });
        }
        Ok(pages)
    }

    fn receive_buffer(
        &mut self,
        handle: u32,
        id: u16,
        gpadls: Option<&dyn GpadlMap>,
    ) -> Result<nvsp_protocol::ReceiveBufferSection, GuestError> {
        if self.recv.is_some() {
            return Err(GuestError::BufferAlreadySet(MessageType::SEND_RECEIVE_BUFFER));
        }
        let pages = Self::gpadl_pages(handle, self.config.max_receive_buffer, gpadls)?;
        let len = pages.len() as u64 * PAGE_SIZE;
        let sections = ReceiveSections::new(
            len,
            self.config.receive_section_size,
            self.config.max_receive_sections,
        )
        .map_err(|_| GuestError::BufferTooSmall(len))?;
        let section = sections.section();
        self.recv = Some(ReceiveBuffer { id, pages, sections });
        Ok(section)
    }

    fn send_buffer(&mut self, handle: u32, gpadls: Option<&dyn GpadlMap>) -> Result<u32, GuestError> {
        if self.send.is_some() {
            return Err(GuestError::BufferAlreadySet(MessageType::SEND_SEND_BUFFER));
        }
        let pages = Self::gpadl_pages(handle, self.config.max_send_buffer, gpadls)?;
        let len = pages.len() as u64 * PAGE_SIZE;
        let section_size = self.config.send_section_size;
        // Linux: `send_section_cnt = buf_size / send_section_size`.
        let count = u32::try_from(len / section_size as u64).unwrap_or(u32::MAX);
        if count == 0 {
            return Err(GuestError::BufferTooSmall(len));
        }
        self.send = Some(SendBuffer {
            pages,
            section_size,
            count,
        });
        Ok(section_size)
    }

    /// The RNDIS bytes of a `SEND_RNDIS_PACKET`: a send-buffer section
    /// (Linux `netvsc_copy_to_send_buf`), the GPA-direct page buffers
    /// (`vmbus_sendpacket_pagebuffer`: `{reserved, range_count}` then
    /// `{len, offset, pfn}` per page, which is the multi-page range format
    /// with one page each), or both, in that order: when Linux packs
    /// messages into a section and the last frame does not fit, the section
    /// ends with that frame's RNDIS header and its data follows in page
    /// buffers (`netvsc_send`, `cp_partial`).
    fn rndis_bytes<M: SharedMemory>(
        &self,
        p: &Stashed,
        m: &SendRndisPacket,
        ram: &M,
    ) -> Result<Vec<u8>, GuestError> {
        let max = self.config.rndis.max_message_len;
        let mut buf = Vec::new();
        if let Some(index) = m.section() {
            let send = self.send.as_ref().ok_or(GuestError::NoSendBuffer)?;
            if index >= send.count {
                return Err(GuestError::SectionIndex {
                    index,
                    count: send.count,
                });
            }
            let size = m.send_buffer_section_size.get();
            if size == 0 || size > send.section_size || size > max {
                return Err(GuestError::SectionSize {
                    size,
                    max: send.section_size.min(max),
                });
            }
            buf.resize(size as usize, 0);
            read_buffer(
                ram,
                &send.pages,
                index as u64 * send.section_size as u64,
                &mut buf,
            )?;
            if p.kind != PacketType::DATA_USING_GPA_DIRECT {
                return Ok(buf);
            }
        } else if p.kind != PacketType::DATA_USING_GPA_DIRECT {
            return Err(GuestError::NoData);
        }
        let header = p.after_descriptor.get(..8).ok_or(GuestError::BadRanges)?;
        let count = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let ranges_end = (p.offset8 as usize * 8)
            .checked_sub(16)
            .ok_or(GuestError::BadRanges)?;
        let list = p
            .after_descriptor
            .get(8..ranges_end)
            .ok_or(GuestError::BadRanges)?;
        let ranges = vmbus::packet::parse_gpa_ranges(list, count).map_err(|_| GuestError::BadRanges)?;
        if ranges.is_empty() {
            return Err(GuestError::NoData);
        }
        let total: u64 = buf.len() as u64 + ranges.iter().map(|r| r.byte_count as u64).sum::<u64>();
        if total > max as u64 {
            return Err(GuestError::RangesTooLong { len: total, max });
        }
        let mut at = buf.len();
        buf.resize(total as usize, 0);
        for r in &ranges {
            let pfns: Vec<u64> = r
                .pfns
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            let n = r.byte_count as usize;
            read_buffer(ram, &pfns, r.byte_offset as u64, &mut buf[at..at + n])?;
            at += n;
        }
        Ok(buf)
    }

    fn rndis_packet<M: SharedMemory>(
        &mut self,
        p: &Stashed,
        m: &SendRndisPacket,
        ram: Option<&M>,
    ) -> Result<(), GuestError> {
        if self.recv.is_none() {
            // Nowhere to put a reply; Linux sets both buffers first.
            return Err(GuestError::NoReceiveBuffer);
        }
        let ram = ram.ok_or(GuestError::GuestMemory)?;
        let bytes = self.rndis_bytes(p, m, ram)?;
        let response = self.rndis.handle(&bytes).map_err(GuestError::Rndis)?;
        self.stats.rndis_messages += 1;
        for f in &response.frames {
            if self.outbox.len() >= self.config.outbox_depth {
                self.stats.tx_dropped += 1;
                continue;
            }
            let frame = match f.vlan {
                Some(tag) => insert_tag(f.data, tag.tci()),
                None => f.data.to_vec(),
            };
            self.outbox.push_back(frame);
            self.stats.tx_frames += 1;
        }
        for msg in response.messages {
            self.control_message(ram, &msg);
        }
        Ok(())
    }

    /// Put an RNDIS message in a receive section and queue the
    /// transfer-page packet naming it; `Err` if it could not be.
    fn queue_for_guest<M: SharedMemory>(
        &mut self,
        ram: &M,
        msg: &[u8],
        channel_type: u32,
        reserve: u32,
    ) -> Result<(), RxError> {
        let n = self.msg_size();
        let recv = self.recv.as_mut().ok_or(RxError::NoReceiveBuffer)?;
        let len = u32::try_from(msg.len()).map_err(|_| RxError::NoSection)?;
        if len == 0 || len > recv.sections.slot_size() {
            return Err(RxError::Frame(FrameError::TooLong(msg.len())));
        }
        if recv.sections.available() <= reserve {
            return Err(RxError::NoSection);
        }
        let index = recv.sections.alloc().ok_or(RxError::NoSection)?;
        let built = (|| {
            let offset = recv.sections.offset(index).ok_or(RxError::NoSection)?;
            write_buffer(ram, &recv.pages, offset, msg).map_err(|_| RxError::GuestMemory)?;
            let range = recv.sections.range(index, len).ok_or(RxError::NoSection)?;
            let nvsp = nvsp_protocol::send_rndis_packet(channel_type);
            transfer_page::build(index as u64, recv.id, &[range], &nvsp[..n]).map_err(|_| RxError::NoSection)
        })();
        match built {
            Ok(packet) => {
                self.pending.push_back(packet);
                Ok(())
            }
            Err(e) => {
                let _ = recv.sections.free(index);
                Err(e)
            }
        }
    }

    fn control_message<M: SharedMemory>(&mut self, ram: &M, msg: &[u8]) {
        if self.pending.len() >= MAX_PENDING {
            self.stats.control_dropped += 1;
            return;
        }
        match self.queue_for_guest(ram, msg, CHANNEL_TYPE_CONTROL, 0) {
            Ok(()) => self.stats.control_messages += 1,
            Err(_) => self.stats.control_dropped += 1,
        }
    }
}

/// The synthetic NIC.
pub struct Netvsp<M: SharedMemory> {
    channel: Option<Channel<M>>,
    core: Core,
}

impl<M: SharedMemory> Netvsp<M> {
    /// A NIC with `config`, not yet open.
    pub fn new(config: NetvspConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            channel: None,
            core: Core {
                rndis: Rndis::new(config.rndis.clone()),
                config,
                version: None,
                ndis_version: None,
                ndis_mtu: None,
                recv: None,
                send: None,
                outbox: VecDeque::new(),
                pending: VecDeque::new(),
                stats: NetvspStats::default(),
                last_error: None,
            },
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetvspConfig {
        &self.core.config
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.core.config.rndis.mac
    }

    /// The NVSP version agreed, once the guest's `INIT` was accepted.
    pub fn version(&self) -> Option<Version> {
        self.core.version
    }

    /// The RNDIS state machine (state, packet filter, link).
    pub fn rndis(&self) -> &Rndis {
        &self.core.rndis
    }

    /// The counters.
    pub fn stats(&self) -> NetvspStats {
        self.core.stats
    }

    /// The last guest fault, if any.
    pub fn last_error(&self) -> Option<GuestError> {
        self.core.last_error
    }

    /// Receive sections (in use, total), once the guest gave its buffer.
    pub fn receive_sections(&self) -> Option<(u32, u32)> {
        self.core
            .recv
            .as_ref()
            .map(|r| (r.sections.in_use(), r.sections.capacity()))
    }

    /// Send-buffer sections (size, count), once the guest gave its buffer.
    pub fn send_sections(&self) -> Option<(u32, u32)> {
        self.core.send.as_ref().map(|s| (s.section_size, s.count))
    }

    /// The open channel, if any.
    pub fn channel(&self) -> Option<&Channel<M>> {
        self.channel.as_ref()
    }

    /// Frames waiting in the outbox.
    pub fn tx_pending(&self) -> usize {
        self.core.outbox.len()
    }

    /// The oldest frame the guest sent, for the switch.
    pub fn take_tx_frame(&mut self) -> Option<Vec<u8>> {
        self.core.outbox.pop_front()
    }

    /// Deliver a frame to the guest: written into a free receive section
    /// as an RNDIS `PACKET` message and announced with a transfer-page
    /// packet. Dropped (and counted) when the guest is not ready for
    /// frames, its filter refuses the destination, no section is free or
    /// its ring is full.
    pub fn deliver_rx_frame(&mut self, frame: &[u8]) -> Result<(), RxError> {
        let r = self.try_deliver(frame);
        match r {
            Ok(()) => self.core.stats.rx_frames += 1,
            Err(_) => self.core.stats.rx_dropped += 1,
        }
        r
    }

    fn try_deliver(&mut self, frame: &[u8]) -> Result<(), RxError> {
        let channel = self.channel.as_mut().ok_or(RxError::NotOpen)?;
        if channel.broken().is_some() {
            return Err(RxError::NotOpen);
        }
        if self.core.recv.is_none() {
            return Err(RxError::NoReceiveBuffer);
        }
        if channel.holding() || !self.core.pending.is_empty() {
            return Err(RxError::RingFull);
        }
        let msg = self.core.rndis.frame_to_guest(frame).map_err(RxError::Frame)?;
        let ram = channel.guest_ram().ok_or(RxError::GuestMemory)?;
        self.core
            .queue_for_guest(ram, &msg, CHANNEL_TYPE_DATA, CONTROL_RESERVE)?;
        flush(channel, &mut self.core, &mut PollResult::default());
        Ok(())
    }

    /// Set the link up or down; the guest hears an RNDIS status indication
    /// if it has initialized RNDIS.
    pub fn set_link_up(&mut self, up: bool) -> PollResult {
        let mut result = PollResult::default();
        let Some(msg) = self.core.rndis.set_link_up(up) else {
            return result;
        };
        let Some(channel) = self.channel.as_mut() else {
            return result;
        };
        if let Some(ram) = channel.guest_ram() {
            self.core.control_message(ram, &msg);
        }
        flush(channel, &mut self.core, &mut result);
        result
    }
}

/// Hand queued packets to the channel until it holds one.
fn flush<M: SharedMemory>(channel: &mut Channel<M>, core: &mut Core, result: &mut PollResult) {
    while !channel.holding() && channel.broken().is_none() {
        let Some(packet) = core.pending.pop_front() else {
            break;
        };
        if let Err(packet) = channel.send_within(packet, result) {
            core.pending.push_front(packet);
            break;
        }
    }
}

/// netvsp's halves of [`Channel::poll_each`]: a packet is copied out of the
/// ring (handling it needs the guest's RAM and GPADLs, which the channel
/// lends only between reads), then processed; what it queued for the guest
/// goes out after what was queued before it.
struct NvspWork<'a> {
    core: &'a mut Core,
}

impl<M: SharedMemory> PacketWork<M> for NvspWork<'_> {
    type Item = Stashed;

    fn read(&mut self, packet: &IncomingPacket<'_>) -> (Option<Vec<u8>>, Option<Stashed>) {
        (None, Some(Stashed::new(packet)))
    }

    fn work(&mut self, channel: &mut Channel<M>, packet: Option<Stashed>, result: &mut PollResult) {
        flush(channel, self.core, result);
        if let Some(packet) = packet {
            self.core.process(&packet, channel.guest_ram(), channel.gpadls());
            flush(channel, self.core, result);
        }
    }
}

impl<M: SharedMemory> Device<M> for Netvsp<M> {
    fn network(&mut self) -> Option<&mut dyn vsp::NetworkPort> {
        Some(self)
    }

    fn offer(&self) -> OfferParams {
        let mut o = OfferParams::new(NIC_INTERFACE_GUID);
        o.interface_instance = self.core.config.instance;
        o
    }

    fn open(&mut self, channel: Channel<M>) -> Result<(), OpenError> {
        if self.channel.is_some() {
            return Err(OpenError::AlreadyOpen);
        }
        if channel.guest_ram().is_none() {
            return Err(OpenError::Refused("netvsp needs the guest's RAM"));
        }
        if channel.gpadls().is_none() {
            return Err(OpenError::Refused("netvsp needs the guest's GPADLs"));
        }
        // Every open starts a new NVSP conversation (Linux runs
        // `netvsc_connect_vsp` after each open).
        self.core.reset();
        self.channel = Some(channel);
        Ok(())
    }

    fn poll(&mut self, budget: u32) -> PollResult {
        let Some(channel) = self.channel.as_mut() else {
            return PollResult::default();
        };
        let mut result = PollResult::default();
        // What the switch queued for the guest since the last poll.
        flush(channel, &mut self.core, &mut result);
        let mut polled = channel.poll_each(budget, &mut NvspWork { core: &mut self.core });
        polled.signalled |= result.signalled;
        polled.broke = polled.broke.or(result.broke);
        polled
    }

    fn close(&mut self) {
        self.channel = None;
        self.core.reset();
    }

    fn reset(&mut self) {
        self.channel = None;
        self.core.reset();
    }

    fn inspect(&self, out: &mut dyn InspectSink) {
        let Some(channel) = &self.channel else {
            return;
        };
        let c = &self.core;
        let version = c
            .version
            .map(|v| format!("{}.{}", v.0 >> 16, v.0 & 0xFFFF))
            .unwrap_or_default();
        out.text("nvsp_version", "NVSP version", &version);
        let state = match c.rndis.state() {
            rndis::State::Uninitialized => "uninitialized",
            rndis::State::Initialized => "initialized",
            rndis::State::DataInitialized => "data initialized",
        };
        out.text("rndis_state", "RNDIS state", state);
        let m = c.config.rndis.mac;
        out.text(
            "mac",
            "MAC",
            &format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
        );
        out.text("link", "link", if c.rndis.link_up() { "up" } else { "down" });
        channel.inspect(out, "packets written");
        let s = &c.stats;
        out.counter("packets_read", "packets read", s.packets);
        out.counter("guest_errors", "guest errors", s.guest_errors);
        out.counter("rndis_messages", "RNDIS messages", s.rndis_messages);
        out.counter("tx_frames", "frames sent by the guest", s.tx_frames);
        out.counter("tx_dropped", "guest frames dropped", s.tx_dropped);
        out.counter("rx_frames", "frames delivered", s.rx_frames);
        out.counter("rx_dropped", "frames for the guest dropped", s.rx_dropped);
        out.counter("control_messages", "RNDIS control messages", s.control_messages);
        out.counter(
            "control_dropped",
            "RNDIS control messages dropped",
            s.control_dropped,
        );
        let (in_use, total) = self.receive_sections().unwrap_or((0, 0));
        out.counter("rx_sections_in_use", "receive sections in use", in_use as u64);
        out.counter("rx_sections", "receive sections", total as u64);
        let (_, send) = self.send_sections().unwrap_or((0, 0));
        out.counter("tx_sections", "send sections", send as u64);
        out.counter("outbox", "frames in the outbox", c.outbox.len() as u64);
        match c.last_error {
            Some(e) => out.text("last_error", "last guest error", &format!("{e}")),
            None => out.text("last_error", "last guest error", ""),
        }
    }
}

impl<M: SharedMemory> vsp::NetworkPort for Netvsp<M> {
    fn mac(&self) -> [u8; 6] {
        Netvsp::mac(self)
    }

    fn take_tx(&mut self) -> Option<Vec<u8>> {
        self.take_tx_frame()
    }

    fn deliver_rx(&mut self, frame: &[u8]) -> bool {
        self.deliver_rx_frame(frame).is_ok()
    }
}
