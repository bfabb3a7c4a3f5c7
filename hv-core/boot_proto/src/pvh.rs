//! PVH boot: `hvm_start_info` (version 1) and its tables.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const START_MAGIC: u32 = 0x336e_c578;

/// `struct hvm_start_info` (56 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StartInfo {
    /// Must be [`START_MAGIC`].
    pub magic: u32,
    /// Structure version (1 includes the memory map).
    pub version: u32,
    /// SIF_xxx flags.
    pub flags: u32,
    /// Number of `ModlistEntry`s at `modlist_paddr`.
    pub nr_modules: u32,
    /// Physical address of the module list.
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line, or 0.
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP, or 0.
    pub rsdp_paddr: u64,
    /// Physical address of the memory map (version >= 1).
    pub memmap_paddr: u64,
    /// Number of memory map entries.
    pub memmap_entries: u32,
    /// Reserved.
    pub reserved: u32,
}
const _: () = assert!(size_of::<StartInfo>() == 56);

/// `struct hvm_modlist_entry` (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ModlistEntry {
    /// Physical address of the module.
    pub paddr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Physical address of its command line, or 0.
    pub cmdline_paddr: u64,
    /// Reserved.
    pub reserved: u64,
}
const _: () = assert!(size_of::<ModlistEntry>() == 32);

/// `struct hvm_memmap_table_entry` (24 bytes), an E820-style entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq)]
pub struct MemmapEntry {
    /// Base address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// One of the `MEMMAP_TYPE_*` values.
    pub kind: u32,
    /// Reserved.
    pub reserved: u32,
}
const _: () = assert!(size_of::<MemmapEntry>() == 24);

/// Usable RAM.
pub const MEMMAP_TYPE_RAM: u32 = 1;
/// Reserved.
pub const MEMMAP_TYPE_RESERVED: u32 = 2;
/// ACPI reclaimable.
pub const MEMMAP_TYPE_ACPI: u32 = 3;
/// ACPI NVS.
pub const MEMMAP_TYPE_NVS: u32 = 4;
/// Unusable.
pub const MEMMAP_TYPE_UNUSABLE: u32 = 5;

/// Why a start-info structure was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartInfoError {
    /// Fewer bytes than a `StartInfo`.
    Truncated,
    /// Wrong magic value.
    BadMagic(u32),
    /// Version 0 has no memory map, which the root needs.
    NoMemoryMap,
}

impl StartInfo {
    /// Parse and validate from the bytes at `%ebx`.
    pub fn parse(bytes: &[u8]) -> Result<Self, StartInfoError> {
        let (info, _) = Self::read_from_prefix(bytes).map_err(|_| StartInfoError::Truncated)?;
        if info.magic != START_MAGIC {
            return Err(StartInfoError::BadMagic(info.magic));
        }
        if info.version < 1 || info.memmap_paddr == 0 || info.memmap_entries == 0 {
            return Err(StartInfoError::NoMemoryMap);
        }
        Ok(info)
    }
}

/// Read a table of `count` entries of `T` from `bytes` (which must hold them
/// all); entries are copied out, so `bytes` needs no particular alignment.
pub fn parse_table<T: FromBytes + KnownLayout + Immutable + Copy>(
    bytes: &[u8],
    count: usize,
) -> Option<impl Iterator<Item = T> + '_> {
    let need = count.checked_mul(size_of::<T>())?;
    let slice = bytes.get(..need)?;
    Some(
        slice
            .chunks_exact(size_of::<T>())
            .filter_map(|c| T::read_from_bytes(c).ok()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_start_info_and_rejects_bad_magic() {
        let mut info = StartInfo::read_from_bytes(&[0u8; 56]).unwrap();
        info.magic = START_MAGIC;
        info.version = 1;
        info.memmap_paddr = 0x1000;
        info.memmap_entries = 3;
        let bytes = info.as_bytes();
        assert_eq!(StartInfo::parse(bytes).unwrap().memmap_entries, 3);
        assert_eq!(
            StartInfo::parse(&bytes[..55]).unwrap_err(),
            StartInfoError::Truncated
        );
        info.magic = 1;
        assert_eq!(
            StartInfo::parse(info.as_bytes()).unwrap_err(),
            StartInfoError::BadMagic(1)
        );
        info.magic = START_MAGIC;
        info.version = 0;
        assert_eq!(
            StartInfo::parse(info.as_bytes()).unwrap_err(),
            StartInfoError::NoMemoryMap
        );
    }

    #[test]
    fn memmap_table_parse_checks_length() {
        let e = MemmapEntry {
            addr: 0,
            size: 0x9fc00,
            kind: MEMMAP_TYPE_RAM,
            reserved: 0,
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(e.as_bytes());
        bytes.extend_from_slice(e.as_bytes());
        assert_eq!(parse_table::<MemmapEntry>(&bytes, 2).unwrap().count(), 2);
        assert!(parse_table::<MemmapEntry>(&bytes, 3).is_none());
        assert!(parse_table::<MemmapEntry>(&bytes, usize::MAX).is_none());
    }
}
