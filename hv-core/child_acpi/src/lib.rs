//! ACPI tables for a child partition: RSDP/XSDT, HW-reduced FADT, MADT, DSDT with the VMBus device.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
