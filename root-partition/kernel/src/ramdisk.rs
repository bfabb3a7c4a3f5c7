//! A RAM-backed block device for a child's synthetic SCSI disk
//! (`create … --ramdisk SIZE`): zeroed root heap, allocated fallibly when
//! the child is created, gone with the child. It stands in until children's
//! disks live on the root's passthrough block devices (`disks` crate).

use alloc::vec::Vec;
use scsi_disk::{BackendError, BlockBackend};

/// Bytes per sector.
const SECTOR: u32 = 512;

/// The disk's bytes.
pub struct RamDisk {
    data: Vec<u8>,
}

impl RamDisk {
    /// `bytes` zeroed bytes (a multiple of 512), or `None` if the root's
    /// heap cannot hold them.
    pub fn new(bytes: u64) -> Option<Self> {
        let len = usize::try_from(bytes).ok().filter(|l| l % SECTOR as usize == 0)?;
        let mut data = Vec::new();
        data.try_reserve_exact(len).ok()?;
        data.resize(len, 0);
        Some(Self { data })
    }

    fn span(&self, lba: u64, len: usize) -> Result<core::ops::Range<usize>, BackendError> {
        let start = lba
            .checked_mul(u64::from(SECTOR))
            .ok_or(BackendError::OutOfRange)?;
        let end = start.checked_add(len as u64).ok_or(BackendError::OutOfRange)?;
        if end > self.data.len() as u64 || !len.is_multiple_of(SECTOR as usize) {
            return Err(BackendError::OutOfRange);
        }
        Ok(start as usize..end as usize)
    }
}

impl BlockBackend for RamDisk {
    fn sector_size(&self) -> u32 {
        SECTOR
    }

    fn sector_count(&self) -> u64 {
        self.data.len() as u64 / u64::from(SECTOR)
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let r = self.span(lba, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), BackendError> {
        let r = self.span(lba, buf.len())?;
        self.data[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}
