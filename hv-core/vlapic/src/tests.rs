//! Behaviour tests, one group per feature. Times are in ns; most tests use a
//! 1 GHz timer clock with divide-by-1 so one tick is one nanosecond.

use crate::*;

const GHZ: u64 = 1_000_000_000;
const BASE_XAPIC: u64 = 0xFEE0_0900;
const EXTD: u64 = 1 << 10;
const EN: u64 = 1 << 11;

// xAPIC offsets.
const ID: u64 = 0x20;
const VERSION: u64 = 0x30;
const TPR: u64 = 0x80;
const APR: u64 = 0x90;
const PPR: u64 = 0xA0;
const EOI: u64 = 0xB0;
const LDR: u64 = 0xD0;
const DFR: u64 = 0xE0;
const SVR: u64 = 0xF0;
const ISR: u64 = 0x100;
const TMR: u64 = 0x180;
const IRR: u64 = 0x200;
const ESR: u64 = 0x280;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const LVT_TIMER: u64 = 0x320;
const LVT_ERROR: u64 = 0x370;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_CURRENT: u64 = 0x390;
const TIMER_DCR: u64 = 0x3E0;

const PERIODIC: u32 = 1 << 17;
const TSC_DEADLINE: u32 = 2 << 17;
const MASKED: u32 = 1 << 16;

fn apic_with(config: Config) -> Vlapic {
    Vlapic::new(config).expect("valid config")
}

fn apic() -> Vlapic {
    apic_with(Config::new(0, GHZ, GHZ))
}

/// Software-enabled (SVR = 0x1FF) xAPIC.
fn enabled() -> Vlapic {
    let mut a = apic();
    mmio_write(&mut a, SVR, 0x1FF, 0);
    a
}

fn mmio_write(a: &mut Vlapic, offset: u64, value: u32, now: u64) {
    assert_eq!(
        a.write_mmio(offset, value, now),
        Effect::None,
        "write {offset:#x}"
    );
}

fn to_x2apic(a: &mut Vlapic) {
    let base = a.apic_base() | EXTD;
    assert_eq!(
        a.write_msr(APIC_BASE_MSR, base, 0),
        Ok(Effect::ApicBaseChanged {
            mode: ApicMode::X2Apic,
            apic_base: base
        })
    );
}

fn gp(reason: GpReason) -> MsrError {
    MsrError::Gp(reason)
}

/// Injects whatever is pending, as hv-core would.
fn inject(a: &mut Vlapic) -> Option<u8> {
    let v = a.pending()?;
    assert!(a.acknowledge(v));
    Some(v)
}

// ----- Construction and reset ------------------------------------------------

#[test]
fn config_validation() {
    assert_eq!(
        Vlapic::new(Config::new(0, 0, GHZ)).err(),
        Some(ConfigError::ZeroFrequency)
    );
    assert_eq!(
        Vlapic::new(Config::new(0, GHZ, 0)).err(),
        Some(ConfigError::ZeroFrequency)
    );
    assert_eq!(
        Vlapic::new(Config::new(0, MAX_FREQUENCY_HZ + 1, GHZ)).err(),
        Some(ConfigError::FrequencyTooHigh)
    );
    assert_eq!(
        Vlapic::new(Config::new(u32::MAX, GHZ, GHZ)).err(),
        Some(ConfigError::ApicIdTooLarge)
    );
    let no_x2 = Config {
        x2apic: false,
        ..Config::new(0x100, GHZ, GHZ)
    };
    assert_eq!(Vlapic::new(no_x2).err(), Some(ConfigError::ApicIdTooLarge));
    let bad_width = Config {
        phys_addr_bits: 64,
        ..Config::new(0, GHZ, GHZ)
    };
    assert_eq!(Vlapic::new(bad_width).err(), Some(ConfigError::PhysAddrBits));
    assert!(Vlapic::new(Config::new(0x1000, HYPERV_APIC_TIMER_HZ, GHZ)).is_ok());
}

#[test]
fn power_on_state() {
    let mut a = apic_with(Config::new(3, GHZ, GHZ));
    // Not the BSP: EN only.
    assert_eq!(a.apic_base(), 0xFEE0_0800);
    let mut bsp = apic();
    assert_eq!(bsp.read_msr(APIC_BASE_MSR, 0), Ok(BASE_XAPIC));
    assert_eq!(a.mode(), ApicMode::XApic);
    assert_eq!(a.mmio_base(), Some(0xFEE0_0000));
    assert_eq!(a.read_mmio(ID, 0), 3 << 24);
    assert_eq!(a.read_mmio(VERSION, 0), 0x0005_0014);
    assert_eq!(a.read_mmio(SVR, 0), 0xFF);
    assert_eq!(a.read_mmio(DFR, 0), u32::MAX);
    assert_eq!(a.read_mmio(TPR, 0), 0);
    for lvt in 0..6 {
        assert_eq!(a.read_mmio(LVT_TIMER + lvt * 0x10, 0), MASKED);
    }
    assert!(!a.software_enabled());
    assert_eq!(a.pending(), None);
    assert_eq!(a.next_deadline(0), None);
}

#[test]
fn reset_restores_power_on_state() {
    let fresh = apic().snapshot(0);
    let mut a = enabled();
    mmio_write(&mut a, TPR, 0x20, 0);
    mmio_write(&mut a, LVT_TIMER, 0xEC | PERIODIC, 0);
    mmio_write(&mut a, TIMER_INITIAL, 100, 0);
    assert!(a.request(0x40, Trigger::Level));
    inject(&mut a);
    assert!(a.request(0x80, Trigger::Edge));
    to_x2apic(&mut a);
    a.reset();
    let mut after = a.snapshot(0);
    assert_eq!(after.mode, ApicMode::XApic);
    after.stats = fresh.stats;
    assert_eq!(after, fresh);
    assert_eq!(a.next_deadline(10_000), None);
}

#[test]
fn init_keeps_mode_and_id() {
    let mut a = apic_with(Config::new(0x21, GHZ, GHZ));
    mmio_write(&mut a, SVR, 0x1FF, 0);
    to_x2apic(&mut a);
    assert!(a.request(0x40, Trigger::Edge));
    assert_eq!(a.write_msr(0x808, 0x10, 0), Ok(Effect::None));
    a.init();
    assert_eq!(a.mode(), ApicMode::X2Apic);
    assert_eq!(a.read_msr(0x802, 0), Ok(0x21));
    assert_eq!(a.read_msr(0x808, 0), Ok(0));
    assert_eq!(a.read_msr(0x80F, 0), Ok(0xFF));
    assert_eq!(a.read_msr(0x820 + 2, 0), Ok(0));
}

// ----- Mode transitions ------------------------------------------------------

#[test]
fn xapic_to_x2apic_and_back_is_gp() {
    let mut a = apic_with(Config::new(0x23, GHZ, GHZ));
    assert_eq!(a.read_msr(0x802, 0), Err(gp(GpReason::NotX2ApicMode)));
    assert_eq!(a.write_msr(0x808, 0, 0), Err(gp(GpReason::NotX2ApicMode)));
    to_x2apic(&mut a);
    assert_eq!(a.mode(), ApicMode::X2Apic);
    assert_eq!(a.mmio_base(), None);
    // The MMIO page is no longer decoded.
    assert_eq!(a.read_mmio(ID, 0), u32::MAX);
    assert_eq!(a.write_mmio(TPR, 0x50, 0), Effect::None);
    assert_eq!(a.read_msr(0x808, 0), Ok(0));
    // 32-bit id and the derived logical id: cluster 2, bit 3.
    assert_eq!(a.read_msr(0x802, 0), Ok(0x23));
    assert_eq!(a.read_msr(0x80D, 0), Ok((2 << 16) | (1 << 3)));
    // x2APIC → xAPIC directly is illegal.
    assert_eq!(
        a.write_msr(APIC_BASE_MSR, BASE_XAPIC, 0),
        Err(gp(GpReason::IllegalTransition))
    );
    assert_eq!(a.mode(), ApicMode::X2Apic);
    // x2APIC → disabled → xAPIC is the legal way back.
    assert_eq!(
        a.write_msr(APIC_BASE_MSR, 0xFEE0_0000, 0),
        Ok(Effect::ApicBaseChanged {
            mode: ApicMode::Disabled,
            apic_base: 0xFEE0_0000
        })
    );
    assert_eq!(a.mode(), ApicMode::Disabled);
    // Disabled → x2APIC directly is illegal too.
    assert_eq!(
        a.write_msr(APIC_BASE_MSR, 0xFEE0_0000 | EN | EXTD, 0),
        Err(gp(GpReason::IllegalTransition))
    );
    assert_eq!(
        a.write_msr(APIC_BASE_MSR, 0xFEE0_0000 | EN, 0),
        Ok(Effect::ApicBaseChanged {
            mode: ApicMode::XApic,
            apic_base: 0xFEE0_0800
        })
    );
    assert_eq!(a.read_mmio(ID, 0), 0x23 << 24);
}

#[test]
fn apic_base_reserved_bits_and_bsp() {
    let mut a = apic();
    // EXTD without EN.
    assert_eq!(
        a.write_msr(APIC_BASE_MSR, 0xFEE0_0000 | EXTD, 0),
        Err(gp(GpReason::IllegalTransition))
    );
    // Bits 7:0, 9 and above MAXPHYADDR are reserved.
    for bad in [BASE_XAPIC | 1, BASE_XAPIC | 1 << 9, BASE_XAPIC | 1 << 48] {
        assert_eq!(
            a.write_msr(APIC_BASE_MSR, bad, 0),
            Err(gp(GpReason::ReservedBits)),
            "{bad:#x}"
        );
    }
    // The BSP bit is read-only: clearing it changes nothing.
    assert_eq!(a.write_msr(APIC_BASE_MSR, 0xFEE0_0800, 0), Ok(Effect::None));
    assert_eq!(a.apic_base(), BASE_XAPIC);
    // Moving the page is reported.
    assert_eq!(
        a.write_msr(APIC_BASE_MSR, 0x1_0000_0000 | EN, 0),
        Ok(Effect::ApicBaseChanged {
            mode: ApicMode::XApic,
            apic_base: 0x1_0000_0900
        })
    );
    assert_eq!(a.mmio_base(), Some(0x1_0000_0000));
    // No x2APIC in the CPUID policy: EXTD is refused.
    let mut b = apic_with(Config {
        x2apic: false,
        ..Config::new(0, GHZ, GHZ)
    });
    assert_eq!(
        b.write_msr(APIC_BASE_MSR, BASE_XAPIC | EXTD, 0),
        Err(gp(GpReason::IllegalTransition))
    );
}

#[test]
fn disabling_resets_registers_and_drops_interrupts() {
    let mut a = enabled();
    mmio_write(&mut a, LVT_TIMER, 0xEC, 0);
    mmio_write(&mut a, TIMER_INITIAL, 100, 0);
    assert!(a.request(0x40, Trigger::Edge));
    let _ = a.write_msr(APIC_BASE_MSR, 0xFEE0_0000, 0).unwrap();
    assert_eq!(a.pending(), None);
    assert!(!a.request(0x41, Trigger::Edge));
    assert_eq!(a.next_deadline(0), None);
    assert_eq!(a.read_mmio(SVR, 0), u32::MAX);
    let _ = a.write_msr(APIC_BASE_MSR, 0xFEE0_0000 | EN, 0).unwrap();
    assert_eq!(a.read_mmio(SVR, 0), 0xFF);
    assert_eq!(a.read_mmio(IRR + 0x20, 0), 0);
}

// ----- x2APIC MSR rules --------------------------------------------------------

#[test]
fn x2apic_register_rules() {
    let mut a = enabled();
    to_x2apic(&mut a);
    let cases: &[(u32, Option<u64>, MsrError)] = &[
        // (msr, write value or None for read, expected error)
        (0x80B, None, gp(GpReason::WriteOnly)),              // EOI read
        (0x83F, None, gp(GpReason::WriteOnly)),              // SELF IPI read
        (0x80B, Some(1), gp(GpReason::ReservedBits)),        // EOI must be 0
        (0x802, Some(0), gp(GpReason::ReadOnly)),            // ID
        (0x803, Some(0), gp(GpReason::ReadOnly)),            // version
        (0x80A, Some(0), gp(GpReason::ReadOnly)),            // PPR
        (0x80D, Some(0), gp(GpReason::ReadOnly)),            // LDR
        (0x810, Some(0), gp(GpReason::ReadOnly)),            // ISR
        (0x820, Some(0), gp(GpReason::ReadOnly)),            // IRR
        (0x839, Some(0), gp(GpReason::ReadOnly)),            // current count
        (0x801, None, gp(GpReason::ReservedRegister)),       // reserved
        (0x809, None, gp(GpReason::ReservedRegister)),       // APR absent
        (0x80C, None, gp(GpReason::ReservedRegister)),       // RRD absent
        (0x80E, None, gp(GpReason::ReservedRegister)),       // DFR absent
        (0x80E, Some(0), gp(GpReason::ReservedRegister)),    // DFR absent
        (0x82F, None, gp(GpReason::ReservedRegister)),       // CMCI not implemented
        (0x831, None, gp(GpReason::ReservedRegister)),       // ICR high absent
        (0x831, Some(0), gp(GpReason::ReservedRegister)),    // ICR high absent
        (0x840, None, gp(GpReason::ReservedRegister)),       // beyond the registers
        (0x8FF, Some(0), gp(GpReason::ReservedRegister)),    // beyond the registers
        (0x808, Some(0x100), gp(GpReason::ReservedBits)),    // TPR 31:8
        (0x808, Some(1 << 32), gp(GpReason::ReservedBits)),  // high half
        (0x80F, Some(0x11FF), gp(GpReason::ReservedBits)),   // SVR bit 12 (no EOI suppression)
        (0x828, Some(1), gp(GpReason::ReservedBits)),        // ESR must be 0
        (0x832, Some(0x1_0100), gp(GpReason::ReservedBits)), // LVT timer bit 8
        (0x832, Some(0x4_00EC), gp(GpReason::ReservedBits)), // TSC-deadline not enabled
        (0x837, Some(0x700), gp(GpReason::ReservedBits)),    // LVT error has no delivery mode
        (0x83E, Some(0x4), gp(GpReason::ReservedBits)),      // DCR bit 2
        (0x83F, Some(0x100), gp(GpReason::ReservedBits)),    // SELF IPI 31:8
        (0x830, Some(1 << 13), gp(GpReason::ReservedBits)),  // ICR bit 13
        (0x830, Some(1 << 16), gp(GpReason::ReservedBits)),  // ICR bit 16
        (0x830, Some(1 << 20), gp(GpReason::ReservedBits)),  // ICR bit 20
    ];
    for &(msr, write, err) in cases {
        let result = match write {
            None => a.read_msr(msr, 0).map(|_| Effect::None),
            Some(v) => a.write_msr(msr, v, 0),
        };
        assert_eq!(result, Err(err), "msr {msr:#x} write {write:?}");
    }
    // Not an APIC MSR at all: the caller's other handlers decide.
    assert_eq!(a.read_msr(0x10, 0), Err(MsrError::NotApicMsr));
    assert_eq!(a.write_msr(0x4000_0070, 0, 0), Err(MsrError::NotApicMsr));
    assert!(Vlapic::handles_msr(0x80B) && Vlapic::handles_msr(0x1B) && !Vlapic::handles_msr(0x900));
    // Read-only LVT bits (delivery status) may be written back.
    assert_eq!(a.write_msr(0x835, 0x1_1700, 0), Ok(Effect::None));
    assert_eq!(a.read_msr(0x835, 0), Ok(0x1_0700));
    // The registers that are readable read.
    for msr in [
        0x802, 0x803, 0x808, 0x80A, 0x80D, 0x80F, 0x817, 0x81F, 0x827, 0x828, 0x830, 0x838, 0x83E,
    ] {
        assert!(a.read_msr(msr, 0).is_ok(), "{msr:#x}");
    }
}

// ----- Priorities ------------------------------------------------------------

#[test]
fn irr_highest_vector_first() {
    let mut a = enabled();
    for v in [0x20, 0x80, 0x60] {
        assert!(a.request(v, Trigger::Edge));
    }
    assert_eq!(a.pending(), Some(0x80));
    assert_eq!(a.read_mmio(IRR + 0x40, 0), 1); // 0x80 = word 4 bit 0
    assert_eq!(inject(&mut a), Some(0x80));
    assert_eq!(a.read_mmio(ISR + 0x40, 0), 1);
    assert_eq!(a.read_mmio(IRR + 0x40, 0), 0);
}

#[test]
fn tpr_masks_by_priority_class() {
    let mut a = enabled();
    assert!(a.request(0x41, Trigger::Edge));
    mmio_write(&mut a, TPR, 0x40, 0);
    assert_eq!(a.pending(), None, "class 4 is not above TPR class 4");
    mmio_write(&mut a, TPR, 0x4F, 0);
    assert_eq!(a.pending(), None);
    assert_eq!(a.read_mmio(PPR, 0), 0x4F);
    mmio_write(&mut a, TPR, 0x3F, 0);
    assert_eq!(a.pending(), Some(0x41));
    // The CR8 path.
    a.set_tpr(0xF0);
    assert_eq!(a.tpr(), 0xF0);
    assert_eq!(a.pending(), None);
    assert!(!a.has_deliverable(0, true));
    a.set_tpr(0);
    assert!(a.has_deliverable(0, true));
    assert!(!a.has_deliverable(0, false), "IF=0 does not wake HLT");
}

#[test]
fn isr_nesting_and_eoi_order() {
    let mut a = enabled();
    assert!(a.request(0x30, Trigger::Edge));
    assert_eq!(inject(&mut a), Some(0x30));
    assert_eq!(a.ppr(), 0x30);
    // Same class does not nest.
    assert!(a.request(0x3F, Trigger::Edge));
    assert_eq!(a.pending(), None);
    // A higher class nests.
    assert!(a.request(0x50, Trigger::Edge));
    assert_eq!(inject(&mut a), Some(0x50));
    assert_eq!(a.ppr(), 0x50);
    assert!(a.request(0x45, Trigger::Edge));
    assert_eq!(a.pending(), None, "0x45 is below in-service 0x50");
    // APR in xAPIC: the highest of TPR, ISRV and IRRV classes.
    assert_eq!(a.read_mmio(APR, 0), 0x50);
    // EOI retires the highest in-service vector first.
    mmio_write(&mut a, EOI, 0, 0);
    assert_eq!(a.read_mmio(ISR + 0x20, 0), 0, "0x50 retired");
    assert_eq!(a.read_mmio(ISR + 0x10, 0), 1 << 16, "0x30 still in service");
    assert_eq!(a.ppr(), 0x30);
    assert_eq!(inject(&mut a), Some(0x45));
    mmio_write(&mut a, EOI, 0, 0); // 0x45
    assert_eq!(a.pending(), None, "0x3F still blocked by 0x30");
    mmio_write(&mut a, EOI, 0, 0); // 0x30
    assert_eq!(a.ppr(), 0);
    assert_eq!(inject(&mut a), Some(0x3F));
    mmio_write(&mut a, EOI, 0, 0);
    mmio_write(&mut a, EOI, 0, 0); // spurious
    assert_eq!(a.stats().eoi, 4);
    assert_eq!(a.stats().spurious_eoi, 1);
}

#[test]
fn acknowledge_validates_vector() {
    let mut a = enabled();
    assert!(!a.acknowledge(0x40));
    assert!(!a.acknowledge(3));
    assert_eq!(a.ppr(), 0);
}

#[test]
fn auto_eoi_does_not_enter_isr() {
    let mut a = enabled();
    assert!(a.request_auto_eoi(0xF3));
    assert_eq!(inject(&mut a), Some(0xF3));
    assert_eq!(a.read_mmio(ISR + 0x70, 0), 0);
    assert_eq!(a.ppr(), 0);
    assert_eq!(a.stats().auto_eoi, 1);
    // A normal request of the same vector enters the ISR again.
    assert!(a.request(0xF3, Trigger::Edge));
    assert_eq!(inject(&mut a), Some(0xF3));
    assert_eq!(a.ppr(), 0xF0);
    assert_eq!(a.eoi(), Effect::None);
}

#[test]
fn level_triggered_eoi_is_reported() {
    let mut a = enabled();
    assert!(a.request(0x70, Trigger::Level));
    assert_eq!(a.read_mmio(TMR + 0x30, 0), 1 << 16);
    assert_eq!(inject(&mut a), Some(0x70));
    assert_eq!(a.write_mmio(EOI, 0, 0), Effect::LevelEoi { vector: 0x70 });
    // Edge re-request clears the TMR bit.
    assert!(a.request(0x70, Trigger::Edge));
    assert_eq!(a.read_mmio(TMR + 0x30, 0), 0);
}

#[test]
fn illegal_vectors_set_esr() {
    let mut a = enabled();
    assert!(!a.request(5, Trigger::Edge));
    assert_eq!(a.read_mmio(ESR, 0), 0, "ESR shows errors only after a write");
    mmio_write(&mut a, ESR, 0, 0);
    assert_eq!(a.read_mmio(ESR, 0), esr::RECEIVE_ILLEGAL_VECTOR);
    mmio_write(&mut a, ESR, 0, 0);
    assert_eq!(a.read_mmio(ESR, 0), 0);
    // With the error LVT unmasked, the error raises its vector.
    mmio_write(&mut a, LVT_ERROR, 0xFE, 0);
    assert!(!a.request(15, Trigger::Edge));
    assert_eq!(a.pending(), Some(0xFE));
}

#[test]
fn software_disable_masks_lvts_and_drops_requests() {
    let mut a = apic();
    assert!(!a.request(0x40, Trigger::Edge));
    // Unmasking is ignored while software-disabled.
    mmio_write(&mut a, LVT_TIMER, 0xEC, 0);
    assert_eq!(a.read_mmio(LVT_TIMER, 0), 0xEC | MASKED);
    mmio_write(&mut a, SVR, 0x1FF, 0);
    mmio_write(&mut a, LVT_TIMER, 0xEC, 0);
    assert_eq!(a.read_mmio(LVT_TIMER, 0), 0xEC);
    assert!(a.request(0x40, Trigger::Edge));
    mmio_write(&mut a, SVR, 0xFF, 0);
    assert_eq!(a.read_mmio(LVT_TIMER, 0), 0xEC | MASKED);
    // Already-requested vectors stay pending.
    assert_eq!(a.pending(), Some(0x40));
    assert_eq!(a.stats().requests_dropped, 1);
}

// ----- Timer -----------------------------------------------------------------

/// An enabled APIC with the timer vector 0xEC in `mode`, divide-by-1.
fn timer_apic(mode: u32) -> Vlapic {
    let mut a = enabled();
    mmio_write(&mut a, TIMER_DCR, 0xB, 0);
    mmio_write(&mut a, LVT_TIMER, 0xEC | mode, 0);
    a
}

#[test]
fn one_shot_timer() {
    let mut a = timer_apic(0);
    mmio_write(&mut a, TIMER_INITIAL, 1000, 0);
    assert_eq!(a.read_mmio(TIMER_INITIAL, 0), 1000);
    assert_eq!(a.read_mmio(TIMER_CURRENT, 400), 600);
    assert_eq!(a.next_deadline(400), Some(1000));
    assert!(!a.advance(999));
    assert_eq!(a.pending(), None);
    assert!(a.advance(1000));
    assert_eq!(a.pending(), Some(0xEC));
    assert_eq!(a.read_mmio(TIMER_CURRENT, 1000), 0);
    assert_eq!(a.next_deadline(1000), None);
    assert!(!a.advance(5000));
    // Writing 0 stops a running timer.
    mmio_write(&mut a, TIMER_INITIAL, 10, 6000);
    mmio_write(&mut a, TIMER_INITIAL, 0, 6005);
    assert_eq!(a.next_deadline(6005), None);
    assert_eq!(a.stats().timer_expiries, 1);
}

#[test]
fn timer_frequency_and_divide() {
    // 200 MHz: 5 ns per tick at divide-by-1.
    let mut a = apic_with(Config::new(0, HYPERV_APIC_TIMER_HZ, GHZ));
    mmio_write(&mut a, SVR, 0x1FF, 0);
    mmio_write(&mut a, LVT_TIMER, 0xEC, 0);
    // Reset DCR 0 divides by 2: 10 ns per tick.
    mmio_write(&mut a, TIMER_INITIAL, 100, 0);
    assert_eq!(a.next_deadline(0), Some(1000));
    // Divide by 16 from t = 100 (current count 90): 80 ns per tick.
    mmio_write(&mut a, TIMER_DCR, 0x3, 100);
    assert_eq!(a.read_mmio(TIMER_DCR, 100), 0x3);
    assert_eq!(a.read_mmio(TIMER_CURRENT, 100), 90);
    assert_eq!(a.next_deadline(100), Some(100 + 90 * 80));
    assert_eq!(a.read_mmio(TIMER_CURRENT, 100 + 80 * 10), 80);
    // Divide by 1 (0b1011): 5 ns per tick.
    mmio_write(&mut a, TIMER_DCR, 0xB, 900);
    assert_eq!(a.next_deadline(900), Some(900 + 80 * 5));
    // Reserved DCR bits are dropped in xAPIC mode.
    mmio_write(&mut a, TIMER_DCR, 0xFFFF_FFF4, 900);
    assert_eq!(a.read_mmio(TIMER_DCR, 900), 0);
    assert!(a.advance(900 + 80 * 10));
    assert_eq!(a.pending(), Some(0xEC));
}

#[test]
fn periodic_timer_rearms_and_coalesces() {
    let mut a = timer_apic(PERIODIC);
    mmio_write(&mut a, TIMER_INITIAL, 100, 0);
    assert!(a.advance(100));
    assert_eq!(inject(&mut a), Some(0xEC));
    mmio_write(&mut a, EOI, 0, 100);
    assert_eq!(a.next_deadline(100), Some(200));
    assert_eq!(a.read_mmio(TIMER_CURRENT, 150), 50);
    // The caller comes back late, after nine more periods: one interrupt.
    assert!(a.advance(1050));
    assert_eq!(inject(&mut a), Some(0xEC));
    assert_eq!(a.pending(), None);
    assert_eq!(a.stats().timer_expiries, 2);
    assert_eq!(a.stats().timer_coalesced, 8);
    // No drift: the next expiry stays on the original grid.
    assert_eq!(a.next_deadline(1050), Some(1100));
    assert_eq!(a.read_mmio(TIMER_CURRENT, 1050), 50);
    // Always in the future after advancing, even at an expiry instant.
    assert_eq!(a.next_deadline(1100), Some(1200));
}

#[test]
fn masked_timer_counts_without_interrupting() {
    let mut a = timer_apic(PERIODIC | MASKED);
    mmio_write(&mut a, TIMER_INITIAL, 100, 0);
    assert!(!a.advance(250));
    assert_eq!(a.pending(), None);
    assert_eq!(a.read_mmio(TIMER_CURRENT, 250), 50);
    assert_eq!(a.stats().timer_expiries, 1);
    // Unmasking mid-count interrupts at the next period.
    mmio_write(&mut a, LVT_TIMER, 0xEC | PERIODIC, 250);
    assert!(a.advance(300));
    assert_eq!(a.pending(), Some(0xEC));
}

#[test]
fn one_shot_periodic_switch_keeps_counting() {
    let mut a = timer_apic(0);
    mmio_write(&mut a, TIMER_INITIAL, 100, 0);
    mmio_write(&mut a, LVT_TIMER, 0xEC | PERIODIC, 40);
    assert_eq!(a.read_mmio(TIMER_CURRENT, 40), 60);
    assert_eq!(a.next_deadline(40), Some(100));
    assert!(a.advance(100));
    assert_eq!(a.next_deadline(100), Some(200));
    mmio_write(&mut a, LVT_TIMER, 0xEC, 130);
    assert!(a.advance(200));
    assert_eq!(a.next_deadline(200), None);
}

#[test]
fn tsc_deadline_timer() {
    // 2 GHz TSC: 2 TSC ticks per ns.
    let config = Config {
        tsc_deadline: true,
        ..Config::new(0, GHZ, 2 * GHZ)
    };
    let mut a = apic_with(config);
    mmio_write(&mut a, SVR, 0x1FF, 0);
    // Outside TSC-deadline mode the MSR reads 0 and ignores writes.
    assert_eq!(a.write_msr(TSC_DEADLINE_MSR, 5000, 0), Ok(Effect::None));
    assert_eq!(a.read_msr(TSC_DEADLINE_MSR, 0), Ok(0));
    // A running count-down is disarmed by entering TSC-deadline mode.
    mmio_write(&mut a, TIMER_INITIAL, 100, 0);
    mmio_write(&mut a, LVT_TIMER, 0xEC | TSC_DEADLINE, 0);
    assert_eq!(a.read_mmio(TIMER_INITIAL, 0), 0);
    assert_eq!(a.next_deadline(0), None);
    // Initial-count writes are ignored in TSC-deadline mode.
    mmio_write(&mut a, TIMER_INITIAL, 100, 0);
    assert_eq!(a.read_mmio(TIMER_INITIAL, 0), 0);
    a.set_tsc_offset(1_000_000);
    assert_eq!(
        a.write_msr(TSC_DEADLINE_MSR, 1_000_000 + 2000, 0),
        Ok(Effect::None)
    );
    assert_eq!(a.read_msr(TSC_DEADLINE_MSR, 0), Ok(1_002_000));
    assert_eq!(a.next_deadline(0), Some(1000));
    assert!(!a.advance(999));
    assert!(a.advance(1000));
    assert_eq!(a.pending(), Some(0xEC));
    // Fired: the MSR reads 0 and nothing is armed.
    assert_eq!(a.read_msr(TSC_DEADLINE_MSR, 1000), Ok(0));
    assert_eq!(a.next_deadline(1000), None);
    assert_eq!(a.read_mmio(TIMER_CURRENT, 1000), 0);
    // A deadline in the past fires at once; 0 disarms.
    inject(&mut a);
    mmio_write(&mut a, EOI, 0, 1000);
    let _ = a.write_msr(TSC_DEADLINE_MSR, 5, 2000).unwrap();
    assert_eq!(a.pending(), Some(0xEC));
    let _ = a.write_msr(TSC_DEADLINE_MSR, 10_000_000, 2000).unwrap();
    let _ = a.write_msr(TSC_DEADLINE_MSR, 0, 2000).unwrap();
    assert_eq!(a.next_deadline(2000), None);
    // Leaving TSC-deadline mode disarms it.
    let _ = a.write_msr(TSC_DEADLINE_MSR, 10_000_000, 2000).unwrap();
    mmio_write(&mut a, LVT_TIMER, 0xEC, 2000);
    assert_eq!(a.next_deadline(2000), None);
}

#[test]
fn tsc_deadline_requires_cpuid_policy() {
    let mut a = enabled();
    assert_eq!(
        a.read_msr(TSC_DEADLINE_MSR, 0),
        Err(gp(GpReason::TscDeadlineUnsupported))
    );
    assert_eq!(
        a.write_msr(TSC_DEADLINE_MSR, 1, 0),
        Err(gp(GpReason::TscDeadlineUnsupported))
    );
    // The mode bit is not writable either.
    mmio_write(&mut a, LVT_TIMER, 0xEC | TSC_DEADLINE, 0);
    assert_eq!(a.read_mmio(LVT_TIMER, 0), 0xEC);
}

#[test]
fn time_never_runs_backwards() {
    let mut a = timer_apic(0);
    mmio_write(&mut a, TIMER_INITIAL, 100, 1000);
    assert_eq!(a.read_mmio(TIMER_CURRENT, 500), 100);
    assert!(a.advance(1100));
    assert!(!a.advance(0));
    assert_eq!(a.next_deadline(0), None);
}

// ----- IPIs ------------------------------------------------------------------

#[test]
fn x2apic_self_ipi() {
    let mut a = enabled();
    to_x2apic(&mut a);
    assert_eq!(a.write_msr(0x83F, 0x55, 0), Ok(Effect::None));
    assert_eq!(a.pending(), Some(0x55));
    // ICR with the self shorthand is delivered locally too.
    assert_eq!(a.write_msr(0x830, (1 << 18) | 0x66, 0), Ok(Effect::None));
    assert_eq!(a.pending(), Some(0x66));
    assert_eq!(a.stats().self_ipis, 2);
    // Illegal vectors: SELF IPI receives, ICR sends.
    assert_eq!(a.write_msr(0x83F, 0x5, 0), Ok(Effect::None));
    assert_eq!(a.write_msr(0x830, (1 << 18) | 0x6, 0), Ok(Effect::None));
    assert_eq!(a.write_msr(0x828, 0, 0), Ok(Effect::None));
    assert_eq!(
        a.read_msr(0x828, 0),
        Ok(u64::from(esr::RECEIVE_ILLEGAL_VECTOR | esr::SEND_ILLEGAL_VECTOR))
    );
    // SELF IPI does not exist in xAPIC mode.
    let mut b = enabled();
    mmio_write(&mut b, 0x3F0, 0x55, 0);
    assert_eq!(b.pending(), None);
    mmio_write(&mut b, ESR, 0, 0);
    assert_eq!(b.read_mmio(ESR, 0), esr::ILLEGAL_REGISTER_ADDRESS);
}

#[test]
fn xapic_icr_init_sipi_and_fixed() {
    let mut a = enabled();
    mmio_write(&mut a, ICR_HIGH, 0x0300_0000, 0);
    assert_eq!(a.read_mmio(ICR_HIGH, 0), 0x0300_0000);
    let init = Ipi {
        vector: 0,
        mode: DeliveryMode::Init,
        shorthand: Shorthand::None,
        destination: 3,
        logical: false,
        level_triggered: false,
        x2apic: false,
    };
    assert_eq!(a.write_mmio(ICR_LOW, 0x4500, 0), Effect::Ipi(init));
    // Delivery status reads idle.
    assert_eq!(a.read_mmio(ICR_LOW, 0), 0x4500);
    assert_eq!(
        a.write_mmio(ICR_LOW, 0x4608, 0),
        Effect::Ipi(Ipi {
            vector: 8,
            mode: DeliveryMode::StartUp,
            ..init
        })
    );
    // INIT level de-assert and reserved modes send nothing.
    assert_eq!(a.write_mmio(ICR_LOW, 0x8500, 0), Effect::None);
    assert_eq!(a.write_mmio(ICR_LOW, 0x4300, 0), Effect::None);
    assert_eq!(a.write_mmio(ICR_LOW, 0x4700, 0), Effect::None);
    // Fixed with an illegal vector: ESR send illegal vector.
    assert_eq!(a.write_mmio(ICR_LOW, 0x0005, 0), Effect::None);
    // Self shorthand with NMI is invalid.
    assert_eq!(a.write_mmio(ICR_LOW, (1 << 18) | 0x400, 0), Effect::None);
    assert_eq!(a.stats().ipis_dropped, 5);
    // Logical fixed broadcast to all but self.
    let ipi = a.write_mmio(ICR_LOW, (3 << 18) | (1 << 11) | 0x31, 0);
    assert_eq!(
        ipi,
        Effect::Ipi(Ipi {
            vector: 0x31,
            mode: DeliveryMode::Fixed,
            shorthand: Shorthand::AllExcludingSelf,
            logical: true,
            ..init
        })
    );
    mmio_write(&mut a, ESR, 0, 0);
    assert_eq!(a.read_mmio(ESR, 0), esr::SEND_ILLEGAL_VECTOR);
    assert_eq!(a.pending(), None, "nothing was delivered locally");
}

#[test]
fn x2apic_icr_is_one_64_bit_register() {
    let mut a = enabled();
    to_x2apic(&mut a);
    let value = (0x1234_5678u64 << 32) | (1 << 14) | 0x40;
    match a.write_msr(0x830, value, 0) {
        Ok(Effect::Ipi(ipi)) => {
            assert_eq!(ipi.destination, 0x1234_5678);
            assert_eq!(ipi.vector, 0x40);
            assert_eq!(ipi.mode, DeliveryMode::Fixed);
            assert!(ipi.x2apic && !ipi.is_broadcast());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.read_msr(0x830, 0), Ok(value));
    // Broadcast NMI.
    match a.write_msr(0x830, (u64::from(u32::MAX) << 32) | 0x400, 0) {
        Ok(Effect::Ipi(ipi)) => assert!(ipi.is_broadcast() && ipi.mode == DeliveryMode::Nmi),
        other => panic!("{other:?}"),
    }
}

#[test]
fn destination_matching() {
    let mut a = apic_with(Config::new(0x12, GHZ, GHZ));
    mmio_write(&mut a, SVR, 0x1FF, 0);
    // xAPIC physical.
    assert!(a.matches_destination(0x12, false));
    assert!(a.matches_destination(0xFF, false));
    assert!(!a.matches_destination(0x13, false));
    // xAPIC flat logical.
    mmio_write(&mut a, LDR, 0x0400_0000, 0);
    assert_eq!(a.read_mmio(LDR, 0), 0x0400_0000);
    assert!(a.matches_destination(0x06, true));
    assert!(!a.matches_destination(0x03, true));
    // xAPIC cluster logical: cluster 0, member bit 2.
    mmio_write(&mut a, DFR, 0x0FFF_FFFF, 0);
    assert_eq!(a.read_mmio(DFR, 0), 0x0FFF_FFFF);
    assert!(a.matches_destination(0x04, true));
    assert!(!a.matches_destination(0x14, true));
    // x2APIC: id 0x12 is cluster 1, bit 2.
    to_x2apic(&mut a);
    assert!(a.matches_destination(0x12, false));
    assert!(!a.matches_destination(0xFF, false));
    assert!(a.matches_destination(u32::MAX, false));
    assert!(a.matches_destination(0x0001_0004, true));
    assert!(!a.matches_destination(0x0002_0004, true));
    assert!(!a.matches_destination(0x0001_0008, true));
    let _ = a.write_msr(APIC_BASE_MSR, 0, 0).unwrap();
    assert!(!a.matches_destination(u32::MAX, false));
}

// ----- MMIO access details ---------------------------------------------------

#[test]
fn mmio_access_sizes_and_offsets() {
    let mut a = apic_with(Config::new(0x5A, GHZ, GHZ));
    // A byte read at offset 0x23 gets the ID byte.
    assert_eq!(a.read_mmio(ID + 3, 0) as u8, 0x5A);
    assert_eq!(a.read_mmio(ID + 4, 0), 0);
    assert_eq!(a.read_mmio(ID + 0xC, 0), 0);
    // Offsets wrap within the page.
    assert_eq!(a.read_mmio(0x1000 + VERSION, 0), APIC_VERSION);
    // Unaligned writes are ignored.
    assert_eq!(a.write_mmio(TPR + 4, 0x80, 0), Effect::None);
    assert_eq!(a.write_mmio(TPR + 1, 0x80, 0), Effect::None);
    assert_eq!(a.read_mmio(TPR, 0), 0);
    // Reserved bits are dropped; read-only registers ignore writes.
    mmio_write(&mut a, TPR, 0xFFFF_FF80, 0);
    assert_eq!(a.read_mmio(TPR, 0), 0x80);
    mmio_write(&mut a, ID, 0, 0);
    mmio_write(&mut a, VERSION, 0, 0);
    mmio_write(&mut a, PPR, 0, 0);
    assert_eq!(a.read_mmio(ID, 0), 0x5A << 24);
    // Reserved registers set ESR bit 7.
    assert_eq!(a.read_mmio(0x2F0, 0), 0);
    assert_eq!(a.read_mmio(0x400, 0), 0);
    mmio_write(&mut a, ESR, 0, 0);
    assert_eq!(a.read_mmio(ESR, 0), esr::ILLEGAL_REGISTER_ADDRESS);
    assert_eq!(a.stats().errors, 2);
}

#[test]
fn snapshot_reports_state() {
    let mut a = timer_apic(PERIODIC);
    mmio_write(&mut a, TIMER_INITIAL, 100, 0);
    assert!(a.request(0x41, Trigger::Level));
    let s = a.snapshot(30);
    assert_eq!(s.mode, ApicMode::XApic);
    assert_eq!(s.apic_base, BASE_XAPIC);
    assert_eq!(s.svr, 0x1FF);
    assert_eq!(s.timer_initial, 100);
    assert_eq!(s.timer_current, 70);
    assert_eq!(s.divide_config, 0xB);
    assert_eq!(s.next_deadline, Some(100));
    assert_eq!(s.pending, Some(0x41));
    assert_eq!(s.irr[2], 1 << 1);
    assert_eq!(s.tmr[2], 1 << 1);
    assert_eq!(s.lvt[0], 0xEC | PERIODIC);
    // Snapshot does not process time.
    let _ = a.snapshot(1_000);
    assert_eq!(a.pending(), Some(0x41));
}

#[test]
fn periodic_timer_survives_extreme_lateness() {
    // 1 THz, divide-by-1, period of one tick: 2^62 ns hold more than 2^64
    // periods. Found by the proptest.
    let mut a = apic_with(Config::new(0, MAX_FREQUENCY_HZ, GHZ));
    mmio_write(&mut a, SVR, 0x1FF, 0);
    mmio_write(&mut a, TIMER_DCR, 0xB, 0);
    mmio_write(&mut a, LVT_TIMER, 0xEC | PERIODIC, 0);
    mmio_write(&mut a, TIMER_INITIAL, 1, 0);
    let late = u64::MAX / 4;
    assert!(a.advance(late));
    let next = a.next_deadline(late).expect("still armed");
    assert!(next > late);
    assert_eq!(a.stats().timer_coalesced, u64::MAX);
}

// ----- Routing an IPI among a partition's VPs (route.rs) -----------------

/// VPs 0..n, each an enabled x2APIC with APIC id = index.
fn x2apics(n: u32) -> Vec<Vlapic> {
    (0..n)
        .map(|i| {
            let mut a = apic_with(Config::new(i, GHZ, GHZ));
            to_x2apic(&mut a);
            a
        })
        .collect()
}

fn x2_ipi(mode: DeliveryMode, shorthand: Shorthand, destination: u32, vector: u8) -> Ipi {
    Ipi {
        vector,
        mode,
        shorthand,
        destination,
        logical: false,
        level_triggered: false,
        x2apic: true,
    }
}

fn four(apics: &[Vlapic]) -> [Option<&Vlapic>; 4] {
    core::array::from_fn(|i| apics.get(i))
}

const EDGE_40: IpiDelivery = IpiDelivery::Interrupt {
    vector: 0x40,
    trigger: Trigger::Edge,
};

#[test]
fn route_fixed_physical_reaches_only_the_named_vp() {
    let a = x2apics(3);
    let ipi = x2_ipi(DeliveryMode::Fixed, Shorthand::None, 2, 0x40);
    assert_eq!(
        route_ipi(&ipi, 0, four(&a)),
        [IpiDelivery::None, IpiDelivery::None, EDGE_40, IpiDelivery::None]
    );
    // An id no VP has reaches nobody (VP 3 does not exist).
    let ipi = x2_ipi(DeliveryMode::Fixed, Shorthand::None, 3, 0x40);
    assert_eq!(route_ipi(&ipi, 0, four(&a)), [IpiDelivery::None; 4]);
}

#[test]
fn route_shorthands_and_broadcast_leave_the_senders_share_to_the_icr_write() {
    let a = x2apics(3);
    let all_but = x2_ipi(DeliveryMode::Fixed, Shorthand::AllExcludingSelf, 0, 0x40);
    assert_eq!(
        route_ipi(&all_but, 1, four(&a)),
        [EDGE_40, IpiDelivery::None, EDGE_40, IpiDelivery::None]
    );
    let all = x2_ipi(DeliveryMode::Fixed, Shorthand::AllIncludingSelf, 0, 0x40);
    assert_eq!(route_ipi(&all, 1, four(&a)), route_ipi(&all_but, 1, four(&a)));
    let broadcast = x2_ipi(DeliveryMode::Fixed, Shorthand::None, u32::MAX, 0x40);
    assert_eq!(
        route_ipi(&broadcast, 1, four(&a)),
        route_ipi(&all_but, 1, four(&a))
    );
    let own = x2_ipi(DeliveryMode::Fixed, Shorthand::SelfOnly, 0, 0x40);
    assert_eq!(route_ipi(&own, 1, four(&a)), [IpiDelivery::None; 4]);
}

#[test]
fn route_level_triggered_keeps_its_trigger() {
    let a = x2apics(2);
    let ipi = Ipi {
        level_triggered: true,
        ..x2_ipi(DeliveryMode::Fixed, Shorthand::None, 1, 0x41)
    };
    assert_eq!(
        route_ipi(&ipi, 0, four(&a))[1],
        IpiDelivery::Interrupt {
            vector: 0x41,
            trigger: Trigger::Level
        }
    );
}

#[test]
fn route_lowest_priority_goes_to_one_vp() {
    let a = x2apics(4);
    let others = x2_ipi(DeliveryMode::LowestPriority, Shorthand::AllExcludingSelf, 0, 0x40);
    assert_eq!(
        route_ipi(&others, 0, four(&a)),
        [IpiDelivery::None, EDGE_40, IpiDelivery::None, IpiDelivery::None]
    );
    // Named too, the sender took it at the ICR write: nobody else gets it.
    let all = x2_ipi(DeliveryMode::LowestPriority, Shorthand::AllIncludingSelf, 0, 0x40);
    assert_eq!(route_ipi(&all, 2, four(&a)), [IpiDelivery::None; 4]);
}

#[test]
fn route_init_resets_application_processors_but_not_the_bsp() {
    let a = x2apics(3);
    let init = x2_ipi(DeliveryMode::Init, Shorthand::AllExcludingSelf, 0, 0);
    assert_eq!(
        route_ipi(&init, 1, four(&a)),
        [
            IpiDelivery::Dropped,
            IpiDelivery::None,
            IpiDelivery::Init,
            IpiDelivery::None
        ]
    );
    let one = x2_ipi(DeliveryMode::Init, Shorthand::None, 2, 0);
    assert_eq!(route_ipi(&one, 0, four(&a))[2], IpiDelivery::Init);
}

#[test]
fn route_startup_carries_its_page_and_nmi_smi_are_dropped() {
    let a = x2apics(2);
    let sipi = x2_ipi(DeliveryMode::StartUp, Shorthand::None, 1, 0x9A);
    assert_eq!(
        route_ipi(&sipi, 0, four(&a)),
        [
            IpiDelivery::None,
            IpiDelivery::Startup(0x9A),
            IpiDelivery::None,
            IpiDelivery::None
        ]
    );
    for mode in [DeliveryMode::Nmi, DeliveryMode::Smi] {
        let ipi = x2_ipi(mode, Shorthand::None, 1, 0);
        assert_eq!(route_ipi(&ipi, 0, four(&a))[1], IpiDelivery::Dropped, "{mode:?}");
    }
}

#[test]
fn route_matches_each_target_in_its_own_mode() {
    // VP 1 was just reset by INIT: xAPIC mode. An x2APIC sender's id 1
    // still names it (physical ids below 0xFF read the same in both).
    let mut a = x2apics(2);
    a[1] = apic_with(Config::new(1, GHZ, GHZ));
    let sipi = x2_ipi(DeliveryMode::StartUp, Shorthand::None, 1, 0x9A);
    assert_eq!(route_ipi(&sipi, 0, four(&a))[1], IpiDelivery::Startup(0x9A));
    // Logical x2APIC: cluster 0, bit 1 is the VP with id 1.
    let a = x2apics(3);
    let logical = Ipi {
        logical: true,
        ..x2_ipi(DeliveryMode::Fixed, Shorthand::None, 0b010, 0x40)
    };
    assert_eq!(
        route_ipi(&logical, 0, four(&a)),
        [IpiDelivery::None, EDGE_40, IpiDelivery::None, IpiDelivery::None]
    );
    // A hardware-disabled APIC is named by nothing but shorthands.
    let mut a = x2apics(2);
    a[1] = apic();
    let base = a[1].apic_base() & !EN;
    let disabled = a[1].write_msr(APIC_BASE_MSR, base, 0);
    assert!(
        matches!(
            disabled,
            Ok(Effect::ApicBaseChanged {
                mode: ApicMode::Disabled,
                ..
            })
        ),
        "{disabled:?}"
    );
    let ipi = x2_ipi(DeliveryMode::Fixed, Shorthand::None, 1, 0x40);
    assert_eq!(route_ipi(&ipi, 0, four(&a))[1], IpiDelivery::None);
}
