//! The four synthetic timers of one VP (TLFS "Timers": "Synthetic Timers",
//! "Synthetic Timer MSRs", "Synthetic Timer Expiration Message"; Linux 6.1
//! `arch/x86/include/asm/hyperv-tlfs.h` `union hv_stimer_config`,
//! `include/asm-generic/hyperv-tlfs.h` `struct hv_timer_message_payload`,
//! `drivers/clocksource/hyperv_timer.c` for what the guest writes).
//!
//! Times are reference time (100 ns units, [`crate::ReferenceClock`]); the
//! caller passes "now" in.
//!
//! - STIMERn_CONFIG (0x400000B0 + 2n): enable (0), periodic (1), lazy (2),
//!   auto_enable (3), apic_vector (11:4), direct_mode (12), sintx (19:16);
//!   bits 15:13 and 63:20 are RsvdZ and a write setting them is refused
//!   ([`TimeMsrError::Reserved`]). Enabling a message-mode timer with
//!   SINTx = 0 leaves it disabled: TLFS "It is not permitted to set the SINTx
//!   field to zero for an enabled timer (that is not in direct mode). If
//!   attempted, the timer will be marked disabled (that is, bit 0 cleared)
//!   immediately."
//! - STIMERn_COUNT (0x400000B1 + 2n): the absolute expiration time of a
//!   one-shot timer, the period of a periodic one ("The first period begins
//!   when the synthetic timer is enabled"). Writing 0 disables the timer
//!   whatever AutoEnable says; a non-zero write with AutoEnable sets Enable.
//!   A one-shot expires when reference time >= COUNT, so a COUNT in the past
//!   expires at once, and disables itself when it fires.
//! - Any CONFIG or COUNT write cancels an undelivered expiration and re-arms
//!   from the new values (KVM `arch/x86/kvm/hyperv.c` `stimer_set_config` /
//!   `stimer_set_count` call `stimer_cleanup` first). Linux writes COUNT on
//!   every event, also after the one-shot fired, and relies on the re-arm.
//! - [`Stimers::expire`] returns what fired: in direct mode an interrupt on
//!   `apic_vector` ([`TimerEvent::Interrupt`]); otherwise an
//!   HVMSG_TIMER_EXPIRED message for SINT `sintx` ([`TimerEvent::Message`]).
//!   A message stays pending, and is returned again by every `expire`, until
//!   the caller reports it placed in the SINT's slot with
//!   [`Stimers::delivered`]: a busy slot (the guest has not consumed the
//!   previous message) means "try again after EOM", as the TLFS and KVM
//!   (`stimer_send_msg` failing keeps `msg_pending`) do. A one-shot stays
//!   enabled until its message is delivered (KVM clears Enable only then).
//! - Periodic timers keep their phase: after firing, the next deadline is
//!   the first `deadline + k * period` after now. A caller that is late by
//!   several periods gets one signal, not a burst: the TLFS allows "some
//!   timer expiration signals may be skipped completely", and this module
//!   always skips rather than shortening periods ("period modulation"), the
//!   same for lazy and non-lazy timers (KVM does the same: "all periodic
//!   timers are lazy"). While a message is undelivered, later periods are
//!   folded into it. The message's `expiration_time` is the deadline that
//!   fired, `delivery_time` the reference time of the latest attempt.

use crate::reftime::TimeMsrError;

/// Synthetic timers per VP.
pub const STIMER_COUNT: usize = 4;
/// HV_X64_MSR_STIMER0_CONFIG; timer n's is `STIMER0_CONFIG + 2n`.
pub const STIMER0_CONFIG: u32 = 0x4000_00B0;
/// HV_X64_MSR_STIMER0_COUNT; timer n's is `STIMER0_COUNT + 2n`.
pub const STIMER0_COUNT: u32 = 0x4000_00B1;
/// `HVMSG_TIMER_EXPIRED` (Linux `enum hv_message_type`).
pub const HVMSG_TIMER_EXPIRED: u32 = 0x8000_0010;

/// CONFIG bit 0.
const ENABLE: u64 = 1 << 0;
/// CONFIG bit 1.
const PERIODIC: u64 = 1 << 1;
/// CONFIG bit 2.
const LAZY: u64 = 1 << 2;
/// CONFIG bit 3.
const AUTO_ENABLE: u64 = 1 << 3;
/// CONFIG bits 11:4.
const VECTOR_SHIFT: u32 = 4;
const VECTOR: u64 = 0xFF << VECTOR_SHIFT;
/// CONFIG bit 12.
const DIRECT_MODE: u64 = 1 << 12;
/// CONFIG bits 19:16.
const SINT_SHIFT: u32 = 16;
const SINT: u64 = 0xF << SINT_SHIFT;
/// The CONFIG bits the TLFS defines; 15:13 and 63:20 are RsvdZ.
const CONFIG_DEFINED: u64 = ENABLE | PERIODIC | LAZY | AUTO_ENABLE | VECTOR | DIRECT_MODE | SINT;

/// The timer's CONFIG MSR index (`n` < [`STIMER_COUNT`]).
pub const fn config_msr(n: usize) -> u32 {
    STIMER0_CONFIG + 2 * n as u32
}

/// The timer's COUNT MSR index (`n` < [`STIMER_COUNT`]).
pub const fn count_msr(n: usize) -> u32 {
    STIMER0_COUNT + 2 * n as u32
}

/// An expiration message: `struct hv_timer_message_payload` plus the SINT
/// to post it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerMessage {
    /// `timer_index` (0–3).
    pub timer: u8,
    /// The SINT (CONFIG.SINTx, never 0) whose slot receives it.
    pub sint: u8,
    /// `expiration_time`: the deadline that fired (reference time).
    pub expiration_time: u64,
    /// `delivery_time`: reference time of this delivery attempt.
    pub delivery_time: u64,
}

impl TimerMessage {
    /// Size of `hv_timer_message_payload` (`u32 timer_index, u32 reserved,
    /// u64 expiration_time, u64 delivery_time`, packed).
    pub const PAYLOAD_SIZE: usize = 24;

    /// The payload bytes (little-endian, reserved zero).
    pub fn payload(&self) -> [u8; Self::PAYLOAD_SIZE] {
        let mut p = [0u8; Self::PAYLOAD_SIZE];
        p[0..4].copy_from_slice(&u32::from(self.timer).to_le_bytes());
        p[8..16].copy_from_slice(&self.expiration_time.to_le_bytes());
        p[16..24].copy_from_slice(&self.delivery_time.to_le_bytes());
        p
    }

    /// The whole 256-byte `hv_message`: header `message_type` =
    /// [`HVMSG_TIMER_EXPIRED`], `payload_size` = 24, flags and sender 0 (as
    /// KVM `stimer_prepare_msg`), then the payload at offset 16.
    pub fn to_message(&self) -> [u8; 256] {
        let mut m = [0u8; 256];
        m[0..4].copy_from_slice(&HVMSG_TIMER_EXPIRED.to_le_bytes());
        m[4] = Self::PAYLOAD_SIZE as u8;
        m[16..16 + Self::PAYLOAD_SIZE].copy_from_slice(&self.payload());
        m
    }
}

/// One timer expiration for the caller to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerEvent {
    /// Message mode: post [`TimerMessage::to_message`] into SINT `sint`'s
    /// slot if it is free, then call [`Stimers::delivered`]; if the slot is
    /// busy, set its MessagePending flag so the guest writes EOM, and call
    /// [`Stimers::expire`] again after that.
    Message(TimerMessage),
    /// Direct mode: raise `vector` on the VP's local APIC (an edge, fixed
    /// interrupt the guest EOIs; Linux uses 0xED, HYPERV_STIMER0_VECTOR).
    Interrupt {
        /// Timer index (0–3).
        timer: u8,
        /// CONFIG.ApicVector.
        vector: u8,
    },
}

/// What one [`Stimers::expire`] call fired: at most one event per timer, in
/// timer order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expired {
    events: [Option<TimerEvent>; STIMER_COUNT],
}

impl Expired {
    /// The events.
    pub fn iter(&self) -> impl Iterator<Item = &TimerEvent> {
        self.events.iter().flatten()
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Nothing fired.
    pub fn is_empty(&self) -> bool {
        self.events.iter().all(Option::is_none)
    }
}

impl IntoIterator for Expired {
    type Item = TimerEvent;
    type IntoIter = core::iter::Flatten<core::array::IntoIter<Option<TimerEvent>, STIMER_COUNT>>;

    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter().flatten()
    }
}

/// One synthetic timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Timer {
    config: u64,
    count: u64,
    /// When it next fires; `None` while disabled or waiting for delivery of
    /// a one-shot's message.
    deadline: Option<u64>,
    /// An expiration message not yet placed in its slot.
    pending: Option<TimerMessage>,
}

impl Timer {
    fn enabled(&self) -> bool {
        self.config & ENABLE != 0
    }

    fn periodic(&self) -> bool {
        self.config & PERIODIC != 0
    }

    fn direct(&self) -> bool {
        self.config & DIRECT_MODE != 0
    }

    fn sint(&self) -> u8 {
        ((self.config & SINT) >> SINT_SHIFT) as u8
    }

    fn vector(&self) -> u8 {
        ((self.config & VECTOR) >> VECTOR_SHIFT) as u8
    }

    /// Drop anything in flight and arm from the registers at `now`.
    fn rearm(&mut self, now: u64) {
        self.pending = None;
        // TLFS: an enabled message-mode timer with SINTx = 0 is disabled
        // at once.
        if self.enabled() && !self.direct() && self.sint() == 0 {
            self.config &= !ENABLE;
        }
        self.deadline = if !self.enabled() || self.count == 0 {
            None
        } else if self.periodic() {
            // "The first period begins when the synthetic timer is enabled."
            Some(now.saturating_add(self.count))
        } else {
            // Absolute; in the past means it fires at the next expire().
            Some(self.count)
        };
    }

    /// Fire if due at `now`: returns the event to deliver.
    fn expire(&mut self, index: u8, now: u64) -> Option<TimerEvent> {
        let due = self.deadline.filter(|&d| now >= d);
        if let Some(deadline) = due {
            self.deadline = if self.periodic() {
                // First grid point strictly after now: missed periods are
                // skipped, the phase is kept.
                let missed = (now - deadline) / self.count;
                let next = u128::from(deadline) + (u128::from(missed) + 1) * u128::from(self.count);
                Some(u64::try_from(next).unwrap_or(u64::MAX))
            } else {
                None
            };
            if self.direct() {
                if !self.periodic() {
                    self.config &= !ENABLE;
                }
                return Some(TimerEvent::Interrupt {
                    timer: index,
                    vector: self.vector(),
                });
            }
            // A message still undelivered absorbs this expiration.
            if self.pending.is_none() {
                self.pending = Some(TimerMessage {
                    timer: index,
                    sint: self.sint(),
                    expiration_time: deadline,
                    delivery_time: now,
                });
            }
        }
        let message = self.pending.as_mut()?;
        message.delivery_time = now;
        Some(TimerEvent::Message(*message))
    }
}

/// The synthetic timers of one VP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stimers {
    timers: [Timer; STIMER_COUNT],
    direct_mode_available: bool,
}

impl Stimers {
    /// All timers disabled (TLFS: every CONFIG is 0 when the VP is created).
    /// `direct_mode_available`: whether the partition offers direct-mode
    /// timers (CPUID 0x40000003 EDX bit 19); without it, a CONFIG write
    /// setting DirectMode is refused.
    pub const fn new(direct_mode_available: bool) -> Self {
        const OFF: Timer = Timer {
            config: 0,
            count: 0,
            deadline: None,
            pending: None,
        };
        Self {
            timers: [OFF; STIMER_COUNT],
            direct_mode_available,
        }
    }

    /// VP reset: every timer disabled, COUNT 0, nothing pending.
    pub fn reset(&mut self) {
        *self = Self::new(self.direct_mode_available);
    }

    /// Whether `index` is one of the eight STIMER MSRs.
    pub fn is_stimer_msr(index: u32) -> bool {
        (STIMER0_CONFIG..STIMER0_CONFIG + 2 * STIMER_COUNT as u32).contains(&index)
    }

    /// `(timer, is_count)` for an STIMER MSR.
    fn decode(index: u32) -> Result<(usize, bool), TimeMsrError> {
        if !Self::is_stimer_msr(index) {
            return Err(TimeMsrError::NotOurs);
        }
        let offset = index - STIMER0_CONFIG;
        Ok(((offset / 2) as usize, offset % 2 == 1))
    }

    /// RDMSR of STIMERn_CONFIG or STIMERn_COUNT.
    pub fn read_msr(&self, index: u32) -> Result<u64, TimeMsrError> {
        let (n, is_count) = Self::decode(index)?;
        let t = &self.timers[n];
        Ok(if is_count { t.count } else { t.config })
    }

    /// WRMSR of STIMERn_CONFIG or STIMERn_COUNT at reference time `now`.
    ///
    /// After a successful write, [`Self::next_deadline`] may lie at or before
    /// `now` (a one-shot COUNT in the past): call [`Self::expire`].
    pub fn write_msr(&mut self, index: u32, value: u64, now: u64) -> Result<(), TimeMsrError> {
        let (n, is_count) = Self::decode(index)?;
        let t = &mut self.timers[n];
        if is_count {
            t.count = value;
            if value == 0 {
                // "Writing the value zero to the Count register will stop
                // the counter ... independent of the setting of AutoEnable."
                t.config &= !ENABLE;
            } else if t.config & AUTO_ENABLE != 0 {
                t.config |= ENABLE;
            }
        } else {
            let reserved = value & !CONFIG_DEFINED;
            if reserved != 0 {
                return Err(TimeMsrError::Reserved(reserved));
            }
            if value & DIRECT_MODE != 0 && !self.direct_mode_available {
                return Err(TimeMsrError::DirectModeUnavailable);
            }
            t.config = value;
        }
        t.rearm(now);
        Ok(())
    }

    /// The earliest deadline (reference time) of an armed timer, for the
    /// caller's host timer. Undelivered messages wait for the guest's EOM,
    /// not for time: see [`Self::has_pending_messages`].
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.iter().filter_map(|t| t.deadline).min()
    }

    /// Whether an expiration message waits for a free slot; retry with
    /// [`Self::expire`] when the guest frees one (EOM).
    pub fn has_pending_messages(&self) -> bool {
        self.timers.iter().any(|t| t.pending.is_some())
    }

    /// Fire every timer due at reference time `now` and return what to
    /// deliver, together with every undelivered message (retried).
    pub fn expire(&mut self, now: u64) -> Expired {
        let mut out = Expired::default();
        for (i, t) in self.timers.iter_mut().enumerate() {
            out.events[i] = t.expire(i as u8, now);
        }
        out
    }

    /// `message` (from [`Self::expire`]) is in its slot. A one-shot timer
    /// becomes disabled. Ignored if the timer was reprogrammed since, or
    /// the message is not the one pending.
    pub fn delivered(&mut self, message: &TimerMessage) {
        let Some(t) = self.timers.get_mut(usize::from(message.timer)) else {
            return;
        };
        let Some(pending) = t.pending else {
            return;
        };
        if pending.expiration_time != message.expiration_time || pending.sint != message.sint {
            return;
        }
        t.pending = None;
        if !t.periodic() {
            // "When a one-shot timer expires, it is automatically marked as
            // disabled."
            t.config &= !ENABLE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What Linux 6.1 `hv_stimer_set_oneshot` writes in direct mode:
    /// enable, auto_enable, vector 0xED, direct.
    const LINUX_DIRECT: u64 = 0x1ED9;
    /// ... and in legacy (message) mode: enable, auto_enable, SINT2.
    const LINUX_MESSAGE: u64 = 0x20009;

    fn msg(e: &Expired) -> TimerMessage {
        match e.iter().next() {
            Some(TimerEvent::Message(m)) => *m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn msr_indices() {
        assert_eq!(config_msr(0), 0x4000_00B0);
        assert_eq!(count_msr(0), 0x4000_00B1);
        assert_eq!(config_msr(3), 0x4000_00B6);
        assert_eq!(count_msr(3), 0x4000_00B7);
        assert!(Stimers::is_stimer_msr(0x4000_00B7));
        assert!(!Stimers::is_stimer_msr(0x4000_00B8));
        assert!(!Stimers::is_stimer_msr(0x4000_00AF));
        let s = Stimers::new(true);
        assert_eq!(s.read_msr(0x4000_00B8), Err(TimeMsrError::NotOurs));
    }

    #[test]
    fn creation_state() {
        let s = Stimers::new(true);
        for n in 0..STIMER_COUNT {
            assert_eq!(s.read_msr(config_msr(n)), Ok(0));
            assert_eq!(s.read_msr(count_msr(n)), Ok(0));
        }
        assert_eq!(s.next_deadline(), None);
        assert!(!s.has_pending_messages());
    }

    #[test]
    fn config_bits_read_back_and_reserved_refused() {
        let mut s = Stimers::new(true);
        let all = ENABLE | PERIODIC | LAZY | AUTO_ENABLE | VECTOR | DIRECT_MODE | SINT;
        assert_eq!(all, 0xF_1FFF);
        s.write_msr(config_msr(1), all, 0).unwrap();
        assert_eq!(s.read_msr(config_msr(1)), Ok(all));
        for bit in (13..16).chain(20..64) {
            let mut s = Stimers::new(true);
            assert_eq!(
                s.write_msr(config_msr(0), 1 << bit, 0),
                Err(TimeMsrError::Reserved(1 << bit)),
                "bit {bit}"
            );
            assert_eq!(s.read_msr(config_msr(0)), Ok(0));
        }
    }

    #[test]
    fn direct_mode_needs_the_feature() {
        let mut s = Stimers::new(false);
        assert_eq!(
            s.write_msr(config_msr(0), LINUX_DIRECT, 0),
            Err(TimeMsrError::DirectModeUnavailable)
        );
        assert_eq!(s.read_msr(config_msr(0)), Ok(0));
        s.write_msr(config_msr(0), LINUX_MESSAGE, 0).unwrap();
    }

    #[test]
    fn linux_direct_one_shot() {
        let mut s = Stimers::new(true);
        s.write_msr(config_msr(0), LINUX_DIRECT, 100).unwrap();
        // Enabled with COUNT 0: armed for nothing.
        assert_eq!(s.next_deadline(), None);
        s.write_msr(count_msr(0), 1_000, 100).unwrap();
        assert_eq!(s.next_deadline(), Some(1_000));
        assert!(s.expire(999).is_empty());
        let e = s.expire(1_000);
        assert_eq!(
            e.into_iter().collect::<Vec<_>>(),
            vec![TimerEvent::Interrupt {
                timer: 0,
                vector: 0xED
            }]
        );
        // One-shot: disabled on expiry, nothing more.
        assert_eq!(s.read_msr(config_msr(0)), Ok(LINUX_DIRECT & !ENABLE));
        assert_eq!(s.next_deadline(), None);
        assert!(s.expire(5_000).is_empty());
        // Re-armed by the next COUNT write (auto_enable), as Linux expects.
        s.write_msr(count_msr(0), 6_000, 5_000).unwrap();
        assert_eq!(s.read_msr(config_msr(0)), Ok(LINUX_DIRECT));
        assert_eq!(s.next_deadline(), Some(6_000));
    }

    #[test]
    fn one_shot_in_the_past_fires_at_once() {
        let mut s = Stimers::new(true);
        s.write_msr(config_msr(2), LINUX_DIRECT, 0).unwrap();
        s.write_msr(count_msr(2), 10, 500).unwrap();
        assert_eq!(s.next_deadline(), Some(10));
        let e = s.expire(500);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e.iter().next(),
            Some(&TimerEvent::Interrupt {
                timer: 2,
                vector: 0xED
            })
        );
    }

    #[test]
    fn count_zero_disables_even_with_auto_enable() {
        let mut s = Stimers::new(true);
        s.write_msr(config_msr(0), LINUX_DIRECT, 0).unwrap();
        s.write_msr(count_msr(0), 100, 0).unwrap();
        s.write_msr(count_msr(0), 0, 0).unwrap();
        assert_eq!(s.read_msr(config_msr(0)).unwrap() & ENABLE, 0);
        assert_eq!(s.next_deadline(), None);
        assert!(s.expire(u64::MAX).is_empty());
    }

    #[test]
    fn without_auto_enable_count_does_not_enable() {
        let mut s = Stimers::new(true);
        s.write_msr(config_msr(0), 2 << SINT_SHIFT, 0).unwrap();
        s.write_msr(count_msr(0), 100, 0).unwrap();
        assert_eq!(s.next_deadline(), None);
        // Setting Enable afterwards arms it (TLFS: "Enable should be set
        // after writing the corresponding count register").
        s.write_msr(config_msr(0), (2 << SINT_SHIFT) | ENABLE, 0).unwrap();
        assert_eq!(s.next_deadline(), Some(100));
    }

    #[test]
    fn sint_zero_in_message_mode_is_disabled() {
        let mut s = Stimers::new(true);
        s.write_msr(config_msr(0), ENABLE | AUTO_ENABLE, 0).unwrap();
        assert_eq!(s.read_msr(config_msr(0)), Ok(AUTO_ENABLE));
        // Auto-enable through COUNT is cleared the same way.
        s.write_msr(count_msr(0), 100, 0).unwrap();
        assert_eq!(s.read_msr(config_msr(0)), Ok(AUTO_ENABLE));
        assert_eq!(s.next_deadline(), None);
        assert!(s.expire(1_000).is_empty());
        // Direct mode does not need a SINT.
        s.write_msr(config_msr(0), ENABLE | DIRECT_MODE | (0x40 << 4), 0)
            .unwrap();
        assert_eq!(s.read_msr(config_msr(0)).unwrap() & ENABLE, ENABLE);
        assert_eq!(s.next_deadline(), Some(100));
    }

    #[test]
    fn linux_message_mode_one_shot() {
        let mut s = Stimers::new(false);
        s.write_msr(config_msr(0), LINUX_MESSAGE, 0).unwrap();
        s.write_msr(count_msr(0), 2_000, 1_000).unwrap();
        let e = s.expire(2_005);
        let m = msg(&e);
        assert_eq!(
            m,
            TimerMessage {
                timer: 0,
                sint: 2,
                expiration_time: 2_000,
                delivery_time: 2_005
            }
        );
        // Still enabled until delivered.
        assert_eq!(s.read_msr(config_msr(0)), Ok(LINUX_MESSAGE));
        assert!(s.has_pending_messages());
        assert_eq!(s.next_deadline(), None);
        s.delivered(&m);
        assert_eq!(s.read_msr(config_msr(0)), Ok(LINUX_MESSAGE & !ENABLE));
        assert!(!s.has_pending_messages());
        assert!(s.expire(10_000).is_empty());
    }

    #[test]
    fn busy_slot_retries_with_new_delivery_time() {
        let mut s = Stimers::new(false);
        s.write_msr(config_msr(1), LINUX_MESSAGE, 0).unwrap();
        s.write_msr(count_msr(1), 50, 0).unwrap();
        let first = msg(&s.expire(60));
        // Slot busy: not delivered. The next expire() retries it.
        let again = msg(&s.expire(90));
        assert_eq!(again.expiration_time, 50);
        assert_eq!(again.delivery_time, 90);
        assert_eq!(again.timer, 1);
        // Acknowledging the stale copy still matches (same expiration).
        s.delivered(&first);
        assert!(!s.has_pending_messages());
        assert!(s.expire(100).is_empty());
    }

    #[test]
    fn delivered_ignores_unrelated_messages() {
        let mut s = Stimers::new(false);
        s.write_msr(config_msr(0), LINUX_MESSAGE, 0).unwrap();
        s.write_msr(count_msr(0), 50, 0).unwrap();
        let m = msg(&s.expire(60));
        s.delivered(&TimerMessage {
            expiration_time: 49,
            ..m
        });
        s.delivered(&TimerMessage { timer: 9, ..m });
        s.delivered(&TimerMessage { timer: 1, ..m });
        assert!(s.has_pending_messages());
        // Reprogramming cancels the pending message; a late ack is ignored.
        s.write_msr(count_msr(0), 500, 60).unwrap();
        assert!(!s.has_pending_messages());
        s.delivered(&m);
        assert_eq!(s.read_msr(config_msr(0)), Ok(LINUX_MESSAGE));
        assert_eq!(s.next_deadline(), Some(500));
    }

    #[test]
    fn message_bytes() {
        let m = TimerMessage {
            timer: 3,
            sint: 2,
            expiration_time: 0x0102_0304_0506_0708,
            delivery_time: 0x1112_1314_1516_1718,
        };
        let b = m.to_message();
        assert_eq!(&b[0..4], &0x8000_0010u32.to_le_bytes());
        assert_eq!(b[4], 24);
        assert_eq!(&b[5..16], &[0; 11]);
        assert_eq!(&b[16..20], &3u32.to_le_bytes());
        assert_eq!(&b[20..24], &[0; 4]);
        assert_eq!(&b[24..32], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[32..40], &0x1112_1314_1516_1718u64.to_le_bytes());
        assert!(b[40..].iter().all(|&x| x == 0));
        assert_eq!(&b[16..40], &m.payload());
    }

    #[test]
    fn periodic_keeps_phase() {
        let mut s = Stimers::new(true);
        let cfg = ENABLE | PERIODIC | DIRECT_MODE | (0x50 << 4);
        s.write_msr(count_msr(0), 100, 0).unwrap();
        s.write_msr(config_msr(0), cfg, 1_000).unwrap();
        // First period begins at enable.
        assert_eq!(s.next_deadline(), Some(1_100));
        assert_eq!(s.expire(1_103).len(), 1);
        // Next one is on the grid, not 1_203.
        assert_eq!(s.next_deadline(), Some(1_200));
        assert_eq!(s.read_msr(config_msr(0)), Ok(cfg));
        assert_eq!(s.expire(1_200).len(), 1);
        assert_eq!(s.next_deadline(), Some(1_300));
    }

    #[test]
    fn late_periodic_fires_once() {
        let mut s = Stimers::new(true);
        let cfg = ENABLE | PERIODIC | DIRECT_MODE | (0x50 << 4);
        s.write_msr(count_msr(0), 100, 0).unwrap();
        s.write_msr(config_msr(0), cfg, 0).unwrap();
        // A million periods late: one interrupt, then back on the grid.
        let now = 100_000_050;
        assert_eq!(s.expire(now).len(), 1);
        assert_eq!(s.next_deadline(), Some(100_000_100));
        assert!(s.expire(now + 1).is_empty());
    }

    #[test]
    fn late_periodic_lazy_fires_once_too() {
        let mut s = Stimers::new(false);
        let cfg = ENABLE | PERIODIC | LAZY | (5 << SINT_SHIFT);
        s.write_msr(count_msr(3), 10, 0).unwrap();
        s.write_msr(config_msr(3), cfg, 0).unwrap();
        let m = msg(&s.expire(1_000));
        assert_eq!((m.timer, m.sint, m.expiration_time), (3, 5, 10));
        assert_eq!(s.next_deadline(), Some(1_010));
        s.delivered(&m);
        // Periodic stays enabled after delivery.
        assert_eq!(s.read_msr(config_msr(3)), Ok(cfg));
    }

    #[test]
    fn periodic_folds_periods_into_undelivered_message() {
        let mut s = Stimers::new(false);
        let cfg = ENABLE | PERIODIC | (2 << SINT_SHIFT);
        s.write_msr(count_msr(0), 10, 0).unwrap();
        s.write_msr(config_msr(0), cfg, 0).unwrap();
        let m = msg(&s.expire(10));
        // Slot busy across three more periods: still that one message.
        for now in [20, 30, 40] {
            let e = s.expire(now);
            assert_eq!(e.len(), 1);
            let again = msg(&e);
            assert_eq!(again.expiration_time, 10);
            assert_eq!(again.delivery_time, now);
        }
        s.delivered(&m);
        assert!(s.expire(45).is_empty());
        let next = msg(&s.expire(50));
        assert_eq!(next.expiration_time, 50);
    }

    #[test]
    fn several_timers_fire_together_in_order() {
        let mut s = Stimers::new(true);
        s.write_msr(config_msr(0), LINUX_MESSAGE, 0).unwrap();
        s.write_msr(count_msr(0), 10, 0).unwrap();
        s.write_msr(config_msr(2), LINUX_DIRECT, 0).unwrap();
        s.write_msr(count_msr(2), 5, 0).unwrap();
        s.write_msr(config_msr(3), LINUX_DIRECT, 0).unwrap();
        s.write_msr(count_msr(3), 500, 0).unwrap();
        assert_eq!(s.next_deadline(), Some(5));
        let e: Vec<_> = s.expire(20).into_iter().collect();
        assert_eq!(e.len(), 2);
        assert!(matches!(e[0], TimerEvent::Message(TimerMessage { timer: 0, .. })));
        assert_eq!(
            e[1],
            TimerEvent::Interrupt {
                timer: 2,
                vector: 0xED
            }
        );
        assert_eq!(s.next_deadline(), Some(500));
    }

    #[test]
    fn config_write_rearms_and_cancels() {
        let mut s = Stimers::new(true);
        let cfg = ENABLE | PERIODIC | DIRECT_MODE | (0x50 << 4);
        s.write_msr(count_msr(0), 100, 0).unwrap();
        s.write_msr(config_msr(0), cfg, 0).unwrap();
        s.write_msr(config_msr(0), cfg, 50).unwrap();
        assert_eq!(s.next_deadline(), Some(150));
        // Disabling stops it.
        s.write_msr(config_msr(0), cfg & !ENABLE, 60).unwrap();
        assert_eq!(s.next_deadline(), None);
        assert!(s.expire(1_000).is_empty());
    }

    #[test]
    fn reset_clears_everything() {
        let mut s = Stimers::new(true);
        s.write_msr(config_msr(0), LINUX_MESSAGE, 0).unwrap();
        s.write_msr(count_msr(0), 10, 0).unwrap();
        let _ = s.expire(20);
        s.reset();
        assert_eq!(s, Stimers::new(true));
        assert!(s.expire(u64::MAX).is_empty());
        // The feature setting survives a reset.
        s.write_msr(config_msr(0), LINUX_DIRECT, 0).unwrap();
    }

    #[test]
    fn huge_period_saturates() {
        let mut s = Stimers::new(true);
        let cfg = ENABLE | PERIODIC | DIRECT_MODE;
        s.write_msr(count_msr(0), u64::MAX - 1, 0).unwrap();
        s.write_msr(config_msr(0), cfg, 10).unwrap();
        assert_eq!(s.next_deadline(), Some(u64::MAX));
        assert_eq!(s.expire(u64::MAX).len(), 1);
        assert_eq!(s.next_deadline(), Some(u64::MAX));
    }

    /// One guest or host action.
    #[derive(Debug, Clone)]
    enum Op {
        Write(u32, u64),
        Read(u32),
        Advance(u64),
        Expire { deliver: bool },
        Reset,
    }

    fn op() -> impl Strategy<Value = Op> {
        let index = prop_oneof![0x4000_00A0u32..0x4000_00C0, any::<u32>()];
        let value = prop_oneof![
            any::<u64>(),
            0u64..0x10_0000,
            Just(LINUX_DIRECT),
            Just(LINUX_MESSAGE),
            0u64..1_000,
        ];
        prop_oneof![
            (index.clone(), value).prop_map(|(i, v)| Op::Write(i, v)),
            index.prop_map(Op::Read),
            (0u64..2_000).prop_map(Op::Advance),
            any::<bool>().prop_map(|deliver| Op::Expire { deliver }),
            Just(Op::Reset),
        ]
    }

    proptest! {
        /// No MSR value or sequence of events panics, and the invariants
        /// hold: CONFIG never holds RsvdZ bits, reads succeed exactly for
        /// the eight STIMER MSRs, nothing fires before its deadline, a
        /// message-mode event never targets SINT 0, and after `expire(now)`
        /// no deadline is left at or before `now`.
        #[test]
        fn never_panics(direct in any::<bool>(), ops in proptest::collection::vec(op(), 0..64)) {
            let mut s = Stimers::new(direct);
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Write(i, v) => {
                        let r = s.write_msr(i, v, now);
                        prop_assert_eq!(r == Err(TimeMsrError::NotOurs), !Stimers::is_stimer_msr(i));
                    }
                    Op::Read(i) => {
                        prop_assert_eq!(s.read_msr(i).is_ok(), Stimers::is_stimer_msr(i));
                    }
                    Op::Advance(d) => now = now.saturating_add(d),
                    Op::Expire { deliver } => {
                        let before = s.next_deadline();
                        let e = s.expire(now);
                        if before.is_none_or(|d| d > now) {
                            // Only retries of pending messages may come out.
                            for ev in e.iter() {
                                prop_assert!(matches!(ev, TimerEvent::Message(_)));
                            }
                        }
                        for ev in e.iter() {
                            match ev {
                                TimerEvent::Message(m) => {
                                    prop_assert!(m.sint != 0);
                                    prop_assert!(m.expiration_time <= now);
                                    prop_assert_eq!(m.delivery_time, now);
                                    if deliver {
                                        s.delivered(m);
                                    }
                                }
                                TimerEvent::Interrupt { .. } => {}
                            }
                        }
                        prop_assert!(s.next_deadline().is_none_or(|d| d > now || d == u64::MAX));
                        if deliver {
                            prop_assert!(!s.has_pending_messages());
                        }
                    }
                    Op::Reset => s.reset(),
                }
                for n in 0..STIMER_COUNT {
                    prop_assert_eq!(s.read_msr(config_msr(n)).unwrap() & !CONFIG_DEFINED, 0);
                    if !direct {
                        prop_assert_eq!(s.read_msr(config_msr(n)).unwrap() & DIRECT_MODE, 0);
                    }
                }
            }
        }
    }
}
