//! The partition manager: every child's worker, the images it can boot, and
//! the scheduler that shares the CPU between child VPs and the root's own
//! work (round-robin, one dispatch at a time; the root's timer preempts).

use crate::hv::HvRegion;
use crate::worker::{Slice, Worker};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use boot_proto::child::target;
use mgmt::cli::CreateSpec;
use mgmt::lifecycle::{self, Action};

/// All children and the scheduler's position.
pub struct Manager {
    /// Workers, in id order.
    pub workers: Vec<Worker>,
    images: Vec<(&'static str, &'static [u8])>,
    last: (u64, u32),
    hv_region: HvRegion,
    /// A root page hostile children aim at (never lent).
    pub canary: u64,
    /// Dispatches made.
    pub dispatches: u64,
    /// Times the main loop slept while a channel awaited its device's
    /// completion interrupt (instead of polling it in a loop).
    pub device_waits: u64,
    /// Each child's integration services, by partition id.
    integration: Vec<(u64, vsp_ic::Controls)>,
    /// Graceful shutdowns asked for.
    shutdowns: Vec<PendingShutdown>,
    /// Tick the devices last had their timed work.
    last_device_tick: u64,
    /// (partition, start tick) whose start the host's time was pushed for.
    time_pushed: Vec<(u64, u64)>,
    /// The virtual switch every child NIC is a port of.
    pub switch: vswitch::Switch,
    /// (partition, relid) of each NIC → its switch port.
    nic_ports: Vec<((u64, u32), vswitch::PortId)>,
    /// The root's block devices and the children's disks on them.
    pub storage: crate::storage::Storage,
    /// The uplink and the root's own interface on the switch.
    pub network: crate::net::RootNetwork,
}

/// `net ping`: one echo request a second, each answered within two seconds
/// (a child under TCG can be slow to reply).
pub const PING_INTERVAL_MS: u64 = 1000;
/// How long each echo request may wait for its reply.
pub const PING_TIMEOUT_MS: u64 = 2000;

/// Frames moved per NIC per direction per round (the switch's queues and
/// the NICs' outboxes are bounded; what is left waits for the next round).
const FRAMES_PER_ROUND: usize = 64;

/// A `shutdown ID` waiting for the child to act.
struct PendingShutdown {
    id: u64,
    /// Tick by which it must have powered off (or rebooted).
    deadline: u64,
    /// A restart was asked for: done once the child has rebooted itself.
    reboot: bool,
    /// Its guest reboots when asked.
    reboots_before: u64,
}

/// How often the guests' KVP pools are enumerated.
const KVP_REFRESH_TICKS: u64 = 5 * crate::timer::HZ;

/// How long `shutdown ID` waits for the child to power off.
pub const SHUTDOWN_TIMEOUT_TICKS: u64 = 30 * crate::timer::HZ;

impl Manager {
    /// A manager that can boot `images` (name, ELF).
    pub fn new(images: Vec<(&'static str, &'static [u8])>, hv_region: HvRegion, canary: u64) -> Self {
        let mut switch = vswitch::Switch::new(vswitch::Config::default())
            .expect("the default switch configuration is valid");
        let network = crate::net::RootNetwork::open(&mut switch, crate::timer::now_ms());
        Self {
            workers: Vec::new(),
            images,
            last: (0, 0),
            hv_region,
            canary,
            dispatches: 0,
            device_waits: 0,
            integration: Vec::new(),
            shutdowns: Vec::new(),
            last_device_tick: 0,
            time_pushed: Vec::new(),
            switch,
            network,
            nic_ports: Vec::new(),
            storage: crate::storage::Storage::open(),
        }
    }

    /// A child's integration services.
    pub fn integration(&self, id: u64) -> Result<&vsp_ic::Controls, String> {
        self.get(id)?;
        self.integration
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, c)| c)
            .ok_or_else(|| format!("partition {id} has no integration services"))
    }

    /// Ask child `id` to shut down through its shutdown service; the
    /// manager reports if it has not powered off in time.
    pub fn request_shutdown(&mut self, id: u64, reboot: bool) -> Result<String, String> {
        let w = self.get(id)?;
        if w.state != mgmt::lifecycle::ChildState::Running {
            return Err(format!("partition {id} ({}) is not running", w.spec.name));
        }
        let name = w.spec.name.clone();
        let controls = self.integration(id)?;
        let status = controls.shutdown();
        if status.service.phase.versions().is_none() {
            return Err(format!(
                "partition {id} ({name}) has not negotiated the shutdown service (its driver is not loaded): nothing sent"
            ));
        }
        let reason = if reboot {
            "restart requested by the host"
        } else {
            "shutdown requested by the host"
        };
        controls
            .request_shutdown(reboot, reason)
            .map_err(|e| format!("partition {id} ({name}): {e}"))?;
        let deadline = crate::timer::ticks() + SHUTDOWN_TIMEOUT_TICKS;
        let reboots_before = self.get(id)?.guest_reboots;
        self.shutdowns.retain(|p| p.id != id);
        self.shutdowns.push(PendingShutdown {
            id,
            deadline,
            reboot,
            reboots_before,
        });
        Ok(format!(
            "partition {id} ({name}): {} requested through the shutdown service",
            if reboot { "restart" } else { "shutdown" }
        ))
    }

    /// Timed work, once per root tick: devices' clocks (negotiation,
    /// heartbeats, timeouts) and shutdowns that ran out of time.
    pub fn tick(&mut self) {
        let now = crate::timer::ticks();
        if now == self.last_device_tick {
            return;
        }
        self.last_device_tick = now;
        let now_ns = now * (1_000_000_000 / crate::timer::HZ);
        for w in self.workers.iter_mut() {
            w.tick_devices(now_ns);
        }
        // The guests' KVP pools are read every few seconds, so `kvp ID`
        // shows them without waiting (as Hyper-V keeps guest intrinsic data).
        if now.is_multiple_of(KVP_REFRESH_TICKS) {
            for (_, c) in &self.integration {
                crate::integration::refresh_kvp(c);
            }
        }
        // Every (re)start gets the host's time once (it goes out when the
        // child has negotiated time sync), as Hyper-V does at boot.
        for w in self
            .workers
            .iter()
            .filter(|w| w.state == mgmt::lifecycle::ChildState::Running)
        {
            let key = (w.id, w.started_at());
            if self.time_pushed.contains(&key) {
                continue;
            }
            self.time_pushed.retain(|(id, _)| *id != w.id);
            self.time_pushed.push(key);
            if let Some((_, c)) = self.integration.iter().find(|(id, _)| *id == w.id) {
                let _ = crate::integration::push_time(c, w.id);
            }
        }
        let workers = &self.workers;
        self.shutdowns.retain(|p| {
            let Some(w) = workers.iter().find(|w| w.id == p.id) else {
                return false;
            };
            let done = if p.reboot {
                w.guest_reboots > p.reboots_before || w.state != mgmt::lifecycle::ChildState::Running
            } else {
                w.state != mgmt::lifecycle::ChildState::Running
            };
            if done {
                return false;
            }
            if now < p.deadline {
                return true;
            }
            crate::println!(
                "\nroot: partition {} ({}) did not {} within {} s of the shutdown request; it is still running",
                p.id,
                w.spec.name,
                if p.reboot { "restart" } else { "power off" },
                SHUTDOWN_TIMEOUT_TICKS / crate::timer::HZ
            );
            false
        });
    }

    /// Move frames between the children's NICs and the switch: each NIC
    /// becomes a port when first seen, what its guest sent goes in, what
    /// the switch queued for it goes out, a bounded number per round.
    pub fn pump_network(&mut self) {
        let now = crate::timer::now_ms();
        for w in self.workers.iter_mut() {
            for (relid, mac) in w.nics() {
                let key = (w.id, relid);
                let port = match self.nic_ports.iter().find(|(k, _)| *k == key) {
                    Some((_, p)) => *p,
                    None => {
                        let name = format!("{}-{relid}", w.spec.name);
                        let config = vswitch::PortConfig::child_nic(&name, vswitch::MacAddr(mac));
                        match self.switch.add_port(config) {
                            Ok(p) => {
                                self.nic_ports.push((key, p));
                                p
                            }
                            Err(_) => continue,
                        }
                    }
                };
                let switch = &mut self.switch;
                let network = &mut self.network;
                // Taking the guest's frames gives it nothing: no wake.
                w.with_nic(relid, |nic| {
                    for _ in 0..FRAMES_PER_ROUND {
                        let Some(frame) = nic.take_tx() else { break };
                        network.snoop(port, mac, &frame);
                        // Drops are the switch's to count (per port).
                        let _ = switch.ingress(port, &frame, now);
                    }
                    ((), false)
                });
            }
        }
        // The uplink and the root's own interface.
        self.network.pump(&mut self.switch, now);
        for &((id, relid), port) in &self.nic_ports {
            let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
                continue;
            };
            let switch = &self.switch;
            w.with_nic(relid, |nic| {
                let mut delivered = false;
                for _ in 0..FRAMES_PER_ROUND {
                    let Some(frame) = switch.egress(port) else { break };
                    delivered |= nic.deliver_rx(frame.as_bytes());
                }
                ((), delivered)
            });
        }
    }

    /// Start `net ping`: resolve the target (a child's announced address, or
    /// an address) and start the echo session on the root's interface.
    /// Returns the header line to print.
    pub fn start_ping(&mut self, target: mgmt::cli::PingTarget, count: u16) -> Result<String, String> {
        let (ip, who) = match target {
            mgmt::cli::PingTarget::Address(a) => (core::net::Ipv4Addr::from(a), String::new()),
            mgmt::cli::PingTarget::Partition(id) => {
                let w = self.get(id)?;
                let name = w.spec.name.clone();
                let ports: Vec<vswitch::PortId> = self
                    .nic_ports
                    .iter()
                    .filter(|(k, _)| k.0 == id)
                    .map(|(_, p)| *p)
                    .collect();
                if ports.is_empty() {
                    return Err(format!(
                        "partition {id} ({name}) has no NIC on the switch (create it with --nic)"
                    ));
                }
                let ip = ports
                    .iter()
                    .find_map(|p| self.network.address_of(*p))
                    .ok_or_else(|| {
                        format!(
                            "partition {id} ({name}) has not announced an IPv4 address (no ARP from its NIC yet): give its interface an address and try again"
                        )
                    })?;
                (ip, format!(" (partition {id}, {name})"))
            }
        };
        let Some((stack, _)) = &mut self.network.stack else {
            return Err(format!(
                "the root has no IP interface: {}",
                self.network.stack_error.as_deref().unwrap_or("unknown reason")
            ));
        };
        stack
            .ping(ip, count, PING_INTERVAL_MS, PING_TIMEOUT_MS)
            .map_err(|e| format!("ping {ip}: {e}"))?;
        Ok(format!("PING {ip}{who}: {count} echo requests"))
    }

    /// End the running `net ping` now.
    pub fn cancel_ping(&mut self) {
        if let Some((stack, _)) = &mut self.network.stack {
            stack.cancel_ping();
        }
    }

    /// The running or last `net ping`.
    pub fn ping_report(&self) -> Option<rootnet::PingReport> {
        self.network.stack.as_ref().and_then(|(s, _)| s.ping_status())
    }

    /// Give every channel that has work one budgeted turn.
    pub fn poll_channels(&mut self) {
        for w in self.workers.iter_mut() {
            w.poll_channels();
        }
    }

    /// Mark the channels whose event flags were set as wanting a poll. Flag
    /// `block * 128 + relid` belongs to the worker holding event block
    /// `block` (see `worker::channel_flag`); a flag nobody owns is ignored.
    pub fn route_events(&mut self, flags: &[u64]) {
        for (word, &bits) in flags.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                let flag = word as u32 * 64 + bits.trailing_zeros();
                bits &= bits - 1;
                let (block, relid) = crate::worker::flag_owner(flag);
                if let Some(w) = self.workers.iter_mut().find(|w| w.event_block == block) {
                    w.note_signal(relid);
                }
            }
        }
    }

    /// The lowest event block no worker holds.
    fn free_event_block(&self) -> Option<u32> {
        (0..crate::worker::EVENT_BLOCKS).find(|b| self.workers.iter().all(|w| w.event_block != *b))
    }

    /// A SynIC message for the root: to the worker whose port it came in on.
    pub fn on_message(&mut self, m: &hv1_abi::message::Message) {
        let owner = crate::worker::partition_of_port(m.header.sender);
        match owner.and_then(|(id, conn)| Some((self.workers.iter_mut().find(|w| w.id == id)?, conn))) {
            Some((w, connection)) => w.on_message(connection, m),
            None => crate::println!(
                "root: SynIC message on port {:#x} with no partition behind it (type {})",
                m.header.sender,
                m.header.message_type
            ),
        }
    }

    /// The images `create --image` can boot: (name, bytes).
    pub fn images(&self) -> &[(&'static str, &'static [u8])] {
        &self.images
    }

    /// Image names, for error messages.
    pub fn image_names(&self) -> String {
        let names: Vec<&str> = self.images.iter().map(|(n, _)| *n).collect();
        names.join(", ")
    }

    /// The worker for `id`.
    pub fn get(&self, id: u64) -> Result<&Worker, String> {
        self.workers
            .iter()
            .find(|w| w.id == id)
            .ok_or_else(|| no_such(id))
    }

    /// A child's worker, for commands that change it.
    pub fn worker_mut(&mut self, id: u64) -> Result<&mut Worker, String> {
        self.get_mut(id)
    }

    fn get_mut(&mut self, id: u64) -> Result<&mut Worker, String> {
        self.workers
            .iter_mut()
            .find(|w| w.id == id)
            .ok_or_else(|| no_such(id))
    }

    /// Build a child (and start it if asked); returns its id.
    pub fn create(&mut self, spec: CreateSpec, start: bool) -> Result<u64, String> {
        if self.workers.iter().any(|w| w.spec.name == spec.name) || spec.name == "root" {
            return Err(format!("a partition named '{}' already exists", spec.name));
        }
        let images = &self.images;
        let find = |name: &str| images.iter().find(|(n, _)| *n == name).map(|(_, i)| *i);
        let image = crate::loader::ChildImage::resolve(&spec, find)
            .map_err(|e| format!("{e} (bundle has: {})", self.image_names()))?;
        let targets = self.targets(&spec);
        let block = self
            .free_event_block()
            .ok_or_else(|| format!("at most {} child partitions", crate::worker::EVENT_BLOCKS))?;
        let disk = match &spec.disk {
            Some(name) => Some(self.storage.claim(name)?),
            None => None,
        };
        let disk_name = spec.disk.clone();
        let devices = crate::catalog::for_child(&spec, crate::timer::ticks() ^ u64::from(block) << 32, disk)?;
        let mut w =
            Worker::create(spec, image, devices.devices, targets, block).map_err(|e| format!("{e}"))?;
        if start && let Err(e) = w.start() {
            w.destroy();
            return Err(format!("{e}"));
        }
        let id = w.id;
        if let Some(name) = disk_name {
            self.storage.record(&name, id);
        }
        self.integration.push((id, devices.integration));
        self.workers.push(w);
        self.workers.sort_by_key(|w| w.id);
        Ok(id)
    }

    /// Addresses a hostile child aims at: hv-core's region, a root canary
    /// page, the highest page of the first other child, device MMIO.
    fn targets(&self, spec: &CreateSpec) -> [u64; 4] {
        let mut t = [0u64; 4];
        t[target::HV_CORE] = self.hv_region.base + self.hv_region.size / 2;
        t[target::ROOT] = self.canary;
        // The first child's highest page (its lowest id: `alpha` by default).
        t[target::PEER] = self.workers.first().map_or(0, |w| w.frame_span().1);
        // A real device of the root's: the AMD IOMMU's registers (a child's
        // local APIC page is its own, emulated by hv-core).
        t[target::MMIO] = 0xFED8_0000;
        // Targets inside the child's own GPA range would hit its own memory.
        for x in t.iter_mut() {
            if *x < spec.memory {
                *x = 0;
            }
        }
        t
    }

    /// Apply a lifecycle command; returns what to print.
    pub fn apply(&mut self, id: u64, action: Action) -> Result<String, String> {
        if id == hv1_abi::ROOT_PARTITION_ID {
            return Err(format!(
                "partition {id} is the root: it cannot be {}ed from its own shell",
                action.name()
            ));
        }
        let w = self.get_mut(id)?;
        let next = lifecycle::transition(w.state, action).map_err(|r| {
            format!(
                "cannot {} partition {id} ({}): {}",
                action.name(),
                w.spec.name,
                r.reason
            )
        })?;
        let name = w.spec.name.clone();
        match (action, next) {
            (Action::Destroy, _) => {
                let pos = self.workers.iter().position(|w| w.id == id).expect("found above");
                let mut w = self.workers.remove(pos);
                w.destroy();
                self.integration.retain(|(i, _)| *i != id);
                self.shutdowns.retain(|p| p.id != id);
                for (_, port) in self.nic_ports.iter().filter(|(k, _)| k.0 == id) {
                    let _ = self.switch.remove_port(*port);
                    self.network.forget(*port);
                }
                self.nic_ports.retain(|(k, _)| k.0 != id);
                self.time_pushed.retain(|(i, _)| *i != id);
                let disk = self.storage.disk_of(id).map(String::from);
                self.storage.detach(id);
                Ok(format!(
                    "partition {id} ({name}) destroyed; its memory is back with the root{}",
                    disk.map(|d| format!("; disk '{d}' keeps its data"))
                        .unwrap_or_default()
                ))
            }
            (Action::Start, _) => {
                w.start().map_err(|e| format!("start failed: {e}"))?;
                Ok(format!("partition {id} ({name}) started"))
            }
            (Action::Pause, _) => {
                w.set_paused(true).map_err(|e| format!("{e}"))?;
                Ok(format!("partition {id} ({name}) paused"))
            }
            (Action::Resume, _) => {
                w.set_paused(false).map_err(|e| format!("{e}"))?;
                Ok(format!("partition {id} ({name}) resumed"))
            }
            (Action::Stop, _) => {
                w.stop();
                Ok(format!("partition {id} ({name}) stopped"))
            }
        }
    }

    /// Give the children one timer tick: dispatch runnable VPs round-robin
    /// until the tick ends (each dispatch returns at the next intercept or
    /// timer interrupt). Returns false if nothing was runnable.
    pub fn run_children_for_a_tick(&mut self, seen: Wakeups) -> bool {
        let start = crate::timer::ticks();
        // Messages children had no room for get another try each tick.
        for w in self.workers.iter_mut() {
            w.flush_outbox();
        }
        let mut ran = false;
        // The tick ends early when a SynIC interrupt arrived since the main
        // loop read the messages, or a device's completion interrupt since
        // it polled the channels (a DMA a channel awaits has ended, maybe
        // before the first dispatch here: the child it would wake may spin
        // on it, and no later interrupt would end that dispatch before the
        // tick): the main loop serves them before running children again.
        while crate::timer::ticks() == start && Wakeups::now() == seen {
            if !self.schedule_one() {
                break;
            }
            ran = true;
            // A channel to poll now (a budget cut, or DMA on a device that
            // does not interrupt): back to the main loop after each
            // dispatch rather than at the tick.
            if self.channels_want_poll() {
                break;
            }
        }
        ran
    }

    /// Whether some child's channel wants a poll without a signal.
    pub fn channels_want_poll(&self) -> bool {
        self.workers.iter().any(|w| w.channels_want_poll())
    }

    /// Whether some child's channel waits for its device's completion
    /// interrupt.
    pub fn channels_await_device(&self) -> bool {
        self.workers.iter().any(|w| w.channels_await_device())
    }

    /// Dispatch the next runnable VP after the last one (round-robin by
    /// (partition, VP)). Returns false if nothing is runnable.
    fn schedule_one(&mut self) -> bool {
        let mut first: Option<(usize, u32)> = None;
        let mut next: Option<(usize, u32)> = None;
        for (i, w) in self.workers.iter().enumerate() {
            for vp in w.runnable_vps() {
                if first.is_none() {
                    first = Some((i, vp));
                }
                if next.is_none() && (w.id, vp) > self.last {
                    next = Some((i, vp));
                }
            }
        }
        let Some((i, vp)) = next.or(first) else {
            return false;
        };
        let w = &mut self.workers[i];
        self.last = (w.id, vp);
        self.dispatches += 1;
        let _: Slice = w.run_slice(vp);
        true
    }
}

fn no_such(id: u64) -> String {
    format!("no partition {id} (see 'list')")
}

/// The root's interrupt counts that bring work for its main loop: SynIC
/// interrupts (messages, child signals) and device completions. The loop
/// takes them before it looks for that work; a count that moved since
/// means work arrived after the look.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Wakeups {
    /// `synic::interrupts()`.
    pub synic: u64,
    /// `disk::completion_interrupts()`.
    pub completions: u64,
}

impl Wakeups {
    /// The counts now.
    pub fn now() -> Self {
        Self {
            synic: crate::synic::interrupts(),
            completions: crate::disk::completion_interrupts(),
        }
    }
}
