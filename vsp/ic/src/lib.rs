//! Hyper-V integration service providers (heartbeat, shutdown, timesync, KVP) as VMBus devices.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
