//! Ports and connections (TLFS "Inter-Partition Communication": HvCreatePort
//! 0x95, HvDeletePort 0x58, HvConnectPort 0x96, HvDisconnectPort 0x5B).
//!
//! A *port* belongs to the partition that receives: it names a SINT (message
//! port) or a range of event flags on a SINT (event port) of one of its VPs.
//! A *connection* belongs to the partition that sends: HvPostMessage and
//! HvSignalEvent name a connection id, which resolves here to a port. Both
//! tables have a fixed capacity so a guest cannot grow hv-core's memory.

use crate::vp::{FLAGS_PER_SINT, SINT_COUNT};

/// Ports hv-core keeps system-wide.
pub const MAX_PORTS: usize = 128;
/// Connections hv-core keeps system-wide.
pub const MAX_CONNECTIONS: usize = 128;

/// Where a port delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// HvPortTypeMessage: a message lands in `sint`'s slot of VP `vp`.
    Message {
        /// Target VP index.
        vp: u32,
        /// Target SINT (0–15).
        sint: u8,
    },
    /// HvPortTypeEvent: HvSignalEvent's flag number is offset by `base_flag`
    /// and must stay below `flag_count`.
    Event {
        /// Target VP index.
        vp: u32,
        /// Target SINT (0–15).
        sint: u8,
        /// First flag of the port's range in the SINT's 2048.
        base_flag: u16,
        /// Flags in the range (at least 1).
        flag_count: u16,
    },
}

/// A port owned by `partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    /// The receiving partition.
    pub partition: u64,
    /// Port id (unique system-wide).
    pub id: u32,
    /// Delivery target.
    pub kind: PortKind,
    /// The only partition allowed to connect (TLFS connection_partition_id).
    pub connection_partition: u64,
}

/// A connection: `partition` may post/signal `connection_id`, reaching `port_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The sending partition.
    pub partition: u64,
    /// Connection id (unique within the sending partition).
    pub connection_id: u32,
    /// The port it reaches.
    pub port_id: u32,
}

/// Why a port operation was refused (each maps to a TLFS status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortError {
    /// The port id is in use (HV_STATUS_INVALID_PORT_ID on create).
    PortExists,
    /// No such port, or not the caller's (HV_STATUS_INVALID_PORT_ID).
    NoSuchPort,
    /// The connection id is in use by that partition
    /// (HV_STATUS_INVALID_CONNECTION_ID).
    ConnectionExists,
    /// No such connection for that partition (HV_STATUS_INVALID_CONNECTION_ID).
    NoSuchConnection,
    /// The port does not accept connections from that partition
    /// (HV_STATUS_ACCESS_DENIED).
    AccessDenied,
    /// A SINT above 15, a flag range past 2048, or an unknown port type
    /// (HV_STATUS_INVALID_PARAMETER).
    BadPortInfo,
    /// The port or connection table is full (HV_STATUS_INSUFFICIENT_MEMORY).
    TableFull,
    /// The port still has connections (HV_STATUS_INVALID_PORT_ID would hide
    /// why; hv-core reports HV_STATUS_OPERATION_DENIED).
    InUse,
}

/// The system-wide port and connection tables.
#[derive(Debug, Clone)]
pub struct Ports {
    ports: [Option<Port>; MAX_PORTS],
    connections: [Option<Connection>; MAX_CONNECTIONS],
}

impl Default for Ports {
    fn default() -> Self {
        Self::new()
    }
}

impl PortKind {
    fn check(&self) -> Result<(), PortError> {
        let (sint, flags_end) = match *self {
            PortKind::Message { sint, .. } => (sint, 0),
            PortKind::Event {
                sint,
                base_flag,
                flag_count,
                ..
            } => {
                if flag_count == 0 {
                    return Err(PortError::BadPortInfo);
                }
                (sint, u32::from(base_flag) + u32::from(flag_count))
            }
        };
        if usize::from(sint) >= SINT_COUNT || flags_end > FLAGS_PER_SINT {
            return Err(PortError::BadPortInfo);
        }
        Ok(())
    }
}

impl Ports {
    /// Empty tables.
    pub const fn new() -> Self {
        Self {
            ports: [None; MAX_PORTS],
            connections: [None; MAX_CONNECTIONS],
        }
    }

    /// HvCreatePort.
    pub fn create_port(&mut self, port: Port) -> Result<(), PortError> {
        port.kind.check()?;
        if self.port(port.id).is_some() {
            return Err(PortError::PortExists);
        }
        let slot = self
            .ports
            .iter_mut()
            .find(|p| p.is_none())
            .ok_or(PortError::TableFull)?;
        *slot = Some(port);
        Ok(())
    }

    /// HvDeletePort by the owner. Refused while connections reach it.
    pub fn delete_port(&mut self, partition: u64, id: u32) -> Result<Port, PortError> {
        let index = self
            .ports
            .iter()
            .position(|p| matches!(p, Some(p) if p.id == id && p.partition == partition))
            .ok_or(PortError::NoSuchPort)?;
        if self.connections.iter().flatten().any(|c| c.port_id == id) {
            return Err(PortError::InUse);
        }
        self.ports[index].take().ok_or(PortError::NoSuchPort)
    }

    /// HvConnectPort: `partition` connects `connection_id` to the port.
    pub fn connect(
        &mut self,
        partition: u64,
        connection_id: u32,
        port_partition: u64,
        port_id: u32,
    ) -> Result<(), PortError> {
        let port = self
            .port(port_id)
            .filter(|p| p.partition == port_partition)
            .ok_or(PortError::NoSuchPort)?;
        if port.connection_partition != partition {
            return Err(PortError::AccessDenied);
        }
        if self.connection(partition, connection_id).is_some() {
            return Err(PortError::ConnectionExists);
        }
        let slot = self
            .connections
            .iter_mut()
            .find(|c| c.is_none())
            .ok_or(PortError::TableFull)?;
        *slot = Some(Connection {
            partition,
            connection_id,
            port_id,
        });
        Ok(())
    }

    /// HvDisconnectPort.
    pub fn disconnect(&mut self, partition: u64, connection_id: u32) -> Result<(), PortError> {
        let slot = self
            .connections
            .iter_mut()
            .find(|c| matches!(c, Some(c) if c.partition == partition && c.connection_id == connection_id))
            .ok_or(PortError::NoSuchConnection)?;
        *slot = None;
        Ok(())
    }

    /// The port a sender's connection id reaches (HvPostMessage/HvSignalEvent).
    pub fn route(&self, partition: u64, connection_id: u32) -> Result<Port, PortError> {
        let connection = self
            .connection(partition, connection_id)
            .ok_or(PortError::NoSuchConnection)?;
        self.port(connection.port_id).ok_or(PortError::NoSuchPort)
    }

    /// A partition is going away: drop its ports, the ports only it could
    /// connect to, its connections, and every connection that reached one of
    /// those ports. Returns how many entries went.
    pub fn remove_partition(&mut self, partition: u64) -> usize {
        let mut removed = 0;
        for slot in self.ports.iter_mut() {
            if let Some(port) = *slot
                && (port.partition == partition || port.connection_partition == partition)
            {
                for c in self.connections.iter_mut() {
                    if matches!(c, Some(c) if c.port_id == port.id) {
                        *c = None;
                        removed += 1;
                    }
                }
                *slot = None;
                removed += 1;
            }
        }
        for c in self.connections.iter_mut() {
            if matches!(c, Some(c) if c.partition == partition) {
                *c = None;
                removed += 1;
            }
        }
        removed
    }

    /// Look up a port by id.
    pub fn port(&self, id: u32) -> Option<Port> {
        self.ports.iter().flatten().find(|p| p.id == id).copied()
    }

    /// Look up a connection.
    pub fn connection(&self, partition: u64, connection_id: u32) -> Option<Connection> {
        self.connections
            .iter()
            .flatten()
            .find(|c| c.partition == partition && c.connection_id == connection_id)
            .copied()
    }

    /// Live ports and connections (for statistics).
    pub fn counts(&self) -> (usize, usize) {
        (
            self.ports.iter().flatten().count(),
            self.connections.iter().flatten().count(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: u64 = 1;
    const CHILD: u64 = 2;

    fn message_port(id: u32) -> Port {
        Port {
            partition: ROOT,
            id,
            kind: PortKind::Message { vp: 0, sint: 2 },
            connection_partition: CHILD,
        }
    }

    #[test]
    fn connect_route_disconnect() {
        let mut ports = Ports::new();
        ports.create_port(message_port(7)).unwrap();
        ports.connect(CHILD, 1, ROOT, 7).unwrap();
        assert_eq!(ports.route(CHILD, 1).unwrap().id, 7);
        assert_eq!(ports.route(ROOT, 1), Err(PortError::NoSuchConnection));
        assert_eq!(ports.delete_port(ROOT, 7), Err(PortError::InUse));
        ports.disconnect(CHILD, 1).unwrap();
        assert_eq!(ports.disconnect(CHILD, 1), Err(PortError::NoSuchConnection));
        assert_eq!(ports.delete_port(ROOT, 7).unwrap().id, 7);
        assert_eq!(ports.counts(), (0, 0));
    }

    #[test]
    fn refuses_bad_port_info_and_duplicates() {
        let mut ports = Ports::new();
        let mut bad = message_port(1);
        bad.kind = PortKind::Message { vp: 0, sint: 16 };
        assert_eq!(ports.create_port(bad), Err(PortError::BadPortInfo));
        bad.kind = PortKind::Event {
            vp: 0,
            sint: 3,
            base_flag: 2000,
            flag_count: 49,
        };
        assert_eq!(ports.create_port(bad), Err(PortError::BadPortInfo));
        bad.kind = PortKind::Event {
            vp: 0,
            sint: 3,
            base_flag: 0,
            flag_count: 0,
        };
        assert_eq!(ports.create_port(bad), Err(PortError::BadPortInfo));
        bad.kind = PortKind::Event {
            vp: 0,
            sint: 3,
            base_flag: 2000,
            flag_count: 48,
        };
        ports.create_port(bad).unwrap();
        assert_eq!(ports.create_port(bad), Err(PortError::PortExists));
    }

    #[test]
    fn only_the_named_partition_connects_and_only_the_owner_deletes() {
        let mut ports = Ports::new();
        ports.create_port(message_port(3)).unwrap();
        assert_eq!(ports.connect(3, 1, ROOT, 3), Err(PortError::AccessDenied));
        assert_eq!(ports.connect(CHILD, 1, CHILD, 3), Err(PortError::NoSuchPort));
        assert_eq!(ports.delete_port(CHILD, 3), Err(PortError::NoSuchPort));
        ports.connect(CHILD, 1, ROOT, 3).unwrap();
        assert_eq!(ports.connect(CHILD, 1, ROOT, 3), Err(PortError::ConnectionExists));
    }

    #[test]
    fn churn_leaves_nothing_behind() {
        let mut ports = Ports::new();
        for round in 0..1000u64 {
            let child = 2 + round;
            let id = child as u32 * 256;
            let kind = PortKind::Message { vp: 0, sint: 2 };
            ports
                .create_port(Port {
                    partition: ROOT,
                    id: id + 1,
                    kind,
                    connection_partition: child,
                })
                .unwrap();
            ports
                .create_port(Port {
                    partition: child,
                    id: id + 2,
                    kind,
                    connection_partition: ROOT,
                })
                .unwrap();
            ports.connect(child, 1, ROOT, id + 1).unwrap();
            ports.connect(ROOT, id + 2, child, id + 2).unwrap();
            ports.remove_partition(child);
        }
        assert_eq!(ports.counts(), (0, 0));
    }

    #[test]
    fn tables_are_bounded() {
        let mut ports = Ports::new();
        for id in 0..MAX_PORTS as u32 {
            ports.create_port(message_port(id)).unwrap();
        }
        assert_eq!(ports.create_port(message_port(10_000)), Err(PortError::TableFull));
        for id in 0..MAX_CONNECTIONS as u32 {
            ports.connect(CHILD, id, ROOT, id).unwrap();
        }
        assert_eq!(ports.connect(CHILD, 9_999, ROOT, 0), Err(PortError::TableFull));
    }

    #[test]
    fn removing_a_partition_drops_what_reaches_it() {
        let mut ports = Ports::new();
        ports.create_port(message_port(1)).unwrap();
        let mut child_port = message_port(2);
        child_port.partition = CHILD;
        child_port.connection_partition = ROOT;
        ports.create_port(child_port).unwrap();
        ports.connect(CHILD, 1, ROOT, 1).unwrap();
        ports.connect(ROOT, 5, CHILD, 2).unwrap();
        // Port 1 (the root's, only CHILD may connect), port 2 (CHILD's) and
        // both connections.
        assert_eq!(ports.remove_partition(CHILD), 4);
        assert_eq!(ports.counts(), (0, 0));
        assert_eq!(ports.route(ROOT, 5), Err(PortError::NoSuchConnection));
    }
}
