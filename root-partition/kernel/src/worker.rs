//! The partition worker: the root's agent for one child partition (the
//! analogue of Hyper-V's VMWP). It builds the child through hv-core's
//! partition-management hypercalls, loads its image, emulates its COM1, and
//! turns intercept messages into device emulation, halts or a crash report.

use crate::loader::{ChildImage, CpuMode, EntryState};
use crate::ring_memory::FrameMemory;
use crate::{hv, memory, timer};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use boot_proto::child::{self as layout, BootInfo};
use child_acpi::power;
use devices::ioapic::{self, DeliveryMode, Fired, IoApic};
use devices::rtc::CmosRtc;
use devices::uart16550::Uart16550;
use hv1_abi::HvStatus;
use hv1_abi::message::{IoPortIntercept, MemoryIntercept, Message, access, io_access, message_type};
use hv1_abi::partition::{
    DISPATCH_EVENT_INTERCEPT, DISPATCH_EVENT_NONE, DISPATCH_EVENT_SUSPEND, DISPATCH_STATE_BLOCKED,
    DISPATCH_STATE_READY, RegisterName, RegisterValue, SegmentRegister, dispatch_flags, map_flags, property,
};
use hv1_abi::private::{MAX_QUEUED_SIGNALS, QueuedSignal};
use hv1_abi::synic::{PortInfo, port_type};
use mgmt::cli::CreateSpec;
use mgmt::lifecycle::ChildState;
use phys_mem::PAGE_SIZE;
use svm::insn::MmioOp;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// COM1's ports.
const COM1: core::ops::RangeInclusive<u16> = 0x3F8..=0x3FF;
/// Typed console bytes a child's worker holds for its UART.
const CONSOLE_INPUT_LIMIT: usize = 4096;
/// A Linux child's I/O APIC page (`child_acpi::IOAPIC_ADDRESS`, as its MADT
/// says).
const IOAPIC_PAGE: core::ops::Range<u64> =
    child_acpi::IOAPIC_ADDRESS as u64..child_acpi::IOAPIC_ADDRESS as u64 + 0x1000;
/// The L (64-bit code) bit of a segment's attributes in Hyper-V's encoding
/// (`SegmentRegister::attributes_from_svm`: SVM bit 9 moves to bit 13).
const CS_LONG: u16 = 1 << 13;
/// The CMOS RTC's index and data ports.
const RTC_INDEX: u16 = 0x70;
const RTC_DATA: u16 = 0x71;

/// Why a worker could not build or run its child.
#[derive(Debug)]
pub enum WorkerError {
    /// hv-core refused a call.
    Hypervisor(&'static str, HvStatus),
    /// The root is out of memory for the child.
    OutOfMemory,
    /// The image does not fit or does not load.
    BadImage(String),
}

impl core::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Hypervisor(what, s) => write!(f, "hv-core refused {what}: {s:?}"),
            Self::OutOfMemory => f.write_str("not enough free memory in the root"),
            Self::BadImage(why) => write!(f, "image: {why}"),
        }
    }
}

/// One VP as the worker tracks it.
struct VpState {
    /// Root page where hv-core puts this VP's intercept messages.
    message_page: u64,
    /// Root page where hv-core leaves this VP's registers at an intercept,
    /// and where the root writes the ones that complete it (HV_VP_STATE_PAGE_REGISTERS).
    register_page: u64,
    /// The next dispatch tells hv-core the last intercept was handled.
    clear_intercept: bool,
    /// Stopped in HLT: dispatched again after a delivery, or once a tick
    /// passes (hv-core then enters it only if an interrupt is deliverable,
    /// its timers included, and reports the HLT again otherwise).
    halted: bool,
    /// Tick it last halted at.
    halted_at: u64,
}

/// What one dispatch came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    /// A physical interrupt for the root ended it.
    Preempted,
    /// An intercept was handled; the VP can run again.
    Handled,
    /// The VP halted.
    Halted,
    /// The child crashed.
    Crashed,
    /// hv-core holds the VP suspended.
    Suspended,
    /// The child powered itself off (ACPI S5).
    PoweredOff,
    /// The child reset itself (ACPI reset register): it boots again.
    Rebooted,
}

/// A child partition and everything the root keeps for it.
pub struct Worker {
    /// hv-core's partition id.
    pub id: u64,
    /// How it was created.
    pub spec: CreateSpec,
    /// Lifecycle state.
    pub state: ChildState,
    /// Why it crashed.
    pub crash: Option<String>,
    /// Root frames backing guest pages 0.., in order.
    pages: alloc::rc::Rc<[u64]>,
    vps: Vec<VpState>,
    /// Its COM1.
    pub uart: Box<Uart16550>,
    /// Its I/O APIC (Linux children: the MADT describes it), which COM1's
    /// interrupt line drives (pin [`child_acpi::COM1_IRQ`]).
    ioapic: Option<Box<IoApic>>,
    /// Interrupts its I/O APIC sent into its APICs
    /// (HvCallAssertVirtualInterrupt).
    pub interrupts_asserted: u64,
    /// Interrupts its I/O APIC fired that went nowhere: a vector below 16, a
    /// delivery mode other than fixed or lowest priority, or level
    /// triggering in the guest's redirection entry (the guest's own doing),
    /// or refused by hv-core.
    pub interrupts_dropped: u64,
    /// Accesses to its I/O APIC's page.
    pub ioapic_accesses: u64,
    /// Its CMOS RTC (the host's time).
    rtc: CmosRtc,
    /// Bytes typed at `console ID` that its UART's 16-byte FIFO had no room
    /// for yet: fed in as the guest reads (a paste does not overrun).
    /// Bounded by [`CONSOLE_INPUT_LIMIT`]; allocated once.
    console_in: alloc::collections::VecDeque<u8>,
    /// Typed bytes dropped because that queue was full.
    pub console_input_dropped: u64,
    /// Its channels' signals waiting for its next dispatch.
    deferred_signals: DeferredSignals,
    /// Signals that went into hv-core with a dispatch.
    pub signals_with_dispatch: u64,
    /// Of those, signals hv-core could not make (a root bug: the child's
    /// event ports live as long as the child).
    pub signals_failed: u64,
    /// The child's GPADLs (handle → guest page numbers), kept in step with
    /// its VMBus server and shared with every channel (`vsp::GpadlMap`):
    /// devices that take buffers by GPADL handle look them up live.
    gpadls: SharedGpadls,
    image: ChildImage,
    /// Tick of the last start.
    started: u64,
    /// Addresses hostile test modes aim at.
    targets: [u64; 4],
    /// Port accesses to devices that do not exist.
    pub stray_io: u64,
    /// Intercepts handled.
    pub intercepts: u64,
    /// Of those, completed through the VP's register page.
    pub register_page_completions: u64,
    /// SynIC messages received from the child on its message connection.
    pub messages: u64,
    /// Echo replies hv-core accepted.
    pub replies: u64,
    /// Replies dropped: hv-core refused them (child SynIC off) or the outbox
    /// was full.
    pub replies_refused: u64,
    /// Console lines spent on the child's messages.
    logged_messages: u32,
    /// Messages for the child waiting for room in its SynIC queue.
    /// Fixed-size entries in a queue allocated once at creation: queuing a
    /// message never allocates.
    outbox: alloc::collections::VecDeque<OutMessage>,
    /// The devices offered on its bus, one per relid.
    devices: Vec<DeviceSlot>,
    /// The child's VMBus server (offers the devices).
    pub vmbus: vmbus::server::Server,
    /// Messages refused as protocol violations or of unknown type.
    pub vmbus_violations: u64,
    /// Its block of the root's event flags (see [`channel_flag`]).
    pub event_block: u32,
    /// Offers made so far: numbers each offer's instance GUID, so an
    /// instance is never reused while the child may still hold the old
    /// one (Linux drops an offer whose (type, instance) it already has,
    /// `channel_mgmt.c` `vmbus_process_offer`).
    offers_made: u32,
    /// Resets of its VMBus (restarts, crashes, stops), for `info`.
    pub resets: u64,
    /// Channels stopped because the child broke their rings.
    pub rings_broken: u64,
    /// Console lines its messages would have caused past the budget.
    pub lines_suppressed: u64,
    /// Why it last stopped on its own ("powered off by the guest"), for `info`.
    pub last_exit: Option<&'static str>,
    /// Times it rebooted itself.
    pub guest_reboots: u64,
}

/// A device offered to the child, and its channel's ports while it is open.
struct DeviceSlot {
    relid: u32,
    device: Box<dyn vsp::Device<FrameMemory>>,
    /// Set while the channel is open.
    open: Option<OpenPorts>,
    /// The child signalled (or the last poll ran out of budget, or left
    /// work running in a device): poll again.
    wants_poll: bool,
    /// The last poll left only work that interrupts the root when it ends
    /// (`PollResult::awaiting_device`): poll again, but the root may sleep
    /// until an interrupt first.
    awaits_device: bool,
    /// The offer's instance GUID (a sub-channel carries its primary's).
    instance: [u8; 16],
    /// For a sub-channel: its primary's relid.
    primary: Option<u32>,
}

/// A device behind one relid.
type BoxedDevice = Box<dyn vsp::Device<FrameMemory>>;

/// Sub-channels one child may hold in all (each a relid and a ring pair;
/// the devices bound their own counts, this bounds the child's total).
const MAX_SUB_CHANNELS_PER_CHILD: usize = 64;

/// The ports an open channel's signals travel through.
#[derive(Clone, Copy)]
struct OpenPorts {
    /// The child's connection id for signalling the root.
    connection_id: u32,
    /// The root's event port the child's connection reaches.
    event_port: u32,
}

/// How a channel's device signals the child: the root sets the child's
/// event flag `relid` on the child's event port, with the child's next
/// dispatch ([`DeferredSignals`]) or, when that queue is full, at once
/// (HvSignalEvent).
struct ChildEvent {
    connection_id: u32,
    flag: u16,
    deferred: DeferredSignals,
}

impl vsp::GuestSignal for ChildEvent {
    fn signal(&mut self) -> bool {
        let signal = QueuedSignal {
            connection_id: self.connection_id,
            flag: self.flag,
            reserved: 0,
        };
        self.deferred.push(signal) || hv::signal_event(self.connection_id, self.flag).is_ok()
    }
}

/// Signals for a child that go into hv-core with its next dispatch
/// (HvPrivSignalAndDispatchVp, `hv1_abi::private::SIGNAL_AND_DISPATCH_VP`)
/// instead of one HvCallSignalEvent each. On one CPU the child runs only
/// inside the root's dispatches, so an event flag set now or just before
/// the next dispatch is the same to it; the root saves a world switch per
/// signal (a device's completion, then the dispatch that lets the child
/// take it). Shared by the child's channels; a set (a flag signalled twice
/// before the dispatch is one signal, as the flag is one bit) of at most
/// `MAX_QUEUED_SIGNALS`, allocated once: when full, a channel signals at
/// once. Emptied with everything else the child had
/// (`Worker::power_off_devices`).
#[derive(Clone)]
struct DeferredSignals(alloc::rc::Rc<core::cell::RefCell<Vec<QueuedSignal>>>);

impl DeferredSignals {
    fn new() -> Self {
        Self(alloc::rc::Rc::new(core::cell::RefCell::new(Vec::with_capacity(
            MAX_QUEUED_SIGNALS,
        ))))
    }

    /// Queue `signal` for the next dispatch; false if the queue is full.
    fn push(&self, signal: QueuedSignal) -> bool {
        let mut queue = self.0.borrow_mut();
        if queue.contains(&signal) {
            return true;
        }
        if queue.len() >= MAX_QUEUED_SIGNALS {
            return false;
        }
        queue.push(signal);
        true
    }

    /// Copy the queue into `out` (it holds at most `MAX_QUEUED_SIGNALS`)
    /// and empty it; returns how many there were.
    fn take_into(&self, out: &mut [QueuedSignal; MAX_QUEUED_SIGNALS]) -> usize {
        let mut queue = self.0.borrow_mut();
        let n = queue.len();
        out[..n].copy_from_slice(&queue);
        queue.clear();
        n
    }

    fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}

/// A message waiting for room in the child's SynIC.
struct OutMessage {
    message_type: u32,
    len: usize,
    bytes: [u8; 240],
}

/// The connection ids a child posts on to reach its worker: VMBus's
/// `VMBUS_MESSAGE_CONNECTION_ID` and `VMBUS_MESSAGE_CONNECTION_ID_4` (Linux
/// `include/linux/hyperv.h`; 4 is used from protocol 5.0 on).
pub const MESSAGE_CONNECTION_IDS: [u32; 2] = [
    vmbus::protocol::MESSAGE_CONNECTION_ID,
    vmbus::protocol::MESSAGE_CONNECTION_ID_4,
];

/// Messages a worker holds for a child that is not taking them; beyond this
/// they are dropped (and counted), so a stuck child cannot grow the root.
const OUTBOX_LIMIT: usize = 64;

/// Console lines a child's messages may produce (see `Worker::may_log`).
const MESSAGE_LOG_LIMIT: u32 = 64;

/// Message type of the worker's diagnostic echo service (VMBus channel
/// messages are type 1).
pub const ECHO_MESSAGE_TYPE: u32 = 0x100;

/// The root port receiving partition `id`'s messages on `connection` (port
/// ids are system-wide: partition id in the high bits, connection id low).
pub fn message_port_id(id: u64, connection: u32) -> Option<u32> {
    u32::try_from(id).ok()?.checked_mul(256)?.checked_add(connection)
}

/// The partition and connection id a root message port belongs to.
pub fn partition_of_port(port: u64) -> Option<(u64, u32)> {
    let connection = (port & 0xFF) as u32;
    MESSAGE_CONNECTION_IDS
        .contains(&connection)
        .then_some((port >> 8, connection))
}

/// The child's event port on VP `vp` (the VMBus SINT, all 2048 flags: flag
/// n is channel relid n, as Linux's `vmbus_chan_sched` reads them on the CPU
/// the channel targets), and the root's connection id for it: 3 for VP 0,
/// 0x10 + `vp` for the others (below the channel ports at 0x80).
pub fn child_event_port_id(id: u64, vp: u32) -> Option<u32> {
    let low = match vp {
        0 => 3,
        v if (v as usize) < MAX_CHILD_VPS => 0x10 + v,
        _ => return None,
    };
    u32::try_from(id).ok()?.checked_mul(256)?.checked_add(low)
}

/// Most VPs a child has (hv-core's `MAX_VPS`; `create --vps` allows 1 to 4).
pub const MAX_CHILD_VPS: usize = 4;

/// Children the root can give an event block to: the root's SIEF has 2048
/// flags for the VMBus SINT, 128 (one per relid) per child.
pub const EVENT_BLOCKS: u32 = 16;
const FLAGS_PER_BLOCK: u32 = 128;

/// The root's event flag for channel `relid` of the worker holding event
/// block `block`: every open channel of every child has its own flag, so a
/// signal names exactly one channel and the root polls only that one.
pub fn channel_flag(block: u32, relid: u32) -> Option<u16> {
    if block >= EVENT_BLOCKS || relid >= FLAGS_PER_BLOCK {
        return None;
    }
    u16::try_from(block * FLAGS_PER_BLOCK + relid).ok()
}

/// (event block, relid) for a root event flag (the inverse of [`channel_flag`]).
pub fn flag_owner(flag: u32) -> (u32, u32) {
    (flag / FLAGS_PER_BLOCK, flag % FLAGS_PER_BLOCK)
}

/// The root's event port for channel `relid` of partition `id` (relids up
/// to 127 per partition have one).
pub fn channel_port_id(id: u64, relid: u32) -> Option<u32> {
    if relid >= 0x80 {
        return None;
    }
    u32::try_from(id)
        .ok()?
        .checked_mul(256)?
        .checked_add(0x80 + relid)
}

/// The child's port the worker replies on, and the root's connection id for
/// it (the same number: root connection ids must be unique in the root).
pub fn reply_port_id(id: u64) -> Option<u32> {
    u32::try_from(id).ok()?.checked_mul(256)?.checked_add(2)
}

fn hvfail(what: &'static str) -> impl Fn(HvStatus) -> WorkerError {
    move |s| WorkerError::Hypervisor(what, s)
}

impl Worker {
    /// Build a child: partition, memory, VPs, message pages, image. On any
    /// failure everything done so far is undone.
    pub fn create(
        spec: CreateSpec,
        image: ChildImage,
        devices: Vec<Box<dyn vsp::Device<FrameMemory>>>,
        targets: [u64; 4],
        event_block: u32,
    ) -> Result<Self, WorkerError> {
        let pages_needed = spec.memory / PAGE_SIZE;
        let id = hv::create_partition().map_err(hvfail("CreatePartition"))?;
        let mut w = Self {
            id,
            spec,
            state: ChildState::Created,
            crash: None,
            pages: alloc::rc::Rc::from([]),
            vps: Vec::new(),
            uart: Box::new(Uart16550::new()),
            ioapic: matches!(image, ChildImage::Linux { .. })
                .then(|| Box::new(IoApic::new(child_acpi::IoApicConfig::default().id))),
            interrupts_asserted: 0,
            interrupts_dropped: 0,
            ioapic_accesses: 0,
            rtc: CmosRtc::new(),
            console_in: alloc::collections::VecDeque::with_capacity(CONSOLE_INPUT_LIMIT),
            console_input_dropped: 0,
            deferred_signals: DeferredSignals::new(),
            signals_with_dispatch: 0,
            signals_failed: 0,
            gpadls: SharedGpadls::default(),
            image,
            started: 0,
            targets,
            stray_io: 0,
            intercepts: 0,
            register_page_completions: 0,
            messages: 0,
            replies: 0,
            replies_refused: 0,
            vmbus: vmbus::server::Server::new(pages_needed),
            vmbus_violations: 0,
            outbox: alloc::collections::VecDeque::with_capacity(OUTBOX_LIMIT),
            logged_messages: 0,
            devices: Vec::new(),
            event_block,
            offers_made: 0,
            resets: 0,
            rings_broken: 0,
            lines_suppressed: 0,
            last_exit: None,
            guest_reboots: 0,
        };
        match w.build(pages_needed, devices) {
            Ok(()) => Ok(w),
            Err(e) => {
                w.destroy();
                Err(e)
            }
        }
    }

    fn build(
        &mut self,
        pages_needed: u64,
        devices: Vec<Box<dyn vsp::Device<FrameMemory>>>,
    ) -> Result<(), WorkerError> {
        hv::initialize_partition(self.id).map_err(hvfail("InitializePartition"))?;
        // A kernel that halts when idle (Linux) gets a signal grace: after it
        // signals a channel it runs on to its next exit (usually its idle
        // HLT), so a burst of requests shares one signal instead of the root
        // draining the ring after every packet. The test OS spin-waits, and
        // would pay a PAUSE exit per signal: none for it.
        if !self.image.is_test_os() {
            hv::set_partition_property(self.id, hv1_abi::private::property::SIGNAL_GRACE, 1)
                .map_err(hvfail("SetPartitionProperty"))?;
        }
        // Child memory comes from the top of free RAM, one page at a time
        // (it need not be contiguous: the child's NPT makes it so).
        let mut pages: Vec<u64> = Vec::new();
        pages
            .try_reserve_exact(pages_needed as usize)
            .map_err(|_| WorkerError::OutOfMemory)?;
        for _ in 0..pages_needed {
            let page = memory::FREE.lock().alloc_top(PAGE_SIZE, PAGE_SIZE);
            match page {
                Some(page) => pages.push(page),
                None => {
                    for page in pages {
                        memory::free_frames(page, 1);
                    }
                    return Err(WorkerError::OutOfMemory);
                }
            }
        }
        // Taken top-down, so the frames descend; in ascending order, guest
        // pages that follow each other are (mostly) physically adjacent, and
        // a device can DMA a multi-page guest buffer in one request
        // (`ChildDma`).
        pages.reverse();
        // Shared with devices that read or write the child's RAM by GPA
        // (`FrameMemory::child_ram`); they drop their share when their
        // channel closes, before `destroy` frees the frames.
        self.pages = pages.into();
        let pfns: Vec<u64> = self.pages.iter().map(|p| p >> 12).collect();
        hv::map_gpa_pages(
            self.id,
            0,
            &pfns,
            map_flags::READABLE | map_flags::WRITABLE | map_flags::EXECUTABLE,
        )
        .map_err(|(s, _)| WorkerError::Hypervisor("MapGpaPages", s))?;
        for vp in 0..self.spec.vps {
            hv::create_vp(self.id, vp).map_err(hvfail("CreateVp"))?;
            let message_page = memory::alloc_frames(1).ok_or(WorkerError::OutOfMemory)?;
            let Some(register_page) = memory::alloc_frames(1) else {
                memory::free_frames(message_page, 1);
                return Err(WorkerError::OutOfMemory);
            };
            self.vps.push(VpState {
                message_page,
                register_page,
                clear_intercept: false,
                halted: false,
                halted_at: 0,
            });
            hv::map_intercept_message_page(self.id, vp, message_page).map_err(hvfail("MapVpStatePage"))?;
            hv::map_register_page(self.id, vp, register_page).map_err(hvfail("MapVpStatePage"))?;
        }
        // The child's message connection: its posts land in the root's SynIC
        // (VP 0, the VMBus SINT). hv-core drops both when the partition goes.
        let info = PortInfo {
            port_type: port_type::MESSAGE,
            target_sint: crate::synic::MESSAGE_SINT as u32,
            ..PortInfo::default()
        };
        for connection in MESSAGE_CONNECTION_IDS {
            let port = message_port_id(self.id, connection)
                .ok_or(WorkerError::Hypervisor("CreatePort", HvStatus::INVALID_PORT_ID))?;
            hv::create_port(hv1_abi::ROOT_PARTITION_ID, port, self.id, info).map_err(hvfail("CreatePort"))?;
            hv::connect_port(self.id, connection, hv1_abi::ROOT_PARTITION_ID, port)
                .map_err(hvfail("ConnectPort"))?;
        }
        // And the way back: a port in the child (VP 0, same SINT) the root
        // connects to.
        let reply =
            reply_port_id(self.id).ok_or(WorkerError::Hypervisor("CreatePort", HvStatus::INVALID_PORT_ID))?;
        hv::create_port(self.id, reply, hv1_abi::ROOT_PARTITION_ID, info).map_err(hvfail("CreatePort"))?;
        hv::connect_port(hv1_abi::ROOT_PARTITION_ID, reply, self.id, reply).map_err(hvfail("ConnectPort"))?;
        // Channel interrupts for the child, one port per VP (a channel's
        // OPENCHANNEL names the VP it interrupts): the root sets flag `relid`.
        for vp in 0..self.spec.vps {
            let events = child_event_port_id(self.id, vp)
                .ok_or(WorkerError::Hypervisor("CreatePort", HvStatus::INVALID_PORT_ID))?;
            let event_info = PortInfo {
                port_type: port_type::EVENT,
                target_sint: crate::synic::MESSAGE_SINT as u32,
                target_vp: vp,
                flag_count: 2048,
                ..PortInfo::default()
            };
            hv::create_port(self.id, events, hv1_abi::ROOT_PARTITION_ID, event_info)
                .map_err(hvfail("CreatePort"))?;
            hv::connect_port(hv1_abi::ROOT_PARTITION_ID, events, self.id, events)
                .map_err(hvfail("ConnectPort"))?;
        }
        // Its bus starts with the devices it was given.
        for device in devices {
            self.offer(device)
                .map_err(|_| WorkerError::Hypervisor("offer", HvStatus::INSUFFICIENT_MEMORY))?;
        }
        self.load()
    }

    /// A message the child posted on `connection`: VMBus channel messages go
    /// to its VMBus server, [`ECHO_MESSAGE_TYPE`] to the echo service, and
    /// anything else is counted and dropped.
    pub fn on_message(&mut self, connection: u32, m: &Message) {
        self.messages += 1;
        let len = usize::from(m.header.payload_size).min(m.payload.len());
        match m.header.message_type {
            vmbus::protocol::VMBUS_MESSAGE_TYPE => self.on_vmbus_message(connection, &m.payload[..len]),
            ECHO_MESSAGE_TYPE => self.echo(&m.payload[..len]),
            other => {
                self.vmbus_violations += 1;
                if self.may_log() {
                    crate::println!(
                        "root: partition {}: message of unknown type {other:#x} dropped",
                        self.id
                    );
                }
            }
        }
    }

    /// Lines a child's messages may put on the root's console: a child that
    /// floods gets counted (`info`), not echoed to the operator forever.
    fn may_log(&mut self) -> bool {
        if self.logged_messages < MESSAGE_LOG_LIMIT {
            self.logged_messages += 1;
            if self.logged_messages == MESSAGE_LOG_LIMIT {
                crate::println!(
                    "root: partition {}: further messages are counted, not logged",
                    self.id
                );
                self.lines_suppressed += 1;
                return false;
            }
            return true;
        }
        self.lines_suppressed = self.lines_suppressed.saturating_add(1);
        false
    }

    /// The echo service: log the message (printable bytes only: the child
    /// chooses them) and post it back prefixed with "echo: " on the child's
    /// reply port. A child with no SynIC, or a full queue, gets no reply
    /// (counted).
    fn echo(&mut self, payload: &[u8]) {
        let text: String = payload
            .iter()
            .map(|&b| if (0x20..0x7F).contains(&b) { b as char } else { '.' })
            .collect();
        if self.may_log() {
            crate::println!(
                "root: partition {} message {} (echo, {} bytes): {text}",
                self.id,
                self.messages,
                payload.len()
            );
        }
        let mut reply = [0u8; 240];
        reply[..6].copy_from_slice(b"echo: ");
        let n = payload.len().min(reply.len() - 6);
        reply[6..6 + n].copy_from_slice(&payload[..n]);
        self.reply(ECHO_MESSAGE_TYPE, &reply[..6 + n]);
    }

    /// Queue a message for the child and try to send what is queued.
    fn reply(&mut self, message_type: u32, bytes: &[u8]) {
        if self.outbox.len() >= OUTBOX_LIMIT {
            // The child has stopped taking messages: drop, and say so in `info`.
            self.replies_refused += 1;
            return;
        }
        let mut m = OutMessage {
            message_type,
            len: bytes.len().min(240),
            bytes: [0; 240],
        };
        m.bytes[..m.len].copy_from_slice(&bytes[..m.len]);
        self.outbox.push_back(m);
        self.flush_outbox();
    }

    /// Post queued messages in order until hv-core says the child's slot and
    /// queue are full (HV_STATUS_INSUFFICIENT_BUFFERS: retried later, as
    /// Linux's `vmbus_post_msg` retries); any other refusal drops the message.
    pub fn flush_outbox(&mut self) {
        let Some(conn) = reply_port_id(self.id) else {
            return;
        };
        let mut delivered = false;
        while let Some(m) = self.outbox.front() {
            match hv::post_message(conn, m.message_type, &m.bytes[..m.len]) {
                Ok(()) => {
                    self.replies += 1;
                    delivered = true;
                }
                Err(HvStatus::INSUFFICIENT_BUFFERS) => break,
                Err(_) => self.replies_refused += 1,
            }
            self.outbox.pop_front();
        }
        if delivered {
            self.wake();
        }
    }

    /// Every per-child quota the root enforces: (name, in use, limit).
    pub fn quotas(&self) -> [(&'static str, u64, u64); 7] {
        let u = self.vmbus.usage();
        let l = u.limits;
        [
            ("gpadls", u.gpadls as u64, l.max_gpadls as u64),
            ("gpadl_pages", u.gpadl_pages, l.max_gpadl_pages),
            (
                "channels",
                u.channels as u64,
                u64::from(vmbus::protocol::MAX_RELID),
            ),
            (
                "open_channels",
                self.devices.iter().filter(|d| d.open.is_some()).count() as u64,
                u64::from(FLAGS_PER_BLOCK - 1),
            ),
            ("vmbus_outbox", u.outbox as u64, l.max_outbox as u64),
            ("synic_outbox", self.outbox.len() as u64, OUTBOX_LIMIT as u64),
            (
                "console_lines",
                u64::from(self.logged_messages),
                u64::from(MESSAGE_LOG_LIMIT),
            ),
        ]
    }

    /// Messages waiting for room in the child's SynIC.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// A VMBus channel message: run the server, report what it did, and post
    /// its answers. A protocol violation is reported and changes nothing.
    fn on_vmbus_message(&mut self, connection: u32, bytes: &[u8]) {
        let id = self.id;
        let result = self.vmbus.handle(connection, bytes);
        self.gpadls.sync(self.vmbus.gpadls());
        match result {
            Ok(events) => {
                for e in events {
                    match e {
                        vmbus::server::Event::Connected(v) => {
                            if self.may_log() {
                                crate::println!(
                                    "root: partition {id} vmbus: connected at version {}.{}",
                                    v.0 >> 16,
                                    v.0 & 0xFFFF
                                )
                            }
                        }
                        vmbus::server::Event::Opened { relid, info, gpadl } => {
                            // The server holds OPENCHANNEL_RESULT until the
                            // device answers (its Opening state).
                            let started = self.open_device(relid, &info, &gpadl);
                            if self.vmbus.open_complete(relid, started.is_ok()).is_err() {
                                // Nothing waits for this answer any more (the
                                // server holds a slot for it, so only a bug
                                // gets here): stop the device again.
                                self.close_device(relid);
                                continue;
                            }
                            if let Err(why) = started {
                                // The child heard OPENCHANNEL_RESULT failure.
                                self.vmbus_violations += 1;
                                if self.may_log() {
                                    crate::println!(
                                        "root: partition {id} vmbus: channel {relid} open refused: {why}"
                                    );
                                }
                                continue;
                            }
                            if self.may_log() {
                                crate::println!(
                                    "root: partition {id} vmbus: channel {relid} opened (gpadl {:#x}, {} pages, host-to-guest ring at page {})",
                                    info.ring_gpadl,
                                    gpadl.page_count(),
                                    info.downstream_page_offset
                                );
                            }
                        }
                        vmbus::server::Event::Closed { relid } => {
                            self.close_device(relid);
                            if self.may_log() {
                                crate::println!("root: partition {id} vmbus: channel {relid} closed")
                            }
                        }
                        vmbus::server::Event::Unloaded => {
                            self.close_all_channels();
                            if self.may_log() {
                                crate::println!("root: partition {id} vmbus: unloaded")
                            }
                        }
                    }
                }
            }
            Err(v) => {
                self.vmbus_violations += 1;
                if self.may_log() {
                    crate::println!("root: partition {id} vmbus: refused a message: {v:?}");
                }
            }
        }
        self.flush_vmbus();
    }

    /// Offer `device` on the child's bus; returns its relid.
    pub fn offer(&mut self, device: Box<dyn vsp::Device<FrameMemory>>) -> Result<u32, String> {
        let params = device.offer();
        let instance = params.interface_instance.unwrap_or_else(|| {
            let mut instance = [0u8; 16];
            instance[..8].copy_from_slice(&self.id.to_le_bytes());
            instance[8..12].copy_from_slice(&self.offers_made.to_le_bytes());
            instance
        });
        self.offers_made = self.offers_made.wrapping_add(1);
        let relid = self
            .vmbus
            .offer(vmbus::server::OfferSpec {
                interface_type: params.interface_type,
                interface_instance: instance,
                channel_flags: params.channel_flags,
                user_defined: params.user_defined,
                sub_channel_index: 0,
            })
            .map_err(|e| format!("the bus refused the offer: {e:?}"))?;
        self.devices.push(DeviceSlot {
            relid,
            device,
            open: None,
            wants_poll: false,
            awaits_device: false,
            instance,
            primary: None,
        });
        self.flush_vmbus();
        Ok(relid)
    }

    /// Offer the sub-channels the device on `primary` asked for, each with
    /// the primary's interface type and instance and the next sub-channel
    /// index (Linux `vmbus_process_offer` hands them to the primary's
    /// driver). A child past its sub-channel quota gets no more offers.
    fn offer_sub_channels(&mut self, primary: u32, subs: Vec<BoxedDevice>) {
        let Some(instance) = self
            .devices
            .iter()
            .find(|d| d.relid == primary)
            .map(|d| d.instance)
        else {
            return;
        };
        for device in subs {
            let held = self.devices.iter().filter(|d| d.primary.is_some()).count();
            let index = self.devices.iter().filter(|d| d.primary == Some(primary)).count() + 1;
            if held >= MAX_SUB_CHANNELS_PER_CHILD {
                if self.may_log() {
                    crate::println!(
                        "root: partition {} vmbus: sub-channel of {primary} not offered: quota of {MAX_SUB_CHANNELS_PER_CHILD} reached",
                        self.id
                    );
                }
                break;
            }
            let params = device.offer();
            let offered = self.vmbus.offer(vmbus::server::OfferSpec {
                interface_type: params.interface_type,
                interface_instance: instance,
                channel_flags: params.channel_flags,
                user_defined: params.user_defined,
                sub_channel_index: index as u16,
            });
            match offered {
                Ok(relid) => self.devices.push(DeviceSlot {
                    relid,
                    device,
                    open: None,
                    wants_poll: false,
                    awaits_device: false,
                    instance,
                    primary: Some(primary),
                }),
                Err(e) => {
                    if self.may_log() {
                        crate::println!(
                            "root: partition {} vmbus: sub-channel {index} of {primary} not offered: {e:?}",
                            self.id
                        );
                    }
                    break;
                }
            }
        }
        self.flush_vmbus();
    }

    /// The primary on `primary` closed or reset: its sub-channels go (the
    /// child is told to release them; a new handshake asks again).
    fn drop_sub_channels(&mut self, primary: u32) {
        let subs: Vec<u32> = self
            .devices
            .iter()
            .filter(|d| d.primary == Some(primary))
            .map(|d| d.relid)
            .collect();
        for relid in subs {
            let _ = self.vmbus.rescind(relid);
            self.close_device(relid);
            self.devices.retain(|d| d.relid != relid);
        }
    }

    /// Rescind channel `relid`: its device stops now and is dropped; the
    /// child is told to close it and release the relid.
    pub fn rescind(&mut self, relid: u32) -> Result<(), String> {
        self.vmbus.rescind(relid).map_err(|_| {
            format!(
                "partition {} has no channel {relid} to rescind (see 'channels {}')",
                self.id, self.id
            )
        })?;
        self.close_device(relid);
        self.devices.retain(|d| d.relid != relid);
        self.flush_vmbus();
        Ok(())
    }

    fn flush_vmbus(&mut self) {
        while let Some((_vp, answer)) = self.vmbus.next_message() {
            self.reply(vmbus::protocol::VMBUS_MESSAGE_TYPE, &answer);
        }
    }

    /// Give an opened channel to its device: map the ring GPADL's pages to
    /// the root frames behind them, route the child's signals to the root,
    /// and let the device take the channel (or refuse it).
    fn open_device(
        &mut self,
        relid: u32,
        info: &vmbus::server::OpenInfo,
        gpadl: &vmbus::gpadl::Gpadl,
    ) -> Result<(), String> {
        let at = self
            .devices
            .iter()
            .position(|d| d.relid == relid)
            .ok_or_else(|| String::from("no device behind this relid"))?;
        if self.devices[at].open.is_some() {
            return Err(String::from("the channel is already open"));
        }
        // The child chose the page count (bounded by the server's GPADL
        // quota): allocate fallibly, so a full heap refuses the open instead
        // of stopping the root.
        let mut frames: Vec<u64> = Vec::new();
        frames
            .try_reserve_exact(gpadl.page_count())
            .map_err(|_| String::from("no root memory for the ring's page list"))?;
        for gfn in gpadl.pages() {
            let frame = self
                .pages
                .get(gfn as usize)
                .copied()
                .ok_or_else(|| String::from("a ring page lies outside the child's memory"))?;
            frames.push(frame);
        }
        let connection_id = self
            .vmbus
            .channels()
            .get(&relid)
            .map(|c| c.connection_id)
            .ok_or_else(|| String::from("unknown relid"))?;
        let port = channel_port_id(self.id, relid).ok_or_else(|| String::from("relid too large"))?;
        // The VP the child asked to be interrupted on (Linux spreads its
        // channels over its CPUs, `init_vp_index`); a VP it does not have is
        // refused rather than signalled somewhere else.
        if info.target_vp >= self.spec.vps {
            return Err(format!(
                "target VP {} does not exist (the child has {})",
                info.target_vp, self.spec.vps
            ));
        }
        let events = child_event_port_id(self.id, info.target_vp)
            .ok_or_else(|| String::from("partition id too large"))?;
        let (up, down) = crate::ring_memory::ring_pair(frames, info.downstream_page_offset as usize)
            .map_err(|e| format!("rings: {e:?}"))?;
        let signal = ChildEvent {
            connection_id: events,
            flag: relid as u16,
            deferred: self.deferred_signals.clone(),
        };
        let channel = vsp::Channel::new(up, down, Box::new(signal))
            .map_err(|e| format!("rings: {e:?}"))?
            .with_guest_ram(FrameMemory::child_ram(self.pages.clone()))
            .with_gpadls(Box::new(self.gpadls.clone()))
            .with_guest_dma(Box::new(crate::ring_memory::ChildDma::new(self.pages.clone())));
        let flag = channel_flag(self.event_block, relid).ok_or_else(|| String::from("relid too large"))?;
        let event_info = PortInfo {
            port_type: port_type::EVENT,
            target_sint: crate::synic::MESSAGE_SINT as u32,
            base_flag_number: flag,
            flag_count: 1,
            ..PortInfo::default()
        };
        hv::create_port(hv1_abi::ROOT_PARTITION_ID, port, self.id, event_info)
            .map_err(|s| format!("CreatePort: {s:?}"))?;
        if let Err(s) = hv::connect_port(self.id, connection_id, hv1_abi::ROOT_PARTITION_ID, port) {
            let _ = hv::delete_port(hv1_abi::ROOT_PARTITION_ID, port);
            return Err(format!("ConnectPort: {s:?}"));
        }
        let slot = &mut self.devices[at];
        if let Err(e) = slot.device.open(channel) {
            let _ = hv::disconnect_port(self.id, connection_id);
            let _ = hv::delete_port(hv1_abi::ROOT_PARTITION_ID, port);
            return Err(format!("{e}"));
        }
        slot.open = Some(OpenPorts {
            connection_id,
            event_port: port,
        });
        slot.wants_poll = false;
        slot.awaits_device = false;
        Ok(())
    }

    /// Close channel `relid`'s device (if open) and take its ports down; a
    /// primary's sub-channels go with it.
    fn close_device(&mut self, relid: u32) {
        let Some(slot) = self.devices.iter_mut().find(|d| d.relid == relid) else {
            return;
        };
        if let Some(p) = slot.open.take() {
            slot.device.close();
            let _ = hv::disconnect_port(self.id, p.connection_id);
            let _ = hv::delete_port(hv1_abi::ROOT_PARTITION_ID, p.event_port);
        }
        slot.wants_poll = false;
        slot.awaits_device = false;
        if slot.primary.is_none() {
            self.drop_sub_channels(relid);
        }
    }

    fn close_all_channels(&mut self) {
        let relids: Vec<u32> = self.devices.iter().map(|d| d.relid).collect();
        for relid in relids {
            self.close_device(relid);
        }
    }

    /// The child signalled channel `relid`: poll it on the next round.
    pub fn note_signal(&mut self, relid: u32) {
        if let Some(d) = self
            .devices
            .iter_mut()
            .find(|d| d.relid == relid && d.open.is_some())
        {
            d.wants_poll = true;
            d.awaits_device = false;
        }
    }

    /// Report channel `relid`'s device into `out`; false if no device has
    /// it open.
    pub fn inspect_channel(&self, relid: u32, out: &mut dyn vsp::InspectSink) -> bool {
        match self.devices.iter().find(|d| d.relid == relid && d.open.is_some()) {
            Some(d) => {
                d.device.inspect(out);
                true
            }
            None => false,
        }
    }

    /// The NICs among the child's devices: (relid, MAC).
    pub fn nics(&mut self) -> Vec<(u32, [u8; 6])> {
        self.devices
            .iter_mut()
            .filter_map(|d| Some((d.relid, d.device.network()?.mac())))
            .collect()
    }

    /// Run `f` on NIC `relid`'s Ethernet side (while the child runs). `f`
    /// says whether it gave the guest anything (a delivery signals it):
    /// only then are halted VPs woken, so a quiet NIC polled every round
    /// does not keep the child's halted VPs being dispatched.
    pub fn with_nic<R>(
        &mut self,
        relid: u32,
        f: impl FnOnce(&mut dyn vsp::NetworkPort) -> (R, bool),
    ) -> Option<R> {
        if self.state != ChildState::Running {
            return None;
        }
        let d = self
            .devices
            .iter_mut()
            .find(|d| d.relid == relid && d.open.is_some())?;
        let (r, delivered) = f(d.device.network()?);
        if delivered {
            self.wake();
        }
        Some(r)
    }

    /// The clock moved: every open device does its timed work (a provider
    /// that speaks first, heartbeats, request timeouts).
    pub fn tick_devices(&mut self, now_ns: u64) {
        if self.state != ChildState::Running {
            return;
        }
        let mut signalled = false;
        for d in self.devices.iter_mut().filter(|d| d.open.is_some()) {
            let r = d.device.tick(now_ns);
            if r.more {
                d.wants_poll = true;
                d.awaits_device = false;
            }
            signalled |= r.signalled;
        }
        if signalled {
            self.wake();
        }
    }

    /// Whether a channel asked to be polled again now, without waiting for
    /// a signal or an interrupt (a budget cut, or DMA of a device that does
    /// not interrupt when it ends).
    pub fn channels_want_poll(&self) -> bool {
        self.state == ChildState::Running
            && self
                .devices
                .iter()
                .any(|d| d.open.is_some() && d.wants_poll && !d.awaits_device)
    }

    /// Whether a channel waits for its device's completion interrupt
    /// before its next poll.
    pub fn channels_await_device(&self) -> bool {
        self.state == ChildState::Running
            && self
                .devices
                .iter()
                .any(|d| d.open.is_some() && d.wants_poll && d.awaits_device)
    }

    /// Give each channel with work one budgeted poll; signal the child where
    /// the rings say so.
    pub fn poll_channels(&mut self) {
        if self.state != ChildState::Running {
            return;
        }
        let mut signalled = false;
        let mut asked: Vec<(u32, Vec<BoxedDevice>)> = Vec::new();
        for i in 0..self.devices.len() {
            let d = &mut self.devices[i];
            if d.open.is_none() || !d.wants_poll {
                continue;
            }
            let r = d.device.poll(vsp::POLL_BUDGET);
            d.wants_poll = r.more || r.awaiting_device;
            d.awaits_device = r.awaiting_device && !r.more;
            signalled |= r.signalled;
            let subs = d.device.take_sub_channels();
            if !subs.is_empty() {
                asked.push((d.relid, subs));
            }
            if let Some(e) = r.broke {
                let relid = d.relid;
                self.rings_broken += 1;
                if self.may_log() {
                    crate::println!(
                        "root: partition {} vmbus: channel {relid} stopped: the child broke its ring ({e:?})",
                        self.id
                    );
                }
            }
        }
        for (primary, subs) in asked {
            self.offer_sub_channels(primary, subs);
        }
        if signalled {
            self.wake();
        }
    }

    /// Something was delivered to the child's SynIC: a halted VP may have
    /// an interrupt to take now (hv-core ends a HLT at once when one is
    /// deliverable, and reports it again when not).
    fn wake(&mut self) {
        for v in self.vps.iter_mut() {
            v.halted = false;
        }
    }

    /// The one teardown path for everything the root runs on the child's
    /// behalf (used by stop, crash, destroy and start): every open channel
    /// closed (the root stops touching the child's memory), the VMBus
    /// server back to power-on with its offers kept, the outbox emptied and
    /// the console budget renewed.
    fn power_off_devices(&mut self) {
        self.close_all_channels();
        // Signals for channels that are gone (a restart resets the SynIC).
        self.deferred_signals.clear();
        self.gpadls.clear();
        for d in self.devices.iter_mut() {
            d.device.reset();
        }
        self.vmbus.reset();
        self.outbox.clear();
        self.logged_messages = 0;
        self.resets += 1;
    }

    /// Root frame backing guest page `gpa` (`gpa` must be below memory size).
    fn frame(&self, gpa: u64) -> u64 {
        self.pages[(gpa / PAGE_SIZE) as usize]
    }

    /// Copy `bytes` into the child's memory at `gpa`.
    fn write(&self, gpa: u64, bytes: &[u8]) {
        let mut done = 0;
        while done < bytes.len() {
            let at = gpa + done as u64;
            let in_page = (PAGE_SIZE - at % PAGE_SIZE) as usize;
            let n = in_page.min(bytes.len() - done);
            // SAFETY: the frame belongs to this child's memory, which the root
            // allocated and keeps until destroy; identity-mapped.
            let dst = unsafe { memory::phys_slice_mut(self.frame(at) + at % PAGE_SIZE, n) };
            dst.copy_from_slice(&bytes[done..done + n]);
            done += n;
        }
    }

    /// FNV-1a over the child's whole memory (to show it is untouched).
    pub fn checksum(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for &page in self.pages.iter() {
            // SAFETY: as in `write`; read only.
            let bytes = unsafe { memory::phys_slice(page, PAGE_SIZE as usize) };
            for &b in bytes {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
        h
    }

    /// (lowest, highest) root frame backing the child.
    pub fn frame_span(&self) -> (u64, u64) {
        let lo = self.pages.iter().copied().min().unwrap_or(0);
        let hi = self.pages.iter().copied().max().unwrap_or(0);
        (lo, hi)
    }

    /// Zero memory, lay out page tables, GDT and boot info, load the image and
    /// put every VP at its entry in 64-bit mode.
    fn load(&mut self) -> Result<(), WorkerError> {
        for &page in self.pages.iter() {
            // SAFETY: the child's own frames, identity-mapped, not running.
            unsafe { memory::phys_slice_mut(page, PAGE_SIZE as usize) }.fill(0);
        }
        let boot = self.image.layout(&self.spec).map_err(WorkerError::BadImage)?;
        for (gpa, bytes) in &boot.writes {
            self.write(*gpa, bytes.as_slice());
        }
        if self.image.is_test_os() {
            let info = BootInfo {
                magic: layout::BOOT_INFO_MAGIC,
                memory_size: self.spec.memory,
                vp_count: self.spec.vps,
                reserved: 0,
                name: layout::pad(&self.spec.name),
                mode: layout::pad(&self.spec.mode),
                targets: self.targets,
            };
            self.write(layout::BOOT_INFO_GPA, info.as_bytes());
        }
        for vp in 0..self.spec.vps {
            if vp > 0 && !self.image.is_test_os() {
                // A kernel's application processors wait for the INIT-SIPI
                // its boot processor sends them (Linux
                // `wakeup_secondary_cpu_via_init`), as on a real machine.
                let suspend = hv1_abi::partition::internal_activity::STARTUP_SUSPEND;
                hv::set_vp_registers(
                    self.id,
                    vp,
                    &[(RegisterName::INTERNAL_ACTIVITY_STATE, reg(suspend))],
                )
                .map_err(|(s, _)| WorkerError::Hypervisor("SetVpRegisters", s))?;
            } else {
                // Test OS VPs all start at the entry, each on its own stack
                // with RDI = its index.
                let state = EntryState {
                    rsp: boot.vp0.rsp - vp as u64 * layout::STACK_SIZE,
                    rdi: vp as u64,
                    ..boot.vp0
                };
                let regs = initial_registers(&state);
                hv::set_vp_registers(self.id, vp, &regs)
                    .map_err(|(s, _)| WorkerError::Hypervisor("SetVpRegisters", s))?;
            }
            let v = &mut self.vps[vp as usize];
            v.halted = false;
            // A VP stopped at an intercept must be released on its next dispatch.
            v.clear_intercept = true;
        }
        Ok(())
    }

    /// Boot (or reboot) from the image and mark it running. A restart is a
    /// fresh machine: devices torn down, hv-core's state for the partition
    /// back to power-on (HvPrivResetPartition), memory reloaded.
    pub fn start(&mut self) -> Result<(), WorkerError> {
        if self.state != ChildState::Created {
            self.power_off_devices();
            hv::reset_partition(self.id).map_err(hvfail("ResetPartition"))?;
            self.rtc = CmosRtc::new();
            self.console_in.clear();
            if let Some(io) = self.ioapic.as_mut() {
                **io = IoApic::new(child_acpi::IoApicConfig::default().id);
            }
            self.load()?;
        }
        hv::set_partition_property(self.id, property::SUSPEND, 0).map_err(hvfail("SetPartitionProperty"))?;
        self.crash = None;
        self.started = timer::ticks();
        self.state = ChildState::Running;
        Ok(())
    }

    /// Pause or resume through hv-core's SUSPEND property.
    pub fn set_paused(&mut self, paused: bool) -> Result<(), WorkerError> {
        hv::set_partition_property(self.id, property::SUSPEND, paused as u64)
            .map_err(hvfail("SetPartitionProperty"))?;
        self.state = if paused {
            ChildState::Paused
        } else {
            ChildState::Running
        };
        Ok(())
    }

    /// Power off (memory kept for inspection; `start` resets it).
    pub fn stop(&mut self) {
        self.power_off_devices();
        self.state = ChildState::Stopped;
    }

    /// Return everything: hv-core unmaps and frees its side (finalize,
    /// delete), then the root frees the frames it lent.
    pub fn destroy(&mut self) {
        self.power_off_devices();
        // Take the memory back page by page first (what a worker does when a
        // child shrinks), then let hv-core tear down the rest. Finalize may be
        // refused for a never-initialized partition; delete then succeeds.
        if !self.pages.is_empty()
            && let Err((s, done)) = hv::unmap_gpa_pages(self.id, 0, self.pages.len())
        {
            crate::println!(
                "root: unmapping partition {}'s memory stopped at page {done}: {s:?}",
                self.id
            );
        }
        let _ = hv::finalize_partition(self.id);
        if let Err(s) = hv::delete_partition(self.id) {
            crate::println!("root: hv-core refused to delete partition {}: {s:?}", self.id);
        }
        // Every device dropped its view with its channel (power_off_devices
        // above); a view still held would be a root bug, and the frames
        // are then leaked rather than reused under it.
        let pages = core::mem::replace(&mut self.pages, alloc::rc::Rc::from([]));
        if alloc::rc::Rc::strong_count(&pages) == 1 {
            for &page in pages.iter() {
                memory::free_frames(page, 1);
            }
        } else {
            crate::println!(
                "root: partition {}'s memory is still referenced by a device: {} frames leaked",
                self.id,
                pages.len()
            );
        }
        for vp in self.vps.drain(..) {
            memory::free_frames(vp.message_page, 1);
            memory::free_frames(vp.register_page, 1);
        }
    }

    /// A byte typed at `console ID`: into the UART's FIFO when it has room
    /// and nothing waits before it, else queued (or dropped and counted
    /// when the queue is full).
    pub fn console_input(&mut self, b: u8) {
        if self.console_in.len() >= CONSOLE_INPUT_LIMIT {
            self.console_input_dropped += 1;
            return;
        }
        self.console_in.push_back(b);
        self.feed_uart();
        self.update_com1_line();
    }

    /// Drive the I/O APIC's COM1 pin from the UART's interrupt output and
    /// deliver what fires.
    fn update_com1_line(&mut self) {
        let Some(io) = self.ioapic.as_mut() else {
            return;
        };
        let fired = io.set_line(child_acpi::COM1_IRQ, self.uart.interrupt_line());
        self.deliver_interrupts(fired);
    }

    /// Send the messages of the I/O APIC pins in `fired` into the child's
    /// APICs. What the guest's redirection entries make undeliverable (a
    /// vector below 16, an NMI/SMI/INIT/ExtINT mode) is dropped and
    /// counted, as a real I/O APIC's message would be refused.
    fn deliver_interrupts(&mut self, fired: Fired) {
        let mut delivered = false;
        for pin in (0..ioapic::PINS as u8).filter(|p| fired & (1 << p) != 0) {
            let Some(m) = self.ioapic.as_ref().and_then(|io| io.message(pin)) else {
                continue;
            };
            let lowest = match m.mode {
                DeliveryMode::Fixed => false,
                DeliveryMode::LowestPriority => true,
                DeliveryMode::Other(_) => {
                    self.drop_interrupt(&m, "its delivery mode is not fixed or lowest priority");
                    continue;
                }
            };
            if m.vector < 16 {
                self.drop_interrupt(&m, "its vector is below 16");
                continue;
            }
            if m.level {
                // Level-triggered entries would need the APIC's EOI back
                // here; no device of ours drives one.
                self.drop_interrupt(&m, "level-triggered entries are not provided");
                continue;
            }
            match hv::assert_virtual_interrupt(self.id, u32::from(m.destination), m.logical, m.vector, lowest)
            {
                Ok(()) => {
                    self.interrupts_asserted += 1;
                    delivered = true;
                }
                Err(s) => self.drop_interrupt(&m, &format!("hv-core refused it ({s:?})")),
            }
        }
        if delivered {
            self.wake();
        }
    }

    /// An I/O APIC interrupt that cannot be delivered: counted, and said on
    /// the root's console within the child's line budget.
    fn drop_interrupt(&mut self, m: &ioapic::Interrupt, why: &str) {
        self.interrupts_dropped += 1;
        if self.may_log() {
            crate::println!(
                "root: partition {}: I/O APIC pin {} (vector {:#x}) dropped: {why}",
                self.id,
                m.pin,
                m.vector
            );
        }
    }

    /// Move queued console bytes into the UART's FIFO as far as it has room.
    fn feed_uart(&mut self) {
        while self.uart.rx_room() > 0 {
            let Some(b) = self.console_in.pop_front() else {
                break;
            };
            self.uart.push_rx(b);
        }
    }

    /// Tick of the last start (a reboot by the guest included).
    pub fn started_at(&self) -> u64 {
        self.started
    }

    /// Seconds since the last start (0 unless running or paused).
    pub fn uptime_secs(&self) -> u64 {
        match self.state {
            ChildState::Running | ChildState::Paused => (timer::ticks() - self.started) / timer::HZ,
            _ => 0,
        }
    }

    /// VP indices the scheduler may dispatch now.
    pub fn runnable_vps(&self) -> impl Iterator<Item = u32> + '_ {
        let running = self.state == ChildState::Running;
        let now = timer::ticks();
        self.vps
            .iter()
            .enumerate()
            .filter(move |(_, v)| running && (!v.halted || now > v.halted_at))
            .map(|(i, _)| i as u32)
    }

    /// Number of VPs halted.
    pub fn halted_vps(&self) -> usize {
        self.vps.iter().filter(|v| v.halted).count()
    }

    fn crash_with(&mut self, reason: String) -> Slice {
        crate::println!(
            "\nroot: partition {} ({}) crashed: {reason}",
            self.id,
            self.spec.name
        );
        self.crash = Some(reason);
        self.state = ChildState::Crashed;
        self.power_off_devices();
        Slice::Crashed
    }

    /// Run VP `vp` for one slice and handle what stopped it.
    pub fn run_slice(&mut self, vp: u32) -> Slice {
        let v = &mut self.vps[vp as usize];
        // Halted again if the dispatch ends in HLT (see `VpState::halted`).
        v.halted = false;
        let mut flags = dispatch_flags::ENABLE_CALLER_INTERRUPTS;
        if v.clear_intercept {
            flags |= dispatch_flags::CLEAR_INTERCEPT_SUSPEND;
        }
        let message_page = v.message_page;
        let mut signals = [QueuedSignal::new_zeroed(); MAX_QUEUED_SIGNALS];
        let count = self.deferred_signals.take_into(&mut signals);
        let dispatched = if count == 0 {
            hv::dispatch_vp(self.id, vp, flags)
        } else {
            hv::signal_and_dispatch_vp(self.id, vp, flags, &signals[..count]).map(|r| {
                self.signals_with_dispatch += count as u64;
                if r.signals_failed != 0 {
                    self.signals_failed += u64::from(r.signals_failed);
                    if self.may_log() {
                        crate::println!(
                            "root: partition {}: hv-core could not make {} of {count} signals ({:?})",
                            self.id,
                            r.signals_failed,
                            r.first_failure
                        );
                    }
                }
                (r.state, r.event)
            })
        };
        match dispatched {
            Ok((DISPATCH_STATE_READY, DISPATCH_EVENT_NONE)) => {
                self.vps[vp as usize].clear_intercept = false;
                // The dispatch may have ended because the VP sent an IPI
                // (hv-core stops a sender at once): its siblings get a
                // dispatch now, where hv-core enters a halted one only if
                // the IPI made an interrupt deliverable.
                if self.vps.len() > 1 {
                    self.wake();
                }
                Slice::Preempted
            }
            Ok((DISPATCH_STATE_BLOCKED, DISPATCH_EVENT_SUSPEND)) => {
                // Blocked in hv-core (an application processor waiting for
                // its Startup IPI): tried again like a halted VP, at the
                // next tick or when a sibling's IPI wakes it.
                let v = &mut self.vps[vp as usize];
                v.halted = true;
                v.halted_at = timer::ticks();
                Slice::Suspended
            }
            Ok((DISPATCH_STATE_READY, DISPATCH_EVENT_INTERCEPT)) => {
                self.intercepts += 1;
                self.vps[vp as usize].clear_intercept = true;
                // SAFETY: the message page is a root frame hv-core just wrote
                // and is idle until the next dispatch of this VP.
                let bytes = unsafe { memory::phys_slice(message_page, size_of::<Message>()) };
                let message = Message::read_from_bytes(bytes).expect("256 bytes");
                self.handle(vp, &message)
            }
            Ok((state, event)) => self.crash_with(format!("unexpected dispatch result {state}/{event}")),
            Err(s) => self.crash_with(format!("DispatchVp failed: {s:?}")),
        }
    }

    fn handle(&mut self, vp: u32, m: &Message) -> Slice {
        match m.header.message_type {
            message_type::X64_IO_PORT_INTERCEPT => {
                let io = IoPortIntercept::read_from_prefix(&m.payload)
                    .expect("payload is large enough")
                    .0;
                self.port_io(vp, &io)
            }
            message_type::X64_HALT => {
                let h = hv1_abi::message::InterceptHeader::read_from_prefix(&m.payload)
                    .expect("40 bytes")
                    .0;
                // Length 0: hv-core reports a VP still halted (RIP already
                // past the HLT); nothing to complete.
                let length = (h.instruction_length_cr8 & 0xF) as u64;
                if length != 0
                    && let Err(s) = self.complete_intercept(vp, h.rip + length, None)
                {
                    return self.crash_with(format!("completing HLT: {s:?}"));
                }
                let v = &mut self.vps[vp as usize];
                v.halted = true;
                v.halted_at = timer::ticks();
                Slice::Halted
            }
            message_type::UNMAPPED_GPA | message_type::GPA_INTERCEPT => {
                let mem = MemoryIntercept::read_from_prefix(&m.payload)
                    .expect("payload is large enough")
                    .0;
                if m.header.message_type == message_type::UNMAPPED_GPA
                    && self.ioapic.is_some()
                    && IOAPIC_PAGE.contains(&mem.guest_physical_address)
                {
                    return self.ioapic_access(vp, &mem);
                }
                let how = match mem.header.intercept_access_type {
                    access::WRITE => "write",
                    access::EXECUTE => "execute",
                    _ => "read",
                };
                let what = if m.header.message_type == message_type::UNMAPPED_GPA {
                    "unmapped"
                } else {
                    "protected"
                };
                self.crash_with(format!(
                    "{how} of {what} GPA {:#x} at rip {:#x}",
                    mem.guest_physical_address, mem.header.rip
                ))
            }
            message_type::UNRECOVERABLE_EXCEPTION => {
                let h = hv1_abi::message::InterceptHeader::read_from_prefix(&m.payload)
                    .expect("40 bytes")
                    .0;
                self.crash_with(format!("triple fault (shutdown) at rip {:#x}", h.rip))
            }
            message_type::INVALID_VP_REGISTER_VALUE => self.crash_with(String::from(
                "VP state rejected by the CPU (invalid register values)",
            )),
            hv1_abi::private::message_type::GUEST_CRASH => self.guest_crash(m),
            other => self.crash_with(format!("unexpected intercept message {other:#x}")),
        }
    }

    /// Emulate an IN/OUT and complete the instruction (RIP past it, RAX for IN).
    fn port_io(&mut self, vp: u32, io: &IoPortIntercept) -> Slice {
        let port = io.port_number;
        if io.access_info & (io_access::STRING_OP | io_access::REP_PREFIX) != 0 {
            return self.crash_with(format!("string I/O (INS/OUTS) on port {port:#x} is not emulated"));
        }
        let size = (io.access_info & io_access::SIZE_MASK) as u32;
        let mask: u64 = match size {
            1 => 0xFF,
            2 => 0xFFFF,
            _ => 0xFFFF_FFFF,
        };
        let is_in = io.header.intercept_access_type == access::READ;
        // The ACPI sleep and reset registers our FADT names (child_acpi::power).
        if !is_in && size == 1 {
            let byte = io.rax as u8;
            if port == power::SLEEP_CONTROL_PORT && power::is_poweroff(byte) {
                crate::println!(
                    "\nroot: partition {} ({}) powered off by the guest",
                    self.id,
                    self.spec.name
                );
                self.stop();
                self.last_exit = Some("powered off by the guest");
                return Slice::PoweredOff;
            }
            if port == power::RESET_PORT && byte == power::RESET_VALUE {
                crate::println!(
                    "\nroot: partition {} ({}) reset by the guest: rebooting",
                    self.id,
                    self.spec.name
                );
                self.guest_reboots += 1;
                self.last_exit = Some("reset by the guest");
                return match self.start() {
                    Ok(()) => Slice::Rebooted,
                    Err(e) => self.crash_with(format!("rebooting after a guest reset: {e}")),
                };
            }
        }
        let value = if port == RTC_INDEX && size == 1 {
            if is_in {
                0xFF
            } else {
                self.rtc.select(io.rax as u8);
                0
            }
        } else if port == RTC_DATA && size == 1 {
            if is_in {
                self.rtc.read(crate::clock::unix_now().unwrap_or(0)) as u64
            } else {
                self.rtc.write(io.rax as u8);
                0
            }
        } else if COM1.contains(&port) {
            let offset = port - *COM1.start();
            let v = if is_in {
                let v = self.uart.read(offset) as u64;
                // A read may have made room in the FIFO.
                self.feed_uart();
                v
            } else {
                self.uart.write(offset, io.rax as u8);
                0
            };
            self.update_com1_line();
            v
        } else {
            // No such device: reads float high, writes go nowhere. The root's
            // own devices are never reachable from a child.
            self.stray_io += 1;
            mask
        };
        let next = io.header.rip + (io.header.instruction_length_cr8 & 0xF) as u64;
        // A 32-bit IN zero-extends into RAX; 8/16-bit INs keep the rest.
        let loaded = if size == 4 {
            value & mask
        } else {
            (io.rax & !mask) | (value & mask)
        };
        let rax = is_in.then_some((0, loaded));
        match self.complete_intercept(vp, next, rax) {
            Ok(()) => Slice::Handled,
            Err(s) => self.crash_with(format!("completing port I/O: {s:?}")),
        }
    }

    /// Complete the instruction VP `vp` stopped at: RIP to `rip`, and
    /// general-purpose register `gpr.0` (0 RAX … 15 R15) to `gpr.1` if
    /// given. Written into its register page, which hv-core loads with the
    /// next dispatch (Hyper-V's register page: no hypercall); by
    /// HvCallSetVpRegisters when the page does not hold the VP's registers.
    fn complete_intercept(&mut self, vp: u32, rip: u64, gpr: Option<(u8, u64)>) -> Result<(), HvStatus> {
        use hv1_abi::partition::{VP_REGISTER_PAGE_VERSION_1, VpRegisterPage, register_class};
        let page = self.vps[vp as usize].register_page;
        // SAFETY: the VP's register page, a root frame that hv-core writes
        // only inside a dispatch of this VP, and nothing else references.
        let bytes = unsafe { memory::phys_slice_mut(page, size_of::<VpRegisterPage>()) };
        let mut r = VpRegisterPage::read_from_bytes(bytes).expect("152 bytes");
        if r.isvalid != 1 || r.version != VP_REGISTER_PAGE_VERSION_1 {
            let mut regs = [(RegisterName::RIP, reg(rip)), (RegisterName::RAX, reg(0))];
            let count = match gpr {
                Some((n, v)) => {
                    regs[1] = (gpr_name(n), reg(v));
                    2
                }
                None => 1,
            };
            return hv::set_vp_registers(self.id, vp, &regs[..count]).map_err(|(s, _)| s);
        }
        r.rip = rip;
        r.dirty |= register_class::IP;
        if let Some((n, v)) = gpr {
            r.gp_registers[usize::from(n & 15)] = v;
            r.dirty |= register_class::GENERAL;
        }
        bytes.copy_from_slice(r.as_bytes());
        self.register_page_completions += 1;
        Ok(())
    }

    /// VP `vp`'s 16 general-purpose registers (RAX … R15) as it stopped:
    /// from its register page, or by HvCallGetVpRegisters when the page
    /// does not hold them.
    fn general_registers(&self, vp: u32) -> Result<[u64; 16], HvStatus> {
        use hv1_abi::partition::{VP_REGISTER_PAGE_VERSION_1, VpRegisterPage};
        let page = self.vps[vp as usize].register_page;
        // SAFETY: as in `complete_intercept`; read only.
        let bytes = unsafe { memory::phys_slice(page, size_of::<VpRegisterPage>()) };
        let r = VpRegisterPage::read_from_bytes(bytes).expect("152 bytes");
        if r.isvalid == 1 && r.version == VP_REGISTER_PAGE_VERSION_1 {
            return Ok(r.gp_registers);
        }
        let names: [RegisterName; 16] = core::array::from_fn(|n| gpr_name(n as u8));
        let mut values = [RegisterValue::default(); 16];
        hv::get_vp_registers(self.id, vp, &names, &mut values).map_err(|(s, _)| s)?;
        Ok(values.map(|v| v.low))
    }

    /// An access by VP `vp` to the I/O APIC's page: decode the instruction
    /// the intercept carries (a MOV form: `svm::insn::decode_mmio`), do the
    /// register access, complete the instruction. Anything else there (a
    /// fetch, an instruction we do not emulate, code outside 64-bit mode)
    /// stops the child with the reason.
    fn ioapic_access(&mut self, vp: u32, mem: &MemoryIntercept) -> Slice {
        use hv1_abi::message::execution_state;
        self.ioapic_accesses += 1;
        let (gpa, rip) = (mem.guest_physical_address, mem.header.rip);
        let long_mode = mem.header.execution_state & execution_state::EFER_LMA != 0
            && mem.header.cs.attributes & CS_LONG != 0;
        if mem.header.intercept_access_type == access::EXECUTE || !long_mode {
            return self.crash_with(format!(
                "I/O APIC access at GPA {gpa:#x} from rip {rip:#x}: only data accesses from 64-bit code are emulated"
            ));
        }
        let fetched = usize::from(mem.instruction_byte_count).min(mem.instruction_bytes.len());
        let access = match svm::insn::decode_mmio(&mem.instruction_bytes[..fetched]) {
            Ok(a) => a,
            Err(e) => {
                return self.crash_with(format!(
                    "I/O APIC access at GPA {gpa:#x} from rip {rip:#x}: instruction not emulated ({e:?})"
                ));
            }
        };
        let regs = match self.general_registers(vp) {
            Ok(r) => r,
            Err(s) => return self.crash_with(format!("reading registers for an I/O APIC access: {s:?}")),
        };
        let offset = gpa - IOAPIC_PAGE.start;
        let Some(io) = self.ioapic.as_mut() else {
            return self.crash_with(String::from("I/O APIC access without an I/O APIC"));
        };
        let (fired, gpr) = match access.op {
            MmioOp::Write { .. } => {
                let value = access.write_value(|n| regs[usize::from(n & 15)]).unwrap_or(0);
                (io.write(offset, value as u32), None)
            }
            MmioOp::Read { dest, .. } => {
                let data = u64::from(io.read(offset));
                (0, access.read_result(regs[usize::from(dest.num & 15)], data))
            }
        };
        self.deliver_interrupts(fired);
        match self.complete_intercept(vp, rip + access.len as u64, gpr) {
            Ok(()) => Slice::Handled,
            Err(s) => self.crash_with(format!("completing an I/O APIC access: {s:?}")),
        }
    }

    /// A few registers of VP `vp`, for `info`.
    pub fn registers(&self, vp: u32) -> Result<[(&'static str, u64); 9], HvStatus> {
        let names = [
            RegisterName::RIP,
            RegisterName::RSP,
            RegisterName::RFLAGS,
            RegisterName::CR0,
            RegisterName::CR3,
            RegisterName::CR4,
            RegisterName::EFER,
            RegisterName::CS,
            RegisterName::INTERNAL_ACTIVITY_STATE,
        ];
        let mut values = [RegisterValue::default(); 9];
        hv::get_vp_registers(self.id, vp, &names, &mut values).map_err(|(s, _)| s)?;
        let labels = [
            "rip",
            "rsp",
            "rflags",
            "cr0",
            "cr3",
            "cr4",
            "efer",
            "cs",
            "waiting_for_sipi",
        ];
        let mut out = [("", 0u64); 9];
        for (i, slot) in out.iter_mut().enumerate() {
            let v = match names[i] {
                // CS: report the selector (bits 111:96 of the segment register).
                RegisterName::CS => (values[i].high >> 32) & 0xFFFF,
                RegisterName::INTERNAL_ACTIVITY_STATE => {
                    values[i].low & hv1_abi::partition::internal_activity::STARTUP_SUSPEND
                }
                _ => values[i].low,
            };
            *slot = (labels[i], v);
        }
        Ok(out)
    }

    /// VP count.
    pub fn vp_count(&self) -> usize {
        self.vps.len()
    }

    /// The guest reported a crash through the crash MSRs (hv-core's
    /// `private::message_type::GUEST_CRASH`; the VP is stopped until reset):
    /// crash the child with P0-P4 and, with CrashMessage, a line of the text
    /// in the page P3 (GPA) and P4 (length) name. All of it is guest data.
    fn guest_crash(&mut self, m: &Message) -> Slice {
        let Ok((c, _)) = hv1_abi::private::GuestCrash::read_from_prefix(&m.payload) else {
            return self.crash_with(String::from("guest crash report (payload unreadable)"));
        };
        let p = c.parameters;
        let mut reason = format!(
            "guest crash report: P0 {:#x} P1 {:#x} P2 {:#x} P3 {:#x} P4 {:#x} (CRASH_CTL {:#x})",
            p[0], p[1], p[2], p[3], p[4], c.control
        );
        if c.control & hv1_abi::msr::CRASH_CTL_MESSAGE != 0 {
            // At most one page, all of it inside the child's RAM.
            let ram = self.pages.len() as u64 * PAGE_SIZE;
            let inside = p[4] <= PAGE_SIZE && p[3].checked_add(p[4]).is_some_and(|end| end <= ram);
            if !inside {
                reason.push_str(" (message page outside the child's RAM: not read)");
            } else {
                let mut text = Vec::with_capacity(p[4] as usize);
                let mut at = p[3];
                while at < p[3] + p[4] {
                    let n = (PAGE_SIZE - at % PAGE_SIZE).min(p[3] + p[4] - at);
                    // SAFETY: inside the child's memory (checked above), a
                    // frame the root lent it and keeps; read only.
                    text.extend_from_slice(unsafe {
                        memory::phys_slice(self.frame(at) + at % PAGE_SIZE, n as usize)
                    });
                    at += n;
                }
                // Printable ASCII only; the last line saying "Kernel panic",
                // else the last non-empty line; at most 200 characters.
                let mut panic_line = None;
                let mut last_line = None;
                for line in text.split(|&b| b == b'\n') {
                    let line: String = line
                        .iter()
                        .filter(|b| (0x20..0x7F).contains(*b))
                        .map(|&b| b as char)
                        .collect();
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    if line.contains("Kernel panic") {
                        panic_line = Some(String::from(line));
                    }
                    last_line = Some(String::from(line));
                }
                match panic_line.or(last_line) {
                    Some(line) => {
                        reason.push_str(": ");
                        reason.extend(line.chars().take(200));
                    }
                    None => reason.push_str(" (message page empty)"),
                }
            }
        }
        self.crash_with(reason)
    }
}

/// The register name of general-purpose register `n` (0 RAX … 15 R15, the
/// TLFS numbers them in that order).
fn gpr_name(n: u8) -> RegisterName {
    RegisterName(RegisterName::RAX.0 + u32::from(n & 15))
}

fn reg(v: u64) -> RegisterValue {
    RegisterValue { low: v, high: 0 }
}

fn segment(selector: u16, svm_attrib: u16, limit: u32) -> RegisterValue {
    let s = SegmentRegister {
        base: 0,
        limit,
        selector,
        attributes: SegmentRegister::attributes_from_svm(svm_attrib),
    };
    RegisterValue::read_from_bytes(s.as_bytes()).expect("16 bytes")
}

/// 64-bit mode, or 32-bit protected mode with paging off (the PVH and
/// Multiboot entry state), as `state` says; interrupts off.
fn initial_registers(state: &EntryState) -> [(RegisterName, RegisterValue); 21] {
    let gdtr = hv1_abi::partition::TableRegister {
        pad: [0; 3],
        limit: state.gdt.1,
        base: state.gdt.0,
    };
    let idtr = hv1_abi::partition::TableRegister {
        pad: [0; 3],
        limit: 0,
        base: 0,
    };
    let table =
        |t: hv1_abi::partition::TableRegister| RegisterValue::read_from_bytes(t.as_bytes()).expect("16");
    // (code attributes, CR0, CR4, EFER)
    let (code_attrib, cr0, cr4, efer) = match state.mode {
        // L=1 code; PG WP NE ET MP PE; PAE OSFXSR OSXMMEXCPT; LME LMA.
        CpuMode::Long64 => (0xA9B, 0x8005_0033, 0x620, 0x500),
        // D=1 G=1 code; PE ET only (Multiboot 0.6.96 "Machine state", Xen
        // start_info.h "paging disabled"); CR4 = EFER = 0.
        CpuMode::Protected32 => (0xC9B, 0x11, 0, 0),
    };
    let code = segment(state.selectors.0, code_attrib, 0xFFFF_FFFF);
    let data = segment(state.selectors.1, 0xC93, 0xFFFF_FFFF);
    [
        (RegisterName::CR0, reg(cr0)),
        (RegisterName::CR3, reg(state.cr3)),
        (RegisterName::CR4, reg(cr4)),
        (RegisterName::EFER, reg(efer)),
        (RegisterName::CS, code),
        (RegisterName::SS, data),
        (RegisterName::DS, data),
        (RegisterName::ES, data),
        (RegisterName::FS, data),
        (RegisterName::GS, data),
        (RegisterName::TR, segment(0, 0x8B, 0x67)),
        (RegisterName::LDTR, segment(0, 0x82, 0xFFFF)),
        (RegisterName::GDTR, table(gdtr)),
        (RegisterName::IDTR, table(idtr)),
        (RegisterName::RIP, reg(state.entry)),
        (RegisterName::RSP, reg(state.rsp)),
        (RegisterName::RFLAGS, reg(2)),
        (RegisterName::RDI, reg(state.rdi)),
        (RegisterName::RSI, reg(state.rsi)),
        (RegisterName::RAX, reg(state.rax)),
        (RegisterName::RBX, reg(state.rbx)),
    ]
}

/// A child's GPADLs as its devices see them: handle → guest page numbers,
/// updated after every channel message the server handles (GPADLs never
/// change once created, so only additions and removals are copied).
#[derive(Clone, Default)]
struct SharedGpadls(alloc::rc::Rc<core::cell::RefCell<alloc::collections::BTreeMap<u32, Vec<u64>>>>);

impl SharedGpadls {
    /// Follow the server's table: drop what it no longer has, copy what is new.
    fn sync(&self, table: &alloc::collections::BTreeMap<u32, vmbus::gpadl::Gpadl>) {
        let mut map = self.0.borrow_mut();
        map.retain(|handle, _| table.contains_key(handle));
        for (handle, gpadl) in table {
            if !map.contains_key(handle) {
                let mut pages = Vec::new();
                // Bounded by the server's GPADL quota; a full heap leaves the
                // GPADL unknown to devices (they refuse the buffer).
                if pages.try_reserve_exact(gpadl.page_count()).is_ok() {
                    pages.extend(gpadl.pages());
                    map.insert(*handle, pages);
                }
            }
        }
    }

    fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}

impl vsp::GpadlMap for SharedGpadls {
    fn pages(&self, handle: u32) -> Option<Vec<u64>> {
        self.0.borrow().get(&handle).cloned()
    }
}
