//! The child test OS. The root's partition worker loads it at 2 MiB, builds
//! identity page tables and a GDT, writes a [`BootInfo`] page and starts every
//! VP in 64-bit mode at `testos_start` with RDI = VP index, RSI = &BootInfo.
//!
//! VP 0 prints on COM1 and then does what the mode says; other VPs halt.
//! Modes: `hello` (print, then halt: a quiet, well-behaved child), `spin`
//! (busy forever, printing ticks: needs preemption), `hypercalls` (bad
//! hypercall inputs), `rootonly` (root-only hypercalls), `read-hv`,
//! `write-root`, `read-peer`, `write-peer`, `read-mmio` (touch memory that is
//! not its own), `triple-fault`, `ioports` (poke the root's devices); the
//! synthetic devices' guest (`disk`, `disk-verify`, `net`, `net-ping`:
//! devices.rs) and their attackers (`disk-hostile-*`, `net-hostile-*`:
//! device_hostile.rs).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// UNSAFETY: a bare-metal guest: port I/O, MSRs, its own page-table-mapped
// memory, and deliberately hostile accesses.
#![cfg_attr(target_os = "none", allow(unsafe_code))]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod apic;
#[cfg(target_os = "none")]
mod cpu_hostile;
#[cfg(target_os = "none")]
mod crash;
#[cfg(target_os = "none")]
mod device_hostile;
#[cfg(target_os = "none")]
mod devices;
#[cfg(target_os = "none")]
mod entry32;
#[cfg(target_os = "none")]
mod guest;
#[cfg(target_os = "none")]
mod ic_mode;
#[cfg(target_os = "none")]
mod smp;
#[cfg(target_os = "none")]
mod vmbus_hostile;

/// Built for the host (e.g. `cargo clippy --workspace`), this is not a kernel.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("testos runs inside a child partition: build it with `cargo xtask build`.");
}
