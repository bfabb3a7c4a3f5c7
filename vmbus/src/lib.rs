//! VMBus: ring buffers, channel messages, GPADLs and the offer/open/close
//! state machines in Hyper-V's wire format (see `shared/docs/reference/vmbus-wire.md`).
//!
//! Nothing is implemented here yet: the crate exists so the layout of the
//! workspace matches the architecture (DESIGN.md §7). The bus arrives with the
//! VMBus issue; until then this crate exports nothing.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
