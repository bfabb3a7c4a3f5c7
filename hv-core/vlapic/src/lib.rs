//! A virtual local APIC (x2APIC MSRs and xAPIC MMIO): timer, TPR/PPR, IRR/ISR
//! priorities, EOI, self-IPI. hv-core embeds one [`Vlapic`] per VP of a Linux
//! child; everything here is pure logic, tested on the host.
//!
//! # Model
//!
//! - **Registers** as in the Intel SDM Vol. 3A chapter 10 "Advanced
//!   Programmable Interrupt Controller (APIC)" (chapter 11 in editions from
//!   2023; section numbers below are the chapter-10 ones) and AMD APM Vol. 2
//!   chapter 16 "Advanced Programmable Interrupt Controller (APIC)":
//!   IA32_APIC_BASE with the xAPIC/x2APIC mode transitions, ID, version
//!   ([`APIC_VERSION`]), TPR, PPR and APR (computed), EOI, LDR/DFR, SVR, the
//!   256-bit ISR/TMR/IRR, ESR, ICR, six LVTs, the timer and x2APIC SELF IPI.
//! - **Access**: x2APIC MSRs 0x800–0x8FF and MSRs 0x1B/0x6E0 through
//!   [`Vlapic::read_msr`]/[`Vlapic::write_msr`], which return
//!   [`MsrError::Gp`] when the caller must inject #GP (SDM Table 10-6 rules);
//!   the xAPIC page through [`Vlapic::read_mmio`]/[`Vlapic::write_mmio`],
//!   which never fault (reserved registers set ESR bit 7).
//! - **Interrupts**: [`Vlapic::request`] / [`Vlapic::request_auto_eoi`] set
//!   IRR; [`Vlapic::pending`] is the vector to inject; [`Vlapic::acknowledge`]
//!   moves it to ISR (or drops it for Hyper-V AutoEOI SINTs, as OpenVMM's
//!   `vmm_core/virt_support_apic` tracks an `auto_eoi` bitmap); EOI clears
//!   the highest ISR bit. [`Vlapic::has_deliverable`] tells whether to wake a
//!   halted VP.
//! - **Time** is the caller's: every call that can observe time takes `now`
//!   in nanoseconds. The timer (one-shot, periodic, TSC-deadline) is computed
//!   from `now`, [`Config::timer_hz`] and [`Config::tsc_hz`];
//!   [`Vlapic::next_deadline`] says when to come back. Late callers get one
//!   interrupt for many missed periods.
//! - **IPIs** the guest sends come back as [`Effect::Ipi`] for the caller to
//!   route; fixed self IPIs are delivered locally. [`route_ipi`] says what
//!   one does to each VP of the partition (destination matching with
//!   [`Vlapic::matches_destination`], INIT, Startup, lowest priority).
//! - No panics on any input; no allocation; no `unsafe`.
//!
//! # Not modelled
//!
//! LINT0/LINT1, thermal and performance-counter LVTs are stored but nothing
//! drives them; remote read (RRD) reads 0; focus-processor checking and
//! EOI-broadcast suppression are absent; delivery status always reads idle;
//! SMI/lowest-priority IPIs are only decoded and handed to the caller.
//!
//! Note (Hubris `sys/kerncore`): rust-analyzer builds with `cfg(test)`, so a
//! `no_std` breakage can hide from it; `cargo build` for the kernel target
//! catches it.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod apic;
mod route;
mod timer;
mod types;
mod vectors;

pub use apic::Vlapic;
pub use route::{IpiDelivery, route_ipi};
pub use types::{
    APIC_BASE_MSR, APIC_VERSION, ApicMode, ApicSnapshot, Config, ConfigError, DEFAULT_APIC_BASE,
    DeliveryMode, Effect, GpReason, HYPERV_APIC_TIMER_HZ, Ipi, MAX_FREQUENCY_HZ, MsrError, Shorthand, Stats,
    TSC_DEADLINE_MSR, Trigger, X2APIC_MSR_FIRST, X2APIC_MSR_LAST, esr,
};

#[cfg(test)]
mod tests;
