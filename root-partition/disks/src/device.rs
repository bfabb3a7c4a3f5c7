//! The block-device trait the tables are read from and written to, an
//! in-memory device for tests, and the adapter to `gpt_disk_io`'s
//! [`BlockIo`].

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use gpt_disk_io::BlockIo;
use gpt_disk_io::gpt_disk_types::{BlockSize, Lba};

/// Why a block device refused or failed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceError {
    /// The request reaches past the last block of the device.
    OutOfRange,
    /// The buffer's length is not a whole number of blocks.
    BadBuffer,
    /// The device is read-only.
    ReadOnly,
    /// The device (or its driver) reported an I/O error.
    Io,
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfRange => "request past the end of the device",
            Self::BadBuffer => "buffer is not a whole number of blocks",
            Self::ReadOnly => "device is read-only",
            Self::Io => "device I/O error",
        })
    }
}

impl core::error::Error for DeviceError {}

/// A random-access block device: what the root's virtio-blk driver (or a
/// test image) provides.
///
/// Buffers are always a whole, non-zero number of blocks; `lba` is the
/// first block. Implementations should return [`DeviceError::OutOfRange`]
/// or [`DeviceError::BadBuffer`] instead of panicking on bad requests,
/// although this crate never issues such requests itself.
pub trait BlockDevice {
    /// Size of one block in bytes (512 for virtio-blk). Must not change.
    fn block_size(&self) -> u32;
    /// Number of blocks on the device. Must not change while a
    /// [`DiskTable`](crate::DiskTable) uses the device.
    fn block_count(&self) -> u64;
    /// Reads `buf.len() / block_size` blocks starting at `lba` into `buf`.
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// Writes `buf.len() / block_size` blocks starting at `lba`. The data
    /// is durable only after [`flush`](Self::flush).
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError>;
    /// Makes every completed write durable (virtio-blk `VIRTIO_BLK_T_FLUSH`).
    fn flush(&mut self) -> Result<(), DeviceError>;
}

impl<D: BlockDevice + ?Sized> BlockDevice for &mut D {
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }
    fn block_count(&self) -> u64 {
        (**self).block_count()
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        (**self).read_blocks(lba, buf)
    }
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError> {
        (**self).write_blocks(lba, buf)
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        (**self).flush()
    }
}

/// A block device held in memory: blank test images, and images built
/// in memory before they are written out.
#[derive(Clone, Debug)]
pub struct MemDevice {
    block_size: u32,
    data: Vec<u8>,
    writes_left: Option<u64>,
    flushes: u64,
}

impl MemDevice {
    /// A zero-filled device of `block_count` blocks of `block_size` bytes.
    ///
    /// # Panics
    ///
    /// If `block_size` is 0 or the total size does not fit in `usize`.
    #[must_use]
    pub fn new(block_size: u32, block_count: u64) -> Self {
        assert!(block_size > 0, "block size must not be zero");
        let len = u64::from(block_size)
            .checked_mul(block_count)
            .and_then(|n| usize::try_from(n).ok())
            .expect("device size overflows usize");
        Self::from_vec(block_size, vec![0; len])
    }

    /// A device over existing image bytes; a partial last block is not
    /// accessible.
    ///
    /// # Panics
    ///
    /// If `block_size` is 0.
    #[must_use]
    pub fn from_vec(block_size: u32, data: Vec<u8>) -> Self {
        assert!(block_size > 0, "block size must not be zero");
        Self {
            block_size,
            data,
            writes_left: None,
            flushes: 0,
        }
    }

    /// The image bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The image bytes, writable (tests use this to corrupt tables).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Consumes the device and returns its image bytes.
    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// Simulates a crash: after `budget` more successful block writes,
    /// every write fails with [`DeviceError::Io`] and changes nothing
    /// (`None` lifts the limit).
    pub fn fail_writes_after(&mut self, budget: Option<u64>) {
        self.writes_left = budget;
    }

    /// How many times [`BlockDevice::flush`] was called.
    #[must_use]
    pub fn flush_count(&self) -> u64 {
        self.flushes
    }

    fn byte_range(&self, lba: u64, len: usize) -> Result<core::ops::Range<usize>, DeviceError> {
        let bs = usize::try_from(self.block_size).map_err(|_| DeviceError::BadBuffer)?;
        if len == 0 || !len.is_multiple_of(bs) {
            return Err(DeviceError::BadBuffer);
        }
        let start = usize::try_from(lba)
            .ok()
            .and_then(|l| l.checked_mul(bs))
            .ok_or(DeviceError::OutOfRange)?;
        let end = start.checked_add(len).ok_or(DeviceError::OutOfRange)?;
        let whole = self.data.len() - self.data.len() % bs;
        if end > whole {
            return Err(DeviceError::OutOfRange);
        }
        Ok(start..end)
    }
}

impl BlockDevice for MemDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn block_count(&self) -> u64 {
        (self.data.len() as u64) / u64::from(self.block_size)
    }

    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let range = self.byte_range(lba, buf.len())?;
        buf.copy_from_slice(&self.data[range]);
        Ok(())
    }

    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let range = self.byte_range(lba, buf.len())?;
        match &mut self.writes_left {
            Some(0) => return Err(DeviceError::Io),
            Some(n) => *n -= 1,
            None => {}
        }
        self.data[range].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.flushes += 1;
        Ok(())
    }
}

/// Adapts a [`BlockDevice`] to `gpt_disk_io`'s [`BlockIo`]. The block
/// size has been validated by the caller.
pub(crate) struct Io<'a, D: BlockDevice + ?Sized> {
    pub(crate) dev: &'a mut D,
    pub(crate) block_size: BlockSize,
}

impl<D: BlockDevice + ?Sized> BlockIo for Io<'_, D> {
    type Error = DeviceError;

    fn block_size(&self) -> BlockSize {
        self.block_size
    }

    fn num_blocks(&mut self) -> Result<u64, DeviceError> {
        Ok(self.dev.block_count())
    }

    fn read_blocks(&mut self, start_lba: Lba, dst: &mut [u8]) -> Result<(), DeviceError> {
        self.dev.read_blocks(start_lba.to_u64(), dst)
    }

    fn write_blocks(&mut self, start_lba: Lba, src: &[u8]) -> Result<(), DeviceError> {
        self.dev.write_blocks(start_lba.to_u64(), src)
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.dev.flush()
    }
}
