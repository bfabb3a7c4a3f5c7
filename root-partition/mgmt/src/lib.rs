//! The root partition's management logic, free of hardware so it is tested on
//! the host:
//!
//! - [`cli`]: parsing shell lines into typed [`cli::Command`]s, with a clear
//!   reason for every refusal;
//! - [`lifecycle`]: the child partition states the CLI shows and the
//!   transitions `start`/`pause`/`resume`/`stop`/`destroy` may make;
//! - [`manifest`]: the partition manifest in the boot bundle;
//! - [`json`]: a small JSON writer for `--json` output;
//! - [`size`]: memory sizes like `32M`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cli;
pub mod json;
pub mod lifecycle;
pub mod manifest;
pub mod size;
