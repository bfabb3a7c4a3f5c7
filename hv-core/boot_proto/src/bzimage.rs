//! Linux x86 bzImage and its 64-bit boot protocol (Linux 6.1
//! `Documentation/arch/x86/boot.rst`, structures from
//! `arch/x86/include/uapi/asm/bootparam.h`).
//!
//! Three steps, all on untrusted bytes and all checked (a hostile or truncated
//! image is an error, never a panic):
//!
//! 1. [`parse`] reads the setup header at 0x1F1 of the image: `HdrS` magic,
//!    boot protocol ≥ 2.12, `XLF_KERNEL_64` (a 64-bit entry at
//!    `startup_64` = load address + 0x200), the setup sectors and the
//!    protected-mode kernel after them inside the image, the alignment,
//!    `init_size` and the rest;
//! 2. [`plan`] places the protected-mode kernel in a child of a given memory
//!    size (`pref_address` when relocatable and it fits, else the lowest
//!    `kernel_alignment`-aligned address from 1 MiB) and refuses a kernel
//!    whose `init_size` does not fit;
//! 3. [`build_boot_params`] fills the 4 KiB zero page ([`BootParams`]): a
//!    zeroed page, the image's setup header copied in, `type_of_loader` =
//!    0xFF, `LOADED_HIGH`, `code32_start`, the command line (checked against
//!    `cmdline_size`), the initrd (checked against `initrd_addr_max` unless
//!    `XLF_CAN_BE_LOADED_ABOVE_4G`), the ACPI RSDP and the E820 map
//!    (≤ 128 entries, which must include RAM below 1 MiB).
//!
//! The 64-bit protocol then wants: long mode with an identity map covering the
//! kernel, the zero page and the command line; a GDT with a flat 64-bit code
//! segment at [`BOOT_CS`] and data at [`BOOT_DS`]; interrupts off; `%rsi` =
//! the zero page's address; jump to [`LoadPlan::entry64`]. The real-mode setup
//! code (the first `(setup_sects + 1) * 512` bytes) is not run, so no setup
//! heap (`CAN_USE_HEAP`/`heap_end_ptr`) is given.

#![forbid(unsafe_code)]

use core::fmt;
use core::ops::Range;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Offset of [`SetupHeader`] in the image and in [`BootParams`].
pub const SETUP_HEADER_OFFSET: usize = 0x1F1;
/// Offset of the `header` field: [`HDRS_MAGIC`].
pub const HEADER_MAGIC_OFFSET: usize = 0x202;
/// `"HdrS"` as a little-endian `u32`.
pub const HDRS_MAGIC: u32 = u32::from_le_bytes(*b"HdrS");
/// `boot_flag` value.
pub const BOOT_FLAG: u16 = 0xAA55;
/// Oldest boot protocol accepted: 2.12 (`xloadflags`, 64-bit entry, 64-bit
/// initrd and command-line pointers).
pub const MIN_VERSION: u16 = 0x020C;
/// Sector size of the setup code.
pub const SECTOR_SIZE: usize = 512;
/// Offset of `startup_64` from the protected-mode kernel's load address.
pub const ENTRY64_OFFSET: u64 = 0x200;
/// Most E820 entries the zero page holds (`E820_MAX_ENTRIES_ZEROPAGE`).
pub const E820_MAX_ENTRIES: usize = 128;
/// `type_of_loader` for a loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xFF;
/// Lowest load address for the protected-mode kernel.
pub const MIN_LOAD_ADDRESS: u64 = 0x10_0000;
/// 4 GiB: the limit for the kernel, command line and initrd without
/// [`XLF_CAN_BE_LOADED_ABOVE_4G`].
pub const FOUR_GIB: u64 = 1 << 32;
/// `__BOOT_CS`: the 64-bit code selector the protocol requires.
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`: the data selector the protocol requires.
pub const BOOT_DS: u16 = 0x18;

/// `loadflags`: protected-mode code loaded at 1 MiB or above (a bzImage).
pub const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags`: KASLR enabled by the decompressor (kernel-written).
pub const KASLR_FLAG: u8 = 1 << 1;
/// `loadflags`: suppress early messages.
pub const QUIET_FLAG: u8 = 1 << 5;
/// `loadflags`: obsolete.
pub const KEEP_SEGMENTS: u8 = 1 << 6;
/// `loadflags`: `heap_end_ptr` is valid.
pub const CAN_USE_HEAP: u8 = 1 << 7;

/// `xloadflags`: the kernel has the 64-bit entry at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags`: kernel, zero page, command line and initrd may be above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// `xloadflags`: 32-bit EFI handover entry.
pub const XLF_EFI_HANDOVER_32: u16 = 1 << 2;
/// `xloadflags`: 64-bit EFI handover entry.
pub const XLF_EFI_HANDOVER_64: u16 = 1 << 3;
/// `xloadflags`: EFI kexec support.
pub const XLF_EFI_KEXEC: u16 = 1 << 4;

/// E820 usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 reserved.
pub const E820_RESERVED: u32 = 2;
/// E820 ACPI reclaimable.
pub const E820_ACPI: u32 = 3;
/// E820 ACPI NVS.
pub const E820_NVS: u32 = 4;
/// E820 unusable.
pub const E820_UNUSABLE: u32 = 5;

/// `struct setup_header` (123 bytes, packed), at 0x1F1 in the image and in
/// the zero page. Offsets in the comments are from the image's start.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct SetupHeader {
    /// 0x1F1: setup sectors after the boot sector (0 means 4).
    pub setup_sects: u8,
    /// 0x1F2: obsolete.
    pub root_flags: U16,
    /// 0x1F4: protected-mode code size in 16-byte paragraphs.
    pub syssize: U32,
    /// 0x1F8: obsolete.
    pub ram_size: U16,
    /// 0x1FA: video mode.
    pub vid_mode: U16,
    /// 0x1FC: default root device.
    pub root_dev: U16,
    /// 0x1FE: [`BOOT_FLAG`].
    pub boot_flag: U16,
    /// 0x200: jump instruction; its second byte + 0x202 is the header's end.
    pub jump: U16,
    /// 0x202: [`HDRS_MAGIC`].
    pub header: U32,
    /// 0x206: boot protocol version.
    pub version: U16,
    /// 0x208: boot loader hook.
    pub realmode_swtch: U32,
    /// 0x20C: obsolete.
    pub start_sys_seg: U16,
    /// 0x20E: pointer to the kernel version string.
    pub kernel_version: U16,
    /// 0x210: boot loader identifier.
    pub type_of_loader: u8,
    /// 0x211: boot protocol option flags.
    pub loadflags: u8,
    /// 0x212: move to high memory size.
    pub setup_move_size: U16,
    /// 0x214: 32-bit entry / protected-mode load address.
    pub code32_start: U32,
    /// 0x218: initrd address, low 32 bits.
    pub ramdisk_image: U32,
    /// 0x21C: initrd size, low 32 bits.
    pub ramdisk_size: U32,
    /// 0x220: obsolete.
    pub bootsect_kludge: U32,
    /// 0x224: end of the setup heap.
    pub heap_end_ptr: U16,
    /// 0x226: extended boot loader version.
    pub ext_loader_ver: u8,
    /// 0x227: extended boot loader ID.
    pub ext_loader_type: u8,
    /// 0x228: command line address, low 32 bits.
    pub cmd_line_ptr: U32,
    /// 0x22C: highest address the initrd may occupy.
    pub initrd_addr_max: U32,
    /// 0x230: physical alignment required when relocatable.
    pub kernel_alignment: U32,
    /// 0x234: non-zero when the kernel is relocatable.
    pub relocatable_kernel: u8,
    /// 0x235: minimum alignment, as a power of two.
    pub min_alignment: u8,
    /// 0x236: `XLF_*` flags.
    pub xloadflags: U16,
    /// 0x238: maximum command line size, without the NUL.
    pub cmdline_size: U32,
    /// 0x23C: hardware subarchitecture.
    pub hardware_subarch: U32,
    /// 0x240: subarchitecture data.
    pub hardware_subarch_data: U64,
    /// 0x248: offset of the compressed payload.
    pub payload_offset: U32,
    /// 0x24C: length of the compressed payload.
    pub payload_length: U32,
    /// 0x250: `setup_data` linked list.
    pub setup_data: U64,
    /// 0x258: preferred load address.
    pub pref_address: U64,
    /// 0x260: linear memory needed during initialisation.
    pub init_size: U32,
    /// 0x264: EFI handover entry offset.
    pub handover_offset: U32,
    /// 0x268: `kernel_info` offset (2.15+).
    pub kernel_info_offset: U32,
}
const _: () = assert!(size_of::<SetupHeader>() == 0x26C - SETUP_HEADER_OFFSET);

/// `struct boot_e820_entry` (20 bytes, packed).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct BootE820Entry {
    /// Base address.
    pub addr: U64,
    /// Length in bytes.
    pub size: U64,
    /// One of the `E820_*` types.
    pub kind: U32,
}
const _: () = assert!(size_of::<BootE820Entry>() == 20);

/// `struct boot_params`, the 4 KiB "zero page". Opaque areas a loader on this
/// path leaves zero are byte arrays.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct BootParams {
    /// 0x000: `struct screen_info`.
    pub screen_info: [u8; 0x40],
    /// 0x040: `struct apm_bios_info`.
    pub apm_bios_info: [u8; 0x14],
    _pad2: [u8; 4],
    /// 0x058: tboot shared page.
    pub tboot_addr: U64,
    /// 0x060: `struct ist_info`.
    pub ist_info: [u8; 0x10],
    /// 0x070: physical address of the ACPI RSDP, or 0.
    pub acpi_rsdp_addr: U64,
    _pad3: [u8; 8],
    /// 0x080: obsolete.
    pub hd0_info: [u8; 16],
    /// 0x090: obsolete.
    pub hd1_info: [u8; 16],
    /// 0x0A0: obsolete.
    pub sys_desc_table: [u8; 16],
    /// 0x0B0: OLPC firmware header.
    pub olpc_ofw_header: [u8; 16],
    /// 0x0C0: initrd address, high 32 bits.
    pub ext_ramdisk_image: U32,
    /// 0x0C4: initrd size, high 32 bits.
    pub ext_ramdisk_size: U32,
    /// 0x0C8: command line address, high 32 bits.
    pub ext_cmd_line_ptr: U32,
    _pad4: [u8; 112],
    /// 0x13C: confidential computing blob.
    pub cc_blob_address: U32,
    /// 0x140: `struct edid_info`.
    pub edid_info: [u8; 0x80],
    /// 0x1C0: `struct efi_info`.
    pub efi_info: [u8; 0x20],
    /// 0x1E0: alternative memory size in KiB.
    pub alt_mem_k: U32,
    /// 0x1E4: scratch for the setup code.
    pub scratch: U32,
    /// 0x1E8: entries used in [`Self::e820_table`].
    pub e820_entries: u8,
    /// 0x1E9: entries in `eddbuf`.
    pub eddbuf_entries: u8,
    /// 0x1EA: entries in `edd_mbr_sig_buffer`.
    pub edd_mbr_sig_buf_entries: u8,
    /// 0x1EB: keyboard status.
    pub kbd_status: u8,
    /// 0x1EC: secure boot state.
    pub secure_boot: u8,
    _pad5: [u8; 2],
    /// 0x1EF: non-zero makes the kernel clear fields a loader failed to zero.
    pub sentinel: u8,
    _pad6: [u8; 1],
    /// 0x1F1: the setup header.
    pub hdr: SetupHeader,
    _pad7: [u8; 0x290 - 0x26C],
    /// 0x290: EDD MBR signatures.
    pub edd_mbr_sig_buffer: [U32; 16],
    /// 0x2D0: the E820 memory map.
    pub e820_table: [BootE820Entry; E820_MAX_ENTRIES],
    _pad8: [u8; 48],
    /// 0xD00: `struct edd_info[6]`.
    pub eddbuf: [u8; 0x1EC],
    _pad9: [u8; 276],
}
const _: () = assert!(size_of::<BootParams>() == 4096);
const _: () = assert!(core::mem::offset_of!(BootParams, acpi_rsdp_addr) == 0x070);
const _: () = assert!(core::mem::offset_of!(BootParams, ext_ramdisk_image) == 0x0C0);
const _: () = assert!(core::mem::offset_of!(BootParams, ext_cmd_line_ptr) == 0x0C8);
const _: () = assert!(core::mem::offset_of!(BootParams, e820_entries) == 0x1E8);
const _: () = assert!(core::mem::offset_of!(BootParams, hdr) == SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(BootParams, e820_table) == 0x2D0);
const _: () = assert!(core::mem::offset_of!(BootParams, eddbuf) == 0xD00);

/// A parsed bzImage: everything a loader needs, with the image's bytes left
/// where they are (see [`BzImage::kernel_bytes`]).
#[derive(Debug, Clone)]
pub struct BzImage {
    /// The image's setup header, up to its declared end (later bytes zero).
    pub header: SetupHeader,
    /// Boot protocol version (≥ [`MIN_VERSION`]).
    pub version: u16,
    /// Setup sectors, with 0 read as 4.
    pub setup_sects: u16,
    /// The protected-mode kernel's bytes in the image:
    /// `(setup_sects + 1) * 512` .. `+ syssize * 16`.
    pub kernel: Range<usize>,
    /// Offset of `startup_64` from the load address ([`ENTRY64_OFFSET`]).
    pub entry64_offset: u64,
    /// Linear memory the kernel needs from its load address while it
    /// decompresses and initialises (≥ the kernel's length).
    pub init_size: u32,
    /// Preferred load address.
    pub pref_address: u64,
    /// Required alignment of the load address when relocatable (a power of two).
    pub kernel_alignment: u32,
    /// Whether the kernel may be loaded at any `kernel_alignment`-aligned address.
    pub relocatable: bool,
    /// Longest command line, without its NUL.
    pub cmdline_size: u32,
    /// Highest address the initrd may occupy (without
    /// [`XLF_CAN_BE_LOADED_ABOVE_4G`]).
    pub initrd_addr_max: u32,
    /// `XLF_*` flags.
    pub xloadflags: u16,
}

impl BzImage {
    /// The protected-mode kernel's bytes, given the image [`parse`] accepted.
    pub fn kernel_bytes<'a>(&self, image: &'a [u8]) -> Option<&'a [u8]> {
        image.get(self.kernel.clone())
    }

    /// Length of the protected-mode kernel.
    pub fn kernel_len(&self) -> u64 {
        (self.kernel.end - self.kernel.start) as u64
    }

    /// Whether the kernel, zero page, command line and initrd may lie above 4 GiB.
    pub fn can_load_above_4g(&self) -> bool {
        self.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0
    }
}

/// Why an image, a placement or a zero page was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BzImageError {
    /// The image is shorter than its setup header.
    Truncated {
        /// Image length.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// `boot_flag` is not 0xAA55.
    BadBootFlag(u16),
    /// No `HdrS` at 0x202.
    BadMagic(u32),
    /// Boot protocol older than 2.12.
    UnsupportedVersion(u16),
    /// The jump at 0x200 says the header ends before the 2.12 fields.
    HeaderTooShort {
        /// Declared end of the header.
        end: usize,
    },
    /// `LOADED_HIGH` clear: a zImage, not a bzImage.
    NotBzImage,
    /// `XLF_KERNEL_64` clear: no 64-bit entry point.
    No64BitEntry,
    /// The setup sectors reach the end of the image.
    SetupPastEnd {
        /// End of the setup code.
        setup_end: usize,
        /// Image length.
        image_len: usize,
    },
    /// `syssize` says the protected-mode kernel runs past the image, or it is
    /// too short to hold the 64-bit entry.
    KernelTruncated {
        /// End of the kernel per `syssize`.
        kernel_end: u64,
        /// Image length.
        image_len: usize,
    },
    /// `kernel_alignment` is not a power of two.
    BadAlignment(u32),
    /// `init_size` is smaller than the kernel itself.
    BadInitSize {
        /// `init_size`.
        init_size: u32,
        /// Length of the protected-mode kernel.
        kernel_len: u64,
    },
    /// A non-relocatable kernel's `pref_address` is below 1 MiB.
    BadLoadAddress(u64),
    /// The kernel's `init_size` does not fit the memory given at any address
    /// the protocol allows.
    TooBigForMemory {
        /// Bytes needed from the load address (`init_size`).
        needed: u64,
        /// The best load address tried.
        at: u64,
        /// The highest usable address + 1 (memory size, capped at 4 GiB
        /// without `XLF_CAN_BE_LOADED_ABOVE_4G`).
        limit: u64,
    },
    /// A memory map entry is empty, wraps, or is out of order / overlapping.
    BadMemoryMap {
        /// Index of the offending entry.
        index: usize,
    },
    /// No RAM below 1 MiB (Linux needs it for its real-mode trampoline).
    NoLowMemory,
    /// More than [`E820_MAX_ENTRIES`] memory map entries.
    TooManyE820Entries(usize),
    /// The kernel's `init_size` span is not inside one RAM range, or it
    /// starts above 4 GiB (`code32_start` is 32 bits).
    KernelOutsideRam,
    /// Command line longer than `cmdline_size`.
    CmdlineTooLong {
        /// Length without the NUL.
        len: u64,
        /// `cmdline_size`.
        max: u32,
    },
    /// Command line (with its NUL) not inside one RAM range, or above 4 GiB
    /// without `XLF_CAN_BE_LOADED_ABOVE_4G`.
    CmdlineOutsideRam,
    /// The initrd ends above `initrd_addr_max`.
    InitrdAboveLimit {
        /// Last byte's address.
        last: u64,
        /// `initrd_addr_max`.
        max: u64,
    },
    /// Initrd not inside one RAM range.
    InitrdOutsideRam,
    /// Two of kernel (`init_size` span), command line and initrd overlap.
    Overlap,
}

impl fmt::Display for BzImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { len, need } => {
                write!(f, "image truncated: {len} bytes, setup header needs {need}")
            }
            Self::BadBootFlag(v) => write!(f, "boot_flag {v:#x}, not 0xaa55"),
            Self::BadMagic(v) => write!(f, "no HdrS magic at 0x202 (found {v:#x})"),
            Self::UnsupportedVersion(v) => {
                write!(f, "boot protocol {}.{:02}, need 2.12 or later", v >> 8, v & 0xFF)
            }
            Self::HeaderTooShort { end } => {
                write!(f, "setup header ends at {end:#x}, before the 2.12 fields")
            }
            Self::NotBzImage => f.write_str("LOADED_HIGH clear: not a bzImage"),
            Self::No64BitEntry => f.write_str("XLF_KERNEL_64 clear: no 64-bit entry point"),
            Self::SetupPastEnd { setup_end, image_len } => write!(
                f,
                "setup code ends at {setup_end:#x}, image is {image_len:#x} bytes"
            ),
            Self::KernelTruncated {
                kernel_end,
                image_len,
            } => write!(
                f,
                "protected-mode kernel ends at {kernel_end:#x}, image is {image_len:#x} bytes (or too short for the 64-bit entry)"
            ),
            Self::BadAlignment(a) => write!(f, "kernel_alignment {a:#x} is not a power of two"),
            Self::BadInitSize {
                init_size,
                kernel_len,
            } => write!(
                f,
                "init_size {init_size:#x} smaller than the kernel ({kernel_len:#x} bytes)"
            ),
            Self::BadLoadAddress(a) => write!(f, "non-relocatable kernel wants {a:#x}, below 1 MiB"),
            Self::TooBigForMemory { needed, at, limit } => write!(
                f,
                "kernel too big for the memory given: needs {needed:#x} bytes (init_size) from {at:#x}, memory ends at {limit:#x}"
            ),
            Self::BadMemoryMap { index } => {
                write!(f, "memory map entry {index} empty, wrapping or out of order")
            }
            Self::NoLowMemory => f.write_str("no RAM below 1 MiB"),
            Self::TooManyE820Entries(n) => write!(f, "{n} memory map entries, at most 128"),
            Self::KernelOutsideRam => f.write_str("kernel span not inside RAM below 4 GiB"),
            Self::CmdlineTooLong { len, max } => {
                write!(f, "command line {len} bytes, kernel accepts {max}")
            }
            Self::CmdlineOutsideRam => f.write_str("command line not inside addressable RAM"),
            Self::InitrdAboveLimit { last, max } => {
                write!(f, "initrd reaches {last:#x}, above initrd_addr_max {max:#x}")
            }
            Self::InitrdOutsideRam => f.write_str("initrd not inside RAM"),
            Self::Overlap => f.write_str("kernel, command line and initrd overlap"),
        }
    }
}

fn read_u16(image: &[u8], off: usize) -> Option<u16> {
    let b = image.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn read_u32(image: &[u8], off: usize) -> Option<u32> {
    let b = image.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// End of the setup header (exclusive) as far as this module reads it.
const HEADER_END: usize = SETUP_HEADER_OFFSET + size_of::<SetupHeader>();
/// The 2.12 header must reach at least past `handover_offset`.
const MIN_HEADER_END: usize = 0x268;

/// Parse and validate a bzImage.
pub fn parse(image: &[u8]) -> Result<BzImage, BzImageError> {
    let truncated = BzImageError::Truncated {
        len: image.len(),
        need: HEADER_END,
    };
    let boot_flag = read_u16(image, 0x1FE).ok_or(truncated)?;
    let magic = read_u32(image, HEADER_MAGIC_OFFSET).ok_or(truncated)?;
    if magic != HDRS_MAGIC {
        return Err(BzImageError::BadMagic(magic));
    }
    if boot_flag != BOOT_FLAG {
        return Err(BzImageError::BadBootFlag(boot_flag));
    }
    let version = read_u16(image, 0x206).ok_or(truncated)?;
    if version < MIN_VERSION {
        return Err(BzImageError::UnsupportedVersion(version));
    }
    let declared_end = HEADER_MAGIC_OFFSET + usize::from(*image.get(0x201).ok_or(truncated)?);
    if declared_end < MIN_HEADER_END {
        return Err(BzImageError::HeaderTooShort { end: declared_end });
    }
    let copy_end = declared_end.min(HEADER_END);
    let bytes = image
        .get(SETUP_HEADER_OFFSET..copy_end)
        .ok_or(BzImageError::Truncated {
            len: image.len(),
            need: copy_end,
        })?;
    let mut header = SetupHeader::new_zeroed();
    header.as_mut_bytes()[..bytes.len()].copy_from_slice(bytes);

    if header.loadflags & LOADED_HIGH == 0 {
        return Err(BzImageError::NotBzImage);
    }
    let xloadflags = header.xloadflags.get();
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BzImageError::No64BitEntry);
    }

    let setup_sects = match header.setup_sects {
        0 => 4,
        n => u16::from(n),
    };
    let setup_end = (usize::from(setup_sects) + 1) * SECTOR_SIZE;
    if setup_end >= image.len() {
        return Err(BzImageError::SetupPastEnd {
            setup_end,
            image_len: image.len(),
        });
    }
    let kernel_len = u64::from(header.syssize.get()) * 16;
    let kernel_end = setup_end as u64 + kernel_len;
    if kernel_end > image.len() as u64 || kernel_len <= ENTRY64_OFFSET {
        return Err(BzImageError::KernelTruncated {
            kernel_end,
            image_len: image.len(),
        });
    }
    // kernel_end <= image.len(), so it fits a usize.
    let kernel = setup_end..setup_end + kernel_len as usize;

    let kernel_alignment = header.kernel_alignment.get();
    if !kernel_alignment.is_power_of_two() {
        return Err(BzImageError::BadAlignment(kernel_alignment));
    }
    let init_size = header.init_size.get();
    if u64::from(init_size) < kernel_len {
        return Err(BzImageError::BadInitSize {
            init_size,
            kernel_len,
        });
    }

    Ok(BzImage {
        header,
        version,
        setup_sects,
        kernel,
        entry64_offset: ENTRY64_OFFSET,
        init_size,
        pref_address: header.pref_address.get(),
        kernel_alignment,
        relocatable: header.relocatable_kernel != 0,
        cmdline_size: header.cmdline_size.get(),
        initrd_addr_max: header.initrd_addr_max.get(),
        xloadflags,
    })
}

/// Where the protected-mode kernel goes in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadPlan {
    /// Guest-physical address of the kernel's first byte (and `code32_start`).
    pub load_address: u64,
    /// `startup_64`: `load_address + 0x200`.
    pub entry64: u64,
    /// End (exclusive) of the `init_size` span the kernel uses from
    /// `load_address`; nothing else may live in between.
    pub reserved_end: u64,
}

/// Place the kernel in a child whose RAM is guest-physical `0..memory_size`:
/// at `pref_address` when relocatable, aligned and it fits, else at the lowest
/// `kernel_alignment`-aligned address from 1 MiB; a non-relocatable kernel
/// only at `pref_address`. The `init_size` span must end by `memory_size`
/// (and by 4 GiB without `XLF_CAN_BE_LOADED_ABOVE_4G`).
pub fn plan(bz: &BzImage, memory_size: u64) -> Result<LoadPlan, BzImageError> {
    let limit = if bz.can_load_above_4g() {
        memory_size
    } else {
        memory_size.min(FOUR_GIB)
    };
    let needed = u64::from(bz.init_size).max(bz.kernel_len());
    let fits = |at: u64| at.checked_add(needed).is_some_and(|end| end <= limit);
    let align = u64::from(bz.kernel_alignment);

    let at = if bz.relocatable {
        let pref = bz.pref_address;
        if pref >= MIN_LOAD_ADDRESS && pref.is_multiple_of(align) && fits(pref) {
            pref
        } else {
            // align is a power of two; MIN_LOAD_ADDRESS + align - 1 cannot wrap.
            (MIN_LOAD_ADDRESS + align - 1) & !(align - 1)
        }
    } else {
        if bz.pref_address < MIN_LOAD_ADDRESS {
            return Err(BzImageError::BadLoadAddress(bz.pref_address));
        }
        bz.pref_address
    };
    if !fits(at) {
        return Err(BzImageError::TooBigForMemory { needed, at, limit });
    }
    Ok(LoadPlan {
        load_address: at,
        entry64: at + ENTRY64_OFFSET,
        reserved_end: at + needed,
    })
}

/// One guest-physical memory range for the E820 map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Base address.
    pub base: u64,
    /// Length in bytes (non-zero).
    pub size: u64,
    /// `E820_*` type.
    pub kind: u32,
}

/// A blob the loader has put in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes (for the command line: without the NUL that follows).
    pub len: u64,
}

/// The child's memory as the loader arranged it.
#[derive(Debug, Clone, Copy)]
pub struct Layout<'a> {
    /// The E820 map, sorted by base, non-overlapping; must include RAM below
    /// 1 MiB. At most [`E820_MAX_ENTRIES`].
    pub memory_map: &'a [MemoryRegion],
    /// Where the kernel was loaded ([`LoadPlan::load_address`]).
    pub kernel_base: u64,
    /// The NUL-terminated command line, if any.
    pub cmdline: Option<Blob>,
    /// The initrd, if any.
    pub initrd: Option<Blob>,
    /// ACPI RSDP address, or 0.
    pub acpi_rsdp: u64,
}

fn check_memory_map(map: &[MemoryRegion]) -> Result<(), BzImageError> {
    if map.len() > E820_MAX_ENTRIES {
        return Err(BzImageError::TooManyE820Entries(map.len()));
    }
    let mut prev_end = 0u64;
    for (index, r) in map.iter().enumerate() {
        let end = r.base.checked_add(r.size);
        match end {
            Some(end) if r.size != 0 && r.base >= prev_end => prev_end = end,
            _ => return Err(BzImageError::BadMemoryMap { index }),
        }
    }
    if !map
        .iter()
        .any(|r| r.kind == E820_RAM && r.base < MIN_LOAD_ADDRESS)
    {
        return Err(BzImageError::NoLowMemory);
    }
    Ok(())
}

/// `[start, start + len)` as a range, if it does not wrap.
fn span(start: u64, len: u64) -> Option<Range<u64>> {
    Some(start..start.checked_add(len)?)
}

fn in_ram(map: &[MemoryRegion], s: &Range<u64>) -> bool {
    map.iter()
        .any(|r| r.kind == E820_RAM && r.base <= s.start && s.end <= r.base + r.size)
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Build the zero page for `bz` loaded as `layout` describes.
pub fn build_boot_params(bz: &BzImage, layout: &Layout<'_>) -> Result<BootParams, BzImageError> {
    let map = layout.memory_map;
    check_memory_map(map)?;
    let above_4g = bz.can_load_above_4g();

    let needed = u64::from(bz.init_size).max(bz.kernel_len());
    let kernel = span(layout.kernel_base, needed).ok_or(BzImageError::KernelOutsideRam)?;
    let code32_start = u32::try_from(layout.kernel_base).ok();
    if !in_ram(map, &kernel) || code32_start.is_none() {
        return Err(BzImageError::KernelOutsideRam);
    }

    let mut spans = [kernel.clone(), 0..0, 0..0];
    let mut cmdline_ptr = 0u64;
    if let Some(c) = layout.cmdline {
        if c.len > u64::from(bz.cmdline_size) {
            return Err(BzImageError::CmdlineTooLong {
                len: c.len,
                max: bz.cmdline_size,
            });
        }
        let s = c
            .len
            .checked_add(1)
            .and_then(|n| span(c.gpa, n))
            .ok_or(BzImageError::CmdlineOutsideRam)?;
        if !in_ram(map, &s) || (!above_4g && s.end > FOUR_GIB) {
            return Err(BzImageError::CmdlineOutsideRam);
        }
        cmdline_ptr = c.gpa;
        spans[1] = s;
    }

    let mut initrd = (0u64, 0u64);
    if let Some(i) = layout.initrd.filter(|i| i.len != 0) {
        let s = span(i.gpa, i.len).ok_or(BzImageError::InitrdOutsideRam)?;
        let last = s.end - 1;
        let max = if above_4g {
            u64::MAX
        } else {
            u64::from(bz.initrd_addr_max)
        };
        if last > max {
            return Err(BzImageError::InitrdAboveLimit { last, max });
        }
        if !in_ram(map, &s) {
            return Err(BzImageError::InitrdOutsideRam);
        }
        initrd = (i.gpa, i.len);
        spans[2] = s;
    }
    let [k, c, i] = &spans;
    if overlaps(k, c) || overlaps(k, i) || overlaps(c, i) {
        return Err(BzImageError::Overlap);
    }

    let mut bp = BootParams::new_zeroed();
    bp.hdr = bz.header;
    bp.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    bp.hdr.loadflags |= LOADED_HIGH;
    bp.hdr.code32_start = U32::new(code32_start.unwrap_or(0));
    bp.hdr.cmd_line_ptr = U32::new(cmdline_ptr as u32);
    bp.ext_cmd_line_ptr = U32::new((cmdline_ptr >> 32) as u32);
    bp.hdr.ramdisk_image = U32::new(initrd.0 as u32);
    bp.ext_ramdisk_image = U32::new((initrd.0 >> 32) as u32);
    bp.hdr.ramdisk_size = U32::new(initrd.1 as u32);
    bp.ext_ramdisk_size = U32::new((initrd.1 >> 32) as u32);
    bp.acpi_rsdp_addr = U64::new(layout.acpi_rsdp);
    for (slot, r) in bp.e820_table.iter_mut().zip(map) {
        *slot = BootE820Entry {
            addr: U64::new(r.base),
            size: U64::new(r.size),
            kind: U32::new(r.kind),
        };
    }
    // map.len() <= 128, checked above.
    bp.e820_entries = map.len() as u8;
    Ok(bp)
}

/// Images for other modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A minimal relocatable image preferring `pref`, needing `init_size`.
    pub(crate) fn image(pref: u64, init_size: usize, initrd_addr_max: u32, above_4g: bool) -> Vec<u8> {
        tests::image_with(0, 0x4000, |h| {
            h.pref_address = U64::new(pref);
            h.init_size = U32::new(init_size as u32);
            h.initrd_addr_max = U32::new(initrd_addr_max);
            if !above_4g {
                h.xloadflags = U16::new(XLF_KERNEL_64);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    /// A minimal image: `setup_sects` sectors of setup after the boot sector,
    /// then `kernel_len` bytes of kernel.
    pub(crate) fn image_with(
        setup_sects: u8,
        kernel_len: usize,
        f: impl FnOnce(&mut SetupHeader),
    ) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            usize::from(setup_sects)
        };
        let mut img = vec![0u8; (sects + 1) * SECTOR_SIZE + kernel_len];
        let mut h = SetupHeader::new_zeroed();
        h.setup_sects = setup_sects;
        h.syssize = U32::new((kernel_len / 16) as u32);
        h.boot_flag = U16::new(BOOT_FLAG);
        h.jump = U16::new(u16::from_le_bytes([0xEB, (HEADER_END - 0x202) as u8]));
        h.header = U32::new(HDRS_MAGIC);
        h.version = U16::new(0x020F);
        h.loadflags = LOADED_HIGH;
        h.initrd_addr_max = U32::new(0x7FFF_FFFF);
        h.kernel_alignment = U32::new(0x20_0000);
        h.relocatable_kernel = 1;
        h.xloadflags = U16::new(XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G);
        h.cmdline_size = U32::new(2047);
        h.pref_address = U64::new(0x100_0000);
        h.init_size = U32::new(0x200_0000);
        f(&mut h);
        img[SETUP_HEADER_OFFSET..HEADER_END].copy_from_slice(h.as_bytes());
        img
    }

    fn image() -> Vec<u8> {
        image_with(0, 0x4000, |_| {})
    }

    fn map() -> [MemoryRegion; 3] {
        [
            MemoryRegion {
                base: 0,
                size: 0x9_F000,
                kind: E820_RAM,
            },
            MemoryRegion {
                base: 0xF_0000,
                size: 0x1_0000,
                kind: E820_RESERVED,
            },
            MemoryRegion {
                base: MIB,
                size: 255 * MIB,
                kind: E820_RAM,
            },
        ]
    }

    fn layout<'a>(map: &'a [MemoryRegion], kernel_base: u64) -> Layout<'a> {
        Layout {
            memory_map: map,
            kernel_base,
            cmdline: Some(Blob {
                gpa: 0x2_0000,
                len: 20,
            }),
            initrd: Some(Blob {
                gpa: 0x800_0000,
                len: 0x10_0000,
            }),
            acpi_rsdp: 0xE_0000,
        }
    }

    #[test]
    fn accepts_a_minimal_image_and_builds_the_zero_page() {
        let img = image();
        let bz = parse(&img).unwrap();
        assert_eq!(bz.setup_sects, 4);
        assert_eq!(bz.kernel, 5 * 512..5 * 512 + 0x4000);
        assert_eq!(bz.kernel_bytes(&img).unwrap().len(), 0x4000);
        assert_eq!(bz.entry64_offset, 0x200);
        assert_eq!(bz.init_size, 0x200_0000);
        assert_eq!(bz.pref_address, 0x100_0000);
        assert_eq!(bz.kernel_alignment, 0x20_0000);
        assert!(bz.relocatable);

        let p = plan(&bz, 256 * MIB).unwrap();
        assert_eq!(p.load_address, 0x100_0000);
        assert_eq!(p.entry64, 0x100_0200);
        assert_eq!(p.reserved_end, 0x300_0000);

        let m = map();
        let bp = build_boot_params(&bz, &layout(&m, p.load_address)).unwrap();
        let bytes = bp.as_bytes();
        assert_eq!(bytes.len(), 4096);
        assert_eq!(&bytes[0x202..0x206], b"HdrS");
        assert_eq!(bytes[0x210], 0xFF, "type_of_loader");
        assert_eq!(bytes[0x211] & LOADED_HIGH, LOADED_HIGH);
        assert_eq!(read_u32(bytes, 0x214), Some(0x100_0000), "code32_start");
        assert_eq!(read_u32(bytes, 0x228), Some(0x2_0000), "cmd_line_ptr");
        assert_eq!(read_u32(bytes, 0x218), Some(0x800_0000), "ramdisk_image");
        assert_eq!(read_u32(bytes, 0x21C), Some(0x10_0000), "ramdisk_size");
        assert_eq!(read_u32(bytes, 0x0C0), Some(0));
        assert_eq!(bp.acpi_rsdp_addr.get(), 0xE_0000);
        assert_eq!(bytes[0x1E8], 3, "e820_entries");
        assert_eq!(bytes[0x1EF], 0, "sentinel");
        let e2 = &bytes[0x2D0 + 2 * 20..0x2D0 + 3 * 20];
        assert_eq!(&e2[..8], &MIB.to_le_bytes());
        assert_eq!(&e2[8..16], &(255 * MIB).to_le_bytes());
        assert_eq!(&e2[16..], &1u32.to_le_bytes());
        // Nothing past the header's end was copied from the setup code.
        assert!(bytes[0x26C..0x2D0].iter().all(|&b| b == 0));
    }

    #[test]
    fn high_pointers_split_into_ext_fields() {
        let bz = parse(&image()).unwrap();
        let m = [
            MemoryRegion {
                base: 0,
                size: 0x9_F000,
                kind: E820_RAM,
            },
            MemoryRegion {
                base: MIB,
                size: 16 << 30,
                kind: E820_RAM,
            },
        ];
        let mut l = layout(&m, 0x100_0000);
        l.cmdline = Some(Blob {
            gpa: 0x1_2345_6000,
            len: 4,
        });
        l.initrd = Some(Blob {
            gpa: 0x1_8000_0000,
            len: 0x1_0000_1000,
        });
        let bp = build_boot_params(&bz, &l).unwrap();
        assert_eq!(bp.hdr.cmd_line_ptr.get(), 0x2345_6000);
        assert_eq!(bp.ext_cmd_line_ptr.get(), 1);
        assert_eq!(bp.hdr.ramdisk_image.get(), 0x8000_0000);
        assert_eq!(bp.ext_ramdisk_image.get(), 1);
        assert_eq!(bp.hdr.ramdisk_size.get(), 0x1000);
        assert_eq!(bp.ext_ramdisk_size.get(), 1);
    }

    #[test]
    fn refuses_bad_headers() {
        let mut img = image();
        img[0x202] = b'X';
        assert!(matches!(parse(&img), Err(BzImageError::BadMagic(_))));

        let img = image_with(0, 0x4000, |h| h.version = U16::new(0x020B));
        assert_eq!(parse(&img).unwrap_err(), BzImageError::UnsupportedVersion(0x020B));

        let img = image_with(0, 0x4000, |h| h.xloadflags = U16::new(XLF_CAN_BE_LOADED_ABOVE_4G));
        assert_eq!(parse(&img).unwrap_err(), BzImageError::No64BitEntry);

        let img = image_with(0, 0x4000, |h| h.loadflags = 0);
        assert_eq!(parse(&img).unwrap_err(), BzImageError::NotBzImage);

        let img = image_with(0, 0x4000, |h| h.boot_flag = U16::new(0));
        assert_eq!(parse(&img).unwrap_err(), BzImageError::BadBootFlag(0));

        let img = image_with(0, 0x4000, |h| h.jump = U16::new(0x40EB));
        assert_eq!(
            parse(&img).unwrap_err(),
            BzImageError::HeaderTooShort { end: 0x242 }
        );

        let img = image_with(0, 0x4000, |h| h.kernel_alignment = U32::new(0x30_0000));
        assert_eq!(parse(&img).unwrap_err(), BzImageError::BadAlignment(0x30_0000));

        let img = image_with(0, 0x4000, |h| h.init_size = U32::new(0x1000));
        assert!(matches!(parse(&img), Err(BzImageError::BadInitSize { .. })));
    }

    #[test]
    fn refuses_truncated_images() {
        let img = image();
        for len in [0, 0x1F0, 0x203, 0x207, 0x26B] {
            assert!(
                matches!(parse(&img[..len]), Err(BzImageError::Truncated { .. })),
                "len {len:#x}"
            );
        }
        // Setup complete, kernel cut short of what syssize says.
        assert!(matches!(
            parse(&img[..img.len() - 16]),
            Err(BzImageError::KernelTruncated { .. })
        ));
        // Kernel too short to hold the 64-bit entry.
        let img = image_with(0, 0x200, |_| {});
        assert!(matches!(parse(&img), Err(BzImageError::KernelTruncated { .. })));
        // syssize absurdly large.
        let img = image_with(0, 0x4000, |h| h.syssize = U32::new(u32::MAX));
        assert!(matches!(parse(&img), Err(BzImageError::KernelTruncated { .. })));
    }

    #[test]
    fn refuses_setup_sects_past_the_end() {
        let mut img = image();
        img[0x1F1] = 200; // 201 * 512 bytes of setup, image is smaller
        assert_eq!(
            parse(&img).unwrap_err(),
            BzImageError::SetupPastEnd {
                setup_end: 201 * 512,
                image_len: img.len()
            }
        );
        // Nothing after the setup code at all.
        let img = image_with(7, 0, |h| h.syssize = U32::new(0x100));
        assert!(matches!(parse(&img), Err(BzImageError::SetupPastEnd { .. })));
        // Explicit setup_sects is honoured.
        let bz = parse(&image_with(7, 0x4000, |_| {})).unwrap();
        assert_eq!(bz.kernel.start, 8 * 512);
    }

    #[test]
    fn refuses_long_cmdline_high_initrd_and_big_maps() {
        let bz = parse(&image_with(0, 0x4000, |h| h.cmdline_size = U32::new(10))).unwrap();
        let m = map();
        assert_eq!(
            build_boot_params(&bz, &layout(&m, 0x100_0000)).unwrap_err(),
            BzImageError::CmdlineTooLong { len: 20, max: 10 }
        );

        let bz = parse(&image_with(0, 0x4000, |h| {
            h.xloadflags = U16::new(XLF_KERNEL_64);
            h.initrd_addr_max = U32::new(0x37FF_FFFF);
        }))
        .unwrap();
        let big = [
            MemoryRegion {
                base: 0,
                size: 0x9_F000,
                kind: E820_RAM,
            },
            MemoryRegion {
                base: MIB,
                size: 2047 * MIB,
                kind: E820_RAM,
            },
        ];
        let mut l = layout(&big, 0x100_0000);
        l.initrd = Some(Blob {
            gpa: 0x37F0_0000,
            len: 0x20_0000,
        });
        assert_eq!(
            build_boot_params(&bz, &l).unwrap_err(),
            BzImageError::InitrdAboveLimit {
                last: 0x380F_FFFF,
                max: 0x37FF_FFFF
            }
        );
        // Just under the limit is fine.
        l.initrd = Some(Blob {
            gpa: 0x37E0_0000,
            len: 0x20_0000,
        });
        build_boot_params(&bz, &l).unwrap();

        let bz = parse(&image()).unwrap();
        let mut many = vec![MemoryRegion {
            base: 0,
            size: 0x9_F000,
            kind: E820_RAM,
        }];
        many.extend((0..128u64).map(|i| MemoryRegion {
            base: MIB + i * 0x1000,
            size: 0x1000,
            kind: E820_RESERVED,
        }));
        assert_eq!(
            build_boot_params(&bz, &layout(&many, 0x100_0000)).unwrap_err(),
            BzImageError::TooManyE820Entries(129)
        );
    }

    #[test]
    fn refuses_bad_layouts() {
        let bz = parse(&image()).unwrap();
        // No RAM below 1 MiB.
        let high = [MemoryRegion {
            base: MIB,
            size: 255 * MIB,
            kind: E820_RAM,
        }];
        assert_eq!(
            build_boot_params(&bz, &layout(&high, 0x100_0000)).unwrap_err(),
            BzImageError::NoLowMemory
        );
        // Out of order.
        let mut m = map();
        m.swap(0, 2);
        assert_eq!(
            build_boot_params(&bz, &layout(&m, 0x100_0000)).unwrap_err(),
            BzImageError::BadMemoryMap { index: 1 }
        );
        let m = map();
        // Initrd on top of the kernel.
        let mut l = layout(&m, 0x100_0000);
        l.initrd = Some(Blob {
            gpa: 0x200_0000,
            len: 0x1000,
        });
        assert_eq!(build_boot_params(&bz, &l).unwrap_err(), BzImageError::Overlap);
        // Command line in the reserved hole.
        let mut l = layout(&m, 0x100_0000);
        l.cmdline = Some(Blob {
            gpa: 0xF_8000,
            len: 4,
        });
        assert_eq!(
            build_boot_params(&bz, &l).unwrap_err(),
            BzImageError::CmdlineOutsideRam
        );
        // Kernel running off the end of RAM.
        assert_eq!(
            build_boot_params(&bz, &layout(&m, 255 * MIB)).unwrap_err(),
            BzImageError::KernelOutsideRam
        );
        // Initrd wrapping the address space.
        let mut l = layout(&m, 0x100_0000);
        l.initrd = Some(Blob {
            gpa: u64::MAX - 10,
            len: 100,
        });
        assert_eq!(
            build_boot_params(&bz, &l).unwrap_err(),
            BzImageError::InitrdOutsideRam
        );
    }

    #[test]
    fn plan_places_or_refuses() {
        let bz = parse(&image()).unwrap();
        // 24 MiB: pref_address (16 MiB) + 32 MiB init_size does not fit, the
        // lowest aligned address (2 MiB) + 32 MiB does not either.
        let err = plan(&bz, 24 * MIB).unwrap_err();
        assert_eq!(
            err,
            BzImageError::TooBigForMemory {
                needed: 0x200_0000,
                at: 0x20_0000,
                limit: 24 * MIB
            }
        );
        assert!(format!("{err}").contains("too big for the memory given"));
        // 40 MiB: falls back to 2 MiB.
        assert_eq!(plan(&bz, 40 * MIB).unwrap().load_address, 0x20_0000);
        // Misaligned pref_address is not used.
        let bz2 = parse(&image_with(0, 0x4000, |h| h.pref_address = U64::new(0x100_1000))).unwrap();
        assert_eq!(plan(&bz2, 256 * MIB).unwrap().load_address, 0x20_0000);
        // Non-relocatable: pref_address or nothing.
        let fixed = parse(&image_with(0, 0x4000, |h| h.relocatable_kernel = 0)).unwrap();
        assert_eq!(plan(&fixed, 256 * MIB).unwrap().load_address, 0x100_0000);
        assert!(matches!(
            plan(&fixed, 40 * MIB),
            Err(BzImageError::TooBigForMemory { .. })
        ));
        let low = parse(&image_with(0, 0x4000, |h| {
            h.relocatable_kernel = 0;
            h.pref_address = U64::new(0x1000);
        }))
        .unwrap();
        assert_eq!(
            plan(&low, 256 * MIB).unwrap_err(),
            BzImageError::BadLoadAddress(0x1000)
        );
        // Without XLF_CAN_BE_LOADED_ABOVE_4G the kernel stays below 4 GiB.
        let below = parse(&image_with(0, 0x4000, |h| {
            h.xloadflags = U16::new(XLF_KERNEL_64);
            h.pref_address = U64::new(0xFF00_0000);
        }))
        .unwrap();
        assert_eq!(plan(&below, 8 << 30).unwrap().load_address, 0x20_0000);
        // Huge pref_address does not overflow.
        let huge = parse(&image_with(0, 0x4000, |h| h.pref_address = U64::new(!0x1F_FFFF))).unwrap();
        assert_eq!(plan(&huge, u64::MAX).unwrap().load_address, 0x20_0000);
    }

    #[test]
    fn boot_params_offsets_match_bootparam_h() {
        assert_eq!(size_of::<BootParams>(), 0x1000);
        assert_eq!(offset_of!(BootParams, screen_info), 0x000);
        assert_eq!(offset_of!(BootParams, apm_bios_info), 0x040);
        assert_eq!(offset_of!(BootParams, tboot_addr), 0x058);
        assert_eq!(offset_of!(BootParams, ist_info), 0x060);
        assert_eq!(offset_of!(BootParams, acpi_rsdp_addr), 0x070);
        assert_eq!(offset_of!(BootParams, hd0_info), 0x080);
        assert_eq!(offset_of!(BootParams, hd1_info), 0x090);
        assert_eq!(offset_of!(BootParams, sys_desc_table), 0x0A0);
        assert_eq!(offset_of!(BootParams, olpc_ofw_header), 0x0B0);
        assert_eq!(offset_of!(BootParams, ext_ramdisk_image), 0x0C0);
        assert_eq!(offset_of!(BootParams, ext_ramdisk_size), 0x0C4);
        assert_eq!(offset_of!(BootParams, ext_cmd_line_ptr), 0x0C8);
        assert_eq!(offset_of!(BootParams, cc_blob_address), 0x13C);
        assert_eq!(offset_of!(BootParams, edid_info), 0x140);
        assert_eq!(offset_of!(BootParams, efi_info), 0x1C0);
        assert_eq!(offset_of!(BootParams, alt_mem_k), 0x1E0);
        assert_eq!(offset_of!(BootParams, scratch), 0x1E4);
        assert_eq!(offset_of!(BootParams, e820_entries), 0x1E8);
        assert_eq!(offset_of!(BootParams, eddbuf_entries), 0x1E9);
        assert_eq!(offset_of!(BootParams, edd_mbr_sig_buf_entries), 0x1EA);
        assert_eq!(offset_of!(BootParams, kbd_status), 0x1EB);
        assert_eq!(offset_of!(BootParams, secure_boot), 0x1EC);
        assert_eq!(offset_of!(BootParams, sentinel), 0x1EF);
        assert_eq!(offset_of!(BootParams, hdr), 0x1F1);
        assert_eq!(offset_of!(BootParams, edd_mbr_sig_buffer), 0x290);
        assert_eq!(offset_of!(BootParams, e820_table), 0x2D0);
        assert_eq!(offset_of!(BootParams, eddbuf), 0xD00);

        // Setup header fields at their boot.rst offsets (from the image start).
        let h = |off: usize| SETUP_HEADER_OFFSET + off;
        assert_eq!(h(offset_of!(SetupHeader, setup_sects)), 0x1F1);
        assert_eq!(h(offset_of!(SetupHeader, syssize)), 0x1F4);
        assert_eq!(h(offset_of!(SetupHeader, vid_mode)), 0x1FA);
        assert_eq!(h(offset_of!(SetupHeader, boot_flag)), 0x1FE);
        assert_eq!(h(offset_of!(SetupHeader, jump)), 0x200);
        assert_eq!(h(offset_of!(SetupHeader, header)), 0x202);
        assert_eq!(h(offset_of!(SetupHeader, version)), 0x206);
        assert_eq!(h(offset_of!(SetupHeader, type_of_loader)), 0x210);
        assert_eq!(h(offset_of!(SetupHeader, loadflags)), 0x211);
        assert_eq!(h(offset_of!(SetupHeader, code32_start)), 0x214);
        assert_eq!(h(offset_of!(SetupHeader, ramdisk_image)), 0x218);
        assert_eq!(h(offset_of!(SetupHeader, ramdisk_size)), 0x21C);
        assert_eq!(h(offset_of!(SetupHeader, heap_end_ptr)), 0x224);
        assert_eq!(h(offset_of!(SetupHeader, cmd_line_ptr)), 0x228);
        assert_eq!(h(offset_of!(SetupHeader, initrd_addr_max)), 0x22C);
        assert_eq!(h(offset_of!(SetupHeader, kernel_alignment)), 0x230);
        assert_eq!(h(offset_of!(SetupHeader, relocatable_kernel)), 0x234);
        assert_eq!(h(offset_of!(SetupHeader, min_alignment)), 0x235);
        assert_eq!(h(offset_of!(SetupHeader, xloadflags)), 0x236);
        assert_eq!(h(offset_of!(SetupHeader, cmdline_size)), 0x238);
        assert_eq!(h(offset_of!(SetupHeader, hardware_subarch)), 0x23C);
        assert_eq!(h(offset_of!(SetupHeader, payload_offset)), 0x248);
        assert_eq!(h(offset_of!(SetupHeader, setup_data)), 0x250);
        assert_eq!(h(offset_of!(SetupHeader, pref_address)), 0x258);
        assert_eq!(h(offset_of!(SetupHeader, init_size)), 0x260);
        assert_eq!(h(offset_of!(SetupHeader, handover_offset)), 0x264);
        assert_eq!(h(offset_of!(SetupHeader, kernel_info_offset)), 0x268);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_headers_never_panic(
            edits in proptest::collection::vec((0x1F0usize..0x270, any::<u8>()), 0..16),
            len in 0usize..0x5000,
            memory in any::<u64>(),
            base in any::<u64>(),
            cmd in any::<(u64, u64)>(),
            rd in any::<(u64, u64)>(),
        ) {
            let mut img = image();
            for (off, v) in edits {
                img[off] = v;
            }
            img.truncate(len);
            if let Ok(bz) = parse(&img) {
                prop_assert!(bz.kernel_bytes(&img).is_some());
                let _ = plan(&bz, memory);
                let m = map();
                let l = Layout {
                    memory_map: &m,
                    kernel_base: base,
                    cmdline: Some(Blob { gpa: cmd.0, len: cmd.1 }),
                    initrd: Some(Blob { gpa: rd.0, len: rd.1 }),
                    acpi_rsdp: 0,
                };
                let _ = build_boot_params(&bz, &l);
            }
        }
    }
}
