//! The device over real rings (`AtomicMemory`) against a fake Linux
//! storvsc: the packets, sizes and transaction ids Linux 6.1
//! `storvsc_drv.c` sends, GPA-direct data in a separate guest RAM, and
//! hostile input.

use super::*;
use proptest::prelude::*;
use scsi_disk::{DiskConfig, MemoryBackend};
use std::cell::Cell;
use std::rc::Rc;
use storvsp_protocol::{
    ChannelProperties, DataDirection, PacketHeader, ProtocolVersionBody, REQUEST_COMPLETION_FLAG,
    request_packet, scsi_request,
};
use vmbus::memory::AtomicMemory;
use vmbus::ring::{CONTROL_SIZE, FEAT_PENDING_SEND_SZ, Reader, Ring, RingError, Writer};
use vsp::GuestSignal;
use zerocopy::FromBytes;

/// Linux's transaction id for every init packet (`VMBUS_RQST_INIT`).
const RQST_INIT: u64 = u64::MAX - 2;
/// Guest RAM: 64 pages (256 KiB).
const RAM_PAGES: u64 = 64;
/// Disk: 2048 sectors of 512 bytes (1 MiB).
const SECTORS: u64 = 2048;

type Dev = Storvsp<&'static AtomicMemory, MemoryBackend>;

/// Counts the signals the guest got.
struct Counter(Rc<Cell<u32>>);

impl GuestSignal for Counter {
    fn signal(&mut self) -> bool {
        self.0.set(self.0.get() + 1);
        true
    }
}

fn leak(bytes: u64) -> &'static AtomicMemory {
    Box::leak(Box::new(AtomicMemory::new(bytes)))
}

/// A completion as the guest reads it.
#[derive(Debug, Clone)]
struct Answer {
    kind: PacketType,
    id: u64,
    /// `hv_pkt_datalen`: the bytes after offset8.
    payload: Vec<u8>,
}

impl Answer {
    fn header(&self) -> PacketHeader {
        PacketHeader::read_from_prefix(&self.payload).expect("header").0
    }
    fn status(&self) -> NtStatus {
        NtStatus(self.header().status.get())
    }
    fn body(&self) -> &[u8] {
        &self.payload[PACKET_HEADER_LEN..]
    }
    fn srb(&self) -> ScsiRequest {
        ScsiRequest::read_from_prefix(self.body()).expect("srb").0
    }
    /// Checks every answer must pass for Linux to take it
    /// (`storvsc_on_channel_callback`, `storvsc_execute_vstor_op`).
    fn assert_linux_accepts(&self, id: u64) {
        assert_eq!(self.kind, PacketType::COMPLETION);
        assert_eq!(self.id, id);
        assert_eq!(
            self.payload.len(),
            64,
            "Linux drops completions shorter than 64 bytes"
        );
        assert_eq!(Operation(self.header().operation.get()), Operation::COMPLETE_IO);
    }
}

/// The guest side: rings, RAM and a Linux-like storvsc.
struct Guest {
    up: &'static AtomicMemory,
    down: &'static AtomicMemory,
    ram: &'static AtomicMemory,
    signals: Rc<Cell<u32>>,
    /// Linux numbers requests from its requestor table: small integers.
    next_id: u64,
}

impl Guest {
    /// Rings with `up`/`down` data bytes, a fresh guest RAM, and a channel
    /// over them (with the RAM unless `ram` is false).
    fn new(up: u64, down: u64, ram: bool) -> (Self, Channel<&'static AtomicMemory>) {
        let upm = leak(CONTROL_SIZE + up);
        let downm = leak(CONTROL_SIZE + down);
        Ring::new(upm).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
        Ring::new(downm).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
        let signals = Rc::new(Cell::new(0));
        let guest_ram = leak(RAM_PAGES * 4096);
        let mut channel = Channel::new(upm, downm, Box::new(Counter(signals.clone()))).unwrap();
        if ram {
            channel = channel.with_guest_ram(guest_ram);
        }
        (
            Self {
                up: upm,
                down: downm,
                ram: guest_ram,
                signals,
                next_id: 1,
            },
            channel,
        )
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Write a raw packet; false if the ring is full.
    fn write(&self, descriptor: &Descriptor, rest: &[u8]) -> bool {
        match Writer::new(Ring::new(self.up).unwrap()).write(&[descriptor.as_bytes(), rest]) {
            Ok(_) => true,
            Err(RingError::Full { .. }) => false,
            Err(e) => panic!("{e:?}"),
        }
    }

    /// `vmbus_sendpacket(..., VM_PKT_DATA_INBAND, COMPLETION_REQUESTED)`.
    fn send_inband(&self, id: u64, vstor: &[u8]) -> bool {
        let d = Descriptor::new(
            PacketType::DATA_INBAND,
            16,
            vstor.len(),
            FLAG_COMPLETION_REQUESTED,
            id,
        );
        self.write(&d, vstor)
    }

    /// `vmbus_sendpacket_mpb_desc`: GPA-direct, the range list, then the
    /// vstor packet at offset8.
    fn send_gpa(&self, id: u64, ranges: &[(u32, u32, &[u64])], vstor: &[u8]) -> bool {
        let (after, offset8) = gpa::build_gpa_direct(ranges, vstor);
        let d = Descriptor::new(
            PacketType::DATA_USING_GPA_DIRECT,
            offset8 as usize * 8,
            vstor.len(),
            FLAG_COMPLETION_REQUESTED,
            id,
        );
        self.write(&d, &after)
    }

    /// The next packet from the host.
    fn receive(&self) -> Option<Answer> {
        let mut buf = [0u8; 4096];
        let (p, _) = Reader::new(Ring::new(self.down).unwrap())
            .read(&mut buf)
            .unwrap()?;
        let r = p.descriptor.payload();
        Some(Answer {
            kind: p.kind,
            id: p.descriptor.transaction_id,
            payload: buf[r.start..r.end.min(p.len)].to_vec(),
        })
    }

    /// Everything the host has written.
    fn receive_all(&self) -> Vec<Answer> {
        core::iter::from_fn(|| self.receive()).collect()
    }
}

fn disk(sectors: u64) -> ScsiDisk<MemoryBackend> {
    ScsiDisk::new(
        MemoryBackend::new(512, sectors),
        DiskConfig::new("storvsp-test-0", 0x5_7042),
    )
    .unwrap()
}

/// A device with one 1 MiB disk, open over rings of `up`/`down` bytes.
fn rig_with(up: u64, down: u64) -> (Guest, Dev) {
    let (guest, channel) = Guest::new(up, down, true);
    let mut dev = Dev::new(disk(SECTORS), StorvspConfig::default()).unwrap();
    dev.open(channel).unwrap();
    (guest, dev)
}

fn rig() -> (Guest, Dev) {
    rig_with(64 * 1024, 64 * 1024)
}

/// Poll once and return the one answer the guest gets.
fn answer<B: BlockBackend + 'static>(dev: &mut Storvsp<&'static AtomicMemory, B>, guest: &Guest) -> Answer {
    let r = dev.poll(vsp::POLL_BUDGET);
    assert!(r.broke.is_none(), "{r:?}");
    let mut all = guest.receive_all();
    assert_eq!(all.len(), 1, "{all:?}");
    all.pop().unwrap()
}

/// One init step with Linux's packet: a 64-byte vstor packet, in-band,
/// transaction id VMBUS_RQST_INIT.
fn init_step<B: BlockBackend + 'static>(
    dev: &mut Storvsp<&'static AtomicMemory, B>,
    guest: &Guest,
    op: Operation,
    body: &[u8],
) -> Answer {
    assert!(guest.send_inband(RQST_INIT, &request_packet(op, body)));
    let a = answer(dev, guest);
    a.assert_linux_accepts(RQST_INIT);
    a
}

fn version_body(v: u16) -> Vec<u8> {
    ProtocolVersionBody {
        major_minor: v.into(),
        revision: 0.into(),
    }
    .as_bytes()
    .to_vec()
}

/// `storvsc_channel_init` against a host that takes 6.2.
fn init<B: BlockBackend + 'static>(dev: &mut Storvsp<&'static AtomicMemory, B>, guest: &Guest) {
    let a = init_step(dev, guest, Operation::BEGIN_INITIALIZATION, &[]);
    assert_eq!(a.status(), NtStatus::SUCCESS);
    let a = init_step(
        dev,
        guest,
        Operation::QUERY_PROTOCOL_VERSION,
        &version_body(0x0602),
    );
    assert_eq!(a.status(), NtStatus::SUCCESS);
    let a = init_step(dev, guest, Operation::QUERY_PROPERTIES, &[]);
    assert_eq!(a.status(), NtStatus::SUCCESS);
    let props = ChannelProperties::read_from_prefix(a.body()).unwrap().0;
    assert_eq!(props.max_channel_count.get(), DEFAULT_SUB_CHANNELS);
    assert_eq!(
        props.flags.get(),
        storvsp_protocol::STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL,
        "multi-channel: Linux asks for min(CPUs - 1, max_channel_count) sub-channels"
    );
    assert_eq!(props.max_transfer_bytes.get(), DEFAULT_MAX_TRANSFER_BYTES);
    let a = init_step(dev, guest, Operation::END_INITIALIZATION, &[]);
    assert_eq!(a.status(), NtStatus::SUCCESS);
    assert_eq!(dev.state(), InitState::Ready(ProtocolVersion::WIN10));
}

fn srb_packet(lun: u8, cdb: &[u8], dir: DataDirection, len: u32) -> Vec<u8> {
    request_packet(
        Operation::EXECUTE_SRB,
        scsi_request(lun, cdb, dir, len).as_bytes(),
    )
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2A;
    c
}

const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 36, 0];
const TUR: [u8; 6] = [0; 6];

/// Run one SRB without data (in-band) and return its completion.
fn srb_nodata<B: BlockBackend + 'static>(
    dev: &mut Storvsp<&'static AtomicMemory, B>,
    guest: &mut Guest,
    lun: u8,
    cdb: &[u8],
) -> Answer {
    let id = guest.id();
    assert!(guest.send_inband(id, &srb_packet(lun, cdb, DataDirection::Unspecified, 0)));
    let a = answer(dev, guest);
    a.assert_linux_accepts(id);
    a
}

/// Run one SRB with a GPA-direct buffer of `len` bytes at `offset` into
/// `pfns`' first page.
fn srb_data<B: BlockBackend + 'static>(
    dev: &mut Storvsp<&'static AtomicMemory, B>,
    guest: &mut Guest,
    lun: u8,
    cdb: &[u8],
    dir: DataDirection,
    (offset, len, pfns): (u32, u32, &[u64]),
) -> Answer {
    let id = guest.id();
    assert!(guest.send_gpa(id, &[(offset, len, pfns)], &srb_packet(lun, cdb, dir, len)));
    let a = answer(dev, guest);
    a.assert_linux_accepts(id);
    a
}

fn assert_good(a: &Answer, moved: u32) {
    let srb = a.srb();
    assert_eq!(a.status(), NtStatus::SUCCESS, "{srb:?}");
    assert_eq!(SrbStatus(srb.srb_status), SrbStatus::SUCCESS);
    assert_eq!(srb.scsi_status, 0);
    assert_eq!(srb.data_transfer_length.get(), moved);
}

/// CHECK CONDITION with autosense: (sense key, ASC).
fn assert_check(a: &Answer, srb_status: SrbStatus, key: u8, asc: u8) {
    let srb = a.srb();
    assert_eq!(SrbStatus(srb.srb_status).status(), srb_status, "{srb:?}");
    assert!(SrbStatus(srb.srb_status).autosense_valid());
    assert_eq!(srb.scsi_status, ScsiStatus::CHECK_CONDITION.0);
    assert_eq!(srb.data_transfer_length.get(), 0, "no bytes moved on failure");
    assert!(srb.sense_info_length >= 14);
    assert_eq!(srb.data[2] & 0x0F, key, "sense key");
    assert_eq!(srb.data[12], asc, "ASC");
    assert_ne!(a.status(), NtStatus::SUCCESS);
}

// ---------------------------------------------------------------------------
// The handshake
// ---------------------------------------------------------------------------

#[test]
fn offer_is_the_scsi_interface() {
    let dev = Dev::new(disk(SECTORS), StorvspConfig::default()).unwrap();
    let o = Device::<&'static AtomicMemory>::offer(&dev);
    assert_eq!(o.interface_type, storvsp_protocol::SCSI_INTERFACE_GUID);
    assert_eq!(o.interface_instance, None);
    let instance = [7u8; 16];
    let dev = Dev::new(
        disk(SECTORS),
        StorvspConfig {
            instance: Some(instance),
            ..StorvspConfig::default()
        },
    )
    .unwrap();
    assert_eq!(
        Device::<&'static AtomicMemory>::offer(&dev).interface_instance,
        Some(instance)
    );
}

#[test]
fn linux_init_sequence() {
    let (guest, mut dev) = rig();
    assert_eq!(dev.state(), InitState::Begin);
    init(&mut dev, &guest);
    assert_eq!(dev.version(), Some(ProtocolVersion::WIN10));
    assert!(guest.signals.get() >= 1);
    let s = dev.stats();
    assert_eq!((s.requests, s.completions, s.protocol_errors), (4, 4, 0));
}

#[test]
fn version_negotiation_falls_back() {
    let (guest, mut dev) = rig();
    init_step(&mut dev, &guest, Operation::BEGIN_INITIALIZATION, &[]);
    // A version this host does not speak (pre-win8, and one from the
    // future): REVISION_MISMATCH, the proposal echoed, state unchanged.
    for v in [0x0402u16, 0x0700] {
        let a = init_step(
            &mut dev,
            &guest,
            Operation::QUERY_PROTOCOL_VERSION,
            &version_body(v),
        );
        assert_eq!(a.status(), NtStatus::REVISION_MISMATCH);
        assert_eq!(&a.body()[..2], &v.to_le_bytes());
        assert_eq!(dev.state(), InitState::QueryVersion);
    }
    // Linux's last proposal.
    let a = init_step(
        &mut dev,
        &guest,
        Operation::QUERY_PROTOCOL_VERSION,
        &version_body(0x0501),
    );
    assert_eq!(a.status(), NtStatus::SUCCESS);
    assert_eq!(dev.version(), Some(ProtocolVersion::WIN8));
    assert_eq!(
        init_step(&mut dev, &guest, Operation::QUERY_PROPERTIES, &[]).status(),
        NtStatus::SUCCESS
    );
    assert_eq!(
        init_step(&mut dev, &guest, Operation::END_INITIALIZATION, &[]).status(),
        NtStatus::SUCCESS
    );
    assert_eq!(dev.state(), InitState::Ready(ProtocolVersion::WIN8));
}

#[test]
fn requests_before_init_are_invalid_device_state() {
    let (mut guest, mut dev) = rig();
    // An SRB before anything.
    let a = srb_nodata(&mut dev, &mut guest, 0, &TUR);
    assert_eq!(a.status(), NtStatus::INVALID_DEVICE_STATE);
    // Steps out of order.
    for op in [
        Operation::QUERY_PROPERTIES,
        Operation::END_INITIALIZATION,
        Operation::QUERY_PROTOCOL_VERSION,
    ] {
        let a = init_step(&mut dev, &guest, op, &version_body(0x0602));
        assert_eq!(a.status(), NtStatus::INVALID_DEVICE_STATE, "{op:?}");
    }
    init_step(&mut dev, &guest, Operation::BEGIN_INITIALIZATION, &[]);
    let a = init_step(&mut dev, &guest, Operation::BEGIN_INITIALIZATION, &[]);
    assert_eq!(a.status(), NtStatus::INVALID_DEVICE_STATE);
    let a = srb_nodata(&mut dev, &mut guest, 0, &TUR);
    assert_eq!(a.status(), NtStatus::INVALID_DEVICE_STATE);
    // The handshake still completes from where it is.
    init_step(
        &mut dev,
        &guest,
        Operation::QUERY_PROTOCOL_VERSION,
        &version_body(0x0602),
    );
    init_step(&mut dev, &guest, Operation::QUERY_PROPERTIES, &[]);
    init_step(&mut dev, &guest, Operation::END_INITIALIZATION, &[]);
    assert_good(&srb_nodata(&mut dev, &mut guest, 0, &TUR), 0);
    assert_eq!(dev.stats().protocol_errors, 6);
}

#[test]
fn sub_channels_are_offered_on_request_and_resets_are_no_ops() {
    let (mut guest, mut dev) = rig();
    init(&mut dev, &guest);
    let create = |dev: &mut Dev, n: u16| {
        init_step(dev, &guest, Operation::CREATE_SUB_CHANNELS, &n.to_le_bytes()).status()
    };
    // None, or more than announced: refused (OpenVMM: INVALID_PARAMETER).
    assert_eq!(create(&mut dev, 0), NtStatus::INVALID_PARAMETER);
    assert_eq!(
        create(&mut dev, DEFAULT_SUB_CHANNELS + 1),
        NtStatus::INVALID_PARAMETER
    );
    assert!(dev.take_sub_channels().is_empty());
    assert_eq!(create(&mut dev, 2), NtStatus::SUCCESS);
    let mut subs = dev.take_sub_channels();
    assert_eq!(subs.len(), 2);
    assert!(dev.take_sub_channels().is_empty(), "handed over once");
    assert_eq!(dev.sub_channels_offered(), 2);
    // The counts add up to the limit.
    assert_eq!(
        create(&mut dev, DEFAULT_SUB_CHANNELS - 1),
        NtStatus::INVALID_PARAMETER
    );
    assert_eq!(create(&mut dev, DEFAULT_SUB_CHANNELS - 2), NtStatus::SUCCESS);
    assert_eq!(
        dev.take_sub_channels().len(),
        usize::from(DEFAULT_SUB_CHANNELS - 2)
    );
    // A sub-channel is the same interface; it takes SRBs at once (Linux
    // `handle_sc_creation` does no handshake on it) and shares the disk.
    for s in &subs {
        assert_eq!(s.offer().interface_type, storvsp_protocol::SCSI_INTERFACE_GUID);
    }
    let (mut g1, ch) = Guest::new(64 * 1024, 64 * 1024, true);
    subs[0].open(ch).unwrap();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    g1.ram.write_at(4 * 4096, &pattern).unwrap();
    let id = g1.id();
    assert!(g1.send_gpa(
        id,
        &[(0, 4096, &[4])],
        &srb_packet(0, &write10(40, 8), DataDirection::Out, 4096)
    ));
    assert!(subs[0].poll(vsp::POLL_BUDGET).broke.is_none());
    let a = g1.receive().expect("completion on the sub-channel");
    a.assert_linux_accepts(id);
    assert_good(&a, 4096);
    assert_eq!(
        &dev.disk(0).unwrap().backend().bytes()[40 * 512..48 * 512],
        &pattern[..]
    );
    // The primary reads it back.
    let a = srb_data(
        &mut dev,
        &mut guest,
        0,
        &read10(40, 8),
        DataDirection::In,
        (0, 4096, &[9]),
    );
    assert_good(&a, 4096);
    let mut back = vec![0u8; 4096];
    guest.ram.read_at(9 * 4096, &mut back).unwrap();
    assert_eq!(back, pattern);
    // Handshake operations are the primary's only.
    assert!(g1.send_inband(RQST_INIT, &request_packet(Operation::BEGIN_INITIALIZATION, &[])));
    subs[0].poll(vsp::POLL_BUDGET);
    assert_eq!(g1.receive().unwrap().status(), NtStatus::INVALID_DEVICE_STATE);
    assert!(g1.send_inband(
        RQST_INIT,
        &request_packet(Operation::CREATE_SUB_CHANNELS, &1u16.to_le_bytes())
    ));
    subs[0].poll(vsp::POLL_BUDGET);
    assert_eq!(g1.receive().unwrap().status(), NtStatus::INVALID_DEVICE_STATE);
    let mut fields = Fields(Vec::new());
    subs[0].inspect(&mut fields);
    assert_eq!(fields.get("role"), Some("sub-channel 1"));
    // The primary's close forgets them: a new handshake starts from none.
    dev.close();
    assert_eq!(dev.sub_channels_offered(), 0);
    let (guest, ch) = Guest::new(64 * 1024, 64 * 1024, true);
    dev.open(ch).unwrap();
    init(&mut dev, &guest);
    assert_eq!(
        init_step(
            &mut dev,
            &guest,
            Operation::CREATE_SUB_CHANNELS,
            &DEFAULT_SUB_CHANNELS.to_le_bytes()
        )
        .status(),
        NtStatus::SUCCESS
    );
    assert_eq!(dev.take_sub_channels().len(), usize::from(DEFAULT_SUB_CHANNELS));
}

#[test]
fn without_sub_channels_the_flag_is_off_and_requests_are_refused() {
    let (guest, channel) = Guest::new(64 * 1024, 64 * 1024, true);
    let mut dev = Dev::new(
        disk(SECTORS),
        StorvspConfig {
            max_sub_channels: 0,
            ..StorvspConfig::default()
        },
    )
    .unwrap();
    dev.open(channel).unwrap();
    init_step(&mut dev, &guest, Operation::BEGIN_INITIALIZATION, &[]);
    init_step(
        &mut dev,
        &guest,
        Operation::QUERY_PROTOCOL_VERSION,
        &version_body(0x0602),
    );
    let a = init_step(&mut dev, &guest, Operation::QUERY_PROPERTIES, &[]);
    let props = ChannelProperties::read_from_prefix(a.body()).unwrap().0;
    assert_eq!((props.max_channel_count.get(), props.flags.get()), (0, 0));
    init_step(&mut dev, &guest, Operation::END_INITIALIZATION, &[]);
    let a = init_step(
        &mut dev,
        &guest,
        Operation::CREATE_SUB_CHANNELS,
        &1u16.to_le_bytes(),
    );
    assert_eq!(a.status(), NtStatus::INVALID_PARAMETER);
    assert!(dev.take_sub_channels().is_empty());
    assert_eq!(
        Dev::new(
            disk(SECTORS),
            StorvspConfig {
                max_sub_channels: MAX_SUB_CHANNELS + 1,
                ..StorvspConfig::default()
            }
        )
        .err(),
        Some(ConfigError::SubChannels(MAX_SUB_CHANNELS + 1))
    );
}

#[test]
fn resets_are_no_ops_and_host_operations_are_refused() {
    let (guest, mut dev) = rig();
    init(&mut dev, &guest);
    for op in [
        Operation::RESET_LUN,
        Operation::RESET_ADAPTER,
        Operation::RESET_BUS,
    ] {
        assert_eq!(init_step(&mut dev, &guest, op, &[]).status(), NtStatus::SUCCESS);
    }
    // Host-only and unknown operations.
    for op in [Operation::COMPLETE_IO, Operation::ENUMERATE_BUS, Operation(99)] {
        let a = init_step(&mut dev, &guest, op, &[]);
        assert_eq!(a.status(), NtStatus::INVALID_DEVICE_REQUEST);
    }
    assert_eq!(dev.state(), InitState::Ready(ProtocolVersion::WIN10));
}

#[test]
fn answers_have_the_requests_size() {
    let (guest, mut dev) = rig();
    // A 48-byte (pre-win8 sized) BEGIN: the answer is 48 bytes too, as
    // Hyper-V and OpenVMM size them.
    let p = request_packet(Operation::BEGIN_INITIALIZATION, &[]);
    assert!(guest.send_inband(RQST_INIT, &p[..48]));
    let a = answer(&mut dev, &guest);
    assert_eq!(a.payload.len(), 48);
    assert_eq!(a.status(), NtStatus::SUCCESS);
    // Shorter than a header: answered, not a panic.
    assert!(guest.send_inband(RQST_INIT, &[9, 0]));
    let a = answer(&mut dev, &guest);
    assert_eq!(
        a.payload.len(),
        16,
        "a bare 12-byte header, padded to 8 bytes by the ring"
    );
    assert_eq!(a.status(), NtStatus::INVALID_PARAMETER);
}

// ---------------------------------------------------------------------------
// SCSI over GPA-direct
// ---------------------------------------------------------------------------

#[test]
fn inquiry_and_read_capacity() {
    let (mut guest, mut dev) = rig();
    init(&mut dev, &guest);
    // INQUIRY into 36 bytes at offset 0x7F0 of page 5.
    let a = srb_data(
        &mut dev,
        &mut guest,
        0,
        &INQUIRY,
        DataDirection::In,
        (0x7F0, 36, &[5]),
    );
    assert_good(&a, 36);
    let mut inq = [0u8; 36];
    guest.ram.read_at(5 * 4096 + 0x7F0, &mut inq).unwrap();
    assert_eq!(inq[0], 0, "direct-access device");
    assert_eq!(&inq[8..16], b"Msft    ");
    // READ CAPACITY(16): the last LBA and the block size.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9E;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let a = srb_data(&mut dev, &mut guest, 0, &cdb, DataDirection::In, (0, 32, &[9]));
    assert_good(&a, 32);
    let mut cap = [0u8; 32];
    guest.ram.read_at(9 * 4096, &mut cap).unwrap();
    assert_eq!(u64::from_be_bytes(cap[..8].try_into().unwrap()), SECTORS - 1);
    assert_eq!(u32::from_be_bytes(cap[8..12].try_into().unwrap()), 512);
    // A buffer bigger than the data: SUCCESS with the bytes moved (Linux
    // computes the residual), never DATA_OVERRUN.
    let a = srb_data(
        &mut dev,
        &mut guest,
        0,
        &[0x12, 0, 0, 0, 96, 0],
        DataDirection::In,
        (0, 96, &[6]),
    );
    assert_good(&a, 36);
    // Test unit ready and REPORT LUNS.
    assert_good(&srb_nodata(&mut dev, &mut guest, 0, &TUR), 0);
    let mut rl = [0u8; 12];
    rl[0] = 0xA0;
    rl[9] = 64;
    let a = srb_data(&mut dev, &mut guest, 0, &rl, DataDirection::In, (0, 64, &[7]));
    assert_good(&a, 16);
    let mut list = [0u8; 16];
    guest.ram.read_at(7 * 4096, &mut list).unwrap();
    assert_eq!(&list[..4], &8u32.to_be_bytes(), "one LUN");
    assert_eq!(&list[8..16], &[0; 8], "LUN 0");
}

#[test]
fn multi_page_write_at_an_offset_then_read_back() {
    let (mut guest, mut dev) = rig();
    init(&mut dev, &guest);
    // 25 blocks from 0x234 into the first of four scattered pages.
    let len = 25 * 512u32;
    let offset = 0x234u32;
    let out_pages = [10u64, 3, 17, 8];
    let pattern: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8).collect();
    let chunks = gpa::chunks(
        &[vmbus::packet::GpaRange {
            byte_count: len,
            byte_offset: offset,
            pfns: &out_pages.iter().flat_map(|p| p.to_le_bytes()).collect::<Vec<_>>(),
        }],
        0,
        len as u64,
    )
    .unwrap();
    assert_eq!(chunks.len(), 4);
    let mut at = 0usize;
    for c in &chunks {
        guest
            .ram
            .write_at(c.gpa(), &pattern[at..at + c.len as usize])
            .unwrap();
        at += c.len as usize;
    }
    let a = srb_data(
        &mut dev,
        &mut guest,
        0,
        &write10(100, 25),
        DataDirection::Out,
        (offset, len, &out_pages),
    );
    assert_good(&a, len);
    let stored = dev.disk(0).unwrap().backend().bytes()[100 * 512..125 * 512].to_vec();
    assert_eq!(stored, &pattern[..]);
    // Read it back into other pages at another offset.
    let in_pages = [20u64, 21, 30, 5];
    let a = srb_data(
        &mut dev,
        &mut guest,
        0,
        &read10(100, 25),
        DataDirection::In,
        (0x10, len, &in_pages),
    );
    assert_good(&a, len);
    let mut back = vec![0u8; len as usize];
    let mut at = 0usize;
    let mut pos = 0x10u64;
    for p in in_pages {
        let n = ((4096 - pos) as usize).min(len as usize - at);
        guest.ram.read_at(p * 4096 + pos, &mut back[at..at + n]).unwrap();
        at += n;
        pos = 0;
    }
    assert_eq!(back, pattern);
    let s = dev.stats();
    assert_eq!((s.bytes_written, s.bytes_read), (len as u64, len as u64));
    // SYNCHRONIZE CACHE reaches the backend.
    let flushes = dev.disk(0).unwrap().backend().flushes;
    assert_good(
        &srb_nodata(&mut dev, &mut guest, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        0,
    );
    assert_eq!(dev.disk(0).unwrap().backend().flushes, flushes + 1);
}

#[test]
fn unknown_opcode_and_out_of_range_lba_are_check_conditions() {
    let (mut guest, mut dev) = rig();
    init(&mut dev, &guest);
    // ATA PASS-THROUGH(16), which Linux may try: not supported.
    let mut ata = [0u8; 16];
    ata[0] = 0x85;
    let a = srb_nodata(&mut dev, &mut guest, 0, &ata);
    assert_check(&a, SrbStatus::INVALID_REQUEST, 0x5, 0x20);
    // Past the last block.
    let a = srb_data(
        &mut dev,
        &mut guest,
        0,
        &read10(SECTORS as u32 - 1, 2),
        DataDirection::In,
        (0, 1024, &[1]),
    );
    assert_check(&a, SrbStatus::INVALID_REQUEST, 0x5, 0x21);
    assert_eq!(dev.stats().srb_failures, 2);
}

#[test]
fn a_buffer_outside_guest_ram_fails_the_srb_only() {
    let (mut guest, mut dev) = rig();
    init(&mut dev, &guest);
    let before = dev.disk(0).unwrap().backend().bytes()[..4096].to_vec();
    for pages in [
        &[RAM_PAGES][..],
        &[2, RAM_PAGES + 1000],
        &[gpa::MAX_GPN],
        &[u64::MAX],
    ] {
        let len = pages.len() as u32 * 4096;
        let blocks = (len / 512) as u16;
        // A write whose last page is not the guest's: nothing reaches the disk.
        let a = srb_data(
            &mut dev,
            &mut guest,
            0,
            &write10(0, blocks),
            DataDirection::Out,
            (0, len, pages),
        );
        assert_check(&a, SrbStatus::INVALID_REQUEST, 0x5, 0x24);
        // A read into it: refused before the disk is asked.
        let a = srb_data(
            &mut dev,
            &mut guest,
            0,
            &read10(0, blocks),
            DataDirection::In,
            (0, len, pages),
        );
        assert_check(&a, SrbStatus::INVALID_REQUEST, 0x5, 0x24);
    }
    assert_eq!(&dev.disk(0).unwrap().backend().bytes()[..4096], &before[..]);
    assert_eq!(dev.stats().bytes_read + dev.stats().bytes_written, 0);
    // The channel still works.
    let a = srb_data(
        &mut dev,
        &mut guest,
        0,
        &INQUIRY,
        DataDirection::In,
        (0, 36, &[0]),
    );
    assert_good(&a, 36);
}

#[test]
fn a_transfer_longer_than_its_buffer_is_refused() {
    let (mut guest, mut dev) = rig();
    init(&mut dev, &guest);
    // data_transfer_length 1024 over a 512-byte range.
    let id = guest.id();
    let vstor = srb_packet(0, &read10(0, 2), DataDirection::In, 1024);
    assert!(guest.send_gpa(id, &[(0, 512, &[3])], &vstor));
    let a = answer(&mut dev, &guest);
    a.assert_linux_accepts(id);
    assert_check(&a, SrbStatus::INVALID_REQUEST, 0x5, 0x24);
    // Data promised in-band: no ranges at all.
    let id = guest.id();
    assert!(guest.send_inband(id, &vstor));
    let a = answer(&mut dev, &guest);
    a.assert_linux_accepts(id);
    assert_check(&a, SrbStatus::INVALID_REQUEST, 0x5, 0x24);
    // A transfer past max_transfer_bytes is refused at parse.
    let id = guest.id();
    let pfns: Vec<u64> = (0..65).collect();
    let big = DEFAULT_MAX_TRANSFER_BYTES + 4096;
    let vstor = srb_packet(0, &read10(0, (big / 512) as u16), DataDirection::In, big);
    assert!(guest.send_gpa(id, &[(0, big, &pfns)], &vstor));
    let a = answer(&mut dev, &guest);
    a.assert_linux_accepts(id);
    assert_check(&a, SrbStatus::INVALID_REQUEST, 0x5, 0x24);
    // A broken range list (offset past the page).
    let id = guest.id();
    let vstor = srb_packet(0, &read10(0, 1), DataDirection::In, 512);
    assert!(guest.send_gpa(id, &[(5000, 512, &[1, 2])], &vstor));
    let a = answer(&mut dev, &guest);
    a.assert_linux_accepts(id);
    assert_check(&a, SrbStatus::INVALID_REQUEST, 0x5, 0x24);
    // A read smaller than its buffer is fine.
    let a = srb_data(
        &mut dev,
        &mut guest,
        0,
        &read10(0, 1),
        DataDirection::In,
        (0, 512, &[3]),
    );
    assert_good(&a, 512);
    // A bad CDB length: the SRB fails, echoing its address.
    let id = guest.id();
    let mut srb = scsi_request(0, &TUR, DataDirection::Unspecified, 0);
    srb.cdb_length = 17;
    assert!(guest.send_inband(id, &request_packet(Operation::EXECUTE_SRB, srb.as_bytes())));
    let a = answer(&mut dev, &guest);
    a.assert_linux_accepts(id);
    assert_check(&a, SrbStatus::INVALID_REQUEST, 0x5, 0x24);
}

#[test]
fn addresses_without_a_disk() {
    let (mut guest, mut dev) = rig();
    init(&mut dev, &guest);
    // LUN 1: INVALID_LUN without autosense, DEVICE_DOES_NOT_EXIST.
    for cdb in [&TUR[..], &read10(0, 1)[..]] {
        let a = srb_nodata(&mut dev, &mut guest, 1, cdb);
        let srb = a.srb();
        assert_eq!(SrbStatus(srb.srb_status), SrbStatus::INVALID_LUN);
        assert_eq!(a.status(), NtStatus::DEVICE_DOES_NOT_EXIST);
        assert_eq!(srb.lun, 1, "the address is echoed");
    }
    // A standard INQUIRY there: "no logical unit" (qualifier 3, type 1Fh).
    let a = srb_data(
        &mut dev,
        &mut guest,
        1,
        &INQUIRY,
        DataDirection::In,
        (0, 36, &[4]),
    );
    assert_good(&a, 36);
    let mut b = [0u8; 1];
    guest.ram.read_at(4 * 4096, &mut b).unwrap();
    assert_eq!(b[0], 0x7F);
    // Target 1 (Linux scans targets 0 and 1): same, and REPORT LUNS lists none.
    let id = guest.id();
    let mut srb = scsi_request(0, &INQUIRY, DataDirection::In, 36);
    srb.target_id = 1;
    assert!(guest.send_gpa(
        id,
        &[(0, 36, &[4])],
        &request_packet(Operation::EXECUTE_SRB, srb.as_bytes())
    ));
    assert_good(&answer(&mut dev, &guest), 36);
    let id = guest.id();
    let mut rl = [0u8; 12];
    rl[0] = 0xA0;
    rl[9] = 32;
    let mut srb = scsi_request(0, &rl, DataDirection::In, 32);
    srb.target_id = 1;
    assert!(guest.send_gpa(
        id,
        &[(0, 32, &[4])],
        &request_packet(Operation::EXECUTE_SRB, srb.as_bytes())
    ));
    assert_good(&answer(&mut dev, &guest), 8);
    let mut head = [0u8; 4];
    guest.ram.read_at(4 * 4096, &mut head).unwrap();
    assert_eq!(head, [0; 4], "no LUNs on target 1");
}

#[test]
fn a_second_lun() {
    let (mut guest, channel) = Guest::new(64 * 1024, 64 * 1024, true);
    let mut dev = Dev::new(disk(SECTORS), StorvspConfig::default()).unwrap();
    assert_eq!(dev.attach(0, disk(8)), Err(ConfigError::LunInUse(0)));
    assert_eq!(dev.attach(255, disk(8)), Err(ConfigError::LunOutOfRange(255)));
    dev.attach(3, disk(64)).unwrap();
    dev.open(channel).unwrap();
    init(&mut dev, &guest);
    assert_good(&srb_nodata(&mut dev, &mut guest, 3, &TUR), 0);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9E;
    cdb[1] = 0x10;
    cdb[13] = 32;
    assert_good(
        &srb_data(&mut dev, &mut guest, 3, &cdb, DataDirection::In, (0, 32, &[2])),
        32,
    );
    let mut last = [0u8; 8];
    guest.ram.read_at(2 * 4096, &mut last).unwrap();
    assert_eq!(u64::from_be_bytes(last), 63);
    let mut rl = [0u8; 12];
    rl[0] = 0xA0;
    rl[9] = 32;
    assert_good(
        &srb_data(&mut dev, &mut guest, 0, &rl, DataDirection::In, (0, 32, &[2])),
        24,
    );
    let mut list = [0u8; 24];
    guest.ram.read_at(2 * 4096, &mut list).unwrap();
    assert_eq!(list[9], 0);
    assert_eq!(list[17], 3);
}

// ---------------------------------------------------------------------------
// Budget, flow control, life cycle
// ---------------------------------------------------------------------------

#[test]
fn many_requests_with_a_small_budget_and_a_small_ring() {
    // The smallest host-to-guest ring: 4 KiB holds 46 completions.
    let (mut guest, mut dev) = rig_with(64 * 1024, 4096);
    init(&mut dev, &guest);
    let n = 200u64;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = guest.id();
        let ok = if i % 2 == 0 {
            guest.send_inband(id, &srb_packet(0, &TUR, DataDirection::Unspecified, 0))
        } else {
            let page = 1 + i % 32;
            guest.send_gpa(
                id,
                &[(0, 512, &[page])],
                &srb_packet(0, &read10(i as u32, 1), DataDirection::In, 512),
            )
        };
        assert!(ok, "the guest-to-host ring holds them all");
        ids.push(id);
    }
    let budget = 7;
    let mut seen = Vec::new();
    let mut polls = 0;
    let mut stalled = false;
    while seen.len() < n as usize {
        polls += 1;
        assert!(polls < 10_000, "stuck after {} answers", seen.len());
        let before = dev.stats().requests;
        let r = dev.poll(budget);
        assert!(r.broke.is_none());
        assert!(
            dev.stats().requests - before <= budget as u64,
            "the budget bounds a poll"
        );
        stalled |= dev.channel().unwrap().holding();
        // The guest reads its ring only every tenth poll: 70 completions
        // do not fit 4 KiB.
        if polls % 10 == 0 {
            for a in guest.receive_all() {
                a.assert_linux_accepts(a.id);
                assert_eq!(SrbStatus(a.srb().srb_status), SrbStatus::SUCCESS);
                seen.push(a.id);
            }
        }
    }
    assert!(stalled, "the ring filled up at least once");
    assert!(dev.channel().unwrap().stats().stalls > 0);
    assert_eq!(seen, ids, "every request answered once, in order");
    assert_eq!(dev.stats().srbs, n);
    // Nothing left: a poll finds no work.
    assert_eq!(dev.poll(budget), PollResult::default());
    assert!(guest.receive().is_none());
}

#[test]
fn a_poll_stops_at_its_budget_and_asks_for_more() {
    let (mut guest, mut dev) = rig();
    init(&mut dev, &guest);
    for _ in 0..10 {
        let id = guest.id();
        assert!(guest.send_inband(id, &srb_packet(0, &TUR, DataDirection::Unspecified, 0)));
    }
    let r = dev.poll(4);
    assert!(r.more && r.signalled);
    assert_eq!(guest.receive_all().len(), 4);
    let r = dev.poll(4);
    assert!(r.more);
    let r = dev.poll(4);
    assert!(!r.more, "the last two fit this poll");
    assert_eq!(guest.receive_all().len(), 6);
}

#[test]
fn packets_without_completion_requested_get_none() {
    let (guest, mut dev) = rig();
    let p = request_packet(Operation::BEGIN_INITIALIZATION, &[]);
    let d = Descriptor::new(PacketType::DATA_INBAND, 16, p.len(), 0, 5);
    assert!(guest.write(&d, &p));
    // And packet types storvsc never sends: skipped.
    let d = Descriptor::new(PacketType::COMPLETION, 16, p.len(), 0, 6);
    assert!(guest.write(&d, &p));
    let d = Descriptor::new(PacketType::DATA_USING_XFER_PAGES, 16, p.len(), 1, 7);
    assert!(guest.write(&d, &p));
    let r = dev.poll(vsp::POLL_BUDGET);
    assert!(r.broke.is_none() && !r.more);
    assert!(guest.receive().is_none());
    assert_eq!(
        dev.state(),
        InitState::QueryVersion,
        "the BEGIN was still acted on"
    );
    assert_eq!(dev.stats().protocol_errors, 2);
}

#[test]
fn reset_and_close_go_back_to_uninitialized() {
    let (mut guest, mut dev) = rig();
    init(&mut dev, &guest);
    dev.reset();
    assert_eq!(dev.state(), InitState::Begin);
    assert_eq!(dev.poll(64), PollResult::default(), "no channel, no work");
    let mut f = Fields::default();
    dev.inspect(&mut f);
    assert!(f.0.is_empty(), "a closed device reports nothing");
    // A new open needs a new handshake.
    let (g2, channel) = Guest::new(8192, 8192, true);
    guest = Guest { next_id: 1, ..g2 };
    dev.open(channel).unwrap();
    let a = srb_nodata(&mut dev, &mut guest, 0, &TUR);
    assert_eq!(a.status(), NtStatus::INVALID_DEVICE_STATE);
    init(&mut dev, &guest);
    let (_, other) = Guest::new(8192, 8192, true);
    assert_eq!(dev.open(other).err(), Some(OpenError::AlreadyOpen));
    dev.close();
    assert_eq!(dev.state(), InitState::Begin);
    assert!(dev.channel().is_none());
    // A channel without the guest's RAM is refused.
    let (_, no_ram) = Guest::new(8192, 8192, false);
    assert!(matches!(dev.open(no_ram), Err(OpenError::Refused(_))));
}

#[test]
fn config_is_checked() {
    for m in [0, 4095, 4097, MAX_TRANSFER_BYTES_LIMIT + 4096] {
        assert_eq!(
            Dev::empty(StorvspConfig {
                max_transfer_bytes: m,
                instance: None,
                ..StorvspConfig::default()
            })
            .err(),
            Some(ConfigError::MaxTransferBytes(m))
        );
    }
    assert!(
        Dev::empty(StorvspConfig {
            max_transfer_bytes: MAX_TRANSFER_BYTES_LIMIT,
            instance: None,
            ..StorvspConfig::default()
        })
        .is_ok()
    );
}

#[test]
fn the_largest_transfer_fits_the_channel() {
    let (mut guest, channel) = Guest::new(64 * 1024, 64 * 1024, true);
    let mut dev = Dev::new(
        disk(4096),
        StorvspConfig {
            max_transfer_bytes: MAX_TRANSFER_BYTES_LIMIT,
            instance: None,
            ..StorvspConfig::default()
        },
    )
    .unwrap();
    dev.open(channel).unwrap();
    init_limit(&mut dev, &guest);
    // 1 MiB from offset 8 spans 257 pages; the guest has 64, so map the
    // buffer over them repeatedly (a guest may name a page twice).
    let len = MAX_TRANSFER_BYTES_LIMIT;
    let pfns: Vec<u64> = (0..257).map(|i| i % RAM_PAGES).collect();
    let a = srb_data(
        &mut dev,
        &mut guest,
        0,
        &read10(0, (len / 512) as u16),
        DataDirection::In,
        (8, len, &pfns),
    );
    assert_good(&a, len);
}

/// The handshake, for a device with a non-default transfer limit.
fn init_limit(dev: &mut Dev, guest: &Guest) {
    init_step(dev, guest, Operation::BEGIN_INITIALIZATION, &[]);
    init_step(
        dev,
        guest,
        Operation::QUERY_PROTOCOL_VERSION,
        &version_body(0x0602),
    );
    let a = init_step(dev, guest, Operation::QUERY_PROPERTIES, &[]);
    let props = ChannelProperties::read_from_prefix(a.body()).unwrap().0;
    assert_eq!(props.max_transfer_bytes.get(), dev.config().max_transfer_bytes);
    init_step(dev, guest, Operation::END_INITIALIZATION, &[]);
}

#[derive(Default)]
struct Fields(Vec<(&'static str, String)>);

impl InspectSink for Fields {
    fn counter(&mut self, name: &'static str, _: &'static str, value: u64) {
        self.0.push((name, value.to_string()));
    }
    fn text(&mut self, name: &'static str, _: &'static str, value: &str) {
        self.0.push((name, value.to_string()));
    }
    fn ring(&mut self, name: &'static str, _: &'static str, state: Option<vmbus::ring::RingState>) {
        self.0
            .push((name, format!("{:?}", state.map(|s| s.bytes_pending))));
    }
}

impl Fields {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

#[test]
fn inspect_reports_version_counters_and_size() {
    let (mut guest, mut dev) = rig();
    let mut f = Fields::default();
    dev.inspect(&mut f);
    assert_eq!(f.get("handshake"), Some("begin"));
    assert_eq!(f.get("version"), Some(""));
    init(&mut dev, &guest);
    let a = srb_nodata(&mut dev, &mut guest, 0, &[0x85; 16]);
    assert_ne!(SrbStatus(a.srb().srb_status).status(), SrbStatus::SUCCESS);
    let mut f = Fields::default();
    dev.inspect(&mut f);
    assert_eq!(f.get("handshake"), Some("ready"));
    assert_eq!(f.get("version"), Some("6.2"));
    assert_eq!(f.get("requests"), Some("5"));
    assert_eq!(f.get("completions"), Some("5"));
    assert_eq!(f.get("packets"), Some("5"));
    assert_eq!(f.get("srb_failures"), Some("1"));
    assert_eq!(f.get("disk_bytes"), Some("1048576"));
    assert_eq!(f.get("luns"), Some("1"));
    assert_eq!(f.get("disks"), Some("lun 0: 2048 x 512 bytes"));
    assert_eq!(f.get("signals_received"), Some("5"));
    assert_eq!(f.get("broken"), Some(""));
    assert!(f.get("guest_to_host").is_some() && f.get("host_to_guest").is_some());
}

#[test]
fn boxed_backends_fit() {
    let d = ScsiDisk::new(
        BoxedBackend(Box::new(MemoryBackend::new(4096, 16))),
        DiskConfig::new("boxed", 1),
    )
    .unwrap();
    let dev: Storvsp<&'static AtomicMemory, BoxedBackend> =
        Storvsp::new(d, StorvspConfig::default()).unwrap();
    assert_eq!(dev.disk(0).unwrap().sector_size(), 4096);
}

// ---------------------------------------------------------------------------
// Hostile guests
// ---------------------------------------------------------------------------

/// A packet a hostile guest may write (always a valid VMBus packet, so
/// the ring stays intact and only storvsp's parsing is tested).
#[derive(Debug, Clone)]
struct Wild {
    kind: u16,
    flags: u16,
    /// Extra 8-byte units of extended header before the data.
    header8: u8,
    id: u64,
    /// Operation (small values are the real ones).
    op: u32,
    body: Vec<u8>,
    /// GPA ranges (byte offset, byte count, pfns) for kind 9.
    ranges: Vec<(u32, u32, Vec<u64>)>,
    /// Cut the vstor packet to this many bytes.
    cut: Option<usize>,
}

fn wild() -> impl Strategy<Value = Wild> {
    let kind = prop_oneof![Just(6u16), Just(9u16), Just(7u16), Just(11u16)];
    let op = prop_oneof![1u32..=14, any::<u32>()];
    let range = (
        prop_oneof![0u32..4096, any::<u32>()],
        prop_oneof![0u32..20_000, any::<u32>()],
        proptest::collection::vec(prop_oneof![0u64..80, any::<u64>()], 0..8),
    );
    (
        kind,
        0u16..=1,
        0u8..3,
        any::<u64>(),
        op,
        proptest::collection::vec(any::<u8>(), 0..80),
        proptest::collection::vec(range, 0..3),
        proptest::option::of(0usize..80),
    )
        .prop_map(|(kind, flags, header8, id, op, body, ranges, cut)| Wild {
            kind,
            flags,
            header8,
            id,
            op,
            body,
            ranges,
            cut,
        })
}

impl Wild {
    /// The bytes after the descriptor and the descriptor's offset8.
    fn bytes(&self) -> (Vec<u8>, u16) {
        let mut vstor = Vec::new();
        vstor.extend_from_slice(&self.op.to_le_bytes());
        vstor.extend_from_slice(&REQUEST_COMPLETION_FLAG.to_le_bytes());
        vstor.extend_from_slice(&0u32.to_le_bytes());
        vstor.extend_from_slice(&self.body);
        if let Some(c) = self.cut {
            vstor.truncate(c);
        }
        if self.kind == 9 {
            let ranges: Vec<(u32, u32, &[u64])> = self
                .ranges
                .iter()
                .map(|(o, c, p)| (*o, *c, p.as_slice()))
                .collect();
            let (mut after, offset8) = gpa::build_gpa_direct(&ranges, &[]);
            after.extend(std::iter::repeat_n(0u8, self.header8 as usize * 8));
            after.extend_from_slice(&vstor);
            (after, offset8 + self.header8 as u16)
        } else {
            let mut after = vec![0u8; self.header8 as usize * 8];
            after.extend_from_slice(&vstor);
            (after, 2 + self.header8 as u16)
        }
    }

    fn write(&self, guest: &Guest) -> bool {
        let (after, offset8) = self.bytes();
        let mut d = Descriptor::new(PacketType(self.kind), 16, after.len(), self.flags, self.id);
        d.offset8 = offset8;
        guest.write(&d, &after)
    }

    /// Whether the device owes it an answer.
    fn answered(&self) -> bool {
        self.flags == 1 && (self.kind == 6 || self.kind == 9)
    }
}

/// Write `packets`, poll, and check every packet that asked for an
/// answer got exactly one and the channel still works.
fn run_wild(packets: &[Wild], initialized: bool) {
    let (mut guest, mut dev) = rig_with(128 * 1024, 128 * 1024);
    if initialized {
        init(&mut dev, &guest);
    }
    let mut owed = Vec::new();
    for p in packets {
        assert!(p.write(&guest));
        if p.answered() {
            owed.push(p.id);
        }
    }
    for _ in 0..packets.len() + 1 {
        let r = dev.poll(3);
        assert!(r.broke.is_none(), "{r:?}");
    }
    let got: Vec<u64> = guest
        .receive_all()
        .into_iter()
        .map(|a| {
            assert_eq!(a.kind, PacketType::COMPLETION);
            assert!(a.payload.len() >= PACKET_HEADER_LEN && a.payload.len() <= 64);
            a.id
        })
        .collect();
    assert_eq!(got, owed, "every packet that asked got one answer, in order");
    assert!(dev.channel().unwrap().broken().is_none());
    // The channel survives: after initialization nothing leaves Ready.
    if initialized {
        assert!(matches!(dev.state(), InitState::Ready(_)));
        let a = srb_data(
            &mut dev,
            &mut guest,
            0,
            &INQUIRY,
            DataDirection::In,
            (0, 36, &[0]),
        );
        assert_good(&a, 36);
    } else {
        let a = srb_nodata(&mut dev, &mut guest, 0, &TUR);
        assert!(a.payload.len() == 64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn random_packets_never_panic_after_init(packets in proptest::collection::vec(wild(), 1..24)) {
        run_wild(&packets, true);
    }

    #[test]
    fn random_packets_never_panic_before_init(packets in proptest::collection::vec(wild(), 1..24)) {
        run_wild(&packets, false);
    }

    /// Well-formed SRBs with random CDBs, directions, lengths and buffers:
    /// always one completion, the right id, bytes moved within the buffer.
    #[test]
    fn random_srbs_are_answered(
        cdb in proptest::collection::vec(any::<u8>(), 1..=16),
        dir in 0u8..3,
        len in prop_oneof![Just(0u32), 1u32..9000],
        offset in 0u32..4096,
        lun in prop_oneof![Just(0u8), any::<u8>()],
        first in 0u64..70,
    ) {
        let (mut guest, mut dev) = rig();
        init(&mut dev, &guest);
        let dir = [DataDirection::Out, DataDirection::In, DataDirection::Unspecified][dir as usize];
        let pages = gpa::pages_spanned_for_test(offset, len);
        let pfns: Vec<u64> = (0..pages as u64).map(|i| first + i).collect();
        let id = guest.id();
        let vstor = srb_packet(lun, &cdb, dir, len);
        if len == 0 {
            prop_assert!(guest.send_inband(id, &vstor));
        } else {
            prop_assert!(guest.send_gpa(id, &[(offset, len, &pfns)], &vstor));
        }
        let a = answer(&mut dev, &guest);
        a.assert_linux_accepts(id);
        let srb = a.srb();
        prop_assert!(srb.data_transfer_length.get() <= len);
        if SrbStatus(srb.srb_status).status() != SrbStatus::SUCCESS {
            prop_assert_eq!(srb.data_transfer_length.get(), 0);
        }
        prop_assert_eq!(a.status(), SrbStatus(srb.srb_status).nt_status());
    }
}

/// `pages_spanned` for the strategy above (at least one page).
mod gpa {
    pub use storvsp_protocol::gpa::*;

    pub fn pages_spanned_for_test(offset: u32, len: u32) -> usize {
        vmbus::packet::pages_spanned(offset, len).unwrap_or(1).max(1)
    }
}

// ---------------------------------------------------------------------------
// Reads placed in the guest's pages by the backend (GuestDma + read_dma)
// ---------------------------------------------------------------------------

/// Guest RAM is "host memory" at the same addresses: every in-bounds run
/// is DMA-able (the root's `ChildDma` answers from its frames).
struct IdentityDma {
    len: u64,
    refuse: bool,
}

impl vsp::GuestDma for IdentityDma {
    fn dma_address(&self, gpa: u64, len: u64) -> Option<u64> {
        (!self.refuse && gpa.checked_add(len)? <= self.len).then_some(gpa)
    }
}

/// A memory disk that "DMAs" into the test's guest RAM.
struct DmaBackend {
    inner: MemoryBackend,
    ram: &'static AtomicMemory,
    calls: Rc<Cell<u32>>,
}

impl BlockBackend for DmaBackend {
    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }
    fn sector_count(&self) -> u64 {
        self.inner.sector_count()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.inner.read(lba, buf)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), BackendError> {
        self.inner.write(lba, buf)
    }
    fn flush(&mut self) -> Result<(), BackendError> {
        self.inner.flush()
    }
    fn read_dma(&mut self, lba: u64, segments: &[(u64, usize)]) -> Option<Result<(), BackendError>> {
        self.calls.set(self.calls.get() + 1);
        let mut at = lba;
        for &(phys, len) in segments {
            assert!(len % 512 == 0, "segments are whole sectors");
            let mut buf = vec![0u8; len];
            if let Err(e) = self.inner.read(at, &mut buf) {
                return Some(Err(e));
            }
            self.ram.write_at(phys, &buf).unwrap();
            at += len as u64 / 512;
        }
        Some(Ok(()))
    }
    fn write_dma(&mut self, lba: u64, segments: &[(u64, usize)]) -> Option<Result<(), BackendError>> {
        self.calls.set(self.calls.get() + 1);
        let mut at = lba;
        for &(phys, len) in segments {
            assert!(len % 512 == 0, "segments are whole sectors");
            let mut buf = vec![0u8; len];
            self.ram.read_at(phys, &mut buf).unwrap();
            if let Err(e) = self.inner.write(at, &buf) {
                return Some(Err(e));
            }
            at += len as u64 / 512;
        }
        Some(Ok(()))
    }
}

#[test]
fn reads_go_straight_to_guest_pages_when_the_host_can_place_them() {
    for refuse in [false, true] {
        let (mut guest, channel) = Guest::new(64 * 1024, 64 * 1024, true);
        let channel = channel.with_guest_dma(Box::new(IdentityDma {
            len: RAM_PAGES * 4096,
            refuse,
        }));
        let calls = Rc::new(Cell::new(0));
        let mut inner = MemoryBackend::new(512, SECTORS);
        let pattern: Vec<u8> = (0..16384u32).map(|i| (i * 5 + 1) as u8).collect();
        inner.write(200, &pattern).unwrap();
        let backend = DmaBackend {
            inner,
            ram: guest.ram,
            calls: calls.clone(),
        };
        let disk = ScsiDisk::new(backend, DiskConfig::new("storvsp-dma", 7)).unwrap();
        let mut dev =
            Storvsp::<&'static AtomicMemory, DmaBackend>::new(disk, StorvspConfig::default()).unwrap();
        dev.open(channel).unwrap();
        init(&mut dev, &guest);
        // Page-aligned, whole sectors: placed by the backend (unless the
        // host cannot say where the pages are), across four pages.
        let a = srb_data(
            &mut dev,
            &mut guest,
            0,
            &read10(200, 32),
            DataDirection::In,
            (0, 16384, &[8, 9, 10, 11]),
        );
        assert_good(&a, 16384);
        let mut back = vec![0u8; 16384];
        guest.ram.read_at(8 * 4096, &mut back).unwrap();
        assert_eq!(back, pattern);
        assert_eq!(calls.get(), u32::from(!refuse));
        assert_eq!(dev.stats().dma_reads, u64::from(!refuse));
        // A buffer starting 0x234 into a page, its second page elsewhere:
        // the first run is not a whole number of sectors, so the device
        // copies instead.
        let a = srb_data(
            &mut dev,
            &mut guest,
            0,
            &read10(200, 8),
            DataDirection::In,
            (0x234, 4096, &[20, 22]),
        );
        assert_good(&a, 4096);
        let first = 4096 - 0x234;
        let mut back = vec![0u8; 4096];
        guest.ram.read_at(20 * 4096 + 0x234, &mut back[..first]).unwrap();
        guest.ram.read_at(22 * 4096, &mut back[first..]).unwrap();
        assert_eq!(back, pattern[..4096]);
        assert_eq!(calls.get(), u32::from(!refuse), "copied, not placed");
        // A write from whole guest pages is taken from them the same way;
        // FUA flushes after it.
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 3 + 9) as u8).collect();
        guest.ram.write_at(30 * 4096, &data).unwrap();
        let mut fua_write = write10(600, 16);
        fua_write[1] |= 0x08;
        let a = srb_data(
            &mut dev,
            &mut guest,
            0,
            &fua_write,
            DataDirection::Out,
            (0, 8192, &[30, 31]),
        );
        assert_good(&a, 8192);
        assert_eq!(
            dev.disk(0).unwrap().backend().inner.bytes()[600 * 512..616 * 512],
            data[..]
        );
        assert_eq!(dev.stats().dma_writes, u64::from(!refuse));
        assert_eq!(dev.disk(0).unwrap().backend().inner.flushes, 1, "FUA flushed");
        assert_eq!(dev.stats().bytes_read, 16384 + 4096);
    }
}

// ---------------------------------------------------------------------------
// DMA the backend finishes later (start_dma / dma_done / wait_dma)
// ---------------------------------------------------------------------------

/// A started request: (ticket, lba, segments, write).
type Running = (DmaTicket, u64, Vec<(u64, usize)>, bool);

/// A `DmaBackend` whose DMA starts and finishes when the test says: a
/// started request does its copy only when `finish` lets it, and
/// `wait_dma` finishes it at once (as a device that was waited for).
struct LaterBackend {
    dma: DmaBackend,
    next: u64,
    /// Started requests.
    running: Vec<Running>,
    /// Tickets the test let finish, with their outcomes.
    finished: Rc<RefCell<Vec<DmaTicket>>>,
    waited: Rc<Cell<u32>>,
    /// What `completion_interrupts` says.
    interrupts: bool,
}

impl LaterBackend {
    fn run(&mut self, ticket: DmaTicket) -> Option<Result<(), BackendError>> {
        let i = self.running.iter().position(|r| r.0 == ticket)?;
        let (_, lba, segments, write) = self.running.remove(i);
        if write {
            self.dma.write_dma(lba, &segments)
        } else {
            self.dma.read_dma(lba, &segments)
        }
    }
}

impl BlockBackend for LaterBackend {
    fn sector_size(&self) -> u32 {
        self.dma.sector_size()
    }
    fn sector_count(&self) -> u64 {
        self.dma.sector_count()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.dma.read(lba, buf)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), BackendError> {
        self.dma.write(lba, buf)
    }
    fn flush(&mut self) -> Result<(), BackendError> {
        self.dma.flush()
    }
    fn start_dma(
        &mut self,
        lba: u64,
        segments: &[(u64, usize)],
        write: bool,
    ) -> Option<Result<DmaTicket, BackendError>> {
        self.next += 1;
        let t = DmaTicket(self.next);
        self.running.push((t, lba, segments.to_vec(), write));
        Some(Ok(t))
    }
    fn dma_done(&mut self, ticket: DmaTicket) -> Option<Result<(), BackendError>> {
        let allowed = self.finished.borrow().contains(&ticket);
        if allowed { self.run(ticket) } else { None }
    }
    fn wait_dma(&mut self, ticket: DmaTicket) -> Result<(), BackendError> {
        self.waited.set(self.waited.get() + 1);
        self.run(ticket).unwrap_or(Err(BackendError::Io))
    }
    fn completion_interrupts(&self) -> bool {
        self.interrupts
    }
}

/// A controller over a `LaterBackend` (its completions interrupting the
/// host or not), opened and initialized: the guest, the device, the
/// tickets the test lets finish and the backend's `wait_dma` count.
#[allow(clippy::type_complexity)]
fn later_device(
    interrupts: bool,
    pattern: &[u8],
) -> (
    Guest,
    Storvsp<&'static AtomicMemory, LaterBackend>,
    Rc<RefCell<Vec<DmaTicket>>>,
    Rc<Cell<u32>>,
) {
    let (guest, channel) = Guest::new(64 * 1024, 64 * 1024, true);
    let channel = channel.with_guest_dma(Box::new(IdentityDma {
        len: RAM_PAGES * 4096,
        refuse: false,
    }));
    let mut inner = MemoryBackend::new(512, SECTORS);
    inner.write(100, pattern).unwrap();
    let finished = Rc::new(RefCell::new(Vec::new()));
    let waited = Rc::new(Cell::new(0));
    let backend = LaterBackend {
        dma: DmaBackend {
            inner,
            ram: guest.ram,
            calls: Rc::new(Cell::new(0)),
        },
        next: 0,
        running: Vec::new(),
        finished: finished.clone(),
        waited: waited.clone(),
        interrupts,
    };
    let disk = ScsiDisk::new(backend, DiskConfig::new("storvsp-later", 9)).unwrap();
    let mut dev =
        Storvsp::<&'static AtomicMemory, LaterBackend>::new(disk, StorvspConfig::default()).unwrap();
    dev.open(channel).unwrap();
    init(&mut dev, &guest);
    (guest, dev, finished, waited)
}

#[test]
fn dma_that_interrupts_when_it_ends_is_awaited_not_polled_in_a_loop() {
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 5 + 1) as u8).collect();
    let (mut guest, mut dev, finished, _) = later_device(true, &pattern);
    let a = guest.id();
    assert!(guest.send_gpa(
        a,
        &[(0, 4096, &[8])],
        &srb_packet(0, &read10(100, 8), DataDirection::In, 4096)
    ));
    let r = dev.poll(64);
    assert!(r.awaiting_device && !r.more, "{r:?}");
    assert_eq!(dev.started_in_flight(), 1);
    // The root polls again after the interrupt anyway: the guest's next
    // requests need no signal.
    assert_eq!(guest.up.load_u32(vmbus::ring::INTERRUPT_MASK).unwrap(), 1);
    // Polled before it ended (another interrupt): still waiting.
    let r = dev.poll(64);
    assert!(r.awaiting_device && !r.more && guest.receive().is_none(), "{r:?}");
    finished.borrow_mut().push(DmaTicket(1));
    let r = dev.poll(64);
    assert!(r.signalled && !r.awaiting_device && !r.more, "{r:?}");
    guest
        .receive()
        .expect("the read's completion")
        .assert_linux_accepts(a);
    assert_eq!(guest.up.load_u32(vmbus::ring::INTERRUPT_MASK).unwrap(), 0);
}

#[test]
fn started_dma_is_completed_by_a_later_poll_and_waited_for_on_close() {
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    let (mut guest, mut dev, finished, waited) = later_device(false, &pattern);

    // Two reads: both started in one poll, nothing answered yet, and the
    // poll asks to be called again.
    let (a, b) = (guest.id(), guest.id());
    assert!(guest.send_gpa(
        a,
        &[(0, 4096, &[8])],
        &srb_packet(0, &read10(100, 8), DataDirection::In, 4096)
    ));
    assert!(guest.send_gpa(
        b,
        &[(0, 4096, &[9])],
        &srb_packet(0, &read10(108, 8), DataDirection::In, 4096)
    ));
    let mask = |guest: &Guest| guest.up.load_u32(vmbus::ring::INTERRUPT_MASK).unwrap();
    assert_eq!(mask(&guest), 0, "the guest signals its first requests");
    let r = dev.poll(64);
    assert!(r.more && !r.awaiting_device, "started DMA wants another poll");
    assert!(guest.receive().is_none(), "nothing completes before its DMA");
    assert_eq!(dev.started_in_flight(), 2);
    assert_eq!(dev.stats().started, 2);
    // Polled again anyway while DMA runs: the guest need not signal.
    assert_eq!(mask(&guest), 1, "masked while DMA runs");
    // The second finishes first: its completion alone, with its data.
    finished.borrow_mut().push(DmaTicket(2));
    let r = dev.poll(64);
    assert!(r.signalled && r.more);
    let done = guest.receive().expect("the second read's completion");
    done.assert_linux_accepts(b);
    assert_good(&done, 4096);
    let mut back = vec![0u8; 4096];
    guest.ram.read_at(9 * 4096, &mut back).unwrap();
    assert_eq!(back, pattern[4096..]);
    assert!(guest.receive().is_none());
    // Then the first.
    finished.borrow_mut().push(DmaTicket(1));
    let r = dev.poll(64);
    assert!(!r.more, "nothing left running");
    assert_eq!(mask(&guest), 0, "at rest the guest signals again");
    let done = guest.receive().expect("the first read's completion");
    done.assert_linux_accepts(a);
    assert_good(&done, 4096);
    guest.ram.read_at(8 * 4096, &mut back).unwrap();
    assert_eq!(back, pattern[..4096]);
    assert_eq!(dev.stats().dma_reads, 2);
    assert_eq!(dev.stats().bytes_read, 8192);

    // A write started and the channel closed before it finished: close
    // waits for it (the guest's pages are given up after close) and
    // answers nothing.
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 11 + 1) as u8).collect();
    guest.ram.write_at(12 * 4096, &data).unwrap();
    let w = guest.id();
    assert!(guest.send_gpa(
        w,
        &[(0, 4096, &[12])],
        &srb_packet(0, &write10(300, 8), DataDirection::Out, 4096)
    ));
    dev.poll(64);
    assert_eq!(dev.started_in_flight(), 1);
    dev.close();
    assert_eq!(waited.get(), 1, "close waited for the started write");
    assert_eq!(dev.started_in_flight(), 0);
    assert_eq!(
        dev.disk(0).unwrap().backend().dma.inner.bytes()[300 * 512..308 * 512],
        data[..]
    );
}

#[test]
fn too_many_started_srbs_stop_the_reading_until_some_finish() {
    let (mut guest, channel) = Guest::new(256 * 1024, 256 * 1024, true);
    let channel = channel.with_guest_dma(Box::new(IdentityDma {
        len: RAM_PAGES * 4096,
        refuse: false,
    }));
    let finished = Rc::new(RefCell::new(Vec::new()));
    let backend = LaterBackend {
        dma: DmaBackend {
            inner: MemoryBackend::new(512, SECTORS),
            ram: guest.ram,
            calls: Rc::new(Cell::new(0)),
        },
        next: 0,
        running: Vec::new(),
        finished: finished.clone(),
        waited: Rc::new(Cell::new(0)),
        interrupts: false,
    };
    let disk = ScsiDisk::new(backend, DiskConfig::new("storvsp-many", 9)).unwrap();
    let mut dev =
        Storvsp::<&'static AtomicMemory, LaterBackend>::new(disk, StorvspConfig::default()).unwrap();
    dev.open(channel).unwrap();
    init(&mut dev, &guest);
    let total = MAX_STARTED_SRBS as u64 + 10;
    for _ in 0..total {
        let id = guest.id();
        assert!(guest.send_gpa(
            id,
            &[(0, 512, &[8])],
            &srb_packet(0, &read10(0, 1), DataDirection::In, 512)
        ));
    }
    dev.poll(1000);
    assert_eq!(
        dev.started_in_flight(),
        MAX_STARTED_SRBS,
        "reading stops at the limit"
    );
    // Everything finishes: every SRB is completed over the next polls.
    finished.borrow_mut().extend((1..=total).map(DmaTicket));
    let mut answers = 0;
    for _ in 0..8 {
        dev.poll(1000);
        answers += guest.receive_all().len();
    }
    assert_eq!(answers as u64, total);
    assert_eq!(dev.started_in_flight(), 0);
}
