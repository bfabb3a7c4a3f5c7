//! How the root's partition worker lays out a child booted through a 32-bit
//! protocol, PVH (Xen `xen/include/public/arch-x86/hvm/start_info.h`) or
//! Multiboot v1 ([`crate::multiboot`]): the kernel is loaded at the physical
//! addresses its image asks for (at or above [`KERNEL_MIN`]), its modules
//! follow it page-aligned (as QEMU `hw/i386/multiboot.c` places them), and
//! the information the protocol hands over lives in low memory:
//!
//! | GPA      | what                                                       |
//! |----------|------------------------------------------------------------|
//! | 0x1000   | [`INFO_GPA`]: start info / multiboot info, memory map, module list, strings |
//! | 0x2000   | [`CMDLINE_GPA`]: the kernel command line (up to 8 KiB)     |
//! | 0x4000   | [`GDT_GPA`]: flat 32-bit code (0x08) and data (0x10)       |
//! | <0x8000  | [`STACK_TOP`]: a small valid stack (neither protocol gives one) |
//!
//! VP 0 starts in 32-bit protected mode, paging off, CS/DS/ES/SS/FS/GS flat
//! 4 GiB, interrupts off; EBX = [`INFO_GPA`] and, for Multiboot, EAX =
//! `0x2BADB002`. The memory map reports all of the child's memory as RAM
//! except the legacy 640 KiB-1 MiB hole.

use crate::multiboot::{self, MmapEntry};
use crate::pvh::{self, MemmapEntry, ModlistEntry, StartInfo};
use zerocopy::IntoBytes;

/// The information page.
pub const INFO_GPA: u64 = 0x1000;
/// The kernel command line.
pub const CMDLINE_GPA: u64 = 0x2000;
/// Room for it (with its NUL).
pub const CMDLINE_MAX: usize = 0x2000;
/// The GDT.
pub const GDT_GPA: u64 = 0x4000;
/// ESP at entry.
pub const STACK_TOP: u64 = 0x8000;
/// Lowest address a kernel may load at.
pub const KERNEL_MIN: u64 = 0x10_0000;
/// Flat GDT: null, 32-bit code (base 0, limit 4 GiB), data.
pub const GDT: [u64; 3] = [0, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF];
/// Code selector in [`GDT`].
pub const CODE_SELECTOR: u16 = 0x08;
/// Data selector in [`GDT`].
pub const DATA_SELECTOR: u16 = 0x10;
/// End of low memory in the memory map (640 KiB).
pub const LOW_RAM_END: u64 = 0xA_0000;
/// Bytes of a module's name kept in the info page.
pub const MODULE_NAME_MAX: usize = 255;
/// The loader's name (Multiboot `boot_loader_name`).
pub const LOADER_NAME: &str = "hv-core root partition";

// Offsets in the info page.
const MEMMAP_OFF: usize = 0x100;
const MODS_OFF: usize = 0x200;
const LOADER_NAME_OFF: usize = 0x300;
const MODULE_NAME_OFF: usize = 0x400;
const _: () = assert!(MODULE_NAME_OFF + MODULE_NAME_MAX < 0x1000);
const _: () = assert!(INFO_GPA + 0x1000 <= CMDLINE_GPA);
const _: () = assert!(CMDLINE_GPA + CMDLINE_MAX as u64 <= GDT_GPA);
const _: () = assert!(GDT_GPA + 24 <= STACK_TOP - 0x1000 && STACK_TOP <= LOW_RAM_END);

/// One module as the loader placed it.
#[derive(Debug, Clone, Copy)]
pub struct PlacedModule<'a> {
    /// Guest-physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub len: u64,
    /// Its string (Multiboot: QEMU passes the file name).
    pub name: &'a str,
}

/// The two RAM ranges of a child of `memory` bytes.
fn ram(memory: u64) -> [(u64, u64); 2] {
    [(0, LOW_RAM_END), (KERNEL_MIN, memory.saturating_sub(KERNEL_MIN))]
}

fn put(page: &mut [u8; 0x1000], at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

fn put_name(page: &mut [u8; 0x1000], at: usize, name: &str, max: usize) {
    let n = name.len().min(max);
    put(page, at, &name.as_bytes()[..n]);
    page[at + n] = 0;
}

/// The command line as written at [`CMDLINE_GPA`] (NUL-terminated), or
/// `None` when it does not fit.
pub fn cmdline_bytes(line: &str) -> Option<([u8; CMDLINE_MAX], usize)> {
    if line.len() >= CMDLINE_MAX || line.as_bytes().contains(&0) {
        return None;
    }
    let mut out = [0u8; CMDLINE_MAX];
    out[..line.len()].copy_from_slice(line.as_bytes());
    Some((out, line.len() + 1))
}

/// The PVH start info page (version 1, with a memory map) for a child of
/// `memory` bytes whose command line is at [`CMDLINE_GPA`].
pub fn pvh_info_page(memory: u64, module: Option<PlacedModule<'_>>) -> [u8; 0x1000] {
    let mut page = [0u8; 0x1000];
    let ram = ram(memory);
    for (i, (base, len)) in ram.iter().enumerate() {
        let e = MemmapEntry {
            addr: *base,
            size: *len,
            kind: pvh::MEMMAP_TYPE_RAM,
            reserved: 0,
        };
        put(&mut page, MEMMAP_OFF + i * size_of::<MemmapEntry>(), e.as_bytes());
    }
    let mut info = StartInfo {
        magic: pvh::START_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: 0,
        modlist_paddr: 0,
        cmdline_paddr: CMDLINE_GPA,
        rsdp_paddr: 0,
        memmap_paddr: INFO_GPA + MEMMAP_OFF as u64,
        memmap_entries: ram.len() as u32,
        reserved: 0,
    };
    if let Some(m) = module {
        put_name(&mut page, MODULE_NAME_OFF, m.name, MODULE_NAME_MAX);
        let e = ModlistEntry {
            paddr: m.gpa,
            size: m.len,
            cmdline_paddr: INFO_GPA + MODULE_NAME_OFF as u64,
            reserved: 0,
        };
        put(&mut page, MODS_OFF, e.as_bytes());
        info.nr_modules = 1;
        info.modlist_paddr = INFO_GPA + MODS_OFF as u64;
    }
    put(&mut page, 0, info.as_bytes());
    page
}

/// The Multiboot information page for a child of `memory` bytes whose
/// command line is at [`CMDLINE_GPA`].
pub fn multiboot_info_page(memory: u64, module: Option<PlacedModule<'_>>) -> [u8; 0x1000] {
    let mut page = [0u8; 0x1000];
    let ram = ram(memory);
    for (i, (base, len)) in ram.iter().enumerate() {
        let e = MmapEntry::new(*base, *len, 1);
        put(&mut page, MEMMAP_OFF + i * size_of::<MmapEntry>(), e.as_bytes());
    }
    put_name(&mut page, LOADER_NAME_OFF, LOADER_NAME, 0xFF);
    let mut info = multiboot::Info {
        flags: multiboot::INFO_MEMORY
            | multiboot::INFO_CMDLINE
            | multiboot::INFO_MODS
            | multiboot::INFO_MMAP
            | multiboot::INFO_BOOT_LOADER_NAME,
        mem_lower: (LOW_RAM_END >> 10) as u32,
        mem_upper: (memory.saturating_sub(KERNEL_MIN) >> 10) as u32,
        cmdline: CMDLINE_GPA as u32,
        mods_addr: (INFO_GPA as usize + MODS_OFF) as u32,
        mmap_length: (ram.len() * size_of::<MmapEntry>()) as u32,
        mmap_addr: (INFO_GPA as usize + MEMMAP_OFF) as u32,
        boot_loader_name: (INFO_GPA as usize + LOADER_NAME_OFF) as u32,
        ..Default::default()
    };
    if let Some(m) = module {
        put_name(&mut page, MODULE_NAME_OFF, m.name, MODULE_NAME_MAX);
        let e = multiboot::Module {
            mod_start: m.gpa as u32,
            mod_end: (m.gpa + m.len) as u32,
            string: (INFO_GPA as usize + MODULE_NAME_OFF) as u32,
            reserved: 0,
        };
        put(&mut page, MODS_OFF, e.as_bytes());
        info.mods_count = 1;
    }
    put(&mut page, 0, info.as_bytes());
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    fn at(page: &[u8; 0x1000], gpa: u64) -> &[u8] {
        &page[(gpa - INFO_GPA) as usize..]
    }

    #[test]
    fn pvh_page_parses_back() {
        let m = PlacedModule {
            gpa: 0x30_0000,
            len: 1234,
            name: "initrd",
        };
        let page = pvh_info_page(16 << 20, Some(m));
        let info = StartInfo::parse(&page).unwrap();
        assert_eq!((info.nr_modules, info.cmdline_paddr), (1, CMDLINE_GPA));
        let map: Vec<MemmapEntry> = pvh::parse_table(at(&page, info.memmap_paddr), 2)
            .unwrap()
            .collect();
        assert_eq!(map.iter().map(|e| e.addr + e.size).max(), Some(16 << 20));
        let (e, _) = ModlistEntry::read_from_prefix(at(&page, info.modlist_paddr)).unwrap();
        assert_eq!((e.paddr, e.size), (0x30_0000, 1234));
        assert!(at(&page, e.cmdline_paddr).starts_with(b"initrd\0"));
        let none = pvh_info_page(16 << 20, None);
        assert_eq!(StartInfo::parse(&none).unwrap().nr_modules, 0);
    }

    #[test]
    fn multiboot_page_parses_back() {
        let long = "x".repeat(400);
        let m = PlacedModule {
            gpa: 0x30_0000,
            len: 10,
            name: &long,
        };
        let page = multiboot_info_page(64 << 20, Some(m));
        let (info, _) = multiboot::Info::read_from_prefix(&page).unwrap();
        assert_eq!((info.mem_lower, info.mem_upper), (640, (63 << 20) >> 10));
        assert_eq!(info.mods_count, 1);
        let map: Vec<_> =
            multiboot::mmap_entries(&at(&page, info.mmap_addr as u64)[..info.mmap_length as usize]).collect();
        assert_eq!(map.iter().map(|e| e.base() + e.len()).max(), Some(64 << 20));
        let (md, _) = multiboot::Module::read_from_prefix(at(&page, info.mods_addr as u64)).unwrap();
        assert_eq!((md.mod_start, md.mod_end), (0x30_0000, 0x30_000A));
        let name = at(&page, md.string as u64);
        assert_eq!(name.iter().position(|&b| b == 0), Some(MODULE_NAME_MAX));
        assert!(at(&page, info.boot_loader_name as u64).starts_with(LOADER_NAME.as_bytes()));
    }

    #[test]
    fn cmdline_limits() {
        let (b, n) = cmdline_bytes("name=a mode=hello").unwrap();
        assert_eq!(&b[..n], b"name=a mode=hello\0");
        assert!(cmdline_bytes(&"x".repeat(CMDLINE_MAX)).is_none());
        assert!(cmdline_bytes("a\0b").is_none());
    }
}
