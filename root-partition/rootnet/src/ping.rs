//! One ICMP echo session (RFC 792): when to send, which replies match, RTTs.

use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use smoltcp::iface::SocketHandle;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::icmp;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress};

use crate::{PingFailure, PingId, PingReport, RttStats};

/// Echo data carried by every request (RFC 792 "Data"): 32 bytes, the
/// classic size, starting with the sequence number so a reply echoing some
/// other request's data is not taken for this one.
const ECHO_DATA_LEN: usize = 32;

/// Most replies read from the socket in one tick (the socket's receive queue
/// is bounded too; this keeps the work per poll bounded regardless).
const MAX_REPLIES_PER_TICK: usize = 16;

/// How many requests, how far apart, how long to wait for each reply.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    pub(crate) count: u16,
    pub(crate) interval_ms: u64,
    pub(crate) timeout_ms: u64,
}

/// What happened to one sequence number.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Slot {
    /// Not sent yet.
    Pending,
    /// Sent at this time (ms), no reply yet.
    Waiting(u64),
    /// Reply received.
    Replied,
    /// No reply within the timeout, or the stack could not take the request.
    Lost,
}

/// A running or finished echo session.
pub(crate) struct Session {
    pub(crate) id: PingId,
    pub(crate) target: Ipv4Addr,
    pub(crate) ident: u16,
    /// The session's ICMP socket while it runs; removed when done.
    pub(crate) handle: Option<SocketHandle>,
    interval_ms: u64,
    timeout_ms: u64,
    next_seq: u16,
    next_send_ms: u64,
    slots: Vec<Slot>,
    sent: u16,
    received: u16,
    rtt_min: u64,
    rtt_max: u64,
    rtt_sum: u64,
    done: bool,
    failure: Option<PingFailure>,
}

impl Session {
    /// `params.count` is at least 1 and at most [`crate::MAX_PING_COUNT`]
    /// (checked by the caller), so `slots` is bounded.
    pub(crate) fn new(
        id: PingId,
        target: Ipv4Addr,
        ident: u16,
        handle: SocketHandle,
        params: Params,
        now_ms: u64,
    ) -> Self {
        Session {
            id,
            target,
            ident,
            handle: Some(handle),
            interval_ms: params.interval_ms,
            timeout_ms: params.timeout_ms,
            next_seq: 0,
            next_send_ms: now_ms,
            slots: vec![Slot::Pending; usize::from(params.count)],
            sent: 0,
            received: 0,
            rtt_min: u64::MAX,
            rtt_max: 0,
            rtt_sum: 0,
            done: false,
            failure: None,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// One step: read replies, expire requests, send the next one if due.
    /// `echo_requests_out` is how many of this session's requests have left
    /// the stack as frames (so ARP resolved at some point).
    pub(crate) fn tick(&mut self, now_ms: u64, socket: &mut icmp::Socket<'_>, echo_requests_out: u32) {
        if self.done {
            return;
        }
        self.read_replies(now_ms, socket);
        for slot in &mut self.slots {
            if let Slot::Waiting(sent_at) = *slot
                && now_ms >= sent_at.saturating_add(self.timeout_ms)
            {
                *slot = Slot::Lost;
            }
        }
        self.send_due(now_ms, socket);

        let all_sent = usize::from(self.next_seq) >= self.slots.len();
        if all_sent && !self.slots.iter().any(|s| matches!(s, Slot::Waiting(_))) {
            let failure = if self.received > 0 {
                // Partial loss is a result, not a failure.
                None
            } else if echo_requests_out == 0 {
                // Not one request left the stack: the next hop never answered
                // ARP (RFC 826), so there was no MAC to send to.
                Some(PingFailure::ArpUnresolved)
            } else {
                Some(PingFailure::NoReply)
            };
            self.finish(failure);
        }
    }

    /// End the session now (done, with `failure` if any).
    pub(crate) fn finish(&mut self, failure: Option<PingFailure>) {
        for slot in &mut self.slots {
            if matches!(slot, Slot::Waiting(_)) {
                *slot = Slot::Lost;
            }
        }
        self.done = true;
        self.failure = failure;
    }

    fn read_replies(&mut self, now_ms: u64, socket: &mut icmp::Socket<'_>) {
        for _ in 0..MAX_REPLIES_PER_TICK {
            let Ok((bytes, from)) = socket.recv() else {
                break;
            };
            if from != IpAddress::Ipv4(self.target) {
                continue;
            }
            let Ok(packet) = Icmpv4Packet::new_checked(bytes) else {
                continue;
            };
            // The interface verified the checksum already; the socket queue
            // holds a re-emitted copy.
            let Ok(Icmpv4Repr::EchoReply { ident, seq_no, data }) =
                Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default())
            else {
                // The socket also takes echo *requests* with our identifier
                // (somebody pinging us); those are not replies.
                continue;
            };
            // RFC 792: the reply returns the request's identifier, sequence
            // number and data unchanged.
            if ident != self.ident || data != echo_data(seq_no) {
                continue;
            }
            let Some(slot) = self.slots.get_mut(usize::from(seq_no)) else {
                continue;
            };
            if let Slot::Waiting(sent_at) = *slot {
                *slot = Slot::Replied;
                let rtt = now_ms.saturating_sub(sent_at);
                self.received = self.received.saturating_add(1);
                self.rtt_min = self.rtt_min.min(rtt);
                self.rtt_max = self.rtt_max.max(rtt);
                self.rtt_sum = self.rtt_sum.saturating_add(rtt);
            }
            // Duplicates and replies after the timeout are ignored.
        }
    }

    fn send_due(&mut self, now_ms: u64, socket: &mut icmp::Socket<'_>) {
        let seq = self.next_seq;
        let Some(slot) = self.slots.get_mut(usize::from(seq)) else {
            return;
        };
        if now_ms < self.next_send_ms {
            return;
        }
        let data = echo_data(seq);
        let repr = Icmpv4Repr::EchoRequest {
            ident: self.ident,
            seq_no: seq,
            data: &data,
        };
        // RFC 792 echo: type 8, code 0, checksum, identifier, sequence, data.
        *slot = match socket.send(repr.buffer_len(), IpAddress::Ipv4(self.target)) {
            Ok(buf) => {
                let mut packet = Icmpv4Packet::new_unchecked(buf);
                repr.emit(&mut packet, &ChecksumCapabilities::default());
                Slot::Waiting(now_ms)
            }
            // The socket's queue is full (requests piling up behind an
            // unresolved ARP entry): this one is lost.
            Err(_) => Slot::Lost,
        };
        self.sent = self.sent.saturating_add(1);
        self.next_seq = seq.saturating_add(1);
        // At most one request per tick, whatever the interval.
        self.next_send_ms = now_ms.saturating_add(self.interval_ms);
    }

    pub(crate) fn report(&self) -> PingReport {
        let rtt = (self.received > 0).then(|| RttStats {
            min_ms: self.rtt_min,
            avg_ms: self.rtt_sum / u64::from(self.received),
            max_ms: self.rtt_max,
        });
        PingReport {
            id: self.id,
            target: self.target,
            count: u16::try_from(self.slots.len()).unwrap_or(u16::MAX),
            sent: self.sent,
            received: self.received,
            rtt,
            done: self.done,
            failure: self.failure,
        }
    }
}

/// The data of the echo request with sequence number `seq`.
fn echo_data(seq: u16) -> [u8; ECHO_DATA_LEN] {
    let mut data = [0u8; ECHO_DATA_LEN];
    let [hi, lo] = seq.to_be_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i as u8).wrapping_add(lo) ^ hi;
    }
    data
}
