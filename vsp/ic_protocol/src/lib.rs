//! Hyper-V integration services wire formats (IC framework, heartbeat, shutdown, timesync, KVP), shared by the providers and the clients.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
