//! Passthrough proof: the root keeps driving its own devices after demotion.
//! PCI configuration through the legacy 0xCF8/0xCFC mechanism and a virtio-blk
//! disk through the `virtio-drivers` crate, whose DMA buffers are the root's
//! identity-mapped frames. The device's DMA goes through the IOMMU, which
//! hv-core programs as an identity map of the root's RAM without hv-core's
//! region, so DMA addresses are the root's physical addresses. The driver
//! negotiates VIRTIO_F_ACCESS_PLATFORM ([`AccessPlatform`]): a device that
//! offers it (QEMU's `iommu_platform=on`) refuses a driver that does not
//! accept it, and one without it would bypass the IOMMU.

use crate::memory;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel_x86::arch::Port;
use virtio_drivers::device::blk::{BlkReq, BlkResp, SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::pci::bus::{Command, ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, virtio_device_type};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// PCI configuration mechanism #1 (ports 0xCF8/0xCFC).
pub struct PortCam;

impl PortCam {
    fn address(df: DeviceFunction, offset: u8) -> u32 {
        0x8000_0000
            | (df.bus as u32) << 16
            | (df.device as u32) << 11
            | (df.function as u32) << 8
            | (offset & 0xFC) as u32
    }

    fn ports() -> (Port, Port) {
        // SAFETY: the root owns the host bridge's configuration ports.
        unsafe { (Port::new(0xCF8), Port::new(0xCFC)) }
    }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        let (addr, data) = Self::ports();
        addr.write32(Self::address(df, offset));
        data.read32()
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, value: u32) {
        let (addr, data) = Self::ports();
        addr.write32(Self::address(df, offset));
        data.write32(value);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// DMA and MMIO for virtio-drivers over the root's identity map.
pub struct RootHal;

// SAFETY: DMA memory comes from the frame allocator, is zeroed, page-aligned
// and identity-mapped, so the physical address handed to the device is the
// address the driver uses; `share` returns the identity physical address of
// the buffer (heap and frames are identity-mapped RAM).
unsafe impl Hal for RootHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let phys = memory::alloc_frames(pages as u64).expect("frames for virtio DMA");
        (
            phys,
            NonNull::new(phys as *mut u8).expect("frames are never at address 0"),
        )
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        memory::free_frames(paddr, pages as u64);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("BARs are never at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        // Self-test only (`Disk::read_sector_to`): hand the device another
        // address for the next sector-sized buffer it is to write.
        if direction == BufferDirection::DeviceToDriver && buffer.len() >= SECTOR_SIZE {
            let redirect = DMA_REDIRECT.swap(0, Ordering::Relaxed);
            if redirect != 0 {
                return redirect;
            }
        }
        buffer.as_ptr() as *mut u8 as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Self-test hook: when non-zero, the device address [`RootHal::share`]
/// gives for the next device-written buffer of at least a sector.
static DMA_REDIRECT: AtomicU64 = AtomicU64::new(0);

/// VIRTIO_F_ACCESS_PLATFORM (virtio 1.1 §6): the device's memory accesses
/// go through the platform's IOMMU.
const ACCESS_PLATFORM: u64 = 1 << 33;

/// A transport that accepts VIRTIO_F_ACCESS_PLATFORM when the device offers
/// it (`virtio-drivers` 0.13's block driver does not list it) and otherwise
/// passes everything through. DMA addresses stay physical addresses: the
/// IOMMU maps the root's RAM 1:1.
pub struct AccessPlatform<T: Transport> {
    inner: T,
    offered: bool,
}

impl<T: Transport> AccessPlatform<T> {
    /// Wrap `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            offered: false,
        }
    }
}

impl<T: Transport> Transport for AccessPlatform<T> {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        let features = self.inner.read_device_features();
        self.offered = features & ACCESS_PLATFORM != 0;
        features
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        let extra = if self.offered { ACCESS_PLATFORM } else { 0 };
        self.inner.write_driver_features(driver_features | extra);
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue)
    }
    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }
    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }
    fn read_config_space<V: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<V> {
        self.inner.read_config_space(offset)
    }
    fn write_config_space<V: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        offset: usize,
        value: V,
    ) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}

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
        let location = block_functions().next().ok_or(DiskError::NotFound)?;
        Self::open_at(location)
    }

    /// Every virtio-blk function on bus 0, in slot order, each brought up
    /// (or the reason it could not be).
    pub fn open_all() -> Vec<(DeviceFunction, Result<Self, DiskError>)> {
        block_functions().map(|at| (at, Self::open_at(at))).collect()
    }

    /// Bring up the virtio-blk function at `location`.
    fn open_at(location: DeviceFunction) -> Result<Self, DiskError> {
        let mut root = PciRoot::new(PortCam);
        let (_, command) = root.get_status_command(location);
        root.set_command(location, command | Command::MEMORY_SPACE | Command::BUS_MASTER);
        let transport = PciTransport::new::<RootHal, _>(&mut root, location).map_err(DiskError::Transport)?;
        let mut transport = AccessPlatform::new(transport);
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

/// Largest single virtio-blk request the root issues (one data descriptor
/// of up to 128 KiB; QEMU's default `seg_max` allows far more, but one
/// bounded size keeps each synchronous request short).
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

/// The virtio-blk functions on PCI bus 0.
fn block_functions() -> impl Iterator<Item = DeviceFunction> {
    let root = PciRoot::new(PortCam);
    let found: Vec<DeviceFunction> = root
        .enumerate_bus(0)
        .filter(|(_, info)| virtio_device_type(info) == Some(DeviceType::Block))
        .map(|(at, _)| at)
        .collect();
    found.into_iter()
}

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
