//! Packets inside a ring (`vmpacket_descriptor` and friends; vmbus-wire.md §4,
//! Linux `include/linux/hyperv.h`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `vmpacket_descriptor` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Descriptor {
    /// [`PacketType`] value.
    pub kind: u16,
    /// Payload start in 8-byte units from the descriptor (>= 2).
    pub offset8: u16,
    /// Whole packet length in 8-byte units, trailer excluded.
    pub len8: u16,
    /// Bit 0: completion requested.
    pub flags: u16,
    /// Transaction id (echoed in full by completions).
    pub transaction_id: u64,
}
const _: () = assert!(size_of::<Descriptor>() == 16);

/// Packet types (`enum vmbus_packet_type`). Open: any value is representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketType(pub u16);

impl PacketType {
    /// In-band data.
    pub const DATA_INBAND: Self = Self(6);
    /// Data in transfer pages (host → guest receive buffers).
    pub const DATA_USING_XFER_PAGES: Self = Self(7);
    /// Data described by GPA ranges.
    pub const DATA_USING_GPA_DIRECT: Self = Self(9);
    /// A completion of an earlier packet.
    pub const COMPLETION: Self = Self(11);
}

/// Descriptor flag: the sender wants a completion with the same transaction id.
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;

/// Why a packet from the peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// offset8 below 2, or past len8.
    BadOffset {
        /// offset8.
        offset8: u16,
        /// len8.
        len8: u16,
    },
    /// A flag other than completion-requested.
    BadFlags(u16),
    /// A type hv's VMBus does not carry.
    UnknownType(u16),
    /// An extended header (ranges) runs past the payload start.
    BadRanges,
}

impl Descriptor {
    /// Build a descriptor for a payload of `payload_len` bytes after `header_len`
    /// bytes of descriptor (+ extended header).
    pub fn new(
        kind: PacketType,
        header_len: usize,
        payload_len: usize,
        flags: u16,
        transaction_id: u64,
    ) -> Self {
        let offset8 = header_len.div_ceil(8) as u16;
        let len8 = (header_len.div_ceil(8) * 8 + payload_len).div_ceil(8) as u16;
        Self {
            kind: kind.0,
            offset8,
            len8,
            flags,
            transaction_id,
        }
    }

    /// Check what a peer sent.
    pub fn validate(&self) -> Result<PacketType, PacketError> {
        if self.offset8 < 2 || self.offset8 > self.len8 {
            return Err(PacketError::BadOffset {
                offset8: self.offset8,
                len8: self.len8,
            });
        }
        if self.flags & !FLAG_COMPLETION_REQUESTED != 0 {
            return Err(PacketError::BadFlags(self.flags));
        }
        let kind = PacketType(self.kind);
        match kind {
            PacketType::DATA_INBAND
            | PacketType::DATA_USING_XFER_PAGES
            | PacketType::DATA_USING_GPA_DIRECT
            | PacketType::COMPLETION => Ok(kind),
            _ => Err(PacketError::UnknownType(self.kind)),
        }
    }

    /// The descriptor of the completion that answers this request: type
    /// COMPLETION, no flags, and the request's transaction id in all 64 bits
    /// (vmbus-wire.md §4.1; Linux storvsc tags requests with ids near
    /// `U64_MAX`, and `hv_pkt_iter`'s users match completions on the full
    /// id), for `payload_len` bytes after the 16-byte descriptor. `None` if
    /// the request did not set [`FLAG_COMPLETION_REQUESTED`]: nobody waits
    /// for one then.
    pub fn completion(&self, payload_len: usize) -> Option<Self> {
        (self.flags & FLAG_COMPLETION_REQUESTED != 0)
            .then(|| Self::new(PacketType::COMPLETION, 16, payload_len, 0, self.transaction_id))
    }

    /// Packet length in bytes (trailer excluded).
    pub fn len(&self) -> usize {
        self.len8 as usize * 8
    }

    /// True for a zero-length packet (never valid).
    pub fn is_empty(&self) -> bool {
        self.len8 == 0
    }

    /// Payload range within the packet.
    pub fn payload(&self) -> core::ops::Range<usize> {
        self.offset8 as usize * 8..self.len()
    }
}

/// One GPA range of a GPA-direct packet: `byte_count` bytes from
/// `byte_offset` into the first of `pfns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpaRange<'a> {
    /// Bytes.
    pub byte_count: u32,
    /// Offset into the first page.
    pub byte_offset: u32,
    /// Page frame numbers, little-endian u64 each.
    pub pfns: &'a [u8],
}

impl GpaRange<'_> {
    /// Number of pages the range spans.
    pub fn page_count(&self) -> usize {
        self.pfns.len() / 8
    }

    /// PFN `i`.
    pub fn pfn(&self, i: usize) -> Option<u64> {
        self.pfns
            .get(i * 8..i * 8 + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

/// Pages spanned by `count` bytes starting `offset` into a page.
pub fn pages_spanned(offset: u32, count: u32) -> Option<usize> {
    if offset >= 4096 {
        return None;
    }
    Some(((offset as u64 + count as u64).div_ceil(4096)) as usize)
}

/// Parse `range_count` GPA ranges from `bytes` (the extended header after
/// `{reserved u32, range_count u32}`), all of which must fit.
pub fn parse_gpa_ranges(
    bytes: &[u8],
    range_count: u32,
) -> Result<alloc::vec::Vec<GpaRange<'_>>, PacketError> {
    let mut out = alloc::vec::Vec::new();
    let mut at = 0usize;
    for _ in 0..range_count {
        let head = bytes.get(at..at + 8).ok_or(PacketError::BadRanges)?;
        let byte_count = u32::from_le_bytes(head[..4].try_into().expect("4"));
        let byte_offset = u32::from_le_bytes(head[4..].try_into().expect("4"));
        let pages = pages_spanned(byte_offset, byte_count).ok_or(PacketError::BadRanges)?;
        let pfn_bytes = pages.checked_mul(8).ok_or(PacketError::BadRanges)?;
        let pfns = bytes
            .get(at + 8..at + 8 + pfn_bytes)
            .ok_or(PacketError::BadRanges)?;
        out.push(GpaRange {
            byte_count,
            byte_offset,
            pfns,
        });
        at += 8 + pfn_bytes;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_sizes_and_validation() {
        let d = Descriptor::new(
            PacketType::DATA_INBAND,
            16,
            13,
            FLAG_COMPLETION_REQUESTED,
            u64::MAX - 2,
        );
        assert_eq!((d.offset8, d.len8), (2, 4));
        assert_eq!(d.payload(), 16..32);
        assert_eq!(d.validate(), Ok(PacketType::DATA_INBAND));
        let mut bad = d;
        bad.offset8 = 1;
        assert!(bad.validate().is_err());
        bad.offset8 = 5;
        assert!(bad.validate().is_err());
        let mut bad = d;
        bad.flags = 2;
        assert_eq!(bad.validate(), Err(PacketError::BadFlags(2)));
        let mut bad = d;
        bad.kind = 8;
        assert_eq!(bad.validate(), Err(PacketError::UnknownType(8)));
    }

    #[test]
    fn completions_echo_the_whole_transaction_id() {
        let req = Descriptor::new(
            PacketType::DATA_INBAND,
            16,
            4,
            FLAG_COMPLETION_REQUESTED,
            u64::MAX - 2,
        );
        let c = req.completion(8).unwrap();
        assert_eq!(c.validate(), Ok(PacketType::COMPLETION));
        assert_eq!((c.transaction_id, c.flags, c.len()), (u64::MAX - 2, 0, 24));
        let no = Descriptor::new(PacketType::DATA_INBAND, 16, 4, 0, 1);
        assert_eq!(no.completion(8), None);
    }

    #[test]
    fn gpa_ranges() {
        let mut b = alloc::vec::Vec::new();
        b.extend_from_slice(&5000u32.to_le_bytes());
        b.extend_from_slice(&100u32.to_le_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        b.extend_from_slice(&9u64.to_le_bytes());
        let r = parse_gpa_ranges(&b, 1).unwrap();
        assert_eq!(r[0].page_count(), 2);
        assert_eq!(r[0].pfn(1), Some(9));
        assert_eq!(parse_gpa_ranges(&b, 2), Err(PacketError::BadRanges));
        assert_eq!(parse_gpa_ranges(&b[..20], 1), Err(PacketError::BadRanges));
        assert_eq!(pages_spanned(4096, 1), None);
        assert_eq!(pages_spanned(4095, 2), Some(2));
    }

    proptest::proptest! {
        #[test]
        fn range_parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200), n in 0u32..20) {
            let _ = parse_gpa_ranges(&bytes, n);
        }
    }
}
