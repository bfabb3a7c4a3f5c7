//! The data buffer of an EXECUTE_SRB: a VMBus GPA-direct packet
//! (`VM_PKT_DATA_USING_GPA_DIRECT`, type 9) whose extended header lists
//! GPA ranges, followed by the in-band `vstor_packet`.
//!
//! Layout after the 16-byte `vmpacket_descriptor` (Linux
//! `include/linux/hyperv.h` `struct vmbus_packet_mpb_array`,
//! `struct hv_mpb_array`): `u32 reserved`, `u32 rangecount`, then per range
//! `u32 len`, `u32 offset`, `u64 pfn_array[pages]`, where `pages` spans
//! `offset + len` bytes from the first page. The in-band data starts at
//! `offset8 * 8` from the descriptor. Linux storvsc sends one range whose
//! `len` equals the SRB's `data_transfer_length` (`storvsc_queuecommand`,
//! `storvsc_do_io`), at any offset into its first page.
//!
//! Range records are parsed by [`vmbus::packet::parse_gpa_ranges`]; this
//! module adds the storage view: [`chunks`] cuts a byte window of the
//! ranges into per-page pieces with every bound checked, so the device
//! copies to and from guest pages without further arithmetic on guest
//! values. Pages are 4 KiB (`HV_HYP_PAGE_SIZE`). Nothing here trusts a
//! guest number, and nothing panics on one.

use alloc::vec::Vec;
use core::fmt;
use vmbus::packet::{GpaRange, pages_spanned, parse_gpa_ranges};

/// Hyper-V page size (PFNs in GPA ranges count these).
pub const PAGE_SIZE: u32 = 4096;
/// Largest page number whose byte address fits in 64 bits.
pub const MAX_GPN: u64 = u64::MAX >> 12;

/// One guest-contiguous piece of a data buffer: from a byte of one guest
/// page on through consecutive guest pages (a buffer's pages that follow
/// each other in guest memory make one chunk, so a device handles a
/// contiguous 1 MiB buffer once, not 256 times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Guest page number (`gpa >> 12`) of the first byte, at most
    /// [`MAX_GPN`], as is every page the chunk reaches.
    pub gpn: u64,
    /// Byte offset in that page (< 4096).
    pub offset: u32,
    /// Bytes (≥ 1).
    pub len: u32,
}

impl Chunk {
    /// The guest physical address of the first byte.
    pub fn gpa(&self) -> u64 {
        // gpn <= MAX_GPN and offset < 4096: cannot overflow.
        (self.gpn << 12) | self.offset as u64
    }
}

/// Why a data buffer description was refused (always the guest's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferError {
    /// The GPA-direct header or a range record runs past the packet.
    BadRangeList,
    /// The descriptor's data offset points into the range list, before the
    /// descriptor's end, or past the packet.
    BadDataOffset {
        /// `offset8` from the descriptor.
        offset8: u16,
    },
    /// A range starts 4096 or more bytes into its first page.
    ByteOffset {
        /// Index of the range.
        range: usize,
        /// Its `offset`.
        byte_offset: u32,
    },
    /// A range lists a different number of PFNs than its bytes span.
    PageCount {
        /// Index of the range.
        range: usize,
        /// PFNs listed.
        pages: usize,
        /// PFNs its offset and length span.
        need: usize,
    },
    /// A PFN whose address does not fit in 64 bits.
    BadGpn {
        /// Index of the range.
        range: usize,
        /// The PFN.
        gpn: u64,
    },
    /// The window asked for runs past the bytes the ranges describe (an
    /// SRB whose `data_transfer_length` exceeds its buffer).
    OutOfRange {
        /// Window start.
        offset: u64,
        /// Window length.
        len: u64,
        /// Bytes the ranges describe.
        total: u64,
    },
}

impl fmt::Display for BufferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRangeList => write!(f, "guest GPA range list runs past its packet"),
            Self::BadDataOffset { offset8 } => {
                write!(f, "guest GPA-direct packet has data offset8 {offset8}")
            }
            Self::ByteOffset { range, byte_offset } => {
                write!(
                    f,
                    "guest GPA range {range} starts {byte_offset} bytes into a page"
                )
            }
            Self::PageCount { range, pages, need } => {
                write!(f, "guest GPA range {range} lists {pages} pages, spans {need}")
            }
            Self::BadGpn { range, gpn } => write!(f, "guest GPA range {range} lists page {gpn:#x}"),
            Self::OutOfRange { offset, len, total } => {
                write!(f, "{len} bytes at {offset} asked of a {total}-byte guest buffer")
            }
        }
    }
}

/// A GPA-direct packet split into its ranges and its in-band data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpaDirect<'a> {
    /// The ranges (unchecked beyond their record sizes: [`chunks`] checks
    /// the rest).
    pub ranges: Vec<GpaRange<'a>>,
    /// The in-band bytes (the `vstor_packet`).
    pub data: &'a [u8],
}

/// Split the bytes after the descriptor of a GPA-direct packet. With
/// `offset8` (the descriptor's data offset in 8-byte units from the
/// descriptor) the data starts there and must not overlap the ranges;
/// without it, right after the last range, as Linux lays it out.
pub fn parse_gpa_direct(after_descriptor: &[u8], offset8: Option<u16>) -> Result<GpaDirect<'_>, BufferError> {
    let head = after_descriptor.get(..8).ok_or(BufferError::BadRangeList)?;
    let range_count = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let rest = &after_descriptor[8..];
    let ranges = parse_gpa_ranges(rest, range_count).map_err(|_| BufferError::BadRangeList)?;
    // Each record is 8 bytes + its PFNs; all of them fit in `rest`.
    let ranges_end = 8 + ranges.iter().map(|r| 8 + r.pfns.len()).sum::<usize>();
    let start = match offset8 {
        None => ranges_end,
        Some(o) => {
            let from_descriptor = o as usize * 8;
            let start = from_descriptor
                .checked_sub(16)
                .ok_or(BufferError::BadDataOffset { offset8: o })?;
            if start < ranges_end || start > after_descriptor.len() {
                return Err(BufferError::BadDataOffset { offset8: o });
            }
            start
        }
    };
    let data = after_descriptor.get(start..).ok_or(BufferError::BadRangeList)?;
    Ok(GpaDirect { ranges, data })
}

/// Check one range: offset inside the first page, exactly the PFNs its
/// bytes span, every PFN addressable.
fn check_range(i: usize, r: &GpaRange<'_>) -> Result<(), BufferError> {
    let need = pages_spanned(r.byte_offset, r.byte_count).ok_or(BufferError::ByteOffset {
        range: i,
        byte_offset: r.byte_offset,
    })?;
    if !r.pfns.len().is_multiple_of(8) || r.page_count() != need {
        return Err(BufferError::PageCount {
            range: i,
            pages: r.pfns.len() / 8,
            need,
        });
    }
    for p in 0..need {
        let gpn = r.pfn(p).ok_or(BufferError::PageCount {
            range: i,
            pages: r.page_count(),
            need,
        })?;
        if gpn > MAX_GPN {
            return Err(BufferError::BadGpn { range: i, gpn });
        }
    }
    Ok(())
}

/// Total bytes the ranges describe, after checking each of them.
pub fn total_len(ranges: &[GpaRange<'_>]) -> Result<u64, BufferError> {
    let mut total = 0u64;
    for (i, r) in ranges.iter().enumerate() {
        check_range(i, r)?;
        total += r.byte_count as u64;
    }
    Ok(total)
}

/// Cut `len` bytes starting `offset` bytes into the buffer the ranges
/// describe (the ranges' bytes one after the other) into chunks, in order:
/// a piece per page, merged with the one before when it continues it in
/// guest memory (that one ends at its page's end, this one starts the
/// next page). Every range is checked first ([`BufferError`]); the window
/// must lie within the described bytes.
pub fn chunks(ranges: &[GpaRange<'_>], offset: u64, len: u64) -> Result<Vec<Chunk>, BufferError> {
    let total = total_len(ranges)?;
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= total)
        .ok_or(BufferError::OutOfRange { offset, len, total })?;
    let mut out: Vec<Chunk> = Vec::new();
    let mut base = 0u64;
    for (i, r) in ranges.iter().enumerate() {
        let range_start = base;
        let range_end = base + r.byte_count as u64;
        base = range_end;
        if range_end <= offset || range_start >= end || r.byte_count == 0 {
            continue;
        }
        // Positions relative to the start of the range's first page.
        let mut pos = r.byte_offset as u64 + (offset.max(range_start) - range_start);
        let stop = r.byte_offset as u64 + (end.min(range_end) - range_start);
        while pos < stop {
            let page = (pos / PAGE_SIZE as u64) as usize;
            let in_page = (pos % PAGE_SIZE as u64) as u32;
            let n = (stop - pos).min((PAGE_SIZE - in_page) as u64) as u32;
            // check_range proved every page index below `need` exists.
            let gpn = r.pfn(page).ok_or(BufferError::PageCount {
                range: i,
                pages: r.page_count(),
                need: page + 1,
            })?;
            match out.last_mut() {
                // The last chunk ends where this page starts: one run. Its
                // end is a page boundary, so this page number follows it
                // (no overflow: both are at most MAX_GPN).
                Some(last)
                    if in_page == 0
                        && (last.offset + last.len).is_multiple_of(PAGE_SIZE)
                        && last
                            .gpn
                            .checked_add(u64::from((last.offset + last.len) / PAGE_SIZE))
                            == Some(gpn) =>
                {
                    last.len += n;
                }
                _ => out.push(Chunk {
                    gpn,
                    offset: in_page,
                    len: n,
                }),
            }
            pos += n as u64;
        }
    }
    Ok(out)
}

/// The chunks an SRB's data moves through: the first
/// `data_transfer_length` bytes of its ranges. No data → no chunks (ranges
/// ignored); data with no ranges, or more than they describe →
/// [`BufferError::OutOfRange`].
pub fn srb_chunks(ranges: &[GpaRange<'_>], data_transfer_length: u32) -> Result<Vec<Chunk>, BufferError> {
    if data_transfer_length == 0 {
        return Ok(Vec::new());
    }
    chunks(ranges, 0, data_transfer_length as u64)
}

/// The bytes after the descriptor of a GPA-direct packet with `ranges`
/// (each `(byte_offset, byte_count, pfns)`) and then `data`, as Linux lays
/// it out; for clients and tests. Returns the bytes and the descriptor's
/// `offset8`.
pub fn build_gpa_direct(ranges: &[(u32, u32, &[u64])], data: &[u8]) -> (Vec<u8>, u16) {
    let mut out = Vec::new();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for (off, count, pfns) in ranges {
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&off.to_le_bytes());
        for p in *pfns {
            out.extend_from_slice(&p.to_le_bytes());
        }
    }
    let offset8 = ((16 + out.len()) / 8) as u16;
    out.extend_from_slice(data);
    (out, offset8)
}
