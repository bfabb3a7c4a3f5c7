//! A learning L2 virtual switch: ports, MAC learning, flooding, bounded per-port queues and
//! counters.
//!
//! The root partition hosts one [`Switch`] with a port per child synthetic NIC
//! ([`PortKind::ChildNic`], MAC assigned by the root, spoofing protection on by default as in
//! Hyper-V), one for the root's own IP stack ([`PortKind::RootHost`]) and an uplink to its
//! passthrough NIC ([`PortKind::Uplink`]).
//!
//! - **Forwarding.** A frame enters with [`Switch::ingress`]: its source MAC is learned on the
//!   ingress port, then it is queued on the port its destination is assigned to or learned on;
//!   broadcast, multicast and unknown unicast are flooded to every other port. A frame never
//!   goes back to the port it came from.
//! - **MAC table.** Ports' assigned MACs are static entries. Learned entries are bounded
//!   ([`Config::mac_table_capacity`]; the least recently seen is evicted) and age out after
//!   [`Config::mac_max_age`] of the caller's clock, passed as `now` to every call that needs it.
//! - **Queues.** Each port has a bounded lock-free egress queue (`crossbeam-queue`'s
//!   `ArrayQueue`) drained with [`Switch::egress`] or an [`EgressQueue`] handle. A full queue
//!   drops the frame for that port only and counts it; nothing blocks. Frames are shared
//!   immutable buffers ([`Frame`]), copied once at ingress.
//! - **Accounting.** Every frame offered at ingress is either accepted or dropped and counted
//!   once (bad size, invalid source, spoofed source, or no such port); every copy forwarded to
//!   a port is either queued or counted as a queue-full drop ([`PortCounters`],
//!   [`SwitchCounters`], [`Switch::snapshot`]).
//!
//! The crate is `no_std` + `alloc` and has no `unsafe`.
// `no_std` only outside tests, so host tests get std; note that rust-analyzer builds with
// `test` set, so a no_std breakage may not show in the editor: build for x86_64-unknown-none.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod frame;
mod mac;
mod port;
mod snapshot;
mod switch;
mod table;

#[cfg(test)]
mod tests;

pub use frame::{ETH_HEADER_LEN, Frame};
pub use mac::{MacAddr, ParseMacError};
pub use port::{DEFAULT_QUEUE_DEPTH, EgressQueue, MAX_NAME_LEN, PortConfig, PortCounters, PortId, PortKind};
pub use snapshot::{MacEntry, PortSnapshot, SwitchSnapshot};
pub use switch::{
    Config, Delivery, FloodReason, Forward, MAX_FRAME_SIZE_LIMIT, RemovedPort, Switch, SwitchCounters,
    SwitchError,
};
pub use table::MacOrigin;
