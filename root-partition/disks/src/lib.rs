//! The root's child disks: GPT partitions on its passthrough block devices, created, listed and deleted by name.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
