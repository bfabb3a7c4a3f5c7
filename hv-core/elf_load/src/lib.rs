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
        }
    }
}
