//! Virtual service clients: the child-side drivers for our Rust child OS.
//!
//! Nothing is implemented here yet; the crate reserves its place in the layout
//! (docs/architecture.md) and exports nothing until child partitions and VMBus land.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
