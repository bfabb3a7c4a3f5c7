//! Typed errors: what went wrong with a request, and what is wrong with a
//! table read from a device.

use core::fmt;

use crate::device::DeviceError;

/// What is wrong with one copy (primary or backup) of a GPT read from the
/// device. Nothing read from a device is trusted: every field that sizes
/// or locates something is checked before use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Corruption {
    /// The block holds no "EFI PART" signature.
    NoSignature,
    /// `HeaderSize` is below 92 or above the block size.
    HeaderSize(u32),
    /// The header's CRC32 does not match its contents.
    HeaderCrc,
    /// The revision's major number is not 1.
    Revision(u32),
    /// `MyLBA` does not name the block the header was read from.
    MyLba {
        /// Where the header was read.
        expected: u64,
        /// What it claims.
        found: u64,
    },
    /// `SizeOfPartitionEntry` is not 128 × 2ⁿ within this crate's bound.
    EntrySize(u32),
    /// `NumberOfPartitionEntries` exceeds this crate's bound.
    EntryCount(u32),
    /// The usable LBA range is empty, outside the device, or leaves no
    /// room for the headers and entry arrays.
    UsableRange,
    /// The entry array is outside the device or overlaps the usable range
    /// or a header.
    ArrayLocation,
    /// The entry array's CRC32 does not match the header.
    ArrayCrc,
    /// A used entry ends before it starts or lies outside the usable range.
    EntryRange {
        /// Index of the entry.
        index: u32,
    },
    /// Two used entries overlap.
    Overlap {
        /// Index of the earlier-starting entry.
        first: u32,
        /// Index of the entry that starts inside it.
        second: u32,
    },
    /// Two of our disks carry the same name.
    DuplicateName {
        /// Index of the second entry with the name.
        index: u32,
    },
    /// Both copies are valid but describe different tables (the primary
    /// wins).
    Mismatch,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoSignature => f.write_str("no GPT signature"),
            Self::HeaderSize(n) => write!(f, "bad header size {n}"),
            Self::HeaderCrc => f.write_str("header CRC mismatch"),
            Self::Revision(r) => write!(f, "unsupported revision {r:#x}"),
            Self::MyLba { expected, found } => {
                write!(f, "header at LBA {expected} claims LBA {found}")
            }
            Self::EntrySize(n) => write!(f, "bad partition entry size {n}"),
            Self::EntryCount(n) => write!(f, "too many partition entries ({n})"),
            Self::UsableRange => f.write_str("bad usable LBA range"),
            Self::ArrayLocation => f.write_str("bad partition entry array location"),
            Self::ArrayCrc => f.write_str("partition entry array CRC mismatch"),
            Self::EntryRange { index } => write!(f, "partition entry {index} out of range"),
            Self::Overlap { first, second } => {
                write!(f, "partition entries {first} and {second} overlap")
            }
            Self::DuplicateName { index } => {
                write!(f, "partition entry {index} repeats a disk name")
            }
            Self::Mismatch => f.write_str("primary and backup tables differ"),
        }
    }
}

/// Why a disk-table operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisksError {
    /// The block device failed a read, write or flush.
    Device(DeviceError),
    /// The device's block size is unsupported (a power of two from 512 to
    /// 64 KiB is required).
    BlockSize(u32),
    /// The device is too small to hold a GPT and any partition.
    DeviceTooSmall {
        /// The device's size in blocks.
        blocks: u64,
    },
    /// Neither LBA 1 nor the last LBA holds a GPT signature: the device is
    /// blank or not GPT-partitioned (see [`DiskTable::format`](crate::DiskTable::format)).
    NoGpt,
    /// Both copies of the GPT are damaged.
    Corrupt {
        /// What is wrong with the primary copy.
        primary: Corruption,
        /// What is wrong with the backup copy.
        backup: Corruption,
    },
    /// The disk name breaks the naming rules (1-15 characters: an ASCII
    /// letter, then ASCII letters, digits, '-' or '_').
    BadName,
    /// The requested size is zero or too large to express.
    BadSize,
    /// A partition with this name already exists.
    Duplicate,
    /// No free, aligned extent is large enough.
    NoSpace,
    /// Every partition entry is in use.
    TableFull,
    /// None of our disks has this name.
    NotFound,
    /// The partition with this name is not one of ours; it is never
    /// modified.
    NotOurs,
    /// A child's request reaches past the end of its disk.
    OutOfRange {
        /// First block of the request, in the child's disk.
        lba: u64,
        /// Number of blocks requested.
        count: u64,
        /// Size of the child's disk in blocks.
        blocks: u64,
    },
}

impl From<DeviceError> for DisksError {
    fn from(e: DeviceError) -> Self {
        Self::Device(e)
    }
}

impl fmt::Display for DisksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Device(e) => write!(f, "device error: {e}"),
            Self::BlockSize(n) => write!(f, "unsupported block size {n}"),
            Self::DeviceTooSmall { blocks } => {
                write!(f, "device too small for a GPT ({blocks} blocks)")
            }
            Self::NoGpt => f.write_str("no GPT on the device"),
            Self::Corrupt { primary, backup } => {
                write!(f, "GPT corrupt: primary: {primary}; backup: {backup}")
            }
            Self::BadName => {
                f.write_str("bad disk name: 1-15 characters, a letter, then letters, digits, '-' or '_'")
            }
            Self::BadSize => f.write_str("bad disk size"),
            Self::Duplicate => f.write_str("a partition with that name exists"),
            Self::NoSpace => f.write_str("no free space large enough"),
            Self::TableFull => f.write_str("partition table is full"),
            Self::NotFound => f.write_str("no such disk"),
            Self::NotOurs => f.write_str("partition is not a child disk; not touched"),
            Self::OutOfRange { lba, count, blocks } => {
                write!(f, "blocks {lba}+{count} outside a disk of {blocks} blocks")
            }
        }
    }
}

impl core::error::Error for DisksError {}
