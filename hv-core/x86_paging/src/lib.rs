//! x86-64 4-level page tables, as used for the root's and hv-core's own address
//! spaces and for AMD nested page tables (which share the format; APM vol. 2
//! §15.25). The builder picks the largest page size that fits (1 GiB, 2 MiB,
//! 4 KiB) and can leave holes, which is how hv-core's region is kept out of the
//! root's NPT. The walker translates through any such table, including a
//! guest's own, reading entries through a fallible accessor so a hostile table
//! cannot make it read outside guest memory.
//!
//! The crate touches no memory itself: tables are reached through
//! [`TableMemory`], implemented over real physical memory in the kernels and
//! over a `HashMap` in the tests.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::ops::Range;

/// Page-table entry flags: the architectural bits, from `x86_64`'s
/// `PageTableFlags` (one definition of the x86 entry format for the whole
/// project), as plain `u64` masks because entries here are raw words in guest
/// or hv-core memory.
pub mod flags {
    use x86_64::structures::paging::PageTableFlags as F;

    /// Present.
    pub const PRESENT: u64 = F::PRESENT.bits();
    /// Writable.
    pub const WRITABLE: u64 = F::WRITABLE.bits();
    /// User accessible. Every NPT level needs it: nested walks are user accesses.
    pub const USER: u64 = F::USER_ACCESSIBLE.bits();
    /// Write-through.
    pub const PWT: u64 = F::WRITE_THROUGH.bits();
    /// Cache disable.
    pub const PCD: u64 = F::NO_CACHE.bits();
    /// Accessed.
    pub const ACCESSED: u64 = F::ACCESSED.bits();
    /// Dirty.
    pub const DIRTY: u64 = F::DIRTY.bits();
    /// Page size (leaf at PDPT or PD level).
    pub const HUGE: u64 = F::HUGE_PAGE.bits();
    /// Global.
    pub const GLOBAL: u64 = F::GLOBAL.bits();
    /// No execute (needs EFER.NXE).
    pub const NO_EXECUTE: u64 = F::NO_EXECUTE.bits();
    /// Physical address bits 51:12 of an entry.
    pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
    /// Flags for a nested-page-table leaf mapping RAM/MMIO read-write-execute.
    pub const NPT_RWX: u64 = PRESENT | WRITABLE | USER;
    /// Flags for a supervisor read-write leaf in a host page table.
    pub const KERNEL_RW: u64 = PRESENT | WRITABLE;

    const _: () = assert!(PRESENT == 1 && USER == 4 && HUGE == 1 << 7 && NO_EXECUTE == 1 << 63);
}

/// 4 KiB.
pub const SIZE_4K: u64 = 1 << 12;
/// 2 MiB.
pub const SIZE_2M: u64 = 1 << 21;
/// 1 GiB.
pub const SIZE_1G: u64 = 1 << 30;

/// Intermediate entries always allow everything; leaves decide.
const TABLE_FLAGS: u64 = flags::PRESENT | flags::WRITABLE | flags::USER;

/// Access to the memory holding page tables.
pub trait TableMemory {
    /// Allocate a zeroed, 4 KiB-aligned table and return its physical address.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Read entry `index` (0..512) of the table at `table`.
    fn read_entry(&self, table: u64, index: usize) -> u64;
    /// Write entry `index` of the table at `table`.
    fn write_entry(&mut self, table: u64, index: usize, value: u64);
    /// Give back a table obtained from [`TableMemory::alloc_table`].
    fn free_table(&mut self, table: u64);
}

/// Which leaf sizes the builder may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxPage {
    /// 4 KiB only.
    Size4K,
    /// Up to 2 MiB.
    Size2M,
    /// Up to 1 GiB (needs CPUID pdpe1gb).
    Size1G,
}

/// Why a mapping could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// Table memory ran out.
    OutOfTables,
    /// Part of the range is already mapped.
    AlreadyMapped(u64),
    /// Addresses or length not 4 KiB aligned.
    Misaligned,
    /// The VA range overflows.
    Overflow,
}

/// Why an unmap failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmapError {
    /// Nothing is mapped at this address.
    NotMapped(u64),
    /// The address is inside a 2 MiB or 1 GiB leaf.
    LargePage(u64),
}

/// A completed translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The translated physical address (including the page offset).
    pub phys: u64,
    /// Leaf entry flags (address bits cleared).
    pub flags: u64,
    /// Size of the leaf page.
    pub page_size: u64,
}

/// Why a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// A level's entry is not present (`level` 4 = PML4 … 1 = PT).
    NotPresent {
        /// Level where the walk stopped.
        level: u8,
    },
    /// A table's physical address could not be read (outside allowed memory).
    Unreadable {
        /// Physical address of the entry that could not be read.
        entry_phys: u64,
    },
    /// A huge-page bit where the architecture forbids it (PML4).
    Reserved {
        /// Level where the walk stopped.
        level: u8,
    },
}

fn index(va: u64, level: u8) -> usize {
    ((va >> (12 + 9 * (level as u32 - 1))) & 0x1FF) as usize
}

/// Walk a 4-level table rooted at `cr3` for `va`. `read_phys_u64` returns the
/// 8 bytes at a physical address, or `None` if that address may not be read.
pub fn walk(read_phys_u64: impl Fn(u64) -> Option<u64>, cr3: u64, va: u64) -> Result<Translation, WalkError> {
    let mut table = cr3 & flags::ADDR_MASK;
    let mut combined = flags::WRITABLE | flags::USER;
    let mut nx = 0;
    for level in (1..=4u8).rev() {
        let entry_phys = table + 8 * index(va, level) as u64;
        let entry = read_phys_u64(entry_phys).ok_or(WalkError::Unreadable { entry_phys })?;
        if entry & flags::PRESENT == 0 {
            return Err(WalkError::NotPresent { level });
        }
        combined &= entry | !(flags::WRITABLE | flags::USER);
        nx |= entry & flags::NO_EXECUTE;
        let leaf_size = match level {
            3 if entry & flags::HUGE != 0 => Some(SIZE_1G),
            2 if entry & flags::HUGE != 0 => Some(SIZE_2M),
            1 => Some(SIZE_4K),
            4 if entry & flags::HUGE != 0 => return Err(WalkError::Reserved { level }),
            _ => None,
        };
        if let Some(size) = leaf_size {
            let base = entry & flags::ADDR_MASK & !(size - 1);
            let leaf_flags = (entry & !flags::ADDR_MASK & !(flags::WRITABLE | flags::USER)) | combined | nx;
            return Ok(Translation {
                phys: base + (va & (size - 1)),
                flags: leaf_flags,
                page_size: size,
            });
        }
        table = entry & flags::ADDR_MASK;
    }
    unreachable!("level 1 always returns")
}

/// A page-table hierarchy under construction.
pub struct PageTables<M: TableMemory> {
    root: u64,
    mem: M,
}

impl<M: TableMemory> PageTables<M> {
    /// Allocate an empty PML4.
    pub fn new(mut mem: M) -> Result<Self, MapError> {
        let root = mem.alloc_table().ok_or(MapError::OutOfTables)?;
        Ok(Self { root, mem })
    }

    /// Physical address of the PML4 (for CR3 or N_CR3).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The table memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Give back the table memory.
    pub fn into_memory(self) -> M {
        self.mem
    }

    /// Translate `va` through these tables.
    pub fn translate(&self, va: u64) -> Result<Translation, WalkError> {
        walk(
            |phys| Some(self.mem.read_entry(phys & !0xFFF, ((phys & 0xFFF) / 8) as usize)),
            self.root,
            va,
        )
    }

    /// Map `len` bytes at `va` to `pa` with `leaf_flags`, using pages up to `max`.
    pub fn map(&mut self, va: u64, pa: u64, len: u64, leaf_flags: u64, max: MaxPage) -> Result<(), MapError> {
        if (va | pa | len) & (SIZE_4K - 1) != 0 {
            return Err(MapError::Misaligned);
        }
        va.checked_add(len).ok_or(MapError::Overflow)?;
        pa.checked_add(len).ok_or(MapError::Overflow)?;
        let mut done = 0;
        while done < len {
            let (v, p, left) = (va + done, pa + done, len - done);
            let fits = |size: u64| (v | p) & (size - 1) == 0 && left >= size;
            let (size, level) = if max == MaxPage::Size1G && fits(SIZE_1G) {
                (SIZE_1G, 3)
            } else if max != MaxPage::Size4K && fits(SIZE_2M) {
                (SIZE_2M, 2)
            } else {
                (SIZE_4K, 1)
            };
            self.map_one(v, p, level, leaf_flags)?;
            done += size;
        }
        Ok(())
    }

    fn map_one(&mut self, va: u64, pa: u64, leaf_level: u8, leaf_flags: u64) -> Result<(), MapError> {
        let mut table = self.root;
        for level in (leaf_level + 1..=4).rev() {
            let i = index(va, level);
            let entry = self.mem.read_entry(table, i);
            if entry & flags::PRESENT == 0 {
                let next = self.mem.alloc_table().ok_or(MapError::OutOfTables)?;
                self.mem.write_entry(table, i, next | TABLE_FLAGS);
                table = next;
            } else if entry & flags::HUGE != 0 {
                return Err(MapError::AlreadyMapped(va));
            } else {
                table = entry & flags::ADDR_MASK;
            }
        }
        let i = index(va, leaf_level);
        if self.mem.read_entry(table, i) & flags::PRESENT != 0 {
            return Err(MapError::AlreadyMapped(va));
        }
        let huge = if leaf_level > 1 { flags::HUGE } else { 0 };
        self.mem.write_entry(table, i, pa | leaf_flags | huge);
        Ok(())
    }

    /// Remove the 4 KiB leaf mapping `va`, returning the physical page it
    /// mapped. Tables that become empty stay (they are freed by [`Self::teardown`]).
    pub fn unmap_4k(&mut self, va: u64) -> Result<u64, UnmapError> {
        let mut table = self.root;
        for level in (2..=4u8).rev() {
            let entry = self.mem.read_entry(table, index(va, level));
            if entry & flags::PRESENT == 0 {
                return Err(UnmapError::NotMapped(va));
            }
            if entry & flags::HUGE != 0 {
                return Err(UnmapError::LargePage(va));
            }
            table = entry & flags::ADDR_MASK;
        }
        let i = index(va, 1);
        let entry = self.mem.read_entry(table, i);
        if entry & flags::PRESENT == 0 {
            return Err(UnmapError::NotMapped(va));
        }
        self.mem.write_entry(table, i, 0);
        Ok(entry & flags::ADDR_MASK)
    }

    /// Free every table, calling `leaf(va, pa, size)` for each mapping first.
    /// The hierarchy (root included) is gone afterwards.
    pub fn teardown(mut self, mut leaf: impl FnMut(u64, u64, u64)) -> M {
        let root = self.root;
        self.teardown_table(root, 4, 0, &mut leaf);
        self.mem
    }

    fn teardown_table(&mut self, table: u64, level: u8, va_base: u64, leaf: &mut impl FnMut(u64, u64, u64)) {
        let span = 1u64 << (12 + 9 * (level as u32 - 1));
        for i in 0..512 {
            let entry = self.mem.read_entry(table, i);
            if entry & flags::PRESENT == 0 {
                continue;
            }
            // Sign-extend bit 47 for canonical high-half addresses.
            let raw = va_base + i as u64 * span;
            let va = if level == 4 && i >= 256 {
                raw | 0xFFFF_0000_0000_0000
            } else {
                raw
            };
            if level == 1 || entry & flags::HUGE != 0 {
                leaf(va, entry & flags::ADDR_MASK & !(span - 1), span);
            } else {
                self.teardown_table(entry & flags::ADDR_MASK, level - 1, va, leaf);
            }
        }
        self.mem.free_table(table);
    }

    /// Identity-map `range` except the bytes in `holes`, which stay unmapped.
    /// Boundaries must be 4 KiB aligned.
    pub fn identity_map_except(
        &mut self,
        range: Range<u64>,
        holes: &[Range<u64>],
        leaf_flags: u64,
        max: MaxPage,
    ) -> Result<(), MapError> {
        let mut cursor = range.start;
        while cursor < range.end {
            // The next hole at or after the cursor bounds this piece.
            let next_hole = holes
                .iter()
                .filter(|h| h.end > cursor && h.start < range.end && h.start < h.end)
                .min_by_key(|h| h.start);
            match next_hole {
                Some(h) if h.start <= cursor => cursor = h.end,
                Some(h) => {
                    self.map(cursor, cursor, h.start - cursor, leaf_flags, max)?;
                    cursor = h.end;
                }
                None => {
                    self.map(cursor, cursor, range.end - cursor, leaf_flags, max)?;
                    cursor = range.end;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Tables in a hash map, allocated from a counter.
    #[derive(Default)]
    struct MapMemory {
        tables: HashMap<u64, [u64; 512]>,
        next: u64,
    }

    impl TableMemory for MapMemory {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.tables.len() >= 4096 {
                return None;
            }
            self.next += 0x1000;
            let phys = 0x1_0000_0000 + self.next;
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
            assert!(self.tables.remove(&table).is_some(), "double free of {table:#x}");
        }
    }

    #[test]
    fn unmap_and_teardown_return_everything() {
        let mut pt = PageTables::new(MapMemory::default()).unwrap();
        pt.map(0x10_0000, 0x7_0000_0000, 0x4000, flags::NPT_RWX, MaxPage::Size4K)
            .unwrap();
        pt.map(0x4000_0000, 0x8000_0000, SIZE_2M, flags::NPT_RWX, MaxPage::Size2M)
            .unwrap();
        pt.map(
            0xFFFF_FFFF_8000_0000,
            0x1000,
            0x1000,
            flags::KERNEL_RW,
            MaxPage::Size4K,
        )
        .unwrap();
        assert_eq!(pt.unmap_4k(0x10_1000), Ok(0x7_0000_1000));
        assert_eq!(pt.unmap_4k(0x10_1000), Err(UnmapError::NotMapped(0x10_1000)));
        assert_eq!(pt.unmap_4k(0x4000_1000), Err(UnmapError::LargePage(0x4000_1000)));
        assert!(pt.translate(0x10_1000).is_err());
        assert_eq!(pt.translate(0x10_2000).unwrap().phys, 0x7_0000_2000);
        let mut leaves = Vec::new();
        let mem = pt.teardown(|va, pa, size| leaves.push((va, pa, size)));
        assert!(mem.tables.is_empty(), "every table freed");
        leaves.sort();
        assert_eq!(
            leaves,
            vec![
                (0x10_0000, 0x7_0000_0000, SIZE_4K),
                (0x10_2000, 0x7_0000_2000, SIZE_4K),
                (0x10_3000, 0x7_0000_3000, SIZE_4K),
                (0x4000_0000, 0x8000_0000, SIZE_2M),
                (0xFFFF_FFFF_8000_0000, 0x1000, SIZE_4K),
            ]
        );
    }

    #[test]
    fn identity_map_uses_large_pages_and_translates() {
        let mut pt = PageTables::new(MapMemory::default()).unwrap();
        pt.identity_map_except(0..4 * SIZE_1G, &[], flags::NPT_RWX, MaxPage::Size1G)
            .unwrap();
        // Five tables: PML4 + one PDPT with four 1 GiB leaves.
        assert_eq!(pt.memory().tables.len(), 2);
        let t = pt.translate(0xFEE0_0123).unwrap();
        assert_eq!(t.phys, 0xFEE0_0123);
        assert_eq!(t.page_size, SIZE_1G);
        assert_eq!(t.flags & flags::NPT_RWX, flags::NPT_RWX);
        assert_eq!(pt.translate(4 * SIZE_1G), Err(WalkError::NotPresent { level: 3 }));
    }

    #[test]
    fn hole_for_hv_core_region_is_really_absent() {
        let region = 0x1e00_0000..0x1f00_0000; // 16 MiB at 480 MiB
        let mut pt = PageTables::new(MapMemory::default()).unwrap();
        pt.identity_map_except(
            0..4 * SIZE_1G,
            std::slice::from_ref(&region),
            flags::NPT_RWX,
            MaxPage::Size1G,
        )
        .unwrap();
        for addr in (region.start..region.end).step_by(SIZE_4K as usize) {
            assert!(pt.translate(addr).is_err(), "{addr:#x} mapped");
        }
        // Right up to both edges is mapped.
        assert_eq!(pt.translate(region.start - 1).unwrap().phys, region.start - 1);
        assert_eq!(pt.translate(region.end).unwrap().phys, region.end);
        // The GiB containing the hole fell back to 2 MiB pages; the others are 1 GiB.
        assert_eq!(pt.translate(0).unwrap().page_size, SIZE_2M);
        assert_eq!(pt.translate(SIZE_1G).unwrap().page_size, SIZE_1G);
    }

    #[test]
    fn unaligned_hole_edges_use_4k_pages() {
        let mut pt = PageTables::new(MapMemory::default()).unwrap();
        pt.identity_map_except(
            0..SIZE_1G,
            std::slice::from_ref(&(0x20_3000..0x20_5000)),
            flags::KERNEL_RW,
            MaxPage::Size2M,
        )
        .unwrap();
        assert_eq!(pt.translate(0x20_2fff).unwrap().page_size, SIZE_4K);
        assert!(pt.translate(0x20_3000).is_err());
        assert!(pt.translate(0x20_4fff).is_err());
        assert_eq!(pt.translate(0x20_5000).unwrap().phys, 0x20_5000);
        assert_eq!(pt.translate(0x40_0000).unwrap().page_size, SIZE_2M);
    }

    #[test]
    fn high_half_mapping_and_double_map_refused() {
        let mut pt = PageTables::new(MapMemory::default()).unwrap();
        let va = 0xFFFF_FFFF_8000_0000;
        pt.map(va, 0x1e00_0000, 0x3000, flags::KERNEL_RW, MaxPage::Size4K)
            .unwrap();
        assert_eq!(pt.translate(va + 0x2abc).unwrap().phys, 0x1e00_2abc);
        assert_eq!(
            pt.map(va + 0x1000, 0, 0x1000, flags::KERNEL_RW, MaxPage::Size4K),
            Err(MapError::AlreadyMapped(va + 0x1000))
        );
        assert_eq!(
            pt.map(1, 0, 0x1000, 0, MaxPage::Size4K),
            Err(MapError::Misaligned)
        );
    }

    #[test]
    fn walker_refuses_unreadable_tables() {
        // A CR3 whose PML4 is outside readable memory.
        let r = walk(|_| None, 0xdead_b000, 0x1000);
        assert_eq!(
            r,
            Err(WalkError::Unreadable {
                entry_phys: 0xdead_b000
            })
        );
        // A PML4E with PS set is reserved.
        let r = walk(|_| Some(flags::PRESENT | flags::HUGE), 0, 0);
        assert_eq!(r, Err(WalkError::Reserved { level: 4 }));
    }

    #[test]
    fn walker_combines_permissions() {
        // PML4E writable+user, PDPTE read-only, PDE 2 MiB user leaf.
        let entries: HashMap<u64, u64> = [
            (0x1000, 0x2000 | flags::PRESENT | flags::WRITABLE | flags::USER),
            (0x2000, 0x3000 | flags::PRESENT | flags::USER),
            (
                0x3000,
                0x40_0000 | flags::PRESENT | flags::WRITABLE | flags::USER | flags::HUGE,
            ),
        ]
        .into_iter()
        .collect();
        let t = walk(|p| entries.get(&p).copied().or(Some(0)), 0x1000, 0x1234).unwrap();
        assert_eq!(t.phys, 0x40_1234);
        assert_eq!(t.flags & flags::WRITABLE, 0);
        assert_ne!(t.flags & flags::USER, 0);
    }
}
