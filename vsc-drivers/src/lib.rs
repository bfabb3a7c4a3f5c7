//! Virtual service clients: the child-side drivers for our Rust child OS.
//!
//! [`bus`] is the VMBus client transport: [`vmbus::client::Client`] driven
//! over a [`SynicTransport`] the child OS provides (HvPostMessage, its SIMP
//! slot, EOM: the hypervisor-facing parts, which need `unsafe` and stay in
//! the OS). No unsafe code here; host tests drive the bus against a real
//! [`vmbus::server::Server`].
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod bus;
pub mod ic;

pub use bus::{Bus, BusError, PostStatus, SynicTransport};
