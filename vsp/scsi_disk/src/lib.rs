//! A SCSI disk target over a block backend: the commands a Linux SCSI disk
//! issues, with sense data for everything else.
//!
//! [`ScsiDisk::execute`] takes a CDB, the data the initiator sent and the
//! size of the initiator's data-in buffer, and returns a [`ScsiResult`]:
//! status, fixed-format sense data on CHECK CONDITION, and the data-in
//! bytes (never more than the buffer holds). For a backend that completes
//! later, [`ScsiDisk::plan`] decides a command without touching the
//! backend and returns either the finished result or an [`IoRequest`]
//! value; [`ScsiDisk::complete_io`] turns the backend's answer into the
//! result.
//!
//! Commands (what Linux 6.1 `drivers/scsi/sd.c`, `scsi_scan.c` and
//! `scsi.c` send to a disk behind `hv_storvsc`): TEST UNIT READY, REQUEST
//! SENSE, INQUIRY (standard data and VPD pages 0x00, 0x80, 0x83, 0xB0,
//! 0xB1, 0xB2), READ CAPACITY(10/16), MODE SENSE(6/10) (caching page 0x08,
//! control page 0x0A, all pages 0x3F; WP and DPOFUA in the header), REPORT
//! LUNS, SYNCHRONIZE CACHE(10/16), START STOP UNIT, READ and WRITE
//! (6/10/12/16, FUA honoured by a flush). Anything else — MODE SELECT,
//! WRITE SAME, UNMAP, VERIFY, REPORT SUPPORTED OPERATION CODES... — ends in
//! CHECK CONDITION, ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE
//! (20/00), which Linux takes as "not supported" (sd's `sd_done` disables
//! WRITE SAME and discard on 20/00 or 24/00). Layouts from SPC-4 (INQUIRY
//! §6.6, VPD §7.8, MODE SENSE §6.13-14 and §7.5, REPORT LUNS §6.33,
//! REQUEST SENSE §6.39, sense data §4.5) and SBC-3 (READ CAPACITY §5.15-16,
//! READ/WRITE §5.8-5.13/§5.32-35, SYNCHRONIZE CACHE §5.22-23, START STOP
//! UNIT §5.25, block limits §6.5.3, block device characteristics §6.5.2,
//! logical block provisioning §6.5.4, caching mode page §6.4.5); behaviour
//! checked against microsoft/openvmm `vm/devices/storage/scsidisk`.
//! Written fresh.
//!
//! Every CDB byte is guest data: fields are checked (INVALID FIELD IN CDB
//! with a sense-key-specific field pointer, LBA OUT OF RANGE for blocks
//! past the end), buffers shorter than a transfer are refused, and nothing
//! panics or reads past a buffer. Allocations are bounded by the buffers
//! the caller passed in, never by a CDB field.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod backend;
pub mod fuzzing;
pub mod sense;

pub use backend::{BackendError, BlockBackend, DmaTicket, MemoryBackend};
pub use sense::{Asc, FieldPointer, SENSE_LEN, ScsiStatus, SenseKey};

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Operation codes this disk knows (SPC-4 / SBC-3 names).
pub mod op {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ(6).
    pub const READ_6: u8 = 0x08;
    /// WRITE(6).
    pub const WRITE_6: u8 = 0x0A;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SELECT(6) (refused).
    pub const MODE_SELECT_6: u8 = 0x15;
    /// MODE SENSE(6).
    pub const MODE_SENSE_6: u8 = 0x1A;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1B;
    /// READ CAPACITY(10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10).
    pub const READ_10: u8 = 0x28;
    /// WRITE(10).
    pub const WRITE_10: u8 = 0x2A;
    /// SYNCHRONIZE CACHE(10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// WRITE SAME(10) (refused).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// UNMAP (refused).
    pub const UNMAP: u8 = 0x42;
    /// MODE SENSE(10).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// READ(16).
    pub const READ_16: u8 = 0x88;
    /// WRITE(16).
    pub const WRITE_16: u8 = 0x8A;
    /// SYNCHRONIZE CACHE(16).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// WRITE SAME(16) (refused).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN(16); service action 0x10 is READ CAPACITY(16).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xA0;
    /// READ(12).
    pub const READ_12: u8 = 0xA8;
    /// WRITE(12).
    pub const WRITE_12: u8 = 0xAA;
    /// SERVICE ACTION IN(16) service action: READ CAPACITY(16).
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
}

/// VPD pages this disk returns, ascending (the order page 0x00 lists).
pub const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

/// Bytes of the standard INQUIRY data (additional length 31, SPC-4
/// §6.6.2: the 36 bytes every initiator reads first).
pub const INQUIRY_LEN: usize = 36;

/// Who this disk says it is, and the few properties it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// T10 vendor identification, ASCII, space padded. Default "Msft",
    /// as Hyper-V: Linux's storvsc then applies the quirks it knows for
    /// Hyper-V disks (`storvsc_device_configure`).
    pub vendor: [u8; 8],
    /// Product identification, ASCII, space padded.
    pub product: [u8; 16],
    /// Product revision level, ASCII, space padded.
    pub revision: [u8; 4],
    /// Unit serial number (VPD 0x80, and the T10 designator of VPD 0x83);
    /// printable ASCII, at most 64 bytes are reported.
    pub serial: String,
    /// The 60-bit locally administered value of the NAA designator in VPD
    /// 0x83 (NAA 3h, SPC-4 §7.8.6.6.4): Linux's `wwn-0x3...` name. Give
    /// every disk its own.
    pub naa_local_id: u64,
    /// This disk's LUN (what REPORT LUNS lists).
    pub lun: u16,
    /// Logical blocks per physical block, as a power of two (READ
    /// CAPACITY(16) byte 13).
    pub physical_block_exponent: u8,
    /// Medium rotation rate (VPD 0xB1): 1 = non-rotating (Linux then
    /// marks the queue non-rotational), 0 = not reported.
    pub rotation_rate: u16,
    /// Largest READ/WRITE in logical blocks (VPD 0xB0 MAXIMUM TRANSFER
    /// LENGTH); 0 = no limit reported.
    pub max_transfer_blocks: u32,
    /// Report a volatile write cache (caching page WCE): Linux then sends
    /// SYNCHRONIZE CACHE for flushes and FUA for its journal.
    pub write_cache: bool,
}

impl DiskConfig {
    /// Hyper-V's identity ("Msft", "Virtual Disk", "1.0") with this serial
    /// and NAA value, LUN 0, a write cache, non-rotating, 256 KiB
    /// transfers at 512-byte blocks.
    pub fn new(serial: &str, naa_local_id: u64) -> Self {
        Self {
            vendor: *b"Msft    ",
            product: *b"Virtual Disk    ",
            revision: *b"1.0 ",
            serial: String::from(serial),
            naa_local_id,
            lun: 0,
            physical_block_exponent: 0,
            rotation_rate: 1,
            max_transfer_blocks: 512,
            write_cache: true,
        }
    }

    fn serial_bytes(&self) -> &[u8] {
        let b = self.serial.as_bytes();
        &b[..b.len().min(64)]
    }
}

/// Why a disk could not be built (the host's configuration is wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// The backend's sector size is not a power of two in 512..=65536.
    SectorSize(u32),
    /// The backend has no sectors.
    Empty,
    /// The serial has a byte outside printable ASCII.
    Serial,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SectorSize(s) => write!(f, "host configured a backend with {s}-byte sectors"),
            Self::Empty => write!(f, "host configured an empty backend"),
            Self::Serial => write!(f, "host configured a serial that is not printable ASCII"),
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResult {
    /// GOOD or CHECK CONDITION.
    pub status: ScsiStatus,
    /// Fixed-format sense data, present exactly with CHECK CONDITION.
    pub sense: Option<[u8; SENSE_LEN]>,
    /// Bytes for the initiator (never more than its buffer holds; empty
    /// on CHECK CONDITION).
    pub data_in: Vec<u8>,
    /// Bytes of the initiator's data-out buffer the command used.
    pub data_out_used: usize,
}

impl ScsiResult {
    /// GOOD with `data_in`.
    pub fn good(data_in: Vec<u8>) -> Self {
        Self {
            status: ScsiStatus::GOOD,
            sense: None,
            data_in,
            data_out_used: 0,
        }
    }

    /// CHECK CONDITION with fixed sense data.
    pub fn check(key: SenseKey, asc: Asc, field: Option<FieldPointer>) -> Self {
        Self {
            status: ScsiStatus::CHECK_CONDITION,
            sense: Some(sense::fixed(key, asc, field)),
            data_in: Vec::new(),
            data_out_used: 0,
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB, pointing at `byte` (and
    /// `bit`, the field's highest bit).
    pub fn invalid_field(byte: u16, bit: Option<u8>) -> Self {
        Self::check(
            SenseKey::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_CDB,
            Some(FieldPointer { byte, bit }),
        )
    }

    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (field pointer at
    /// byte 0).
    pub fn invalid_opcode() -> Self {
        Self::check(
            SenseKey::ILLEGAL_REQUEST,
            Asc::INVALID_COMMAND_OPERATION_CODE,
            Some(FieldPointer {
                byte: 0,
                bit: Some(7),
            }),
        )
    }

    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub fn lba_out_of_range() -> Self {
        Self::check(SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE, None)
    }

    /// True for GOOD.
    pub fn is_good(&self) -> bool {
        self.status == ScsiStatus::GOOD
    }

    /// Bytes moved in either direction.
    pub fn transferred(&self) -> usize {
        self.data_in.len() + self.data_out_used
    }

    /// Bytes of a `requested`-byte buffer the command did not move.
    pub fn residual(&self, requested: usize) -> usize {
        requested.saturating_sub(self.transferred())
    }
}

/// What a backend request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Read blocks into the data-in buffer.
    Read,
    /// Write blocks from the data-out buffer; with `fua`, flush after.
    Write {
        /// Force unit access: durable before GOOD.
        fua: bool,
    },
    /// Make the cache durable.
    Flush,
}

/// A checked backend request: blocks inside the disk, buffer sizes
/// already checked against the initiator's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRequest {
    /// The operation.
    pub op: IoOp,
    /// First block.
    pub lba: u64,
    /// Blocks (0 for a flush of everything, or a zero-length transfer).
    pub blocks: u64,
    /// Bytes moved (`blocks * sector_size` for reads and writes).
    pub bytes: usize,
}

/// What [`ScsiDisk::plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The command is finished.
    Done(ScsiResult),
    /// The backend must do this first ([`ScsiDisk::complete_io`]).
    Io(IoRequest),
}

/// A SCSI direct-access block device (peripheral type 0) over a backend.
pub struct ScsiDisk<B: BlockBackend> {
    backend: B,
    config: DiskConfig,
    sector_size: u32,
    sector_count: u64,
    read_only: bool,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// CDB length for an operation code's group (SPC-4 §4.2.5.1); `None` for
/// the reserved and vendor-specific groups.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Truncate `data` to the allocation length and the initiator's buffer.
fn truncated(mut data: Vec<u8>, alloc: usize, capacity: usize) -> ScsiResult {
    data.truncate(alloc.min(capacity));
    ScsiResult::good(data)
}

/// REPORT LUNS parameter data listing `luns` (SPC-4 §6.33.2; single-level
/// LUNs in peripheral device addressing for LUN < 256, flat space above,
/// SAM-5 §4.7), truncated to `alloc` and `capacity`. For a controller that
/// answers REPORT LUNS for all its disks.
pub fn report_luns(cdb: &[u8], luns: &[u16], capacity: usize) -> ScsiResult {
    if cdb.len() < 12 {
        return ScsiResult::invalid_field(0, None);
    }
    let select = cdb[2];
    let alloc = be32(cdb, 6) as usize;
    if alloc < 16 {
        // SPC-4 §6.33.1: an allocation length below 16 is an error.
        return ScsiResult::invalid_field(6, Some(7));
    }
    let listed: &[u16] = match select {
        0x00 | 0x02 => luns,
        // Well-known LUNs only: this target has none.
        0x01 => &[],
        _ => return ScsiResult::invalid_field(2, Some(7)),
    };
    let mut data = vec![0u8; 8];
    data[0..4].copy_from_slice(&((listed.len() as u32).saturating_mul(8)).to_be_bytes());
    for &lun in listed {
        let mut e = [0u8; 8];
        if lun < 256 {
            e[1] = lun as u8;
        } else {
            // Flat space addressing: 01b in the top bits, 14-bit LUN.
            e[0..2].copy_from_slice(&(0x4000 | (lun & 0x3FFF)).to_be_bytes());
        }
        data.extend_from_slice(&e);
    }
    truncated(data, alloc, capacity)
}

impl<B: BlockBackend> ScsiDisk<B> {
    /// A disk over `backend` with `config`'s identity.
    pub fn new(backend: B, config: DiskConfig) -> Result<Self, ConfigError> {
        let sector_size = backend.sector_size();
        if !sector_size.is_power_of_two() || !(512..=65536).contains(&sector_size) {
            return Err(ConfigError::SectorSize(sector_size));
        }
        let sector_count = backend.sector_count();
        if sector_count == 0 {
            return Err(ConfigError::Empty);
        }
        if !config.serial.bytes().all(|b| (0x20..0x7F).contains(&b)) {
            return Err(ConfigError::Serial);
        }
        let read_only = backend.read_only();
        Ok(Self {
            backend,
            config,
            sector_size,
            sector_count,
            read_only,
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutable.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The identity.
    pub fn config(&self) -> &DiskConfig {
        &self.config
    }

    /// Logical block size.
    pub fn sector_size(&self) -> u32 {
        self.sector_size
    }

    /// Logical blocks.
    pub fn sector_count(&self) -> u64 {
        self.sector_count
    }

    /// Run one command synchronously: `cdb` as the initiator sent it,
    /// `data_out` the bytes it sent, `data_in_capacity` the size of its
    /// data-in buffer.
    pub fn execute(&mut self, cdb: &[u8], data_out: &[u8], data_in_capacity: usize) -> ScsiResult {
        match self.plan(cdb, data_out.len(), data_in_capacity) {
            Plan::Done(r) => r,
            Plan::Io(req) => self.run_io(&req, data_out),
        }
    }

    /// Perform a planned request on the backend synchronously.
    pub fn run_io(&mut self, req: &IoRequest, data_out: &[u8]) -> ScsiResult {
        match req.op {
            IoOp::Read => {
                let mut buf = vec![0u8; req.bytes];
                let r = self.backend.read(req.lba, &mut buf);
                self.complete_io(req, r, buf)
            }
            IoOp::Write { fua } => {
                // plan() checked data_out holds req.bytes.
                let Some(src) = data_out.get(..req.bytes) else {
                    return ScsiResult::invalid_field(0, None);
                };
                let mut r = self.backend.write(req.lba, src);
                if r.is_ok() && fua {
                    r = self.backend.flush();
                }
                self.complete_io(req, r, Vec::new())
            }
            IoOp::Flush => {
                let r = self.backend.flush();
                self.complete_io(req, r, Vec::new())
            }
        }
    }

    /// The result of a planned request given the backend's outcome (and,
    /// for a read, the bytes it read).
    pub fn complete_io(
        &self,
        req: &IoRequest,
        outcome: Result<(), BackendError>,
        data: Vec<u8>,
    ) -> ScsiResult {
        match outcome {
            Ok(()) => match req.op {
                IoOp::Read => {
                    let mut data = data;
                    data.truncate(req.bytes);
                    ScsiResult::good(data)
                }
                IoOp::Write { .. } => ScsiResult {
                    data_out_used: req.bytes,
                    ..ScsiResult::good(Vec::new())
                },
                IoOp::Flush => ScsiResult::good(Vec::new()),
            },
            Err(e) => {
                let (key, asc) = match (e, req.op) {
                    (BackendError::ReadOnly, _) => (SenseKey::DATA_PROTECT, Asc::WRITE_PROTECTED),
                    (BackendError::NotReady, _) => (SenseKey::NOT_READY, Asc::NOT_READY),
                    (BackendError::OutOfRange, _) => (SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE),
                    (BackendError::Io, IoOp::Read) => (SenseKey::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR),
                    (BackendError::Io, IoOp::Write { .. }) => (SenseKey::MEDIUM_ERROR, Asc::WRITE_ERROR),
                    (BackendError::Io, IoOp::Flush) => {
                        (SenseKey::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE)
                    }
                };
                ScsiResult::check(key, asc, None)
            }
        }
    }

    /// Decide a command without touching the backend: the finished result,
    /// or the backend request it needs.
    pub fn plan(&mut self, cdb: &[u8], data_out_len: usize, data_in_capacity: usize) -> Plan {
        let Some(&opcode) = cdb.first() else {
            return Plan::Done(ScsiResult::invalid_opcode());
        };
        let Some(len) = cdb_len(opcode) else {
            return Plan::Done(ScsiResult::invalid_opcode());
        };
        if cdb.len() < len {
            // The transport delivered fewer bytes than the opcode's group
            // has: the missing fields are invalid.
            return Plan::Done(ScsiResult::invalid_field(cdb.len() as u16, None));
        }
        let cdb = &cdb[..len];
        // CONTROL byte: NACA = 1 needs ACA, which this target does not
        // support (SPC-4 §4.3.4.4 / SAM-5 §5.9.2).
        if cdb[len - 1] & 0x04 != 0 {
            return Plan::Done(ScsiResult::invalid_field(len as u16 - 1, Some(2)));
        }
        let cap = data_in_capacity;
        let done = Plan::Done;
        match opcode {
            op::TEST_UNIT_READY => done(ScsiResult::good(Vec::new())),
            op::REQUEST_SENSE => done(self.request_sense(cdb, cap)),
            op::INQUIRY => done(self.inquiry(cdb, cap)),
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => done(self.mode_sense(cdb, cap)),
            op::READ_CAPACITY_10 => done(self.read_capacity_10(cdb, cap)),
            op::SERVICE_ACTION_IN_16 => match cdb[1] & 0x1F {
                op::SA_READ_CAPACITY_16 => done(self.read_capacity_16(cdb, cap)),
                _ => done(ScsiResult::invalid_field(1, Some(4))),
            },
            op::REPORT_LUNS => done(report_luns(cdb, &[self.config.lun], cap)),
            op::START_STOP_UNIT => self.start_stop(cdb),
            op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => self.synchronize_cache(cdb),
            op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => self.rw(cdb, false, data_out_len, cap),
            op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => self.rw(cdb, true, data_out_len, cap),
            _ => done(ScsiResult::invalid_opcode()),
        }
    }

    // -- REQUEST SENSE (SPC-4 §6.39) --------------------------------------

    fn request_sense(&self, cdb: &[u8], cap: usize) -> ScsiResult {
        let alloc = cdb[4] as usize;
        // Sense is reported with each command (autosense), so nothing is
        // pending: NO SENSE, in the format asked (DESC bit).
        let data = if cdb[1] & 0x01 != 0 {
            vec![0x72, 0, 0, 0, 0, 0, 0, 0]
        } else {
            sense::fixed(SenseKey::NO_SENSE, Asc::NONE, None).to_vec()
        };
        truncated(data, alloc, cap)
    }

    // -- INQUIRY (SPC-4 §6.6, VPD §7.8) -----------------------------------

    fn inquiry(&self, cdb: &[u8], cap: usize) -> ScsiResult {
        let evpd = cdb[1] & 0x01 != 0;
        if cdb[1] & 0xFE != 0 {
            // CMDDT (obsolete) and reserved bits.
            return ScsiResult::invalid_field(1, Some(7));
        }
        let page = cdb[2];
        let alloc = be16(cdb, 3) as usize;
        if !evpd {
            if page != 0 {
                return ScsiResult::invalid_field(2, Some(7));
            }
            return truncated(self.standard_inquiry().to_vec(), alloc, cap);
        }
        let body = match page {
            0x00 => VPD_PAGES.to_vec(),
            0x80 => self.config.serial_bytes().to_vec(),
            0x83 => self.device_identification(),
            0xB0 => self.block_limits(),
            0xB1 => self.block_device_characteristics(),
            0xB2 => vec![0u8; 4],
            _ => return ScsiResult::invalid_field(2, Some(7)),
        };
        let mut data = vec![0x00, page];
        data.extend_from_slice(&(body.len() as u16).to_be_bytes());
        data.extend_from_slice(&body);
        truncated(data, alloc, cap)
    }

    /// The 36 bytes of standard INQUIRY data (SPC-4 §6.6.2).
    pub fn standard_inquiry(&self) -> [u8; INQUIRY_LEN] {
        let mut d = [0u8; INQUIRY_LEN];
        d[0] = 0x00; // qualifier 000b (connected), type 00h (direct access)
        d[1] = 0x00; // RMB = 0: not removable
        d[2] = 0x06; // VERSION: SPC-4
        d[3] = 0x02; // RESPONSE DATA FORMAT 2 (NORMACA = 0, HISUP = 0)
        d[4] = (INQUIRY_LEN - 5) as u8; // ADDITIONAL LENGTH
        d[7] = 0x02; // CMDQUE: tagged queueing (Linux: tagged_supported)
        d[8..16].copy_from_slice(&self.config.vendor);
        d[16..32].copy_from_slice(&self.config.product);
        d[32..36].copy_from_slice(&self.config.revision);
        d
    }

    /// VPD 0x83 designators: NAA locally assigned (binary, 8 bytes) and
    /// T10 vendor ID (ASCII: vendor + serial), both for the logical unit.
    fn device_identification(&self) -> Vec<u8> {
        let mut d = Vec::new();
        // Code set 1 (binary), association 0 (LU), type 3 (NAA), length 8.
        d.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
        let naa = (0x3u64 << 60) | (self.config.naa_local_id & ((1u64 << 60) - 1));
        d.extend_from_slice(&naa.to_be_bytes());
        // Code set 2 (ASCII), association 0, type 1 (T10 vendor ID).
        let serial = self.config.serial_bytes();
        d.extend_from_slice(&[0x02, 0x01, 0x00, (8 + serial.len()) as u8]);
        d.extend_from_slice(&self.config.vendor);
        d.extend_from_slice(serial);
        d
    }

    /// VPD 0xB0 body (page length 0x3C, SBC-3 §6.5.3): transfer limits
    /// only; every UNMAP / WRITE SAME field 0 (not supported).
    fn block_limits(&self) -> Vec<u8> {
        let mut b = vec![0u8; 0x3C];
        // Byte offsets below are from the page start (header = 4 bytes).
        let phys = 1u16 << self.config.physical_block_exponent.min(15);
        b[6 - 4..8 - 4].copy_from_slice(&phys.to_be_bytes()); // OPTIMAL TRANSFER LENGTH GRANULARITY
        b[8 - 4..12 - 4].copy_from_slice(&self.config.max_transfer_blocks.to_be_bytes());
        b
    }

    /// VPD 0xB1 body (page length 0x3C, SBC-3 §6.5.2).
    fn block_device_characteristics(&self) -> Vec<u8> {
        let mut b = vec![0u8; 0x3C];
        b[0..2].copy_from_slice(&self.config.rotation_rate.to_be_bytes());
        b
    }

    // -- READ CAPACITY (SBC-3 §5.15, §5.16) -------------------------------

    fn read_capacity_10(&self, cdb: &[u8], cap: usize) -> ScsiResult {
        // PMI = 0 requires LOGICAL BLOCK ADDRESS = 0 (SBC-3 §5.15.1).
        if cdb[8] & 0x01 == 0 && be32(cdb, 2) != 0 {
            return ScsiResult::invalid_field(2, Some(7));
        }
        let last = (self.sector_count - 1).min(u32::MAX as u64) as u32;
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&last.to_be_bytes());
        d.extend_from_slice(&self.sector_size.to_be_bytes());
        truncated(d, 8, cap)
    }

    fn read_capacity_16(&self, cdb: &[u8], cap: usize) -> ScsiResult {
        if cdb[14] & 0x01 == 0 && be64(cdb, 2) != 0 {
            return ScsiResult::invalid_field(2, Some(7));
        }
        let alloc = be32(cdb, 10) as usize;
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&(self.sector_count - 1).to_be_bytes());
        d[8..12].copy_from_slice(&self.sector_size.to_be_bytes());
        // Byte 12: no protection. Byte 13: logical blocks per physical
        // block exponent. Bytes 14-15: LBPME = LBPRZ = 0, lowest aligned 0.
        d[13] = self.config.physical_block_exponent & 0x0F;
        truncated(d, alloc, cap)
    }

    // -- MODE SENSE (SPC-4 §6.13, §6.14, §7.5) ----------------------------

    fn mode_sense(&self, cdb: &[u8], cap: usize) -> ScsiResult {
        let ten = cdb[0] == op::MODE_SENSE_10;
        let dbd = cdb[1] & 0x08 != 0;
        let llbaa = ten && cdb[1] & 0x10 != 0;
        let pc = cdb[2] >> 6;
        let page = cdb[2] & 0x3F;
        let subpage = cdb[3];
        let alloc = if ten {
            be16(cdb, 7) as usize
        } else {
            cdb[4] as usize
        };
        if pc == 3 {
            return ScsiResult::check(
                SenseKey::ILLEGAL_REQUEST,
                Asc::SAVING_PARAMETERS_NOT_SUPPORTED,
                Some(FieldPointer {
                    byte: 2,
                    bit: Some(7),
                }),
            );
        }
        let changeable = pc == 1;
        let mut pages = Vec::new();
        match (page, subpage) {
            (0x08, 0x00) => pages.extend_from_slice(&self.caching_page(changeable)),
            (0x0A, 0x00) => pages.extend_from_slice(&control_page(changeable)),
            (0x3F, 0x00) | (0x3F, 0xFF) => {
                pages.extend_from_slice(&self.caching_page(changeable));
                pages.extend_from_slice(&control_page(changeable));
            }
            (_, 0x00) => return ScsiResult::invalid_field(2, Some(5)),
            _ => return ScsiResult::invalid_field(3, Some(7)),
        }
        // Device-specific parameter (SBC-3 §6.4.1): WP, DPOFUA.
        let dsp = if self.read_only { 0x80 } else { 0 } | 0x10;
        let mut desc = Vec::new();
        if !dbd {
            if llbaa {
                desc.extend_from_slice(&self.sector_count.to_be_bytes());
                desc.extend_from_slice(&[0; 4]);
                desc.extend_from_slice(&self.sector_size.to_be_bytes());
            } else {
                // Short LBA descriptor of a direct-access device (SBC-3
                // §6.4.2.2): a 32-bit block count, FFFFFFFFh when the disk
                // has more; a reserved byte; a 24-bit block length.
                let blocks = u32::try_from(self.sector_count).unwrap_or(u32::MAX);
                desc.extend_from_slice(&blocks.to_be_bytes());
                desc.push(0);
                desc.extend_from_slice(&self.sector_size.to_be_bytes()[1..]);
            }
        }
        let mut d = Vec::new();
        if ten {
            let total = 8 + desc.len() + pages.len();
            d.extend_from_slice(&((total - 2) as u16).to_be_bytes());
            d.push(0); // medium type
            d.push(dsp);
            d.push(if llbaa && !dbd { 0x01 } else { 0 }); // LONGLBA
            d.push(0);
            d.extend_from_slice(&(desc.len() as u16).to_be_bytes());
        } else {
            let total = 4 + desc.len() + pages.len();
            d.push((total - 1) as u8);
            d.push(0);
            d.push(dsp);
            d.push(desc.len() as u8);
        }
        d.extend_from_slice(&desc);
        d.extend_from_slice(&pages);
        truncated(d, alloc, cap)
    }

    /// Caching mode page (SBC-3 §6.4.5): 20 bytes, WCE per config, RCD 0.
    /// Nothing is changeable (MODE SELECT is refused).
    fn caching_page(&self, changeable: bool) -> [u8; 20] {
        let mut p = [0u8; 20];
        p[0] = 0x08;
        p[1] = 0x12;
        if !changeable && self.config.write_cache {
            p[2] = 0x04; // WCE
        }
        p
    }

    // -- START STOP UNIT, SYNCHRONIZE CACHE -------------------------------

    fn start_stop(&self, cdb: &[u8]) -> Plan {
        let start = cdb[4] & 0x01 != 0;
        let loej = cdb[4] & 0x02 != 0;
        let power_condition = cdb[4] >> 4;
        if loej && !start {
            // Ejecting a fixed medium is not possible (SBC-3 §5.25).
            return Plan::Done(ScsiResult::invalid_field(4, Some(1)));
        }
        if !start && power_condition == 0 {
            // Stopping: write the cache back first; the unit keeps serving
            // (a virtual disk needs no spin-up).
            return Plan::Io(IoRequest {
                op: IoOp::Flush,
                lba: 0,
                blocks: 0,
                bytes: 0,
            });
        }
        Plan::Done(ScsiResult::good(Vec::new()))
    }

    fn synchronize_cache(&self, cdb: &[u8]) -> Plan {
        let (lba, blocks) = if cdb[0] == op::SYNCHRONIZE_CACHE_10 {
            (be32(cdb, 2) as u64, be16(cdb, 7) as u64)
        } else {
            (be64(cdb, 2), be32(cdb, 10) as u64)
        };
        // Blocks = 0 means "to the end" (SBC-3 §5.22.1).
        if lba > self.sector_count
            || (blocks != 0 && lba.checked_add(blocks).is_none_or(|e| e > self.sector_count))
        {
            return Plan::Done(ScsiResult::lba_out_of_range());
        }
        Plan::Io(IoRequest {
            op: IoOp::Flush,
            lba,
            blocks,
            bytes: 0,
        })
    }

    // -- READ / WRITE (SBC-3 §5.8-5.13, §5.32-5.35) -----------------------

    fn rw(&self, cdb: &[u8], write: bool, data_out_len: usize, cap: usize) -> Plan {
        let (lba, blocks, flags_byte, len_at) = match cdb[0] {
            op::READ_6 | op::WRITE_6 => {
                let lba = u32::from_be_bytes([0, cdb[1] & 0x1F, cdb[2], cdb[3]]) as u64;
                // A transfer length of 0 means 256 blocks (SBC-3 §5.10).
                let n = if cdb[4] == 0 { 256 } else { cdb[4] as u64 };
                (lba, n, None, 4)
            }
            op::READ_10 | op::WRITE_10 => (be32(cdb, 2) as u64, be16(cdb, 7) as u64, Some(cdb[1]), 7),
            op::READ_12 | op::WRITE_12 => (be32(cdb, 2) as u64, be32(cdb, 6) as u64, Some(cdb[1]), 6),
            _ => (be64(cdb, 2), be32(cdb, 10) as u64, Some(cdb[1]), 10),
        };
        let mut fua = false;
        if let Some(f) = flags_byte {
            // RDPROTECT/WRPROTECT: no protection information here.
            if f & 0xE0 != 0 {
                return Plan::Done(ScsiResult::invalid_field(1, Some(7)));
            }
            fua = f & 0x08 != 0;
        }
        if lba.checked_add(blocks).is_none_or(|e| e > self.sector_count) {
            return Plan::Done(ScsiResult::lba_out_of_range());
        }
        if write && self.read_only {
            return Plan::Done(ScsiResult::check(
                SenseKey::DATA_PROTECT,
                Asc::WRITE_PROTECTED,
                None,
            ));
        }
        // blocks <= sector_count, and the bytes must fit the initiator's
        // buffer, so the product is bounded by what the caller holds.
        let bytes = blocks.checked_mul(self.sector_size as u64);
        let have = if write { data_out_len } else { cap };
        let Some(bytes) = bytes.filter(|&b| b <= have as u64) else {
            // The initiator's buffer cannot hold the transfer it asked
            // for: refuse it rather than move part of it.
            return Plan::Done(ScsiResult::invalid_field(len_at, Some(7)));
        };
        if blocks == 0 {
            return Plan::Done(ScsiResult::good(Vec::new()));
        }
        let op = if write { IoOp::Write { fua } } else { IoOp::Read };
        Plan::Io(IoRequest {
            op,
            lba,
            blocks,
            bytes: bytes as usize,
        })
    }
}

/// Control mode page (SPC-4 §7.5.8): 12 bytes; QUEUE ALGORITHM MODIFIER 1
/// (unrestricted reordering), everything else 0. Nothing changeable.
fn control_page(changeable: bool) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0] = 0x0A;
    p[1] = 0x0A;
    if !changeable {
        p[3] = 0x10;
    }
    p
}

#[cfg(test)]
mod tests;
