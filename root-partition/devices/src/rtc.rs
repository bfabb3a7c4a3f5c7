//! The MC146818 CMOS real-time clock's date (as a PC's RTC at ports
//! 0x70/0x71 holds it) turned into the time formats the integration
//! services carry. The register reads are the caller's; this is the
//! arithmetic: BCD or binary fields, 12- or 24-hour mode, and the date to
//! a count of days (H. Hinnant's `days_from_civil`, public domain).

/// Seconds between 1601-01-01 (the Windows FILETIME epoch the time sync
/// service uses) and 1970-01-01.
pub const FILETIME_UNIX_OFFSET_SECS: u64 = 11_644_473_600;

/// RTC register B: 24-hour mode.
pub const STATUS_B_24_HOUR: u8 = 1 << 1;
/// RTC register B: fields are binary (else BCD).
pub const STATUS_B_BINARY: u8 = 1 << 2;

/// The raw RTC fields (registers 0x00 seconds, 0x02 minutes, 0x04 hours,
/// 0x07 day, 0x08 month, 0x09 year, 0x32 century) and register B.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcFields {
    /// Seconds.
    pub seconds: u8,
    /// Minutes.
    pub minutes: u8,
    /// Hours (bit 7 = PM in 12-hour mode).
    pub hours: u8,
    /// Day of the month.
    pub day: u8,
    /// Month.
    pub month: u8,
    /// Year within the century.
    pub year: u8,
    /// Century (0 if the machine has no century register: 20 is assumed).
    pub century: u8,
    /// Status register B.
    pub status_b: u8,
}

/// Why the RTC's fields are not a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRtc;

fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0xF);
    (hi <= 9 && lo <= 9).then_some(hi * 10 + lo)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl RtcFields {
    /// Seconds since 1970-01-01 UTC (the RTC keeps UTC on our machines).
    pub fn unix_seconds(&self) -> Result<u64, BadRtc> {
        let binary = self.status_b & STATUS_B_BINARY != 0;
        let field = |v: u8| if binary { Some(v) } else { from_bcd(v) };
        let pm = self.hours & 0x80 != 0;
        let mut hours = field(self.hours & 0x7F).ok_or(BadRtc)?;
        if self.status_b & STATUS_B_24_HOUR == 0 {
            // 12-hour mode: 12 AM is 0, 12 PM is 12.
            if !(1..=12).contains(&hours) {
                return Err(BadRtc);
            }
            hours = (hours % 12) + if pm { 12 } else { 0 };
        }
        let seconds = field(self.seconds).ok_or(BadRtc)?;
        let minutes = field(self.minutes).ok_or(BadRtc)?;
        let day = field(self.day).ok_or(BadRtc)?;
        let month = field(self.month).ok_or(BadRtc)?;
        let year = field(self.year).ok_or(BadRtc)?;
        let century = match self.century {
            0 => 20,
            c => field(c).ok_or(BadRtc)?,
        };
        if seconds > 59
            || minutes > 59
            || hours > 23
            || !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || year > 99
        {
            return Err(BadRtc);
        }
        let full_year = century as i64 * 100 + year as i64;
        let days = days_from_civil(full_year, month as u32, day as u32);
        let secs = days * 86_400 + hours as i64 * 3600 + minutes as i64 * 60 + seconds as i64;
        u64::try_from(secs).map_err(|_| BadRtc)
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01:
/// (year, month 1-12, day 1-31) (H. Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn to_bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// A child's CMOS RTC (MC146818 at ports 0x70/0x71): the date and time
/// are the host's (read whenever the guest reads them), in BCD and 24-hour
/// mode as a PC BIOS leaves them; no update is ever in progress, no alarm
/// or periodic interrupt is raised. The guest may keep bytes in the other
/// registers (its NVRAM); writes to the clock registers are ignored (the
/// child cannot move the host's time).
#[derive(Debug, Clone)]
pub struct CmosRtc {
    index: u8,
    nvram: [u8; 128],
}

impl Default for CmosRtc {
    fn default() -> Self {
        Self::new()
    }
}

/// Status register A: divider 32.768 kHz, rate 1024 Hz, no update in progress.
const STATUS_A: u8 = 0x26;
/// Status register B: 24-hour, BCD, no interrupts enabled.
const STATUS_B: u8 = STATUS_B_24_HOUR;
/// Status register D: the RTC's power is good.
const STATUS_D: u8 = 0x80;

impl CmosRtc {
    /// Power-on state.
    pub fn new() -> Self {
        Self {
            index: 0,
            nvram: [0; 128],
        }
    }

    /// A write to port 0x70 (index; bit 7 is the NMI mask, ignored).
    pub fn select(&mut self, value: u8) {
        self.index = value & 0x7F;
    }

    /// A read of port 0x71 at `unix_seconds` (UTC).
    pub fn read(&self, unix_seconds: u64) -> u8 {
        let days = (unix_seconds / 86_400) as i64;
        let secs = (unix_seconds % 86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let year = year.clamp(0, 9999) as u32;
        match self.index {
            0x00 => to_bcd(secs % 60),
            0x02 => to_bcd(secs / 60 % 60),
            0x04 => to_bcd(secs / 3600),
            // Day of the week, 1 = Sunday (1970-01-01 was a Thursday).
            0x06 => to_bcd(((days + 4).rem_euclid(7) + 1) as u32),
            0x07 => to_bcd(day),
            0x08 => to_bcd(month),
            0x09 => to_bcd(year % 100),
            0x32 => to_bcd(year / 100),
            0x0A => STATUS_A,
            0x0B => STATUS_B,
            0x0C => 0,
            0x0D => STATUS_D,
            i => self.nvram[i as usize],
        }
    }

    /// A write of port 0x71.
    pub fn write(&mut self, value: u8) {
        match self.index {
            0x00..=0x0D | 0x32 => {}
            i => self.nvram[i as usize] = value,
        }
    }
}

/// 100 ns units since 1601-01-01 UTC (FILETIME) of a Unix time.
pub fn filetime_from_unix(unix_seconds: u64, nanos: u32) -> u64 {
    (unix_seconds + FILETIME_UNIX_OFFSET_SECS) * 10_000_000 + u64::from(nanos / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bcd(status_b: u8) -> RtcFields {
        // 2026-11-28 09:04:27 in BCD.
        RtcFields {
            seconds: 0x27,
            minutes: 0x04,
            hours: 0x09,
            day: 0x28,
            month: 0x11,
            year: 0x26,
            century: 0x20,
            status_b,
        }
    }

    #[test]
    fn bcd_24_hour_date_converts() {
        // date -u -d '2026-11-28 09:04:27' +%s
        assert_eq!(bcd(STATUS_B_24_HOUR).unix_seconds(), Ok(1_795_856_667));
    }

    #[test]
    fn binary_and_12_hour_forms_agree() {
        let b = RtcFields {
            seconds: 27,
            minutes: 4,
            hours: 9,
            day: 28,
            month: 11,
            year: 26,
            century: 20,
            status_b: STATUS_B_BINARY | STATUS_B_24_HOUR,
        };
        assert_eq!(b.unix_seconds(), Ok(1_795_856_667));
        // 9 PM in 12-hour BCD mode.
        let pm = RtcFields {
            hours: 0x89,
            ..bcd(0)
        };
        assert_eq!(pm.unix_seconds(), Ok(1_795_856_667 + 12 * 3600));
        let midnight = RtcFields {
            hours: 0x12,
            ..bcd(0)
        };
        assert_eq!(midnight.unix_seconds(), Ok(1_795_856_667 - 9 * 3600));
    }

    #[test]
    fn nonsense_is_refused() {
        assert_eq!(
            RtcFields {
                month: 0x13,
                ..bcd(2)
            }
            .unix_seconds(),
            Err(BadRtc)
        );
        assert_eq!(
            RtcFields {
                seconds: 0x5A,
                ..bcd(2)
            }
            .unix_seconds(),
            Err(BadRtc)
        );
        assert_eq!(
            RtcFields {
                hours: 0x00,
                ..bcd(0)
            }
            .unix_seconds(),
            Err(BadRtc)
        );
    }

    #[test]
    fn the_cmos_model_reads_back_as_the_same_time() {
        let mut rtc = CmosRtc::new();
        let t = 1_795_856_667; // 2026-11-28 09:04:27 UTC, a Saturday
        fn at(rtc: &mut CmosRtc, i: u8, t: u64) -> u8 {
            rtc.select(i | 0x80);
            rtc.read(t)
        }
        let read = |i: u8| at(&mut rtc.clone(), i, t);
        let fields = RtcFields {
            seconds: read(0),
            minutes: read(2),
            hours: read(4),
            day: read(7),
            month: read(8),
            year: read(9),
            century: read(0x32),
            status_b: read(0x0B),
        };
        assert_eq!(fields.unix_seconds(), Ok(t));
        assert_eq!(read(6), 7, "Saturday");
        assert_eq!(read(0x0A) & 0x80, 0, "no update in progress");
        assert_eq!(read(0x0D), 0x80);
        // NVRAM keeps bytes; the clock ignores writes.
        rtc.select(0x40);
        rtc.write(0xAB);
        rtc.select(0x00);
        rtc.write(0x59);
        assert_eq!(at(&mut rtc, 0x40, t), 0xAB);
        assert_eq!(at(&mut rtc, 0x00, t), 0x27);
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_468i64, -1, 0, 59, 60, 11_016, 11_017, 20_785, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn epochs() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(filetime_from_unix(0, 0), 116_444_736_000_000_000);
    }
}
