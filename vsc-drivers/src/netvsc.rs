//! The guest side of the Hyper-V synthetic NIC (netvsc), sans-IO: the OS
//! writes the packets [`Netvsc::poll_transmit`] hands it into the
//! channel's guest-to-host ring, feeds every packet it reads from the
//! host-to-guest ring (whole, descriptor first) to [`Netvsc::handle`], and
//! takes received frames and state changes from [`Netvsc::poll_event`].
//! The client owns no ring and maps no memory: the OS creates the receive
//! and send buffers' GPADLs through the bus, gives the handles in
//! [`NetvscConfig`], and lends the buffers' bytes as
//! [`vmbus::memory::SharedMemory`] ([`Buffers`]) on each call that needs
//! them.
//!
//! It does what Linux 6.1 `drivers/net/hyperv` does to bring a NIC up:
//!
//! 1. `netvsc_connect_vsp` / `negotiate_nvsp_ver`: NVSP `INIT` with
//!    `min = max` = 0x60001, 0x60000, 0x50000, 0x40000, 0x30002, 0x2 in
//!    turn until one completes with SUCCESS; then (NVSP ≥ 2)
//!    `SEND_NDIS_CONFIG` (MTU + 14; no capabilities: this client does no
//!    VLAN offload, SR-IOV, teaming or RSC) and `SEND_NDIS_VERSION` (6.1 up
//!    to NVSP 4, else 6.30), neither completed;
//! 2. `netvsc_init_buf`: `SEND_RECEIVE_BUFFER` (id 0xCAFE) and
//!    `SEND_SEND_BUFFER` (id 0), each checked as Linux checks the
//!    completion (one section at offset 0 that fits the buffer, sections of
//!    at least 68 bytes);
//! 3. `rndis_filter_device_add` / `rndis_filter_open`: RNDIS `INITIALIZE`,
//!    `QUERY` of the maximum frame size, the permanent MAC and the media
//!    connect status, `SET` of the packet filter; one request outstanding,
//!    answers matched on the request id.
//!
//! Every RNDIS message the client sends (control and data) goes in a
//! send-buffer section (`netvsc_copy_to_send_buf`: NVSP
//! `SEND_RNDIS_PACKET` naming the section and its bytes, completion
//! requested); the section is free again when the host completes the
//! packet. Linux sends control messages and frames that do not fit a
//! section as GPA-direct page buffers instead; netvsp takes both, and
//! sections need no page frame numbers from the OS.
//!
//! The host hands RNDIS messages (responses, status indications, frames)
//! in transfer-page packets naming ranges of the receive buffer
//! (`netvsc_receive`, `rndis_filter_receive`): each range is checked
//! against the buffer and the section size before it is read, each RNDIS
//! message against its own lengths and offsets, and the packet is
//! completed (an 8-byte `SEND_RNDIS_PACKET_COMPLETE` with its transaction
//! id) with SUCCESS, or FAIL if any range was bad, as Linux does.
//!
//! The host is untrusted: a violation is a [`NetvscError`] whose
//! [`NetvscError::culprit`] is [`Culprit::Host`]; nothing here panics on
//! host data. Wire formats are `nvsp_protocol`'s (NVSP, RNDIS, transfer
//! pages).

use crate::Culprit;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::fmt;
use nvsp_protocol::rndis::{self as wire, Oid};
use nvsp_protocol::transfer_page::{self, TransferPageError};
use nvsp_protocol::{
    CHANNEL_TYPE_CONTROL, CHANNEL_TYPE_DATA, FromBytes, IntoBytes, LINUX_RECEIVE_BUFFER_ID,
    LINUX_SEND_BUFFER_ID, MIN_SECTION_SIZE, Message, MessageType, ParseError, Status, Version,
};
use vmbus::memory::{OutOfBounds, SharedMemory};
use vmbus::packet::{Descriptor, FLAG_COMPLETION_REQUESTED, PacketError, PacketType};

/// The NVSP versions proposed, in order (Linux 6.1 `netvsc_connect_vsp`'s
/// `ver_list`, newest first).
pub const VERSIONS: [Version; 6] = [
    Version::V61,
    Version::V6,
    Version::V5,
    Version::V4,
    Version::V2,
    Version::V1,
];

/// Bytes of an Ethernet header.
pub const ETHERNET_HEADER_LEN: u32 = 14;
/// Bytes of an inline 802.1Q tag a frame may carry.
pub const VLAN_TAG_LEN: u32 = 4;
/// The MTU unless configured otherwise.
pub const DEFAULT_MTU: u32 = 1500;
/// The smallest MTU the host may report (Linux `ETH_MIN_MTU`).
pub const MIN_MTU: u32 = 68;
/// Received frames kept for [`Netvsc::poll_event`]; more are dropped
/// and counted.
pub const MAX_QUEUED_FRAMES: usize = 256;
/// Send-buffer sections used at most (Linux's default buffer has 170).
pub const MAX_SEND_SECTIONS: u32 = 4096;

/// What the OS set up for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetvscConfig {
    /// The receive buffer's GPADL handle.
    pub receive_gpadl: u32,
    /// The receive buffer's bytes (a whole number of pages).
    pub receive_len: u32,
    /// The send buffer's GPADL handle.
    pub send_gpadl: u32,
    /// The send buffer's bytes.
    pub send_len: u32,
    /// MTU without the Ethernet header.
    pub mtu: u32,
    /// The RNDIS packet filter to set (`rndis::packet_filter` bits).
    pub packet_filter: u32,
}

impl NetvscConfig {
    /// Buffers by GPADL handle and length, MTU 1500, and the packet filter
    /// Linux sets when the interface opens (directed, broadcast, all
    /// multicast).
    pub fn new(receive_gpadl: u32, receive_len: u32, send_gpadl: u32, send_len: u32) -> Self {
        Self {
            receive_gpadl,
            receive_len,
            send_gpadl,
            send_len,
            mtu: DEFAULT_MTU,
            packet_filter: wire::packet_filter::LINUX_OPEN,
        }
    }
}

/// The buffers' bytes, as the OS reaches them: offset 0 is the first byte
/// of each buffer.
#[derive(Clone, Copy)]
pub struct Buffers<'a> {
    /// The receive buffer (read only by the client).
    pub receive: &'a dyn SharedMemory,
    /// The send buffer (written only by the client).
    pub send: &'a dyn SharedMemory,
}

/// What went wrong. [`Self::culprit`] says whose fault it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetvscError {
    // -- the caller's ----------------------------------------------------
    /// [`Netvsc::start`] called twice.
    AlreadyStarted,
    /// A frame sent before the NIC is up (or after bring-up failed).
    NotReady,
    /// A frame shorter than an Ethernet header, longer than the MTU allows
    /// or than a send section holds.
    FrameLength {
        /// Its bytes.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// Every send section is in flight: retry after completions.
    NoSendSection,
    /// A buffer the OS lent is smaller than it declared.
    Memory(OutOfBounds),
    // -- the host's ------------------------------------------------------
    /// A packet with a malformed descriptor.
    BadPacket(PacketError),
    /// Fewer bytes than the descriptor claims.
    Truncated {
        /// Bytes given.
        len: usize,
        /// Bytes the descriptor claims.
        need: usize,
    },
    /// A packet type netvsp never sends (GPA-direct).
    UnexpectedPacketType(u16),
    /// A completion naming nothing in flight.
    UnknownTransaction(u64),
    /// Bytes that are no NVSP message.
    Nvsp(ParseError),
    /// An NVSP message that does not answer what it completes, or that the
    /// host may not send.
    UnexpectedMessage(MessageType),
    /// A setup step answered with a failure status.
    Refused {
        /// The answer.
        message: MessageType,
        /// Its status.
        status: Status,
    },
    /// The host accepted none of [`VERSIONS`].
    NoCommonVersion,
    /// A receive or send buffer layout Linux refuses (`netvsc_init_buf`).
    BadLayout(&'static str),
    /// A transfer-page packet that does not parse.
    TransferPage(TransferPageError),
    /// Transfer pages before the receive buffer was accepted.
    NoReceiveBuffer,
    /// Transfer pages naming another buffer than the receive buffer.
    PagesetId(u16),
    /// A range past the receive buffer.
    RangeOutOfBounds {
        /// Its offset.
        offset: u32,
        /// Its bytes.
        len: u32,
        /// The buffer's bytes.
        buffer: u32,
    },
    /// A range longer than a receive section.
    RangeTooLong {
        /// Its bytes.
        len: u32,
        /// Bytes per section.
        section: u32,
    },
    /// RNDIS bytes that do not parse.
    Rndis(wire::ParseError),
    /// An RNDIS message the client does not take (now).
    UnexpectedRndis(wire::MessageType),
    /// An RNDIS response for no outstanding request.
    RndisRequestId(u32),
    /// An RNDIS request answered with a failure status.
    RndisRefused(wire::Status),
    /// An RNDIS answer whose contents are wrong.
    BadRndisAnswer(&'static str),
    /// A MAC address that is zero or multicast.
    BadMac([u8; 6]),
    /// A received frame shorter than an Ethernet header or longer than the
    /// MTU allows.
    ReceivedFrameLength(usize),
}

impl NetvscError {
    /// Whose fault it is.
    pub fn culprit(&self) -> Culprit {
        match self {
            Self::AlreadyStarted
            | Self::NotReady
            | Self::FrameLength { .. }
            | Self::NoSendSection
            | Self::Memory(_) => Culprit::Caller,
            _ => Culprit::Host,
        }
    }
}

impl From<wire::ParseError> for NetvscError {
    fn from(e: wire::ParseError) -> Self {
        Self::Rndis(e)
    }
}

impl fmt::Display for NetvscError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyStarted => f.write_str("netvsc: already started"),
            Self::NotReady => f.write_str("netvsc: frame sent before the NIC is up"),
            Self::FrameLength { len, max } => {
                write!(f, "netvsc: caller's frame of {len} bytes (at most {max})")
            }
            Self::NoSendSection => f.write_str("netvsc: every send section is in flight"),
            Self::Memory(e) => write!(f, "netvsc: caller's buffer too small: {e:?}"),
            Self::BadPacket(e) => write!(f, "netvsc: host sent a malformed packet: {e:?}"),
            Self::Truncated { len, need } => write!(f, "netvsc: host packet of {len} bytes claims {need}"),
            Self::UnexpectedPacketType(t) => write!(f, "netvsc: host sent packet type {t}"),
            Self::UnknownTransaction(id) => write!(f, "netvsc: host completed unknown transaction {id:#x}"),
            Self::Nvsp(e) => write!(f, "netvsc: {e}"),
            Self::UnexpectedMessage(m) => write!(f, "netvsc: host sent unexpected {m:?}"),
            Self::Refused { message, status } => {
                write!(f, "netvsc: host answered {message:?} with {status:?}")
            }
            Self::NoCommonVersion => f.write_str("netvsc: host accepted no NVSP version"),
            Self::BadLayout(why) => write!(f, "netvsc: host's buffer layout: {why}"),
            Self::TransferPage(e) => write!(f, "netvsc: host's transfer-page packet: {e:?}"),
            Self::NoReceiveBuffer => {
                f.write_str("netvsc: host sent transfer pages before the receive buffer")
            }
            Self::PagesetId(id) => write!(f, "netvsc: host named page set {id:#x}"),
            Self::RangeOutOfBounds { offset, len, buffer } => write!(
                f,
                "netvsc: host range [{offset}, +{len}) past the {buffer}-byte receive buffer"
            ),
            Self::RangeTooLong { len, section } => {
                write!(f, "netvsc: host range of {len} bytes, sections hold {section}")
            }
            Self::Rndis(e) => write!(f, "netvsc: {e}"),
            Self::UnexpectedRndis(t) => write!(f, "netvsc: host sent unexpected RNDIS {t:?}"),
            Self::RndisRequestId(id) => write!(f, "netvsc: host answered unknown RNDIS request {id}"),
            Self::RndisRefused(s) => write!(f, "netvsc: host refused an RNDIS request: {s:?}"),
            Self::BadRndisAnswer(why) => write!(f, "netvsc: host's RNDIS answer: {why}"),
            Self::BadMac(m) => write!(f, "netvsc: host's MAC {m:02x?} is not a unicast address"),
            Self::ReceivedFrameLength(n) => write!(f, "netvsc: host delivered a {n}-byte frame"),
        }
    }
}

/// What the OS hears from [`Netvsc::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The NIC is up: frames may be sent and will be received.
    Ready {
        /// The agreed NVSP version.
        version: Version,
        /// The permanent MAC address.
        mac: [u8; 6],
        /// The MTU (the smaller of ours and the host's).
        mtu: u32,
        /// Whether the link is up.
        link_up: bool,
    },
    /// Bring-up failed (the client stays unusable).
    InitFailed(NetvscError),
    /// A frame arrived (Ethernet header first).
    Frame(Vec<u8>),
    /// The link went up (`true`) or down (an RNDIS status indication).
    Link(bool),
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetvscStats {
    /// Frames handed to the host.
    pub tx_frames: u64,
    /// Sends the host completed with a failure status.
    pub tx_failed: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// Frames dropped (before the NIC was up, or the event queue was full).
    pub rx_dropped: u64,
    /// Transfer-page packets completed.
    pub receive_completions: u64,
    /// Host packets refused as protocol violations.
    pub host_errors: u64,
}

/// RNDIS bring-up steps after `INITIALIZE` (`rndis_filter_device_add`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Initialize,
    FrameSize,
    Mac,
    Link,
    Filter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Waiting for the answer to `VERSIONS[i]`.
    Init(usize),
    ReceiveBuffer,
    SendBuffer,
    Rndis(Step),
    Ready,
    Failed,
}

/// What a transaction id in flight stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Init(Version),
    ReceiveBuffer,
    SendBuffer,
    Rndis { section: u32, control: bool },
}

/// One netvsc channel's guest side.
#[derive(Debug)]
pub struct Netvsc {
    config: NetvscConfig,
    phase: Phase,
    version: Option<Version>,
    /// (bytes per section, sections) of the receive buffer.
    receive_sections: Option<(u32, u32)>,
    send_section_size: u32,
    free_sections: VecDeque<u32>,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    rndis_request: Option<u32>,
    next_rndis_id: u32,
    mac: [u8; 6],
    mtu: u32,
    link_up: bool,
    outbox: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    queued_frames: usize,
    stats: NetvscStats,
}

/// The bytes of an in-band packet carrying `payload`.
fn inband(id: u64, payload: &[u8], completion: bool) -> Vec<u8> {
    let flags = if completion { FLAG_COMPLETION_REQUESTED } else { 0 };
    let d = Descriptor::new(PacketType::DATA_INBAND, 16, payload.len(), flags, id);
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(d.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// The information buffer of a QUERY_COMPLETE (`rndis_filter_query_device`:
/// `info_buf_offset` counts from the request id and is at least 16 when
/// there is an answer).
fn query_info(body: &[u8]) -> Result<&[u8], NetvscError> {
    let q: wire::QueryComplete = wire::read_body(wire::MessageType::QUERY_COMPLETE, body)?;
    let status = wire::Status(q.status.get());
    if status != wire::Status::SUCCESS {
        return Err(NetvscError::RndisRefused(status));
    }
    let (offset, len) = (
        q.information_buffer_offset.get(),
        q.information_buffer_length.get(),
    );
    if len > 0 && (offset as usize) < size_of::<wire::QueryComplete>() {
        return Err(NetvscError::BadRndisAnswer(
            "information buffer inside the header",
        ));
    }
    Ok(wire::sub_range("query information buffer", body, offset, len)?)
}

fn info_u32(info: &[u8]) -> Result<u32, NetvscError> {
    let b: [u8; 4] = info
        .try_into()
        .map_err(|_| NetvscError::BadRndisAnswer("not a u32"))?;
    Ok(u32::from_le_bytes(b))
}

impl Netvsc {
    /// A client for the buffers and settings of `config`, not started.
    pub fn new(config: NetvscConfig) -> Self {
        Self {
            mtu: config.mtu,
            config,
            phase: Phase::Idle,
            version: None,
            receive_sections: None,
            send_section_size: 0,
            free_sections: VecDeque::new(),
            pending: BTreeMap::new(),
            next_id: 1,
            rndis_request: None,
            next_rndis_id: 1,
            mac: [0; 6],
            link_up: false,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            queued_frames: 0,
            stats: NetvscStats::default(),
        }
    }

    /// Begin bring-up (queues the first `INIT`). Call once, after the
    /// channel is open and both GPADLs exist.
    pub fn start(&mut self) -> Result<(), NetvscError> {
        if self.phase != Phase::Idle {
            return Err(NetvscError::AlreadyStarted);
        }
        self.propose(0);
        Ok(())
    }

    /// Whether the NIC is up.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// Whether bring-up failed.
    pub fn has_failed(&self) -> bool {
        self.phase == Phase::Failed
    }

    /// The agreed NVSP version.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// The permanent MAC address, once the host told it.
    pub fn mac(&self) -> Option<[u8; 6]> {
        matches!(self.phase, Phase::Rndis(Step::Link | Step::Filter) | Phase::Ready).then_some(self.mac)
    }

    /// The MTU in use.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Whether the link is up.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Send sections not in flight.
    pub fn free_send_sections(&self) -> usize {
        self.free_sections.len()
    }

    /// The counters.
    pub fn stats(&self) -> NetvscStats {
        self.stats
    }

    /// The next packet to write into the guest-to-host ring (whole,
    /// descriptor first); keep it and retry if the ring is full.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front()?;
        if matches!(e, Event::Frame(_)) {
            self.queued_frames -= 1;
        }
        Some(e)
    }

    fn allocate_id(&mut self) -> u64 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    /// Queue an NVSP message; with `pending`, completion requested.
    fn send_nvsp(&mut self, msg: &[u8], pending: Option<Pending>) {
        let packet = match pending {
            Some(p) => {
                let id = self.allocate_id();
                self.pending.insert(id, p);
                inband(id, msg, true)
            }
            None => inband(0, msg, false),
        };
        self.outbox.push_back(packet);
    }

    fn propose(&mut self, index: usize) {
        let v = VERSIONS[index];
        self.phase = Phase::Init(index);
        self.send_nvsp(&nvsp_protocol::init(v), Some(Pending::Init(v)));
    }

    fn fail_init(&mut self, e: NetvscError) -> NetvscError {
        if !matches!(self.phase, Phase::Ready | Phase::Failed) {
            self.phase = Phase::Failed;
            self.events.push_back(Event::InitFailed(e));
        }
        e
    }

    /// Put `msg` in a free send section and queue the `SEND_RNDIS_PACKET`
    /// naming it (`netvsc_copy_to_send_buf`, `netvsc_send_pkt`).
    fn send_rndis(&mut self, msg: &[u8], control: bool, buffers: &Buffers<'_>) -> Result<(), NetvscError> {
        let max = self.send_section_size as usize;
        if msg.len() > max {
            return Err(NetvscError::FrameLength { len: msg.len(), max });
        }
        let section = *self.free_sections.front().ok_or(NetvscError::NoSendSection)?;
        let offset = section as u64 * self.send_section_size as u64;
        buffers.send.write_at(offset, msg).map_err(NetvscError::Memory)?;
        self.free_sections.pop_front();
        let channel_type = if control {
            CHANNEL_TYPE_CONTROL
        } else {
            CHANNEL_TYPE_DATA
        };
        // `msg.len() <= send_section_size`, a u32.
        let m = nvsp_protocol::send_rndis_packet_in_section(channel_type, Some((section, msg.len() as u32)));
        self.send_nvsp(&m, Some(Pending::Rndis { section, control }));
        Ok(())
    }

    /// Send the next RNDIS bring-up request.
    fn control(&mut self, step: Step, buffers: &Buffers<'_>) -> Result<(), NetvscError> {
        let rid = self.next_rndis_id;
        self.next_rndis_id = self.next_rndis_id.wrapping_add(1).max(1);
        let query = |oid| wire::oid_request(wire::MessageType::QUERY, rid, oid, &[]);
        let msg = match step {
            Step::Initialize => wire::initialize_request(rid),
            Step::FrameSize => query(Oid::GEN_MAXIMUM_FRAME_SIZE),
            Step::Mac => query(Oid::OID_802_3_PERMANENT_ADDRESS),
            Step::Link => query(Oid::GEN_MEDIA_CONNECT_STATUS),
            Step::Filter => wire::oid_request(
                wire::MessageType::SET,
                rid,
                Oid::GEN_CURRENT_PACKET_FILTER,
                &self.config.packet_filter.to_le_bytes(),
            ),
        };
        self.phase = Phase::Rndis(step);
        self.rndis_request = Some(rid);
        self.send_rndis(&msg, true, buffers)
    }

    /// Send one Ethernet frame (`netvsc_start_xmit`): an RNDIS `PACKET`
    /// in a send section. The section is busy until the host completes it.
    pub fn send_frame(&mut self, frame: &[u8], buffers: &Buffers<'_>) -> Result<(), NetvscError> {
        if self.phase != Phase::Ready {
            return Err(NetvscError::NotReady);
        }
        let max = self.max_frame(frame);
        if frame.len() < ETHERNET_HEADER_LEN as usize || frame.len() > max {
            return Err(NetvscError::FrameLength {
                len: frame.len(),
                max,
            });
        }
        self.send_rndis(&wire::packet_message(frame, &[]), false, buffers)?;
        self.stats.tx_frames += 1;
        Ok(())
    }

    /// MTU + header, + 4 for a frame carrying an inline 802.1Q tag.
    fn max_frame(&self, frame: &[u8]) -> usize {
        let tagged = frame.get(12..14) == Some(&[0x81, 0x00][..]);
        (self.mtu + ETHERNET_HEADER_LEN + if tagged { VLAN_TAG_LEN } else { 0 }) as usize
    }

    /// Take one packet the host sent (whole, descriptor first). A
    /// transfer-page packet is completed even when it is refused (with
    /// FAIL, as Linux's `netvsc_receive` does for a bad range), so the host
    /// gets its receive section back.
    pub fn handle(&mut self, packet: &[u8], buffers: &Buffers<'_>) -> Result<(), NetvscError> {
        let r = self.dispatch(packet, buffers);
        if let Err(e) = &r
            && e.culprit() == Culprit::Host
        {
            self.stats.host_errors += 1;
        }
        r
    }

    fn dispatch(&mut self, packet: &[u8], buffers: &Buffers<'_>) -> Result<(), NetvscError> {
        let (d, _) = Descriptor::read_from_prefix(packet).map_err(|_| NetvscError::Truncated {
            len: packet.len(),
            need: 16,
        })?;
        let kind = d.validate().map_err(NetvscError::BadPacket)?;
        let range = d.payload();
        let payload = packet.get(range.clone()).ok_or(NetvscError::Truncated {
            len: packet.len(),
            need: range.end,
        })?;
        match kind {
            PacketType::COMPLETION => self.completion(d.transaction_id, payload, buffers),
            PacketType::DATA_USING_XFER_PAGES => {
                let r = self.receive(packet, buffers);
                if d.flags & FLAG_COMPLETION_REQUESTED != 0 {
                    // `enq_receive_complete` → `send_recv_completions`: an
                    // 8-byte SEND_RNDIS_PACKET_COMPLETE, same id.
                    let status = if r.is_ok() { Status::SUCCESS } else { Status::FAIL };
                    let m = nvsp_protocol::send_rndis_packet_complete(status);
                    let c = Descriptor::new(PacketType::COMPLETION, 16, 8, 0, d.transaction_id);
                    let mut out = c.as_bytes().to_vec();
                    out.extend_from_slice(&m[..8]);
                    self.outbox.push_back(out);
                    self.stats.receive_completions += 1;
                }
                r
            }
            // `netvsc_receive_inband`: the vRSS table and VF association,
            // neither of which this client uses.
            PacketType::DATA_INBAND => match Message::parse(payload) {
                Ok(Message::SendIndirectionTable(_) | Message::SendVfAssociation(_)) => Ok(()),
                Ok(m) => Err(NetvscError::UnexpectedMessage(m.kind())),
                Err(e) => Err(NetvscError::Nvsp(e)),
            },
            other => Err(NetvscError::UnexpectedPacketType(other.0)),
        }
    }

    /// An NVSP completion (`netvsc_send_completion`).
    fn completion(&mut self, id: u64, payload: &[u8], buffers: &Buffers<'_>) -> Result<(), NetvscError> {
        let pending = self
            .pending
            .remove(&id)
            .ok_or(NetvscError::UnknownTransaction(id))?;
        if let Pending::Rndis { section, .. } = pending {
            // Whatever the host says, it is done with the section.
            self.free_sections.push_back(section);
        }
        let during_setup = !matches!(pending, Pending::Rndis { control: false, .. });
        let r = self.completed(pending, payload, buffers);
        match r {
            Err(e) if during_setup => Err(self.fail_init(e)),
            r => r,
        }
    }

    fn completed(
        &mut self,
        pending: Pending,
        payload: &[u8],
        buffers: &Buffers<'_>,
    ) -> Result<(), NetvscError> {
        let msg = Message::parse(payload).map_err(NetvscError::Nvsp)?;
        let refused = |message, status: u32| NetvscError::Refused {
            message,
            status: Status(status),
        };
        match (pending, msg) {
            (Pending::Init(v), Message::InitComplete(c)) => {
                let Phase::Init(i) = self.phase else {
                    return Err(NetvscError::UnexpectedMessage(MessageType::INIT_COMPLETE));
                };
                if c.status.get() != Status::SUCCESS.0 {
                    // `negotiate_nvsp_ver` failed: try the next older one.
                    if i + 1 < VERSIONS.len() {
                        self.propose(i + 1);
                        return Ok(());
                    }
                    return Err(NetvscError::NoCommonVersion);
                }
                self.version = Some(v);
                if v != Version::V1 {
                    let mtu = self.config.mtu.saturating_add(ETHERNET_HEADER_LEN);
                    self.send_nvsp(&nvsp_protocol::send_ndis_config(mtu, 0), None);
                }
                let (major, minor) = if v.0 <= Version::V4.0 { (6, 1) } else { (6, 30) };
                self.send_nvsp(&nvsp_protocol::send_ndis_version(major, minor), None);
                self.phase = Phase::ReceiveBuffer;
                let m = nvsp_protocol::send_buffer(true, self.config.receive_gpadl, LINUX_RECEIVE_BUFFER_ID);
                self.send_nvsp(&m, Some(Pending::ReceiveBuffer));
                Ok(())
            }
            (Pending::ReceiveBuffer, Message::SendReceiveBufferComplete(c)) => {
                if c.status.get() != Status::SUCCESS.0 {
                    return Err(refused(MessageType::SEND_RECEIVE_BUFFER_COMPLETE, c.status.get()));
                }
                // `netvsc_init_buf`: one section at offset 0, sections of at
                // least NETVSC_MTU_MIN, all inside the buffer.
                let s = c.section;
                let (size, count) = (s.sub_allocation_size.get(), s.num_sub_allocations.get());
                if c.num_sections.get() != 1 || s.offset.get() != 0 {
                    return Err(NetvscError::BadLayout("not one receive section at offset 0"));
                }
                if size < MIN_SECTION_SIZE
                    || count == 0
                    || size as u64 * count as u64 > self.config.receive_len as u64
                {
                    return Err(NetvscError::BadLayout("receive sections do not fit the buffer"));
                }
                self.receive_sections = Some((size, count));
                self.phase = Phase::SendBuffer;
                let m = nvsp_protocol::send_buffer(false, self.config.send_gpadl, LINUX_SEND_BUFFER_ID);
                self.send_nvsp(&m, Some(Pending::SendBuffer));
                Ok(())
            }
            (Pending::SendBuffer, Message::SendSendBufferComplete(c)) => {
                if c.status.get() != Status::SUCCESS.0 {
                    return Err(refused(MessageType::SEND_SEND_BUFFER_COMPLETE, c.status.get()));
                }
                let size = c.section_size.get();
                if size < MIN_SECTION_SIZE || size > self.config.send_len {
                    return Err(NetvscError::BadLayout("send section size"));
                }
                self.send_section_size = size;
                let count = (self.config.send_len / size).min(MAX_SEND_SECTIONS);
                self.free_sections = (0..count).collect();
                self.control(Step::Initialize, buffers)
            }
            (Pending::Rndis { control, .. }, Message::SendRndisPacketComplete(c)) => {
                let status = c.status.get();
                if status == Status::SUCCESS.0 {
                    return Ok(());
                }
                if control {
                    // The request will never be answered.
                    return Err(refused(MessageType::SEND_RNDIS_PACKET_COMPLETE, status));
                }
                self.stats.tx_failed += 1;
                Ok(())
            }
            (_, m) => Err(NetvscError::UnexpectedMessage(m.kind())),
        }
    }

    /// A transfer-page packet (`netvsc_receive`): every range, even past a
    /// bad one; the first error is returned.
    fn receive(&mut self, packet: &[u8], buffers: &Buffers<'_>) -> Result<(), NetvscError> {
        let t = transfer_page::parse(packet).map_err(NetvscError::TransferPage)?;
        match Message::parse(t.payload) {
            Ok(Message::SendRndisPacket(_)) => {}
            Ok(m) => return Err(NetvscError::UnexpectedMessage(m.kind())),
            Err(e) => return Err(NetvscError::Nvsp(e)),
        }
        let id = t.header.pageset_id.get();
        if id != LINUX_RECEIVE_BUFFER_ID {
            return Err(NetvscError::PagesetId(id));
        }
        let (section, _) = self.receive_sections.ok_or(NetvscError::NoReceiveBuffer)?;
        let mut first = None;
        for r in &t.ranges {
            let (offset, len) = (r.byte_offset.get(), r.byte_count.get());
            let res = if offset as u64 + len as u64 > self.config.receive_len as u64 {
                Err(NetvscError::RangeOutOfBounds {
                    offset,
                    len,
                    buffer: self.config.receive_len,
                })
            } else if len > section {
                Err(NetvscError::RangeTooLong { len, section })
            } else {
                let mut bytes = alloc::vec![0u8; len as usize];
                match buffers.receive.read_at(offset as u64, &mut bytes) {
                    Ok(()) => self.rndis_message(&bytes, buffers),
                    Err(e) => Err(NetvscError::Memory(e)),
                }
            };
            if let Err(e) = res {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// One RNDIS message from the host (`rndis_filter_receive`).
    fn rndis_message(&mut self, bytes: &[u8], buffers: &Buffers<'_>) -> Result<(), NetvscError> {
        let (header, body, _) = wire::split_message(bytes)?;
        let kind = wire::MessageType(header.message_type.get());
        match kind {
            wire::MessageType::PACKET => {
                // `rndis_filter_receive_data`: the frame within the message.
                let p: wire::Packet = wire::read_body(kind, body)?;
                let frame = wire::sub_range("frame", body, p.data_offset.get(), p.data_length.get())?;
                if frame.len() < ETHERNET_HEADER_LEN as usize || frame.len() > self.max_frame(frame) {
                    return Err(NetvscError::ReceivedFrameLength(frame.len()));
                }
                if self.phase != Phase::Ready || self.queued_frames >= MAX_QUEUED_FRAMES {
                    self.stats.rx_dropped += 1;
                    return Ok(());
                }
                self.queued_frames += 1;
                self.stats.rx_frames += 1;
                self.events.push_back(Event::Frame(frame.to_vec()));
                Ok(())
            }
            wire::MessageType::INITIALIZE_COMPLETE
            | wire::MessageType::QUERY_COMPLETE
            | wire::MessageType::SET_COMPLETE => self.response(kind, body, bytes.len(), buffers),
            wire::MessageType::INDICATE_STATUS => {
                // `netvsc_linkstatus_callback`.
                let s: wire::IndicateStatus = wire::read_body(kind, body)?;
                let up = match wire::Status(s.status.get()) {
                    wire::Status::MEDIA_CONNECT => true,
                    wire::Status::MEDIA_DISCONNECT => false,
                    _ => return Ok(()),
                };
                if self.link_up != up {
                    self.link_up = up;
                    self.events.push_back(Event::Link(up));
                }
                Ok(())
            }
            other => Err(NetvscError::UnexpectedRndis(other)),
        }
    }

    /// The answer to the outstanding bring-up request
    /// (`rndis_filter_receive_response`: matched on the request id).
    fn response(
        &mut self,
        kind: wire::MessageType,
        body: &[u8],
        len: usize,
        buffers: &Buffers<'_>,
    ) -> Result<(), NetvscError> {
        let Phase::Rndis(step) = self.phase else {
            return Err(NetvscError::UnexpectedRndis(kind));
        };
        let expected = match step {
            Step::Initialize => wire::MessageType::INITIALIZE_COMPLETE,
            Step::Filter => wire::MessageType::SET_COMPLETE,
            _ => wire::MessageType::QUERY_COMPLETE,
        };
        if kind != expected {
            return Err(NetvscError::UnexpectedRndis(kind));
        }
        let rid = body
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(wire::ParseError::Short {
                kind,
                need: 4,
                have: body.len(),
            })?;
        if Some(rid) != self.rndis_request {
            return Err(NetvscError::RndisRequestId(rid));
        }
        self.rndis_request = None;
        let r = self.step_done(step, kind, body, len, buffers);
        r.map_err(|e| self.fail_init(e))
    }

    fn step_done(
        &mut self,
        step: Step,
        kind: wire::MessageType,
        body: &[u8],
        len: usize,
        buffers: &Buffers<'_>,
    ) -> Result<(), NetvscError> {
        if len > wire::LINUX_MAX_RESPONSE_SIZE {
            return Err(NetvscError::BadRndisAnswer("response longer than Linux accepts"));
        }
        match step {
            Step::Initialize => {
                let c: wire::InitializeComplete = wire::read_body(kind, body)?;
                let status = wire::Status(c.status.get());
                if status != wire::Status::SUCCESS {
                    return Err(NetvscError::RndisRefused(status));
                }
                self.control(Step::FrameSize, buffers)
            }
            Step::FrameSize => {
                let mtu = info_u32(query_info(body)?)?;
                if mtu < MIN_MTU {
                    return Err(NetvscError::BadRndisAnswer("maximum frame size below 68"));
                }
                self.mtu = self.config.mtu.min(mtu);
                self.control(Step::Mac, buffers)
            }
            Step::Mac => {
                let info = query_info(body)?;
                let mac: [u8; 6] = info
                    .try_into()
                    .map_err(|_| NetvscError::BadRndisAnswer("MAC address not 6 bytes"))?;
                // netvsc_probe: `is_valid_ether_addr`.
                if mac == [0; 6] || mac[0] & 1 != 0 {
                    return Err(NetvscError::BadMac(mac));
                }
                self.mac = mac;
                self.control(Step::Link, buffers)
            }
            Step::Link => {
                self.link_up = info_u32(query_info(body)?)? == wire::MEDIA_STATE_CONNECTED;
                self.control(Step::Filter, buffers)
            }
            Step::Filter => {
                let c: wire::RequestComplete = wire::read_body(kind, body)?;
                let status = wire::Status(c.status.get());
                if status != wire::Status::SUCCESS {
                    return Err(NetvscError::RndisRefused(status));
                }
                self.phase = Phase::Ready;
                self.events.push_back(Event::Ready {
                    version: self.version.unwrap_or(Version::V1),
                    mac: self.mac,
                    mtu: self.mtu,
                    link_up: self.link_up,
                });
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a scripted host: refused or malformed bring-up answers end
    //! bring-up with a host error; a real netvsp is in `tests/netvsc.rs`.
    use super::*;
    use vmbus::memory::AtomicMemory;

    fn comp(id: u64, msg: &[u8]) -> Vec<u8> {
        let mut p = Descriptor::new(PacketType::COMPLETION, 16, msg.len(), 0, id)
            .as_bytes()
            .to_vec();
        p.extend_from_slice(msg);
        p.resize(p.len().next_multiple_of(8), 0);
        p
    }

    /// The transaction id of the next queued packet.
    fn next_id(c: &mut Netvsc) -> u64 {
        let p = c.poll_transmit().expect("a packet");
        u64::from_le_bytes(p[8..16].try_into().unwrap())
    }

    #[test]
    fn refused_versions_and_layouts() {
        let mem = AtomicMemory::new(8192);
        let b = Buffers {
            receive: &mem,
            send: &mem,
        };
        let mut c = Netvsc::new(NetvscConfig::new(1, 8192, 2, 8192));
        c.start().unwrap();
        assert_eq!(c.start(), Err(NetvscError::AlreadyStarted));
        for _ in VERSIONS {
            let id = next_id(&mut c);
            let r = c.handle(&comp(id, &nvsp_protocol::init_complete(None, 34)), &b);
            assert!(r.is_ok() || r == Err(NetvscError::NoCommonVersion));
        }
        assert!(c.has_failed());
        assert_eq!(
            c.poll_event(),
            Some(Event::InitFailed(NetvscError::NoCommonVersion))
        );

        // A receive section layout Linux refuses: larger than the buffer.
        let mut c = Netvsc::new(NetvscConfig::new(1, 8192, 2, 8192));
        c.start().unwrap();
        let id = next_id(&mut c);
        c.handle(
            &comp(id, &nvsp_protocol::init_complete(Some(Version::V61), 34)),
            &b,
        )
        .unwrap();
        assert_eq!(c.version(), Some(Version::V61));
        // NDIS config and version: no completion wanted.
        assert_eq!(next_id(&mut c), 0);
        assert_eq!(next_id(&mut c), 0);
        let id = next_id(&mut c);
        let section = nvsp_protocol::ReceiveBufferSection {
            offset: 0.into(),
            sub_allocation_size: 1806.into(),
            num_sub_allocations: 5.into(),
            end_offset: (1806 * 5).into(),
        };
        let e = c
            .handle(
                &comp(id, &nvsp_protocol::send_receive_buffer_complete(Some(section))),
                &b,
            )
            .unwrap_err();
        assert!(matches!(e, NetvscError::BadLayout(_)));
        assert_eq!(e.culprit(), Culprit::Host);
        assert!(c.has_failed());
        // A second answer for the same transaction is unknown.
        assert_eq!(
            c.handle(&comp(id, &nvsp_protocol::send_receive_buffer_complete(None)), &b),
            Err(NetvscError::UnknownTransaction(id))
        );
        assert_eq!(c.stats().host_errors, 2);
    }
}
