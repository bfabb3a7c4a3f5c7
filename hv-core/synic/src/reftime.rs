//! Partition reference time (TLFS "Timers": "Reference Counter", "Partition
//! Reference Time Enlightenment", "Partition Reference TSC Mechanism").
//!
//! The reference counter counts 100 ns units from 0 at partition creation,
//! at a constant rate, monotonically, the same for every VP. Here it is
//! derived from the **guest-visible** TSC (after the VMCB TSC offset/ratio):
//!
//! - [`ReferenceClock`] turns a TSC value into reference time with the very
//!   formula the guest evaluates on the reference TSC page, TLFS "Partition
//!   Reference TSC Mechanism":
//!   `ReferenceTime = ((VirtualTsc * TscScale) >> 64) + TscOffset`, the
//!   product taken on 128 bits (Linux 6.1
//!   `include/clocksource/hyperv_timer.h` `hv_read_tsc_page_tsc`:
//!   `mul_u64_u64_shr(*cur_tsc, scale, 64) + offset`, a wrapping u64 add).
//!   TIME_REF_COUNT (MSR 0x40000020) returns the same formula, so the MSR a
//!   guest falls back to when the page's sequence is 0 never disagrees with
//!   the page (KVM `arch/x86/kvm/hyperv.c` `get_time_ref_counter` does the
//!   same). `TscScale = floor(2^64 * 10^7 / tsc_hz)` (OpenVMM
//!   `vm/hv1/hv1_emulator/src/hv.rs` `msr_write_reference_tsc`); against the
//!   exact `floor((tsc - start) * 10^7 / tsc_hz)` the result is off by at
//!   most one unit (see the tests).
//! - [`TscPage`] is `HV_REFERENCE_TSC_PAGE` (TLFS; Linux
//!   `include/asm-generic/hyperv-tlfs.h` `struct ms_hyperv_tsc_page`):
//!   `u32 tsc_sequence, u32 reserved1, u64 tsc_scale, i64 tsc_offset`, then
//!   reserved to the end of the 4 KiB page.
//! - [`ReferenceTsc`] is the partition-wide REFERENCE_TSC MSR (0x40000021):
//!   bit 0 enable, bits 11:1 RsvdP (preserved, read back as written: Linux
//!   6.1 `hv_init_clocksource` does a read-modify-write), bits 63:12 the GPA
//!   page number. It keeps the page's sequence number: bumped on every
//!   update, never 0 (TLFS: "a special value of 0x0 is used to indicate that
//!   this facility is no longer a reliable source", Linux then reads the MSR)
//!   and never 0xFFFFFFFF (the invalid marker of older guests; Linux
//!   `hv_read_tsc_page_tsc` comment about commit c35b82ef0294, KVM
//!   `kvm_hv_setup_tsc_page` skips it too).

use hv1_abi::msr;

/// Reference time runs at 10 MHz (100 ns units; TLFS "Reference Counter").
pub const REFERENCE_HZ: u64 = 10_000_000;

/// A refused access to a time MSR (TIME_REF_COUNT, REFERENCE_TSC,
/// STIMERn_CONFIG/COUNT): the guest gets #GP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeMsrError {
    /// The index is not an MSR this type handles.
    NotOurs,
    /// TIME_REF_COUNT is read-only: "Any attempt to write to it results in a
    /// #GP fault" (TLFS "Partition Reference Counter MSR").
    ReadOnly,
    /// RsvdZ bits set; the value holds the offending bits.
    Reserved(u64),
    /// STIMERn_CONFIG DirectMode set while the partition does not offer
    /// direct-mode timers (CPUID 0x40000003 EDX bit 19; KVM
    /// `stimer_set_config` refuses it the same way).
    DirectModeUnavailable,
}

/// The TSC → reference time conversion of one partition: a 64.64
/// fixed-point scale and a signed offset, exactly the two numbers the
/// reference TSC page carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceClock {
    tsc_hz: u64,
    scale: u64,
    offset: i64,
}

/// `(a * b) >> 64` on 128 bits, as Linux `mul_u64_u64_shr(a, b, 64)`.
fn mul_high(a: u64, b: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) >> 64) as u64
}

impl ReferenceClock {
    /// A clock reading 0 at guest TSC `tsc_at_start` (TLFS: the counter "is
    /// initialized to zero when the partition is created"). `None` if
    /// `tsc_hz` is not above 10 MHz: the scale must be below 2^64.
    pub fn new(tsc_hz: u64, tsc_at_start: u64) -> Option<Self> {
        Self::with_reference_at(tsc_hz, tsc_at_start, 0)
    }

    /// A clock that reads exactly `reference` at guest TSC `tsc`: for
    /// resuming a paused partition (the TLFS reference time stops while the
    /// partition is saved) or after changing the guest TSC offset. `None` if
    /// `tsc_hz` is not above 10 MHz.
    pub fn with_reference_at(tsc_hz: u64, tsc: u64, reference: u64) -> Option<Self> {
        if tsc_hz <= REFERENCE_HZ {
            return None;
        }
        // floor(2^64 * 10^7 / hz) < 2^64 because hz > 10^7.
        let scale = ((u128::from(REFERENCE_HZ) << 64) / u128::from(tsc_hz)) as u64;
        // The guest adds the offset in wrapping u64 arithmetic, so any
        // difference is representable as its two's-complement i64.
        let offset = reference.wrapping_sub(mul_high(tsc, scale)) as i64;
        Some(Self {
            tsc_hz,
            scale,
            offset,
        })
    }

    /// The guest TSC frequency in Hz (also what TSC_FREQUENCY reports).
    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// `TscScale`: reference units per TSC tick, 64.64 fixed point.
    pub fn scale(&self) -> u64 {
        self.scale
    }

    /// `TscOffset`, added after the scaled product.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Reference time at guest TSC `tsc`: the TIME_REF_COUNT value, equal to
    /// what a guest computes from the reference TSC page.
    pub fn reference_time(&self, tsc: u64) -> u64 {
        mul_high(tsc, self.scale).wrapping_add(self.offset as u64)
    }

    /// The earliest guest TSC at which [`Self::reference_time`] reaches
    /// `reference` (for programming a host timer from a synthetic timer's
    /// deadline). TSC values before the clock's zero (where the guest's
    /// wrapping add gives huge values) count as not reaching it. `Some(0)`
    /// if TSC 0 already reaches it, `None` if no 64-bit TSC does.
    pub fn tsc_for(&self, reference: u64) -> Option<u64> {
        // Need the smallest tsc with floor(tsc * scale / 2^64) >= target,
        // i.e. tsc * scale >= target * 2^64.
        let target = i128::from(reference) - i128::from(self.offset);
        if target <= 0 {
            return Some(0);
        }
        let target = u128::try_from(target).ok()?;
        if target > u128::from(u64::MAX) {
            return None;
        }
        let tsc = (target << 64).div_ceil(u128::from(self.scale));
        u64::try_from(tsc).ok()
    }

    /// The page contents for this clock with sequence `tsc_sequence`.
    pub fn page(&self, tsc_sequence: u32) -> TscPage {
        TscPage {
            tsc_sequence,
            tsc_scale: self.scale,
            tsc_offset: self.offset,
        }
    }
}

/// `HV_REFERENCE_TSC_PAGE`'s meaningful first 24 bytes (the rest of the
/// page, `Reserved2[509]`, is zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TscPage {
    /// `TscSequence` (offset 0); 0 = invalid, use TIME_REF_COUNT.
    pub tsc_sequence: u32,
    /// `TscScale` (offset 8).
    pub tsc_scale: u64,
    /// `TscOffset` (offset 16).
    pub tsc_offset: i64,
}

impl TscPage {
    /// Bytes of the structure that carry fields.
    pub const SIZE: usize = 24;
    /// Offset of `TscSequence`.
    pub const SEQUENCE_OFFSET: usize = 0;
    /// Offset of `TscScale`; `TscOffset` follows at 16.
    pub const SCALE_OFFSET: usize = 8;

    /// The 24 bytes, little-endian, `Reserved1` (bytes 4..8) zero.
    ///
    /// On a page a guest may be reading (any update after the first), write
    /// as KVM `kvm_hv_setup_tsc_page` does: 0 into bytes 0..4, then bytes
    /// 8..24, then the new sequence into bytes 0..4, each store ordered
    /// after the previous one. A reader that overlaps then sees a sequence
    /// change or 0 and retries or falls back to the MSR (TLFS reader loop).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.tsc_sequence.to_le_bytes());
        b[8..16].copy_from_slice(&self.tsc_scale.to_le_bytes());
        b[16..24].copy_from_slice(&self.tsc_offset.to_le_bytes());
        b
    }

    /// Parse the 24 bytes (`Reserved1` ignored).
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
        Self {
            tsc_sequence: u32_at(0),
            tsc_scale: u64_at(8),
            tsc_offset: u64_at(16) as i64,
        }
    }

    /// The whole 4 KiB page: [`Self::to_bytes`] then zeros.
    pub fn to_page(&self) -> [u8; 4096] {
        let mut page = [0u8; 4096];
        page[..Self::SIZE].copy_from_slice(&self.to_bytes());
        page
    }

    /// What a guest reads from this page at `tsc` (TLFS reader; Linux
    /// `hv_read_tsc_page_tsc`): `None` when the sequence is 0 (the guest
    /// reads TIME_REF_COUNT instead).
    pub fn guest_read(&self, tsc: u64) -> Option<u64> {
        if self.tsc_sequence == 0 {
            return None;
        }
        Some(mul_high(tsc, self.tsc_scale).wrapping_add(self.tsc_offset as u64))
    }
}

/// A page the caller must write into guest memory now (the TLFS overlay:
/// the page is filled before the guest resumes from the MSR write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageUpdate {
    /// GPA of the page (REFERENCE_TSC bits 63:12). If it is not the
    /// partition's RAM the caller skips the write: TLFS "the reference TSC
    /// page will not be accessible to the guest", not a #GP.
    pub gpa: u64,
    /// Contents (see [`TscPage::to_bytes`] for the write order).
    pub page: TscPage,
}

/// REFERENCE_TSC bit 0.
const REFERENCE_TSC_ENABLE: u64 = 1;
/// REFERENCE_TSC bits 63:12.
const REFERENCE_TSC_PAGE: u64 = !0xFFF;

/// The partition's reference time state: its clock, the REFERENCE_TSC MSR
/// and the page's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceTsc {
    clock: ReferenceClock,
    msr: u64,
    sequence: u32,
}

impl ReferenceTsc {
    /// Creation state: REFERENCE_TSC = 0 (page disabled; TLFS "At the guest
    /// partition creation time, the value of the reference TSC MSR is 0").
    pub const fn new(clock: ReferenceClock) -> Self {
        Self {
            clock,
            msr: 0,
            sequence: 0,
        }
    }

    /// Back to the creation state with `clock`. The sequence counter keeps
    /// counting, so no sequence value repeats in the partition's life.
    pub fn reset(&mut self, clock: ReferenceClock) {
        self.clock = clock;
        self.msr = 0;
    }

    /// The clock.
    pub fn clock(&self) -> &ReferenceClock {
        &self.clock
    }

    /// Reference time at guest TSC `tsc` (TIME_REF_COUNT).
    pub fn reference_time(&self, tsc: u64) -> u64 {
        self.clock.reference_time(tsc)
    }

    /// GPA of the enabled page, or `None` while REFERENCE_TSC bit 0 is clear.
    pub fn page_gpa(&self) -> Option<u64> {
        (self.msr & REFERENCE_TSC_ENABLE != 0).then_some(self.msr & REFERENCE_TSC_PAGE)
    }

    /// The page's current contents (sequence 0 until the first enable).
    pub fn page(&self) -> TscPage {
        self.clock.page(self.sequence)
    }

    /// RDMSR of TIME_REF_COUNT (at guest TSC `tsc`) or REFERENCE_TSC.
    pub fn read_msr(&self, index: u32, tsc: u64) -> Result<u64, TimeMsrError> {
        match index {
            msr::TIME_REF_COUNT => Ok(self.reference_time(tsc)),
            msr::REFERENCE_TSC => Ok(self.msr),
            _ => Err(TimeMsrError::NotOurs),
        }
    }

    /// WRMSR of TIME_REF_COUNT (always #GP) or REFERENCE_TSC (any value is
    /// accepted: the register has no RsvdZ bits). Enabling, or re-writing
    /// while enabled, bumps the sequence and returns the page the caller
    /// must fill before the guest resumes (Linux reads it right after its
    /// write). Clearing the enable bit stops the overlay; nothing is written.
    pub fn write_msr(&mut self, index: u32, value: u64) -> Result<Option<PageUpdate>, TimeMsrError> {
        match index {
            msr::TIME_REF_COUNT => Err(TimeMsrError::ReadOnly),
            msr::REFERENCE_TSC => {
                self.msr = value;
                Ok(self.update())
            }
            _ => Err(TimeMsrError::NotOurs),
        }
    }

    /// Install a new clock (resume after a pause, a changed guest TSC offset
    /// or frequency). Returns the page to write if it is enabled; the
    /// sequence is bumped so a guest reading across the change retries.
    pub fn set_clock(&mut self, clock: ReferenceClock) -> Option<PageUpdate> {
        self.clock = clock;
        self.update()
    }

    fn update(&mut self) -> Option<PageUpdate> {
        let gpa = self.page_gpa()?;
        self.sequence = next_sequence(self.sequence);
        Some(PageUpdate {
            gpa,
            page: self.page(),
        })
    }
}

/// The sequence after `s`: +1, skipping 0 (invalid) and 0xFFFFFFFF (the
/// invalid marker older guests use), as KVM `kvm_hv_setup_tsc_page` does.
fn next_sequence(s: u32) -> u32 {
    match s.wrapping_add(1) {
        0 | u32::MAX => 1,
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The exact reference time, floor((tsc - start) * 10^7 / hz).
    fn exact(hz: u64, start: u64, tsc: u64) -> u64 {
        ((u128::from(tsc - start) * u128::from(REFERENCE_HZ)) / u128::from(hz)) as u64
    }

    #[test]
    fn scale_matches_tlfs_formula() {
        let c = ReferenceClock::new(1_000_000_000, 0).unwrap();
        // 2^64 * 10^7 / 10^9 = 2^64 / 100.
        assert_eq!(c.scale(), (1u128 << 64).div_euclid(100) as u64);
        assert_eq!(c.offset(), 0);
        assert_eq!(c.reference_time(0), 0);
        // One second of TSC is 10^7 units (within the truncation unit).
        let one_s = c.reference_time(1_000_000_000);
        assert!((9_999_999..=10_000_000).contains(&one_s), "{one_s}");
        assert_eq!(c.tsc_hz(), 1_000_000_000);
    }

    #[test]
    fn starts_at_zero_and_counts_in_100ns() {
        let hz = 2_345_678_901;
        let start = 0x1234_5678_9ABC;
        let c = ReferenceClock::new(hz, start).unwrap();
        assert_eq!(c.reference_time(start), 0);
        let ten_s = c.reference_time(start + 10 * hz);
        assert!(ten_s.abs_diff(100_000_000) <= 1, "{ten_s}");
    }

    #[test]
    fn slow_tsc_is_refused() {
        assert!(ReferenceClock::new(REFERENCE_HZ, 0).is_none());
        assert!(ReferenceClock::new(0, 0).is_none());
        assert!(ReferenceClock::new(REFERENCE_HZ + 1, 0).is_some());
    }

    #[test]
    fn with_reference_at_is_exact() {
        let c = ReferenceClock::with_reference_at(3_000_000_007, 987_654_321_000, 55_555).unwrap();
        assert_eq!(c.reference_time(987_654_321_000), 55_555);
    }

    #[test]
    fn page_layout() {
        let p = TscPage {
            tsc_sequence: 0x0403_0201,
            tsc_scale: 0x1817_1615_1413_1211,
            tsc_offset: -2,
        };
        let b = p.to_bytes();
        assert_eq!(&b[0..8], &[1, 2, 3, 4, 0, 0, 0, 0]);
        assert_eq!(&b[8..16], &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
        assert_eq!(&b[16..24], &[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(TscPage::from_bytes(&b), p);
        let page = p.to_page();
        assert_eq!(&page[..24], &b);
        assert!(page[24..].iter().all(|&x| x == 0));
        assert_eq!(TscPage::SEQUENCE_OFFSET, 0);
        assert_eq!(TscPage::SCALE_OFFSET, 8);
    }

    #[test]
    fn sequence_zero_means_fall_back() {
        let c = ReferenceClock::new(2_000_000_000, 0).unwrap();
        assert_eq!(c.page(0).guest_read(12345), None);
        assert_eq!(
            c.page(7).guest_read(2_000_000_000),
            Some(c.reference_time(2_000_000_000))
        );
    }

    #[test]
    fn msr_creation_state_and_enable() {
        let clock = ReferenceClock::new(2_500_000_000, 100).unwrap();
        let mut r = ReferenceTsc::new(clock);
        assert_eq!(r.read_msr(msr::REFERENCE_TSC, 0), Ok(0));
        assert_eq!(r.page_gpa(), None);
        assert_eq!(r.page().tsc_sequence, 0);
        // Enable at PFN 0x1234 with RsvdP bits 11:1 set: kept and read back.
        let v = (0x1234 << 12) | 0xFFE | 1;
        let up = r.write_msr(msr::REFERENCE_TSC, v).unwrap().unwrap();
        assert_eq!(up.gpa, 0x1234 << 12);
        assert_eq!(up.page.tsc_sequence, 1);
        assert_eq!(up.page.tsc_scale, clock.scale());
        assert_eq!(up.page.tsc_offset, clock.offset());
        assert_eq!(r.read_msr(msr::REFERENCE_TSC, 0), Ok(v));
        assert_eq!(r.page_gpa(), Some(0x1234 << 12));
        // Re-writing bumps the sequence.
        let up = r.write_msr(msr::REFERENCE_TSC, v).unwrap().unwrap();
        assert_eq!(up.page.tsc_sequence, 2);
        // Disabling writes nothing and keeps the value.
        assert_eq!(r.write_msr(msr::REFERENCE_TSC, 0x1234 << 12), Ok(None));
        assert_eq!(r.page_gpa(), None);
        assert_eq!(r.read_msr(msr::REFERENCE_TSC, 0), Ok(0x1234 << 12));
    }

    #[test]
    fn time_ref_count_is_read_only_and_matches_clock() {
        let clock = ReferenceClock::new(3_000_000_000, 5_000).unwrap();
        let mut r = ReferenceTsc::new(clock);
        assert_eq!(r.read_msr(msr::TIME_REF_COUNT, 5_000), Ok(0));
        assert_eq!(
            r.read_msr(msr::TIME_REF_COUNT, 3_000_005_000),
            Ok(clock.reference_time(3_000_005_000))
        );
        assert_eq!(r.write_msr(msr::TIME_REF_COUNT, 0), Err(TimeMsrError::ReadOnly));
        assert_eq!(r.read_msr(msr::TSC_FREQUENCY, 0), Err(TimeMsrError::NotOurs));
        assert_eq!(r.write_msr(msr::SCONTROL, 1), Err(TimeMsrError::NotOurs));
    }

    #[test]
    fn set_clock_bumps_sequence_only_when_enabled() {
        let a = ReferenceClock::new(2_000_000_000, 0).unwrap();
        let b = ReferenceClock::with_reference_at(2_000_000_000, 10, 999).unwrap();
        let mut r = ReferenceTsc::new(a);
        assert_eq!(r.set_clock(b), None);
        assert_eq!(r.clock(), &b);
        r.write_msr(msr::REFERENCE_TSC, 0x5000 | 1).unwrap();
        let up = r.set_clock(a).unwrap();
        assert_eq!(up.page, a.page(2));
        assert_eq!(r.reference_time(0), a.reference_time(0));
    }

    #[test]
    fn reset_disables_but_sequence_continues() {
        let a = ReferenceClock::new(2_000_000_000, 0).unwrap();
        let mut r = ReferenceTsc::new(a);
        r.write_msr(msr::REFERENCE_TSC, 0x5000 | 1).unwrap();
        r.reset(a);
        assert_eq!(r.read_msr(msr::REFERENCE_TSC, 0), Ok(0));
        assert_eq!(r.page_gpa(), None);
        let up = r.write_msr(msr::REFERENCE_TSC, 0x6000 | 1).unwrap().unwrap();
        assert_eq!(up.page.tsc_sequence, 2);
    }

    #[test]
    fn sequence_skips_zero_and_all_ones() {
        assert_eq!(next_sequence(0), 1);
        assert_eq!(next_sequence(1), 2);
        assert_eq!(next_sequence(u32::MAX - 2), u32::MAX - 1);
        assert_eq!(next_sequence(u32::MAX - 1), 1);
        assert_eq!(next_sequence(u32::MAX), 1);
        let clock = ReferenceClock::new(2_000_000_000, 0).unwrap();
        let mut r = ReferenceTsc::new(clock);
        r.sequence = u32::MAX - 1;
        let up = r.write_msr(msr::REFERENCE_TSC, 1).unwrap().unwrap();
        assert_eq!(up.page.tsc_sequence, 1);
    }

    #[test]
    fn tsc_for_inverts_reference_time() {
        let c = ReferenceClock::new(2_345_678_901, 1_000_000).unwrap();
        let t = c.tsc_for(10_000_000).unwrap();
        assert!(c.reference_time(t) >= 10_000_000);
        assert!(c.reference_time(t - 1) < 10_000_000);
        // Reference 0 is reached at (or just before) the start TSC: the
        // wrapped values below the start do not count.
        let zero = c.tsc_for(0).unwrap();
        assert!(zero <= 1_000_000 && c.reference_time(zero) == 0);
        assert_eq!(c.tsc_for(u64::MAX), None);
        // A clock already past `reference` at TSC 0.
        let ahead = ReferenceClock::with_reference_at(2_000_000_000, 0, 500).unwrap();
        assert_eq!(ahead.tsc_for(400), Some(0));
    }

    /// TSC frequencies between 1 and 5 GHz, with the odd ones called out.
    fn hz() -> impl Strategy<Value = u64> {
        prop_oneof![
            1_000_000_000u64..=5_000_000_000,
            Just(1_000_000_000),
            Just(2_345_678_901),
            Just(3_999_999_999),
            Just(4_999_999_997),
            Just(5_000_000_000),
        ]
    }

    proptest! {
        /// The page formula (what the guest computes) and TIME_REF_COUNT
        /// agree exactly, and both are within one unit of the exact
        /// reference time, for large TSC values.
        #[test]
        fn page_and_msr_agree(
            hz in hz(),
            start in 0u64..(1 << 62),
            delta in 0u64..(1 << 62),
            seq in 1u32..u32::MAX,
        ) {
            let tsc = start + delta;
            let c = ReferenceClock::new(hz, start).unwrap();
            let mut r = ReferenceTsc::new(c);
            r.sequence = seq - 1;
            let up = r.write_msr(msr::REFERENCE_TSC, 0x7000 | 1).unwrap().unwrap();
            // Through the bytes, as the guest sees them.
            let page = TscPage::from_bytes(&up.page.to_bytes());
            let guest = page.guest_read(tsc).unwrap();
            let msr_value = r.read_msr(msr::TIME_REF_COUNT, tsc).unwrap();
            prop_assert_eq!(guest, msr_value);
            let want = exact(hz, start, tsc);
            prop_assert!(guest.abs_diff(want) <= 1, "guest {} exact {}", guest, want);
            prop_assert_eq!(c.reference_time(start), 0);
        }

        /// Monotonic: a later TSC never reads an earlier reference time.
        #[test]
        fn monotonic(hz in hz(), start in 0u64..(1 << 62), a in 0u64..(1 << 62), b in 0u64..(1 << 62)) {
            let c = ReferenceClock::new(hz, start).unwrap();
            let (lo, hi) = (start + a.min(b), start + a.max(b));
            prop_assert!(c.reference_time(lo) <= c.reference_time(hi));
        }

        /// `tsc_for` is the least TSC reaching the reference time.
        #[test]
        fn tsc_for_is_least(hz in hz(), start in 0u64..(1 << 62), r in 1u64..(1 << 50)) {
            let c = ReferenceClock::new(hz, start).unwrap();
            let t = c.tsc_for(r).unwrap();
            prop_assert!(c.reference_time(t) >= r);
            prop_assert!(t == 0 || c.reference_time(t - 1) < r);
        }

        /// No MSR value or index panics; REFERENCE_TSC reads back what was
        /// written; the sequence is never 0 or all-ones after an update.
        #[test]
        fn any_msr_value(index in 0x4000_0000u32..0x4000_0100, value in any::<u64>(), seq in any::<u32>(), tsc in any::<u64>()) {
            let c = ReferenceClock::new(2_000_000_000, 0).unwrap();
            let mut r = ReferenceTsc::new(c);
            r.sequence = seq;
            let _ = r.read_msr(index, tsc);
            if let Ok(Some(up)) = r.write_msr(index, value) {
                prop_assert!(up.page.tsc_sequence != 0 && up.page.tsc_sequence != u32::MAX);
                prop_assert_eq!(up.gpa, value & !0xFFF);
            }
            if index == msr::REFERENCE_TSC {
                prop_assert_eq!(r.read_msr(index, tsc), Ok(value));
            }
        }
    }
}
