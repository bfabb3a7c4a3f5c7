//! Entry point shared by the cargo-fuzz target (`root-partition/disks/fuzz/`)
//! and the corpus-replay test: an arbitrary disk image (a user's `--disk`
//! file the root does not trust) must never make the table code panic, and
//! whatever it writes must read back as the same valid table.
//!
//! Input: a flags byte, [`ARGS`] argument bytes, then the image. Flags: bit 0
//! selects 4096-byte blocks (else 512); bit 1 makes the device sparse, of
//! `2 + ((flags >> 2) & 3)` MiB, with the first half of the image at its
//! start and the second half at its end (so tables on devices large enough
//! for a 1 MiB-aligned disk fit in a small input); bits 4 and 5 recompute
//! the primary's and the backup's CRCs (entry array, then header) before
//! the open, so mutated fields get past the CRC checks; bit 6 reseeds the
//! GUID generator; bit 7 deletes before it creates. Without bit 1 the image
//! is the device, zero-padded to whole blocks and cut at [`MAX_IMAGE`].

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use gpt_disk_io::gpt_disk_types::{Crc32, crc};

use crate::{
    ALIGNMENT_BYTES, DiskInfo, DiskTable, DisksError, MAX_ARRAY_BYTES, MAX_ENTRIES, MemDevice, Recovery,
    is_valid_name,
};

/// Argument bytes between the flags and the image.
pub const ARGS: usize = 16;
/// Largest image used, in bytes (the rest of the input is ignored).
pub const MAX_IMAGE: usize = 256 * 1024;
const MIB: usize = 1 << 20;

/// Names that are not in the table: valid, and invalid ones.
const NAMES: [&str; 8] = [
    "new",
    "Disk-9_z",
    "a",
    "x23456789012345",
    "x234567890123456",
    "9abc",
    "",
    "d\u{e9}",
];

/// A disk name chosen by `sel`: one in `list` (below 128, if any) or one
/// of [`NAMES`].
fn pick(sel: u8, list: &[DiskInfo]) -> String {
    if sel < 128 && !list.is_empty() {
        list[usize::from(sel) % list.len()].name.clone()
    } else {
        NAMES[usize::from(sel % 8)].to_string()
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Recomputes the entry-array CRC and then the header CRC of the header at
/// `lba`, as far as its fields stay inside the image.
fn fix_crcs(img: &mut [u8], bs: usize, lba: usize) {
    let crc = crc::Crc::<u32>::new(&Crc32::ALGORITHM);
    let Some(o) = lba.checked_mul(bs).filter(|o| o + bs <= img.len()) else {
        return;
    };
    let hs = le32(img, o + 12) as usize;
    if !(92..=bs).contains(&hs) {
        return;
    }
    let pel = le64(img, o + 72);
    let bytes = u64::from(le32(img, o + 80)) * u64::from(le32(img, o + 84));
    if bytes <= MAX_ARRAY_BYTES
        && let Some(start) = usize::try_from(pel).ok().and_then(|p| p.checked_mul(bs))
        && let Some(end) = start.checked_add(bytes as usize).filter(|&e| e <= img.len())
    {
        let c = crc.checksum(&img[start..end]);
        img[o + 88..o + 92].copy_from_slice(&c.to_le_bytes());
    }
    img[o + 16..o + 20].fill(0);
    let c = crc.checksum(&img[o..o + hs]);
    img[o + 16..o + 20].copy_from_slice(&c.to_le_bytes());
}

/// The device an input describes.
fn device(flags: u8, image: &[u8]) -> (usize, Vec<u8>) {
    let bs = if flags & 1 != 0 { 4096 } else { 512 };
    let image = &image[..image.len().min(MAX_IMAGE)];
    let blocks = image.len().div_ceil(bs);
    let mut img = if flags & 2 != 0 {
        let size = (2 + usize::from((flags >> 2) & 3)) * MIB;
        let mut dev = vec![0u8; size];
        let head = blocks.div_ceil(2) * bs;
        let (h, t) = image.split_at(head.min(image.len()));
        dev[..h.len()].copy_from_slice(h);
        let tail_start = size - (blocks * bs - head);
        dev[tail_start..tail_start + t.len()].copy_from_slice(t);
        dev
    } else {
        let mut dev = image.to_vec();
        dev.resize(blocks * bs, 0);
        dev
    };
    let last = img.len() / bs;
    if flags & 0x10 != 0 {
        fix_crcs(&mut img, bs, 1);
    }
    if flags & 0x20 != 0 && last > 0 {
        fix_crcs(&mut img, bs, last - 1);
    }
    (bs, img)
}

/// What every open table must satisfy: partitions in LBA order, inside the
/// usable range, not overlapping, our names unique and found by `get`,
/// `map` exact at both ends.
fn check_table(t: &DiskTable<MemDevice>) -> Vec<DiskInfo> {
    let (first, last) = t.usable_range();
    assert!(first <= last && last < t.block_count(), "usable {first}..={last}");
    assert!(t.entry_count() >= 1 && t.entry_count() <= MAX_ENTRIES);
    let bs = u64::from(t.block_size());
    let list = t.list();
    assert!(list.len() <= t.entry_count() as usize);
    for (i, d) in list.iter().enumerate() {
        assert!(
            first <= d.first_lba && d.first_lba <= d.last_lba && d.last_lba <= last,
            "{d:?}"
        );
        assert_eq!(d.size_bytes, d.blocks().saturating_mul(bs));
        if let Some(next) = list.get(i + 1) {
            assert!(d.last_lba < next.first_lba, "overlap {d:?} {next:?}");
        }
        if d.ours {
            assert_eq!(t.get(&d.name).as_ref(), Some(d));
            assert_eq!(t.map(&d.name, 0, d.blocks()), Ok(d.first_lba));
            assert!(matches!(
                t.map(&d.name, d.blocks(), 1),
                Err(DisksError::OutOfRange { .. })
            ));
        }
    }
    let ours: Vec<&str> = list.iter().filter(|d| d.ours).map(|d| d.name.as_str()).collect();
    for (i, n) in ours.iter().enumerate() {
        assert!(!ours[..i].contains(n), "duplicate disk name {n}");
    }
    list
}

/// `get` and `map` of a chosen name with input-derived block ranges.
fn check_map(t: &DiskTable<MemDevice>, name: &str, lba: u64, count: u64) {
    let info = t.get(name);
    match t.map(name, lba, count) {
        Ok(dev_lba) => {
            let d = info.expect("mapped a disk get does not find");
            assert!(lba.checked_add(count).is_some_and(|e| e <= d.blocks()));
            assert_eq!(dev_lba, d.first_lba + lba);
            assert!(dev_lba + count.saturating_sub(1) <= d.last_lba.max(dev_lba));
        }
        Err(DisksError::NotFound) => assert!(info.is_none()),
        Err(DisksError::OutOfRange {
            lba: l,
            count: c,
            blocks,
        }) => {
            let d = info.expect("out of range of a disk get does not find");
            assert_eq!((l, c, blocks), (lba, count, d.blocks()));
            assert!(lba.checked_add(count).is_none_or(|e| e > blocks));
        }
        Err(e) => panic!("map: {e:?}"),
    }
}

/// `create`, checked against what `largest_free` promised.
fn check_create(t: &mut DiskTable<MemDevice>, name: &str, size: u64) {
    let before = t.list();
    let free = t.largest_free();
    let bs = u64::from(t.block_size());
    let blocks = size.div_ceil(bs);
    let r = t.create(name, size);
    let expected = if !is_valid_name(name) {
        Err(DisksError::BadName)
    } else if size == 0 {
        Err(DisksError::BadSize)
    } else if before.iter().any(|d| d.name == name) {
        Err(DisksError::Duplicate)
    } else if before.len() >= t.entry_count() as usize {
        Err(DisksError::TableFull)
    } else if u128::from(blocks) * u128::from(bs) > u128::from(free) {
        Err(DisksError::NoSpace)
    } else {
        Ok(())
    };
    match (r, expected) {
        (Ok(d), Ok(())) => {
            assert!(d.ours && d.name == name, "{d:?}");
            assert_eq!(d.blocks(), blocks);
            let align = (ALIGNMENT_BYTES / bs).max(1);
            assert_eq!(d.first_lba % align, 0, "{d:?}");
            assert_eq!(t.get(name), Some(d.clone()));
            let after = t.list();
            assert_eq!(after.len(), before.len() + 1);
            assert!(after.contains(&d));
        }
        (Err(e), Err(x)) => {
            assert_eq!(e, x, "create({name:?}, {size}) with {free} bytes free");
            assert_eq!(t.list(), before, "a failed create changed the table");
        }
        (r, x) => panic!("create({name:?}, {size}) = {r:?}, expected {x:?} ({free} bytes free)"),
    }
}

/// `delete`: ours go, foreign ones are refused, unknown names not found.
fn check_delete(t: &mut DiskTable<MemDevice>, name: &str) {
    let before = t.list();
    let ours = before.iter().any(|d| d.ours && d.name == name);
    let any = before.iter().any(|d| d.name == name);
    match t.delete(name) {
        Ok(()) => {
            assert!(ours, "deleted {name:?}, not one of ours");
            assert!(t.get(name).is_none());
            assert_eq!(t.list().len(), before.len() - 1);
        }
        Err(DisksError::NotOurs) => assert!(!ours && any),
        Err(DisksError::NotFound) => assert!(!any),
        Err(e) => panic!("delete({name:?}): {e:?}"),
    }
    if !ours {
        assert_eq!(t.list(), before, "a failed delete changed the table");
    }
}

/// The fuzz target: see the module documentation for the input format.
pub fn gpt(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((args, image)) = rest.split_first_chunk::<ARGS>() else {
        return;
    };
    let (_, img) = device(flags, image);
    let bs = if flags & 1 != 0 { 4096 } else { 512 };
    let Ok(mut t) = DiskTable::open(MemDevice::from_vec(bs, img)) else {
        return;
    };
    assert_ne!(t.recovery(), Recovery::Formatted);
    let list = check_table(&t);

    let name = pick(args[0], &list);
    let mut lba = u64::from(le32(args, 1));
    if args[5] & 1 != 0 {
        lba = lba.wrapping_add(u64::MAX - u64::from(u32::MAX));
    }
    let count = u64::from(u16::from_le_bytes([args[6], args[7]]));
    check_map(&t, &name, lba, count);
    let _ = t.largest_free();

    if flags & 0x40 != 0 {
        t.reseed(u64::from(args[15]));
    }
    let create_name = pick(args[8], &list);
    let size = u64::from(le32(args, 9))
        .checked_shl(u32::from(args[13] & 0x3f))
        .unwrap_or(u64::MAX);
    let delete_name = pick(args[14], &list);
    if flags & 0x80 != 0 {
        check_delete(&mut t, &delete_name);
        check_create(&mut t, &create_name, size);
    } else {
        check_create(&mut t, &create_name, size);
        check_delete(&mut t, &delete_name);
    }
    let list = check_table(&t);
    check_map(&t, &create_name, lba, count);

    // What was written reads back as the same, intact table.
    let (guid, range, entries) = (t.disk_guid(), t.usable_range(), t.entry_count());
    let again = DiskTable::open(t.into_device()).expect("the written table does not open");
    assert_eq!(
        again.recovery(),
        Recovery::Intact,
        "the written table needs repair"
    );
    assert_eq!(again.disk_guid(), guid);
    assert_eq!(again.usable_range(), range);
    assert_eq!(again.entry_count(), entries);
    assert_eq!(check_table(&again), list);
}

/// An input: flags, arguments, image.
fn input(flags: u8, args: [u8; ARGS], image: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&args);
    v.extend_from_slice(image);
    v
}

/// The image of a sparse device (flags bit 1): its first and last
/// `blocks` blocks.
fn ends(dev: &[u8], bs: usize, blocks: usize) -> Vec<u8> {
    let mut v = dev[..blocks * bs].to_vec();
    v.extend_from_slice(&dev[dev.len() - blocks * bs..]);
    v
}

/// A formatted sparse device of `mib` MiB with disks of these sizes.
fn with_disks(bs: u32, mib: usize, disks: &[(&str, u64)]) -> Vec<u8> {
    let dev = MemDevice::new(bs, (mib * MIB) as u64 / u64::from(bs));
    let mut t = DiskTable::format(dev, 7).expect("format");
    for &(name, size) in disks {
        t.create(name, size).expect("create");
    }
    t.into_device().into_bytes()
}

/// Seed inputs for the `fuzz_gpt` target: small and sparse formatted
/// devices with and without disks, 512- and 4096-byte blocks, a damaged
/// primary, a damaged backup, a foreign partition.
pub fn gpt_seeds() -> Vec<Vec<u8>> {
    // get/map list[0] blocks 5..15; create "new" (256 KiB); delete list[1].
    let args: [u8; ARGS] = [0, 5, 0, 0, 0, 0, 10, 0, 0x80, 0, 0, 4, 0, 0, 1, 0];
    // map past the end; create a duplicate; delete an unknown name.
    let args2: [u8; ARGS] = [1, 0xff, 0xff, 0, 0, 1, 0xff, 0xff, 2, 0, 2, 0, 0, 2, 0x81, 9];
    let mut seeds = Vec::new();

    let small = DiskTable::format(MemDevice::new(512, 80), 1)
        .expect("format")
        .into_device()
        .into_bytes();
    seeds.push(input(0, args, &small));

    // 5 MiB, 512-byte blocks: the first and last 40 blocks hold the table.
    let five = with_disks(
        512,
        5,
        &[("alpha", 1 << 20), ("beta", 1 << 20), ("gamma", 512 << 10)],
    );
    let sparse = 2 | (3 << 2);
    seeds.push(input(sparse, args, &ends(&five, 512, 40)));
    seeds.push(input(sparse | 0x80 | 0x40, args2, &ends(&five, 512, 40)));
    seeds.push(input(sparse | 0x30, args, &ends(&five, 512, 40)));

    // Damaged primary header, damaged backup header.
    let mut bad = ends(&five, 512, 40);
    bad[512 + 40] ^= 0x55;
    seeds.push(input(sparse, args, &bad));
    let mut bad = ends(&five, 512, 40);
    let at = bad.len() - 512 + 24;
    bad[at] ^= 0x01;
    seeds.push(input(sparse, args2, &bad));
    // Damaged primary array.
    let mut bad = ends(&five, 512, 40);
    bad[2 * 512 + 60] ^= 0x20;
    seeds.push(input(sparse, args, &bad));

    // A foreign partition (type changed to Linux data, CRCs fixed).
    let mut foreign = with_disks(512, 3, &[("theirs", 1 << 20)]);
    let linux = [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
    ];
    let last = foreign.len() / 512 - 1;
    for lba in [1, last] {
        let pel = le64(&foreign, lba * 512 + 72) as usize;
        foreign[pel * 512..pel * 512 + 16].copy_from_slice(&linux);
        fix_crcs(&mut foreign, 512, lba);
    }
    let theirs: [u8; ARGS] = [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    seeds.push(input(2 | (1 << 2), theirs, &ends(&foreign, 512, 40)));

    // 4096-byte blocks: small, and a 2 MiB sparse device with a disk.
    let small4k = DiskTable::format(MemDevice::new(4096, 16), 2)
        .expect("format")
        .into_device()
        .into_bytes();
    seeds.push(input(1, args2, &small4k));
    let two = with_disks(4096, 2, &[("one", 512 << 10)]);
    seeds.push(input(1 | 2, args, &ends(&two, 4096, 8)));
    seeds
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn corpus_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus")
    }

    /// Every file of the fuzz corpus runs through the target as a normal test.
    #[test]
    fn corpus_replays() {
        let dir = corpus_root().join("fuzz_gpt");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            super::gpt(&bytes);
            count += 1;
        }
        assert!(count >= 10, "corpus fuzz_gpt too small: {count}");
    }

    /// The seeds replay and open as meant: intact, or repaired.
    #[test]
    fn seeds_replay() {
        use crate::{DiskTable, MemDevice, Recovery};
        let seeds = super::gpt_seeds();
        assert!(seeds.len() >= 10);
        let open = |s: &[u8]| {
            let (bs, img) = super::device(s[0], &s[1 + super::ARGS..]);
            DiskTable::open(MemDevice::from_vec(bs as u32, img)).map(|t| (t.recovery(), t.list().len()))
        };
        assert_eq!(open(&seeds[0]), Ok((Recovery::Intact, 0)));
        assert_eq!(open(&seeds[1]), Ok((Recovery::Intact, 3)));
        assert_eq!(open(&seeds[3]), Ok((Recovery::Intact, 3)));
        assert!(matches!(open(&seeds[4]), Ok((Recovery::PrimaryRepaired(_), 3))));
        assert!(matches!(open(&seeds[5]), Ok((Recovery::BackupRepaired(_), 3))));
        assert!(matches!(open(&seeds[6]), Ok((Recovery::PrimaryRepaired(_), 3))));
        assert_eq!(open(&seeds[7]), Ok((Recovery::Intact, 1)));
        assert_eq!(open(&seeds[8]), Ok((Recovery::Intact, 0)));
        assert_eq!(open(&seeds[9]), Ok((Recovery::Intact, 1)));
        for s in &seeds {
            super::gpt(s);
        }
    }

    /// Write the seeds into `fuzz/corpus/fuzz_gpt/seed-NN` (run with
    /// `cargo test -p disks -- --ignored write_seed_corpus`).
    #[test]
    #[ignore = "writes the seed corpus into fuzz/corpus/ (run by hand), not a check"]
    fn write_seed_corpus() {
        let dir = corpus_root().join("fuzz_gpt");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in super::gpt_seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
        }
    }
}
