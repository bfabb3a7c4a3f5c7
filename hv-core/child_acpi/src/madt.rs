//! The MADT (ACPI 6.5 §5.2.12), and the two interrupt-controller structures
//! `acpi_tables` 0.2.1 does not define.

use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic};
use acpi_tables::{Aml, AmlSink};
use alloc::vec::Vec;
use zerocopy::byteorder::{LE, U16, U32};
use zerocopy::{Immutable, IntoBytes};

use crate::{COM1_IRQ, Config, OEM_ID, OEM_REVISION, fix_checksum};

/// MADT revision written (ACPI 6.3 and later use 5; `acpi_tables` writes 1).
/// Linux 6.1 reads it only to honour the "online capable" flag, which is
/// not used here (every VP is enabled).
pub const MADT_REVISION: u8 = 5;

/// Largest APIC id a Processor Local APIC structure may carry: 0xFF is the
/// xAPIC broadcast id, so ids from 255 on need x2APIC structures (ACPI 6.5
/// §5.2.12.12).
pub const MAX_XAPIC_ID: u32 = 254;

/// Interrupt Source Override, type 2, 10 bytes (ACPI 6.5 §5.2.12.5).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
pub struct InterruptSourceOverride {
    /// 2.
    pub entry_type: u8,
    /// 10.
    pub length: u8,
    /// 0 = ISA.
    pub bus: u8,
    /// Bus-relative IRQ.
    pub source: u8,
    /// The GSI it is wired to.
    pub gsi: U32<LE>,
    /// MPS INTI flags (0 = conforms to the bus: edge, active high for ISA).
    pub flags: U16<LE>,
}
const _: () = assert!(size_of::<InterruptSourceOverride>() == 10);

impl InterruptSourceOverride {
    /// An ISA IRQ routed to `gsi` with the bus's default polarity and
    /// trigger mode.
    pub fn isa(irq: u8, gsi: u32) -> Self {
        Self {
            entry_type: 2,
            length: 10,
            bus: 0,
            source: irq,
            gsi: gsi.into(),
            flags: 0.into(),
        }
    }
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// Processor Local x2APIC, type 9, 16 bytes (ACPI 6.5 §5.2.12.12).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
pub struct LocalX2Apic {
    /// 9.
    pub entry_type: u8,
    /// 16.
    pub length: u8,
    /// Reserved, 0.
    pub reserved: U16<LE>,
    /// The processor's x2APIC id.
    pub x2apic_id: U32<LE>,
    /// Bit 0: enabled.
    pub flags: U32<LE>,
    /// ACPI processor UID.
    pub uid: U32<LE>,
}
const _: () = assert!(size_of::<LocalX2Apic>() == 16);

impl LocalX2Apic {
    /// An enabled processor.
    pub fn enabled(x2apic_id: u32, uid: u32) -> Self {
        Self {
            entry_type: 9,
            length: 16,
            reserved: 0.into(),
            x2apic_id: x2apic_id.into(),
            flags: 1.into(),
            uid: uid.into(),
        }
    }
}

impl Aml for LocalX2Apic {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// The MADT for `config` (already validated): the local APIC address,
/// `PCAT_COMPAT` clear, one enabled processor structure per VP (APIC id =
/// UID = VP index), then the I/O APIC and COM1's override if needed.
pub(crate) fn build(config: &Config) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"HVCAPIC ",
        OEM_REVISION,
        LocalInterruptController::Address(config.lapic_address),
    );
    for vp in 0..config.vp_count {
        match u8::try_from(vp) {
            Ok(id) if u32::from(id) <= MAX_XAPIC_ID => {
                madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
            }
            _ => madt.add_structure(LocalX2Apic::enabled(vp, vp)),
        }
    }
    if let Some(io) = &config.ioapic {
        madt.add_structure(IoApic::new(io.id, io.address, io.gsi_base));
        if io.com1_gsi != u32::from(COM1_IRQ) {
            madt.add_structure(InterruptSourceOverride::isa(COM1_IRQ, io.com1_gsi));
        }
    }
    let mut bytes = Vec::new();
    madt.to_aml_bytes(&mut bytes);
    bytes[8] = MADT_REVISION;
    fix_checksum(&mut bytes);
    bytes
}
