//! Hyper-V synthetic SCSI (storvsc/storvsp) wire formats: vstor packets,
//! SRBs, protocol versions, shared by the provider and the clients.
//!
//! Every storvsc message is one VMBus packet whose in-band payload is a
//! `vstor_packet` ([`PacketHeader`] + a 52-byte union body). The guest
//! sends, each with completion requested (Linux 6.1
//! `drivers/scsi/storvsc_drv.c`, `storvsc_channel_init`):
//! BEGIN_INITIALIZATION, QUERY_PROTOCOL_VERSION (0x0602, 0x0600, 0x0501 in
//! that order until one answers status 0), QUERY_PROPERTIES,
//! END_INITIALIZATION, optionally CREATE_SUB_CHANNELS, then EXECUTE_SRB
//! for every SCSI command: in-band when it moves no data, as a GPA-direct
//! packet (`vmbus_sendpacket_mpb_desc`, one range) when it does. The host
//! answers every packet with a VMBus completion carrying a `vstor_packet`
//! whose operation is COMPLETE_IO and whose status is an NTSTATUS.
//!
//! Sizes (asserted below): `vmscsi_request` is 52 bytes since Windows 8
//! (36 before: the 16-byte "win8 extension" is the `vmscsi_size_delta`
//! older Linux subtracted), so `vstor_packet` is 64 bytes (48 pre-win8).
//! Linux removed its pre-win8 support in 5.19 (commit 86c8fb4d228e "scsi:
//! storvsc: Removing Pre Win8 related logic"): 6.1 always sends 64 bytes,
//! uses a 0x14-byte sense buffer, and drops any completion shorter than 64
//! bytes (`storvsc_on_channel_callback`, `minlen`). Like Hyper-V and
//! OpenVMM (`vm/devices/storage/storvsp`), the host answers each packet
//! with the size the guest sent (clamped to 12 + 52), see
//! [`Packet::request_size`].
//!
//! Sources: Linux 6.1 `drivers/scsi/storvsc_drv.c` (structs, operation
//! codes, SRB flags and statuses, how completions are interpreted),
//! microsoft/openvmm `vm/devices/storage/storvsp_protocol` and `storvsp`
//! (host behaviour: NTSTATUS values, per-version request sizes, channel
//! properties). Written fresh.
//!
//! Everything the guest wrote is an allegation: [`parse_packet`] and
//! [`gpa`] check every length, count and offset and report what the guest
//! got wrong as a typed error; nothing here panics on guest data.
//! Multi-byte fields are little-endian and unaligned (the C structs are
//! `__packed`), so the wire structs use zerocopy's `little_endian` types.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod fuzzing;
pub mod gpa;

use alloc::vec::Vec;
use core::fmt;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, KnownLayout, Unaligned};

/// zerocopy's byte view, re-exported so users of the wire structs need no
/// zerocopy dependency of their own.
pub use zerocopy::IntoBytes;

// ---------------------------------------------------------------------------
// GUIDs
// ---------------------------------------------------------------------------

/// A GUID in VMBus wire byte order (`vmbus::protocol::guid`).
pub use vmbus::protocol::guid;

/// Synthetic SCSI controller interface type,
/// ba6163d9-04a1-4d29-b605-72e2ffb1dc7f (Linux `include/linux/hyperv.h`
/// `HV_SCSI_GUID`).
pub const SCSI_INTERFACE_GUID: [u8; 16] = guid(
    0xba6163d9,
    0x04a1,
    0x4d29,
    [0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1, 0xdc, 0x7f],
);

/// IDE accelerator interface type, 32412632-86cb-44a2-9b5c-50d1417354f5
/// (`HV_IDE_GUID`).
pub const IDE_INTERFACE_GUID: [u8; 16] = guid(
    0x32412632,
    0x86cb,
    0x44a2,
    [0x9b, 0x5c, 0x50, 0xd1, 0x41, 0x73, 0x54, 0xf5],
);

// ---------------------------------------------------------------------------
// Open enums
// ---------------------------------------------------------------------------

/// `enum vstor_packet_operation`. Open: any value is representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Operation(pub u32);

impl Operation {
    /// Host → guest: the completion of a request (and of every init step).
    pub const COMPLETE_IO: Self = Self(1);
    /// Host → guest: a LUN went away (Linux rescans).
    pub const REMOVE_DEVICE: Self = Self(2);
    /// Guest → host: run one SCSI request block.
    pub const EXECUTE_SRB: Self = Self(3);
    /// Guest → host: reset one LUN.
    pub const RESET_LUN: Self = Self(4);
    /// Guest → host: reset the adapter.
    pub const RESET_ADAPTER: Self = Self(5);
    /// Guest → host: reset the bus (Linux `storvsc_host_reset_handler`).
    pub const RESET_BUS: Self = Self(6);
    /// Guest → host: first init step.
    pub const BEGIN_INITIALIZATION: Self = Self(7);
    /// Guest → host: last init step.
    pub const END_INITIALIZATION: Self = Self(8);
    /// Guest → host: propose a protocol version.
    pub const QUERY_PROTOCOL_VERSION: Self = Self(9);
    /// Guest → host: ask for the channel properties.
    pub const QUERY_PROPERTIES: Self = Self(10);
    /// Host → guest: LUNs changed, rescan the bus.
    pub const ENUMERATE_BUS: Self = Self(11);
    /// Guest → host (FC only): ask for the port/node WWNs.
    pub const FCHBA_DATA: Self = Self(12);
    /// Guest → host: open this many sub-channels.
    pub const CREATE_SUB_CHANNELS: Self = Self(13);
}

/// The NTSTATUS a host puts in `vstor_packet.status`. Linux only tests it
/// against 0 (`storvsc_execute_vstor_op`), Windows guests read the value.
/// Values from OpenVMM `storvsp_protocol` (`NtStatus`). Open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NtStatus(pub u32);

impl NtStatus {
    /// Success.
    pub const SUCCESS: Self = Self(0);
    /// The data did not fit (SRB data overrun).
    pub const BUFFER_OVERFLOW: Self = Self(0x8000_0005);
    /// The device is busy.
    pub const DEVICE_BUSY: Self = Self(0x8000_0011);
    /// Unspecified failure.
    pub const UNSUCCESSFUL: Self = Self(0xC000_0001);
    /// A field of the request is invalid.
    pub const INVALID_PARAMETER: Self = Self(0xC000_000D);
    /// The operation is not valid for this device.
    pub const INVALID_DEVICE_REQUEST: Self = Self(0xC000_0010);
    /// The proposed protocol version is not supported.
    pub const REVISION_MISMATCH: Self = Self(0xC000_0059);
    /// The addressed LUN does not exist.
    pub const DEVICE_DOES_NOT_EXIST: Self = Self(0xC000_00C0);
    /// The request came in the wrong protocol state.
    pub const INVALID_DEVICE_STATE: Self = Self(0xC000_0184);
    /// The device reported an I/O error.
    pub const IO_DEVICE_ERROR: Self = Self(0xC000_0185);
}

/// `vmscsi_request.srb_status`: a Windows SRB status in the low 6 bits
/// plus two flag bits (Linux `SRB_STATUS_*`, `SRB_STATUS()` masks the
/// flags). Open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SrbStatus(pub u8);

impl SrbStatus {
    /// Not completed (never sent by a host).
    pub const PENDING: Self = Self(0x00);
    /// Success: Linux takes `data_transfer_length` as the bytes moved.
    pub const SUCCESS: Self = Self(0x01);
    /// Aborted.
    pub const ABORTED: Self = Self(0x02);
    /// An error; with [`Self::AUTOSENSE_VALID`] the sense data explains it.
    pub const ERROR: Self = Self(0x04);
    /// The request is invalid (bad CDB and the like).
    pub const INVALID_REQUEST: Self = Self(0x06);
    /// Timed out.
    pub const TIMEOUT: Self = Self(0x09);
    /// The target did not answer.
    pub const SELECTION_TIMEOUT: Self = Self(0x0A);
    /// A bus reset happened.
    pub const BUS_RESET: Self = Self(0x0E);
    /// Data over/underrun. Linux keeps `data_transfer_length` only for
    /// this error, but also fails the command with DID_ERROR unless sense
    /// is valid: never use it for a plain short transfer.
    pub const DATA_OVERRUN: Self = Self(0x12);
    /// No such LUN: Linux marks the device gone and removes it.
    pub const INVALID_LUN: Self = Self(0x20);
    /// Host-internal error.
    pub const INTERNAL_ERROR: Self = Self(0x30);
    /// Flag: the sense data in the completion is valid (Linux copies it
    /// only with this flag and SCSI status CHECK CONDITION).
    pub const AUTOSENSE_VALID: u8 = 0x80;
    /// Flag: the queue is frozen.
    pub const QUEUE_FROZEN: u8 = 0x40;

    /// The status without its flag bits (Linux `SRB_STATUS()`).
    pub const fn status(self) -> Self {
        Self(self.0 & !(Self::AUTOSENSE_VALID | Self::QUEUE_FROZEN))
    }

    /// True if [`Self::AUTOSENSE_VALID`] is set.
    pub const fn autosense_valid(self) -> bool {
        self.0 & Self::AUTOSENSE_VALID != 0
    }

    /// This status with [`Self::AUTOSENSE_VALID`] set.
    pub const fn with_autosense(self) -> Self {
        Self(self.0 | Self::AUTOSENSE_VALID)
    }

    /// The NTSTATUS a host reports with this SRB status (OpenVMM
    /// `storvsp::convert_srb_status_to_nt_status`).
    pub const fn nt_status(self) -> NtStatus {
        match self.status() {
            Self::SUCCESS => NtStatus::SUCCESS,
            Self::INVALID_LUN => NtStatus::DEVICE_DOES_NOT_EXIST,
            Self::DATA_OVERRUN => NtStatus::BUFFER_OVERFLOW,
            _ => NtStatus::IO_DEVICE_ERROR,
        }
    }
}

/// SCSI status byte (SAM-5 §5.3). Open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScsiStatus(pub u8);

impl ScsiStatus {
    /// GOOD.
    pub const GOOD: Self = Self(0x00);
    /// CHECK CONDITION: sense data describes the error.
    pub const CHECK_CONDITION: Self = Self(0x02);
    /// CONDITION MET.
    pub const CONDITION_MET: Self = Self(0x04);
    /// BUSY.
    pub const BUSY: Self = Self(0x08);
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: Self = Self(0x18);
    /// TASK SET FULL.
    pub const TASK_SET_FULL: Self = Self(0x28);
    /// ACA ACTIVE.
    pub const ACA_ACTIVE: Self = Self(0x30);
    /// TASK ABORTED.
    pub const TASK_ABORTED: Self = Self(0x40);
}

/// `vmscsi_request.data_in` (Linux `enum storvsc_request_type`; Windows
/// calls these SCSI_IOCTL_DATA_OUT/IN/UNSPECIFIED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataDirection {
    /// 0: guest → device (a write).
    Out,
    /// 1: device → guest (a read).
    In,
    /// 2: no data, or unspecified.
    Unspecified,
}

impl DataDirection {
    /// The wire value.
    pub const fn to_wire(self) -> u8 {
        match self {
            Self::Out => 0,
            Self::In => 1,
            Self::Unspecified => 2,
        }
    }
}

// ---------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------

/// A vmstor protocol version, major in the high byte and minor in the low
/// (Linux `VMSTOR_PROTO_VERSION`). Open: any value the guest proposes is
/// representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion(pub u16);

impl ProtocolVersion {
    /// 2.0 (Windows Server 2008).
    pub const WIN6: Self = Self(0x0200);
    /// 4.2 (Windows 7 / 2008 R2).
    pub const WIN7: Self = Self(0x0402);
    /// 5.1 (Windows 8 / 2012): the 52-byte SRB.
    pub const WIN8: Self = Self(0x0501);
    /// 6.0 (Windows 8.1 / 2012 R2, "Blue").
    pub const WIN8_1: Self = Self(0x0600);
    /// 6.2 (Windows 10 / 2016, "Threshold"). Linux enables WRITE SAME for
    /// "Msft" disks from this version on (`storvsc_device_configure`).
    pub const WIN10: Self = Self(0x0602);

    /// Build from major and minor.
    pub const fn new(major: u8, minor: u8) -> Self {
        Self(((major as u16) << 8) | minor as u16)
    }

    /// Major number.
    pub const fn major(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Minor number.
    pub const fn minor(self) -> u8 {
        self.0 as u8
    }

    /// True from Windows 8 (5.1) on: the SRB carries the win8 extension.
    pub const fn is_win8_or_later(self) -> bool {
        self.0 >= Self::WIN8.0
    }

    /// Bytes of `vmscsi_request` at this version: 52, or 36 before win8.
    pub const fn srb_len(self) -> usize {
        if self.is_win8_or_later() {
            SRB_LEN_WIN8
        } else {
            SRB_LEN_PRE_WIN8
        }
    }

    /// Bytes of `vstor_packet` at this version: 64, or 48 before win8.
    pub const fn packet_len(self) -> usize {
        PACKET_HEADER_LEN + self.srb_len()
    }

    /// Sense buffer bytes at this version: 0x14, or 0x12 before win8
    /// (pre-5.19 Linux `vmstor_protocols[]`: POST_WIN7 / PRE_WIN8
    /// `STORVSC_SENSE_BUFFER_SIZE`).
    pub const fn sense_buffer_size(self) -> usize {
        if self.is_win8_or_later() {
            SENSE_BUFFER_SIZE
        } else {
            SENSE_BUFFER_SIZE_PRE_WIN8
        }
    }
}

/// The versions this host accepts, newest first: exactly the ones Linux
/// 6.1 proposes (`protocol_version[]` in storvsc_drv.c). Pre-win8 versions
/// parse ([`ProtocolVersion::srb_len`] knows their sizes) but are refused.
pub const HOST_VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::WIN10,
    ProtocolVersion::WIN8_1,
    ProtocolVersion::WIN8,
];

/// The guest proposed a version the host does not speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsupportedVersion(pub ProtocolVersion);

impl fmt::Display for UnsupportedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest proposed unsupported vmstor version {:#06x}", self.0.0)
    }
}

/// Answer a QUERY_PROTOCOL_VERSION: `Ok` if `proposed` is one of
/// `accepted` (pass [`HOST_VERSIONS`] normally).
pub fn negotiate(
    proposed: ProtocolVersion,
    accepted: &[ProtocolVersion],
) -> Result<ProtocolVersion, UnsupportedVersion> {
    if accepted.contains(&proposed) {
        Ok(proposed)
    } else {
        Err(UnsupportedVersion(proposed))
    }
}

// ---------------------------------------------------------------------------
// Wire structs
// ---------------------------------------------------------------------------

/// Bytes of [`PacketHeader`].
pub const PACKET_HEADER_LEN: usize = 12;
/// Bytes of the `vstor_packet` union (`buffer[0x34]`).
pub const PACKET_BODY_LEN: usize = 0x34;
/// Bytes of `vstor_packet` from win8 on.
pub const PACKET_LEN: usize = PACKET_HEADER_LEN + PACKET_BODY_LEN;
/// Bytes of `vmscsi_request` from win8 on.
pub const SRB_LEN_WIN8: usize = 0x34;
/// Bytes of `vmscsi_request` before win8 (without the win8 extension).
pub const SRB_LEN_PRE_WIN8: usize = 0x24;
/// Bytes of the win8 extension (the pre-5.19 Linux `vmscsi_size_delta`).
pub const WIN8_EXTENSION_LEN: usize = SRB_LEN_WIN8 - SRB_LEN_PRE_WIN8;
/// Longest CDB an SRB carries (`STORVSC_MAX_CMD_LEN`).
pub const MAX_CDB_LEN: usize = 0x10;
/// Sense bytes an SRB carries from win8 on (`STORVSC_SENSE_BUFFER_SIZE`).
pub const SENSE_BUFFER_SIZE: usize = 0x14;
/// Sense bytes before win8 (`PRE_WIN8_STORVSC_SENSE_BUFFER_SIZE`).
pub const SENSE_BUFFER_SIZE_PRE_WIN8: usize = 0x12;
/// `vstor_packet.flags`: the guest wants a completion
/// (`REQUEST_COMPLETION_FLAG`).
pub const REQUEST_COMPLETION_FLAG: u32 = 1;
/// `vmstorage_channel_properties.flags`: sub-channels are supported
/// (`STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL`).
pub const STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL: u32 = 1;

/// SRB flag bits (`SRB_FLAGS_*`, Linux sets them in
/// `storvsc_queuecommand`; the host needs none of them).
pub mod srb_flags {
    /// Tagged queueing.
    pub const QUEUE_ACTION_ENABLE: u32 = 0x0000_0002;
    /// Disable synchronous transfer (always set by Linux).
    pub const DISABLE_SYNCH_TRANSFER: u32 = 0x0000_0008;
    /// Data moves device → guest.
    pub const DATA_IN: u32 = 0x0000_0040;
    /// Data moves guest → device.
    pub const DATA_OUT: u32 = 0x0000_0080;
    /// Do not freeze the queue on error.
    pub const NO_QUEUE_FREEZE: u32 = 0x0000_0100;
}

/// The first 12 bytes of `vstor_packet`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct PacketHeader {
    /// [`Operation`] value.
    pub operation: U32,
    /// [`REQUEST_COMPLETION_FLAG`] from the guest, 0 from the host.
    pub flags: U32,
    /// [`NtStatus`] value (host → guest).
    pub status: U32,
}
const _: () = assert!(size_of::<PacketHeader>() == PACKET_HEADER_LEN);

/// `struct vmscsi_request` (`__packed`, 52 bytes with the win8 extension).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ScsiRequest {
    /// Size of this struct as the sender fills it (Linux: 52).
    pub length: U16,
    /// [`SrbStatus`] (host → guest).
    pub srb_status: u8,
    /// [`ScsiStatus`] (host → guest).
    pub scsi_status: u8,
    /// Port (Linux: the host number; hosts ignore it).
    pub port_number: u8,
    /// Path (bus/channel).
    pub path_id: u8,
    /// Target.
    pub target_id: u8,
    /// LUN.
    pub lun: u8,
    /// Valid bytes of [`Self::data`] as CDB (guest → host).
    pub cdb_length: u8,
    /// Sense buffer size (guest → host), valid sense bytes (host → guest).
    pub sense_info_length: u8,
    /// [`DataDirection`] wire value.
    pub data_in: u8,
    /// Reserved.
    pub reserved: u8,
    /// Bytes to move (guest → host), bytes moved (host → guest).
    pub data_transfer_length: U32,
    /// CDB (guest → host) or sense data (host → guest).
    pub data: [u8; SENSE_BUFFER_SIZE],
    /// Win8 extension: reserved.
    pub reserve: U16,
    /// Win8 extension: queue tag (`SP_UNTAGGED` = 0xFF from Linux).
    pub queue_tag: u8,
    /// Win8 extension: queue action (`SRB_SIMPLE_TAG_REQUEST` = 0x20).
    pub queue_action: u8,
    /// Win8 extension: [`srb_flags`].
    pub srb_flags: U32,
    /// Win8 extension: timeout in seconds (Linux: 60).
    pub time_out_value: U32,
    /// Win8 extension: queue sort key.
    pub queue_sort_key: U32,
}
const _: () = assert!(size_of::<ScsiRequest>() == SRB_LEN_WIN8);
const _: () = assert!(core::mem::offset_of!(ScsiRequest, reserve) == SRB_LEN_PRE_WIN8);
const _: () = assert!(core::mem::offset_of!(ScsiRequest, data_transfer_length) == 12);

/// `struct vmstorage_channel_properties` (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ChannelProperties {
    /// Reserved.
    pub reserved: U32,
    /// Most sub-channels the guest may ask for (Linux opens
    /// `min(online CPUs - 1, this)`).
    pub max_channel_count: U16,
    /// Reserved.
    pub reserved1: U16,
    /// [`STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL`].
    pub flags: U32,
    /// Largest data transfer per SRB (Linux caps `max_sectors` by it).
    pub max_transfer_bytes: U32,
    /// Reserved.
    pub reserved2: U64,
}
const _: () = assert!(size_of::<ChannelProperties>() == 24);

/// `struct vmstorage_protocol_version` (4 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ProtocolVersionBody {
    /// [`ProtocolVersion`] value.
    pub major_minor: U16,
    /// Windows build revision; Linux sends 0.
    pub revision: U16,
}
const _: () = assert!(size_of::<ProtocolVersionBody>() == 4);

/// `struct vstor_packet` at its win8 size (64 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct VstorPacket {
    /// Operation, flags, status.
    pub header: PacketHeader,
    /// The union: [`ScsiRequest`], [`ChannelProperties`],
    /// [`ProtocolVersionBody`], a u16 sub-channel count, ...
    pub body: [u8; PACKET_BODY_LEN],
}
const _: () = assert!(size_of::<VstorPacket>() == 64);
const _: () = assert!(PACKET_LEN == 64);
const _: () = assert!(ProtocolVersion::WIN7.packet_len() == 48);

// ---------------------------------------------------------------------------
// Parsing what the guest sent
// ---------------------------------------------------------------------------

/// Why a guest's vstor packet was refused. Every variant is the guest's
/// fault; the host answers it (or stops the channel), never panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than the packet header, or than the operation's body.
    ShortPacket {
        /// Bytes the guest sent.
        len: usize,
        /// Bytes the operation needs.
        need: usize,
    },
    /// An operation only the host sends (COMPLETE_IO, REMOVE_DEVICE,
    /// ENUMERATE_BUS), or one this host does not know.
    UnexpectedOperation(Operation),
    /// EXECUTE_SRB shorter than the SRB of the negotiated version.
    ShortSrb {
        /// SRB bytes the guest sent.
        len: usize,
        /// SRB bytes the negotiated version needs.
        need: usize,
    },
    /// `cdb_length` is 0 or past 16.
    BadCdbLength(u8),
    /// `data_in` is not 0, 1 or 2.
    BadDataDirection(u8),
    /// `data_transfer_length` is past the limit the host announced in
    /// [`ChannelProperties::max_transfer_bytes`].
    TransferTooLong {
        /// What the guest asked for.
        len: u32,
        /// The announced limit.
        max: u32,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ShortPacket { len, need } => {
                write!(f, "guest sent a {len}-byte vstor packet, {need} needed")
            }
            Self::UnexpectedOperation(op) => write!(f, "guest sent vstor operation {}", op.0),
            Self::ShortSrb { len, need } => write!(f, "guest sent a {len}-byte SRB, {need} needed"),
            Self::BadCdbLength(n) => write!(f, "guest SRB has cdb_length {n}"),
            Self::BadDataDirection(d) => write!(f, "guest SRB has data_in {d}"),
            Self::TransferTooLong { len, max } => {
                write!(f, "guest SRB moves {len} bytes, at most {max} allowed")
            }
        }
    }
}

/// A checked EXECUTE_SRB request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Srb {
    /// The request as sent, zero-extended to 52 bytes (a pre-win8 SRB has
    /// no extension).
    pub request: ScsiRequest,
    /// Direction the guest declared.
    pub direction: DataDirection,
}

impl Srb {
    /// The CDB: `cdb_length` (1..=16, checked) bytes.
    pub fn cdb(&self) -> &[u8] {
        let n = (self.request.cdb_length as usize).min(MAX_CDB_LEN);
        &self.request.data[..n]
    }

    /// Bytes the guest wants moved.
    pub fn data_transfer_length(&self) -> u32 {
        self.request.data_transfer_length.get()
    }

    /// (path, target, lun).
    pub fn address(&self) -> (u8, u8, u8) {
        (self.request.path_id, self.request.target_id, self.request.lun)
    }
}

/// What a guest's vstor packet asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// BEGIN_INITIALIZATION.
    BeginInitialization,
    /// END_INITIALIZATION.
    EndInitialization,
    /// QUERY_PROTOCOL_VERSION with the proposed version.
    QueryProtocolVersion(ProtocolVersion),
    /// QUERY_PROPERTIES.
    QueryProperties,
    /// CREATE_SUB_CHANNELS with the requested count.
    CreateSubChannels(u16),
    /// EXECUTE_SRB.
    ExecuteSrb(Srb),
    /// RESET_LUN.
    ResetLun,
    /// RESET_ADAPTER.
    ResetAdapter,
    /// RESET_BUS.
    ResetBus,
    /// FCHBA_DATA (Fibre Channel only; a SCSI host refuses it).
    FcHbaData,
}

/// A parsed guest packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// The operation and its body.
    pub request: Request,
    /// The header flags as sent ([`REQUEST_COMPLETION_FLAG`]).
    pub flags: u32,
    /// Body bytes the guest sent, clamped to 52: the completion carries
    /// this many body bytes back ([`completion`]). Hyper-V sizes its
    /// answers this way and Linux 6.1 depends on it during initialization
    /// (OpenVMM `storvsp::parse_packet`), while Windows guests expect
    /// exactly the negotiated size.
    pub request_size: usize,
}

/// What [`parse_packet`] checks an SRB against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrbLimits {
    /// The negotiated version (its SRB size is the minimum accepted).
    pub version: ProtocolVersion,
    /// The `max_transfer_bytes` the host announced.
    pub max_transfer_bytes: u32,
}

/// Parse the in-band bytes of a guest packet (the `vstor_packet` after the
/// VMBus descriptor, and for GPA-direct packets after the range list).
pub fn parse_packet(bytes: &[u8], limits: &SrbLimits) -> Result<Packet, ParseError> {
    let (header, body) = PacketHeader::read_from_prefix(bytes).map_err(|_| ParseError::ShortPacket {
        len: bytes.len(),
        need: PACKET_HEADER_LEN,
    })?;
    let request_size = body.len().min(PACKET_BODY_LEN);
    let op = Operation(header.operation.get());
    let need = |n: usize| -> Result<(), ParseError> {
        if body.len() < n {
            Err(ParseError::ShortPacket {
                len: bytes.len(),
                need: PACKET_HEADER_LEN + n,
            })
        } else {
            Ok(())
        }
    };
    let request = match op {
        Operation::BEGIN_INITIALIZATION => Request::BeginInitialization,
        Operation::END_INITIALIZATION => Request::EndInitialization,
        Operation::QUERY_PROPERTIES => Request::QueryProperties,
        Operation::RESET_LUN => Request::ResetLun,
        Operation::RESET_ADAPTER => Request::ResetAdapter,
        Operation::RESET_BUS => Request::ResetBus,
        Operation::FCHBA_DATA => Request::FcHbaData,
        Operation::QUERY_PROTOCOL_VERSION => {
            let (v, _) =
                ProtocolVersionBody::read_from_prefix(body).map_err(|_| ParseError::ShortPacket {
                    len: bytes.len(),
                    need: PACKET_HEADER_LEN + 4,
                })?;
            Request::QueryProtocolVersion(ProtocolVersion(v.major_minor.get()))
        }
        Operation::CREATE_SUB_CHANNELS => {
            need(2)?;
            Request::CreateSubChannels(u16::from_le_bytes([body[0], body[1]]))
        }
        Operation::EXECUTE_SRB => Request::ExecuteSrb(parse_srb(body, limits)?),
        other => return Err(ParseError::UnexpectedOperation(other)),
    };
    Ok(Packet {
        request,
        flags: header.flags.get(),
        request_size,
    })
}

fn parse_srb(body: &[u8], limits: &SrbLimits) -> Result<Srb, ParseError> {
    let need = limits.version.srb_len();
    if body.len() < need {
        return Err(ParseError::ShortSrb {
            len: body.len(),
            need,
        });
    }
    let mut request = ScsiRequest::new_zeroed();
    let n = body.len().min(SRB_LEN_WIN8);
    request.as_mut_bytes()[..n].copy_from_slice(&body[..n]);
    if !limits.version.is_win8_or_later() {
        // Whatever follows a pre-win8 SRB is not an extension.
        request.as_mut_bytes()[SRB_LEN_PRE_WIN8..].fill(0);
    }
    if request.cdb_length == 0 || request.cdb_length as usize > MAX_CDB_LEN {
        return Err(ParseError::BadCdbLength(request.cdb_length));
    }
    let direction = match request.data_in {
        0 => DataDirection::Out,
        1 => DataDirection::In,
        2 => DataDirection::Unspecified,
        d => return Err(ParseError::BadDataDirection(d)),
    };
    let len = request.data_transfer_length.get();
    if len > limits.max_transfer_bytes {
        return Err(ParseError::TransferTooLong {
            len,
            max: limits.max_transfer_bytes,
        });
    }
    Ok(Srb { request, direction })
}

// ---------------------------------------------------------------------------
// Building the host's answers
// ---------------------------------------------------------------------------

/// The in-band bytes of a COMPLETE_IO completion: the header with
/// `status`, then `body` zero-padded or truncated to `request_size` (take
/// it from [`Packet::request_size`]; at most 52).
pub fn completion(request_size: usize, status: NtStatus, body: &[u8]) -> Vec<u8> {
    let size = request_size.min(PACKET_BODY_LEN);
    let mut out = Vec::with_capacity(PACKET_HEADER_LEN + size);
    let header = PacketHeader {
        operation: Operation::COMPLETE_IO.0.into(),
        flags: 0.into(),
        status: status.0.into(),
    };
    out.extend_from_slice(header.as_bytes());
    let n = body.len().min(size);
    out.extend_from_slice(&body[..n]);
    out.resize(PACKET_HEADER_LEN + size, 0);
    out
}

/// Completion of a QUERY_PROTOCOL_VERSION: SUCCESS if `accepted`,
/// REVISION_MISMATCH otherwise (Linux then proposes the next version); the
/// body echoes the proposal.
pub fn version_completion(request_size: usize, proposed: ProtocolVersion, accepted: bool) -> Vec<u8> {
    let body = ProtocolVersionBody {
        major_minor: proposed.0.into(),
        revision: 0.into(),
    };
    let status = if accepted {
        NtStatus::SUCCESS
    } else {
        NtStatus::REVISION_MISMATCH
    };
    completion(request_size, status, body.as_bytes())
}

/// Completion of a QUERY_PROPERTIES: `max_sub_channels` (0 → no
/// multi-channel flag) and `max_transfer_bytes`.
pub fn properties_completion(request_size: usize, max_sub_channels: u16, max_transfer_bytes: u32) -> Vec<u8> {
    completion(
        request_size,
        NtStatus::SUCCESS,
        channel_properties(max_sub_channels, max_transfer_bytes).as_bytes(),
    )
}

/// The properties body [`properties_completion`] sends.
pub fn channel_properties(max_sub_channels: u16, max_transfer_bytes: u32) -> ChannelProperties {
    let flags = if max_sub_channels > 0 {
        STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL
    } else {
        0
    };
    ChannelProperties {
        reserved: 0.into(),
        max_channel_count: max_sub_channels.into(),
        reserved1: 0.into(),
        flags: flags.into(),
        max_transfer_bytes: max_transfer_bytes.into(),
        reserved2: 0.into(),
    }
}

/// How a SCSI command ended, as the completion reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrbResult<'a> {
    /// SCSI status.
    pub scsi_status: ScsiStatus,
    /// SRB status without flags ([`SrbStatus::AUTOSENSE_VALID`] is added
    /// when `sense` is non-empty).
    pub srb_status: SrbStatus,
    /// Bytes moved (Linux: resid = requested − this).
    pub data_transfer_length: u32,
    /// Sense data (fixed format), at most 20 bytes are sent.
    pub sense: &'a [u8],
}

impl<'a> SrbResult<'a> {
    /// The usual mapping of a SCSI result onto SRB status: GOOD →
    /// SUCCESS; CHECK CONDITION with sense → INVALID_REQUEST (sense key
    /// ILLEGAL REQUEST) or ERROR, both with autosense; anything else →
    /// ERROR. Linux's `storvsc_handle_error` leaves a result with valid
    /// autosense to the SCSI midlayer, which reads the sense key; without
    /// autosense it fails the command with DID_ERROR (retried).
    pub fn from_scsi(scsi_status: ScsiStatus, sense: &'a [u8], data_transfer_length: u32) -> Self {
        let srb_status = match scsi_status {
            ScsiStatus::GOOD => SrbStatus::SUCCESS,
            ScsiStatus::CHECK_CONDITION if sense.get(2).is_some_and(|k| k & 0x0F == 0x05) => {
                SrbStatus::INVALID_REQUEST
            }
            _ => SrbStatus::ERROR,
        };
        Self {
            scsi_status,
            srb_status,
            data_transfer_length,
            sense,
        }
    }
}

/// Completion of an EXECUTE_SRB. The SRB echoes the request's address,
/// CDB length and direction; carries the statuses, the sense data
/// (with [`SrbStatus::AUTOSENSE_VALID`] and `sense_info_length`) and the
/// bytes moved. A non-SUCCESS SRB reports 0 bytes moved: Linux ignores the
/// count then anyway, except for DATA_OVERRUN, and it turns a failed
/// INQUIRY or MODE SENSE(6) into a success (`storvsc_on_io_completion`),
/// so a count there would hand it stale buffer bytes as data.
pub fn srb_completion(request_size: usize, request: &ScsiRequest, result: &SrbResult<'_>) -> Vec<u8> {
    let mut srb = ScsiRequest::new_zeroed();
    srb.length = (SRB_LEN_WIN8 as u16).into();
    srb.path_id = request.path_id;
    srb.target_id = request.target_id;
    srb.lun = request.lun;
    srb.port_number = request.port_number;
    srb.cdb_length = request.cdb_length;
    srb.data_in = request.data_in;
    srb.scsi_status = result.scsi_status.0;
    let sense_len = result.sense.len().min(SENSE_BUFFER_SIZE);
    let mut status = result.srb_status.status();
    if sense_len > 0 {
        srb.data[..sense_len].copy_from_slice(&result.sense[..sense_len]);
        srb.sense_info_length = sense_len as u8;
        status = status.with_autosense();
    }
    srb.srb_status = status.0;
    let moved = if status.status() == SrbStatus::SUCCESS || status.status() == SrbStatus::DATA_OVERRUN {
        result.data_transfer_length
    } else {
        0
    };
    srb.data_transfer_length = moved.into();
    completion(request_size, status.nt_status(), srb.as_bytes())
}

/// A guest-side request (for clients and tests): the in-band bytes of a
/// 64-byte `vstor_packet` with `op`, REQUEST_COMPLETION_FLAG and `body`.
pub fn request_packet(op: Operation, body: &[u8]) -> Vec<u8> {
    let mut p = VstorPacket::new_zeroed();
    p.header.operation = op.0.into();
    p.header.flags = REQUEST_COMPLETION_FLAG.into();
    let n = body.len().min(PACKET_BODY_LEN);
    p.body[..n].copy_from_slice(&body[..n]);
    p.as_bytes().to_vec()
}

/// A guest-side SRB (for clients and tests): `cdb` (at most 16 bytes are
/// used), direction and transfer length, with the win8 fields Linux sets.
pub fn scsi_request(lun: u8, cdb: &[u8], direction: DataDirection, data_transfer_length: u32) -> ScsiRequest {
    let mut r = ScsiRequest::new_zeroed();
    r.length = (SRB_LEN_WIN8 as u16).into();
    r.lun = lun;
    let n = cdb.len().min(MAX_CDB_LEN);
    r.data[..n].copy_from_slice(&cdb[..n]);
    r.cdb_length = n as u8;
    r.sense_info_length = SENSE_BUFFER_SIZE as u8;
    r.data_in = direction.to_wire();
    r.data_transfer_length = data_transfer_length.into();
    r.time_out_value = 60.into();
    let dir = match direction {
        DataDirection::Out => srb_flags::DATA_OUT,
        DataDirection::In => srb_flags::DATA_IN,
        DataDirection::Unspecified => 0,
    };
    r.srb_flags = (srb_flags::DISABLE_SYNCH_TRANSFER | dir).into();
    r
}

#[cfg(test)]
mod tests;
