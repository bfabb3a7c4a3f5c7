//! [`DiskTable`]: a verified GPT on one block device, and the named child
//! disks in it.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use gpt_disk_io::gpt_disk_types::{
    BlockSize, Crc32, GptHeader, GptPartitionEntry, GptPartitionEntryArray, GptPartitionEntryArrayLayout,
    GptPartitionEntrySize, GptPartitionName, GptPartitionType, Guid, Lba, LbaLe, MasterBootRecord, U32Le,
    crc, guid,
};
use gpt_disk_io::{Disk, DiskError};

use crate::device::{BlockDevice, DeviceError, Io};
use crate::error::{Corruption, DisksError};

/// Partition type GUID of a child disk. Partitions of any other type are
/// listed as foreign and never modified.
pub const CHILD_DISK_TYPE: Guid = guid!("99767761-90e6-4a5d-ae56-3ec4c1ec1803");

/// Longest disk name, in characters.
pub const MAX_NAME_LEN: usize = 15;

/// Child disks start on multiples of this many bytes.
pub const ALIGNMENT_BYTES: u64 = 1 << 20;

/// Largest `NumberOfPartitionEntries` accepted from a device.
pub const MAX_ENTRIES: u32 = 4096;

/// Largest `SizeOfPartitionEntry` accepted from a device.
pub const MAX_ENTRY_SIZE: u32 = 4096;

/// Largest partition entry array accepted from a device, in bytes (this
/// bounds what [`DiskTable::open`] allocates).
pub const MAX_ARRAY_BYTES: u64 = 1 << 20;

/// Number of partition entries [`DiskTable::format`] creates (the
/// standard 16 KiB array).
pub const FORMAT_ENTRIES: u32 = 128;

/// Smallest and largest supported block sizes (powers of two).
const MIN_BLOCK: u32 = 512;
const MAX_BLOCK: u32 = 64 * 1024;
/// Size of the header structure this crate writes.
const HEADER_SIZE: u32 = 92;
/// Size of the entries this crate writes.
const ENTRY_SIZE: u32 = 128;
/// Offset of `HeaderCRC32` inside the header.
const HEADER_CRC_OFFSET: usize = 16;

/// Whether `name` is a valid disk name: 1-15 characters, an ASCII letter
/// first, then ASCII letters, digits, '-' or '_' (the shell's partition
/// name rules). Names are case-sensitive.
#[must_use]
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// One partition in the table: a child disk of ours, or a foreign one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// The partition name (UTF-16 on disk; undecodable characters become
    /// U+FFFD). For our disks, the disk name.
    pub name: String,
    /// Index of the entry in the partition entry array.
    pub index: u32,
    /// First device LBA of the partition.
    pub first_lba: u64,
    /// Last device LBA of the partition (inclusive).
    pub last_lba: u64,
    /// Size in bytes (blocks × block size).
    pub size_bytes: u64,
    /// The partition's unique GUID (Linux's PARTUUID).
    pub unique_guid: Guid,
    /// The partition type GUID.
    pub type_guid: Guid,
    /// Whether this is one of our child disks ([`CHILD_DISK_TYPE`]).
    pub ours: bool,
}

impl DiskInfo {
    /// Size in blocks.
    #[must_use]
    pub fn blocks(&self) -> u64 {
        self.last_lba.saturating_sub(self.first_lba).saturating_add(1)
    }
}

/// What [`DiskTable::open`] had to do to get a consistent table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Both copies were valid and agreed; nothing was written.
    Intact,
    /// The backup copy was damaged, stale or missing and was rewritten
    /// from the primary.
    BackupRepaired(Corruption),
    /// The primary copy was damaged and was rewritten from the backup.
    PrimaryRepaired(Corruption),
    /// The table was just written by [`DiskTable::format`].
    Formatted,
}

/// The device's validated geometry.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    bs: BlockSize,
    block_size: u32,
    blocks: u64,
}

impl Geometry {
    fn of<D: BlockDevice + ?Sized>(dev: &D) -> Result<Self, DisksError> {
        let block_size = dev.block_size();
        if !block_size.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) {
            return Err(DisksError::BlockSize(block_size));
        }
        let bs = BlockSize::new(block_size).ok_or(DisksError::BlockSize(block_size))?;
        let blocks = dev.block_count();
        // MBR, two headers, two arrays of at least one block, one usable block.
        if blocks < 6 {
            return Err(DisksError::DeviceTooSmall { blocks });
        }
        Ok(Self {
            bs,
            block_size,
            blocks,
        })
    }

    fn last(&self) -> u64 {
        self.blocks - 1
    }

    fn bytes_per_block(&self) -> usize {
        // Bounded by MAX_BLOCK.
        self.block_size as usize
    }

    /// Blocks needed for `bytes`, rounded up.
    fn blocks_for(&self, bytes: u64) -> u64 {
        bytes.div_ceil(u64::from(self.block_size))
    }
}

/// One validated copy of the GPT (header, raw array, decoded entries).
struct TableCopy {
    header: GptHeader,
    array: Vec<u8>,
    entries: Vec<GptPartitionEntry>,
}

fn disk_err(e: DiskError<DeviceError>) -> DisksError {
    match e {
        DiskError::Io(e) => DisksError::Device(e),
        // Buffers and layouts are validated before any gpt_disk_io call, so
        // these cannot happen; report them as a bad request, not a panic.
        _ => DisksError::Device(DeviceError::BadBuffer),
    }
}

fn crc32_header(raw: &[u8]) -> u32 {
    let crc = crc::Crc::<u32>::new(&Crc32::ALGORITHM);
    let mut digest = crc.digest();
    digest.update(&raw[..HEADER_CRC_OFFSET]);
    digest.update(&[0; 4]);
    digest.update(&raw[HEADER_CRC_OFFSET + 4..]);
    digest.finalize()
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Checks a header's fields that size and locate things; returns the
/// entry array layout and its size in blocks.
fn check_header(
    h: &GptHeader,
    raw_block: &[u8],
    geo: Geometry,
    lba: u64,
) -> Result<(GptPartitionEntryArrayLayout, u64), Corruption> {
    if !h.is_signature_valid() {
        return Err(Corruption::NoSignature);
    }
    let size = h.header_size.to_u32();
    if size < HEADER_SIZE || size > geo.block_size {
        return Err(Corruption::HeaderSize(size));
    }
    if crc32_header(&raw_block[..size as usize]) != h.header_crc32.0.to_u32() {
        return Err(Corruption::HeaderCrc);
    }
    if h.revision.major() != 1 {
        return Err(Corruption::Revision(h.revision.0.to_u32()));
    }
    let my_lba = h.my_lba.to_u64();
    if my_lba != lba {
        return Err(Corruption::MyLba {
            expected: lba,
            found: my_lba,
        });
    }
    let es = h.size_of_partition_entry.to_u32();
    // 128 × 2^n: within the bounds, and es / 128 a power of two with no
    // remainder.
    if !(ENTRY_SIZE..=MAX_ENTRY_SIZE).contains(&es)
        || !es.is_multiple_of(ENTRY_SIZE)
        || !(es / ENTRY_SIZE).is_power_of_two()
    {
        return Err(Corruption::EntrySize(es));
    }
    let n = h.number_of_partition_entries.to_u32();
    let array_bytes = u64::from(n) * u64::from(es);
    if n == 0 || n > MAX_ENTRIES || array_bytes > MAX_ARRAY_BYTES {
        return Err(Corruption::EntryCount(n));
    }
    let ab = geo.blocks_for(array_bytes);
    let first = h.first_usable_lba.to_u64();
    let last = h.last_usable_lba.to_u64();
    // The usable range must leave room for both arrays at their standard
    // places (LBA 2 and just below the backup header), so either copy can
    // be rebuilt from the other.
    let room = first <= last && 2 + ab <= first && last.checked_add(ab).is_some_and(|end| end < geo.last());
    if !room {
        return Err(Corruption::UsableRange);
    }
    let pel = h.partition_entry_lba.to_u64();
    let array_ok = pel >= 2
        && pel
            .checked_add(ab - 1)
            .is_some_and(|end| end < geo.last() && (end < first || pel > last));
    if !array_ok {
        return Err(Corruption::ArrayLocation);
    }
    let layout = h
        .get_partition_entry_array_layout()
        .map_err(|_| Corruption::EntrySize(es))?;
    Ok((layout, ab))
}

/// Checks the used entries: in the usable range, not overlapping, and
/// our disk names unique.
fn check_entries(first: u64, last: u64, entries: &[GptPartitionEntry]) -> Result<(), Corruption> {
    let mut used: Vec<(u64, u64, u32)> = Vec::new();
    let mut names: Vec<(String, u32)> = Vec::new();
    for (i, e) in (0u32..).zip(entries) {
        if !e.is_used() {
            continue;
        }
        let (s, t) = (e.starting_lba.to_u64(), e.ending_lba.to_u64());
        if s > t || s < first || t > last {
            return Err(Corruption::EntryRange { index: i });
        }
        used.push((s, t, i));
        if is_ours(e) {
            names.push((e.name.to_string(), i));
        }
    }
    used.sort_unstable();
    if let Some(w) = used.windows(2).find(|w| w[1].0 <= w[0].1) {
        return Err(Corruption::Overlap {
            first: w[0].2,
            second: w[1].2,
        });
    }
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Corruption::DuplicateName {
            index: w[0].1.max(w[1].1),
        });
    }
    Ok(())
}

fn is_ours(e: &GptPartitionEntry) -> bool {
    let t = e.partition_type_guid;
    t == GptPartitionType(CHILD_DISK_TYPE)
}

/// Reads and validates the copy whose header is at `lba`. Device errors
/// are returned as the outer error; a damaged copy as the inner one.
fn read_copy<D: BlockDevice + ?Sized>(
    disk: &mut Disk<Io<'_, D>>,
    geo: Geometry,
    lba: u64,
) -> Result<Result<TableCopy, Corruption>, DisksError> {
    let mut block = vec![0u8; geo.bytes_per_block()];
    let header = disk.read_gpt_header(Lba(lba), &mut block).map_err(disk_err)?;
    let (layout, ab) = match check_header(&header, &block, geo, lba) {
        Ok(v) => v,
        Err(c) => return Ok(Err(c)),
    };
    // ab <= MAX_ARRAY_BYTES / 512 + 1, so this allocation is bounded.
    let mut array = vec![0u8; ab as usize * geo.bytes_per_block()];
    let arr = disk
        .read_gpt_partition_entry_array(layout, &mut array)
        .map_err(disk_err)?;
    if arr.calculate_crc32() != header.partition_entry_array_crc32 {
        return Ok(Err(Corruption::ArrayCrc));
    }
    let mut entries = Vec::with_capacity(layout.num_entries as usize);
    for i in 0..layout.num_entries {
        match arr.get_partition_entry(i) {
            Some(e) => entries.push(*e),
            None => return Ok(Err(Corruption::EntryCount(layout.num_entries))),
        }
    }
    if let Err(c) = check_entries(
        header.first_usable_lba.to_u64(),
        header.last_usable_lba.to_u64(),
        &entries,
    ) {
        return Ok(Err(c));
    }
    Ok(Ok(TableCopy {
        header,
        array,
        entries,
    }))
}

/// Whether a valid primary and a valid backup describe the same table.
fn same_table(p: &GptHeader, b: &GptHeader, geo: Geometry) -> bool {
    p.alternate_lba.to_u64() == geo.last()
        && b.alternate_lba.to_u64() == 1
        && { p.disk_guid } == { b.disk_guid }
        && p.first_usable_lba == b.first_usable_lba
        && p.last_usable_lba == b.last_usable_lba
        && p.number_of_partition_entries == b.number_of_partition_entries
        && p.size_of_partition_entry == b.size_of_partition_entry
        && p.partition_entry_array_crc32 == b.partition_entry_array_crc32
}

/// A verified GUID Partition Table on one block device, and the named
/// child disks in it.
///
/// The table owns `D`; pass `&mut dev` to keep ownership of the device
/// (`&mut D` is a [`BlockDevice`] too). Every change writes the backup
/// copy (array, header, flush) and then the primary copy (array, header,
/// flush), so a crash at any point leaves at least one valid copy, which
/// [`open`](Self::open) then uses to repair the other. After a
/// [`DisksError::Device`] from a change, reopen the table: the device may
/// hold either the old or the new table.
pub struct DiskTable<D: BlockDevice> {
    dev: D,
    geo: Geometry,
    /// The primary header (its CRCs are recomputed on every write).
    header: GptHeader,
    backup_array_lba: u64,
    /// The raw entry array, a whole number of blocks.
    array: Vec<u8>,
    entries: Vec<GptPartitionEntry>,
    recovery: Recovery,
    rng: u64,
}

impl<D: BlockDevice> DiskTable<D> {
    /// Reads and verifies the GPT on `dev`: header signature, size, CRC,
    /// `MyLBA`, entry size and count (bounded by [`MAX_ENTRIES`],
    /// [`MAX_ENTRY_SIZE`], [`MAX_ARRAY_BYTES`]), usable range and array
    /// placement, entry-array CRC, and that used entries lie in the usable
    /// range without overlapping. A damaged, stale or missing copy is
    /// rewritten from the other (see [`recovery`](Self::recovery)); if that
    /// write fails, `open` fails with [`DisksError::Device`].
    ///
    /// # Errors
    ///
    /// [`DisksError::NoGpt`] if neither header has a GPT signature,
    /// [`DisksError::Corrupt`] if both copies are damaged,
    /// [`DisksError::BlockSize`] / [`DisksError::DeviceTooSmall`] for an
    /// unusable device, [`DisksError::Device`] if I/O fails.
    pub fn open(mut dev: D) -> Result<Self, DisksError> {
        let geo = Geometry::of(&dev)?;
        let (primary, backup) = {
            let mut disk = Disk::new(Io {
                dev: &mut dev,
                block_size: geo.bs,
            })
            .map_err(disk_err)?;
            let p = read_copy(&mut disk, geo, 1)?;
            let b = read_copy(&mut disk, geo, geo.last())?;
            (p, b)
        };
        let (copy, backup_array_lba, recovery) = match (primary, backup) {
            (Ok(p), Ok(b)) => {
                if same_table(&p.header, &b.header, geo) {
                    let bal = b.header.partition_entry_lba.to_u64();
                    (p, bal, Recovery::Intact)
                } else {
                    let bal = standard_backup_array(&p.header, geo);
                    (p, bal, Recovery::BackupRepaired(Corruption::Mismatch))
                }
            }
            (Ok(p), Err(c)) => {
                let bal = standard_backup_array(&p.header, geo);
                (p, bal, Recovery::BackupRepaired(c))
            }
            (Err(c), Ok(mut b)) => {
                let bal = b.header.partition_entry_lba.to_u64();
                b.header.partition_entry_lba = LbaLe::from_u64(2);
                (b, bal, Recovery::PrimaryRepaired(c))
            }
            (Err(Corruption::NoSignature), Err(Corruption::NoSignature)) => {
                return Err(DisksError::NoGpt);
            }
            (Err(primary), Err(backup)) => return Err(DisksError::Corrupt { primary, backup }),
        };
        let mut rng = geo.blocks ^ u64::from(copy.header.partition_entry_array_crc32.0.to_u32());
        for chunk in copy.header.disk_guid.to_bytes().chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            rng ^= splitmix(&mut u64::from_le_bytes(w));
        }
        let mut table = Self {
            dev,
            geo,
            header: copy.header,
            backup_array_lba,
            array: copy.array,
            entries: copy.entries,
            recovery,
            rng,
        };
        if recovery != Recovery::Intact {
            table.commit()?;
        }
        Ok(table)
    }

    /// Writes a fresh protective MBR and an empty GPT (primary at LBA 1
    /// with its 128-entry array at LBA 2, backup array and header at the
    /// end) to `dev`, destroying any partition table on it. Data blocks
    /// are not touched.
    ///
    /// `seed` feeds the disk GUID and the GUIDs of disks created through
    /// this table; the root passes something unpredictable (a TSC read),
    /// tests a constant.
    ///
    /// # Errors
    ///
    /// [`DisksError::BlockSize`] / [`DisksError::DeviceTooSmall`] for an
    /// unusable device, [`DisksError::Device`] if I/O fails.
    pub fn format(mut dev: D, seed: u64) -> Result<Self, DisksError> {
        let geo = Geometry::of(&dev)?;
        let array_bytes = u64::from(FORMAT_ENTRIES) * u64::from(ENTRY_SIZE);
        let ab = geo.blocks_for(array_bytes);
        // MBR, two headers, two arrays and at least one usable block.
        if geo.blocks < 4 + 2 * ab {
            return Err(DisksError::DeviceTooSmall { blocks: geo.blocks });
        }
        let first = 2 + ab;
        let last = geo.last() - 1 - ab;
        let mut rng = seed;
        let disk_guid = guid_from(&mut rng);
        let header = GptHeader {
            my_lba: LbaLe::from_u64(1),
            alternate_lba: LbaLe::from_u64(geo.last()),
            first_usable_lba: LbaLe::from_u64(first),
            last_usable_lba: LbaLe::from_u64(last),
            disk_guid,
            partition_entry_lba: LbaLe::from_u64(2),
            number_of_partition_entries: U32Le::from_u32(FORMAT_ENTRIES),
            size_of_partition_entry: U32Le::from_u32(ENTRY_SIZE),
            ..GptHeader::default()
        };
        {
            let mut mbr = MasterBootRecord::protective_mbr(geo.blocks);
            // UEFI 5.2.3: SizeInLBA is the disk size minus one, or
            // 0xFFFFFFFF if that is too large.
            mbr.partitions[0].size_in_lba = U32Le::from_u32(u32::try_from(geo.last()).unwrap_or(u32::MAX));
            let mut disk = Disk::new(Io {
                dev: &mut dev,
                block_size: geo.bs,
            })
            .map_err(disk_err)?;
            let mut block = vec![0u8; geo.bytes_per_block()];
            disk.write_mbr(&mbr, &mut block).map_err(disk_err)?;
        }
        let mut table = Self {
            dev,
            geo,
            header,
            backup_array_lba: geo.last() - ab,
            array: vec![0; ab as usize * geo.bytes_per_block()],
            entries: vec![GptPartitionEntry::default(); FORMAT_ENTRIES as usize],
            recovery: Recovery::Formatted,
            rng,
        };
        table.commit()?;
        Ok(table)
    }

    /// What [`open`](Self::open) had to repair, or [`Recovery::Formatted`].
    #[must_use]
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// The disk GUID from the GPT header.
    #[must_use]
    pub fn disk_guid(&self) -> Guid {
        self.header.disk_guid
    }

    /// The device's block size in bytes.
    #[must_use]
    pub fn block_size(&self) -> u32 {
        self.geo.block_size
    }

    /// The device's size in blocks.
    #[must_use]
    pub fn block_count(&self) -> u64 {
        self.geo.blocks
    }

    /// First and last (inclusive) LBA partitions may use.
    #[must_use]
    pub fn usable_range(&self) -> (u64, u64) {
        (
            self.header.first_usable_lba.to_u64(),
            self.header.last_usable_lba.to_u64(),
        )
    }

    /// Number of entries in the partition entry array (used or not).
    #[must_use]
    pub fn entry_count(&self) -> u32 {
        self.header.number_of_partition_entries.to_u32()
    }

    /// The device, for I/O to the disks (through [`map`](Self::map)).
    /// Writing outside the partitions corrupts the table.
    #[must_use]
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device, mutably (see [`device`](Self::device)).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Gives the device back.
    #[must_use]
    pub fn into_device(self) -> D {
        self.dev
    }

    /// Mixes `entropy` into the generator for new partition GUIDs.
    pub fn reseed(&mut self, entropy: u64) {
        let mut e = entropy;
        self.rng ^= splitmix(&mut e);
    }

    /// Every partition, ours and foreign, in LBA order.
    #[must_use]
    pub fn list(&self) -> Vec<DiskInfo> {
        let mut v: Vec<DiskInfo> = (0u32..)
            .zip(&self.entries)
            .filter(|(_, e)| e.is_used())
            .map(|(i, e)| self.info(i, e))
            .collect();
        v.sort_unstable_by_key(|d| d.first_lba);
        v
    }

    /// Our disk called `name`, if any.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<DiskInfo> {
        self.find(name, true)
            .map(|i| self.info(i, &self.entries[i as usize]))
    }

    /// First device LBA and size in blocks of our disk called `name`.
    #[must_use]
    pub fn range(&self, name: &str) -> Option<(u64, u64)> {
        self.get(name).map(|d| (d.first_lba, d.blocks()))
    }

    /// Maps blocks `lba..lba + count` of the child disk `name` onto the
    /// device: returns the device LBA of the child's `lba`.
    ///
    /// # Errors
    ///
    /// [`DisksError::NotFound`] if we have no disk `name`,
    /// [`DisksError::OutOfRange`] if the blocks are not all inside it.
    pub fn map(&self, name: &str, lba: u64, count: u64) -> Result<u64, DisksError> {
        let (first, blocks) = self.range(name).ok_or(DisksError::NotFound)?;
        match lba.checked_add(count) {
            Some(end) if end <= blocks => Ok(first + lba),
            _ => Err(DisksError::OutOfRange { lba, count, blocks }),
        }
    }

    /// Size in bytes of the largest disk [`create`](Self::create) could
    /// make now (0 if the table is full).
    #[must_use]
    pub fn largest_free(&self) -> u64 {
        if !self.entries.iter().any(|e| !e.is_used()) {
            return 0;
        }
        let (first, last) = self.usable_range();
        let mut best = 0;
        let mut cursor = first;
        for (s, e) in self.used_ranges().into_iter().chain([(last + 1, last + 1)]) {
            if let Some(start) = align_up(cursor, self.align_blocks())
                && start < s
            {
                best = best.max(s - start);
            }
            cursor = cursor.max(e + 1);
        }
        best.saturating_mul(u64::from(self.geo.block_size))
    }

    /// Creates child disk `name` of `size_bytes` (rounded up to whole
    /// blocks) in the first free extent that fits, starting on a 1 MiB
    /// boundary, and writes both copies of the table.
    ///
    /// # Errors
    ///
    /// [`DisksError::BadName`], [`DisksError::BadSize`] (zero),
    /// [`DisksError::Duplicate`] (any partition, ours or foreign, already
    /// has the name), [`DisksError::TableFull`], [`DisksError::NoSpace`],
    /// [`DisksError::Device`].
    pub fn create(&mut self, name: &str, size_bytes: u64) -> Result<DiskInfo, DisksError> {
        if !is_valid_name(name) {
            return Err(DisksError::BadName);
        }
        if size_bytes == 0 {
            return Err(DisksError::BadSize);
        }
        if self.find(name, false).is_some() {
            return Err(DisksError::Duplicate);
        }
        let slot = self
            .entries
            .iter()
            .position(|e| !e.is_used())
            .ok_or(DisksError::TableFull)?;
        let blocks = self.geo.blocks_for(size_bytes);
        let start = self.find_space(blocks).ok_or(DisksError::NoSpace)?;
        let entry = GptPartitionEntry {
            partition_type_guid: GptPartitionType(CHILD_DISK_TYPE),
            unique_partition_guid: self.fresh_guid(),
            starting_lba: LbaLe::from_u64(start),
            ending_lba: LbaLe::from_u64(start + blocks - 1),
            attributes: Default::default(),
            name: name
                .parse::<GptPartitionName>()
                .map_err(|_| DisksError::BadName)?,
        };
        self.change(slot, entry)?;
        Ok(self.info(slot as u32, &entry))
    }

    /// Deletes our child disk `name` (its data blocks are not touched) and
    /// writes both copies of the table.
    ///
    /// # Errors
    ///
    /// [`DisksError::NotOurs`] if only a foreign partition has the name,
    /// [`DisksError::NotFound`] if none does, [`DisksError::Device`].
    pub fn delete(&mut self, name: &str) -> Result<(), DisksError> {
        match self.find(name, true) {
            Some(i) => self.change(i as usize, GptPartitionEntry::default()),
            None if self.find(name, false).is_some() => Err(DisksError::NotOurs),
            None => Err(DisksError::NotFound),
        }
    }

    fn info(&self, index: u32, e: &GptPartitionEntry) -> DiskInfo {
        let (first_lba, last_lba) = (e.starting_lba.to_u64(), e.ending_lba.to_u64());
        let blocks = last_lba - first_lba + 1;
        let ptype = e.partition_type_guid;
        DiskInfo {
            name: e.name.to_string(),
            index,
            first_lba,
            last_lba,
            size_bytes: blocks.saturating_mul(u64::from(self.geo.block_size)),
            unique_guid: e.unique_partition_guid,
            type_guid: ptype.0,
            ours: is_ours(e),
        }
    }

    /// Index of the used entry named `name` (only ours if `ours_only`).
    fn find(&self, name: &str, ours_only: bool) -> Option<u32> {
        (0u32..)
            .zip(&self.entries)
            .find(|(_, e)| e.is_used() && (!ours_only || is_ours(e)) && e.name.chars().eq(name.chars()))
            .map(|(i, _)| i)
    }

    fn used_ranges(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .entries
            .iter()
            .filter(|e| e.is_used())
            .map(|e| (e.starting_lba.to_u64(), e.ending_lba.to_u64()))
            .collect();
        v.sort_unstable();
        v
    }

    fn align_blocks(&self) -> u64 {
        (ALIGNMENT_BYTES / u64::from(self.geo.block_size)).max(1)
    }

    /// First aligned start of a free extent of `blocks` blocks.
    fn find_space(&self, blocks: u64) -> Option<u64> {
        let (first, last) = self.usable_range();
        let mut cursor = first;
        // The sentinel makes the tail after the last partition one more gap.
        for (s, e) in self.used_ranges().into_iter().chain([(last + 1, last + 1)]) {
            let start = align_up(cursor, self.align_blocks())?;
            if start.checked_add(blocks).is_some_and(|end| end <= s) {
                return Some(start);
            }
            cursor = cursor.max(e + 1);
        }
        None
    }

    fn fresh_guid(&mut self) -> Guid {
        loop {
            let g = guid_from(&mut self.rng);
            let taken = g == { self.header.disk_guid }
                || self
                    .entries
                    .iter()
                    .any(|e| e.is_used() && { e.unique_partition_guid } == g);
            if !taken {
                return g;
            }
        }
    }

    fn layout(&self, start_lba: u64) -> GptPartitionEntryArrayLayout {
        GptPartitionEntryArrayLayout {
            start_lba: Lba(start_lba),
            // Validated when the table was read or formatted.
            entry_size: GptPartitionEntrySize::new(self.header.size_of_partition_entry.to_u32())
                .unwrap_or_default(),
            num_entries: self.header.number_of_partition_entries.to_u32(),
        }
    }

    /// Replaces entry `slot` and commits; restores the old entry if the
    /// write fails.
    fn change(&mut self, slot: usize, entry: GptPartitionEntry) -> Result<(), DisksError> {
        let es = self.header.size_of_partition_entry.to_u32() as usize;
        let bytes = slot * es..(slot + 1) * es;
        let old_entry = self.entries[slot];
        let old_bytes: Vec<u8> = self.array[bytes.clone()].to_vec();
        self.put(slot, entry)?;
        let r = self.commit();
        if r.is_err() {
            self.entries[slot] = old_entry;
            self.array[bytes].copy_from_slice(&old_bytes);
        }
        r
    }

    /// Writes `entry` into slot `slot` of the raw array (the whole slot is
    /// zeroed first) and the decoded copy.
    fn put(&mut self, slot: usize, entry: GptPartitionEntry) -> Result<(), DisksError> {
        let es = self.header.size_of_partition_entry.to_u32() as usize;
        self.array[slot * es..(slot + 1) * es].fill(0);
        let layout = self.layout(2);
        let mut arr = GptPartitionEntryArray::new(layout, self.geo.bs, &mut self.array)
            .map_err(|_| DisksError::Device(DeviceError::BadBuffer))?;
        let dst = arr
            .get_partition_entry_mut(slot as u32)
            .ok_or(DisksError::Device(DeviceError::BadBuffer))?;
        *dst = entry;
        self.entries[slot] = entry;
        Ok(())
    }

    /// Writes both copies: backup array and header, flush, then primary
    /// array and header, flush.
    fn commit(&mut self) -> Result<(), DisksError> {
        let last = self.geo.last();
        let primary_array_lba = self.header.partition_entry_lba.to_u64();
        let mut arr =
            GptPartitionEntryArray::new(self.layout(self.backup_array_lba), self.geo.bs, &mut self.array)
                .map_err(|_| DisksError::Device(DeviceError::BadBuffer))?;
        let mut primary = self.header;
        primary.header_size = U32Le::from_u32(HEADER_SIZE);
        primary.reserved = U32Le::from_u32(0);
        primary.my_lba = LbaLe::from_u64(1);
        primary.alternate_lba = LbaLe::from_u64(last);
        primary.partition_entry_array_crc32 = arr.calculate_crc32();
        primary.update_header_crc32();
        let mut backup = primary;
        backup.my_lba = LbaLe::from_u64(last);
        backup.alternate_lba = LbaLe::from_u64(1);
        backup.partition_entry_lba = LbaLe::from_u64(self.backup_array_lba);
        backup.update_header_crc32();

        let mut block = vec![0u8; self.geo.bytes_per_block()];
        let mut disk = Disk::new(Io {
            dev: &mut self.dev,
            block_size: self.geo.bs,
        })
        .map_err(disk_err)?;
        disk.write_gpt_partition_entry_array(&arr).map_err(disk_err)?;
        disk.write_gpt_header(Lba(last), &backup, &mut block)
            .map_err(disk_err)?;
        disk.flush().map_err(disk_err)?;
        arr.set_start_lba(Lba(primary_array_lba));
        disk.write_gpt_partition_entry_array(&arr).map_err(disk_err)?;
        disk.write_gpt_header(Lba(1), &primary, &mut block)
            .map_err(disk_err)?;
        disk.flush().map_err(disk_err)?;
        self.header = primary;
        Ok(())
    }
}

/// Where the backup array goes when the backup copy is rebuilt: just below
/// the backup header.
fn standard_backup_array(h: &GptHeader, geo: Geometry) -> u64 {
    let bytes =
        u64::from(h.number_of_partition_entries.to_u32()) * u64::from(h.size_of_partition_entry.to_u32());
    geo.last() - geo.blocks_for(bytes)
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_next_multiple_of(align)
}

fn guid_from(rng: &mut u64) -> Guid {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&splitmix(rng).to_le_bytes());
    b[8..].copy_from_slice(&splitmix(rng).to_le_bytes());
    Guid::from_random_bytes(b)
}
