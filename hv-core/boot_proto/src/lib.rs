//! Boot-time data formats shared by the build tools, the root partition and
//! hv-core:
//!
//! - [`pvh`]: the PVH `hvm_start_info` QEMU hands the root kernel
//!   (Xen `include/public/arch-x86/hvm/start_info.h`);
//! - [`bundle`]: the boot bundle passed as the single `-initrd` module
//!   (format documented in `docs/boot.md`);
//! - [`handoff`]: the block the root passes to hv-core's entry point;
//! - [`bzimage`]: a Linux bzImage and its 64-bit boot protocol (setup header
//!   checks, load placement, the `boot_params` zero page), Linux
//!   `Documentation/arch/x86/boot.rst`;
//! - [`multiboot`]: Multiboot v1 headers and the information structure;
//! - [`elf_note`]: ELF notes (the PVH entry note, our native marker);
//! - [`child32`]: the layout of a child booted through PVH or Multiboot.
//!
//! Everything here parses untrusted bytes with bounds checks and no `unsafe`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod bundle;
pub mod bzimage;
pub mod child;
pub mod child32;
pub mod elf_note;
pub mod handoff;
pub mod linux_child;
pub mod multiboot;
pub mod pvh;
