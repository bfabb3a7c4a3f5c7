//! The platform a child VP gets besides its CPU: a virtual local APIC
//! (`vlapic`), the partition's reference time (TIME_REF_COUNT, the reference
//! TSC page), the frequency MSRs, synthetic timers (`synic::Stimers`, message
//! mode), and interrupt delivery through the APIC with an interrupt window
//! when the guest cannot take one (docs: `reference/linux-child.md` §2(b),
//! (d); TLFS "Timers", "Synthetic Interrupt Controller").
//!
//! Time: everything is driven by [`crate::time`]: `now_ns` for the APIC and
//! the guest TSC (children run with TSC offset 0) for reference time.
//!
//! Interrupts: SynIC vectors arrive in the VP's `PendingVectors` (as for the
//! root). Before each entry they move into the APIC, AutoEOI per the SINT's
//! auto_eoi bit (`Vlapic::request_auto_eoi`; TLFS "SINTx Registers"), and the
//! APIC's highest deliverable vector is injected through EVENTINJ when
//! RFLAGS.IF = 1, there is no interrupt shadow and no event is queued;
//! otherwise a V_IRQ with the VINTR intercept asks for an exit as soon as the
//! guest can take it (APM vol. 2 §15.21.4 "Interrupt Window").
//!
//! While the APIC is software-disabled (SVR bit 8 clear, its state after
//! reset) or hardware-disabled, a real APIC would drop fixed interrupts.
//! hv-core then keeps delivering SynIC vectors directly, AutoEOI-style, with
//! CR8 as the task priority: this is how children without an APIC driver
//! (the project's test OS, which never enables its APIC) always got them.
//! Hyper-V's SynIC requires an enabled APIC; a guest that enables it gets
//! the architectural behaviour from then on.

use crate::ipc::SynicMem;
use crate::memory::GuestMemory;
use hv1_abi::hypercall::ClusterIpi;
use hv1_abi::msr;
use svm::Vmcb;
use svm::vmcb::{event, intercept};
use synic::{
    PendingVectors, ReferenceClock, ReferenceTsc, Stimers, SynicVp, TimeMsrError, TimerEvent, TscPage,
};
use vlapic::{ApicMode, Config, DeliveryMode, Effect, Ipi, Shorthand, Trigger, Vlapic};

/// APIC timer clock the child is told about (HV_X64_MSR_APIC_FREQUENCY) and
/// that the vlapic counts at: Hyper-V's 200 MHz.
pub const APIC_TIMER_HZ: u64 = vlapic::HYPERV_APIC_TIMER_HZ;

const RFLAGS_IF: u64 = 1 << 9;
const INTERRUPT_SHADOW: u64 = 1;
/// int_ctl: V_TPR (3:0), V_IRQ (8), V_INTR_PRIO (19:16), V_IGN_TPR (20).
const V_TPR: u32 = 0xF;
const V_IRQ: u32 = 1 << 8;
const V_INTR_PRIO: u32 = 0xF << 16;
const V_IGN_TPR: u32 = 1 << 20;

/// A refused access to one of the platform's MSRs (the guest gets #GP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrRefusal {
    /// The virtual APIC refused it.
    Apic(vlapic::MsrError),
    /// The reference time or synthetic timer logic refused it.
    Time(TimeMsrError),
    /// A read-only MSR was written.
    ReadOnly,
    /// Reserved bits were set.
    Reserved(u64),
}

/// Partition-wide time state.
pub struct PartitionTime {
    /// TIME_REF_COUNT / REFERENCE_TSC and the page's sequence.
    pub reftime: ReferenceTsc,
    /// HV_X64_MSR_TSC_INVARIANT_CONTROL.
    pub tsc_invariant: u64,
}

impl PartitionTime {
    /// Reference time 0 now (TLFS: the counter starts at partition creation).
    pub fn new() -> Self {
        Self {
            reftime: ReferenceTsc::new(Self::clock()),
            tsc_invariant: 0,
        }
    }

    fn clock() -> ReferenceClock {
        // `time::tsc_hz` is always above 10 MHz, which is all `new` needs;
        // the fallback keeps this total anyway.
        ReferenceClock::new(crate::time::tsc_hz(), kernel_x86::arch::rdtsc())
            .or_else(|| ReferenceClock::new(1_000_000_000, 0))
            .expect("1 GHz is a valid reference clock rate")
    }

    /// Partition reset: reference time restarts at 0, the page is disabled.
    pub fn reset(&mut self) {
        self.reftime.reset(Self::clock());
        self.tsc_invariant = 0;
    }

    /// Reference time now (100 ns units).
    pub fn reference_now(&self) -> u64 {
        self.reftime.reference_time(kernel_x86::arch::rdtsc())
    }
}

/// Per-VP platform state.
pub struct VpPlatform {
    /// The local APIC.
    pub apic: Vlapic,
    /// Synthetic timers 0-3.
    pub stimers: Stimers,
    /// The VP executed HLT and nothing could wake it yet (reported to the
    /// root as X64_HALT); cleared when an interrupt becomes deliverable.
    pub halted: bool,
    /// The halt is a guest idle (a read of HV_X64_MSR_GUEST_IDLE): a
    /// deliverable interrupt ends it even while RFLAGS.IF is clear (TLFS
    /// "Virtual Processor Idle Sleep State"). The interrupt itself goes in
    /// once the guest sets IF again.
    pub idle_ignores_if: bool,
    /// V_TPR as hv-core last wrote it: a different value at the next exit
    /// means the guest wrote CR8.
    entry_tpr: u8,
    /// An IPI for other VPs (or an INIT/Startup/NMI IPI) sent by this VP
    /// and not yet routed: the dispatch ends after the instruction that sent
    /// it, and the partition delivers it to its VPs.
    pub outgoing: Option<Ipi>,
    /// A synthetic cluster IPI (HvCallSendSyntheticClusterIpi) for other
    /// VPs, waiting like [`Self::outgoing`].
    pub outgoing_cluster: Option<ClusterIpi>,
    /// IPIs not delivered: NMI and SMI (not emulated), INIT to VP 0 (there
    /// is no firmware to restart it at the reset vector).
    pub ipis_dropped: u64,
}

impl VpPlatform {
    /// Power-on state for VP `index` (APIC id = VP index, as CPUID leaf 1
    /// EBX[31:24] and leaf 0xB report).
    pub fn new(index: u32) -> Self {
        let bits = kernel_x86::arch::cpuid(0x8000_0008, 0).eax as u8;
        let config = Config {
            apic_id: index,
            bsp: index == 0,
            timer_hz: APIC_TIMER_HZ,
            tsc_hz: crate::time::tsc_hz(),
            x2apic: true,
            tsc_deadline: true,
            phys_addr_bits: bits.clamp(32, 52),
        };
        // Valid by construction: frequencies in range, id < MAX_VPS, width clamped.
        let mut apic = Vlapic::new(config).expect("a valid vlapic configuration");
        apic.set_tsc_offset(crate::time::tsc_zero());
        Self {
            apic,
            stimers: Stimers::new(false),
            halted: false,
            entry_tpr: 0,
            idle_ignores_if: false,
            outgoing: None,
            outgoing_cluster: None,
            ipis_dropped: 0,
        }
    }

    /// VP reset.
    pub fn reset(&mut self) {
        self.apic.reset();
        self.stimers.reset();
        self.halted = false;
        self.idle_ignores_if = false;
        self.entry_tpr = 0;
        self.outgoing = None;
        self.outgoing_cluster = None;
    }

    /// Whether the APIC takes fixed interrupts (enabled in IA32_APIC_BASE and
    /// in SVR). Otherwise SynIC vectors go in directly (module docs).
    pub fn apic_accepts(&self) -> bool {
        self.apic.mode() != ApicMode::Disabled && self.apic.software_enabled()
    }

    /// After an exit: a guest write to CR8 (V_TPR) since the entry becomes
    /// the APIC's TPR (AMD: CR8[3:0] = TPR[7:4], APM vol. 2 §16.6.4).
    pub fn sync_tpr_from(&mut self, vmcb: &Vmcb) {
        let vtpr = (vmcb.control.int_ctl & V_TPR) as u8;
        if self.apic_accepts() && vtpr != self.entry_tpr {
            self.apic.set_tpr(vtpr << 4);
        }
    }

    /// Apply what an APIC register write asks for: a fixed IPI this VP
    /// sends itself is requested at once; anything for other VPs (and every
    /// INIT, Startup or NMI IPI) waits in [`Self::outgoing`] until the
    /// dispatch ends and the partition routes it (`Child::route_ipi`).
    pub fn apply(&mut self, effect: Effect) {
        let ipi = match effect {
            Effect::None | Effect::ApicBaseChanged { .. } | Effect::LevelEoi { .. } => return,
            Effect::Ipi(ipi) => ipi,
        };
        let fixed = matches!(ipi.mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority);
        let to_self = match ipi.shorthand {
            Shorthand::SelfOnly | Shorthand::AllIncludingSelf => true,
            Shorthand::AllExcludingSelf => false,
            Shorthand::None => self.apic.matches_destination(ipi.destination, ipi.logical),
        };
        if fixed && to_self {
            let trigger = if ipi.level_triggered {
                Trigger::Level
            } else {
                Trigger::Edge
            };
            self.apic.request(ipi.vector, trigger);
            // Lowest priority goes to one destination: this VP took it.
            if ipi.mode == DeliveryMode::LowestPriority {
                return;
            }
        }
        let others = match ipi.shorthand {
            Shorthand::SelfOnly => false,
            Shorthand::AllIncludingSelf | Shorthand::AllExcludingSelf => true,
            Shorthand::None => !to_self || ipi.is_broadcast(),
        };
        if others || !fixed {
            // One ICR write per instruction, and the dispatch ends after the
            // instruction that made one: the slot is always free here.
            if self.outgoing.replace(ipi).is_some() {
                self.ipis_dropped += 1;
            }
        }
    }

    /// HvCallSendSyntheticClusterIpi from VP `index`: its own share of the
    /// vector is requested at once (Linux's `send_IPI_self` uses the call
    /// too); the rest waits in [`Self::outgoing_cluster`] until the dispatch
    /// ends. An APIC that is disabled refuses the vector, as for an ICR IPI.
    pub fn send_cluster_ipi(&mut self, index: u32, ipi: ClusterIpi) {
        let own = 1u64.checked_shl(index).unwrap_or(0);
        if ipi.targets & own != 0 {
            self.apic.request(ipi.vector, Trigger::Edge);
        }
        let others = ipi.targets & !own;
        if others != 0 {
            let previous = self.outgoing_cluster.replace(ClusterIpi {
                vector: ipi.vector,
                targets: others,
            });
            // One hypercall per exit, and the dispatch ends after one that
            // sent something: the slot is always free here.
            if previous.is_some() {
                self.ipis_dropped += 1;
            }
        }
    }

    /// An IPI (ICR or synthetic) waits to be routed: the dispatch must end.
    pub fn has_outgoing(&self) -> bool {
        self.outgoing.is_some() || self.outgoing_cluster.is_some()
    }

    /// Whether a halted VP wakes now: an interrupt is deliverable and the
    /// guest would take it (RFLAGS.IF set), or the halt is a guest idle,
    /// which any deliverable interrupt ends.
    pub fn wakes(&self, vmcb: &Vmcb, pending: &PendingVectors) -> bool {
        (vmcb.save.rflags & RFLAGS_IF != 0 || self.idle_ignores_if) && self.deliverable(vmcb, pending)
    }

    /// RDMSR of a platform MSR; `None` if `index` is not one.
    pub fn rdmsr(&mut self, time: &PartitionTime, index: u32) -> Option<Result<u64, MsrRefusal>> {
        let now = crate::time::now_ns();
        Some(match index {
            _ if Vlapic::handles_msr(index) => self.apic.read_msr(index, now).map_err(MsrRefusal::Apic),
            msr::TIME_REF_COUNT | msr::REFERENCE_TSC => time
                .reftime
                .read_msr(index, kernel_x86::arch::rdtsc())
                .map_err(MsrRefusal::Time),
            msr::TSC_FREQUENCY => Ok(time.reftime.clock().tsc_hz()),
            msr::APIC_FREQUENCY => Ok(APIC_TIMER_HZ),
            msr::TSC_INVARIANT_CONTROL => Ok(time.tsc_invariant),
            _ if Stimers::is_stimer_msr(index) => self.stimers.read_msr(index).map_err(MsrRefusal::Time),
            _ => return None,
        })
    }

    /// WRMSR of a platform MSR; `None` if `index` is not one. An IPI it
    /// sends to other VPs waits in [`Self::outgoing`].
    pub fn wrmsr(
        &mut self,
        time: &mut PartitionTime,
        mem: &dyn GuestMemory,
        index: u32,
        value: u64,
    ) -> Option<Result<(), MsrRefusal>> {
        let now = crate::time::now_ns();
        Some(match index {
            _ if Vlapic::handles_msr(index) => match self.apic.write_msr(index, value, now) {
                Ok(effect) => {
                    self.apply(effect);
                    Ok(())
                }
                Err(e) => Err(MsrRefusal::Apic(e)),
            },
            msr::TIME_REF_COUNT | msr::REFERENCE_TSC => match time.reftime.write_msr(index, value) {
                Ok(update) => {
                    if let Some(u) = update {
                        write_tsc_page(mem, u.gpa, &u.page);
                    }
                    Ok(())
                }
                Err(e) => Err(MsrRefusal::Time(e)),
            },
            msr::TSC_FREQUENCY | msr::APIC_FREQUENCY => Err(MsrRefusal::ReadOnly),
            // Bit 0 (HV_EXPOSE_INVARIANT_TSC) only; the rest is reserved.
            msr::TSC_INVARIANT_CONTROL if value & !1 != 0 => Err(MsrRefusal::Reserved(value & !1)),
            msr::TSC_INVARIANT_CONTROL => {
                time.tsc_invariant = value;
                Ok(())
            }
            _ if Stimers::is_stimer_msr(index) => self
                .stimers
                .write_msr(index, value, time.reference_now())
                .map_err(MsrRefusal::Time),
            _ => return None,
        })
    }

    /// Bring timers and SynIC vectors up to date: fire synthetic timers
    /// (posting HVMSG_TIMER_EXPIRED into their SINT's slot, or its queue),
    /// advance the APIC timer, and move SynIC vectors into the APIC when it
    /// takes them.
    pub fn refresh(
        &mut self,
        time: &PartitionTime,
        synic: &mut SynicVp,
        pending: &mut PendingVectors,
        mem: &dyn GuestMemory,
    ) {
        let reference_now = time.reference_now();
        if self.stimers.next_deadline().is_some_and(|d| d <= reference_now)
            || self.stimers.has_pending_messages()
        {
            for ev in self.stimers.expire(reference_now) {
                match ev {
                    TimerEvent::Message(m) => {
                        // Accepted into the slot or the SINT's queue: done;
                        // refused (SynIC off, queue full): tried again at the
                        // next entry, as KVM keeps `msg_pending`.
                        if let Ok(d) = synic.post(usize::from(m.sint), &m.to_message(), &mut SynicMem(mem)) {
                            self.stimers.delivered(&m);
                            if let Some(v) = d.interrupt {
                                pending.set(v);
                            }
                        }
                    }
                    // Direct mode is not offered (`Stimers::new(false)`).
                    TimerEvent::Interrupt { vector, .. } => {
                        self.apic.request(vector, Trigger::Edge);
                    }
                }
            }
        }
        self.apic.advance(crate::time::now_ns());
        if self.apic_accepts() {
            while let Some(v) = pending.take_highest() {
                if sint_auto_eoi(synic, v) {
                    self.apic.request_auto_eoi(v);
                } else {
                    self.apic.request(v, Trigger::Edge);
                }
            }
        }
    }

    /// Whether an interrupt is deliverable now to a guest with RFLAGS.IF
    /// set: the APIC's, or a directly delivered SynIC vector's (above CR8).
    pub fn deliverable(&self, vmcb: &Vmcb, pending: &PendingVectors) -> bool {
        if self.apic.pending().is_some() {
            return true;
        }
        let tpr = (vmcb.control.int_ctl & V_TPR) as u8;
        pending.highest().is_some_and(|v| v >> 4 > tpr)
    }

    /// Before VMRUN (after [`Self::refresh`]): inject the highest deliverable
    /// vector if the guest can take it now, else open an interrupt window
    /// for it; and hand the APIC's TPR to V_TPR.
    pub fn prepare_entry(&mut self, vmcb: &mut Vmcb, pending: &mut PendingVectors) {
        close_window(vmcb);
        let ready = vmcb.control.event_inj & event::VALID == 0
            && vmcb.save.rflags & RFLAGS_IF != 0
            && vmcb.control.int_state & INTERRUPT_SHADOW == 0;
        if self.apic_accepts() {
            let tpr = self.apic.tpr() >> 4;
            vmcb.control.int_ctl = (vmcb.control.int_ctl & !V_TPR) | u32::from(tpr);
            self.entry_tpr = tpr;
        } else {
            self.entry_tpr = (vmcb.control.int_ctl & V_TPR) as u8;
        }
        if let Some(vector) = self.apic.pending() {
            if ready {
                self.apic.acknowledge(vector);
                vmcb.control.event_inj = event::VALID | event::TYPE_INTR | u32::from(vector);
                vmcb.control.event_inj_err = 0;
            } else {
                open_window(vmcb);
            }
            return;
        }
        if !crate::ipc::inject_pending(vmcb, pending) && self.deliverable(vmcb, pending) {
            open_window(vmcb);
        }
    }
}

/// Ask for a VINTR exit as soon as the guest can take an interrupt: a
/// virtual interrupt of the highest priority that ignores V_TPR (hv-core
/// applies the task priority itself), intercepted before the guest takes it
/// (APM vol. 2 §15.21.4).
fn open_window(vmcb: &mut Vmcb) {
    vmcb.control.int_ctl |= V_IRQ | V_INTR_PRIO | V_IGN_TPR;
    vmcb.control.intercept_misc1 |= intercept::VINTR;
}

/// Take the window request back (at every entry, and on the VINTR exit).
pub fn close_window(vmcb: &mut Vmcb) {
    vmcb.control.int_ctl &= !(V_IRQ | V_INTR_PRIO | V_IGN_TPR);
    vmcb.control.intercept_misc1 &= !intercept::VINTR;
}

/// Whether the SINT that raises `vector` has AutoEOI set (TLFS "SINTx
/// Registers", bit 17). Several SINTs may share a vector; any with AutoEOI
/// makes it AutoEOI (Linux uses one vector, 0xF3, for SINT2 only).
fn sint_auto_eoi(synic: &SynicVp, vector: u8) -> bool {
    const MASKED: u64 = 1 << 16;
    const AUTO_EOI: u64 = 1 << 17;
    (0..synic::SINT_COUNT as u32).any(|i| {
        synic
            .read(msr::SINT0 + i)
            .is_ok_and(|s| s & 0xFF == u64::from(vector) && s & MASKED == 0 && s & AUTO_EOI != 0)
    })
}

/// Fill the reference TSC page at `gpa` (TLFS "Partition Reference TSC
/// Mechanism") in the order KVM `kvm_hv_setup_tsc_page` uses for a page a
/// guest may be reading: sequence 0, then scale and offset, then the new
/// sequence. A GPA that is not the partition's RAM is skipped: TLFS "the
/// reference TSC page will not be accessible to the guest", not a #GP.
fn write_tsc_page(mem: &dyn GuestMemory, gpa: u64, page: &TscPage) {
    if mem.translate(gpa, 4096, true).is_none() {
        return;
    }
    let bytes = page.to_bytes();
    let zeros = [0u8; 512];
    // Sequence 0 first; then Reserved1, scale, offset and the reserved rest.
    let mut ok = mem.write(gpa, &zeros[..4], 4).is_ok();
    let mut at = 4;
    while at < 4096 {
        let n = (4096 - at).min(zeros.len());
        ok &= mem.write(gpa + at as u64, &zeros[..n], 4).is_ok();
        at += n;
    }
    ok &= mem.write(gpa + 8, &bytes[8..TscPage::SIZE], 8).is_ok();
    ok &= mem.write(gpa, &bytes[..4], 4).is_ok();
    // Checked above; the write can only fail if the page went away meanwhile
    // (hv-core runs on one CPU: it cannot).
    debug_assert!(ok);
}

impl crate::vcpu::Vcpu<'_> {
    /// A nested page fault on the xAPIC page of a child in xAPIC mode:
    /// decode the instruction (no decode assists under TCG), do the access
    /// on the APIC, write the destination register and step over it. `None`
    /// when the fault is not an APIC access hv-core can emulate (another
    /// page, an instruction fetch, not 64-bit code, an instruction other
    /// than the MOV forms `svm::insn::decode_mmio` knows): the caller then
    /// reports the memory intercept to the root as before.
    pub fn apic_mmio(&mut self) -> Option<crate::vcpu::Outcome> {
        let gpa = self.vmcb.control.exit_info2;
        let info = self.vmcb.control.exit_info1;
        let (vp, _) = self.platform.as_ref()?;
        let base = vp.apic.mmio_base()?;
        // CS.L (attribute bit 9): decode_mmio decodes 64-bit code only.
        let long_mode = self.vmcb.save.cs.attrib & (1 << 9) != 0;
        if gpa & !0xFFF != base || info & svm::vmcb::npf::FETCH != 0 || !long_mode {
            return None;
        }
        let (bytes, fetched) = self.fetch_instruction();
        let access = match svm::insn::decode_mmio(&bytes[..fetched]) {
            Ok(a) => a,
            Err(e) => {
                let rip = self.vmcb.save.rip;
                self.log_refusal(format_args!(
                    "APIC access at GPA {gpa:#x} by an instruction hv-core cannot emulate ({e:?}) at rip {rip:#x}"
                ));
                return None;
            }
        };
        let offset = gpa & 0xFFF;
        if offset + u64::from(access.size) > 4096 {
            return None;
        }
        let now = crate::time::now_ns();
        let (rax, rsp) = (self.vmcb.save.rax, self.vmcb.save.rsp);
        let regs = &*self.regs;
        let gpr = |n: u8| match n {
            0 => rax,
            4 => rsp,
            n => regs.get(n),
        };
        let is_write = info & svm::vmcb::npf::WRITE != 0;
        match access.write_value(gpr) {
            Some(value) => {
                if !is_write {
                    return None;
                }
                let (vp, _) = self.platform.as_mut()?;
                // Only a 32-bit write at a register's start has an effect
                // (SDM vol. 3A §10.4.1: other widths are undefined; dropped).
                if access.size == 4 {
                    let effect = vp.apic.write_mmio(offset, value as u32, now);
                    vp.apply(effect);
                }
            }
            None => {
                if is_write {
                    return None;
                }
                let (vp, _) = self.platform.as_mut()?;
                let mut data = u64::from(vp.apic.read_mmio(offset, now));
                if access.size == 8 {
                    data |= u64::from(vp.apic.read_mmio(offset + 4, now)) << 32;
                }
                let n = match access.op {
                    svm::insn::MmioOp::Read { dest, .. } => dest.num,
                    svm::insn::MmioOp::Write { .. } => return None,
                };
                let (num, value) = access.read_result(gpr(n), data)?;
                match num {
                    0 => self.vmcb.save.rax = value,
                    4 => self.vmcb.save.rsp = value,
                    n => self.regs.set(n, value),
                }
            }
        }
        Some(crate::vcpu::Outcome::Skip(access.len))
    }
}
