//! The synthetic NIC a Hyper-V guest's netvsc binds: NVSP and RNDIS over a VMBus channel, frames to and from a switch port.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
