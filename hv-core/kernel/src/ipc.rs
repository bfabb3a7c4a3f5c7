//! Glue between the host-tested SynIC logic (`synic` crate) and hv-core: the
//! guest-memory adapter, virtual-interrupt delivery through the VMCB, and the
//! inter-partition calls (HvPostMessage, HvSignalEvent, HvCreatePort,
//! HvConnectPort, HvDeletePort, HvDisconnectPort; TLFS "Inter-Partition
//! Communication").

use crate::memory::{GuestMemory, RootRam};
use hv1_abi::HvStatus;
use hv1_abi::message::Message;
use hv1_abi::synic::{
    ConnectPortInput, CreatePortInput, MESSAGE_PAYLOAD_MAX, PortRefInput, PostMessageInput, port_type,
};
use svm::Vmcb;
use svm::vmcb::event;
use synic::{Delivery, PendingVectors, Port, PortError, PortKind, Ports, PostError, SynicMemory, SynicVp};
use zerocopy::IntoBytes;

/// SynIC pages reached through a partition's checked memory view. hv-core
/// runs on one CPU and the guest is stopped while hv-core works, so a
/// read-modify-write of a flag byte cannot race with the guest.
pub struct SynicMem<'a>(pub &'a dyn GuestMemory);

impl SynicMemory for SynicMem<'_> {
    fn slot_type(&self, gpa: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.0.read(gpa, &mut b, 4).ok()?;
        Some(u32::from_le_bytes(b))
    }

    fn write_slot(&mut self, gpa: u64, message: &[u8; 256]) -> Option<()> {
        // Type last would be the careful order for a concurrent reader; the
        // guest is stopped, so one copy is enough.
        self.0.write(gpa, message, 8).ok()
    }

    fn set_message_pending(&mut self, gpa: u64) -> Option<()> {
        let flags = self.0.read_u8(gpa + 5)?;
        self.0.write(gpa + 5, &[flags | 1], 1).ok()
    }

    fn test_and_set_bit(&mut self, gpa: u64, bit: u8) -> Option<bool> {
        let byte = self.0.read_u8(gpa)?;
        let mask = 1u8 << (bit & 7);
        if byte & mask != 0 {
            return Some(false);
        }
        self.0.write(gpa, &[byte | mask], 1).ok()?;
        Some(true)
    }
}

/// The highest pending vector if the VP's task priority lets it through:
/// its priority class (vector bits 7:4) must be above the TPR (APM vol. 2
/// §16.6.4 "Task Priority"). A child's CR8 is V_TPR (V_INTR_MASKING is set
/// for children); the root's CR8 is the real TPR, which masks the root's
/// own interrupts in hardware, so none applies here.
fn deliverable(vmcb: &Vmcb, pending: &PendingVectors) -> Option<u8> {
    const V_INTR_MASKING: u32 = 1 << 24;
    let tpr = if vmcb.control.int_ctl & V_INTR_MASKING != 0 {
        (vmcb.control.int_ctl & 0xF) as u8
    } else {
        0
    };
    pending.highest().filter(|v| v >> 4 > tpr)
}

/// Whether a HLT should end at once: RFLAGS.IF is set and a pending vector
/// passes the task priority, so the interrupt would wake the CPU (Linux idles
/// in `sti; hlt` and waits for the SynIC vector).
pub fn wakes_from_hlt(vmcb: &Vmcb, pending: &PendingVectors) -> bool {
    const RFLAGS_IF: u64 = 1 << 9;
    vmcb.save.rflags & RFLAGS_IF != 0 && deliverable(vmcb, pending).is_some()
}

/// Inject the highest pending SynIC vector if the VP can take an external
/// interrupt now: RFLAGS.IF set, no interrupt shadow (STI/MOV SS), no other
/// event already queued in EVENTINJ (a re-injected or hv-core event goes
/// first), and above the task priority. Called before every VMRUN; returns
/// true if it injected.
///
/// EVENTINJ rather than V_IRQ: QEMU's TCG only notices a V_IRQ armed at
/// VMRUN when something else makes it check for interrupts, so a V_IRQ could
/// wait seconds behind the root's timer (seen in the VMBus QEMU tests).
pub fn inject_pending(vmcb: &mut Vmcb, pending: &mut PendingVectors) -> bool {
    const RFLAGS_IF: u64 = 1 << 9;
    const INTERRUPT_SHADOW: u64 = 1;
    let ready = vmcb.control.event_inj & event::VALID == 0
        && vmcb.save.rflags & RFLAGS_IF != 0
        && vmcb.control.int_state & INTERRUPT_SHADOW == 0;
    match deliverable(vmcb, pending) {
        Some(vector) if ready => {
            pending.take_highest();
            vmcb.control.event_inj = event::VALID | event::TYPE_INTR | u32::from(vector);
            vmcb.control.event_inj_err = 0;
            true
        }
        _ => false,
    }
}

/// The root's SynIC and the system-wide port tables.
pub struct Bus {
    /// The root VP's SynIC.
    pub root: SynicVp,
    /// Ports and connections.
    pub ports: Ports,
    /// SynIC vectors waiting for the root's VP.
    pub root_pending: PendingVectors,
}

impl Bus {
    /// Nothing connected.
    pub const fn new() -> Self {
        Self {
            root: SynicVp::new(),
            ports: Ports::new(),
            root_pending: PendingVectors::new(),
        }
    }

    fn note(&mut self, d: Delivery) {
        if let Some(v) = d.interrupt {
            self.root_pending.set(v);
        }
    }
}

/// The TLFS status for a refused post or signal.
pub fn post_status(e: PostError) -> HvStatus {
    match e {
        PostError::InvalidSynicState | PostError::Memory => HvStatus::INVALID_SYNIC_STATE,
        PostError::InsufficientBuffers => HvStatus::INSUFFICIENT_BUFFERS,
        PostError::BadFlag => HvStatus::INVALID_PARAMETER,
    }
}

/// The TLFS status for a refused port operation.
pub fn port_status(e: PortError) -> HvStatus {
    match e {
        PortError::PortExists | PortError::NoSuchPort => HvStatus::INVALID_PORT_ID,
        PortError::ConnectionExists | PortError::NoSuchConnection => HvStatus::INVALID_CONNECTION_ID,
        PortError::AccessDenied => HvStatus::ACCESS_DENIED,
        PortError::BadPortInfo => HvStatus::INVALID_PARAMETER,
        PortError::TableFull => HvStatus::INSUFFICIENT_MEMORY,
        PortError::InUse => HvStatus::OPERATION_DENIED,
    }
}

/// Read and check an HvPostMessage input page; returns the connection id and
/// the message to deliver (its sender field is filled in by the router).
pub fn read_post_message(mem: &dyn GuestMemory, gpa: u64) -> Result<(u32, Message), HvStatus> {
    let mut input = PostMessageInput {
        connection_id: 0,
        reserved: 0,
        message_type: 0,
        payload_size: 0,
        payload: [0; MESSAGE_PAYLOAD_MAX],
    };
    mem.read(
        gpa,
        input.as_mut_bytes(),
        hv1_abi::hypercall::HYPERCALL_PARAM_ALIGN,
    )?;
    input.to_message()
}

/// Where a routed message or event lands.
pub enum Target {
    /// The root's VP 0.
    Root,
    /// A child's VP.
    Child {
        /// Partition id.
        partition: u64,
        /// VP index.
        vp: u32,
    },
}

/// Resolve `sender`'s connection to a message port: (target, sint, message
/// with its sender port id set).
pub fn route_message(
    ports: &Ports,
    sender: u64,
    connection_id: u32,
    mut message: Message,
) -> Result<(Target, usize, Message), HvStatus> {
    let port = ports.route(sender, connection_id).map_err(port_status)?;
    let PortKind::Message { vp, sint } = port.kind else {
        return Err(HvStatus::INVALID_CONNECTION_ID);
    };
    message.header.sender = u64::from(port.id);
    Ok((target(&port, vp), usize::from(sint), message))
}

/// Resolve `sender`'s connection to an event port: (target, sint, flag).
pub fn route_event(ports: &Ports, sender: u64, input: u64) -> Result<(Target, usize, u32), HvStatus> {
    let (connection_id, flag, reserved) = hv1_abi::synic::decode_signal_event(input);
    if reserved != 0 {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    let port = ports.route(sender, connection_id).map_err(port_status)?;
    let PortKind::Event {
        vp,
        sint,
        base_flag,
        flag_count,
    } = port.kind
    else {
        return Err(HvStatus::INVALID_CONNECTION_ID);
    };
    if flag >= flag_count {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    Ok((
        target(&port, vp),
        usize::from(sint),
        u32::from(base_flag) + u32::from(flag),
    ))
}

fn target(port: &Port, vp: u32) -> Target {
    if port.partition == hv1_abi::ROOT_PARTITION_ID {
        Target::Root
    } else {
        Target::Child {
            partition: port.partition,
            vp,
        }
    }
}

/// Post to the root's SynIC.
pub fn post_to_root(
    bus: &mut Bus,
    root_ram: &RootRam,
    sender: u64,
    sint: usize,
    message: &Message,
) -> Result<(), HvStatus> {
    let bytes: &[u8; 256] = zerocopy::transmute_ref!(message);
    let d = bus
        .root
        .post_from(sint, bytes, sender, ROOT_QUEUE_SHARE, &mut SynicMem(root_ram))
        .map_err(post_status)?;
    bus.note(d);
    Ok(())
}

/// Entries of the root's SynIC queue one sender may hold: every child posts
/// to the root's one VP, so a flooding child gets INSUFFICIENT_BUFFERS
/// (which Linux retries) while the others still get through.
pub const ROOT_QUEUE_SHARE: usize = synic::QUEUE_DEPTH / 2;

/// Signal an event on the root's SynIC.
pub fn signal_root(bus: &mut Bus, root_ram: &RootRam, sint: usize, flag: u32) -> Result<(), HvStatus> {
    let d = bus
        .root
        .signal(sint, flag, &mut SynicMem(root_ram))
        .map_err(post_status)?;
    bus.note(d);
    Ok(())
}

/// HvCreatePort from the root. One end of every port is the root: children
/// talk to the root's service providers, never directly to each other.
pub fn create_port(
    ports: &mut Ports,
    p: &CreatePortInput,
    exists: impl Fn(u64) -> bool,
) -> Result<(), HvStatus> {
    let root = hv1_abi::ROOT_PARTITION_ID;
    if p.port_vtl != 0 || p.min_connection_vtl != 0 || p.padding != 0 || p.port_info.padding != 0 {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    if !exists(p.port_partition_id) || !exists(p.connection_partition_id) {
        return Err(HvStatus::INVALID_PARTITION_ID);
    }
    if p.port_partition_id != root && p.connection_partition_id != root {
        return Err(HvStatus::ACCESS_DENIED);
    }
    let info = &p.port_info;
    let sint = u8::try_from(info.target_sint).map_err(|_| HvStatus::INVALID_PARAMETER)?;
    let kind = match info.port_type {
        port_type::MESSAGE => PortKind::Message {
            vp: info.target_vp,
            sint,
        },
        port_type::EVENT => PortKind::Event {
            vp: info.target_vp,
            sint,
            base_flag: info.base_flag_number,
            flag_count: info.flag_count,
        },
        _ => return Err(HvStatus::INVALID_PARAMETER),
    };
    if p.port_partition_id == root && info.target_vp != 0 {
        return Err(HvStatus::INVALID_VP_INDEX);
    }
    ports
        .create_port(Port {
            partition: p.port_partition_id,
            id: p.port_id,
            kind,
            connection_partition: p.connection_partition_id,
        })
        .map_err(port_status)
}

/// HvConnectPort from the root (on its own or a child's behalf).
pub fn connect_port(ports: &mut Ports, p: &ConnectPortInput) -> Result<(), HvStatus> {
    if p.connection_vtl != 0 || p.rsvd != [0; 3] || p.reserved2 != 0 {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    ports
        .connect(
            p.connection_partition_id,
            p.connection_id,
            p.port_partition_id,
            p.port_id,
        )
        .map_err(port_status)
}

/// HvDeletePort.
pub fn delete_port(ports: &mut Ports, p: &PortRefInput) -> Result<(), HvStatus> {
    if p.reserved != 0 {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    ports
        .delete_port(p.partition_id, p.id)
        .map(|_| ())
        .map_err(port_status)
}

/// HvDisconnectPort.
pub fn disconnect_port(ports: &mut Ports, p: &PortRefInput) -> Result<(), HvStatus> {
    if p.reserved != 0 {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    ports.disconnect(p.partition_id, p.id).map_err(port_status)
}
