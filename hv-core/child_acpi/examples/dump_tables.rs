//! Write the tables of a sample configuration to a directory, one file per
//! table (`rsdp.dat`, `xsdt.dat`, `facp.dat`, `apic.dat`, `dsdt.dat`), for a
//! manual check with ACPICA's disassembler: `iasl -d dsdt.dat` (Debian
//! package `acpica-tools`). Usage: `cargo run -p child_acpi --example
//! dump_tables -- DIR`.

use child_acpi::{Config, IoApicConfig, MmioGap, build};

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let config = Config {
        ioapic: Some(IoApicConfig::default()),
        mmio_gaps: vec![
            MmioGap {
                base: 0xE000_0000,
                len: 0x1000_0000,
            },
            MmioGap {
                base: 0x10_0000_0000,
                len: 0x4000_0000,
            },
        ],
        ..Config::new(0xE_0000, 4)
    };
    let t = build(&config).expect("sample config is valid");
    let l = &t.layout;
    for (name, r) in [
        ("rsdp", l.rsdp),
        ("xsdt", l.xsdt),
        ("facp", l.fadt),
        ("apic", l.madt),
        ("dsdt", l.dsdt),
    ] {
        let path = format!("{dir}/{name}.dat");
        std::fs::write(&path, &t.bytes[r.offset..r.offset + r.len]).expect("write table");
        println!("{path}: {} bytes at {:#x}", r.len, r.gpa);
    }
    println!(
        "blob {} bytes, RSDP at {:#x}, e820 {:#x}+{:#x}",
        t.bytes.len(),
        t.rsdp_gpa,
        t.e820.base,
        t.e820.len
    );
}
