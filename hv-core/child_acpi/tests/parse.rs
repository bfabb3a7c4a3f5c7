//! The tables read back by an independent parser: the `acpi` crate (rust-osdev,
//! 5.2, without its allocator features), the way an OS would find them, from
//! the RSDP's guest-physical address through a handler that "maps" guest
//! memory onto the blob.

// UNSAFETY: `acpi`'s `AcpiHandler::map_physical_region`, `AcpiTables::from_rsdp`
// and `PhysicalMapping::new` are unsafe APIs; the handler below only hands out
// pointers into a leaked, immutable byte slice after bounds-checking them.
#![expect(unsafe_code)]

use core::ptr::NonNull;

use acpi::address::{AccessSize, AddressSpace};
use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTable, AcpiTables, PhysicalMapping};
use child_acpi::power::{RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};
use child_acpi::{Config, IoApicConfig, LAPIC_ADDRESS, MmioGap, Tables, build};

/// Guest memory holding only the tables, at their GPA.
#[derive(Clone, Copy)]
struct GuestMem {
    gpa: usize,
    mem: &'static [u8],
}

impl AcpiHandler for GuestMem {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let offset = physical_address
            .checked_sub(self.gpa)
            .expect("mapping below the tables");
        assert!(offset + size <= self.mem.len(), "mapping past the tables");
        let ptr = NonNull::from(&self.mem[offset]).cast::<T>();
        // `ptr` points at `size` initialized bytes of a leaked slice that
        // lives for the rest of the test and is never written; the `acpi`
        // types are `repr(C, packed)`, so any address is aligned.
        // SAFETY: a valid, immutable, 'static mapping (see above).
        unsafe { PhysicalMapping::new(physical_address, ptr, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

fn parse(config: &Config) -> (Tables, AcpiTables<GuestMem>) {
    let tables = build(config).expect("config is valid");
    let mem = GuestMem {
        gpa: config.gpa as usize,
        mem: Box::leak(tables.bytes.clone().into_boxed_slice()),
    };
    // SAFETY: the RSDP address is inside `mem` (the handler checks every
    // mapping against it).
    let acpi = unsafe { AcpiTables::from_rsdp(mem, tables.rsdp_gpa as usize) }.expect("valid RSDP");
    (tables, acpi)
}

fn config() -> Config {
    Config {
        ioapic: Some(IoApicConfig {
            com1_gsi: 12,
            ..IoApicConfig::default()
        }),
        mmio_gaps: vec![MmioGap {
            base: 0xF800_0000,
            len: 0x0400_0000,
        }],
        ..Config::new(0x000E_0000, 3)
    }
}

#[test]
fn xsdt_lists_fadt_and_madt() {
    let (_, acpi) = parse(&config());
    assert_eq!(acpi.revision(), 2);
    let sigs: Vec<String> = acpi.headers().map(|h| h.signature.as_str().to_string()).collect();
    assert_eq!(sigs, ["FACP", "APIC"]);
}

#[test]
fn fadt() {
    let (t, acpi) = parse(&config());
    let fadt = acpi
        .find_table::<Fadt>()
        .expect("FADT present with a valid checksum");
    fadt.validate().unwrap();
    let rev = { fadt.header() }.revision;
    assert!(rev >= 5, "FADT revision {rev}");
    let flags = { fadt.flags };
    assert!(flags.system_is_hw_reduced_acpi());
    assert!(flags.supports_system_reset_via_fadt());
    let arch = { fadt.iapc_boot_arch };
    assert!(!arch.motherboard_implements_8042());
    assert!(!arch.legacy_devices_are_accessible());
    assert!(arch.dont_probe_vga());
    assert!(
        arch.use_time_and_alarm_namespace_for_rtc(),
        "CMOS RTC not present"
    );
    assert_eq!(fadt.dsdt_address().unwrap() as u64, t.layout.dsdt.gpa);
    assert!(fadt.facs_address().is_err(), "no FACS on a HW-reduced platform");

    let reset = fadt.reset_register().unwrap();
    assert_eq!(reset.address_space, AddressSpace::SystemIo);
    assert_eq!((reset.bit_width, reset.bit_offset), (8, 0));
    assert_eq!(reset.access_size, AccessSize::ByteAccess);
    assert_eq!(reset.address, u64::from(RESET_PORT));
    assert_eq!(fadt.reset_value, RESET_VALUE);

    for (reg, port) in [
        (fadt.sleep_control_register(), SLEEP_CONTROL_PORT),
        (fadt.sleep_status_register(), SLEEP_STATUS_PORT),
    ] {
        let reg = reg.unwrap().expect("present");
        assert_eq!(reg.address_space, AddressSpace::SystemIo);
        assert_eq!((reg.bit_width, reg.bit_offset), (8, 0));
        assert_eq!(reg.address, u64::from(port));
    }
    // The legacy fixed hardware is absent.
    assert!(fadt.pm1a_control_block().is_ok_and(|b| b.address == 0));
    assert!(fadt.pm_timer_block().unwrap().is_none());
}

#[test]
fn madt() {
    let (_, acpi) = parse(&config());
    let madt = acpi
        .find_table::<Madt>()
        .expect("MADT present with a valid checksum");
    let m = madt.get();
    assert_eq!({ m.local_apic_address }, LAPIC_ADDRESS);
    assert!(!m.supports_8259(), "PCAT_COMPAT clear");
    let mut lapics = Vec::new();
    let (mut ioapics, mut overrides) = (0, 0);
    for e in m.entries() {
        match e {
            MadtEntry::LocalApic(l) => {
                assert_eq!({ l.flags } & 1, 1, "enabled");
                assert_eq!(l.processor_id, l.apic_id);
                lapics.push(l.apic_id);
            }
            MadtEntry::IoApic(io) => {
                ioapics += 1;
                assert_eq!({ io.io_apic_address }, 0xFEC0_0000);
                assert_eq!({ io.global_system_interrupt_base }, 0);
            }
            MadtEntry::InterruptSourceOverride(o) => {
                overrides += 1;
                assert_eq!((o.bus, o.irq), (0, 4));
                assert_eq!({ o.global_system_interrupt }, 12);
                assert_eq!({ o.flags }, 0);
            }
            other => panic!("unexpected MADT entry {other:?}"),
        }
    }
    assert_eq!(lapics, [0, 1, 2]);
    assert_eq!((ioapics, overrides), (1, 1));
}

#[test]
fn madt_x2apic() {
    let mut c = Config::new(0x0010_0000, 260);
    c.max_size = 0x2000;
    let (_, acpi) = parse(&c);
    let madt = acpi.find_table::<Madt>().unwrap();
    let mut ids = Vec::new();
    for e in madt.get().entries() {
        match e {
            MadtEntry::LocalApic(l) => ids.push(u32::from(l.apic_id)),
            MadtEntry::LocalX2Apic(x) => {
                assert!({ x.x2apic_id } >= 255);
                assert_eq!({ x.x2apic_id }, { x.processor_uid });
                assert_eq!({ x.flags } & 1, 1);
                ids.push(x.x2apic_id);
            }
            other => panic!("unexpected MADT entry {other:?}"),
        }
    }
    assert_eq!(ids, (0..260).collect::<Vec<u32>>());
}

#[test]
fn dsdt_is_found_and_names_vmbus() {
    let (t, acpi) = parse(&config());
    let dsdt = acpi.dsdt().expect("DSDT reachable via X_DSDT, valid checksum");
    assert_eq!(dsdt.address as u64, t.layout.dsdt.gpa + 36);
    assert_eq!(dsdt.length as usize, t.layout.dsdt.len - 36);
    let aml = &t.bytes[t.layout.dsdt.offset + 36..];
    let has = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
    // NameOp "_S5_"; the device names; the _HID strings with their
    // StringPrefix and terminator.
    assert!(has(b"\x08\\_S5_\x12"));
    for name in [b"_SB_", b"VMOD", b"VMBS", b"COM1"] {
        assert!(has(name));
    }
    assert!(has(b"\x0DVMBus\x00"));
    assert!(has(b"\x0DVMBUS\x00"));
    assert!(has(b"\x0DACPI0004\x00"));
}
