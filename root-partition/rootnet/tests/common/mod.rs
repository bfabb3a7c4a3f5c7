//! Helpers shared by the integration tests: a two-node "wire" and a clock.
#![allow(dead_code)]

use rootnet::{Ipv4Addr, Ipv4Net, NetConfig, RootNet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    DHCP_SERVER_PORT, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame,
    EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

pub const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];
pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

pub fn static_net(mac: [u8; 6], ip: Ipv4Addr, gateway: Option<Ipv4Addr>) -> RootNet {
    RootNet::new(
        mac,
        NetConfig::Static {
            addr: Ipv4Net::new(ip, 24),
            gateway,
        },
        0,
    )
    .expect("valid static config")
}

/// Move every queued frame from `from` to `to`, through `filter`; returns how
/// many were delivered.
pub fn forward(from: &mut RootNet, to: &mut RootNet, filter: impl Fn(&[u8]) -> bool) -> usize {
    let mut n = 0;
    while let Some(frame) = from.take_frame() {
        if filter(&frame) {
            to.receive_frame(&frame);
            n += 1;
        }
    }
    n
}

/// One millisecond of simulated time on a back-to-back wire:
/// A polls, its frames reach B, B polls, its frames reach A.
pub fn step(a: &mut RootNet, b: &mut RootNet, now: u64, b_to_a: &impl Fn(&[u8]) -> bool) {
    a.poll(now);
    forward(a, b, |_| true);
    b.poll(now);
    forward(b, a, b_to_a);
}

/// Whether `frame` is an IPv4 ICMP echo reply (RFC 792 type 0).
pub fn is_echo_reply(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&[0x08, 0x00][..]) && frame.get(23) == Some(&1) && frame.get(34) == Some(&0)
}

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 1);
pub const OFFERED: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 50);
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x50];

/// Just enough of an RFC 2131 server: DISCOVER → OFFER, REQUEST for the
/// offered address → ACK. It answers as MAC_B / SERVER_IP.
pub struct Server {
    pub lease_secs: u32,
    pub answering: bool,
    /// IPv4 source of its replies (a hostile server may lie).
    pub source_ip: Ipv4Addr,
    /// The subnet mask it hands out.
    pub mask: Ipv4Addr,
    pub offers: u32,
    pub acks: u32,
}

impl Server {
    pub fn new(lease_secs: u32) -> Self {
        Server {
            lease_secs,
            answering: true,
            source_ip: SERVER_IP,
            mask: Ipv4Addr::new(255, 255, 255, 0),
            offers: 0,
            acks: 0,
        }
    }

    /// The server's reply to a client frame, if it warrants one.
    pub fn handle(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        if !self.answering {
            return None;
        }
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if ip.next_header() != IpProtocol::Udp {
            return None;
        }
        let udp = UdpPacket::new_checked(ip.payload()).ok()?;
        if udp.dst_port() != DHCP_SERVER_PORT {
            return None;
        }
        let packet = DhcpPacket::new_checked(udp.payload()).ok()?;
        let request = DhcpRepr::parse(&packet).ok()?;
        let reply_type = match request.message_type {
            DhcpMessageType::Discover => {
                self.offers += 1;
                DhcpMessageType::Offer
            }
            // RFC 2131 §4.3.2: a REQUEST in SELECTING state names the
            // server and the offered address.
            DhcpMessageType::Request
                if request.server_identifier == Some(SERVER_IP) && request.requested_ip == Some(OFFERED) =>
            {
                self.acks += 1;
                DhcpMessageType::Ack
            }
            _ => return None,
        };
        let reply = DhcpRepr {
            message_type: reply_type,
            transaction_id: request.transaction_id,
            secs: 0,
            client_hardware_address: request.client_hardware_address,
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: OFFERED,
            server_ip: SERVER_IP,
            router: Some(SERVER_IP),
            subnet_mask: Some(self.mask),
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(SERVER_IP),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: Some(self.lease_secs),
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        Some(build_udp_broadcast_from(&reply, self.source_ip))
    }
}

/// Ethernet broadcast / IPv4 255.255.255.255 / UDP 67→68 carrying `dhcp`.
pub fn build_udp_broadcast(dhcp: &DhcpRepr) -> Vec<u8> {
    build_udp_broadcast_from(dhcp, SERVER_IP)
}

/// [`build_udp_broadcast`] from IPv4 source `src`.
pub fn build_udp_broadcast_from(dhcp: &DhcpRepr, src: Ipv4Addr) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let dhcp_len = dhcp.buffer_len();
    let udp = UdpRepr {
        src_port: 67,
        dst_port: 68,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: Ipv4Addr::BROADCAST,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + dhcp_len,
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(MAC_B),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + ip.payload_len];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[14..]), &caps);
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut buf[34..]),
        &ip.src_addr.into(),
        &ip.dst_addr.into(),
        dhcp_len,
        |payload| {
            dhcp.emit(&mut DhcpPacket::new_unchecked(payload))
                .expect("DHCP reply fits");
        },
        &caps,
    );
    buf
}
