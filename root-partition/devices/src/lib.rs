//! Device models for child partitions, emulated by the root's partition
//! workers from I/O-port intercepts (docs/architecture.md: device emulation lives in
//! the root, hv-core stays thin). Pure logic, tested on the host.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod ioapic;
pub mod rtc;
pub mod uart16550;
