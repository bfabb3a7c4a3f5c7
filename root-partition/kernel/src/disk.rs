//! Passthrough proof and the children's disks' device: the root keeps
//! driving its own virtio-blk disks after demotion, over
//! [`crate::virtio`]'s PCI access, DMA and IOMMU-aware transport and
//! `virtio-drivers`' split virtqueue.
//!
//! The block protocol itself (virtio 1.2 §5.2) is driven here rather than
//! through `virtio-drivers`' `VirtIOBlk`, which puts one data buffer in a
//! request and waits for it: a child's read lands in whatever guest pages
//! its driver named (Linux: up to 256 scattered 4 KiB pages per 1 MiB
//! request), and one device request per page costs a round trip through
//! QEMU each. Here one request carries every segment (up to the device's
//! `seg_max`, in an indirect descriptor table) and a transfer too large
//! for one request is several requests in flight behind one notify.

use crate::memory;
use crate::virtio::{ACCESS_PLATFORM, AccessPlatform, DMA_REDIRECT, RootHal};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use virtio_drivers::PAGE_SIZE;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::DeviceFunction;
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};
use zerocopy::{Immutable, IntoBytes};

/// Bytes per virtio-blk sector (virtio 1.2 §5.2.6: `sector` counts 512-byte
/// units whatever the device's `blk_size`).
pub const SECTOR_SIZE: usize = 512;

/// Why the disk could not be read.
#[derive(Debug)]
pub enum DiskError {
    /// No virtio-blk function on bus 0.
    NotFound,
    /// Transport setup failed.
    Transport(virtio_drivers::transport::pci::VirtioPciError),
    /// The device failed.
    Device(virtio_drivers::Error),
    /// The device refused the features the driver needs.
    Features,
    /// The device did not complete the request in time; it was reset
    /// and is out of service.
    Timeout,
    /// The device was reset after an earlier failure and serves nothing.
    OutOfService,
    /// A request past the last sector.
    OutOfRange,
    /// A buffer that is not a whole, non-zero number of sectors.
    BadBuffer,
}

impl core::fmt::Display for DiskError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotFound => f.write_str("no virtio-blk device on PCI bus 0"),
            Self::Transport(e) => write!(f, "virtio-pci transport: {e}"),
            Self::Device(e) => write!(f, "virtio-blk: {e}"),
            Self::Features => f.write_str("virtio-blk: device refused FEATURES_OK"),
            Self::Timeout => f.write_str("virtio-blk: no completion (device reset, out of service)"),
            Self::OutOfService => f.write_str("virtio-blk: out of service after an earlier failure"),
            Self::OutOfRange => f.write_str("request past the end of the device"),
            Self::BadBuffer => f.write_str("buffer is not a whole number of sectors"),
        }
    }
}

/// Feature bits (virtio 1.2 §5.2.3 and §6).
mod feature {
    /// `size_max` bounds one segment.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// `seg_max` bounds the segments of one request.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The device is read-only.
    pub const RO: u64 = 1 << 5;
    /// VIRTIO_BLK_T_FLUSH is supported (otherwise the device writes through).
    pub const FLUSH: u64 = 1 << 9;
    /// Indirect descriptor tables: a request of many segments takes one
    /// ring slot.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// A virtio 1.x device.
    pub const VERSION_1: u64 = 1 << 32;
}

/// What the driver accepts (VIRTIO_F_ACCESS_PLATFORM is added by
/// [`AccessPlatform`] when offered).
const DRIVER_FEATURES: u64 = feature::SIZE_MAX
    | feature::SEG_MAX
    | feature::RO
    | feature::FLUSH
    | feature::RING_INDIRECT_DESC
    | feature::VERSION_1;

/// Configuration space offsets (virtio 1.2 §5.2.4).
mod config {
    pub const CAPACITY_LOW: usize = 0;
    pub const CAPACITY_HIGH: usize = 4;
    pub const SIZE_MAX: usize = 8;
    pub const SEG_MAX: usize = 12;
}

/// Request types (virtio 1.2 §5.2.6).
mod request_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
}

/// Request status (virtio 1.2 §5.2.6).
mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
}

/// The device-readable header of every request (virtio 1.2 §5.2.6).
#[repr(C)]
#[derive(Debug, Default, IntoBytes, Immutable)]
struct RequestHeader {
    kind: u32,
    reserved: u32,
    sector: u64,
}
const _: () = assert!(core::mem::size_of::<RequestHeader>() == 16);

/// The root's interrupt vector for virtio-blk completions (0x40 is the
/// SynIC's, 0x20 the timer's).
pub const COMPLETION_VECTOR: u8 = 0x41;

/// Completion interrupts taken since boot (every device's).
static COMPLETION_INTERRUPTS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// A device used a buffer: the main loop collects it; this only counts
/// and acknowledges (MSI-X is edge-triggered: nothing to clear on the
/// device).
fn on_completion_interrupt() {
    COMPLETION_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    crate::timer::eoi();
}

/// Completion interrupts taken since boot.
pub fn completion_interrupts() -> u64 {
    COMPLETION_INTERRUPTS.load(Ordering::Relaxed)
}

/// Descriptors in the ring: with indirect tables each request takes one,
/// so this many requests can be in flight.
const QUEUE_SIZE: usize = 128;
/// Segments per request when the device does not say (`seg_max` not
/// offered): what QEMU offered before its queue-size-based value.
const DEFAULT_SEG_MAX: usize = 126;
/// The driver's own cap on segments per request: `VirtQueue::add` refuses
/// a chain longer than the ring even when it goes in an indirect table,
/// and every request has a header and a status beside its data.
const MAX_SEGMENTS: usize = QUEUE_SIZE - 2;
/// How long to wait for a completion before calling the device stuck.
#[derive(Clone, Copy, Debug)]
pub struct Wait {
    /// Looks at the used ring while spinning (interrupts off, or a device
    /// without a completion interrupt).
    pub spins: u64,
    /// Milliseconds of the root's clock once it sleeps for the completion
    /// interrupt instead.
    pub halted_ms: u64,
}

/// The patience of every ordinary request. QEMU completes from the host's
/// page cache in microseconds; a flush of a large image on a slow host
/// disk can take seconds.
pub const WAIT: Wait = Wait {
    spins: 4_000_000_000,
    halted_ms: 60_000,
};

/// How long the root spins on the used ring before it sleeps until the
/// completion interrupt: a small request from QEMU's page cache usually
/// completes within it, and waking from HLT costs more than that (the
/// interrupt goes from QEMU's I/O thread through its main loop to the
/// vCPU thread: the root's 4 KiB reads at depth 1 fell from 36 k to 15 k
/// IOPS when it slept after 64 looks). A longer wait spins no more: under
/// TCG every PAUSE of a spin loop leaves QEMU's execution loop and takes
/// its locks, slowing the very I/O threads the root waits for, and on
/// hardware a halted CPU leaves the core to others.
const SPIN_BEFORE_HALT_US: u64 = 200;

/// A transfer's progress: requests still with the device and the first
/// failure among those done.
struct Transfer {
    ticket: u64,
    left: usize,
    error: Option<DiskError>,
}

/// Data direction of a transfer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    /// Device to memory.
    Read,
    /// Memory to device.
    Write,
}

/// A request the device holds: what it was built from, kept so its
/// descriptors can be recycled when it completes, and so the header and
/// status the device reads and writes stay allocated until then.
struct InFlight {
    token: u16,
    /// The transfer this request is part of.
    ticket: u64,
    header: Box<RequestHeader>,
    status: Box<[u8; 1]>,
    direction: Option<Direction>,
    segments: Vec<(u64, usize)>,
    /// TSC when it went on the ring.
    submitted_tsc: u64,
}

impl InFlight {
    /// The buffers as `VirtQueue::add` and `pop_used` take them: the
    /// header (and, for a write, the data) device-readable; the data of a
    /// read and the status byte device-writable.
    ///
    /// # Safety
    /// Each segment is identity-mapped RAM the caller may hand to the
    /// device (see [`Disk::transfer`]).
    unsafe fn buffers(&mut self) -> (Vec<&[u8]>, Vec<&mut [u8]>) {
        let mut inputs: Vec<&[u8]> = vec![self.header.as_bytes()];
        let mut outputs: Vec<&mut [u8]> = Vec::new();
        for &(phys, len) in &self.segments {
            match self.direction {
                // SAFETY: forwarded to the caller.
                Some(Direction::Write) => inputs.push(unsafe { memory::phys_slice(phys, len) }),
                // SAFETY: forwarded to the caller.
                Some(Direction::Read) => outputs.push(unsafe { memory::phys_slice_mut(phys, len) }),
                None => {}
            }
        }
        outputs.push(&mut self.status[..]);
        (inputs, outputs)
    }
}

/// A found disk.
pub struct Disk {
    /// Where it sits.
    pub location: DeviceFunction,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Whether VIRTIO_F_ACCESS_PLATFORM was negotiated.
    pub access_platform: bool,
    features: u64,
    /// Segments one request may carry.
    seg_max: usize,
    /// Bytes one segment may hold (`usize::MAX` if the device sets no
    /// limit).
    size_max: usize,
    transport: AccessPlatform<PciTransport>,
    queue: VirtQueue<RootHal, QUEUE_SIZE>,
    in_flight: Vec<InFlight>,
    /// Transfers started and not yet collected: (ticket, requests still
    /// with the device, first failure).
    transfers: Vec<Transfer>,
    next_ticket: u64,
    /// Reset after a request that never completed: refuses everything.
    out_of_service: bool,
    /// Completions raise [`COMPLETION_VECTOR`] on the root.
    pub interrupts: bool,
    /// Requests the device was given.
    pub requests: u64,
    /// Waits that slept until an interrupt (a request longer than
    /// [`SPIN_BEFORE_HALT_US`]).
    pub halted_waits: u64,
    /// TSC cycles requests spent from going on the ring to being collected
    /// (summed; with [`Self::requests`] the mean latency as the root sees
    /// it, its own delay in collecting included).
    pub request_cycles: u64,
}

impl Disk {
    /// Find the first virtio-blk function on bus 0 and bring it up.
    pub fn open() -> Result<Self, DiskError> {
        let location = *crate::virtio::functions(DeviceType::Block)
            .first()
            .ok_or(DiskError::NotFound)?;
        Self::open_at(location)
    }

    /// Every virtio-blk function on bus 0, in slot order, each brought up
    /// (or the reason it could not be).
    pub fn open_all() -> Vec<(DeviceFunction, Result<Self, DiskError>)> {
        crate::virtio::functions(DeviceType::Block)
            .into_iter()
            .map(|at| (at, Self::open_at(at)))
            .collect()
    }

    /// Bring up the virtio-blk function at `location` (virtio 1.2 §3.1.1:
    /// reset, ACKNOWLEDGE | DRIVER, features, FEATURES_OK, queue,
    /// DRIVER_OK).
    fn open_at(location: DeviceFunction) -> Result<Self, DiskError> {
        let mut transport = crate::virtio::transport(location).map_err(DiskError::Transport)?;
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = transport.read_device_features();
        let features = offered & DRIVER_FEATURES;
        transport.write_driver_features(features);
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
        if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            transport.set_status(DeviceStatus::FAILED);
            return Err(DiskError::Features);
        }
        transport.set_guest_page_size(PAGE_SIZE as u32);
        let read = |offset: usize| -> Result<u32, DiskError> {
            transport
                .read_config_space::<u32>(offset)
                .map_err(DiskError::Device)
        };
        let capacity = transport
            .read_consistent(|| {
                let low = transport.read_config_space::<u32>(config::CAPACITY_LOW)?;
                let high = transport.read_config_space::<u32>(config::CAPACITY_HIGH)?;
                Ok(u64::from(high) << 32 | u64::from(low))
            })
            .map_err(DiskError::Device)?;
        // Zero means "no limit given" for both (QEMU leaves size_max 0).
        let seg_max = match read(config::SEG_MAX)? {
            n if features & feature::SEG_MAX != 0 && n > 0 => n as usize,
            _ => DEFAULT_SEG_MAX,
        }
        .min(MAX_SEGMENTS);
        let size_max = match read(config::SIZE_MAX)? {
            n if features & feature::SIZE_MAX != 0 && n as usize >= SECTOR_SIZE => {
                n as usize / SECTOR_SIZE * SECTOR_SIZE
            }
            _ => usize::MAX,
        };
        let queue = VirtQueue::new(
            &mut transport,
            0,
            features & feature::RING_INDIRECT_DESC != 0,
            false,
        )
        .map_err(DiskError::Device)?;
        transport.finish_init();
        // Completions interrupt the root (a child's run ends at once, so a
        // finished transfer is collected without waiting for the root's
        // next tick); without MSI-X the root polls, as it always can.
        kernel_x86::traps::set_irq_handler(COMPLETION_VECTOR, on_completion_interrupt);
        let interrupts = match crate::virtio::route_queue_interrupt(location, 0, COMPLETION_VECTOR) {
            Ok(()) => true,
            Err(e) => {
                crate::println!("root: virtio-blk {location}: completions polled only ({e})");
                false
            }
        };
        Ok(Self {
            interrupts,
            location,
            capacity,
            access_platform: offered & ACCESS_PLATFORM != 0,
            features,
            seg_max,
            size_max,
            transport,
            queue,
            in_flight: Vec::new(),
            transfers: Vec::new(),
            next_ticket: 1,
            out_of_service: false,
            requests: 0,
            halted_waits: 0,
            request_cycles: 0,
        })
    }

    /// Read sector `index`.
    pub fn read_sector(&mut self, index: u64) -> Result<[u8; SECTOR_SIZE], DiskError> {
        let mut buf = [0u8; SECTOR_SIZE];
        self.read(index, &mut buf)?;
        Ok(buf)
    }

    /// Whether the device refuses writes (VIRTIO_BLK_F_RO).
    pub fn read_only(&self) -> bool {
        self.features & feature::RO != 0
    }

    /// Segments one device request may carry (its `seg_max`, capped).
    pub fn seg_max(&self) -> usize {
        self.seg_max
    }

    /// Read `buf.len() / 512` sectors from `lba`, in requests of at most
    /// [`MAX_REQUEST_BYTES`], one at a time. `buf` is a whole, non-zero
    /// number of sectors inside the device (checked: the caller's bounds
    /// are not trusted).
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check(lba, buf.len())?;
        for (i, chunk) in buf.chunks_mut(MAX_REQUEST_BYTES).enumerate() {
            let at = lba + (i * MAX_REQUEST_BYTES / SECTOR_SIZE) as u64;
            let segment = [(chunk.as_mut_ptr() as u64, chunk.len())];
            // `chunk` is root heap or stack memory (identity-mapped),
            // exclusively borrowed until the transfer returns, which is
            // after the device completed it or was reset (`wait`).
            // SAFETY: as above.
            unsafe { self.transfer(Direction::Read, at, &segment) }?;
        }
        Ok(())
    }

    /// Read `bytes` sequentially from `lba` with up to `buffers.len()`
    /// requests in flight, each into the next free buffer (all of one
    /// size, a whole number of sectors); the data is not kept apart (the
    /// root's `disk bench` at a queue depth, as a child's reads run).
    pub fn read_pipelined(&mut self, lba: u64, bytes: u64, buffers: &mut [Vec<u8>]) -> Result<(), DiskError> {
        let size = buffers.first().map_or(0, |b| b.len());
        if size == 0 || buffers.iter().any(|b| b.len() != size) {
            return Err(DiskError::BadBuffer);
        }
        self.check(lba, usize::try_from(bytes).map_err(|_| DiskError::OutOfRange)?)?;
        // (ticket, buffer) of each request in flight, oldest first.
        let mut running: VecDeque<(u64, usize)> = VecDeque::new();
        let mut free: Vec<usize> = (0..buffers.len()).rev().collect();
        let (mut issued, mut failed) = (0u64, None);
        while failed.is_none() && (issued < bytes || !running.is_empty()) {
            while issued < bytes
                && let Some(i) = free.pop()
            {
                let n = (bytes - issued).min(size as u64) as usize;
                let segment = [(buffers[i].as_mut_ptr() as u64, n)];
                // `buffers[i]` is root heap memory (identity-mapped),
                // exclusively borrowed for this call, which waits for
                // every transfer it started before it returns.
                // SAFETY: as above.
                let ticket =
                    unsafe { self.start(Direction::Read, lba + issued / SECTOR_SIZE as u64, &segment) };
                running.push_back((ticket, i));
                issued += n as u64;
            }
            if let Some((ticket, i)) = running.pop_front() {
                if let Err(e) = self.wait(ticket, WAIT) {
                    failed = Some(e);
                }
                free.push(i);
            }
        }
        // On a failure, the rest still end before the buffers go back.
        for (ticket, _) in running {
            let _ = self.wait(ticket, WAIT);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Write `buf` (a whole, non-zero number of sectors) at `lba`; durable
    /// after [`Self::flush`].
    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.check(lba, buf.len())?;
        for (i, chunk) in buf.chunks(MAX_REQUEST_BYTES).enumerate() {
            let at = lba + (i * MAX_REQUEST_BYTES / SECTOR_SIZE) as u64;
            let segment = [(chunk.as_ptr() as u64, chunk.len())];
            // SAFETY: as in `read`; the device only reads `chunk`.
            unsafe { self.transfer(Direction::Write, at, &segment) }?;
        }
        Ok(())
    }

    /// VIRTIO_BLK_T_FLUSH: every completed write reaches the medium (QEMU:
    /// the image file is synced). A device without VIRTIO_BLK_F_FLUSH is
    /// write-through, and this does nothing.
    pub fn flush(&mut self) -> Result<(), DiskError> {
        if self.out_of_service {
            return Err(DiskError::OutOfService);
        }
        if self.features & feature::FLUSH == 0 {
            return Ok(());
        }
        let ticket = self.new_ticket(1);
        // SAFETY: no data segments: only the request's own header and
        // status, which it owns.
        if let Err(e) = unsafe { self.submit(ticket, None, request_type::FLUSH, 0, Vec::new()) } {
            self.fail_requests(ticket, 1, e);
        }
        self.notify();
        self.wait(ticket, WAIT)
    }

    fn check(&self, lba: u64, len: usize) -> Result<(), DiskError> {
        if self.out_of_service {
            return Err(DiskError::OutOfService);
        }
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::BadBuffer);
        }
        let end = lba
            .checked_add((len / SECTOR_SIZE) as u64)
            .ok_or(DiskError::OutOfRange)?;
        if end > self.capacity {
            return Err(DiskError::OutOfRange);
        }
        Ok(())
    }

    /// Move `segments` (checked by the caller: a whole number of sectors
    /// inside the device) from or to the device at `lba`, and wait.
    ///
    /// # Safety
    /// Each segment is identity-mapped RAM the device may read (and, for a
    /// read, write), not otherwise accessed until this returns.
    unsafe fn transfer(
        &mut self,
        direction: Direction,
        lba: u64,
        segments: &[(u64, usize)],
    ) -> Result<(), DiskError> {
        // SAFETY: forwarded to the caller, and waited for below.
        let ticket = unsafe { self.start(direction, lba, segments) };
        self.wait(ticket, WAIT)
    }

    /// Start moving `segments` (checked by the caller) from or to the
    /// device at `lba`: split into requests of at most `seg_max` segments
    /// of at most `size_max` bytes, all on the ring behind one notify
    /// (first waiting for room if the ring is short of it). The ticket to
    /// ask [`Self::finished`] or [`Self::wait`] about; a transfer that
    /// could not start is a ticket that has already failed.
    ///
    /// # Safety
    /// Each segment is identity-mapped RAM the device may read (and, for a
    /// read, write) until the ticket is reported finished; the root gives
    /// up no such memory before that (a child's frames stay lent until its
    /// devices waited for their transfers).
    pub unsafe fn start(&mut self, direction: Direction, lba: u64, segments: &[(u64, usize)]) -> u64 {
        let kind = match direction {
            Direction::Read => request_type::IN,
            Direction::Write => request_type::OUT,
        };
        // Every piece: segments cut at `size_max`.
        let size_max = self.size_max;
        let pieces: Vec<(u64, usize)> = segments
            .iter()
            .flat_map(|&(phys, len)| {
                (0..len)
                    .step_by(size_max.min(len).max(1))
                    .map(move |off| (phys + off as u64, (len - off).min(size_max)))
            })
            .collect();
        let requests: Vec<&[(u64, usize)]> = pieces.chunks(self.seg_max).collect();
        let ticket = self.new_ticket(requests.len());
        if self.out_of_service {
            self.fail_requests(ticket, requests.len(), DiskError::OutOfService);
            return ticket;
        }
        // Room for all of them (requests of other transfers complete
        // meanwhile); a transfer larger than the ring waits batch by batch.
        let mut at = lba;
        for (i, request) in requests.iter().enumerate() {
            if self.in_flight.len() >= QUEUE_SIZE {
                self.notify();
                if let Err(e) = self.reap_until(|d| d.in_flight.len() < QUEUE_SIZE, WAIT) {
                    self.fail_requests(ticket, requests.len() - i, e);
                    return ticket;
                }
            }
            let bytes: usize = request.iter().map(|s| s.1).sum();
            // SAFETY: forwarded to the caller.
            if let Err(e) = unsafe { self.submit(ticket, Some(direction), kind, at, request.to_vec()) } {
                self.fail_requests(ticket, requests.len() - i, e);
                break;
            }
            at += (bytes / SECTOR_SIZE) as u64;
        }
        self.notify();
        ticket
    }

    /// How transfer `ticket` ended, once every request of it has (`None`:
    /// still running, or an unknown ticket). Collects whatever the device
    /// completed meanwhile; never waits. Reported once.
    pub fn finished(&mut self, ticket: u64) -> Option<Result<(), DiskError>> {
        // A failure here took the device out of service, which ended every
        // transfer with an error: `take` reports it.
        let _ = self.reap_until(
            |_| true,
            Wait {
                spins: 0,
                halted_ms: 0,
            },
        );
        self.take(ticket)
    }

    /// Wait until transfer `ticket` ended and say how (`Timeout` past
    /// `limit`: the device is reset and out of service).
    pub fn wait(&mut self, ticket: u64, limit: Wait) -> Result<(), DiskError> {
        let r = self.reap_until(|d| d.transfer_done(ticket), limit);
        match self.take(ticket) {
            Some(outcome) => outcome,
            None => r.and(Err(DiskError::OutOfService)),
        }
    }

    /// Wait until every transfer in `tickets` ended, leaving their
    /// outcomes to be collected.
    pub fn settle(&mut self, tickets: impl Iterator<Item = u64> + Clone) {
        let _ = self.reap_until(|d| tickets.clone().all(|t| d.transfer_done(t)), WAIT);
    }

    fn new_ticket(&mut self, requests: usize) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.transfers.push(Transfer {
            ticket,
            left: requests,
            error: None,
        });
        ticket
    }

    /// `count` requests of `ticket` will never reach the device.
    fn fail_requests(&mut self, ticket: u64, count: usize, e: DiskError) {
        if let Some(t) = self.transfers.iter_mut().find(|t| t.ticket == ticket) {
            t.left = t.left.saturating_sub(count);
            t.error.get_or_insert(e);
        }
    }

    fn transfer_done(&self, ticket: u64) -> bool {
        self.transfers.iter().all(|t| t.ticket != ticket || t.left == 0)
    }

    fn take(&mut self, ticket: u64) -> Option<Result<(), DiskError>> {
        let i = self
            .transfers
            .iter()
            .position(|t| t.ticket == ticket && t.left == 0)?;
        let t = self.transfers.swap_remove(i);
        Some(t.error.map_or(Ok(()), Err))
    }

    /// Put one request on the ring (not yet notified).
    ///
    /// # Safety
    /// As for [`Self::transfer`].
    unsafe fn submit(
        &mut self,
        ticket: u64,
        direction: Option<Direction>,
        kind: u32,
        sector: u64,
        segments: Vec<(u64, usize)>,
    ) -> Result<u16, DiskError> {
        let mut request = InFlight {
            token: 0,
            ticket,
            header: Box::new(RequestHeader {
                kind,
                reserved: 0,
                sector,
            }),
            status: Box::new([0xFF]),
            direction,
            segments,
            submitted_tsc: kernel_x86::arch::rdtsc(),
        };
        {
            // SAFETY: forwarded to the caller.
            let (inputs, mut outputs) = unsafe { request.buffers() };
            // The header and status are boxed and kept in `in_flight`
            // until `pop_used` returns them; the segments are the caller's.
            // SAFETY: as above.
            request.token = unsafe { self.queue.add(&inputs, &mut outputs) }.map_err(DiskError::Device)?;
        }
        let token = request.token;
        self.in_flight.push(request);
        self.requests += 1;
        Ok(token)
    }

    fn notify(&mut self) {
        if self.queue.should_notify() {
            self.transport.notify(0);
        }
    }

    /// Collect completed requests into their transfers until `done` holds
    /// (checked before each poll of the used ring); `Timeout` after `spins`
    /// idle polls (0: collect what is there and stop), which resets the
    /// device and takes it out of service.
    fn reap_until(&mut self, done: impl Fn(&Self) -> bool, limit: Wait) -> Result<(), DiskError> {
        let spins = limit.spins;
        let mut idle = 0u64;
        // Spin until this TSC value; before the root has measured its TSC
        // (its first second), until the timer has ticked once (10 ms).
        let spin_until = crate::timer::tsc_hz()
            .map(|hz| kernel_x86::arch::rdtsc().wrapping_add(hz / 1_000_000 * SPIN_BEFORE_HALT_US));
        let first_tick = crate::timer::ticks();
        let spun_enough = || {
            spin_until.map_or(crate::timer::ticks() > first_tick, |t| {
                kernel_x86::arch::rdtsc() > t
            })
        };
        // When this wait first slept for the interrupt (root clock, ms).
        let mut halted_since: Option<u64> = None;
        loop {
            if spins > 0 && done(self) {
                return Ok(());
            }
            let Some(token) = self.queue.peek_used() else {
                if spins == 0 {
                    return Ok(());
                }
                idle += 1;
                let waited_too_long = match halted_since {
                    Some(t) => crate::timer::now_ms().saturating_sub(t) > limit.halted_ms,
                    None => idle > spins,
                };
                if waited_too_long {
                    self.take_out_of_service();
                    return Err(DiskError::Timeout);
                }
                // Sleep until an interrupt (this device's completion, or
                // the timer's tick at worst) unless the device has used a
                // buffer since the look above.
                if self.interrupts
                    && spun_enough()
                    && kernel_x86::arch::halt_unless(|| self.queue.peek_used().is_some())
                {
                    if halted_since.is_none() {
                        halted_since = Some(crate::timer::now_ms());
                        self.halted_waits += 1;
                    }
                    continue;
                }
                core::hint::spin_loop();
                continue;
            };
            // Progress: the patience starts again.
            idle = 0;
            halted_since = None;
            let Some(index) = self.in_flight.iter().position(|r| r.token == token) else {
                // A token the driver never gave: the device is broken.
                self.take_out_of_service();
                return Err(DiskError::Device(virtio_drivers::Error::WrongToken));
            };
            let mut request = self.in_flight.swap_remove(index);
            self.request_cycles = self
                .request_cycles
                .wrapping_add(kernel_x86::arch::rdtsc().wrapping_sub(request.submitted_tsc));
            {
                // SAFETY: the same buffers `submit` added under this token.
                let (inputs, mut outputs) = unsafe { request.buffers() };
                // SAFETY: as above.
                if let Err(e) = unsafe { self.queue.pop_used(token, &inputs, &mut outputs) } {
                    self.take_out_of_service();
                    return Err(DiskError::Device(e));
                }
            }
            let error = match request.status[0] {
                status::OK => None,
                status::IOERR => Some(DiskError::Device(virtio_drivers::Error::IoError)),
                _ => Some(DiskError::Device(virtio_drivers::Error::Unsupported)),
            };
            if let Some(t) = self.transfers.iter_mut().find(|t| t.ticket == request.ticket) {
                t.left = t.left.saturating_sub(1);
                if let Some(e) = error {
                    t.error.get_or_insert(e);
                }
            }
        }
    }

    /// A request never completed (or the device answered nonsense): reset
    /// the device (virtio 1.2 §2.1.2: writing 0 to the status; QEMU drains
    /// its outstanding I/O before the reset completes), so it no longer
    /// touches the buffers of the requests given up on, and refuse all
    /// later requests. The abandoned requests' own header and status are
    /// leaked: a device that ignored the reset may still write them.
    fn take_out_of_service(&mut self) {
        self.out_of_service = true;
        self.transport.set_status(DeviceStatus::empty());
        for _ in 0..1_000_000 {
            if self.transport.get_status().is_empty() {
                break;
            }
            core::hint::spin_loop();
        }
        for request in self.in_flight.drain(..) {
            core::mem::forget(request);
        }
        for t in self.transfers.iter_mut() {
            t.left = 0;
            t.error.get_or_insert(DiskError::Timeout);
        }
        crate::println!(
            "root: virtio-blk {}: a request never completed; device reset and out of service",
            self.location
        );
    }
}

/// Largest request the root's own buffer reads and writes use: 1 MiB, a
/// child's largest SRB in one request (each of these is synchronous, so
/// fewer of them is fewer round trips through QEMU).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

impl Disk {
    /// Self-test: read sector `index` with the device told to write it at
    /// physical address `device_addr` instead of the driver's buffer, and
    /// wait (bounded) for the completion. The request and buffer stay in
    /// flight (and allocated) if the device never completes, as it may
    /// still write them.
    pub fn read_sector_to(&mut self, index: u64, device_addr: u64) -> Result<(), DiskError> {
        self.check(index, SECTOR_SIZE)?;
        let buf = Box::leak(Box::new([0u8; SECTOR_SIZE]));
        let segment = (buf.as_mut_ptr() as u64, SECTOR_SIZE);
        let ticket = self.new_ticket(1);
        DMA_REDIRECT.store(device_addr, Ordering::Relaxed);
        // `buf` is leaked, so it outlives the request whatever the device
        // does; `RootHal::share` hands the device `device_addr` instead
        // (the point of the test).
        // SAFETY: as above.
        let submitted = unsafe {
            self.submit(
                ticket,
                Some(Direction::Read),
                request_type::IN,
                index,
                vec![segment],
            )
        };
        DMA_REDIRECT.store(0, Ordering::Relaxed);
        if let Err(e) = submitted {
            self.fail_requests(ticket, 1, e);
        }
        self.notify();
        let r = self.wait(
            ticket,
            Wait {
                spins: 200_000_000,
                halted_ms: 2_000,
            },
        );
        if r.is_ok() {
            // SAFETY: the device is done with it; it was leaked above.
            drop(unsafe { Box::from_raw(buf) });
        }
        r
    }
}
/// FNV-1a, to print a short fingerprint of what was read.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
