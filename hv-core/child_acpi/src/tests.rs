//! Unit tests: layout, checksums, raw fields, and the DSDT read back by a
//! small AML walker written for these tests (the `aml` crate and the `acpi`
//! crate's interpreter need nightly Rust). `tests/parse.rs` reads the static
//! tables back with the `acpi` crate.

use std::collections::BTreeMap;
use std::string::String;
use std::vec::Vec;

use super::*;
use crate::power::*;

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn table<'a>(t: &'a Tables, r: &TableRange) -> &'a [u8] {
    &t.bytes[r.offset..r.offset + r.len]
}

/// A child with 4 VPs, an I/O APIC and two gaps.
fn full_config() -> Config {
    Config {
        ioapic: Some(IoApicConfig::default()),
        mmio_gaps: Vec::from([
            MmioGap {
                base: 0xE000_0000,
                len: 0x1000_0000,
            },
            MmioGap {
                base: 0x10_0000_0000,
                len: 0x4000_0000,
            },
        ]),
        ..Config::new(0xF_0000, 4)
    }
}

#[test]
fn layout_and_checksums() {
    for config in [Config::new(0x8_0000, 1), full_config()] {
        let t = build(&config).unwrap();
        let l = &t.layout;
        assert_eq!(t.rsdp_gpa, config.gpa);
        assert_eq!(t.e820.base, config.gpa);
        assert!(t.e820.len >= t.bytes.len() as u64);
        assert!(t.e820.len.is_multiple_of(PAGE_SIZE));
        let all = [l.rsdp, l.xsdt, l.fadt, l.madt, l.dsdt];
        for w in all.windows(2) {
            assert!(w[0].offset + w[0].len <= w[1].offset);
        }
        assert_eq!(l.dsdt.offset + l.dsdt.len, t.bytes.len());
        for r in all {
            assert_eq!(r.gpa % 16, 0);
            assert_eq!(r.gpa, config.gpa + r.offset as u64);
        }
        // RSDP: both checksums, revision 2, XSDT address.
        let rsdp = table(&t, &l.rsdp);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp.len(), 36);
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        assert_eq!(rsdp[15], 2);
        assert_eq!(u32_at(rsdp, 20), 36);
        assert_eq!(u64_at(rsdp, 24), l.xsdt.gpa);
        // Every SDT: signature, length, checksum.
        for (r, sig) in [
            (l.xsdt, b"XSDT"),
            (l.fadt, b"FACP"),
            (l.madt, b"APIC"),
            (l.dsdt, b"DSDT"),
        ] {
            let b = table(&t, &r);
            assert_eq!(&b[..4], sig);
            assert_eq!(u32_at(b, 4) as usize, r.len);
            assert_eq!(sum(b), 0, "{}", String::from_utf8_lossy(sig));
            assert_eq!(&b[10..16], &OEM_ID);
        }
        let xsdt = table(&t, &l.xsdt);
        assert_eq!(xsdt.len(), 52);
        assert_eq!(u64_at(xsdt, 36), l.fadt.gpa);
        assert_eq!(u64_at(xsdt, 44), l.madt.gpa);
    }
}

#[test]
fn fadt_fields() {
    let t = build(&full_config()).unwrap();
    let f = table(&t, &t.layout.fadt);
    // ACPI 6.5 Table 5.9 offsets.
    assert_eq!(f.len(), 276);
    assert_eq!(f[8], 6, "major revision");
    assert_eq!(f[131], 5, "minor revision");
    assert_eq!(u32_at(f, 36), 0, "FIRMWARE_CTRL");
    assert_eq!(u32_at(f, 40), 0, "DSDT (32-bit)");
    assert_eq!(u64_at(f, 132), 0, "X_FIRMWARE_CTRL");
    assert_eq!(u64_at(f, 140), t.layout.dsdt.gpa, "X_DSDT");
    let boot_arch = u16_at(f, 109);
    assert_eq!(boot_arch, IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC);
    assert_eq!(boot_arch & IAPC_BOOT_ARCH_8042, 0);
    let flags = u32_at(f, 112);
    assert_eq!(flags, (1 << 20) | (1 << 10));
    // RESET_REG at 116: SystemIO, 8 bits, offset 0, byte access.
    assert_eq!(&f[116..120], &[1, 8, 0, 1]);
    assert_eq!(u64_at(f, 120), u64::from(RESET_PORT));
    assert_eq!(f[128], RESET_VALUE);
    // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
    assert_eq!(&f[244..248], &[1, 8, 0, 1]);
    assert_eq!(u64_at(f, 248), u64::from(SLEEP_CONTROL_PORT));
    assert_eq!(&f[256..260], &[1, 8, 0, 1]);
    assert_eq!(u64_at(f, 260), u64::from(SLEEP_STATUS_PORT));
    // The legacy PM blocks are empty.
    assert!(f[56..88].iter().all(|&b| b == 0));
}

/// MADT structures as (type, bytes).
fn madt_entries(t: &Tables) -> Vec<(u8, Vec<u8>)> {
    let m = table(t, &t.layout.madt);
    let mut out = Vec::new();
    let mut off = 44;
    while off < m.len() {
        let len = m[off + 1] as usize;
        assert!(len >= 2 && off + len <= m.len());
        out.push((m[off], m[off..off + len].to_vec()));
        off += len;
    }
    assert_eq!(off, m.len());
    out
}

#[test]
fn madt_fields() {
    let t = build(&full_config()).unwrap();
    let m = table(&t, &t.layout.madt);
    assert_eq!(m[8], madt::MADT_REVISION);
    assert_eq!(u32_at(m, 36), LAPIC_ADDRESS);
    assert_eq!(u32_at(m, 40), 0, "PCAT_COMPAT clear");
    let e = madt_entries(&t);
    assert_eq!(e.len(), 5);
    for (vp, (ty, b)) in e[..4].iter().enumerate() {
        assert_eq!(*ty, 0);
        assert_eq!(b.len(), 8);
        assert_eq!(b[2] as usize, vp, "UID");
        assert_eq!(b[3] as usize, vp, "APIC id");
        assert_eq!(u32_at(b, 4), 1, "enabled");
    }
    let (ty, io) = &e[4];
    assert_eq!(*ty, 1);
    assert_eq!(io.len(), 12);
    assert_eq!(u32_at(io, 4), IOAPIC_ADDRESS);
    assert_eq!(u32_at(io, 8), 0);

    // A non-identity COM1 wiring gets an override.
    let mut c = full_config();
    c.ioapic = Some(IoApicConfig {
        com1_gsi: 20,
        ..IoApicConfig::default()
    });
    let t = build(&c).unwrap();
    let e = madt_entries(&t);
    let (ty, iso) = e.last().unwrap();
    assert_eq!((*ty, iso.len()), (2, 10));
    assert_eq!((iso[2], iso[3]), (0, COM1_IRQ));
    assert_eq!(u32_at(iso, 4), 20);
    assert_eq!(u16_at(iso, 8), 0);

    // No I/O APIC: processors only.
    let t = build(&Config::new(0x8_0000, 2)).unwrap();
    assert!(madt_entries(&t).iter().all(|(ty, _)| *ty == 0));
}

#[test]
fn x2apic_above_254() {
    let mut c = Config::new(0x10_0000, 300);
    c.max_size = 4 * PAGE_SIZE;
    let t = build(&c).unwrap();
    let e = madt_entries(&t);
    assert_eq!(e.len(), 300);
    for (vp, (ty, b)) in e.iter().enumerate() {
        if vp <= 254 {
            assert_eq!((*ty, b[3] as usize), (0, vp));
        } else {
            assert_eq!(*ty, 9);
            assert_eq!(b.len(), 16);
            assert_eq!(u32_at(b, 4) as usize, vp, "x2APIC id");
            assert_eq!(u32_at(b, 8), 1, "enabled");
            assert_eq!(u32_at(b, 12) as usize, vp, "UID");
        }
    }
    assert_eq!(sum(table(&t, &t.layout.madt)), 0);
}

#[test]
fn refusals() {
    assert_eq!(build(&Config::new(0x8_0000, 0)), Err(Error::NoVps));
    assert_eq!(
        build(&Config::new(0x8_0010, 1)),
        Err(Error::MisalignedGpa(0x8_0010))
    );
    let mut c = Config::new(0x10_0000, 600);
    c.max_size = PAGE_SIZE;
    assert!(matches!(
        build(&c),
        Err(Error::TooLarge {
            needed,
            available: PAGE_SIZE
        }) if needed > PAGE_SIZE
    ));
    let mut c = Config::new(u64::MAX - PAGE_SIZE + 1, 1);
    c.max_size = u64::MAX;
    assert_eq!(build(&c), Err(Error::AddressOverflow));
    let mut c = Config::new(0x8_0000, 1);
    c.lapic_address = 0xFEE0_0800;
    assert_eq!(build(&c), Err(Error::BadApicAddress(0xFEE0_0800)));
    let mut c = full_config();
    c.ioapic = Some(IoApicConfig {
        gsi_base: 24,
        ..IoApicConfig::default()
    });
    assert_eq!(build(&c), Err(Error::Com1GsiOutOfRange(4)));

    let with_gaps = |gaps: &[(u64, u64)]| {
        let mut c = full_config();
        c.mmio_gaps = gaps.iter().map(|&(base, len)| MmioGap { base, len }).collect();
        build(&c)
    };
    assert_eq!(with_gaps(&[(0xA_0000, 0x1_0000)]), Err(Error::BadGap(0)));
    assert_eq!(with_gaps(&[(0x1000_0000, 0)]), Err(Error::BadGap(0)));
    assert_eq!(with_gaps(&[(u64::MAX, 2)]), Err(Error::BadGap(0)));
    assert_eq!(
        with_gaps(&[
            (0x1000_0000, 0x1000),
            (0x2000_0000, 0x1000),
            (0x1FFF_F000, 0x2000)
        ]),
        Err(Error::GapsOverlap(1, 2))
    );
    assert_eq!(
        with_gaps(&[(0xF000_0000, 0x1000_0000)]),
        Err(Error::GapOverlapsPlatform(0))
    );
    assert_eq!(
        with_gaps(&[(0xFEC0_0000, 0x1000)]),
        Err(Error::GapOverlapsPlatform(0))
    );
    // A gap over the tables themselves.
    let mut c = Config::new(0x20_0000, 1);
    c.mmio_gaps = Vec::from([MmioGap {
        base: 0x20_0000,
        len: 0x10,
    }]);
    assert_eq!(build(&c), Err(Error::GapOverlapsPlatform(0)));
    // Up to u64::MAX exactly is fine.
    assert!(with_gaps(&[(u64::MAX - 0xFFF, 0x1000)]).is_ok());
    let mut c = Config::new(0x8_0000, 1);
    c.power.sleep_status = c.power.sleep_control;
    assert_eq!(build(&c), Err(Error::PortConflict(SLEEP_CONTROL_PORT)));
}

// ---------------------------------------------------------------------------
// A minimal AML reader: enough of ACPI 6.5 §20 (AML grammar) to walk what
// the DSDT holds.

#[derive(Debug, Clone, PartialEq)]
enum Obj {
    Int(u64),
    Str(String),
    Buf(Vec<u8>),
    Pkg(Vec<Obj>),
    Method { args: u8, body: Vec<u8> },
    Device,
    Scope,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let v = self.b[self.pos];
        self.pos += 1;
        v
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        s
    }

    /// PkgLength (§20.2.4); returns the end offset of the package.
    fn pkg_end(&mut self) -> usize {
        let start = self.pos;
        let lead = self.byte();
        let follow = lead >> 6;
        let len = if follow == 0 {
            usize::from(lead & 0x3F)
        } else {
            let mut len = usize::from(lead & 0x0F);
            for i in 0..follow {
                len |= usize::from(self.byte()) << (4 + 8 * i);
            }
            len
        };
        start + len
    }

    fn name_seg(&mut self) -> String {
        let s = self.take(4);
        assert!(
            s.iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
        );
        String::from_utf8(s.to_vec()).unwrap()
    }

    /// NameString (§20.2.2) resolved against `scope`.
    fn name_string(&mut self, scope: &[String]) -> Vec<String> {
        let mut path: Vec<String> = scope.to_vec();
        if self.b[self.pos] == b'\\' {
            self.pos += 1;
            path.clear();
        }
        while self.b[self.pos] == b'^' {
            self.pos += 1;
            path.pop();
        }
        let count = match self.b[self.pos] {
            0x2E => {
                self.pos += 1;
                2
            }
            0x2F => {
                self.pos += 1;
                usize::from(self.byte())
            }
            0x00 => {
                self.pos += 1;
                0
            }
            _ => 1,
        };
        for _ in 0..count {
            path.push(self.name_seg());
        }
        path
    }

    fn data(&mut self) -> Obj {
        match self.byte() {
            0x00 => Obj::Int(0),
            0x01 => Obj::Int(1),
            0xFF => Obj::Int(u64::MAX),
            0x0A => Obj::Int(u64::from(self.byte())),
            0x0B => Obj::Int(u64::from(u16::from_le_bytes(self.take(2).try_into().unwrap()))),
            0x0C => Obj::Int(u64::from(u32::from_le_bytes(self.take(4).try_into().unwrap()))),
            0x0E => Obj::Int(u64::from_le_bytes(self.take(8).try_into().unwrap())),
            0x0D => {
                let end = self.b[self.pos..].iter().position(|&c| c == 0).unwrap();
                let s = String::from_utf8(self.take(end).to_vec()).unwrap();
                self.pos += 1;
                Obj::Str(s)
            }
            0x11 => {
                let end = self.pkg_end();
                let Obj::Int(size) = self.data() else {
                    panic!("buffer size")
                };
                let bytes = self.take(end - self.pos).to_vec();
                assert_eq!(bytes.len() as u64, size);
                Obj::Buf(bytes)
            }
            0x12 => {
                let end = self.pkg_end();
                let n = self.byte();
                let elems: Vec<Obj> = (0..n).map(|_| self.data()).collect();
                assert_eq!(self.pos, end);
                Obj::Pkg(elems)
            }
            op => panic!("unexpected data opcode {op:#x} at {}", self.pos - 1),
        }
    }

    /// TermList up to `end`, recording named objects in `ns`.
    fn terms(&mut self, end: usize, scope: &[String], ns: &mut BTreeMap<String, Obj>) {
        let key = |p: &[String]| std::format!("\\{}", p.join("."));
        while self.pos < end {
            match self.byte() {
                0x08 => {
                    let path = self.name_string(scope);
                    let value = self.data();
                    assert!(ns.insert(key(&path), value).is_none());
                }
                0x10 => {
                    let pend = self.pkg_end();
                    let path = self.name_string(scope);
                    ns.entry(key(&path)).or_insert(Obj::Scope);
                    self.terms(pend, &path, ns);
                }
                0x14 => {
                    let pend = self.pkg_end();
                    let path = self.name_string(scope);
                    let flags = self.byte();
                    let body = self.take(pend - self.pos).to_vec();
                    let m = Obj::Method {
                        args: flags & 7,
                        body,
                    };
                    assert!(ns.insert(key(&path), m).is_none());
                }
                0x5B => {
                    assert_eq!(self.byte(), 0x82, "only Device ext ops expected");
                    let pend = self.pkg_end();
                    let path = self.name_string(scope);
                    assert!(ns.insert(key(&path), Obj::Device).is_none());
                    self.terms(pend, &path, ns);
                }
                op => panic!("unexpected opcode {op:#x} at {}", self.pos - 1),
            }
            assert!(self.pos <= end);
        }
        assert_eq!(self.pos, end);
    }
}

fn dsdt_namespace(t: &Tables) -> BTreeMap<String, Obj> {
    let d = table(t, &t.layout.dsdt);
    let mut r = Reader { b: d, pos: 36 };
    let mut ns = BTreeMap::new();
    r.terms(d.len(), &[], &mut ns);
    ns
}

/// A resource template's descriptors (§6.4) as (tag, body) pairs, checking
/// the end tag.
fn resources(buf: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let tag = buf[i];
        if tag & 0x80 != 0 {
            let len = usize::from(u16_at(buf, i + 1));
            out.push((tag, buf[i + 3..i + 3 + len].to_vec()));
            i += 3 + len;
        } else {
            let len = usize::from(tag & 7);
            let name = tag >> 3;
            if name == 0x0F {
                assert_eq!(len, 1);
                assert_eq!(i + 2, buf.len(), "end tag is last");
                return out;
            }
            out.push((name, buf[i + 1..i + 1 + len].to_vec()));
            i += 1 + len;
        }
    }
}

fn s(v: &str) -> Obj {
    Obj::Str(String::from(v))
}

#[test]
fn dsdt_contents() {
    let t = build(&full_config()).unwrap();
    let d = table(&t, &t.layout.dsdt);
    assert_eq!(d[8], 2, "revision 2: 64-bit integers");
    let ns = dsdt_namespace(&t);

    assert_eq!(
        ns["\\_S5_"],
        Obj::Pkg(Vec::from([Obj::Int(5), Obj::Int(0), Obj::Int(0), Obj::Int(0)]))
    );
    assert_eq!(u64::from(S5_SLP_TYP), 5);

    assert_eq!(ns["\\_SB_.VMOD"], Obj::Device);
    assert_eq!(ns["\\_SB_.VMOD._HID"], s("ACPI0004"));
    assert_eq!(ns["\\_SB_.VMOD._UID"], Obj::Int(0));
    let Obj::Buf(crs) = &ns["\\_SB_.VMOD._CRS"] else {
        panic!("VMOD._CRS is not a buffer")
    };
    let res = resources(crs);
    assert_eq!(res.len(), 2);
    for ((tag, body), gap) in res.iter().zip(&full_config().mmio_gaps) {
        // QWord Address Space Descriptor (§6.4.3.5.1): memory,
        // producer (general flags bit 0 clear, as OpenVMM), MinFixed|MaxFixed,
        // cacheable read-write.
        assert_eq!(*tag, 0x8A);
        assert_eq!(body.len(), 0x2B);
        assert_eq!(&body[..3], &[0, 0x0C, 0x03]);
        assert_eq!(u64_at(body, 3), 0, "granularity");
        assert_eq!(u64_at(body, 11), gap.base);
        assert_eq!(u64_at(body, 19), gap.base + gap.len - 1);
        assert_eq!(u64_at(body, 27), 0, "translation");
        assert_eq!(u64_at(body, 35), gap.len);
    }

    assert_eq!(ns["\\_SB_.VMOD.VMBS"], Obj::Device);
    assert_eq!(ns["\\_SB_.VMOD.VMBS._HID"], s("VMBus"));
    assert_eq!(ns["\\_SB_.VMOD.VMBS._DDN"], s("VMBUS"));
    assert_eq!(ns["\\_SB_.VMOD.VMBS._UID"], Obj::Int(0));
    assert_eq!(ns["\\_SB_.VMOD.VMBS._ADR"], Obj::Int(0));
    assert_eq!(
        ns["\\_SB_.VMOD.VMBS._STA"],
        Obj::Method {
            args: 0,
            body: Vec::from([0xA4, 0x0A, 0x0F]) // Return (0x0F)
        }
    );
    for m in ["_PS0", "_PS3"] {
        assert_eq!(
            ns[&std::format!("\\_SB_.VMOD.VMBS.{m}")],
            Obj::Method {
                args: 0,
                body: Vec::new()
            }
        );
    }
    assert_eq!(ns["\\_SB_.VMOD.VMBS._CRS"], Obj::Buf(Vec::from([0x79, 0x00])));

    assert_eq!(ns["\\_SB_.COM1"], Obj::Device);
    // EisaId("PNP0501") = 0x0105D041 (§19.6.35).
    assert_eq!(ns["\\_SB_.COM1._HID"], Obj::Int(0x0105_D041));
    assert_eq!(ns["\\_SB_.COM1._UID"], Obj::Int(0));
    let Obj::Buf(crs) = &ns["\\_SB_.COM1._CRS"] else {
        panic!("COM1._CRS is not a buffer")
    };
    assert_eq!(
        resources(crs),
        Vec::from([
            // IO (Decode16, 0x3F8, 0x3F8, 1, 8) (§6.4.2.5)
            (0x08, Vec::from([0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08])),
            // IRQNoFlags () {4} (§6.4.2.1)
            (0x04, Vec::from([0x10, 0x00])),
        ])
    );
    // Nothing else in the namespace.
    assert_eq!(ns.len(), 19, "{:?}", ns.keys().collect::<Vec<_>>());
}

#[test]
fn dsdt_without_ioapic_or_gaps() {
    let t = build(&Config::new(0x8_0000, 1)).unwrap();
    let ns = dsdt_namespace(&t);
    // COM1 with its ports and no IRQ (nothing to route it to): polled.
    assert_eq!(ns["\\_SB_.COM1._HID"], Obj::Int(0x0105_D041));
    let Obj::Buf(crs) = &ns["\\_SB_.COM1._CRS"] else {
        panic!("COM1._CRS is not a buffer")
    };
    assert_eq!(
        resources(crs),
        Vec::from([(0x08, Vec::from([0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08]))])
    );
    assert_eq!(ns["\\_SB_.VMOD._CRS"], Obj::Buf(Vec::from([0x79, 0x00])));
    assert_eq!(ns["\\_SB_.VMOD.VMBS._HID"], s("VMBus"));
    assert!(ns.contains_key("\\_S5_"));
}

#[test]
fn many_gaps_use_long_package_lengths() {
    let mut c = Config::new(0x8_0000, 2);
    c.max_size = 2 * PAGE_SIZE;
    c.mmio_gaps = (0..40)
        .map(|i| MmioGap {
            base: 0x1_0000_0000 + i * 0x1000_0000,
            len: 0x1000_0000,
        })
        .collect();
    let t = build(&c).unwrap();
    let ns = dsdt_namespace(&t);
    let Obj::Buf(crs) = &ns["\\_SB_.VMOD._CRS"] else {
        panic!()
    };
    assert_eq!(resources(crs).len(), 40);
    assert_eq!(sum(table(&t, &t.layout.dsdt)), 0);
}

#[test]
fn fix_checksum_sums_to_zero() {
    let mut b = [7u8; 40];
    fix_checksum(&mut b);
    assert_eq!(sum(&b), 0);
}
