//! Poweroff and reset: the I/O ports the FADT names and the values an ACPI
//! guest writes to them, so that hv-core (or the root's worker) can
//! intercept the ports and stop or restart the partition.
//!
//! **Poweroff.** The DSDT's `\_S5` package gives SLP_TYPa = [`S5_SLP_TYP`].
//! On a HW-reduced platform ACPICA's `acpi_hw_extended_sleep`
//! (Linux `drivers/acpi/acpica/hwesleep.c`) powers off with two byte writes:
//!
//! 1. [`WAKE_STATUS`] (0x80, `WAK_STS`, to clear it) to `SLEEP_STATUS_REG`
//!    (default port [`SLEEP_STATUS_PORT`] = 0x401);
//! 2. `((SLP_TYP << 2) & 0x1C) | SLP_EN` = [`POWEROFF_VALUE`] (0x34) to
//!    `SLEEP_CONTROL_REG` (default port [`SLEEP_CONTROL_PORT`] = 0x400).
//!
//! Between them it flushes caches with WBINVD. After step 2 the guest polls
//! the status port for `WAK_STS` (reading 0 keeps it spinning), so the
//! partition should be stopped on the control write. ACPI 6.5 §4.8.3.7 and
//! §7.4.2 define the register layout; Linux only offers `pm_power_off` when
//! both registers and `\_S5` exist (`drivers/acpi/sleep.c`,
//! `acpi_sleep_state_supported`). [`is_poweroff`] recognizes the write.
//!
//! **Reset.** With `RESET_REG_SUP` set and an 8-bit, offset-0 register in
//! system I/O space, Linux's `acpi_reboot` (`drivers/acpi/reboot.c`) writes
//! [`RESET_VALUE`] (0x01) to [`RESET_PORT`] (0x402) as one byte.

use crate::{COM1_PORT, Error};

/// Default port of `SLEEP_CONTROL_REG` (8 bits).
pub const SLEEP_CONTROL_PORT: u16 = 0x400;
/// Default port of `SLEEP_STATUS_REG` (8 bits).
pub const SLEEP_STATUS_PORT: u16 = 0x401;
/// Default port of `RESET_REG` (8 bits).
pub const RESET_PORT: u16 = 0x402;
/// Default `RESET_VALUE`.
pub const RESET_VALUE: u8 = 0x01;

/// SLP_TYP of `\_S5` in the DSDT.
pub const S5_SLP_TYP: u8 = 5;
/// `SLEEP_CONTROL_REG` SLP_EN bit (ACPI 6.5 Table 4.19).
pub const SLP_EN: u8 = 1 << 5;
/// `SLEEP_CONTROL_REG` SLP_TYP field position (bits 4:2).
pub const SLP_TYP_SHIFT: u8 = 2;
/// `SLEEP_CONTROL_REG` SLP_TYP field mask.
pub const SLP_TYP_MASK: u8 = 0x1C;
/// `SLEEP_STATUS_REG` WAK_STS bit (ACPI 6.5 Table 4.20); written first.
pub const WAKE_STATUS: u8 = 1 << 7;
/// The byte a guest writes to `SLEEP_CONTROL_REG` to enter S5: 0x34.
pub const POWEROFF_VALUE: u8 = (S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN;

/// Whether a byte written to the sleep control port requests S5 (SLP_EN
/// set and SLP_TYP = [`S5_SLP_TYP`]; other bits are ignored, as on
/// hardware).
pub fn is_poweroff(value: u8) -> bool {
    value & SLP_EN != 0 && (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLP_TYP
}

/// The ports and value the FADT publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerPorts {
    /// `SLEEP_CONTROL_REG` port.
    pub sleep_control: u16,
    /// `SLEEP_STATUS_REG` port.
    pub sleep_status: u16,
    /// `RESET_REG` port.
    pub reset: u16,
    /// `RESET_VALUE`.
    pub reset_value: u8,
}

impl Default for PowerPorts {
    fn default() -> Self {
        Self {
            sleep_control: SLEEP_CONTROL_PORT,
            sleep_status: SLEEP_STATUS_PORT,
            reset: RESET_PORT,
            reset_value: RESET_VALUE,
        }
    }
}

impl PowerPorts {
    /// The three ports must be distinct, non-zero (a zero address means
    /// "absent" in the FADT) and outside COM1's eight ports.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let ports = [self.sleep_control, self.sleep_status, self.reset];
        for (i, &p) in ports.iter().enumerate() {
            if p == 0 || ports[..i].contains(&p) || (COM1_PORT..COM1_PORT + 8).contains(&p) {
                return Err(Error::PortConflict(p));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poweroff_value() {
        assert_eq!(POWEROFF_VALUE, 0x34);
        assert!(is_poweroff(POWEROFF_VALUE));
        assert!(is_poweroff(POWEROFF_VALUE | 0x03));
        assert!(!is_poweroff(S5_SLP_TYP << SLP_TYP_SHIFT));
        assert!(!is_poweroff(WAKE_STATUS));
        assert!(!is_poweroff((3 << SLP_TYP_SHIFT) | SLP_EN));
    }

    #[test]
    fn port_conflicts() {
        assert_eq!(PowerPorts::default().validate(), Ok(()));
        let same = PowerPorts {
            reset: SLEEP_CONTROL_PORT,
            ..PowerPorts::default()
        };
        assert_eq!(same.validate(), Err(Error::PortConflict(SLEEP_CONTROL_PORT)));
        let com = PowerPorts {
            sleep_status: 0x3FD,
            ..PowerPorts::default()
        };
        assert_eq!(com.validate(), Err(Error::PortConflict(0x3FD)));
        let zero = PowerPorts {
            reset: 0,
            ..PowerPorts::default()
        };
        assert_eq!(zero.validate(), Err(Error::PortConflict(0)));
    }
}
