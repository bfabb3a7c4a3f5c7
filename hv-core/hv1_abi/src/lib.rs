//! The Hyper-V "HV#1" guest ABI as defined by the TLFS and the Hyper-V headers
//! (Linux `include/asm-generic/hyperv-tlfs.h`, `arch/x86/include/asm/hyperv-tlfs.h`;
//! Microsoft's Hypervisor Top-Level Functional Specification).
//!
//! Shared by hv-core, the root partition and (later) children. Values that come
//! from a guest are *open* newtypes ([`HvStatus`], [`HvCallCode`]): an unknown
//! value is data, never undefined behaviour.
//!
//! (rust-analyzer builds with `cfg(test)`, so a `no_std` break can hide from it:
//! the kernel builds catch it.)
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod cpuid;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod hypercall;
pub mod message;
pub mod msr;
pub mod partition;
pub mod private;
pub mod synic;

pub use hypercall::{HvCallCode, HvStatus, HypercallControl, HypercallResult};

/// The root partition's partition id (0 is HV_PARTITION_ID_INVALID in the TLFS;
/// children get ids from 2 up).
pub const ROOT_PARTITION_ID: u64 = 1;
