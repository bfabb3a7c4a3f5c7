//! The root's virtio devices on PCI (its passthrough disks and NIC):
//! configuration through the legacy 0xCF8/0xCFC mechanism, DMA buffers
//! from the root's identity-mapped frames and heap, and a transport that
//! accepts VIRTIO_F_ACCESS_PLATFORM. Device DMA goes through the IOMMU,
//! which hv-core programs as an identity map of the root's RAM without
//! hv-core's region, so DMA addresses are the root's physical addresses.

use crate::disk::SECTOR_SIZE;
use crate::memory;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel_x86::arch::Port;
use virtio_drivers::transport::pci::bus::{Command, ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, VirtioPciError, virtio_device_type};
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
pub static DMA_REDIRECT: AtomicU64 = AtomicU64::new(0);

/// VIRTIO_F_ACCESS_PLATFORM (virtio 1.1 §6): the device's memory accesses
/// go through the platform's IOMMU.
pub const ACCESS_PLATFORM: u64 = 1 << 33;

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

/// The virtio functions of type `kind` on PCI bus 0, in slot order.
pub fn functions(kind: DeviceType) -> Vec<DeviceFunction> {
    let root = PciRoot::new(PortCam);
    root.enumerate_bus(0)
        .filter(|(_, info)| virtio_device_type(info) == Some(kind))
        .map(|(at, _)| at)
        .collect()
}

/// Enable the function at `location` (memory space, bus mastering) and
/// make its transport.
pub fn transport(location: DeviceFunction) -> Result<AccessPlatform<PciTransport>, VirtioPciError> {
    let mut root = PciRoot::new(PortCam);
    let (_, command) = root.get_status_command(location);
    root.set_command(location, command | Command::MEMORY_SPACE | Command::BUS_MASTER);
    let transport = PciTransport::new::<RootHal, _>(&mut root, location)?;
    Ok(AccessPlatform::new(transport))
}

/// Why a queue's interrupt could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixError {
    /// The function has no MSI-X capability.
    NoMsix,
    /// The MSI-X table's BAR is not a memory BAR, or the table is outside it.
    BadTable,
    /// No virtio common configuration structure (a legacy device).
    NoCommonConfig,
    /// The device did not take the vector (it read back NO_VECTOR).
    Refused,
}

impl core::fmt::Display for MsixError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NoMsix => "no MSI-X capability",
            Self::BadTable => "the MSI-X table is not inside a memory BAR",
            Self::NoCommonConfig => "no virtio common configuration",
            Self::Refused => "the device refused the queue's MSI-X vector",
        })
    }
}

/// PCI capability ids (PCI Local Bus 3.0 appendix H).
const CAP_MSIX: u8 = 0x11;
const CAP_VENDOR: u8 = 0x09;
/// `virtio_pci_cap.cfg_type` of the common configuration (virtio 1.2 §4.1.4).
const VIRTIO_CAP_COMMON: u8 = 1;
/// `virtio_pci_common_cfg` offsets (virtio 1.2 §4.1.4.3).
const COMMON_QUEUE_SELECT: u64 = 0x16;
const COMMON_QUEUE_MSIX_VECTOR: u64 = 0x1A;
const VIRTIO_MSI_NO_VECTOR: u16 = 0xFFFF;

/// Make the device at `location` raise `vector` on the root's local APIC
/// whenever it uses a buffer of `queue`: MSI-X table entry 0 (address
/// 0xFEE0_0000 with the root's APIC id, fixed delivery, edge), MSI-X on,
/// and the queue's `queue_msix_vector` set to entry 0 (virtio 1.2
/// §4.1.5.1.2). hv-core leaves interrupt remapping off, so the message
/// reaches the APIC as written; a child's run ends at it (INTR intercept).
pub fn route_queue_interrupt(location: DeviceFunction, queue: u16, vector: u8) -> Result<(), MsixError> {
    let mut root = PciRoot::new(PortCam);
    let msix = root
        .capabilities(location)
        .find(|c| c.id == CAP_MSIX)
        .ok_or(MsixError::NoMsix)?;
    let table = PortCam.read_word(location, msix.offset + 4);
    let (bar, table_offset) = ((table & 7) as u8, u64::from(table & !7));
    let (bar_address, bar_size) = root
        .bar_info(location, bar)
        .ok()
        .flatten()
        .and_then(|b| b.memory_address_size())
        .ok_or(MsixError::BadTable)?;
    if bar_address == 0 || table_offset.checked_add(16).is_none_or(|end| end > bar_size) {
        return Err(MsixError::BadTable);
    }
    let common_caps: Vec<u8> = root
        .capabilities(location)
        .filter(|c| c.id == CAP_VENDOR && (c.private_header >> 8) as u8 == VIRTIO_CAP_COMMON)
        .map(|c| c.offset)
        .collect();
    let common = common_caps
        .into_iter()
        .find_map(|cap| {
            let bar = PortCam.read_word(location, cap + 4) as u8;
            let offset = u64::from(PortCam.read_word(location, cap + 8));
            let (address, size) = root
                .bar_info(location, bar)
                .ok()
                .flatten()?
                .memory_address_size()?;
            (address != 0 && offset + 0x20 <= size).then_some(address + offset)
        })
        .ok_or(MsixError::NoCommonConfig)?;
    let apic_id = crate::timer::apic_id();
    let entry = bar_address + table_offset;
    // `entry` is MSI-X table entry 0 inside the function's memory BAR
    // (checked above), identity-mapped in the root's page tables and
    // passed through by its NPT; these are its four 32-bit fields.
    // SAFETY: as above.
    unsafe {
        mmio_write32(entry, 0xFEE0_0000 | u32::from(apic_id) << 12);
        mmio_write32(entry + 4, 0);
        mmio_write32(entry + 8, u32::from(vector));
        mmio_write32(entry + 12, 0);
    }
    // Message Control (bits 16..32 of the capability's first dword):
    // enable (bit 15), function mask (bit 14) off.
    let first = PortCam.read_word(location, msix.offset);
    PortCam.write_word(location, msix.offset, (first & !(1 << 30)) | (1 << 31));
    // `common` is the device's common configuration structure in its
    // memory BAR (found through its capability, inside the BAR), mapped as
    // above; queue_select and queue_msix_vector are 16-bit registers.
    // SAFETY: as above.
    let taken = unsafe {
        mmio_write16(common + COMMON_QUEUE_SELECT, queue);
        mmio_write16(common + COMMON_QUEUE_MSIX_VECTOR, 0);
        mmio_read16(common + COMMON_QUEUE_MSIX_VECTOR)
    };
    if taken == VIRTIO_MSI_NO_VECTOR {
        return Err(MsixError::Refused);
    }
    Ok(())
}

/// # Safety
/// `address` is a mapped device register the caller may write.
unsafe fn mmio_write32(address: u64, value: u32) {
    // SAFETY: forwarded to the caller.
    unsafe { (address as *mut u32).write_volatile(value) }
}

/// # Safety
/// `address` is a mapped device register the caller may write.
unsafe fn mmio_write16(address: u64, value: u16) {
    // SAFETY: forwarded to the caller.
    unsafe { (address as *mut u16).write_volatile(value) }
}

/// # Safety
/// `address` is a mapped device register the caller may read.
unsafe fn mmio_read16(address: u64) -> u16 {
    // SAFETY: forwarded to the caller.
    unsafe { (address as *const u16).read_volatile() }
}
