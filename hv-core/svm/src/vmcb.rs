//! The VMCB: a 4 KiB control + save area.

use core::fmt;
use core::mem::offset_of;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A segment register in the save area.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Attributes: descriptor bits 47:40 in 7:0 and 55:52 in 11:8.
    pub attrib: u16,
    /// Expanded byte limit.
    pub limit: u32,
    /// Base.
    pub base: u64,
}
const _: () = assert!(size_of::<Segment>() == 16);

impl Segment {
    /// Build from a raw 8-byte GDT descriptor and its selector (for a 64-bit
    /// code/data segment the base of the low descriptor is used).
    pub fn from_descriptor(selector: u16, desc: u64) -> Self {
        if selector & !3 == 0 {
            return Self {
                selector,
                ..Default::default()
            };
        }
        let attrib = (((desc >> 40) & 0xFF) | ((desc >> 44) & 0xF00)) as u16;
        let raw_limit = ((desc & 0xFFFF) | ((desc >> 32) & 0xF_0000)) as u32;
        let granular = attrib & (1 << 11) != 0;
        let limit = if granular {
            (raw_limit << 12) | 0xFFF
        } else {
            raw_limit
        };
        let base = ((desc >> 16) & 0xFF_FFFF) | (((desc >> 56) & 0xFF) << 24);
        Self {
            selector,
            attrib,
            limit,
            base,
        }
    }

    /// Descriptor privilege level.
    pub fn dpl(&self) -> u8 {
        ((self.attrib >> 5) & 3) as u8
    }
}

/// The control area (VMCB 0x000–0x3FF).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ControlArea {
    /// CR read (15:0) / write (31:16) intercepts.
    pub intercept_cr: u32,
    /// DR read / write intercepts.
    pub intercept_dr: u32,
    /// Exception intercepts, bit n = vector n.
    pub intercept_exceptions: u32,
    /// Word 3 intercepts ([`intercept::INTR`] …).
    pub intercept_misc1: u32,
    /// Word 4 intercepts ([`intercept::VMRUN`] …).
    pub intercept_misc2: u32,
    /// Word 5 intercepts.
    pub intercept_misc3: u32,
    reserved_018: [u8; 0x24],
    /// Pause filter threshold.
    pub pause_filter_threshold: u16,
    /// Pause filter count.
    pub pause_filter_count: u16,
    /// IOPM physical base (12 KiB).
    pub iopm_base_pa: u64,
    /// MSRPM physical base (8 KiB).
    pub msrpm_base_pa: u64,
    /// TSC offset.
    pub tsc_offset: u64,
    /// Guest ASID (non-zero).
    pub guest_asid: u32,
    /// TLB control.
    pub tlb_control: u8,
    reserved_05d: [u8; 3],
    /// V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING …
    pub int_ctl: u32,
    /// V_INTR_VECTOR.
    pub int_vector: u32,
    /// Bit 0 interrupt shadow.
    pub int_state: u64,
    /// EXITCODE.
    pub exit_code: u64,
    /// EXITINFO1.
    pub exit_info1: u64,
    /// EXITINFO2.
    pub exit_info2: u64,
    /// EXITINTINFO.
    pub exit_int_info: u32,
    /// EXITINTINFO error code.
    pub exit_int_info_err: u32,
    /// Bit 0 NP_ENABLE.
    pub nested_ctl: u64,
    /// AVIC APIC BAR.
    pub avic_apic_bar: u64,
    /// GHCB GPA.
    pub ghcb_gpa: u64,
    /// EVENTINJ.
    pub event_inj: u32,
    /// EVENTINJ error code.
    pub event_inj_err: u32,
    /// N_CR3.
    pub nested_cr3: u64,
    /// LBR virtualization enable etc.
    pub virt_ext: u64,
    /// VMCB clean bits.
    pub clean: u32,
    reserved_0c4: u32,
    /// Next RIP (never written by QEMU TCG).
    pub next_rip: u64,
    /// Bytes fetched.
    pub insn_len: u8,
    /// Guest instruction bytes.
    pub insn_bytes: [u8; 15],
    reserved_0e0: [u8; 0x320],
}
const _: () = assert!(size_of::<ControlArea>() == 0x400);
const _: () = assert!(offset_of!(ControlArea, iopm_base_pa) == 0x040);
const _: () = assert!(offset_of!(ControlArea, guest_asid) == 0x058);
const _: () = assert!(offset_of!(ControlArea, int_ctl) == 0x060);
const _: () = assert!(offset_of!(ControlArea, exit_code) == 0x070);
const _: () = assert!(offset_of!(ControlArea, exit_int_info) == 0x088);
const _: () = assert!(offset_of!(ControlArea, nested_ctl) == 0x090);
const _: () = assert!(offset_of!(ControlArea, event_inj) == 0x0A8);
const _: () = assert!(offset_of!(ControlArea, nested_cr3) == 0x0B0);
const _: () = assert!(offset_of!(ControlArea, next_rip) == 0x0C8);

/// The state save area (VMCB 0x400–0xFFF).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SaveArea {
    /// ES.
    pub es: Segment,
    /// CS.
    pub cs: Segment,
    /// SS.
    pub ss: Segment,
    /// DS.
    pub ds: Segment,
    /// FS.
    pub fs: Segment,
    /// GS.
    pub gs: Segment,
    /// GDTR (limit and base used).
    pub gdtr: Segment,
    /// LDTR.
    pub ldtr: Segment,
    /// IDTR (limit and base used).
    pub idtr: Segment,
    /// TR.
    pub tr: Segment,
    reserved_4a0: [u8; 0x2A],
    /// VMPL.
    pub vmpl: u8,
    /// CPL (QEMU takes CPL from SS.DPL instead; keep them equal).
    pub cpl: u8,
    reserved_4cc: [u8; 4],
    /// EFER (must keep SVME set).
    pub efer: u64,
    reserved_4d8: [u8; 0x70],
    /// CR4.
    pub cr4: u64,
    /// CR3.
    pub cr3: u64,
    /// CR0.
    pub cr0: u64,
    /// DR7.
    pub dr7: u64,
    /// DR6.
    pub dr6: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RIP.
    pub rip: u64,
    reserved_580: [u8; 0x58],
    /// RSP.
    pub rsp: u64,
    /// S_CET.
    pub s_cet: u64,
    /// SSP.
    pub ssp: u64,
    /// ISST address.
    pub isst_addr: u64,
    /// RAX.
    pub rax: u64,
    /// STAR.
    pub star: u64,
    /// LSTAR.
    pub lstar: u64,
    /// CSTAR.
    pub cstar: u64,
    /// SFMASK.
    pub sfmask: u64,
    /// KernelGsBase.
    pub kernel_gs_base: u64,
    /// SYSENTER_CS.
    pub sysenter_cs: u64,
    /// SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// CR2.
    pub cr2: u64,
    reserved_648: [u8; 0x20],
    /// Guest PAT.
    pub g_pat: u64,
    /// DBGCTL.
    pub dbgctl: u64,
    /// BR_FROM.
    pub br_from: u64,
    /// BR_TO.
    pub br_to: u64,
    /// LASTEXCP_FROM.
    pub last_excp_from: u64,
    /// LASTEXCP_TO.
    pub last_excp_to: u64,
    reserved_698: [u8; 0x968],
}
const _: () = assert!(size_of::<SaveArea>() == 0xC00);
const _: () = assert!(offset_of!(SaveArea, tr) == 0x490 - 0x400);
const _: () = assert!(offset_of!(SaveArea, cpl) == 0x4CB - 0x400);
const _: () = assert!(offset_of!(SaveArea, efer) == 0x4D0 - 0x400);
const _: () = assert!(offset_of!(SaveArea, cr4) == 0x548 - 0x400);
const _: () = assert!(offset_of!(SaveArea, rflags) == 0x570 - 0x400);
const _: () = assert!(offset_of!(SaveArea, rip) == 0x578 - 0x400);
const _: () = assert!(offset_of!(SaveArea, rsp) == 0x5D8 - 0x400);
const _: () = assert!(offset_of!(SaveArea, rax) == 0x5F8 - 0x400);
const _: () = assert!(offset_of!(SaveArea, star) == 0x600 - 0x400);
const _: () = assert!(offset_of!(SaveArea, cr2) == 0x640 - 0x400);
const _: () = assert!(offset_of!(SaveArea, g_pat) == 0x668 - 0x400);

/// A whole VMCB page.
#[repr(C, align(4096))]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Vmcb {
    /// Control area.
    pub control: ControlArea,
    /// Save area.
    pub save: SaveArea,
}
const _: () = assert!(size_of::<Vmcb>() == 4096);

/// Intercept bits.
pub mod intercept {
    /// Word 3: physical INTR.
    pub const INTR: u32 = 1 << 0;
    /// Word 3: NMI.
    pub const NMI: u32 = 1 << 1;
    /// Word 3: INIT.
    pub const INIT: u32 = 1 << 3;
    /// Word 3: virtual interrupt window.
    pub const VINTR: u32 = 1 << 4;
    /// Word 3: CPUID.
    pub const CPUID: u32 = 1 << 18;
    /// Word 3: INVD.
    pub const INVD: u32 = 1 << 22;
    /// Word 3: PAUSE.
    pub const PAUSE: u32 = 1 << 23;
    /// Word 3: HLT.
    pub const HLT: u32 = 1 << 24;
    /// Word 3: INVLPGA.
    pub const INVLPGA: u32 = 1 << 26;
    /// Word 3: IN/OUT through the IOPM.
    pub const IOIO_PROT: u32 = 1 << 27;
    /// Word 3: RDMSR/WRMSR through the MSRPM.
    pub const MSR_PROT: u32 = 1 << 28;
    /// Word 3: shutdown (triple fault).
    pub const SHUTDOWN: u32 = 1 << 31;
    /// Word 4: VMRUN (mandatory).
    pub const VMRUN: u32 = 1 << 0;
    /// Word 4: VMMCALL.
    pub const VMMCALL: u32 = 1 << 1;
    /// Word 4: VMLOAD.
    pub const VMLOAD: u32 = 1 << 2;
    /// Word 4: VMSAVE.
    pub const VMSAVE: u32 = 1 << 3;
    /// Word 4: STGI.
    pub const STGI: u32 = 1 << 4;
    /// Word 4: CLGI.
    pub const CLGI: u32 = 1 << 5;
    /// Word 4: SKINIT.
    pub const SKINIT: u32 = 1 << 6;
    /// Word 4: MONITOR.
    pub const MONITOR: u32 = 1 << 10;
    /// Word 4: MWAIT.
    pub const MWAIT: u32 = 1 << 11;
    /// Word 4: MWAIT (conditional).
    pub const MWAIT_COND: u32 = 1 << 12;
    /// Word 4: XSETBV.
    pub const XSETBV: u32 = 1 << 13;
}

/// EFER.SVME.
pub const EFER_SVME: u64 = 1 << 12;
/// NP_ENABLE in `nested_ctl`.
pub const NP_ENABLE: u64 = 1 << 0;
/// TLB_CONTROL: flush all ASIDs.
pub const TLB_FLUSH_ALL: u8 = 1;
/// TLB_CONTROL: no flush; the guest's ASID keeps its TLB entries.
pub const TLB_DO_NOTHING: u8 = 0;

/// EVENTINJ / EXITINTINFO encodings.
pub mod event {
    /// Valid bit.
    pub const VALID: u32 = 1 << 31;
    /// Error code valid.
    pub const ERROR_VALID: u32 = 1 << 11;
    /// Type: external interrupt.
    pub const TYPE_INTR: u32 = 0 << 8;
    /// Type: NMI.
    pub const TYPE_NMI: u32 = 2 << 8;
    /// Type: exception.
    pub const TYPE_EXCEPTION: u32 = 3 << 8;
    /// Type: software interrupt.
    pub const TYPE_SOFT: u32 = 4 << 8;

    /// An exception with an error code.
    pub const fn exception_with_error(vector: u8) -> u32 {
        VALID | TYPE_EXCEPTION | ERROR_VALID | vector as u32
    }

    /// An exception without an error code.
    pub const fn exception(vector: u8) -> u32 {
        VALID | TYPE_EXCEPTION | vector as u32
    }
}

/// An #VMEXIT code. Open: any value the CPU writes is representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct ExitCode(pub u64);

impl ExitCode {
    /// Exception 0..31 (0x40 + vector).
    pub const EXCEPTION_BASE: u64 = 0x40;
    /// Physical interrupt.
    pub const INTR: Self = Self(0x60);
    /// NMI.
    pub const NMI: Self = Self(0x61);
    /// INIT.
    pub const INIT: Self = Self(0x63);
    /// Virtual interrupt window.
    pub const VINTR: Self = Self(0x64);
    /// CPUID.
    pub const CPUID: Self = Self(0x72);
    /// PAUSE.
    pub const PAUSE: Self = Self(0x77);
    /// INVD.
    pub const INVD: Self = Self(0x76);
    /// INVLPGA.
    pub const INVLPGA: Self = Self(0x7A);
    /// HLT.
    pub const HLT: Self = Self(0x78);
    /// IN/OUT.
    pub const IOIO: Self = Self(0x7B);
    /// RDMSR/WRMSR.
    pub const MSR: Self = Self(0x7C);
    /// Shutdown.
    pub const SHUTDOWN: Self = Self(0x7F);
    /// VMRUN.
    pub const VMRUN: Self = Self(0x80);
    /// VMMCALL.
    pub const VMMCALL: Self = Self(0x81);
    /// MONITOR.
    pub const MONITOR: Self = Self(0x8A);
    /// MWAIT.
    pub const MWAIT: Self = Self(0x8B);
    /// MWAIT (conditional).
    pub const MWAIT_COND: Self = Self(0x8C);
    /// XSETBV.
    pub const XSETBV: Self = Self(0x8D);
    /// MOV to CR4 (VMEXIT_CR4_WRITE; CR0-15 writes are 0x10-0x1F).
    pub const CR4_WRITE: Self = Self(0x14);
    /// Nested page fault.
    pub const NPF: Self = Self(0x400);

    /// Exits of instructions partitions are not offered (SVM, INVLPGA,
    /// MONITOR/MWAIT, XSETBV): the guest gets #UD.
    pub fn is_refused_instruction(self) -> bool {
        matches!(self.0, 0x80..=0x86 | 0x7A | 0x8A..=0x8D)
    }

    /// VMEXIT_INVALID: QEMU stores it as a zero-extended u32, hardware as -1.
    pub fn is_invalid(self) -> bool {
        self.0 as u32 == 0xFFFF_FFFF
    }

    /// A short stable name for logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            Self::INTR => "intr",
            Self::NMI => "nmi",
            Self::INIT => "init",
            Self::VINTR => "vintr",
            Self::CPUID => "cpuid",
            Self::HLT => "hlt",
            Self::IOIO => "ioio",
            Self::MSR => "msr",
            Self::SHUTDOWN => "shutdown",
            Self::VMRUN => "vmrun",
            Self::VMMCALL => "vmmcall",
            Self::NPF => "npf",
            Self::CR4_WRITE => "cr4_write",
            c if c.is_invalid() => "invalid",
            Self(c) if (0x40..0x60).contains(&c) => "exception",
            _ => "other",
        }
    }
}

impl fmt::Debug for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({:#x})", self.name(), self.0)
    }
}

/// NPF EXITINFO1 bits.
pub mod npf {
    /// The page was present (a permission fault).
    pub const PRESENT: u64 = 1 << 0;
    /// The access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// The access was an instruction fetch.
    pub const FETCH: u64 = 1 << 4;
    /// The fault hit the final guest-physical address.
    pub const FINAL_GPA: u64 = 1 << 32;
    /// The fault hit while walking the guest page tables.
    pub const GUEST_PAGE_TABLE: u64 = 1 << 33;
}

/// MSR permission map helpers (APM 15.11): 2 bits per MSR, read then write.
pub mod msrpm {
    /// Size of the MSRPM.
    pub const SIZE: usize = 8192;

    /// Byte offset and bit index of the *read* bit for `msr`, or `None` for an
    /// MSR outside the three mapped ranges (those always exit).
    pub fn position(msr: u32) -> Option<(usize, u8)> {
        let (base, byte_base) = match msr {
            0x0000_0000..=0x0000_1FFF => (0x0000_0000, 0x000),
            0xC000_0000..=0xC000_1FFF => (0xC000_0000, 0x800),
            0xC001_0000..=0xC001_1FFF => (0xC001_0000, 0x1000),
            _ => return None,
        };
        let bit = (msr - base) as usize * 2;
        Some((byte_base + bit / 8, (bit % 8) as u8))
    }

    /// Mark `msr` as intercepted for reads and/or writes.
    pub fn intercept(map: &mut [u8; SIZE], msr: u32, read: bool, write: bool) -> bool {
        let Some((byte, bit)) = position(msr) else {
            return false;
        };
        if read {
            map[byte] |= 1 << bit;
        }
        if write {
            map[byte] |= 1 << (bit + 1);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msrpm_positions_match_the_apm_examples() {
        assert_eq!(msrpm::position(0xC000_0080), Some((0x820, 0))); // EFER
        assert_eq!(msrpm::position(0x1B), Some((0x006, 6))); // APIC_BASE
        assert_eq!(msrpm::position(0x277), Some((0x09D, 6))); // PAT
        assert_eq!(msrpm::position(0xC001_0117), Some((0x1045, 6))); // VM_HSAVE_PA
        assert_eq!(msrpm::position(0x4000_0000), None); // synthetic: always exits
        let mut map = [0u8; msrpm::SIZE];
        assert!(msrpm::intercept(&mut map, 0xC000_0080, false, true));
        assert_eq!(map[0x820], 0b10);
    }

    #[test]
    fn segment_from_gdt_descriptor() {
        // 64-bit kernel code: 0x00AF9A000000FFFF.
        let cs = Segment::from_descriptor(0x08, 0x00AF_9A00_0000_FFFF);
        assert_eq!(cs.attrib, 0xA9A);
        assert_eq!(cs.limit, 0xFFFF_FFFF);
        assert_eq!(cs.base, 0);
        assert_eq!(cs.dpl(), 0);
        // Data, DPL 3.
        let ds = Segment::from_descriptor(0x23, 0x00CF_F200_0000_FFFF);
        assert_eq!(ds.dpl(), 3);
        // Null selector.
        assert_eq!(Segment::from_descriptor(0, u64::MAX), Segment::default());
    }

    #[test]
    fn invalid_exit_matches_qemu_and_hardware() {
        assert!(ExitCode(0xFFFF_FFFF).is_invalid());
        assert!(ExitCode(u64::MAX).is_invalid());
        assert!(!ExitCode::NPF.is_invalid());
        assert_eq!(ExitCode(0x4E).name(), "exception");
    }
}
