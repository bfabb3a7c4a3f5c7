//! Virtual service providers (root side of VMBus devices: storvsp, netvsp,
//! integration services).
//!
//! Nothing is implemented here yet; the crate reserves its place in the layout
//! (docs/architecture.md) and exports nothing until the VMBus work lands.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
