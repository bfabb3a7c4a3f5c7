//! Host tests: the exact sequence Linux 6.1's `rndis_filter` sends, with
//! the replies checked byte for byte and against Linux's own acceptance
//! checks; data both ways; hostile input.

use super::*;
use nvsp_protocol::rndis::{oid_request, packet_message, ppi_u32};
use proptest::prelude::*;

const MAC: [u8; 6] = [0x00, 0x15, 0x5D, 0x12, 0x34, 0x56];

fn le(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn one_reply(r: &mut Rndis, msg: &[u8]) -> Vec<u8> {
    let resp = r.handle(msg).unwrap();
    assert!(resp.frames.is_empty());
    assert_eq!(resp.messages.len(), 1);
    resp.messages.into_iter().next().unwrap()
}

/// Linux's checks on a query completion (`rndis_filter_query_device`,
/// `rndis_filter_receive_response`): the answer it would copy out into a
/// buffer of `inresult_size` bytes, or `None` if it would fail the query.
fn linux_query_result(reply: &[u8], request_id: u32, inresult_size: u32) -> Option<Vec<u8>> {
    let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().unwrap());
    let msg_len = word(4);
    assert_eq!(msg_len as usize, reply.len());
    assert_eq!(word(0), MessageType::QUERY_COMPLETE.0);
    assert!(reply.len() <= wire::LINUX_MAX_RESPONSE_SIZE);
    assert!(msg_len - 8 >= 16);
    assert_eq!(word(8), request_id);
    let (status, len, off) = (word(12), word(16), word(20));
    if status != 0 {
        return None;
    }
    if len > inresult_size || off < 16 || msg_len - 8 < off || msg_len - 8 - off < len {
        return None;
    }
    Some(reply[8 + off as usize..8 + (off + len) as usize].to_vec())
}

fn query(r: &mut Rndis, id: u32, oid: Oid, info: &[u8]) -> Vec<u8> {
    one_reply(r, &oid_request(MessageType::QUERY, id, oid, info))
}

fn set(r: &mut Rndis, id: u32, oid: Oid, info: &[u8]) -> Vec<u8> {
    one_reply(r, &oid_request(MessageType::SET, id, oid, info))
}

/// A device brought up the way Linux does it, packet filter set.
fn ready() -> Rndis {
    let mut r = Rndis::new(Config::new(MAC));
    one_reply(&mut r, &wire::initialize_request(1));
    set(
        &mut r,
        2,
        Oid::GEN_CURRENT_PACKET_FILTER,
        &packet_filter::LINUX_OPEN.to_le_bytes(),
    );
    assert_eq!(r.state(), State::DataInitialized);
    r
}

fn frame(dest: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dest);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

#[test]
fn linux_rndis_filter_sequence() {
    let mut r = Rndis::new(Config::new(MAC));
    assert_eq!(r.state(), State::Uninitialized);

    // rndis_filter_init_device: request id 1 (atomic_inc_return from 0),
    // version 1.0, max_xfer_size 0x4000, msg_len 24.
    let init = wire::initialize_request(1);
    assert_eq!(init, le(&[2, 24, 1, 1, 0, 0x4000]));
    let reply = one_reply(&mut r, &init);
    assert_eq!(
        reply,
        le(&[0x8000_0002, 52, 1, 0, 1, 0, 1, 0, 8, 64 * 1024, 3, 0, 0])
    );
    assert_eq!(r.state(), State::Initialized);

    // OID_GEN_MAXIMUM_FRAME_SIZE: Linux takes it as its MTU if smaller.
    let reply = query(&mut r, 2, Oid::GEN_MAXIMUM_FRAME_SIZE, &[]);
    assert_eq!(reply, le(&[0x8000_0004, 28, 2, 0, 4, 16, 1500]));
    assert_eq!(
        linux_query_result(&reply, 2, 4),
        Some(1500u32.to_le_bytes().to_vec())
    );

    // OID_802_3_PERMANENT_ADDRESS into a 6-byte buffer.
    let reply = query(&mut r, 3, Oid::OID_802_3_PERMANENT_ADDRESS, &[]);
    let mut expect = le(&[0x8000_0004, 30, 3, 0, 6, 16]);
    expect.extend_from_slice(&MAC);
    assert_eq!(reply, expect);
    assert_eq!(linux_query_result(&reply, 3, 6), Some(MAC.to_vec()));

    // OID_GEN_FRIENDLY_NAME: refused, Linux ignores the failure.
    let reply = query(&mut r, 4, Oid::GEN_FRIENDLY_NAME, &[]);
    assert_eq!(reply, le(&[0x8000_0004, 24, 4, 0xC000_00BB, 0, 16]));
    assert_eq!(linux_query_result(&reply, 4, 512), None);

    // OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES: Linux (NVSP >= 5) sends an
    // ndis_offload header {0xA7, rev 3, size 156} + zeros and checks
    // type, revision >= 1 and 112 <= size <= 156 (rndis_query_hwcaps).
    for (rev, size) in [(1u8, 112usize), (2, 144), (3, 156)] {
        let mut info = vec![0u8; size];
        info[..4].copy_from_slice(&[0xA7, rev, size as u8, 0]);
        let reply = query(&mut r, 5, Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES, &info);
        assert_eq!(
            &reply[..24],
            &le(&[0x8000_0004, 24 + size as u32, 5, 0, size as u32, 16])[..]
        );
        let caps = linux_query_result(&reply, 5, 156).unwrap();
        assert_eq!(caps.len(), size);
        assert_eq!(caps[0], 0xA7);
        assert_eq!(caps[1], rev);
        assert_eq!(u16::from_le_bytes([caps[2], caps[3]]) as usize, size);
        assert!(caps[4..].iter().all(|&b| b == 0), "no offloads");
    }

    // OID_TCP_OFFLOAD_PARAMETERS (rndis_netdev_set_hwcaps with no caps):
    // header {0x80, 3, 28}, ip_v4_csum = TX_RX_DISABLED, the rest 0.
    let mut params = vec![0u8; 28];
    params[..4].copy_from_slice(&[0x80, 3, 28, 0]);
    params[4] = 1;
    assert_eq!(
        set(&mut r, 6, Oid::TCP_OFFLOAD_PARAMETERS, &params),
        le(&[0x8000_0005, 16, 6, 0])
    );
    // NVSP <= 4 guests send 22 bytes.
    assert_eq!(
        set(&mut r, 6, Oid::TCP_OFFLOAD_PARAMETERS, &params[..22]),
        le(&[0x8000_0005, 16, 6, 0])
    );

    // OID_GEN_MEDIA_CONNECT_STATUS: 0 = connected (link_state = status != 0).
    let reply = query(&mut r, 7, Oid::GEN_MEDIA_CONNECT_STATUS, &[]);
    assert_eq!(reply, le(&[0x8000_0004, 28, 7, 0, 4, 16, 0]));

    // NVSP >= 5: OID_GEN_LINK_SPEED (100 bps units; Linux / 10000 = Mbps).
    let reply = query(&mut r, 8, Oid::GEN_LINK_SPEED, &[]);
    assert_eq!(
        linux_query_result(&reply, 8, 4),
        Some(100_000_000u32.to_le_bytes().to_vec())
    );

    // OID_GEN_RECEIVE_SCALE_CAPABILITIES with its 18-byte header: refused,
    // so Linux keeps one channel.
    let mut rss = vec![0u8; 18];
    rss[..4].copy_from_slice(&[0x88, 2, 18, 0]);
    let reply = query(&mut r, 9, Oid::GEN_RECEIVE_SCALE_CAPABILITIES, &rss);
    assert_eq!(reply, le(&[0x8000_0004, 24, 9, 0xC000_00BB, 0, 16]));

    // rndis_filter_open_device: BROADCAST | ALL_MULTICAST | DIRECTED,
    // info_buf_offset = offsetof(info_buf) = 20.
    let set_filter = oid_request(
        MessageType::SET,
        10,
        Oid::GEN_CURRENT_PACKET_FILTER,
        &0x0Du32.to_le_bytes(),
    );
    assert_eq!(set_filter, le(&[5, 32, 10, 0x0001_010E, 4, 20, 0, 0x0D]));
    assert_eq!(one_reply(&mut r, &set_filter), le(&[0x8000_0005, 16, 10, 0]));
    assert_eq!(r.state(), State::DataInitialized);
    assert_eq!(r.packet_filter(), 0x0D);
    let reply = query(&mut r, 11, Oid::GEN_CURRENT_PACKET_FILTER, &[]);
    assert_eq!(linux_query_result(&reply, 11, 4), Some(le(&[0x0D])));

    // rndis_filter_close_device: filter 0 → back to Initialized.
    set(&mut r, 12, Oid::GEN_CURRENT_PACKET_FILTER, &[0; 4]);
    assert_eq!(r.state(), State::Initialized);

    // rndis_filter_halt_device: no reply.
    let halt = wire::build_message(
        MessageType::HALT,
        &RequestId {
            request_id: 13.into(),
        },
        &[],
    );
    assert_eq!(r.handle(&halt).unwrap(), Response::default());
    assert_eq!(r.state(), State::Uninitialized);
}

#[test]
fn other_oids_answered() {
    let mut r = ready();
    let u32_answer = |r: &mut Rndis, oid| {
        let reply = query(r, 1, oid, &[]);
        let v = linux_query_result(&reply, 1, 4).unwrap();
        u32::from_le_bytes(v.try_into().unwrap())
    };
    assert_eq!(u32_answer(&mut r, Oid::GEN_MAXIMUM_TOTAL_SIZE), 1514);
    assert_eq!(u32_answer(&mut r, Oid::GEN_MEDIA_SUPPORTED), 0);
    assert_eq!(u32_answer(&mut r, Oid::GEN_HARDWARE_STATUS), 0);
    assert_eq!(u32_answer(&mut r, Oid::GEN_MAXIMUM_SEND_PACKETS), 8);
    assert_eq!(u32_answer(&mut r, Oid::OID_802_3_MAXIMUM_LIST_SIZE), 32);
    assert_ne!(
        u32_answer(&mut r, Oid::GEN_MAC_OPTIONS) & mac_options::NO_LOOPBACK,
        0
    );
    let reply = query(&mut r, 1, Oid::GEN_SUPPORTED_LIST, &[]);
    let list = linux_query_result(&reply, 1, 4096).unwrap();
    assert_eq!(list.len(), 4 * SUPPORTED_OIDS.len());
    assert_eq!(&list[..4], &Oid::GEN_SUPPORTED_LIST.0.to_le_bytes());
    // Every listed OID is answered with SUCCESS.
    for oid in SUPPORTED_OIDS {
        let reply = query(&mut r, 2, *oid, &[]);
        assert_eq!(&reply[12..16], &[0; 4], "{oid:?}");
    }
    // Unknown OIDs: NOT_SUPPORTED, for queries and sets.
    for oid in [
        Oid(0),
        Oid(0xFFFF_FFFF),
        Oid::GEN_VENDOR_ID,
        Oid::GEN_RECEIVE_SCALE_PARAMETERS,
    ] {
        assert_eq!(&query(&mut r, 3, oid, &[])[12..16], &0xC000_00BBu32.to_le_bytes());
        assert_eq!(
            set(&mut r, 3, oid, &[0; 4]),
            le(&[0x8000_0005, 16, 3, 0xC000_00BB])
        );
    }
    // Windows' network layer addresses: accepted and ignored.
    assert_eq!(
        set(&mut r, 4, Oid::GEN_NETWORK_LAYER_ADDRESSES, &[0; 8]),
        le(&[0x8000_0005, 16, 4, 0])
    );
    // Keep-alive.
    let ka = wire::build_message(MessageType::KEEPALIVE, &RequestId { request_id: 5.into() }, &[]);
    assert_eq!(one_reply(&mut r, &ka), le(&[0x8000_0008, 16, 5, 0]));
}

#[test]
fn sets_refused_with_status() {
    let mut r = ready();
    let status = |reply: Vec<u8>| u32::from_le_bytes(reply[12..16].try_into().unwrap());
    // Packet filter: wrong length, unsupported bits. Nothing changes.
    assert_eq!(
        status(set(&mut r, 1, Oid::GEN_CURRENT_PACKET_FILTER, &[1, 0, 0])),
        0xC001_0014
    );
    assert_eq!(
        status(set(&mut r, 1, Oid::GEN_CURRENT_PACKET_FILTER, &le(&[0x0D, 0]))),
        0xC001_0014
    );
    assert_eq!(
        status(set(&mut r, 1, Oid::GEN_CURRENT_PACKET_FILTER, &le(&[0x40]))),
        0xC000_00BB
    );
    assert_eq!(r.packet_filter(), 0x0D);
    // Offload parameters: anything enabled, bad header, short.
    let mut params = vec![0u8; 28];
    params[..4].copy_from_slice(&[0x80, 3, 28, 0]);
    for field in [5usize, 9, 11, 22] {
        let mut p = params.clone();
        p[field] = 2;
        assert_eq!(
            status(set(&mut r, 1, Oid::TCP_OFFLOAD_PARAMETERS, &p)),
            0xC000_00BB,
            "{field}"
        );
    }
    let mut p = params.clone();
    p[0] = 0xA7;
    assert_eq!(
        status(set(&mut r, 1, Oid::TCP_OFFLOAD_PARAMETERS, &p)),
        0xC001_0015
    );
    assert_eq!(
        status(set(&mut r, 1, Oid::TCP_OFFLOAD_PARAMETERS, &params[..14])),
        0xC001_0014
    );
    // Multicast list: bad length, too many; a good one is stored and used.
    assert_eq!(
        status(set(&mut r, 1, Oid::OID_802_3_MULTICAST_LIST, &[1; 7])),
        0xC001_0014
    );
    assert_eq!(
        status(set(&mut r, 1, Oid::OID_802_3_MULTICAST_LIST, &[1; 6 * 33])),
        0xC001_0009
    );
    let group = [0x01, 0x00, 0x5E, 0, 0, 1];
    assert_eq!(status(set(&mut r, 1, Oid::OID_802_3_MULTICAST_LIST, &group)), 0);
    assert_eq!(r.multicast_list(), &[group]);
    // Config parameter "NetworkAddress" (rndis_filter_set_device_mac):
    // refused; other names accepted; bad offsets INVALID_DATA.
    let cpi = |name: &str, value: &[u8]| {
        let name16: Vec<u8> = name.encode_utf16().flat_map(|c| c.to_le_bytes()).collect();
        let mut info = le(&[
            20,
            name16.len() as u32,
            2,
            20 + name16.len() as u32,
            value.len() as u32,
        ]);
        info.extend_from_slice(&name16);
        info.extend_from_slice(value);
        info
    };
    let mac16: Vec<u8> = "00155d000001"
        .encode_utf16()
        .flat_map(|c| c.to_le_bytes())
        .collect();
    let info = cpi("NetworkAddress", &mac16);
    assert_eq!(info.len(), 20 + 28 + 24, "Linux's extlen");
    assert_eq!(
        status(set(&mut r, 1, Oid::GEN_RNDIS_CONFIG_PARAMETER, &info)),
        0xC000_00BB
    );
    assert_eq!(
        status(set(
            &mut r,
            1,
            Oid::GEN_RNDIS_CONFIG_PARAMETER,
            &cpi("networkaddress", &mac16)
        )),
        0xC000_00BB
    );
    assert_eq!(
        status(set(
            &mut r,
            1,
            Oid::GEN_RNDIS_CONFIG_PARAMETER,
            &cpi("*JumboPacket", &le(&[9014]))
        )),
        0
    );
    let mut bad = info.clone();
    bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        status(set(&mut r, 1, Oid::GEN_RNDIS_CONFIG_PARAMETER, &bad)),
        0xC001_0015
    );
    let mut bad = info.clone();
    bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        status(set(&mut r, 1, Oid::GEN_RNDIS_CONFIG_PARAMETER, &bad)),
        0xC001_0015
    );
    assert_eq!(
        status(set(&mut r, 1, Oid::GEN_RNDIS_CONFIG_PARAMETER, &info[..19])),
        0xC001_0014
    );
}

#[test]
fn data_from_the_guest() {
    let mut r = ready();
    // netvsc_xmit without PPIs.
    let f = frame([0xFF; 6], 60);
    let msg = packet_message(&f, &[]);
    let resp = r.handle(&msg).unwrap();
    assert!(resp.messages.is_empty());
    assert_eq!(
        resp.frames,
        vec![TxFrame {
            data: &f[..],
            vlan: None
        }]
    );

    // With a hash PPI (multi-queue) and a VLAN PPI (HW_VLAN_CTAG_TX): pri 5,
    // cfi 0, id 100 in Linux's bitfield order (pri bits 0-2, cfi 3, id 4-15).
    let mut ppis = ppi_u32(ppi::HASH_VALUE, 0x1234_5678).to_vec();
    ppis.extend_from_slice(&ppi_u32(ppi::IEEE_8021Q, 5 | (100 << 4)));
    // A checksum PPI describing the packet but asking for no work.
    ppis.extend_from_slice(&ppi_u32(ppi::TCPIP_CHECKSUM, 1));
    // An RNDIS-internal PPI (packet id) is ignored.
    ppis.extend_from_slice(&ppi_u32(1 | ppi::INTERNAL, 0xFFFF_FFFF));
    let f = frame(MAC, 1514);
    let msg = packet_message(&f, &ppis);
    let resp = r.handle(&msg).unwrap();
    let vlan = resp.frames[0].vlan.unwrap();
    assert_eq!((vlan.id, vlan.priority, vlan.cfi), (100, 5, false));
    assert_eq!(vlan.tci(), (5 << 13) | 100);
    assert_eq!(resp.frames[0].data, &f[..]);

    // A batch as netvsc_send builds it: each message but the last padded to
    // 8 bytes (pkt_align), msg_len including the padding.
    let mut batch = Vec::new();
    let frames: Vec<Vec<u8>> = (0..8).map(|i| frame(MAC, 61 + i)).collect();
    for (i, f) in frames.iter().enumerate() {
        let mut m = packet_message(f, &[]);
        if i != frames.len() - 1 {
            let padded = m.len().next_multiple_of(8);
            m.resize(padded, 0);
            m[4..8].copy_from_slice(&(padded as u32).to_le_bytes());
        }
        batch.extend_from_slice(&m);
    }
    let resp = r.handle(&batch).unwrap();
    assert_eq!(resp.frames.len(), 8);
    for (got, want) in resp.frames.iter().zip(&frames) {
        assert_eq!(got.data, &want[..]);
    }
    // One more than max_packets_per_message.
    batch.extend_from_slice(&packet_message(&frames[0], &[]));
    assert_eq!(r.handle(&batch), Err(RndisError::TooManyMessages { max: 8 }));

    // Frames may be sent before the filter is set (Initialized) but not
    // before INITIALIZE.
    set(&mut r, 1, Oid::GEN_CURRENT_PACKET_FILTER, &[0; 4]);
    assert_eq!(r.handle(&msg).unwrap().frames.len(), 1);
    r.reset();
    assert_eq!(
        r.handle(&msg),
        Err(RndisError::NotInitialized(MessageType::PACKET))
    );
}

#[test]
fn data_to_the_guest() {
    let mut r = Rndis::new(Config::new(MAC));
    let f = frame(MAC, 1514);
    assert_eq!(r.frame_to_guest(&f), Err(FrameError::NotReady));
    one_reply(&mut r, &wire::initialize_request(1));
    assert_eq!(r.frame_to_guest(&f), Err(FrameError::NotReady));
    set(
        &mut r,
        2,
        Oid::GEN_CURRENT_PACKET_FILTER,
        &packet_filter::LINUX_OPEN.to_le_bytes(),
    );

    let m = r.frame_to_guest(&f).unwrap();
    assert_eq!(m.len(), RX_OVERHEAD + 1514);
    assert_eq!(&m[..44], &le(&[1, 44 + 1514, 36, 1514, 0, 0, 0, 0, 0, 0, 0])[..]);
    assert_eq!(&m[44..], &f[..]);
    // Linux's checks in rndis_filter_receive / rndis_filter_receive_data.
    let buflen = m.len() as u32;
    let msg_len = u32::from_le_bytes(m[4..8].try_into().unwrap());
    assert!(msg_len >= 8 && buflen >= msg_len);
    let data_offset = u32::from_le_bytes(m[8..12].try_into().unwrap());
    let data_len = u32::from_le_bytes(m[12..16].try_into().unwrap());
    assert!(data_offset < buflen - 8);
    assert!(buflen - 8 - data_offset >= data_len);
    // Fits the default receive slot.
    assert!(m.len() <= nvsp_protocol::recv_buffer::sub_allocation_size_for(1514) as usize);
    // The guest's side parses it back.
    let resp = Rndis::new(Config::new(MAC)).handle(&m);
    assert_eq!(resp, Err(RndisError::NotInitialized(MessageType::PACKET)));
    assert_eq!(ready().handle(&m).unwrap().frames[0].data, &f[..]);

    // The filter: directed to another MAC, multicast, promiscuous.
    assert_eq!(
        r.frame_to_guest(&frame([2, 0, 0, 0, 0, 9], 60)),
        Err(FrameError::Filtered)
    );
    assert!(r.frame_to_guest(&frame([0xFF; 6], 60)).is_ok());
    assert!(r.frame_to_guest(&frame([0x33, 0x33, 0, 0, 0, 1], 60)).is_ok());
    set(
        &mut r,
        3,
        Oid::GEN_CURRENT_PACKET_FILTER,
        &le(&[packet_filter::DIRECTED]),
    );
    assert_eq!(r.frame_to_guest(&frame([0xFF; 6], 60)), Err(FrameError::Filtered));
    assert_eq!(
        r.frame_to_guest(&frame([0x33, 0x33, 0, 0, 0, 1], 60)),
        Err(FrameError::Filtered)
    );
    set(
        &mut r,
        4,
        Oid::GEN_CURRENT_PACKET_FILTER,
        &le(&[packet_filter::PROMISCUOUS]),
    );
    assert!(r.frame_to_guest(&frame([2, 0, 0, 0, 0, 9], 60)).is_ok());

    // Lengths: an inline VLAN tag buys 4 bytes.
    assert_eq!(r.frame_to_guest(&f[..13]), Err(FrameError::TooShort(13)));
    assert_eq!(
        r.frame_to_guest(&frame(MAC, 1515)),
        Err(FrameError::TooLong(1515))
    );
    let mut tagged = frame(MAC, 1518);
    tagged[12..14].copy_from_slice(&[0x81, 0x00]);
    assert!(r.frame_to_guest(&tagged).is_ok());
    assert_eq!(
        r.frame_to_guest(&frame(MAC, 1518)),
        Err(FrameError::TooLong(1518))
    );
}

#[test]
fn link_indications() {
    let mut r = Rndis::new(Config::new(MAC));
    // Before INITIALIZE the change is recorded but not indicated.
    assert_eq!(r.set_link_up(false), None);
    assert!(!r.link_up());
    one_reply(&mut r, &wire::initialize_request(1));
    assert_eq!(
        query(&mut r, 2, Oid::GEN_MEDIA_CONNECT_STATUS, &[]),
        le(&[0x8000_0004, 28, 2, 0, 4, 16, 1])
    );
    assert_eq!(r.set_link_up(false), None, "no change, no indication");
    assert_eq!(r.set_link_up(true), Some(le(&[7, 20, 0x4001_000B, 0, 0])));
    assert_eq!(r.set_link_up(false), Some(le(&[7, 20, 0x4001_000C, 0, 0])));
    // Link speed: Linux reads a u32 at status_buf_offset from the indicate
    // struct (netvsc_linkstatus_callback).
    let m = r.set_link_speed(400_000).unwrap();
    assert_eq!(m, le(&[7, 24, 0x4001_0013, 4, 12, 400_000]));
    assert_eq!(r.set_link_speed(400_000), None);
    assert_eq!(r.network_change(), Some(le(&[7, 20, 0x4001_0018, 0, 0])));
}

#[test]
fn reset_and_reinitialize() {
    let mut r = ready();
    let reset = wire::build_message(MessageType::RESET, &RequestId { request_id: 0.into() }, &[]);
    assert_eq!(one_reply(&mut r, &reset), le(&[0x8000_0006, 16, 0, 1]));
    assert_eq!(r.state(), State::Initialized);
    assert_eq!(r.packet_filter(), 0);
    // A second INITIALIZE starts over.
    let mut r = ready();
    one_reply(&mut r, &wire::initialize_request(7));
    assert_eq!((r.state(), r.packet_filter()), (State::Initialized, 0));
}

#[test]
fn hostile_messages() {
    let mut r = ready();
    let f = frame(MAC, 100);
    let good = packet_message(&f, &[]);
    let word = |m: &mut Vec<u8>, at: usize, v: u32| m[at..at + 4].copy_from_slice(&v.to_le_bytes());

    assert_eq!(r.handle(&[]), Err(RndisError::Empty));
    assert!(matches!(
        r.handle(&[1, 0, 0]),
        Err(RndisError::Parse(ParseError::NoHeader { have: 3 }))
    ));
    // message_length below the header, past the end, wrapping.
    for len in [0, 7, good.len() as u32 + 1, u32::MAX] {
        let mut m = good.clone();
        word(&mut m, 4, len);
        assert!(
            matches!(r.handle(&m), Err(RndisError::Parse(ParseError::BadLength { .. }))),
            "{len}"
        );
    }
    // A header-only PACKET.
    assert!(matches!(
        r.handle(&le(&[1, 8])),
        Err(RndisError::Parse(ParseError::Short { .. }))
    ));
    // data_offset / data_length past the end, wrapping, overlapping the header.
    for (off, len) in [
        (36, 1000),
        (u32::MAX - 10, 20),
        (36, u32::MAX),
        (u32::MAX, u32::MAX),
        (500, 0),
    ] {
        let mut m = good.clone();
        word(&mut m, 8, off);
        word(&mut m, 12, len);
        assert!(
            matches!(
                r.handle(&m),
                Err(RndisError::Parse(ParseError::OutOfBounds { .. }))
            ),
            "{off} {len}"
        );
    }
    let mut m = good.clone();
    word(&mut m, 8, 0);
    assert_eq!(
        r.handle(&m),
        Err(RndisError::BadPacket {
            field: "data_offset",
            value: 0
        })
    );
    // Out-of-band data and VC handles are refused.
    for at in [16, 20, 24, 36] {
        let mut m = good.clone();
        word(&mut m, at, 1);
        assert!(matches!(r.handle(&m), Err(RndisError::BadPacket { .. })), "{at}");
    }
    // Frame lengths.
    assert!(matches!(
        r.handle(&packet_message(&f[..13], &[])),
        Err(RndisError::FrameLength { len: 13, max: 1514 })
    ));
    assert!(matches!(
        r.handle(&packet_message(&frame(MAC, 1515), &[])),
        Err(RndisError::FrameLength { len: 1515, .. })
    ));
    // Per-packet info: size 0 (would never advance), size past the region,
    // data offset past the size or inside the header, too short for a u32,
    // region past the message, region overlapping the packet header.
    for (size, offset) in [
        (0u32, 12u32),
        (4, 0),
        (40, 12),
        (16, 17),
        (16, 8),
        (12, 12),
        (u32::MAX, 12),
    ] {
        let mut p = ppi_u32(ppi::IEEE_8021Q, 0).to_vec();
        p[..4].copy_from_slice(&size.to_le_bytes());
        p[8..12].copy_from_slice(&offset.to_le_bytes());
        assert!(
            matches!(
                r.handle(&packet_message(&f, &p)),
                Err(RndisError::BadPerPacketInfo { .. })
            ),
            "{size} {offset}"
        );
    }
    let mut m = packet_message(&f, &ppi_u32(ppi::HASH_VALUE, 1));
    word(&mut m, 32, 1000);
    assert!(matches!(
        r.handle(&m),
        Err(RndisError::Parse(ParseError::OutOfBounds { .. }))
    ));
    word(&mut m, 28, 4);
    assert!(matches!(
        r.handle(&m),
        Err(RndisError::BadPacket {
            field: "per_packet_info_offset",
            ..
        })
    ));
    // Many tiny PPIs nest fine up to the region's end; the walk is bounded.
    let many: Vec<u8> = (0..200).flat_map(|_| ppi_u32(ppi::HASH_VALUE, 0)).collect();
    assert_eq!(r.handle(&packet_message(&f, &many)).unwrap().frames.len(), 1);
    // Offloads nobody offered.
    for (kind, value) in [
        (ppi::TCPIP_CHECKSUM, 1 | 4),
        (ppi::TCPIP_CHECKSUM, 0x10),
        (ppi::TCP_LARGE_SEND, 1 << 30),
    ] {
        assert_eq!(
            r.handle(&packet_message(&f, &ppi_u32(kind, value))),
            Err(RndisError::OffloadRequested { kind, value })
        );
    }
    // Control messages: not alone, completions from the guest, unknown types.
    let mut two = wire::initialize_request(1);
    two.extend_from_slice(&good);
    assert_eq!(r.handle(&two), Err(RndisError::MixedBatch));
    let mut two = good.clone();
    two.extend_from_slice(&wire::initialize_request(1));
    assert_eq!(r.handle(&two), Err(RndisError::MixedBatch));
    for t in [0x8000_0002u32, 0x8000_0004, 7, 0x8000_0008] {
        assert_eq!(
            r.handle(&le(&[t, 24, 0, 0, 0, 0])),
            Err(RndisError::UnexpectedMessage(MessageType(t)))
        );
    }
    for t in [0u32, 9, 0xFF00_0001] {
        assert_eq!(
            r.handle(&le(&[t, 8])),
            Err(RndisError::UnknownMessageType(MessageType(t)))
        );
    }
    // Short control bodies.
    for t in [2u32, 3, 4, 5, 6, 8] {
        assert!(
            matches!(
                r.handle(&le(&[t, 8])),
                Err(RndisError::Parse(ParseError::Short { .. }))
            ),
            "{t}"
        );
    }
    // A query whose information buffer lies past the message.
    let mut q = oid_request(MessageType::QUERY, 1, Oid::GEN_LINK_SPEED, &[]);
    word(&mut q, 16, 4);
    assert!(matches!(
        r.handle(&q),
        Err(RndisError::Parse(ParseError::OutOfBounds { .. }))
    ));
    word(&mut q, 20, u32::MAX);
    word(&mut q, 16, u32::MAX);
    assert!(matches!(
        r.handle(&q),
        Err(RndisError::Parse(ParseError::OutOfBounds { .. }))
    ));
    // Too long a buffer.
    let big = vec![0u8; 64 * 1024 + 1];
    assert!(matches!(r.handle(&big), Err(RndisError::TooLong { .. })));
    // Requests before INITIALIZE.
    let mut fresh = Rndis::new(Config::new(MAC));
    let q = oid_request(MessageType::QUERY, 1, Oid::GEN_LINK_SPEED, &[]);
    assert_eq!(
        fresh.handle(&q),
        Err(RndisError::NotInitialized(MessageType::QUERY))
    );
    // None of that changed the ready device's state.
    assert_eq!((r.state(), r.packet_filter()), (State::DataInitialized, 0x0D));
    assert_eq!(
        RndisError::MixedBatch.nvsp_status(),
        nvsp_protocol::Status::INVALID_RNDIS_PACKET
    );
}

proptest! {
    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Rndis::new(Config::new(MAC)).handle(&bytes);
        let mut r = ready();
        let _ = r.handle(&bytes);
        let _ = r.frame_to_guest(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8),
    ) {
        let f = frame(MAC, 80);
        let mut ppis = ppi_u32(ppi::IEEE_8021Q, 7).to_vec();
        ppis.extend_from_slice(&ppi_u32(ppi::HASH_VALUE, 7));
        let mut m = match which {
            0 => packet_message(&f, &ppis),
            1 => oid_request(MessageType::QUERY, 1, Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES, &[0xA7, 3, 156, 0]),
            2 => oid_request(MessageType::SET, 1, Oid::GEN_RNDIS_CONFIG_PARAMETER, &le(&[20, 4, 2, 24, 2, 0x41, 0x42])),
            _ => wire::initialize_request(3),
        };
        for (at, v) in flips {
            let i = at as usize % m.len();
            m[i] = v;
        }
        let mut r = ready();
        if let Ok(resp) = r.handle(&m) {
            for f in resp.frames {
                prop_assert!(f.data.len() >= 14 && f.data.len() <= 1518);
            }
            for reply in resp.messages {
                prop_assert!(reply.len() <= wire::LINUX_MAX_RESPONSE_SIZE);
            }
        }
    }

    #[test]
    fn frames_round_trip(len in 14usize..=1514, dest in any::<[u8; 6]>()) {
        let mut r = ready();
        set(&mut r, 9, Oid::GEN_CURRENT_PACKET_FILTER, &le(&[packet_filter::PROMISCUOUS]));
        let f = frame(dest, len);
        let m = r.frame_to_guest(&f).unwrap();
        let resp = r.handle(&m).unwrap();
        prop_assert_eq!(resp.frames[0].data, &f[..]);
    }
}
