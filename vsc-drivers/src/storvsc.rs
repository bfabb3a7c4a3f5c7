//! The guest side of the Hyper-V synthetic SCSI controller (storvsc),
//! sans-IO: the OS writes the packets [`Storvsc::poll_transmit`] hands it
//! into the channel's guest-to-host ring, feeds every packet it reads from
//! the host-to-guest ring (whole, descriptor first, as
//! `vmbus::ring::Reader::read` returns it) to [`Storvsc::handle`], and
//! takes what happened from [`Storvsc::poll_event`]. The client owns no
//! ring and touches no memory: data moves by GPA-direct ranges (the OS
//! names the page frames of its buffer, the host reads or writes them).
//!
//! It behaves as Linux 6.1 `drivers/scsi/storvsc_drv.c` does:
//!
//! - initialization (`storvsc_channel_init`, `storvsc_execute_vstor_op`):
//!   BEGIN_INITIALIZATION, QUERY_PROTOCOL_VERSION with 6.2, 6.0 and 5.1
//!   in turn until one answers status 0, QUERY_PROPERTIES,
//!   END_INITIALIZATION; each a 64-byte in-band `vstor_packet` with
//!   completion requested and transaction id `VMBUS_RQST_INIT`
//!   ([`INIT_TRANSACTION_ID`]), one at a time;
//! - SCSI requests (`storvsc_queuecommand`, `storvsc_do_io`): an
//!   EXECUTE_SRB in-band when it moves no data, else a GPA-direct packet
//!   (`vmbus_sendpacket_mpb_desc`: one range of `data_transfer_length`
//!   bytes); each with its own small transaction id (Linux's requestor
//!   table), several in flight, completions matched on the full id
//!   (`storvsc_on_channel_callback`);
//! - completions (`storvsc_on_io_completion`, `storvsc_handle_error`):
//!   SRB status and SCSI status, sense data only with AUTOSENSE_VALID and
//!   CHECK CONDITION.
//!
//! The host is untrusted: every completion is checked before use (its
//! length against Linux's `minlen` of 64 bytes, its operation, the sense
//! length against the 20-byte buffer, the bytes moved against the bytes
//! asked for), and a violation is a [`StorvscError`] whose
//! [`StorvscError::culprit`] says it is the host's. Nothing here panics on
//! host data. Wire formats are `storvsp_protocol`'s.

use crate::Culprit;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::fmt;
use storvsp_protocol::gpa::{MAX_GPN, build_gpa_direct};
use storvsp_protocol::{
    ChannelProperties, DataDirection, IntoBytes, NtStatus, Operation, PACKET_HEADER_LEN, PACKET_LEN,
    PacketHeader, ProtocolVersion, ProtocolVersionBody, SENSE_BUFFER_SIZE, ScsiRequest, ScsiStatus,
    SrbStatus, request_packet, scsi_request,
};
use vmbus::packet::{Descriptor, FLAG_COMPLETION_REQUESTED, PacketError, PacketType, pages_spanned};
use zerocopy::FromBytes;

/// The transaction id of every initialization packet: Linux's
/// `VMBUS_RQST_INIT` (U64_MAX − 2, `include/linux/hyperv.h`).
pub const INIT_TRANSACTION_ID: u64 = u64::MAX - 2;

/// The versions proposed, in order (Linux 6.1 `protocol_version[]`).
pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::WIN10,
    ProtocolVersion::WIN8_1,
    ProtocolVersion::WIN8,
];

/// Requests in flight unless configured otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// Bytes of a page (GPA-direct PFNs count these, `HV_HYP_PAGE_SIZE`).
pub const PAGE_SIZE: u32 = 4096;

/// Most pages one request's buffer may span: 1 MiB at any offset. The
/// host reads a packet into a 4 KiB buffer; a GPA-direct EXECUTE_SRB is
/// 16 + 8 + 8 + 8 × pages + 64 bytes (2152 at 257 pages).
pub const MAX_BUFFER_PAGES: usize = 257;

/// Bytes a READ CAPACITY(16) buffer must hold (the parameter data, SBC-3
/// §5.16.2; Linux's sd asks for `RC16_LEN` = 32).
pub const READ_CAPACITY_16_LEN: u32 = 32;
/// Bytes of READ CAPACITY(10) parameter data.
pub const READ_CAPACITY_10_LEN: u32 = 8;
/// Bytes of standard INQUIRY data [`InquiryData::parse`] needs.
pub const INQUIRY_LEN: u32 = 36;

/// Sense keys (SPC-4 §4.5.6) the client names.
pub mod sense_key {
    /// NO SENSE.
    pub const NO_SENSE: u8 = 0x0;
    /// NOT READY.
    pub const NOT_READY: u8 = 0x2;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x7;
}

/// SCSI operation codes the helpers send (SPC-4, SBC-3).
pub mod opcode {
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// READ CAPACITY(10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// SYNCHRONIZE CACHE(10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// READ(16).
    pub const READ_16: u8 = 0x88;
    /// WRITE(16).
    pub const WRITE_16: u8 = 0x8A;
    /// SERVICE ACTION IN(16) (READ CAPACITY(16) is its action 0x10).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// The READ CAPACITY(16) service action.
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
}

/// What went wrong. [`Self::culprit`] says whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorvscError {
    // -- the caller's ----------------------------------------------------
    /// A SCSI request before initialization finished (or after it failed).
    NotReady,
    /// [`Storvsc::start`] called twice.
    AlreadyStarted,
    /// [`Storvsc::create_sub_channels`] for none, more than the host
    /// offers, or while a request is pending.
    SubChannels {
        /// The count asked.
        asked: u16,
        /// What the host announced (0 without multi-channel support).
        offered: u16,
    },
    /// Already [`Storvsc::max_in_flight`] requests in flight.
    TooManyInFlight {
        /// The limit.
        max: usize,
    },
    /// A data buffer that is empty, starts past its first page, lists
    /// other than the pages it spans, or names an unaddressable page.
    BadBuffer(&'static str),
    /// A transfer longer than the host's `max_transfer_bytes`.
    TransferTooLong {
        /// Bytes asked for.
        len: u32,
        /// The limit the host announced.
        max: u32,
    },
    /// A block range whose count is 0, whose block size is not a power of
    /// two in 512..=65536, or that does not match its buffer's length.
    BadBlocks(&'static str),
    /// A CDB that is empty or longer than 16 bytes.
    BadCdb(usize),
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
    /// A packet of a type storvsp never sends (transfer pages, GPA-direct).
    UnexpectedPacketType(u16),
    /// A completion naming no request in flight.
    UnknownTransaction(u64),
    /// A completion shorter than a `vstor_packet` (Linux's `minlen`), or
    /// an in-band packet shorter than its operation.
    ShortPacket {
        /// Payload bytes.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A completion whose operation is not COMPLETE_IO, or an in-band
    /// packet with an operation the host may not send.
    UnexpectedOperation(Operation),
    /// An initialization step answered with a failure status.
    Refused {
        /// The step.
        operation: Operation,
        /// The host's status.
        status: NtStatus,
    },
    /// The host accepted none of [`VERSIONS`] (Linux: "Obsolete Hyper-V
    /// version").
    NoCommonVersion,
    /// Sense data longer than the 20-byte sense buffer.
    SenseLength(u8),
    /// More bytes moved than the request asked for.
    TransferLength {
        /// Bytes asked for.
        requested: u32,
        /// Bytes the host says it moved.
        reported: u32,
    },
    /// Data the host returned that does not parse (capacity, INQUIRY).
    BadData(&'static str),
}

impl StorvscError {
    /// Whose fault it is.
    pub fn culprit(&self) -> Culprit {
        match self {
            Self::NotReady
            | Self::AlreadyStarted
            | Self::TooManyInFlight { .. }
            | Self::BadBuffer(_)
            | Self::TransferTooLong { .. }
            | Self::BadBlocks(_)
            | Self::BadCdb(_)
            | Self::SubChannels { .. } => Culprit::Caller,
            _ => Culprit::Host,
        }
    }
}

impl fmt::Display for StorvscError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotReady => f.write_str("storvsc: SCSI request before initialization finished"),
            Self::AlreadyStarted => f.write_str("storvsc: initialization already started"),
            Self::TooManyInFlight { max } => write!(f, "storvsc: {max} requests already in flight"),
            Self::BadBuffer(why) => write!(f, "storvsc: caller's data buffer {why}"),
            Self::TransferTooLong { len, max } => {
                write!(f, "storvsc: caller asked for {len} bytes, host allows {max}")
            }
            Self::BadBlocks(why) => write!(f, "storvsc: caller's block range {why}"),
            Self::BadCdb(n) => write!(f, "storvsc: caller's CDB has {n} bytes"),
            Self::SubChannels { asked, offered } => write!(
                f,
                "storvsc: {asked} sub-channels asked, the host offers {offered} (or a request is pending)"
            ),
            Self::BadPacket(e) => write!(f, "storvsc: host sent a malformed packet: {e:?}"),
            Self::Truncated { len, need } => {
                write!(f, "storvsc: host packet of {len} bytes claims {need}")
            }
            Self::UnexpectedPacketType(t) => write!(f, "storvsc: host sent packet type {t}"),
            Self::UnknownTransaction(id) => {
                write!(f, "storvsc: host completed unknown transaction {id:#x}")
            }
            Self::ShortPacket { len, need } => {
                write!(f, "storvsc: host sent a {len}-byte vstor packet, {need} needed")
            }
            Self::UnexpectedOperation(op) => write!(f, "storvsc: host sent vstor operation {}", op.0),
            Self::Refused { operation, status } => write!(
                f,
                "storvsc: host refused operation {} with status {:#x}",
                operation.0, status.0
            ),
            Self::NoCommonVersion => f.write_str("storvsc: host accepted no vmstor version"),
            Self::SenseLength(n) => write!(f, "storvsc: host sent {n} sense bytes, at most 20 fit"),
            Self::TransferLength { requested, reported } => write!(
                f,
                "storvsc: host moved {reported} bytes of a {requested}-byte request"
            ),
            Self::BadData(why) => write!(f, "storvsc: host returned bad data: {why}"),
        }
    }
}

/// A request, as the caller knows it (its transaction id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// The guest buffer a request moves data through: `len` bytes starting
/// `offset` bytes into the first of `pfns` (4 KiB page frame numbers, one
/// per page the bytes span).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBuffer<'a> {
    /// Page frame numbers, in buffer order.
    pub pfns: &'a [u64],
    /// Offset into the first page (< 4096).
    pub offset: u32,
    /// Bytes.
    pub len: u32,
}

impl<'a> DataBuffer<'a> {
    /// `len` bytes from `offset` into the first of `pfns`.
    pub fn new(pfns: &'a [u64], offset: u32, len: u32) -> Self {
        Self { pfns, offset, len }
    }

    fn check(&self, max_transfer: u32) -> Result<(), StorvscError> {
        if self.len == 0 {
            return Err(StorvscError::BadBuffer("is empty"));
        }
        let pages = pages_spanned(self.offset, self.len)
            .ok_or(StorvscError::BadBuffer("starts past its first page"))?;
        if pages != self.pfns.len() {
            return Err(StorvscError::BadBuffer("lists other than the pages it spans"));
        }
        if pages > MAX_BUFFER_PAGES {
            return Err(StorvscError::BadBuffer("spans more pages than a packet holds"));
        }
        if self.pfns.iter().any(|&p| p > MAX_GPN) {
            return Err(StorvscError::BadBuffer("names a page past the address space"));
        }
        if self.len > max_transfer {
            return Err(StorvscError::TransferTooLong {
                len: self.len,
                max: max_transfer,
            });
        }
        Ok(())
    }
}

/// A block range for READ(16) / WRITE(16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    /// First logical block.
    pub lba: u64,
    /// Blocks (≥ 1).
    pub count: u32,
    /// Bytes per block (from READ CAPACITY).
    pub block_size: u32,
}

impl Blocks {
    fn check(&self, buffer: &DataBuffer<'_>) -> Result<(), StorvscError> {
        if self.count == 0 {
            return Err(StorvscError::BadBlocks("has no blocks"));
        }
        if !self.block_size.is_power_of_two() || !(512..=65536).contains(&self.block_size) {
            return Err(StorvscError::BadBlocks("has a bad block size"));
        }
        if self.count as u64 * self.block_size as u64 != buffer.len as u64 {
            return Err(StorvscError::BadBlocks("does not match its buffer"));
        }
        Ok(())
    }
}

/// What a request was, for interpreting its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// INQUIRY.
    Inquiry,
    /// READ CAPACITY(16).
    ReadCapacity16,
    /// READ CAPACITY(10) (also what a READ CAPACITY(16) the device
    /// refused completes as).
    ReadCapacity10,
    /// READ(16).
    Read16,
    /// WRITE(16).
    Write16,
    /// SYNCHRONIZE CACHE(10).
    SynchronizeCache,
    /// Any other CDB (its operation code).
    Other(u8),
}

impl Command {
    fn from_cdb(cdb: &[u8]) -> Self {
        match cdb.first().copied().unwrap_or(0) {
            opcode::INQUIRY => Self::Inquiry,
            opcode::READ_CAPACITY_10 => Self::ReadCapacity10,
            opcode::SERVICE_ACTION_IN_16
                if cdb
                    .get(1)
                    .is_some_and(|b| b & 0x1F == opcode::SA_READ_CAPACITY_16) =>
            {
                Self::ReadCapacity16
            }
            opcode::READ_16 => Self::Read16,
            opcode::WRITE_16 => Self::Write16,
            opcode::SYNCHRONIZE_CACHE_10 => Self::SynchronizeCache,
            op => Self::Other(op),
        }
    }
}

/// Sense data the host returned (fixed or descriptor format, normalized
/// as Linux's `scsi_normalize_sense` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key ([`sense_key`]).
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl Sense {
    /// Normalize raw sense bytes; `None` if they are no sense data.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let code = raw.first()? & 0x7F;
        match code {
            // Fixed format: key in byte 2, ASC/ASCQ in 12/13 if the
            // additional length (byte 7) covers them.
            0x70 | 0x71 => {
                let key = raw.get(2)? & 0x0F;
                let extra = *raw.get(7).unwrap_or(&0) as usize;
                let covered = |i: usize| i < 8 + extra;
                let asc = raw.get(12).copied().filter(|_| covered(12)).unwrap_or(0);
                let ascq = raw.get(13).copied().filter(|_| covered(13)).unwrap_or(0);
                Some(Self { key, asc, ascq })
            }
            // Descriptor format: key, ASC, ASCQ in bytes 1..4.
            0x72 | 0x73 => Some(Self {
                key: raw.get(1)? & 0x0F,
                asc: *raw.get(2).unwrap_or(&0),
                ascq: *raw.get(3).unwrap_or(&0),
            }),
            _ => None,
        }
    }
}

/// A SCSI request that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiError {
    /// SRB status, flags stripped.
    pub srb_status: SrbStatus,
    /// SCSI status.
    pub scsi_status: ScsiStatus,
    /// Sense data, when the host marked it valid with CHECK CONDITION.
    pub sense: Option<Sense>,
    /// The NTSTATUS of the `vstor_packet` (informational; Linux ignores it
    /// for SRBs).
    pub nt_status: NtStatus,
}

impl ScsiError {
    /// The sense key, if there is sense data.
    pub fn sense_key(&self) -> Option<u8> {
        self.sense.map(|s| s.key)
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// The device failed it (SRB / SCSI status, sense).
    Scsi(ScsiError),
    /// Its completion broke the protocol (always a host-fault
    /// [`StorvscError`]); the buffer's contents are undefined.
    Host(StorvscError),
}

/// A finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The request.
    pub id: RequestId,
    /// What it was.
    pub command: Command,
    /// Bytes moved (checked to be at most the request's), or why it failed.
    pub result: Result<u32, CommandError>,
}

/// What the host announced in QUERY_PROPERTIES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Properties {
    /// Sub-channels the host can offer ([`Storvsc::create_sub_channels`]).
    pub max_channel_count: u16,
    /// Whether the host supports sub-channels.
    pub multi_channel: bool,
    /// Largest transfer per request.
    pub max_transfer_bytes: u32,
}

/// What the OS hears from [`Storvsc::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Initialization finished.
    Ready {
        /// The agreed vmstor version.
        version: ProtocolVersion,
        /// The channel properties.
        properties: Properties,
    },
    /// Initialization failed (the client stays unusable).
    InitFailed(StorvscError),
    /// A request finished.
    Completed(Completion),
    /// The host said the LUNs changed (ENUMERATE_BUS or REMOVE_DEVICE):
    /// rescan. Reported once until taken, however often the host says it.
    BusChanged,
    /// The host granted this many sub-channels: their offers follow on the
    /// bus (same interface and instance, sub-channel index 1, 2, …); open
    /// each and drive it with [`Storvsc::for_sub_channel`].
    SubChannelsGranted(u16),
    /// The host refused CREATE_SUB_CHANNELS.
    SubChannelsRefused(NtStatus),
}

/// Where initialization is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Begin,
    /// Waiting for the answer to `VERSIONS[i]`.
    Version(usize),
    Properties(ProtocolVersion),
    End(ProtocolVersion, Properties),
    Ready(ProtocolVersion, Properties),
    Failed,
}

/// A request in flight.
#[derive(Debug, Clone)]
struct Inflight {
    command: Command,
    lun: u8,
    requested: u32,
    /// For READ CAPACITY(16): the buffer (pfns, offset), to retry as (10).
    retry: Option<(Vec<u64>, u32)>,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorvscStats {
    /// SCSI requests sent (retries included).
    pub requests: u64,
    /// SCSI requests completed (successfully or not).
    pub completions: u64,
    /// Host packets refused as protocol violations.
    pub host_errors: u64,
}

/// One storvsc channel's guest side.
#[derive(Debug)]
pub struct Storvsc {
    phase: Phase,
    inflight: BTreeMap<u64, Inflight>,
    max_in_flight: usize,
    next_id: u64,
    outbox: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    bus_changed: bool,
    stats: StorvscStats,
    /// A CREATE_SUB_CHANNELS waiting for its answer: the count asked.
    sub_request: Option<u16>,
}

impl Default for Storvsc {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_IN_FLIGHT)
    }
}

/// The bytes of an in-band packet with completion requested.
fn inband(id: u64, payload: &[u8]) -> Vec<u8> {
    let d = Descriptor::new(
        PacketType::DATA_INBAND,
        16,
        payload.len(),
        FLAG_COMPLETION_REQUESTED,
        id,
    );
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(d.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// The bytes of an EXECUTE_SRB: in-band without data, else GPA-direct
/// with one range (`storvsc_do_io`).
fn srb_packet(
    id: u64,
    lun: u8,
    cdb: &[u8],
    direction: DataDirection,
    buffer: Option<&DataBuffer<'_>>,
) -> Vec<u8> {
    let len = buffer.map_or(0, |b| b.len);
    let srb = scsi_request(lun, cdb, direction, len);
    let vstor = request_packet(Operation::EXECUTE_SRB, srb.as_bytes());
    let Some(b) = buffer else {
        return inband(id, &vstor);
    };
    let (after, offset8) = build_gpa_direct(&[(b.offset, b.len, b.pfns)], &vstor);
    let d = Descriptor::new(
        PacketType::DATA_USING_GPA_DIRECT,
        offset8 as usize * 8,
        vstor.len(),
        FLAG_COMPLETION_REQUESTED,
        id,
    );
    let mut out = Vec::with_capacity(16 + after.len());
    out.extend_from_slice(d.as_bytes());
    out.extend_from_slice(&after);
    out
}

/// The payload of a whole packet, after checking its descriptor.
fn split_packet(packet: &[u8]) -> Result<(Descriptor, PacketType, &[u8]), StorvscError> {
    let (d, _) = Descriptor::read_from_prefix(packet).map_err(|_| StorvscError::Truncated {
        len: packet.len(),
        need: 16,
    })?;
    let kind = d.validate().map_err(StorvscError::BadPacket)?;
    let range = d.payload();
    let payload = packet.get(range.clone()).ok_or(StorvscError::Truncated {
        len: packet.len(),
        need: range.end,
    })?;
    Ok((d, kind, payload))
}

/// A COMPLETE_IO `vstor_packet` of at least 64 bytes (Linux drops
/// shorter completions: `storvsc_on_channel_callback`, `minlen`).
fn completion_body(payload: &[u8]) -> Result<(PacketHeader, &[u8]), StorvscError> {
    if payload.len() < PACKET_LEN {
        return Err(StorvscError::ShortPacket {
            len: payload.len(),
            need: PACKET_LEN,
        });
    }
    let (header, body) = PacketHeader::read_from_prefix(payload).map_err(|_| StorvscError::ShortPacket {
        len: payload.len(),
        need: PACKET_HEADER_LEN,
    })?;
    let op = Operation(header.operation.get());
    if op != Operation::COMPLETE_IO {
        return Err(StorvscError::UnexpectedOperation(op));
    }
    Ok((header, body))
}

/// Interpret an SRB completion for a request of `requested` bytes
/// (`storvsc_on_io_completion`, `storvsc_command_completion`).
fn srb_result(payload: &[u8], requested: u32) -> Result<Result<u32, ScsiError>, StorvscError> {
    let (header, body) = completion_body(payload)?;
    let (srb, _) = ScsiRequest::read_from_prefix(body).map_err(|_| StorvscError::ShortPacket {
        len: payload.len(),
        need: PACKET_LEN,
    })?;
    let status = SrbStatus(srb.srb_status);
    let scsi_status = ScsiStatus(srb.scsi_status);
    let moved = srb.data_transfer_length.get();
    if moved > requested {
        return Err(StorvscError::TransferLength {
            requested,
            reported: moved,
        });
    }
    if status.status() == SrbStatus::SUCCESS && scsi_status == ScsiStatus::GOOD {
        return Ok(Ok(moved));
    }
    // Linux copies sense only for CHECK CONDITION with AUTOSENSE_VALID.
    let sense = if status.autosense_valid() && scsi_status == ScsiStatus::CHECK_CONDITION {
        let n = srb.sense_info_length;
        if n as usize > SENSE_BUFFER_SIZE {
            return Err(StorvscError::SenseLength(n));
        }
        Sense::parse(&srb.data[..n as usize])
    } else {
        None
    };
    Ok(Err(ScsiError {
        srb_status: status.status(),
        scsi_status,
        sense,
        nt_status: NtStatus(header.status.get()),
    }))
}

impl Storvsc {
    /// A client allowing `max_in_flight` requests at once (at least 1).
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            phase: Phase::Idle,
            inflight: BTreeMap::new(),
            max_in_flight: max_in_flight.max(1),
            next_id: 1,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            bus_changed: false,
            stats: StorvscStats::default(),
            sub_request: None,
        }
    }

    /// The client of a sub-channel the host offered after
    /// [`Event::SubChannelsGranted`]: ready at once at the primary's
    /// version (Linux `handle_sc_creation` runs no handshake on it).
    pub fn for_sub_channel(version: ProtocolVersion, properties: Properties, max_in_flight: usize) -> Self {
        let mut c = Self::new(max_in_flight);
        c.phase = Phase::Ready(version, properties);
        c
    }

    /// Ask the host for `count` sub-channels (`handle_multichannel_storage`:
    /// CREATE_SUB_CHANNELS with the init transaction id), once ready, when
    /// the host announced multi-channel support and at least `count`.
    pub fn create_sub_channels(&mut self, count: u16) -> Result<(), StorvscError> {
        let Phase::Ready(_, props) = self.phase else {
            return Err(StorvscError::NotReady);
        };
        if count == 0 || !props.multi_channel || count > props.max_channel_count || self.sub_request.is_some()
        {
            return Err(StorvscError::SubChannels {
                asked: count,
                offered: if props.multi_channel {
                    props.max_channel_count
                } else {
                    0
                },
            });
        }
        self.sub_request = Some(count);
        let body = count.to_le_bytes();
        self.outbox.push_back(inband(
            INIT_TRANSACTION_ID,
            &request_packet(Operation::CREATE_SUB_CHANNELS, &body),
        ));
        Ok(())
    }

    /// Begin initialization (queues BEGIN_INITIALIZATION). Call once, after
    /// the channel is open.
    pub fn start(&mut self) -> Result<(), StorvscError> {
        if self.phase != Phase::Idle {
            return Err(StorvscError::AlreadyStarted);
        }
        self.phase = Phase::Begin;
        self.init_step(Operation::BEGIN_INITIALIZATION, &[]);
        Ok(())
    }

    fn init_step(&mut self, op: Operation, body: &[u8]) {
        self.outbox
            .push_back(inband(INIT_TRANSACTION_ID, &request_packet(op, body)));
    }

    fn propose(&mut self, index: usize) {
        let body = ProtocolVersionBody {
            major_minor: VERSIONS[index].0.into(),
            revision: 0.into(),
        };
        self.phase = Phase::Version(index);
        self.init_step(Operation::QUERY_PROTOCOL_VERSION, body.as_bytes());
    }

    /// Whether initialization finished.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready(..))
    }

    /// Whether initialization failed (the client is unusable).
    pub fn has_failed(&self) -> bool {
        self.phase == Phase::Failed
    }

    /// The agreed vmstor version.
    pub fn version(&self) -> Option<ProtocolVersion> {
        match self.phase {
            Phase::Properties(v) | Phase::End(v, _) | Phase::Ready(v, _) => Some(v),
            _ => None,
        }
    }

    /// The host's channel properties, once known.
    pub fn properties(&self) -> Option<Properties> {
        match self.phase {
            Phase::End(_, p) | Phase::Ready(_, p) => Some(p),
            _ => None,
        }
    }

    /// Most requests in flight.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// The counters.
    pub fn stats(&self) -> StorvscStats {
        self.stats
    }

    /// The next packet to write into the guest-to-host ring (whole,
    /// descriptor first). If the ring is full, keep it and write it first
    /// once there is room: order matters during initialization only.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        core::mem::take(&mut self.bus_changed).then_some(Event::BusChanged)
    }

    /// Run any SCSI command: `cdb` (1 to 16 bytes) at `lun` (path 0,
    /// target 0), moving data through `buffer` in `direction` (none:
    /// [`DataDirection::Unspecified`], as Linux sends DMA_NONE commands).
    pub fn execute(
        &mut self,
        lun: u8,
        cdb: &[u8],
        direction: DataDirection,
        buffer: Option<DataBuffer<'_>>,
    ) -> Result<RequestId, StorvscError> {
        let Phase::Ready(_, props) = self.phase else {
            return Err(StorvscError::NotReady);
        };
        if cdb.is_empty() || cdb.len() > 16 {
            return Err(StorvscError::BadCdb(cdb.len()));
        }
        if let Some(b) = &buffer {
            b.check(props.max_transfer_bytes)?;
        }
        if self.inflight.len() >= self.max_in_flight {
            return Err(StorvscError::TooManyInFlight {
                max: self.max_in_flight,
            });
        }
        let direction = if buffer.is_none() {
            DataDirection::Unspecified
        } else {
            direction
        };
        let id = self.allocate_id();
        let command = Command::from_cdb(cdb);
        let retry = match (command, &buffer) {
            (Command::ReadCapacity16, Some(b)) if b.len >= READ_CAPACITY_10_LEN => {
                Some((b.pfns.to_vec(), b.offset))
            }
            _ => None,
        };
        self.outbox
            .push_back(srb_packet(id, lun, cdb, direction, buffer.as_ref()));
        self.inflight.insert(
            id,
            Inflight {
                command,
                lun,
                requested: buffer.map_or(0, |b| b.len),
                retry,
            },
        );
        self.stats.requests += 1;
        Ok(RequestId(id))
    }

    /// Linux's requestor ids are small integers, never 0 (Hyper-V's
    /// unsolicited packets) nor the init id; skip ids in flight.
    fn allocate_id(&mut self) -> u64 {
        loop {
            let id = self.next_id;
            self.next_id = match id.wrapping_add(1) {
                0 => 1,
                n if n >= INIT_TRANSACTION_ID => 1,
                n => n,
            };
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    /// Standard INQUIRY into `buffer` (at most 65535 bytes; parse with
    /// [`InquiryData::parse`]).
    pub fn inquiry(&mut self, lun: u8, buffer: DataBuffer<'_>) -> Result<RequestId, StorvscError> {
        let alloc =
            u16::try_from(buffer.len).map_err(|_| StorvscError::BadBuffer("is too long for INQUIRY"))?;
        let a = alloc.to_be_bytes();
        self.execute(
            lun,
            &[opcode::INQUIRY, 0, 0, a[0], a[1], 0],
            DataDirection::In,
            Some(buffer),
        )
    }

    /// READ CAPACITY(16) into `buffer` (at least
    /// [`READ_CAPACITY_16_LEN`] bytes). A device that refuses it as an
    /// unknown command or field (ILLEGAL REQUEST, ASC 0x20 or 0x24) is
    /// asked READ CAPACITY(10) instead under the same id, as Linux's sd
    /// does (`read_capacity_16`): the completion's [`Command`] says which
    /// answered; parse with [`Capacity::parse`].
    pub fn read_capacity(&mut self, lun: u8, buffer: DataBuffer<'_>) -> Result<RequestId, StorvscError> {
        if buffer.len < READ_CAPACITY_16_LEN {
            return Err(StorvscError::BadBuffer("is shorter than READ CAPACITY(16) data"));
        }
        let mut cdb = [0u8; 16];
        cdb[0] = opcode::SERVICE_ACTION_IN_16;
        cdb[1] = opcode::SA_READ_CAPACITY_16;
        cdb[10..14].copy_from_slice(&buffer.len.to_be_bytes());
        self.execute(lun, &cdb, DataDirection::In, Some(buffer))
    }

    /// READ(16) of `blocks` into `buffer` (exactly their bytes).
    pub fn read(
        &mut self,
        lun: u8,
        blocks: Blocks,
        buffer: DataBuffer<'_>,
    ) -> Result<RequestId, StorvscError> {
        blocks.check(&buffer)?;
        self.execute(
            lun,
            &rw16(opcode::READ_16, blocks),
            DataDirection::In,
            Some(buffer),
        )
    }

    /// WRITE(16) of `blocks` from `buffer` (exactly their bytes).
    pub fn write(
        &mut self,
        lun: u8,
        blocks: Blocks,
        buffer: DataBuffer<'_>,
    ) -> Result<RequestId, StorvscError> {
        blocks.check(&buffer)?;
        self.execute(
            lun,
            &rw16(opcode::WRITE_16, blocks),
            DataDirection::Out,
            Some(buffer),
        )
    }

    /// SYNCHRONIZE CACHE(10) of the whole medium (LBA 0, 0 blocks), as
    /// Linux's sd sends for a flush (`sd_sync_cache`).
    pub fn synchronize_cache(&mut self, lun: u8) -> Result<RequestId, StorvscError> {
        self.execute(
            lun,
            &[opcode::SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            DataDirection::Unspecified,
            None,
        )
    }

    /// Take one packet the host sent (whole, descriptor first). A protocol
    /// violation is an error and changes nothing, except that a request
    /// whose completion was malformed is finished (with
    /// [`CommandError::Host`]) so nobody waits for it forever, and a
    /// malformed answer during initialization fails it.
    pub fn handle(&mut self, packet: &[u8]) -> Result<(), StorvscError> {
        let r = self.dispatch(packet);
        if let Err(e) = &r
            && e.culprit() == Culprit::Host
        {
            self.stats.host_errors += 1;
        }
        r
    }

    fn dispatch(&mut self, packet: &[u8]) -> Result<(), StorvscError> {
        let (d, kind, payload) = split_packet(packet)?;
        match kind {
            PacketType::COMPLETION => {
                let id = d.transaction_id;
                if id == INIT_TRANSACTION_ID && self.initializing() {
                    return self.init_completion(payload);
                }
                if id == INIT_TRANSACTION_ID
                    && let Some(count) = self.sub_request.take()
                {
                    let (header, _) = completion_body(payload)?;
                    let status = NtStatus(header.status.get());
                    self.events.push_back(if status == NtStatus::SUCCESS {
                        Event::SubChannelsGranted(count)
                    } else {
                        Event::SubChannelsRefused(status)
                    });
                    return Ok(());
                }
                self.srb_completion(id, payload)
            }
            PacketType::DATA_INBAND => {
                // Unsolicited (Linux `storvsc_on_receive`): only bus
                // changes; Linux needs just the operation (minlen 4).
                let op = payload
                    .get(..4)
                    .map(|b| Operation(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .ok_or(StorvscError::ShortPacket {
                        len: payload.len(),
                        need: 4,
                    })?;
                match op {
                    Operation::ENUMERATE_BUS | Operation::REMOVE_DEVICE => {
                        self.bus_changed = true;
                        Ok(())
                    }
                    other => Err(StorvscError::UnexpectedOperation(other)),
                }
            }
            other => Err(StorvscError::UnexpectedPacketType(other.0)),
        }
    }

    fn initializing(&self) -> bool {
        matches!(
            self.phase,
            Phase::Begin | Phase::Version(_) | Phase::Properties(_) | Phase::End(..)
        )
    }

    fn fail_init(&mut self, e: StorvscError) -> Result<(), StorvscError> {
        self.phase = Phase::Failed;
        self.events.push_back(Event::InitFailed(e.clone()));
        Err(e)
    }

    /// One step of `storvsc_channel_init`.
    fn init_completion(&mut self, payload: &[u8]) -> Result<(), StorvscError> {
        let (header, body) = match completion_body(payload) {
            Ok(x) => x,
            Err(e) => return self.fail_init(e),
        };
        let status = NtStatus(header.status.get());
        let refused = |operation| StorvscError::Refused { operation, status };
        match self.phase {
            Phase::Begin => {
                if status != NtStatus::SUCCESS {
                    return self.fail_init(refused(Operation::BEGIN_INITIALIZATION));
                }
                self.propose(0);
            }
            Phase::Version(i) => {
                if status == NtStatus::SUCCESS {
                    self.phase = Phase::Properties(VERSIONS[i]);
                    self.init_step(Operation::QUERY_PROPERTIES, &[]);
                } else if i + 1 < VERSIONS.len() {
                    self.propose(i + 1);
                } else {
                    return self.fail_init(StorvscError::NoCommonVersion);
                }
            }
            Phase::Properties(v) => {
                if status != NtStatus::SUCCESS {
                    return self.fail_init(refused(Operation::QUERY_PROPERTIES));
                }
                // completion_body checked 52 body bytes: 24 fit.
                let Ok((p, _)) = ChannelProperties::read_from_prefix(body) else {
                    return self.fail_init(StorvscError::ShortPacket {
                        len: payload.len(),
                        need: PACKET_LEN,
                    });
                };
                let props = Properties {
                    max_channel_count: p.max_channel_count.get(),
                    multi_channel: p.flags.get() & storvsp_protocol::STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL
                        != 0,
                    max_transfer_bytes: p.max_transfer_bytes.get(),
                };
                self.phase = Phase::End(v, props);
                self.init_step(Operation::END_INITIALIZATION, &[]);
            }
            Phase::End(v, props) => {
                if status != NtStatus::SUCCESS {
                    return self.fail_init(refused(Operation::END_INITIALIZATION));
                }
                self.phase = Phase::Ready(v, props);
                self.events.push_back(Event::Ready {
                    version: v,
                    properties: props,
                });
            }
            Phase::Idle | Phase::Ready(..) | Phase::Failed => {
                return Err(StorvscError::UnknownTransaction(INIT_TRANSACTION_ID));
            }
        }
        Ok(())
    }

    fn srb_completion(&mut self, id: u64, payload: &[u8]) -> Result<(), StorvscError> {
        let inflight = self
            .inflight
            .remove(&id)
            .ok_or(StorvscError::UnknownTransaction(id))?;
        let finish = |this: &mut Self, command, result| {
            this.stats.completions += 1;
            this.events.push_back(Event::Completed(Completion {
                id: RequestId(id),
                command,
                result,
            }));
        };
        let result = match srb_result(payload, inflight.requested) {
            Ok(r) => r,
            Err(e) => {
                finish(self, inflight.command, Err(CommandError::Host(e.clone())));
                return Err(e);
            }
        };
        if let (Err(scsi), Some((pfns, offset))) = (&result, &inflight.retry)
            && let Some(sense) = scsi.sense
            && sense.key == sense_key::ILLEGAL_REQUEST
            && (sense.asc == 0x20 || sense.asc == 0x24)
            && sense.ascq == 0
        {
            // sd's `read_capacity_16`: an unknown command or field means
            // the device only does READ CAPACITY(10); ask that, same id.
            let len = READ_CAPACITY_10_LEN;
            let pages = pages_spanned(*offset, len).unwrap_or(1).min(pfns.len());
            let buffer = DataBuffer::new(&pfns[..pages], *offset, len);
            let cdb = [opcode::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            self.outbox.push_back(srb_packet(
                id,
                inflight.lun,
                &cdb,
                DataDirection::In,
                Some(&buffer),
            ));
            self.inflight.insert(
                id,
                Inflight {
                    command: Command::ReadCapacity10,
                    lun: inflight.lun,
                    requested: len,
                    retry: None,
                },
            );
            self.stats.requests += 1;
            return Ok(());
        }
        finish(self, inflight.command, result.map_err(CommandError::Scsi));
        Ok(())
    }
}

fn rw16(op: u8, blocks: Blocks) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = op;
    cdb[2..10].copy_from_slice(&blocks.lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.count.to_be_bytes());
    cdb
}

/// A disk's size, from READ CAPACITY data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The last logical block address.
    pub last_lba: u64,
    /// Bytes per logical block.
    pub block_size: u32,
}

impl Capacity {
    /// Parse the data of a completed READ CAPACITY (`command` from the
    /// [`Completion`]: (16) or (10)); `data` is what the host moved. The
    /// block size must be a power of two from 512 to 65536.
    pub fn parse(command: Command, data: &[u8]) -> Result<Self, StorvscError> {
        let (last_lba, block_size) = match command {
            Command::ReadCapacity16 => {
                let d = data
                    .get(..12)
                    .ok_or(StorvscError::BadData("READ CAPACITY(16) data under 12 bytes"))?;
                let mut lba = [0u8; 8];
                lba.copy_from_slice(&d[..8]);
                (
                    u64::from_be_bytes(lba),
                    u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
                )
            }
            Command::ReadCapacity10 => {
                let d = data
                    .get(..8)
                    .ok_or(StorvscError::BadData("READ CAPACITY(10) data under 8 bytes"))?;
                (
                    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as u64,
                    u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
                )
            }
            _ => return Err(StorvscError::BadData("not READ CAPACITY data")),
        };
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return Err(StorvscError::BadData("block size"));
        }
        Ok(Self { last_lba, block_size })
    }

    /// Number of blocks (`None` if it overflows).
    pub fn blocks(&self) -> Option<u64> {
        self.last_lba.checked_add(1)
    }

    /// Bytes (`None` if it overflows).
    pub fn bytes(&self) -> Option<u64> {
        self.blocks()?.checked_mul(self.block_size as u64)
    }
}

/// The fields of standard INQUIRY data a driver looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InquiryData {
    /// Peripheral qualifier (0: connected; 3: no logical unit here).
    pub qualifier: u8,
    /// Peripheral device type (0: direct access block device).
    pub device_type: u8,
    /// T10 vendor identification.
    pub vendor: [u8; 8],
    /// Product identification.
    pub product: [u8; 16],
    /// Product revision level.
    pub revision: [u8; 4],
}

impl InquiryData {
    /// Parse the first [`INQUIRY_LEN`] bytes the host moved.
    pub fn parse(data: &[u8]) -> Result<Self, StorvscError> {
        let d = data
            .get(..INQUIRY_LEN as usize)
            .ok_or(StorvscError::BadData("INQUIRY data under 36 bytes"))?;
        let mut out = Self {
            qualifier: d[0] >> 5,
            device_type: d[0] & 0x1F,
            vendor: [0; 8],
            product: [0; 16],
            revision: [0; 4],
        };
        out.vendor.copy_from_slice(&d[8..16]);
        out.product.copy_from_slice(&d[16..32]);
        out.revision.copy_from_slice(&d[32..36]);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! Against a scripted host: version fallback, and hostile completions
    //! the real storvsp never sends.
    use super::*;
    use alloc::vec;
    use storvsp_protocol::{ScsiRequest, completion, version_completion};
    use zerocopy::FromZeros;

    fn comp(id: u64, payload: &[u8]) -> Vec<u8> {
        let d = Descriptor::new(PacketType::COMPLETION, 16, payload.len(), 0, id);
        let mut v = d.as_bytes().to_vec();
        v.extend_from_slice(payload);
        v.resize(v.len().next_multiple_of(8), 0);
        v
    }

    fn sent_op(p: &[u8]) -> Operation {
        let (_, _, payload) = split_packet(p).unwrap();
        Operation(u32::from_le_bytes(payload[..4].try_into().unwrap()))
    }

    /// Initialize against a host that refuses 6.2.
    fn ready() -> Storvsc {
        let mut c = Storvsc::default();
        c.start().unwrap();
        assert_eq!(
            sent_op(&c.poll_transmit().unwrap()),
            Operation::BEGIN_INITIALIZATION
        );
        c.handle(&comp(
            INIT_TRANSACTION_ID,
            &completion(52, NtStatus::SUCCESS, &[]),
        ))
        .unwrap();
        let p = c.poll_transmit().unwrap();
        assert_eq!(sent_op(&p), Operation::QUERY_PROTOCOL_VERSION);
        c.handle(&comp(
            INIT_TRANSACTION_ID,
            &version_completion(52, ProtocolVersion::WIN10, false),
        ))
        .unwrap();
        // Linux proposes the next version.
        let p = c.poll_transmit().unwrap();
        let (_, _, payload) = split_packet(&p).unwrap();
        assert_eq!(&payload[12..14], &0x0600u16.to_le_bytes());
        c.handle(&comp(
            INIT_TRANSACTION_ID,
            &version_completion(52, ProtocolVersion::WIN8_1, true),
        ))
        .unwrap();
        assert_eq!(sent_op(&c.poll_transmit().unwrap()), Operation::QUERY_PROPERTIES);
        c.handle(&comp(
            INIT_TRANSACTION_ID,
            &storvsp_protocol::properties_completion(52, 0, 65536),
        ))
        .unwrap();
        assert_eq!(
            sent_op(&c.poll_transmit().unwrap()),
            Operation::END_INITIALIZATION
        );
        c.handle(&comp(
            INIT_TRANSACTION_ID,
            &completion(52, NtStatus::SUCCESS, &[]),
        ))
        .unwrap();
        assert!(c.is_ready());
        assert_eq!(c.version(), Some(ProtocolVersion::WIN8_1));
        assert!(matches!(c.poll_event(), Some(Event::Ready { .. })));
        c
    }

    fn srb_completion_bytes(srb: &ScsiRequest) -> Vec<u8> {
        completion(52, NtStatus::SUCCESS, srb.as_bytes())
    }

    #[test]
    fn version_fallback_and_a_host_that_refuses_everything() {
        let c = ready();
        assert_eq!(c.properties().unwrap().max_transfer_bytes, 65536);
        let mut c = Storvsc::default();
        c.start().unwrap();
        assert_eq!(c.start(), Err(StorvscError::AlreadyStarted));
        c.handle(&comp(
            INIT_TRANSACTION_ID,
            &completion(52, NtStatus::SUCCESS, &[]),
        ))
        .unwrap();
        for v in VERSIONS {
            c.handle(&comp(INIT_TRANSACTION_ID, &version_completion(52, v, false)))
                .unwrap_or_else(|e| assert_eq!(e, StorvscError::NoCommonVersion));
        }
        assert!(c.has_failed());
        let events: Vec<_> = core::iter::from_fn(|| c.poll_event()).collect();
        assert_eq!(events, [Event::InitFailed(StorvscError::NoCommonVersion)]);
        assert_eq!(c.synchronize_cache(0), Err(StorvscError::NotReady));
    }

    #[test]
    fn hostile_completions_are_errors() {
        let mut c = ready();
        let pfns = [7u64, 8];
        let id = c
            .read(
                0,
                Blocks {
                    lba: 0,
                    count: 8,
                    block_size: 512,
                },
                DataBuffer::new(&pfns, 0x800, 4096),
            )
            .unwrap();
        let _ = c.poll_transmit().unwrap();
        let mut srb = ScsiRequest::new_zeroed();
        srb.srb_status = SrbStatus::SUCCESS.0;
        // Unknown id: refused, the request still waits.
        let good = srb_completion_bytes(&srb);
        assert_eq!(
            c.handle(&comp(id.0 + 1, &good)),
            Err(StorvscError::UnknownTransaction(id.0 + 1))
        );
        assert_eq!(c.in_flight(), 1);
        // Short (Linux's minlen): refused and the request fails.
        assert_eq!(
            c.handle(&comp(id.0, &good[..48])),
            Err(StorvscError::ShortPacket { len: 48, need: 64 })
        );
        let Some(Event::Completed(done)) = c.poll_event() else {
            panic!()
        };
        assert!(matches!(done.result, Err(CommandError::Host(_))));
        // More bytes than asked for.
        let id = c
            .read(
                0,
                Blocks {
                    lba: 0,
                    count: 8,
                    block_size: 512,
                },
                DataBuffer::new(&pfns, 0x800, 4096),
            )
            .unwrap();
        srb.data_transfer_length = 8192.into();
        assert_eq!(
            c.handle(&comp(id.0, &srb_completion_bytes(&srb))),
            Err(StorvscError::TransferLength {
                requested: 4096,
                reported: 8192
            })
        );
        // Oversized sense.
        let id = c.synchronize_cache(0).unwrap();
        let mut bad = ScsiRequest::new_zeroed();
        bad.srb_status = SrbStatus::ERROR.with_autosense().0;
        bad.scsi_status = ScsiStatus::CHECK_CONDITION.0;
        bad.sense_info_length = 200;
        let e = c.handle(&comp(id.0, &srb_completion_bytes(&bad))).unwrap_err();
        assert_eq!(e, StorvscError::SenseLength(200));
        assert_eq!(e.culprit(), Culprit::Host);
        // A completion that is not COMPLETE_IO, and a stray init answer.
        let id = c.synchronize_cache(0).unwrap();
        let mut wrong = completion(52, NtStatus::SUCCESS, &[]);
        wrong[0] = 3;
        assert_eq!(
            c.handle(&comp(id.0, &wrong)),
            Err(StorvscError::UnexpectedOperation(Operation::EXECUTE_SRB))
        );
        assert_eq!(
            c.handle(&comp(
                INIT_TRANSACTION_ID,
                &completion(52, NtStatus::SUCCESS, &[])
            )),
            Err(StorvscError::UnknownTransaction(INIT_TRANSACTION_ID))
        );
        // Unsolicited packets: a bus change is reported once.
        let enumerate = request_packet(Operation::ENUMERATE_BUS, &[]);
        let mut p = inband(0, &enumerate);
        c.handle(&p).unwrap();
        c.handle(&p).unwrap();
        while let Some(e) = c.poll_event() {
            if e == Event::BusChanged {
                assert_eq!(c.poll_event(), None);
                break;
            }
        }
        p[16] = 1; // COMPLETE_IO in-band
        assert!(c.handle(&p).is_err());
        // Malformed descriptors and truncations never panic.
        for n in 0..p.len() {
            let _ = c.handle(&p[..n]);
        }
        let mut x = p.clone();
        x[2] = 1; // offset8 1
        assert!(matches!(c.handle(&x), Err(StorvscError::BadPacket(_))));
        assert!(c.stats().host_errors >= 7);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn read_capacity_16_falls_back_to_10() {
        let mut c = ready();
        let pfns = [9u64];
        let id = c.read_capacity(0, DataBuffer::new(&pfns, 64, 32)).unwrap();
        let _ = c.poll_transmit().unwrap();
        // The device does not know READ CAPACITY(16): ILLEGAL REQUEST,
        // INVALID COMMAND OPERATION CODE.
        let mut srb = ScsiRequest::new_zeroed();
        srb.srb_status = SrbStatus::INVALID_REQUEST.with_autosense().0;
        srb.scsi_status = ScsiStatus::CHECK_CONDITION.0;
        let mut sense = [0u8; 18];
        (sense[0], sense[2], sense[7], sense[12]) = (0x70, 0x05, 10, 0x20);
        srb.data[..18].copy_from_slice(&sense);
        srb.sense_info_length = 18;
        c.handle(&comp(id.0, &srb_completion_bytes(&srb))).unwrap();
        assert_eq!(c.poll_event(), None, "retried, not finished");
        // Same id, READ CAPACITY(10) into the first 8 bytes of the buffer.
        let retry = c.poll_transmit().unwrap();
        let (d, kind, _) = split_packet(&retry).unwrap();
        assert_eq!(
            (d.transaction_id, kind),
            (id.0, PacketType::DATA_USING_GPA_DIRECT)
        );
        let (_, _, payload) = split_packet(&retry).unwrap();
        let g = storvsp_protocol::gpa::parse_gpa_direct(&retry[16..], Some(d.offset8)).unwrap();
        assert_eq!((g.ranges[0].byte_offset, g.ranges[0].byte_count), (64, 8));
        let (sent, _) = ScsiRequest::read_from_prefix(&g.data[PACKET_HEADER_LEN..]).unwrap();
        assert_eq!(sent.data[0], opcode::READ_CAPACITY_10);
        assert!(payload.len() >= 64);
        let mut ok = ScsiRequest::new_zeroed();
        ok.srb_status = SrbStatus::SUCCESS.0;
        ok.data_transfer_length = 8.into();
        c.handle(&comp(id.0, &srb_completion_bytes(&ok))).unwrap();
        let Some(Event::Completed(done)) = c.poll_event() else {
            panic!()
        };
        assert_eq!(
            (done.id, done.command, done.result),
            (id, Command::ReadCapacity10, Ok(8))
        );
        let cap = Capacity::parse(done.command, &[0, 0, 0x07, 0xFF, 0, 0, 0x02, 0]).unwrap();
        assert_eq!((cap.blocks(), cap.block_size), (Some(2048), 512));
        // Any other failure of READ CAPACITY(16) is just a failure.
        let id = c.read_capacity(0, DataBuffer::new(&pfns, 64, 32)).unwrap();
        let mut e = srb;
        e.data[2] = sense_key::MEDIUM_ERROR;
        c.handle(&comp(id.0, &srb_completion_bytes(&e))).unwrap();
        let Some(Event::Completed(done)) = c.poll_event() else {
            panic!()
        };
        let Err(CommandError::Scsi(err)) = done.result else {
            panic!()
        };
        assert_eq!(err.sense_key(), Some(sense_key::MEDIUM_ERROR));
    }

    #[test]
    fn caller_errors() {
        let mut c = ready();
        let blocks = Blocks {
            lba: 0,
            count: 1,
            block_size: 512,
        };
        let cases = [
            c.read(0, blocks, DataBuffer::new(&[1], 0, 0)),
            c.read(0, blocks, DataBuffer::new(&[1], 4096, 512)),
            c.read(0, blocks, DataBuffer::new(&[1, 2], 0, 512)),
            c.read(0, blocks, DataBuffer::new(&[u64::MAX], 0, 512)),
            c.read(0, blocks, DataBuffer::new(&[1], 0, 1024)),
            c.read(
                0,
                Blocks {
                    block_size: 500,
                    ..blocks
                },
                DataBuffer::new(&[1], 0, 500),
            ),
            c.execute(0, &[], DataDirection::In, None),
            c.read_capacity(0, DataBuffer::new(&[1], 0, 8)),
        ];
        for r in cases {
            assert_eq!(r.unwrap_err().culprit(), Culprit::Caller);
        }
        let pfns: Vec<u64> = (0..17).collect();
        assert_eq!(
            c.execute(
                0,
                &[0x28],
                DataDirection::In,
                Some(DataBuffer::new(&pfns, 0, 65536 + 512))
            ),
            Err(StorvscError::TransferTooLong {
                len: 65536 + 512,
                max: 65536
            })
        );
        let mut small = Storvsc::new(2);
        small.phase = c.phase;
        small.synchronize_cache(0).unwrap();
        small.synchronize_cache(0).unwrap();
        assert_eq!(
            small.synchronize_cache(0),
            Err(StorvscError::TooManyInFlight { max: 2 })
        );
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn sense_formats_and_parsers() {
        let mut fixed = vec![0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x05;
        fixed[7] = 10;
        fixed[12] = 0x21;
        assert_eq!(
            Sense::parse(&fixed),
            Some(Sense {
                key: 5,
                asc: 0x21,
                ascq: 0
            })
        );
        // Additional length too short to cover the ASC.
        fixed[7] = 2;
        assert_eq!(Sense::parse(&fixed).unwrap().asc, 0);
        assert_eq!(
            Sense::parse(&[0x72, 0x06, 0x29, 0x01]),
            Some(Sense {
                key: 6,
                asc: 0x29,
                ascq: 1
            })
        );
        assert_eq!(Sense::parse(&[]), None);
        assert_eq!(Sense::parse(&[0x12, 0, 0]), None);
        let mut rc16 = [0u8; 32];
        rc16[7] = 0xFF;
        rc16[10] = 0x10;
        let c = Capacity::parse(Command::ReadCapacity16, &rc16).unwrap();
        assert_eq!((c.blocks(), c.block_size), (Some(256), 4096));
        assert!(Capacity::parse(Command::ReadCapacity16, &rc16[..11]).is_err());
        assert!(Capacity::parse(Command::ReadCapacity10, &[0, 0, 0, 1, 0, 0, 0, 3]).is_err());
        assert!(Capacity::parse(Command::Read16, &rc16).is_err());
        let max = Capacity {
            last_lba: u64::MAX,
            block_size: 512,
        };
        assert_eq!((max.blocks(), max.bytes()), (None, None));
        assert!(InquiryData::parse(&[0; 35]).is_err());
    }
}
