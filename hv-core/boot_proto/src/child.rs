//! How the root's partition worker lays out a child running the test OS: the
//! guest-physical map, the boot info page, and the long-mode state VPs start in.
//! (A Linux child will get a Linux boot protocol instead.)

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The boot info page.
pub const BOOT_INFO_GPA: u64 = 0x1000;
/// PML4 of the child's initial identity page tables.
pub const PML4_GPA: u64 = 0x2000;
/// Its PDPT.
pub const PDPT_GPA: u64 = 0x3000;
/// Four page directories (2 MiB pages) covering the first 4 GiB.
pub const PD_GPA: u64 = 0x4000;
/// The initial GDT.
pub const GDT_GPA: u64 = 0x8000;
/// Where the test OS asks for its hypercall page.
pub const HYPERCALL_PAGE_GPA: u64 = 0x9000;
/// Scratch pages the test OS uses for hypercall input and output.
pub const HYPERCALL_INPUT_GPA: u64 = 0xA000;
/// See [`HYPERCALL_INPUT_GPA`].
pub const HYPERCALL_OUTPUT_GPA: u64 = 0xB000;
/// Where the test OS image is linked.
pub const IMAGE_BASE: u64 = 0x20_0000;
/// Stack bytes per VP, carved from the top of the child's memory.
pub const STACK_SIZE: u64 = 64 * 1024;
/// Initial GDT: null, 64-bit code, data.
pub const GDT: [u64; 3] = [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF];
/// Code selector in [`GDT`].
pub const CODE_SELECTOR: u16 = 0x08;
/// Data selector in [`GDT`].
pub const DATA_SELECTOR: u16 = 0x10;

/// "HVCHILD1".
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"HVCHILD1");

/// The boot info page the worker writes at [`BOOT_INFO_GPA`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// Memory size in bytes (guest-physical 0..memory_size).
    pub memory_size: u64,
    /// Number of VPs.
    pub vp_count: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Partition name, NUL-padded.
    pub name: [u8; 16],
    /// Mode, NUL-padded (e.g. `hello`, `spin`, `read-hv`).
    pub mode: [u8; 32],
    /// Addresses hostile modes aim at: hv-core's region, root RAM, a peer
    /// child's RAM (system-physical), and an MMIO page.
    pub targets: [u64; 4],
}
const _: () = assert!(size_of::<BootInfo>() == 104);

/// Index of each target in [`BootInfo::targets`].
pub mod target {
    /// hv-core's region.
    pub const HV_CORE: usize = 0;
    /// Some root RAM.
    pub const ROOT: usize = 1;
    /// A peer child's RAM.
    pub const PEER: usize = 2;
    /// An MMIO page of a real device (the AMD IOMMU's registers).
    pub const MMIO: usize = 3;
}

/// Copy `s` into a NUL-padded field (truncating).
pub fn pad<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// The string in a NUL-padded field.
pub fn unpad(field: &[u8]) -> &str {
    let n = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    core::str::from_utf8(&field[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_does_not_overlap_the_image() {
        let low = [
            BOOT_INFO_GPA,
            PML4_GPA,
            PDPT_GPA,
            PD_GPA,
            PD_GPA + 0x3000,
            GDT_GPA,
            HYPERCALL_PAGE_GPA,
        ];
        assert!(low.iter().all(|&p| p + 0x1000 <= IMAGE_BASE && p % 0x1000 == 0));
        const { assert!(HYPERCALL_OUTPUT_GPA + 0x1000 <= IMAGE_BASE) };
        let name: [u8; 16] = pad("alpha");
        assert_eq!(unpad(&name), "alpha");
        let long: [u8; 4] = pad("toolong");
        assert_eq!(unpad(&long), "tool");
    }
}
