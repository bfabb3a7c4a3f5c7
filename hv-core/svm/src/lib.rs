//! AMD SVM definitions (APM vol. 2 ch. 15; Linux `arch/x86/include/asm/svm.h`;
//! QEMU TCG behaviour from `target/i386/tcg/sysemu/svm_helper.c`):
//! the VMCB layout with offset asserts, intercept bits, exit codes, and the
//! instruction-length decoding hv-core needs because TCG has no NRIP save.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod cr;
pub mod insn;
pub mod vmcb;

pub use vmcb::{ExitCode, Segment, Vmcb};
