//! The handoff block: what the root kernel tells hv-core when it calls hv-core's
//! entry point (docs/boot.md, "Demotion").
//!
//! The root fills it in its own memory and passes its physical address; hv-core
//! copies it into its own region before using it, then validates it.

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// "HVHANDOF".
pub const MAGIC: u64 = u64::from_le_bytes(*b"HVHANDOF");
/// Layout version.
pub const VERSION: u32 = 1;
/// Maximum physical memory ranges carried.
pub const MAX_RANGES: usize = 64;

/// One physical range of the firmware memory map.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq)]
pub struct PhysRange {
    /// Base address.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type (see [`crate::pvh`] `MEMMAP_TYPE_*`).
    pub kind: u32,
    /// Reserved, zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<PhysRange>() == 24);

/// The handoff block.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Handoff {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`VERSION`].
    pub version: u32,
    /// Valid entries in `memmap`.
    pub memmap_count: u32,
    /// Physical base of the region reserved for hv-core (2 MiB aligned).
    pub region_base: u64,
    /// Size of that region (multiple of 2 MiB).
    pub region_size: u64,
    /// Virtual address at which the hv-core image is linked (and mapped).
    pub image_va: u64,
    /// Bytes of the region the loaded image occupies, from `region_base`.
    pub image_size: u64,
    /// I/O port for hv-core's log (QEMU debugcon 0xE9).
    pub log_port: u16,
    /// The root's console UART base port (hv-core never writes it).
    pub root_console_port: u16,
    /// Reserved, zero.
    pub reserved: u32,
    /// The firmware memory map (all types), as the root received it.
    pub memmap: [PhysRange; MAX_RANGES],
}
const _: () = assert!(size_of::<Handoff>() == 56 + 24 * MAX_RANGES);

/// Why hv-core refused a handoff block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffError {
    /// Wrong magic.
    BadMagic,
    /// Unknown version.
    BadVersion(u32),
    /// `memmap_count` above [`MAX_RANGES`].
    BadMemmapCount(u32),
    /// The region is misaligned, empty or smaller than the image.
    BadRegion,
}

/// Alignment and size granularity of the hv-core region.
pub const REGION_ALIGN: u64 = 2 << 20;

impl Handoff {
    /// An empty block with magic and version set.
    pub fn new() -> Self {
        let mut h = Self::new_zeroed();
        h.magic = MAGIC;
        h.version = VERSION;
        h
    }

    /// Check the block's invariants.
    pub fn validate(&self) -> Result<(), HandoffError> {
        if self.magic != MAGIC {
            return Err(HandoffError::BadMagic);
        }
        if self.version != VERSION {
            return Err(HandoffError::BadVersion(self.version));
        }
        if self.memmap_count as usize > MAX_RANGES {
            return Err(HandoffError::BadMemmapCount(self.memmap_count));
        }
        let aligned =
            self.region_base.is_multiple_of(REGION_ALIGN) && self.region_size.is_multiple_of(REGION_ALIGN);
        if !aligned || self.region_size == 0 || self.image_size > self.region_size {
            return Err(HandoffError::BadRegion);
        }
        Ok(())
    }

    /// The valid memory-map entries.
    pub fn ranges(&self) -> &[PhysRange] {
        &self.memmap[..(self.memmap_count as usize).min(MAX_RANGES)]
    }
}

impl Default for Handoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_checks_each_field() {
        let mut h = Handoff::new();
        h.region_base = 0x1000_0000;
        h.region_size = 16 << 20;
        h.image_size = 0x40000;
        h.memmap_count = 3;
        assert_eq!(h.validate(), Ok(()));
        assert_eq!(h.ranges().len(), 3);
        let mut bad = h;
        bad.magic = 0;
        assert_eq!(bad.validate(), Err(HandoffError::BadMagic));
        let mut bad = h;
        bad.memmap_count = 65;
        assert_eq!(bad.validate(), Err(HandoffError::BadMemmapCount(65)));
        let mut bad = h;
        bad.region_base += 4096;
        assert_eq!(bad.validate(), Err(HandoffError::BadRegion));
        let mut bad = h;
        bad.image_size = bad.region_size + 1;
        assert_eq!(bad.validate(), Err(HandoffError::BadRegion));
    }
}
