//! Entry point shared by the cargo-fuzz target (`root-partition/rootnet/fuzz/`)
//! and the corpus-replay test: arbitrary bytes (the frames a hostile child
//! puts on the switch) must never make the stack panic, grow a queue past
//! its bound, or send a frame of a bad size.
//!
//! Input: one flags byte, then records. Each record is a big-endian `u16`
//! header — bits 0..=10 the frame length (cut to what is left), bit 11
//! "recompute the IPv4/UDP/ICMP checksums", bits 12..=15 an index into
//! [`STEPS_MS`] (how far the clock moves before the poll; index 0 queues
//! the frame without polling) — then the frame. Flags: bits 0..=1 pick the
//! static interface's ping target (none, on-link peer, gateway, off-link),
//! bit 2 pings the DHCP interface's gateway once it has a lease, bit 3
//! drains the outgoing queues only every fourth poll, bits 4..=7 are the
//! ping count minus one. An empty record with bit 11 set cancels the pings.

use alloc::vec::Vec;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr,
    Icmpv4Packet, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

use crate::{
    AddrSource, DhcpState, Ipv4Addr, Ipv4Net, MAX_PING_COUNT, MAX_RX_FRAME_LEN, MAX_TIME_MS,
    MIN_RX_FRAME_LEN, NetConfig, PingFailure, RX_QUEUE_FRAMES, RootNet, TX_QUEUE_FRAMES, arp_sender,
    device::TX_MTU,
};

/// The MAC of both interfaces under test.
pub const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];
/// The static interface's address (10.0.0.1/24, gateway 10.0.0.254).
pub const STATIC_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const OFF_LINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// The MAC of the seeds' peers (the pinged host, the DHCP server).
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 1);
const OFFERED: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 50);

/// Clock steps selectable per record, in milliseconds (`None`: no poll).
pub const STEPS_MS: [Option<u64>; 16] = [
    None,
    Some(0),
    Some(1),
    Some(2),
    Some(5),
    Some(10),
    Some(20),
    Some(50),
    Some(100),
    Some(250),
    Some(1000),
    Some(4000),
    Some(30_000),
    Some(600_000),
    Some(86_400_000),
    Some(u64::MAX),
];

const PING_INTERVAL_MS: u64 = 20;
const PING_TIMEOUT_MS: u64 = 100;
/// Ping sessions started per interface and input (restarted when done).
const MAX_SESSIONS: u32 = 4;

/// One interface under test and what the harness knows about it.
struct Node {
    net: RootNet,
    static_cfg: bool,
    /// `receive_frame` calls.
    offered: u64,
    /// Frames taken out.
    taken: u64,
    /// `frames_in` and `frames_in_dropped` at the last poll.
    in_at_poll: (u64, u64),
    sessions: u32,
    /// Frames taken in the last step (kept only when building seeds).
    out: Vec<Vec<u8>>,
    keep: bool,
}

impl Node {
    fn new(config: NetConfig, keep: bool) -> Self {
        let static_cfg = matches!(config, NetConfig::Static { .. });
        Node {
            // A valid MAC and config: cannot fail.
            net: RootNet::new(MAC, config, 0).unwrap_or_else(|_| unreachable!()),
            static_cfg,
            offered: 0,
            taken: 0,
            in_at_poll: (0, 0),
            sessions: 0,
            out: Vec::new(),
            keep,
        }
    }

    fn receive(&mut self, frame: &[u8]) {
        self.net.receive_frame(frame);
        self.offered += 1;
        let c = self.net.status().counters;
        let seen = c.frames_in + c.frames_in_dropped + c.frames_in_malformed + c.frames_in_not_for_us;
        assert_eq!(seen, self.offered, "every frame is counted once");
        let queued = c.frames_in - self.in_at_poll.0;
        assert!(queued <= RX_QUEUE_FRAMES as u64, "receive queue over its bound");
        if c.frames_in_dropped > self.in_at_poll.1 {
            assert_eq!(queued, RX_QUEUE_FRAMES as u64, "dropped with room in the queue");
        }
    }

    fn poll(&mut self, now: u64) {
        self.net.poll(now);
        let c = self.net.status().counters;
        self.in_at_poll = (c.frames_in, c.frames_in_dropped);
        self.check_status();
    }

    fn drain(&mut self) {
        self.out.clear();
        let mut n = 0;
        while let Some(f) = self.net.take_frame() {
            n += 1;
            assert!(n <= TX_QUEUE_FRAMES, "more frames taken than the queue holds");
            assert!(
                (MIN_RX_FRAME_LEN..=MAX_RX_FRAME_LEN).contains(&f.len()) && f.len() <= TX_MTU,
                "outgoing frame of {} bytes",
                f.len()
            );
            assert_eq!(f[6..12], MAC, "outgoing frame from another MAC");
            self.taken += 1;
            if self.keep {
                self.out.push(f);
            }
        }
        let c = self.net.status().counters;
        assert_eq!(c.frames_out, self.taken, "queued frames were not all taken");
    }

    fn check_status(&self) {
        let s = self.net.status();
        assert_eq!(s.mac, MAC);
        let c = s.counters;
        assert!(
            c.frames_out - self.taken <= TX_QUEUE_FRAMES as u64,
            "send queue over its bound"
        );
        if self.static_cfg {
            assert_eq!(s.source, AddrSource::Static);
            assert_eq!(s.dhcp, DhcpState::Disabled);
            assert_eq!(s.ipv4, Some(Ipv4Net::new(STATIC_IP, 24)));
            assert_eq!(s.gateway, Some(GATEWAY));
        } else {
            match (s.ipv4, s.source, s.dhcp) {
                (None, AddrSource::None, DhcpState::Discovering) => assert_eq!(s.gateway, None),
                (Some(a), AddrSource::Dhcp, DhcpState::Bound { .. }) => {
                    // Corpus `crash-dhcp-prefix-0`: a DHCP ACK with subnet mask
                    // 0.0.0.0 was taken as a /0 lease; now refused.
                    assert!((1..=32).contains(&a.prefix_len), "{a}");
                    if let Some(gw) = s.gateway {
                        assert!(a.contains(gw) && gw != a.addr, "gateway {gw} off {a}");
                    }
                }
                other => panic!("inconsistent DHCP status {other:?}"),
            }
        }
        if let Some(r) = self.net.ping_status() {
            assert!(r.count >= 1 && r.count <= MAX_PING_COUNT);
            assert!(r.received <= r.sent && r.sent <= r.count, "{r:?}");
            assert_eq!(r.rtt.is_some(), r.received > 0, "{r:?}");
            if let Some(rtt) = r.rtt {
                assert!(rtt.min_ms <= rtt.avg_ms && rtt.avg_ms <= rtt.max_ms, "{r:?}");
            }
            if let Some(f) = r.failure {
                assert!(r.done, "{r:?}");
                if matches!(f, PingFailure::ArpUnresolved | PingFailure::NoReply) {
                    assert_eq!(r.received, 0, "{r:?}");
                }
            }
        }
    }

    /// Start a ping if none runs and the budget allows.
    fn maybe_ping(&mut self, target: Option<Ipv4Addr>, count: u16) {
        let Some(target) = target else {
            return;
        };
        if self.sessions >= MAX_SESSIONS || self.net.ping_status().is_some_and(|r| !r.done) {
            return;
        }
        self.sessions += 1;
        match self.net.ping(target, count, PING_INTERVAL_MS, PING_TIMEOUT_MS) {
            Ok(id) => {
                let r = self.net.ping_status().unwrap_or_else(|| unreachable!());
                assert_eq!((r.id, r.target, r.count, r.done), (id, target, count, false));
            }
            Err(e) => assert!(!self.static_cfg, "static ping to {target} refused: {e}"),
        }
    }
}

/// The two interfaces (static and DHCP, same MAC) fed the same frames.
pub struct Harness {
    flags: u8,
    now: u64,
    polls: u32,
    st: Node,
    dh: Node,
}

impl Harness {
    /// Both interfaces at time 0, polled once (the DHCP client sends its
    /// DISCOVER), with the static ping started if `flags` asks for one.
    pub fn new(flags: u8, keep: bool) -> Self {
        let config = NetConfig::Static {
            addr: Ipv4Net::new(STATIC_IP, 24),
            gateway: Some(GATEWAY),
        };
        let mut h = Harness {
            flags,
            now: 0,
            polls: 0,
            st: Node::new(config, keep),
            dh: Node::new(NetConfig::Dhcp, keep),
        };
        h.tick(0);
        h
    }

    fn count(&self) -> u16 {
        u16::from(self.flags >> 4) + 1
    }

    fn static_target(&self) -> Option<Ipv4Addr> {
        [None, Some(PEER_IP), Some(GATEWAY), Some(OFF_LINK)][usize::from(self.flags & 3)]
    }

    fn dhcp_target(&self) -> Option<Ipv4Addr> {
        if self.flags & 4 == 0 {
            return None;
        }
        let s = self.dh.net.status();
        s.ipv4?;
        Some(s.gateway.unwrap_or(OFF_LINK))
    }

    /// Start pings if asked, move the clock by `step` ms, poll and drain.
    fn tick(&mut self, step: u64) {
        let count = self.count();
        self.st.maybe_ping(self.static_target(), count);
        self.dh.maybe_ping(self.dhcp_target(), count);
        self.now = self.now.saturating_add(step);
        self.polls += 1;
        self.st.poll(self.now);
        self.dh.poll(self.now);
        if self.flags & 8 == 0 || self.polls.is_multiple_of(4) {
            self.st.drain();
            self.dh.drain();
        }
    }

    /// One record: the frame to both interfaces (checksums fixed first if
    /// `fix`), then a poll `STEPS_MS[step]` later.
    pub fn record(&mut self, step: u8, fix: bool, frame: &[u8]) {
        if frame.is_empty() && fix {
            self.st.net.cancel_ping();
            self.dh.net.cancel_ping();
            for n in [&self.st, &self.dh] {
                assert!(n.net.ping_status().is_none_or(|r| r.done));
            }
            return;
        }
        let mut buf;
        let frame = if fix {
            buf = frame.to_vec();
            fix_checksums(&mut buf);
            &buf[..]
        } else {
            frame
        };
        if let Some((mac, ip)) = arp_sender(frame) {
            assert_eq!(frame[6..12], mac);
            assert_eq!(frame[28..32], ip);
            assert!(mac[0] & 1 == 0 && mac != [0; 6]);
        }
        self.st.receive(frame);
        self.dh.receive(frame);
        if let Some(step) = STEPS_MS[usize::from(step & 15)] {
            self.tick(step);
        }
    }

    /// The last poll: queue drained, and with the clock still running,
    /// every ping session ends within `count + 2` one-second polls.
    pub fn finish(&mut self) {
        self.st.drain();
        self.dh.drain();
        if self.now >= MAX_TIME_MS - 1_000_000 {
            return;
        }
        for _ in 0..=self.count() + 1 {
            self.now += 1000;
            for n in [&mut self.st, &mut self.dh] {
                n.poll(self.now);
                n.drain();
            }
        }
        for n in [&self.st, &self.dh] {
            let r = n.net.ping_status();
            assert!(r.is_none_or(|r| r.done), "ping still running: {r:?}");
        }
    }
}

/// Split `data` into records: `(step, fix, frame)`.
fn records(data: &[u8]) -> impl Iterator<Item = (u8, bool, &[u8])> {
    let mut rest = data;
    core::iter::from_fn(move || {
        let (h, tail) = rest.split_first_chunk::<2>()?;
        let h = u16::from_be_bytes(*h);
        let len = usize::from(h & 0x7ff).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        Some(((h >> 12) as u8, h & 0x800 != 0, frame))
    })
}

/// The record header for a frame of `len` bytes.
fn header(step: u8, fix: bool, len: usize) -> [u8; 2] {
    let len = u16::try_from(len.min(0x7ff)).unwrap_or(0x7ff);
    (u16::from(step & 15) << 12 | u16::from(fix) << 11 | len).to_be_bytes()
}

/// The fuzz target: see the module documentation for the input format.
pub fn rootnet(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new(flags, false);
    for (step, fix, frame) in records(rest) {
        h.record(step, fix, frame);
    }
    h.finish();
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

/// Builds a seed: the harness runs alongside, so replies can answer what
/// the interfaces actually sent (DHCP transaction IDs, ping identifiers).
struct SeedBuilder {
    h: Harness,
    input: Vec<u8>,
}

impl SeedBuilder {
    fn new(flags: u8) -> Self {
        SeedBuilder {
            h: Harness::new(flags, true),
            input: alloc::vec![flags],
        }
    }

    fn push(&mut self, step: u8, fix: bool, frame: &[u8]) {
        self.input.extend_from_slice(&header(step, fix, frame.len()));
        self.input.extend_from_slice(&frame[..frame.len().min(0x7ff)]);
        self.h.record(step, fix, frame);
    }

    /// A DHCP reply to what the DHCP interface sent in the last step.
    fn dhcp_reply(&self, lease_secs: u32) -> Option<Vec<u8>> {
        self.h.dh.out.iter().find_map(|f| dhcp_reply(f, lease_secs))
    }

    /// Exchange frames with `peer` for `steps` polls of 1 ms; frames the
    /// harness sends go to the peer, the peer's come back as records.
    fn talk(&mut self, peer: &mut RootNet, steps: usize, from_dhcp: bool) {
        for _ in 0..steps {
            let out = if from_dhcp { &self.h.dh.out } else { &self.h.st.out };
            for f in out {
                peer.receive_frame(f);
            }
            peer.poll(self.h.now + 1);
            let mut replies = Vec::new();
            while let Some(f) = peer.take_frame() {
                replies.push(f);
            }
            if replies.is_empty() {
                self.push(2, false, &[]);
            }
            let n = replies.len();
            for (i, f) in replies.iter().enumerate() {
                self.push(if i + 1 == n { 2 } else { 0 }, false, f);
            }
        }
    }

    fn done(mut self) -> Vec<u8> {
        self.h.finish();
        self.input
    }
}

fn peer(ip: Ipv4Addr) -> RootNet {
    let config = NetConfig::Static {
        addr: Ipv4Net::new(ip, 24),
        gateway: None,
    };
    RootNet::new(PEER_MAC, config, 0).unwrap_or_else(|_| unreachable!())
}

/// An RFC 2131 server's OFFER to a DISCOVER or ACK to a REQUEST in `frame`.
fn dhcp_reply(frame: &[u8], lease_secs: u32) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    let packet = DhcpPacket::new_checked(udp.payload()).ok()?;
    let request = DhcpRepr::parse(&packet).ok()?;
    let message_type = match request.message_type {
        DhcpMessageType::Discover => DhcpMessageType::Offer,
        DhcpMessageType::Request => DhcpMessageType::Ack,
        _ => return None,
    };
    let reply = DhcpRepr {
        message_type,
        transaction_id: request.transaction_id,
        secs: 0,
        client_hardware_address: request.client_hardware_address,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: OFFERED,
        server_ip: SERVER_IP,
        router: Some(SERVER_IP),
        subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(SERVER_IP),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: Some(lease_secs),
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    Some(udp_broadcast(&reply))
}

/// Ethernet broadcast / IPv4 255.255.255.255 / UDP 67→68 carrying `dhcp`.
fn udp_broadcast(dhcp: &DhcpRepr) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let dhcp_len = dhcp.buffer_len();
    let udp = UdpRepr {
        src_port: 67,
        dst_port: 68,
    };
    let ip = Ipv4Repr {
        src_addr: SERVER_IP,
        dst_addr: Ipv4Addr::BROADCAST,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + dhcp_len,
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(PEER_MAC),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = alloc::vec![0u8; eth.buffer_len() + ip.buffer_len() + ip.payload_len];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[14..]), &caps);
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut buf[34..]),
        &ip.src_addr.into(),
        &ip.dst_addr.into(),
        dhcp_len,
        |payload| {
            // The buffer is sized by `buffer_len`.
            let _ = dhcp.emit(&mut DhcpPacket::new_unchecked(payload));
        },
        &caps,
    );
    buf
}

/// Seed inputs for the `fuzz_rootnet` target: a peer pinging the static
/// address (ARP request, echo request), the static interface pinging the
/// peer (ARP reply, echo replies), a DHCP exchange (OFFER, ACK) then a
/// ping of the server and a lease expiry, and frames of bad lengths, a
/// full receive queue, a VLAN tag, broadcast ARP from many senders.
pub fn rootnet_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();

    // A peer pings us: its ARP request, our reply, its echo requests.
    let mut s = SeedBuilder::new(0);
    let mut p = peer(PEER_IP);
    let _ = p.ping(STATIC_IP, 3, 5, 100);
    s.talk(&mut p, 12, false);
    seeds.push(s.done());

    // We ping the peer: ARP reply and echo replies come back.
    let mut s = SeedBuilder::new(0x21);
    let mut p = peer(PEER_IP);
    s.talk(&mut p, 40, false);
    seeds.push(s.done());

    // DHCP: DISCOVER → OFFER, REQUEST → ACK; then ping the server.
    let mut s = SeedBuilder::new(0x14);
    let mut server = peer(SERVER_IP);
    for _ in 0..2 {
        match s.dhcp_reply(60) {
            Some(reply) => s.push(2, false, &reply),
            None => s.push(2, false, &[]),
        }
    }
    s.talk(&mut server, 30, true);
    // The 60 s lease runs out (renewals unanswered).
    s.push(12, false, &[]);
    s.push(12, false, &[]);
    s.push(12, false, &[]);
    seeds.push(s.done());

    // DHCP bound, with the checksum-fix bit on the replies.
    let mut s = SeedBuilder::new(0);
    for _ in 0..2 {
        match s.dhcp_reply(3600) {
            Some(reply) => s.push(3, true, &reply),
            None => s.push(3, false, &[]),
        }
    }
    seeds.push(s.done());

    // Bad lengths, a VLAN-tagged frame, a full receive queue, a cancel.
    let mut s = SeedBuilder::new(0x31);
    s.push(2, false, &[0xff; 13]);
    s.push(2, false, &[0xff; 1519]);
    let mut vlan = alloc::vec![0xff; 6];
    vlan.extend_from_slice(&PEER_MAC);
    vlan.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a, 0x08, 0x06]);
    vlan.resize(64, 0);
    s.push(2, false, &vlan);
    let mut p = peer(PEER_IP);
    let _ = p.ping(STATIC_IP, 1, 5, 100);
    p.poll(0);
    let arp = p.take_frame().unwrap_or_default();
    for _ in 0..RX_QUEUE_FRAMES + 2 {
        s.push(0, false, &arp);
    }
    s.push(1, false, &arp);
    s.push(0, true, &[]);
    s.push(15, false, &arp);
    seeds.push(s.done());

    // ARP from many senders (each learnt, none for the ping target).
    let mut s = SeedBuilder::new(0x02);
    for i in 2..40u8 {
        let mut q = peer(Ipv4Addr::new(10, 0, 0, i));
        let _ = q.ping(STATIC_IP, 1, 5, 100);
        q.poll(0);
        if let Some(mut f) = q.take_frame() {
            f[11] = i;
            f[22 + 5] = i;
            s.push(if i % 8 == 0 { 3 } else { 0 }, false, &f);
        }
    }
    seeds.push(s.done());
    seeds
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn corpus_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus")
    }

    /// Every file of the fuzz corpus runs through the target as a normal test.
    #[test]
    fn corpus_replays() {
        let dir = corpus_root().join("fuzz_rootnet");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            super::rootnet(&bytes);
            count += 1;
        }
        assert!(count >= 6, "corpus fuzz_rootnet too small: {count}");
    }

    /// The seeds replay, and they reach what they are meant to: echo
    /// replies to the peer, replies to our ping, a DHCP lease.
    #[test]
    fn seeds_replay() {
        let seeds = super::rootnet_seeds();
        assert!(seeds.len() >= 6);
        for s in &seeds {
            super::rootnet(s);
        }
        let run = |seed: &[u8]| {
            let mut h = super::Harness::new(seed[0], false);
            for (step, fix, frame) in super::records(&seed[1..]) {
                h.record(step, fix, frame);
            }
            h
        };
        let h = run(&seeds[1]);
        let r = h.st.net.ping_status().expect("ping ran");
        assert!(r.received >= 1, "{r:?}");
        let h = run(&seeds[2]);
        assert!(h.dh.sessions >= 1, "DHCP interface never bound");
        let r = h.dh.net.ping_status().expect("ping ran");
        assert!(r.received >= 1, "{r:?}");
        assert_eq!(h.dh.net.status().source, crate::AddrSource::None, "lease expired");
        let h = run(&seeds[3]);
        assert_eq!(h.dh.net.status().source, crate::AddrSource::Dhcp);
        let h = run(&seeds[0]);
        assert!(h.st.net.status().counters.frames_out >= 4);
    }

    /// Write the seeds into `fuzz/corpus/fuzz_rootnet/seed-NN` (run with
    /// `cargo test -p rootnet -- --ignored write_seed_corpus`).
    #[test]
    #[ignore = "writes the seed corpus into fuzz/corpus/ (run by hand), not a check"]
    fn write_seed_corpus() {
        let dir = corpus_root().join("fuzz_rootnet");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in super::rootnet_seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
        }
    }
}
