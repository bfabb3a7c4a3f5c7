//! hv-core's memory: a bump allocator over its own region (everything after
//! the loaded image), its own page tables, and access to guest-physical memory.
//!
//! hv-core identity-maps all physical memory (so a physical address is a
//! pointer) and maps its image at its link address. Guest memory is only ever
//! touched through [`GuestRam`], which checks every address first.

use boot_proto::handoff::Handoff;
use core::ops::Range;
use phys_mem::{PAGE_SIZE, RangeSet};
use x86_paging::{MaxPage, PageTables, TableMemory, flags};

/// Bump allocator over hv-core's region. Nothing is ever freed yet: the root's
/// structures live as long as the machine.
pub struct RegionAllocator {
    next: u64,
    end: u64,
    base: u64,
}

impl RegionAllocator {
    /// Allocate from `region` after the first `used` bytes.
    pub fn new(region: Range<u64>, used: u64) -> Self {
        Self {
            next: region.start + used.next_multiple_of(PAGE_SIZE),
            end: region.end,
            base: region.start,
        }
    }

    /// `count` zeroed pages.
    pub fn alloc_pages(&mut self, count: u64) -> Option<u64> {
        let phys = self.next;
        let end = phys.checked_add(count * PAGE_SIZE)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        // SAFETY: the pages are inside hv-core's own region, identity-mapped,
        // and handed out once.
        unsafe { core::ptr::write_bytes(phys as *mut u8, 0, (count * PAGE_SIZE) as usize) };
        Some(phys)
    }

    /// Bytes of the region in use (image included).
    pub fn used(&self) -> u64 {
        self.next - self.base
    }
}

/// Page-table memory from the region allocator.
pub struct HvTableMemory<'a>(pub &'a mut RegionAllocator);

impl TableMemory for HvTableMemory<'_> {
    fn alloc_table(&mut self) -> Option<u64> {
        self.0.alloc_pages(1)
    }
    fn read_entry(&self, table: u64, index: usize) -> u64 {
        assert!(index < 512);
        // SAFETY: `table` is a table frame from hv-core's region, identity-mapped.
        unsafe { ((table + 8 * index as u64) as *const u64).read_volatile() }
    }
    fn write_entry(&mut self, table: u64, index: usize, value: u64) {
        assert!(index < 512);
        // SAFETY: as for `read_entry`; only the single hv-core CPU builds tables.
        unsafe { ((table + 8 * index as u64) as *mut u64).write_volatile(value) };
    }
}

/// Highest physical address to identity-map: the memory map's end, at least 4 GiB.
pub fn physical_top(handoff: &Handoff) -> u64 {
    handoff
        .ranges()
        .iter()
        .map(|r| r.base.saturating_add(r.size))
        .max()
        .unwrap_or(0)
        .max(4 << 30)
        .next_multiple_of(x86_paging::SIZE_1G)
}

/// Build hv-core's own address space: identity map of physical memory plus the
/// image at its link address. Returns the PML4.
pub fn build_host_tables(alloc: &mut RegionAllocator, handoff: &Handoff, gib_pages: bool) -> u64 {
    let max = if gib_pages {
        MaxPage::Size1G
    } else {
        MaxPage::Size2M
    };
    let top = physical_top(handoff);
    let mut tables = PageTables::new(HvTableMemory(alloc)).expect("region has room for a PML4");
    tables
        .identity_map_except(0..top, &[], flags::KERNEL_RW, max)
        .expect("identity map fits the region");
    tables
        .map(
            handoff.image_va,
            handoff.region_base,
            handoff.image_size,
            flags::KERNEL_RW,
            MaxPage::Size4K,
        )
        .expect("image mapping fits the region");
    tables.root()
}

/// The root's nested page tables: identity over `[0, 512 GiB)` — all RAM and
/// every MMIO window the root may use (passthrough) — except hv-core's region.
pub fn build_root_npt(alloc: &mut RegionAllocator, region: Range<u64>, gib_pages: bool) -> u64 {
    let max = if gib_pages {
        MaxPage::Size1G
    } else {
        MaxPage::Size2M
    };
    let mut npt = PageTables::new(HvTableMemory(alloc)).expect("region has room for the NPT root");
    npt.identity_map_except(0..ROOT_GPA_LIMIT, &[region], flags::NPT_RWX, max)
        .expect("the root's NPT fits the region");
    npt.root()
}

/// The root's guest-physical address space ends here.
pub const ROOT_GPA_LIMIT: u64 = 512 << 30;

/// Guest RAM hv-core may read and write on a partition's behalf (hypercall
/// parameters, the hypercall page): RAM ranges of the memory map, minus
/// hv-core's region. Everything a guest names is checked against it.
pub struct GuestRam {
    ram: RangeSet<{ boot_proto::handoff::MAX_RANGES + 4 }>,
}

/// A guest-supplied address that may not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpaError {
    /// Not aligned as required.
    Misaligned,
    /// Not (entirely) guest RAM, or crosses a page where that is not allowed.
    OutOfRange,
}

impl GuestRam {
    /// The root's RAM from the firmware map, minus `hv_region`.
    pub fn for_root(handoff: &Handoff, hv_region: Range<u64>) -> Self {
        let mut ram = RangeSet::new();
        for r in handoff.ranges() {
            if r.kind == boot_proto::pvh::MEMMAP_TYPE_RAM && r.size != 0 {
                let _ = ram.union(r.base..r.base.saturating_add(r.size));
            }
        }
        let _ = ram.remove(hv_region);
        Self { ram }
    }

    /// Check `[gpa, gpa+len)`: aligned to `align`, RAM, and within one page.
    pub fn check(&self, gpa: u64, len: u64, align: u64) -> Result<u64, GpaError> {
        if !gpa.is_multiple_of(align) {
            return Err(GpaError::Misaligned);
        }
        let end = gpa.checked_add(len).ok_or(GpaError::OutOfRange)?;
        if len == 0 || (gpa & !0xFFF) != ((end - 1) & !0xFFF) || !self.ram.contains(gpa..end) {
            return Err(GpaError::OutOfRange);
        }
        Ok(gpa)
    }

    /// Copy `bytes` to guest memory at `gpa` (root: GPA == host physical).
    pub fn write(&self, gpa: u64, bytes: &[u8], align: u64) -> Result<(), GpaError> {
        let at = self.check(gpa, bytes.len() as u64, align)?;
        // SAFETY: `check` proved the range is guest RAM outside hv-core's region
        // within one page; hv-core's identity map covers it.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, bytes.len()) };
        Ok(())
    }

    /// Read 8 bytes of guest memory at `gpa` (for page walks), if it is RAM.
    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        let at = self.check(gpa, 8, 8).ok()?;
        // SAFETY: as for `write`.
        Some(unsafe { (at as *const u64).read_volatile() })
    }

    /// Read one byte of guest memory.
    pub fn read_u8(&self, gpa: u64) -> Option<u8> {
        let at = self.check(gpa, 1, 1).ok()?;
        // SAFETY: as for `write`.
        Some(unsafe { (at as *const u8).read_volatile() })
    }
}
