//! Host tests: sizes and offsets against Linux 6.1 `storvsc_drv.c`, the
//! init exchange as Linux sends it, SRB parsing refusals, completion bytes
//! as `storvsc_on_io_completion` reads them, and GPA-range chunking.

use super::gpa::*;
use super::*;
use proptest::prelude::*;

const LIMITS: SrbLimits = SrbLimits {
    version: ProtocolVersion::WIN10,
    max_transfer_bytes: 0x40000,
};

#[test]
fn sizes_and_offsets_match_linux() {
    assert_eq!(size_of::<VstorPacket>(), 64);
    assert_eq!(size_of::<ScsiRequest>(), 52);
    assert_eq!(WIN8_EXTENSION_LEN, 16);
    assert_eq!(ProtocolVersion::WIN8.packet_len(), 64);
    assert_eq!(ProtocolVersion::WIN7.packet_len(), 48);
    assert_eq!(ProtocolVersion::WIN7.sense_buffer_size(), 0x12);
    assert_eq!(ProtocolVersion::WIN10.sense_buffer_size(), 0x14);
    assert_eq!(core::mem::offset_of!(ScsiRequest, cdb_length), 8);
    assert_eq!(core::mem::offset_of!(ScsiRequest, data), 16);
    assert_eq!(core::mem::offset_of!(ScsiRequest, srb_flags), 40);
    assert_eq!(core::mem::offset_of!(ChannelProperties, max_transfer_bytes), 12);
    assert_eq!(ProtocolVersion::new(6, 2), ProtocolVersion::WIN10);
    assert_eq!(
        (ProtocolVersion::WIN8_1.major(), ProtocolVersion::WIN8_1.minor()),
        (6, 0)
    );
    // Wire GUID of HV_SCSI_GUID.
    assert_eq!(&SCSI_INTERFACE_GUID[..4], &[0xd9, 0x63, 0x61, 0xba]);
    assert_eq!(
        &SCSI_INTERFACE_GUID[8..],
        &[0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1, 0xdc, 0x7f]
    );
}

#[test]
fn linux_init_sequence_parses() {
    let p = parse_packet(&request_packet(Operation::BEGIN_INITIALIZATION, &[]), &LIMITS).unwrap();
    assert_eq!(p.request, Request::BeginInitialization);
    assert_eq!((p.flags, p.request_size), (REQUEST_COMPLETION_FLAG, 52));
    for v in [0x0602u16, 0x0600, 0x0501] {
        let p = parse_packet(
            &request_packet(Operation::QUERY_PROTOCOL_VERSION, &v.to_le_bytes()),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(p.request, Request::QueryProtocolVersion(ProtocolVersion(v)));
        assert_eq!(
            negotiate(ProtocolVersion(v), &HOST_VERSIONS),
            Ok(ProtocolVersion(v))
        );
    }
    assert!(negotiate(ProtocolVersion::WIN7, &HOST_VERSIONS).is_err());
    let p = parse_packet(&request_packet(Operation::QUERY_PROPERTIES, &[]), &LIMITS).unwrap();
    assert_eq!(p.request, Request::QueryProperties);
    let p = parse_packet(
        &request_packet(Operation::CREATE_SUB_CHANNELS, &3u16.to_le_bytes()),
        &LIMITS,
    )
    .unwrap();
    assert_eq!(p.request, Request::CreateSubChannels(3));
    let p = parse_packet(&request_packet(Operation::END_INITIALIZATION, &[]), &LIMITS).unwrap();
    assert_eq!(p.request, Request::EndInitialization);
}

#[test]
fn completions_are_what_linux_reads() {
    let c = version_completion(52, ProtocolVersion::WIN10, true);
    assert_eq!(c.len(), 64);
    assert_eq!(&c[..4], &1u32.to_le_bytes()); // COMPLETE_IO
    assert_eq!(&c[4..8], &0u32.to_le_bytes()); // flags
    assert_eq!(&c[8..12], &0u32.to_le_bytes()); // status 0 = accepted
    assert_eq!(&c[12..14], &0x0602u16.to_le_bytes());
    let c = version_completion(52, ProtocolVersion::WIN7, false);
    assert_eq!(&c[8..12], &0xC000_0059u32.to_le_bytes());
    // A 48-byte (pre-win8) request gets a 48-byte answer.
    assert_eq!(version_completion(36, ProtocolVersion::WIN7, false).len(), 48);
    let c = properties_completion(52, 7, 0x40000);
    let (props, _) = ChannelProperties::read_from_prefix(&c[12..]).unwrap();
    assert_eq!(props.max_channel_count.get(), 7);
    assert_eq!(props.flags.get(), STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL);
    assert_eq!(props.max_transfer_bytes.get(), 0x40000);
    assert_eq!(channel_properties(0, 1).flags.get(), 0);
}

#[test]
fn srb_round_trip_and_completion() {
    let req = scsi_request(1, &[0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0], DataDirection::In, 4096);
    let bytes = request_packet(Operation::EXECUTE_SRB, req.as_bytes());
    let p = parse_packet(&bytes, &LIMITS).unwrap();
    let Request::ExecuteSrb(srb) = p.request else {
        panic!("{p:?}")
    };
    assert_eq!(srb.cdb(), &[0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0]);
    assert_eq!(srb.direction, DataDirection::In);
    assert_eq!(srb.data_transfer_length(), 4096);
    assert_eq!(srb.address(), (0, 0, 1));

    // GOOD with a short transfer: SUCCESS and the count.
    let ok = SrbResult::from_scsi(ScsiStatus::GOOD, &[], 512);
    let c = srb_completion(p.request_size, &srb.request, &ok);
    assert_eq!(c.len(), 64);
    let (s, _) = ScsiRequest::read_from_prefix(&c[12..]).unwrap();
    assert_eq!(
        (s.srb_status, s.scsi_status, s.data_transfer_length.get()),
        (1, 0, 512)
    );
    assert_eq!((s.lun, s.sense_info_length), (1, 0));

    // CHECK CONDITION / ILLEGAL REQUEST: autosense, sense copied, 0 moved.
    let mut sense = [0u8; 18];
    sense[0] = 0x70;
    sense[2] = 0x05;
    sense[7] = 10;
    sense[12] = 0x20;
    let bad = SrbResult::from_scsi(ScsiStatus::CHECK_CONDITION, &sense, 100);
    let c = srb_completion(52, &srb.request, &bad);
    let (s, _) = ScsiRequest::read_from_prefix(&c[12..]).unwrap();
    assert_eq!(s.srb_status, 0x86); // INVALID_REQUEST | AUTOSENSE_VALID
    assert_eq!(s.scsi_status, 2);
    assert_eq!(s.sense_info_length, 18);
    assert_eq!(&s.data[..18], &sense);
    assert_eq!(s.data_transfer_length.get(), 0);
    assert_eq!(&c[8..12], &NtStatus::IO_DEVICE_ERROR.0.to_le_bytes());
    // A medium error is ERROR | AUTOSENSE.
    sense[2] = 0x03;
    let c = srb_completion(
        52,
        &srb.request,
        &SrbResult::from_scsi(ScsiStatus::CHECK_CONDITION, &sense, 0),
    );
    assert_eq!(c[12 + 2], 0x84);
    assert_eq!(SrbStatus(0x84).status(), SrbStatus::ERROR);
    assert!(SrbStatus(0x84).autosense_valid());
}

#[test]
fn srb_refusals() {
    let short = request_packet(Operation::EXECUTE_SRB, &[]);
    assert_eq!(
        parse_packet(&short[..40], &LIMITS),
        Err(ParseError::ShortSrb { len: 28, need: 52 })
    );
    assert_eq!(
        parse_packet(&short[..5], &LIMITS),
        Err(ParseError::ShortPacket { len: 5, need: 12 })
    );
    // A pre-win8 version accepts a 36-byte SRB.
    let old = SrbLimits {
        version: ProtocolVersion::WIN7,
        ..LIMITS
    };
    let mut r = scsi_request(0, &[0], DataDirection::Unspecified, 0);
    let p = parse_packet(&request_packet(Operation::EXECUTE_SRB, r.as_bytes())[..48], &old).unwrap();
    assert_eq!(p.request_size, 36);
    r.cdb_length = 17;
    let b = request_packet(Operation::EXECUTE_SRB, r.as_bytes());
    assert_eq!(parse_packet(&b, &LIMITS), Err(ParseError::BadCdbLength(17)));
    r.cdb_length = 0;
    let b = request_packet(Operation::EXECUTE_SRB, r.as_bytes());
    assert_eq!(parse_packet(&b, &LIMITS), Err(ParseError::BadCdbLength(0)));
    r.cdb_length = 6;
    r.data_in = 3;
    let b = request_packet(Operation::EXECUTE_SRB, r.as_bytes());
    assert_eq!(parse_packet(&b, &LIMITS), Err(ParseError::BadDataDirection(3)));
    r.data_in = 1;
    r.data_transfer_length = 0x40001.into();
    let b = request_packet(Operation::EXECUTE_SRB, r.as_bytes());
    assert_eq!(
        parse_packet(&b, &LIMITS),
        Err(ParseError::TransferTooLong {
            len: 0x40001,
            max: 0x40000
        })
    );
    for op in [
        Operation::COMPLETE_IO,
        Operation::ENUMERATE_BUS,
        Operation::REMOVE_DEVICE,
        Operation(99),
    ] {
        assert_eq!(
            parse_packet(&request_packet(op, &[]), &LIMITS),
            Err(ParseError::UnexpectedOperation(op))
        );
    }
    let b = request_packet(Operation::CREATE_SUB_CHANNELS, &[]);
    assert_eq!(
        parse_packet(&b[..13], &LIMITS),
        Err(ParseError::ShortPacket { len: 13, need: 14 })
    );
}

#[test]
fn gpa_direct_as_linux_sends_it() {
    // 5000 bytes starting 100 bytes into page 7, continuing on page 9.
    let srb = request_packet(Operation::EXECUTE_SRB, &[]);
    let (bytes, offset8) = build_gpa_direct(&[(100, 5000, &[7, 9])], &srb);
    assert_eq!(offset8, (16 + 8 + 8 + 16) / 8);
    for o in [Some(offset8), None] {
        let g = parse_gpa_direct(&bytes, o).unwrap();
        assert_eq!(g.data, &srb[..]);
        assert_eq!(g.ranges.len(), 1);
    }
    assert_eq!(
        parse_gpa_direct(&bytes, Some(offset8 - 1)),
        Err(BufferError::BadDataOffset { offset8: offset8 - 1 })
    );
    assert_eq!(
        parse_gpa_direct(&bytes, Some(1)),
        Err(BufferError::BadDataOffset { offset8: 1 })
    );
    assert_eq!(
        parse_gpa_direct(&bytes, Some(200)),
        Err(BufferError::BadDataOffset { offset8: 200 })
    );
    assert_eq!(
        parse_gpa_direct(&bytes[..20], None),
        Err(BufferError::BadRangeList)
    );
    let g = parse_gpa_direct(&bytes, None).unwrap();
    let c = srb_chunks(&g.ranges, 5000).unwrap();
    assert_eq!(
        c,
        vec![
            Chunk {
                gpn: 7,
                offset: 100,
                len: 3996
            },
            Chunk {
                gpn: 9,
                offset: 0,
                len: 1004
            }
        ]
    );
    assert_eq!(c[0].gpa(), 7 * 4096 + 100);
    assert_eq!(
        srb_chunks(&g.ranges, 4000).unwrap()[1],
        Chunk {
            gpn: 9,
            offset: 0,
            len: 4
        }
    );
    assert_eq!(srb_chunks(&g.ranges, 0).unwrap(), vec![]);
    assert_eq!(
        srb_chunks(&g.ranges, 5001),
        Err(BufferError::OutOfRange {
            offset: 0,
            len: 5001,
            total: 5000
        })
    );
    assert_eq!(
        srb_chunks(&[], 1),
        Err(BufferError::OutOfRange {
            offset: 0,
            len: 1,
            total: 0
        })
    );
    assert_eq!(
        chunks(&g.ranges, 3996, 10).unwrap(),
        vec![Chunk {
            gpn: 9,
            offset: 0,
            len: 10
        }]
    );
    assert_eq!(
        chunks(&g.ranges, u64::MAX, 2),
        Err(BufferError::OutOfRange {
            offset: u64::MAX,
            len: 2,
            total: 5000
        })
    );
}

#[test]
fn consecutive_guest_pages_make_one_chunk() {
    // A 1 MiB buffer in 256 consecutive pages, 512 bytes into the first:
    // one chunk, however many pages (one device segment, one lookup).
    let pfns: Vec<u64> = (0x100..0x201).collect();
    let (bytes, _) = build_gpa_direct(&[(512, 1 << 20, &pfns)], &[]);
    let g = parse_gpa_direct(&bytes, None).unwrap();
    assert_eq!(
        srb_chunks(&g.ranges, 1 << 20).unwrap(),
        vec![Chunk {
            gpn: 0x100,
            offset: 512,
            len: 1 << 20
        }]
    );
    // A gap, a page listed twice, and a step back each start a new chunk.
    let pfns = [5u64, 6, 8, 8, 7];
    let (bytes, _) = build_gpa_direct(&[(0, 5 * 4096, &pfns)], &[]);
    let g = parse_gpa_direct(&bytes, None).unwrap();
    let c = srb_chunks(&g.ranges, 5 * 4096).unwrap();
    let runs: Vec<(u64, u32)> = c.iter().map(|c| (c.gpn, c.len)).collect();
    assert_eq!(runs, vec![(5, 8192), (8, 4096), (8, 4096), (7, 4096)]);
    // Two ranges that continue each other are one chunk too.
    let (bytes, _) = build_gpa_direct(&[(0, 4096, &[3]), (0, 4096, &[4])], &[]);
    let g = parse_gpa_direct(&bytes, None).unwrap();
    assert_eq!(srb_chunks(&g.ranges, 8192).unwrap().len(), 1);
}

#[test]
fn bad_ranges_are_refused() {
    let pfns = [1u64.to_le_bytes(), 2u64.to_le_bytes()].concat();
    let r = |byte_offset, byte_count, pfns| vmbus::packet::GpaRange {
        byte_count,
        byte_offset,
        pfns,
    };
    assert_eq!(
        total_len(&[r(4096, 1, &pfns[..8])]),
        Err(BufferError::ByteOffset {
            range: 0,
            byte_offset: 4096
        })
    );
    assert_eq!(
        total_len(&[r(0, 4097, &pfns[..8])]),
        Err(BufferError::PageCount {
            range: 0,
            pages: 1,
            need: 2
        })
    );
    assert_eq!(
        total_len(&[r(0, 10, &pfns[..])]),
        Err(BufferError::PageCount {
            range: 0,
            pages: 2,
            need: 1
        })
    );
    assert_eq!(
        total_len(&[r(0, 10, &pfns[..7])]),
        Err(BufferError::PageCount {
            range: 0,
            pages: 0,
            need: 1
        })
    );
    let huge = u64::MAX.to_le_bytes();
    assert_eq!(
        total_len(&[r(0, 10, &huge[..])]),
        Err(BufferError::BadGpn {
            range: 0,
            gpn: u64::MAX
        })
    );
    // Two ranges concatenate.
    let a = r(4000, 200, &pfns[..]);
    let b = r(0, 10, &pfns[8..]);
    assert_eq!(
        chunks(&[a, b], 150, 60).unwrap(),
        vec![
            Chunk {
                gpn: 2,
                offset: 54,
                len: 50
            },
            Chunk {
                gpn: 2,
                offset: 0,
                len: 10
            }
        ]
    );
}

proptest! {
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80), v in any::<u16>(), max in any::<u32>()) {
        let limits = SrbLimits { version: ProtocolVersion(v), max_transfer_bytes: max };
        if let Ok(p) = parse_packet(&bytes, &limits) {
            prop_assert!(p.request_size <= 52);
            if let Request::ExecuteSrb(s) = p.request {
                prop_assert!(!s.cdb().is_empty() && s.cdb().len() <= 16);
                prop_assert!(s.data_transfer_length() <= max);
            }
        }
    }

    #[test]
    fn gpa_direct_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), o in proptest::option::of(any::<u16>()), off in any::<u64>(), len in any::<u64>()) {
        if let Ok(g) = parse_gpa_direct(&bytes, o) {
            let _ = chunks(&g.ranges, off, len);
            let _ = srb_chunks(&g.ranges, len as u32);
        }
    }

    /// Any well-formed range list: the chunks cover exactly the window, in
    /// order, each starting inside its first page, every page one the
    /// guest listed, and no two in a row that continue each other in guest
    /// memory (those are one chunk).
    #[test]
    fn chunks_cover_the_window(
        spec in proptest::collection::vec((0u32..4096, 0u32..20000, any::<u32>()), 1..4),
        a in any::<u64>(), b in any::<u64>(),
    ) {
        let owned: Vec<(u32, u32, Vec<u64>)> = spec.iter().map(|&(off, count, seed)| {
            let n = vmbus::packet::pages_spanned(off, count).unwrap();
            (off, count, (0..n as u64).map(|i| (seed as u64) * 64 + i).collect())
        }).collect();
        let borrowed: Vec<(u32, u32, &[u64])> = owned.iter().map(|(o, c, p)| (*o, *c, &p[..])).collect();
        let (bytes, offset8) = build_gpa_direct(&borrowed, &[]);
        let g = parse_gpa_direct(&bytes, Some(offset8)).unwrap();
        let total = total_len(&g.ranges).unwrap();
        prop_assert_eq!(total, spec.iter().map(|s| s.1 as u64).sum::<u64>());
        let offset = if total == 0 { 0 } else { a % (total + 1) };
        let len = if total == offset { 0 } else { b % (total - offset + 1) };
        let c = chunks(&g.ranges, offset, len).unwrap();
        prop_assert_eq!(c.iter().map(|c| c.len as u64).sum::<u64>(), len);
        for ch in &c {
            prop_assert!(ch.len >= 1 && ch.offset < 4096);
            let pages = u64::from((ch.offset + ch.len - 1) / 4096);
            for k in 0..=pages {
                prop_assert!(owned.iter().any(|(_, _, p)| p.contains(&(ch.gpn + k))));
            }
        }
        for w in c.windows(2) {
            let end = w[0].offset + w[0].len;
            prop_assert!(
                !(end % 4096 == 0 && w[1].offset == 0 && w[0].gpn + u64::from(end / 4096) == w[1].gpn),
                "{:?} continues {:?}", w[1], w[0]
            );
        }
        // Beyond the end is refused.
        prop_assert!(chunks(&g.ranges, offset, total - offset + 1).is_err());
    }
}
