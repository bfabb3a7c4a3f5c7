//! Hyper-V synthetic network wire formats, shared by the host's provider
//! (netvsp) and the guest's client (netvsc):
//!
//! - the crate root: NVSP, the "network VSP" protocol spoken in VMBus
//!   in-band packets on the synthetic NIC's channel ([`MessageType`],
//!   [`Message::parse`] for untrusted bytes, builders for every message the
//!   host sends and the ones a client sends);
//! - [`rndis`]: the Remote NDIS messages NVSP carries
//!   (`SEND_RNDIS_PACKET`), their constants (message types, statuses,
//!   OIDs) and the NDIS objects a Linux netvsc exchanges;
//! - [`transfer_page`]: the VMBus transfer-page packet header
//!   (`vmtransfer_page_packet_header`, 24 + 8n bytes) the host uses to hand
//!   receive-buffer ranges to the guest; it belongs in `vmbus::packet` and
//!   is kept here, self-contained, until it moves;
//! - [`recv_buffer`]: the host's allocator of fixed-size sections in the
//!   guest's receive buffer, bounded and reusable on completion.
//!
//! The conversation a Linux `hv_netvsc` (6.1) has with the host
//! (`drivers/net/hyperv/netvsc.c`, `rndis_filter.c`):
//!
//! 1. `INIT` (1) with `min = max =` one of 0x60001, 0x60000, 0x50000,
//!    0x40000, 0x30002, 0x2, newest first, each in-band with
//!    completion requested; the host answers with a completion packet
//!    carrying `INIT_COMPLETE` (2) and status [`Status::SUCCESS`] for the
//!    one it accepts (the guest waits without a timeout).
//! 2. `SEND_NDIS_CONFIG` (125, NVSP ≥ 2: MTU + 14 and capability bits) and
//!    `SEND_NDIS_VERSION` (100: NDIS 6.30, or 6.1 when NVSP ≤ 4), no
//!    completion requested.
//! 3. `SEND_RECEIVE_BUFFER` (101, id 0xCAFE, GPADL of 16 MiB) → completion
//!    `SEND_RECEIVE_BUFFER_COMPLETE` (102) with exactly one section at offset
//!    0; then `SEND_SEND_BUFFER` (104, id 0, 1 MiB) → 105 with the section
//!    size the host chose.
//! 4. RNDIS over `SEND_RNDIS_PACKET` (107), completed by
//!    `SEND_RNDIS_PACKET_COMPLETE` (108); host → guest RNDIS messages arrive
//!    as transfer-page packets naming receive-buffer ranges, each completed
//!    by the guest with an 8-byte `108` message.
//!
//! Sources: Linux 6.1 `drivers/net/hyperv/hyperv_net.h` (`nvsp_message`
//! and friends, `NVSP_*` constants, the `rndis_*` and `ndis_*` structs),
//! `include/linux/rndis.h`, `include/linux/hyperv.h`
//! (`vmtransfer_page_packet_header`); microsoft/openvmm
//! `vm/devices/net/netvsp/src/{protocol,rndisprot,lib,buffers}.rs` for the
//! host side (section sizes, `max_mdl_chain_length`, init answers). Written
//! fresh. Every struct's size is asserted against the Linux layout (checked
//! by compiling the Linux structs with gcc: `nvsp_message` 40, the
//! transfer-page header 24, `ndis_offload` 156, ...).
//!
//! Multi-byte fields are little-endian and may be unaligned (the C structs
//! are `__packed`), so the wire structs use zerocopy's `little_endian`
//! types. Nothing here panics on peer data: lengths, counts and offsets are
//! checked and violations are typed errors.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

/// Defines an open enum: a `#[repr(transparent)]` newtype over an integer
/// with named constants, so a value the peer sent that has no name is still
/// representable (and printable) instead of being an error or UB.
macro_rules! open_enum {
    (
        $(#[$m:meta])*
        pub struct $name:ident($ty:ty) {
            $( $(#[$cm:meta])* $c:ident = $v:expr, )*
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(transparent)]
        pub struct $name(pub $ty);

        impl $name {
            $( $(#[$cm])* pub const $c: Self = Self($v); )*

            /// The constant's name, if this value has one.
            #[allow(unreachable_patterns)] // aliases share a value
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( v if v == $v => Some(stringify!($c)), )*
                    _ => None,
                }
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(n) => write!(f, "{}::{}", stringify!($name), n),
                    None => write!(f, "{}({:#x})", stringify!($name), self.0),
                }
            }
        }
    };
}

mod message;
pub mod recv_buffer;
pub mod rndis;
pub mod transfer_page;

pub use message::*;

/// zerocopy's byte view, re-exported so users of the wire structs need no
/// zerocopy dependency of their own.
pub use zerocopy::{FromBytes, IntoBytes};
