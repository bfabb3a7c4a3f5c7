//! Hostile input: floods, garbage and mutated frames must neither panic nor
//! grow memory past the queue bounds.

mod common;

use common::*;
use proptest::prelude::*;
use rootnet::{MAX_RX_FRAME_LEN, NetConfig, RX_QUEUE_FRAMES, RootNet, TX_QUEUE_FRAMES};
use smoltcp::wire::{Icmpv4Packet, IpProtocol, Ipv4Packet, UdpPacket};

/// An ARP request (RFC 826) for `target` from a made-up station.
fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let src = [0x02, 0, 0, 0, 0, 0x77];
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[10, 0, 0, 77]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// Drain the outgoing queue; its length can never exceed the bound.
fn drain(net: &mut RootNet) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(f) = net.take_frame() {
        out.push(f);
        assert!(out.len() <= TX_QUEUE_FRAMES, "outgoing queue over its bound");
    }
    out
}

#[test]
fn flood_is_bounded_and_counted() {
    let mut a = static_net(MAC_A, IP_A, None);
    let request = arp_request(IP_A.octets());
    // 10 000 frames with no poll: only the queue's worth is kept.
    for _ in 0..10_000 {
        a.receive_frame(&request);
    }
    let c = a.status().counters;
    assert_eq!(c.frames_in, RX_QUEUE_FRAMES as u64);
    assert_eq!(c.frames_in_dropped, 10_000 - RX_QUEUE_FRAMES as u64);
    a.poll(0);
    // Each request gets an ARP reply; all fit the outgoing queue exactly.
    let replies = drain(&mut a);
    assert_eq!(replies.len(), RX_QUEUE_FRAMES);
    assert!(
        replies
            .iter()
            .all(|f| rootnet::arp_sender(f) == Some((MAC_A, IP_A.octets())))
    );

    // 10 000 more, polled every 100 frames but never drained: the replies
    // overflow the outgoing queue and are counted, not stored.
    for i in 0..10_000u64 {
        a.receive_frame(&request);
        if i % 100 == 99 {
            a.poll(1 + i);
        }
    }
    let c = a.status().counters;
    assert_eq!(c.frames_out, (RX_QUEUE_FRAMES + TX_QUEUE_FRAMES) as u64);
    assert!(c.frames_out_dropped > 0, "{c:?}");
    assert!(c.frames_in_dropped > 10_000, "{c:?}");
    assert_eq!(drain(&mut a).len(), TX_QUEUE_FRAMES);

    // Bad lengths and frames for other stations never enter the queue.
    a.receive_frame(&[]);
    a.receive_frame(&request[..13]);
    a.receive_frame(&vec![0xff; MAX_RX_FRAME_LEN + 1]);
    let mut other = request.clone();
    other[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    a.receive_frame(&other);
    other[0] = 0x01; // multicast
    a.receive_frame(&other);
    let c2 = a.status().counters;
    assert_eq!(c2.frames_in_malformed, 3);
    assert_eq!(c2.frames_in_not_for_us, 2);
    assert_eq!(c2.frames_in, c.frames_in);
}

/// Random frames, some behind a plausible header so the stack parses them.
fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        Just(Vec::new()),
        // To A, IPv4.
        Just([&MAC_A[..], &[0x02, 0, 0, 0, 0, 0x66], &[0x08, 0x00]].concat()),
        // Broadcast, ARP.
        Just([&[0xff; 6][..], &[0x02, 0, 0, 0, 0, 0x66], &[0x08, 0x06]].concat()),
        // Broadcast, IPv4, a valid-looking IPv4/UDP 67→68 start.
        Just(
            [
                &[0xff; 6][..],
                &[0x02, 0, 0, 0, 0, 0x66],
                &[0x08, 0x00, 0x45, 0, 1, 0x48, 0, 0, 0, 0, 64, 17, 0, 0],
                &[192, 168, 7, 1, 255, 255, 255, 255, 0, 67, 0, 68, 1, 0x34, 0, 0],
            ]
            .concat()
        ),
    ];
    (header, proptest::collection::vec(any::<u8>(), 0..1600)).prop_map(|(mut h, body)| {
        h.extend_from_slice(&body);
        h
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_frames_never_panic(
        frames in proptest::collection::vec((frame_strategy(), 0u64..5000), 1..48)
    ) {
        let mut a = static_net(MAC_A, IP_A, Some(IP_B));
        let mut d = RootNet::new(CLIENT_MAC, NetConfig::Dhcp, 0).expect("dhcp");
        a.ping(IP_B, 5, 10, 100).expect("ping");
        let mut now = 0u64;
        for (frame, dt) in &frames {
            now += dt;
            for net in [&mut a, &mut d] {
                net.receive_frame(frame);
                net.poll(now);
                drain(net);
                let _ = net.status();
                let _ = net.ping_status();
            }
        }
    }
}

/// xorshift64*: a small deterministic generator for the mutation fuzzer.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Recompute the IPv4 header checksum and the UDP or ICMP checksum, so
/// mutations reach the parsers behind the checksum checks.
fn fix_checksums(frame: &mut [u8]) {
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(&mut frame[14..]) else {
        return;
    };
    ip.fill_checksum();
    let (src, dst, proto) = (ip.src_addr(), ip.dst_addr(), ip.next_header());
    let payload = ip.payload_mut();
    match proto {
        IpProtocol::Udp => {
            if let Ok(mut udp) = UdpPacket::new_checked(payload) {
                udp.fill_checksum(&src.into(), &dst.into());
            }
        }
        IpProtocol::Icmp => {
            if let Ok(mut icmp) = Icmpv4Packet::new_checked(payload) {
                icmp.fill_checksum();
            }
        }
        _ => {}
    }
}

/// Valid frames of every kind the stack handles: ARP request and reply,
/// echo request and reply, DHCP OFFER and ACK for `CLIENT_MAC`'s first xid.
fn corpus() -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut a = static_net(MAC_A, IP_A, None);
    let mut b = static_net(MAC_B, IP_B, None);
    a.ping(IP_B, 2, 5, 100).expect("ping");
    for now in 0..20 {
        a.poll(now);
        while let Some(f) = a.take_frame() {
            b.receive_frame(&f);
            frames.push(f);
        }
        b.poll(now);
        while let Some(f) = b.take_frame() {
            a.receive_frame(&f);
            frames.push(f);
        }
    }
    let mut d = RootNet::new(CLIENT_MAC, NetConfig::Dhcp, 0).expect("dhcp");
    let mut server = Server::new(3600);
    for now in 0..20 {
        d.poll(now);
        while let Some(f) = d.take_frame() {
            if let Some(reply) = server.handle(&f) {
                d.receive_frame(&reply);
                frames.push(reply);
            }
        }
    }
    assert_eq!((server.offers, server.acks), (1, 1), "corpus has OFFER and ACK");
    frames
}

#[test]
fn mutated_valid_frames_never_panic() {
    let corpus = corpus();
    assert!(corpus.len() >= 6);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut now = 0u64;
    // A and B as in the corpus (same MACs and start time, so the same ping
    // identifiers), and a DHCP client.
    let fresh = || {
        (
            static_net(MAC_A, IP_A, None),
            static_net(MAC_B, IP_B, None),
            RootNet::new(CLIENT_MAC, NetConfig::Dhcp, 0).expect("dhcp"),
        )
    };
    let (mut a, mut b, mut d) = fresh();
    let (mut bound, mut replied) = (0u32, 0u32);
    for round in 0..20_000u32 {
        // Start over now and then, so the DHCP client is back in its first
        // state (same MAC and time give the same xid as the corpus).
        if round % 500 == 0 {
            (a, b, d) = fresh();
            now = 0;
            a.ping(IP_B, 50, 20, 100).expect("ping");
        }
        let mut frame = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(6) {
                0 | 1 => {
                    let i = rng.below(frame.len());
                    if let Some(byte) = frame.get_mut(i) {
                        *byte ^= 1 << rng.below(8);
                    }
                }
                2 => {
                    let i = rng.below(frame.len());
                    let v = [0u8, 0xff, 0x7f, 0x80, 1, 0x45][rng.below(6)];
                    if let Some(byte) = frame.get_mut(i) {
                        *byte = v;
                    }
                }
                3 => frame.truncate(rng.below(frame.len() + 1)),
                4 => frame.resize(frame.len() + rng.below(64), rng.next() as u8),
                _ => {}
            }
        }
        if rng.below(4) != 0 {
            fix_checksums(&mut frame);
        }
        now += rng.below(50) as u64;
        for net in [&mut a, &mut b, &mut d] {
            net.receive_frame(&frame);
            net.poll(now);
            drain(net);
        }
        if let Some(addr) = d.status().ipv4 {
            assert!((1..=32).contains(&addr.prefix_len));
            bound += 1;
        }
        if a.ping_status().is_some_and(|r| r.received > 0) {
            replied += 1;
        }
    }
    // The mutations must not be so wild that the deep paths go unvisited:
    // the DHCP client binds and the ping sees replies in some rounds.
    assert!(bound > 0 && replied > 0, "bound {bound}, replied {replied}");
}
