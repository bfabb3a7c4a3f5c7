//! Children's disks on the root's passthrough block devices.
//!
//! Every virtio-blk function on bus 0 is opened once, at boot, and kept:
//! `vda`, `vdb`, … in slot order. A device with a valid GUID Partition Table
//! (`disks` crate) holds named child disks (its partitions of the child-disk
//! type); a device without one can be given to a child whole, by its device
//! name. A disk is attached to at most one child at a time; `disk delete`
//! refuses an attached disk, and a destroyed child's disk keeps its data
//! until deleted. A child's block addresses are bounds-checked against its
//! own partition before they become device addresses, so a child reads and
//! writes only its own disk.
//!
//! The devices sit behind `Rc<RefCell<…>>`: the partition table and every
//! attached disk's backend share one driver instance (the root is one
//! thread; a borrow never outlives a call). A child's reads and writes are
//! started and collected later by ticket (`BlockBackend::start_dma`); the
//! table's own requests, and any synchronous request of a disk, run after
//! what that disk started.

use crate::disk::{self, Disk, DiskError};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use disks::{BlockDevice, DeviceError, DiskTable};
use scsi_disk::{BackendError, BlockBackend, DmaTicket};

/// Bytes per sector on virtio-blk.
const SECTOR: u64 = 512;

/// One driver instance, shared by the table and the backends.
#[derive(Clone)]
pub struct SharedDisk(Rc<RefCell<Disk>>);

impl SharedDisk {
    fn with<T>(&self, f: impl FnOnce(&mut Disk) -> T) -> Result<T, DeviceError> {
        // The root is single-threaded and no caller re-enters: a borrow
        // failure would be a root bug, reported as an I/O error.
        let mut d = self.0.try_borrow_mut().map_err(|_| DeviceError::Io)?;
        Ok(f(&mut d))
    }
}

fn device_error(e: DiskError) -> DeviceError {
    match e {
        DiskError::OutOfRange => DeviceError::OutOfRange,
        DiskError::BadBuffer => DeviceError::BadBuffer,
        _ => DeviceError::Io,
    }
}

impl BlockDevice for SharedDisk {
    fn block_size(&self) -> u32 {
        SECTOR as u32
    }
    fn block_count(&self) -> u64 {
        self.0.try_borrow().map_or(0, |d| d.capacity)
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.with(|d| d.read(lba, buf))?.map_err(device_error)
    }
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError> {
        self.with(|d| d.write(lba, buf))?.map_err(device_error)
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        self.with(|d| d.flush())?.map_err(device_error)
    }
}

/// What a device holds.
enum Layout {
    /// A GUID Partition Table: child disks are its partitions.
    Gpt(DiskTable<SharedDisk>),
    /// No (valid) table: the device can be given to a child whole. Why
    /// there is no table, for `disks`.
    Whole(String),
}

/// One passthrough block device.
struct Device {
    /// `vda`, `vdb`, …
    name: String,
    /// Where it sits on PCI.
    location: String,
    io: SharedDisk,
    sectors: u64,
    read_only: bool,
    layout: Layout,
}

/// A disk attached to a child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The disk's name (a partition name, or a device name when whole).
    pub disk: String,
    /// The child partition holding it.
    pub partition: u64,
}

/// A device that could not be opened, for `disks`.
struct Unusable {
    location: String,
    why: String,
}

/// Every passthrough block device and which child holds which disk.
#[derive(Default)]
pub struct Storage {
    devices: Vec<Device>,
    unusable: Vec<Unusable>,
    attachments: Vec<Attachment>,
}

/// A disk as `disks` lists it.
#[derive(Clone, Debug)]
pub struct DiskEntry {
    /// Its name.
    pub name: String,
    /// The device it lives on.
    pub device: String,
    /// First sector on the device.
    pub first_sector: u64,
    /// Size in sectors.
    pub sectors: u64,
    /// `partition` (a GPT child disk) or `whole` (a whole device).
    pub kind: &'static str,
    /// The child holding it.
    pub attached_to: Option<u64>,
}

/// What `disk bench` measured (times on the TSC, its rate measured against
/// the root's timer; 0 in the root's first second, when it is not known).
#[derive(Clone, Copy, Debug)]
pub struct DiskBench {
    /// Bytes read sequentially.
    pub bytes: u64,
    /// How long they took, in microseconds.
    pub seq_us: u64,
    /// 4 KiB reads done at depth 1.
    pub random_reads: u64,
    /// How long they took, in microseconds.
    pub random_us: u64,
}

/// A device as `disks` lists it.
#[derive(Clone, Debug)]
pub struct DeviceEntry {
    /// `vda`, …
    pub name: String,
    /// PCI location.
    pub location: String,
    /// Size in sectors.
    pub sectors: u64,
    /// `gpt`, `whole` (no table: usable as one disk) or `unusable`.
    pub layout: &'static str,
    /// Why it has no table, or why it is unusable.
    pub note: String,
    /// Largest free extent for a new disk, in bytes (GPT devices).
    pub free_bytes: u64,
    /// Read-only device.
    pub read_only: bool,
    /// Segments one virtio-blk request may carry (the device's `seg_max`).
    pub seg_max: u64,
    /// virtio-blk requests given to the device since boot.
    pub requests: u64,
    /// Its completions interrupt the root (MSI-X routed).
    pub interrupts: bool,
    /// Waits for it that slept until an interrupt (`disk::Disk::halted_waits`).
    pub halted_waits: u64,
    /// Microseconds its requests spent from the ring to being collected,
    /// summed (`disk::Disk::request_cycles`).
    pub request_us: u64,
}

impl Storage {
    /// Open every virtio-blk device on bus 0 and read its partition table.
    pub fn open() -> Self {
        let mut s = Self::default();
        for (location, opened) in Disk::open_all() {
            let location = format!("{location}");
            let disk = match opened {
                Ok(d) => d,
                Err(e) => {
                    crate::println!("root: virtio-blk at {location} is unusable: {e}");
                    s.unusable.push(Unusable {
                        location,
                        why: format!("{e}"),
                    });
                    continue;
                }
            };
            let name = device_name(s.devices.len());
            let sectors = disk.capacity;
            let read_only = disk.read_only();
            // One line per device at boot, with a fingerprint of its first
            // sector (which image QEMU gave it).
            let mut disk = disk;
            match disk.read_sector(0) {
                Ok(sector) => crate::println!(
                    "root: {name}: passthrough virtio-blk at {location}: {sectors} sectors; sector 0 fnv1a {:#018x}",
                    crate::disk::fnv1a(&sector)
                ),
                Err(e) => crate::println!(
                    "root: {name}: passthrough virtio-blk at {location}: {sectors} sectors; sector 0 unreadable ({e})"
                ),
            }
            let io = SharedDisk(Rc::new(RefCell::new(disk)));
            let layout = match DiskTable::open(io.clone()) {
                Ok(table) => {
                    // A copy that was damaged has been rewritten from the
                    // other, as UEFI firmware does (UEFI 2.10 §5.3.2): say so.
                    let repaired = match table.recovery() {
                        disks::Recovery::BackupRepaired(c) => Some(("backup", c)),
                        disks::Recovery::PrimaryRepaired(c) => Some(("primary", c)),
                        disks::Recovery::Intact | disks::Recovery::Formatted => None,
                    };
                    if let Some((which, why)) = repaired {
                        crate::println!(
                            "root: {name}: its GPT's {which} copy was damaged ({why}); rewritten from the other copy"
                        );
                    }
                    Layout::Gpt(table)
                }
                Err(e) => Layout::Whole(format!("{e}")),
            };
            s.devices.push(Device {
                name,
                location,
                io,
                sectors,
                read_only,
                layout,
            });
        }
        if s.devices.is_empty() && s.unusable.is_empty() {
            crate::println!("root: no passthrough virtio-blk device (children get no disks)");
        }
        s
    }

    /// Read one sector of device `index` (the `hv disk` check).
    pub fn read_sector(&self, index: usize, lba: u64) -> Result<(String, u64, [u8; 512]), String> {
        let d = self
            .devices
            .get(index)
            .ok_or_else(|| String::from("no passthrough virtio-blk device"))?;
        let mut buf = [0u8; 512];
        d.io.clone()
            .read_blocks(lba, &mut buf)
            .map_err(|e| format!("{}: {e}", d.name))?;
        Ok((d.location.clone(), d.sectors, buf))
    }

    /// The devices, for `disks`.
    pub fn devices(&self) -> Vec<DeviceEntry> {
        let mut out: Vec<DeviceEntry> = self
            .devices
            .iter()
            .map(|d| {
                let (layout, note, free_bytes) = match &d.layout {
                    Layout::Gpt(t) => ("gpt", String::new(), t.largest_free()),
                    Layout::Whole(why) => ("whole", why.clone(), 0),
                };
                let (seg_max, requests, interrupts, halted_waits, request_us) =
                    d.io.with(|disk| {
                        (
                            disk.seg_max() as u64,
                            disk.requests,
                            disk.interrupts,
                            disk.halted_waits,
                            crate::timer::tsc_us(0, disk.request_cycles),
                        )
                    })
                    .unwrap_or((0, 0, false, 0, 0));
                DeviceEntry {
                    name: d.name.clone(),
                    location: d.location.clone(),
                    sectors: d.sectors,
                    layout,
                    note,
                    free_bytes,
                    read_only: d.read_only,
                    seg_max,
                    requests,
                    interrupts,
                    halted_waits,
                    request_us,
                }
            })
            .collect();
        out.extend(self.unusable.iter().map(|u| DeviceEntry {
            name: String::from("-"),
            location: u.location.clone(),
            sectors: 0,
            layout: "unusable",
            note: u.why.clone(),
            free_bytes: 0,
            read_only: true,
            seg_max: 0,
            requests: 0,
            interrupts: false,
            halted_waits: 0,
            request_us: 0,
        }));
        out
    }

    /// Every disk a child can be given: GPT child disks and table-less
    /// devices.
    pub fn disks(&self) -> Vec<DiskEntry> {
        let mut out = Vec::new();
        for d in &self.devices {
            match &d.layout {
                Layout::Gpt(t) => {
                    for p in t.list().into_iter().filter(|p| p.ours) {
                        out.push(DiskEntry {
                            attached_to: self.holder(&p.name),
                            name: p.name.clone(),
                            device: d.name.clone(),
                            first_sector: p.first_lba,
                            sectors: p.blocks(),
                            kind: "partition",
                        });
                    }
                }
                Layout::Whole(_) => out.push(DiskEntry {
                    attached_to: self.holder(&d.name),
                    name: d.name.clone(),
                    device: d.name.clone(),
                    first_sector: 0,
                    sectors: d.sectors,
                    kind: "whole",
                }),
            }
        }
        out
    }

    /// The child holding disk `name`.
    pub fn holder(&self, name: &str) -> Option<u64> {
        self.attachments
            .iter()
            .find(|a| a.disk == name)
            .map(|a| a.partition)
    }

    /// The disk child `partition` holds.
    pub fn disk_of(&self, partition: u64) -> Option<&str> {
        self.attachments
            .iter()
            .find(|a| a.partition == partition)
            .map(|a| a.disk.as_str())
    }

    /// Create child disk `name` of `bytes` on the first GPT device with
    /// room (`device` picks one).
    pub fn create(&mut self, name: &str, bytes: u64, device: Option<&str>) -> Result<DiskEntry, String> {
        if !disks::is_valid_name(name) {
            return Err(format!(
                "bad disk name '{name}': 1-15 characters, a letter, then letters, digits, '-' or '_'"
            ));
        }
        if self.disks().iter().any(|d| d.name == name) || self.devices.iter().any(|d| d.name == name) {
            return Err(format!("a disk named '{name}' already exists"));
        }
        if bytes == 0 || !bytes.is_multiple_of(1 << 20) {
            return Err(String::from("the size must be a whole number of MiB"));
        }
        if let Some(dev) = device
            && !self.devices.iter().any(|d| d.name == dev)
        {
            return Err(format!("no device '{dev}' (see 'disks')"));
        }
        let mut last_error = None;
        for d in self.devices.iter_mut() {
            if device.is_some_and(|want| want != d.name) {
                continue;
            }
            let Layout::Gpt(table) = &mut d.layout else {
                // A device's own refusal says more than this does.
                last_error.get_or_insert_with(|| format!("{} has no partition table", d.name));
                continue;
            };
            if d.read_only {
                last_error = Some(format!("{} is read-only", d.name));
                continue;
            }
            match table.create(name, bytes) {
                Ok(info) => {
                    // The sectors may hold a deleted disk's data: a child
                    // must never read another's, so a new disk starts zeroed.
                    if let Err(e) = zero(&d.io, info.first_lba, info.blocks()) {
                        let _ = table.delete(name);
                        return Err(format!("{}: zeroing the new disk: {e}", d.name));
                    }
                    return Ok(DiskEntry {
                        name: info.name.clone(),
                        device: d.name.clone(),
                        first_sector: info.first_lba,
                        sectors: info.blocks(),
                        kind: "partition",
                        attached_to: None,
                    });
                }
                Err(e) => last_error = Some(format!("{}: {e}", d.name)),
            }
        }
        Err(last_error.unwrap_or_else(|| String::from("the root has no passthrough block device")))
    }

    /// Delete child disk `name` (refused while a child holds it). Its
    /// sectors go back to the device's free space; their contents are not
    /// erased (a new disk is zeroed when created — see [`Self::create`]).
    pub fn delete(&mut self, name: &str) -> Result<String, String> {
        if let Some(p) = self.holder(name) {
            return Err(format!(
                "disk '{name}' is attached to partition {p}: destroy that partition first"
            ));
        }
        for d in self.devices.iter_mut() {
            if d.name == name {
                return Err(format!(
                    "'{name}' is a whole device, not a child disk: it cannot be deleted"
                ));
            }
            if let Layout::Gpt(table) = &mut d.layout
                && table.get(name).is_some_and(|p| p.ours)
            {
                table.delete(name).map_err(|e| format!("{}: {e}", d.name))?;
                return Ok(d.name.clone());
            }
        }
        Err(format!("no disk named '{name}' (see 'disks')"))
    }

    /// A backend for disk `name`, for a child about to be created; refused
    /// if another child holds it. [`Self::record`] marks it held once the
    /// child exists.
    pub fn claim(&self, name: &str) -> Result<PartitionDisk, String> {
        if let Some(p) = self.holder(name) {
            return Err(format!("disk '{name}' is attached to partition {p}"));
        }
        self.backend(name)
    }

    /// Child `partition` now holds disk `name`.
    pub fn record(&mut self, name: &str, partition: u64) {
        self.attachments.push(Attachment {
            disk: name.to_string(),
            partition,
        });
    }

    /// A backend for disk `name`, without attaching it (checks only).
    pub fn backend(&self, name: &str) -> Result<PartitionDisk, String> {
        for d in &self.devices {
            if d.name == name {
                return match &d.layout {
                    Layout::Whole(_) => Ok(PartitionDisk {
                        io: d.io.clone(),
                        first: 0,
                        sectors: d.sectors,
                        read_only: d.read_only,
                        started: Vec::new(),
                    }),
                    Layout::Gpt(_) => Err(format!(
                        "'{name}' holds a partition table (other children's disks): give a child one of its partitions instead"
                    )),
                };
            }
            if let Layout::Gpt(table) = &d.layout
                && let Some(p) = table.get(name).filter(|p| p.ours)
            {
                return Ok(PartitionDisk {
                    io: d.io.clone(),
                    first: p.first_lba,
                    sectors: p.blocks(),
                    read_only: d.read_only,
                    started: Vec::new(),
                });
            }
        }
        Err(format!("no disk named '{name}' (see 'disks')"))
    }

    /// `disk bench`: read disk `name` directly, through the same backend a
    /// child's controller uses (so the only difference from a child's reads
    /// is storvsp and the VMBus path): `mib` MiB sequentially in
    /// [`disk::MAX_REQUEST_BYTES`] requests, then 4 KiB reads at scattered
    /// offsets, one at a time, for about a second. Reads only.
    pub fn bench(&self, name: &str, mib: u64, depth: usize) -> Result<DiskBench, String> {
        let mut b = self.backend(name)?;
        let bytes = (mib << 20).min(b.sectors * SECTOR);
        let mut buffers: Vec<Vec<u8>> = (0..depth.max(1))
            .map(|_| alloc::vec![0u8; disk::MAX_REQUEST_BYTES])
            .collect();
        let tsc = kernel_x86::arch::rdtsc;
        let start = tsc();
        b.read_pipelined(bytes, &mut buffers)
            .map_err(|e| format!("reading '{name}': {e:?}"))?;
        let seq_us = crate::timer::tsc_us(start, tsc());
        let buf = &mut buffers[0];
        let blocks = b.sectors / 8;
        let ms = crate::timer::now_ms;
        let (start_ms, start) = (ms(), tsc());
        let mut reads = 0u64;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        while ms() - start_ms < 1000 && reads < 100_000 && blocks > 0 {
            // xorshift: scattered 4 KiB-aligned blocks.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.read((x % blocks) * 8, &mut buf[..4096])
                .map_err(|e| format!("reading '{name}': {e:?}"))?;
            reads += 1;
        }
        let random_us = crate::timer::tsc_us(start, tsc());
        Ok(DiskBench {
            bytes,
            seq_us,
            random_reads: reads,
            random_us,
        })
    }

    /// Child `partition` is gone: flush what it wrote and free its disk.
    pub fn detach(&mut self, partition: u64) {
        let held: Vec<String> = self
            .attachments
            .iter()
            .filter(|a| a.partition == partition)
            .map(|a| a.disk.clone())
            .collect();
        for name in held {
            if let Ok(mut b) = self.backend(&name) {
                // The guest's FUA and SYNCHRONIZE CACHE already flushed what
                // it was told is durable; this covers the rest.
                if let Err(e) = b.flush() {
                    crate::println!("root: flushing disk '{name}' of partition {partition}: {e:?}");
                }
            }
        }
        self.attachments.retain(|a| a.partition != partition);
    }
}

/// Linux's virtio-blk names: vda … vdz, vdaa … vdzz.
fn device_name(index: usize) -> String {
    let letter = |i: usize| char::from(b'a' + (i % 26) as u8);
    if index < 26 {
        format!("vd{}", letter(index))
    } else {
        format!("vd{}{}", letter(index / 26 - 1), letter(index))
    }
}

/// Write zeros over `sectors` sectors from `first`, a bounded request at a
/// time, then flush.
fn zero(io: &SharedDisk, first: u64, sectors: u64) -> Result<(), DeviceError> {
    let chunk = disk::MAX_REQUEST_BYTES as u64 / SECTOR;
    let zeros = alloc::vec![0u8; disk::MAX_REQUEST_BYTES];
    let mut io = io.clone();
    let mut done = 0;
    while done < sectors {
        let n = chunk.min(sectors - done);
        io.write_blocks(first + done, &zeros[..(n * SECTOR) as usize])?;
        done += n;
    }
    io.flush()
}

/// A child's view of its disk: sectors `first .. first + sectors` of one
/// device. Every request is checked against that range before it reaches
/// the device.
pub struct PartitionDisk {
    io: SharedDisk,
    first: u64,
    sectors: u64,
    read_only: bool,
    /// Transfers started for this disk and not yet reported.
    started: Vec<DmaTicket>,
}

impl PartitionDisk {
    /// Device sector for `lba` + `len` bytes, or why not.
    fn map(&self, lba: u64, len: usize) -> Result<u64, BackendError> {
        if len == 0 || !(len as u64).is_multiple_of(SECTOR) {
            return Err(BackendError::OutOfRange);
        }
        let end = lba
            .checked_add(len as u64 / SECTOR)
            .ok_or(BackendError::OutOfRange)?;
        if end > self.sectors {
            return Err(BackendError::OutOfRange);
        }
        self.first.checked_add(lba).ok_or(BackendError::OutOfRange)
    }
}

fn backend_error(e: DeviceError) -> BackendError {
    match e {
        DeviceError::OutOfRange | DeviceError::BadBuffer => BackendError::OutOfRange,
        DeviceError::ReadOnly => BackendError::ReadOnly,
        _ => BackendError::Io,
    }
}

impl BlockBackend for PartitionDisk {
    fn sector_size(&self) -> u32 {
        SECTOR as u32
    }
    fn sector_count(&self) -> u64 {
        self.sectors
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let at = self.map(lba, buf.len())?;
        self.settle()?;
        self.io.read_blocks(at, buf).map_err(backend_error)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::ReadOnly);
        }
        let at = self.map(lba, buf.len())?;
        self.settle()?;
        self.io.write_blocks(at, buf).map_err(backend_error)
    }
    fn flush(&mut self) -> Result<(), BackendError> {
        // A flush covers what completed before it: the started transfers
        // first.
        self.settle()?;
        self.io.flush().map_err(backend_error)
    }

    fn read_dma(&mut self, lba: u64, segments: &[(u64, usize)]) -> Option<Result<(), BackendError>> {
        Some(self.dma_now(lba, segments, false))
    }

    fn write_dma(&mut self, lba: u64, segments: &[(u64, usize)]) -> Option<Result<(), BackendError>> {
        if self.read_only {
            return Some(Err(BackendError::ReadOnly));
        }
        Some(self.dma_now(lba, segments, true))
    }

    fn start_dma(
        &mut self,
        lba: u64,
        segments: &[(u64, usize)],
        write: bool,
    ) -> Option<Result<DmaTicket, BackendError>> {
        if write && self.read_only {
            return Some(Err(BackendError::ReadOnly));
        }
        Some(self.start(lba, segments, write))
    }

    fn dma_done(&mut self, ticket: DmaTicket) -> Option<Result<(), BackendError>> {
        if !self.started.contains(&ticket) {
            return None;
        }
        let mut d = self.io.0.try_borrow_mut().ok()?;
        let outcome = d.finished(ticket.0)?;
        drop(d);
        self.started.retain(|t| *t != ticket);
        Some(outcome.map_err(|e| backend_error(device_error(e))))
    }

    fn completion_interrupts(&self) -> bool {
        // MSI-X routed at open (`Disk::interrupts`); a polled device's
        // transfers are collected by polling.
        self.io.with(|d| d.interrupts).unwrap_or(false)
    }

    fn wait_dma(&mut self, ticket: DmaTicket) -> Result<(), BackendError> {
        if !self.started.contains(&ticket) {
            return Err(BackendError::Io);
        }
        let mut d = self.io.0.try_borrow_mut().map_err(|_| BackendError::Io)?;
        let outcome = d.wait(ticket.0, disk::WAIT);
        drop(d);
        self.started.retain(|t| *t != ticket);
        outcome.map_err(|e| backend_error(device_error(e)))
    }
}

impl PartitionDisk {
    /// Read the disk's first `bytes` sequentially, `buffers.len()` requests
    /// in flight (`disk bench`).
    fn read_pipelined(&mut self, bytes: u64, buffers: &mut [Vec<u8>]) -> Result<(), BackendError> {
        let at = self.map(0, usize::try_from(bytes).map_err(|_| BackendError::OutOfRange)?)?;
        self.settle()?;
        let mut d = self.io.0.try_borrow_mut().map_err(|_| BackendError::Io)?;
        d.read_pipelined(at, bytes, buffers)
            .map_err(|e| backend_error(device_error(e)))
    }

    /// Wait for every transfer this disk started (their outcomes stay
    /// with the device for `dma_done`), so that a synchronous request or
    /// flush comes after them.
    fn settle(&mut self) -> Result<(), BackendError> {
        if self.started.is_empty() {
            return Ok(());
        }
        let mut d = self.io.0.try_borrow_mut().map_err(|_| BackendError::Io)?;
        d.settle(self.started.iter().map(|t| t.0));
        Ok(())
    }

    /// Move `segments` between the child's frames and sectors from `lba`
    /// now: after what this disk started, and waited for.
    fn dma_now(&mut self, lba: u64, segments: &[(u64, usize)], write: bool) -> Result<(), BackendError> {
        self.settle()?;
        let ticket = self.start(lba, segments, write)?;
        self.wait_dma(ticket)
    }

    /// Start moving `segments` between the child's frames and sectors from
    /// `lba`; the ticket to collect it with.
    fn start(&mut self, lba: u64, segments: &[(u64, usize)], write: bool) -> Result<DmaTicket, BackendError> {
        let bytes = segments
            .iter()
            .try_fold(0usize, |sum, s| sum.checked_add(s.1))
            .ok_or(BackendError::OutOfRange)?;
        let dev_lba = self.map(lba, bytes)?;
        let mut d = self.io.0.try_borrow_mut().map_err(|_| BackendError::Io)?;
        let direction = if write {
            disk::Direction::Write
        } else {
            disk::Direction::Read
        };
        // `segments` are frames of the child's own RAM the root lent
        // (`ChildDma`), which stay lent until the child's devices are
        // closed or reset, and storvsp waits for every transfer it started
        // before that (`Storvsp::close`/`reset`): the device's DMA always
        // lands in the child's memory. The child may run meanwhile, as with
        // any DMA into a guest's buffers.
        // SAFETY: as above.
        let ticket = DmaTicket(unsafe { d.start(direction, dev_lba, segments) });
        self.started.push(ticket);
        Ok(ticket)
    }
}
