//! Shutdown: the host asks the guest to power off or restart; the guest
//! answers with a status, then does it (Linux `hv_util.c`
//! `shutdown_onchannelcallback`: flags 0/1 power off, 2/3 restart, 4/5
//! hibernate; anything else is refused with `HV_E_FAIL`).

use crate::device::Service;
use alloc::string::String;
use alloc::vec::Vec;
use ic_protocol::{
    Message, MessageType, SHTDN_REASON_FLAG_PLANNED, SHUTDOWN_GUID, SHUTDOWN_VERSIONS, ShutdownFlags, Status,
    Version,
};
use vsp::InspectSink;
use zerocopy::IntoBytes;

/// Seconds the guest is given to shut down (`timeout_seconds`).
pub const SHUTDOWN_TIMEOUT_SECONDS: u32 = 60;

/// Longest reason text kept (the wire field holds 2047 bytes).
pub const MAX_REASON_BYTES: usize = 256;

/// Where a shutdown request is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShutdownState {
    /// None asked for.
    Idle,
    /// Asked for; goes out once the channel is negotiated.
    Queued {
        /// Restart instead of power off.
        reboot: bool,
    },
    /// Sent; no answer yet.
    Sent {
        /// Restart instead of power off.
        reboot: bool,
    },
    /// The guest answered OK (it is shutting down or restarting).
    Acknowledged {
        /// Restart instead of power off.
        reboot: bool,
    },
    /// The guest answered with this failure status.
    Refused(Status),
    /// The guest did not answer in time.
    TimedOut,
    /// The channel closed with the request in flight or queued.
    Cancelled,
}

/// The shutdown service.
pub struct Shutdown {
    pending: Option<(bool, String)>,
    /// Readout.
    pub state: ShutdownState,
    /// Requests made through the control handle.
    pub requested: u64,
}

impl Shutdown {
    /// Idle.
    pub fn new() -> Self {
        Self {
            pending: None,
            state: ShutdownState::Idle,
            requested: 0,
        }
    }

    /// Queue a request (replacing a queued one that has not gone out).
    pub(crate) fn request(&mut self, reboot: bool, reason: &str) -> bool {
        if matches!(self.state, ShutdownState::Sent { .. }) {
            return false;
        }
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.pending = Some((reboot, String::from(&reason[..end])));
        self.state = ShutdownState::Queued { reboot };
        self.requested = self.requested.saturating_add(1);
        true
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Service for Shutdown {
    const NAME: &'static str = "shutdown";
    const INTERFACE: [u8; 16] = SHUTDOWN_GUID;
    const MESSAGE_TYPE: MessageType = MessageType::SHUTDOWN;

    fn versions(&self) -> &'static [Version] {
        SHUTDOWN_VERSIONS
    }

    fn timeout_ns(&self) -> u64 {
        10_000_000_000
    }

    fn next_request(&mut self, _: (Version, Version), _: u64) -> Option<Vec<u8>> {
        let (reboot, reason) = self.pending.take()?;
        let flags = if reboot {
            ShutdownFlags(ShutdownFlags::RESTART.0 | ShutdownFlags::FORCE.0)
        } else {
            ShutdownFlags::FORCE
        };
        self.state = ShutdownState::Sent { reboot };
        let body = ic_protocol::shutdown_body(
            flags,
            SHTDN_REASON_FLAG_PLANNED,
            SHUTDOWN_TIMEOUT_SECONDS,
            &reason,
        );
        Some(Vec::from(body.as_bytes()))
    }

    fn answer(&mut self, _: (Version, Version), message: &Message<'_>) -> Result<(), &'static str> {
        let ShutdownState::Sent { reboot } = self.state else {
            return Err("shutdown answer with none sent");
        };
        let status = message.header.status();
        self.state = if status == Status::OK {
            ShutdownState::Acknowledged { reboot }
        } else {
            ShutdownState::Refused(status)
        };
        Ok(())
    }

    fn timed_out(&mut self) {
        self.state = ShutdownState::TimedOut;
    }

    fn closed(&mut self, reset: bool) {
        if matches!(self.state, ShutdownState::Sent { .. }) || (reset && self.pending.is_some()) {
            self.state = ShutdownState::Cancelled;
        }
        if reset {
            self.pending = None;
        } else if let Some((reboot, _)) = &self.pending {
            self.state = ShutdownState::Queued { reboot: *reboot };
        }
    }

    fn inspect(&self, out: &mut dyn InspectSink) {
        let s = match &self.state {
            ShutdownState::Idle => String::from("idle"),
            ShutdownState::Queued { reboot } => alloc::format!("{} queued", word(*reboot)),
            ShutdownState::Sent { reboot } => alloc::format!("{} sent", word(*reboot)),
            ShutdownState::Acknowledged { reboot } => alloc::format!("{} acknowledged", word(*reboot)),
            ShutdownState::Refused(st) => alloc::format!("refused ({st})"),
            ShutdownState::TimedOut => String::from("timed out"),
            ShutdownState::Cancelled => String::from("cancelled"),
        };
        out.text("shutdown", "shutdown", &s);
    }
}

fn word(reboot: bool) -> &'static str {
    if reboot { "restart" } else { "power off" }
}
