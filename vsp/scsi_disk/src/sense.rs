//! SCSI status, sense keys, additional sense codes and fixed-format sense
//! data (SPC-4 §4.5.3, response code 0x70; sense keys §4.5.6 table 48;
//! ASC/ASCQ assignments annex D).

/// Bytes of fixed-format sense data this disk returns (additional sense
/// length 10).
pub const SENSE_LEN: usize = 18;

/// SCSI status byte (SAM-5 §5.3). Open: any value is representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScsiStatus(pub u8);

impl ScsiStatus {
    /// GOOD.
    pub const GOOD: Self = Self(0x00);
    /// CHECK CONDITION: the sense data says why.
    pub const CHECK_CONDITION: Self = Self(0x02);
    /// BUSY.
    pub const BUSY: Self = Self(0x08);
}

/// Sense key (SPC-4 §4.5.6). Open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenseKey(pub u8);

impl SenseKey {
    /// NO SENSE.
    pub const NO_SENSE: Self = Self(0x0);
    /// NOT READY.
    pub const NOT_READY: Self = Self(0x2);
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: Self = Self(0x3);
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: Self = Self(0x4);
    /// ILLEGAL REQUEST: the command or its parameters are wrong.
    pub const ILLEGAL_REQUEST: Self = Self(0x5);
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: Self = Self(0x6);
    /// DATA PROTECT (write-protected medium).
    pub const DATA_PROTECT: Self = Self(0x7);
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: Self = Self(0xB);
}

/// Additional sense code and qualifier (SPC-4 annex D).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Asc(pub u8, pub u8);

impl Asc {
    /// 00/00 NO ADDITIONAL SENSE INFORMATION.
    pub const NONE: Self = Self(0x00, 0x00);
    /// 04/00 LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
    pub const NOT_READY: Self = Self(0x04, 0x00);
    /// 0C/00 WRITE ERROR.
    pub const WRITE_ERROR: Self = Self(0x0C, 0x00);
    /// 11/00 UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: Self = Self(0x11, 0x00);
    /// 1A/00 PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH_ERROR: Self = Self(0x1A, 0x00);
    /// 20/00 INVALID COMMAND OPERATION CODE.
    pub const INVALID_COMMAND_OPERATION_CODE: Self = Self(0x20, 0x00);
    /// 21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Self = Self(0x21, 0x00);
    /// 24/00 INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Self = Self(0x24, 0x00);
    /// 27/00 WRITE PROTECTED.
    pub const WRITE_PROTECTED: Self = Self(0x27, 0x00);
    /// 39/00 SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Self = Self(0x39, 0x00);
    /// 44/00 INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: Self = Self(0x44, 0x00);
}

/// Where in the CDB an invalid field is (the sense-key-specific field
/// pointer, SPC-4 §4.5.2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// Byte of the CDB.
    pub byte: u16,
    /// Bit in that byte (the highest bit of the field), if known.
    pub bit: Option<u8>,
}

/// Fixed-format sense data (response code 0x70, current error).
pub fn fixed(key: SenseKey, asc: Asc, field: Option<FieldPointer>) -> [u8; SENSE_LEN] {
    let mut s = [0u8; SENSE_LEN];
    s[0] = 0x70;
    s[2] = key.0 & 0x0F;
    s[7] = (SENSE_LEN - 8) as u8;
    s[12] = asc.0;
    s[13] = asc.1;
    if let Some(f) = field {
        // SKSV = 1, C/D = 1 (the error is in the CDB), BPV + bit pointer.
        s[15] = 0x80 | 0x40 | f.bit.map_or(0, |b| 0x08 | (b & 7));
        s[16..18].copy_from_slice(&f.byte.to_be_bytes());
    }
    s
}

/// The (key, asc, ascq) of sense data, if it is fixed or descriptor
/// format and long enough.
pub fn decode(sense: &[u8]) -> Option<(SenseKey, Asc)> {
    match sense.first()? & 0x7F {
        0x70 | 0x71 => Some((
            SenseKey(sense.get(2)? & 0x0F),
            Asc(*sense.get(12)?, *sense.get(13)?),
        )),
        0x72 | 0x73 => Some((
            SenseKey(sense.get(1)? & 0x0F),
            Asc(*sense.get(2)?, *sense.get(3)?),
        )),
        _ => None,
    }
}
