//! A virtual local APIC (x2APIC MSRs and xAPIC MMIO): timer, TPR/PPR, IRR/ISR priorities, EOI, self-IPI.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
