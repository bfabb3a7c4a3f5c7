//! Heartbeat: the host sends a sequence number every interval; the guest
//! answers it plus one (Linux `hv_util.c` `heartbeat_onchannelcallback`).
//! A request unanswered when the next one is due counts as missed.

use crate::device::Service;
use alloc::vec::Vec;
use ic_protocol::{HEARTBEAT_GUID, HEARTBEAT_VERSIONS, Message, MessageType, Version};
use vsp::InspectSink;
use zerocopy::IntoBytes;

/// What the control handle reads about the heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatState {
    /// Heartbeats sent.
    pub sent: u64,
    /// Heartbeats answered correctly.
    pub acked: u64,
    /// Heartbeats not answered within the interval.
    pub missed: u64,
    /// The sequence number of the last correct answer (the sent one + 1).
    pub last_acked: Option<u64>,
}

/// The heartbeat service.
pub struct Heartbeat {
    interval_ns: u64,
    next_due: Option<u64>,
    next_seq: u64,
    sent_seq: Option<u64>,
    /// Readout.
    pub state: HeartbeatState,
}

impl Heartbeat {
    /// A heartbeat every `interval_ns` (at least 1 ms).
    pub fn new(interval_ns: u64) -> Self {
        Self {
            interval_ns: interval_ns.max(1_000_000),
            next_due: None,
            next_seq: 0,
            sent_seq: None,
            state: HeartbeatState::default(),
        }
    }
}

impl Service for Heartbeat {
    const NAME: &'static str = "heartbeat";
    const INTERFACE: [u8; 16] = HEARTBEAT_GUID;
    const MESSAGE_TYPE: MessageType = MessageType::HEARTBEAT;

    fn versions(&self) -> &'static [Version] {
        HEARTBEAT_VERSIONS
    }

    fn timeout_ns(&self) -> u64 {
        self.interval_ns
    }

    fn next_request(&mut self, _: (Version, Version), now_ns: u64) -> Option<Vec<u8>> {
        if self.next_due.is_some_and(|due| now_ns < due) {
            return None;
        }
        self.next_due = Some(now_ns.saturating_add(self.interval_ns));
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.sent_seq = Some(seq);
        self.state.sent = self.state.sent.saturating_add(1);
        Some(Vec::from(ic_protocol::heartbeat_body(seq).as_bytes()))
    }

    fn answer(&mut self, _: (Version, Version), message: &Message<'_>) -> Result<(), &'static str> {
        let sent = self.sent_seq.take().ok_or("heartbeat answer with none sent")?;
        let body = message
            .body()
            .map_err(|_| "heartbeat answer body beyond the packet")?;
        let seq = ic_protocol::parse_heartbeat(body).map_err(|_| "heartbeat answer too short")?;
        if seq != sent.wrapping_add(1) {
            return Err("heartbeat answer not the sequence plus one");
        }
        self.state.acked = self.state.acked.saturating_add(1);
        self.state.last_acked = Some(seq);
        Ok(())
    }

    fn timed_out(&mut self) {
        self.sent_seq = None;
        self.state.missed = self.state.missed.saturating_add(1);
    }

    fn closed(&mut self, _reset: bool) {
        self.sent_seq = None;
        self.next_due = None;
    }

    fn inspect(&self, out: &mut dyn InspectSink) {
        out.counter("heartbeats_sent", "heartbeats sent", self.state.sent);
        out.counter("heartbeats_acked", "heartbeats acked", self.state.acked);
        out.counter("heartbeats_missed", "heartbeats missed", self.state.missed);
        match self.state.last_acked {
            Some(s) => out.text("last_sequence", "last sequence acked", &alloc::format!("{s}")),
            None => out.text("last_sequence", "last sequence acked", ""),
        }
    }
}
