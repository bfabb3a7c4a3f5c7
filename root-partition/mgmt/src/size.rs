//! Memory sizes: `32M`, `32MiB`, `1G`, `4096K`, or plain bytes.

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeError {
    /// Empty or not a number with an optional K/M/G suffix.
    Malformed,
    /// Larger than 2^64.
    Overflow,
}

/// Parse a size in bytes.
pub fn parse(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    if digits.is_empty() {
        return Err(SizeError::Malformed);
    }
    let shift = match unit {
        "" | "B" => 0,
        "K" | "k" | "KiB" | "KB" => 10,
        "M" | "m" | "MiB" | "MB" => 20,
        "G" | "g" | "GiB" | "GB" => 30,
        _ => return Err(SizeError::Malformed),
    };
    let n: u64 = digits.parse().map_err(|_| SizeError::Overflow)?;
    n.checked_mul(1 << shift).ok_or(SizeError::Overflow)
}

/// Format bytes as the largest exact unit (`32 MiB`, `1536 KiB`).
pub fn format(bytes: u64, out: &mut impl core::fmt::Write) -> core::fmt::Result {
    if bytes != 0 && bytes.is_multiple_of(1 << 30) {
        write!(out, "{} GiB", bytes >> 30)
    } else if bytes != 0 && bytes.is_multiple_of(1 << 20) {
        write!(out, "{} MiB", bytes >> 20)
    } else if bytes != 0 && bytes.is_multiple_of(1 << 10) {
        write!(out, "{} KiB", bytes >> 10)
    } else {
        write!(out, "{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("32M"), Ok(32 << 20));
        assert_eq!(parse("32MiB"), Ok(32 << 20));
        assert_eq!(parse("1G"), Ok(1 << 30));
        assert_eq!(parse("4096K"), Ok(4 << 20));
        assert_eq!(parse("512"), Ok(512));
        assert_eq!(parse(""), Err(SizeError::Malformed));
        assert_eq!(parse("M"), Err(SizeError::Malformed));
        assert_eq!(parse("12Q"), Err(SizeError::Malformed));
        assert_eq!(parse("-1M"), Err(SizeError::Malformed));
        assert_eq!(parse("99999999999999999999"), Err(SizeError::Overflow));
        assert_eq!(parse("99999999999G"), Err(SizeError::Overflow));
        let mut s = String::new();
        format(32 << 20, &mut s).unwrap();
        assert_eq!(s, "32 MiB");
    }
}
