//! ACPI tables for a child partition: RSDP/XSDT, HW-reduced FADT, MADT, DSDT with the VMBus device.
//!
//! [`build`] turns a [`Config`] into one contiguous blob that the loader
//! copies to [`Config::gpa`] in the child's memory, the RSDP address for
//! `boot_params.acpi_rsdp_addr`, and the range to mark in the E820 map.
//! The tables are what an unmodified Linux 6.1 needs to boot without legacy
//! devices and find VMBus (project `docs/reference/linux-child.md` part 2
//! (c) and (d)):
//!
//! - **RSDP** revision 2 → **XSDT** → **FADT** and **MADT**; the DSDT is
//!   reached through `FADT.X_DSDT` only (ACPI 6.5 §5.2.5, §5.2.8, §5.2.9).
//! - **FADT** revision 6.5, `HW_REDUCED_ACPI` (so Linux skips the PIT and the
//!   8259: `arch/x86/kernel/acpi/boot.c` `acpi_generic_reduced_hw_init`),
//!   `IAPC_BOOT_ARCH` with no 8042, `VGA Not Present` and `CMOS RTC Not
//!   Present`, a `RESET_REG` and the HW-reduced `SLEEP_CONTROL_REG` /
//!   `SLEEP_STATUS_REG` (ACPI 6.5 §4.8.3.7, §5.2.9 Table 5.9). See
//!   [`power`] for exactly what the guest writes to power off and reset.
//! - **MADT** with the local APIC address, one enabled entry per VP (xAPIC
//!   entries for APIC ids below 255, x2APIC entries from 255 on, ACPI 6.5
//!   §5.2.12.12), optionally an I/O APIC and an interrupt source override
//!   for COM1, and `PCAT_COMPAT` clear (no 8259).
//! - **DSDT** with `\_S5`, `\_SB.VMOD` (`ACPI0004`, the MMIO gaps for VMBus
//!   as QWordMemory) holding `\_SB.VMOD.VMBS` (`_HID "VMBus"`), laid out as
//!   OpenVMM does on x86 (`vm/acpi/src/dsdt.rs` `add_mmio_module` /
//!   `add_vmbus`) and as Linux 6.1 `drivers/hv/vmbus_drv.c`
//!   `vmbus_acpi_add` expects (a `_CRS` must exist on the VMBus device, and
//!   the MMIO ranges are taken from an ancestor's `_CRS`); and, with an I/O
//!   APIC, a `PNP0501` COM1 with its I/O range and IRQ 4.
//!
//! The tables are produced with the `acpi_tables` crate (rust-vmm); the
//! MADT entries that crate lacks (interrupt source override, local x2APIC)
//! are defined in [`madt`].
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod dsdt;
pub mod madt;
pub mod power;

use acpi_tables::Aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use alloc::vec::Vec;
use core::fmt;

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"HVCORE";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;
/// Default local APIC base address (the architectural reset value).
pub const LAPIC_ADDRESS: u32 = 0xFEE0_0000;
/// Default I/O APIC base address.
pub const IOAPIC_ADDRESS: u32 = 0xFEC0_0000;
/// Redirection entries of the I/O APIC (an 82093AA has 24); a COM1 GSI must
/// lie in `gsi_base .. gsi_base + IOAPIC_PINS`.
pub const IOAPIC_PINS: u32 = 24;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u8 = 4;
/// COM1's I/O base (8 ports).
pub const COM1_PORT: u16 = 0x3F8;
/// Alignment [`Config::gpa`] must have, and the granularity of
/// [`Tables::e820`].
pub const PAGE_SIZE: u64 = 4096;
/// Lowest address an MMIO gap may start at.
pub const MMIO_GAP_MIN: u64 = 0x10_0000;
/// The E820 type to give [`Tables::e820`]: ACPI reclaimable memory.
pub const E820_ACPI: u32 = 3;

/// FADT `IAPC_BOOT_ARCH` bit 2: VGA Not Present (ACPI 6.5 Table 5.11).
pub const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
/// FADT `IAPC_BOOT_ARCH` bit 5: CMOS RTC Not Present.
pub const IAPC_BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;
/// FADT `IAPC_BOOT_ARCH` bit 1: 8042 present (always clear here, so Linux
/// does not probe i8042: `arch/x86/kernel/acpi/boot.c`).
pub const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;

/// Table alignment inside the blob (the RSDP must be 16-byte aligned).
const TABLE_ALIGN: usize = 16;

/// An I/O APIC to describe in the MADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApicConfig {
    /// I/O APIC id (its name in the MADT; Linux 6.1 does not require it to
    /// differ from the local APIC ids).
    pub id: u8,
    /// MMIO base, 4 KiB aligned (normally [`IOAPIC_ADDRESS`]).
    pub address: u32,
    /// First GSI of its pins (normally 0).
    pub gsi_base: u32,
    /// The GSI COM1's IRQ 4 is wired to (normally 4). Anything but 4 gets
    /// an interrupt source override in the MADT.
    pub com1_gsi: u32,
}

impl Default for IoApicConfig {
    fn default() -> Self {
        Self {
            id: 0,
            address: IOAPIC_ADDRESS,
            gsi_base: 0,
            com1_gsi: u32::from(COM1_IRQ),
        }
    }
}

/// A guest-physical MMIO range published in `\_SB.VMOD._CRS` for VMBus
/// devices (synthetic video, vPCI) to allocate from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioGap {
    /// First byte; at least [`MMIO_GAP_MIN`].
    pub base: u64,
    /// Length in bytes, non-zero.
    pub len: u64,
}

impl MmioGap {
    /// Last byte (inclusive); only meaningful once validated.
    fn last(&self) -> u64 {
        self.base + (self.len - 1)
    }
}

/// Input to [`build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Guest-physical address the blob will be copied to; 4 KiB aligned.
    pub gpa: u64,
    /// Bytes reserved at [`Config::gpa`]; the blob, rounded up to 4 KiB,
    /// must fit.
    pub max_size: u64,
    /// Number of VPs; VP `n` has APIC id `n` and ACPI processor UID `n`.
    pub vp_count: u32,
    /// Local APIC base address (normally [`LAPIC_ADDRESS`]).
    pub lapic_address: u32,
    /// An I/O APIC, if the child has one. COM1 (`\_SB.COM1`, IRQ 4) is
    /// described only when there is one: without it Linux 6.1 has no GSIs.
    pub ioapic: Option<IoApicConfig>,
    /// MMIO ranges for VMBus, above 1 MiB and disjoint.
    pub mmio_gaps: Vec<MmioGap>,
    /// Ports for poweroff and reset.
    pub power: power::PowerPorts,
}

impl Config {
    /// A configuration with the defaults: local APIC at [`LAPIC_ADDRESS`],
    /// no I/O APIC, no MMIO gaps, the default [`power::PowerPorts`], and
    /// one page of space at `gpa`.
    pub fn new(gpa: u64, vp_count: u32) -> Self {
        Self {
            gpa,
            max_size: PAGE_SIZE,
            vp_count,
            lapic_address: LAPIC_ADDRESS,
            ioapic: None,
            mmio_gaps: Vec::new(),
            power: power::PowerPorts::default(),
        }
    }
}

/// Where one table is, inside the blob and in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRange {
    /// Guest-physical address.
    pub gpa: u64,
    /// Offset in [`Tables::bytes`].
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// Each table's place in the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The RSDP (36 bytes).
    pub rsdp: TableRange,
    /// The XSDT.
    pub xsdt: TableRange,
    /// The FADT (276 bytes).
    pub fadt: TableRange,
    /// The MADT.
    pub madt: TableRange,
    /// The DSDT.
    pub dsdt: TableRange,
}

/// A guest-physical range for the E820 map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Range {
    /// First byte (4 KiB aligned).
    pub base: u64,
    /// Length (a multiple of 4 KiB).
    pub len: u64,
}

/// Output of [`build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// The blob to copy to [`Config::gpa`].
    pub bytes: Vec<u8>,
    /// Guest-physical address of the RSDP, for `boot_params.acpi_rsdp_addr`
    /// (it is also [`Config::gpa`]: the RSDP comes first).
    pub rsdp_gpa: u64,
    /// The range to mark as [`E820_ACPI`] (or reserved) in the E820 map:
    /// the blob rounded up to whole pages.
    pub e820: E820Range,
    /// Where each table is.
    pub layout: Layout,
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// `vp_count` is 0.
    NoVps,
    /// `gpa` is not 4 KiB aligned.
    MisalignedGpa(u64),
    /// The tables need `needed` bytes (rounded up to pages) but only
    /// `available` were given.
    TooLarge {
        /// Bytes needed, a multiple of 4 KiB.
        needed: u64,
        /// [`Config::max_size`].
        available: u64,
    },
    /// `gpa + size` overflows the address space.
    AddressOverflow,
    /// The local or I/O APIC address is 0 or not 4 KiB aligned.
    BadApicAddress(u32),
    /// COM1's GSI is not one of the I/O APIC's pins.
    Com1GsiOutOfRange(u32),
    /// Gap `index` is empty, below 1 MiB, or runs past the address space.
    BadGap(usize),
    /// Gaps `0` and `1` (indices) overlap.
    GapsOverlap(usize, usize),
    /// Gap `index` overlaps the local APIC, the I/O APIC or the tables.
    GapOverlapsPlatform(usize),
    /// Two of the power-management ports are the same, or one lies in
    /// COM1's range.
    PortConflict(u16),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVps => write!(f, "a partition needs at least one VP"),
            Self::MisalignedGpa(a) => write!(f, "ACPI table address {a:#x} is not page aligned"),
            Self::TooLarge { needed, available } => {
                write!(f, "ACPI tables need {needed} bytes, {available} available")
            }
            Self::AddressOverflow => write!(f, "ACPI tables run past the address space"),
            Self::BadApicAddress(a) => write!(f, "APIC address {a:#x} is not page aligned"),
            Self::Com1GsiOutOfRange(g) => write!(f, "COM1 GSI {g} is not an I/O APIC pin"),
            Self::BadGap(i) => write!(f, "MMIO gap {i} is empty, below 1 MiB or wraps"),
            Self::GapsOverlap(a, b) => write!(f, "MMIO gaps {a} and {b} overlap"),
            Self::GapOverlapsPlatform(i) => {
                write!(f, "MMIO gap {i} overlaps an APIC or the ACPI tables")
            }
            Self::PortConflict(p) => write!(f, "power-management port {p:#x} is used twice"),
        }
    }
}

impl core::error::Error for Error {}

fn ranges_overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    // Inclusive (first, last) pairs.
    a.0 <= b.1 && b.0 <= a.1
}

/// Checks that do not depend on the tables' size.
fn validate(config: &Config) -> Result<(), Error> {
    if config.vp_count == 0 {
        return Err(Error::NoVps);
    }
    if !config.gpa.is_multiple_of(PAGE_SIZE) {
        return Err(Error::MisalignedGpa(config.gpa));
    }
    let apic_ok = |a: u32| a != 0 && u64::from(a).is_multiple_of(PAGE_SIZE);
    if !apic_ok(config.lapic_address) {
        return Err(Error::BadApicAddress(config.lapic_address));
    }
    let mut apic_pages = Vec::from([config.lapic_address]);
    if let Some(io) = &config.ioapic {
        if !apic_ok(io.address) {
            return Err(Error::BadApicAddress(io.address));
        }
        let pins = io.gsi_base..io.gsi_base.saturating_add(IOAPIC_PINS);
        if !pins.contains(&io.com1_gsi) {
            return Err(Error::Com1GsiOutOfRange(io.com1_gsi));
        }
        apic_pages.push(io.address);
    }
    for (i, gap) in config.mmio_gaps.iter().enumerate() {
        if gap.len == 0 || gap.base < MMIO_GAP_MIN || gap.base.checked_add(gap.len - 1).is_none() {
            return Err(Error::BadGap(i));
        }
        for (j, other) in config.mmio_gaps[..i].iter().enumerate() {
            // `other` was validated in an earlier iteration.
            if ranges_overlap((gap.base, gap.last()), (other.base, other.last())) {
                return Err(Error::GapsOverlap(j, i));
            }
        }
        for &page in &apic_pages {
            let page = u64::from(page);
            if ranges_overlap((gap.base, gap.last()), (page, page + PAGE_SIZE - 1)) {
                return Err(Error::GapOverlapsPlatform(i));
            }
        }
    }
    config.power.validate()
}

/// Round `n` up to a multiple of `align` (a power of two).
fn align_up(n: usize, align: usize) -> usize {
    n.div_ceil(align) * align
}

/// Serialize an `acpi_tables` object.
fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Build the tables for `config`.
pub fn build(config: &Config) -> Result<Tables, Error> {
    validate(config)?;

    // The MADT and DSDT do not refer to any address inside the blob, so
    // they are built first and the layout follows from their sizes.
    let madt = madt::build(config);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, *b"HVCDSDT ", OEM_REVISION);
    dsdt.append_slice(&dsdt::build(config));
    let dsdt = dsdt.as_slice().to_vec();

    const XSDT_LEN: usize = 36 + 2 * 8;
    let rsdp_off = 0;
    let xsdt_off = align_up(rsdp_off + Rsdp::len(), TABLE_ALIGN);
    let fadt_off = align_up(xsdt_off + XSDT_LEN, TABLE_ALIGN);
    let madt_off = align_up(fadt_off + acpi_tables::fadt::FADT::len(), TABLE_ALIGN);
    let dsdt_off = align_up(madt_off + madt.len(), TABLE_ALIGN);
    let total = dsdt_off + dsdt.len();

    let needed = align_up(total, PAGE_SIZE as usize) as u64;
    if needed > config.max_size {
        return Err(Error::TooLarge {
            needed,
            available: config.max_size,
        });
    }
    if config.gpa.checked_add(needed).is_none() {
        return Err(Error::AddressOverflow);
    }
    let tables = (config.gpa, config.gpa + (needed - 1));
    if let Some(i) = config
        .mmio_gaps
        .iter()
        .position(|g| ranges_overlap((g.base, g.last()), tables))
    {
        return Err(Error::GapOverlapsPlatform(i));
    }
    let at = |off: usize| config.gpa + off as u64;

    let fadt = fadt(config, at(dsdt_off));
    let mut xsdt = XSDT::new(OEM_ID, *b"HVCXSDT ", OEM_REVISION);
    xsdt.add_entry(at(fadt_off));
    xsdt.add_entry(at(madt_off));
    let xsdt = to_bytes(&xsdt);
    debug_assert_eq!(xsdt.len(), XSDT_LEN);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, at(xsdt_off)));

    let mut bytes = alloc::vec![0u8; total];
    let mut place = |off: usize, table: &[u8]| {
        bytes[off..off + table.len()].copy_from_slice(table);
        TableRange {
            gpa: at(off),
            offset: off,
            len: table.len(),
        }
    };
    let layout = Layout {
        rsdp: place(rsdp_off, &rsdp),
        xsdt: place(xsdt_off, &xsdt),
        fadt: place(fadt_off, &fadt),
        madt: place(madt_off, &madt),
        dsdt: place(dsdt_off, &dsdt),
    };
    Ok(Tables {
        bytes,
        rsdp_gpa: layout.rsdp.gpa,
        e820: E820Range {
            base: config.gpa,
            len: needed,
        },
        layout,
    })
}

/// The FADT: HW-reduced, no FACS, DSDT through `X_DSDT`.
fn fadt(config: &Config, dsdt_gpa: u64) -> Vec<u8> {
    let io_byte = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    let p = &config.power;
    let mut fadt = FADTBuilder::new(OEM_ID, *b"HVCFACP ", OEM_REVISION)
        .dsdt_64(dsdt_gpa)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC).into();
    fadt.reset_reg = io_byte(p.reset);
    fadt.reset_value = p.reset_value;
    fadt.sleep_control_reg = io_byte(p.sleep_control);
    fadt.sleep_status_reg = io_byte(p.sleep_status);
    to_bytes(&fadt.finalize())
}

/// Set an ACPI table's checksum (byte 9) so that all its bytes sum to 0.
pub(crate) fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    table[9] = sum.wrapping_neg();
}

#[cfg(test)]
mod tests;
