//! Decoding the guest instructions hv-core must understand itself. QEMU TCG
//! has no NRIP save and no decode assists (QEMU
//! `target/i386/tcg/sysemu/svm_helper.c`), so after an exit RIP points at the
//! instruction and hv-core must find its length (to step over it) and, for
//! `MOV CRn` and MMIO, its operands.
//!
//! All decoding is done by `iced-x86` in 64-bit mode (the only mode the
//! callers run guests in once they intercept these). This module maps iced's
//! result onto small types of our own and classifies failures:
//!
//! - [`length`]: length of an intercepted instruction, checking that the
//!   bytes really are the instruction the exit reported, so a wrong RIP is
//!   detected instead of skipping garbage.
//! - [`decode_mov_to_cr`]: the `MOV CRn, reg` behind a CR-write intercept.
//! - [`decode_mmio`]: the memory access behind a nested page fault on an MMIO
//!   page (the MOV/MOVZX/MOVSX family only, like Jailhouse's
//!   `hypervisor/arch/x86/mmio.c`).
//!
//! Register numbers follow the x86 encoding order everywhere: 0 = RAX, 1 =
//! RCX, 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI, 8–15 = R8–R15.

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Instruction, OpKind, Register};

/// An instruction hv-core steps over after emulating it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intercepted {
    /// `0F A2`.
    Cpuid,
    /// `0F 32`.
    Rdmsr,
    /// `0F 30`.
    Wrmsr,
    /// `0F 01 D9` (also `F3 0F 01 D9`, VMGEXIT, which a guest without
    /// SEV-ES executes as VMMCALL: APM vol. 3, "VMGEXIT").
    Vmmcall,
    /// `F4`.
    Hlt,
    /// `0F 08`.
    Invd,
    /// `F3 90`.
    Pause,
}

/// Why the bytes at RIP could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does.
    Truncated,
    /// The instruction would be longer than [`MAX_LEN`] bytes (e.g. too many
    /// prefixes), which the CPU refuses with #GP.
    TooLong,
    /// The bytes decode to a different instruction than the exit reported
    /// ([`length`], [`decode_mov_to_cr`]), or to no valid instruction.
    Mismatch,
    /// [`decode_mmio`]: a valid instruction that is not one of the supported
    /// MMIO forms (string operations, read-modify-write like OR/AND/ADD/INC,
    /// XCHG/CMPXCHG, LOCKed or SSE/AVX accesses, …). Those are refused for
    /// now; the caller should stop or fault the guest rather than guess.
    Unsupported,
    /// [`decode_mmio`]: a supported opcode, but in its register form (no
    /// memory operand), so it cannot be what faulted on an MMIO page.
    NoMemoryOperand,
}

/// Maximum x86 instruction length.
pub const MAX_LEN: usize = 15;

/// How iced failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    /// The bytes end before the instruction does.
    NoMoreBytes,
    /// Not a valid instruction.
    Invalid,
    /// Still not complete after 14 bytes and not valid at 15: more than
    /// [`MAX_LEN`] bytes (iced reports this as invalid).
    Overlong,
}

/// Decode the first instruction of `bytes` in 64-bit mode. `DecoderOptions::AMD`
/// makes iced follow AMD's decoding where the vendors differ (e.g.
/// `F0 0F 22` = `MOV CR8`), since hv-core runs on SVM.
fn decode64(bytes: &[u8]) -> Result<Instruction, Fail> {
    let iced = |window: &[u8]| {
        let mut decoder = Decoder::with_ip(64, window, 0, DecoderOptions::AMD);
        let insn = decoder.decode();
        (insn, decoder.last_error())
    };
    match iced(&bytes[..bytes.len().min(MAX_LEN)]) {
        (insn, DecoderError::None) => Ok(insn),
        (_, DecoderError::NoMoreBytes) if bytes.len() >= MAX_LEN => Err(Fail::Overlong),
        (_, DecoderError::NoMoreBytes) => Err(Fail::NoMoreBytes),
        _ if bytes.len() >= MAX_LEN && iced(&bytes[..MAX_LEN - 1]).1 == DecoderError::NoMoreBytes => {
            Err(Fail::Overlong)
        }
        _ => Err(Fail::Invalid),
    }
}

/// Turn iced's "ran out of bytes" into [`DecodeError::Truncated`] or
/// [`DecodeError::TooLong`] or [`DecodeError::Mismatch`]: the bytes are a
/// truncated `wanted` instruction if appending some suffix of `template` (a
/// complete encoding of it) yields a valid `wanted` of at most [`MAX_LEN`]
/// bytes; they are too long if only appending the whole template could have
/// completed them but that no longer fits.
fn classify_incomplete(bytes: &[u8], template: &[u8], wanted: &[Code]) -> DecodeError {
    let mut buf = [0u8; MAX_LEN];
    for skip in 0..=template.len() {
        let tail = &template[skip..];
        let total = bytes.len() + tail.len();
        if total > MAX_LEN {
            continue;
        }
        buf[..bytes.len()].copy_from_slice(bytes);
        buf[bytes.len()..total].copy_from_slice(tail);
        if let Ok(i) = decode64(&buf[..total])
            && wanted.contains(&i.code())
            && i.len() == total
        {
            return DecodeError::Truncated;
        }
    }
    if bytes.len() + template.len() > MAX_LEN {
        DecodeError::TooLong
    } else {
        DecodeError::Mismatch
    }
}

/// Length of the instruction at the start of `bytes`, which must be `expected`
/// (decoded in 64-bit mode; prefixes, including a REX prefix, count towards
/// the length).
pub fn length(bytes: &[u8], expected: Intercepted) -> Result<usize, DecodeError> {
    let (template, wanted): (&[u8], &[Code]) = match expected {
        Intercepted::Cpuid => (&[0x0F, 0xA2], &[Code::Cpuid]),
        Intercepted::Rdmsr => (&[0x0F, 0x32], &[Code::Rdmsr]),
        Intercepted::Wrmsr => (&[0x0F, 0x30], &[Code::Wrmsr]),
        Intercepted::Vmmcall => (
            &[0x0F, 0x01, 0xD9],
            &[Code::Vmmcall, Code::Vmgexit, Code::Vmgexit_F2],
        ),
        Intercepted::Hlt => (&[0xF4], &[Code::Hlt]),
        Intercepted::Invd => (&[0x0F, 0x08], &[Code::Invd]),
        Intercepted::Pause => (&[0xF3, 0x90], &[Code::Pause]),
    };
    match decode64(bytes) {
        Ok(i) if wanted.contains(&i.code()) => Ok(i.len()),
        Ok(_) | Err(Fail::Invalid) => Err(DecodeError::Mismatch),
        Err(Fail::Overlong) => Err(DecodeError::TooLong),
        Err(Fail::NoMoreBytes) => Err(classify_incomplete(bytes, template, wanted)),
    }
}

/// A decoded `MOV CRn, reg` (`0F 22 /r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MovToCr {
    /// Control register number (ModRM.reg, extended by REX.R; `LOCK` selects
    /// CR8 on AMD).
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
    const WANTED: &[Code] = &[Code::Mov_cr_r64];
    let i = match decode64(bytes) {
        Ok(i) if i.code() == Code::Mov_cr_r64 => i,
        Ok(_) | Err(Fail::Invalid) => return Err(DecodeError::Mismatch),
        Err(Fail::Overlong) => return Err(DecodeError::TooLong),
        Err(Fail::NoMoreBytes) => {
            return Err(classify_incomplete(bytes, &[0x0F, 0x22, 0xC0], WANTED));
        }
    };
    let cr = cr_number(i.op_register(0)).ok_or(DecodeError::Mismatch)?;
    let gpr = gpr_of(i.op_register(1))
        .filter(|g| g.width == 8)
        .ok_or(DecodeError::Mismatch)?;
    Ok(MovToCr {
        cr,
        gpr: gpr.num,
        len: i.len(),
    })
}

fn cr_number(r: Register) -> Option<u8> {
    const CRS: [Register; 16] = [
        Register::CR0,
        Register::CR1,
        Register::CR2,
        Register::CR3,
        Register::CR4,
        Register::CR5,
        Register::CR6,
        Register::CR7,
        Register::CR8,
        Register::CR9,
        Register::CR10,
        Register::CR11,
        Register::CR12,
        Register::CR13,
        Register::CR14,
        Register::CR15,
    ];
    CRS.iter().position(|&c| c == r).map(|n| n as u8)
}

/// A general-purpose register operand, as a part of one of the 16 GPRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpr {
    /// Register number, 0 = RAX … 15 = R15.
    pub num: u8,
    /// Operand width in bytes: 1, 2, 4 or 8.
    pub width: u8,
    /// AH, CH, DH or BH: bits 15:8 of RAX, RCX, RDX or RBX (`width` is 1).
    pub high_byte: bool,
}

impl Gpr {
    /// The operand's value, given the full 64-bit register.
    pub fn read(&self, full: u64) -> u64 {
        let shifted = if self.high_byte { full >> 8 } else { full };
        shifted & mask(self.width)
    }

    /// The full 64-bit register after writing `value` to this operand from
    /// `old`: 32-bit writes zero bits 63:32, 8- and 16-bit writes keep the
    /// other bits (Intel SDM vol. 1 §3.4.1.1).
    pub fn write(&self, old: u64, value: u64) -> u64 {
        match (self.width, self.high_byte) {
            (8, _) => value,
            (4, _) => value & 0xFFFF_FFFF,
            (1, true) => (old & !0xFF00) | ((value & 0xFF) << 8),
            (w, _) => (old & !mask(w)) | (value & mask(w)),
        }
    }
}

/// Mask of the low `width` bytes.
fn mask(width: u8) -> u64 {
    match width {
        8.. => u64::MAX,
        w => (1u64 << (8 * u32::from(w))) - 1,
    }
}

/// Map an iced register to a GPR operand, or `None` for anything else.
fn gpr_of(r: Register) -> Option<Gpr> {
    use Register::*;
    const R64: [Register; 16] = [
        RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15,
    ];
    const R32: [Register; 16] = [
        EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI, R8D, R9D, R10D, R11D, R12D, R13D, R14D, R15D,
    ];
    const R16: [Register; 16] = [
        AX, CX, DX, BX, SP, BP, SI, DI, R8W, R9W, R10W, R11W, R12W, R13W, R14W, R15W,
    ];
    const LOW8: [Register; 16] = [
        AL, CL, DL, BL, SPL, BPL, SIL, DIL, R8L, R9L, R10L, R11L, R12L, R13L, R14L, R15L,
    ];
    const HIGH: [Register; 4] = [AH, CH, DH, BH];
    let find = |table: &[Register], width: u8, high_byte: bool| {
        table.iter().position(|&x| x == r).map(|n| Gpr {
            num: n as u8,
            width,
            high_byte,
        })
    };
    find(&R64, 8, false)
        .or_else(|| find(&R32, 4, false))
        .or_else(|| find(&R16, 2, false))
        .or_else(|| find(&LOW8, 1, false))
        .or_else(|| find(&HIGH, 1, true))
}

/// How a value read from MMIO reaches the destination register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extend {
    /// Plain MOV: the access is as wide as the destination.
    None,
    /// MOVZX: zero-extended to the destination width.
    Zero,
    /// MOVSX/MOVSXD: sign-extended to the destination width.
    Sign,
}

/// Where the value of an MMIO write comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteSource {
    /// A register operand (use [`Gpr::read`] on the full register).
    Gpr(Gpr),
    /// An immediate, already sign-extended and truncated to the access size.
    Imm(u64),
}

/// Direction and register side of an MMIO access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioOp {
    /// The guest reads `size` bytes into `dest`, extended as `extend` says.
    Read {
        /// Destination register operand.
        dest: Gpr,
        /// How the value is widened to `dest.width`.
        extend: Extend,
    },
    /// The guest writes `size` bytes from `src`.
    Write {
        /// The value's source.
        src: WriteSource,
    },
}

/// A guest memory access to emulate after an MMIO exit. The effective
/// address is not decoded: the exit reports the faulting GPA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioAccess {
    /// Instruction length (the RIP advance once emulated).
    pub len: usize,
    /// Bytes accessed in memory: 1, 2, 4 or 8.
    pub size: u8,
    /// Read or write, and the register or immediate involved.
    pub op: MmioOp,
}

impl MmioAccess {
    /// For a write: the `size` bytes to store, given the full 64-bit value of
    /// each GPR (`gpr(n)`, n = 0 RAX … 15 R15). `None` for a read.
    pub fn write_value(&self, gpr: impl Fn(u8) -> u64) -> Option<u64> {
        match self.op {
            MmioOp::Write {
                src: WriteSource::Gpr(g),
            } => Some(g.read(gpr(g.num)) & mask(self.size)),
            MmioOp::Write {
                src: WriteSource::Imm(v),
            } => Some(v & mask(self.size)),
            MmioOp::Read { .. } => None,
        }
    }

    /// For a read: the destination register's number and new full 64-bit
    /// value, given its `old` value and the `data` read from the device
    /// (only its low `size` bytes are used). `None` for a write.
    pub fn read_result(&self, old: u64, data: u64) -> Option<(u8, u64)> {
        let MmioOp::Read { dest, extend } = self.op else {
            return None;
        };
        let data = data & mask(self.size);
        let value = match extend {
            Extend::Sign if self.size < 8 => {
                let shift = 64 - 8 * u32::from(self.size);
                (((data << shift) as i64) >> shift) as u64
            }
            _ => data,
        };
        Some((dest.num, dest.write(old, value & mask(dest.width))))
    }
}

/// Decode the instruction at the start of `bytes` (64-bit mode) as an MMIO
/// access. Supported: `MOV r/m, reg` (88/89), `MOV reg, r/m` (8A/8B),
/// `MOV r/m, imm` (C6/C7), `MOV` to/from `moffs` (A0–A3), `MOVZX` (0F B6/B7),
/// `MOVSX` (0F BE/BF) and `MOVSXD` (63), with any legacy/REX prefixes iced
/// accepts. Everything else is [`DecodeError::Unsupported`] (see there).
pub fn decode_mmio(bytes: &[u8]) -> Result<MmioAccess, DecodeError> {
    let i = match decode64(bytes) {
        Ok(i) => i,
        Err(Fail::Invalid) => return Err(DecodeError::Mismatch),
        Err(Fail::Overlong) => return Err(DecodeError::TooLong),
        Err(Fail::NoMoreBytes) => return Err(DecodeError::Truncated),
    };
    // (direction is write, access size, extension of a read)
    let (write, size, extend) = match i.code() {
        Code::Mov_rm8_r8 | Code::Mov_rm8_imm8 | Code::Mov_moffs8_AL => (true, 1, Extend::None),
        Code::Mov_rm16_r16 | Code::Mov_rm16_imm16 | Code::Mov_moffs16_AX => (true, 2, Extend::None),
        Code::Mov_rm32_r32 | Code::Mov_rm32_imm32 | Code::Mov_moffs32_EAX => (true, 4, Extend::None),
        Code::Mov_rm64_r64 | Code::Mov_rm64_imm32 | Code::Mov_moffs64_RAX => (true, 8, Extend::None),
        Code::Mov_r8_rm8 | Code::Mov_AL_moffs8 => (false, 1, Extend::None),
        Code::Mov_r16_rm16 | Code::Mov_AX_moffs16 | Code::Movsxd_r16_rm16 => (false, 2, Extend::None),
        Code::Mov_r32_rm32 | Code::Mov_EAX_moffs32 | Code::Movsxd_r32_rm32 => (false, 4, Extend::None),
        Code::Mov_r64_rm64 | Code::Mov_RAX_moffs64 => (false, 8, Extend::None),
        Code::Movzx_r16_rm8 | Code::Movzx_r32_rm8 | Code::Movzx_r64_rm8 => (false, 1, Extend::Zero),
        Code::Movzx_r16_rm16 | Code::Movzx_r32_rm16 | Code::Movzx_r64_rm16 => (false, 2, Extend::Zero),
        Code::Movsx_r16_rm8 | Code::Movsx_r32_rm8 | Code::Movsx_r64_rm8 => (false, 1, Extend::Sign),
        Code::Movsx_r16_rm16 | Code::Movsx_r32_rm16 | Code::Movsx_r64_rm16 => (false, 2, Extend::Sign),
        Code::Movsxd_r64_rm32 => (false, 4, Extend::Sign),
        _ => return Err(DecodeError::Unsupported),
    };
    let (mem, other) = if write { (0, 1) } else { (1, 0) };
    if i.op_kind(mem) != OpKind::Memory {
        return Err(DecodeError::NoMemoryOperand);
    }
    let op = match i.op_kind(other) {
        OpKind::Register => {
            let g = gpr_of(i.op_register(other)).ok_or(DecodeError::Unsupported)?;
            if write {
                MmioOp::Write {
                    src: WriteSource::Gpr(g),
                }
            } else {
                MmioOp::Read { dest: g, extend }
            }
        }
        OpKind::Immediate8 | OpKind::Immediate16 | OpKind::Immediate32 | OpKind::Immediate32to64 if write => {
            MmioOp::Write {
                src: WriteSource::Imm(i.immediate(other) & mask(size)),
            }
        }
        _ => return Err(DecodeError::Unsupported),
    };
    Ok(MmioAccess {
        len: i.len(),
        size,
        op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    fn mov_to_cr_more() {
        // AMD: LOCK MOV CR0 is MOV CR8 (APM vol. 3 "MOV CRn").
        assert_eq!(
            decode_mov_to_cr(&[0xF0, 0x0F, 0x22, 0xC2]),
            Ok(MovToCr {
                cr: 8,
                gpr: 2,
                len: 4
            })
        );
        // REX.W and both REX.R|REX.B: mov cr8, r15 (trailing bytes ignored).
        assert_eq!(
            decode_mov_to_cr(&[0x4D, 0x0F, 0x22, 0xC7, 0x90]),
            Ok(MovToCr {
                cr: 8,
                gpr: 15,
                len: 4
            })
        );
        // CR3 with a segment prefix.
        assert_eq!(
            decode_mov_to_cr(&[0x2E, 0x0F, 0x22, 0xD8]),
            Ok(MovToCr {
                cr: 3,
                gpr: 0,
                len: 4
            })
        );
        assert_eq!(decode_mov_to_cr(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode_mov_to_cr(&[0x0F]), Err(DecodeError::Truncated));
        assert_eq!(decode_mov_to_cr(&[0x90]), Err(DecodeError::Mismatch));
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
        // VMGEXIT outside SEV-ES behaves as VMMCALL.
        assert_eq!(length(&[0xF3, 0x0F, 0x01, 0xD9], Intercepted::Vmmcall), Ok(4));
    }

    #[test]
    fn pause_is_rep_nop_and_only_that() {
        assert_eq!(length(&[0xF3, 0x90, 0xEB, 0xFC], Intercepted::Pause), Ok(2));
        // A plain NOP is not a PAUSE; a lone F3 is one cut short.
        assert_eq!(length(&[0x90], Intercepted::Pause), Err(DecodeError::Mismatch));
        assert_eq!(length(&[0xF3], Intercepted::Pause), Err(DecodeError::Truncated));
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
        // Prefixes only, and the opcode would still fit: truncated.
        assert_eq!(
            length(&[0x66, 0x48], Intercepted::Cpuid),
            Err(DecodeError::Truncated)
        );
        // Fourteen prefixes leave room for HLT but not for CPUID.
        assert_eq!(length(&[0x66; 14], Intercepted::Hlt), Err(DecodeError::Truncated));
        assert_eq!(length(&[0x66; 14], Intercepted::Cpuid), Err(DecodeError::TooLong));
        // Starts like a different instruction.
        assert_eq!(length(&[0x0F], Intercepted::Hlt), Err(DecodeError::Mismatch));
        // LOCK CPUID is #UD on the CPU, so it cannot have exited as CPUID.
        assert_eq!(
            length(&[0xF0, 0x0F, 0xA2], Intercepted::Cpuid),
            Err(DecodeError::Mismatch)
        );
    }

    fn gpr(num: u8, width: u8) -> Gpr {
        Gpr {
            num,
            width,
            high_byte: false,
        }
    }

    fn read(len: usize, size: u8, dest: Gpr, extend: Extend) -> Result<MmioAccess, DecodeError> {
        Ok(MmioAccess {
            len,
            size,
            op: MmioOp::Read { dest, extend },
        })
    }

    fn write(len: usize, size: u8, src: WriteSource) -> Result<MmioAccess, DecodeError> {
        Ok(MmioAccess {
            len,
            size,
            op: MmioOp::Write { src },
        })
    }

    #[test]
    fn mmio_mov_stores() {
        // mov [rdi], al
        assert_eq!(
            decode_mmio(&[0x88, 0x07]),
            write(2, 1, WriteSource::Gpr(gpr(0, 1)))
        );
        // mov [rax], ah: a high-byte register
        let ah = Gpr {
            num: 0,
            width: 1,
            high_byte: true,
        };
        assert_eq!(decode_mmio(&[0x88, 0x20]), write(2, 1, WriteSource::Gpr(ah)));
        // mov [rax], spl: with a REX prefix, 4 is SPL, not AH
        assert_eq!(
            decode_mmio(&[0x40, 0x88, 0x20]),
            write(3, 1, WriteSource::Gpr(gpr(4, 1)))
        );
        // mov [rbx], cx (66)
        assert_eq!(
            decode_mmio(&[0x66, 0x89, 0x0B]),
            write(3, 2, WriteSource::Gpr(gpr(1, 2)))
        );
        // mov [rdx+8], esi (disp8)
        assert_eq!(
            decode_mmio(&[0x89, 0x72, 0x08]),
            write(3, 4, WriteSource::Gpr(gpr(6, 4)))
        );
        // mov [r8], r15 (REX.WRB)
        assert_eq!(
            decode_mmio(&[0x4D, 0x89, 0x38]),
            write(3, 8, WriteSource::Gpr(gpr(15, 8)))
        );
        // mov [rip+0x1000], eax (RIP-relative disp32)
        assert_eq!(
            decode_mmio(&[0x89, 0x05, 0x00, 0x10, 0x00, 0x00]),
            write(6, 4, WriteSource::Gpr(gpr(0, 4)))
        );
        // mov gs:[rax+rcx*4+0x10], edx: segment prefix + SIB + disp8
        assert_eq!(
            decode_mmio(&[0x65, 0x89, 0x54, 0x88, 0x10]),
            write(5, 4, WriteSource::Gpr(gpr(2, 4)))
        );
        // mov [moffs64], eax (A3)
        let mut moffs = [0u8; 9];
        moffs[0] = 0xA3;
        moffs[1..].copy_from_slice(&0xFEE0_0080u64.to_le_bytes());
        assert_eq!(decode_mmio(&moffs), write(9, 4, WriteSource::Gpr(gpr(0, 4))));
    }

    #[test]
    fn mmio_mov_immediates() {
        // mov byte [rax], 0x80
        assert_eq!(
            decode_mmio(&[0xC6, 0x00, 0x80]),
            write(3, 1, WriteSource::Imm(0x80))
        );
        // mov word [rax], 0x1234 (66)
        assert_eq!(
            decode_mmio(&[0x66, 0xC7, 0x00, 0x34, 0x12]),
            write(5, 2, WriteSource::Imm(0x1234))
        );
        // mov dword [rax+4], 0xdeadbeef
        assert_eq!(
            decode_mmio(&[0xC7, 0x40, 0x04, 0xEF, 0xBE, 0xAD, 0xDE]),
            write(7, 4, WriteSource::Imm(0xDEAD_BEEF))
        );
        // mov qword [rax], -1 (imm32 sign-extended to 64 bits)
        assert_eq!(
            decode_mmio(&[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF]),
            write(7, 8, WriteSource::Imm(u64::MAX))
        );
    }

    #[test]
    fn mmio_loads() {
        // mov al, [rsi]
        assert_eq!(decode_mmio(&[0x8A, 0x06]), read(2, 1, gpr(0, 1), Extend::None));
        // mov bh, [rsi]
        let bh = Gpr {
            num: 3,
            width: 1,
            high_byte: true,
        };
        assert_eq!(decode_mmio(&[0x8A, 0x3E]), read(2, 1, bh, Extend::None));
        // mov r9w, [rcx] (66 + REX.R)
        assert_eq!(
            decode_mmio(&[0x66, 0x44, 0x8B, 0x09]),
            read(4, 2, gpr(9, 2), Extend::None)
        );
        // mov eax, [rdi]
        assert_eq!(decode_mmio(&[0x8B, 0x07]), read(2, 4, gpr(0, 4), Extend::None));
        // mov rdx, [rbx+0x300] (disp32)
        assert_eq!(
            decode_mmio(&[0x48, 0x8B, 0x93, 0x00, 0x03, 0x00, 0x00]),
            read(7, 8, gpr(2, 8), Extend::None)
        );
        // movzx eax, byte [rdi]
        assert_eq!(
            decode_mmio(&[0x0F, 0xB6, 0x07]),
            read(3, 1, gpr(0, 4), Extend::Zero)
        );
        // movzx r10, word [rdi]
        assert_eq!(
            decode_mmio(&[0x4C, 0x0F, 0xB7, 0x17]),
            read(4, 2, gpr(10, 8), Extend::Zero)
        );
        // movsx cx, byte [rax] (66)
        assert_eq!(
            decode_mmio(&[0x66, 0x0F, 0xBE, 0x08]),
            read(4, 1, gpr(1, 2), Extend::Sign)
        );
        // movsx edx, word [rax]
        assert_eq!(
            decode_mmio(&[0x0F, 0xBF, 0x10]),
            read(3, 2, gpr(2, 4), Extend::Sign)
        );
        // movsxd rax, dword [rbx]
        assert_eq!(
            decode_mmio(&[0x48, 0x63, 0x03]),
            read(3, 4, gpr(0, 8), Extend::Sign)
        );
        // movsxd without REX.W is a plain 32-bit load
        assert_eq!(decode_mmio(&[0x63, 0x03]), read(2, 4, gpr(0, 4), Extend::None));
        // mov rax, [moffs64] (REX.W A1)
        let mut moffs = [0u8; 10];
        moffs[..2].copy_from_slice(&[0x48, 0xA1]);
        moffs[2..].copy_from_slice(&0xFEC0_0010u64.to_le_bytes());
        assert_eq!(decode_mmio(&moffs), read(10, 8, gpr(0, 8), Extend::None));
    }

    #[test]
    fn mmio_refusals() {
        assert_eq!(decode_mmio(&[]), Err(DecodeError::Truncated));
        // mov eax, [rip+disp32] cut inside the displacement
        assert_eq!(decode_mmio(&[0x8B, 0x05, 0x00]), Err(DecodeError::Truncated));
        // prefix only
        assert_eq!(decode_mmio(&[0x66]), Err(DecodeError::Truncated));
        assert_eq!(decode_mmio(&[0x66; 15]), Err(DecodeError::TooLong));
        // register forms: mov eax, ecx / movzx eax, cl / mov eax, imm32
        assert_eq!(decode_mmio(&[0x89, 0xC8]), Err(DecodeError::NoMemoryOperand));
        assert_eq!(
            decode_mmio(&[0x0F, 0xB6, 0xC1]),
            Err(DecodeError::NoMemoryOperand)
        );
        assert_eq!(
            decode_mmio(&[0xC7, 0xC0, 1, 0, 0, 0]),
            Err(DecodeError::NoMemoryOperand)
        );
        // string ops: movsb, rep stosd
        assert_eq!(decode_mmio(&[0xA4]), Err(DecodeError::Unsupported));
        assert_eq!(decode_mmio(&[0xF3, 0xAB]), Err(DecodeError::Unsupported));
        // read-modify-write: or [rax], ecx; and dword [rax], 1; inc dword [rax]
        assert_eq!(decode_mmio(&[0x09, 0x08]), Err(DecodeError::Unsupported));
        assert_eq!(decode_mmio(&[0x83, 0x20, 0x01]), Err(DecodeError::Unsupported));
        assert_eq!(decode_mmio(&[0xFF, 0x00]), Err(DecodeError::Unsupported));
        // xchg [rax], ecx; lock or [rax], ecx
        assert_eq!(decode_mmio(&[0x87, 0x08]), Err(DecodeError::Unsupported));
        assert_eq!(decode_mmio(&[0xF0, 0x09, 0x08]), Err(DecodeError::Unsupported));
        // movaps xmm0, [rax]; mov es, [rax]
        assert_eq!(decode_mmio(&[0x0F, 0x28, 0x00]), Err(DecodeError::Unsupported));
        assert_eq!(decode_mmio(&[0x8E, 0x00]), Err(DecodeError::Unsupported));
        // LOCK MOV is #UD; UD2 is valid but no access; PUSH ES is invalid in 64-bit mode
        assert_eq!(decode_mmio(&[0xF0, 0x89, 0x08]), Err(DecodeError::Mismatch));
        assert_eq!(decode_mmio(&[0x0F, 0x0B]), Err(DecodeError::Unsupported));
        assert_eq!(decode_mmio(&[0x06, 0x90]), Err(DecodeError::Mismatch));
    }

    #[test]
    fn mmio_values() {
        let regs = |n: u8| 0x1111_1111_1111_1111u64 * u64::from(n) + 0x0807_0605_0403_0201;
        // mov [rax], ah
        let a = decode_mmio(&[0x88, 0x20]).unwrap();
        assert_eq!(a.write_value(regs), Some(0x02));
        // mov [rax], cx
        let a = decode_mmio(&[0x66, 0x89, 0x08]).unwrap();
        assert_eq!(a.write_value(regs), Some(0x1312));
        assert_eq!(a.read_result(0, 0), None);
        // mov qword [rax], -2
        let a = decode_mmio(&[0x48, 0xC7, 0x00, 0xFE, 0xFF, 0xFF, 0xFF]).unwrap();
        assert_eq!(a.write_value(regs), Some(u64::MAX - 1));

        let old = 0xAAAA_AAAA_AAAA_AAAA;
        // mov al, [rax]: only bits 7:0 change
        let a = decode_mmio(&[0x8A, 0x00]).unwrap();
        assert_eq!(a.read_result(old, 0x1234), Some((0, 0xAAAA_AAAA_AAAA_AA34)));
        assert_eq!(a.write_value(regs), None);
        // mov ch, [rax]: bits 15:8 of RCX
        let a = decode_mmio(&[0x8A, 0x28]).unwrap();
        assert_eq!(a.read_result(old, 0x55), Some((1, 0xAAAA_AAAA_AAAA_55AA)));
        // mov dx, [rax]: bits 15:0
        let a = decode_mmio(&[0x66, 0x8B, 0x10]).unwrap();
        assert_eq!(a.read_result(old, 0x1_2345), Some((2, 0xAAAA_AAAA_AAAA_2345)));
        // mov ebx, [rax]: zero-extends to 64 bits
        let a = decode_mmio(&[0x8B, 0x18]).unwrap();
        assert_eq!(a.read_result(old, 0xFFFF_FFFF_8000_0000), Some((3, 0x8000_0000)));
        // movsx eax, byte [rax]: sign-extends to 32, then zero-extends
        let a = decode_mmio(&[0x0F, 0xBE, 0x00]).unwrap();
        assert_eq!(a.read_result(old, 0x80), Some((0, 0xFFFF_FF80)));
        // movsx ax, byte [rax]: bits 63:16 kept
        let a = decode_mmio(&[0x66, 0x0F, 0xBE, 0x00]).unwrap();
        assert_eq!(a.read_result(old, 0xFE), Some((0, 0xAAAA_AAAA_AAAA_FFFE)));
        // movzx rax, word [rax]
        let a = decode_mmio(&[0x48, 0x0F, 0xB7, 0x00]).unwrap();
        assert_eq!(a.read_result(old, 0xFFFF_8001), Some((0, 0x8001)));
        // movsxd r8, dword [rax]
        let a = decode_mmio(&[0x4C, 0x63, 0x00]).unwrap();
        assert_eq!(a.read_result(old, 0x8000_0000), Some((8, 0xFFFF_FFFF_8000_0000)));
        // mov rax, [rax]
        let a = decode_mmio(&[0x48, 0x8B, 0x00]).unwrap();
        assert_eq!(a.read_result(old, 7), Some((0, 7)));
    }

    /// The hand-written prefix walk this module used before iced-x86, kept as
    /// a reference: on its accepted inputs without LOCK, the two must agree.
    fn reference_length(bytes: &[u8], expected: Intercepted) -> Result<usize, DecodeError> {
        let legacy = |b: u8| {
            matches!(
                b,
                0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3
            )
        };
        let mut i = 0;
        while i < bytes.len() && legacy(bytes[i]) {
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
            // F3 is PAUSE's opcode, not a prefix to walk: not generated below.
            Intercepted::Pause => unreachable!("PAUSE is tested on its own"),
        };
        let rest = &bytes[i..];
        if rest.len() < opcode.len() {
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

    fn any_intercepted() -> impl Strategy<Value = Intercepted> {
        prop_oneof![
            Just(Intercepted::Cpuid),
            Just(Intercepted::Rdmsr),
            Just(Intercepted::Wrmsr),
            Just(Intercepted::Vmmcall),
            Just(Intercepted::Hlt),
            Just(Intercepted::Invd),
        ]
    }

    fn opcode(kind: Intercepted) -> &'static [u8] {
        match kind {
            Intercepted::Cpuid => &[0x0F, 0xA2],
            Intercepted::Rdmsr => &[0x0F, 0x32],
            Intercepted::Wrmsr => &[0x0F, 0x30],
            Intercepted::Vmmcall => &[0x0F, 0x01, 0xD9],
            Intercepted::Hlt => &[0xF4],
            Intercepted::Invd => &[0x0F, 0x08],
            Intercepted::Pause => unreachable!("PAUSE is tested on its own"),
        }
    }

    /// Segment, operand-size and address-size prefixes: ignored by all six
    /// instructions (F2/F3 turn `0F 01 D9` into VMGEXIT, LOCK makes #UD).
    fn neutral_prefix() -> impl Strategy<Value = u8> {
        prop::sample::select(vec![0x26u8, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67])
    }

    proptest! {
        /// Prefixes + optional REX + the opcode + anything: the length is
        /// the prefix count plus the opcode length, as the old walk said.
        #[test]
        fn length_matches_prefix_walk(
            kind in any_intercepted(),
            prefixes in prop::collection::vec(neutral_prefix(), 0..8),
            rex in prop::option::of(0x40u8..=0x4F),
            tail in prop::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut bytes = prefixes.clone();
            bytes.extend(rex);
            bytes.extend_from_slice(opcode(kind));
            bytes.extend_from_slice(&tail);
            let expect = prefixes.len() + usize::from(rex.is_some()) + opcode(kind).len();
            prop_assert_eq!(length(&bytes, kind), Ok(expect));
            prop_assert_eq!(reference_length(&bytes, kind), Ok(expect));
            // Every proper prefix of the instruction is truncated.
            for cut in 0..expect {
                prop_assert_eq!(length(&bytes[..cut], kind), Err(DecodeError::Truncated));
            }
        }

        /// Never panics, never claims more than was given or than 15 bytes,
        /// and whenever it succeeds the old walk agrees (iced may refuse
        /// more, e.g. LOCK, but never accepts what the walk refused, except
        /// a REX prefix followed by more prefixes, which the CPU ignores).
        #[test]
        fn length_is_sound(kind in any_intercepted(), bytes in prop::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(len) = length(&bytes, kind) {
                prop_assert!(len <= bytes.len().min(MAX_LEN));
                let prefixes = &bytes[..len - opcode(kind).len()];
                prop_assert_eq!(&bytes[prefixes.len()..len], opcode(kind));
                match reference_length(&bytes, kind) {
                    Ok(l) => prop_assert_eq!(l, len),
                    Err(_) => {
                        let rex = |b: &u8| (0x40..=0x4F).contains(b);
                        let early_rex = prefixes.iter().rev().skip(1).any(rex);
                        let vmgexit = kind == Intercepted::Vmmcall
                            && prefixes.iter().any(|b| matches!(b, 0xF2 | 0xF3));
                        prop_assert!(early_rex || vmgexit, "{:x?}", bytes);
                    }
                }
            }
        }

        /// MOV CRn, reg with random prefixes, REX and ModRM.
        #[test]
        fn mov_to_cr_fields(
            prefixes in prop::collection::vec(neutral_prefix(), 0..6),
            rex in prop::option::of(0x40u8..=0x4F),
            modrm in any::<u8>(),
        ) {
            let mut bytes = prefixes.clone();
            bytes.extend(rex);
            bytes.extend_from_slice(&[0x0F, 0x22, modrm]);
            let rex = rex.unwrap_or(0);
            let cr = ((modrm >> 3) & 7) | ((rex & 4) << 1);
            let gpr = (modrm & 7) | ((rex & 1) << 3);
            let got = decode_mov_to_cr(&bytes);
            // Only CR0, CR2-CR4 and CR8 exist; the rest are #UD.
            if matches!(cr, 0 | 2 | 3 | 4 | 8) {
                prop_assert_eq!(got, Ok(MovToCr { cr, gpr, len: bytes.len() }));
            } else {
                prop_assert_eq!(got, Err(DecodeError::Mismatch));
            }
        }

        /// decode_mmio never panics, and what it accepts is self-consistent.
        #[test]
        fn mmio_is_sound(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(a) = decode_mmio(&bytes) {
                prop_assert!(a.len <= bytes.len().min(MAX_LEN));
                prop_assert!(matches!(a.size, 1 | 2 | 4 | 8));
                match a.op {
                    MmioOp::Read { dest, extend } => {
                        prop_assert!(dest.num < 16);
                        if extend == Extend::None {
                            prop_assert_eq!(dest.width, a.size);
                        } else {
                            prop_assert!(dest.width > a.size);
                        }
                    }
                    MmioOp::Write { src: WriteSource::Gpr(g) } => {
                        prop_assert!(g.num < 16);
                        prop_assert_eq!(g.width, a.size);
                    }
                    MmioOp::Write { src: WriteSource::Imm(v) } => {
                        prop_assert_eq!(v & !mask(a.size), 0);
                    }
                }
                // A decoded access stays the same with trailing garbage.
                let mut longer = bytes[..a.len].to_vec();
                longer.extend_from_slice(&[0xCC; 4]);
                prop_assert_eq!(decode_mmio(&longer), Ok(a));
            }
        }
    }
}
