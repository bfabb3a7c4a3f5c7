//! Time sync: the host pushes its UTC time (100 ns since 1601) with SYNC
//! (set the clock now) or SAMPLE (a hint); the guest answers with the same
//! message (Linux `hv_util.c` `timesync_onchannelcallback`). From service
//! version 4.0 the message also carries the partition reference time the
//! sample was read at (`ictimesync_ref_data`).

use crate::device::Service;
use alloc::vec::Vec;
use ic_protocol::{Message, MessageType, TIMESYNC_GUID, TIMESYNC_VERSIONS, TimeSample, Version};
use vsp::InspectSink;

/// What the control handle reads about time sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimesyncState {
    /// Samples pushed through the control handle.
    pub pushed: u64,
    /// Samples sent to the guest.
    pub sent: u64,
    /// Samples the guest answered.
    pub acked: u64,
    /// The host time of the last sample pushed.
    pub last_pushed: Option<u64>,
    /// The host time of the last sample the guest answered.
    pub last_acked: Option<u64>,
}

/// The time sync service.
pub struct Timesync {
    /// Offer version 4.0, whose samples carry the partition reference time
    /// they were read at. Linux 6.1 (`hv_util.c` `hv_get_adj_host_time`)
    /// then adds the reference time elapsed since: a host that cannot read
    /// the guest's reference counter must not offer 4.0, or the guest's
    /// clock lands ahead by its whole uptime. Below 4.0 Linux takes the
    /// sample as current.
    with_reference_time: bool,
    pending: Option<TimeSample>,
    in_flight: Option<TimeSample>,
    /// Readout.
    pub state: TimesyncState,
}

impl Timesync {
    /// Nothing pushed yet; versions 3.0 and 1.0 only.
    pub fn new() -> Self {
        Self::with_reference_time(false)
    }

    /// Nothing pushed yet; version 4.0 too if `with_reference_time` (every
    /// sample must then carry its reference time).
    pub fn with_reference_time(with_reference_time: bool) -> Self {
        Self {
            with_reference_time,
            pending: None,
            in_flight: None,
            state: TimesyncState::default(),
        }
    }

    /// Queue `sample` (only the newest waits).
    pub(crate) fn push(&mut self, sample: TimeSample) {
        self.pending = Some(sample);
        self.state.pushed = self.state.pushed.saturating_add(1);
        self.state.last_pushed = Some(sample.host_time);
    }
}

impl Default for Timesync {
    fn default() -> Self {
        Self::new()
    }
}

impl Service for Timesync {
    const NAME: &'static str = "timesync";
    const INTERFACE: [u8; 16] = TIMESYNC_GUID;
    const MESSAGE_TYPE: MessageType = MessageType::TIMESYNC;

    fn versions(&self) -> &'static [Version] {
        if self.with_reference_time {
            TIMESYNC_VERSIONS
        } else {
            // TIMESYNC_VERSIONS is 4.0, 3.0, 1.0: drop 4.0.
            TIMESYNC_VERSIONS.get(1..).unwrap_or(TIMESYNC_VERSIONS)
        }
    }

    fn timeout_ns(&self) -> u64 {
        5_000_000_000
    }

    fn next_request(&mut self, (_, version): (Version, Version), _: u64) -> Option<Vec<u8>> {
        let sample = self.pending.take()?;
        self.in_flight = Some(sample);
        self.state.sent = self.state.sent.saturating_add(1);
        Some(ic_protocol::timesync_body(version, sample))
    }

    fn answer(
        &mut self,
        (_, version): (Version, Version),
        message: &Message<'_>,
    ) -> Result<(), &'static str> {
        let sent = self.in_flight.take().ok_or("timesync answer with none sent")?;
        let body = message
            .body()
            .map_err(|_| "timesync answer body beyond the packet")?;
        let got = ic_protocol::parse_timesync(version, body).map_err(|_| "timesync answer too short")?;
        if got.host_time != sent.host_time {
            return Err("timesync answer does not echo the sample");
        }
        self.state.acked = self.state.acked.saturating_add(1);
        self.state.last_acked = Some(got.host_time);
        Ok(())
    }

    fn timed_out(&mut self) {
        self.in_flight = None;
    }

    fn closed(&mut self, reset: bool) {
        self.in_flight = None;
        if reset {
            self.pending = None;
        }
    }

    fn inspect(&self, out: &mut dyn InspectSink) {
        out.counter("time_pushed", "time samples pushed", self.state.pushed);
        out.counter("time_acked", "time samples acked", self.state.acked);
        let show = |v: Option<u64>| v.map(|t| alloc::format!("{t}")).unwrap_or_default();
        out.text(
            "last_pushed",
            "last host time pushed (100ns since 1601)",
            &show(self.state.last_pushed),
        );
        out.text("last_acked", "last host time acked", &show(self.state.last_acked));
    }
}
