//! The root-partition kernel.
//!
//! Boots under PVH (`boot.rs`), brings up its console, memory map, frame
//! allocator, page tables, heap, GDT/IDT/TSS, then carves a region out of its
//! own memory for hv-core, loads hv-core there and calls it: when the call
//! returns, this kernel is running as the root partition in SVM guest mode
//! (docs/boot.md). It keeps its devices (COM1, PCI, virtio-blk) and ends in the
//! management shell, or runs the self-test named by `test=` on the command line.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// UNSAFETY: a kernel touches hardware: port I/O, MSRs, control registers,
// physical memory through its identity map, inline asm for entry and traps.
#![cfg_attr(target_os = "none", allow(unsafe_code))]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
#[macro_use]
mod serial;
#[cfg(target_os = "none")]
/// Where the root's time goes (the main loop's phases on the TSC).
mod accounting;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
/// The devices each child's bus carries.
mod catalog;
#[cfg(target_os = "none")]
/// Wall-clock time (CMOS RTC at boot + ticks).
mod clock;
#[cfg(target_os = "none")]
mod commands;
#[cfg(target_os = "none")]
mod disk;
#[cfg(target_os = "none")]
mod hv;
#[cfg(target_os = "none")]
/// The integration-service commands and their `info` lines.
mod integration;
#[cfg(target_os = "none")]
/// What a child boots (test OS or Linux) and how it is laid out.
mod loader;
#[cfg(target_os = "none")]
mod manager;
#[cfg(target_os = "none")]
mod memory;
#[cfg(target_os = "none")]
/// The root's network: its passthrough NIC as the switch's uplink, and its own IP stack.
mod net;
#[cfg(target_os = "none")]
mod qemu;
#[cfg(target_os = "none")]
/// RAM-backed disks for `create --ramdisk`.
mod ramdisk;
#[cfg(target_os = "none")]
mod ring_memory;
#[cfg(target_os = "none")]
mod scenarios;
#[cfg(target_os = "none")]
mod shell;
#[cfg(target_os = "none")]
mod start;
#[cfg(target_os = "none")]
/// Children's disks on the root's passthrough block devices.
mod storage;
#[cfg(target_os = "none")]
mod synic;
#[cfg(target_os = "none")]
mod timer;
#[cfg(target_os = "none")]
/// The root's virtio devices on PCI: configuration, DMA, IOMMU-aware transport.
mod virtio;
#[cfg(target_os = "none")]
mod worker;

#[cfg(target_os = "none")]
pub use start::root_main;

/// Built for the host (e.g. `cargo clippy --workspace`), this is not a kernel.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("root-partition is a bare-metal kernel: build it with `cargo xtask build`.");
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // The console lock may be held by the panicking code: write raw.
    // SAFETY: we are about to stop the machine; no one else uses COM1 after this.
    let mut uart = unsafe { serial::Uart::new(serial::COM1) };
    use core::fmt::Write;
    let _ = writeln!(uart, "\n*** root kernel panic: {info}");
    qemu::exit(qemu::EXIT_FAILURE)
}
