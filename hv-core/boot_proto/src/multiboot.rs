//! Multiboot (version 1, specification 0.6.96): the OS image header a loader
//! looks for and the information structure it hands the kernel
//! (<https://www.gnu.org/software/grub/manual/multiboot/multiboot.html>,
//! GRUB `include/multiboot.h`). QEMU's own loader (`hw/i386/multiboot.c`)
//! is the behavioural reference: the header is found in the first 8192
//! bytes, 4-byte aligned, with magic + flags + checksum == 0 (mod 2^32);
//! flag 16 (the "a.out kludge") makes the address fields authoritative,
//! otherwise the image must be an ELF loaded by its program headers.
//!
//! The image is untrusted: [`find_header`] checks everything it returns.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `MULTIBOOT_HEADER_MAGIC`.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// `MULTIBOOT_BOOTLOADER_MAGIC`: EAX at the kernel's entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// How far into the image the header may start.
pub const SEARCH: usize = 8192;

/// Header flag 0: align modules on 4 KiB boundaries.
pub const HEADER_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag 1: the kernel wants `mem_*` (and the memory map).
pub const HEADER_MEMORY_INFO: u32 = 1 << 1;
/// Header flag 2: the kernel wants video mode information (like QEMU, we
/// boot such kernels without a video mode table: we have no display).
pub const HEADER_VIDEO_MODE: u32 = 1 << 2;
/// Header flag 16: the address fields are valid (the "a.out kludge").
pub const HEADER_AOUT_KLUDGE: u32 = 1 << 16;
/// Flags 0-15 a loader must understand to boot the kernel.
pub const HEADER_MUST_KNOW: u32 = 0x0000_FFFF;
/// Of those, the ones we understand.
pub const HEADER_KNOWN: u32 = HEADER_PAGE_ALIGN | HEADER_MEMORY_INFO | HEADER_VIDEO_MODE;

/// Info flag: `mem_lower`/`mem_upper` valid.
pub const INFO_MEMORY: u32 = 1 << 0;
/// Info flag: `cmdline` valid.
pub const INFO_CMDLINE: u32 = 1 << 2;
/// Info flag: `mods_count`/`mods_addr` valid.
pub const INFO_MODS: u32 = 1 << 3;
/// Info flag: `mmap_length`/`mmap_addr` valid.
pub const INFO_MMAP: u32 = 1 << 6;
/// Info flag: `boot_loader_name` valid.
pub const INFO_BOOT_LOADER_NAME: u32 = 1 << 9;

/// The OS image's header (the first 12 bytes always, the address fields
/// with [`HEADER_AOUT_KLUDGE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its offset in the image file.
    pub offset: usize,
    /// Flags.
    pub flags: u32,
    /// The address fields, when flag 16 is set.
    pub addresses: Option<Addresses>,
}

/// `header_addr` .. `entry_addr`, checked against each other and the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// Physical address the header is loaded at.
    pub header_addr: u32,
    /// Physical address of the first byte loaded.
    pub load_addr: u32,
    /// File offset of that byte.
    pub load_offset: usize,
    /// Bytes taken from the file.
    pub load_size: u32,
    /// Bytes in memory from `load_addr` (the rest of `load_size` is zeroed).
    pub mem_size: u32,
    /// Entry point (physical).
    pub entry_addr: u32,
}

/// Why an image's Multiboot header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// No header (magic and valid checksum) in the first 8192 bytes.
    NotFound,
    /// The header is cut off by the end of the file.
    Truncated,
    /// Flags 0-15 the kernel requires that we do not implement.
    UnsupportedFlags(u32),
    /// The address fields do not describe a load inside the file.
    BadAddresses(&'static str),
}

impl core::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotFound => write!(
                f,
                "no Multiboot header (magic 0x1BADB002 with a valid checksum) in the first 8192 bytes"
            ),
            Self::Truncated => write!(f, "the Multiboot header is cut off by the end of the image"),
            Self::UnsupportedFlags(b) => {
                write!(f, "the Multiboot header requires features we lack (flags {b:#x})")
            }
            Self::BadAddresses(why) => write!(f, "bad Multiboot address fields: {why}"),
        }
    }
}

fn word(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Find and check the Multiboot header in `image`.
pub fn find_header(image: &[u8]) -> Result<Header, HeaderError> {
    let window = &image[..image.len().min(SEARCH)];
    let offset = (0..window.len().saturating_sub(11))
        .step_by(4)
        .find(|&at| {
            let (Some(m), Some(f), Some(c)) = (word(window, at), word(window, at + 4), word(window, at + 8))
            else {
                return false;
            };
            m == HEADER_MAGIC && m.wrapping_add(f).wrapping_add(c) == 0
        })
        .ok_or(HeaderError::NotFound)?;
    let flags = word(image, offset + 4).ok_or(HeaderError::Truncated)?;
    if flags & HEADER_MUST_KNOW & !HEADER_KNOWN != 0 {
        return Err(HeaderError::UnsupportedFlags(
            flags & HEADER_MUST_KNOW & !HEADER_KNOWN,
        ));
    }
    let addresses = if flags & HEADER_AOUT_KLUDGE != 0 {
        let f = |i: usize| word(image, offset + 12 + 4 * i).ok_or(HeaderError::Truncated);
        let (header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr) =
            (f(0)?, f(1)?, f(2)?, f(3)?, f(4)?);
        Some(addresses(
            image.len(),
            offset,
            header_addr,
            load_addr,
            load_end_addr,
            bss_end_addr,
            entry_addr,
        )?)
    } else {
        None
    };
    Ok(Header {
        offset,
        flags,
        addresses,
    })
}

/// Check the a.out-kludge fields as QEMU `load_multiboot` does (and a bit
/// more: everything must be inside the file and the entry inside the load).
fn addresses(
    file_len: usize,
    offset: usize,
    header_addr: u32,
    load_addr: u32,
    load_end_addr: u32,
    bss_end_addr: u32,
    entry_addr: u32,
) -> Result<Addresses, HeaderError> {
    let bad = HeaderError::BadAddresses;
    if header_addr < load_addr {
        return Err(bad("header_addr is below load_addr"));
    }
    let load_offset = offset
        .checked_sub((header_addr - load_addr) as usize)
        .ok_or(bad("load_addr is before the start of the file"))?;
    let load_size = if load_end_addr != 0 {
        if load_end_addr < load_addr {
            return Err(bad("load_end_addr is below load_addr"));
        }
        load_end_addr - load_addr
    } else {
        u32::try_from(file_len - load_offset).map_err(|_| bad("the image is larger than 4 GiB"))?
    };
    if load_offset + load_size as usize > file_len {
        return Err(bad("load_end_addr is past the end of the file"));
    }
    if (load_addr as u64 + load_size as u64) < header_addr as u64 + 12 {
        return Err(bad("the load does not include the header"));
    }
    let mem_size = if bss_end_addr != 0 {
        if (bss_end_addr as u64) < load_addr as u64 + load_size as u64 {
            return Err(bad("bss_end_addr is below load_end_addr"));
        }
        bss_end_addr - load_addr
    } else {
        load_size
    };
    if !(load_addr as u64..load_addr as u64 + mem_size as u64).contains(&(entry_addr as u64)) {
        return Err(bad("entry_addr is outside the loaded image"));
    }
    Ok(Addresses {
        header_addr,
        load_addr,
        load_offset,
        load_size,
        mem_size,
        entry_addr,
    })
}

/// `struct multiboot_info` up to the VBE fields (88 bytes; no framebuffer
/// fields: [`INFO_MEMORY`] and friends say which fields are valid).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq)]
pub struct Info {
    /// `INFO_*` flags.
    pub flags: u32,
    /// KiB of memory from 0 (at most 640).
    pub mem_lower: u32,
    /// KiB of memory from 1 MiB to the first hole.
    pub mem_upper: u32,
    /// BIOS boot device.
    pub boot_device: u32,
    /// Physical address of the NUL-terminated command line.
    pub cmdline: u32,
    /// Number of modules.
    pub mods_count: u32,
    /// Physical address of the [`Module`] array.
    pub mods_addr: u32,
    /// a.out or ELF symbol information.
    pub syms: [u32; 4],
    /// Bytes of [`MmapEntry`]s at `mmap_addr`.
    pub mmap_length: u32,
    /// Physical address of the memory map.
    pub mmap_addr: u32,
    /// BIOS drives.
    pub drives_length: u32,
    /// Their address.
    pub drives_addr: u32,
    /// ROM configuration table.
    pub config_table: u32,
    /// Physical address of the loader's name.
    pub boot_loader_name: u32,
    /// APM table.
    pub apm_table: u32,
    /// VBE control info, mode info, mode, interface segment/offset/length.
    pub vbe: [u32; 4],
}
const _: () = assert!(size_of::<Info>() == 88);

/// `struct multiboot_mod_list` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq)]
pub struct Module {
    /// First byte.
    pub mod_start: u32,
    /// One past the last byte.
    pub mod_end: u32,
    /// Physical address of its NUL-terminated string.
    pub string: u32,
    /// Zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<Module>() == 16);

/// One memory map entry: `size` (20, not counting itself), then the 64-bit
/// base and length (unaligned in the spec's packed struct, hence the
/// halves) and the type (1: RAM).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq)]
pub struct MmapEntry {
    /// 20.
    pub size: u32,
    /// Base, low half.
    pub base_lo: u32,
    /// Base, high half.
    pub base_hi: u32,
    /// Length, low half.
    pub len_lo: u32,
    /// Length, high half.
    pub len_hi: u32,
    /// 1: available RAM; anything else: reserved.
    pub kind: u32,
}
const _: () = assert!(size_of::<MmapEntry>() == 24);

impl MmapEntry {
    /// An entry for `[base, base + len)`.
    pub fn new(base: u64, len: u64, kind: u32) -> Self {
        Self {
            size: 20,
            base_lo: base as u32,
            base_hi: (base >> 32) as u32,
            len_lo: len as u32,
            len_hi: (len >> 32) as u32,
            kind,
        }
    }
    /// Base address.
    pub fn base(&self) -> u64 {
        (self.base_hi as u64) << 32 | self.base_lo as u64
    }
    /// Length.
    pub fn len(&self) -> u64 {
        (self.len_hi as u64) << 32 | self.len_lo as u64
    }
    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Walk a memory map of `bytes` the way the spec says a kernel should:
/// each entry's `size` field gives the distance to the next (plus 4).
pub fn mmap_entries(bytes: &[u8]) -> impl Iterator<Item = MmapEntry> + '_ {
    let mut at = 0usize;
    core::iter::from_fn(move || {
        let (e, _) = MmapEntry::read_from_prefix(bytes.get(at..)?).ok()?;
        at = at.checked_add(e.size as usize)?.checked_add(4)?;
        (e.size >= 20).then_some(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32, fields: &[u32]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
        ] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        for w in fields {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v
    }

    #[test]
    fn finds_an_elf_style_header() {
        let mut image = vec![0u8; 0x1000];
        image[0x100..0x10C].copy_from_slice(&header(HEADER_MEMORY_INFO | HEADER_PAGE_ALIGN, &[]));
        let h = find_header(&image).unwrap();
        assert_eq!((h.offset, h.addresses), (0x100, None));
        // Misaligned: not found.
        let mut image = vec![0u8; 0x1000];
        image[0x102..0x10E].copy_from_slice(&header(0, &[]));
        assert_eq!(find_header(&image), Err(HeaderError::NotFound));
        // Past 8 KiB: not found.
        let mut image = vec![0u8; 0x3000];
        image[0x2000..0x200C].copy_from_slice(&header(0, &[]));
        assert_eq!(find_header(&image), Err(HeaderError::NotFound));
        // Bad checksum: not found.
        let mut image = header(0, &[]);
        image[8] ^= 1;
        assert_eq!(find_header(&image), Err(HeaderError::NotFound));
        // Flags we do not know.
        assert_eq!(
            find_header(&header(1 << 3, &[])),
            Err(HeaderError::UnsupportedFlags(1 << 3))
        );
        // Optional high flags are fine.
        assert!(find_header(&header(1 << 20, &[])).is_ok());
    }

    #[test]
    fn checks_the_aout_kludge_fields() {
        // File: 0x1000 bytes of prefix, then the header, loaded at 1 MiB.
        let load = 0x10_0000u32;
        let mk = |fields: &[u32], len: usize| {
            let mut image = vec![0u8; len];
            let h = header(HEADER_AOUT_KLUDGE, fields);
            image[0x1000..0x1000 + h.len()].copy_from_slice(&h);
            image
        };
        let good = mk(&[load, load, load + 0x800, load + 0x4000, load + 0x20], 0x2000);
        let a = find_header(&good).unwrap().addresses.unwrap();
        assert_eq!(a.load_offset, 0x1000);
        assert_eq!(
            (a.load_size, a.mem_size, a.entry_addr),
            (0x800, 0x4000, load + 0x20)
        );
        // load_end 0: to the end of the file; bss_end 0: no bss.
        let a = find_header(&mk(&[load, load, 0, 0, load], 0x2000))
            .unwrap()
            .addresses
            .unwrap();
        assert_eq!((a.load_size, a.mem_size), (0x1000, 0x1000));
        let refuse = |fields: &[u32], len| find_header(&mk(fields, len)).unwrap_err();
        assert!(matches!(
            refuse(&[load, load + 1, 0, 0, load + 1], 0x2000),
            HeaderError::BadAddresses(_)
        ));
        assert!(matches!(
            refuse(&[load + 0x2000, load, 0, 0, load], 0x2000),
            HeaderError::BadAddresses(_)
        ));
        assert!(matches!(
            refuse(&[load, load, load + 0x2000, 0, load], 0x2000),
            HeaderError::BadAddresses(_)
        ));
        assert!(matches!(
            refuse(&[load, load, load - 1, 0, load], 0x2000),
            HeaderError::BadAddresses(_)
        ));
        assert!(matches!(
            refuse(&[load, load, load + 0x800, load + 0x10, load], 0x2000),
            HeaderError::BadAddresses(_)
        ));
        assert!(matches!(
            refuse(&[load, load, load + 0x800, 0, load + 0x800], 0x2000),
            HeaderError::BadAddresses(_)
        ));
        // Cut inside the address fields.
        let cut = mk(&[load, load, 0, 0, load], 0x2000);
        assert_eq!(find_header(&cut[..0x1010]), Err(HeaderError::Truncated));
    }

    #[test]
    fn memory_map_walk_follows_size() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MmapEntry::new(0, 0xA0000, 1).as_bytes());
        bytes.extend_from_slice(MmapEntry::new(0x10_0000, 0x1_0000_0000, 1).as_bytes());
        let e: Vec<_> = mmap_entries(&bytes).collect();
        assert_eq!(e.len(), 2);
        assert_eq!((e[1].base(), e[1].len()), (0x10_0000, 0x1_0000_0000));
        assert_eq!(mmap_entries(&bytes[..30]).count(), 1);
    }

    proptest::proptest! {
        #[test]
        fn header_search_never_panics(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..96),
                                      at in 0usize..64, flags: u32, fields: [u32; 5]) {
            let h = header(flags | HEADER_AOUT_KLUDGE, &fields);
            let at = at & !3;
            if at + h.len() <= bytes.len() {
                bytes[at..at + h.len()].copy_from_slice(&h);
            }
            if let Ok(Header { addresses: Some(a), .. }) = find_header(&bytes) {
                proptest::prop_assert!(a.load_offset + a.load_size as usize <= bytes.len());
                proptest::prop_assert!(a.mem_size >= a.load_size);
                proptest::prop_assert!(a.entry_addr >= a.load_addr && a.entry_addr - a.load_addr < a.mem_size);
            }
            let _ = mmap_entries(&bytes).count();
        }
    }
}
