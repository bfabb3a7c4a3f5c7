//! Hyper-V integration services (ICs) wire formats, shared by the host's
//! providers (`vsp_ic`) and the guest's clients (`vsc_drivers::ic`).
//!
//! Every IC message is one VMBus in-band packet whose payload is a pipe
//! header ([`PipeHeader`], Linux `struct vmbuspipe_hdr`), the IC framework
//! header ([`IcMsgHeader`], `struct icmsg_hdr`) and a service body. The host
//! speaks first: it sends [`MessageType::NEGOTIATE`] with the framework and
//! service versions it supports; the guest answers in-band with
//! [`HeaderFlags::TRANSACTION`] | [`HeaderFlags::RESPONSE`] and the versions
//! it chose (Linux `drivers/hv/channel_mgmt.c` `vmbus_prep_negotiate_resp`);
//! then the host sends service requests which the guest answers by
//! rewriting the request in place (Linux `drivers/hv/hv_util.c`,
//! `hv_kvp.c`).
//!
//! Sources: Linux 6.1 `include/linux/hyperv.h` (`vmbuspipe_hdr`,
//! `ic_version`, `icmsg_hdr`, `icmsg_negotiate`, `shutdown_msg_data`,
//! `heartbeat_msg_data`, `ictimesync_data`, `ictimesync_ref_data`, the
//! `ICMSGTYPE_*`/`ICMSGHDRFLAG_*`/`HV_*` constants and the device GUIDs),
//! `include/uapi/linux/hyperv.h` (the `hv_kvp_*` family), and
//! microsoft/openvmm `vm/devices/hyperv_ic_protocol` (host side). Written
//! fresh; sizes are asserted against the Linux structs.
//!
//! Everything a peer wrote is checked: lengths, counts and string sizes are
//! validated and reported as [`ParseError`]; nothing here panics on peer
//! data. Multi-byte fields are little-endian and unaligned (zerocopy's
//! `little_endian` types), as the packed C structs are.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, KnownLayout, Unaligned};

/// zerocopy's byte view, re-exported so users of the wire structs need no
/// zerocopy dependency of their own.
pub use zerocopy::IntoBytes;

// ---------------------------------------------------------------------------
// GUIDs and versions
// ---------------------------------------------------------------------------

/// A GUID in VMBus wire byte order (`vmbus::protocol::guid`).
pub use vmbus::protocol::guid;

/// Shutdown IC interface type, 0e0b6031-5213-4934-818b-38d90ced39db
/// (`HV_SHUTDOWN_GUID`).
pub const SHUTDOWN_GUID: [u8; 16] = guid(
    0x0e0b_6031,
    0x5213,
    0x4934,
    [0x81, 0x8b, 0x38, 0xd9, 0x0c, 0xed, 0x39, 0xdb],
);
/// Time sync IC interface type, 9527e630-d0ae-497b-adce-e80ab0175caf
/// (`HV_TS_GUID`).
pub const TIMESYNC_GUID: [u8; 16] = guid(
    0x9527_e630,
    0xd0ae,
    0x497b,
    [0xad, 0xce, 0xe8, 0x0a, 0xb0, 0x17, 0x5c, 0xaf],
);
/// Heartbeat IC interface type, 57164f39-9115-4e78-ab55-382f3bd5422d
/// (`HV_HEART_BEAT_GUID`).
pub const HEARTBEAT_GUID: [u8; 16] = guid(
    0x5716_4f39,
    0x9115,
    0x4e78,
    [0xab, 0x55, 0x38, 0x2f, 0x3b, 0xd5, 0x42, 0x2d],
);
/// KVP IC interface type, a9a0f4e7-5a45-4d96-b827-8a841e8c03e6
/// (`HV_KVP_GUID`).
pub const KVP_GUID: [u8; 16] = guid(
    0xa9a0_f4e7,
    0x5a45,
    0x4d96,
    [0xb8, 0x27, 0x8a, 0x84, 0x1e, 0x8c, 0x03, 0xe6],
);

/// An IC version (`struct ic_version`: major, minor; 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Version {
    /// Major number.
    pub major: U16,
    /// Minor number.
    pub minor: U16,
}
const _: () = assert!(size_of::<Version>() == 4);

impl Version {
    /// `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self {
            major: U16::new(major),
            minor: U16::new(minor),
        }
    }

    /// `(major << 16) | minor`, as Linux stores a version in an int.
    pub fn packed(self) -> u32 {
        (u32::from(self.major.get()) << 16) | u32::from(self.minor.get())
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major.get(), self.minor.get())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major.get(), self.minor.get())
    }
}

/// Framework version 3.0 (`UTIL_FW_VERSION`).
pub const FRAMEWORK_3_0: Version = Version::new(3, 0);
/// Framework version 1.0 (`UTIL_WS2K8_FW_VERSION`).
pub const FRAMEWORK_1_0: Version = Version::new(1, 0);
/// Framework versions, newest first (Linux `fw_versions`, `hv_util.c`).
pub const FRAMEWORK_VERSIONS: &[Version] = &[FRAMEWORK_3_0, FRAMEWORK_1_0];
/// Shutdown service versions, newest first (`sd_versions`, `hv_util.c`).
pub const SHUTDOWN_VERSIONS: &[Version] = &[
    Version::new(3, 2),
    Version::new(3, 1),
    Version::new(3, 0),
    Version::new(1, 0),
];
/// Time sync service versions, newest first (`ts_versions`, `hv_util.c`).
pub const TIMESYNC_VERSIONS: &[Version] = &[Version::new(4, 0), Version::new(3, 0), Version::new(1, 0)];
/// Heartbeat service versions, newest first (`hb_versions`, `hv_util.c`).
pub const HEARTBEAT_VERSIONS: &[Version] = &[Version::new(3, 0), Version::new(1, 0)];
/// KVP service versions, newest first (`kvp_versions`, `hv_kvp.c`).
pub const KVP_VERSIONS: &[Version] = &[Version::new(4, 0), Version::new(3, 0), Version::new(1, 0)];
/// The first time sync version whose messages are [`TimesyncRefMsg`]
/// (Linux: `ts_srv_version > TS_VERSION_3`).
pub const TIMESYNC_REF_VERSION: Version = Version::new(4, 0);

/// A negotiation may list fewer than this many versions of each kind
/// (`IC_VERSION_NEGOTIATION_MAX_VER_COUNT`; Linux refuses counts at or
/// above it).
pub const MAX_VERSION_COUNT: u16 = 100;

/// The largest packet the host sends a guest (Linux's default
/// `max_pkt_size`, `VMBUS_DEFAULT_MAX_PKT_SIZE` = 4096, and the size of the
/// `hv_util` receive buffer `HV_HYP_PAGE_SIZE`).
pub const MAX_HOST_PACKET: usize = 4096;

// ---------------------------------------------------------------------------
// Open enums
// ---------------------------------------------------------------------------

/// `icmsgtype` (open: unknown values are data).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MessageType(pub u16);

impl MessageType {
    /// Version negotiation (`ICMSGTYPE_NEGOTIATE`).
    pub const NEGOTIATE: Self = Self(0);
    /// Heartbeat (`ICMSGTYPE_HEARTBEAT`).
    pub const HEARTBEAT: Self = Self(1);
    /// KVP exchange (`ICMSGTYPE_KVPEXCHANGE`).
    pub const KVP_EXCHANGE: Self = Self(2);
    /// Shutdown (`ICMSGTYPE_SHUTDOWN`).
    pub const SHUTDOWN: Self = Self(3);
    /// Time sync (`ICMSGTYPE_TIMESYNC`).
    pub const TIMESYNC: Self = Self(4);
    /// VSS (`ICMSGTYPE_VSS`).
    pub const VSS: Self = Self(5);
    /// File copy (`ICMSGTYPE_FCOPY`).
    pub const FCOPY: Self = Self(7);
}

/// `icflags` bits (open).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HeaderFlags(pub u8);

impl HeaderFlags {
    /// A transaction: the message expects (or is) an answer
    /// (`ICMSGHDRFLAG_TRANSACTION`).
    pub const TRANSACTION: Self = Self(1);
    /// A request (`ICMSGHDRFLAG_REQUEST`).
    pub const REQUEST: Self = Self(2);
    /// A response (`ICMSGHDRFLAG_RESPONSE`).
    pub const RESPONSE: Self = Self(4);
    /// What the host sets on a request.
    pub const HOST_REQUEST: Self = Self(1 | 2);
    /// What the guest sets on its answer (Linux `hv_util.c`).
    pub const GUEST_RESPONSE: Self = Self(1 | 4);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// An IC status (an HRESULT; open).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Status(pub u32);

impl Status {
    /// Success (`HV_S_OK`).
    pub const OK: Self = Self(0);
    /// Failure (`HV_E_FAIL`).
    pub const E_FAIL: Self = Self(0x8000_4005);
    /// No more items / continue (`HV_S_CONT`, ERROR_NO_MORE_ITEMS): the
    /// end of a KVP enumeration, and what `hv_kvp_daemon` answers for a
    /// key it does not have.
    pub const S_CONT: Self = Self(0x8007_0103);
    /// Not supported (`HV_ERROR_NOT_SUPPORTED`).
    pub const NOT_SUPPORTED: Self = Self(0x8007_0032);
    /// Invalid argument (`HV_INVALIDARG`).
    pub const INVALID_ARG: Self = Self(0x8007_0057);
    /// Not found (`HV_GUID_NOTFOUND`).
    pub const NOT_FOUND: Self = Self(0x8004_1002);
    /// Already exists (`HV_ERROR_ALREADY_EXISTS`).
    pub const ALREADY_EXISTS: Self = Self(0x8007_0050);
    /// Disk full (`HV_ERROR_DISK_FULL`): a KVP pool with no room left.
    pub const DISK_FULL: Self = Self(0x8007_0070);
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

// ---------------------------------------------------------------------------
// Framework structs
// ---------------------------------------------------------------------------

/// `struct vmbuspipe_hdr` (8 bytes): the pipe header that starts every IC
/// payload. Linux ignores it and echoes it back.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct PipeHeader {
    /// Pipe flags ([`PIPE_FLAG_DATA`] from our host).
    pub flags: U32,
    /// Bytes after this header.
    pub msg_size: U32,
}
const _: () = assert!(size_of::<PipeHeader>() == 8);

/// The pipe flags our host sets (a data message, as OpenVMM's message pipe).
pub const PIPE_FLAG_DATA: u32 = 1;

/// `struct icmsg_hdr` (20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct IcMsgHeader {
    /// `icverframe`: the framework version in use.
    pub framework: Version,
    /// `icmsgtype` ([`MessageType`]).
    pub msg_type: U16,
    /// `icvermsg`: the service version in use.
    pub message: Version,
    /// `icmsgsize`: bytes of body after the headers.
    pub msg_size: U16,
    /// `status` ([`Status`]).
    pub status: U32,
    /// `ictransaction_id`.
    pub transaction_id: u8,
    /// `icflags` ([`HeaderFlags`]).
    pub flags: u8,
    /// Reserved.
    pub reserved: [u8; 2],
}
const _: () = assert!(size_of::<IcMsgHeader>() == 20);

impl IcMsgHeader {
    /// The message type.
    pub fn message_type(&self) -> MessageType {
        MessageType(self.msg_type.get())
    }
    /// The flags.
    pub fn header_flags(&self) -> HeaderFlags {
        HeaderFlags(self.flags)
    }
    /// The status.
    pub fn status(&self) -> Status {
        Status(self.status.get())
    }
}

/// Both headers' size (`ICMSG_HDR` = 28).
pub const ICMSG_HDR: usize = size_of::<PipeHeader>() + size_of::<IcMsgHeader>();
const _: () = assert!(ICMSG_HDR == 28);

/// `struct icmsg_negotiate` without its version table (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct NegotiateHeader {
    /// `icframe_vercnt`: framework versions listed first.
    pub framework_count: U16,
    /// `icmsg_vercnt`: service versions listed after them.
    pub message_count: U16,
    /// Reserved.
    pub reserved: U32,
}
const _: () = assert!(size_of::<NegotiateHeader>() == 8);

/// `struct heartbeat_msg_data` (40 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct HeartbeatMsg {
    /// `seq_num`: the host's sequence; the guest answers it plus one.
    pub seq_num: U64,
    /// Reserved.
    pub reserved: [U32; 8],
}
const _: () = assert!(size_of::<HeartbeatMsg>() == 40);

/// `struct shutdown_msg_data` (2060 bytes).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ShutdownMsg {
    /// `reason_code` (a Windows SHTDN_REASON).
    pub reason_code: U32,
    /// `timeout_seconds`.
    pub timeout_seconds: U32,
    /// `flags` ([`ShutdownFlags`]).
    pub flags: U32,
    /// `display_message`: NUL-padded text.
    pub display_message: [u8; 2048],
}
const _: () = assert!(size_of::<ShutdownMsg>() == 2060);

/// Shutdown flag bits (Linux `shutdown_onchannelcallback`: 0 shut down,
/// 2 reboot, 4 hibernate, each optionally with 1, force).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ShutdownFlags(pub u32);

impl ShutdownFlags {
    /// Shut down (no bits).
    pub const SHUTDOWN: Self = Self(0);
    /// Force.
    pub const FORCE: Self = Self(1);
    /// Restart.
    pub const RESTART: Self = Self(2);
    /// Hibernate.
    pub const HIBERNATE: Self = Self(4);
}

/// A planned shutdown (`SHTDN_REASON_FLAG_PLANNED`, Windows SDK, as
/// OpenVMM's shutdown IC sends).
pub const SHTDN_REASON_FLAG_PLANNED: u32 = 0x8000_0000;

/// Time sync flag bits (`ICTIMESYNCFLAG_*`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TimesyncFlags(pub u8);

impl TimesyncFlags {
    /// A probe (no bits).
    pub const PROBE: Self = Self(0);
    /// Set the clock now (after boot or restore).
    pub const SYNC: Self = Self(1);
    /// A sample the guest may use to discipline its clock.
    pub const SAMPLE: Self = Self(2);
}

/// 100 ns intervals between 1601-01-01 and 1970-01-01 (`WLTIMEDELTA`).
pub const WLTIMEDELTA: u64 = 116_444_736_000_000_000;

/// `struct ictimesync_data` (25 bytes), time sync before 4.0.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct TimesyncMsg {
    /// `parenttime`: host UTC in 100 ns since 1601.
    pub parent_time: U64,
    /// `childtime` (unused).
    pub child_time: U64,
    /// `roundtriptime`.
    pub round_trip_time: U64,
    /// `flags` ([`TimesyncFlags`]).
    pub flags: u8,
}
const _: () = assert!(size_of::<TimesyncMsg>() == 25);

/// `struct ictimesync_ref_data` (22 bytes), time sync 4.0.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct TimesyncRefMsg {
    /// `parenttime`: host UTC in 100 ns since 1601.
    pub parent_time: U64,
    /// `vmreferencetime`: the partition reference counter when
    /// `parenttime` was read.
    pub vm_reference_time: U64,
    /// `flags` ([`TimesyncFlags`]).
    pub flags: u8,
    /// `leapflags`.
    pub leap_flags: u8,
    /// `stratum`.
    pub stratum: u8,
    /// Reserved.
    pub reserved: [u8; 3],
}
const _: () = assert!(size_of::<TimesyncRefMsg>() == 22);

// ---------------------------------------------------------------------------
// KVP
// ---------------------------------------------------------------------------

/// Key bytes in a KVP message (`HV_KVP_EXCHANGE_MAX_KEY_SIZE`).
pub const KVP_MAX_KEY_BYTES: usize = 512;
/// Value bytes in a KVP message (`HV_KVP_EXCHANGE_MAX_VALUE_SIZE`).
pub const KVP_MAX_VALUE_BYTES: usize = 2048;

/// `enum hv_kvp_exchg_op` (open).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KvpOperation(pub u8);

impl KvpOperation {
    /// `KVP_OP_GET`.
    pub const GET: Self = Self(0);
    /// `KVP_OP_SET`.
    pub const SET: Self = Self(1);
    /// `KVP_OP_DELETE`.
    pub const DELETE: Self = Self(2);
    /// `KVP_OP_ENUMERATE`.
    pub const ENUMERATE: Self = Self(3);
    /// `KVP_OP_GET_IP_INFO`.
    pub const GET_IP_INFO: Self = Self(4);
    /// `KVP_OP_SET_IP_INFO`.
    pub const SET_IP_INFO: Self = Self(5);
}

/// `enum hv_kvp_exchg_pool` (open).
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
pub struct KvpPool(pub u8);

impl KvpPool {
    /// `KVP_POOL_EXTERNAL`: written by the host.
    pub const EXTERNAL: Self = Self(0);
    /// `KVP_POOL_GUEST`: written by the guest.
    pub const GUEST: Self = Self(1);
    /// `KVP_POOL_AUTO`: the guest's automatic values (OS name, ...).
    pub const AUTO: Self = Self(2);
    /// `KVP_POOL_AUTO_EXTERNAL`.
    pub const AUTO_EXTERNAL: Self = Self(3);
    /// `KVP_POOL_AUTO_INTERNAL`.
    pub const AUTO_INTERNAL: Self = Self(4);
    /// Pools in `KVP_POOL_COUNT`.
    pub const COUNT: u8 = 5;

    /// Whether this is one of the [`Self::COUNT`] known pools.
    pub fn is_known(self) -> bool {
        self.0 < Self::COUNT
    }
}

/// KVP value types (registry types; open).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KvpValueType(pub u32);

impl KvpValueType {
    /// A UTF-16 string (`REG_SZ`).
    pub const STRING: Self = Self(1);
    /// An expandable string (`REG_EXPAND_SZ`).
    pub const EXPAND_STRING: Self = Self(2);
    /// A 32-bit number (`REG_U32` / `REG_DWORD`).
    pub const U32: Self = Self(4);
    /// A 64-bit number as Linux's uapi header numbers it (`REG_U64`).
    pub const U64_LINUX: Self = Self(8);
    /// A 64-bit number as Windows numbers it (`REG_QWORD`).
    pub const QWORD: Self = Self(11);
}

/// `struct hv_kvp_hdr` (4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct KvpHeader {
    /// `operation` ([`KvpOperation`]).
    pub operation: u8,
    /// `pool` ([`KvpPool`]).
    pub pool: u8,
    /// Padding.
    pub pad: U16,
}
const _: () = assert!(size_of::<KvpHeader>() == 4);

/// `struct hv_kvp_exchg_msg_value` (2572 bytes): the body of GET and SET.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct KvpValue {
    /// `value_type` ([`KvpValueType`]).
    pub value_type: U32,
    /// `key_size`: bytes of `key` in use, terminating NUL included.
    pub key_size: U32,
    /// `value_size`: bytes of `value` in use.
    pub value_size: U32,
    /// `key`: UTF-16LE.
    pub key: [u8; KVP_MAX_KEY_BYTES],
    /// `value`: UTF-16LE for strings, or a little-endian number.
    pub value: [u8; KVP_MAX_VALUE_BYTES],
}
const _: () = assert!(size_of::<KvpValue>() == 2572);

/// `struct hv_kvp_msg_enumerate` (2576 bytes).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct KvpEnumerate {
    /// `index`: which entry of the pool.
    pub index: U32,
    /// The entry (filled by the guest).
    pub data: KvpValue,
}
const _: () = assert!(size_of::<KvpEnumerate>() == 2576);

/// `struct hv_kvp_msg_delete` (516 bytes).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct KvpDelete {
    /// `key_size`: bytes of `key` in use, terminating NUL included.
    pub key_size: U32,
    /// `key`: UTF-16LE.
    pub key: [u8; KVP_MAX_KEY_BYTES],
}
const _: () = assert!(size_of::<KvpDelete>() == 516);

/// The KVP message body the host sends for GET, SET, DELETE and ENUMERATE:
/// the KVP header and room for the largest of them (as OpenVMM's
/// `KvpMessage`, 2580 bytes).
pub const KVP_MESSAGE_SIZE: usize = size_of::<KvpHeader>() + size_of::<KvpEnumerate>();
const _: () = assert!(KVP_MESSAGE_SIZE == 2580);
const _: () = assert!(ICMSG_HDR + KVP_MESSAGE_SIZE <= MAX_HOST_PACKET);
const _: () = assert!(ICMSG_HDR + size_of::<ShutdownMsg>() <= MAX_HOST_PACKET);

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why peer bytes were refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ParseError {
    /// Fewer bytes than the structure needs.
    Short {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes there.
        have: usize,
    },
    /// `icmsgsize` claims more body than the packet holds.
    MessageSize {
        /// `icmsgsize`.
        declared: u16,
        /// Bytes after the headers.
        available: usize,
    },
    /// A negotiation lists too many versions (at or above
    /// [`MAX_VERSION_COUNT`]).
    TooManyVersions {
        /// `icframe_vercnt`.
        framework: u16,
        /// `icmsg_vercnt`.
        message: u16,
    },
    /// A string's byte length is odd, zero, or larger than its array.
    StringSize {
        /// Which string.
        what: &'static str,
        /// The claimed size.
        size: u32,
    },
    /// A string is not valid UTF-16.
    Utf16(&'static str),
    /// A value of this type cannot be read.
    ValueType(u32),
    /// The message is not of the kind expected.
    MessageType(u16),
    /// The KVP operation is not one this code handles.
    KvpOperation(u8),
    /// The KVP pool is not one of the five.
    KvpPool(u8),
    /// Something to send would not fit its field or packet.
    TooLong(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short { what, need, have } => write!(f, "{what}: {have} bytes, {need} needed"),
            Self::MessageSize { declared, available } => {
                write!(f, "icmsgsize {declared} but {available} bytes of body")
            }
            Self::TooManyVersions { framework, message } => {
                write!(f, "{framework} framework and {message} service versions listed")
            }
            Self::StringSize { what, size } => write!(f, "{what}: bad size {size}"),
            Self::Utf16(what) => write!(f, "{what}: not UTF-16"),
            Self::ValueType(t) => write!(f, "KVP value type {t}"),
            Self::MessageType(t) => write!(f, "unexpected message type {t}"),
            Self::KvpOperation(o) => write!(f, "KVP operation {o}"),
            Self::KvpPool(p) => write!(f, "KVP pool {p}"),
            Self::TooLong(what) => write!(f, "{what}: too long"),
        }
    }
}

fn read<T: FromBytes>(bytes: &[u8], what: &'static str) -> Result<T, ParseError> {
    T::read_from_prefix(bytes)
        .map(|(v, _)| v)
        .map_err(|_| ParseError::Short {
            what,
            need: size_of::<T>(),
            have: bytes.len(),
        })
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// A parsed IC payload: both headers and what follows them.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// The pipe header.
    pub pipe: PipeHeader,
    /// The IC header.
    pub header: IcMsgHeader,
    /// Every byte after the headers (Linux reads the body by the packet's
    /// length, not by `icmsgsize`).
    pub rest: &'a [u8],
}

impl<'a> Message<'a> {
    /// Parse an in-band payload: at least [`ICMSG_HDR`] bytes (Linux
    /// `hv_util.c`: "Ensure recvlen is big enough to read header data").
    pub fn parse(payload: &'a [u8]) -> Result<Self, ParseError> {
        let pipe: PipeHeader = read(payload, "pipe header")?;
        let header: IcMsgHeader = read(payload.get(8..).unwrap_or(&[]), "IC header")?;
        let rest = payload.get(ICMSG_HDR..).unwrap_or(&[]);
        Ok(Self { pipe, header, rest })
    }

    /// The body as `icmsgsize` sizes it, checked against the packet (what
    /// the host requires of a guest's answer, as OpenVMM's `read_message`).
    pub fn body(&self) -> Result<&'a [u8], ParseError> {
        let declared = self.header.msg_size.get();
        self.rest
            .get(..usize::from(declared))
            .ok_or(ParseError::MessageSize {
                declared,
                available: self.rest.len(),
            })
    }
}

/// A negotiation's version lists.
#[derive(Clone, Copy, Debug)]
pub struct Negotiate<'a> {
    /// Framework versions.
    pub framework: &'a [Version],
    /// Service versions.
    pub message: &'a [Version],
}

impl<'a> Negotiate<'a> {
    /// Parse a negotiation body: the counts must be below
    /// [`MAX_VERSION_COUNT`] and the table must fit (Linux 6.1
    /// `vmbus_prep_negotiate_resp`, `ICMSG_NEGOTIATE_PKT_SIZE`).
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let h: NegotiateHeader = read(body, "negotiate header")?;
        let (fw, msg) = (h.framework_count.get(), h.message_count.get());
        if fw >= MAX_VERSION_COUNT || msg >= MAX_VERSION_COUNT {
            return Err(ParseError::TooManyVersions {
                framework: fw,
                message: msg,
            });
        }
        let table = body.get(size_of::<NegotiateHeader>()..).unwrap_or(&[]);
        let total = usize::from(fw) + usize::from(msg);
        let (versions, _) =
            <[Version]>::ref_from_prefix_with_elems(table, total).map_err(|_| ParseError::Short {
                what: "version table",
                need: total * 4,
                have: table.len(),
            })?;
        let (framework, message) = versions.split_at(usize::from(fw));
        Ok(Self { framework, message })
    }
}

/// The highest of `ours` (newest first) that `theirs` lists, as Linux picks
/// (`vmbus_prep_negotiate_resp`: our list in order, first match wins).
pub fn choose(ours: &[Version], theirs: &[Version]) -> Option<Version> {
    ours.iter().copied().find(|v| theirs.contains(v))
}

fn headers(msg_type: MessageType, versions: (Version, Version), body_len: usize) -> [u8; ICMSG_HDR] {
    let pipe = PipeHeader {
        flags: U32::new(PIPE_FLAG_DATA),
        msg_size: U32::new((size_of::<IcMsgHeader>() + body_len) as u32),
    };
    let header = IcMsgHeader {
        framework: versions.0,
        msg_type: U16::new(msg_type.0),
        message: versions.1,
        msg_size: U16::new(body_len.min(usize::from(u16::MAX)) as u16),
        status: U32::new(0),
        transaction_id: 0,
        flags: HeaderFlags::HOST_REQUEST.0,
        reserved: [0; 2],
    };
    let mut out = [0u8; ICMSG_HDR];
    out[..8].copy_from_slice(pipe.as_bytes());
    out[8..].copy_from_slice(header.as_bytes());
    out
}

/// A host request: headers (flags TRANSACTION|REQUEST, status 0) and
/// `body`, at `versions` (framework, service). Refused if it would exceed
/// [`MAX_HOST_PACKET`] with the VMBus descriptor.
pub fn build_request(
    msg_type: MessageType,
    versions: (Version, Version),
    body: &[u8],
) -> Result<Vec<u8>, ParseError> {
    if ICMSG_HDR + body.len() + 16 > MAX_HOST_PACKET {
        return Err(ParseError::TooLong("IC request"));
    }
    let mut out = Vec::with_capacity(ICMSG_HDR + body.len());
    out.extend_from_slice(&headers(msg_type, versions, body.len()));
    out.extend_from_slice(body);
    Ok(out)
}

/// The host's negotiation request: [`MessageType::NEGOTIATE`] listing
/// `framework` then `message` versions (OpenVMM `IcPipe::negotiate`; the
/// header's own versions are zero, as OpenVMM sends).
pub fn build_negotiate(framework: &[Version], message: &[Version]) -> Result<Vec<u8>, ParseError> {
    if framework.len() >= usize::from(MAX_VERSION_COUNT) || message.len() >= usize::from(MAX_VERSION_COUNT) {
        return Err(ParseError::TooLong("version list"));
    }
    let h = NegotiateHeader {
        framework_count: U16::new(framework.len() as u16),
        message_count: U16::new(message.len() as u16),
        reserved: U32::new(0),
    };
    let mut body = Vec::with_capacity(8 + 4 * (framework.len() + message.len()));
    body.extend_from_slice(h.as_bytes());
    body.extend_from_slice(framework.as_bytes());
    body.extend_from_slice(message.as_bytes());
    build_request(
        MessageType::NEGOTIATE,
        (Version::new(0, 0), Version::new(0, 0)),
        &body,
    )
}

/// The guest's answer to a request: the request rewritten in place, as
/// Linux does: flags TRANSACTION|RESPONSE, `status`, the body edited by
/// `edit` (which may grow the payload). Needs the two headers.
pub fn build_response(
    request: &[u8],
    status: Status,
    edit: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>, ParseError> {
    let mut out = Vec::from(request);
    let mut header: IcMsgHeader = read(out.get(8..).unwrap_or(&[]), "IC header")?;
    header.flags = HeaderFlags::GUEST_RESPONSE.0;
    header.status = U32::new(status.0);
    out[8..ICMSG_HDR].copy_from_slice(header.as_bytes());
    edit(&mut out);
    Ok(out)
}

/// The guest's answer to a negotiation (Linux `vmbus_prep_negotiate_resp`):
/// `icmsgsize` 16, counts 1/1 and the chosen (framework, service) versions
/// on success; counts 0/0 on failure.
pub fn build_negotiate_response(
    request: &[u8],
    chosen: Option<(Version, Version)>,
) -> Result<Vec<u8>, ParseError> {
    build_response(request, Status::OK, |out| {
        let need = ICMSG_HDR + 16;
        if out.len() < need {
            out.resize(need, 0);
        }
        out[8 + 10..8 + 12].copy_from_slice(&16u16.to_le_bytes());
        let (counts, fw, msg) = match chosen {
            Some((fw, msg)) => (1u16, fw, msg),
            None => (0u16, Version::new(0, 0), Version::new(0, 0)),
        };
        out[ICMSG_HDR..ICMSG_HDR + 2].copy_from_slice(&counts.to_le_bytes());
        out[ICMSG_HDR + 2..ICMSG_HDR + 4].copy_from_slice(&counts.to_le_bytes());
        out[ICMSG_HDR + 8..ICMSG_HDR + 12].copy_from_slice(fw.as_bytes());
        out[ICMSG_HDR + 12..ICMSG_HDR + 16].copy_from_slice(msg.as_bytes());
    })
}

/// What a guest answered to a negotiation: `Some((framework, service))`,
/// or `None` if it supports none of the offered versions.
pub fn parse_negotiate_response(body: &[u8]) -> Result<Option<(Version, Version)>, ParseError> {
    let n = Negotiate::parse(body)?;
    match (n.framework, n.message) {
        ([fw], [msg]) => Ok(Some((*fw, *msg))),
        ([], []) => Ok(None),
        _ => Err(ParseError::TooManyVersions {
            framework: n.framework.len() as u16,
            message: n.message.len() as u16,
        }),
    }
}

// --- heartbeat ---

/// A heartbeat body carrying `seq`.
pub fn heartbeat_body(seq: u64) -> HeartbeatMsg {
    HeartbeatMsg {
        seq_num: U64::new(seq),
        reserved: [U32::new(0); 8],
    }
}

/// The sequence number of a heartbeat body: 8 bytes are enough (Linux:
/// "Reserved area is not included in the check as the host may not fill
/// it up entirely").
pub fn parse_heartbeat(body: &[u8]) -> Result<u64, ParseError> {
    read::<U64>(body, "heartbeat").map(|s| s.get())
}

// --- shutdown ---

/// A shutdown request as the guest reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownRequest {
    /// `reason_code`.
    pub reason_code: u32,
    /// `timeout_seconds`.
    pub timeout_seconds: u32,
    /// `flags`.
    pub flags: ShutdownFlags,
    /// The display message up to its first NUL, lossily decoded.
    pub message: String,
}

/// A shutdown body; `message` is cut to fit 2047 bytes (on a character
/// boundary) and NUL-terminated.
pub fn shutdown_body(
    flags: ShutdownFlags,
    reason_code: u32,
    timeout_seconds: u32,
    message: &str,
) -> ShutdownMsg {
    let mut m = ShutdownMsg::new_zeroed();
    m.reason_code = U32::new(reason_code);
    m.timeout_seconds = U32::new(timeout_seconds);
    m.flags = U32::new(flags.0);
    let mut end = message.len().min(2047);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    m.display_message[..end].copy_from_slice(&message.as_bytes()[..end]);
    m
}

/// Parse a shutdown body: the whole 2060-byte struct is required (Linux
/// `shutdown_onchannelcallback`).
pub fn parse_shutdown(body: &[u8]) -> Result<ShutdownRequest, ParseError> {
    let m: ShutdownMsg = read(body, "shutdown")?;
    let text = m.display_message.split(|b| *b == 0).next().unwrap_or(&[]);
    Ok(ShutdownRequest {
        reason_code: m.reason_code.get(),
        timeout_seconds: m.timeout_seconds.get(),
        flags: ShutdownFlags(m.flags.get()),
        message: String::from_utf8_lossy(text).into_owned(),
    })
}

// --- time sync ---

/// A time sample (either message format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeSample {
    /// Host UTC, 100 ns since 1601-01-01.
    pub host_time: u64,
    /// The partition reference time the sample was taken at (4.0 only).
    pub reference_time: Option<u64>,
    /// Flags.
    pub flags: TimesyncFlags,
}

/// The time sync body for service version `version`: [`TimesyncRefMsg`]
/// from 4.0, [`TimesyncMsg`] before.
pub fn timesync_body(version: Version, sample: TimeSample) -> Vec<u8> {
    if version.packed() >= TIMESYNC_REF_VERSION.packed() {
        let m = TimesyncRefMsg {
            parent_time: U64::new(sample.host_time),
            vm_reference_time: U64::new(sample.reference_time.unwrap_or(0)),
            flags: sample.flags.0,
            leap_flags: 0,
            stratum: 0,
            reserved: [0; 3],
        };
        Vec::from(m.as_bytes())
    } else {
        let m = TimesyncMsg {
            parent_time: U64::new(sample.host_time),
            child_time: U64::new(0),
            round_trip_time: U64::new(0),
            flags: sample.flags.0,
        };
        Vec::from(m.as_bytes())
    }
}

/// Parse a time sync body for service version `version` (Linux
/// `timesync_onchannelcallback`: the whole struct of that version).
pub fn parse_timesync(version: Version, body: &[u8]) -> Result<TimeSample, ParseError> {
    if version.packed() >= TIMESYNC_REF_VERSION.packed() {
        let m: TimesyncRefMsg = read(body, "timesync 4.0")?;
        Ok(TimeSample {
            host_time: m.parent_time.get(),
            reference_time: Some(m.vm_reference_time.get()),
            flags: TimesyncFlags(m.flags),
        })
    } else {
        let m: TimesyncMsg = read(body, "timesync")?;
        Ok(TimeSample {
            host_time: m.parent_time.get(),
            reference_time: None,
            flags: TimesyncFlags(m.flags),
        })
    }
}

// --- KVP ---

/// Write `s` as NUL-terminated UTF-16LE into `out`; returns the bytes used
/// (terminator included), as the KVP size fields count them.
pub fn encode_utf16(s: &str, out: &mut [u8], what: &'static str) -> Result<u32, ParseError> {
    let mut at = 0;
    for unit in s.encode_utf16().chain(core::iter::once(0)) {
        let slot = out.get_mut(at..at + 2).ok_or(ParseError::TooLong(what))?;
        slot.copy_from_slice(&unit.to_le_bytes());
        at += 2;
    }
    Ok(at as u32)
}

/// Read a UTF-16LE string of `size` bytes from `array`: `size` must be
/// even and fit the array; decoding stops at the first NUL (a missing
/// terminator is accepted; the size bounds the read).
pub fn decode_utf16(array: &[u8], size: u32, what: &'static str) -> Result<String, ParseError> {
    let n = usize::try_from(size).map_err(|_| ParseError::StringSize { what, size })?;
    if n % 2 != 0 || n > array.len() {
        return Err(ParseError::StringSize { what, size });
    }
    let units = array[..n]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0);
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .map_err(|_| ParseError::Utf16(what))
}

/// A KVP value as read from a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvpData {
    /// A string.
    String(String),
    /// A 32-bit number.
    U32(u32),
    /// A 64-bit number.
    U64(u64),
}

impl KvpData {
    /// The value as the Linux daemon stores it: numbers in decimal
    /// (`kvp_send_key`: `sprintf("%d")` / `"%llu"`).
    pub fn to_text(&self) -> String {
        match self {
            Self::String(s) => s.clone(),
            Self::U32(v) => alloc::format!("{v}"),
            Self::U64(v) => alloc::format!("{v}"),
        }
    }
}

/// Read a [`KvpValue`]'s key and value.
pub fn parse_kvp_value(v: &KvpValue) -> Result<(String, KvpData), ParseError> {
    let key = decode_utf16(&v.key, v.key_size.get(), "KVP key")?;
    let size = v.value_size.get();
    let data = match KvpValueType(v.value_type.get()) {
        KvpValueType::STRING | KvpValueType::EXPAND_STRING => {
            KvpData::String(decode_utf16(&v.value, size, "KVP value")?)
        }
        KvpValueType::U32 => KvpData::U32(u32::from_le_bytes([
            v.value[0], v.value[1], v.value[2], v.value[3],
        ])),
        KvpValueType::U64_LINUX | KvpValueType::QWORD => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v.value[..8]);
            KvpData::U64(u64::from_le_bytes(b))
        }
        other => return Err(ParseError::ValueType(other.0)),
    };
    Ok((key, data))
}

/// Fill a [`KvpValue`] with a string key and string value.
pub fn kvp_value(key: &str, value: &str) -> Result<KvpValue, ParseError> {
    let mut v = KvpValue::new_zeroed();
    v.value_type = U32::new(KvpValueType::STRING.0);
    v.key_size = U32::new(encode_utf16(key, &mut v.key, "KVP key")?);
    v.value_size = U32::new(encode_utf16(value, &mut v.value, "KVP value")?);
    Ok(v)
}

/// A KVP request as the guest reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvpRequest {
    /// Get `key`.
    Get {
        /// Pool.
        pool: KvpPool,
        /// Key.
        key: String,
    },
    /// Set `key` to `value`.
    Set {
        /// Pool.
        pool: KvpPool,
        /// Key.
        key: String,
        /// Value.
        value: KvpData,
    },
    /// Delete `key`.
    Delete {
        /// Pool.
        pool: KvpPool,
        /// Key.
        key: String,
    },
    /// Entry `index` of the pool.
    Enumerate {
        /// Pool.
        pool: KvpPool,
        /// Index.
        index: u32,
    },
}

/// The KVP header of a KVP body.
pub fn parse_kvp_header(body: &[u8]) -> Result<(KvpOperation, KvpPool), ParseError> {
    let h: KvpHeader = read(body, "KVP header")?;
    Ok((KvpOperation(h.operation), KvpPool(h.pool)))
}

/// Parse a KVP request body (header, then the operation's struct in full).
pub fn parse_kvp_request(body: &[u8]) -> Result<KvpRequest, ParseError> {
    let (op, pool) = parse_kvp_header(body)?;
    if !pool.is_known() {
        return Err(ParseError::KvpPool(pool.0));
    }
    let rest = body.get(size_of::<KvpHeader>()..).unwrap_or(&[]);
    match op {
        KvpOperation::GET => {
            let v: KvpValue = read(rest, "KVP get")?;
            let key = decode_utf16(&v.key, v.key_size.get(), "KVP key")?;
            Ok(KvpRequest::Get { pool, key })
        }
        KvpOperation::SET => {
            let v: KvpValue = read(rest, "KVP set")?;
            let (key, value) = parse_kvp_value(&v)?;
            Ok(KvpRequest::Set { pool, key, value })
        }
        KvpOperation::DELETE => {
            let d: KvpDelete = read(rest, "KVP delete")?;
            let key = decode_utf16(&d.key, d.key_size.get(), "KVP key")?;
            Ok(KvpRequest::Delete { pool, key })
        }
        KvpOperation::ENUMERATE => {
            let e: KvpEnumerate = read(rest, "KVP enumerate")?;
            Ok(KvpRequest::Enumerate {
                pool,
                index: e.index.get(),
            })
        }
        other => Err(ParseError::KvpOperation(other.0)),
    }
}

/// The host's KVP request body ([`KVP_MESSAGE_SIZE`] bytes).
pub fn kvp_request_body(request: &KvpRequest) -> Result<Vec<u8>, ParseError> {
    let mut out = alloc::vec![0u8; KVP_MESSAGE_SIZE];
    let (op, pool) = match request {
        KvpRequest::Get { pool, key } => {
            let mut v = KvpValue::new_zeroed();
            v.key_size = U32::new(encode_utf16(key, &mut v.key, "KVP key")?);
            out[4..4 + size_of::<KvpValue>()].copy_from_slice(v.as_bytes());
            (KvpOperation::GET, *pool)
        }
        KvpRequest::Set { pool, key, value } => {
            let v = kvp_value(key, &value.to_text())?;
            out[4..4 + size_of::<KvpValue>()].copy_from_slice(v.as_bytes());
            (KvpOperation::SET, *pool)
        }
        KvpRequest::Delete { pool, key } => {
            let mut d = KvpDelete::new_zeroed();
            d.key_size = U32::new(encode_utf16(key, &mut d.key, "KVP key")?);
            out[4..4 + size_of::<KvpDelete>()].copy_from_slice(d.as_bytes());
            (KvpOperation::DELETE, *pool)
        }
        KvpRequest::Enumerate { pool, index } => {
            out[4..8].copy_from_slice(&index.to_le_bytes());
            (KvpOperation::ENUMERATE, *pool)
        }
    };
    out[0] = op.0;
    out[1] = pool.0;
    Ok(out)
}

/// The key and value a guest answered to GET (`Get`, key from the request)
/// or ENUMERATE (both from the answer): reads the answer's value struct at
/// the operation's offset.
pub fn parse_kvp_answer(body: &[u8]) -> Result<(KvpOperation, KvpPool, String, KvpData), ParseError> {
    let (op, pool) = parse_kvp_header(body)?;
    let rest = body.get(size_of::<KvpHeader>()..).unwrap_or(&[]);
    let v: KvpValue = match op {
        KvpOperation::GET => read(rest, "KVP get answer")?,
        KvpOperation::ENUMERATE => read::<KvpEnumerate>(rest, "KVP enumerate answer")?.data,
        other => return Err(ParseError::KvpOperation(other.0)),
    };
    let (key, data) = parse_kvp_value(&v)?;
    Ok((op, pool, key, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_mixed_endian() {
        assert_eq!(
            SHUTDOWN_GUID,
            [
                0x31, 0x60, 0x0b, 0x0e, 0x13, 0x52, 0x34, 0x49, 0x81, 0x8b, 0x38, 0xd9, 0x0c, 0xed, 0x39,
                0xdb
            ]
        );
        assert_eq!(&KVP_GUID[..4], &[0xe7, 0xf4, 0xa0, 0xa9]);
        assert_eq!(&HEARTBEAT_GUID[4..8], &[0x15, 0x91, 0x78, 0x4e]);
        assert_eq!(
            &TIMESYNC_GUID[8..],
            &[0xad, 0xce, 0xe8, 0x0a, 0xb0, 0x17, 0x5c, 0xaf]
        );
    }

    #[test]
    fn negotiate_round_trip_and_linux_choice() {
        let req = build_negotiate(FRAMEWORK_VERSIONS, SHUTDOWN_VERSIONS).unwrap();
        assert_eq!(req.len(), ICMSG_HDR + 8 + 6 * 4);
        let m = Message::parse(&req).unwrap();
        assert_eq!(m.header.message_type(), MessageType::NEGOTIATE);
        assert_eq!(m.header.header_flags(), HeaderFlags::HOST_REQUEST);
        let n = Negotiate::parse(m.body().unwrap()).unwrap();
        assert_eq!(n.framework, FRAMEWORK_VERSIONS);
        assert_eq!(n.message, SHUTDOWN_VERSIONS);
        // The guest supports only 3.1 and 1.0: it picks 3.1.
        let ours = [Version::new(3, 1), Version::new(1, 0)];
        let chosen = (
            choose(FRAMEWORK_VERSIONS, n.framework).unwrap(),
            choose(&ours, n.message).unwrap(),
        );
        let resp = build_negotiate_response(&req, Some(chosen)).unwrap();
        assert_eq!(resp.len(), req.len());
        let r = Message::parse(&resp).unwrap();
        assert_eq!(r.header.header_flags(), HeaderFlags::GUEST_RESPONSE);
        assert_eq!(r.header.msg_size.get(), 16);
        assert_eq!(
            parse_negotiate_response(r.body().unwrap()).unwrap(),
            Some((FRAMEWORK_3_0, Version::new(3, 1)))
        );
        let none = build_negotiate_response(&req, None).unwrap();
        let r = Message::parse(&none).unwrap();
        assert_eq!(parse_negotiate_response(r.body().unwrap()).unwrap(), None);
    }

    #[test]
    fn peer_lengths_are_checked() {
        assert!(matches!(Message::parse(&[0; 27]), Err(ParseError::Short { .. })));
        let mut req = build_negotiate(FRAMEWORK_VERSIONS, KVP_VERSIONS).unwrap();
        // icmsgsize beyond the packet.
        req[8 + 10] = 0xff;
        assert!(matches!(
            Message::parse(&req).unwrap().body(),
            Err(ParseError::MessageSize { .. })
        ));
        // Counts at the Linux limit, and a table that does not fit.
        let mut body = [0u8; 16];
        body[0] = 100;
        assert!(matches!(
            Negotiate::parse(&body),
            Err(ParseError::TooManyVersions { .. })
        ));
        body[0] = 3;
        body[2] = 3;
        assert!(matches!(Negotiate::parse(&body), Err(ParseError::Short { .. })));
        assert!(parse_heartbeat(&[1, 2, 3]).is_err());
        assert!(parse_shutdown(&[0; 2059]).is_err());
        assert!(parse_timesync(Version::new(4, 0), &[0; 21]).is_err());
        assert!(parse_timesync(Version::new(3, 0), &[0; 24]).is_err());
    }

    #[test]
    fn bodies_round_trip() {
        assert_eq!(parse_heartbeat(heartbeat_body(41).as_bytes()).unwrap(), 41);
        let s = shutdown_body(ShutdownFlags(3), SHTDN_REASON_FLAG_PLANNED, 30, "bye");
        let r = parse_shutdown(s.as_bytes()).unwrap();
        assert_eq!((r.flags, r.message.as_str()), (ShutdownFlags(3), "bye"));
        let long = "é".repeat(2000);
        let r = parse_shutdown(shutdown_body(ShutdownFlags(0), 0, 0, &long).as_bytes()).unwrap();
        assert_eq!(r.message.len(), 2046);
        let sample = TimeSample {
            host_time: WLTIMEDELTA + 5,
            reference_time: Some(77),
            flags: TimesyncFlags::SYNC,
        };
        let b = timesync_body(Version::new(4, 0), sample);
        assert_eq!(b.len(), 22);
        assert_eq!(parse_timesync(Version::new(4, 0), &b).unwrap(), sample);
        let b = timesync_body(Version::new(3, 0), sample);
        assert_eq!(b.len(), 25);
        assert_eq!(
            parse_timesync(Version::new(3, 0), &b).unwrap().reference_time,
            None
        );
    }

    #[test]
    fn kvp_strings_are_checked() {
        let mut buf = [0u8; 8];
        assert_eq!(encode_utf16("abc", &mut buf, "k").unwrap(), 8);
        assert_eq!(decode_utf16(&buf, 8, "k").unwrap(), "abc");
        assert!(encode_utf16("abcd", &mut buf, "k").is_err());
        assert!(matches!(
            decode_utf16(&buf, 7, "k"),
            Err(ParseError::StringSize { .. })
        ));
        assert!(matches!(
            decode_utf16(&buf, 10, "k"),
            Err(ParseError::StringSize { .. })
        ));
        assert!(
            decode_utf16(&[0x00, 0xd8, 0x41, 0x00], 4, "k").is_err(),
            "lone surrogate"
        );
        let max_key = "k".repeat(255);
        assert!(kvp_value(&max_key, "v").is_ok());
        assert!(kvp_value(&"k".repeat(256), "v").is_err());
        for req in [
            KvpRequest::Get {
                pool: KvpPool::GUEST,
                key: "a".into(),
            },
            KvpRequest::Set {
                pool: KvpPool::EXTERNAL,
                key: "a".into(),
                value: KvpData::String("b".into()),
            },
            KvpRequest::Delete {
                pool: KvpPool::AUTO,
                key: "a".into(),
            },
            KvpRequest::Enumerate {
                pool: KvpPool::AUTO_INTERNAL,
                index: 3,
            },
        ] {
            let body = kvp_request_body(&req).unwrap();
            assert_eq!(body.len(), KVP_MESSAGE_SIZE);
            assert_eq!(parse_kvp_request(&body).unwrap(), req);
        }
        let mut body = kvp_request_body(&KvpRequest::Enumerate {
            pool: KvpPool::GUEST,
            index: 0,
        })
        .unwrap();
        body[1] = 9;
        assert_eq!(parse_kvp_request(&body), Err(ParseError::KvpPool(9)));
        body[1] = 0;
        body[0] = 4;
        assert_eq!(parse_kvp_request(&body), Err(ParseError::KvpOperation(4)));
        assert!(parse_kvp_request(&body[..100]).is_err());
    }
}
