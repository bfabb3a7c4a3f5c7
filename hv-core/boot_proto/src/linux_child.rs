//! The guest-physical layout of a child booted through the Linux 64-bit boot
//! protocol (Linux 6.1 `Documentation/x86/boot.rst`, "64-bit Boot
//! Protocol"), planned before a byte is written: where the boot GDT, the
//! identity page tables, the zero page, the command line, the ACPI tables,
//! the kernel and the initramfs go, and the E820 map the kernel is told.
//!
//! ```text
//! 0x0000_0000  RAM (left free: real-mode IVT area, Linux reserves it)
//! 0x0000_1000  boot GDT: null, null, __BOOT_CS 0x10 (64-bit), __BOOT_DS 0x18
//! 0x0000_2000  PML4, PDPT, four PDs: 4 GiB identity-mapped with 2 MiB pages
//! 0x0000_9000  zero page (struct boot_params)
//! 0x0000_A000  command line (≤ 4095 bytes + NUL)
//! 0x0009_F000  reserved up to 1 MiB (the BIOS area on a PC); the ACPI
//!              tables sit at 0xE0000 inside it, typed E820_ACPI
//! 0x0010_0000  the protected-mode kernel (bzimage::plan) … its init_size
//!   …          RAM
//!   top        the initramfs, page-aligned, as high as its limit allows
//! ```
//!
//! Everything below 1 MiB that Linux must not reuse before it has copied it
//! (the zero page and command line are copied in `copy_bootdata`, the page
//! tables replaced in `startup_64`) is plain RAM: Linux reserves the first
//! 64 KiB anyway and is done with the rest before its allocator runs. RAM
//! below 1 MiB is required (`init_real_mode` panics without it).

use crate::bzimage::{
    self, BootParams, BzImage, BzImageError, E820_ACPI, E820_RAM, E820_RESERVED, FOUR_GIB, LoadPlan,
    MemoryRegion,
};
use core::fmt;

/// The boot GDT.
pub const GDT_GPA: u64 = 0x1000;
/// Its entries: null, null, `__BOOT_CS` (flat 64-bit code), `__BOOT_DS`
/// (flat data), as the protocol's selectors 0x10 and 0x18 require.
pub const GDT: [u64; 4] = [0, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];
/// PML4 of the identity map (PDPT and four PDs follow, one page each).
pub const PML4_GPA: u64 = 0x2000;
/// PDPT of the identity map.
pub const PDPT_GPA: u64 = 0x3000;
/// First of four page directories (2 MiB pages) covering 4 GiB.
pub const PD_GPA: u64 = 0x4000;
/// The zero page (`%rsi` at entry).
pub const ZERO_PAGE_GPA: u64 = 0x9000;
/// The command line.
pub const CMDLINE_GPA: u64 = 0xA000;
/// Longest command line this layout has room for (without its NUL).
pub const CMDLINE_MAX: u64 = 4095;
/// End of the low RAM the E820 map reports.
pub const LOW_RAM_END: u64 = 0x9_F000;
/// Where the ACPI tables go.
pub const ACPI_GPA: u64 = 0xE_0000;
/// Most bytes of ACPI tables (up to the reset stub's page).
pub const ACPI_MAX: u64 = 0x1_F000;
/// The real-mode reset vector (F000:FFF0), where a PC's firmware starts.
/// Linux on HW-reduced ACPI without EFI reboots through it: it picks an
/// EFI reboot (`efi_reboot_required`, arch/x86/platform/efi/quirks.c),
/// which without EFI falls back to `machine_real_restart(MRR_BIOS)`
/// (arch/x86/kernel/reboot.c), a far jump to F000:FFF0.
pub const RESET_VECTOR_GPA: u64 = 0xF_FFF0;
// The stub's 16 bytes end at 1 MiB, past the ACPI tables' room.
const _: () = assert!(RESET_VECTOR_GPA + 16 == HIGH_RAM_START);
const _: () = assert!(ACPI_GPA + ACPI_MAX <= RESET_VECTOR_GPA & !0xFFF);
/// Start of the kernel's RAM.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// A child's RAM must end below the 32-bit MMIO window (local APIC at
/// 0xFEE0_0000, IOAPIC at 0xFEC0_0000 and room for VMBus MMIO gaps):
/// children are given contiguous RAM from 0 today.
pub const MAX_MEMORY: u64 = 0xC000_0000;
/// Smallest child this layout plans for.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Initramfs placement granule.
const PAGE: u64 = 4096;

/// The zero page's address, the kernel's entry and everything the loader
/// must copy where.
#[derive(Debug, Clone)]
pub struct LinuxChildPlan {
    /// Where the kernel goes and its 64-bit entry.
    pub kernel: LoadPlan,
    /// The initramfs' address, if there is one.
    pub initrd_gpa: Option<u64>,
    /// The command line's address (NUL-terminated, possibly empty).
    pub cmdline_gpa: u64,
    /// The zero page, ready to copy to [`ZERO_PAGE_GPA`].
    pub boot_params: BootParams,
    /// The E820 map given to the kernel.
    pub memory_map: [MemoryRegion; 3],
}

/// Why a Linux child cannot be laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinuxChildError {
    /// Memory outside [`MIN_MEMORY`]..=[`MAX_MEMORY`] or not page-aligned.
    BadMemorySize(u64),
    /// Command line longer than [`CMDLINE_MAX`].
    CmdlineTooLong(u64),
    /// ACPI tables longer than [`ACPI_MAX`].
    AcpiTooBig(u64),
    /// The initramfs does not fit between the kernel and its address limit.
    InitrdTooBig {
        /// Its length.
        len: u64,
        /// Bytes free for it.
        room: u64,
    },
    /// The kernel's own checks (placement, zero page) refused.
    Kernel(BzImageError),
}

impl fmt::Display for LinuxChildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMemorySize(m) => write!(
                f,
                "{} MiB: a Linux child needs {} MiB to {} MiB of memory",
                m >> 20,
                MIN_MEMORY >> 20,
                MAX_MEMORY >> 20
            ),
            Self::CmdlineTooLong(n) => write!(f, "command line of {n} bytes (at most {CMDLINE_MAX})"),
            Self::AcpiTooBig(n) => write!(f, "ACPI tables of {n} bytes (at most {ACPI_MAX})"),
            Self::InitrdTooBig { len, room } => write!(
                f,
                "initramfs of {} KiB does not fit: {} KiB free above the kernel",
                len >> 10,
                room >> 10
            ),
            Self::Kernel(e) => write!(f, "{e}"),
        }
    }
}

impl From<BzImageError> for LinuxChildError {
    fn from(e: BzImageError) -> Self {
        Self::Kernel(e)
    }
}

/// Lay out `bz` in a child of `memory` bytes with a `cmdline_len`-byte
/// command line, an `initrd_len`-byte initramfs (0: none) and `acpi_len`
/// bytes of ACPI tables whose RSDP is at `acpi_rsdp` (0: no ACPI).
pub fn plan(
    bz: &BzImage,
    memory: u64,
    cmdline_len: u64,
    initrd_len: u64,
    acpi_len: u64,
    acpi_rsdp: u64,
) -> Result<LinuxChildPlan, LinuxChildError> {
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&memory) || !memory.is_multiple_of(PAGE) {
        return Err(LinuxChildError::BadMemorySize(memory));
    }
    if cmdline_len > CMDLINE_MAX {
        return Err(LinuxChildError::CmdlineTooLong(cmdline_len));
    }
    if acpi_len > ACPI_MAX {
        return Err(LinuxChildError::AcpiTooBig(acpi_len));
    }
    let kernel = bzimage::plan(bz, memory)?;
    let memory_map = [
        MemoryRegion {
            base: 0,
            size: LOW_RAM_END,
            kind: E820_RAM,
        },
        MemoryRegion {
            base: LOW_RAM_END,
            size: HIGH_RAM_START - LOW_RAM_END,
            kind: if acpi_len != 0 { E820_ACPI } else { E820_RESERVED },
        },
        MemoryRegion {
            base: HIGH_RAM_START,
            size: memory - HIGH_RAM_START,
            kind: E820_RAM,
        },
    ];
    // The initramfs as high as it may go: below the end of RAM, below
    // initrd_addr_max (+1) unless the kernel takes it above 4 GiB, and above
    // the kernel's init_size span.
    let initrd_gpa = if initrd_len == 0 {
        None
    } else {
        let limit = if bz.can_load_above_4g() {
            memory
        } else {
            memory.min(u64::from(bz.initrd_addr_max) + 1).min(FOUR_GIB)
        };
        let room = limit.saturating_sub(kernel.reserved_end);
        let start = limit
            .checked_sub(initrd_len)
            .map(|s| s & !(PAGE - 1))
            .filter(|&s| s >= kernel.reserved_end)
            .ok_or(LinuxChildError::InitrdTooBig {
                len: initrd_len,
                room,
            })?;
        Some(start)
    };
    let layout = bzimage::Layout {
        memory_map: &memory_map,
        kernel_base: kernel.load_address,
        cmdline: Some(bzimage::Blob {
            gpa: CMDLINE_GPA,
            len: cmdline_len,
        }),
        initrd: initrd_gpa.map(|gpa| bzimage::Blob { gpa, len: initrd_len }),
        acpi_rsdp,
    };
    let boot_params = bzimage::build_boot_params(bz, &layout)?;
    Ok(LinuxChildPlan {
        kernel,
        initrd_gpa,
        cmdline_gpa: CMDLINE_GPA,
        boot_params,
        memory_map,
    })
}

/// The child's "firmware" at the reset vector: 16-bit code that asks the
/// platform for a reset through the ACPI reset register
/// (`mov dx, port; mov al, value; out dx, al`) and halts, so a guest that
/// jumps to the reset vector reboots the partition.
pub fn reset_stub(port: u16, value: u8) -> [u8; 16] {
    let [lo, hi] = port.to_le_bytes();
    let mut stub = [0xF4u8; 16]; // HLT padding
    stub[..7].copy_from_slice(&[0xBA, lo, hi, 0xB0, value, 0xEE, 0xF4]);
    // Back to the HLT if it ever wakes: jmp -3 (EB FD).
    stub[7] = 0xEB;
    stub[8] = 0xFD;
    stub
}

/// The identity page tables (PML4, PDPT, four PDs; 24 KiB from
/// [`PML4_GPA`]): the first 4 GiB with 2 MiB pages, present and writable.
pub fn identity_page_tables() -> [u8; 6 * 4096] {
    let mut t = [0u8; 6 * 4096];
    let entry = |t: &mut [u8], index: usize, value: u64| {
        t[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes());
    };
    entry(&mut t[..4096], 0, PDPT_GPA | 3);
    for i in 0..4u64 {
        entry(&mut t[4096..8192], i as usize, (PD_GPA + i * 4096) | 3);
    }
    for i in 0..2048usize {
        entry(&mut t[8192..], i, ((i as u64) << 21) | 0x83);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bzimage::testing::image;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_kernel_with_initrd_and_acpi_is_laid_out_without_overlap() {
        let img = image(0x100_0000, 2 * MIB as usize, 0x7FFF_FFFF, true);
        let bz = bzimage::parse(&img).unwrap();
        let p = plan(&bz, 256 * MIB, 40, 8 * MIB, 0x400, ACPI_GPA).unwrap();
        assert_eq!(p.kernel.load_address, 0x100_0000);
        let initrd = p.initrd_gpa.unwrap();
        assert_eq!(initrd, 248 * MIB);
        assert!(initrd >= p.kernel.reserved_end);
        assert_eq!(p.boot_params.hdr.ramdisk_image.get() as u64, initrd);
        assert_eq!(p.boot_params.hdr.ramdisk_size.get() as u64, 8 * MIB);
        assert_eq!(p.boot_params.hdr.cmd_line_ptr.get() as u64, CMDLINE_GPA);
        assert_eq!(p.boot_params.acpi_rsdp_addr.get(), ACPI_GPA);
        assert_eq!(p.boot_params.e820_entries, 3);
        assert_eq!(p.memory_map[1].kind, E820_ACPI);
        assert_eq!(p.memory_map[2].base + p.memory_map[2].size, 256 * MIB);
    }

    #[test]
    fn the_initrd_respects_initrd_addr_max() {
        let img = image(0x100_0000, MIB as usize, 0x0FFF_FFFF, false);
        let bz = bzimage::parse(&img).unwrap();
        let p = plan(&bz, 1024 * MIB, 0, 4 * MIB, 0, 0).unwrap();
        let at = p.initrd_gpa.unwrap();
        assert!(at + 4 * MIB <= 0x1000_0000, "{at:#x}");
        assert_eq!(p.memory_map[1].kind, E820_RESERVED);
    }

    #[test]
    fn refusals_say_what_does_not_fit() {
        let img = image(0x100_0000, MIB as usize, 0x7FFF_FFFF, true);
        let bz = bzimage::parse(&img).unwrap();
        assert_eq!(
            plan(&bz, 8 * MIB, 0, 0, 0, 0).unwrap_err(),
            LinuxChildError::BadMemorySize(8 * MIB)
        );
        assert_eq!(
            plan(&bz, 4 * 1024 * MIB, 0, 0, 0, 0).unwrap_err(),
            LinuxChildError::BadMemorySize(4 * 1024 * MIB)
        );
        assert_eq!(
            plan(&bz, 64 * MIB, 5000, 0, 0, 0).unwrap_err(),
            LinuxChildError::CmdlineTooLong(5000)
        );
        assert_eq!(
            plan(&bz, 64 * MIB, 0, 0, ACPI_MAX + 1, 0).unwrap_err(),
            LinuxChildError::AcpiTooBig(ACPI_MAX + 1)
        );
        let e = plan(&bz, 64 * MIB, 0, 60 * MIB, 0, 0).unwrap_err();
        assert!(matches!(e, LinuxChildError::InitrdTooBig { .. }), "{e:?}");
        assert!(e.to_string().contains("does not fit"));
    }

    #[test]
    fn the_reset_stub_writes_the_reset_register() {
        let s = reset_stub(0x402, 1);
        // mov dx, 0x402; mov al, 1; out dx, al; hlt; jmp $-1
        assert_eq!(&s[..9], &[0xBA, 0x02, 0x04, 0xB0, 0x01, 0xEE, 0xF4, 0xEB, 0xFD]);
    }

    #[test]
    fn identity_tables_map_4_gib() {
        let t = identity_page_tables();
        let q = |off: usize| u64::from_le_bytes(t[off..off + 8].try_into().unwrap());
        assert_eq!(q(0), PDPT_GPA | 3);
        assert_eq!(q(4096 + 3 * 8), (PD_GPA + 3 * 4096) | 3);
        assert_eq!(q(8192), 0x83);
        assert_eq!(q(8192 + 2047 * 8), (2047u64 << 21) | 0x83);
    }

    #[test]
    fn gdt_has_the_protocols_selectors() {
        // __BOOT_CS: present, code, L=1; __BOOT_DS: present, data, writable.
        let cs = GDT[bzimage::BOOT_CS as usize / 8];
        let ds = GDT[bzimage::BOOT_DS as usize / 8];
        assert_eq!((cs >> 53) & 1, 1, "L bit");
        assert_eq!((cs >> 43) & 1, 1, "code");
        assert_eq!((ds >> 43) & 1, 0, "data");
        assert_eq!((ds >> 41) & 1, 1, "writable");
    }
}
