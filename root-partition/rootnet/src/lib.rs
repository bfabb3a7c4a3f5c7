//! The root partition's own IP stack (skeleton; see the crate description).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;
