//! Random sequences of guest accesses, interrupt requests, acknowledgements
//! and clock advances never panic and keep the APIC's invariants.

use proptest::prelude::*;
use vlapic::{ApicMode, Config, Effect, MsrError, Trigger, Vlapic};

#[derive(Debug, Clone)]
enum Op {
    ReadMsr(u32),
    WriteMsr(u32, u64),
    ReadMmio(u64),
    WriteMmio(u64, u32),
    Request(u8, bool),
    RequestAutoEoi(u8),
    AckPending,
    Ack(u8),
    Eoi,
    SetTpr(u8),
    Advance(u64),
    /// An absolute time, possibly in the past.
    Jump(u64),
    TscOffset(u64),
    Init,
    Reset,
}

fn msr() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => 0x800u32..=0x8FF,
        1 => Just(0x1B),
        1 => Just(0x6E0),
        1 => any::<u32>(),
    ]
}

fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        // Small register values, SVR enables, LVT modes.
        3 => 0u64..0x100,
        2 => 0x100u64..0x200,
        2 => (0u64..0x100, 0u64..8).prop_map(|(v, mode)| v | (mode << 16)),
        // IA32_APIC_BASE values: EN/EXTD/BSP combinations.
        2 => (0u64..8).prop_map(|bits| 0xFEE0_0000 | (bits & 3) << 10 | (bits & 4) << 6),
        // ICR values with shorthand / mode / destination.
        2 => (any::<u8>(), 0u64..8, 0u64..4, any::<u32>())
            .prop_map(|(v, m, s, d)| u64::from(v) | m << 8 | 1 << 14 | s << 18 | u64::from(d) << 32),
        1 => any::<u64>(),
    ]
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0u64..0x40).prop_map(|i| i << 4),
        1 => any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => msr().prop_map(Op::ReadMsr),
        24 => (msr(), value()).prop_map(|(m, v)| Op::WriteMsr(m, v)),
        12 => offset().prop_map(Op::ReadMmio),
        24 => (offset(), value()).prop_map(|(o, v)| Op::WriteMmio(o, v as u32)),
        16 => (any::<u8>(), any::<bool>()).prop_map(|(v, l)| Op::Request(v, l)),
        8 => any::<u8>().prop_map(Op::RequestAutoEoi),
        16 => Just(Op::AckPending),
        4 => any::<u8>().prop_map(Op::Ack),
        12 => Just(Op::Eoi),
        4 => any::<u8>().prop_map(Op::SetTpr),
        20 => prop_oneof![0u64..2_000, 0u64..10_000_000, Just(u64::MAX / 4)].prop_map(Op::Advance),
        4 => any::<u64>().prop_map(Op::Jump),
        4 => any::<u64>().prop_map(Op::TscOffset),
        1 => prop_oneof![Just(Op::Init), Just(Op::Reset)],
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        0u32..0x300,
        prop_oneof![
            Just(1u64),
            Just(200_000_000),
            Just(1_000_000_000),
            Just(1_000_000_000_000)
        ],
        prop_oneof![Just(1u64), Just(2_500_000_000), Just(1_000_000_000_000)],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(id, timer_hz, tsc_hz, x2apic, tsc_deadline)| Config {
            apic_id: if x2apic { id } else { id & 0x7F },
            x2apic,
            tsc_deadline,
            ..Config::new(id, timer_hz, tsc_hz)
        })
}

fn highest(words: &[u32; 8]) -> Option<u8> {
    (0..256usize)
        .rev()
        .find(|&v| words[v / 32] & (1 << (v % 32)) != 0)
        .map(|v| v as u8)
}

fn check(apic: &mut Vlapic, now: u64) -> Result<(), TestCaseError> {
    let s = apic.snapshot(now);
    // Vectors 0–15 never enter IRR or ISR.
    prop_assert_eq!(s.irr[0] & 0xFFFF, 0);
    prop_assert_eq!(s.isr[0] & 0xFFFF, 0);
    // PPR follows the SDM formula.
    let isrv = highest(&s.isr).unwrap_or(0);
    let expected_ppr = if s.tpr >> 4 >= isrv >> 4 {
        s.tpr
    } else {
        isrv & 0xF0
    };
    prop_assert_eq!(s.ppr, expected_ppr);
    // What is pending beats the PPR class and is the highest IRR vector.
    if let Some(v) = apic.pending() {
        prop_assert!(v >= 16);
        prop_assert!(v >> 4 > s.ppr >> 4, "pending {:#x} ppr {:#x}", v, s.ppr);
        prop_assert_eq!(Some(v), highest(&s.irr));
        prop_assert!(s.mode != ApicMode::Disabled);
    }
    // Count-down never exceeds the initial count.
    prop_assert!(s.timer_current <= s.timer_initial);
    // Bits the guest cannot set.
    prop_assert_eq!(s.apic_base & 0x2FF, 0);
    prop_assert!(
        s.apic_base & (1 << 10) == 0 || s.apic_base & (1 << 11) != 0,
        "EXTD without EN"
    );
    // After processing up to now, the next deadline is strictly later.
    if let Some(deadline) = apic.next_deadline(now) {
        prop_assert!(deadline > now, "deadline {} now {}", deadline, now);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_invariants(
        config in config(),
        prelude in prop::option::of((0x10u32..0x100, 0u32..3, 1u32..100_000, any::<bool>())),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let mut apic = Vlapic::new(config).expect("valid config");
        let mut now = 0u64;
        if let Some((vector, mode, count, x2)) = prelude {
            // Start from a running guest: software-enabled, timer armed,
            // possibly in x2APIC mode.
            let _ = apic.write_mmio(0xF0, 0x1FF, 0);
            let _ = apic.write_mmio(0x3E0, 0xB, 0);
            let _ = apic.write_mmio(0x320, vector | mode << 17, 0);
            let _ = apic.write_mmio(0x380, count, 0);
            let _ = apic.write_msr(0x6E0, u64::from(count), 0);
            if x2 && config.x2apic {
                let base = apic.apic_base() | 1 << 10;
                prop_assert!(apic.write_msr(0x1B, base, 0).is_ok());
            }
        }
        for op in ops {
            match op {
                Op::ReadMsr(msr) => {
                    let r = apic.read_msr(msr, now);
                    if !Vlapic::handles_msr(msr) {
                        prop_assert_eq!(r, Err(MsrError::NotApicMsr));
                    }
                }
                Op::WriteMsr(msr, v) => {
                    let mode = apic.mode();
                    let r = apic.write_msr(msr, v, now);
                    if (0x800..=0x8FF).contains(&msr) && mode != ApicMode::X2Apic {
                        prop_assert!(matches!(r, Err(MsrError::Gp(_))));
                    }
                    if mode == ApicMode::X2Apic && apic.mode() == ApicMode::XApic {
                        prop_assert!(false, "x2APIC → xAPIC was allowed");
                    }
                    if let Ok(Effect::Ipi(ipi)) = r {
                        prop_assert!(ipi.vector >= 16 || !matches!(ipi.mode, vlapic::DeliveryMode::Fixed));
                    }
                }
                Op::ReadMmio(offset) => {
                    let v = apic.read_mmio(offset, now);
                    if apic.mode() != ApicMode::XApic {
                        prop_assert_eq!(v, u32::MAX);
                    }
                }
                Op::WriteMmio(offset, v) => {
                    let _ = apic.write_mmio(offset, v, now);
                }
                Op::Request(v, level) => {
                    let accepted = apic.request(v, if level { Trigger::Level } else { Trigger::Edge });
                    prop_assert!(!accepted || v >= 16);
                }
                Op::RequestAutoEoi(v) => {
                    let _ = apic.request_auto_eoi(v);
                }
                Op::AckPending => {
                    if let Some(v) = apic.pending() {
                        prop_assert!(apic.acknowledge(v));
                    }
                }
                Op::Ack(v) => {
                    let _ = apic.acknowledge(v);
                }
                Op::Eoi => {
                    let _ = apic.eoi();
                }
                Op::SetTpr(t) => apic.set_tpr(t),
                Op::Advance(d) => {
                    now = now.saturating_add(d);
                    let _ = apic.advance(now);
                }
                Op::Jump(t) => {
                    let _ = apic.advance(t);
                    now = now.max(t);
                }
                Op::TscOffset(o) => apic.set_tsc_offset(o),
                Op::Init => apic.init(),
                Op::Reset => apic.reset(),
            }
            check(&mut apic, now)?;
        }
    }
}
