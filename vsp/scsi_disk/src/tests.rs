//! Host tests, one or more per command, with the bytes Linux parses
//! (`scsi_scan.c` `scsi_probe_lun`, `sd.c` `read_capacity_16`,
//! `sd_read_write_protect_flag`, `sd_read_cache_type`, `scsi.c`
//! `scsi_vpd_inquiry`), plus a property test over arbitrary CDBs.

use super::*;
use proptest::prelude::*;

fn disk() -> ScsiDisk<MemoryBackend> {
    ScsiDisk::new(
        MemoryBackend::new(512, 1000),
        DiskConfig::new("SER123", 0xABC_DEF0_1234_5678),
    )
    .unwrap()
}

fn sense_of(r: &ScsiResult) -> (u8, u8, u8) {
    let s = r.sense.expect("sense");
    (s[2], s[12], s[13])
}

const ILLEGAL: u8 = 0x05;

#[test]
fn test_unit_ready_and_naca() {
    let mut d = disk();
    let r = d.execute(&[0, 0, 0, 0, 0, 0], &[], 0);
    assert!(r.is_good() && r.data_in.is_empty() && r.sense.is_none());
    // NACA set in the control byte: invalid field at byte 5 bit 2.
    let r = d.execute(&[0, 0, 0, 0, 0, 4], &[], 0);
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0));
    let s = r.sense.unwrap();
    assert_eq!((s[15], s[16], s[17]), (0xC0 | 0x08 | 2, 0, 5));
}

#[test]
fn unknown_and_refused_opcodes() {
    let mut d = disk();
    for cdb in [
        &[0x41u8, 0, 0, 0, 0, 0, 0, 0, 1, 0][..],             // WRITE SAME(10)
        &[0x93, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0], // WRITE SAME(16) + UNMAP
        &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],                  // UNMAP
        &[0x15, 0x10, 0, 0, 24, 0],                           // MODE SELECT(6)
        &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0],          // REPORT SUPPORTED OPCODES
        &[0x2F, 0, 0, 0, 0, 0, 0, 0, 1, 0],                   // VERIFY(10)
        &[0xC0, 0, 0, 0, 0, 0],                               // vendor specific group
        &[],
    ] {
        let r = d.execute(cdb, &[0; 512], 512);
        assert_eq!(r.status, ScsiStatus::CHECK_CONDITION, "{cdb:x?}");
        assert_eq!(sense_of(&r), (ILLEGAL, 0x20, 0), "{cdb:x?}");
        assert!(r.data_in.is_empty());
    }
    // A CDB shorter than its opcode's group.
    let r = d.execute(&[0x28, 0, 0], &[], 512);
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0));
}

#[test]
fn standard_inquiry_as_linux_reads_it() {
    let mut d = disk();
    let r = d.execute(&[0x12, 0, 0, 0, 36, 0], &[], 36);
    assert!(r.is_good());
    let b = &r.data_in;
    assert_eq!(b.len(), 36);
    assert_eq!(b[0], 0x00); // qualifier 0, direct access
    assert_eq!(b[1] & 0x80, 0); // not removable
    assert_eq!(b[2], 6); // SPC-4: Linux scsi_level = 7, RC16 first
    assert_eq!(b[3] & 0x0F, 2); // response data format
    assert_eq!(b[4], 31); // additional length: 36 bytes
    assert_eq!(b[7] & 0x02, 0x02); // CMDQUE
    assert_eq!(&b[8..16], b"Msft    ");
    assert_eq!(&b[16..32], b"Virtual Disk    ");
    assert_eq!(&b[32..36], b"1.0 ");
    // Allocation length and buffer both truncate; residual reported.
    let r = d.execute(&[0x12, 0, 0, 0, 255, 0], &[], 255);
    assert_eq!(r.data_in.len(), 36);
    assert_eq!(r.residual(255), 219);
    assert_eq!(d.execute(&[0x12, 0, 0, 0, 5, 0], &[], 255).data_in.len(), 5);
    assert_eq!(
        d.execute(&[0x12, 0, 0, 0, 36, 0], &[], 3).data_in,
        b[..3].to_vec()
    );
    assert_eq!(d.execute(&[0x12, 0, 0, 0, 0, 0], &[], 36).data_in.len(), 0);
    // Page code without EVPD, CMDDT: invalid field.
    let r = d.execute(&[0x12, 0, 0x80, 0, 36, 0], &[], 36);
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0));
    assert_eq!(r.sense.unwrap()[17], 2);
    assert_eq!(
        sense_of(&d.execute(&[0x12, 2, 0, 0, 36, 0], &[], 36)),
        (ILLEGAL, 0x24, 0)
    );
}

fn vpd(d: &mut ScsiDisk<MemoryBackend>, page: u8) -> Vec<u8> {
    let r = d.execute(&[0x12, 1, page, 0x01, 0x00, 0], &[], 256);
    assert!(r.is_good(), "page {page:#x}: {r:?}");
    let b = r.data_in;
    assert_eq!((b[0], b[1]), (0, page));
    assert_eq!(u16::from_be_bytes([b[2], b[3]]) as usize + 4, b.len());
    b
}

#[test]
fn vpd_pages() {
    let mut d = disk();
    assert_eq!(
        vpd(&mut d, 0x00),
        vec![0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    );
    assert_eq!(vpd(&mut d, 0x80), [&[0u8, 0x80, 0, 6][..], b"SER123"].concat());
    let p = vpd(&mut d, 0x83);
    // NAA designator: binary, LU, type 3, 8 bytes, NAA 3h + 60 bits.
    assert_eq!(&p[4..8], &[0x01, 0x03, 0x00, 0x08]);
    assert_eq!(&p[8..16], &0x3ABC_DEF0_1234_5678u64.to_be_bytes());
    // T10 vendor ID: ASCII, type 1, "Msft    SER123".
    assert_eq!(&p[16..20], &[0x02, 0x01, 0x00, 14]);
    assert_eq!(&p[20..], b"Msft    SER123");
    let p = vpd(&mut d, 0xB0);
    assert_eq!(p.len(), 64);
    assert_eq!(&p[8..12], &512u32.to_be_bytes()); // max transfer length
    assert!(p[20..44].iter().all(|&b| b == 0)); // no UNMAP / WRITE SAME
    let p = vpd(&mut d, 0xB1);
    assert_eq!((p.len(), &p[4..6]), (64, &[0u8, 1][..])); // non-rotating
    assert_eq!(vpd(&mut d, 0xB2), vec![0, 0xB2, 0, 4, 0, 0, 0, 0]);
    let r = d.execute(&[0x12, 1, 0x89, 0, 255, 0], &[], 255);
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0));
    // Linux's scsi_vpd_inquiry first asks for 4 bytes, then the length.
    assert_eq!(
        d.execute(&[0x12, 1, 0x83, 0, 4, 0], &[], 255).data_in,
        vec![0, 0x83, 0, 30]
    );
}

#[test]
fn identity_is_per_disk() {
    let other = ScsiDisk::new(MemoryBackend::new(512, 8), DiskConfig::new("SER999", 7)).unwrap();
    let mut d = disk();
    let mut o = other;
    assert_ne!(vpd(&mut d, 0x83), vpd(&mut o, 0x83));
    assert_ne!(vpd(&mut d, 0x80), vpd(&mut o, 0x80));
    assert_eq!(
        ScsiDisk::new(MemoryBackend::new(512, 8), DiskConfig::new("bad\n", 7)).err(),
        Some(ConfigError::Serial)
    );
    assert_eq!(
        ScsiDisk::new(MemoryBackend::new(520, 8), DiskConfig::new("x", 7)).err(),
        Some(ConfigError::SectorSize(520))
    );
    assert_eq!(
        ScsiDisk::new(MemoryBackend::new(512, 0), DiskConfig::new("x", 7)).err(),
        Some(ConfigError::Empty)
    );
}

#[test]
fn read_capacity_10_and_16() {
    let mut d = disk();
    let r = d.execute(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(r.data_in, [999u32.to_be_bytes(), 512u32.to_be_bytes()].concat());
    let r = d.execute(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], &[], 8);
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0));
    let rc16 = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    let r = d.execute(&rc16, &[], 32);
    let b = &r.data_in;
    assert_eq!(b.len(), 32);
    assert_eq!(&b[0..8], &999u64.to_be_bytes());
    assert_eq!(&b[8..12], &512u32.to_be_bytes());
    assert_eq!(b[12], 0); // no protection (sd: prot_en = 0)
    assert_eq!(b[13] & 0x0F, 0); // physical = logical
    assert_eq!(b[14] & 0xC0, 0); // LBPME = LBPRZ = 0: sd asks no B2/UNMAP
    // Allocation length 12: truncated.
    let mut short = rc16;
    short[13] = 12;
    assert_eq!(d.execute(&short, &[], 32).data_in.len(), 12);
    // Another SERVICE ACTION IN(16) action.
    let mut other = rc16;
    other[1] = 0x11;
    assert_eq!(sense_of(&d.execute(&other, &[], 32)), (ILLEGAL, 0x24, 0));
    // A disk past 2^32 blocks reports 0xFFFFFFFF in RC10.
    let mut big = ScsiDisk::new(MemoryBackend::new(512, 1), DiskConfig::new("x", 1)).unwrap();
    big.sector_count = 1 << 33;
    assert_eq!(
        &big.execute(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8).data_in[..4],
        &[0xFF; 4]
    );
    assert_eq!(
        &big.execute(&rc16, &[], 32).data_in[..8],
        &((1u64 << 33) - 1).to_be_bytes()
    );
    let mut d4k = ScsiDisk::new(
        MemoryBackend::new(4096, 16),
        DiskConfig {
            physical_block_exponent: 3,
            ..DiskConfig::new("x", 1)
        },
    )
    .unwrap();
    let b = d4k.execute(&rc16, &[], 32).data_in;
    assert_eq!((&b[8..12], b[13]), (&4096u32.to_be_bytes()[..], 3));
}

#[test]
fn mode_sense_headers_and_pages() {
    let mut d = disk();
    // MODE SENSE(6), all pages, with block descriptor.
    let r = d.execute(&[0x1A, 0, 0x3F, 0, 255, 0], &[], 255);
    let b = &r.data_in;
    assert_eq!(b.len(), 4 + 8 + 20 + 12);
    assert_eq!(b[0] as usize, b.len() - 1); // mode data length
    assert_eq!(b[2], 0x10); // WP = 0, DPOFUA = 1
    assert_eq!(b[3], 8); // block descriptor length
    assert_eq!(&b[4..12], &[0, 0, 0x03, 0xE8, 0, 0, 0x02, 0x00]); // 1000 blocks of 512
    assert_eq!(&b[12..15], &[0x08, 0x12, 0x04]); // caching page, WCE
    assert_eq!(&b[32..34], &[0x0A, 0x0A]); // control page
    // Caching page only, DBD: header + page (sd_read_cache_type).
    let b = d.execute(&[0x1A, 0x08, 0x08, 0, 255, 0], &[], 255).data_in;
    assert_eq!(b.len(), 24);
    assert_eq!((b[0], b[3]), (23, 0));
    assert_eq!(&b[4..7], &[0x08, 0x12, 0x04]);
    // Header-only read (sd first asks for 4 bytes).
    assert_eq!(
        d.execute(&[0x1A, 0, 0x3F, 0, 4, 0], &[], 255).data_in,
        vec![43, 0, 0x10, 8]
    );
    // MODE SENSE(10), LLBAA: long descriptor.
    let b = d
        .execute(&[0x5A, 0x10, 0x3F, 0, 0, 0, 0, 1, 0, 0], &[], 256)
        .data_in;
    assert_eq!(u16::from_be_bytes([b[0], b[1]]) as usize, b.len() - 2);
    assert_eq!((b[3], b[4], u16::from_be_bytes([b[6], b[7]])), (0x10, 1, 16));
    assert_eq!(&b[8..16], &1000u64.to_be_bytes());
    assert_eq!(&b[20..24], &512u32.to_be_bytes());
    assert_eq!(b[24], 0x08);
    // Changeable values: nothing changeable.
    let b = d.execute(&[0x1A, 0x08, 0x48, 0, 255, 0], &[], 255).data_in;
    assert_eq!(b[6], 0);
    // Saved values: not supported. Unknown page / subpage: invalid field.
    assert_eq!(
        sense_of(&d.execute(&[0x1A, 0, 0xC8, 0, 255, 0], &[], 255)),
        (ILLEGAL, 0x39, 0)
    );
    assert_eq!(
        sense_of(&d.execute(&[0x1A, 0, 0x1C, 0, 255, 0], &[], 255)),
        (ILLEGAL, 0x24, 0)
    );
    assert_eq!(
        sense_of(&d.execute(&[0x1A, 0, 0x08, 1, 255, 0], &[], 255)),
        (ILLEGAL, 0x24, 0)
    );
    // Write protect bit for a read-only backend.
    let mut ro = MemoryBackend::new(512, 8);
    ro.read_only = true;
    let mut ro = ScsiDisk::new(ro, DiskConfig::new("x", 1)).unwrap();
    assert_eq!(ro.execute(&[0x1A, 0, 0x3F, 0, 4, 0], &[], 4).data_in[2], 0x90);
    assert_eq!(
        ro.execute(&[0x5A, 0, 0x3F, 0, 0, 0, 0, 0, 8, 0], &[], 8).data_in[3],
        0x90
    );
    // No write cache configured: WCE = 0.
    let mut wt = ScsiDisk::new(
        MemoryBackend::new(512, 8),
        DiskConfig {
            write_cache: false,
            ..DiskConfig::new("x", 1)
        },
    )
    .unwrap();
    assert_eq!(wt.execute(&[0x1A, 0x08, 0x08, 0, 255, 0], &[], 255).data_in[6], 0);
}

#[test]
fn report_luns_lists_this_lun() {
    let mut d = disk();
    let r = d.execute(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    assert_eq!(r.data_in, vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let r = d.execute(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0], &[], 256);
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0));
    let r = d.execute(&[0xA0, 0, 0x10, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0));
    // Well-known LUNs only: an empty list.
    let r = d.execute(&[0xA0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    assert_eq!(r.data_in, vec![0; 8]);
    // A controller listing several, one past 255 (flat space).
    let r = report_luns(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[0, 3, 300], 256);
    assert_eq!(&r.data_in[..4], &24u32.to_be_bytes());
    assert_eq!(&r.data_in[16..18], &[0, 3]);
    assert_eq!(&r.data_in[24..26], &[0x41, 0x2C]);
    // Truncated to the buffer.
    assert_eq!(
        report_luns(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[0, 3], 12)
            .data_in
            .len(),
        12
    );
}

#[test]
fn request_sense_reports_no_sense() {
    let mut d = disk();
    let r = d.execute(&[0x03, 0, 0, 0, 18, 0], &[], 252);
    assert_eq!(
        r.data_in,
        sense::fixed(SenseKey::NO_SENSE, Asc::NONE, None).to_vec()
    );
    assert_eq!(r.data_in[0], 0x70);
    let r = d.execute(&[0x03, 1, 0, 0, 252, 0], &[], 252);
    assert_eq!(r.data_in, vec![0x72, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(d.execute(&[0x03, 0, 0, 0, 4, 0], &[], 252).data_in.len(), 4);
}

#[test]
fn read_write_all_sizes() {
    let mut d = disk();
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    // WRITE(10) 2 blocks at LBA 5, then READ(10), READ(16), READ(12), READ(6).
    let r = d.execute(&[0x2A, 0, 0, 0, 0, 5, 0, 0, 2, 0], &pattern, 0);
    assert!(r.is_good());
    assert_eq!((r.data_out_used, r.transferred()), (1024, 1024));
    assert_eq!(&d.backend().bytes()[5 * 512..7 * 512], &pattern[..]);
    for cdb in [
        &[0x28u8, 0, 0, 0, 0, 5, 0, 0, 2, 0][..],
        &[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0],
        &[0xA8, 0, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0],
        &[0x08, 0, 0, 5, 2, 0],
    ] {
        let r = d.execute(cdb, &[], 4096);
        assert!(r.is_good(), "{cdb:x?}");
        assert_eq!(r.data_in, pattern, "{cdb:x?}");
        assert_eq!(r.residual(4096), 3072);
    }
    // WRITE(6), WRITE(12), WRITE(16) land where they say.
    d.execute(&[0x0A, 0, 0, 9, 1, 0], &pattern[..512], 0);
    d.execute(&[0xAA, 0, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0], &pattern[512..], 0);
    let r = d.execute(
        &[0x8A, 0, 0, 0, 0, 0, 0, 0, 0, 11, 0, 0, 0, 1, 0, 0],
        &pattern[..512],
        0,
    );
    assert!(r.is_good());
    assert_eq!(&d.backend().bytes()[9 * 512..11 * 512], &pattern[..]);
    assert_eq!(&d.backend().bytes()[11 * 512..12 * 512], &pattern[..512]);
    // READ(6) with length 0 means 256 blocks.
    let r = d.execute(&[0x08, 0, 0, 0, 0, 0], &[], 256 * 512);
    assert_eq!(r.data_in.len(), 256 * 512);
    // READ(10) with length 0: nothing moved, GOOD, LBA still checked.
    assert!(
        d.execute(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
            .data_in
            .is_empty()
    );
    assert_eq!(
        sense_of(&d.execute(&[0x28, 0, 0, 0, 0x10, 0, 0, 0, 0, 0], &[], 0)),
        (ILLEGAL, 0x21, 0)
    );
}

#[test]
fn fua_flushes_and_sync_cache() {
    let mut d = disk();
    d.execute(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[1; 512], 0);
    assert_eq!(d.backend().flushes, 0);
    d.execute(&[0x2A, 0x08, 0, 0, 0, 0, 0, 0, 1, 0], &[1; 512], 0);
    assert_eq!(d.backend().flushes, 1);
    assert!(d.execute(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).is_good());
    assert!(
        d.execute(&[0x91, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], &[], 0)
            .is_good()
    );
    assert_eq!(d.backend().flushes, 3);
    let r = d.execute(&[0x35, 0, 0, 0, 0x03, 0xE8, 0, 0, 1, 0], &[], 0);
    assert_eq!(sense_of(&r), (ILLEGAL, 0x21, 0));
    d.backend_mut().fail_flush = Some(BackendError::Io);
    let r = d.execute(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(sense_of(&r), (0x04, 0x44, 0));
}

#[test]
fn start_stop_unit() {
    let mut d = disk();
    assert!(d.execute(&[0x1B, 0, 0, 0, 1, 0], &[], 0).is_good());
    assert!(d.execute(&[0x1B, 1, 0, 0, 0, 0], &[], 0).is_good());
    assert_eq!(d.backend().flushes, 1); // stop writes the cache back
    assert_eq!(
        sense_of(&d.execute(&[0x1B, 0, 0, 0, 2, 0], &[], 0)),
        (ILLEGAL, 0x24, 0)
    );
    // The unit keeps serving after a stop.
    assert!(d.execute(&[0x00, 0, 0, 0, 0, 0], &[], 0).is_good());
}

#[test]
fn out_of_range_and_bad_buffers() {
    let mut d = disk();
    for cdb in [
        &[0x28u8, 0, 0, 0, 0x03, 0xE8, 0, 0, 1, 0][..], // LBA 1000 of 1000
        &[0x28, 0, 0, 0, 0x03, 0xE7, 0, 0, 2, 0],       // runs one past the end
        &[
            0x88, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 1, 0, 0,
        ], // wraps u64
        &[0x2A, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 1, 0],
        &[0x08, 0x1F, 0xFF, 0xFF, 1, 0],
    ] {
        let r = d.execute(cdb, &[0; 1024], 1024);
        assert_eq!(sense_of(&r), (ILLEGAL, 0x21, 0), "{cdb:x?}");
        assert!(r.data_in.is_empty());
    }
    // A data-in buffer too small for the transfer, a data-out too short:
    // refused, nothing moved, pointer at the transfer length.
    let r = d.execute(&[0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0], &[], 1023);
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0));
    assert_eq!(r.sense.unwrap()[17], 7);
    let r = d.execute(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 2, 0], &[9; 1000], 0);
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0));
    assert!(d.backend().bytes()[..1024].iter().all(|&b| b == 0));
    // RDPROTECT / WRPROTECT.
    assert_eq!(
        sense_of(&d.execute(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512)),
        (ILLEGAL, 0x24, 0)
    );
    // A huge transfer length with a small buffer allocates nothing big.
    let r = d.execute(
        &[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
        &[],
        512,
    );
    assert_eq!(sense_of(&r), (ILLEGAL, 0x21, 0));
}

#[test]
fn backend_errors_become_sense() {
    let mut d = disk();
    d.backend_mut().fail_reads = Some(BackendError::Io);
    assert_eq!(
        sense_of(&d.execute(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512)),
        (0x03, 0x11, 0)
    );
    d.backend_mut().fail_writes = Some(BackendError::Io);
    assert_eq!(
        sense_of(&d.execute(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0; 512], 0)),
        (0x03, 0x0C, 0)
    );
    d.backend_mut().fail_writes = Some(BackendError::NotReady);
    assert_eq!(
        sense_of(&d.execute(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0; 512], 0)),
        (0x02, 0x04, 0)
    );
    // Read-only: refused before the backend sees it.
    let mut ro = MemoryBackend::new(512, 8);
    ro.read_only = true;
    let mut ro = ScsiDisk::new(ro, DiskConfig::new("x", 1)).unwrap();
    let r = ro.execute(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[7; 512], 0);
    assert_eq!(sense_of(&r), (0x07, 0x27, 0));
    assert!(ro.backend().bytes().iter().all(|&b| b == 0));
}

#[test]
fn plan_then_complete_for_async_backends() {
    let mut d = disk();
    let Plan::Io(req) = d.plan(&[0x28, 0, 0, 0, 0, 2, 0, 0, 1, 0], 0, 512) else {
        panic!()
    };
    assert_eq!(
        req,
        IoRequest {
            op: IoOp::Read,
            lba: 2,
            blocks: 1,
            bytes: 512
        }
    );
    let r = d.complete_io(&req, Ok(()), vec![5; 512]);
    assert_eq!(r.data_in, vec![5; 512]);
    let r = d.complete_io(&req, Err(BackendError::OutOfRange), vec![]);
    assert_eq!(sense_of(&r), (ILLEGAL, 0x21, 0));
    let Plan::Done(r) = d.plan(&[0x00, 0, 0, 0, 0, 0], 0, 0) else {
        panic!()
    };
    assert!(r.is_good());
}

proptest! {
    /// Any CDB (any length, any bytes), any buffers: never panics, and the
    /// result is well formed.
    #[test]
    fn any_cdb_is_answered(
        cdb in proptest::collection::vec(any::<u8>(), 0..20),
        out in proptest::collection::vec(any::<u8>(), 0..2048),
        cap in 0usize..4096,
        ro in any::<bool>(),
    ) {
        let mut b = MemoryBackend::new(512, 16);
        b.read_only = ro;
        let mut d = ScsiDisk::new(b, DiskConfig::new("P", 1)).unwrap();
        let r = d.execute(&cdb, &out, cap);
        crate::fuzzing::check_result(&r, cap, out.len());
    }

    /// Known opcodes with random fields exercise the deeper paths.
    #[test]
    fn known_opcodes_with_random_fields(
        opcode in proptest::sample::select(vec![0x00u8, 0x03, 0x08, 0x0A, 0x12, 0x1A, 0x1B, 0x25, 0x28, 0x2A, 0x35, 0x5A, 0x88, 0x8A, 0x91, 0x9E, 0xA0, 0xA8, 0xAA]),
        rest in proptest::collection::vec(any::<u8>(), 15),
        out in proptest::collection::vec(any::<u8>(), 0..4096),
        cap in 0usize..8192,
    ) {
        let mut cdb = vec![opcode];
        cdb.extend_from_slice(&rest);
        let mut d = ScsiDisk::new(MemoryBackend::new(512, 16), DiskConfig::new("P", 1)).unwrap();
        let r = d.execute(&cdb, &out, cap);
        crate::fuzzing::check_result(&r, cap, out.len());
    }

    #[test]
    fn fuzz_entry_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        crate::fuzzing::execute_cdbs(&data);
    }
}
