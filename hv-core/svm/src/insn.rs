//! Lengths of the instructions hv-core intercepts. QEMU TCG has no NRIP save
//! and no decode assists (QEMU `target/i386/tcg/sysemu/svm_helper.c`), so after an exit RIP
//! points at the instruction and hv-core must step over it itself. This decodes
//! the legacy/REX prefixes and checks that the opcode is the one the exit
//! reported, so a wrong RIP is detected instead of skipping garbage.

/// An instruction hv-core steps over after emulating it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intercepted {
    /// `0F A2`.
    Cpuid,
    /// `0F 32`.
    Rdmsr,
    /// `0F 30`.
    Wrmsr,
    /// `0F 01 D9`.
    Vmmcall,
    /// `F4`.
    Hlt,
    /// `0F 08`.
    Invd,
}

/// Why the bytes at RIP were not the expected instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the opcode does.
    Truncated,
    /// More than 15 bytes, or prefixes only.
    TooLong,
    /// The opcode differs from the one the exit reported.
    Mismatch,
}

/// Maximum x86 instruction length.
pub const MAX_LEN: usize = 15;

fn is_legacy_prefix(b: u8) -> bool {
    matches!(
        b,
        0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3
    )
}

/// Length of the instruction at the start of `bytes`, which must be `expected`
/// (in 64-bit mode: REX 0x40–0x4F is a prefix when it comes last).
pub fn length(bytes: &[u8], expected: Intercepted) -> Result<usize, DecodeError> {
    let mut i = 0;
    while i < bytes.len() && is_legacy_prefix(bytes[i]) {
        i += 1;
    }
    if i < bytes.len() && (0x40..=0x4F).contains(&bytes[i]) {
        i += 1;
    }
    if i >= MAX_LEN {
        return Err(DecodeError::TooLong);
    }
    let opcode: &[u8] = match expected {
        Intercepted::Cpuid => &[0x0F, 0xA2],
        Intercepted::Rdmsr => &[0x0F, 0x32],
        Intercepted::Wrmsr => &[0x0F, 0x30],
        Intercepted::Vmmcall => &[0x0F, 0x01, 0xD9],
        Intercepted::Hlt => &[0xF4],
        Intercepted::Invd => &[0x0F, 0x08],
    };
    let rest = &bytes[i..];
    if rest.len() < opcode.len() {
        // Could still be a prefix of the opcode: say which.
        return if opcode.starts_with(rest) {
            Err(DecodeError::Truncated)
        } else {
            Err(DecodeError::Mismatch)
        };
    }
    if &rest[..opcode.len()] != opcode {
        return Err(DecodeError::Mismatch);
    }
    let len = i + opcode.len();
    if len > MAX_LEN {
        return Err(DecodeError::TooLong);
    }
    Ok(len)
}

/// A decoded `MOV CRn, reg` (`0F 22 /r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MovToCr {
    /// Control register number (ModRM.reg, extended by REX.R).
    pub cr: u8,
    /// Source GPR in the x86 encoding order (0 = RAX … 15 = R15; ModRM.rm
    /// extended by REX.B).
    pub gpr: u8,
    /// Instruction length.
    pub len: usize,
}

/// Decode the `MOV CRn, reg` at the start of `bytes` (64-bit mode). The
/// ModRM.mod field is ignored: the instruction always names a register
/// (APM vol. 3 "MOV CRn").
pub fn decode_mov_to_cr(bytes: &[u8]) -> Result<MovToCr, DecodeError> {
    let mut i = 0;
    while i < bytes.len() && is_legacy_prefix(bytes[i]) {
        i += 1;
    }
    let mut rex = 0u8;
    if i < bytes.len() && (0x40..=0x4F).contains(&bytes[i]) {
        rex = bytes[i];
        i += 1;
    }
    if i + 3 > MAX_LEN {
        return Err(DecodeError::TooLong);
    }
    let rest = &bytes[i..];
    match rest {
        [0x0F, 0x22, modrm, ..] => Ok(MovToCr {
            cr: ((modrm >> 3) & 7) | ((rex & 4) << 1),
            gpr: (modrm & 7) | ((rex & 1) << 3),
            len: i + 3,
        }),
        [] | [0x0F] | [0x0F, 0x22] => Err(DecodeError::Truncated),
        _ => Err(DecodeError::Mismatch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mov_to_cr_operands() {
        // mov cr4, rax
        assert_eq!(
            decode_mov_to_cr(&[0x0F, 0x22, 0xE0]),
            Ok(MovToCr {
                cr: 4,
                gpr: 0,
                len: 3
            })
        );
        // mov cr4, r9 (REX.B)
        assert_eq!(
            decode_mov_to_cr(&[0x41, 0x0F, 0x22, 0xE1]),
            Ok(MovToCr {
                cr: 4,
                gpr: 9,
                len: 4
            })
        );
        // mov cr8, rcx (REX.R)
        assert_eq!(
            decode_mov_to_cr(&[0x44, 0x0F, 0x22, 0xC1]),
            Ok(MovToCr {
                cr: 8,
                gpr: 1,
                len: 4
            })
        );
        // A prefix, and mod bits that are ignored: mov cr4, rsp.
        assert_eq!(
            decode_mov_to_cr(&[0x66, 0x0F, 0x22, 0x24]),
            Ok(MovToCr {
                cr: 4,
                gpr: 4,
                len: 4
            })
        );
        assert_eq!(decode_mov_to_cr(&[0x0F, 0x22]), Err(DecodeError::Truncated));
        assert_eq!(decode_mov_to_cr(&[0x0F, 0x20, 0xE0]), Err(DecodeError::Mismatch));
        assert_eq!(decode_mov_to_cr(&[0x66; 14]), Err(DecodeError::TooLong));
    }

    #[test]
    fn plain_encodings() {
        assert_eq!(length(&[0x0F, 0xA2, 0x90], Intercepted::Cpuid), Ok(2));
        assert_eq!(length(&[0x0F, 0x30], Intercepted::Wrmsr), Ok(2));
        assert_eq!(length(&[0x0F, 0x32], Intercepted::Rdmsr), Ok(2));
        assert_eq!(length(&[0x0F, 0x01, 0xD9, 0xC3], Intercepted::Vmmcall), Ok(3));
        assert_eq!(length(&[0xF4], Intercepted::Hlt), Ok(1));
        assert_eq!(length(&[0x0F, 0x08], Intercepted::Invd), Ok(2));
    }

    #[test]
    fn prefixes_count() {
        assert_eq!(length(&[0x66, 0x2E, 0x48, 0x0F, 0xA2], Intercepted::Cpuid), Ok(5));
        assert_eq!(length(&[0x48, 0x0F, 0x30], Intercepted::Wrmsr), Ok(3));
    }

    #[test]
    fn mismatch_truncation_and_overlong() {
        assert_eq!(
            length(&[0x0F, 0x31], Intercepted::Rdmsr),
            Err(DecodeError::Mismatch)
        );
        assert_eq!(
            length(&[0x0F, 0x01], Intercepted::Vmmcall),
            Err(DecodeError::Truncated)
        );
        assert_eq!(length(&[0x90], Intercepted::Hlt), Err(DecodeError::Mismatch));
        let mut long = [0x66u8; 20];
        long[19] = 0xF4;
        assert_eq!(length(&long, Intercepted::Hlt), Err(DecodeError::TooLong));
        assert_eq!(length(&[], Intercepted::Hlt), Err(DecodeError::Truncated));
    }
}
