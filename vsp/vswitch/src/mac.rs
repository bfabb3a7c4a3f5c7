//! Ethernet MAC addresses.

use core::fmt;
use core::str::FromStr;

/// A 48-bit Ethernet MAC address, in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: Self = Self([0xff; 6]);
    /// `00:00:00:00:00:00`, never a valid source or port address.
    pub const ZERO: Self = Self([0; 6]);

    /// The address's six bytes.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Whether the group bit (bit 0 of the first byte) is set: multicast, broadcast included.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// Whether this is the broadcast address.
    pub const fn is_broadcast(self) -> bool {
        matches!(self.0, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
    }

    /// Whether this is all zeroes.
    pub const fn is_zero(self) -> bool {
        matches!(self.0, [0, 0, 0, 0, 0, 0])
    }

    /// Whether this can be a station's own address: not multicast and not zero.
    /// Only such addresses are learned or accepted as a port's assigned MAC.
    pub const fn is_valid_station(self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }

    /// Whether the locally-administered bit (bit 1 of the first byte) is set.
    pub const fn is_locally_administered(self) -> bool {
        self.0[0] & 2 != 0
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> Self {
        Self(octets)
    }
}

impl fmt::Display for MacAddr {
    /// `aa:bb:cc:dd:ee:ff`, lower case.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A string that is not six colon-separated pairs of hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseMacError;

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MAC address is six colon-separated pairs of hex digits")
    }
}

impl core::error::Error for ParseMacError {}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Parses `aa:bb:cc:dd:ee:ff` (either case; `-` also accepted as the separator).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or(ParseMacError)?;
            if part.len() != 2 {
                return Err(ParseMacError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ParseMacError)?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError);
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(MacAddr([0x33, 0x33, 0, 0, 0, 1]).is_multicast());
        assert!(!MacAddr([0x02, 0, 0, 0, 0, 1]).is_multicast());
        assert!(MacAddr([0x02, 0, 0, 0, 0, 1]).is_locally_administered());
        assert!(MacAddr([0x02, 0, 0, 0, 0, 1]).is_valid_station());
        assert!(!MacAddr::ZERO.is_valid_station());
        assert!(!MacAddr::BROADCAST.is_valid_station());
    }

    #[test]
    fn display_and_parse_round_trip() {
        let mac = MacAddr([0x02, 0xab, 0x00, 0x10, 0xff, 0x7e]);
        assert_eq!(mac.to_string(), "02:ab:00:10:ff:7e");
        assert_eq!("02:AB:00:10:ff:7e".parse::<MacAddr>(), Ok(mac));
        assert_eq!("02-ab-00-10-ff-7e".parse::<MacAddr>(), Ok(mac));
        for bad in [
            "",
            "02:ab:00:10:ff",
            "02:ab:00:10:ff:7e:00",
            "2:ab:00:10:ff:7e",
            "zz:ab:00:10:ff:7e",
        ] {
            assert_eq!(bad.parse::<MacAddr>(), Err(ParseMacError), "{bad:?}");
        }
    }
}
