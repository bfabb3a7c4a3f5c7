//! The DSDT's AML body (the 36-byte header is added by the caller).
//!
//! In ASL:
//!
//! ```text
//! Name (\_S5, Package () { 5, 0, 0, 0 })      // SLP_TYPa = power::S5_SLP_TYP
//! Scope (\_SB) {
//!     Device (VMOD) {                          // OpenVMM vm/acpi/src/dsdt.rs
//!         Name (_HID, "ACPI0004")              //   add_mmio_module
//!         Name (_UID, 0)
//!         Name (_CRS, ResourceTemplate () {
//!             QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed,
//!                          Cacheable, ReadWrite, 0, base, base + len - 1, 0, len)
//!             ...                              // one per MMIO gap
//!         })
//!         Device (VMBS) {                      //   add_vmbus
//!             Name (_HID, "VMBus")
//!             Name (_DDN, "VMBUS")
//!             Name (_UID, 0)
//!             Name (_ADR, 0)
//!             Method (_STA) { Return (0x0F) }
//!             Method (_PS0) { }
//!             Method (_PS3) { }
//!             Name (_CRS, ResourceTemplate () { })
//!         }
//!     }
//!     Device (COM1) {
//!         Name (_HID, EisaId ("PNP0501"))
//!         Name (_UID, 0)
//!         Name (_CRS, ResourceTemplate () {
//!             IO (Decode16, 0x3F8, 0x3F8, 1, 8)
//!             IRQNoFlags () { 4 }              // only with an I/O APIC
//!         })
//!     }
//! }
//! ```
//!
//! Linux 6.1 `vmbus_acpi_add` (`drivers/hv/vmbus_drv.c`) matches `_HID`
//! "VMBus", fails with -ENODEV unless the device's `_CRS` can be walked
//! (hence the empty template; an ExtendedInterrupt would make the walk fail,
//! so none is given: on x86 VMBus uses vector 0xF3 regardless), and takes
//! the MMIO ranges from the first ancestor whose `_CRS` yields them (VMOD).
//!
//! ACPICA's compiler (`iasl`, 20200925) accepts the disassembly of this
//! DSDT except for two complaints that Hyper-V's and OpenVMM's VMBus device
//! share: a `_HID` of 5 characters ("VMBus", which is what Linux matches)
//! and a device with both `_HID` and `_ADR`.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, IO, Method, Name, Package, Path, ResourceTemplate,
    Return, Scope,
};
use acpi_tables::{Aml, AmlSink};
use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::power::S5_SLP_TYP;
use crate::{COM1_IRQ, COM1_PORT, Config};

/// `IRQNoFlags () { n }`: the 2-byte-mask IRQ descriptor (ACPI 6.5
/// §6.4.2.1), edge-triggered, active high, exclusive. `acpi_tables` only has
/// the Extended Interrupt descriptor, whose number is a GSI; for an ISA
/// device the ISA IRQ (subject to the MADT's overrides) is the usual form.
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x22);
        sink.word(1u16 << self.0);
    }
}

/// The DSDT body for `config` (already validated).
pub(crate) fn build(config: &Config) -> Vec<u8> {
    let mut aml = Vec::new();

    let (slp_typ, zero) = (S5_SLP_TYP, 0u8);
    Name::new(
        "\\_S5_".into(),
        &Package::new(alloc::vec![&slp_typ, &zero, &zero, &zero]),
    )
    .to_aml_bytes(&mut aml);

    // \_SB.VMOD.VMBS
    let zero_u8 = 0u8;
    let sta = 0x0Fu8;
    let vmbs_hid = Name::new("_HID".into(), &"VMBus");
    let vmbs_ddn = Name::new("_DDN".into(), &"VMBUS");
    let vmbs_uid = Name::new("_UID".into(), &zero_u8);
    let vmbs_adr = Name::new("_ADR".into(), &zero_u8);
    let ret_sta = Return::new(&sta);
    let vmbs_sta = Method::new("_STA".into(), 0, false, alloc::vec![&ret_sta]);
    let vmbs_ps0 = Method::new("_PS0".into(), 0, false, Vec::new());
    let vmbs_ps3 = Method::new("_PS3".into(), 0, false, Vec::new());
    let empty_crs = ResourceTemplate::new(Vec::new());
    let vmbs_crs = Name::new("_CRS".into(), &empty_crs);
    let vmbs = Device::new(
        "VMBS".into(),
        alloc::vec![
            &vmbs_hid, &vmbs_ddn, &vmbs_uid, &vmbs_adr, &vmbs_sta, &vmbs_ps0, &vmbs_ps3, &vmbs_crs,
        ],
    );

    // \_SB.VMOD
    let gaps: Vec<Box<dyn Aml>> = config
        .mmio_gaps
        .iter()
        .map(|g| {
            Box::new(AddressSpace::<u64>::new_memory(
                AddressSpaceCacheable::Cacheable,
                true,
                g.base,
                g.base + (g.len - 1),
                None,
            )) as Box<dyn Aml>
        })
        .collect();
    let gap_refs: Vec<&dyn Aml> = gaps.iter().map(|g| g.as_ref()).collect();
    let vmod_crs_template = ResourceTemplate::new(gap_refs);
    let vmod_hid = Name::new("_HID".into(), &"ACPI0004");
    let vmod_uid = Name::new("_UID".into(), &zero_u8);
    let vmod_crs = Name::new("_CRS".into(), &vmod_crs_template);
    let vmod = Device::new("VMOD".into(), alloc::vec![&vmod_hid, &vmod_uid, &vmod_crs, &vmbs]);

    // \_SB.COM1. Without an I/O APIC its IRQ could reach nothing, so its
    // resources are the ports alone: Linux's 8250_pnp then registers ttyS0
    // with IRQ 0 and polls it from a timer (`univ8250_setup_irq`), where
    // the legacy table's IRQ 4 would make opening the console fail
    // (linux-child review, part 2 (d)).
    let com1_hid_id = EISAName::new("PNP0501");
    let com1_hid = Name::new("_HID".into(), &com1_hid_id);
    let com1_uid = Name::new("_UID".into(), &zero_u8);
    let com1_io = IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = IrqNoFlags(COM1_IRQ);
    let com1_resources: Vec<&dyn Aml> = if config.ioapic.is_some() {
        alloc::vec![&com1_io, &com1_irq]
    } else {
        alloc::vec![&com1_io]
    };
    let com1_crs_template = ResourceTemplate::new(com1_resources);
    let com1_crs = Name::new("_CRS".into(), &com1_crs_template);
    let com1 = Device::new("COM1".into(), alloc::vec![&com1_hid, &com1_uid, &com1_crs]);

    let sb_children: Vec<&dyn Aml> = alloc::vec![&vmod, &com1];
    Scope::new(Path::new("\\_SB_"), sb_children).to_aml_bytes(&mut aml);
    aml
}
