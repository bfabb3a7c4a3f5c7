//! A small, fully checked ELF64 loader for hv-core's image: it validates the
//! header and every `PT_LOAD` program header against the file, plans where each
//! segment goes relative to the image's lowest virtual address, and copies the
//! image into a destination buffer (zeroing `.bss`). The root uses it to place
//! hv-core in the region it carved out; nothing is trusted about the file.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// ELF64 file header.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FileHeader {
    /// e_ident.
    pub ident: [u8; 16],
    /// e_type.
    pub kind: u16,
    /// e_machine.
    pub machine: u16,
    /// e_version.
    pub version: u32,
    /// e_entry.
    pub entry: u64,
    /// e_phoff.
    pub phoff: u64,
    /// e_shoff.
    pub shoff: u64,
    /// e_flags.
    pub flags: u32,
    /// e_ehsize.
    pub ehsize: u16,
    /// e_phentsize.
    pub phentsize: u16,
    /// e_phnum.
    pub phnum: u16,
    /// e_shentsize.
    pub shentsize: u16,
    /// e_shnum.
    pub shnum: u16,
    /// e_shstrndx.
    pub shstrndx: u16,
}
const _: () = assert!(size_of::<FileHeader>() == 64);

/// ELF64 program header.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ProgramHeader {
    /// p_type.
    pub kind: u32,
    /// p_flags.
    pub flags: u32,
    /// p_offset.
    pub offset: u64,
    /// p_vaddr.
    pub vaddr: u64,
    /// p_paddr.
    pub paddr: u64,
    /// p_filesz.
    pub filesz: u64,
    /// p_memsz.
    pub memsz: u64,
    /// p_align.
    pub align: u64,
}
const _: () = assert!(size_of::<ProgramHeader>() == 56);

/// PT_LOAD.
pub const PT_LOAD: u32 = 1;
/// PF_X.
pub const PF_X: u32 = 1;
/// ET_EXEC.
pub const ET_EXEC: u16 = 2;
/// EM_X86_64.
pub const EM_X86_64: u16 = 62;
/// Most loadable segments an image may have.
pub const MAX_SEGMENTS: usize = 8;
const PAGE: u64 = 4096;

/// Why an image was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than its headers claim.
    Truncated,
    /// Not an ELF64 little-endian x86-64 executable.
    NotX86_64Executable,
    /// Program header `index` is inconsistent (file range, sizes, overflow).
    BadSegment(usize),
    /// Loadable segments overlap in memory.
    Overlap,
    /// More than [`MAX_SEGMENTS`] loadable segments, or none.
    SegmentCount,
    /// The entry point is not inside an executable segment.
    BadEntry,
    /// The image needs more bytes than the destination allows.
    TooLarge {
        /// Bytes needed.
        needed: u64,
    },
    /// Loadable segment `index` lies (partly) outside the memory it may use.
    OutsideWindow {
        /// Program header index.
        index: usize,
        /// Its first physical byte.
        start: u64,
        /// One past its last.
        end: u64,
    },
}

/// One loadable segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address.
    pub vaddr: u64,
    /// Offset in the file.
    pub file_offset: u64,
    /// Bytes taken from the file.
    pub file_size: u64,
    /// Bytes in memory (the rest is zeroed).
    pub mem_size: u64,
    /// PF_* flags.
    pub flags: u32,
}

/// Where everything goes.
#[derive(Debug, Clone, Copy)]
pub struct LoadPlan {
    /// Entry point (virtual).
    pub entry: u64,
    /// Lowest segment address rounded down to a page: the image base.
    pub base_va: u64,
    /// Bytes from `base_va` to the end of the highest segment, page-rounded.
    pub span: u64,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

impl LoadPlan {
    /// The loadable segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }
}

/// Validate `file` and plan its load; the span may not exceed `max_span`.
pub fn plan(file: &[u8], max_span: u64) -> Result<LoadPlan, ElfError> {
    let (header, _) = FileHeader::read_from_prefix(file).map_err(|_| ElfError::Truncated)?;
    let ident_ok = header.ident[..4] == *b"\x7fELF" && header.ident[4] == 2 && header.ident[5] == 1;
    if !ident_ok || header.machine != EM_X86_64 || header.kind != ET_EXEC {
        return Err(ElfError::NotX86_64Executable);
    }
    if header.phentsize as usize != size_of::<ProgramHeader>() {
        return Err(ElfError::NotX86_64Executable);
    }
    let table_len = header.phnum as u64 * size_of::<ProgramHeader>() as u64;
    let table_end = header.phoff.checked_add(table_len).ok_or(ElfError::Truncated)?;
    if table_end > file.len() as u64 {
        return Err(ElfError::Truncated);
    }
    let mut segments = [Segment::default(); MAX_SEGMENTS];
    let mut count = 0;
    for index in 0..header.phnum as usize {
        let at = header.phoff as usize + index * size_of::<ProgramHeader>();
        let ph = ProgramHeader::read_from_bytes(&file[at..at + size_of::<ProgramHeader>()])
            .map_err(|_| ElfError::Truncated)?;
        if ph.kind != PT_LOAD || ph.memsz == 0 {
            continue;
        }
        let file_end = ph
            .offset
            .checked_add(ph.filesz)
            .ok_or(ElfError::BadSegment(index))?;
        let mem_end = ph
            .vaddr
            .checked_add(ph.memsz)
            .ok_or(ElfError::BadSegment(index))?;
        if file_end > file.len() as u64 || ph.filesz > ph.memsz || mem_end.checked_add(PAGE).is_none() {
            return Err(ElfError::BadSegment(index));
        }
        if count == MAX_SEGMENTS {
            return Err(ElfError::SegmentCount);
        }
        segments[count] = Segment {
            vaddr: ph.vaddr,
            file_offset: ph.offset,
            file_size: ph.filesz,
            mem_size: ph.memsz,
            flags: ph.flags,
        };
        count += 1;
    }
    if count == 0 {
        return Err(ElfError::SegmentCount);
    }
    let segs = &mut segments[..count];
    segs.sort_unstable_by_key(|s| s.vaddr);
    for pair in segs.windows(2) {
        if pair[0].vaddr + pair[0].mem_size > pair[1].vaddr {
            return Err(ElfError::Overlap);
        }
    }
    let base_va = segs[0].vaddr & !(PAGE - 1);
    let last = segs[count - 1];
    let span = (last.vaddr + last.mem_size).next_multiple_of(PAGE) - base_va;
    if span > max_span {
        return Err(ElfError::TooLarge { needed: span });
    }
    let entry_ok = segs
        .iter()
        .any(|s| s.flags & PF_X != 0 && (s.vaddr..s.vaddr + s.mem_size).contains(&header.entry));
    if !entry_ok {
        return Err(ElfError::BadEntry);
    }
    Ok(LoadPlan {
        entry: header.entry,
        base_va,
        span,
        segments,
        count,
    })
}

/// Copy the image described by `plan` out of `file` into `dest`, which stands
/// for the memory at `plan.base_va`; every byte of `dest[..span]` not from the
/// file is zeroed.
pub fn load(plan: &LoadPlan, file: &[u8], dest: &mut [u8]) -> Result<(), ElfError> {
    let span = plan.span as usize;
    if dest.len() < span {
        return Err(ElfError::TooLarge { needed: plan.span });
    }
    dest[..span].fill(0);
    for (index, s) in plan.segments().iter().enumerate() {
        let from = file
            .get(s.file_offset as usize..(s.file_offset + s.file_size) as usize)
            .ok_or(ElfError::BadSegment(index))?;
        let at = (s.vaddr - plan.base_va) as usize;
        dest[at..at + from.len()].copy_from_slice(from);
    }
    Ok(())
}

/// ELF32 file header (for i386 images: Multiboot and PVH kernels).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FileHeader32 {
    /// e_ident.
    pub ident: [u8; 16],
    /// e_type.
    pub kind: u16,
    /// e_machine.
    pub machine: u16,
    /// e_version.
    pub version: u32,
    /// e_entry.
    pub entry: u32,
    /// e_phoff.
    pub phoff: u32,
    /// e_shoff.
    pub shoff: u32,
    /// e_flags.
    pub flags: u32,
    /// e_ehsize.
    pub ehsize: u16,
    /// e_phentsize.
    pub phentsize: u16,
    /// e_phnum.
    pub phnum: u16,
    /// e_shentsize.
    pub shentsize: u16,
    /// e_shnum.
    pub shnum: u16,
    /// e_shstrndx.
    pub shstrndx: u16,
}
const _: () = assert!(size_of::<FileHeader32>() == 52);

/// ELF32 program header (note the field order differs from ELF64's).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ProgramHeader32 {
    /// p_type.
    pub kind: u32,
    /// p_offset.
    pub offset: u32,
    /// p_vaddr.
    pub vaddr: u32,
    /// p_paddr.
    pub paddr: u32,
    /// p_filesz.
    pub filesz: u32,
    /// p_memsz.
    pub memsz: u32,
    /// p_flags.
    pub flags: u32,
    /// p_align.
    pub align: u32,
}
const _: () = assert!(size_of::<ProgramHeader32>() == 32);

/// PT_NOTE.
pub const PT_NOTE: u32 = 4;
/// EM_386.
pub const EM_386: u16 = 3;
/// Most program headers [`headers`] reads (of any type).
pub const MAX_PROGRAM_HEADERS: usize = 64;

/// An x86 executable's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// ELF32, i386.
    Elf32,
    /// ELF64, x86-64.
    Elf64,
}

/// The parts of an ELF32 or ELF64 x86 executable's headers the physical
/// loader needs, widened to 64 bits.
#[derive(Debug, Clone, Copy)]
pub struct Headers {
    /// ELF32 (i386) or ELF64 (x86-64).
    pub class: Class,
    /// e_entry.
    pub entry: u64,
    phdrs: [ProgramHeader; MAX_PROGRAM_HEADERS],
    count: usize,
}

impl Headers {
    /// Every program header, in file order (ELF32 ones widened).
    pub fn program_headers(&self) -> &[ProgramHeader] {
        &self.phdrs[..self.count]
    }

    /// The file bytes of every `PT_NOTE` segment (those inside the file).
    pub fn notes<'a>(&'a self, file: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.program_headers()
            .iter()
            .filter(|p| p.kind == PT_NOTE)
            .filter_map(|p| {
                let end = p.offset.checked_add(p.filesz)?;
                file.get(usize::try_from(p.offset).ok()?..usize::try_from(end).ok()?)
            })
    }
}

/// Read the headers of an ELF32 (EM_386) or ELF64 (EM_X86_64) little-endian
/// executable; every program header must lie inside the file.
pub fn headers(file: &[u8]) -> Result<Headers, ElfError> {
    let ident = file.get(..16).ok_or(ElfError::Truncated)?;
    if ident[..4] != *b"\x7fELF" || ident[5] != 1 {
        return Err(ElfError::NotX86_64Executable);
    }
    let (class, entry, phoff, phentsize, phnum, kind, machine) = match ident[4] {
        1 => {
            let (h, _) = FileHeader32::read_from_prefix(file).map_err(|_| ElfError::Truncated)?;
            (
                Class::Elf32,
                h.entry as u64,
                h.phoff as u64,
                h.phentsize,
                h.phnum,
                h.kind,
                h.machine,
            )
        }
        2 => {
            let (h, _) = FileHeader::read_from_prefix(file).map_err(|_| ElfError::Truncated)?;
            (
                Class::Elf64,
                h.entry,
                h.phoff,
                h.phentsize,
                h.phnum,
                h.kind,
                h.machine,
            )
        }
        _ => return Err(ElfError::NotX86_64Executable),
    };
    let (want_machine, want_size) = match class {
        Class::Elf32 => (EM_386, size_of::<ProgramHeader32>()),
        Class::Elf64 => (EM_X86_64, size_of::<ProgramHeader>()),
    };
    if kind != ET_EXEC || machine != want_machine || phentsize as usize != want_size {
        return Err(ElfError::NotX86_64Executable);
    }
    if phnum as usize > MAX_PROGRAM_HEADERS {
        return Err(ElfError::SegmentCount);
    }
    let table_end = phoff
        .checked_add(phnum as u64 * want_size as u64)
        .ok_or(ElfError::Truncated)?;
    if table_end > file.len() as u64 {
        return Err(ElfError::Truncated);
    }
    let empty = ProgramHeader {
        kind: 0,
        flags: 0,
        offset: 0,
        vaddr: 0,
        paddr: 0,
        filesz: 0,
        memsz: 0,
        align: 0,
    };
    let mut phdrs = [empty; MAX_PROGRAM_HEADERS];
    for (index, slot) in phdrs.iter_mut().take(phnum as usize).enumerate() {
        let at = phoff as usize + index * want_size;
        let bytes = file.get(at..at + want_size).ok_or(ElfError::Truncated)?;
        *slot = match class {
            Class::Elf64 => ProgramHeader::read_from_bytes(bytes).map_err(|_| ElfError::Truncated)?,
            Class::Elf32 => {
                let p = ProgramHeader32::read_from_bytes(bytes).map_err(|_| ElfError::Truncated)?;
                ProgramHeader {
                    kind: p.kind,
                    flags: p.flags,
                    offset: p.offset as u64,
                    vaddr: p.vaddr as u64,
                    paddr: p.paddr as u64,
                    filesz: p.filesz as u64,
                    memsz: p.memsz as u64,
                    align: p.align as u64,
                }
            }
        };
    }
    Ok(Headers {
        class,
        entry,
        phdrs,
        count: phnum as usize,
    })
}

/// One loadable segment placed by its physical address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhysSegment {
    /// p_paddr: where it goes in guest-physical memory.
    pub paddr: u64,
    /// p_vaddr (to translate a virtual entry point).
    pub vaddr: u64,
    /// Offset in the file.
    pub file_offset: u64,
    /// Bytes taken from the file.
    pub file_size: u64,
    /// Bytes in memory (the rest is zero).
    pub mem_size: u64,
    /// PF_* flags.
    pub flags: u32,
}

/// A physical-address load (what PVH and Multiboot loaders do: QEMU's
/// `load_elf` with no address translation).
#[derive(Debug, Clone, Copy)]
pub struct PhysPlan {
    /// ELF32 or ELF64.
    pub class: Class,
    /// e_entry as written in the file.
    pub entry: u64,
    /// Lowest physical byte loaded.
    pub low: u64,
    /// One past the highest physical byte (including zero-filled memory).
    pub high: u64,
    segments: [PhysSegment; MAX_SEGMENTS],
    count: usize,
}

impl PhysPlan {
    /// The loadable segments, by physical address.
    pub fn segments(&self) -> &[PhysSegment] {
        &self.segments[..self.count]
    }

    /// `addr` as a physical address: itself when it is inside a segment's
    /// physical range, else translated through the segment whose virtual
    /// range holds it (GRUB's rule for a Multiboot ELF's entry point).
    pub fn to_physical(&self, addr: u64) -> Option<u64> {
        let segs = self.segments();
        if segs
            .iter()
            .any(|s| (s.paddr..s.paddr + s.mem_size).contains(&addr))
        {
            return Some(addr);
        }
        segs.iter()
            .find(|s| (s.vaddr..s.vaddr.saturating_add(s.mem_size)).contains(&addr))
            .map(|s| addr - s.vaddr + s.paddr)
    }

    /// Whether `addr` (physical) is inside a loaded segment.
    pub fn contains(&self, addr: u64) -> bool {
        self.segments()
            .iter()
            .any(|s| (s.paddr..s.paddr + s.mem_size).contains(&addr))
    }
}

/// Plan loading `file` (ELF32 or ELF64 x86) by physical address: every
/// `PT_LOAD` segment must lie in `window` (guest-physical) and no two may
/// overlap. Nothing is copied: the segments' file bytes go straight to
/// their physical addresses, and the caller's memory is already zero.
pub fn plan_physical(file: &[u8], window: core::ops::Range<u64>) -> Result<PhysPlan, ElfError> {
    let h = headers(file)?;
    let mut segments = [PhysSegment::default(); MAX_SEGMENTS];
    let mut count = 0;
    for (index, ph) in h.program_headers().iter().enumerate() {
        if ph.kind != PT_LOAD || ph.memsz == 0 {
            continue;
        }
        let file_end = ph
            .offset
            .checked_add(ph.filesz)
            .ok_or(ElfError::BadSegment(index))?;
        let mem_end = ph
            .paddr
            .checked_add(ph.memsz)
            .ok_or(ElfError::BadSegment(index))?;
        if file_end > file.len() as u64 || ph.filesz > ph.memsz || ph.vaddr.checked_add(ph.memsz).is_none() {
            return Err(ElfError::BadSegment(index));
        }
        if ph.paddr < window.start || mem_end > window.end {
            return Err(ElfError::OutsideWindow {
                index,
                start: ph.paddr,
                end: mem_end,
            });
        }
        if count == MAX_SEGMENTS {
            return Err(ElfError::SegmentCount);
        }
        segments[count] = PhysSegment {
            paddr: ph.paddr,
            vaddr: ph.vaddr,
            file_offset: ph.offset,
            file_size: ph.filesz,
            mem_size: ph.memsz,
            flags: ph.flags,
        };
        count += 1;
    }
    if count == 0 {
        return Err(ElfError::SegmentCount);
    }
    let segs = &mut segments[..count];
    segs.sort_unstable_by_key(|s| s.paddr);
    for pair in segs.windows(2) {
        if pair[0].paddr + pair[0].mem_size > pair[1].paddr {
            return Err(ElfError::Overlap);
        }
    }
    let low = segs[0].paddr;
    let high = segs[count - 1].paddr + segs[count - 1].mem_size;
    Ok(PhysPlan {
        class: h.class,
        entry: h.entry,
        low,
        high,
        segments,
        count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(segments: &[(u64, &[u8], u64, u32)], entry: u64) -> Vec<u8> {
        let mut header = FileHeader::read_from_bytes(&[0u8; 64]).unwrap();
        header.ident[..6].copy_from_slice(b"\x7fELF\x02\x01");
        header.kind = ET_EXEC;
        header.machine = EM_X86_64;
        header.entry = entry;
        header.phoff = 64;
        header.phentsize = 56;
        header.phnum = segments.len() as u16;
        let mut out = header.as_bytes().to_vec();
        let mut data_at = 64 + 56 * segments.len() as u64;
        let mut data = Vec::new();
        for &(vaddr, bytes, memsz, flags) in segments {
            let ph = ProgramHeader {
                kind: PT_LOAD,
                flags,
                offset: data_at,
                vaddr,
                paddr: 0,
                filesz: bytes.len() as u64,
                memsz,
                align: 4096,
            };
            out.extend_from_slice(ph.as_bytes());
            data.extend_from_slice(bytes);
            data_at += bytes.len() as u64;
        }
        out.extend_from_slice(&data);
        out
    }

    const BASE: u64 = 0xFFFF_FFFF_8000_0000;

    #[test]
    fn plans_and_loads_with_bss_zeroed() {
        let file = image(
            &[(BASE, b"code", 4, PF_X | 4), (BASE + 0x2000, b"data", 0x1800, 6)],
            BASE,
        );
        let plan = plan(&file, 1 << 20).unwrap();
        assert_eq!(plan.base_va, BASE);
        assert_eq!(plan.span, 0x4000);
        assert_eq!(plan.entry, BASE);
        let mut dest = vec![0xAAu8; 0x4000];
        load(&plan, &file, &mut dest).unwrap();
        assert_eq!(&dest[..4], b"code");
        assert_eq!(&dest[0x2000..0x2004], b"data");
        assert!(dest[0x2004..].iter().all(|&b| b == 0), "bss zeroed");
        assert!(dest[4..0x2000].iter().all(|&b| b == 0));
    }

    #[test]
    fn rejects_bad_images() {
        let good = image(&[(BASE, b"code", 4, PF_X)], BASE);
        assert_eq!(plan(&good[..10], 1 << 20).unwrap_err(), ElfError::Truncated);
        let mut bad = good.clone();
        bad[18] = 3; // e_machine
        assert_eq!(plan(&bad, 1 << 20).unwrap_err(), ElfError::NotX86_64Executable);
        // Entry outside any executable segment.
        let bad = image(&[(BASE, b"code", 4, 4)], BASE);
        assert_eq!(plan(&bad, 1 << 20).unwrap_err(), ElfError::BadEntry);
        // filesz > memsz.
        let bad = image(&[(BASE, b"code", 2, PF_X)], BASE);
        assert_eq!(plan(&bad, 1 << 20).unwrap_err(), ElfError::BadSegment(0));
        // Overlapping segments.
        let bad = image(
            &[(BASE, b"code", 0x2000, PF_X), (BASE + 0x1000, b"x", 1, 4)],
            BASE,
        );
        assert_eq!(plan(&bad, 1 << 20).unwrap_err(), ElfError::Overlap);
        // Too large for the region.
        let big = image(&[(BASE, b"code", 0x20_0000, PF_X)], BASE);
        assert_eq!(
            plan(&big, 0x1000).unwrap_err(),
            ElfError::TooLarge { needed: 0x20_0000 }
        );
        // Segment data past the end of the file.
        let mut bad = good.clone();
        bad.truncate(bad.len() - 1);
        assert_eq!(plan(&bad, 1 << 20).unwrap_err(), ElfError::BadSegment(0));
    }

    /// An ELF32 i386 image: one PT_NOTE and the given PT_LOADs (paddr, bytes, memsz).
    fn image32(segments: &[(u32, &[u8], u32)], entry: u32, note: &[u8]) -> Vec<u8> {
        let mut header = FileHeader32::read_from_bytes(&[0u8; 52]).unwrap();
        header.ident[..6].copy_from_slice(b"\x7fELF\x01\x01");
        header.kind = ET_EXEC;
        header.machine = EM_386;
        header.entry = entry;
        header.phoff = 52;
        header.phentsize = 32;
        header.phnum = segments.len() as u16 + 1;
        let mut out = header.as_bytes().to_vec();
        let mut data_at = 52 + 32 * (segments.len() as u32 + 1);
        let mut data = note.to_vec();
        let ph = ProgramHeader32 {
            kind: PT_NOTE,
            offset: data_at,
            vaddr: 0,
            paddr: 0,
            filesz: note.len() as u32,
            memsz: 0,
            flags: 4,
            align: 4,
        };
        out.extend_from_slice(ph.as_bytes());
        data_at += note.len() as u32;
        for &(paddr, bytes, memsz) in segments {
            let ph = ProgramHeader32 {
                kind: PT_LOAD,
                offset: data_at,
                vaddr: paddr + 0xC000_0000,
                paddr,
                filesz: bytes.len() as u32,
                memsz,
                flags: PF_X | 4,
                align: 4096,
            };
            out.extend_from_slice(ph.as_bytes());
            data.extend_from_slice(bytes);
            data_at += bytes.len() as u32;
        }
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn physical_plans_for_elf32_and_elf64() {
        let file = image32(
            &[(0x10_0000, b"code", 0x2000), (0x20_0000, b"data", 4)],
            0xC010_0002,
            b"NOTE",
        );
        let h = headers(&file).unwrap();
        assert_eq!(h.class, Class::Elf32);
        assert_eq!(h.notes(&file).collect::<Vec<_>>(), vec![&b"NOTE"[..]]);
        let p = plan_physical(&file, 0x10_0000..0x40_0000).unwrap();
        assert_eq!((p.low, p.high), (0x10_0000, 0x20_0004));
        // The virtual entry translates to its physical address.
        assert_eq!(p.to_physical(p.entry), Some(0x10_0002));
        assert_eq!(p.to_physical(0x5000_0000), None);
        assert!(p.contains(0x10_1FFF) && !p.contains(0x10_2000));
        assert_eq!(
            plan_physical(&file, 0x10_0000..0x20_0000).unwrap_err(),
            ElfError::OutsideWindow {
                index: 2,
                start: 0x20_0000,
                end: 0x20_0004
            }
        );
        let overlap = image32(&[(0x10_0000, b"code", 0x2000), (0x10_1000, b"data", 4)], 0, b"");
        assert_eq!(
            plan_physical(&overlap, 0..u64::MAX).unwrap_err(),
            ElfError::Overlap
        );
        assert_eq!(
            plan_physical(&file[..60], 0..u64::MAX).unwrap_err(),
            ElfError::Truncated
        );
        let mut wrong = file.clone();
        wrong[18] = 62; // an ELF32 claiming x86-64
        assert_eq!(headers(&wrong).unwrap_err(), ElfError::NotX86_64Executable);
        // ELF64 goes by p_paddr (0 in `image`): refused below the window.
        let elf64 = image(&[(BASE, b"code", 4, PF_X)], BASE);
        assert_eq!(headers(&elf64).unwrap().class, Class::Elf64);
        assert!(matches!(
            plan_physical(&elf64, 0x10_0000..0x40_0000),
            Err(ElfError::OutsideWindow { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_garbage(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            if bytes.len() >= 64 {
                bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
                bytes[16] = 2; bytes[17] = 0; bytes[18] = 62; bytes[19] = 0;
                bytes[54] = 56; bytes[55] = 0;
            }
            if let Ok(p) = plan(&bytes, 1 << 16) {
                let mut dest = vec![0u8; p.span as usize];
                let _ = load(&p, &bytes, &mut dest);
            }
            if let Ok(p) = plan_physical(&bytes, 0..u64::MAX) {
                let _ = p.to_physical(p.entry);
            }
            if bytes.len() >= 52 {
                bytes[4] = 1;
                bytes[18] = 3;
                bytes[42] = 32;
                bytes[43] = 0;
            }
            if let Ok(h) = headers(&bytes) {
                let _ = h.notes(&bytes).count();
                let _ = plan_physical(&bytes, 0..u64::MAX);
            }
        }
    }
}
