//! hv-core's memory: a page allocator over its own region (everything after
//! the loaded image), its own page tables, the record of which root pages are
//! lent to children, and checked access to guest memory.
//!
//! hv-core identity-maps all physical memory (so a physical address is a
//! pointer) and maps its image at its link address. Guest memory is only ever
//! touched through [`GuestMemory`], which checks every address first.

use boot_proto::handoff::Handoff;
use core::ops::Range;
use partitions::PageBitmap;
use phys_mem::{PAGE_SIZE, RangeSet};
use spin::Mutex;
use x86_paging::{MaxPage, PageTables, TableMemory, flags};

/// hv-core's region pages (VMCBs, page tables, bitmaps). Freed pages return.
static REGION: Mutex<Option<PageBitmap<'static>>> = Mutex::new(None);

/// Root RAM pages currently mapped into some child: a page is lent to at most
/// one partition at a time.
static LENT: Mutex<Option<PageBitmap<'static>>> = Mutex::new(None);

/// Root pages hv-core writes on the root's behalf (its hypercall page, every
/// VP's intercept-message page): never lent to a child.
/// Root pages hv-core writes on its own: every child VP's intercept-message
/// page (16 children x 4 VPs) and the root's hypercall, SIMP and SIEF pages.
static PINNED: Mutex<partitions::PinTable<128>> = Mutex::new(partitions::PinTable::new());

/// Carve a zeroed, `'static` slice of `words` u64s from `*next` (bootstrap,
/// before the region allocator exists).
fn bootstrap_words(next: &mut u64, words: usize) -> &'static mut [u64] {
    let at = *next;
    let bytes = (words * 8) as u64;
    *next = (at + bytes).next_multiple_of(PAGE_SIZE);
    // `at..at+bytes` lies in hv-core's region right after the image (the
    // caller checked the region is large enough).
    // SAFETY: that memory is handed out once and lives as long as hv-core.
    unsafe {
        core::ptr::write_bytes(at as *mut u64, 0, words);
        core::slice::from_raw_parts_mut(at as *mut u64, words)
    }
}

/// Set up the region allocator over `region` (the first `image` bytes are
/// the loaded image) and the lent-page record over RAM below `ram_top`.
pub fn init(region: Range<u64>, image: u64, ram_top: u64) {
    let mut next = region.start + image.next_multiple_of(PAGE_SIZE);
    let region_pages = (region.end - region.start) / PAGE_SIZE;
    let region_words = bootstrap_words(&mut next, PageBitmap::words_for(region_pages));
    let ram_pages = ram_top.div_ceil(PAGE_SIZE);
    let lent_words = bootstrap_words(&mut next, PageBitmap::words_for(ram_pages));
    let mut bitmap = PageBitmap::new(region.start, region_pages, region_words).expect("region bitmap fits");
    // The image and the two bitmaps are in use for good.
    let mut page = region.start;
    while page < next {
        bitmap.set(page).expect("fresh bitmap");
        page += PAGE_SIZE;
    }
    *REGION.lock() = Some(bitmap);
    *LENT.lock() = Some(PageBitmap::new(0, ram_pages, lent_words).expect("lent bitmap fits"));
    let heap = alloc_pages(HEAP_PAGES).expect("hv-core's region holds its heap");
    // SAFETY: the pages were just allocated from hv-core's region for the
    // heap alone and are never freed.
    unsafe {
        HEAP.lock()
            .init(heap as *mut u8, (HEAP_PAGES * PAGE_SIZE) as usize)
    };
}

/// Pages of hv-core's heap. Nothing a guest does allocates from it (every
/// per-guest structure is fixed-size or comes from [`alloc_pages`]); crates
/// it embeds (the instruction decoder) link `alloc` and get this small heap.
const HEAP_PAGES: u64 = 64;

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

/// `count` contiguous zeroed pages of hv-core's region.
pub fn alloc_pages(count: u64) -> Option<u64> {
    let phys = REGION.lock().as_mut()?.alloc(count).ok()?;
    // SAFETY: the pages were just allocated from hv-core's own region.
    unsafe { core::ptr::write_bytes(phys as *mut u8, 0, (count * PAGE_SIZE) as usize) };
    Some(phys)
}

/// Give back pages from [`alloc_pages`].
pub fn free_pages(phys: u64, count: u64) {
    let result = REGION.lock().as_mut().map(|b| b.free(phys, count));
    if !matches!(result, Some(Ok(()))) {
        panic!("hv-core freed pages it does not own: {phys:#x} x{count}: {result:?}");
    }
}

/// Bytes of the region in use (image included).
pub fn region_used() -> u64 {
    REGION.lock().as_ref().map_or(0, |b| b.set_pages() * PAGE_SIZE)
}

/// Record that root page `spa` is now lent to a child; false if it already
/// is, is pinned, or is outside RAM.
pub fn lend(spa: u64) -> bool {
    if is_pinned(spa) {
        return false;
    }
    LENT.lock().as_mut().is_some_and(|b| b.set(spa).is_ok())
}

/// Is root page `spa` lent to a child?
pub fn is_lent(spa: u64) -> bool {
    LENT.lock()
        .as_ref()
        .and_then(|b| b.is_set(spa & !0xFFF))
        .unwrap_or(false)
}

/// Keep root page `spa` out of every child, one more user (false if it is
/// lent right now, or the pin table is full).
pub fn pin(spa: u64) -> bool {
    let page = spa & !0xFFF;
    if is_lent(page) {
        return false;
    }
    PINNED.lock().pin(page).is_ok()
}

/// Release one pin from [`pin`]; the page may be lent again when its last
/// user has let go.
pub fn unpin(spa: u64) {
    if PINNED.lock().unpin(spa).is_err() {
        panic!("hv-core unpinned {spa:#x}, which it had not pinned");
    }
}

/// Distinct root pages pinned now.
pub fn pinned_pages() -> u64 {
    PINNED.lock().pages() as u64
}

fn is_pinned(spa: u64) -> bool {
    PINNED.lock().count(spa) > 0
}

/// Record that `spa` is back with the root.
pub fn unlend(spa: u64) {
    if let Some(b) = LENT.lock().as_mut() {
        let _ = b.clear(spa);
    }
}

/// Root pages currently lent to children.
pub fn lent_pages() -> u64 {
    LENT.lock().as_ref().map_or(0, |b| b.set_pages())
}

/// Page-table memory from hv-core's region (host tables and every NPT).
pub struct RegionTables;

impl TableMemory for RegionTables {
    fn alloc_table(&mut self) -> Option<u64> {
        alloc_pages(1)
    }
    fn read_entry(&self, table: u64, index: usize) -> u64 {
        assert!(index < 512);
        // SAFETY: `table` is a table page from hv-core's region, identity-mapped.
        unsafe { ((table + 8 * index as u64) as *const u64).read_volatile() }
    }
    fn write_entry(&mut self, table: u64, index: usize, value: u64) {
        assert!(index < 512);
        // SAFETY: as for `read_entry`; only the single hv-core CPU edits tables.
        unsafe { ((table + 8 * index as u64) as *mut u64).write_volatile(value) };
    }
    fn free_table(&mut self, table: u64) {
        free_pages(table, 1);
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

/// End of RAM in the memory map.
pub fn ram_top(handoff: &Handoff) -> u64 {
    handoff
        .ranges()
        .iter()
        .filter(|r| r.kind == boot_proto::pvh::MEMMAP_TYPE_RAM)
        .map(|r| r.base.saturating_add(r.size))
        .max()
        .unwrap_or(0)
}

/// Build hv-core's own address space: identity map of physical memory plus the
/// image at its link address. Returns the PML4.
pub fn build_host_tables(handoff: &Handoff, gib_pages: bool) -> u64 {
    let max = if gib_pages {
        MaxPage::Size1G
    } else {
        MaxPage::Size2M
    };
    let top = physical_top(handoff);
    let mut tables = PageTables::new(RegionTables).expect("region has room for a PML4");
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

/// Most holes in the root's NPT: hv-core's region, the IOMMU's registers and
/// the ECAM pages of the PCI functions whose configuration hv-core guards.
pub const MAX_ROOT_NPT_HOLES: usize = 4;

/// The root's nested page tables: identity over `[0, 512 GiB)` — all RAM and
/// every MMIO window the root may use (passthrough) — except `holes`
/// (4 KiB aligned; empty ranges are ignored): hv-core's region, the IOMMU's
/// registers and the ECAM pages of guarded PCI functions, which the root
/// gets `#GP` for.
pub fn build_root_npt(holes: &[Range<u64>], gib_pages: bool) -> u64 {
    let max = if gib_pages {
        MaxPage::Size1G
    } else {
        MaxPage::Size2M
    };
    let mut npt = PageTables::new(RegionTables).expect("region has room for the NPT root");
    npt.identity_map_except(0..ROOT_GPA_LIMIT, holes, flags::NPT_RWX, max)
        .expect("the root's NPT fits the region");
    npt.root()
}

/// The root's guest-physical address space ends here.
pub const ROOT_GPA_LIMIT: u64 = 512 << 30;

/// A guest-supplied address that may not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpaError {
    /// Not aligned as required.
    Misaligned,
    /// Not (entirely) the partition's RAM, or crosses a page.
    OutOfRange,
}

/// A partition's guest-physical memory as hv-core may touch it.
pub trait GuestMemory {
    /// The system-physical address of `[gpa, gpa+len)` (within one page), if
    /// all of it is the partition's RAM that hv-core may read (`write` =
    /// false) or write (`write` = true) on its behalf.
    fn translate(&self, gpa: u64, len: u64, write: bool) -> Option<u64>;

    /// Check `[gpa, gpa+len)`: aligned to `align`, within one page, RAM that
    /// may be read (or written, with `write`).
    fn check_access(&self, gpa: u64, len: u64, align: u64, write: bool) -> Result<u64, GpaError> {
        if !gpa.is_multiple_of(align) {
            return Err(GpaError::Misaligned);
        }
        let end = gpa.checked_add(len).ok_or(GpaError::OutOfRange)?;
        if len == 0 || (gpa & !0xFFF) != ((end - 1) & !0xFFF) {
            return Err(GpaError::OutOfRange);
        }
        self.translate(gpa, len, write).ok_or(GpaError::OutOfRange)
    }

    /// [`Self::check_access`] for a write.
    fn check(&self, gpa: u64, len: u64, align: u64) -> Result<u64, GpaError> {
        self.check_access(gpa, len, align, true)
    }

    /// Copy `bytes` to guest memory at `gpa` (one page at most).
    fn write(&self, gpa: u64, bytes: &[u8], align: u64) -> Result<(), GpaError> {
        let at = self.check_access(gpa, bytes.len() as u64, align, true)?;
        // SAFETY: `check` proved the range is the partition's RAM (never
        // hv-core's region) within one page; the identity map covers it.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, bytes.len()) };
        Ok(())
    }

    /// Copy guest memory at `gpa` (one page at most) into `out`.
    fn read(&self, gpa: u64, out: &mut [u8], align: u64) -> Result<(), GpaError> {
        let at = self.check_access(gpa, out.len() as u64, align, false)?;
        // SAFETY: as for `write`.
        unsafe { core::ptr::copy_nonoverlapping(at as *const u8, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Read 8 aligned bytes (page walks).
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b, 8).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// Read one byte.
    fn read_u8(&self, gpa: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        self.read(gpa, &mut b, 1).ok()?;
        Some(b[0])
    }
}

/// The root's RAM: the memory map's RAM ranges (whole pages only) minus
/// hv-core's region (GPA == system-physical for the root). hv-core never
/// touches a page the root lent to a child on the root's behalf.
pub struct RootRam {
    ram: RangeSet<{ boot_proto::handoff::MAX_RANGES + 4 }>,
}

impl RootRam {
    /// From the firmware map.
    pub fn new(handoff: &Handoff, hv_region: Range<u64>) -> Self {
        let mut ram = RangeSet::new();
        for r in handoff.ranges() {
            let whole = phys_mem::page_align_inward(r.base..r.base.saturating_add(r.size));
            if r.kind == boot_proto::pvh::MEMMAP_TYPE_RAM && whole.start < whole.end {
                let _ = ram.union(whole);
            }
        }
        let _ = ram.remove(hv_region);
        Self { ram }
    }
}

impl RootRam {
    /// Is `[gpa, gpa+len)` entirely root RAM (lent or not)?
    pub fn is_ram(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len)
            .is_some_and(|end| self.ram.contains(gpa..end))
    }
}

impl GuestMemory for RootRam {
    fn translate(&self, gpa: u64, len: u64, _write: bool) -> Option<u64> {
        (self.is_ram(gpa, len) && !is_lent(gpa)).then_some(gpa)
    }
}

/// A child's memory: whatever its NPT maps (only root RAM lent to it).
pub struct ChildRam {
    /// The child's NPT root.
    pub npt_root: u64,
}

impl GuestMemory for ChildRam {
    fn translate(&self, gpa: u64, _len: u64, write: bool) -> Option<u64> {
        let t = x86_paging::walk(
            |phys| Some(RegionTables.read_entry(phys & !0xFFF, ((phys & 0xFFF) / 8) as usize)),
            self.npt_root,
            gpa,
        )
        .ok()?;
        // hv-core writes for a child only where the child itself may write.
        (!write || t.flags & flags::WRITABLE != 0).then_some(t.phys)
    }
}
