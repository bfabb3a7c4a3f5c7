//! What a partition may put in CR4, and the CPUID bits that must agree.
//!
//! hv-core switches per partition only what VMRUN switches plus the x87/SSE
//! (FXSAVE) area and DR0-DR3. Features whose state lives elsewhere — XSAVE
//! components behind XCR0 (CR4.OSXSAVE), protection keys in PKRU (CR4.PKE,
//! CR4.PKS), CET's shadow-stack MSRs (CR4.CET) — would leak between
//! partitions, so they are hidden consistently: CPUID does not report them
//! and a MOV to CR4 that sets their bit gets #GP, exactly as on a CPU
//! without them (APM vol. 2 §3.1.3 "CR4 Register": setting a reserved or
//! unsupported CR4 bit raises #GP). 5-level paging (CR4.LA57) is hidden too:
//! hv-core's own walk of guest page tables is 4-level.

/// CR4.VME … OSXMMEXCPT (bits 0-10): on every x86-64 CPU.
const BASE: u64 = 0x7FF;
/// CR4.UMIP.
pub const UMIP: u64 = 1 << 11;
/// CR4.LA57.
pub const LA57: u64 = 1 << 12;
/// CR4.FSGSBASE.
pub const FSGSBASE: u64 = 1 << 16;
/// CR4.PCIDE.
pub const PCIDE: u64 = 1 << 17;
/// CR4.OSXSAVE.
pub const OSXSAVE: u64 = 1 << 18;
/// CR4.SMEP.
pub const SMEP: u64 = 1 << 20;
/// CR4.SMAP.
pub const SMAP: u64 = 1 << 21;
/// CR4.PKE.
pub const PKE: u64 = 1 << 22;
/// CR4.CET.
pub const CET: u64 = 1 << 23;
/// CR4.PAE.
pub const PAE: u64 = 1 << 5;

/// The CPU's CPUID words the policy depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// Leaf 1 ECX.
    pub leaf1_ecx: u32,
    /// Leaf 7 subleaf 0 EBX.
    pub leaf7_ebx: u32,
    /// Leaf 7 subleaf 0 ECX.
    pub leaf7_ecx: u32,
}

/// Leaf 1 ECX bits never shown to a partition: MONITOR (3), XSAVE (26),
/// OSXSAVE (27).
pub const LEAF1_ECX_HIDDEN: u32 = (1 << 3) | (1 << 26) | (1 << 27);
/// Leaf 7 ECX bits never shown: UMIP stays; PKU (3), OSPKE (4), CET_SS (7),
/// LA57 (16), PKS (31).
pub const LEAF7_ECX_HIDDEN: u32 = (1 << 3) | (1 << 4) | (1 << 7) | (1 << 16) | (1 << 31);
/// Leaf 7 EDX bits never shown: CET_IBT (20).
pub const LEAF7_EDX_HIDDEN: u32 = 1 << 20;

/// CR4 bits a partition may set on a CPU with `f`: the base bits plus
/// UMIP, FSGSBASE, PCIDE, SMEP and SMAP when the CPU has them; never the
/// hidden features above.
pub fn cr4_allowed(f: CpuFeatures) -> u64 {
    let mut allowed = BASE;
    let has = |word: u32, bit: u32| word & (1 << bit) != 0;
    if has(f.leaf7_ecx, 2) {
        allowed |= UMIP;
    }
    if has(f.leaf7_ebx, 0) {
        allowed |= FSGSBASE;
    }
    if has(f.leaf1_ecx, 17) {
        allowed |= PCIDE;
    }
    if has(f.leaf7_ebx, 7) {
        allowed |= SMEP;
    }
    if has(f.leaf7_ebx, 20) {
        allowed |= SMAP;
    }
    allowed
}

/// Why a CR4 value is refused (the guest gets #GP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cr4Error {
    /// A bit the partition may not set (reserved, or a hidden feature).
    Reserved(u64),
    /// PAE cleared in long mode.
    PaeInLongMode,
    /// PCIDE set outside long mode or with CR3[11:0] non-zero.
    Pcide,
}

/// Check a MOV to CR4 (APM vol. 2 §3.1.3 and the MOV CRn #GP conditions).
pub fn check_cr4(value: u64, allowed: u64, long_mode: bool, old: u64, cr3: u64) -> Result<(), Cr4Error> {
    let bad = value & !allowed;
    if bad != 0 {
        return Err(Cr4Error::Reserved(bad));
    }
    if long_mode && value & PAE == 0 {
        return Err(Cr4Error::PaeInLongMode);
    }
    if value & PCIDE != 0 && old & PCIDE == 0 && (!long_mode || cr3 & 0xFFF != 0) {
        return Err(Cr4Error::Pcide);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: CpuFeatures = CpuFeatures {
        leaf1_ecx: u32::MAX,
        leaf7_ebx: u32::MAX,
        leaf7_ecx: u32::MAX,
    };

    #[test]
    fn features_that_would_leak_are_never_allowed() {
        let allowed = cr4_allowed(ALL);
        for bit in [OSXSAVE, PKE, CET, LA57, 1 << 24, 1 << 13, 1 << 14] {
            assert_eq!(allowed & bit, 0, "{bit:#x}");
            assert_eq!(
                check_cr4(0x20 | bit, allowed, true, 0x20, 0),
                Err(Cr4Error::Reserved(bit))
            );
        }
        assert_ne!(allowed & (UMIP | FSGSBASE | PCIDE | SMEP | SMAP), 0);
    }

    #[test]
    fn optional_bits_follow_the_cpu() {
        let none = cr4_allowed(CpuFeatures::default());
        assert_eq!(none, BASE);
        assert!(check_cr4(0x6A0, none, true, 0x20, 0).is_ok());
        assert_eq!(
            check_cr4(0x20 | FSGSBASE, none, true, 0x20, 0),
            Err(Cr4Error::Reserved(FSGSBASE))
        );
    }

    #[test]
    fn architectural_rules() {
        let allowed = cr4_allowed(ALL);
        assert_eq!(check_cr4(0, allowed, true, PAE, 0), Err(Cr4Error::PaeInLongMode));
        assert!(check_cr4(0, allowed, false, 0, 0).is_ok());
        assert_eq!(
            check_cr4(PAE | PCIDE, allowed, false, PAE, 0),
            Err(Cr4Error::Pcide)
        );
        assert_eq!(
            check_cr4(PAE | PCIDE, allowed, true, PAE, 0x123000 | 5),
            Err(Cr4Error::Pcide)
        );
        assert!(check_cr4(PAE | PCIDE, allowed, true, PAE, 0x123000).is_ok());
        // Already on: CR3's low bits are the PCID then.
        assert!(check_cr4(PAE | PCIDE, allowed, true, PAE | PCIDE, 0x123005).is_ok());
    }

    #[test]
    fn hidden_cpuid_bits_match_the_refused_cr4_bits() {
        // XSAVE/OSXSAVE hidden <-> OSXSAVE refused; PKU <-> PKE; CET <-> CET.
        assert_ne!(LEAF1_ECX_HIDDEN & (1 << 26), 0);
        assert_ne!(LEAF7_ECX_HIDDEN & (1 << 3), 0);
        assert_ne!(LEAF7_ECX_HIDDEN & (1 << 7), 0);
        assert_ne!(LEAF7_EDX_HIDDEN & (1 << 20), 0);
        assert_ne!(LEAF7_ECX_HIDDEN & (1 << 16), 0);
    }
}
