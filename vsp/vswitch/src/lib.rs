//! A learning L2 virtual switch: ports, MAC learning, flooding, bounded per-port queues and counters.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
