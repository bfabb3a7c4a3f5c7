//! Hyper-V synthetic network wire formats: NVSP messages and RNDIS messages, shared by the provider and the clients.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
