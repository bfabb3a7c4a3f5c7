//! VMBus transfer-page packets (`VM_PKT_DATA_USING_XFER_PAGES`, type 7):
//! the 16-byte descriptor, then `vmtransfer_page_packet_header`'s
//! `xfer_pageset_id` u16, `sender_owns_set` u8, a reserved u8 and
//! `range_cnt` u32, then `range_cnt` `{byte_count, byte_offset}` u32 pairs
//! — 24 + 8n bytes in all (Linux `include/linux/hyperv.h`; checked with
//! gcc) — and then the payload (for netvsc: an NVSP `SEND_RNDIS_PACKET`).
//! The ranges name bytes of the buffer registered under `xfer_pageset_id`
//! (netvsc's receive buffer, id 0xCAFE). The host sets "completion
//! requested"; the guest completes with the packet's transaction id.
//!
//! **This module belongs in `vmbus::packet`** (which today has only the type
//! constant). It depends only on `vmbus::packet::{Descriptor, PacketType}`
//! so it can move there unchanged; until then netvsp and netvsc use it from
//! here.
//!
//! Linux's checks on receipt (`netvsc_receive`): `offset8 * 8 >= 24`,
//! `xfer_pageset_id == 0xCAFE`, `24 + 8 * range_cnt <= offset8 * 8`, each
//! range inside the receive buffer and no longer than a receive section.

use alloc::vec::Vec;
use vmbus::packet::{Descriptor, FLAG_COMPLETION_REQUESTED, PacketType};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Bytes of the descriptor plus the fixed part of the header.
pub const HEADER_SIZE: usize = 24;

/// The most ranges a packet may carry: Linux accepts up to
/// `NETVSC_MAX_XFER_PAGE_RANGES` = `NVSP_RSC_MAX` = 562 (`hyperv_net.h`).
pub const MAX_RANGES: usize = 562;

/// The fixed part of `vmtransfer_page_packet_header` after the descriptor.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct TransferPageHeader {
    /// Id of the buffer the ranges point into (`xfer_pageset_id`).
    pub pageset_id: U16,
    /// `sender_owns_set` (0).
    pub sender_owns_set: u8,
    /// Reserved (0).
    pub reserved: u8,
    /// Number of ranges that follow (`range_cnt`).
    pub range_count: U32,
}
const _: () = assert!(size_of::<TransferPageHeader>() == 8);
const _: () = assert!(size_of::<Descriptor>() + size_of::<TransferPageHeader>() == HEADER_SIZE);

/// `struct vmtransfer_page_range`: `byte_count` bytes at `byte_offset` of
/// the page set.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct TransferPageRange {
    /// Bytes.
    pub byte_count: U32,
    /// Offset into the page set.
    pub byte_offset: U32,
}
const _: () = assert!(size_of::<TransferPageRange>() == 8);

impl TransferPageRange {
    /// A range of `byte_count` bytes at `byte_offset`.
    pub fn new(byte_offset: u32, byte_count: u32) -> Self {
        Self {
            byte_count: byte_count.into(),
            byte_offset: byte_offset.into(),
        }
    }
}

/// Bytes of descriptor + header + `ranges` ranges (24 + 8n).
pub const fn header_len(ranges: usize) -> usize {
    HEADER_SIZE + 8 * ranges
}

/// Why a transfer-page packet cannot be built or was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferPageError {
    /// No ranges, or more than [`MAX_RANGES`] (host bug when building; peer
    /// fault when parsing).
    RangeCount(usize),
    /// The packet would exceed VMBus's 16-bit length in 8-byte units (host
    /// bug).
    TooLarge(usize),
    /// Fewer bytes than a descriptor (peer fault).
    Short(usize),
    /// The descriptor is not a transfer-page packet or its offsets are
    /// inconsistent (peer fault).
    BadDescriptor,
    /// `offset8` leaves no room for the header and its ranges (peer fault).
    RangesPastHeader {
        /// Ranges claimed.
        range_count: u32,
        /// `offset8 * 8`.
        header_bytes: usize,
    },
}

/// The bytes of a whole transfer-page packet (descriptor first, payload
/// zero-padded to 8) ready for the ring writer: type 7, completion
/// requested, `transaction_id`, `pageset_id`, `ranges`, then `payload`.
pub fn build(
    transaction_id: u64,
    pageset_id: u16,
    ranges: &[TransferPageRange],
    payload: &[u8],
) -> Result<Vec<u8>, TransferPageError> {
    if ranges.is_empty() || ranges.len() > MAX_RANGES {
        return Err(TransferPageError::RangeCount(ranges.len()));
    }
    let header = header_len(ranges.len());
    let total = (header + payload.len()).next_multiple_of(8);
    if total / 8 > u16::MAX as usize {
        return Err(TransferPageError::TooLarge(total));
    }
    let d = Descriptor::new(
        PacketType::DATA_USING_XFER_PAGES,
        header,
        payload.len(),
        FLAG_COMPLETION_REQUESTED,
        transaction_id,
    );
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(d.as_bytes());
    out.extend_from_slice(
        TransferPageHeader {
            pageset_id: pageset_id.into(),
            sender_owns_set: 0,
            reserved: 0,
            range_count: (ranges.len() as u32).into(),
        }
        .as_bytes(),
    );
    for r in ranges {
        out.extend_from_slice(r.as_bytes());
    }
    out.extend_from_slice(payload);
    out.resize(total, 0);
    Ok(out)
}

/// A parsed transfer-page packet (guest side, and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferPagePacket<'a> {
    /// The descriptor.
    pub descriptor: Descriptor,
    /// The fixed header.
    pub header: TransferPageHeader,
    /// The ranges (each still to be checked against the page set).
    pub ranges: Vec<TransferPageRange>,
    /// The payload (from `offset8 * 8` to `len8 * 8`, as far as `bytes`
    /// holds).
    pub payload: &'a [u8],
}

/// Parse a whole transfer-page packet (descriptor first) from untrusted
/// bytes, with Linux's checks: type 7, a valid descriptor, the header and
/// `range_count` ranges within `offset8 * 8`, at most [`MAX_RANGES`].
pub fn parse(bytes: &[u8]) -> Result<TransferPagePacket<'_>, TransferPageError> {
    let (descriptor, _) =
        Descriptor::read_from_prefix(bytes).map_err(|_| TransferPageError::Short(bytes.len()))?;
    match descriptor.validate() {
        Ok(PacketType::DATA_USING_XFER_PAGES) => {}
        _ => return Err(TransferPageError::BadDescriptor),
    }
    let header_bytes = descriptor.offset8 as usize * 8;
    let (header, _) = bytes
        .get(16..)
        .and_then(|b| TransferPageHeader::read_from_prefix(b).ok())
        .filter(|_| header_bytes >= HEADER_SIZE)
        .ok_or(TransferPageError::BadDescriptor)?;
    let range_count = header.range_count.get();
    let n = range_count as usize;
    if n == 0 || n > MAX_RANGES {
        return Err(TransferPageError::RangeCount(n));
    }
    if header_len(n) > header_bytes || header_bytes > bytes.len() {
        return Err(TransferPageError::RangesPastHeader {
            range_count,
            header_bytes,
        });
    }
    let ranges = <[TransferPageRange]>::ref_from_bytes(&bytes[HEADER_SIZE..header_len(n)])
        .map_err(|_| TransferPageError::BadDescriptor)?
        .to_vec();
    let end = descriptor.len().min(bytes.len());
    let payload = bytes.get(header_bytes..end).unwrap_or(&[]);
    Ok(TransferPagePacket {
        descriptor,
        header,
        ranges,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_24_plus_8n() {
        let payload = crate::send_rndis_packet(crate::CHANNEL_TYPE_DATA);
        let ranges = [
            TransferPageRange::new(1806 * 3, 1558),
            TransferPageRange::new(0, 60),
        ];
        let p = build(7, 0xCAFE, &ranges, &payload).unwrap();
        assert_eq!(p.len(), 24 + 16 + 40);
        // Descriptor: type 7, offset8 = (24 + 16) / 8, len8, flags 1, tid.
        assert_eq!(&p[..8], &[7, 0, 5, 0, 10, 0, 1, 0]);
        assert_eq!(u64::from_le_bytes(p[8..16].try_into().unwrap()), 7);
        // Header: pageset id, sender_owns_set, reserved, range count.
        assert_eq!(&p[16..24], &[0xFE, 0xCA, 0, 0, 2, 0, 0, 0]);
        // Ranges: byte_count then byte_offset.
        assert_eq!(&p[24..32], &[0x16, 6, 0, 0, 0x2A, 0x15, 0, 0]);
        assert_eq!(&p[40..44], &[107, 0, 0, 0]);
        let q = parse(&p).unwrap();
        assert_eq!(q.header.pageset_id.get(), 0xCAFE);
        assert_eq!(q.ranges, ranges);
        assert_eq!(q.payload, &payload[..]);
        assert_eq!(header_len(1), 32);
    }

    #[test]
    fn refused() {
        assert_eq!(build(1, 0, &[], &[]), Err(TransferPageError::RangeCount(0)));
        let many = alloc::vec![TransferPageRange::new(0, 1); MAX_RANGES + 1];
        assert_eq!(
            build(1, 0, &many, &[]),
            Err(TransferPageError::RangeCount(MAX_RANGES + 1))
        );
        assert!(build(1, 0, &many[..MAX_RANGES], &[0; 40]).is_ok());
        assert!(matches!(
            build(1, 0, &many[..1], &[0; 600_000]),
            Err(TransferPageError::TooLarge(_))
        ));

        let good = build(1, 0xCAFE, &[TransferPageRange::new(0, 1)], &[0; 8]).unwrap();
        assert_eq!(parse(&good[..10]), Err(TransferPageError::Short(10)));
        // A range count past offset8.
        let mut bad = good.clone();
        bad[20..24].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            parse(&bad),
            Err(TransferPageError::RangesPastHeader { range_count: 2, .. })
        ));
        bad[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&bad), Err(TransferPageError::RangeCount(_))));
        // offset8 too small for the header.
        let mut bad = good.clone();
        bad[2] = 2;
        assert_eq!(parse(&bad), Err(TransferPageError::BadDescriptor));
        // Not type 7.
        let mut bad = good;
        bad[0] = 6;
        assert_eq!(parse(&bad), Err(TransferPageError::BadDescriptor));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn build_parse_round_trip(
            tid in proptest::prelude::any::<u64>(),
            id in proptest::prelude::any::<u16>(),
            ranges in proptest::collection::vec((proptest::prelude::any::<u32>(), proptest::prelude::any::<u32>()), 1..20),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let ranges: Vec<_> = ranges.into_iter().map(|(o, c)| TransferPageRange::new(o, c)).collect();
            let p = build(tid, id, &ranges, &payload).unwrap();
            proptest::prop_assert_eq!(p.len() % 8, 0);
            let q = parse(&p).unwrap();
            proptest::prop_assert_eq!(q.descriptor.transaction_id, tid);
            proptest::prop_assert_eq!(q.header.pageset_id.get(), id);
            proptest::prop_assert_eq!(&q.ranges, &ranges);
            proptest::prop_assert_eq!(&q.payload[..payload.len()], &payload[..]);
        }
    }
}
