//! Host tests for the disk table: format, create, list, delete, map,
//! recovery from damaged copies, foreign partitions, untrusted input, and
//! an independent GPT reader (and `gpt_disk_io` itself) checking what was
//! written.

use disks::{
    BlockDevice, CHILD_DISK_TYPE, Corruption, DiskInfo, DiskTable, DisksError, MemDevice, Recovery,
    is_valid_name,
};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

fn blank(mib: u64) -> MemDevice {
    MemDevice::new(512, mib * MIB / 512)
}

// ---------------------------------------------------------------------------
// An independent GPT reader and patcher (plain byte offsets from UEFI 2.10
// tables 5-5 and 5-6, a bitwise CRC32), sharing no code with the crate.

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[derive(Debug, Clone, PartialEq)]
struct RawHeader {
    my: u64,
    alt: u64,
    first: u64,
    last: u64,
    guid: [u8; 16],
    pel: u64,
    n: u32,
    es: u32,
    array_crc: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct RawEntry {
    index: u32,
    ptype: [u8; 16],
    unique: [u8; 16],
    start: u64,
    end: u64,
    name: String,
}

fn block(img: &[u8], bs: usize, lba: u64) -> &[u8] {
    &img[lba as usize * bs..(lba as usize + 1) * bs]
}

/// Parses and checks the header at `lba` (signature, CRC) and its array
/// (CRC); returns the header and the used entries.
fn independent_read(img: &[u8], bs: usize, lba: u64) -> (RawHeader, Vec<RawEntry>) {
    let b = block(img, bs, lba);
    assert_eq!(&b[0..8], b"EFI PART", "signature at LBA {lba}");
    assert_eq!(u32_at(b, 8), 0x0001_0000, "revision");
    let size = u32_at(b, 12) as usize;
    assert_eq!(size, 92);
    let mut h = b[..size].to_vec();
    h[16..20].fill(0);
    assert_eq!(crc32(&h), u32_at(b, 16), "header CRC at LBA {lba}");
    assert!(b[size..].iter().all(|&x| x == 0), "rest of header block zero");
    let hdr = RawHeader {
        my: u64_at(b, 24),
        alt: u64_at(b, 32),
        first: u64_at(b, 40),
        last: u64_at(b, 48),
        guid: b[56..72].try_into().unwrap(),
        pel: u64_at(b, 72),
        n: u32_at(b, 80),
        es: u32_at(b, 84),
        array_crc: u32_at(b, 88),
    };
    assert_eq!(hdr.my, lba);
    let start = hdr.pel as usize * bs;
    let arr = &img[start..start + (hdr.n * hdr.es) as usize];
    assert_eq!(crc32(arr), hdr.array_crc, "array CRC of header at LBA {lba}");
    let mut entries = Vec::new();
    for i in 0..hdr.n {
        let e = &arr[(i * hdr.es) as usize..][..128];
        let ptype: [u8; 16] = e[0..16].try_into().unwrap();
        if ptype == [0; 16] {
            assert!(e.iter().all(|&x| x == 0), "unused entry {i} is all zero");
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        entries.push(RawEntry {
            index: i,
            ptype,
            unique: e[16..32].try_into().unwrap(),
            start: u64_at(e, 32),
            end: u64_at(e, 40),
            name: String::from_utf16(&units).unwrap(),
        });
    }
    (hdr, entries)
}

/// Checks the whole image the way a second tool would: protective MBR,
/// both headers and arrays valid and describing the same table.
fn independent_check(img: &[u8], bs: usize) -> Vec<RawEntry> {
    let blocks = (img.len() / bs) as u64;
    assert_eq!(&img[510..512], &[0x55, 0xaa], "MBR signature");
    assert_eq!(img[446 + 4], 0xee, "protective MBR type");
    assert_eq!(u32_at(img, 446 + 8), 1, "protective MBR start");
    assert_eq!(
        u32_at(img, 446 + 12),
        u32::try_from(blocks - 1).unwrap_or(u32::MAX),
        "protective MBR size"
    );
    let (p, pe) = independent_read(img, bs, 1);
    let (b, be) = independent_read(img, bs, blocks - 1);
    assert_eq!(p.alt, blocks - 1);
    assert_eq!(b.alt, 1);
    assert_eq!(p.pel, 2);
    let array_blocks = (u64::from(p.n * p.es)).div_ceil(bs as u64);
    assert_eq!(b.pel, blocks - 1 - array_blocks);
    assert!(p.pel + array_blocks <= p.first);
    assert!(p.last < b.pel);
    assert_eq!(
        (p.first, p.last, p.guid, p.n, p.es, p.array_crc),
        (b.first, b.last, b.guid, b.n, b.es, b.array_crc)
    );
    assert_eq!(pe, be);
    let mut sorted = pe.clone();
    sorted.sort_by_key(|e| e.start);
    for w in sorted.windows(2) {
        assert!(w[0].end < w[1].start, "overlap {:?}", w);
    }
    for e in &sorted {
        assert!(p.first <= e.start && e.start <= e.end && e.end <= p.last);
    }
    pe
}

/// Rewrites entry `index` in both arrays and fixes both headers' CRCs, as
/// another partitioning tool would.
fn patch_entry(img: &mut [u8], bs: usize, index: u32, entry: &[u8; 128]) {
    let blocks = (img.len() / bs) as u64;
    for lba in [1, blocks - 1] {
        let (pel, n, es) = {
            let b = block(img, bs, lba);
            (u64_at(b, 72), u32_at(b, 80), u32_at(b, 84))
        };
        let start = pel as usize * bs;
        let off = start + (index * es) as usize;
        img[off..off + 128].copy_from_slice(entry);
        let crc = crc32(&img[start..start + (n * es) as usize]);
        set_header_u32(img, bs, lba, 88, crc);
    }
}

/// Sets a 32-bit header field and fixes the header CRC.
fn set_header_u32(img: &mut [u8], bs: usize, lba: u64, off: usize, v: u32) {
    let o = lba as usize * bs;
    img[o + off..o + off + 4].copy_from_slice(&v.to_le_bytes());
    fix_header_crc(img, bs, lba);
}

fn set_header_u64(img: &mut [u8], bs: usize, lba: u64, off: usize, v: u64) {
    let o = lba as usize * bs;
    img[o + off..o + off + 8].copy_from_slice(&v.to_le_bytes());
    fix_header_crc(img, bs, lba);
}

fn fix_header_crc(img: &mut [u8], bs: usize, lba: u64) {
    let o = lba as usize * bs;
    let size = u32_at(img, o + 12).clamp(92, bs as u32) as usize;
    img[o + 16..o + 20].fill(0);
    let crc = crc32(&img[o..o + size]);
    img[o + 16..o + 20].copy_from_slice(&crc.to_le_bytes());
}

fn raw_entry(ptype: [u8; 16], unique: [u8; 16], start: u64, end: u64, name: &str) -> [u8; 128] {
    let mut e = [0u8; 128];
    e[0..16].copy_from_slice(&ptype);
    e[16..32].copy_from_slice(&unique);
    e[32..40].copy_from_slice(&start.to_le_bytes());
    e[40..48].copy_from_slice(&end.to_le_bytes());
    for (i, u) in name.encode_utf16().enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    e
}

/// Linux filesystem data type GUID, mixed-endian as on disk.
const LINUX_FS: [u8; 16] = [
    0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
];

fn names(list: &[DiskInfo]) -> Vec<&str> {
    list.iter().map(|d| d.name.as_str()).collect()
}

fn formatted(mib: u64) -> MemDevice {
    DiskTable::format(blank(mib), 7).unwrap().into_device()
}

// ---------------------------------------------------------------------------

#[test]
fn format_writes_an_empty_valid_gpt() {
    let t = DiskTable::format(blank(8), 1).unwrap();
    assert_eq!(t.recovery(), Recovery::Formatted);
    let n = t.block_count();
    assert_eq!(n, 8 * MIB / 512);
    assert_eq!(t.usable_range(), (34, n - 34));
    assert_eq!(t.entry_count(), 128);
    assert!(t.list().is_empty());
    let dev = t.into_device();
    assert!(independent_check(dev.bytes(), 512).is_empty());
    let t = DiskTable::open(dev).unwrap();
    assert_eq!(t.recovery(), Recovery::Intact);
    assert!(t.list().is_empty());
    assert_eq!(t.largest_free(), 7 * MIB - 33 * 512);
}

#[test]
fn open_reports_no_gpt_on_a_blank_device() {
    assert_eq!(DiskTable::open(blank(4)).err(), Some(DisksError::NoGpt));
    // An MBR alone is still "no GPT".
    let mut dev = blank(4);
    dev.bytes_mut()[510] = 0x55;
    dev.bytes_mut()[511] = 0xaa;
    assert_eq!(DiskTable::open(dev).err(), Some(DisksError::NoGpt));
}

#[test]
fn unusable_devices_are_refused() {
    let odd = MemDevice::new(520, 1000);
    assert_eq!(
        DiskTable::open(odd.clone()).err(),
        Some(DisksError::BlockSize(520))
    );
    assert_eq!(DiskTable::format(odd, 0).err(), Some(DisksError::BlockSize(520)));
    assert_eq!(
        DiskTable::format(MemDevice::new(512, 67), 0).err(),
        Some(DisksError::DeviceTooSmall { blocks: 67 })
    );
    assert!(DiskTable::format(MemDevice::new(512, 68), 0).is_ok());
    assert_eq!(
        DiskTable::open(MemDevice::new(512, 2)).err(),
        Some(DisksError::DeviceTooSmall { blocks: 2 })
    );
}

#[test]
fn create_several_then_reopen_lists_the_same() {
    let mut t = DiskTable::format(blank(64), 3).unwrap();
    let a = t.create("alpha", 10 * MIB).unwrap();
    let b = t.create("beta", 3 * MIB + 1).unwrap();
    let c = t.create("gamma-2_x", 512).unwrap();
    assert!(a.ours && b.ours && c.ours);
    assert_eq!(a.type_guid, CHILD_DISK_TYPE);
    assert_eq!((a.first_lba, a.last_lba), (2048, 2048 + 20480 - 1));
    assert_eq!(a.size_bytes, 10 * MIB);
    // Sizes round up to whole blocks; starts are 1 MiB aligned.
    assert_eq!(b.first_lba, 2048 * 11);
    assert_eq!(b.size_bytes, 3 * MIB + 512);
    assert_eq!(c.first_lba, 2048 * 15);
    assert_eq!(c.size_bytes, 512);
    let guids = [a.unique_guid, b.unique_guid, c.unique_guid];
    assert!(guids[0] != guids[1] && guids[1] != guids[2] && guids[0] != guids[2]);
    assert_ne!(a.unique_guid, t.disk_guid());
    let listed = t.list();
    assert_eq!(listed, vec![a.clone(), b.clone(), c.clone()]);

    let dev = t.into_device();
    let raw = independent_check(dev.bytes(), 512);
    assert_eq!(raw.len(), 3);
    assert_eq!(raw[1].name, "beta");
    assert_eq!(raw[1].start, b.first_lba);
    assert_eq!(raw[1].unique, b.unique_guid.to_bytes());
    assert_eq!(raw[1].ptype, CHILD_DISK_TYPE.to_bytes());

    let t = DiskTable::open(dev).unwrap();
    assert_eq!(t.recovery(), Recovery::Intact);
    assert_eq!(t.list(), listed);
    assert_eq!(t.get("beta"), Some(b.clone()));
    assert_eq!(t.range("beta"), Some((b.first_lba, b.blocks())));
    assert_eq!(t.range("delta"), None);
}

#[test]
fn backup_header_reads_back_through_gpt_disk_io() {
    use gpt_disk_io::gpt_disk_types::{BlockSize, GptPartitionType};
    use gpt_disk_io::{BlockIoAdapter, Disk};

    let mut t = DiskTable::format(blank(16), 9).unwrap();
    let a = t.create("one", 2 * MIB).unwrap();
    t.create("two", 2 * MIB).unwrap();
    t.delete("two").unwrap();
    let mut img = t.into_device().into_bytes();
    let n = (img.len() / 512) as u64;

    let mut disk = Disk::new(BlockIoAdapter::new(img.as_mut_slice(), BlockSize::BS_512)).unwrap();
    let mut buf = vec![0u8; 512];
    let primary = disk.read_primary_gpt_header(&mut buf).unwrap();
    let backup = disk.read_secondary_gpt_header(&mut buf).unwrap();
    for h in [&primary, &backup] {
        assert!(h.is_signature_valid());
        assert_eq!(h.calculate_header_crc32(), h.header_crc32);
    }
    assert_eq!(backup.my_lba.to_u64(), n - 1);
    assert_eq!(backup.alternate_lba.to_u64(), 1);
    assert_eq!(primary.alternate_lba.to_u64(), n - 1);
    assert_eq!(backup.partition_entry_lba.to_u64(), n - 33);
    assert_eq!({ backup.disk_guid }, { primary.disk_guid });
    assert_eq!(
        backup.partition_entry_array_crc32,
        primary.partition_entry_array_crc32
    );
    for h in [primary, backup] {
        let layout = h.get_partition_entry_array_layout().unwrap();
        let mut storage = vec![
            0u8;
            layout
                .num_bytes_rounded_to_block_as_usize(BlockSize::BS_512)
                .unwrap()
        ];
        let arr = disk.read_gpt_partition_entry_array(layout, &mut storage).unwrap();
        assert_eq!(arr.calculate_crc32(), h.partition_entry_array_crc32);
        let e = arr.get_partition_entry(0).unwrap();
        assert_eq!({ e.partition_type_guid }, GptPartitionType(CHILD_DISK_TYPE));
        assert_eq!(e.name.to_string(), "one");
        assert_eq!(e.starting_lba.to_u64(), a.first_lba);
        assert!(!arr.get_partition_entry(1).unwrap().is_used());
    }
}

#[test]
fn delete_frees_space_for_reuse() {
    let mut t = DiskTable::format(blank(64), 4).unwrap();
    let a = t.create("a", 10 * MIB).unwrap();
    let b = t.create("b", 10 * MIB).unwrap();
    t.delete("a").unwrap();
    assert_eq!(names(&t.list()), ["b"]);
    assert_eq!(t.delete("a").err(), Some(DisksError::NotFound));
    let c = t.create("c", 5 * MIB).unwrap();
    assert_eq!(c.first_lba, a.first_lba);
    assert_eq!(c.index, a.index, "the freed entry is reused");
    // 6 MiB does not fit in the 5 MiB left before b: it goes after b.
    let d = t.create("d", 6 * MIB).unwrap();
    assert_eq!(d.first_lba, b.last_lba + 1);
    let e = t.create("e", 4 * MIB).unwrap();
    assert_eq!(e.first_lba, c.first_lba + 5 * 2048);
    // The name of a deleted disk is free again.
    t.delete("b").unwrap();
    let b2 = t.create("b", MIB).unwrap();
    assert_eq!(b2.first_lba, e.last_lba + 1);
    assert!(b2.last_lba < b.last_lba);
    let dev = t.into_device();
    independent_check(dev.bytes(), 512);
    assert_eq!(names(&DiskTable::open(dev).unwrap().list()), ["c", "e", "b", "d"]);
}

#[test]
fn name_rules() {
    for ok in ["a", "A", "disk0", "a-b_c", "abcdefghijklmno", "Z9"] {
        assert!(is_valid_name(ok), "{ok}");
    }
    for bad in [
        "",
        "0abc",
        "-a",
        "_a",
        "abcdefghijklmnop",
        "a b",
        "a.b",
        "é",
        "a/b",
        "aé",
    ] {
        assert!(!is_valid_name(bad), "{bad}");
    }
    let mut t = DiskTable::format(blank(8), 5).unwrap();
    for bad in ["", "1x", "abcdefghijklmnop", "has space", "ünï"] {
        assert_eq!(t.create(bad, MIB).err(), Some(DisksError::BadName), "{bad}");
    }
    t.create("abcdefghijklmno", MIB).unwrap();
    t.create("Disk", MIB).unwrap();
    assert_eq!(t.create("Disk", MIB).err(), Some(DisksError::Duplicate));
    // Names are case-sensitive.
    t.create("disk", MIB).unwrap();
    assert_eq!(t.create("x", 0).err(), Some(DisksError::BadSize));
    assert!(t.list().iter().all(|d| d.ours));
}

#[test]
fn exhaustion_no_space_and_table_full() {
    let mut t = DiskTable::format(blank(8), 6).unwrap();
    // 8 MiB device: aligned start at LBA 2048, up to the 33 backup blocks
    // at the end.
    let max = t.largest_free();
    assert_eq!(max, 7 * MIB - 33 * 512);
    assert_eq!(t.create("big", max + 1).err(), Some(DisksError::NoSpace));
    assert_eq!(t.create("huge", u64::MAX).err(), Some(DisksError::NoSpace));
    t.create("big", max).unwrap();
    assert_eq!(t.largest_free(), 0);
    assert_eq!(t.create("more", 512).err(), Some(DisksError::NoSpace));

    let mut t = DiskTable::format(blank(130), 6).unwrap();
    for i in 0..128 {
        t.create(&format!("d{i}"), 512).unwrap();
    }
    assert_eq!(t.largest_free(), 0);
    assert_eq!(t.create("d128", 512).err(), Some(DisksError::TableFull));
    t.delete("d77").unwrap();
    assert_eq!(t.create("d128", 512).unwrap().index, 77);
    let dev = t.into_device();
    assert_eq!(independent_check(dev.bytes(), 512).len(), 128);
}

#[test]
fn map_is_bounds_checked() {
    let mut t = DiskTable::format(blank(16), 8).unwrap();
    let a = t.create("a", MIB).unwrap();
    assert_eq!(t.map("a", 0, 1), Ok(a.first_lba));
    assert_eq!(t.map("a", 2047, 1), Ok(a.first_lba + 2047));
    assert_eq!(t.map("a", 0, 2048), Ok(a.first_lba));
    assert_eq!(t.map("a", 2048, 0), Ok(a.first_lba + 2048));
    assert_eq!(
        t.map("a", 2048, 1),
        Err(DisksError::OutOfRange {
            lba: 2048,
            count: 1,
            blocks: 2048
        })
    );
    assert_eq!(
        t.map("a", 1, u64::MAX),
        Err(DisksError::OutOfRange {
            lba: 1,
            count: u64::MAX,
            blocks: 2048
        })
    );
    assert_eq!(t.map("b", 0, 1), Err(DisksError::NotFound));
    // The mapped LBA really is the partition's data.
    let lba = t.map("a", 5, 1).unwrap();
    t.device_mut().write_blocks(lba, &[0xab; 512]).unwrap();
    let dev = t.into_device();
    assert_eq!(dev.bytes()[(a.first_lba as usize + 5) * 512], 0xab);
}

#[test]
fn corrupt_primary_is_repaired_from_backup() {
    let mut t = DiskTable::format(blank(16), 10).unwrap();
    t.create("keep", 2 * MIB).unwrap();
    t.create("also", MIB).unwrap();
    let expect = t.list();
    let good = t.into_device();

    // Header CRC.
    let mut dev = good.clone();
    dev.bytes_mut()[512 + 40] ^= 1;
    let t = DiskTable::open(dev).unwrap();
    assert_eq!(t.recovery(), Recovery::PrimaryRepaired(Corruption::HeaderCrc));
    assert_eq!(t.list(), expect);
    let dev = t.into_device();
    assert_eq!(dev.bytes(), good.bytes(), "repair restores the exact image");

    // Entry array CRC.
    let mut dev = good.clone();
    dev.bytes_mut()[2 * 512 + 60] ^= 0x40;
    let t = DiskTable::open(dev).unwrap();
    assert_eq!(t.recovery(), Recovery::PrimaryRepaired(Corruption::ArrayCrc));
    assert_eq!(t.into_device().bytes(), good.bytes());

    // Primary block wiped: no signature.
    let mut dev = good.clone();
    dev.bytes_mut()[512..1024].fill(0);
    let mut t = DiskTable::open(dev).unwrap();
    assert_eq!(t.recovery(), Recovery::PrimaryRepaired(Corruption::NoSignature));
    // The repaired table works as usual.
    t.create("new", MIB).unwrap();
    let dev = t.into_device();
    assert_eq!(independent_check(dev.bytes(), 512).len(), 3);
}

#[test]
fn corrupt_backup_is_repaired_from_primary() {
    let mut t = DiskTable::format(blank(16), 11).unwrap();
    t.create("keep", 2 * MIB).unwrap();
    let expect = t.list();
    let good = t.into_device();
    let n = good.block_count();

    let mut dev = good.clone();
    dev.bytes_mut()[(n as usize - 1) * 512 + 8] ^= 0xff;
    let t = DiskTable::open(dev).unwrap();
    assert_eq!(t.recovery(), Recovery::BackupRepaired(Corruption::HeaderCrc));
    assert_eq!(t.list(), expect);
    assert_eq!(t.into_device().bytes(), good.bytes());

    let mut dev = good.clone();
    dev.bytes_mut()[(n as usize - 33) * 512] ^= 1;
    let t = DiskTable::open(dev).unwrap();
    assert_eq!(t.recovery(), Recovery::BackupRepaired(Corruption::ArrayCrc));
    assert_eq!(t.into_device().bytes(), good.bytes());

    // A backup header that is valid but stale loses to the primary.
    let mut dev = good.clone();
    set_header_u64(dev.bytes_mut(), 512, n - 1, 48, n - 40);
    let t = DiskTable::open(dev).unwrap();
    assert_eq!(t.recovery(), Recovery::BackupRepaired(Corruption::Mismatch));
    assert_eq!(t.into_device().bytes(), good.bytes());
}

#[test]
fn corrupt_both_is_an_error() {
    let mut t = DiskTable::format(blank(16), 12).unwrap();
    t.create("x", MIB).unwrap();
    let good = t.into_device();
    let n = good.block_count() as usize;

    let mut dev = good.clone();
    dev.bytes_mut()[512 + 30] ^= 1;
    dev.bytes_mut()[(n - 1) * 512 + 30] ^= 1;
    assert_eq!(
        DiskTable::open(dev).err(),
        Some(DisksError::Corrupt {
            primary: Corruption::HeaderCrc,
            backup: Corruption::HeaderCrc
        })
    );

    let mut dev = good.clone();
    dev.bytes_mut()[2 * 512] ^= 1;
    dev.bytes_mut()[(n - 1) * 512..].fill(0);
    assert_eq!(
        DiskTable::open(dev).err(),
        Some(DisksError::Corrupt {
            primary: Corruption::ArrayCrc,
            backup: Corruption::NoSignature
        })
    );
}

#[test]
fn hostile_headers_are_rejected_not_trusted() {
    let good = formatted(16);
    let n = good.block_count();
    let both = |f: &dyn Fn(&mut [u8], u64)| {
        let mut dev = good.clone();
        f(dev.bytes_mut(), 1);
        f(dev.bytes_mut(), n - 1);
        match DiskTable::open(dev) {
            Err(DisksError::Corrupt { primary, backup }) => {
                assert_eq!(primary, backup);
                primary
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|t| t.list())),
        }
    };
    // Entry count far beyond the bound (would be a 512 GiB array).
    assert_eq!(
        both(&|img, lba| set_header_u32(img, 512, lba, 80, u32::MAX)),
        Corruption::EntryCount(u32::MAX)
    );
    assert_eq!(
        both(&|img, lba| set_header_u32(img, 512, lba, 80, 0)),
        Corruption::EntryCount(0)
    );
    // Entry sizes that are not 128 × 2^n, or too large.
    for es in [0, 64, 129, 384, 8192] {
        assert_eq!(
            both(&|img, lba| set_header_u32(img, 512, lba, 84, es)),
            Corruption::EntrySize(es)
        );
    }
    // Header size out of range.
    for hs in [0, 91, 513] {
        assert_eq!(
            both(&|img, lba| set_header_u32(img, 512, lba, 12, hs)),
            Corruption::HeaderSize(hs)
        );
    }
    // Usable range past the device or leaving no room for an array.
    assert_eq!(
        both(&|img, lba| set_header_u64(img, 512, lba, 48, n + 5)),
        Corruption::UsableRange
    );
    assert_eq!(
        both(&|img, lba| set_header_u64(img, 512, lba, 40, 3)),
        Corruption::UsableRange
    );
    assert_eq!(
        both(&|img, lba| set_header_u64(img, 512, lba, 40, n)),
        Corruption::UsableRange
    );
    // Array pointed into the usable range, at a header, or past the end.
    assert_eq!(
        both(&|img, lba| set_header_u64(img, 512, lba, 72, 100)),
        Corruption::ArrayLocation
    );
    assert_eq!(
        both(&|img, lba| set_header_u64(img, 512, lba, 72, 1)),
        Corruption::ArrayLocation
    );
    assert_eq!(
        both(&|img, lba| set_header_u64(img, 512, lba, 72, u64::MAX)),
        Corruption::ArrayLocation
    );
    // MyLBA lies.
    let mut dev = good.clone();
    set_header_u64(dev.bytes_mut(), 512, 1, 24, 7);
    set_header_u64(dev.bytes_mut(), 512, n - 1, 24, 7);
    assert_eq!(
        DiskTable::open(dev).err(),
        Some(DisksError::Corrupt {
            primary: Corruption::MyLba {
                expected: 1,
                found: 7
            },
            backup: Corruption::MyLba {
                expected: n - 1,
                found: 7
            },
        })
    );
    assert_eq!(
        both(&|img, lba| set_header_u32(img, 512, lba, 8, 0x0002_0000)),
        Corruption::Revision(0x0002_0000)
    );
}

#[test]
fn hostile_entries_are_rejected() {
    let good = formatted(16);
    let n = good.block_count();
    let open_with = |entries: &[(u32, [u8; 128])]| {
        let mut dev = good.clone();
        for (i, e) in entries {
            patch_entry(dev.bytes_mut(), 512, *i, e);
        }
        DiskTable::open(dev).err()
    };
    let ours = CHILD_DISK_TYPE.to_bytes();
    let corrupt = |c| {
        Some(DisksError::Corrupt {
            primary: c,
            backup: c,
        })
    };
    // Overlap between a foreign and one of ours.
    assert_eq!(
        open_with(&[
            (0, raw_entry(LINUX_FS, [1; 16], 2048, 4095, "linux")),
            (5, raw_entry(ours, [2; 16], 4000, 5000, "mine")),
        ]),
        corrupt(Corruption::Overlap { first: 0, second: 5 })
    );
    // Outside the usable range, or reversed.
    assert_eq!(
        open_with(&[(3, raw_entry(ours, [2; 16], 2048, n - 2, "x"))]),
        corrupt(Corruption::EntryRange { index: 3 })
    );
    assert_eq!(
        open_with(&[(3, raw_entry(ours, [2; 16], 10, 100, "x"))]),
        corrupt(Corruption::EntryRange { index: 3 })
    );
    assert_eq!(
        open_with(&[(3, raw_entry(ours, [2; 16], 5000, 4000, "x"))]),
        corrupt(Corruption::EntryRange { index: 3 })
    );
    // Two of ours with one name.
    assert_eq!(
        open_with(&[
            (1, raw_entry(ours, [1; 16], 2048, 2048, "twin")),
            (2, raw_entry(ours, [2; 16], 4096, 4096, "twin")),
        ]),
        corrupt(Corruption::DuplicateName { index: 2 })
    );
    // The same name on a foreign and one of ours is fine (ours is found).
    assert_eq!(
        open_with(&[
            (1, raw_entry(LINUX_FS, [1; 16], 2048, 2048, "twin")),
            (2, raw_entry(ours, [2; 16], 4096, 4096, "twin")),
        ]),
        None
    );
}

#[test]
fn foreign_partitions_are_listed_and_never_touched() {
    let mut dev = formatted(32);
    let efi = raw_entry(
        [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
        ],
        [0x11; 16],
        2048,
        4095,
        "EFI system partition",
    );
    let data = raw_entry(LINUX_FS, [0x22; 16], 8192, 10239, "data");
    patch_entry(dev.bytes_mut(), 512, 0, &efi);
    patch_entry(dev.bytes_mut(), 512, 9, &data);

    let mut t = DiskTable::open(dev).unwrap();
    assert_eq!(t.recovery(), Recovery::Intact);
    let l = t.list();
    assert_eq!(names(&l), ["EFI system partition", "data"]);
    assert!(l.iter().all(|d| !d.ours));
    assert_eq!(l[1].size_bytes, MIB);
    assert_eq!(l[1].index, 9);
    assert_eq!(t.delete("data").err(), Some(DisksError::NotOurs));
    assert_eq!(t.create("data", MIB).err(), Some(DisksError::Duplicate));
    assert_eq!(t.range("data"), None);
    assert_eq!(t.map("data", 0, 1).err(), Some(DisksError::NotFound));

    // First fit goes around the foreign partitions.
    let a = t.create("a", 2 * MIB).unwrap();
    assert_eq!(a.first_lba, 4096);
    assert_eq!(a.index, 1);
    let b = t.create("b", MIB).unwrap();
    assert_eq!(b.first_lba, 10240);
    t.delete("a").unwrap();
    let c = t.create("c", 3 * MIB).unwrap();
    assert_eq!(c.first_lba, 10240 + 2048);

    let dev = t.into_device();
    let raw = independent_check(dev.bytes(), 512);
    let by_index = |i: u32| raw.iter().find(|e| e.index == i).unwrap().clone();
    assert_eq!(by_index(0).name, "EFI system partition");
    assert_eq!((by_index(0).start, by_index(0).end), (2048, 4095));
    assert_eq!(by_index(0).unique, [0x11; 16]);
    assert_eq!((by_index(9).ptype, by_index(9).start), (LINUX_FS, 8192));
    // Byte for byte, in both arrays.
    let n = dev.block_count() as usize;
    for base in [2 * 512, (n - 33) * 512] {
        assert_eq!(&dev.bytes()[base..base + 128], &efi);
        assert_eq!(&dev.bytes()[base + 9 * 128..base + 10 * 128], &data);
    }
}

#[test]
fn a_crash_at_any_write_leaves_the_old_or_the_new_table() {
    let mut t = DiskTable::format(blank(16), 13).unwrap();
    t.create("old", MIB).unwrap();
    let before = t.into_device();
    let old = DiskTable::open(before.clone()).unwrap().list();

    let mut after = DiskTable::open(before.clone()).unwrap();
    after.create("new", MIB).unwrap();
    let new = after.list();

    // A create writes 4 times (backup array, backup header, primary array,
    // primary header); crash before each of them and after all.
    let mut seen_old = false;
    let mut seen_new = false;
    for budget in 0..=4 {
        let mut dev = before.clone();
        dev.fail_writes_after(Some(budget));
        let mut t = DiskTable::open(&mut dev).unwrap();
        let r = t.create("new", MIB);
        assert_eq!(r.is_ok(), budget == 4, "budget {budget}");
        if r.is_err() {
            // The in-memory table is unchanged after a failed write.
            assert_eq!(t.list(), old);
        }
        drop(t);
        dev.fail_writes_after(None);
        let t = DiskTable::open(dev).unwrap();
        let l = t.list();
        assert!(l == old || l == new, "budget {budget}: {l:?}");
        seen_old |= l == old;
        seen_new |= l == new;
        independent_check(t.into_device().bytes(), 512);
    }
    assert!(seen_old && seen_new);
}

#[test]
fn block_size_4096() {
    let dev = MemDevice::new(4096, 64 * MIB / 4096);
    let mut t = DiskTable::format(dev, 14).unwrap();
    let n = t.block_count();
    assert_eq!(t.usable_range(), (6, n - 6));
    let a = t.create("a", 5000).unwrap();
    assert_eq!((a.first_lba, a.last_lba, a.size_bytes), (256, 257, 8192));
    let b = t.create("b", MIB).unwrap();
    assert_eq!(b.first_lba, 512);
    assert_eq!(t.map("b", 255, 1), Ok(767));
    let dev = t.into_device();
    independent_check(dev.bytes(), 4096);
    let mut t = DiskTable::open(dev).unwrap();
    assert_eq!(names(&t.list()), ["a", "b"]);
    // Corrupt the primary: the 4 KiB-block backup repairs it.
    t.device_mut().bytes_mut()[4096 + 50] ^= 1;
    let dev = t.into_device();
    let t = DiskTable::open(dev).unwrap();
    assert_eq!(t.recovery(), Recovery::PrimaryRepaired(Corruption::HeaderCrc));
    assert_eq!(names(&t.list()), ["a", "b"]);
}

#[test]
fn tables_from_another_layout_are_accepted_and_kept() {
    // 256-byte entries and 64 of them, array at LBA 2 (both copies): a legal
    // GPT that this crate did not write. Built by hand.
    let bs = 512usize;
    let blocks = 8 * MIB / 512;
    let mut img = vec![0u8; (blocks as usize) * bs];
    let (n, es) = (64u32, 256u32);
    let ab = u64::from(n * es) / 512;
    let guid = [0x5a; 16];
    let write = |img: &mut Vec<u8>, lba: u64, alt: u64, pel: u64| {
        let o = lba as usize * bs;
        img[o..o + 8].copy_from_slice(b"EFI PART");
        img[o + 8..o + 12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        img[o + 12..o + 16].copy_from_slice(&96u32.to_le_bytes()); // larger header
        img[o + 24..o + 32].copy_from_slice(&lba.to_le_bytes());
        img[o + 32..o + 40].copy_from_slice(&alt.to_le_bytes());
        img[o + 40..o + 48].copy_from_slice(&(2 + ab).to_le_bytes());
        img[o + 48..o + 56].copy_from_slice(&(blocks - 2 - ab).to_le_bytes());
        img[o + 56..o + 72].copy_from_slice(&guid);
        img[o + 72..o + 80].copy_from_slice(&pel.to_le_bytes());
        img[o + 80..o + 84].copy_from_slice(&n.to_le_bytes());
        img[o + 84..o + 88].copy_from_slice(&es.to_le_bytes());
        let e = raw_entry(LINUX_FS, [3; 16], 2048, 4095, "root");
        let a = pel as usize * bs;
        img[a + 256..a + 384].copy_from_slice(&e);
        img[a + 384..a + 512].fill(0x77); // bytes past the 128-byte entry
        let crc = crc32(&img[a..a + (n * es) as usize]);
        img[o + 88..o + 92].copy_from_slice(&crc.to_le_bytes());
        fix_header_crc(img, bs, lba);
    };
    write(&mut img, 1, blocks - 1, 2);
    write(&mut img, blocks - 1, 1, blocks - 1 - ab);
    let mut t = DiskTable::open(MemDevice::from_vec(512, img)).unwrap();
    assert_eq!(t.recovery(), Recovery::Intact);
    assert_eq!(t.entry_count(), 64);
    assert_eq!(names(&t.list()), ["root"]);
    let a = t.create("a", MIB).unwrap();
    assert_eq!((a.index, a.first_lba), (0, 4096));
    let img = t.into_device().into_bytes();
    let raw = independent_check_sized(&img, bs);
    assert_eq!(raw.len(), 2);
    // The foreign entry's extra bytes survive.
    assert!(img[2 * 512 + 384..2 * 512 + 512].iter().all(|&b| b == 0x77));
}

/// `independent_check` for tables with a header size of 92 written by us,
/// any entry size.
fn independent_check_sized(img: &[u8], bs: usize) -> Vec<RawEntry> {
    let blocks = (img.len() / bs) as u64;
    let (p, pe) = independent_read_any(img, bs, 1);
    let (b, be) = independent_read_any(img, bs, blocks - 1);
    assert_eq!((p.guid, p.array_crc, p.n, p.es), (b.guid, b.array_crc, b.n, b.es));
    assert_eq!(pe, be);
    pe
}

fn independent_read_any(img: &[u8], bs: usize, lba: u64) -> (RawHeader, Vec<RawEntry>) {
    // Same as independent_read, minus the "unused entries are zero" and
    // exact-size assumptions.
    let b = block(img, bs, lba);
    assert_eq!(&b[0..8], b"EFI PART");
    let size = u32_at(b, 12) as usize;
    let mut h = b[..size].to_vec();
    h[16..20].fill(0);
    assert_eq!(crc32(&h), u32_at(b, 16));
    let hdr = RawHeader {
        my: u64_at(b, 24),
        alt: u64_at(b, 32),
        first: u64_at(b, 40),
        last: u64_at(b, 48),
        guid: b[56..72].try_into().unwrap(),
        pel: u64_at(b, 72),
        n: u32_at(b, 80),
        es: u32_at(b, 84),
        array_crc: u32_at(b, 88),
    };
    let start = hdr.pel as usize * bs;
    let arr = &img[start..start + (hdr.n * hdr.es) as usize];
    assert_eq!(crc32(arr), hdr.array_crc);
    let entries = (0..hdr.n)
        .filter_map(|i| {
            let e = &arr[(i * hdr.es) as usize..][..128];
            (e[0..16] != [0; 16]).then(|| RawEntry {
                index: i,
                ptype: e[0..16].try_into().unwrap(),
                unique: e[16..32].try_into().unwrap(),
                start: u64_at(e, 32),
                end: u64_at(e, 40),
                name: String::new(),
            })
        })
        .collect();
    (hdr, entries)
}

/// With `sgdisk`/`sfdisk` installed (`apt-get install gdisk fdisk`), they
/// read and verify an image this crate wrote. Not part of the normal run.
#[test]
#[ignore = "needs sgdisk and sfdisk on the host"]
fn external_tools_read_our_image() {
    use std::process::Command;
    let mut t = DiskTable::format(blank(64), 15).unwrap();
    t.create("alpha", 10 * MIB).unwrap();
    t.create("beta", 3 * MIB).unwrap();
    t.create("gamma", MIB).unwrap();
    t.delete("beta").unwrap();
    let path = std::env::temp_dir().join(format!("disks-test-{}.img", std::process::id()));
    std::fs::write(&path, t.into_device().bytes()).unwrap();

    let out = Command::new("sgdisk").arg("-v").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("No problems found"), "{text}");
    let out = Command::new("sgdisk").arg("-p").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("alpha") && text.contains("gamma") && !text.contains("beta"),
        "{text}"
    );
    let out = Command::new("sgdisk")
        .args(["-i", "1"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_uppercase();
    assert!(
        text.contains(&CHILD_DISK_TYPE.to_string().to_uppercase()),
        "{text}"
    );
    assert!(text.contains("FIRST SECTOR: 2048"), "{text}");
    let out = Command::new("sfdisk").arg("--dump").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("label: gpt"), "{text}");
    assert!(text.contains("start=        2048, size=       20480"), "{text}");
    assert!(text.contains("name=\"gamma\""), "{text}");
    std::fs::remove_file(&path).unwrap();
}

// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Create(u8, u64),
    Delete(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..12, 1u64..6 * MIB).prop_map(|(n, s)| Op::Create(n, s)),
        2 => (0u8..12).prop_map(Op::Delete),
    ]
}

fn check_invariants(t: &DiskTable<MemDevice>) {
    let (first, last) = t.usable_range();
    let l = t.list();
    for w in l.windows(2) {
        assert!(w[0].last_lba < w[1].first_lba, "overlap: {w:?}");
    }
    for d in &l {
        assert!(first <= d.first_lba && d.last_lba <= last, "{d:?}");
        assert_eq!(d.first_lba % 2048, 0, "alignment {d:?}");
        assert!(d.ours);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random create/delete sequences keep partitions disjoint, aligned and
    /// inside the usable range, agree with a model, and round-trip through
    /// the device.
    #[test]
    fn random_create_delete_sequences(ops in proptest::collection::vec(op(), 1..40), seed: u64) {
        let mut t = DiskTable::format(blank(32), seed).unwrap();
        let mut model: std::collections::BTreeMap<String, u64> = Default::default();
        for op in ops {
            match op {
                Op::Create(n, size) => {
                    let name = format!("d{n}");
                    let fits = t.largest_free() >= size.div_ceil(512) * 512;
                    match t.create(&name, size) {
                        Ok(d) => {
                            prop_assert!(!model.contains_key(&name));
                            prop_assert_eq!(d.size_bytes, size.div_ceil(512) * 512);
                            model.insert(name, d.size_bytes);
                        }
                        Err(DisksError::Duplicate) => prop_assert!(model.contains_key(&name)),
                        Err(DisksError::NoSpace) => prop_assert!(!fits),
                        Err(e) => prop_assert!(false, "unexpected {e:?}"),
                    }
                }
                Op::Delete(n) => {
                    let name = format!("d{n}");
                    let r = t.delete(&name);
                    prop_assert_eq!(r.is_ok(), model.remove(&name).is_some());
                }
            }
            check_invariants(&t);
        }
        let listed = t.list();
        let mut got: Vec<(String, u64)> =
            listed.iter().map(|d| (d.name.clone(), d.size_bytes)).collect();
        got.sort();
        prop_assert_eq!(got, model.into_iter().collect::<Vec<_>>());
        let dev = t.into_device();
        prop_assert_eq!(independent_check(dev.bytes(), 512).len(), listed.len());
        let t = DiskTable::open(dev).unwrap();
        prop_assert_eq!(t.recovery(), Recovery::Intact);
        prop_assert_eq!(t.list(), listed);
    }

    /// Garbage in the table areas never panics: open either fails or yields
    /// a table whose partitions are disjoint and in range.
    #[test]
    fn damaged_tables_never_panic(
        flips in proptest::collection::vec((any::<bool>(), 0usize..34 * 512, any::<u8>()), 1..24),
    ) {
        let mut t = DiskTable::format(blank(8), 99).unwrap();
        t.create("a", MIB).unwrap();
        t.create("b", 2 * MIB).unwrap();
        let mut dev = t.into_device();
        let len = dev.bytes().len();
        for (end, off, x) in flips {
            let at = if end { len - 34 * 512 + off } else { 512 + off };
            dev.bytes_mut()[at] ^= x;
        }
        if let Ok(t) = DiskTable::open(dev) {
            let (first, last) = t.usable_range();
            let l = t.list();
            for w in l.windows(2) {
                prop_assert!(w[0].last_lba < w[1].first_lba);
            }
            for d in &l {
                prop_assert!(first <= d.first_lba && d.last_lba <= last);
            }
        }
    }
}
