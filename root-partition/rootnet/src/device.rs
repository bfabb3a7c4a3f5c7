//! The smoltcp `Device`: two bounded frame queues between the stack and the
//! caller (who moves frames to and from the virtual switch).

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::Counters;

/// Largest frame the stack sends: a 1500-byte IPv4 MTU plus the 14-byte
/// Ethernet II header (no FCS, no VLAN tag: the switch adds neither).
pub(crate) const TX_MTU: usize = 1514;

/// Frame queues plus the counters and the echo watch that live with them.
pub(crate) struct Queues {
    /// Frames from the switch, oldest first. Bounded by `rx_cap`.
    pub(crate) rx: VecDeque<Vec<u8>>,
    /// Frames for the switch, oldest first. Bounded by `tx_cap`.
    pub(crate) tx: VecDeque<Vec<u8>>,
    pub(crate) rx_cap: usize,
    pub(crate) tx_cap: usize,
    pub(crate) counters: Counters,
    /// ICMP identifier of the running ping session, if any; outgoing echo
    /// requests with it are counted in `echo_requests_out`. That is how a
    /// ping tells "ARP never resolved" (nothing left) from "no reply".
    pub(crate) watch_ident: Option<u16>,
    pub(crate) echo_requests_out: u32,
}

impl Queues {
    pub(crate) fn new(rx_cap: usize, tx_cap: usize) -> Self {
        Queues {
            rx: VecDeque::with_capacity(rx_cap),
            tx: VecDeque::with_capacity(tx_cap),
            rx_cap,
            tx_cap,
            counters: Counters::default(),
            watch_ident: None,
            echo_requests_out: 0,
        }
    }

    /// Queue a frame the stack built, or drop and count it if full.
    fn push_tx(&mut self, frame: Vec<u8>) {
        if self.tx.len() >= self.tx_cap {
            self.counters.frames_out_dropped = self.counters.frames_out_dropped.saturating_add(1);
            return;
        }
        if let Some(ident) = self.watch_ident
            && is_echo_request(&frame, ident)
        {
            self.echo_requests_out = self.echo_requests_out.saturating_add(1);
        }
        self.counters.frames_out = self.counters.frames_out.saturating_add(1);
        self.tx.push_back(frame);
    }
}

/// Whether `frame` is an untagged Ethernet/IPv4 ICMP echo request (RFC 792
/// type 8) carrying `ident`. Only our own frames are inspected here, but the
/// parse is still fully checked.
fn is_echo_request(frame: &[u8], ident: u16) -> bool {
    let Some(ethertype) = frame.get(12..14) else {
        return false;
    };
    if ethertype != [0x08, 0x00] {
        return false;
    }
    let Some(&ver_ihl) = frame.get(14) else {
        return false;
    };
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 || frame.get(23) != Some(&1) {
        return false;
    }
    let icmp = 14 + ihl;
    // ICMP echo: type(1) code(1) checksum(2) identifier(2) sequence(2).
    frame.get(icmp) == Some(&8) && frame.get(icmp + 4..icmp + 6) == Some(&ident.to_be_bytes()[..])
}

impl phy::Device for Queues {
    type RxToken<'a>
        = RxToken
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(self)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        // Back-pressure: with the outgoing queue full, socket packets (DHCP,
        // echo requests) stay in their sockets instead of being dropped.
        if self.tx.len() >= self.tx_cap {
            return None;
        }
        Some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = TX_MTU;
        caps
    }
}

/// One received frame, handed to smoltcp.
pub(crate) struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

/// Permission to queue one frame for the switch.
pub(crate) struct TxToken<'a>(&'a mut Queues);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        // smoltcp asks for at most the MTU; a fresh zeroed buffer per frame
        // keeps stale bytes of an earlier frame from leaking into padding.
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        // A reply made during ingress (ARP reply, echo reply) gets a token even
        // when the queue is full; `push_tx` drops and counts it then.
        self.0.push_tx(frame);
        r
    }
}
