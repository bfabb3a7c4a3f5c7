//! What the disk stores its blocks in: a synchronous block device trait
//! and an in-memory implementation for tests.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Why a backend request failed. The disk turns each into sense data
/// ([`crate::ScsiDisk`]); none of them is the guest's fault except
/// [`Self::OutOfRange`], which the disk checks before asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendError {
    /// The device failed the I/O (MEDIUM ERROR for the guest).
    Io,
    /// The blocks are past the device's end (a host bug: the disk checks
    /// ranges first).
    OutOfRange,
    /// A write to a read-only device (DATA PROTECT for the guest).
    ReadOnly,
    /// The device is not available right now (NOT READY for the guest).
    NotReady,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Io => "backend I/O error",
            Self::OutOfRange => "backend asked for blocks past its end",
            Self::ReadOnly => "write to a read-only backend",
            Self::NotReady => "backend not ready",
        })
    }
}

/// A block device: `sector_count` sectors of `sector_size` bytes.
/// Requests are whole sectors: `buf.len()` is a multiple of
/// `sector_size()` and `lba + buf.len() / sector_size()` ≤
/// `sector_count()` (the disk guarantees both).
pub trait BlockBackend {
    /// Bytes per logical block: a power of two from 512 to 65536.
    fn sector_size(&self) -> u32;
    /// Number of logical blocks.
    fn sector_count(&self) -> u64;
    /// True if writes must be refused.
    fn read_only(&self) -> bool;
    /// Read `buf.len()` bytes starting at block `lba`.
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BackendError>;
    /// Write `buf` starting at block `lba`.
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), BackendError>;
    /// Make every acknowledged write durable.
    fn flush(&mut self) -> Result<(), BackendError>;
    /// Read from block `lba` straight into host-physical memory: each
    /// segment (address, bytes) a whole number of sectors, in order, all of
    /// them inside the disk (the caller checks both). `None` if this
    /// backend cannot (the caller then reads into a buffer and copies).
    /// The default cannot.
    fn read_dma(&mut self, lba: u64, segments: &[(u64, usize)]) -> Option<Result<(), BackendError>> {
        let _ = (lba, segments);
        None
    }
    /// Write to block `lba` straight from host-physical memory, segments
    /// as for [`Self::read_dma`]; durable only after [`Self::flush`].
    /// `None` if this backend cannot. The default cannot.
    fn write_dma(&mut self, lba: u64, segments: &[(u64, usize)]) -> Option<Result<(), BackendError>> {
        let _ = (lba, segments);
        None
    }
    /// Start what [`Self::read_dma`] (or, with `write`, [`Self::write_dma`])
    /// does and return at once with a ticket for it; the segments stay the
    /// device's until [`Self::dma_done`] or [`Self::wait_dma`] reports the
    /// ticket finished. `None` if this backend cannot (the caller then uses
    /// the synchronous calls). A backend that starts requests keeps its own
    /// order: its synchronous calls (and `flush`) first wait for every
    /// request it started. The default cannot.
    fn start_dma(
        &mut self,
        lba: u64,
        segments: &[(u64, usize)],
        write: bool,
    ) -> Option<Result<DmaTicket, BackendError>> {
        let _ = (lba, segments, write);
        None
    }
    /// How the request `ticket` ended, once it has (`None`: still running,
    /// or not a ticket of this backend's); each ticket is reported once.
    fn dma_done(&mut self, ticket: DmaTicket) -> Option<Result<(), BackendError>> {
        let _ = ticket;
        None
    }
    /// Wait until the request `ticket` ended and say how (an unknown ticket
    /// is reported as [`BackendError::Io`]).
    fn wait_dma(&mut self, ticket: DmaTicket) -> Result<(), BackendError> {
        let _ = ticket;
        Err(BackendError::Io)
    }
    /// Whether the end of a started request interrupts the host (a device
    /// with a completion interrupt): then a caller with nothing else to do
    /// may sleep until an interrupt instead of asking [`Self::dma_done`]
    /// in a loop. The default does not.
    fn completion_interrupts(&self) -> bool {
        false
    }
}

/// A request [`BlockBackend::start_dma`] started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DmaTicket(pub u64);

/// A disk in memory, for tests: optionally read-only, with injectable
/// failures and a flush counter.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    data: Vec<u8>,
    sector_size: u32,
    /// Refuse writes.
    pub read_only: bool,
    /// Fail every read with this error.
    pub fail_reads: Option<BackendError>,
    /// Fail every write with this error.
    pub fail_writes: Option<BackendError>,
    /// Fail every flush with this error.
    pub fail_flush: Option<BackendError>,
    /// Flushes so far.
    pub flushes: u64,
}

impl MemoryBackend {
    /// `sectors` zeroed sectors of `sector_size` bytes.
    pub fn new(sector_size: u32, sectors: u64) -> Self {
        let len = (sector_size as u64).saturating_mul(sectors) as usize;
        Self {
            data: vec![0; len],
            sector_size,
            read_only: false,
            fail_reads: None,
            fail_writes: None,
            fail_flush: None,
            flushes: 0,
        }
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The stored bytes, writable (to set up tests).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    fn range(&self, lba: u64, len: usize) -> Result<core::ops::Range<usize>, BackendError> {
        let start = lba
            .checked_mul(self.sector_size as u64)
            .ok_or(BackendError::OutOfRange)?;
        let end = start.checked_add(len as u64).ok_or(BackendError::OutOfRange)?;
        if end > self.data.len() as u64 || !len.is_multiple_of(self.sector_size as usize) {
            return Err(BackendError::OutOfRange);
        }
        Ok(start as usize..end as usize)
    }
}

impl BlockBackend for MemoryBackend {
    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn sector_count(&self) -> u64 {
        self.data.len() as u64 / self.sector_size as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        if let Some(e) = self.fail_reads {
            return Err(e);
        }
        let r = self.range(lba, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::ReadOnly);
        }
        if let Some(e) = self.fail_writes {
            return Err(e);
        }
        let r = self.range(lba, buf.len())?;
        self.data[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        if let Some(e) = self.fail_flush {
            return Err(e);
        }
        self.flushes += 1;
        Ok(())
    }
}
