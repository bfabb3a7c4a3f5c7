//! The switch: ports, learning, forwarding and flooding.

use alloc::vec::Vec;
use core::fmt;

use crate::frame::{ETH_HEADER_LEN, header};
use crate::port::{Port, valid_name};
use crate::table::{Learned, Lookup, MacTable};
use crate::{EgressQueue, Frame, MacAddr, PortConfig, PortCounters, PortId};

/// Learned entries past their age that one ingress removes, oldest first, besides the
/// destination lookup's own check; keeps the table clean without a timer and bounds the work.
const EXPIRE_PER_INGRESS: usize = 2;

/// Switch-wide limits. The memory the switch can pin in queued frames is at most
/// `max_ports × max_queue_depth × max_frame_size` bytes (frames are shared between the ports a
/// flood reaches, so usually far less).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Most ports at once (at least 1).
    pub max_ports: usize,
    /// Longest frame accepted, in bytes, Ethernet header included and FCS excluded
    /// (at least 14, at most 65 535). Shorter than 14 or longer than this is dropped.
    pub max_frame_size: usize,
    /// Largest [`PortConfig::queue_depth`] accepted (at least 1).
    pub max_queue_depth: usize,
    /// Most learned MAC entries; learning a new one when full evicts the least recently seen.
    /// Ports' assigned MACs are extra (at most one per port). 0 disables learning: unicast to
    /// an address that is no port's assigned MAC is then always flooded.
    pub mac_table_capacity: usize,
    /// How long a learned entry lives without a frame from its address, in the units of the
    /// `now` the caller passes (an entry seen at `t` is gone once `now > t + mac_max_age`).
    /// `u64::MAX` disables aging.
    pub mac_max_age: u64,
}

impl Default for Config {
    /// 64 ports, 1518-byte frames (1500-byte MTU plus header and one VLAN tag), queues of up to
    /// 1024 frames, 1024 learned MACs aged out after 300 000 ticks (300 s with a millisecond
    /// clock, the usual bridge default).
    fn default() -> Self {
        Self {
            max_ports: 64,
            max_frame_size: 1518,
            max_queue_depth: 1024,
            mac_table_capacity: 1024,
            mac_max_age: 300_000,
        }
    }
}

/// Largest `max_frame_size` accepted.
pub const MAX_FRAME_SIZE_LIMIT: usize = 65_535;

/// Why the switch refused an operation or dropped a frame. The frame-drop variants
/// ([`is_frame_drop`](Self::is_frame_drop)) have already been counted when returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchError {
    /// A [`Config`] field is out of range.
    InvalidConfig {
        /// The field's name.
        field: &'static str,
    },
    /// The switch already has `max` ports.
    TooManyPorts {
        /// [`Config::max_ports`].
        max: usize,
    },
    /// Every port id has been used (ids are never reused).
    PortIdsExhausted,
    /// No port has this id (counted in [`SwitchCounters::ingress_no_such_port`] on ingress).
    NoSuchPort(PortId),
    /// The port name is empty, too long or not printable ASCII without spaces.
    InvalidName,
    /// Another port already has this name.
    DuplicateName,
    /// The assigned MAC is multicast or zero.
    InvalidPortMac(MacAddr),
    /// Another port already has this assigned MAC.
    DuplicateMac(MacAddr),
    /// `enforce_source_mac` was asked for a port without an assigned MAC.
    EnforceWithoutMac,
    /// The queue depth is 0 or above [`Config::max_queue_depth`].
    InvalidQueueDepth {
        /// The depth asked for.
        depth: usize,
        /// The largest accepted.
        max: usize,
    },
    /// Frame dropped: shorter than an Ethernet header or longer than the maximum frame size.
    BadFrameSize {
        /// The frame's length.
        len: usize,
        /// The shortest frame accepted.
        min: usize,
        /// The longest frame accepted.
        max: usize,
    },
    /// Frame dropped: its source MAC is multicast or zero.
    InvalidSource(MacAddr),
    /// Frame dropped: the port enforces its assigned MAC and the source differs.
    SpoofedSource {
        /// The frame's source MAC.
        source: MacAddr,
        /// The port's assigned MAC.
        assigned: MacAddr,
    },
}

impl SwitchError {
    /// Whether this reports a dropped ingress frame (bad size, invalid or spoofed source) rather
    /// than a refused request.
    pub const fn is_frame_drop(&self) -> bool {
        matches!(
            self,
            Self::BadFrameSize { .. } | Self::InvalidSource(_) | Self::SpoofedSource { .. }
        )
    }
}

impl fmt::Display for SwitchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidConfig { field } => write!(f, "switch configuration: {field} is out of range"),
            Self::TooManyPorts { max } => write!(f, "the switch already has its maximum of {max} ports"),
            Self::PortIdsExhausted => f.write_str("every port id has been used"),
            Self::NoSuchPort(id) => write!(f, "no switch port {id}"),
            Self::InvalidName => write!(
                f,
                "a port name is 1 to {} bytes of printable ASCII without spaces",
                crate::MAX_NAME_LEN
            ),
            Self::DuplicateName => f.write_str("another port has this name"),
            Self::InvalidPortMac(mac) => write!(f, "{mac} is not a station address (multicast or zero)"),
            Self::DuplicateMac(mac) => write!(f, "another port is assigned {mac}"),
            Self::EnforceWithoutMac => f.write_str("source MAC enforcement needs an assigned MAC"),
            Self::InvalidQueueDepth { depth, max } => {
                write!(f, "queue depth {depth} is outside 1..={max}")
            }
            Self::BadFrameSize { len, min, max } => {
                write!(f, "frame of {len} bytes dropped (accepted: {min}..={max})")
            }
            Self::InvalidSource(mac) => write!(f, "frame with source {mac} dropped (multicast or zero)"),
            Self::SpoofedSource { source, assigned } => {
                write!(
                    f,
                    "frame with source {source} dropped (port is assigned {assigned})"
                )
            }
        }
    }
}

impl core::error::Error for SwitchError {}

/// Why a frame went to every port but the one it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodReason {
    /// Destination `ff:ff:ff:ff:ff:ff`.
    Broadcast,
    /// Another group address.
    Multicast,
    /// A unicast address not in the MAC table (never seen, or aged out).
    UnknownUnicast,
}

/// Where the switch sent a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// To the one port the destination is assigned to or was learned on.
    Unicast(PortId),
    /// To every other port.
    Flood(FloodReason),
    /// Nowhere: the destination is on the port the frame came from (never reflected).
    Filtered,
}

/// What one accepted ingress frame did. Every port it was forwarded to either queued a copy
/// (`queued`) or dropped it because its queue was full (`queue_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The forwarding decision.
    pub forward: Forward,
    /// Ports whose queue took a copy.
    pub queued: usize,
    /// Ports the frame was forwarded to whose queue was full (counted there as
    /// [`PortCounters::drop_queue_full`]).
    pub queue_full: usize,
}

impl Delivery {
    /// How many ports the frame reached (queued on).
    pub const fn reached(&self) -> usize {
        self.queued
    }

    /// How many ports the frame was forwarded to, reached or not.
    pub const fn targets(&self) -> usize {
        self.queued + self.queue_full
    }
}

/// Switch-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Ingress calls naming a port that does not exist (the frame is dropped).
    pub ingress_no_such_port: u64,
    /// Accepted frames forwarded to one learned or assigned port.
    pub unicast: u64,
    /// Accepted frames flooded because the destination was broadcast.
    pub flooded_broadcast: u64,
    /// Accepted frames flooded because the destination was multicast.
    pub flooded_multicast: u64,
    /// Accepted frames flooded because the unicast destination was unknown.
    pub flooded_unknown: u64,
    /// Accepted frames not forwarded because the destination is on the ingress port.
    pub filtered: u64,
    /// MAC addresses learned (new entries).
    pub macs_learned: u64,
    /// Learned MAC addresses that moved to another port.
    pub macs_moved: u64,
    /// Learned entries evicted to make room for a new one.
    pub macs_evicted: u64,
    /// Learned entries removed because they aged out.
    pub macs_aged: u64,
    /// Frames whose source is another port's assigned MAC (forwarded, not learned).
    pub mac_conflicts: u64,
    /// Queued frames dropped because their port was removed.
    pub dropped_on_removal: u64,
}

/// What [`Switch::remove_port`] took away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedPort {
    /// The port's configuration.
    pub config: PortConfig,
    /// Its final counters.
    pub counters: PortCounters,
    /// Queued frames dropped.
    pub dropped_frames: usize,
    /// MAC table entries (assigned and learned) forgotten.
    pub forgotten_macs: usize,
}

/// A learning L2 switch.
///
/// Frames enter with [`ingress`](Self::ingress) (which learns the source, decides where the
/// frame goes and queues a copy on each target port's bounded egress queue) and leave with
/// [`egress`](Self::egress) or an [`EgressQueue`] handle. Nothing blocks: a full queue drops
/// the frame for that port only. The clock is the caller's: every call that ages the MAC table
/// takes `now` in the same units as [`Config::mac_max_age`].
#[derive(Debug)]
pub struct Switch {
    config: Config,
    /// Sorted by id (ids only grow, so pushing keeps the order).
    ports: Vec<Port>,
    next_id: u32,
    table: MacTable,
    counters: SwitchCounters,
}

impl Switch {
    /// A switch with no ports.
    pub fn new(config: Config) -> Result<Self, SwitchError> {
        if config.max_ports == 0 {
            return Err(SwitchError::InvalidConfig { field: "max_ports" });
        }
        if !(ETH_HEADER_LEN..=MAX_FRAME_SIZE_LIMIT).contains(&config.max_frame_size) {
            return Err(SwitchError::InvalidConfig {
                field: "max_frame_size",
            });
        }
        if config.max_queue_depth == 0 {
            return Err(SwitchError::InvalidConfig {
                field: "max_queue_depth",
            });
        }
        Ok(Self {
            config,
            ports: Vec::new(),
            next_id: 1,
            table: MacTable::new(config.mac_table_capacity, config.mac_max_age),
            counters: SwitchCounters::default(),
        })
    }

    /// The switch's limits.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn index_of(&self, id: PortId) -> Option<usize> {
        self.ports.binary_search_by_key(&id, |p| p.id).ok()
    }

    fn port(&self, id: PortId) -> Option<&Port> {
        self.index_of(id).map(|i| &self.ports[i])
    }

    /// Adds a port; its assigned MAC, if any, becomes a static MAC table entry.
    pub fn add_port(&mut self, config: PortConfig) -> Result<PortId, SwitchError> {
        if self.ports.len() >= self.config.max_ports {
            return Err(SwitchError::TooManyPorts {
                max: self.config.max_ports,
            });
        }
        if !valid_name(&config.name) {
            return Err(SwitchError::InvalidName);
        }
        if self.ports.iter().any(|p| p.config.name == config.name) {
            return Err(SwitchError::DuplicateName);
        }
        if let Some(mac) = config.mac {
            if !mac.is_valid_station() {
                return Err(SwitchError::InvalidPortMac(mac));
            }
            if self.ports.iter().any(|p| p.config.mac == Some(mac)) {
                return Err(SwitchError::DuplicateMac(mac));
            }
        } else if config.enforce_source_mac {
            return Err(SwitchError::EnforceWithoutMac);
        }
        if config.queue_depth == 0 || config.queue_depth > self.config.max_queue_depth {
            return Err(SwitchError::InvalidQueueDepth {
                depth: config.queue_depth,
                max: self.config.max_queue_depth,
            });
        }
        let id = PortId(self.next_id);
        self.next_id = self.next_id.checked_add(1).ok_or(SwitchError::PortIdsExhausted)?;
        if let Some(mac) = config.mac {
            self.table.insert_static(mac, id);
        }
        let queue = EgressQueue::new(id, config.queue_depth);
        self.ports.push(Port {
            id,
            config,
            queue,
            counters: PortCounters::default(),
        });
        Ok(id)
    }

    /// Removes a port: its MAC table entries (assigned and learned) are forgotten and its queued
    /// frames dropped; [`EgressQueue`] handles on it see an empty, removed queue.
    pub fn remove_port(&mut self, id: PortId) -> Result<RemovedPort, SwitchError> {
        let index = self.index_of(id).ok_or(SwitchError::NoSuchPort(id))?;
        let port = self.ports.remove(index);
        let dropped_frames = port.queue.close();
        self.counters.dropped_on_removal += dropped_frames as u64;
        let forgotten_macs = self.table.forget_port(id);
        Ok(RemovedPort {
            config: port.config,
            counters: port.counters,
            dropped_frames,
            forgotten_macs,
        })
    }

    /// Switches a frame that arrived on `port` at time `now`; see
    /// [`ingress_notify`](Self::ingress_notify).
    pub fn ingress(&mut self, port: PortId, frame: &[u8], now: u64) -> Result<Delivery, SwitchError> {
        self.ingress_notify(port, frame, now, |_| {})
    }

    /// Switches a frame that arrived on `port` at time `now`, calling `notify` with each port
    /// that queued a copy (to kick its consumer).
    ///
    /// The frame is dropped and counted on `port`, with an error saying why, when it is shorter
    /// than 14 bytes or longer than [`Config::max_frame_size`], when its source MAC is multicast
    /// or zero, or when the port enforces its assigned MAC and the source differs. Otherwise its
    /// source is learned on `port` (unless it is another port's assigned MAC) and it goes to the
    /// port its destination is assigned to or learned on, or to every other port for
    /// broadcast, multicast and unknown unicast, never back to `port`. The bytes are copied
    /// once, only if some queue takes them. Work is O(ports) plus O(log n) in the MAC table.
    pub fn ingress_notify(
        &mut self,
        port: PortId,
        frame: &[u8],
        now: u64,
        mut notify: impl FnMut(PortId),
    ) -> Result<Delivery, SwitchError> {
        let Some(index) = self.index_of(port) else {
            self.counters.ingress_no_such_port += 1;
            return Err(SwitchError::NoSuchPort(port));
        };
        let max = self.config.max_frame_size;
        let ingress = &mut self.ports[index];
        let len = frame.len();
        let Some((dst, src)) = header(frame).filter(|_| len <= max) else {
            ingress.counters.drop_bad_size += 1;
            return Err(SwitchError::BadFrameSize {
                len,
                min: ETH_HEADER_LEN,
                max,
            });
        };
        if !src.is_valid_station() {
            ingress.counters.drop_invalid_source += 1;
            return Err(SwitchError::InvalidSource(src));
        }
        if ingress.config.enforce_source_mac
            && let Some(assigned) = ingress.config.mac
            && src != assigned
        {
            ingress.counters.drop_spoofed_source += 1;
            return Err(SwitchError::SpoofedSource {
                source: src,
                assigned,
            });
        }
        ingress.counters.rx_frames += 1;
        ingress.counters.rx_bytes += len as u64;

        self.counters.macs_aged += self.table.expire(now, EXPIRE_PER_INGRESS) as u64;
        match self.table.learn(src, port, now) {
            Learned::New { evicted } => {
                self.counters.macs_learned += 1;
                self.counters.macs_evicted += u64::from(evicted);
            }
            Learned::Moved => self.counters.macs_moved += 1,
            Learned::StaticConflict => self.counters.mac_conflicts += 1,
            Learned::Refreshed | Learned::Disabled => {}
        }

        let mut forward = if dst.is_broadcast() {
            Forward::Flood(FloodReason::Broadcast)
        } else if dst.is_multicast() {
            Forward::Flood(FloodReason::Multicast)
        } else {
            match self.table.lookup(dst, now) {
                Lookup::Found(p) if p == port => Forward::Filtered,
                Lookup::Found(p) => Forward::Unicast(p),
                Lookup::Expired => {
                    self.counters.macs_aged += 1;
                    Forward::Flood(FloodReason::UnknownUnicast)
                }
                Lookup::Unknown => Forward::Flood(FloodReason::UnknownUnicast),
            }
        };
        if let Forward::Unicast(p) = forward
            && self.index_of(p).is_none()
        {
            // Removing a port forgets its entries, so this cannot happen; flood rather than lose
            // the frame if it ever does.
            debug_assert!(false, "MAC table points at removed port {p}");
            forward = Forward::Flood(FloodReason::UnknownUnicast);
        }

        let mut delivery = Delivery {
            forward,
            queued: 0,
            queue_full: 0,
        };
        let mut copy: Option<Frame> = None;
        let mut deliver = |target: &mut Port| {
            // Only this `&mut self` pushes, so a queue that is not full now takes the frame.
            if target.queue.capacity() <= target.queue.len() {
                target.counters.drop_queue_full += 1;
                delivery.queue_full += 1;
                return;
            }
            let shared = copy.get_or_insert_with(|| Frame::copy_from(frame)).clone();
            match target.queue.push(shared) {
                Ok(()) => {
                    target.counters.tx_frames += 1;
                    target.counters.tx_bytes += len as u64;
                    delivery.queued += 1;
                    notify(target.id);
                }
                Err(_) => {
                    target.counters.drop_queue_full += 1;
                    delivery.queue_full += 1;
                }
            }
        };
        match forward {
            Forward::Filtered => self.counters.filtered += 1,
            Forward::Unicast(p) => {
                self.counters.unicast += 1;
                if let Some(i) = self.index_of(p) {
                    deliver(&mut self.ports[i]);
                }
            }
            Forward::Flood(reason) => {
                match reason {
                    FloodReason::Broadcast => self.counters.flooded_broadcast += 1,
                    FloodReason::Multicast => self.counters.flooded_multicast += 1,
                    FloodReason::UnknownUnicast => self.counters.flooded_unknown += 1,
                }
                self.ports
                    .iter_mut()
                    .filter(|p| p.id != port)
                    .for_each(&mut deliver);
            }
        }
        Ok(delivery)
    }

    /// The next frame queued for `port`, oldest first; `None` when its queue is empty or no
    /// such port exists.
    pub fn egress(&self, port: PortId) -> Option<Frame> {
        self.port(port)?.queue.pop()
    }

    /// A handle on `port`'s egress queue that can be drained without the switch.
    pub fn egress_queue(&self, port: PortId) -> Option<EgressQueue> {
        Some(self.port(port)?.queue.clone())
    }

    /// Removes every learned MAC entry that has aged out at `now`; returns how many. Call it
    /// from a periodic timer (ingress also expires a few entries each time).
    pub fn expire(&mut self, now: u64) -> usize {
        let removed = self.table.expire(now, usize::MAX);
        self.counters.macs_aged += removed as u64;
        removed
    }

    /// The port frames to `mac` go to at `now` (assigned or learned and not aged out), without
    /// changing the table.
    pub fn lookup_mac(&self, mac: MacAddr, now: u64) -> Option<PortId> {
        self.table.peek(mac, now)
    }

    /// The ports, in id order.
    pub fn port_ids(&self) -> impl Iterator<Item = PortId> + '_ {
        self.ports.iter().map(|p| p.id)
    }

    /// Number of ports.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// A port's configuration.
    pub fn port_config(&self, port: PortId) -> Option<&PortConfig> {
        Some(&self.port(port)?.config)
    }

    /// A port's counters.
    pub fn port_counters(&self, port: PortId) -> Option<PortCounters> {
        Some(self.port(port)?.counters)
    }

    /// Frames waiting in a port's egress queue.
    pub fn queued(&self, port: PortId) -> Option<usize> {
        Some(self.port(port)?.queue.len())
    }

    /// The switch-wide counters.
    pub fn counters(&self) -> SwitchCounters {
        self.counters
    }

    /// MAC table entries: every port's assigned MAC plus learned ones (expired entries that
    /// have not been removed yet included).
    pub fn mac_table_len(&self) -> usize {
        self.table.len()
    }

    /// Learned MAC table entries (at most [`Config::mac_table_capacity`]).
    pub fn learned_mac_count(&self) -> usize {
        self.table.learned_len()
    }

    pub(crate) fn ports_internal(&self) -> &[Port] {
        &self.ports
    }

    pub(crate) fn table(&self) -> &MacTable {
        &self.table
    }
}
