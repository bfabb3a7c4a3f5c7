//! Where an IPI goes among the VPs of one partition (SDM vol. 3A §10.6
//! "Issuing Interprocessor Interrupts", §8.4.4.1 "Typical BSP
//! Initialization Sequence"): which VPs the destination and shorthand name,
//! and what the delivery mode does to each. Pure: the caller (hv-core's
//! `Child::route_ipi`) applies the result to its VPs.

use crate::apic::Vlapic;
use crate::types::{DeliveryMode, Ipi, Shorthand, Trigger};

/// What an IPI does to one VP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpiDelivery {
    /// Not named by the IPI, or the sender's own share of a fixed IPI
    /// (delivered when it wrote the ICR: `Vlapic` requests it locally).
    None,
    /// Request `vector` in the VP's APIC (a halted VP then wakes).
    Interrupt {
        /// The vector.
        vector: u8,
        /// Edge or level, from the ICR.
        trigger: Trigger,
    },
    /// INIT: the VP goes back to its power-on state and waits for a
    /// Startup IPI.
    Init,
    /// A Startup IPI with this start page: effective only on a VP waiting
    /// for one (§8.4.4.1: otherwise ignored).
    Startup(u8),
    /// Named, but not emulated: NMI and SMI, and INIT to the boot processor
    /// (a child has no firmware to restart at the reset vector).
    Dropped,
}

/// For each VP of the partition (`apics[i]` is VP `i`'s APIC, `None` where
/// there is no VP `i`), what `ipi`, sent by VP `sender`, does to it.
/// Destinations are matched by each target's own APIC
/// ([`Vlapic::matches_destination`]: its mode's format, physical or
/// logical, broadcast). A lowest-priority IPI goes to one VP: the sender if
/// it is named (it took the vector at the ICR write), else the first named.
pub fn route_ipi<const N: usize>(ipi: &Ipi, sender: usize, apics: [Option<&Vlapic>; N]) -> [IpiDelivery; N] {
    let mut out = [IpiDelivery::None; N];
    let named = |i: usize, apic: &Vlapic| match ipi.shorthand {
        Shorthand::SelfOnly => i == sender,
        Shorthand::AllIncludingSelf => true,
        Shorthand::AllExcludingSelf => i != sender,
        Shorthand::None => ipi.is_broadcast() || apic.matches_destination(ipi.destination, ipi.logical),
    };
    // The sender already has a lowest-priority IPI that names it.
    let mut lowest_taken = ipi.mode == DeliveryMode::LowestPriority
        && apics
            .get(sender)
            .copied()
            .flatten()
            .is_some_and(|apic| named(sender, apic));
    for (i, slot) in apics.iter().enumerate() {
        let Some(apic) = slot else {
            continue;
        };
        if !named(i, apic) {
            continue;
        }
        let trigger = if ipi.level_triggered {
            Trigger::Level
        } else {
            Trigger::Edge
        };
        out[i] = match ipi.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority if i == sender => IpiDelivery::None,
            DeliveryMode::Fixed => IpiDelivery::Interrupt {
                vector: ipi.vector,
                trigger,
            },
            DeliveryMode::LowestPriority if lowest_taken => IpiDelivery::None,
            DeliveryMode::LowestPriority => {
                lowest_taken = true;
                IpiDelivery::Interrupt {
                    vector: ipi.vector,
                    trigger,
                }
            }
            DeliveryMode::Init if apic.config().bsp => IpiDelivery::Dropped,
            DeliveryMode::Init => IpiDelivery::Init,
            DeliveryMode::StartUp => IpiDelivery::Startup(ipi.vector),
            DeliveryMode::Nmi | DeliveryMode::Smi => IpiDelivery::Dropped,
        };
    }
    out
}
