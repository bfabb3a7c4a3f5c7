//! The APIC timer's count-down part (one-shot and periodic), computed from
//! the caller's clock rather than ticked (SDM Vol. 3A §10.5.4; AMD APM Vol. 2
//! §16.4.1 "APIC Timer Interrupt").
//!
//! While counting, the state is `(base_ns, base_count, periods_fired)`: at
//! `base_ns` the current count was `base_count`; expiry `k` (k ≥ 0) happens
//! when `base_count + k·initial` ticks have elapsed. Ticks elapse at
//! `timer_hz / divisor`. Keeping the base fixed and counting expiries avoids
//! the drift that re-basing on every period would add, and lets a late caller
//! fold missed periods into one interrupt.

const NS_PER_SEC: u128 = 1_000_000_000;

/// LVT timer mode, bits 18:17 (SDM Vol. 3A Figure 10-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

impl TimerMode {
    /// Decodes LVT timer bits 18:17. The LVT write path never stores the
    /// reserved value 0b11; should it appear it decodes as one-shot.
    pub(crate) fn from_lvt(lvt: u32) -> Self {
        match (lvt >> 17) & 3 {
            1 => Self::Periodic,
            2 => Self::TscDeadline,
            _ => Self::OneShot,
        }
    }
}

/// The divisor selected by the divide configuration register: bits 0, 1 and
/// 3 form a 3-bit value `v`; the divisor is `2^((v + 1) mod 8)`, so 0b111
/// selects divide-by-1 (SDM Vol. 3A Figure 10-10).
pub(crate) fn divisor(dcr: u32) -> u64 {
    let v = (dcr & 3) | ((dcr >> 1) & 4);
    1 << ((v + 1) & 7)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counting {
    base_ns: u64,
    /// Count at `base_ns`; always ≥ 1.
    base_count: u32,
    /// Expiries already delivered since `base_ns` (u128: with a 1 THz clock
    /// and divide-by-1 a 2^64 ns span holds more than 2^64 periods).
    periods_fired: u128,
}

/// Outcome of [`CountDown::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Expiry {
    /// The timer expired at least once.
    pub(crate) fired: bool,
    /// Further periodic expiries folded into this one.
    pub(crate) coalesced: u64,
}

/// The count-down timer registers and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CountDown {
    /// Initial-count register.
    pub(crate) initial: u32,
    /// Divide configuration register (bits 0, 1, 3).
    pub(crate) dcr: u32,
    counting: Option<Counting>,
}

impl CountDown {
    /// Stops the timer and clears the initial count (reset, TSC-deadline mode
    /// transitions).
    pub(crate) fn clear(&mut self) {
        self.initial = 0;
        self.counting = None;
    }

    /// A write of the initial-count register: 0 stops the timer, anything
    /// else (re)starts it from `value` at `now`.
    pub(crate) fn write_initial(&mut self, value: u32, now: u64) {
        self.initial = value;
        self.counting = (value != 0).then_some(Counting {
            base_ns: now,
            base_count: value,
            periods_fired: 0,
        });
    }

    /// Whole ticks elapsed from `c.base_ns` to `now` (saturating at 0).
    fn ticks(&self, c: &Counting, now: u64, hz: u64) -> u128 {
        let elapsed = u128::from(now.saturating_sub(c.base_ns));
        // elapsed < 2^64 and hz ≤ 10^12: the product fits in u128.
        elapsed * u128::from(hz) / (u128::from(divisor(self.dcr)) * NS_PER_SEC)
    }

    /// The time at which `ticks` ticks after `c.base_ns` have elapsed
    /// (rounded up); None when beyond the `u64` range.
    fn ticks_to_ns(&self, c: &Counting, ticks: u128, hz: u64) -> Option<u64> {
        let scaled = ticks.checked_mul(u128::from(divisor(self.dcr)) * NS_PER_SEC)?;
        let delta = u64::try_from(scaled.div_ceil(u128::from(hz))).ok()?;
        c.base_ns.checked_add(delta)
    }

    /// Ticks from `c.base_ns` to expiry number `k`.
    fn expiry_ticks(&self, c: &Counting, k: u128) -> u128 {
        u128::from(c.base_count).saturating_add(k.saturating_mul(u128::from(self.initial)))
    }

    /// The current-count register at `now`.
    pub(crate) fn current(&self, mode: TimerMode, now: u64, hz: u64) -> u32 {
        let Some(c) = &self.counting else { return 0 };
        let t = self.ticks(c, now, hz);
        let base = u128::from(c.base_count);
        if t < base {
            // t < base_count ≤ u32::MAX.
            return (base - t) as u32;
        }
        match mode {
            TimerMode::Periodic if self.initial != 0 => {
                let initial = u128::from(self.initial);
                // In 1 ..= initial, so it fits in a u32.
                (initial - (t - base) % initial) as u32
            }
            _ => 0,
        }
    }

    /// When the next expiry is due, if counting.
    pub(crate) fn next_expiry(&self, mode: TimerMode, hz: u64) -> Option<u64> {
        let c = self.counting.as_ref()?;
        let k = match mode {
            TimerMode::Periodic => c.periods_fired,
            _ => 0,
        };
        self.ticks_to_ns(c, self.expiry_ticks(c, k), hz)
    }

    /// Processes expiries up to `now`: a one-shot timer stops; a periodic
    /// timer reports one expiry however many periods passed, and the next
    /// expiry is the first one after `now`.
    pub(crate) fn advance(&mut self, mode: TimerMode, now: u64, hz: u64) -> Expiry {
        let Some(mut c) = self.counting else {
            return Expiry::default();
        };
        let t = self.ticks(&c, now, hz);
        let periodic = mode == TimerMode::Periodic && self.initial != 0;
        let k = if periodic { c.periods_fired } else { 0 };
        if t < self.expiry_ticks(&c, k) {
            return Expiry::default();
        }
        if !periodic {
            self.counting = None;
            return Expiry {
                fired: true,
                coalesced: 0,
            };
        }
        // Latest expiry index not after now: (t - base_count) / initial.
        let last = (t - u128::from(c.base_count)) / u128::from(self.initial);
        let coalesced = u64::try_from(last.saturating_sub(c.periods_fired)).unwrap_or(u64::MAX);
        c.periods_fired = last + 1;
        self.counting = Some(c);
        Expiry {
            fired: true,
            coalesced,
        }
    }

    /// Restarts the count from its current value at `now` (used before the
    /// divisor or the one-shot/periodic mode changes, so the new setting
    /// applies from `now` on).
    pub(crate) fn rebase(&mut self, mode: TimerMode, now: u64, hz: u64) {
        let current = self.current(mode, now, hz);
        self.counting = (current != 0).then_some(Counting {
            base_ns: now,
            base_count: current,
            periods_fired: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisor_table() {
        // SDM Figure 10-10: 0000 → 2, 0001 → 4, 0010 → 8, 0011 → 16,
        // 1000 → 32, 1001 → 64, 1010 → 128, 1011 → 1.
        let table = [
            (0x0, 2),
            (0x1, 4),
            (0x2, 8),
            (0x3, 16),
            (0x8, 32),
            (0x9, 64),
            (0xA, 128),
            (0xB, 1),
        ];
        for (dcr, div) in table {
            assert_eq!(divisor(dcr), div, "dcr {dcr:#x}");
        }
    }

    #[test]
    fn one_shot_counts_down_and_stops() {
        // 1 GHz, divide by 1: one tick per ns.
        let mut t = CountDown {
            dcr: 0xB,
            ..Default::default()
        };
        t.write_initial(100, 1000);
        assert_eq!(t.current(TimerMode::OneShot, 1000, 1_000_000_000), 100);
        assert_eq!(t.current(TimerMode::OneShot, 1040, 1_000_000_000), 60);
        assert_eq!(t.next_expiry(TimerMode::OneShot, 1_000_000_000), Some(1100));
        assert!(!t.advance(TimerMode::OneShot, 1099, 1_000_000_000).fired);
        assert!(t.advance(TimerMode::OneShot, 1100, 1_000_000_000).fired);
        assert_eq!(t.current(TimerMode::OneShot, 1100, 1_000_000_000), 0);
        assert_eq!(t.next_expiry(TimerMode::OneShot, 1_000_000_000), None);
    }
}
