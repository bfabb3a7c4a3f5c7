//! The root's child disks: GPT partitions on its passthrough block devices,
//! created, listed and deleted by name.
//!
//! A child's disk is either a whole device or a GPT partition of one. This
//! crate manages the partitions: [`DiskTable::open`] reads and verifies a
//! device's GUID Partition Table (UEFI 2.10 chapter 5) through the
//! [`BlockDevice`] trait the root's virtio-blk driver implements, repairing
//! one damaged copy from the other; [`DiskTable::format`] writes a fresh one
//! to a blank device. Child disks are partitions of type
//! [`CHILD_DISK_TYPE`] whose partition name is the disk name; partitions of
//! other types are listed as foreign and never modified.
//! [`DiskTable::map`] turns a child's block address into a device address,
//! bounds-checked.
//!
//! On-disk structures, CRC32 and block I/O come from `gpt_disk_io` and
//! `gpt_disk_types`. Everything read from the device is untrusted: sizes,
//! counts and locations are checked and bounded before use, and a damaged
//! table is an error, never a panic.
//!
//! `no_std` + `alloc`; host-tested. (rust-analyzer builds with `test` set,
//! so `no_std` breakage shows only in `cargo build --target
//! x86_64-unknown-none`.)
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod device;
mod error;
pub mod fuzzing;
mod table;

pub use device::{BlockDevice, DeviceError, MemDevice};
pub use error::{Corruption, DisksError};
pub use gpt_disk_io::gpt_disk_types::Guid;
pub use table::{
    ALIGNMENT_BYTES, CHILD_DISK_TYPE, DiskInfo, DiskTable, FORMAT_ENTRIES, MAX_ARRAY_BYTES, MAX_ENTRIES,
    MAX_ENTRY_SIZE, MAX_NAME_LEN, Recovery, is_valid_name,
};
