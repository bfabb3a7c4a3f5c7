//! Passthrough proof and the children's disks' device: the root keeps
//! driving its own virtio-blk disks after demotion (`virtio-drivers`, over
//! [`crate::virtio`]'s PCI access, DMA and IOMMU-aware transport).

use crate::virtio::{ACCESS_PLATFORM, AccessPlatform, DMA_REDIRECT, RootHal};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use virtio_drivers::device::blk::{BlkReq, BlkResp, SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::DeviceFunction;
use virtio_drivers::transport::{DeviceType, Transport};

/// Why the disk could not be read.
#[derive(Debug)]
pub enum DiskError {
    /// No virtio-blk function on bus 0.
    NotFound,
    /// Transport setup failed.
    Transport(virtio_drivers::transport::pci::VirtioPciError),
    /// The device failed.
    Device(virtio_drivers::Error),
    /// The device did not complete the request in time.
    Timeout,
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
            Self::Timeout => f.write_str("virtio-blk: no completion"),
            Self::OutOfRange => f.write_str("request past the end of the device"),
            Self::BadBuffer => f.write_str("buffer is not a whole number of sectors"),
        }
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
    blk: VirtIOBlk<RootHal, AccessPlatform<PciTransport>>,
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

    /// Bring up the virtio-blk function at `location`.
    fn open_at(location: DeviceFunction) -> Result<Self, DiskError> {
        let mut transport = crate::virtio::transport(location).map_err(DiskError::Transport)?;
        let access_platform = transport.read_device_features() & ACCESS_PLATFORM != 0;
        let blk = VirtIOBlk::<RootHal, _>::new(transport).map_err(DiskError::Device)?;
        Ok(Self {
            location,
            capacity: blk.capacity(),
            access_platform,
            blk,
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
        self.blk.readonly()
    }

    /// Read `buf.len() / 512` sectors from `lba`, in requests of at most
    /// [`MAX_REQUEST_BYTES`]. `buf` is a whole, non-zero number of sectors
    /// inside the device (checked: the caller's bounds are not trusted).
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check(lba, buf.len())?;
        for (i, chunk) in buf.chunks_mut(MAX_REQUEST_BYTES).enumerate() {
            let at = lba + (i * MAX_REQUEST_BYTES / SECTOR_SIZE) as u64;
            let at = usize::try_from(at).map_err(|_| DiskError::OutOfRange)?;
            self.blk.read_blocks(at, chunk).map_err(DiskError::Device)?;
        }
        Ok(())
    }

    /// Write `buf` (a whole, non-zero number of sectors) at `lba`; durable
    /// after [`Self::flush`].
    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.check(lba, buf.len())?;
        for (i, chunk) in buf.chunks(MAX_REQUEST_BYTES).enumerate() {
            let at = lba + (i * MAX_REQUEST_BYTES / SECTOR_SIZE) as u64;
            let at = usize::try_from(at).map_err(|_| DiskError::OutOfRange)?;
            self.blk.write_blocks(at, chunk).map_err(DiskError::Device)?;
        }
        Ok(())
    }

    /// Read `len` bytes from `lba` straight into root physical memory at
    /// `phys` (a run of frames the root owns or lent to a child: the
    /// device's DMA lands there).
    ///
    /// # Safety
    /// `phys..phys + len` must be identity-mapped RAM the root may write
    /// and nothing else may hold a reference into while this runs (the
    /// root is one CPU and the child is not running during a request).
    pub unsafe fn read_phys(&mut self, lba: u64, phys: u64, len: usize) -> Result<(), DiskError> {
        // SAFETY: forwarded to the caller.
        let buf = unsafe { crate::memory::phys_slice_mut(phys, len) };
        self.read(lba, buf)
    }

    /// Write `len` bytes at `lba` straight from root physical memory at
    /// `phys` (the device's DMA reads it there).
    ///
    /// # Safety
    /// `phys..phys + len` must be identity-mapped RAM nothing writes while
    /// this runs.
    pub unsafe fn write_phys(&mut self, lba: u64, phys: u64, len: usize) -> Result<(), DiskError> {
        // SAFETY: forwarded to the caller.
        let buf = unsafe { crate::memory::phys_slice(phys, len) };
        self.write(lba, buf)
    }

    /// VIRTIO_BLK_T_FLUSH: every completed write reaches the medium (QEMU:
    /// the image file is synced). A device without VIRTIO_BLK_F_FLUSH is
    /// write-through, and this does nothing.
    pub fn flush(&mut self) -> Result<(), DiskError> {
        self.blk.flush().map_err(DiskError::Device)
    }

    fn check(&self, lba: u64, len: usize) -> Result<(), DiskError> {
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
}

/// Largest single virtio-blk request the root issues: one data descriptor
/// of up to 1 MiB, a child's largest SRB in one request (each request is
/// synchronous, so fewer of them is fewer round trips through QEMU).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

impl Disk {
    /// Self-test: read sector `index` with the device told to write it at
    /// physical address `device_addr` instead of the driver's buffer, and
    /// wait (bounded) for the completion. The request and buffers are leaked
    /// if the device never completes, as it may still write them.
    pub fn read_sector_to(&mut self, index: u64, device_addr: u64) -> Result<(), DiskError> {
        let mut req = Box::new(BlkReq::default());
        let mut buf = Box::new([0u8; SECTOR_SIZE]);
        let mut resp = Box::new(<BlkResp as zerocopy::FromZeros>::new_zeroed());
        DMA_REDIRECT.store(device_addr, Ordering::Relaxed);
        // SAFETY: the three buffers live on the heap until the request
        // completes, or forever if it does not (leaked below).
        let token = unsafe {
            self.blk
                .read_blocks_nb(index as usize, &mut req, &mut buf[..], &mut resp)
        };
        DMA_REDIRECT.store(0, Ordering::Relaxed);
        let token = token.map_err(DiskError::Device)?;
        for _ in 0..200_000_000u64 {
            if self.blk.peek_used() == Some(token) {
                // SAFETY: the same buffers as passed to `read_blocks_nb`.
                return unsafe {
                    self.blk
                        .complete_read_blocks(token, &req, &mut buf[..], &mut resp)
                }
                .map_err(DiskError::Device);
            }
            core::hint::spin_loop();
        }
        Box::leak(req);
        Box::leak(buf);
        Box::leak(resp);
        Err(DiskError::Timeout)
    }
}

/// FNV-1a, to print a short fingerprint of what was read.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
