//! [`Vlapic`]: one VP's local APIC.

use crate::timer::{CountDown, TimerMode};
use crate::types::{
    APIC_BASE_MSR, APIC_VERSION, ApicMode, ApicSnapshot, Config, ConfigError, DEFAULT_APIC_BASE,
    DeliveryMode, Effect, GpReason, Ipi, MsrError, Shorthand, Stats, TSC_DEADLINE_MSR, Trigger,
    X2APIC_MSR_FIRST, X2APIC_MSR_LAST, esr,
};
use crate::vectors::VectorSet;

// IA32_APIC_BASE bits (SDM Vol. 3A Figure 10-5).
const BASE_BSP: u64 = 1 << 8;
const BASE_EXTD: u64 = 1 << 10;
const BASE_EN: u64 = 1 << 11;

// Register indices: xAPIC offset >> 4, which is also x2APIC MSR − 0x800
// (SDM Vol. 3A Table 10-1 and Table 10-6).
const REG_ID: u32 = 0x02;
const REG_VERSION: u32 = 0x03;
const REG_TPR: u32 = 0x08;
const REG_APR: u32 = 0x09;
const REG_PPR: u32 = 0x0A;
const REG_EOI: u32 = 0x0B;
const REG_RRD: u32 = 0x0C;
const REG_LDR: u32 = 0x0D;
const REG_DFR: u32 = 0x0E;
const REG_SVR: u32 = 0x0F;
const REG_ISR0: u32 = 0x10;
const REG_ISR7: u32 = 0x17;
const REG_TMR0: u32 = 0x18;
const REG_TMR7: u32 = 0x1F;
const REG_IRR0: u32 = 0x20;
const REG_IRR7: u32 = 0x27;
const REG_ESR: u32 = 0x28;
const REG_ICR_LOW: u32 = 0x30;
const REG_ICR_HIGH: u32 = 0x31;
const REG_LVT_TIMER: u32 = 0x32;
const REG_LVT_ERROR: u32 = 0x37;
const REG_TIMER_INITIAL: u32 = 0x38;
const REG_TIMER_CURRENT: u32 = 0x39;
const REG_TIMER_DCR: u32 = 0x3E;
const REG_SELF_IPI: u32 = 0x3F;

// LVT indices into `Vlapic::lvt`, in register order 0x32..=0x37.
const LVT_TIMER: usize = 0;
const LVT_ERROR: usize = 5;
const LVT_MASKED: u32 = 1 << 16;
const LVT_DELIVERY_STATUS: u32 = 1 << 12;
const LVT_REMOTE_IRR: u32 = 1 << 14;
const LVT_TIMER_MODE_SHIFT: u32 = 17;

// SVR: vector 7:0, APIC software enable 8, focus checking 9 (SDM Figure
// 10-23). Bit 12 (EOI-broadcast suppression) is reserved because
// APIC_VERSION does not advertise it.
const SVR_WRITABLE: u32 = 0x3FF;
const SVR_ENABLE: u32 = 1 << 8;
const SVR_RESET: u32 = 0xFF;

// ICR fields (SDM Vol. 3A Figure 10-12, Figure 10-28).
const ICR_LOW_WRITABLE: u32 = 0x000C_CFFF; // vector, mode, dest mode, level, trigger, shorthand
/// x2APIC ICR bits that #GP when set: 13, 17:16 and 31:20 (KVM's
/// X2APIC_ICR_RESERVED_BITS; bit 12, delivery status, is ignored).
const ICR_X2APIC_RESERVED: u64 = 0xFFF0_0000 | 0x3_0000 | 0x2000;
const ICR_DELIVERY_STATUS: u64 = 1 << 12;

const DFR_FLAT: u32 = 0xF;
const DFR_CLUSTER: u32 = 0x0;
const DCR_WRITABLE: u32 = 0xB;

const NS_PER_SEC: u128 = 1_000_000_000;

/// One virtual processor's local APIC.
///
/// Every method that takes `now` (the caller's monotonic clock, in
/// nanoseconds) first processes timer expiries up to `now`; a `now` earlier
/// than one seen before is treated as that earlier maximum, so time never
/// runs backwards inside the APIC. After any call the caller re-reads
/// [`Vlapic::pending`] (to inject) and [`Vlapic::next_deadline`] (to program
/// its own timer).
#[derive(Debug, Clone)]
pub struct Vlapic {
    config: Config,
    apic_base: u64,
    tpr: u8,
    /// xAPIC LDR (bits 31:24); x2APIC mode derives the LDR from the id.
    ldr: u32,
    dfr: u32,
    svr: u32,
    irr: VectorSet,
    isr: VectorSet,
    tmr: VectorSet,
    auto_eoi: VectorSet,
    esr: u32,
    esr_pending: u32,
    /// ICR in the x2APIC layout; in xAPIC mode only bits 63:56 of the high
    /// half are kept.
    icr: u64,
    lvt: [u32; 6],
    count_down: CountDown,
    tsc_deadline: u64,
    tsc_offset: u64,
    now: u64,
    stats: Stats,
}

impl Vlapic {
    /// A new APIC in its power-on state (xAPIC mode, enabled, base
    /// 0xFEE0_0000, software-disabled, every LVT masked).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut apic = Self {
            config,
            apic_base: 0,
            tpr: 0,
            ldr: 0,
            dfr: u32::MAX,
            svr: SVR_RESET,
            irr: VectorSet::default(),
            isr: VectorSet::default(),
            tmr: VectorSet::default(),
            auto_eoi: VectorSet::default(),
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [LVT_MASKED; 6],
            count_down: CountDown::default(),
            tsc_deadline: 0,
            tsc_offset: 0,
            now: 0,
            stats: Stats::default(),
        };
        apic.reset();
        Ok(apic)
    }

    /// Power-on / RESET state (SDM Vol. 3A §10.4.7.1): IA32_APIC_BASE =
    /// 0xFEE0_0000 | EN | BSP, xAPIC mode, every register at its reset value.
    /// The clock high-water mark, the TSC offset and the counters are kept.
    pub fn reset(&mut self) {
        self.apic_base = DEFAULT_APIC_BASE | BASE_EN | if self.config.bsp { BASE_BSP } else { 0 };
        self.reset_registers();
    }

    /// INIT reset (SDM Vol. 3A §10.4.7.3): like [`Vlapic::reset`] except that
    /// IA32_APIC_BASE (hence the mode) and the APIC id are kept. The caller
    /// calls this when it delivers an INIT IPI to this VP.
    pub fn init(&mut self) {
        self.reset_registers();
    }

    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.svr = SVR_RESET;
        self.irr = VectorSet::default();
        self.isr = VectorSet::default();
        self.tmr = VectorSet::default();
        self.auto_eoi = VectorSet::default();
        self.esr = 0;
        self.esr_pending = 0;
        self.icr = 0;
        self.lvt = [LVT_MASKED; 6];
        self.count_down = CountDown::default();
        self.tsc_deadline = 0;
    }

    // ----- Plain accessors -------------------------------------------------

    /// The configuration given at construction.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current mode.
    pub fn mode(&self) -> ApicMode {
        match (self.apic_base & BASE_EN != 0, self.apic_base & BASE_EXTD != 0) {
            (false, _) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        }
    }

    /// IA32_APIC_BASE.
    pub fn apic_base(&self) -> u64 {
        self.apic_base
    }

    /// Guest-physical address of the xAPIC page, when in xAPIC mode (the
    /// caller intercepts that page and forwards to [`Vlapic::read_mmio`] /
    /// [`Vlapic::write_mmio`]).
    pub fn mmio_base(&self) -> Option<u64> {
        (self.mode() == ApicMode::XApic).then_some(self.apic_base & self.base_address_mask())
    }

    /// The APIC id (x2APIC form).
    pub fn apic_id(&self) -> u32 {
        self.config.apic_id
    }

    /// The task-priority register.
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Sets the TPR, e.g. from the guest's CR8 (`cr8 << 4`) when the caller
    /// syncs SVM's V_TPR.
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// The processor-priority register (SDM Vol. 3A §10.8.3.1): the TPR if
    /// its class is at least the highest in-service class, otherwise that
    /// class with sub-class 0.
    pub fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// The arbitration-priority register (SDM Vol. 3A §10.8.3.1, xAPIC only).
    fn apr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0) >> 4;
        let irrv = self.irr.highest().unwrap_or(0) >> 4;
        let tpr = self.tpr >> 4;
        if tpr >= irrv && tpr > isrv {
            self.tpr
        } else {
            tpr.max(isrv).max(irrv) << 4
        }
    }

    /// SVR bit 8: the APIC is software-enabled.
    pub fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// Sets the value the guest's TSC had at `now` = 0: guest TSC at `now` is
    /// `tsc_offset + now · tsc_hz / 10^9`. Used for TSC-deadline mode.
    pub fn set_tsc_offset(&mut self, tsc_offset: u64) {
        self.tsc_offset = tsc_offset;
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    // ----- Interrupt acceptance -------------------------------------------

    /// A fixed interrupt arrives (an IPI routed by the caller, a SynIC SINT
    /// without auto-EOI, a device): sets its IRR bit and its TMR bit per
    /// `trigger` (SDM Vol. 3A §10.8.3). Vectors 0–15 are illegal: they set
    /// ESR "receive illegal vector" instead. Returns whether the vector is now
    /// requested (false also when the APIC is hardware- or software-disabled,
    /// which drops fixed interrupts as OpenVMM does).
    pub fn request(&mut self, vector: u8, trigger: Trigger) -> bool {
        self.deliver(vector, trigger, false)
    }

    /// Like [`Vlapic::request`] (edge-triggered) for a Hyper-V SynIC SINT
    /// with AutoEOI set (TLFS "SINTx Registers"): when acknowledged, the
    /// vector does not enter the ISR, so the guest sends no EOI for it.
    pub fn request_auto_eoi(&mut self, vector: u8) -> bool {
        self.deliver(vector, Trigger::Edge, true)
    }

    fn deliver(&mut self, vector: u8, trigger: Trigger, auto_eoi: bool) -> bool {
        if self.mode() == ApicMode::Disabled || !self.software_enabled() {
            self.stats.requests_dropped += 1;
            return false;
        }
        if vector < 16 {
            self.record_error(esr::RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        self.irr.set(vector);
        match trigger {
            Trigger::Edge => self.tmr.clear(vector),
            Trigger::Level => self.tmr.set(vector),
        }
        if auto_eoi {
            self.auto_eoi.set(vector);
        } else {
            self.auto_eoi.clear(vector);
        }
        true
    }

    /// The vector to inject next: the highest IRR vector whose priority class
    /// (vector ≫ 4) is above the PPR's class (SDM Vol. 3A §10.8.3.1). None
    /// when the APIC is hardware-disabled. Call [`Vlapic::advance`] first so
    /// expired timers are included.
    pub fn pending(&self) -> Option<u8> {
        if self.mode() == ApicMode::Disabled {
            return None;
        }
        let v = self.irr.highest()?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// The caller injected `vector` (normally the one [`Vlapic::pending`]
    /// returned): moves it from IRR to ISR, or just clears its IRR bit when it
    /// was requested with [`Vlapic::request_auto_eoi`]. Returns false, and
    /// changes nothing, when `vector` is not requested.
    pub fn acknowledge(&mut self, vector: u8) -> bool {
        if !self.irr.test(vector) {
            return false;
        }
        self.irr.clear(vector);
        if self.auto_eoi.test(vector) {
            self.auto_eoi.clear(vector);
            self.stats.auto_eoi += 1;
        } else {
            self.isr.set(vector);
        }
        true
    }

    /// End of interrupt: clears the highest ISR bit (SDM Vol. 3A §10.8.5).
    /// What a write of the EOI register does; also the entry point for
    /// Hyper-V's HV_X64_MSR_EOI. Returns [`Effect::LevelEoi`] when that
    /// vector was level-triggered.
    pub fn eoi(&mut self) -> Effect {
        let Some(v) = self.isr.highest() else {
            self.stats.spurious_eoi += 1;
            return Effect::None;
        };
        self.isr.clear(v);
        self.stats.eoi += 1;
        if self.tmr.test(v) {
            Effect::LevelEoi { vector: v }
        } else {
            Effect::None
        }
    }

    /// Whether a halted VP must be woken: after processing timers up to
    /// `now`, a vector is deliverable and the guest has RFLAGS.IF set
    /// (`interrupts_enabled`). NMI/INIT/SIPI wakeups are the caller's.
    pub fn has_deliverable(&mut self, now: u64, interrupts_enabled: bool) -> bool {
        self.update(now);
        interrupts_enabled && self.pending().is_some()
    }

    /// Records an error in the ESR and raises the LVT error interrupt when
    /// it is unmasked (SDM Vol. 3A §10.5.3).
    fn record_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        self.stats.errors += 1;
        let lvt = self.lvt[LVT_ERROR];
        if self.mode() != ApicMode::Disabled && self.software_enabled() && lvt & LVT_MASKED == 0 {
            let vector = (lvt & 0xFF) as u8;
            if vector >= 16 {
                self.irr.set(vector);
                self.tmr.clear(vector);
                self.auto_eoi.clear(vector);
            } else {
                // No recursion: an illegal error vector only adds its bit.
                self.esr_pending |= esr::RECEIVE_ILLEGAL_VECTOR;
            }
        }
    }

    // ----- Timer -----------------------------------------------------------

    fn timer_mode(&self) -> TimerMode {
        TimerMode::from_lvt(self.lvt[LVT_TIMER])
    }

    /// When the armed TSC deadline is reached, in the caller's ns.
    fn tsc_deadline_ns(&self) -> Option<u64> {
        if self.timer_mode() != TimerMode::TscDeadline || self.tsc_deadline == 0 {
            return None;
        }
        // A deadline before the guest TSC at now = 0 is due immediately.
        let raw = self.tsc_deadline.saturating_sub(self.tsc_offset);
        let ns = (u128::from(raw) * NS_PER_SEC).div_ceil(u128::from(self.config.tsc_hz));
        // Beyond u64 nanoseconds: never.
        u64::try_from(ns).ok()
    }

    fn timer_deadline(&self) -> Option<u64> {
        if self.mode() == ApicMode::Disabled {
            return None;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => self.tsc_deadline_ns(),
            mode => self.count_down.next_expiry(mode, self.config.timer_hz),
        }
    }

    /// Raises the LVT timer interrupt unless the LVT is masked. A masked
    /// timer keeps counting (SDM Vol. 3A §10.5.1).
    fn timer_interrupt(&mut self) -> bool {
        self.stats.timer_expiries += 1;
        let lvt = self.lvt[LVT_TIMER];
        if lvt & LVT_MASKED != 0 {
            return false;
        }
        self.deliver((lvt & 0xFF) as u8, Trigger::Edge, false)
    }

    fn update(&mut self, now: u64) -> bool {
        self.now = self.now.max(now);
        let now = self.now;
        if self.mode() == ApicMode::Disabled {
            return false;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => match self.tsc_deadline_ns() {
                Some(due) if due <= now => {
                    // The deadline MSR reads 0 once it has fired (SDM §10.5.4.1).
                    self.tsc_deadline = 0;
                    self.timer_interrupt()
                }
                _ => false,
            },
            mode => {
                let expiry = self.count_down.advance(mode, now, self.config.timer_hz);
                if !expiry.fired {
                    return false;
                }
                self.stats.timer_coalesced = self.stats.timer_coalesced.saturating_add(expiry.coalesced);
                self.timer_interrupt()
            }
        }
    }

    /// Processes timer expiries up to `now`, setting IRR bits for unmasked
    /// ones. A periodic timer that expired several times since the last call
    /// raises one interrupt (the rest are counted in
    /// [`Stats::timer_coalesced`]) and re-arms for its next period after
    /// `now`. Returns whether an interrupt was requested.
    pub fn advance(&mut self, now: u64) -> bool {
        self.update(now)
    }

    /// Processes expiries up to `now` (like [`Vlapic::advance`]) and returns
    /// when the armed timer next expires, in ns; always later than `now`.
    /// None when no timer is armed.
    pub fn next_deadline(&mut self, now: u64) -> Option<u64> {
        self.update(now);
        self.timer_deadline()
    }

    // ----- MSR interface ---------------------------------------------------

    /// Whether `msr` is one [`Vlapic::read_msr`]/[`Vlapic::write_msr`] handle.
    pub fn handles_msr(msr: u32) -> bool {
        msr == APIC_BASE_MSR || msr == TSC_DEADLINE_MSR || (X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&msr)
    }

    /// RDMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register
    /// (SDM Vol. 3A Table 10-6). x2APIC registers #GP outside x2APIC mode,
    /// when reserved, and when write-only (EOI, SELF IPI).
    pub fn read_msr(&mut self, msr: u32, now: u64) -> Result<u64, MsrError> {
        self.update(now);
        match msr {
            APIC_BASE_MSR => Ok(self.apic_base),
            TSC_DEADLINE_MSR => {
                if !self.config.tsc_deadline {
                    return Err(MsrError::Gp(GpReason::TscDeadlineUnsupported));
                }
                // Reads 0 outside TSC-deadline mode (SDM §10.5.4.1).
                Ok(if self.timer_mode() == TimerMode::TscDeadline {
                    self.tsc_deadline
                } else {
                    0
                })
            }
            X2APIC_MSR_FIRST..=X2APIC_MSR_LAST => {
                if self.mode() != ApicMode::X2Apic {
                    return Err(MsrError::Gp(GpReason::NotX2ApicMode));
                }
                self.read_register(msr - X2APIC_MSR_FIRST, true)
                    .map_err(MsrError::Gp)
            }
            _ => Err(MsrError::NotApicMsr),
        }
    }

    /// WRMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register.
    /// x2APIC writes #GP outside x2APIC mode, for reserved and read-only
    /// registers, and when a reserved bit is set (every register but the ICR
    /// is 32 bits wide, so bits 63:32 are reserved; EOI and ESR take only 0).
    pub fn write_msr(&mut self, msr: u32, value: u64, now: u64) -> Result<Effect, MsrError> {
        self.update(now);
        match msr {
            APIC_BASE_MSR => self.write_apic_base(value).map_err(MsrError::Gp),
            TSC_DEADLINE_MSR => {
                if !self.config.tsc_deadline {
                    return Err(MsrError::Gp(GpReason::TscDeadlineUnsupported));
                }
                // Ignored outside TSC-deadline mode (SDM §10.5.4.1); 0 disarms.
                if self.mode() != ApicMode::Disabled && self.timer_mode() == TimerMode::TscDeadline {
                    self.tsc_deadline = value;
                    // A deadline already passed fires now.
                    self.update(now);
                }
                Ok(Effect::None)
            }
            X2APIC_MSR_FIRST..=X2APIC_MSR_LAST => {
                if self.mode() != ApicMode::X2Apic {
                    return Err(MsrError::Gp(GpReason::NotX2ApicMode));
                }
                self.write_register(msr - X2APIC_MSR_FIRST, value, true)
                    .map_err(MsrError::Gp)
            }
            _ => Err(MsrError::NotApicMsr),
        }
    }

    fn base_address_mask(&self) -> u64 {
        let top = (1u64 << self.config.phys_addr_bits) - 1;
        top & !0xFFF
    }

    /// IA32_APIC_BASE write (SDM Vol. 3A §10.12.5.1, Figure 10-27): the legal
    /// mode transitions are disabled → xAPIC, xAPIC ↔ disabled, xAPIC →
    /// x2APIC and x2APIC → disabled. The BSP bit is read-only here. Disabling
    /// the APIC returns its registers to their reset state (so the following
    /// enable starts clean, as after INIT).
    fn write_apic_base(&mut self, value: u64) -> Result<Effect, GpReason> {
        let mut reserved = !(self.base_address_mask() | BASE_EN | BASE_EXTD | BASE_BSP);
        if !self.config.x2apic {
            reserved |= BASE_EXTD;
        }
        if value & reserved != 0 {
            return Err(if value & BASE_EXTD != 0 && !self.config.x2apic {
                GpReason::IllegalTransition
            } else {
                GpReason::ReservedBits
            });
        }
        let old_mode = self.mode();
        let new_mode = match (value & BASE_EN != 0, value & BASE_EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(GpReason::IllegalTransition),
        };
        match (old_mode, new_mode) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return Err(GpReason::IllegalTransition);
            }
            _ => {}
        }
        let new_base = (value & !BASE_BSP) | (self.apic_base & BASE_BSP);
        if new_base == self.apic_base {
            return Ok(Effect::None);
        }
        if new_mode == ApicMode::Disabled && old_mode != ApicMode::Disabled {
            self.reset_registers();
        }
        if old_mode == ApicMode::XApic && new_mode == ApicMode::X2Apic {
            // The 64-bit ICR keeps only fields valid in both layouts.
            self.icr &= 0xFFFF_FFFF;
        }
        self.apic_base = new_base;
        Ok(Effect::ApicBaseChanged {
            mode: new_mode,
            apic_base: new_base,
        })
    }

    // ----- MMIO interface --------------------------------------------------

    /// A read of the xAPIC page at `offset` (taken modulo 4096).
    ///
    /// Registers are 32 bits wide at 16-byte-aligned offsets (SDM Vol. 3A
    /// §10.4.1). The value returned is the register containing `offset`
    /// shifted right by `8 · (offset % 4)`, so a caller emulating a 1- or
    /// 2-byte read takes the low bytes. Bytes 4–15 of each 16-byte slot read
    /// 0. Reserved registers read 0 and set ESR "illegal register address".
    /// Outside xAPIC mode the page is not decoded and reads 0xFFFF_FFFF.
    pub fn read_mmio(&mut self, offset: u64, now: u64) -> u32 {
        self.update(now);
        if self.mode() != ApicMode::XApic {
            return u32::MAX;
        }
        let offset = (offset & 0xFFF) as u32;
        let within = offset & 0xF;
        if within >= 4 {
            return 0;
        }
        match self.read_register(offset >> 4, false) {
            Ok(value) => (value as u32) >> (8 * within),
            Err(GpReason::ReservedRegister) => {
                self.record_error(esr::ILLEGAL_REGISTER_ADDRESS);
                0
            }
            Err(_) => 0,
        }
    }

    /// A write of the xAPIC page at `offset` (taken modulo 4096).
    ///
    /// Only a 32-bit write at the start of a register's 16-byte slot
    /// (`offset % 16 == 0`) has an effect; the caller should drop narrower or
    /// wider writes, which the SDM leaves undefined. Reserved bits are
    /// ignored, writes to read-only registers are ignored, writes to reserved
    /// registers set ESR "illegal register address". Outside xAPIC mode
    /// writes are ignored.
    pub fn write_mmio(&mut self, offset: u64, value: u32, now: u64) -> Effect {
        self.update(now);
        if self.mode() != ApicMode::XApic {
            return Effect::None;
        }
        let offset = (offset & 0xFFF) as u32;
        if offset & 0xF != 0 {
            return Effect::None;
        }
        match self.write_register(offset >> 4, u64::from(value), false) {
            Ok(effect) => effect,
            Err(GpReason::ReservedRegister) => {
                self.record_error(esr::ILLEGAL_REGISTER_ADDRESS);
                Effect::None
            }
            Err(_) => Effect::None,
        }
    }

    // ----- Register file ---------------------------------------------------

    fn ldr(&self, x2: bool) -> u32 {
        if x2 {
            // x2APIC logical id (SDM Vol. 3A §10.12.10.2): cluster id
            // = id[19:4] in 31:16, bit id[3:0] set in 15:0.
            let id = self.config.apic_id;
            ((id >> 4) << 16) | (1 << (id & 0xF))
        } else {
            self.ldr
        }
    }

    fn timer_current(&self) -> u32 {
        match self.timer_mode() {
            TimerMode::TscDeadline => 0,
            mode => self.count_down.current(mode, self.now, self.config.timer_hz),
        }
    }

    /// Reads register `index` (offset ≫ 4). `x2` selects x2APIC semantics.
    fn read_register(&self, index: u32, x2: bool) -> Result<u64, GpReason> {
        let value = match index {
            REG_ID if x2 => self.config.apic_id,
            REG_ID => (self.config.apic_id & 0xFF) << 24,
            REG_VERSION => APIC_VERSION,
            REG_TPR => u32::from(self.tpr),
            REG_APR if !x2 => u32::from(self.apr()),
            REG_PPR => u32::from(self.ppr()),
            REG_EOI if x2 => return Err(GpReason::WriteOnly),
            REG_EOI => 0,
            // Remote read is not supported: the register reads 0 (status
            // "invalid").
            REG_RRD if !x2 => 0,
            REG_LDR => self.ldr(x2),
            REG_DFR if !x2 => self.dfr | 0x0FFF_FFFF,
            REG_SVR => self.svr,
            REG_ISR0..=REG_ISR7 => self.isr.word((index - REG_ISR0) as usize),
            REG_TMR0..=REG_TMR7 => self.tmr.word((index - REG_TMR0) as usize),
            REG_IRR0..=REG_IRR7 => self.irr.word((index - REG_IRR0) as usize),
            REG_ESR => self.esr,
            REG_ICR_LOW if x2 => return Ok(self.icr),
            REG_ICR_LOW => self.icr as u32,
            REG_ICR_HIGH if !x2 => (self.icr >> 32) as u32 & 0xFF00_0000,
            REG_LVT_TIMER..=REG_LVT_ERROR => self.lvt[(index - REG_LVT_TIMER) as usize],
            REG_TIMER_INITIAL => self.count_down.initial,
            REG_TIMER_CURRENT => self.timer_current(),
            REG_TIMER_DCR => self.count_down.dcr,
            REG_SELF_IPI if x2 => return Err(GpReason::WriteOnly),
            _ => return Err(GpReason::ReservedRegister),
        };
        Ok(u64::from(value))
    }

    /// Writes register `index`. In x2APIC mode (`x2`) violations are errors
    /// (#GP); in xAPIC mode reserved bits are dropped, read-only registers
    /// ignore writes, and only [`GpReason::ReservedRegister`] is reported
    /// (as an ESR bit by the caller).
    fn write_register(&mut self, index: u32, value: u64, x2: bool) -> Result<Effect, GpReason> {
        if x2 && index != REG_ICR_LOW && value >> 32 != 0 {
            return Err(GpReason::ReservedBits);
        }
        let v = value as u32;
        let read_only = |x2| {
            if x2 {
                Err(GpReason::ReadOnly)
            } else {
                Ok(Effect::None)
            }
        };
        match index {
            REG_ID | REG_VERSION | REG_PPR | REG_ISR0..=REG_IRR7 | REG_TIMER_CURRENT => read_only(x2),
            REG_APR | REG_RRD if !x2 => Ok(Effect::None),
            REG_TPR => {
                if x2 && v > 0xFF {
                    return Err(GpReason::ReservedBits);
                }
                self.tpr = v as u8;
                Ok(Effect::None)
            }
            REG_EOI => {
                if x2 && v != 0 {
                    return Err(GpReason::ReservedBits);
                }
                Ok(self.eoi())
            }
            REG_LDR if x2 => Err(GpReason::ReadOnly),
            REG_LDR => {
                self.ldr = v & 0xFF00_0000;
                Ok(Effect::None)
            }
            REG_DFR if !x2 => {
                self.dfr = v | 0x0FFF_FFFF;
                Ok(Effect::None)
            }
            REG_SVR => {
                if x2 && v & !SVR_WRITABLE != 0 {
                    return Err(GpReason::ReservedBits);
                }
                self.svr = v & SVR_WRITABLE;
                if !self.software_enabled() {
                    // Software disable masks every LVT (SDM §10.4.7.2).
                    for lvt in &mut self.lvt {
                        *lvt |= LVT_MASKED;
                    }
                }
                Ok(Effect::None)
            }
            REG_ESR => {
                if x2 && v != 0 {
                    return Err(GpReason::ReservedBits);
                }
                // A write latches the errors seen since the last write
                // (SDM §10.5.3).
                self.esr = self.esr_pending;
                self.esr_pending = 0;
                Ok(Effect::None)
            }
            REG_ICR_LOW if x2 => {
                if value & ICR_X2APIC_RESERVED != 0 {
                    return Err(GpReason::ReservedBits);
                }
                self.icr = value & !ICR_DELIVERY_STATUS;
                Ok(self.send_ipi(true))
            }
            REG_ICR_LOW => {
                self.icr = (self.icr & 0xFFFF_FFFF_0000_0000) | u64::from(v & ICR_LOW_WRITABLE);
                Ok(self.send_ipi(false))
            }
            REG_ICR_HIGH if !x2 => {
                self.icr = (self.icr & 0xFFFF_FFFF) | (u64::from(v & 0xFF00_0000) << 32);
                Ok(Effect::None)
            }
            REG_LVT_TIMER..=REG_LVT_ERROR => {
                self.write_lvt((index - REG_LVT_TIMER) as usize, v, x2)?;
                Ok(Effect::None)
            }
            REG_TIMER_INITIAL => {
                // Ignored in TSC-deadline mode (SDM §10.5.4.1).
                if self.timer_mode() != TimerMode::TscDeadline {
                    self.count_down.write_initial(v, self.now);
                }
                Ok(Effect::None)
            }
            REG_TIMER_DCR => {
                if x2 && v & !DCR_WRITABLE != 0 {
                    return Err(GpReason::ReservedBits);
                }
                let mode = self.timer_mode();
                self.count_down.rebase(mode, self.now, self.config.timer_hz);
                self.count_down.dcr = v & DCR_WRITABLE;
                Ok(Effect::None)
            }
            REG_SELF_IPI if x2 => {
                if v > 0xFF {
                    return Err(GpReason::ReservedBits);
                }
                self.stats.self_ipis += 1;
                self.deliver(v as u8, Trigger::Edge, false);
                Ok(Effect::None)
            }
            _ => Err(GpReason::ReservedRegister),
        }
    }

    /// Writes LVT `i` (0 timer, 1 thermal, 2 perf, 3 LINT0, 4 LINT1, 5 error;
    /// SDM Vol. 3A Figure 10-8). Delivery status and remote IRR are read-only
    /// and read 0; writing them is not an error.
    fn write_lvt(&mut self, i: usize, v: u32, x2: bool) -> Result<(), GpReason> {
        let (writable, read_only) = match i {
            // vector, mask, timer mode (bit 18 only with TSC-deadline support)
            LVT_TIMER => (
                0x0003_00FF | if self.config.tsc_deadline { 1 << 18 } else { 0 },
                LVT_DELIVERY_STATUS,
            ),
            // thermal, perf: vector, delivery mode, mask
            1 | 2 => (0x0001_07FF, LVT_DELIVERY_STATUS),
            // LINT0/1: vector, delivery mode, polarity, trigger mode, mask
            3 | 4 => (0x0001_A7FF, LVT_DELIVERY_STATUS | LVT_REMOTE_IRR),
            // error: vector, mask
            _ => (0x0001_00FF, LVT_DELIVERY_STATUS),
        };
        let reserved_timer_mode = i == LVT_TIMER && (v >> LVT_TIMER_MODE_SHIFT) & 3 == 3;
        if x2 && (v & !(writable | read_only) != 0 || reserved_timer_mode) {
            return Err(GpReason::ReservedBits);
        }
        let mut new = v & writable;
        if reserved_timer_mode {
            // xAPIC: the reserved mode 0b11 is stored as one-shot.
            new &= !(3 << LVT_TIMER_MODE_SHIFT);
        }
        if !self.software_enabled() {
            new |= LVT_MASKED;
        }
        if i == LVT_TIMER {
            let old_mode = self.timer_mode();
            let new_mode = TimerMode::from_lvt(new);
            if old_mode != new_mode {
                if old_mode == TimerMode::TscDeadline || new_mode == TimerMode::TscDeadline {
                    // Switching into or out of TSC-deadline mode disarms the
                    // timer (SDM §10.5.4.1).
                    self.count_down.clear();
                    self.tsc_deadline = 0;
                } else {
                    // One-shot ↔ periodic: keep counting from the current
                    // value under the new mode.
                    self.count_down.rebase(old_mode, self.now, self.config.timer_hz);
                }
            }
        }
        if let Some(slot) = self.lvt.get_mut(i) {
            *slot = new;
        }
        Ok(())
    }

    /// Decodes the ICR just written and sends it (SDM Vol. 3A §10.6.1,
    /// Table 10-3 "Valid Combinations for the Pentium 4 and Intel Xeon
    /// Processors' Local xAPIC Interrupt Command Register").
    fn send_ipi(&mut self, x2: bool) -> Effect {
        let icr = self.icr;
        let vector = (icr & 0xFF) as u8;
        let level_assert = icr & (1 << 14) != 0;
        let level_triggered = icr & (1 << 15) != 0;
        let mode = match (icr >> 8) & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            // 011 and 111 are reserved in the ICR.
            _ => return self.drop_ipi(),
        };
        let shorthand = match (icr >> 18) & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        let fixed = matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority);
        if fixed && vector < 16 {
            self.record_error(esr::SEND_ILLEGAL_VECTOR);
            return self.drop_ipi();
        }
        // INIT level de-assert is not supported on Pentium 4 and later.
        if mode == DeliveryMode::Init && !level_assert {
            return self.drop_ipi();
        }
        match (shorthand, mode) {
            (Shorthand::SelfOnly, DeliveryMode::Fixed) => {
                self.stats.self_ipis += 1;
                let trigger = if level_triggered {
                    Trigger::Level
                } else {
                    Trigger::Edge
                };
                self.deliver(vector, trigger, false);
                return Effect::None;
            }
            // Self only supports Fixed; lowest priority to everyone is invalid.
            (Shorthand::SelfOnly, _) | (Shorthand::AllIncludingSelf, DeliveryMode::LowestPriority) => {
                return self.drop_ipi();
            }
            _ => {}
        }
        let destination = if x2 {
            (icr >> 32) as u32
        } else {
            (icr >> 56) as u32
        };
        self.stats.ipis += 1;
        Effect::Ipi(Ipi {
            vector,
            mode,
            shorthand,
            destination,
            logical: icr & (1 << 11) != 0,
            level_triggered,
            x2apic: x2,
        })
    }

    fn drop_ipi(&mut self) -> Effect {
        self.stats.ipis_dropped += 1;
        Effect::None
    }

    /// Whether this APIC is a target of an IPI or MSI with `destination` in
    /// this APIC's current mode's format (SDM Vol. 3A §10.6.2):
    /// - physical: the id (low 8 bits in xAPIC) or broadcast (0xFF /
    ///   0xFFFF_FFFF);
    /// - logical xAPIC flat (DFR model 0xF): LDR bits 31:24 & destination ≠ 0;
    /// - logical xAPIC cluster (DFR model 0x0): same cluster (high nibble) and
    ///   overlapping member bits (low nibble); 0xFF is broadcast;
    /// - logical x2APIC: same cluster (bits 31:16) and overlapping bits 15:0;
    ///   0xFFFF_FFFF is broadcast.
    ///
    /// A hardware-disabled APIC matches nothing. Other DFR models match
    /// nothing.
    pub fn matches_destination(&self, destination: u32, logical: bool) -> bool {
        let x2 = match self.mode() {
            ApicMode::Disabled => return false,
            ApicMode::XApic => false,
            ApicMode::X2Apic => true,
        };
        let broadcast = if x2 { u32::MAX } else { 0xFF };
        if destination == broadcast {
            return true;
        }
        if !logical {
            return if x2 {
                destination == self.config.apic_id
            } else {
                destination == self.config.apic_id & 0xFF
            };
        }
        if x2 {
            let ldr = self.ldr(true);
            return destination >> 16 == ldr >> 16 && destination & ldr & 0xFFFF != 0;
        }
        let id = self.ldr >> 24;
        let dest = destination & 0xFF;
        match self.dfr >> 28 {
            DFR_FLAT => id & dest != 0,
            DFR_CLUSTER => id >> 4 == dest >> 4 && id & dest & 0xF != 0,
            _ => false,
        }
    }

    // ----- Inspection -----------------------------------------------------

    /// A copy of the state for a management CLI, with the current count
    /// computed at `now` (no timer is processed: this does not change the
    /// APIC).
    pub fn snapshot(&self, now: u64) -> ApicSnapshot {
        let mode = self.mode();
        let x2 = mode == ApicMode::X2Apic;
        let now = self.now.max(now);
        let timer_current = match self.timer_mode() {
            TimerMode::TscDeadline => 0,
            m => self.count_down.current(m, now, self.config.timer_hz),
        };
        ApicSnapshot {
            mode,
            apic_base: self.apic_base,
            id: self.config.apic_id,
            version: APIC_VERSION,
            tpr: self.tpr,
            ppr: self.ppr(),
            apr: self.apr(),
            ldr: self.ldr(x2),
            dfr: self.dfr,
            svr: self.svr,
            isr: self.isr.words(),
            tmr: self.tmr.words(),
            irr: self.irr.words(),
            auto_eoi: self.auto_eoi.words(),
            esr: self.esr,
            esr_pending: self.esr_pending,
            icr: self.icr,
            lvt: self.lvt,
            timer_initial: self.count_down.initial,
            timer_current,
            divide_config: self.count_down.dcr,
            tsc_deadline: self.tsc_deadline,
            next_deadline: self.timer_deadline(),
            pending: self.pending(),
            stats: self.stats,
        }
    }
}
