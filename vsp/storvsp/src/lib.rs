//! The synthetic SCSI controller a Hyper-V guest's storvsc binds: a VMBus
//! device (`vsp::Device`) offering the SCSI interface
//! ([`storvsp_protocol::SCSI_INTERFACE_GUID`]) with `scsi_disk` targets
//! behind it.
//!
//! # What Linux sends, what the device answers
//!
//! Linux 6.1 `drivers/scsi/storvsc_drv.c` (`storvsc_channel_init`) opens
//! the channel and sends, each as a 64-byte in-band `vstor_packet` with
//! COMPLETION_REQUESTED and transaction id `VMBUS_RQST_INIT` (U64_MAX − 2),
//! waiting up to 5 s for each answer:
//!
//! | guest sends | device answers (a `VM_PKT_COMP` with the same transaction id) |
//! |---|---|
//! | BEGIN_INITIALIZATION | SUCCESS |
//! | QUERY_PROTOCOL_VERSION 0x0602, then 0x0600, 0x0501 | SUCCESS for the first of [`storvsp_protocol::HOST_VERSIONS`], REVISION_MISMATCH (and wait for the next proposal) otherwise |
//! | QUERY_PROPERTIES | SUCCESS with `max_transfer_bytes` and `max_channel_count` ([`StorvspConfig::max_sub_channels`], with the multi-channel flag when it is not 0) |
//! | END_INITIALIZATION | SUCCESS: the controller is ready |
//! | CREATE_SUB_CHANNELS n (primary channel, after QUERY_PROPERTIES) | SUCCESS if 1 ≤ n and the sub-channels so far plus n stay within `max_sub_channels`, then the host offers n sub-channels ([`vsp::Device::take_sub_channels`]); INVALID_PARAMETER otherwise |
//! | EXECUTE_SRB | the SCSI result: SRB status, SCSI status, autosense, bytes moved |
//! | RESET_LUN / RESET_ADAPTER / RESET_BUS | SUCCESS (no-ops, as in Hyper-V and OpenVMM: every request is finished before its completion is sent) |
//!
//! Anything out of that order (an SRB before END_INITIALIZATION, a second
//! BEGIN_INITIALIZATION, ...) is answered INVALID_DEVICE_STATE, as OpenVMM
//! `vm/devices/storage/storvsp` (`process_primary`) does; an operation only
//! the host sends, or none at all, INVALID_DEVICE_REQUEST; a packet too
//! short for its operation INVALID_PARAMETER. Every answer is a COMPLETE_IO
//! whose body is as long as the request's (at most 52 bytes, see
//! [`storvsp_protocol::Packet::request_size`]): 64 bytes for Linux, which
//! drops shorter ones.
//!
//! An EXECUTE_SRB that moves no data comes in-band; one that does comes as
//! a GPA-direct packet (`vmbus_sendpacket_mpb_desc`: type 9, one range of
//! `data_transfer_length` bytes at any offset into its first page, the
//! `vstor_packet` after the range list at `offset8 * 8`) with a small
//! transaction id. The device resolves the ranges to chunks (a run of
//! consecutive guest pages each, [`storvsp_protocol::gpa`]), checks every chunk against the guest's RAM
//! (`vsp::Channel::guest_ram`) before touching the disk, asks the disk what
//! the command needs (`ScsiDisk::plan`), reads the data-out bytes from the
//! guest's pages or writes the data-in bytes to them, and completes the SRB
//! by `storvsp_protocol`'s rules: the reply's size is the request's,
//! autosense with CHECK CONDITION, bytes moved only on success, never
//! DATA_OVERRUN for a short transfer. A buffer the ranges do not describe
//! (a `data_transfer_length` past them, a page outside the guest's RAM, a
//! malformed range list) fails only that SRB (SRB_STATUS_INVALID_REQUEST,
//! CHECK CONDITION, ILLEGAL REQUEST / INVALID FIELD IN CDB); the channel
//! keeps working.
//!
//! Addressing: the disks sit on path 0, target 0, at the LUNs they were
//! attached at ([`Storvsp::attach`]). REPORT LUNS is answered by the
//! controller for any address (the LUNs of that path and target). For an
//! address with no disk, a standard INQUIRY returns peripheral qualifier 3
//! / type 0x1F ("no logical unit here"; what OpenVMM answers, so Linux's
//! scan of target 1 ends quietly instead of hitting storvsc's LUN-removal
//! path) and every other command SRB_STATUS_INVALID_LUN.
//!
//! # Work bounds and flow control
//!
//! [`vsp::Device::poll`] handles at most `budget` packets, each moving at
//! most `max_transfer_bytes` (checked at parse, before any range is
//! resolved). Completions go through the channel's flow control: when the
//! host-to-guest ring has no room, the completion is held, the guest is
//! asked (pending_send_sz) to signal when it has made room, and nothing
//! more is read until it is written; so requests are never lost and the
//! device holds at most one completion.
//!
//! A read or write the backend can place by DMA may be started in one poll
//! and completed in a later one ([`BlockBackend::start_dma`]; at most
//! [`MAX_STARTED_SRBS`] per channel). While any runs, the poll asks to be
//! polled again ([`PollResult::more`]), or, when every one interrupts the
//! host as it ends ([`BlockBackend::completion_interrupts`]), says it
//! awaits the device ([`PollResult::awaiting_device`]), so the host may
//! sleep until then. Every other request finishes within its poll.
//!
//! # Sub-channels
//!
//! Linux (`handle_multichannel_storage`) asks for `min(online CPUs − 1,
//! max_channel_count)` sub-channels after END_INITIALIZATION and opens
//! each as its offer arrives, with no handshake on it (`handle_sc_creation`):
//! it sends SRBs at once. A sub-channel here is a device of its own sharing
//! the primary's disks and counters, ready from its first packet at the
//! primary's protocol version; it answers SRBs and the resets, and refuses
//! the handshake operations and CREATE_SUB_CHANNELS (INVALID_DEVICE_STATE).
//! The primary's close or reset forgets the sub-channels (the host rescinds
//! them), so a new handshake starts from none.
//!
//! # Not yet done
//!
//! - Asynchronous backends: `ScsiDisk::plan`/`complete_io` already split a
//!   command around its backend request; the device does both halves in
//!   one poll. A backend that completes later needs per-request state and
//!   completions sent from a later poll.
//! - Hot add/remove: attaching a disk while the guest runs sends no
//!   ENUMERATE_BUS, and removing one is not offered.
//! - The root's backend (a passthrough block device or a GPT partition of
//!   one, `root-partition/disks`): anything implementing
//!   `scsi_disk::BlockBackend` fits, boxed through [`BoxedBackend`].
//! - The IDE accelerator and FC variants of the interface.
//!
//! Sources: Linux 6.1 `drivers/scsi/storvsc_drv.c`, `drivers/hv/channel.c`
//! and `include/linux/hyperv.h`; microsoft/openvmm
//! `vm/devices/storage/storvsp` (host behaviour). Written fresh.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use scsi_disk::{Asc, BackendError, BlockBackend, DmaTicket, IoOp, IoRequest, Plan, ScsiDisk, SenseKey};
use storvsp_protocol::gpa::{self, BufferError, Chunk};
use storvsp_protocol::{
    IntoBytes, NtStatus, Operation, PACKET_BODY_LEN, PACKET_HEADER_LEN, ParseError, ProtocolVersion, Request,
    ScsiRequest, ScsiStatus, Srb, SrbLimits, SrbResult, SrbStatus,
};
use vmbus::memory::SharedMemory;
use vmbus::packet::{Descriptor, FLAG_COMPLETION_REQUESTED, PacketType};
use vsp::{
    Channel, Device, GuestDma, IncomingPacket, InspectSink, OfferParams, OpenError, PacketWork, PollResult,
};
use zerocopy::FromZeros;

#[cfg(test)]
mod tests;

/// `max_transfer_bytes` announced unless configured otherwise: 256 KiB,
/// what OpenVMM announces and what `scsi_disk::DiskConfig::new` reports
/// as its maximum transfer (512 blocks of 512 bytes).
pub const DEFAULT_MAX_TRANSFER_BYTES: u32 = 256 * 1024;

/// The largest `max_transfer_bytes` this device announces: 1 MiB. The
/// channel reads a packet into a 4 KiB buffer, and Linux's GPA-direct
/// packet for a transfer of T bytes is 32 + 8 × (T / 4096 + 1) + 64 bytes
/// (descriptor, range header, one PFN per page spanned, `vstor_packet`):
/// 2152 bytes at 1 MiB. A guest that sends a bigger packet breaks its own
/// channel, nothing else.
pub const MAX_TRANSFER_BYTES_LIMIT: u32 = 1024 * 1024;

/// Linux storvsc scans LUNs 0..255 per target (`STORVSC_MAX_LUNS_PER_TARGET`).
pub const MAX_LUNS: usize = 255;

/// How the controller is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorvspConfig {
    /// Largest data transfer per SRB, announced in QUERY_PROPERTIES (Linux
    /// caps `max_sectors` and its scatter list by it): a multiple of 4096
    /// from 4096 to [`MAX_TRANSFER_BYTES_LIMIT`].
    pub max_transfer_bytes: u32,
    /// The offer's instance GUID, or `None` to let the host number it.
    pub instance: Option<[u8; 16]>,
    /// Sub-channels the guest may ask for (`max_channel_count` in
    /// QUERY_PROPERTIES; 0: no multi-channel flag, all I/O on the primary),
    /// at most [`MAX_SUB_CHANNELS`].
    pub max_sub_channels: u16,
    /// How many times a poll that started DMA looks again for it to finish
    /// before it gives the CPU back (0: never). A backend that finishes a
    /// small request quickly then completes it in the same poll, as a
    /// synchronous one would, while a long one still overlaps with the
    /// guest; at most [`MAX_COMPLETION_SPINS`].
    pub completion_spins: u32,
}

/// The most [`StorvspConfig::completion_spins`] a controller takes.
pub const MAX_COMPLETION_SPINS: u32 = 100_000;

/// The most sub-channels a controller offers (each is a relid and a ring
/// pair the guest allocates; Hyper-V offers one per 4 VPs).
pub const MAX_SUB_CHANNELS: u16 = 16;

/// Sub-channels announced unless configured otherwise.
pub const DEFAULT_SUB_CHANNELS: u16 = 4;

impl Default for StorvspConfig {
    fn default() -> Self {
        Self {
            max_transfer_bytes: DEFAULT_MAX_TRANSFER_BYTES,
            instance: None,
            max_sub_channels: DEFAULT_SUB_CHANNELS,
            completion_spins: 0,
        }
    }
}

/// Why a controller could not be built or a disk attached (the host's
/// configuration is wrong; nothing here is the guest's doing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// `max_transfer_bytes` is not a multiple of 4096 in
    /// 4096..=[`MAX_TRANSFER_BYTES_LIMIT`].
    MaxTransferBytes(u32),
    /// A disk is already attached at this LUN.
    LunInUse(u8),
    /// The LUN is past what Linux scans ([`MAX_LUNS`]).
    LunOutOfRange(u8),
    /// `max_sub_channels` is above [`MAX_SUB_CHANNELS`].
    SubChannels(u16),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MaxTransferBytes(n) => write!(f, "storvsp configured with max_transfer_bytes {n}"),
            Self::LunInUse(l) => write!(f, "storvsp LUN {l} already has a disk"),
            Self::SubChannels(n) => write!(f, "storvsp max_sub_channels {n} is above {MAX_SUB_CHANNELS}"),
            Self::LunOutOfRange(l) => write!(f, "storvsp LUN {l} is past the {MAX_LUNS} LUNs Linux scans"),
        }
    }
}

/// A boxed backend, so one controller type holds disks of any backend
/// (the root's passthrough devices, partitions of them, memory in tests).
pub struct BoxedBackend(pub Box<dyn BlockBackend>);

impl BlockBackend for BoxedBackend {
    fn sector_size(&self) -> u32 {
        self.0.sector_size()
    }
    fn sector_count(&self) -> u64 {
        self.0.sector_count()
    }
    fn read_only(&self) -> bool {
        self.0.read_only()
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.0.read(lba, buf)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), BackendError> {
        self.0.write(lba, buf)
    }
    fn flush(&mut self) -> Result<(), BackendError> {
        self.0.flush()
    }
    fn read_dma(&mut self, lba: u64, segments: &[(u64, usize)]) -> Option<Result<(), BackendError>> {
        self.0.read_dma(lba, segments)
    }
    fn write_dma(&mut self, lba: u64, segments: &[(u64, usize)]) -> Option<Result<(), BackendError>> {
        self.0.write_dma(lba, segments)
    }
    fn start_dma(
        &mut self,
        lba: u64,
        segments: &[(u64, usize)],
        write: bool,
    ) -> Option<Result<DmaTicket, BackendError>> {
        self.0.start_dma(lba, segments, write)
    }
    fn dma_done(&mut self, ticket: DmaTicket) -> Option<Result<(), BackendError>> {
        self.0.dma_done(ticket)
    }
    fn wait_dma(&mut self, ticket: DmaTicket) -> Result<(), BackendError> {
        self.0.wait_dma(ticket)
    }
    fn completion_interrupts(&self) -> bool {
        self.0.completion_interrupts()
    }
}

/// Where the guest is in the initialization handshake (OpenVMM's
/// `InitState` / `ProtocolState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitState {
    /// Waiting for BEGIN_INITIALIZATION.
    Begin,
    /// Waiting for an acceptable QUERY_PROTOCOL_VERSION.
    QueryVersion,
    /// Version agreed, waiting for QUERY_PROPERTIES.
    QueryProperties(ProtocolVersion),
    /// Properties sent, waiting for END_INITIALIZATION.
    EndInitialization(ProtocolVersion),
    /// Initialized: SRBs are accepted.
    Ready(ProtocolVersion),
}

impl InitState {
    /// The negotiated version, once there is one.
    pub fn version(self) -> Option<ProtocolVersion> {
        match self {
            Self::Begin | Self::QueryVersion => None,
            Self::QueryProperties(v) | Self::EndInitialization(v) | Self::Ready(v) => Some(v),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Begin => "begin",
            Self::QueryVersion => "query_version",
            Self::QueryProperties(_) => "query_properties",
            Self::EndInitialization(_) => "end_initialization",
            Self::Ready(_) => "ready",
        }
    }
}

/// What the controller counts (kept across opens and resets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorvspStats {
    /// Packets the guest sent (every one, answered or not).
    pub requests: u64,
    /// Completions handed to the channel.
    pub completions: u64,
    /// Packets refused at the protocol level: malformed, out of order,
    /// unknown operation, not a type storvsc sends.
    pub protocol_errors: u64,
    /// SRBs run.
    pub srbs: u64,
    /// SRBs that did not end in SUCCESS (CHECK CONDITION, bad buffer,
    /// no such LUN).
    pub srb_failures: u64,
    /// Bytes read from disks into guest memory.
    pub bytes_read: u64,
    /// Bytes written to disks from guest memory.
    pub bytes_written: u64,
    /// Reads the backend placed straight into the guest's pages (no copy).
    pub dma_reads: u64,
    /// Writes the backend took straight from the guest's pages.
    pub dma_writes: u64,
    /// Completions the channel refused (only after the guest broke its
    /// rings).
    pub dropped: u64,
    /// DMA reads and writes the backend started and finished later (the
    /// device read the guest's next packets meanwhile).
    pub started: u64,
}

/// One disk and its address.
struct Lun<B: BlockBackend> {
    lun: u8,
    disk: ScsiDisk<B>,
}

/// The controller's state apart from the channel, so packet handlers can
/// borrow it while the channel is being polled.
struct Controller<B: BlockBackend> {
    config: StorvspConfig,
    luns: Vec<Lun<B>>,
    stats: StorvspStats,
    /// Sub-channels offered since the primary's handshake.
    sub_offered: u16,
    /// Sub-channels asked for and not yet handed to the host, with the
    /// version they run at.
    sub_pending: Option<(u16, ProtocolVersion)>,
}

/// Which channel of the controller a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The primary channel: the handshake, then I/O.
    Primary,
    /// Sub-channel `index` (1-based): I/O only.
    SubChannel(u16),
}

/// An EXECUTE_SRB that passed the protocol checks, waiting for guest RAM.
struct SrbJob {
    transaction_id: u64,
    wants_completion: bool,
    request_size: usize,
    srb: Srb,
    /// The data buffer as chunks (runs of consecutive guest pages), or
    /// why it is not usable.
    chunks: Result<Vec<Chunk>, BufferError>,
}

/// What handling one packet came to.
enum Outcome {
    /// A whole packet to write back (descriptor first).
    Reply(Vec<u8>),
    /// Nothing to send.
    Silent,
    /// An SRB to run with the guest's RAM.
    Srb(SrbJob),
}

/// What running an SRB came to.
enum SrbRun {
    /// It ended.
    Done(SrbEnd),
    /// Its backend request is running: a later poll completes it.
    Started {
        ticket: DmaTicket,
        address: (u8, u8, u8),
        req: IoRequest,
        fua: bool,
    },
}

/// An SRB whose DMA the backend is doing, with what its completion needs.
struct StartedSrb {
    ticket: DmaTicket,
    address: (u8, u8, u8),
    req: IoRequest,
    fua: bool,
    transaction_id: u64,
    wants_completion: bool,
    request_size: usize,
    request: ScsiRequest,
}

/// SRBs one channel may have started and not yet completed: it reads no
/// more packets while this many run (the guest's ring holds the rest).
pub const MAX_STARTED_SRBS: usize = 64;

/// How a SCSI request ended, before it is put on the wire.
struct SrbEnd {
    scsi_status: ScsiStatus,
    srb_status: SrbStatus,
    moved: u32,
    sense: Option<[u8; scsi_disk::SENSE_LEN]>,
}

impl SrbEnd {
    fn from_disk(r: &scsi_disk::ScsiResult) -> Self {
        let status = ScsiStatus(r.status.0);
        let moved = u32::try_from(r.transferred()).unwrap_or(u32::MAX);
        let result = SrbResult::from_scsi(status, r.sense.as_ref().map_or(&[][..], |s| &s[..]), moved);
        Self {
            scsi_status: status,
            srb_status: result.srb_status,
            moved,
            sense: r.sense,
        }
    }

    /// GOOD with `moved` bytes placed in the guest's buffer (a DMA read).
    fn good(moved: usize) -> Self {
        let moved = u32::try_from(moved).unwrap_or(u32::MAX);
        let result = SrbResult::from_scsi(ScsiStatus::GOOD, &[], moved);
        Self {
            scsi_status: ScsiStatus::GOOD,
            srb_status: result.srb_status,
            moved,
            sense: None,
        }
    }

    /// The data buffer is unusable: CHECK CONDITION, ILLEGAL REQUEST,
    /// INVALID FIELD IN CDB, SRB_STATUS_INVALID_REQUEST (OpenVMM answers a
    /// guest-memory access error the same way).
    fn bad_buffer() -> Self {
        Self {
            scsi_status: ScsiStatus::CHECK_CONDITION,
            srb_status: SrbStatus::INVALID_REQUEST,
            moved: 0,
            sense: Some(scsi_disk::sense::fixed(
                SenseKey::ILLEGAL_REQUEST,
                Asc::INVALID_FIELD_IN_CDB,
                None,
            )),
        }
    }

    /// The host cannot reach guest memory: HARDWARE ERROR, SRB_STATUS_ERROR.
    fn host_error() -> Self {
        Self {
            scsi_status: ScsiStatus::CHECK_CONDITION,
            srb_status: SrbStatus::ERROR,
            moved: 0,
            sense: Some(scsi_disk::sense::fixed(
                SenseKey::HARDWARE_ERROR,
                Asc::INTERNAL_TARGET_FAILURE,
                None,
            )),
        }
    }

    /// No disk at this address (OpenVMM: CHECK CONDITION, INVALID_LUN, no
    /// sense). Linux answers DID_NO_CONNECT.
    fn no_lun() -> Self {
        Self {
            scsi_status: ScsiStatus::CHECK_CONDITION,
            srb_status: SrbStatus::INVALID_LUN,
            moved: 0,
            sense: None,
        }
    }
}

/// The whole packet answering a request: a COMPLETION descriptor with its
/// transaction id, then `payload` (Linux `storvsc_on_channel_callback`
/// matches it on the full 64-bit id).
fn completion_packet(transaction_id: u64, payload: &[u8]) -> Vec<u8> {
    let d = Descriptor::new(PacketType::COMPLETION, 16, payload.len(), 0, transaction_id);
    let mut out = Vec::with_capacity(16 + payload.len() + 7);
    out.extend_from_slice(d.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// The SRB a guest sent, whatever its checks said: for echoing its
/// address and CDB length in a refusal.
fn raw_srb(body: &[u8]) -> ScsiRequest {
    let mut r = ScsiRequest::new_zeroed();
    let n = body.len().min(size_of::<ScsiRequest>());
    r.as_mut_bytes()[..n].copy_from_slice(&body[..n]);
    r
}

impl<B: BlockBackend> Controller<B> {
    fn limits(&self, state: InitState) -> SrbLimits {
        SrbLimits {
            version: state.version().unwrap_or(ProtocolVersion::WIN8),
            max_transfer_bytes: self.config.max_transfer_bytes,
        }
    }

    fn find(&mut self, address: (u8, u8, u8)) -> Option<&mut ScsiDisk<B>> {
        let (path, target, lun) = address;
        if path != 0 || target != 0 {
            return None;
        }
        self.luns.iter_mut().find(|l| l.lun == lun).map(|l| &mut l.disk)
    }

    /// Handle one packet from the guest on a channel in `state` (the
    /// primary's handshake, or a sub-channel's fixed Ready): answer it, or
    /// hand back an SRB to run against guest memory.
    fn handle(&mut self, state: &mut InitState, role: Role, p: &IncomingPacket<'_>) -> Outcome {
        self.stats.requests += 1;
        let wants_completion = p.flags & FLAG_COMPLETION_REQUESTED != 0;
        // Where the vstor packet starts in the bytes after the descriptor
        // (the ring checked offset8 >= 2 and within the packet).
        let data_start = (p.offset8 as usize * 8).saturating_sub(16);
        let (data, ranges) = match p.kind {
            PacketType::DATA_INBAND => (
                p.after_descriptor.get(data_start..).unwrap_or(&[]),
                Ok(Vec::new()),
            ),
            PacketType::DATA_USING_GPA_DIRECT => {
                match gpa::parse_gpa_direct(p.after_descriptor, Some(p.offset8)) {
                    Ok(g) => (g.data, Ok(g.ranges)),
                    // The range list is broken; the vstor packet may still be
                    // readable at offset8, and only an SRB needs the ranges.
                    Err(e) => (p.after_descriptor.get(data_start..).unwrap_or(&[]), Err(e)),
                }
            }
            _ => {
                // Completions (storvsc requests none) and transfer-page
                // packets (netvsc's) are not storvsc's: skip them.
                self.stats.protocol_errors += 1;
                return Outcome::Silent;
            }
        };
        let reply = |this: &mut Self, request_size: usize, status: NtStatus, body: &[u8]| {
            if status != NtStatus::SUCCESS {
                this.stats.protocol_errors += 1;
            }
            this.answer(
                p.transaction_id,
                wants_completion,
                storvsp_protocol::completion(request_size, status, body),
            )
        };
        let request_size = data.len().saturating_sub(PACKET_HEADER_LEN).min(PACKET_BODY_LEN);
        let packet = match storvsp_protocol::parse_packet(data, &self.limits(*state)) {
            Ok(packet) => packet,
            Err(e) => {
                let op = data
                    .get(..4)
                    .map(|b| Operation(u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
                return match e {
                    ParseError::ShortSrb { .. }
                    | ParseError::BadCdbLength(_)
                    | ParseError::BadDataDirection(_)
                    | ParseError::TransferTooLong { .. } => {
                        if !matches!(*state, InitState::Ready(_)) {
                            return reply(self, request_size, NtStatus::INVALID_DEVICE_STATE, &[]);
                        }
                        // The SRB itself is wrong: fail it like a SCSI
                        // request, so Linux sees the error on the command.
                        self.stats.protocol_errors += 1;
                        let body = data.get(PACKET_HEADER_LEN..).unwrap_or(&[]);
                        let srb = raw_srb(body);
                        self.srb_answer(
                            p.transaction_id,
                            wants_completion,
                            request_size,
                            &srb,
                            &SrbEnd::bad_buffer(),
                        )
                    }
                    ParseError::UnexpectedOperation(_) => {
                        reply(self, request_size, NtStatus::INVALID_DEVICE_REQUEST, &[])
                    }
                    ParseError::ShortPacket { .. } if op.is_none() => {
                        reply(self, request_size, NtStatus::INVALID_DEVICE_REQUEST, &[])
                    }
                    ParseError::ShortPacket { .. } => {
                        reply(self, request_size, NtStatus::INVALID_PARAMETER, &[])
                    }
                };
            }
        };
        let size = packet.request_size;
        if role != Role::Primary
            && !matches!(
                packet.request,
                Request::ExecuteSrb(_) | Request::ResetLun | Request::ResetAdapter | Request::ResetBus
            )
        {
            // A sub-channel carries I/O only (Linux `handle_sc_creation`
            // sends nothing else on it).
            return reply(self, size, NtStatus::INVALID_DEVICE_STATE, &[]);
        }
        match (*state, packet.request) {
            (InitState::Begin, Request::BeginInitialization) => {
                *state = InitState::QueryVersion;
                reply(self, size, NtStatus::SUCCESS, &[])
            }
            (InitState::QueryVersion, Request::QueryProtocolVersion(v)) => {
                // Linux proposes 6.2, 6.0, 5.1 in turn until one is
                // accepted (`storvsc_channel_init`); a mismatch keeps the
                // state, so the next proposal is heard.
                match storvsp_protocol::negotiate(v, &storvsp_protocol::HOST_VERSIONS) {
                    Ok(v) => {
                        *state = InitState::QueryProperties(v);
                        self.answer(
                            p.transaction_id,
                            wants_completion,
                            storvsp_protocol::version_completion(size, v, true),
                        )
                    }
                    Err(_) => self.answer(
                        p.transaction_id,
                        wants_completion,
                        storvsp_protocol::version_completion(size, v, false),
                    ),
                }
            }
            (InitState::QueryProperties(v), Request::QueryProperties) => {
                *state = InitState::EndInitialization(v);
                self.answer(
                    p.transaction_id,
                    wants_completion,
                    storvsp_protocol::properties_completion(
                        size,
                        self.config.max_sub_channels,
                        self.config.max_transfer_bytes,
                    ),
                )
            }
            (InitState::EndInitialization(v), Request::EndInitialization) => {
                *state = InitState::Ready(v);
                reply(self, size, NtStatus::SUCCESS, &[])
            }
            (InitState::EndInitialization(v) | InitState::Ready(v), Request::CreateSubChannels(n)) => {
                // OpenVMM answers a count it cannot serve INVALID_PARAMETER;
                // counts add up over several requests, within the limit.
                let asked = self.sub_pending.map_or(0, |(p, _)| p);
                let room = self
                    .config
                    .max_sub_channels
                    .saturating_sub(self.sub_offered)
                    .saturating_sub(asked);
                if n == 0 || n > room {
                    return reply(self, size, NtStatus::INVALID_PARAMETER, &[]);
                }
                self.sub_pending = Some((asked + n, v));
                reply(self, size, NtStatus::SUCCESS, &[])
            }
            (InitState::Ready(_), Request::ResetLun | Request::ResetAdapter | Request::ResetBus) => {
                // Every SRB is complete before its completion is sent, so
                // there is nothing to abort (OpenVMM: "always been no-ops").
                reply(self, size, NtStatus::SUCCESS, &[])
            }
            (InitState::Ready(_), Request::ExecuteSrb(srb)) => {
                let chunks = ranges.and_then(|r| gpa::srb_chunks(&r, srb.data_transfer_length()));
                Outcome::Srb(SrbJob {
                    transaction_id: p.transaction_id,
                    wants_completion,
                    request_size: size,
                    srb,
                    chunks,
                })
            }
            _ => reply(self, size, NtStatus::INVALID_DEVICE_STATE, &[]),
        }
    }

    /// A completion carrying `payload`, if the guest asked for one.
    fn answer(&mut self, transaction_id: u64, wants_completion: bool, payload: Vec<u8>) -> Outcome {
        if !wants_completion {
            return Outcome::Silent;
        }
        self.stats.completions += 1;
        Outcome::Reply(completion_packet(transaction_id, &payload))
    }

    fn srb_answer(
        &mut self,
        transaction_id: u64,
        wants_completion: bool,
        request_size: usize,
        request: &ScsiRequest,
        end: &SrbEnd,
    ) -> Outcome {
        self.stats.srbs += 1;
        if end.srb_status != SrbStatus::SUCCESS {
            self.stats.srb_failures += 1;
        }
        let result = SrbResult {
            scsi_status: end.scsi_status,
            srb_status: end.srb_status,
            data_transfer_length: end.moved,
            sense: end.sense.as_ref().map_or(&[][..], |s| &s[..]),
        };
        let payload = storvsp_protocol::srb_completion(request_size, request, &result);
        self.answer(transaction_id, wants_completion, payload)
    }

    /// Run an SRB against the disks and the guest's RAM; the completion
    /// packet, if one is wanted.
    /// (`Err`: the SRB's DMA was started; [`Self::finish`] completes it.)
    fn execute<M: SharedMemory>(
        &mut self,
        job: SrbJob,
        ram: Option<&M>,
        dma: Option<&dyn GuestDma>,
    ) -> Result<Outcome, StartedSrb> {
        match self.run_srb(&job, ram, dma) {
            SrbRun::Done(end) => Ok(self.srb_answer(
                job.transaction_id,
                job.wants_completion,
                job.request_size,
                &job.srb.request,
                &end,
            )),
            SrbRun::Started {
                ticket,
                address,
                req,
                fua,
            } => {
                self.stats.started += 1;
                Err(StartedSrb {
                    ticket,
                    address,
                    req,
                    fua,
                    transaction_id: job.transaction_id,
                    wants_completion: job.wants_completion,
                    request_size: job.request_size,
                    request: job.srb.request,
                })
            }
        }
    }

    /// The completion of a started SRB whose DMA ended with `outcome`
    /// (then the flush a FUA write asks for).
    fn finish(&mut self, s: &StartedSrb, outcome: Result<(), BackendError>) -> Outcome {
        let end = match self.find(s.address) {
            // The LUN cannot go away while the controller exists; a host
            // bug if it did.
            None => SrbEnd::host_error(),
            Some(disk) => {
                let mut outcome = outcome;
                if outcome.is_ok() && s.fua {
                    outcome = disk.backend_mut().flush();
                }
                let r = disk.complete_io(&s.req, outcome, Vec::new());
                if !r.is_good() {
                    SrbEnd::from_disk(&r)
                } else if matches!(s.req.op, IoOp::Read) {
                    self.stats.bytes_read += s.req.bytes as u64;
                    self.stats.dma_reads += 1;
                    SrbEnd::good(s.req.bytes)
                } else {
                    self.stats.bytes_written += s.req.bytes as u64;
                    self.stats.dma_writes += 1;
                    SrbEnd::from_disk(&r)
                }
            }
        };
        self.srb_answer(
            s.transaction_id,
            s.wants_completion,
            s.request_size,
            &s.request,
            &end,
        )
    }

    /// Wait for a started SRB's DMA and drop it (the channel is going
    /// away: nothing is sent, but the guest's memory must not be given up
    /// while the device may still write it).
    fn abandon(&mut self, s: &StartedSrb) {
        if let Some(disk) = self.find(s.address) {
            let _ = disk.backend_mut().wait_dma(s.ticket);
        }
    }

    fn run_srb<M: SharedMemory>(
        &mut self,
        job: &SrbJob,
        ram: Option<&M>,
        dma: Option<&dyn GuestDma>,
    ) -> SrbRun {
        let srb = &job.srb;
        let cdb = srb.cdb();
        let address = srb.address();
        // Every page of the buffer inside the guest's RAM before anything
        // is read, written or asked of the disk.
        let chunks = match &job.chunks {
            Ok(c) => c.as_slice(),
            Err(_) => return SrbRun::Done(SrbEnd::bad_buffer()),
        };
        // `open` refuses a channel without the guest's RAM.
        let Some(ram) = ram else {
            return SrbRun::Done(SrbEnd::host_error());
        };
        let ram_len = ram.len();
        if chunks
            .iter()
            .any(|c| c.gpa().checked_add(c.len as u64).is_none_or(|end| end > ram_len))
        {
            return SrbRun::Done(SrbEnd::bad_buffer());
        }
        let len = srb.data_transfer_length() as usize;
        // Linux sets data_in from the DMA direction (`storvsc_queuecommand`):
        // the buffer is the data-out or the data-in side; "unknown" (no
        // data for Linux) lets the command use it either way, as OpenVMM.
        let (out_len, in_cap) = match srb.direction {
            storvsp_protocol::DataDirection::Out => (len, 0),
            storvsp_protocol::DataDirection::In => (0, len),
            storvsp_protocol::DataDirection::Unspecified => (len, len),
        };
        let op = cdb.first().copied().unwrap_or(0xFF);
        if op == scsi_disk::op::REPORT_LUNS {
            let luns = self.luns_at(address);
            let r = scsi_disk::report_luns(cdb, &luns, in_cap);
            return SrbRun::Done(self.finish_data_in(&r, chunks, ram));
        }
        let Some(disk) = self.find(address) else {
            return SrbRun::Done(match not_present_inquiry(cdb, in_cap) {
                Some(r) => self.finish_data_in(&r, chunks, ram),
                None => SrbEnd::no_lun(),
            });
        };
        let req = match disk.plan(cdb, out_len, in_cap) {
            Plan::Done(r) => return SrbRun::Done(self.finish_data_in(&r, chunks, ram)),
            Plan::Io(req) => req,
        };
        let (write, fua) = match req.op {
            IoOp::Write { fua } => (true, fua),
            IoOp::Read => (false, false),
            IoOp::Flush => {
                let r = disk.run_io(&req, &[]);
                return SrbRun::Done(self.finish_data_in(&r, chunks, ram));
            }
        };
        // Straight into (or from) the guest's pages when the host can say
        // where they are and the backend can DMA there: started and
        // completed by a later poll if the backend can, else done now.
        if let Some(segments) = dma.and_then(|d| dma_segments(d, chunks, req.bytes, disk.sector_size())) {
            match disk.backend_mut().start_dma(req.lba, &segments, write) {
                Some(Ok(ticket)) => {
                    return SrbRun::Started {
                        ticket,
                        address,
                        req,
                        fua,
                    };
                }
                Some(Err(e)) => {
                    let r = disk.complete_io(&req, Err(e), Vec::new());
                    return SrbRun::Done(SrbEnd::from_disk(&r));
                }
                None => {}
            }
            let done = if write {
                disk.backend_mut().write_dma(req.lba, &segments)
            } else {
                disk.backend_mut().read_dma(req.lba, &segments)
            };
            if let Some(mut outcome) = done {
                if outcome.is_ok() && fua {
                    outcome = disk.backend_mut().flush();
                }
                let r = disk.complete_io(&req, outcome, Vec::new());
                if !r.is_good() {
                    return SrbRun::Done(SrbEnd::from_disk(&r));
                }
                if write {
                    self.stats.bytes_written += req.bytes as u64;
                    self.stats.dma_writes += 1;
                    return SrbRun::Done(SrbEnd::from_disk(&r));
                }
                self.stats.bytes_read += req.bytes as u64;
                self.stats.dma_reads += 1;
                return SrbRun::Done(SrbEnd::good(req.bytes));
            }
        }
        // Through a buffer of the host's.
        if write {
            let mut data = alloc::vec![0u8; req.bytes];
            if copy_from_guest(ram, chunks, &mut data).is_err() {
                return SrbRun::Done(SrbEnd::bad_buffer());
            }
            let r = disk.run_io(&req, &data);
            if r.is_good() {
                self.stats.bytes_written += r.data_out_used as u64;
            }
            return SrbRun::Done(SrbEnd::from_disk(&r));
        }
        let r = disk.run_io(&req, &[]);
        SrbRun::Done(self.finish_data_in(&r, chunks, ram))
    }

    /// Copy a result's data-in bytes to the guest and report it.
    fn finish_data_in<M: SharedMemory>(
        &mut self,
        r: &scsi_disk::ScsiResult,
        chunks: &[Chunk],
        ram: &M,
    ) -> SrbEnd {
        if !r.data_in.is_empty() {
            if copy_to_guest(ram, chunks, &r.data_in).is_err() {
                return SrbEnd::bad_buffer();
            }
            self.stats.bytes_read += r.data_in.len() as u64;
        }
        SrbEnd::from_disk(r)
    }

    /// The LUNs at (path, target), ascending.
    fn luns_at(&self, address: (u8, u8, u8)) -> Vec<u16> {
        let (path, target, _) = address;
        if path != 0 || target != 0 {
            return Vec::new();
        }
        let mut luns: Vec<u16> = self.luns.iter().map(|l| l.lun as u16).collect();
        luns.sort_unstable();
        luns
    }
}

/// Standard INQUIRY data for an address with no disk: peripheral
/// qualifier 3, device type 0x1F (SPC-4 §6.6.2: "not capable of
/// supporting a device here"), everything else zero (OpenVMM
/// `LOGICAL_UNIT_NOT_PRESENT_DEVICE`). Linux's scan then counts the target
/// as present with no LUN here and moves on (`scsi_probe_and_add_lun`).
/// `None` for anything but a standard INQUIRY into a data-in buffer.
fn not_present_inquiry(cdb: &[u8], cap: usize) -> Option<scsi_disk::ScsiResult> {
    if cdb.len() < 6 || cdb[0] != scsi_disk::op::INQUIRY || cdb[1] & 0x01 != 0 || cdb[2] != 0 {
        return None;
    }
    let alloc = u16::from_be_bytes([cdb[3], cdb[4]]) as usize;
    let mut d = alloc::vec![0u8; scsi_disk::INQUIRY_LEN];
    d[0] = 0x7F;
    d[2] = 0x06;
    d[3] = 0x02;
    d[4] = (scsi_disk::INQUIRY_LEN - 5) as u8;
    d.truncate(alloc.min(cap));
    Some(scsi_disk::ScsiResult::good(d))
}

/// Fill `buf` from the start of the guest buffer `chunks` describe.
fn copy_from_guest<M: SharedMemory>(ram: &M, chunks: &[Chunk], buf: &mut [u8]) -> Result<(), ()> {
    let mut done = 0usize;
    for c in chunks {
        if done == buf.len() {
            break;
        }
        let n = (c.len as usize).min(buf.len() - done);
        ram.read_at(c.gpa(), &mut buf[done..done + n]).map_err(|_| ())?;
        done += n;
    }
    if done == buf.len() { Ok(()) } else { Err(()) }
}

/// The host-physical segments of the first `bytes` of the guest buffer
/// `chunks` describe, adjacent runs merged, if every one is DMA-able guest
/// RAM and a whole number of `sector` bytes; else `None` (the caller
/// copies). At most one segment per chunk: the work is bounded by the SRB's
/// page count, which the parser bounded.
fn dma_segments(
    dma: &dyn GuestDma,
    chunks: &[Chunk],
    bytes: usize,
    sector: u32,
) -> Option<Vec<(u64, usize)>> {
    let mut segments: Vec<(u64, usize)> = Vec::new();
    let mut left = bytes;
    for c in chunks {
        if left == 0 {
            break;
        }
        let n = (c.len as usize).min(left);
        let phys = dma.dma_address(c.gpa(), n as u64)?;
        match segments.last_mut() {
            Some((at, len)) if *at + *len as u64 == phys => *len += n,
            _ => segments.push((phys, n)),
        }
        left -= n;
    }
    let whole = |len: usize| len.is_multiple_of(sector as usize);
    (left == 0 && !segments.is_empty() && segments.iter().all(|&(_, len)| whole(len))).then_some(segments)
}

/// Copy `data` to the start of the guest buffer `chunks` describe.
fn copy_to_guest<M: SharedMemory>(ram: &M, chunks: &[Chunk], data: &[u8]) -> Result<(), ()> {
    let mut done = 0usize;
    for c in chunks {
        if done == data.len() {
            break;
        }
        let n = (c.len as usize).min(data.len() - done);
        ram.write_at(c.gpa(), &data[done..done + n]).map_err(|_| ())?;
        done += n;
    }
    if done == data.len() { Ok(()) } else { Err(()) }
}

/// The storvsp device: a SCSI controller with disks of backend `B`,
/// offered over VMBus channel memory `M`.
///
/// Each [`Device::poll`] reads the guest's packets one at a time through
/// [`Channel::poll_each`] (so that an SRB can reach the guest's RAM, which
/// the channel owns, between packets) and sends the SRB's completion with
/// [`Channel::send_within`]; nothing is read while a completion waits for
/// room. A read or write whose DMA the backend starts
/// ([`BlockBackend::start_dma`]) is completed by this or a later poll when
/// the backend reports it (up to [`MAX_STARTED_SRBS`] at once per channel;
/// `close` and `reset` wait for them, so the guest's memory is never given
/// up under a running DMA).
pub struct Storvsp<M: SharedMemory, B: BlockBackend> {
    channel: Option<Channel<M>>,
    /// Disks, configuration and counters, shared with the sub-channels.
    controller: Rc<RefCell<Controller<B>>>,
    /// This channel's handshake (a sub-channel is Ready from the start).
    state: InitState,
    role: Role,
    /// SRBs whose DMA the backend is doing, oldest first.
    started: VecDeque<StartedSrb>,
}

impl<M: SharedMemory, B: BlockBackend> Storvsp<M, B> {
    /// A controller with `disk` at LUN 0.
    pub fn new(disk: ScsiDisk<B>, config: StorvspConfig) -> Result<Self, ConfigError> {
        let mut s = Self::empty(config)?;
        s.attach(0, disk)?;
        Ok(s)
    }

    /// A controller with no disks (attach them with [`Self::attach`]).
    pub fn empty(config: StorvspConfig) -> Result<Self, ConfigError> {
        let m = config.max_transfer_bytes;
        if !(4096..=MAX_TRANSFER_BYTES_LIMIT).contains(&m) || !m.is_multiple_of(4096) {
            return Err(ConfigError::MaxTransferBytes(m));
        }
        if config.max_sub_channels > MAX_SUB_CHANNELS {
            return Err(ConfigError::SubChannels(config.max_sub_channels));
        }
        Ok(Self {
            channel: None,
            controller: Rc::new(RefCell::new(Controller {
                config,
                luns: Vec::new(),
                stats: StorvspStats::default(),
                sub_offered: 0,
                sub_pending: None,
            })),
            state: InitState::Begin,
            role: Role::Primary,
            started: VecDeque::new(),
        })
    }

    /// Attach `disk` at `lun` (path 0, target 0). Do it before the guest
    /// scans the bus: no ENUMERATE_BUS is sent yet.
    pub fn attach(&mut self, lun: u8, disk: ScsiDisk<B>) -> Result<(), ConfigError> {
        if lun as usize >= MAX_LUNS {
            return Err(ConfigError::LunOutOfRange(lun));
        }
        let mut c = self.controller.borrow_mut();
        if c.luns.iter().any(|l| l.lun == lun) {
            return Err(ConfigError::LunInUse(lun));
        }
        c.luns.push(Lun { lun, disk });
        Ok(())
    }

    /// The disk at `lun` (shared with the sub-channels: borrowed while
    /// the returned guard lives).
    pub fn disk(&self, lun: u8) -> Option<core::cell::Ref<'_, ScsiDisk<B>>> {
        core::cell::Ref::filter_map(self.controller.borrow(), |c| {
            c.luns.iter().find(|l| l.lun == lun).map(|l| &l.disk)
        })
        .ok()
    }

    /// The disk at `lun`, mutable.
    pub fn disk_mut(&mut self, lun: u8) -> Option<core::cell::RefMut<'_, ScsiDisk<B>>> {
        core::cell::RefMut::filter_map(self.controller.borrow_mut(), |c| {
            c.luns.iter_mut().find(|l| l.lun == lun).map(|l| &mut l.disk)
        })
        .ok()
    }

    /// The configuration.
    pub fn config(&self) -> StorvspConfig {
        self.controller.borrow().config.clone()
    }

    /// Where the guest is in the handshake.
    pub fn state(&self) -> InitState {
        self.state
    }

    /// Which channel of the controller this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The negotiated protocol version, once agreed.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.state.version()
    }

    /// The counters (the controller's: every channel's together).
    pub fn stats(&self) -> StorvspStats {
        self.controller.borrow().stats
    }

    /// Sub-channels offered since the primary's handshake.
    pub fn sub_channels_offered(&self) -> u16 {
        self.controller.borrow().sub_offered
    }

    /// The open channel, if any.
    pub fn channel(&self) -> Option<&Channel<M>> {
        self.channel.as_ref()
    }

    /// The channel closed or reset: a primary starts its next handshake
    /// from nothing and drops its sub-channels (the host rescinds them); a
    /// sub-channel stays ready at its version.
    fn forget_handshake(&mut self) {
        if self.role == Role::Primary {
            self.state = InitState::Begin;
            let mut c = self.controller.borrow_mut();
            c.sub_offered = 0;
            c.sub_pending = None;
        }
    }

    /// The channel is going away: wait for every started SRB's DMA (the
    /// guest's memory is given up after this) and drop them unanswered.
    fn abandon_started(&mut self) {
        let mut c = self.controller.borrow_mut();
        for s in self.started.drain(..) {
            c.abandon(&s);
        }
    }

    /// SRBs started and not yet completed.
    pub fn started_in_flight(&self) -> usize {
        self.started.len()
    }

    /// The sub-channels the guest asked for since the last call
    /// ([`Device::take_sub_channels`] boxes these): each shares this
    /// controller's disks and counters and is ready at the version the
    /// primary negotiated, numbered from 1 in the order they are made.
    pub fn take_sub_channel_devices(&mut self) -> Vec<Self> {
        if self.role != Role::Primary || self.channel.is_none() {
            return Vec::new();
        }
        let Some((n, version)) = self.controller.borrow_mut().sub_pending.take() else {
            return Vec::new();
        };
        (0..n)
            .map(|_| {
                let index = {
                    let mut c = self.controller.borrow_mut();
                    c.sub_offered += 1;
                    c.sub_offered
                };
                Self {
                    channel: None,
                    controller: self.controller.clone(),
                    state: InitState::Ready(version),
                    role: Role::SubChannel(index),
                    started: VecDeque::new(),
                }
            })
            .collect()
    }
}

/// storvsp's halves of [`Channel::poll_each`]: a packet is handled inside
/// the ring read (handshake answers go back at once); an SRB then runs with
/// the guest's RAM and DMA, which the channel lends only between reads, and
/// its completion is sent.
struct SrbWork<'a, B: BlockBackend> {
    controller: &'a mut Controller<B>,
    state: &'a mut InitState,
    role: Role,
    started: &'a mut VecDeque<StartedSrb>,
}

impl<M: SharedMemory, B: BlockBackend> PacketWork<M> for SrbWork<'_, B> {
    type Item = SrbJob;

    fn read(&mut self, packet: &IncomingPacket<'_>) -> (Option<Vec<u8>>, Option<SrbJob>) {
        match self.controller.handle(self.state, self.role, packet) {
            Outcome::Reply(bytes) => (Some(bytes), None),
            Outcome::Silent => (None, None),
            Outcome::Srb(job) => (None, Some(job)),
        }
    }

    fn work(&mut self, channel: &mut Channel<M>, job: Option<SrbJob>, result: &mut PollResult) {
        let Some(job) = job else {
            return;
        };
        // Nothing is held here: the channel wrote any held packet before it
        // read this one, and this packet's handler sent nothing.
        match self
            .controller
            .execute(job, channel.guest_ram(), channel.guest_dma())
        {
            Ok(Outcome::Reply(bytes)) => {
                if channel.send_within(bytes, result).is_err() {
                    self.controller.stats.dropped += 1;
                }
            }
            Ok(_) => {}
            Err(started) => self.started.push_back(started),
        }
    }
}

/// Send the completions of the started SRBs whose DMA ended, oldest first
/// as they finish; stops while the channel holds a packet (the guest makes
/// room and signals, or the next poll tries again).
fn complete_started<M: SharedMemory, B: BlockBackend>(
    controller: &mut Controller<B>,
    channel: &mut Channel<M>,
    started: &mut VecDeque<StartedSrb>,
    result: &mut PollResult,
) {
    let mut i = 0;
    while i < started.len() && !channel.holding() && result.broke.is_none() {
        let outcome = controller
            .find(started[i].address)
            .and_then(|disk| disk.backend_mut().dma_done(started[i].ticket));
        let Some(outcome) = outcome else {
            i += 1;
            continue;
        };
        let Some(s) = started.remove(i) else {
            break;
        };
        if let Outcome::Reply(bytes) = controller.finish(&s, outcome)
            && channel.send_within(bytes, result).is_err()
        {
            controller.stats.dropped += 1;
        }
    }
}

impl<M: SharedMemory, B: BlockBackend + 'static> Device<M> for Storvsp<M, B> {
    fn offer(&self) -> OfferParams {
        let mut o = OfferParams::new(storvsp_protocol::SCSI_INTERFACE_GUID);
        o.interface_instance = self.controller.borrow().config.instance;
        o
    }

    fn open(&mut self, mut channel: Channel<M>) -> Result<(), OpenError> {
        if self.channel.is_some() {
            return Err(OpenError::AlreadyOpen);
        }
        if channel.guest_ram().is_none() {
            return Err(OpenError::Refused(
                "storvsp needs the guest's RAM for GPA-direct data",
            ));
        }
        // A ring reopened over pages an earlier open masked (a poll with
        // DMA in flight, then a close) must not keep the guest from
        // signalling its first request.
        channel.guest_signals(&mut PollResult::default());
        if self.role == Role::Primary {
            // Every open starts a new handshake (Linux runs
            // `storvsc_channel_init` after each open, resume included),
            // with no sub-channels.
            self.state = InitState::Begin;
            let mut c = self.controller.borrow_mut();
            c.sub_offered = 0;
            c.sub_pending = None;
        }
        self.channel = Some(channel);
        Ok(())
    }

    fn poll(&mut self, budget: u32) -> PollResult {
        let Some(channel) = self.channel.as_mut() else {
            return PollResult::default();
        };
        let mut controller = self.controller.borrow_mut();
        let mut result = PollResult::default();
        // A completion held for ring space goes first, even while no
        // packets are read (too many SRBs started).
        channel.flush_held(&mut result);
        complete_started(&mut controller, channel, &mut self.started, &mut result);
        if self.started.len() < MAX_STARTED_SRBS {
            let mut work = SrbWork {
                controller: &mut controller,
                state: &mut self.state,
                role: self.role,
                started: &mut self.started,
            };
            // Each packet starts at most one SRB: read no more than fit.
            let room = (MAX_STARTED_SRBS - work.started.len()) as u32;
            let r = channel.poll_each(budget.min(room), &mut work);
            result.signalled |= r.signalled;
            result.more |= r.more;
            if r.broke.is_some() {
                result.broke = r.broke;
            }
            // Whatever finished while the packets were read, and, for a
            // while, what finishes now.
            let spins = controller.config.completion_spins.min(MAX_COMPLETION_SPINS);
            for _ in 0..=spins {
                complete_started(&mut controller, channel, &mut self.started, &mut result);
                if self.started.is_empty() || channel.holding() || result.broke.is_some() {
                    break;
                }
                core::hint::spin_loop();
            }
        }
        // Started SRBs finish on their own: poll again to complete them
        // (unless a completion waits for ring space: the guest signals when
        // it has made room). When every one of them will interrupt the
        // host as it ends, that poll can wait for the interrupt.
        if !self.started.is_empty() && !channel.holding() {
            let interrupts = self.started.iter().all(|s| {
                controller
                    .find(s.address)
                    .is_some_and(|disk| disk.backend().completion_interrupts())
            });
            if interrupts {
                result.awaiting_device = true;
            } else {
                result.more = true;
            }
        }
        // Polled again anyway: the guest's next requests need no signal
        // (one world switch less per request for a child); at rest the
        // guest signals again, and a request it wrote meanwhile is read on
        // one more poll.
        channel.guest_signals(&mut result);
        result
    }

    fn close(&mut self) {
        self.abandon_started();
        self.channel = None;
        self.forget_handshake();
    }

    fn reset(&mut self) {
        self.abandon_started();
        self.channel = None;
        self.forget_handshake();
    }

    fn take_sub_channels(&mut self) -> Vec<Box<dyn Device<M>>>
    where
        M: 'static,
    {
        self.take_sub_channel_devices()
            .into_iter()
            .map(|d| Box::new(d) as Box<dyn Device<M>>)
            .collect()
    }

    fn inspect(&self, out: &mut dyn InspectSink) {
        let Some(channel) = &self.channel else {
            return;
        };
        let c = self.controller.borrow();
        match self.role {
            Role::Primary => {
                out.text("role", "channel", "primary");
                out.counter("sub_channels", "sub-channels offered", c.sub_offered.into());
            }
            Role::SubChannel(i) => out.text("role", "channel", &format!("sub-channel {i}")),
        }
        // Not "state": `channels --json` already has the channel's own.
        out.text("handshake", "handshake", self.state.name());
        let version = self
            .state
            .version()
            .map(|v| format!("{}.{}", v.major(), v.minor()))
            .unwrap_or_default();
        out.text("version", "vmstor version", &version);
        channel.inspect(out, "completions written");
        let s = &c.stats;
        out.counter("requests", "requests", s.requests);
        out.counter("completions", "completions", s.completions);
        out.counter("protocol_errors", "protocol errors", s.protocol_errors);
        out.counter("srbs", "SRBs", s.srbs);
        out.counter("srb_failures", "SRBs failed", s.srb_failures);
        out.counter("bytes_read", "bytes read", s.bytes_read);
        out.counter("bytes_written", "bytes written", s.bytes_written);
        out.counter("dma_reads", "reads placed in guest pages by DMA", s.dma_reads);
        out.counter("dma_writes", "writes taken from guest pages by DMA", s.dma_writes);
        out.counter(
            "dma_started",
            "DMA reads and writes completed by a later poll",
            s.started,
        );
        out.counter(
            "srbs_in_flight",
            "SRBs whose DMA is running",
            self.started.len() as u64,
        );
        out.counter("luns", "LUNs", c.luns.len() as u64);
        let total: u64 = c
            .luns
            .iter()
            .map(|l| l.disk.sector_count().saturating_mul(l.disk.sector_size() as u64))
            .sum();
        out.counter("disk_bytes", "disk bytes", total);
        let mut disks = String::new();
        for l in &c.luns {
            if !disks.is_empty() {
                disks.push_str(", ");
            }
            disks.push_str(&format!(
                "lun {}: {} x {} bytes",
                l.lun,
                l.disk.sector_count(),
                l.disk.sector_size()
            ));
        }
        out.text("disks", "disks", &disks);
    }
}
