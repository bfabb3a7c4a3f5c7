//! The SynIC (TLFS "Inter-Partition Communication"; Linux `drivers/hv/hv.c`,
//! `include/asm-generic/hyperv-tlfs.h`, TLFS "Synthetic Interrupt Controller") as
//! logic hv-core drives and the host tests check:
//!
//! - [`SynicVp`]: one VP's SCONTROL, SVERSION, SIEFP, SIMP, EOM and SINT0–15
//!   registers, its message slots (one 256-byte slot per SINT in the SIMP
//!   page) with a bounded queue behind each and MessagePending/EOM
//!   re-delivery, and its event flags (2048 bits per SINT in the SIEF page).
//!   [`SynicVp::post`] and [`SynicVp::signal`] say which vector to raise
//!   ([`Delivery`]); [`SynicVp::write`] and [`SynicVp::deliver_queued`] may
//!   deliver queued messages on several SINTs at once and return the set of
//!   vectors to raise ([`PendingVectors`]);
//! - [`Ports`]: the port and connection tables the root manages
//!   (HvCreatePort/HvConnectPort) that route HvPostMessage and
//!   HvSignalEvent.
//!
//! Guest memory is reached through [`SynicMemory`]; nothing here trusts a
//! value a guest wrote into its pages.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod pending;
mod ports;
mod reftime;
mod stimer;
mod vp;

pub use pending::PendingVectors;

pub use ports::{Connection, Port, PortError, PortKind, Ports};
pub use reftime::{PageUpdate, REFERENCE_HZ, ReferenceClock, ReferenceTsc, TimeMsrError, TscPage};
pub use stimer::{
    Expired, HVMSG_TIMER_EXPIRED, STIMER_COUNT, STIMER0_CONFIG, STIMER0_COUNT, Stimers, TimerEvent,
    TimerMessage, config_msr, count_msr,
};
pub use vp::{
    Delivery, FLAGS_PER_SINT, MsrError, PostError, QUEUE_DEPTH, SINT_COUNT, SLOT_SIZE, SynicMemory, SynicVp,
    msr_index,
};
