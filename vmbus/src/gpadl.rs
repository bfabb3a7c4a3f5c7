//! GPADLs: guest physical address descriptor lists, sent as one GPADL_HEADER
//! and as many GPADL_BODY messages as needed (vmbus-wire.md §2.3; Linux
//! `drivers/hv/channel.c` `create_gpadl_header`). The range byte stream is
//! complete once `range_buflen` bytes have arrived.

use crate::packet::pages_spanned;
use crate::protocol::{GpadlBody, GpadlHeader};
use alloc::vec::Vec;

/// Largest GPADL accepted: 256 MiB of pages.
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
    /// A page number beyond the physical address space.
    BadPfn(u64),
    /// A body for another handle.
    WrongHandle,
    /// Bodies after the GPADL was complete.
    AlreadyComplete,
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
    /// All pages in order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|r| r.pfns.iter().copied())
    }

    /// Number of pages.
    pub fn page_count(&self) -> usize {
        self.ranges.iter().map(|r| r.pfns.len()).sum()
    }
}

/// A GPADL being received.
#[derive(Debug, Clone)]
pub struct Assembly {
    child_relid: u32,
    handle: u32,
    range_count: u16,
    range_buflen: usize,
    bytes: Vec<u8>,
}

impl Assembly {
    /// Start from a GPADL_HEADER and the range bytes that came with it.
    pub fn start(header: &GpadlHeader, rest: &[u8]) -> Result<Self, GpadlError> {
        let buflen = header.range_buflen as usize;
        let count = header.range_count as usize;
        // Each range has an 8-byte header and at least one PFN.
        if count == 0 || buflen < count * 16 || !buflen.is_multiple_of(8) {
            return Err(GpadlError::BadHeader);
        }
        let take = rest.len().min(buflen);
        Ok(Self {
            child_relid: header.child_relid,
            handle: header.gpadl,
            range_count: header.range_count,
            range_buflen: buflen,
            bytes: rest[..take].to_vec(),
        })
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

    /// Parse the complete range stream, with every check.
    pub fn finish(self, max_pfn: u64) -> Result<Gpadl, GpadlError> {
        if !self.is_complete() {
            return Err(GpadlError::LengthMismatch);
        }
        let b = &self.bytes;
        let mut at = 0usize;
        let mut ranges = Vec::with_capacity(self.range_count as usize);
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
            let pfns: Vec<u64> = list
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
                .collect();
            if let Some(&bad) = pfns.iter().find(|&&p| p > max_pfn) {
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
        let mut all: Vec<u64> = ranges.iter().flat_map(|r| r.pfns.iter().copied()).collect();
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
        let mut asm = None;
        for m in messages {
            match Message::parse(m).unwrap() {
                Message::GpadlHeader(h, rest) => asm = Some(Assembly::start(&h, rest)?),
                Message::GpadlBody(b, rest) => asm.as_mut().unwrap().append(&b, rest)?,
                other => panic!("{other:?}"),
            }
        }
        asm.unwrap().finish(u64::MAX >> 12)
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
        assert_eq!(asm.clone().finish(11), Err(GpadlError::BadPfn(12)));
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
