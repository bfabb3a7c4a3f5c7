//! Hyper-V integration service providers (heartbeat, shutdown, time sync,
//! KVP) as VMBus devices ([`vsp::Device`]).
//!
//! Each service is an [`IcDevice`] over a [`Service`]: once the guest opens
//! the channel the host speaks first, sending `ICMSGTYPE_NEGOTIATE` with
//! framework versions 3.0/1.0 and the service's versions (on the next
//! [`vsp::Device::tick`] or poll); the guest answers with the versions it
//! chose (Linux `vmbus_prep_negotiate_resp`); then the service's requests
//! go out one at a time, each matched to its answer by the VMBus
//! transaction id. Host-to-guest packets never exceed
//! [`ic_protocol::MAX_HOST_PACKET`].
//!
//! A guest is not trusted: a short, mistyped or inconsistent answer is
//! counted as a violation and dropped, an answer nobody asked for (late,
//! duplicate, invented transaction id) is counted and ignored, and a
//! request left unanswered times out; the channel keeps working. A guest
//! that corrupts its rings stops the channel ([`vsp::Channel`]).
//!
//! The root drives the services without naming their types:
//! [`IntegrationServices::new`] returns the four devices (to offer) and one
//! cloneable [`Controls`] handle that shares their state (`Rc<RefCell>`):
//! requests (shutdown, time, KVP) are queued on it and go out on the
//! device's next tick or poll; readouts come back through it.
//!
//! Sources: Linux 6.1 `drivers/hv/hv_util.c`, `hv_kvp.c`,
//! `channel_mgmt.c`; microsoft/openvmm `vm/devices/hyperv_ic` (host side).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod device;
pub mod fuzzing;
mod heartbeat;
mod kvp;
mod shutdown;
mod timesync;

pub use crate::device::{IcDevice, Phase, Service, ServiceStatus, Shared};
pub use heartbeat::{Heartbeat, HeartbeatState};
pub use kvp::{Kvp, KvpOp, KvpOutcome, KvpResult, MAX_ENTRIES_PER_POOL, MAX_QUEUED, MAX_RESULTS};
pub use shutdown::{MAX_REASON_BYTES, SHUTDOWN_TIMEOUT_SECONDS, Shutdown, ShutdownState};
pub use timesync::{Timesync, TimesyncState};

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use ic_protocol::{KvpPool, TimeSample};
use vmbus::memory::SharedMemory;
use vsp::Device;

/// How the services are set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcConfig {
    /// Time between heartbeats (an unanswered one counts as missed when
    /// the next is due).
    pub heartbeat_interval_ns: u64,
    /// The host can give every time sample the guest's partition reference
    /// time: time sync offers version 4.0 too (see [`Timesync`]).
    pub timesync_reference_time: bool,
}

impl Default for IcConfig {
    fn default() -> Self {
        // Hyper-V sends a heartbeat every two seconds (Linux hv_util.c).
        Self {
            heartbeat_interval_ns: 2_000_000_000,
            timesync_reference_time: false,
        }
    }
}

/// Why a control request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// Too many requests wait already.
    QueueFull,
    /// A shutdown request is in flight.
    Busy,
    /// The pool is not one of the five.
    UnknownPool(u8),
    /// The key or value does not fit its wire field.
    TooLong(&'static str),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueFull => f.write_str("too many requests queued"),
            Self::Busy => f.write_str("a request is in flight"),
            Self::UnknownPool(p) => write!(f, "no KVP pool {p} (0-4)"),
            Self::TooLong(what) => write!(f, "the {what} is too long"),
        }
    }
}

/// Heartbeat readout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatStatus {
    /// Channel state and counters.
    pub service: ServiceStatus,
    /// Heartbeat counters.
    pub state: HeartbeatState,
}

/// Shutdown readout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownStatus {
    /// Channel state and counters.
    pub service: ServiceStatus,
    /// The last request's fate.
    pub state: ShutdownState,
}

/// Time sync readout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimesyncStatus {
    /// Channel state and counters.
    pub service: ServiceStatus,
    /// Samples pushed and acknowledged.
    pub state: TimesyncState,
}

/// KVP readout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvpStatus {
    /// Channel state and counters.
    pub service: ServiceStatus,
    /// Pairs seen per pool (pools with none included).
    pub pools: Vec<(KvpPool, Vec<(String, String)>)>,
    /// Finished requests, oldest first (at most [`MAX_RESULTS`]).
    pub results: Vec<KvpResult>,
    /// Requests waiting or in flight.
    pub queued: usize,
}

/// The handle the root's CLI drives the services with (cloneable; shares
/// the devices' state).
#[derive(Clone)]
pub struct Controls {
    heartbeat: Rc<RefCell<Shared<Heartbeat>>>,
    shutdown: Rc<RefCell<Shared<Shutdown>>>,
    timesync: Rc<RefCell<Shared<Timesync>>>,
    kvp: Rc<RefCell<Shared<Kvp>>>,
}

/// The four integration services.
pub struct IntegrationServices;

impl IntegrationServices {
    /// The devices to offer, in the order shutdown, time sync, heartbeat,
    /// KVP, and the handle that controls them.
    // The devices and their handle are made together: there is no
    // `IntegrationServices` value to return.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<M: SharedMemory + 'static>(config: IcConfig) -> (Vec<Box<dyn Device<M>>>, Controls) {
        let controls = Controls {
            heartbeat: Shared::new(Heartbeat::new(config.heartbeat_interval_ns)),
            shutdown: Shared::new(Shutdown::new()),
            timesync: Shared::new(Timesync::with_reference_time(config.timesync_reference_time)),
            kvp: Shared::new(Kvp::new()),
        };
        let devices = alloc::vec![
            device::boxed::<M, Shutdown>(&controls.shutdown),
            device::boxed::<M, Timesync>(&controls.timesync),
            device::boxed::<M, Heartbeat>(&controls.heartbeat),
            device::boxed::<M, Kvp>(&controls.kvp),
        ];
        (devices, controls)
    }
}

impl Controls {
    /// Ask the guest to power off (or restart, `reboot`), with `reason`
    /// as the display message (cut to [`MAX_REASON_BYTES`]). Goes out once
    /// the shutdown channel is negotiated; replaces a queued request.
    pub fn request_shutdown(&self, reboot: bool, reason: &str) -> Result<(), ControlError> {
        if self.shutdown.borrow_mut().service.request(reboot, reason) {
            Ok(())
        } else {
            Err(ControlError::Busy)
        }
    }

    /// Push the host's time: `host_time` in 100 ns since 1601-01-01 UTC;
    /// `reference_time` the partition reference counter it was read at
    /// (sent with service version 4.0; Linux adds the reference time that
    /// has passed since, so give it when known, else 0 is sent); `sync`
    /// sets the guest's clock at once (else a sample). Only the newest
    /// unsent sample waits.
    pub fn push_time(&self, host_time: u64, reference_time: Option<u64>, sync: bool) {
        let flags = if sync {
            ic_protocol::TimesyncFlags::SYNC
        } else {
            ic_protocol::TimesyncFlags::SAMPLE
        };
        self.timesync.borrow_mut().service.push(TimeSample {
            host_time,
            reference_time,
            flags,
        });
    }

    fn kvp_request(&self, pool: KvpPool, op: KvpOp) -> Result<u32, ControlError> {
        if !pool.is_known() {
            return Err(ControlError::UnknownPool(pool.0));
        }
        let (key, value) = match &op {
            KvpOp::Enumerate => ("", ""),
            KvpOp::Get(k) | KvpOp::Delete(k) => (k.as_str(), ""),
            KvpOp::Set(k, v) => (k.as_str(), v.as_str()),
        };
        if key.encode_utf16().count() >= ic_protocol::KVP_MAX_KEY_BYTES / 2 {
            return Err(ControlError::TooLong("key"));
        }
        if value.encode_utf16().count() >= ic_protocol::KVP_MAX_VALUE_BYTES / 2 {
            return Err(ControlError::TooLong("value"));
        }
        self.kvp
            .borrow_mut()
            .service
            .enqueue(pool, op)
            .ok_or(ControlError::QueueFull)
    }

    /// Enumerate `pool` (replacing its listing when done); the request id.
    pub fn kvp_enumerate(&self, pool: KvpPool) -> Result<u32, ControlError> {
        self.kvp_request(pool, KvpOp::Enumerate)
    }

    /// Get `key` from `pool`; the request id.
    pub fn kvp_get(&self, pool: KvpPool, key: &str) -> Result<u32, ControlError> {
        self.kvp_request(pool, KvpOp::Get(String::from(key)))
    }

    /// Set `key` to `value` in `pool`; the request id.
    pub fn kvp_set(&self, pool: KvpPool, key: &str, value: &str) -> Result<u32, ControlError> {
        self.kvp_request(pool, KvpOp::Set(String::from(key), String::from(value)))
    }

    /// Delete `key` from `pool`; the request id.
    pub fn kvp_delete(&self, pool: KvpPool, key: &str) -> Result<u32, ControlError> {
        self.kvp_request(pool, KvpOp::Delete(String::from(key)))
    }

    /// Heartbeat state.
    pub fn heartbeat(&self) -> HeartbeatStatus {
        let s = self.heartbeat.borrow();
        HeartbeatStatus {
            service: s.status.clone(),
            state: s.service.state,
        }
    }

    /// Shutdown state.
    pub fn shutdown(&self) -> ShutdownStatus {
        let s = self.shutdown.borrow();
        ShutdownStatus {
            service: s.status.clone(),
            state: s.service.state.clone(),
        }
    }

    /// Time sync state.
    pub fn timesync(&self) -> TimesyncStatus {
        let s = self.timesync.borrow();
        TimesyncStatus {
            service: s.status.clone(),
            state: s.service.state,
        }
    }

    /// KVP state: pools seen and finished requests.
    pub fn kvp(&self) -> KvpStatus {
        let s = self.kvp.borrow();
        KvpStatus {
            service: s.status.clone(),
            pools: s
                .service
                .pools
                .iter()
                .enumerate()
                .map(|(i, l)| (KvpPool(i as u8), l.clone()))
                .collect(),
            results: s.service.results.iter().cloned().collect(),
            queued: s.service.queued(),
        }
    }

    /// The result of KVP request `id`, once finished (and still remembered).
    pub fn kvp_result(&self, id: u32) -> Option<KvpResult> {
        self.kvp
            .borrow()
            .service
            .results
            .iter()
            .find(|r| r.id == id)
            .cloned()
    }
}

#[cfg(test)]
mod tests;
