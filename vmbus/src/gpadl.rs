//! GPADLs: guest physical address descriptor lists, sent as one GPADL_HEADER
//! and as many GPADL_BODY messages as needed (vmbus-wire.md §2.3; Linux
//! `drivers/hv/channel.c` `create_gpadl_header`). The range byte stream is
//! complete once `range_buflen` bytes have arrived.

use crate::packet::pages_spanned;
use crate::protocol::{GpadlBody, GpadlHeader};
use alloc::vec::Vec;

/// Largest GPADL [`Assembly::finish`] accepts: 256 MiB of pages. (The wire
/// itself cannot exceed 8190 pages: `range_buflen` is 16 bits. The server's
/// own, smaller quotas are in [`crate::server::Limits`].)
pub const MAX_PAGES: usize = 65536;

/// Why a GPADL was refused (the guest's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpadlError {
    /// No ranges, or a buffer length that cannot hold them.
    BadHeader,
    /// A range's offset is not inside its first page, or its PFN count does
    /// not match its size.
    BadRange,
    /// The ranges do not use exactly `range_buflen` bytes.
    LengthMismatch,
    /// More than [`MAX_PAGES`] pages.
    TooLarge,
    /// The same page appears twice (rings would alias).
    DuplicatePage(u64),
    /// A page number outside the guest's memory (not below its page count).
    BadPfn(u64),
    /// A body for another handle.
    WrongHandle,
    /// Bodies after the GPADL was complete.
    AlreadyComplete,
    /// The host could not allocate memory to hold it (refused, never a panic).
    OutOfMemory,
}

/// One range: `byte_count` bytes from `byte_offset` into `pfns[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Bytes.
    pub byte_count: u32,
    /// Offset into the first page.
    pub byte_offset: u32,
    /// The pages.
    pub pfns: Vec<u64>,
}

/// A complete GPADL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpadl {
    /// The offer it belongs to.
    pub child_relid: u32,
    /// Its handle.
    pub handle: u32,
    /// Its ranges.
    pub ranges: Vec<Range>,
}

impl Gpadl {
    /// A copy, or [`GpadlError::OutOfMemory`] if the host has no memory for it
    /// (the copy a guest's OPENCHANNEL causes must not abort the host).
    pub fn try_clone(&self) -> Result<Self, GpadlError> {
        let mut ranges = Vec::new();
        ranges
            .try_reserve_exact(self.ranges.len())
            .map_err(|_| GpadlError::OutOfMemory)?;
        for r in &self.ranges {
            let mut pfns = Vec::new();
            pfns.try_reserve_exact(r.pfns.len())
                .map_err(|_| GpadlError::OutOfMemory)?;
            pfns.extend_from_slice(&r.pfns);
            ranges.push(Range {
                byte_count: r.byte_count,
                byte_offset: r.byte_offset,
                pfns,
            });
        }
        Ok(Self {
            child_relid: self.child_relid,
            handle: self.handle,
            ranges,
        })
    }

    /// All pages in order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|r| r.pfns.iter().copied())
    }

    /// Number of pages.
    pub fn page_count(&self) -> usize {
        self.ranges.iter().map(|r| r.pfns.len()).sum()
    }
}

/// The number of pages a GPADL_HEADER announces: its range stream is
/// `range_count` 8-byte range headers followed by one 8-byte PFN per page, so
/// a GPADL that [`Assembly::finish`] accepts has exactly
/// `(range_buflen - 8 * range_count) / 8` pages. Checked before anything is
/// allocated, so quotas can refuse a GPADL from its header alone.
pub fn declared_pages(header: &GpadlHeader) -> Result<u64, GpadlError> {
    let buflen = header.range_buflen as u64;
    let count = header.range_count as u64;
    // Each range has an 8-byte header and at least one PFN.
    if count == 0 || buflen < count * 16 || !buflen.is_multiple_of(8) {
        return Err(GpadlError::BadHeader);
    }
    Ok((buflen - count * 8) / 8)
}

/// A GPADL being received.
#[derive(Debug, Clone)]
pub struct Assembly {
    child_relid: u32,
    handle: u32,
    range_count: u16,
    range_buflen: usize,
    pages: u64,
    bytes: Vec<u8>,
}

impl Assembly {
    /// Start from a GPADL_HEADER and the range bytes that came with it. The
    /// whole range stream (at most 64 KiB: `range_buflen` is 16 bits) is
    /// reserved here, fallibly, so bodies never allocate.
    pub fn start(header: &GpadlHeader, rest: &[u8]) -> Result<Self, GpadlError> {
        let pages = declared_pages(header)?;
        let buflen = header.range_buflen as usize;
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(buflen)
            .map_err(|_| GpadlError::OutOfMemory)?;
        let take = rest.len().min(buflen);
        bytes.extend_from_slice(&rest[..take]);
        Ok(Self {
            child_relid: header.child_relid,
            handle: header.gpadl,
            range_count: header.range_count,
            range_buflen: buflen,
            pages,
            bytes,
        })
    }

    /// Pages the header announced (see [`declared_pages`]).
    pub fn declared_pages(&self) -> u64 {
        self.pages
    }

    /// The handle being assembled.
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// The offer it belongs to.
    pub fn child_relid(&self) -> u32 {
        self.child_relid
    }

    /// All bytes arrived?
    pub fn is_complete(&self) -> bool {
        self.bytes.len() == self.range_buflen
    }

    /// Add a GPADL_BODY's PFN bytes (extra bytes past the end are ignored).
    pub fn append(&mut self, body: &GpadlBody, pfns: &[u8]) -> Result<(), GpadlError> {
        if body.gpadl != self.handle {
            return Err(GpadlError::WrongHandle);
        }
        if self.is_complete() {
            return Err(GpadlError::AlreadyComplete);
        }
        let take = pfns.len().min(self.range_buflen - self.bytes.len());
        self.bytes.extend_from_slice(&pfns[..take]);
        Ok(())
    }

    /// Parse the complete range stream, with every check. Every PFN must lie
    /// inside a guest of `guest_pages` pages: `pfn < guest_pages` (PFN
    /// `guest_pages` is one past the end). Allocations are fallible
    /// ([`GpadlError::OutOfMemory`]).
    pub fn finish(self, guest_pages: u64) -> Result<Gpadl, GpadlError> {
        if !self.is_complete() {
            return Err(GpadlError::LengthMismatch);
        }
        let b = &self.bytes;
        let mut at = 0usize;
        let mut ranges = Vec::new();
        ranges
            .try_reserve_exact(self.range_count as usize)
            .map_err(|_| GpadlError::OutOfMemory)?;
        let mut total = 0usize;
        for _ in 0..self.range_count {
            let head = b.get(at..at + 8).ok_or(GpadlError::LengthMismatch)?;
            let byte_count = u32::from_le_bytes(head[..4].try_into().expect("4"));
            let byte_offset = u32::from_le_bytes(head[4..].try_into().expect("4"));
            let pages = pages_spanned(byte_offset, byte_count).ok_or(GpadlError::BadRange)?;
            if pages == 0 {
                return Err(GpadlError::BadRange);
            }
            total = total.checked_add(pages).ok_or(GpadlError::TooLarge)?;
            if total > MAX_PAGES {
                return Err(GpadlError::TooLarge);
            }
            let list = b
                .get(at + 8..at + 8 + pages * 8)
                .ok_or(GpadlError::LengthMismatch)?;
            let mut pfns = Vec::new();
            pfns.try_reserve_exact(pages)
                .map_err(|_| GpadlError::OutOfMemory)?;
            pfns.extend(
                list.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8"))),
            );
            if let Some(&bad) = pfns.iter().find(|&&p| p >= guest_pages) {
                return Err(GpadlError::BadPfn(bad));
            }
            ranges.push(Range {
                byte_count,
                byte_offset,
                pfns,
            });
            at += 8 + pages * 8;
        }
        if at != b.len() {
            return Err(GpadlError::LengthMismatch);
        }
        let mut all = Vec::new();
        all.try_reserve_exact(total)
            .map_err(|_| GpadlError::OutOfMemory)?;
        all.extend(ranges.iter().flat_map(|r| r.pfns.iter().copied()));
        all.sort_unstable();
        if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
            return Err(GpadlError::DuplicatePage(w[0]));
        }
        Ok(Gpadl {
            child_relid: self.child_relid,
            handle: self.handle,
            ranges,
        })
    }
}

/// Build the messages a guest sends for one range over `pfns` (whole pages):
/// a GPADL_HEADER carrying up to 26 PFNs, then GPADL_BODYs of up to 28.
pub fn encode(child_relid: u32, handle: u32, pfns: &[u64]) -> Vec<Vec<u8>> {
    use crate::protocol::Header;
    use zerocopy::IntoBytes;
    let mut stream = Vec::with_capacity(8 + pfns.len() * 8);
    stream.extend_from_slice(&((pfns.len() * 4096) as u32).to_le_bytes());
    stream.extend_from_slice(&0u32.to_le_bytes());
    for p in pfns {
        stream.extend_from_slice(&p.to_le_bytes());
    }
    let header = GpadlHeader {
        header: Header::new(GpadlHeader::TYPE),
        child_relid,
        gpadl: handle,
        range_buflen: stream.len() as u16,
        range_count: 1,
    };
    let first = stream.len().min(crate::protocol::MAX_MESSAGE_SIZE - 20);
    let first = first - first % 8;
    let mut out = Vec::new();
    let mut m = header.as_bytes().to_vec();
    m.extend_from_slice(&stream[..first]);
    out.push(m);
    for chunk in stream[first..].chunks(crate::protocol::MAX_MESSAGE_SIZE - 16) {
        let body = GpadlBody {
            header: Header::new(GpadlBody::TYPE),
            msgnumber: 0,
            gpadl: handle,
        };
        let mut m = body.as_bytes().to_vec();
        m.extend_from_slice(chunk);
        out.push(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Message;

    fn assemble(messages: &[Vec<u8>]) -> Result<Gpadl, GpadlError> {
        assemble_in(messages, u64::MAX >> 12)
    }

    fn assemble_in(messages: &[Vec<u8>], guest_pages: u64) -> Result<Gpadl, GpadlError> {
        let mut asm = None;
        for m in messages {
            match Message::parse(m).unwrap() {
                Message::GpadlHeader(h, rest) => asm = Some(Assembly::start(&h, rest)?),
                Message::GpadlBody(b, rest) => asm.as_mut().unwrap().append(&b, rest)?,
                other => panic!("{other:?}"),
            }
        }
        asm.unwrap().finish(guest_pages)
    }

    #[test]
    fn sizes_from_one_page_to_thousands() {
        for n in [1usize, 26, 27, 28 + 26, 55, 1000, 1024, 4096] {
            let pfns: Vec<u64> = (0..n as u64).map(|i| 0x1000 + i * 3).collect();
            let msgs = encode(5, 0xE1E10, &pfns);
            let expected_bodies = (n.saturating_sub(26)).div_ceil(28);
            assert_eq!(msgs.len(), 1 + expected_bodies, "n = {n}");
            assert!(msgs.iter().all(|m| m.len() <= 240));
            let g = assemble(&msgs).unwrap();
            assert_eq!(g.page_count(), n);
            assert!(g.pages().eq(pfns.iter().copied()));
            assert_eq!((g.child_relid, g.handle), (5, 0xE1E10));
        }
    }

    #[test]
    fn malformed_gpadls_are_refused() {
        let msgs = encode(1, 9, &[10, 11, 12]);
        // Duplicate page.
        let dup = encode(1, 9, &[10, 11, 10]);
        assert_eq!(assemble(&dup), Err(GpadlError::DuplicatePage(10)));
        // PFN beyond the address space.
        let mut asm = match Message::parse(&msgs[0]).unwrap() {
            Message::GpadlHeader(h, rest) => Assembly::start(&h, rest).unwrap(),
            _ => unreachable!(),
        };
        assert!(asm.is_complete());
        let body = GpadlBody {
            header: crate::protocol::Header::new(GpadlBody::TYPE),
            msgnumber: 0,
            gpadl: 9,
        };
        assert_eq!(asm.append(&body, &[0; 8]), Err(GpadlError::AlreadyComplete));
        assert_eq!(asm.clone().finish(11), Err(GpadlError::BadPfn(11)));
        // Wrong handle in a body.
        let big = encode(1, 9, &(0..40).collect::<Vec<u64>>());
        let mut asm = match Message::parse(&big[0]).unwrap() {
            Message::GpadlHeader(h, rest) => Assembly::start(&h, rest).unwrap(),
            _ => unreachable!(),
        };
        let other = GpadlBody {
            header: crate::protocol::Header::new(GpadlBody::TYPE),
            msgnumber: 0,
            gpadl: 8,
        };
        assert_eq!(asm.append(&other, &[0; 8]), Err(GpadlError::WrongHandle));
        assert_eq!(
            asm.finish(u64::MAX),
            Err(GpadlError::LengthMismatch),
            "incomplete"
        );
        // Header lies: zero ranges, or a byte count needing more pages than sent.
        let h = GpadlHeader {
            header: crate::protocol::Header::new(GpadlHeader::TYPE),
            child_relid: 1,
            gpadl: 2,
            range_buflen: 16,
            range_count: 0,
        };
        assert_eq!(Assembly::start(&h, &[]).unwrap_err(), GpadlError::BadHeader);
        let mut stream = Vec::new();
        stream.extend_from_slice(&8192u32.to_le_bytes());
        stream.extend_from_slice(&0u32.to_le_bytes());
        stream.extend_from_slice(&1u64.to_le_bytes());
        let h = GpadlHeader {
            range_buflen: 16,
            range_count: 1,
            ..h
        };
        assert_eq!(
            Assembly::start(&h, &stream).unwrap().finish(u64::MAX),
            Err(GpadlError::LengthMismatch)
        );
        // Offset outside the first page.
        stream[4..8].copy_from_slice(&4096u32.to_le_bytes());
        assert_eq!(
            Assembly::start(&h, &stream).unwrap().finish(u64::MAX),
            Err(GpadlError::BadRange)
        );
    }

    #[test]
    fn pfn_equal_to_guest_pages_is_one_past_the_end() {
        // A guest of 16 pages owns PFNs 0..=15.
        let last = encode(1, 3, &[14, 15]);
        assert!(assemble_in(&last, 16).is_ok(), "the last page is inside");
        let past = encode(1, 3, &[14, 16]);
        assert_eq!(assemble_in(&past, 16), Err(GpadlError::BadPfn(16)));
    }

    #[test]
    fn declared_pages_come_from_the_header_alone() {
        let msgs = encode(1, 9, &(0..100).collect::<Vec<u64>>());
        let Message::GpadlHeader(h, rest) = Message::parse(&msgs[0]).unwrap() else {
            unreachable!()
        };
        assert_eq!(declared_pages(&h), Ok(100));
        assert_eq!(Assembly::start(&h, rest).unwrap().declared_pages(), 100);
        let g = assemble(&msgs).unwrap();
        assert_eq!(g.try_clone(), Ok(g.clone()));
    }

    proptest::proptest! {
        #[test]
        fn assembly_never_panics(
            buflen in 0u16..600, count in 0u16..8,
            head in proptest::collection::vec(proptest::num::u8::ANY, 0..220),
            bodies in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..224), 0..4),
        ) {
            let h = GpadlHeader { header: crate::protocol::Header::new(GpadlHeader::TYPE), child_relid: 1, gpadl: 2, range_buflen: buflen, range_count: count };
            if let Ok(mut a) = Assembly::start(&h, &head) {
                let body = GpadlBody { header: crate::protocol::Header::new(GpadlBody::TYPE), msgnumber: 0, gpadl: 2 };
                for b in &bodies {
                    let _ = a.append(&body, b);
                }
                let _ = a.finish(u64::MAX >> 12);
            }
        }
    }
}
