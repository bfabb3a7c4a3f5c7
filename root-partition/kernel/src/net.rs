//! The root's network, as ports of the virtual switch: the uplink (the
//! root's passthrough virtio-net, e.g. QEMU's user network with its DHCP
//! server) and the root's own IP stack (`rootnet`: smoltcp with DHCP, ARP
//! and ICMP echo), so `net ping` works from the shell and children reach
//! the outside through the uplink.
//!
//! The root also learns which IPv4 address each child NIC uses from the
//! ARP frames it sends (RFC 826 sender fields, checked by
//! `rootnet::arp_sender`), so `net ping ID` can name a partition. A child
//! can claim any address in its ARP; the table only records what the child
//! said on its own port, bounded per port.

use crate::virtio::{AccessPlatform, RootHal};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use rootnet::{NetConfig, RootNet};
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::DeviceType;
use virtio_drivers::transport::pci::PciTransport;
use vswitch::{MacAddr, PortConfig, PortId, Switch};

/// Receive buffers the uplink keeps queued (a power of two).
const UPLINK_QUEUE: usize = 16;
/// Bytes per uplink receive buffer: a 1514-byte frame and the virtio-net header.
const UPLINK_BUFFER: usize = 2048;
/// Frames moved per direction per round on each of the root's ports.
const FRAMES_PER_ROUND: usize = 64;
/// Addresses remembered per child port (a child may use several).
const ADDRESSES_PER_PORT: usize = 4;

/// The root's passthrough NIC.
pub struct Uplink {
    nic: VirtIONet<RootHal, AccessPlatform<PciTransport>, UPLINK_QUEUE>,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Where it sits on PCI.
    pub location: String,
    /// Frames it failed to send (device errors).
    pub send_errors: u64,
}

impl Uplink {
    /// Bring up the first virtio-net function on bus 0.
    fn open() -> Result<Self, String> {
        let location = *crate::virtio::functions(DeviceType::Network)
            .first()
            .ok_or_else(|| String::from("no virtio-net device on PCI bus 0"))?;
        let transport =
            crate::virtio::transport(location).map_err(|e| format!("virtio-pci transport: {e}"))?;
        let nic = VirtIONet::new(transport, UPLINK_BUFFER).map_err(|e| format!("virtio-net: {e}"))?;
        let mac = nic.mac_address();
        Ok(Self {
            nic,
            mac,
            location: format!("{location}"),
            send_errors: 0,
        })
    }

    /// The next frame the outside sent, if any.
    fn receive(&mut self) -> Option<Vec<u8>> {
        let buf = self.nic.receive().ok()?;
        let frame = buf.packet().to_vec();
        // A buffer that cannot be given back shrinks the queue; the driver
        // keeps working with the rest.
        let _ = self.nic.recycle_rx_buffer(buf);
        Some(frame)
    }

    /// Send `frame` to the outside (waits for the device).
    fn send(&mut self, frame: &[u8]) {
        let mut tx = self.nic.new_tx_buffer(frame.len());
        tx.packet_mut().copy_from_slice(frame);
        if self.nic.send(tx).is_err() {
            self.send_errors += 1;
        }
    }
}

/// An address a child NIC announced in its ARP.
#[derive(Clone, Copy, Debug)]
pub struct Neighbour {
    /// The child's switch port.
    pub port: PortId,
    /// Its MAC.
    pub mac: [u8; 6],
    /// The IPv4 address it claimed.
    pub ip: Ipv4Addr,
}

/// The uplink and the root's own interface.
pub struct RootNetwork {
    /// The passthrough NIC and its switch port, or why there is none.
    pub uplink: Result<(Uplink, PortId), String>,
    /// The root's IP stack and its switch port.
    pub stack: Option<(RootNet, PortId)>,
    /// Why the root has no IP stack (its port could not be made).
    pub stack_error: Option<String>,
    /// Addresses learned from the children's ARP.
    pub neighbours: Vec<Neighbour>,
}

/// The root's address when there is no uplink (and so no DHCP server): a
/// private network children can configure themselves into.
pub const STATIC_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 254);

impl RootNetwork {
    /// Open the uplink (if the machine has a NIC) and the root's interface,
    /// each on a new port of `switch`. With an uplink the root asks its
    /// network for an address by DHCP; without, it takes [`STATIC_ADDRESS`]/24.
    pub fn open(switch: &mut Switch, now_ms: u64) -> Self {
        let uplink = Uplink::open().and_then(|u| {
            let port = switch
                .add_port(PortConfig::uplink("uplink"))
                .map_err(|e| format!("switch port: {e:?}"))?;
            Ok((u, port))
        });
        // The root's own MAC: its NIC's when it has one (the outside network
        // knows the machine by it), else a locally administered one.
        let mac = match &uplink {
            Ok((u, _)) => u.mac,
            Err(_) => [0x02, 0x15, 0x5D, 0x00, 0x00, 0x01],
        };
        let config = if uplink.is_ok() {
            NetConfig::Dhcp
        } else {
            NetConfig::Static {
                addr: rootnet::Ipv4Net::new(STATIC_ADDRESS, 24),
                gateway: None,
            }
        };
        let (stack, stack_error) = match RootNet::new(mac, config, now_ms) {
            Ok(net) => match switch.add_port(PortConfig::root_host("root", MacAddr(mac))) {
                Ok(port) => (Some((net, port)), None),
                Err(e) => (None, Some(format!("switch port: {e:?}"))),
            },
            Err(e) => (None, Some(format!("{e}"))),
        };
        Self {
            uplink,
            stack,
            stack_error,
            neighbours: Vec::new(),
        }
    }

    /// One round: frames between the switch and the uplink and the root's
    /// stack (bounded per direction), and the stack's timers.
    pub fn pump(&mut self, switch: &mut Switch, now_ms: u64) {
        if let Ok((uplink, port)) = &mut self.uplink {
            for _ in 0..FRAMES_PER_ROUND {
                let Some(frame) = uplink.receive() else { break };
                let _ = switch.ingress(*port, &frame, now_ms);
            }
            for _ in 0..FRAMES_PER_ROUND {
                let Some(frame) = switch.egress(*port) else { break };
                uplink.send(frame.as_bytes());
            }
        }
        if let Some((stack, port)) = &mut self.stack {
            for _ in 0..FRAMES_PER_ROUND {
                let Some(frame) = switch.egress(*port) else { break };
                stack.receive_frame(frame.as_bytes());
            }
            stack.poll(now_ms);
            for _ in 0..FRAMES_PER_ROUND {
                let Some(frame) = stack.take_frame() else { break };
                let _ = switch.ingress(*port, &frame, now_ms);
            }
        }
    }

    /// A frame child port `port` (whose NIC has MAC `nic_mac`) sent:
    /// remember the address its ARP claims. Only an ARP from the NIC's own
    /// MAC, in a frame with that source, counts (the switch drops the
    /// others as spoofed).
    pub fn snoop(&mut self, port: PortId, nic_mac: [u8; 6], frame: &[u8]) {
        let Some((mac, ip)) = rootnet::arp_sender(frame) else {
            return;
        };
        if mac != nic_mac || frame.get(6..12) != Some(&nic_mac[..]) {
            return;
        }
        let ip = Ipv4Addr::from(ip);
        if let Some(n) = self.neighbours.iter_mut().find(|n| n.port == port && n.ip == ip) {
            n.mac = mac;
            return;
        }
        // The oldest address of a port that claims too many goes.
        let on_port = self.neighbours.iter().filter(|n| n.port == port).count();
        if on_port >= ADDRESSES_PER_PORT
            && let Some(oldest) = self.neighbours.iter().position(|n| n.port == port)
        {
            self.neighbours.remove(oldest);
        }
        self.neighbours.push(Neighbour { port, mac, ip });
    }

    /// A port is gone: forget what was learned on it.
    pub fn forget(&mut self, port: PortId) {
        self.neighbours.retain(|n| n.port != port);
    }

    /// The most recent address learned on `port`.
    pub fn address_of(&self, port: PortId) -> Option<Ipv4Addr> {
        self.neighbours
            .iter()
            .rev()
            .find(|n| n.port == port)
            .map(|n| n.ip)
    }
}
