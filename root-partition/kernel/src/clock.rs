//! Wall-clock time for the integration services' time sync: the CMOS RTC
//! (ports 0x70/0x71, the root's own device) read once at boot, plus the
//! root's timer ticks since.

use crate::timer;
use devices::rtc::{self, RtcFields};
use kernel_x86::arch::Port;
use spin::Once;

/// (FILETIME at boot, tick it was read at); `None` if the RTC made no sense.
static BOOT_TIME: Once<Option<(u64, u64)>> = Once::new();

fn cmos(register: u8) -> u8 {
    // SAFETY: the CMOS index/data ports belong to the root's own RTC; NMI
    // stays enabled (bit 7 clear) and only date registers are read.
    unsafe {
        Port::new(0x70).write8(register);
        Port::new(0x71).read8()
    }
}

fn read_fields() -> RtcFields {
    // Wait out an update in progress (register A bit 7), bounded.
    for _ in 0..100_000 {
        if cmos(0x0A) & 0x80 == 0 {
            break;
        }
    }
    RtcFields {
        seconds: cmos(0x00),
        minutes: cmos(0x02),
        hours: cmos(0x04),
        day: cmos(0x07),
        month: cmos(0x08),
        year: cmos(0x09),
        century: cmos(0x32),
        status_b: cmos(0x0B),
    }
}

/// Read the RTC (twice, until two reads agree, so an update between the
/// fields cannot tear them). Call once at boot.
pub fn init() {
    BOOT_TIME.call_once(|| {
        let mut fields = read_fields();
        for _ in 0..4 {
            let again = read_fields();
            if again == fields {
                break;
            }
            fields = again;
        }
        match fields.unix_seconds() {
            Ok(s) => Some((rtc::filetime_from_unix(s, 0), timer::ticks())),
            Err(_) => {
                crate::println!("root: the RTC holds no valid date ({fields:?}): time sync is off");
                None
            }
        }
    });
}

/// Now, in 100 ns units since 1601-01-01 UTC, if the RTC gave a date.
pub fn filetime_now() -> Option<u64> {
    let (at_boot, tick) = (*BOOT_TIME.get()?)?;
    let elapsed_ticks = timer::ticks().saturating_sub(tick);
    Some(at_boot + elapsed_ticks * (10_000_000 / timer::HZ))
}

/// Now, in seconds since 1970-01-01 UTC, if the RTC gave a date.
pub fn unix_now() -> Option<u64> {
    let ft = filetime_now()?;
    Some((ft / 10_000_000).saturating_sub(rtc::FILETIME_UNIX_OFFSET_SECS))
}
