//! Passthrough proof: the root keeps driving its own devices after demotion.
//! PCI configuration through the legacy 0xCF8/0xCFC mechanism and a virtio-blk
//! disk through the `virtio-drivers` crate, whose DMA buffers are the root's
//! identity-mapped frames (the root's NPT is an identity map, so guest
//! physical addresses are what the device sees).

use crate::memory;
use core::ptr::NonNull;
use kernel_x86::arch::Port;
use virtio_drivers::device::blk::{SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::DeviceType;
use virtio_drivers::transport::pci::bus::{Command, ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, virtio_device_type};
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

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
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
}

impl core::fmt::Display for DiskError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotFound => f.write_str("no virtio-blk device on PCI bus 0"),
            Self::Transport(e) => write!(f, "virtio-pci transport: {e}"),
            Self::Device(e) => write!(f, "virtio-blk: {e}"),
        }
    }
}

/// A found disk.
pub struct Disk {
    /// Where it sits.
    pub location: DeviceFunction,
    /// Capacity in sectors.
    pub capacity: u64,
    blk: VirtIOBlk<RootHal, PciTransport>,
}

impl Disk {
    /// Find the first virtio-blk function on bus 0 and bring it up.
    pub fn open() -> Result<Self, DiskError> {
        let mut root = PciRoot::new(PortCam);
        let (location, _) = root
            .enumerate_bus(0)
            .find(|(_, info)| virtio_device_type(info) == Some(DeviceType::Block))
            .ok_or(DiskError::NotFound)?;
        let (_, command) = root.get_status_command(location);
        root.set_command(location, command | Command::MEMORY_SPACE | Command::BUS_MASTER);
        let transport = PciTransport::new::<RootHal, _>(&mut root, location).map_err(DiskError::Transport)?;
        let blk = VirtIOBlk::<RootHal, _>::new(transport).map_err(DiskError::Device)?;
        Ok(Self {
            location,
            capacity: blk.capacity(),
            blk,
        })
    }

    /// Read sector `index`.
    pub fn read_sector(&mut self, index: u64) -> Result<[u8; SECTOR_SIZE], DiskError> {
        let mut buf = [0u8; SECTOR_SIZE];
        self.blk
            .read_blocks(index as usize, &mut buf)
            .map_err(DiskError::Device)?;
        Ok(buf)
    }
}

/// FNV-1a, to print a short fingerprint of what was read.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
