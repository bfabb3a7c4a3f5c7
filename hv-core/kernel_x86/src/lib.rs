//! x86-64 glue shared by hv-core and the root-partition kernel: the only place
//! (besides each kernel's entry and VMRUN asm) that executes privileged
//! instructions. Everything above it is ordinary Rust.
#![no_std]
// UNSAFETY: wraps privileged instructions (port I/O, MSRs, control and
// descriptor-table registers) and the exception entry stubs.
#![allow(unsafe_code)]

pub mod arch;
pub mod traps;
