//! The types the embedding code sees: configuration, effects, errors and the
//! inspection snapshot.

use core::fmt;

/// IA32_APIC_BASE (SDM Vol. 3A §10.4.4, Figure 10-5; AMD APM Vol. 2 §16.3.1).
pub const APIC_BASE_MSR: u32 = 0x1B;
/// IA32_TSC_DEADLINE (SDM Vol. 3A §10.5.4.1).
pub const TSC_DEADLINE_MSR: u32 = 0x6E0;
/// First x2APIC register MSR (SDM Vol. 3A §10.12.1.2, Table 10-6).
pub const X2APIC_MSR_FIRST: u32 = 0x800;
/// Last MSR of the architectural x2APIC range (0x800–0x8FF).
pub const X2APIC_MSR_LAST: u32 = 0x8FF;
/// Power-on physical base of the xAPIC register page.
pub const DEFAULT_APIC_BASE: u64 = 0xFEE0_0000;
/// The version register: version 0x14 (integrated APIC), max LVT entry 5 (six
/// LVTs: timer, thermal, perf, LINT0, LINT1, error; no CMCI), bit 24 clear (no
/// EOI-broadcast suppression). The same value OpenVMM reports
/// (`vmm_core/virt_support_apic`, `APIC_VERSION`).
pub const APIC_VERSION: u32 = 0x0005_0014;
/// APIC timer frequency Hyper-V reports in HV_X64_MSR_APIC_FREQUENCY
/// (200 MHz); a sensible value for [`Config::timer_hz`].
pub const HYPERV_APIC_TIMER_HZ: u64 = 200_000_000;
/// Largest accepted [`Config::timer_hz`] / [`Config::tsc_hz`] (1 THz): keeps
/// every tick/nanosecond conversion inside `u128` without overflow.
pub const MAX_FREQUENCY_HZ: u64 = 1_000_000_000_000;

/// Error status register bits (SDM Vol. 3A §10.5.3, Figure 10-9).
pub mod esr {
    /// The APIC refused to send an IPI with a vector in 0–15.
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    /// An interrupt with a vector in 0–15 was received or generated locally
    /// (LVT, self-IPI, [`crate::Vlapic::request`]).
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    /// A reserved xAPIC register was accessed.
    pub const ILLEGAL_REGISTER_ADDRESS: u32 = 1 << 7;
}

/// Per-VP construction parameters. They come from the partition's CPUID
/// policy and clock setup, never from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The APIC id (the x2APIC id; in xAPIC mode its low 8 bits). Must match
    /// CPUID and the MADT.
    pub apic_id: u32,
    /// Whether this VP is the bootstrap processor (IA32_APIC_BASE bit 8).
    pub bsp: bool,
    /// Frequency of the APIC timer clock before the divide configuration, in
    /// Hz (what HV_X64_MSR_APIC_FREQUENCY reports). 1 ..= [`MAX_FREQUENCY_HZ`].
    pub timer_hz: u64,
    /// Guest TSC frequency in Hz, for TSC-deadline mode.
    /// 1 ..= [`MAX_FREQUENCY_HZ`].
    pub tsc_hz: u64,
    /// CPUID.1:ECX bit 21: the guest may set IA32_APIC_BASE.EXTD.
    pub x2apic: bool,
    /// CPUID.1:ECX bit 24: TSC-deadline timer mode and MSR 0x6E0 exist.
    pub tsc_deadline: bool,
    /// MAXPHYADDR (CPUID 0x8000_0008 EAX bits 7:0): IA32_APIC_BASE bits at and
    /// above it are reserved. 32 ..= 52.
    pub phys_addr_bits: u8,
}

impl Config {
    /// A configuration with x2APIC allowed, TSC-deadline off and a 48-bit
    /// physical address width; the VP is the BSP when `apic_id` is 0.
    pub const fn new(apic_id: u32, timer_hz: u64, tsc_hz: u64) -> Self {
        Self {
            apic_id,
            bsp: apic_id == 0,
            timer_hz,
            tsc_hz,
            x2apic: true,
            tsc_deadline: false,
            phys_addr_bits: 48,
        }
    }

    /// Checks the configuration (see [`ConfigError`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timer_hz == 0 || self.tsc_hz == 0 {
            return Err(ConfigError::ZeroFrequency);
        }
        if self.timer_hz > MAX_FREQUENCY_HZ || self.tsc_hz > MAX_FREQUENCY_HZ {
            return Err(ConfigError::FrequencyTooHigh);
        }
        // 0xFF / 0xFFFF_FFFF are the broadcast destinations.
        let limit = if self.x2apic { 0xFFFF_FFFE } else { 0xFE };
        if self.apic_id > limit {
            return Err(ConfigError::ApicIdTooLarge);
        }
        if !(32..=52).contains(&self.phys_addr_bits) {
            return Err(ConfigError::PhysAddrBits);
        }
        Ok(())
    }
}

/// Why [`crate::Vlapic::new`] refused a [`Config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// `timer_hz` or `tsc_hz` is zero.
    ZeroFrequency,
    /// `timer_hz` or `tsc_hz` is above [`MAX_FREQUENCY_HZ`].
    FrequencyTooHigh,
    /// The id is a broadcast id, or above 0xFE without x2APIC.
    ApicIdTooLarge,
    /// `phys_addr_bits` is outside 32 ..= 52.
    PhysAddrBits,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroFrequency => "zero timer or TSC frequency",
            Self::FrequencyTooHigh => "timer or TSC frequency above 1 THz",
            Self::ApicIdTooLarge => "APIC id is a broadcast id or needs x2APIC",
            Self::PhysAddrBits => "physical address width outside 32..=52",
        })
    }
}

/// The APIC mode selected by IA32_APIC_BASE.EN/EXTD (SDM Vol. 3A §10.12.5,
/// Table 10-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicMode {
    /// EN = 0: the APIC is off; MSRs 0x800+ #GP, the MMIO page is not decoded.
    Disabled,
    /// EN = 1, EXTD = 0: registers in the 4 KiB MMIO page.
    XApic,
    /// EN = 1, EXTD = 1: registers in MSRs 0x800–0x8FF.
    X2Apic,
}

/// Trigger mode of an interrupt (sets or clears its TMR bit on acceptance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Edge-triggered.
    Edge,
    /// Level-triggered: EOI of it reports [`Effect::LevelEoi`].
    Level,
}

/// ICR delivery mode of an IPI the caller must route (SDM Vol. 3A §10.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// 000: the vector to the destination(s).
    Fixed,
    /// 001: the vector to one of the destinations (the caller may treat it as
    /// Fixed to the first match).
    LowestPriority,
    /// 010: SMI (the caller will normally drop it).
    Smi,
    /// 100: NMI.
    Nmi,
    /// 101: INIT (level assert only; de-asserts are dropped here).
    Init,
    /// 110: Startup IPI; `vector` is the start page number.
    StartUp,
}

/// ICR destination shorthand (bits 19:18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shorthand {
    /// 00: use the destination field.
    None,
    /// 01: self. Never appears in an [`Effect::Ipi`]: self IPIs are delivered
    /// locally.
    SelfOnly,
    /// 10: all APICs including the sender (the caller delivers to this VP too).
    AllIncludingSelf,
    /// 11: all APICs except the sender.
    AllExcludingSelf,
}

/// An IPI the guest sent by writing the ICR; the caller routes it to the
/// target VPs (for Fixed/LowestPriority by calling [`crate::Vlapic::request`]
/// on each target for which [`crate::Vlapic::matches_destination`] is true).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipi {
    /// Vector (Fixed/LowestPriority, ≥ 16) or SIPI page number.
    pub vector: u8,
    /// Delivery mode.
    pub mode: DeliveryMode,
    /// Destination shorthand; when not [`Shorthand::None`] `destination` is
    /// meaningless.
    pub shorthand: Shorthand,
    /// Destination: the 32-bit x2APIC id field, or the 8-bit xAPIC field
    /// (ICR bits 63:56). Broadcast is 0xFFFF_FFFF (x2APIC) / 0xFF (xAPIC).
    pub destination: u32,
    /// ICR bit 11: logical destination mode.
    pub logical: bool,
    /// ICR bit 15: level-triggered.
    pub level_triggered: bool,
    /// The sender was in x2APIC mode (format of `destination`).
    pub x2apic: bool,
}

impl Ipi {
    /// True when `destination` is the broadcast id of its format (only
    /// meaningful with [`Shorthand::None`]).
    pub fn is_broadcast(&self) -> bool {
        if self.x2apic {
            self.destination == u32::MAX
        } else {
            self.destination == 0xFF
        }
    }
}

/// What the caller must do after a register write.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond re-checking [`crate::Vlapic::pending`] and
    /// [`crate::Vlapic::next_deadline`], which the caller should do after
    /// every access anyway.
    None,
    /// Route this IPI.
    Ipi(Ipi),
    /// IA32_APIC_BASE changed: remap the xAPIC page / MSR intercepts.
    ApicBaseChanged {
        /// The new mode.
        mode: ApicMode,
        /// The new IA32_APIC_BASE value.
        apic_base: u64,
    },
    /// A level-triggered interrupt was EOIed (for an I/O APIC's remote IRR).
    LevelEoi {
        /// Its vector.
        vector: u8,
    },
}

/// Why an access must raise #GP(0) in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpReason {
    /// An x2APIC MSR (0x800–0x8FF) was accessed while not in x2APIC mode.
    NotX2ApicMode,
    /// The register does not exist (reserved in SDM Table 10-6, or not
    /// implemented here: APR, RRD, DFR, ICR high and CMCI in x2APIC mode).
    ReservedRegister,
    /// WRMSR to a read-only x2APIC register.
    ReadOnly,
    /// RDMSR of a write-only x2APIC register (EOI, SELF IPI).
    WriteOnly,
    /// WRMSR with reserved bits set.
    ReservedBits,
    /// IA32_APIC_BASE transition the SDM forbids (x2APIC → xAPIC, disabled →
    /// x2APIC, EXTD without EN) or EXTD without x2APIC support.
    IllegalTransition,
    /// MSR 0x6E0 without TSC-deadline support in the CPUID policy.
    TscDeadlineUnsupported,
}

/// Result of an MSR access that did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrError {
    /// Not an MSR this crate handles; the caller tries its other handlers.
    NotApicMsr,
    /// Inject #GP(0) into the guest.
    Gp(GpReason),
}

impl fmt::Display for MsrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotApicMsr => f.write_str("not an APIC MSR"),
            Self::Gp(reason) => write!(f, "#GP: {reason:?}"),
        }
    }
}

/// Cumulative counters (not cleared by reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// EOIs that cleared an ISR bit.
    pub eoi: u64,
    /// EOIs with an empty ISR.
    pub spurious_eoi: u64,
    /// Vectors acknowledged through the auto-EOI path.
    pub auto_eoi: u64,
    /// Timer expiries (one-shot, periodic, TSC-deadline), masked ones included.
    pub timer_expiries: u64,
    /// Periodic expiries folded into another because the caller was late.
    pub timer_coalesced: u64,
    /// IPIs returned to the caller.
    pub ipis: u64,
    /// Self IPIs delivered locally.
    pub self_ipis: u64,
    /// ICR writes that sent nothing (reserved modes, INIT de-assert, invalid
    /// shorthand combinations, illegal vectors).
    pub ipis_dropped: u64,
    /// Fixed requests dropped because the APIC was disabled.
    pub requests_dropped: u64,
    /// Errors recorded in the ESR.
    pub errors: u64,
}

/// Everything a management CLI shows about one APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicSnapshot {
    /// Current mode.
    pub mode: ApicMode,
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// APIC id (x2APIC form).
    pub id: u32,
    /// Version register.
    pub version: u32,
    /// Task priority.
    pub tpr: u8,
    /// Processor priority (computed).
    pub ppr: u8,
    /// Arbitration priority (computed).
    pub apr: u8,
    /// Logical destination register (as the current mode reads it).
    pub ldr: u32,
    /// Destination format register (xAPIC).
    pub dfr: u32,
    /// Spurious-interrupt vector register.
    pub svr: u32,
    /// In-service register, vectors 32·i .. 32·i+31 in word i.
    pub isr: [u32; 8],
    /// Trigger-mode register.
    pub tmr: [u32; 8],
    /// Interrupt-request register.
    pub irr: [u32; 8],
    /// Requested vectors that will be acknowledged without entering the ISR.
    pub auto_eoi: [u32; 8],
    /// Error status as last latched by an ESR write.
    pub esr: u32,
    /// Errors recorded since the last ESR write.
    pub esr_pending: u32,
    /// Interrupt command register (x2APIC layout: destination in 63:32 when in
    /// x2APIC mode, 63:56 in xAPIC mode).
    pub icr: u64,
    /// LVT timer, thermal, perf, LINT0, LINT1, error.
    pub lvt: [u32; 6],
    /// Timer initial count.
    pub timer_initial: u32,
    /// Timer current count at the snapshot time.
    pub timer_current: u32,
    /// Divide configuration register.
    pub divide_config: u32,
    /// IA32_TSC_DEADLINE (0: disarmed).
    pub tsc_deadline: u64,
    /// When the armed timer next expires (ns), if it is armed.
    pub next_deadline: Option<u64>,
    /// The highest deliverable vector.
    pub pending: Option<u8>,
    /// Counters.
    pub stats: Stats,
}
