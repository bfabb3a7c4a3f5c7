//! hv-core: the hypervisor core.
//!
//! The root kernel loads this image into a region it carved out of its own
//! memory and calls [`entry`]'s `hv_core_entry` with a handoff block. hv-core
//! captures the caller's state, takes its own page tables, stack, GDT and IDT,
//! enables SVM, builds the root's nested page tables (identity, minus hv-core's
//! region) and `VMRUN`s the root, which resumes right after its call — now as
//! the root partition (docs/boot.md). From then on hv-core runs only on exits.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// UNSAFETY: a hypervisor core touches hardware: its entry and VMRUN asm, SVM
// instructions, and physical memory (its region, VMCBs, guest memory through
// its identity map after checking every guest-supplied address).
#![cfg_attr(target_os = "none", allow(unsafe_code))]

#[cfg(target_os = "none")]
#[macro_use]
mod log;
#[cfg(target_os = "none")]
mod child;
#[cfg(target_os = "none")]
mod entry;
#[cfg(target_os = "none")]
mod hv;
#[cfg(target_os = "none")]
mod hypercall;
#[cfg(target_os = "none")]
mod iommu;
#[cfg(target_os = "none")]
mod ipc;
#[cfg(target_os = "none")]
mod memory;
#[cfg(target_os = "none")]
mod platform;
#[cfg(target_os = "none")]
mod root;
#[cfg(target_os = "none")]
mod time;
#[cfg(target_os = "none")]
mod vcpu;
#[cfg(target_os = "none")]
mod vmrun;

/// Built for the host (e.g. `cargo clippy --workspace`), this is not a kernel.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("hv-core is loaded by the root-partition kernel: build it with `cargo xtask build`.");
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    log::emergency(format_args!("hv-core PANIC: {info}"));
    log::fatal_stop()
}
