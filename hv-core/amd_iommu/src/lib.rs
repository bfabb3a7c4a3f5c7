//! AMD I/O virtualization (AMD-Vi), the parts hv-core needs to keep device
//! DMA out of its region, as pure data: the MMIO register layout, device
//! table entries, I/O page-table entries and an identity-minus-holes builder
//! for them, command-buffer commands, event-log entries, finding the IOMMU
//! through the ACPI IVRS table and the ECAM windows through the MCFG table,
//! and which root writes to PCI configuration space hv-core refuses
//! ([`pci`]).
//!
//! Formats follow the AMD I/O Virtualization Technology (IOMMU)
//! Specification (rev. 3.x, §2.2 data structures, §2.4 commands, §2.5
//! events, §3.4 MMIO registers, §5 IVRS), the PCI Firmware Specification
//! (MCFG) and QEMU's `hw/i386/amd_iommu.c` and `hw/pci/pci_host.c`, which is
//! what the tests run on. The crate touches no memory: tables are
//! reached through [`x86_paging::TableMemory`] and firmware tables through
//! [`PhysRead`], so everything here runs in host unit tests.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::ops::Range;
pub use x86_paging::TableMemory;

/// MMIO register offsets (spec §3.4) and their encodings.
pub mod mmio {
    /// Device table base address and size.
    pub const DEVICE_TABLE: u64 = 0x0000;
    /// Command buffer base address and size.
    pub const COMMAND_BASE: u64 = 0x0008;
    /// Event log base address and size.
    pub const EVENT_BASE: u64 = 0x0010;
    /// Control register.
    pub const CONTROL: u64 = 0x0018;
    /// Extended feature register.
    pub const EXT_FEATURES: u64 = 0x0030;
    /// Command buffer head pointer (byte offset).
    pub const COMMAND_HEAD: u64 = 0x2000;
    /// Command buffer tail pointer (byte offset).
    pub const COMMAND_TAIL: u64 = 0x2008;
    /// Event log head pointer (byte offset).
    pub const EVENT_HEAD: u64 = 0x2010;
    /// Event log tail pointer (byte offset).
    pub const EVENT_TAIL: u64 = 0x2018;
    /// Status register.
    pub const STATUS: u64 = 0x2020;
    /// Size of the MMIO window (16 KiB).
    pub const SIZE: u64 = 0x4000;

    /// Control: IOMMU enable (translation on).
    pub const CONTROL_IOMMU_EN: u64 = 1 << 0;
    /// Control: event log enable.
    pub const CONTROL_EVENT_LOG_EN: u64 = 1 << 2;
    /// Control: command buffer enable.
    pub const CONTROL_CMD_BUF_EN: u64 = 1 << 12;

    /// Extended features: INVALIDATE_IOMMU_ALL supported.
    pub const EFR_IA: u64 = 1 << 6;

    /// The device table register for a table at `base` of `pages` 4 KiB
    /// pages (size field = pages - 1, 1..=512 pages).
    pub const fn device_table(base: u64, pages: u64) -> u64 {
        (base & super::ADDR_MASK) | ((pages - 1) & 0x1FF)
    }

    /// The command-buffer or event-log base register for a ring at `base`
    /// of `2^log2_entries` 16-byte entries (8..=15, i.e. 256 to 32768).
    pub const fn ring(base: u64, log2_entries: u8) -> u64 {
        (base & super::ADDR_MASK) | ((log2_entries as u64 & 0xF) << 56)
    }
}

/// Physical address bits 51:12 of a table pointer or page entry.
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// One device table entry (spec §2.2.2): 256 bits, one per requester ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct DeviceTableEntry(pub [u64; 4]);
const _: () = assert!(size_of::<DeviceTableEntry>() == 32);

/// Device table entry bits.
pub mod dte {
    /// Entry valid.
    pub const V: u64 = 1 << 0;
    /// Translation information valid.
    pub const TV: u64 = 1 << 1;
    /// Paging mode (levels of the I/O page table), bits 11:9.
    pub const MODE_SHIFT: u32 = 9;
    /// DMA reads allowed.
    pub const IR: u64 = 1 << 61;
    /// DMA writes allowed.
    pub const IW: u64 = 1 << 62;
}

impl DeviceTableEntry {
    /// Bytes in one entry.
    pub const SIZE: u64 = 32;

    /// Translate the device's DMA through the `levels`-level I/O page table at
    /// `root`, in domain `domain`, with reads and writes allowed where the
    /// tables allow them. Interrupt remapping stays off (IV = 0): MSIs pass
    /// through unchanged.
    pub const fn translated(root: u64, levels: u8, domain: u16) -> Self {
        Self([
            dte::V
                | dte::TV
                | ((levels as u64 & 7) << dte::MODE_SHIFT)
                | (root & ADDR_MASK)
                | dte::IR
                | dte::IW,
            domain as u64,
            0,
            0,
        ])
    }

    /// Paging mode (levels), 0 = no translation.
    pub const fn levels(&self) -> u8 {
        ((self.0[0] >> dte::MODE_SHIFT) & 7) as u8
    }

    /// The I/O page table root.
    pub const fn root(&self) -> u64 {
        self.0[0] & ADDR_MASK
    }

    /// The entry as little-endian bytes, for the device table in memory.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, q) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&q.to_le_bytes());
        }
        out
    }
}

/// I/O page-table entry bits (spec §2.2.3).
pub mod pte {
    /// Present.
    pub const PR: u64 = 1 << 0;
    /// Next level, bits 11:9: 0 = this entry maps a page, 1..=6 = table.
    pub const NEXT_LEVEL_SHIFT: u32 = 9;
    /// DMA reads allowed through this entry.
    pub const IR: u64 = 1 << 61;
    /// DMA writes allowed through this entry.
    pub const IW: u64 = 1 << 62;
}

/// An I/O page-table entry pointing at the table at `table` of level
/// `next_level`, granting `perms` (a mask of [`pte::IR`] and [`pte::IW`]) to
/// everything below it.
pub const fn table_entry(table: u64, next_level: u8, perms: u64) -> u64 {
    pte::PR | ((next_level as u64 & 7) << pte::NEXT_LEVEL_SHIFT) | (table & ADDR_MASK) | perms
}

/// An I/O page-table entry mapping the page (of the entry's level) at `phys`
/// with `perms`.
pub const fn page_entry(phys: u64, perms: u64) -> u64 {
    pte::PR | (phys & ADDR_MASK) | perms
}

/// Bytes covered by one entry of a level-`level` table (level 1 = 4 KiB).
pub const fn entry_span(level: u8) -> u64 {
    1 << (12 + 9 * (level as u32 - 1))
}

/// Levels of the I/O page tables hv-core builds: 3 levels cover the same
/// 512 GiB as the root's NPT.
pub const LEVELS: u8 = 3;

/// Why I/O page tables could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// Table memory ran out.
    OutOfTables,
    /// A boundary is not 4 KiB aligned.
    Misaligned,
    /// The range reaches beyond what [`LEVELS`] levels translate.
    TooHigh,
    /// Part of the range is already mapped.
    AlreadyMapped(u64),
}

/// I/O page tables with [`LEVELS`] levels.
pub struct IoPageTables<M: TableMemory> {
    root: u64,
    /// One empty table shared by every denied slot (see
    /// [`IoPageTables::identity_map_except`]).
    deny_table: u64,
    mem: M,
}

impl<M: TableMemory> IoPageTables<M> {
    /// An empty address space (every DMA faults).
    pub fn new(mut mem: M) -> Result<Self, BuildError> {
        let root = mem.alloc_table().ok_or(BuildError::OutOfTables)?;
        let deny_table = mem.alloc_table().ok_or(BuildError::OutOfTables)?;
        Ok(Self {
            root,
            deny_table,
            mem,
        })
    }

    /// The top-level table, for the device table entries.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The table memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Identity-map `range` read-write, except the bytes in `holes`.
    ///
    /// Pages are the largest that fit (up to 2 MiB, or 1 GiB with
    /// `gib_pages`). Every 2 MiB slot lying wholly inside a hole gets an
    /// explicit *deny* entry: present, pointing at an empty table, with
    /// neither read nor write permission. Permissions are ANDed down the
    /// walk (spec §2.2.3), so any DMA there is refused and reported as an
    /// IO_PAGE_FAULT event (a not-present entry is refused as well, but
    /// QEMU's model drops such accesses without an event). Hole pages that
    /// share a 2 MiB slot with mapped memory are simply not present.
    pub fn identity_map_except(
        &mut self,
        range: Range<u64>,
        holes: &[Range<u64>],
        gib_pages: bool,
    ) -> Result<(), BuildError> {
        let aligned = |r: &Range<u64>| (r.start | r.end) & 0xFFF == 0;
        if !aligned(&range) || !holes.iter().all(aligned) {
            return Err(BuildError::Misaligned);
        }
        if range.end > entry_span(LEVELS) * 512 {
            return Err(BuildError::TooHigh);
        }
        if range.start >= range.end {
            return Ok(());
        }
        let max_leaf = if gib_pages { 3 } else { 2 };
        let root = self.root;
        self.fill(root, LEVELS, 0, &range, holes, max_leaf)
    }

    fn fill(
        &mut self,
        table: u64,
        level: u8,
        base: u64,
        range: &Range<u64>,
        holes: &[Range<u64>],
        max_leaf: u8,
    ) -> Result<(), BuildError> {
        let span = entry_span(level);
        let first = (range.start.max(base) - base) / span;
        let last = (range.end.min(base + 512 * span) - 1 - base) / span;
        for index in first..=last {
            let slot = base + index * span..base + (index + 1) * span;
            let entry = self.mem.read_entry(table, index as usize);
            let covered = range.start <= slot.start && slot.end <= range.end;
            let in_hole = holes.iter().any(|h| h.start <= slot.start && slot.end <= h.end);
            let touches_hole = holes.iter().any(|h| h.start < slot.end && slot.start < h.end);
            if in_hole && level <= 2 {
                // A 2 MiB slot gets the deny entry; a 4 KiB one stays absent.
                if level == 2 && entry & pte::PR == 0 {
                    let deny = table_entry(self.deny_table, 1, 0);
                    self.mem.write_entry(table, index as usize, deny);
                }
                continue;
            } else if !in_hole && covered && !touches_hole && level <= max_leaf {
                if entry & pte::PR != 0 {
                    return Err(BuildError::AlreadyMapped(slot.start));
                }
                let leaf = page_entry(slot.start, pte::IR | pte::IW);
                self.mem.write_entry(table, index as usize, leaf);
                continue;
            }
            // Partly covered, or touching a hole: descend.
            let next = if entry & pte::PR == 0 {
                let t = self.mem.alloc_table().ok_or(BuildError::OutOfTables)?;
                self.mem.write_entry(
                    table,
                    index as usize,
                    table_entry(t, level - 1, pte::IR | pte::IW),
                );
                t
            } else if (entry >> pte::NEXT_LEVEL_SHIFT) & 7 == u64::from(level - 1)
                && entry & ADDR_MASK != self.deny_table
            {
                entry & ADDR_MASK
            } else {
                return Err(BuildError::AlreadyMapped(slot.start));
            };
            self.fill(next, level - 1, slot.start, range, holes, max_leaf)?;
        }
        Ok(())
    }

    /// Walk the tables as the IOMMU would for a DMA to `addr`.
    pub fn translate(&self, addr: u64) -> Walk {
        let mut table = self.root;
        let mut level = LEVELS;
        loop {
            let index = (addr >> (12 + 9 * (u32::from(level) - 1))) & 0x1FF;
            let entry = self.mem.read_entry(table, index as usize);
            if entry & pte::PR == 0 {
                return Walk::NotPresent;
            }
            let perms = entry & (pte::IR | pte::IW);
            let next = ((entry >> pte::NEXT_LEVEL_SHIFT) & 7) as u8;
            if next == 0 {
                let span = entry_span(level);
                return Walk::Mapped((entry & ADDR_MASK & !(span - 1)) | (addr & (span - 1)), perms);
            }
            // Permissions are ANDed down the walk: none here, none below.
            if perms == 0 {
                return Walk::Denied;
            }
            if next != level - 1 {
                return Walk::NotPresent;
            }
            table = entry & ADDR_MASK;
            level = next;
        }
    }
}

/// The outcome of [`IoPageTables::translate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Translated to this address with these permissions ([`pte::IR`],
    /// [`pte::IW`]).
    Mapped(u64, u64),
    /// A present entry on the way grants nothing: refused (IO_PAGE_FAULT).
    Denied,
    /// Nothing present: refused.
    NotPresent,
}

/// Command-buffer commands (spec §2.4), 16 bytes each.
pub mod command {
    /// Bytes in one command.
    pub const SIZE: u64 = 16;

    /// COMPLETION_WAIT: when every earlier command has finished, store
    /// `data` at `store` (8-byte aligned).
    pub const fn completion_wait(store: u64, data: u64) -> [u64; 2] {
        [(store & 0x000F_FFFF_FFFF_FFF8) | 1 | (0x1 << 60), data]
    }

    /// INVALIDATE_DEVTAB_ENTRY for requester `devid`.
    pub const fn invalidate_devtab_entry(devid: u16) -> [u64; 2] {
        [devid as u64 | (0x2 << 60), 0]
    }

    /// INVALIDATE_IOMMU_PAGES for everything in `domain` (S = 1, PDE = 1,
    /// address = all ones: the whole address space).
    pub const fn invalidate_domain(domain: u16) -> [u64; 2] {
        [
            ((domain as u64) << 32) | (0x3 << 60),
            0x7FFF_FFFF_FFFF_F000 | 0b11,
        ]
    }

    /// INVALIDATE_IOMMU_ALL (needs EFR.IA).
    pub const fn invalidate_all() -> [u64; 2] {
        [0x8 << 60, 0]
    }
}

/// An event-log entry (spec §2.5), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Event code (bits 63:60 of the first quadword).
    pub code: u8,
    /// Requester ID (bus << 8 | devfn).
    pub devid: u16,
    /// Flags (bits 59:48 of the first quadword).
    pub flags: u16,
    /// The address involved (DMA address for page faults).
    pub address: u64,
}

/// Event codes.
pub mod event {
    /// ILLEGAL_DEV_TABLE_ENTRY.
    pub const ILLEGAL_DEV_TABLE_ENTRY: u8 = 0x1;
    /// IO_PAGE_FAULT.
    pub const IO_PAGE_FAULT: u8 = 0x2;
    /// DEV_TAB_HARDWARE_ERROR.
    pub const DEV_TAB_HARDWARE_ERROR: u8 = 0x3;
    /// PAGE_TAB_HARDWARE_ERROR.
    pub const PAGE_TAB_HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL_COMMAND_ERROR.
    pub const ILLEGAL_COMMAND_ERROR: u8 = 0x5;
    /// COMMAND_HARDWARE_ERROR.
    pub const COMMAND_HARDWARE_ERROR: u8 = 0x6;
}

impl Event {
    /// Decode the two quadwords of an entry.
    pub const fn decode(raw: [u64; 2]) -> Self {
        Self {
            code: (raw[0] >> 60) as u8,
            devid: raw[0] as u16,
            flags: ((raw[0] >> 48) & 0xFFF) as u16,
            address: raw[1],
        }
    }

    /// The event code's name.
    pub const fn name(&self) -> &'static str {
        match self.code {
            event::ILLEGAL_DEV_TABLE_ENTRY => "ILLEGAL_DEV_TABLE_ENTRY",
            event::IO_PAGE_FAULT => "IO_PAGE_FAULT",
            event::DEV_TAB_HARDWARE_ERROR => "DEV_TAB_HARDWARE_ERROR",
            event::PAGE_TAB_HARDWARE_ERROR => "PAGE_TAB_HARDWARE_ERROR",
            event::ILLEGAL_COMMAND_ERROR => "ILLEGAL_COMMAND_ERROR",
            event::COMMAND_HARDWARE_ERROR => "COMMAND_HARDWARE_ERROR",
            _ => "unknown",
        }
    }
}

/// Reading physical memory (firmware tables).
pub trait PhysRead {
    /// Fill `out` from physical address `pa`; false if that memory may not
    /// be read.
    fn read(&self, pa: u64, out: &mut [u8]) -> bool;
}

/// An IOMMU as the IVRS table describes it (an IVHD block, spec §5.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ivhd {
    /// IVHD type (0x10, 0x11 or 0x40).
    pub kind: u8,
    /// The IOMMU's own requester ID (its PCI function).
    pub devid: u16,
    /// Offset of its capability block in that function's config space.
    pub capability_offset: u16,
    /// Base of its MMIO registers.
    pub mmio_base: u64,
    /// PCI segment.
    pub segment: u16,
}

/// Why no IOMMU was found in the ACPI tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// No RSDP in the scanned area.
    NoRsdp,
    /// A table could not be read or failed its checksum or length checks.
    BadTable(u64),
    /// No IVRS table.
    NoIvrs,
    /// No table with this signature.
    NoTable([u8; 4]),
    /// The IVRS table has no IVHD block.
    NoIvhd,
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)) == 0
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from(le_u32(b, at)) | (u64::from(le_u32(b, at + 4)) << 32)
}

/// Find the RSDP ("RSD PTR ", 16-byte aligned, checksummed) in `area`, which
/// was read from physical address `base` (the BIOS area 0xE0000..0x100000).
pub fn find_rsdp(area: &[u8], base: u64) -> Option<u64> {
    (0..area.len().saturating_sub(19))
        .step_by(16)
        .find(|&at| &area[at..at + 8] == b"RSD PTR " && checksum_ok(&area[at..at + 20]))
        .map(|at| base + at as u64)
}

/// Largest ACPI table read (IVRS, MCFG and root tables are far smaller).
pub const MAX_TABLE: usize = 4096;

/// Read the ACPI table at `pa` into `buf`, checking its length and checksum;
/// returns its length.
fn read_table(mem: &impl PhysRead, pa: u64, buf: &mut [u8; MAX_TABLE]) -> Result<usize, AcpiError> {
    if !mem.read(pa, &mut buf[..36]) {
        return Err(AcpiError::BadTable(pa));
    }
    let len = le_u32(buf, 4) as usize;
    if !(36..=MAX_TABLE).contains(&len) || !mem.read(pa, &mut buf[..len]) || !checksum_ok(&buf[..len]) {
        return Err(AcpiError::BadTable(pa));
    }
    Ok(len)
}

/// Find the ACPI table with signature `sig` through the RSDP at `rsdp` (the
/// XSDT for ACPI 2.0+, else the RSDT) and read it into `buf`, checking its
/// length and checksum; returns its length.
pub fn find_table(
    mem: &impl PhysRead,
    rsdp: u64,
    sig: &[u8; 4],
    buf: &mut [u8; MAX_TABLE],
) -> Result<usize, AcpiError> {
    let mut r = [0u8; 36];
    if !mem.read(rsdp, &mut r[..20]) || &r[..8] != b"RSD PTR " || !checksum_ok(&r[..20]) {
        return Err(AcpiError::NoRsdp);
    }
    // ACPI 2.0+: the XSDT (64-bit entries); else the RSDT (32-bit entries).
    let (root, entry_size) = if r[15] >= 2 && mem.read(rsdp, &mut r) && checksum_ok(&r) && le_u64(&r, 24) != 0
    {
        (le_u64(&r, 24), 8)
    } else {
        (u64::from(le_u32(&r, 16)), 4)
    };
    let mut root_table = [0u8; MAX_TABLE];
    let root_len = read_table(mem, root, &mut root_table)?;
    for at in (36..root_len).step_by(entry_size) {
        if at + entry_size > root_len {
            break;
        }
        let pa = if entry_size == 8 {
            le_u64(&root_table, at)
        } else {
            u64::from(le_u32(&root_table, at))
        };
        let mut found = [0u8; 4];
        if !mem.read(pa, &mut found) || &found != sig {
            continue;
        }
        return read_table(mem, pa, buf);
    }
    Err(AcpiError::NoTable(*sig))
}

/// Find the first IVHD of the IVRS table reachable from the RSDP at `rsdp`.
pub fn find_ivhd(mem: &impl PhysRead, rsdp: u64) -> Result<Ivhd, AcpiError> {
    let mut table = [0u8; MAX_TABLE];
    match find_table(mem, rsdp, b"IVRS", &mut table) {
        Ok(len) => parse_ivrs(&table[..len]),
        Err(AcpiError::NoTable(_)) => Err(AcpiError::NoIvrs),
        Err(e) => Err(e),
    }
}

/// Find the MCFG table reachable from the RSDP at `rsdp`: where PCI
/// configuration space is memory-mapped (ECAM).
pub fn find_mcfg(mem: &impl PhysRead, rsdp: u64) -> Result<Mcfg, AcpiError> {
    let mut table = [0u8; MAX_TABLE];
    let len = find_table(mem, rsdp, b"MCFG", &mut table)?;
    parse_mcfg(&table[..len])
}

/// The first IVHD block of an IVRS table (`ivrs`: the whole table).
pub fn parse_ivrs(ivrs: &[u8]) -> Result<Ivhd, AcpiError> {
    let mut at = 48;
    while at + 4 <= ivrs.len() {
        let kind = ivrs[at];
        let len = le_u16(ivrs, at + 2) as usize;
        if len < 4 || at + len > ivrs.len() {
            return Err(AcpiError::BadTable(0));
        }
        if matches!(kind, 0x10 | 0x11 | 0x40) && len >= 24 {
            return Ok(Ivhd {
                kind,
                devid: le_u16(ivrs, at + 4),
                capability_offset: le_u16(ivrs, at + 6),
                mmio_base: le_u64(ivrs, at + 8),
                segment: le_u16(ivrs, at + 16),
            });
        }
        at += len;
    }
    Err(AcpiError::NoIvhd)
}

/// One ECAM window of the MCFG table (PCI Firmware Specification 3.0
/// §4.1.2): configuration space of buses `start_bus..=end_bus` of `segment`
/// is memory-mapped from `base`, 4 KiB per function (bus << 20 | device << 15
/// | function << 12); `base` is where bus 0 would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EcamWindow {
    /// Address of bus 0's configuration space.
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded.
    pub end_bus: u8,
}

impl EcamWindow {
    /// The 4 KiB page holding the configuration space of `devid` (bus << 8
    /// | devfn), if this window decodes its bus.
    pub const fn config_page(&self, devid: u16) -> Option<u64> {
        let bus = (devid >> 8) as u8;
        if bus < self.start_bus || bus > self.end_bus {
            return None;
        }
        match (devid as u64).checked_mul(4096) {
            Some(off) => self.base.checked_add(off),
            None => None,
        }
    }
}

/// Most ECAM windows kept from an MCFG table.
pub const MAX_ECAM_WINDOWS: usize = 8;

/// The ECAM windows of an MCFG table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mcfg {
    windows: [EcamWindow; MAX_ECAM_WINDOWS],
    count: usize,
}

impl Mcfg {
    /// The windows, in table order.
    pub fn windows(&self) -> &[EcamWindow] {
        &self.windows[..self.count]
    }

    /// The ECAM page of function `devid` in `segment`, if a window decodes it.
    pub fn config_page(&self, segment: u16, devid: u16) -> Option<u64> {
        self.windows()
            .iter()
            .filter(|w| w.segment == segment)
            .find_map(|w| w.config_page(devid))
    }
}

/// The windows of an MCFG table (`mcfg`: the whole table): after the 36-byte
/// header and 8 reserved bytes, 16-byte entries of base (u64), segment
/// (u16), start bus, end bus and 4 reserved bytes.
pub fn parse_mcfg(mcfg: &[u8]) -> Result<Mcfg, AcpiError> {
    if mcfg.len() < 44 || !(mcfg.len() - 44).is_multiple_of(16) || mcfg.len() > 44 + 16 * MAX_ECAM_WINDOWS {
        return Err(AcpiError::BadTable(0));
    }
    let mut out = Mcfg::default();
    for at in (44..mcfg.len()).step_by(16) {
        let w = EcamWindow {
            base: le_u64(mcfg, at),
            segment: le_u16(mcfg, at + 8),
            start_bus: mcfg[at + 10],
            end_bus: mcfg[at + 11],
        };
        if w.start_bus > w.end_bus || w.base & 0xF_FFFF != 0 {
            return Err(AcpiError::BadTable(0));
        }
        out.windows[out.count] = w;
        out.count += 1;
    }
    Ok(out)
}

/// PCI configuration mechanism #1 (ports 0xCF8..=0xCFF) as the root uses
/// it, and which of its writes hv-core lets through.
///
/// The address latch (CONFIG_ADDRESS, a dword at 0xCF8) selects a function
/// and a dword of its configuration space; the data window (CONFIG_DATA,
/// 0xCFC..=0xCFF) reaches that dword with byte, word or dword accesses. Byte
/// and word accesses to 0xCF8..=0xCFB are other chipset registers (0xCF9 is
/// the reset control register). hv-core intercepts the eight ports for the
/// root, passes everything through except writes through the data window to
/// a register it guards ([`ConfigGuard`]), and decides with
/// [`root_may_write`].
pub mod pci {
    use core::ops::{Range, RangeInclusive};

    /// CONFIG_ADDRESS, the address latch.
    pub const CONFIG_ADDRESS: u16 = 0xCF8;
    /// CONFIG_DATA, the first port of the data window.
    pub const CONFIG_DATA: u16 = 0xCFC;
    /// The ports hv-core intercepts.
    pub const PORTS: RangeInclusive<u16> = 0xCF8..=0xCFF;
    /// Latch bit 31: configuration cycles enabled.
    pub const ADDRESS_ENABLE: u32 = 1 << 31;
    /// Byte offsets of a whole function's configuration space (ECAM size).
    pub const WHOLE_FUNCTION: Range<u16> = 0..0x1000;

    /// QEMU q35's host bridge (Intel 82G33/Q35 MCH) at 00:00.0: its
    /// vendor/device dword.
    pub const Q35_MCH_ID: u32 = 0x29C0_8086;
    /// The MCH's PCIEXBAR (offsets 0x60..0x68): where the ECAM window is
    /// decoded, and whether it is.
    pub const Q35_PCIEXBAR: Range<u16> = 0x60..0x68;

    /// The latch's function: requester ID (bus << 8 | device << 3 |
    /// function), if configuration cycles are enabled. Bits 30:24 are
    /// reserved (AMD's optional extended register number lives in 27:24)
    /// and do not select a function.
    pub const fn selected(latch: u32) -> Option<u16> {
        if latch & ADDRESS_ENABLE != 0 {
            Some((latch >> 8) as u16)
        } else {
            None
        }
    }

    /// The latch value selecting dword `offset` of function `devid`.
    pub const fn address(devid: u16, offset: u8) -> u32 {
        ADDRESS_ENABLE | ((devid as u32) << 8) | (offset as u32 & 0xFC)
    }

    /// A port access as the root made it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PortAccess {
        /// First port.
        pub port: u16,
        /// Bytes: 1, 2 or 4.
        pub size: u8,
        /// OUT (true) or IN.
        pub write: bool,
    }

    impl PortAccess {
        /// The ports it touches.
        pub const fn ports(&self) -> Range<u32> {
            self.port as u32..self.port as u32 + self.size as u32
        }

        /// Does it touch any of 0xCF8..=0xCFF?
        pub const fn touches_config_ports(&self) -> bool {
            let r = self.ports();
            r.start <= *PORTS.end() as u32 && (*PORTS.start() as u32) < r.end
        }

        /// Does it touch the data window 0xCFC..=0xCFF?
        pub const fn touches_data(&self) -> bool {
            let r = self.ports();
            r.start <= *PORTS.end() as u32 && (CONFIG_DATA as u32) < r.end
        }

        /// The byte offsets of the selected function's configuration space
        /// this access may reach through the data window with `latch`, or
        /// `None` if it does not reach the data window. Hardware puts the
        /// dword of latch bits 7:2 and the byte lanes of the data ports
        /// together (register + (port - 0xCFC)); QEMU's model ORs latch bits
        /// 1:0 into the port's low bits and writes `size` bytes from there.
        /// The range covers both.
        pub fn registers(&self, latch: u32) -> Option<Range<u16>> {
            if !self.touches_data() {
                return None;
            }
            let dword = (latch & 0xFC) as u16;
            let r = self.ports();
            let data = CONFIG_DATA as u32..*PORTS.end() as u32 + 1;
            let (lo, hi) = (r.start.max(data.start), r.end.min(data.end));
            let hw = (lo - data.start) as u16..(hi - data.start) as u16;
            let qemu_start = ((latch & 3) | (self.port as u32 & 3)) as u16;
            let qemu = qemu_start..qemu_start + self.size as u16;
            Some(dword + hw.start.min(qemu.start)..dword + hw.end.max(qemu.end))
        }
    }

    /// Registers of one function the root may not write.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ConfigGuard {
        /// The function (requester ID, bus << 8 | devfn).
        pub devid: u16,
        /// Byte offsets guarded ([`WHOLE_FUNCTION`]: all of it).
        pub registers: Range<u16>,
        /// What it is, for the log.
        pub what: &'static str,
    }

    impl ConfigGuard {
        /// Guards nothing.
        pub const NONE: Self = Self {
            devid: 0,
            registers: 0..0,
            what: "",
        };
    }

    /// A write hv-core refuses.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Refusal {
        /// The function the latch selects.
        pub devid: u16,
        /// The first byte offset of its configuration space the write
        /// would reach.
        pub offset: u16,
        /// The guard it hit.
        pub what: &'static str,
    }

    /// May the root make `access` with the address latch at `latch`, given
    /// `guards`? Reads always may; writes that do not reach the data window
    /// (the latch itself, other chipset registers at 0xCF8..=0xCFB) may;
    /// writes through the data window may unless the latch is enabled and
    /// selects a guarded function and the bytes reached overlap its guarded
    /// registers.
    pub fn root_may_write(access: PortAccess, latch: u32, guards: &[ConfigGuard]) -> Result<(), Refusal> {
        if !access.write {
            return Ok(());
        }
        let (Some(devid), Some(reached)) = (selected(latch), access.registers(latch)) else {
            return Ok(());
        };
        match guards
            .iter()
            .find(|g| g.devid == devid && g.registers.start < reached.end && reached.start < g.registers.end)
        {
            Some(g) => Err(Refusal {
                devid,
                offset: reached.start,
                what: g.what,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct MapMemory {
        tables: HashMap<u64, [u64; 512]>,
        next: u64,
    }

    impl TableMemory for MapMemory {
        fn alloc_table(&mut self) -> Option<u64> {
            self.next += 0x1000;
            let phys = 0x40_0000_0000 + self.next;
            self.tables.insert(phys, [0; 512]);
            Some(phys)
        }
        fn read_entry(&self, table: u64, index: usize) -> u64 {
            self.tables.get(&table).map_or(0, |t| t[index])
        }
        fn write_entry(&mut self, table: u64, index: usize, value: u64) {
            self.tables.get_mut(&table).expect("table exists")[index] = value;
        }
        fn free_table(&mut self, table: u64) {
            self.tables.remove(&table);
        }
    }

    const RW: u64 = pte::IR | pte::IW;

    #[test]
    fn device_table_entry_encoding() {
        let e = DeviceTableEntry::translated(0x1234_5000, 3, 1);
        // V, TV, mode 3 at 11:9, root at 51:12, IR (61), IW (62); domain 1.
        assert_eq!(e.0[0], 0x6000_0000_1234_5603);
        assert_eq!(e.0[1], 1);
        assert_eq!(e.0[2..], [0, 0]);
        assert_eq!(e.levels(), 3);
        assert_eq!(e.root(), 0x1234_5000);
        // QEMU 7.2 rejects DTEs with reserved bits set (AMDVI_DTE_*_RESERVED).
        assert_eq!(e.0[0] & 0x8030_0000_0000_00fc, 0);
        assert_eq!(e.0[1] & 0x100, 0);
        assert_eq!(e.0[2] & 0x08f0_0000_0000_0000, 0);
        assert_eq!(&e.to_bytes()[..8], &e.0[0].to_le_bytes());
    }

    #[test]
    fn page_table_entry_and_register_encoding() {
        assert_eq!(table_entry(0xABC_D000, 2, RW), 0x6000_0000_0ABC_D401);
        assert_eq!(table_entry(0xABC_D000, 1, 0), 0x0ABC_D201);
        assert_eq!(page_entry(0x20_0000, RW), 0x6000_0000_0020_0001);
        assert_eq!(entry_span(1), 4096);
        assert_eq!(entry_span(2), 2 << 20);
        assert_eq!(entry_span(3), 1 << 30);
        assert_eq!(mmio::device_table(0x7000_0000, 2), 0x7000_0001);
        assert_eq!(mmio::ring(0x7000_2000, 8), 0x0800_0000_7000_2000);
    }

    #[test]
    fn commands_and_events() {
        assert_eq!(
            command::completion_wait(0x1000_0008, 7),
            [0x1000_0000_1000_0009, 7]
        );
        assert_eq!(command::invalidate_all(), [0x8000_0000_0000_0000, 0]);
        assert_eq!(command::invalidate_devtab_entry(0x18), [0x2000_0000_0000_0018, 0]);
        assert_eq!(command::invalidate_domain(1)[0], 0x3000_0001_0000_0000);
        // QEMU's IO_PAGE_FAULT for devid 0x18, write (I bit 3 | perm 2).
        let raw = [(0x2u64 << 60) | (0xAu64 << 48) | 0x18, 0x1f00_0000];
        let e = Event::decode(raw);
        assert_eq!(e.code, event::IO_PAGE_FAULT);
        assert_eq!(e.devid, 0x18);
        assert_eq!(e.flags, 0xA);
        assert_eq!(e.address, 0x1f00_0000);
        assert_eq!(e.name(), "IO_PAGE_FAULT");
    }

    fn build(range: Range<u64>, holes: &[Range<u64>], gib: bool) -> IoPageTables<MapMemory> {
        let mut t = IoPageTables::new(MapMemory::default()).unwrap();
        t.identity_map_except(range, holes, gib).unwrap();
        t
    }

    #[test]
    fn identity_minus_hole_maps_exactly_the_rest() {
        let hole = 0x1E00_0000..0x1F00_0000; // 16 MiB, 2 MiB aligned
        let t = build(0..0x2000_0000, std::slice::from_ref(&hole), false);
        for page in (0..0x2100_0000u64).step_by(0x1000) {
            let got = t.translate(page + 0x123);
            if hole.contains(&page) {
                // Present but no permission: refused with an event.
                assert_eq!(got, Walk::Denied, "{page:#x}");
            } else if page < 0x2000_0000 {
                assert_eq!(got, Walk::Mapped(page + 0x123, RW), "{page:#x}");
            } else {
                assert_eq!(got, Walk::NotPresent, "{page:#x}");
            }
        }
    }

    #[test]
    fn unaligned_holes_and_several_ranges() {
        // Two RAM ranges as in an E820 map, a hole of 3 pages straddling a
        // 2 MiB boundary and a hole covering a whole 2 MiB slot.
        let holes = [0x1F_E000..0x20_1000, 0x60_0000..0x80_0000];
        let mut t = IoPageTables::new(MapMemory::default()).unwrap();
        t.identity_map_except(0..0x9_F000, &holes, true).unwrap();
        t.identity_map_except(0x10_0000..0x4000_0000 + 0x20_0000, &holes, true)
            .unwrap();
        let mapped = |a: u64| {
            (a < 0x9_F000 || (0x10_0000..0x4020_0000).contains(&a)) && !holes.iter().any(|h| h.contains(&a))
        };
        for page in (0..0x4040_0000u64).step_by(0x1000) {
            let got = t.translate(page);
            if mapped(page) {
                assert_eq!(got, Walk::Mapped(page, RW), "{page:#x}");
            } else if (0x60_0000..0x80_0000).contains(&page) {
                assert_eq!(got, Walk::Denied, "{page:#x}");
            } else {
                assert_eq!(got, Walk::NotPresent, "{page:#x}");
            }
        }
        // Overlapping a mapped range is refused.
        assert!(matches!(
            t.identity_map_except(0x10_0000..0x11_0000, &[], false),
            Err(BuildError::AlreadyMapped(_))
        ));
    }

    #[test]
    fn large_pages_are_used_where_they_fit() {
        let hole = 0x1E00_0000..0x1F00_0000;
        let t = build(0..(4 << 30), std::slice::from_ref(&hole), true);
        // 1 root + 1 deny table + 1 level-2 table for the first GiB only.
        assert_eq!(t.memory().tables.len(), 3);
        let t = build(0..(4 << 30), std::slice::from_ref(&hole), false);
        assert_eq!(t.memory().tables.len(), 2 + 4);
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut t = IoPageTables::new(MapMemory::default()).unwrap();
        assert_eq!(
            t.identity_map_except(0..0x1800, &[], false),
            Err(BuildError::Misaligned)
        );
        assert_eq!(
            t.identity_map_except(0..0x1000, std::slice::from_ref(&(0x800..0x1000)), false),
            Err(BuildError::Misaligned)
        );
        assert_eq!(
            t.identity_map_except(0..(513 << 30), &[], true),
            Err(BuildError::TooHigh)
        );
    }

    struct Phys(HashMap<u64, u8>);

    impl PhysRead for Phys {
        fn read(&self, pa: u64, out: &mut [u8]) -> bool {
            for (i, b) in out.iter_mut().enumerate() {
                match self.0.get(&(pa + i as u64)) {
                    Some(v) => *b = *v,
                    None => return false,
                }
            }
            true
        }
    }

    fn put(mem: &mut HashMap<u64, u8>, pa: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            mem.insert(pa + i as u64, *b);
        }
    }

    fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        let sum = bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        bytes[at] = 0u8.wrapping_sub(sum);
    }

    fn table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 36];
        t[..4].copy_from_slice(sig);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    /// An IVRS like QEMU's: IVinfo, reserved, an IVMD-like block to skip,
    /// then an IVHD type 0x10 for the IOMMU at 00:02.0, capability 0x40,
    /// MMIO at 0xfed80000.
    fn ivrs() -> Vec<u8> {
        let mut body = vec![0u8; 12];
        body.extend_from_slice(&[0x20, 0, 32, 0]);
        body.extend_from_slice(&[0; 28]);
        let mut ivhd = vec![0x10, 0xb0, 28, 0, 0x10, 0x00, 0x40, 0x00];
        ivhd.extend_from_slice(&0xfed8_0000u64.to_le_bytes());
        ivhd.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        ivhd.extend_from_slice(&[3, 0, 0, 0]); // a device entry (select all)
        body.extend_from_slice(&ivhd);
        table(b"IVRS", &body)
    }

    #[test]
    fn ivrs_is_found_through_rsdp_and_rsdt() {
        let mut mem = HashMap::new();
        put(&mut mem, 0x7FE_2000, &ivrs());
        put(&mut mem, 0x7FE_3000, &table(b"APIC", &[1, 2, 3]));
        let mut entries = Vec::new();
        entries.extend_from_slice(&0x7FE_3000u32.to_le_bytes());
        entries.extend_from_slice(&0x7FE_2000u32.to_le_bytes());
        put(&mut mem, 0x7FE_1000, &table(b"RSDT", &entries));
        let mut rsdp = [0u8; 20];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[16..20].copy_from_slice(&0x7FE_1000u32.to_le_bytes());
        fix_checksum(&mut rsdp, 8);
        let mut area = vec![0u8; 0x100];
        area[0x40..0x54].copy_from_slice(&rsdp);
        area[0x10..0x18].copy_from_slice(b"RSD PTR "); // bad checksum: skipped
        put(&mut mem, 0xF_5A40, &rsdp);
        assert_eq!(find_rsdp(&area, 0xF_5A00), Some(0xF_5A40));
        let ivhd = find_ivhd(&Phys(mem.clone()), 0xF_5A40).unwrap();
        assert_eq!(
            ivhd,
            Ivhd {
                kind: 0x10,
                devid: 0x10,
                capability_offset: 0x40,
                mmio_base: 0xfed8_0000,
                segment: 0,
            }
        );
        // A corrupted IVRS is refused.
        mem.insert(0x7FE_2000 + 50, 0xFF);
        assert!(matches!(
            find_ivhd(&Phys(mem), 0xF_5A40),
            Err(AcpiError::BadTable(_))
        ));
        // Truncated blocks are refused rather than read past the end.
        let mut short = ivrs();
        short[50] = 200;
        assert!(parse_ivrs(&short).is_err());
        assert_eq!(parse_ivrs(&table(b"IVRS", &[0; 12])), Err(AcpiError::NoIvhd));
    }

    /// An MCFG like QEMU q35's: one window at 0xb0000000 for segment 0,
    /// buses 0..=255.
    fn mcfg(windows: &[(u64, u16, u8, u8)]) -> Vec<u8> {
        let mut body = vec![0u8; 8];
        for &(base, segment, start, end) in windows {
            body.extend_from_slice(&base.to_le_bytes());
            body.extend_from_slice(&segment.to_le_bytes());
            body.extend_from_slice(&[start, end, 0, 0, 0, 0]);
        }
        table(b"MCFG", &body)
    }

    #[test]
    fn mcfg_is_found_through_the_xsdt_and_gives_each_function_its_page() {
        let mut mem = HashMap::new();
        put(&mut mem, 0x7FE_2000, &ivrs());
        put(&mut mem, 0x7FE_4000, &mcfg(&[(0xB000_0000, 0, 0, 0xFF)]));
        let mut entries = Vec::new();
        entries.extend_from_slice(&0x7FE_2000u64.to_le_bytes());
        entries.extend_from_slice(&0x7FE_4000u64.to_le_bytes());
        put(&mut mem, 0x7FE_1000, &table(b"XSDT", &entries));
        // ACPI 2.0 RSDP: revision 2, RSDT 0, XSDT at 24, extended checksum.
        let mut rsdp = [0u8; 36];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[15] = 2;
        rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
        rsdp[24..32].copy_from_slice(&0x7FE_1000u64.to_le_bytes());
        fix_checksum(&mut rsdp[..20], 8);
        fix_checksum(&mut rsdp, 32);
        put(&mut mem, 0xF_5A40, &rsdp);
        let phys = Phys(mem);
        let m = find_mcfg(&phys, 0xF_5A40).unwrap();
        assert_eq!(
            m.windows(),
            &[EcamWindow {
                base: 0xB000_0000,
                segment: 0,
                start_bus: 0,
                end_bus: 0xFF
            }]
        );
        // 00:02.0 (the IOMMU in the IVRS above), 00:00.0, 01:1f.7.
        assert_eq!(m.config_page(0, 0x10), Some(0xB001_0000));
        assert_eq!(m.config_page(0, 0), Some(0xB000_0000));
        assert_eq!(m.config_page(0, 0x01FF), Some(0xB01F_F000));
        assert_eq!(m.config_page(1, 0x10), None);
        // The IVRS is found the same way.
        assert_eq!(find_ivhd(&phys, 0xF_5A40).unwrap().devid, 0x10);
        // A table that is not there.
        let mut buf = [0u8; MAX_TABLE];
        assert_eq!(
            find_table(&phys, 0xF_5A40, b"DMAR", &mut buf),
            Err(AcpiError::NoTable(*b"DMAR"))
        );
    }

    #[test]
    fn mcfg_windows_decode_only_their_buses() {
        let m = parse_mcfg(&mcfg(&[(0xE000_0000, 0, 0x10, 0x1F), (0xF000_0000, 1, 0, 0)])).unwrap();
        assert_eq!(m.windows().len(), 2);
        // The base is where bus 0 would be, even when the window starts later.
        assert_eq!(m.config_page(0, 0x1000), Some(0xE100_0000));
        assert_eq!(m.config_page(0, 0x1F08), Some(0xE1F0_8000));
        assert_eq!(m.config_page(0, 0x0F08), None);
        assert_eq!(m.config_page(0, 0x2000), None);
        assert_eq!(m.config_page(1, 0x0008), Some(0xF000_8000));
        assert_eq!(m.config_page(1, 0x0100), None);
        // Truncated entries, reversed bus ranges and misaligned bases are refused.
        let mut short = mcfg(&[(0xB000_0000, 0, 0, 0xFF)]);
        short.truncate(50);
        assert!(parse_mcfg(&short).is_err());
        assert!(parse_mcfg(&mcfg(&[(0xB000_0000, 0, 5, 4)])).is_err());
        assert!(parse_mcfg(&mcfg(&[(0xB000_1000, 0, 0, 0)])).is_err());
        assert_eq!(parse_mcfg(&mcfg(&[])).unwrap().windows(), &[]);
    }

    mod config_ports {
        use super::super::pci::*;

        const IOMMU: u16 = 0x0010; // 00:02.0
        const MCH: u16 = 0x0000; // 00:00.0

        fn guards() -> [ConfigGuard; 2] {
            [
                ConfigGuard {
                    devid: IOMMU,
                    registers: WHOLE_FUNCTION,
                    what: "the IOMMU",
                },
                ConfigGuard {
                    devid: MCH,
                    registers: Q35_PCIEXBAR,
                    what: "PCIEXBAR",
                },
            ]
        }

        fn write(port: u16, size: u8) -> PortAccess {
            PortAccess {
                port,
                size,
                write: true,
            }
        }

        fn may(port: u16, size: u8, latch: u32) -> bool {
            root_may_write(write(port, size), latch, &guards()).is_ok()
        }

        #[test]
        fn writes_to_the_iommus_function_are_refused_at_every_width_and_offset() {
            for offset in (0..=0xFCu8).step_by(4) {
                let latch = address(IOMMU, offset);
                assert!(!may(0xCFC, 4, latch), "dword {offset:#x}");
                for lane in 0..4 {
                    assert!(!may(0xCFC + lane, 1, latch), "byte {offset:#x}+{lane}");
                }
                for lane in [0, 2] {
                    assert!(!may(0xCFC + lane, 2, latch), "word {offset:#x}+{lane}");
                }
                // Unaligned and straddling accesses that reach the window.
                assert!(!may(0xCFD, 2, latch));
                assert!(!may(0xCFF, 2, latch));
                assert!(!may(0xCFB, 2, latch));
                assert!(!may(0xCFA, 4, latch));
            }
            let refusal = root_may_write(write(0xCFE, 2), address(IOMMU, 0x04), &guards()).unwrap_err();
            assert_eq!(
                refusal,
                Refusal {
                    devid: IOMMU,
                    offset: 0x06,
                    what: "the IOMMU"
                }
            );
            // Reads always pass.
            let read = PortAccess {
                port: 0xCFC,
                size: 4,
                write: false,
            };
            assert!(root_may_write(read, address(IOMMU, 0x04), &guards()).is_ok());
        }

        #[test]
        fn the_latch_and_the_other_legacy_registers_pass() {
            let latch = address(IOMMU, 0x04);
            // The latch itself (moving it is harmless), 0xCF9 reset control,
            // byte and word accesses below the data window.
            assert!(may(0xCF8, 4, latch));
            assert!(may(0xCF9, 1, latch));
            assert!(may(0xCF8, 2, latch));
            assert!(may(0xCFA, 2, latch));
            assert!(may(0xCF8, 1, latch));
            assert!(may(0xCFB, 1, latch));
        }

        #[test]
        fn a_disabled_latch_other_functions_and_other_buses_pass() {
            // Enable bit clear: no configuration cycle happens.
            assert!(may(0xCFC, 4, address(IOMMU, 0x04) & !ADDRESS_ENABLE));
            // The other functions of device 2, other devices, other buses.
            for devid in [0x0011, 0x0017, 0x0008, 0x0018, 0x00F8, 0x0110, 0x0210, 0xFF10] {
                for offset in [0x00, 0x04, 0x3C, 0x44, 0xFC] {
                    assert!(may(0xCFC, 4, address(devid, offset)), "{devid:#x} {offset:#x}");
                    assert!(may(0xCFD, 1, address(devid, offset)), "{devid:#x} {offset:#x}");
                }
            }
            // Reserved latch bits 30:24 (AMD: extended register number) do
            // not change the function.
            assert!(!may(0xCFC, 4, address(IOMMU, 0x04) | 0x0F00_0000));
            assert!(may(0xCFC, 4, address(0x0110, 0x04) | 0x0F00_0000));
        }

        #[test]
        fn a_guard_on_some_registers_refuses_only_those() {
            // PCIEXBAR: dwords 0x60 and 0x64 of 00:00.0.
            assert!(!may(0xCFC, 4, address(MCH, 0x60)));
            assert!(!may(0xCFF, 1, address(MCH, 0x64)));
            assert!(!may(0xCFE, 2, address(MCH, 0x60)));
            assert!(may(0xCFC, 4, address(MCH, 0x5C)));
            assert!(may(0xCFC, 4, address(MCH, 0x68)));
            assert!(may(0xCFC, 4, address(MCH, 0x04)));
            // QEMU ORs latch bits 1:0 into the offset: a dword write with
            // the latch at 0x5C | 3 reaches 0x5F..0x63 there (0x5C..0x60 on
            // hardware); the range covers both.
            assert!(!may(0xCFC, 4, address(MCH, 0x5C) | 3));
            assert!(may(0xCFC, 1, address(MCH, 0x5C) | 3));
            assert_eq!(
                write(0xCFC, 4).registers(address(MCH, 0x5C) | 3),
                Some(0x5C..0x63)
            );
            assert_eq!(write(0xCFE, 2).registers(address(MCH, 0x60)), Some(0x62..0x64));
            assert_eq!(write(0xCF8, 4).registers(address(MCH, 0x60)), None);
        }
    }
}
