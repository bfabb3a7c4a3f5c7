//! The root's physical memory: the frame allocator over its memory map (after
//! hv-core's region and the boot data are carved out), its own page tables,
//! and the kernel heap.
//!
//! The root identity-maps physical memory (VA == PA), so a physical address
//! is also a pointer; that is what lets DMA buffers and hypercall pages be
//! handed to devices and hv-core without translation.

use linked_list_allocator::LockedHeap;
use phys_mem::{PAGE_SIZE, RangeSet};
use spin::Mutex;
use x86_paging::{MaxPage, PageTables, TableMemory, flags};

/// Capacity of the free-range set.
pub const MAX_FREE_RANGES: usize = 128;

/// Free physical memory (page-granular).
pub static FREE: Mutex<RangeSet<MAX_FREE_RANGES>> = Mutex::new(RangeSet::new());

/// The root's page tables, kept for later mappings (hv-core's image).
static TABLES: Mutex<Option<PageTables<RootTableMemory>>> = Mutex::new(None);

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Heap size. What children can make the root allocate is bounded per child
/// (docs/vmbus.md "Quotas"): at most about 0.45 MiB each (GPADL page lists
/// 256 KiB, a ring's frame list 64 KiB, the VMBus outbox 31 KiB, the SynIC
/// outbox 16 KiB, an open event's GPADL copy 64 KiB), so 16 children take at
/// most ~7 MiB and the root keeps the rest of 32 MiB for itself.
pub const HEAP_SIZE: u64 = 32 << 20;

/// Allocate `count` zeroed, page-aligned frames.
pub fn alloc_frames(count: u64) -> Option<u64> {
    let phys = FREE.lock().alloc(count * PAGE_SIZE, PAGE_SIZE)?;
    zero(phys, count * PAGE_SIZE);
    Some(phys)
}

/// Return frames obtained from [`alloc_frames`].
pub fn free_frames(phys: u64, count: u64) {
    // Freeing can only fail if the range set is full; then the frames leak,
    // which is safe.
    let _ = FREE.lock().insert(phys..phys + count * PAGE_SIZE);
}

fn zero(phys: u64, len: u64) {
    // SAFETY: `phys..phys+len` was just taken from the free set, so nothing
    // else refers to it, and the identity map covers all RAM.
    unsafe { core::ptr::write_bytes(phys as *mut u8, 0, len as usize) };
}

/// A mutable view of physical memory the caller exclusively owns.
///
/// # Safety
/// `phys..phys+len` must be identity-mapped RAM that nothing else uses for the
/// lifetime of the slice.
pub unsafe fn phys_slice_mut<'a>(phys: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { core::slice::from_raw_parts_mut(phys as *mut u8, len) }
}

/// A view of physical memory.
///
/// # Safety
/// `phys..phys+len` must be identity-mapped memory that is not written while
/// the slice lives.
pub unsafe fn phys_slice<'a>(phys: u64, len: usize) -> &'a [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { core::slice::from_raw_parts(phys as *const u8, len) }
}

/// Page-table memory taken from the frame allocator.
pub struct RootTableMemory;

impl TableMemory for RootTableMemory {
    fn alloc_table(&mut self) -> Option<u64> {
        alloc_frames(1)
    }
    fn read_entry(&self, table: u64, index: usize) -> u64 {
        assert!(index < 512);
        // SAFETY: `table` is a page-table frame this allocator handed out (or the
        // live PML4); it is identity-mapped and 8-byte aligned.
        unsafe { ((table + index as u64 * 8) as *const u64).read_volatile() }
    }
    fn write_entry(&mut self, table: u64, index: usize, value: u64) {
        assert!(index < 512);
        // SAFETY: as for `read_entry`; the tables are only changed under `TABLES`.
        unsafe { ((table + index as u64 * 8) as *mut u64).write_volatile(value) };
    }
    fn free_table(&mut self, table: u64) {
        free_frames(table, 1);
    }
}

/// Build the root's own identity page tables for `[0, top)` and switch to them.
pub fn init_paging(top: u64) {
    let gib_pages = kernel_x86::arch::cpuid(0x8000_0001, 0).edx & (1 << 26) != 0;
    let max = if gib_pages {
        MaxPage::Size1G
    } else {
        MaxPage::Size2M
    };
    // With 1 GiB pages, cover 512 GiB (what the root's NPT maps): 64-bit PCI
    // BARs may sit above RAM. Without, only what RAM and the 4 GiB hole need.
    let top = if gib_pages {
        top.max(512 << 30)
    } else {
        top.next_multiple_of(x86_paging::SIZE_2M)
    };
    let mut tables = PageTables::new(RootTableMemory).expect("frames for the PML4");
    let guard = crate::boot::stack_guard_page();
    let guard = guard..guard + PAGE_SIZE;
    tables
        .identity_map_except(0..top, core::slice::from_ref(&guard), flags::KERNEL_RW, max)
        .expect("identity map of physical memory");
    // The kernel image, its stack, the heap and every device window are below `top`.
    // SAFETY: the new tables identity-map all of it, as the boot tables did.
    unsafe { kernel_x86::arch::write_cr3(tables.root()) };
    *TABLES.lock() = Some(tables);
}

/// Map `len` bytes at virtual `va` to physical `pa` (kernel read-write).
pub fn map(va: u64, pa: u64, len: u64) -> Result<(), x86_paging::MapError> {
    let mut guard = TABLES.lock();
    let tables = guard.as_mut().expect("paging initialised");
    tables.map(va, pa, len, flags::KERNEL_RW, MaxPage::Size4K)?;
    // Reload CR3 to drop any stale translation.
    // SAFETY: reloading the same CR3 value only flushes the TLB.
    unsafe { kernel_x86::arch::write_cr3(kernel_x86::arch::read_cr3()) };
    Ok(())
}

/// Hand `HEAP_SIZE` bytes of frames to the global allocator.
pub fn init_heap() {
    let phys = alloc_frames(HEAP_SIZE / PAGE_SIZE).expect("memory for the heap");
    // SAFETY: the frames were just taken from the free set, are identity
    // mapped and are never handed out again.
    unsafe { HEAP.lock().init(phys as *mut u8, HEAP_SIZE as usize) };
}

/// Free bytes in the frame allocator.
pub fn free_bytes() -> u64 {
    FREE.lock().total()
}

/// Heap usage (used, total).
pub fn heap_usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.used(), heap.size())
}
