//! Ports: identity, configuration, counters and the bounded egress queue.

use alloc::string::String;
use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::ArrayQueue;

use crate::{Frame, MacAddr};

/// A port's identity. Ids are handed out in increasing order and never reused, so a stale id
/// names no port rather than a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What sits behind a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortKind {
    /// A child partition's synthetic NIC (netvsp).
    ChildNic,
    /// The root partition's own IP stack.
    RootHost,
    /// The uplink to the root's passthrough NIC (the outside network).
    Uplink,
}

impl PortKind {
    /// A short lower-case name for listings: `child-nic`, `root-host`, `uplink`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ChildNic => "child-nic",
            Self::RootHost => "root-host",
            Self::Uplink => "uplink",
        }
    }
}

impl fmt::Display for PortKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Default egress queue depth of a port, in frames.
pub const DEFAULT_QUEUE_DEPTH: usize = 256;

/// Longest port name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// How to create a port ([`Switch::add_port`](crate::Switch::add_port)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// What sits behind the port.
    pub kind: PortKind,
    /// A name for listings: 1 to [`MAX_NAME_LEN`] bytes of printable ASCII without spaces,
    /// unique among the switch's ports.
    pub name: String,
    /// The MAC the root assigned to the port, if any. It becomes a static entry of the MAC
    /// table (frames to it reach this port without learning; never aged or evicted) and must
    /// be a station address (not multicast, not zero) no other port has.
    pub mac: Option<MacAddr>,
    /// Drop (and count) frames whose source MAC is not [`mac`](Self::mac): MAC spoofing
    /// protection. Requires `mac`.
    pub enforce_source_mac: bool,
    /// Capacity of the port's egress queue in frames: at least 1 and at most
    /// [`Config::max_queue_depth`](crate::Config::max_queue_depth).
    pub queue_depth: usize,
}

impl PortConfig {
    /// A child's synthetic NIC with its root-assigned MAC and spoofing protection on (Hyper-V's
    /// default).
    pub fn child_nic(name: impl Into<String>, mac: MacAddr) -> Self {
        Self {
            kind: PortKind::ChildNic,
            name: name.into(),
            mac: Some(mac),
            enforce_source_mac: true,
            queue_depth: DEFAULT_QUEUE_DEPTH,
        }
    }

    /// The root's own IP stack with its MAC; the root is trusted, so no source check.
    pub fn root_host(name: impl Into<String>, mac: MacAddr) -> Self {
        Self {
            kind: PortKind::RootHost,
            name: name.into(),
            mac: Some(mac),
            enforce_source_mac: false,
            queue_depth: DEFAULT_QUEUE_DEPTH,
        }
    }

    /// The uplink: many stations behind it, all learned; no assigned MAC, no source check.
    pub fn uplink(name: impl Into<String>) -> Self {
        Self {
            kind: PortKind::Uplink,
            name: name.into(),
            mac: None,
            enforce_source_mac: false,
            queue_depth: DEFAULT_QUEUE_DEPTH,
        }
    }

    /// The same configuration with another queue depth.
    pub fn with_queue_depth(mut self, depth: usize) -> Self {
        self.queue_depth = depth;
        self
    }

    /// The same configuration with spoofing protection switched on or off.
    pub fn with_enforce_source_mac(mut self, enforce: bool) -> Self {
        self.enforce_source_mac = enforce;
        self
    }
}

/// Whether `name` is an acceptable port name.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.bytes().all(|b| b.is_ascii_graphic())
}

/// A port's counters. Frames offered at ingress are either received (`rx_*`) or dropped for
/// exactly one of the `drop_bad_size`, `drop_invalid_source`, `drop_spoofed_source` reasons;
/// every copy the switch forwards to a port is either queued (`tx_*`) or `drop_queue_full`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames accepted from this port.
    pub rx_frames: u64,
    /// Bytes of the frames accepted from this port.
    pub rx_bytes: u64,
    /// Frames queued for this port (forwarded to it).
    pub tx_frames: u64,
    /// Bytes of the frames queued for this port.
    pub tx_bytes: u64,
    /// Frames for this port dropped because its egress queue was full.
    pub drop_queue_full: u64,
    /// Frames from this port dropped because the source MAC was not its assigned MAC.
    pub drop_spoofed_source: u64,
    /// Frames from this port dropped because the source MAC was multicast or zero.
    pub drop_invalid_source: u64,
    /// Frames from this port dropped because they were shorter than an Ethernet header or
    /// longer than the maximum frame size.
    pub drop_bad_size: u64,
}

impl PortCounters {
    /// Frames offered at ingress: received plus dropped at ingress.
    pub const fn offered(&self) -> u64 {
        self.rx_frames + self.drop_bad_size + self.drop_invalid_source + self.drop_spoofed_source
    }
}

/// The part of a port its consumer may hold on to: the queue and whether the port still exists.
#[derive(Debug)]
struct Shared {
    id: PortId,
    queue: ArrayQueue<Frame>,
    removed: AtomicBool,
}

/// A handle on a port's egress queue, for a consumer that drains it without holding the
/// switch (another CPU, an interrupt-driven transmit path). Cloning is cheap. Once the port
/// is removed the queue is emptied and [`pop`](Self::pop) returns `None` forever.
#[derive(Debug, Clone)]
pub struct EgressQueue(Arc<Shared>);

impl EgressQueue {
    pub(crate) fn new(id: PortId, depth: usize) -> Self {
        Self(Arc::new(Shared {
            id,
            queue: ArrayQueue::new(depth),
            removed: AtomicBool::new(false),
        }))
    }

    /// The port this queue belongs to.
    pub fn port(&self) -> PortId {
        self.0.id
    }

    /// The next frame for the port, oldest first.
    pub fn pop(&self) -> Option<Frame> {
        if self.is_removed() {
            return None;
        }
        self.0.queue.pop()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.0.queue.len()
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.0.queue.is_empty()
    }

    /// The most frames the queue holds.
    pub fn capacity(&self) -> usize {
        self.0.queue.capacity()
    }

    /// Whether the port has been removed from its switch.
    pub fn is_removed(&self) -> bool {
        self.0.removed.load(Ordering::Acquire)
    }

    /// Queues `frame`, or hands it back when the queue is full.
    pub(crate) fn push(&self, frame: Frame) -> Result<(), Frame> {
        self.0.queue.push(frame)
    }

    /// Marks the port removed and drops every queued frame; returns how many were dropped.
    pub(crate) fn close(&self) -> usize {
        self.0.removed.store(true, Ordering::Release);
        let mut dropped = 0;
        while self.0.queue.pop().is_some() {
            dropped += 1;
        }
        dropped
    }
}

/// A port as the switch keeps it.
#[derive(Debug)]
pub(crate) struct Port {
    pub(crate) id: PortId,
    pub(crate) config: PortConfig,
    pub(crate) queue: EgressQueue,
    pub(crate) counters: PortCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("child3/nic0"));
        assert!(valid_name("uplink"));
        assert!(!valid_name(""));
        assert!(!valid_name("has space"));
        assert!(!valid_name("tab\there"));
        assert!(!valid_name("é"));
        assert!(valid_name(&"x".repeat(MAX_NAME_LEN)));
        assert!(!valid_name(&"x".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn constructors() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let nic = PortConfig::child_nic("c1", mac);
        assert_eq!(
            (nic.kind, nic.mac, nic.enforce_source_mac),
            (PortKind::ChildNic, Some(mac), true)
        );
        let root = PortConfig::root_host("root", mac).with_queue_depth(8);
        assert_eq!(
            (root.kind, root.enforce_source_mac, root.queue_depth),
            (PortKind::RootHost, false, 8)
        );
        let up = PortConfig::uplink("up").with_enforce_source_mac(true);
        assert_eq!(
            (up.kind, up.mac, up.enforce_source_mac),
            (PortKind::Uplink, None, true)
        );
    }

    #[test]
    fn queue_close_drops_and_stops() {
        let q = EgressQueue::new(PortId(1), 2);
        assert!(q.push(Frame::copy_from(&[0; 14])).is_ok());
        assert!(q.push(Frame::copy_from(&[1; 14])).is_ok());
        assert!(q.push(Frame::copy_from(&[2; 14])).is_err());
        let held = q.clone();
        assert_eq!(q.close(), 2);
        assert!(held.is_removed());
        assert_eq!(held.pop(), None);
        assert_eq!(held.len(), 0);
    }
}
