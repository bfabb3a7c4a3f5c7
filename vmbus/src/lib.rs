//! VMBus in Hyper-V's exact wire format (
//! Linux `include/linux/hyperv.h`, `drivers/hv/ring_buffer.c`,
//! `drivers/hv/channel_mgmt.c`), written to run unchanged in the root, in a
//! child and in host tests:
//!
//! - [`memory`]: the guest-memory trait the rings use, and a host-side
//!   implementation over atomics (tests, benchmarks, loopback);
//! - [`ring`]: ring buffers (control page, 8-byte packets with the index
//!   trailer, keep-one-free) with Hyper-V's signalling rules;
//! - [`packet`]: packet descriptors and the GPA-direct / transfer-page headers;
//! - [`protocol`]: channel messages with their exact sizes, parsed defensively;
//! - [`gpadl`]: GPADL header/body reassembly;
//! - [`version`]: protocol versions and negotiation.
//!
//! Everything a peer sends is data to be checked: lengths, offsets, indices
//! and counts are validated before use and a violation is a typed error that
//! names the peer as the culprit. No `unsafe` anywhere.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod client;
pub mod fuzzing;
pub mod gpadl;
pub mod memory;
pub mod packet;
pub mod protocol;
pub mod ring;
pub mod server;
pub mod version;
