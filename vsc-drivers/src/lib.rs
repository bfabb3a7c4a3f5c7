//! Virtual service clients: the child-side drivers for our Rust child OS.
//!
//! [`bus`] is the VMBus client transport: [`vmbus::client::Client`] driven
//! over a [`SynicTransport`] the child OS provides (HvPostMessage, its SIMP
//! slot, EOM: the hypervisor-facing parts, which need `unsafe` and stay in
//! the OS). No unsafe code here; host tests drive the bus against a real
//! [`vmbus::server::Server`].
//!
//! [`ic`], [`storvsc`] and [`netvsc`] are the device clients, each a
//! sans-IO state machine over one channel: the OS reads packets from the
//! channel's host-to-guest ring and hands them in, and writes the packets
//! the client hands back into the guest-to-host ring. They own no ring and
//! no memory mapping; host tests drive them against the real providers
//! (`storvsp`, `netvsp`).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod bus;
pub mod ic;
pub mod netvsc;
pub mod storvsc;

pub use bus::{Bus, BusError, PostStatus, SynicTransport};

/// Whose fault a device client's error is ([`storvsc::StorvscError`],
/// [`netvsc::NetvscError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    /// The host: what it sent breaks the protocol, or it refused a step.
    Host,
    /// The caller: the OS asked for something invalid, or at the wrong
    /// time, or gave memory smaller than it declared.
    Caller,
}
