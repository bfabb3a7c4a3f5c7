//! The root partition's own IP stack on the virtual switch.
//!
//! [`RootNet`] wraps a [smoltcp] Ethernet interface with IPv4, ARP
//! (RFC 826), ICMP echo (RFC 792) and a DHCP client (RFC 2131). It knows
//! nothing of the switch or the kernel: the caller moves Ethernet frames in
//! with [`RootNet::receive_frame`] and out with [`RootNet::take_frame`], and
//! passes the time (in milliseconds, any monotonic origin) to
//! [`RootNet::poll`]. Both queues are bounded; every frame is treated as
//! hostile input (it may come from a child partition), and every loop is
//! bounded per call.
//!
//! [`arp_sender`] is a stack-free helper that reads the sender of an ARP
//! packet, for mapping a child's MAC to its IPv4 address.
//!
//! A hostile child on the same switch can always answer ARP or DHCP in the
//! root's place (there is no authentication in either protocol); this crate
//! only guarantees that no frame makes it panic or grow without bound.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod arp;
mod device;
pub mod fuzzing;
mod ping;

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
pub use core::net::Ipv4Addr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{dhcpv4, icmp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Cidr};

pub use arp::arp_sender;
use device::Queues;

/// Frames held from the switch until the next [`RootNet::poll`]; more are
/// dropped (and counted).
pub const RX_QUEUE_FRAMES: usize = 64;
/// Frames held for the switch until [`RootNet::take_frame`]; more are
/// dropped (and counted), or held back in their socket.
pub const TX_QUEUE_FRAMES: usize = 64;
/// Largest frame accepted from the switch: 1500-byte payload, 14-byte
/// Ethernet II header, one 802.1Q tag (the switch's default maximum).
pub const MAX_RX_FRAME_LEN: usize = 1518;
/// Smallest frame accepted: an Ethernet II header.
pub const MIN_RX_FRAME_LEN: usize = 14;
/// Most echo requests in one ping session.
pub const MAX_PING_COUNT: u16 = 1000;

/// Most socket dispatch rounds per poll (each round sends at most a few
/// frames); the received frames per poll are bounded by [`RX_QUEUE_FRAMES`].
const MAX_EGRESS_ROUNDS: usize = 16;
/// Packets buffered in the ping socket in each direction.
const PING_SOCKET_PACKETS: usize = 8;
/// Bytes buffered in the ping socket in each direction (8 × 64-byte echo
/// messages, with room for larger echo requests others send us).
const PING_SOCKET_BYTES: usize = 2048;
/// The clock is clamped here (about 142 000 years) so that smoltcp's
/// `now + timeout` sums in signed microseconds cannot overflow.
const MAX_TIME_MS: u64 = 1 << 52;

/// An IPv4 address with its prefix length (CIDR notation, `10.0.0.2/24`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ipv4Net {
    /// The interface's address.
    pub addr: Ipv4Addr,
    /// Network prefix length, 1..=32.
    pub prefix_len: u8,
}

impl Ipv4Net {
    /// `addr/prefix_len`.
    pub const fn new(addr: Ipv4Addr, prefix_len: u8) -> Self {
        Ipv4Net { addr, prefix_len }
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = self.mask();
        (self.addr.to_bits() & mask) == (ip.to_bits() & mask)
    }

    /// The network's directed broadcast address, if it has one (not /31, /32).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        (self.prefix_len <= 30).then(|| Ipv4Addr::from_bits(self.addr.to_bits() | !self.mask()))
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32u32.saturating_sub(u32::from(self.prefix_len)))
            .unwrap_or(0)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// How the root gets its IPv4 address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NetConfig {
    /// Ask a DHCP server on the switch (RFC 2131).
    Dhcp,
    /// A fixed address, and optionally a default gateway on its network.
    Static {
        /// Address and prefix.
        addr: Ipv4Net,
        /// Default gateway; must be a unicast address inside `addr`'s network.
        gateway: Option<Ipv4Addr>,
    },
}

/// Where the current address came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AddrSource {
    /// No address (DHCP not bound yet, or its lease was lost).
    None,
    /// Configured statically.
    Static,
    /// Leased by DHCP.
    Dhcp,
}

/// The DHCP client's state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DhcpState {
    /// Static configuration: no DHCP client runs.
    Disabled,
    /// Looking for a lease (DISCOVER/REQUEST, RFC 2131 §4.4).
    Discovering,
    /// Holding a lease from this server (renewals are automatic).
    Bound {
        /// The server's identifier (RFC 2132 option 54).
        server: Ipv4Addr,
    },
}

/// Frame counters (saturating).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Counters {
    /// Frames accepted into the receive queue.
    pub frames_in: u64,
    /// Frames dropped because the receive queue was full.
    pub frames_in_dropped: u64,
    /// Frames refused for their length (shorter than a header, or longer
    /// than [`MAX_RX_FRAME_LEN`]).
    pub frames_in_malformed: u64,
    /// Frames ignored because they were addressed to another unicast MAC or a
    /// multicast group (the switch floods unknown unicast).
    pub frames_in_not_for_us: u64,
    /// Frames put in the outgoing queue.
    pub frames_out: u64,
    /// Frames dropped because the outgoing queue was full.
    pub frames_out_dropped: u64,
}

/// A snapshot of the interface, for `net status`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NetStatus {
    /// The interface's MAC.
    pub mac: [u8; 6],
    /// Current IPv4 address and prefix.
    pub ipv4: Option<Ipv4Net>,
    /// Current default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Where the address came from.
    pub source: AddrSource,
    /// DHCP client state.
    pub dhcp: DhcpState,
    /// Frame counters.
    pub counters: Counters,
}

/// Identifies one ping session.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub struct PingId(pub u32);

/// Why a ping session ended without any reply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PingFailure {
    /// No echo request ever left: the next hop did not answer ARP
    /// (RFC 826) before the last request timed out.
    ArpUnresolved,
    /// Requests were sent but no reply came back in time.
    NoReply,
    /// The address was lost (DHCP lease ended) during the session.
    AddressLost,
    /// The caller ended the session ([`RootNet::cancel_ping`]).
    Cancelled,
}

impl fmt::Display for PingFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PingFailure::ArpUnresolved => "ARP did not resolve the next hop",
            PingFailure::NoReply => "no reply",
            PingFailure::AddressLost => "address lost during the session",
            PingFailure::Cancelled => "cancelled",
        })
    }
}

/// Round-trip times of the replies received, in milliseconds of the
/// caller's clock (so their resolution is the caller's poll interval).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RttStats {
    /// Fastest reply.
    pub min_ms: u64,
    /// Mean, rounded down.
    pub avg_ms: u64,
    /// Slowest reply.
    pub max_ms: u64,
}

/// Progress or result of a ping session.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PingReport {
    /// The session.
    pub id: PingId,
    /// Who is pinged.
    pub target: Ipv4Addr,
    /// Requests asked for.
    pub count: u16,
    /// Requests issued so far (including any the stack had no room for).
    pub sent: u16,
    /// Matching replies received in time.
    pub received: u16,
    /// RTTs of the replies, if any.
    pub rtt: Option<RttStats>,
    /// Whether the session is over (every request answered or timed out).
    pub done: bool,
    /// Why it failed, when it is done with no reply.
    pub failure: Option<PingFailure>,
}

/// Errors of the [`RootNet`] API.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NetError {
    /// The MAC is multicast, broadcast or all zeros.
    InvalidMac,
    /// The static address is not a unicast host address, the prefix is not
    /// 1..=32, or the gateway is not a unicast address on that network.
    InvalidConfig,
    /// A ping session is still running.
    PingBusy,
    /// No IPv4 address yet (DHCP not bound).
    NoAddress,
    /// The target is off-link and there is no gateway.
    NoRoute,
    /// The target cannot be pinged: unspecified, broadcast, multicast, the
    /// network's broadcast address, or our own address (no loopback here).
    InvalidTarget,
    /// `count` is 0 or above [`MAX_PING_COUNT`], or `timeout_ms` is 0.
    InvalidArgument,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetError::InvalidMac => "MAC address is not a unicast station address",
            NetError::InvalidConfig => "invalid static IPv4 configuration",
            NetError::PingBusy => "a ping is already running",
            NetError::NoAddress => "no IPv4 address yet",
            NetError::NoRoute => "no route to the target (off-link, no gateway)",
            NetError::InvalidTarget => "target is not a unicast address of another host",
            NetError::InvalidArgument => "invalid ping count or timeout",
        })
    }
}

impl core::error::Error for NetError {}

/// The root's IP stack: one Ethernet interface over two frame queues.
pub struct RootNet {
    mac: [u8; 6],
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: Queues,
    dhcp: Option<SocketHandle>,
    addr: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
    source: AddrSource,
    dhcp_state: DhcpState,
    ping: Option<ping::Session>,
    next_ping_id: u32,
    ident_base: u16,
    now_ms: u64,
}

impl fmt::Debug for RootNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootNet")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl RootNet {
    /// An interface with MAC `mac`, configured by `config`, at time `now_ms`.
    ///
    /// The random seed (DHCP transaction IDs, RFC 2131 §4.1 `xid`; IPv4
    /// identification; ping identifiers) is derived from the MAC and `now_ms`.
    pub fn new(mac: [u8; 6], config: NetConfig, now_ms: u64) -> Result<Self, NetError> {
        let hw = EthernetAddress(mac);
        // smoltcp counts 00:00:00:00:00:00 as unicast; no station has it.
        if !hw.is_unicast() || mac == [0; 6] {
            return Err(NetError::InvalidMac);
        }
        if let NetConfig::Static { addr, gateway } = config {
            check_static(addr, gateway)?;
        }
        let now_ms = now_ms.min(MAX_TIME_MS);
        let seed = seed(mac, now_ms);

        let mut dev = Queues::new(RX_QUEUE_FRAMES, TX_QUEUE_FRAMES);
        let mut iface_config = Config::new(HardwareAddress::Ethernet(hw));
        iface_config.random_seed = seed;
        let iface = Interface::new(iface_config, &mut dev, instant(now_ms));

        let mut net = RootNet {
            mac,
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            dhcp: None,
            addr: None,
            gateway: None,
            source: AddrSource::None,
            dhcp_state: DhcpState::Disabled,
            ping: None,
            next_ping_id: 1,
            ident_base: (seed >> 16) as u16,
            now_ms,
        };
        match config {
            NetConfig::Dhcp => {
                net.dhcp = Some(net.sockets.add(dhcpv4::Socket::new()));
                net.dhcp_state = DhcpState::Discovering;
            }
            NetConfig::Static { addr, gateway } => {
                net.apply_addr(Some(addr), gateway);
                net.source = AddrSource::Static;
            }
        }
        Ok(net)
    }

    /// Queue one Ethernet frame from the switch for the next [`poll`].
    ///
    /// Frames of a bad length, or addressed to another unicast MAC or a
    /// multicast group, are ignored; with the queue full the frame is
    /// dropped. All three are counted in [`NetStatus::counters`].
    ///
    /// [`poll`]: RootNet::poll
    pub fn receive_frame(&mut self, frame: &[u8]) {
        let c = &mut self.dev.counters;
        if !(MIN_RX_FRAME_LEN..=MAX_RX_FRAME_LEN).contains(&frame.len()) {
            c.frames_in_malformed = c.frames_in_malformed.saturating_add(1);
            return;
        }
        // Only our MAC and broadcast (ARP requests, DHCP replies) matter; the
        // stack would discard the rest anyway, so keep them out of the queue.
        let dst = frame.get(..6);
        if dst != Some(&self.mac[..]) && dst != Some(&[0xff; 6][..]) {
            c.frames_in_not_for_us = c.frames_in_not_for_us.saturating_add(1);
            return;
        }
        // IPv4 from 0.0.0.0 (RFC 1122 §3.2.1.3: only a host learning its
        // own address sends from it, never to us): a DHCP OFFER from there
        // would make 0.0.0.0 the lease's server, and smoltcp asserts it
        // never sends to it (found by fuzz_rootnet).
        if frame.get(12..14) == Some(&[0x08, 0x00][..]) && frame.get(26..30) == Some(&[0; 4][..]) {
            c.frames_in_malformed = c.frames_in_malformed.saturating_add(1);
            return;
        }
        if self.dev.rx.len() >= self.dev.rx_cap {
            c.frames_in_dropped = c.frames_in_dropped.saturating_add(1);
            return;
        }
        c.frames_in = c.frames_in.saturating_add(1);
        self.dev.rx.push_back(frame.to_vec());
    }

    /// The next frame for the switch, oldest first.
    pub fn take_frame(&mut self) -> Option<Vec<u8>> {
        self.dev.tx.pop_front()
    }

    /// Run the stack at time `now_ms`: process the queued frames (at most
    /// [`RX_QUEUE_FRAMES`]), advance DHCP and the ping session, and queue
    /// what has to be sent. A clock that goes backwards is held at its
    /// latest value.
    pub fn poll(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms.min(MAX_TIME_MS));
        let now = instant(self.now_ms);

        self.iface.poll_maintenance(now);
        // One frame per call, so the loop bound is the queue bound.
        for _ in 0..RX_QUEUE_FRAMES {
            use smoltcp::iface::PollIngressSingleResult as R;
            match self
                .iface
                .poll_ingress_single(now, &mut self.dev, &mut self.sockets)
            {
                R::None => break,
                R::PacketProcessed | R::SocketStateChanged => {}
            }
        }
        self.dhcp_events();
        self.ping_tick();
        for _ in 0..MAX_EGRESS_ROUNDS {
            use smoltcp::iface::PollResult as R;
            match self.iface.poll_egress(now, &mut self.dev, &mut self.sockets) {
                R::None => break,
                R::SocketStateChanged => {}
            }
        }
        // Egress can end a lease too (expiry is noticed when dispatching).
        self.dhcp_events();
    }

    /// Start pinging `target`: `count` echo requests `interval_ms` apart,
    /// each waiting up to `timeout_ms` for its reply. Progress is in
    /// [`ping_status`]; requests go out from the next [`poll`] on.
    ///
    /// [`ping_status`]: RootNet::ping_status
    /// [`poll`]: RootNet::poll
    pub fn ping(
        &mut self,
        target: Ipv4Addr,
        count: u16,
        interval_ms: u64,
        timeout_ms: u64,
    ) -> Result<PingId, NetError> {
        if self.ping.as_ref().is_some_and(|s| !s.is_done()) {
            return Err(NetError::PingBusy);
        }
        if count == 0 || count > MAX_PING_COUNT || timeout_ms == 0 {
            return Err(NetError::InvalidArgument);
        }
        let addr = self.addr.ok_or(NetError::NoAddress)?;
        if target.is_unspecified()
            || target.is_broadcast()
            || target.is_multicast()
            || target.is_loopback()
            || target == addr.addr
            || Some(target) == addr.broadcast()
        {
            return Err(NetError::InvalidTarget);
        }
        if !addr.contains(target) && self.gateway.is_none() {
            return Err(NetError::NoRoute);
        }

        let id = PingId(self.next_ping_id);
        self.next_ping_id = self.next_ping_id.wrapping_add(1);
        // A fresh identifier per session (RFC 792 "Identifier"), so late
        // replies to an earlier session are not counted in this one.
        let ident = self.ident_base.wrapping_add(id.0 as u16);
        let mut socket = icmp::Socket::new(
            icmp::PacketBuffer::new(
                vec![icmp::PacketMetadata::EMPTY; PING_SOCKET_PACKETS],
                vec![0; PING_SOCKET_BYTES],
            ),
            icmp::PacketBuffer::new(
                vec![icmp::PacketMetadata::EMPTY; PING_SOCKET_PACKETS],
                vec![0; PING_SOCKET_BYTES],
            ),
        );
        // A fresh socket is unbound, and Ident is a specified endpoint, so
        // binding cannot fail; map it to an error all the same.
        socket
            .bind(icmp::Endpoint::Ident(ident))
            .map_err(|_| NetError::InvalidArgument)?;

        self.end_ping_socket();
        let handle = self.sockets.add(socket);
        self.dev.watch_ident = Some(ident);
        self.dev.echo_requests_out = 0;
        let params = ping::Params {
            count,
            interval_ms,
            timeout_ms,
        };
        self.ping = Some(ping::Session::new(id, target, ident, handle, params, self.now_ms));
        Ok(id)
    }

    /// End the running ping session now (the shell's Ctrl-C): requests not
    /// answered yet count as lost, and the next `ping` may start at once.
    pub fn cancel_ping(&mut self) {
        if let Some(session) = self.ping.as_mut()
            && !session.is_done()
        {
            session.finish(Some(PingFailure::Cancelled));
            self.end_ping_socket();
        }
    }

    /// The current or last ping session.
    pub fn ping_status(&self) -> Option<PingReport> {
        self.ping.as_ref().map(ping::Session::report)
    }

    /// Address, gateway, DHCP state and counters.
    pub fn status(&self) -> NetStatus {
        NetStatus {
            mac: self.mac,
            ipv4: self.addr,
            gateway: self.gateway,
            source: self.source,
            dhcp: self.dhcp_state,
            counters: self.dev.counters,
        }
    }

    /// Give the DHCP client's configuration changes to the interface.
    fn dhcp_events(&mut self) {
        let Some(handle) = self.dhcp else {
            return;
        };
        // Copy what we need out of the event: it borrows the socket.
        let event = match self.sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
            None => return,
            Some(dhcpv4::Event::Configured(cfg)) => Some((
                Ipv4Net::new(cfg.address.address(), cfg.address.prefix_len()),
                cfg.router,
                cfg.server,
            )),
            Some(dhcpv4::Event::Deconfigured) => None,
        };
        let unicast = |a: Ipv4Addr| !(a.is_unspecified() || a.is_broadcast() || a.is_multicast());
        let change = match event {
            Some((addr, _, server))
                if addr.prefix_len == 0 || !unicast(server.address) || !unicast(server.identifier) =>
            {
                // A lease no host could use (RFC 2131: a server answers from
                // its own unicast address; a /0 mask would make every address
                // on-link): refuse it and ask again (found by fuzz_rootnet:
                // smoltcp would renew towards 0.0.0.0 and assert).
                self.sockets.get_mut::<dhcpv4::Socket>(handle).reset();
                None
            }
            Some((addr, router, server)) => Some((addr, router, server.identifier)),
            None => None,
        };
        match change {
            Some((addr, router, server)) => {
                // smoltcp checked the address is unicast (RFC 2131 ACK
                // handling), and the prefix is 1..=32 (above). The router
                // option (RFC 2132 §3.5)
                // is only used if it is a usable next hop on that network.
                let gateway = router.filter(|gw| check_static(addr, Some(*gw)).is_ok());
                self.apply_addr(Some(addr), gateway);
                self.source = AddrSource::Dhcp;
                self.dhcp_state = DhcpState::Bound { server };
            }
            None => {
                self.apply_addr(None, None);
                self.source = AddrSource::None;
                self.dhcp_state = DhcpState::Discovering;
                if let Some(session) = self.ping.as_mut()
                    && !session.is_done()
                {
                    session.finish(Some(PingFailure::AddressLost));
                    self.end_ping_socket();
                }
            }
        }
    }

    /// Set (or clear) the interface address and default route.
    fn apply_addr(&mut self, addr: Option<Ipv4Net>, gateway: Option<Ipv4Addr>) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            if let Some(a) = addr {
                // Capacity is at least one address; a push cannot fail on an
                // empty list, and if it did the interface simply stays
                // unaddressed.
                let _ = addrs.push(IpCidr::Ipv4(Ipv4Cidr::new(a.addr, a.prefix_len)));
            }
        });
        let routes = self.iface.routes_mut();
        routes.remove_default_ipv4_route();
        let gateway = gateway.filter(|gw| routes.add_default_ipv4_route(*gw).is_ok());
        self.addr = addr;
        self.gateway = gateway;
    }

    /// Advance the ping session; free its socket once it is done.
    fn ping_tick(&mut self) {
        let Some(session) = self.ping.as_mut() else {
            return;
        };
        let Some(handle) = session.handle else {
            return;
        };
        let socket = self.sockets.get_mut::<icmp::Socket>(handle);
        session.tick(self.now_ms, socket, self.dev.echo_requests_out);
        if session.is_done() {
            self.end_ping_socket();
        }
    }

    /// Remove the ping socket (dropping requests still queued in it).
    fn end_ping_socket(&mut self) {
        if let Some(session) = self.ping.as_mut()
            && let Some(handle) = session.handle.take()
        {
            self.sockets.remove(handle);
        }
        self.dev.watch_ident = None;
    }
}

/// Check a static address (and gateway) is usable.
fn check_static(addr: Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<(), NetError> {
    let host = addr.addr;
    if !(1..=32).contains(&addr.prefix_len)
        || host.is_unspecified()
        || host.is_broadcast()
        || host.is_multicast()
        || host.is_loopback()
        || Some(host) == addr.broadcast()
    {
        return Err(NetError::InvalidConfig);
    }
    if let Some(gw) = gateway
        && (gw.is_unspecified()
            || gw.is_broadcast()
            || gw.is_multicast()
            || gw == host
            || !addr.contains(gw)
            || Some(gw) == addr.broadcast())
    {
        return Err(NetError::InvalidConfig);
    }
    Ok(())
}

/// A smoltcp instant from clamped milliseconds.
fn instant(ms: u64) -> Instant {
    Instant::from_millis(i64::try_from(ms.min(MAX_TIME_MS)).unwrap_or(0))
}

/// SplitMix64 of the MAC and the time: not cryptographic, only different
/// per MAC and boot, which is all DHCP `xid` and IPv4 IDs need.
fn seed(mac: [u8; 6], now_ms: u64) -> u64 {
    let mut m = [0u8; 8];
    m[..6].copy_from_slice(&mac);
    let mut z = u64::from_le_bytes(m) ^ now_ms.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
