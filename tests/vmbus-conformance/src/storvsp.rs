//! Synthetic SCSI controller (STOR-*): `storvsp` with a `scsi_disk` target
//! over real rings in simulated guest memory, driven with the packets Linux
//! 6.1 `drivers/scsi/storvsc_drv.c` sends (64-byte `vstor_packet`s, init
//! packets with transaction id `VMBUS_RQST_INIT`, data by GPA-direct
//! ranges from `vmbus_sendpacket_mpb_desc`). SCSI rules from SPC-4 and
//! SBC-3 (section numbers in each case).

use crate::Case;
use ::storvsp::{DEFAULT_MAX_TRANSFER_BYTES, InitState, Storvsp, StorvspConfig};
use scsi_disk::{BackendError, BlockBackend, DiskConfig, DmaTicket, MemoryBackend, ScsiDisk};
use storvsp_protocol::{
    ChannelProperties, DataDirection, NtStatus, Operation, PACKET_HEADER_LEN, PacketHeader, ProtocolVersion,
    ProtocolVersionBody, ScsiRequest, SrbStatus, gpa, request_packet, scsi_request,
};
use vmbus::memory::{AtomicMemory, SharedMemory};
use vmbus::packet::{Descriptor, FLAG_COMPLETION_REQUESTED, PacketType};
use vmbus::ring::{CONTROL_SIZE, FEAT_PENDING_SEND_SZ, Reader, Ring, RingError, Writer};
use vsp::{Channel, Device, GuestSignal};
use zerocopy::{FromBytes, IntoBytes};

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}

/// Linux's transaction id for every init packet (`VMBUS_RQST_INIT`).
const RQST_INIT: u64 = u64::MAX - 2;
/// Guest RAM of the rig: 64 pages.
const RAM_PAGES: u64 = 64;
/// The disk: 2048 sectors of 512 bytes.
const SECTORS: u64 = 2048;
/// SCSI status CHECK CONDITION (SAM-5 §5.3.1).
const CHECK_CONDITION: u8 = 0x02;
/// Sense keys and ASCs (SPC-4 §4.5.6 table 48, annex D).
const ILLEGAL_REQUEST: u8 = 0x5;
const INVALID_OPCODE: u8 = 0x20;
const LBA_OUT_OF_RANGE: u8 = 0x21;
const INVALID_FIELD: u8 = 0x24;

fn err(e: impl core::fmt::Debug) -> String {
    format!("{e:?}")
}

/// A guest signal that goes nowhere (the rig polls after every send).
struct Quiet;

impl GuestSignal for Quiet {
    fn signal(&mut self) -> bool {
        true
    }
}

/// The guest's memory: both rings and its RAM.
struct Mem {
    up: AtomicMemory,
    down: AtomicMemory,
    ram: AtomicMemory,
}

impl Mem {
    fn new(up: u64, down: u64) -> Result<Self, String> {
        let m = Self {
            up: AtomicMemory::new(CONTROL_SIZE + up),
            down: AtomicMemory::new(CONTROL_SIZE + down),
            ram: AtomicMemory::new(RAM_PAGES * 4096),
        };
        Ring::new(&m.up)
            .map_err(err)?
            .reset(FEAT_PENDING_SEND_SZ)
            .map_err(err)?;
        Ring::new(&m.down)
            .map_err(err)?
            .reset(FEAT_PENDING_SEND_SZ)
            .map_err(err)?;
        Ok(m)
    }

    fn std() -> Result<Self, String> {
        Self::new(64 * 1024, 64 * 1024)
    }

    /// The host's end, with the guest's RAM for GPA-direct data.
    fn channel(&self) -> Result<Channel<&AtomicMemory>, String> {
        Ok(Channel::new(&self.up, &self.down, Box::new(Quiet))
            .map_err(err)?
            .with_guest_ram(&self.ram))
    }
}

type Dev<'a, B = MemoryBackend> = Storvsp<&'a AtomicMemory, B>;

/// A disk of `sectors` 512-byte blocks that stores nothing (reads zeros):
/// for capacities a memory backend cannot hold.
struct Sparse(u64);

impl BlockBackend for Sparse {
    fn sector_size(&self) -> u32 {
        512
    }
    fn sector_count(&self) -> u64 {
        self.0
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&mut self, _lba: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        buf.fill(0);
        Ok(())
    }
    fn write(&mut self, _lba: u64, _buf: &[u8]) -> Result<(), BackendError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

fn disk(sectors: u64) -> Result<ScsiDisk<MemoryBackend>, String> {
    ScsiDisk::new(
        MemoryBackend::new(512, sectors),
        DiskConfig::new("conformance-0", 0x5_7042),
    )
    .map_err(err)
}

/// A completion as the guest reads it.
#[derive(Debug)]
struct Answer {
    kind: PacketType,
    id: u64,
    /// `hv_pkt_datalen` bytes: the vstor packet.
    payload: Vec<u8>,
}

impl Answer {
    fn header(&self) -> Result<PacketHeader, String> {
        PacketHeader::read_from_prefix(&self.payload)
            .map(|(h, _)| h)
            .map_err(|_| format!("{} bytes: no vstor header", self.payload.len()))
    }

    fn status(&self) -> Result<NtStatus, String> {
        Ok(NtStatus(self.header()?.status.get()))
    }

    fn body(&self) -> &[u8] {
        self.payload.get(PACKET_HEADER_LEN..).unwrap_or(&[])
    }

    fn srb(&self) -> Result<ScsiRequest, String> {
        ScsiRequest::read_from_prefix(self.body())
            .map(|(s, _)| s)
            .map_err(|_| format!("{} body bytes: no SRB", self.body().len()))
    }

    /// What Linux requires of every answer (`storvsc_on_channel_callback`:
    /// a VM_PKT_COMP matching the full 64-bit id, at least
    /// `sizeof(struct vstor_packet)` = 64 bytes, operation COMPLETE_IO).
    fn linux_accepts(&self, id: u64) -> Result<(), String> {
        ensure!(self.kind == PacketType::COMPLETION, "packet type {:?}", self.kind);
        ensure!(self.id == id, "transaction id {:#x}, sent {id:#x}", self.id);
        ensure!(
            self.payload.len() == 64,
            "{}-byte completion (Linux drops those under 64)",
            self.payload.len()
        );
        let op = Operation(self.header()?.operation.get());
        ensure!(op == Operation::COMPLETE_IO, "operation {op:?}");
        Ok(())
    }
}

/// The device open over a [`Mem`], and the guest's side of it.
struct Rig<'a, B: BlockBackend = MemoryBackend> {
    mem: &'a Mem,
    dev: Dev<'a, B>,
    next_id: u64,
}

impl<'a> Rig<'a> {
    /// One 1 MiB disk at LUN 0, default configuration.
    fn new(mem: &'a Mem) -> Result<Self, String> {
        Self::with(
            mem,
            Dev::new(disk(SECTORS)?, StorvspConfig::default()).map_err(err)?,
        )
    }

    /// Through `storvsc_channel_init` (6.2).
    fn ready(mem: &'a Mem) -> Result<Self, String> {
        let mut r = Self::new(mem)?;
        r.init()?;
        Ok(r)
    }

    fn disk_bytes(&self, lun: u8) -> Result<Vec<u8>, String> {
        Ok(self.dev.disk(lun).ok_or("no disk")?.backend().bytes().to_vec())
    }

    fn flushes(&self) -> Result<u64, String> {
        Ok(self.dev.disk(0).ok_or("no disk")?.backend().flushes)
    }
}

impl<'a, B: BlockBackend + 'static> Rig<'a, B> {
    fn with(mem: &'a Mem, mut dev: Dev<'a, B>) -> Result<Self, String> {
        dev.open(mem.channel()?).map_err(err)?;
        Ok(Self { mem, dev, next_id: 1 })
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn write(&self, d: &Descriptor, rest: &[u8]) -> Result<(), String> {
        Writer::new(Ring::new(&self.mem.up).map_err(err)?)
            .write(&[d.as_bytes(), rest])
            .map(|_| ())
            .map_err(|e| match e {
                RingError::Full { .. } => "guest-to-host ring full".to_string(),
                e => err(e),
            })
    }

    fn send_inband(&self, id: u64, vstor: &[u8], flags: u16) -> Result<(), String> {
        self.write(
            &Descriptor::new(PacketType::DATA_INBAND, 16, vstor.len(), flags, id),
            vstor,
        )
    }

    /// `vmbus_sendpacket_mpb_desc`: the range list, the vstor packet at offset8.
    fn send_gpa(&self, id: u64, ranges: &[(u32, u32, &[u64])], vstor: &[u8]) -> Result<(), String> {
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

    fn receive(&self) -> Result<Option<Answer>, String> {
        let mut buf = [0u8; 4096];
        let Some((p, _)) = Reader::new(Ring::new(&self.mem.down).map_err(err)?)
            .read(&mut buf)
            .map_err(err)?
        else {
            return Ok(None);
        };
        let r = p.descriptor.payload();
        Ok(Some(Answer {
            kind: p.kind,
            id: p.descriptor.transaction_id,
            payload: buf.get(r.start..r.end.min(p.len)).unwrap_or(&[]).to_vec(),
        }))
    }

    fn receive_all(&self) -> Result<Vec<Answer>, String> {
        let mut all = Vec::new();
        while let Some(a) = self.receive()? {
            all.push(a);
        }
        Ok(all)
    }

    /// Poll once; the one answer the guest gets.
    fn answer(&mut self) -> Result<Answer, String> {
        let r = self.dev.poll(vsp::POLL_BUDGET);
        ensure!(r.broke.is_none(), "channel broke: {r:?}");
        let mut all = self.receive_all()?;
        ensure!(all.len() == 1, "{} answers: {all:?}", all.len());
        all.pop().ok_or_else(|| "no answer".to_string())
    }

    /// One init step as Linux sends it; the (checked) answer.
    fn step(&mut self, op: Operation, body: &[u8]) -> Result<Answer, String> {
        self.send_inband(RQST_INIT, &request_packet(op, body), FLAG_COMPLETION_REQUESTED)?;
        let a = self.answer()?;
        a.linux_accepts(RQST_INIT).map_err(|e| format!("{op:?}: {e}"))?;
        Ok(a)
    }

    fn version(&mut self, v: u16) -> Result<Answer, String> {
        self.step(Operation::QUERY_PROTOCOL_VERSION, &version_body(v))
    }

    fn init_with(&mut self, v: u16) -> Result<(), String> {
        for (what, a) in [
            ("BEGIN", self.step(Operation::BEGIN_INITIALIZATION, &[])?),
            ("VERSION", self.version(v)?),
            ("PROPERTIES", self.step(Operation::QUERY_PROPERTIES, &[])?),
            ("END", self.step(Operation::END_INITIALIZATION, &[])?),
        ] {
            ensure!(a.status()? == NtStatus::SUCCESS, "{what}: {:?}", a.status()?);
        }
        Ok(())
    }

    fn init(&mut self) -> Result<(), String> {
        self.init_with(0x0602)
    }

    /// An SRB moving no data, in-band.
    fn srb_nodata(&mut self, lun: u8, cdb: &[u8]) -> Result<Answer, String> {
        self.srb_request(&scsi_request(lun, cdb, DataDirection::Unspecified, 0), None)
    }

    /// An SRB with one GPA-direct range of `len` bytes at `offset` into
    /// the first of `pfns`.
    fn srb_data(
        &mut self,
        lun: u8,
        cdb: &[u8],
        dir: DataDirection,
        (offset, len, pfns): (u32, u32, &[u64]),
    ) -> Result<Answer, String> {
        self.srb_request(&scsi_request(lun, cdb, dir, len), Some((offset, len, pfns)))
    }

    fn srb_request(
        &mut self,
        srb: &ScsiRequest,
        range: Option<(u32, u32, &[u64])>,
    ) -> Result<Answer, String> {
        let id = self.id();
        let vstor = request_packet(Operation::EXECUTE_SRB, srb.as_bytes());
        match range {
            Some(r) => self.send_gpa(id, &[r], &vstor)?,
            None => self.send_inband(id, &vstor, FLAG_COMPLETION_REQUESTED)?,
        }
        let a = self.answer()?;
        a.linux_accepts(id)?;
        Ok(a)
    }

    fn read_ram(&self, gpa: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut v = vec![0u8; len];
        self.mem.ram.read_at(gpa, &mut v).map_err(err)?;
        Ok(v)
    }

    fn write_ram(&self, gpa: u64, data: &[u8]) -> Result<(), String> {
        self.mem.ram.write_at(gpa, data).map_err(err)
    }
}

fn version_body(v: u16) -> Vec<u8> {
    ProtocolVersionBody {
        major_minor: v.into(),
        revision: 0.into(),
    }
    .as_bytes()
    .to_vec()
}

/// GOOD, SRB_STATUS_SUCCESS, `moved` bytes (the residual is Linux's).
fn good(a: &Answer, moved: u32) -> Result<(), String> {
    let srb = a.srb()?;
    ensure!(
        a.status()? == NtStatus::SUCCESS,
        "status {:?}, srb {srb:?}",
        a.status()?
    );
    ensure!(
        SrbStatus(srb.srb_status) == SrbStatus::SUCCESS,
        "srb_status {:#x}",
        srb.srb_status
    );
    ensure!(srb.scsi_status == 0, "scsi_status {:#x}", srb.scsi_status);
    ensure!(
        srb.data_transfer_length.get() == moved,
        "moved {}, expected {moved}",
        srb.data_transfer_length.get()
    );
    Ok(())
}

/// CHECK CONDITION with autosense: SRB status, sense key and ASC; no bytes
/// moved.
fn check(a: &Answer, srb_status: SrbStatus, key: u8, asc: u8) -> Result<(), String> {
    let srb = a.srb()?;
    let s = SrbStatus(srb.srb_status);
    ensure!(s.status() == srb_status, "srb_status {:#x}", srb.srb_status);
    ensure!(s.autosense_valid(), "no autosense: {srb:?}");
    ensure!(
        srb.scsi_status == CHECK_CONDITION,
        "scsi_status {:#x}",
        srb.scsi_status
    );
    ensure!(
        srb.data_transfer_length.get() == 0,
        "{} bytes moved on failure",
        srb.data_transfer_length.get()
    );
    ensure!(
        srb.sense_info_length >= 14,
        "sense length {}",
        srb.sense_info_length
    );
    ensure!(
        srb.data[0] & 0x7F == 0x70,
        "sense response code {:#x}",
        srb.data[0]
    );
    ensure!(
        srb.data[2] & 0x0F == key && srb.data[12] == asc,
        "sense key {:#x} ASC {:#x}, expected {key:#x}/{asc:#x}",
        srb.data[2] & 0x0F,
        srb.data[12]
    );
    ensure!(a.status()? != NtStatus::SUCCESS, "NT status SUCCESS on failure");
    Ok(())
}

fn rw10(op: u8, lba: u32, blocks: u16, flags: u8) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [op, flags, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    rw10(0x28, lba, blocks, 0)
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    rw10(0x2A, lba, blocks, 0)
}

fn rw6(op: u8, lba: u32, blocks: u8) -> [u8; 6] {
    let l = lba.to_be_bytes();
    [op, l[1] & 0x1F, l[2], l[3], blocks, 0]
}

fn rw12(op: u8, lba: u32, blocks: u32) -> [u8; 12] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [op, 0, l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3], 0, 0]
}

fn rw16(op: u8, lba: u64, blocks: u32, flags: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [0x12, evpd as u8, page, a[0], a[1], 0]
}

const TUR: [u8; 6] = [0; 6];

/// A pattern that differs per block and per byte.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ ((i >> 9) as u8) ^ seed)
        .collect()
}

// ---------------------------------------------------------------------------
// The handshake
// ---------------------------------------------------------------------------

fn begin_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    ensure!(r.dev.state() == InitState::Begin, "{:?}", r.dev.state());
    let a = r.step(Operation::BEGIN_INITIALIZATION, &[])?;
    ensure!(a.status()? == NtStatus::SUCCESS, "{:?}", a.status()?);
    ensure!(r.dev.state() == InitState::QueryVersion, "{:?}", r.dev.state());
    Ok(())
}

fn version_case(v: u16, expect: ProtocolVersion) -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    r.step(Operation::BEGIN_INITIALIZATION, &[])?;
    let a = r.version(v)?;
    ensure!(a.status()? == NtStatus::SUCCESS, "{v:#06x}: {:?}", a.status()?);
    ensure!(
        a.body().get(..2) == Some(&v.to_le_bytes()[..]),
        "the proposal is not echoed: {:?}",
        a.body().get(..4)
    );
    ensure!(
        r.dev.version() == Some(expect),
        "negotiated {:?}",
        r.dev.version()
    );
    // The rest of the handshake at this version.
    for op in [Operation::QUERY_PROPERTIES, Operation::END_INITIALIZATION] {
        let a = r.step(op, &[])?;
        ensure!(a.status()? == NtStatus::SUCCESS, "{op:?}: {:?}", a.status()?);
    }
    ensure!(r.dev.state() == InitState::Ready(expect), "{:?}", r.dev.state());
    good(&r.srb_nodata(0, &TUR)?, 0)
}

macro_rules! version_case {
    ($id:literal, $v:literal, $expect:expr, $name:literal) => {
        Case {
            id: $id,
            rule: concat!(
                "QUERY_PROTOCOL_VERSION ",
                $name,
                " is one Linux proposes (storvsc_drv.c vmstor_protocols: 6.2, 6.0, 5.1 in turn) and is accepted"
            ),
            expect: "COMPLETE_IO SUCCESS echoing the proposal; properties, END and an SRB follow at that version",
            run: || version_case($v, $expect),
        }
    };
}

fn version_refused_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    r.step(Operation::BEGIN_INITIALIZATION, &[])?;
    for v in [0x0700u16, 0x0603, 0x0000, 0xFFFF, 0x0402] {
        let a = r.version(v)?;
        ensure!(
            a.status()? == NtStatus::REVISION_MISMATCH,
            "{v:#06x}: {:?}",
            a.status()?
        );
        ensure!(
            r.dev.state() == InitState::QueryVersion,
            "{v:#06x}: state {:?}",
            r.dev.state()
        );
    }
    // Linux's next proposal is still heard.
    let a = r.version(0x0600)?;
    ensure!(a.status()? == NtStatus::SUCCESS, "{:?}", a.status()?);
    ensure!(
        r.dev.version() == Some(ProtocolVersion::WIN8_1),
        "{:?}",
        r.dev.version()
    );
    Ok(())
}

/// Sub-channel memory must outlive the devices the controller makes.
fn leaked_mem() -> Result<&'static Mem, String> {
    Ok(Box::leak(Box::new(Mem::std()?)))
}

fn create_sub_channels<B: BlockBackend + 'static>(r: &mut Rig<'_, B>, n: u16) -> Result<NtStatus, String> {
    r.step(Operation::CREATE_SUB_CHANNELS, &n.to_le_bytes())?.status()
}

fn sub_channel_grant_case() -> Result<(), String> {
    let mem = leaked_mem()?;
    let mut r = Rig::new(mem)?;
    ensure!(
        r.dev.take_sub_channel_devices().is_empty(),
        "sub-channels before any request"
    );
    r.init()?;
    let max = ::storvsp::DEFAULT_SUB_CHANNELS;
    let s = create_sub_channels(&mut r, 2)?;
    ensure!(s == NtStatus::SUCCESS, "2 of {max}: {s:?}");
    let mut subs = r.dev.take_sub_channel_devices();
    let s = create_sub_channels(&mut r, max - 2)?;
    ensure!(s == NtStatus::SUCCESS, "{} more: {s:?}", max - 2);
    subs.extend(r.dev.take_sub_channel_devices());
    let s = create_sub_channels(&mut r, 1)?;
    ensure!(s == NtStatus::INVALID_PARAMETER, "past the limit: {s:?}");
    ensure!(subs.len() == usize::from(max), "{} sub-channels", subs.len());
    for (i, d) in subs.iter().enumerate() {
        ensure!(
            d.role() == ::storvsp::Role::SubChannel(i as u16 + 1),
            "{:?}",
            d.role()
        );
        let o = Device::<&AtomicMemory>::offer(d);
        ensure!(
            o.interface_type == storvsp_protocol::SCSI_INTERFACE_GUID,
            "{:02x?}",
            o.interface_type
        );
    }
    Ok(())
}

fn sub_channel_io_case() -> Result<(), String> {
    let mem = leaked_mem()?;
    let mut r = Rig::new(mem)?;
    r.init()?;
    ensure!(
        create_sub_channels(&mut r, 1)? == NtStatus::SUCCESS,
        "CREATE_SUB_CHANNELS 1"
    );
    let sub = r.dev.take_sub_channel_devices().pop().ok_or("no sub-channel")?;
    let sub_mem = leaked_mem()?;
    let mut s = Rig::with(sub_mem, sub)?;
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 5) as u8).collect();
    sub_mem
        .ram
        .write_at(3 * 4096, &pattern)
        .map_err(|e| format!("{e:?}"))?;
    let a = s.srb_data(0, &write10(64, 16), DataDirection::Out, (0, 8192, &[3, 4]))?;
    good(&a, 8192)?;
    let a = r.srb_data(0, &read10(64, 16), DataDirection::In, (0, 8192, &[10, 11]))?;
    good(&a, 8192)?;
    let mut back = vec![0u8; 8192];
    mem.ram
        .read_at(10 * 4096, &mut back)
        .map_err(|e| format!("{e:?}"))?;
    ensure!(back == pattern, "the primary reads what the sub-channel wrote");
    for op in [Operation::BEGIN_INITIALIZATION, Operation::CREATE_SUB_CHANNELS] {
        let a = s.step(op, &1u16.to_le_bytes())?;
        ensure!(
            a.status()? == NtStatus::INVALID_DEVICE_STATE,
            "{op:?} on a sub-channel: {:?}",
            a.status()?
        );
    }
    Ok(())
}

fn sub_channel_reset_case() -> Result<(), String> {
    let mem = leaked_mem()?;
    let mut r = Rig::new(mem)?;
    r.init()?;
    let max = ::storvsp::DEFAULT_SUB_CHANNELS;
    ensure!(
        create_sub_channels(&mut r, max)? == NtStatus::SUCCESS,
        "CREATE_SUB_CHANNELS {max}"
    );
    ensure!(
        r.dev.take_sub_channel_devices().len() == usize::from(max),
        "granted"
    );
    r.dev.close();
    ensure!(
        r.dev.sub_channels_offered() == 0,
        "{} still offered",
        r.dev.sub_channels_offered()
    );
    let mem2 = leaked_mem()?;
    let mut r = Rig::with(mem2, r.dev)?;
    r.init()?;
    ensure!(
        create_sub_channels(&mut r, max)? == NtStatus::SUCCESS,
        "again after the new handshake"
    );
    ensure!(
        r.dev.take_sub_channel_devices().len() == usize::from(max),
        "granted again"
    );
    Ok(())
}

/// The guest's RAM at the same addresses for the host's DMA (the root's
/// `ChildDma` answers from the child's frames the same way).
struct IdentityDma;

impl vsp::GuestDma for IdentityDma {
    fn dma_address(&self, gpa: u64, len: u64) -> Option<u64> {
        (gpa.checked_add(len)? <= RAM_PAGES * 4096).then_some(gpa)
    }
}

/// A disk whose reads are DMA into the guest's RAM that finishes when the
/// case releases it: a device completing requests in its own order.
struct Reordering {
    inner: MemoryBackend,
    ram: &'static AtomicMemory,
    next: u64,
    running: Vec<StartedRead>,
    released: Vec<DmaTicket>,
}

/// A read the device has not finished: (ticket, first block, segments).
type StartedRead = (DmaTicket, u64, Vec<(u64, usize)>);

impl Reordering {
    fn run(&mut self, ticket: DmaTicket) -> Option<Result<(), BackendError>> {
        let i = self.running.iter().position(|r| r.0 == ticket)?;
        let (_, mut lba, segments) = self.running.remove(i);
        for (gpa, len) in segments {
            let mut buf = vec![0u8; len];
            if let Err(e) = self.inner.read(lba, &mut buf) {
                return Some(Err(e));
            }
            if self.ram.write_at(gpa, &buf).is_err() {
                return Some(Err(BackendError::Io));
            }
            lba += len as u64 / 512;
        }
        Some(Ok(()))
    }
}

impl BlockBackend for Reordering {
    fn sector_size(&self) -> u32 {
        512
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
    fn start_dma(
        &mut self,
        lba: u64,
        segments: &[(u64, usize)],
        write: bool,
    ) -> Option<Result<DmaTicket, BackendError>> {
        if write {
            return None;
        }
        self.next += 1;
        let ticket = DmaTicket(self.next);
        self.running.push((ticket, lba, segments.to_vec()));
        Some(Ok(ticket))
    }
    fn dma_done(&mut self, ticket: DmaTicket) -> Option<Result<(), BackendError>> {
        if self.released.contains(&ticket) {
            self.run(ticket)
        } else {
            None
        }
    }
    fn wait_dma(&mut self, ticket: DmaTicket) -> Result<(), BackendError> {
        self.run(ticket).unwrap_or(Err(BackendError::Io))
    }
}

fn out_of_order_case() -> Result<(), String> {
    let mem = leaked_mem()?;
    let mut inner = MemoryBackend::new(512, SECTORS);
    let data = pattern(8192, 0x46);
    inner.write(64, &data).map_err(err)?;
    let backend = Reordering {
        inner,
        ram: &mem.ram,
        next: 0,
        running: Vec::new(),
        released: Vec::new(),
    };
    let disk = ScsiDisk::new(backend, DiskConfig::new("conformance-46", 46)).map_err(err)?;
    let mut dev: Dev<'static, Reordering> = Dev::new(disk, StorvspConfig::default()).map_err(err)?;
    dev.open(mem.channel()?.with_guest_dma(Box::new(IdentityDma)))
        .map_err(err)?;
    let mut r = Rig { mem, dev, next_id: 1 };
    r.init()?;
    let (first, second) = (r.id(), r.id());
    for (id, lba, page) in [(first, 64u32, 20u64), (second, 72, 21)] {
        let srb = scsi_request(0, &read10(lba, 8), DataDirection::In, 4096);
        r.send_gpa(
            id,
            &[(0, 4096, &[page])],
            &request_packet(Operation::EXECUTE_SRB, srb.as_bytes()),
        )?;
    }
    r.dev.poll(64);
    ensure!(r.receive()?.is_none(), "an answer before its data was read");
    // The device finishes the second read first: its answer comes first.
    r.dev
        .disk_mut(0)
        .ok_or("no disk")?
        .backend_mut()
        .released
        .push(DmaTicket(2));
    r.dev.poll(64);
    let a = r.receive()?.ok_or("no answer after the second read finished")?;
    a.linux_accepts(second)?;
    ensure!(a.status()? == NtStatus::SUCCESS, "{:?}", a.status()?);
    ensure!(a.srb()?.data_transfer_length.get() == 4096, "moved");
    ensure!(
        r.read_ram(21 * 4096, 4096)? == data[4096..],
        "the second read's data"
    );
    ensure!(
        r.receive()?.is_none(),
        "the first read answered before it finished"
    );
    r.dev
        .disk_mut(0)
        .ok_or("no disk")?
        .backend_mut()
        .released
        .push(DmaTicket(1));
    r.dev.poll(64);
    let a = r.receive()?.ok_or("no answer after the first read finished")?;
    a.linux_accepts(first)?;
    ensure!(a.status()? == NtStatus::SUCCESS, "{:?}", a.status()?);
    ensure!(
        r.read_ram(20 * 4096, 4096)? == data[..4096],
        "the first read's data"
    );
    Ok(())
}

fn properties_case() -> Result<(), String> {
    for (max, subs) in [
        (DEFAULT_MAX_TRANSFER_BYTES, ::storvsp::DEFAULT_SUB_CHANNELS),
        (::storvsp::MAX_TRANSFER_BYTES_LIMIT, 0),
        (4096, ::storvsp::MAX_SUB_CHANNELS),
    ] {
        let mem = Mem::std()?;
        let config = StorvspConfig {
            max_transfer_bytes: max,
            instance: None,
            max_sub_channels: subs,
            completion_spins: 0,
        };
        let mut r = Rig::with(&mem, Dev::new(disk(SECTORS)?, config).map_err(err)?)?;
        r.step(Operation::BEGIN_INITIALIZATION, &[])?;
        r.version(0x0602)?;
        let a = r.step(Operation::QUERY_PROPERTIES, &[])?;
        ensure!(a.status()? == NtStatus::SUCCESS, "{:?}", a.status()?);
        let (p, _) = ChannelProperties::read_from_prefix(a.body()).map_err(|_| "short properties")?;
        ensure!(
            p.max_transfer_bytes.get() == max,
            "max_transfer_bytes {}",
            p.max_transfer_bytes.get()
        );
        let flag = if subs > 0 {
            storvsp_protocol::STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL
        } else {
            0
        };
        ensure!(
            p.max_channel_count.get() == subs && p.flags.get() == flag,
            "channels {} flags {:#x} for {subs} sub-channels",
            p.max_channel_count.get(),
            p.flags.get()
        );
    }
    Ok(())
}

fn end_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    r.init()?;
    ensure!(
        r.dev.state() == InitState::Ready(ProtocolVersion::WIN10),
        "{:?}",
        r.dev.state()
    );
    good(&r.srb_nodata(0, &TUR)?, 0)?;
    // No sub-channels is not a request; resets are no-ops.
    let a = r.step(Operation::CREATE_SUB_CHANNELS, &0u16.to_le_bytes())?;
    ensure!(a.status()? == NtStatus::INVALID_PARAMETER, "{:?}", a.status()?);
    for op in [
        Operation::RESET_LUN,
        Operation::RESET_ADAPTER,
        Operation::RESET_BUS,
    ] {
        let a = r.step(op, &[])?;
        ensure!(a.status()? == NtStatus::SUCCESS, "{op:?}: {:?}", a.status()?);
    }
    for op in [Operation::COMPLETE_IO, Operation::ENUMERATE_BUS, Operation(99)] {
        let a = r.step(op, &[])?;
        ensure!(
            a.status()? == NtStatus::INVALID_DEVICE_REQUEST,
            "{op:?}: {:?}",
            a.status()?
        );
    }
    ensure!(
        r.dev.state() == InitState::Ready(ProtocolVersion::WIN10),
        "{:?}",
        r.dev.state()
    );
    Ok(())
}

fn before_init_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    let a = r.srb_nodata(0, &TUR)?;
    ensure!(
        a.status()? == NtStatus::INVALID_DEVICE_STATE,
        "SRB first: {:?}",
        a.status()?
    );
    for op in [
        Operation::QUERY_PROPERTIES,
        Operation::END_INITIALIZATION,
        Operation::QUERY_PROTOCOL_VERSION,
    ] {
        let a = r.step(op, &version_body(0x0602))?;
        ensure!(
            a.status()? == NtStatus::INVALID_DEVICE_STATE,
            "{op:?} first: {:?}",
            a.status()?
        );
    }
    r.step(Operation::BEGIN_INITIALIZATION, &[])?;
    let a = r.step(Operation::BEGIN_INITIALIZATION, &[])?;
    ensure!(
        a.status()? == NtStatus::INVALID_DEVICE_STATE,
        "second BEGIN: {:?}",
        a.status()?
    );
    let a = r.srb_nodata(0, &TUR)?;
    ensure!(
        a.status()? == NtStatus::INVALID_DEVICE_STATE,
        "SRB mid-handshake: {:?}",
        a.status()?
    );
    ensure!(
        r.dev.stats().srbs == 0 && r.dev.stats().bytes_read == 0,
        "{:?}",
        r.dev.stats()
    );
    // The handshake continues from where it is.
    r.version(0x0602)?;
    r.step(Operation::QUERY_PROPERTIES, &[])?;
    r.step(Operation::END_INITIALIZATION, &[])?;
    good(&r.srb_nodata(0, &TUR)?, 0)
}

fn completion_shape_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    // No COMPLETION_REQUESTED: acted on, not answered.
    r.send_inband(5, &request_packet(Operation::BEGIN_INITIALIZATION, &[]), 0)?;
    let p = r.dev.poll(vsp::POLL_BUDGET);
    ensure!(p.broke.is_none(), "{p:?}");
    ensure!(r.receive()?.is_none(), "answered without COMPLETION_REQUESTED");
    ensure!(r.dev.state() == InitState::QueryVersion, "{:?}", r.dev.state());
    // A shorter (pre-win8, 48-byte) request gets an answer of its size.
    let mem2 = Mem::std()?;
    let mut r2 = Rig::new(&mem2)?;
    let p = request_packet(Operation::BEGIN_INITIALIZATION, &[]);
    r2.send_inband(RQST_INIT, p.get(..48).ok_or("short")?, FLAG_COMPLETION_REQUESTED)?;
    let a = r2.answer()?;
    ensure!(
        a.payload.len() == 48 && a.status()? == NtStatus::SUCCESS,
        "{} bytes, {:?}",
        a.payload.len(),
        a.status()?
    );
    // Linux's 64-byte requests: 64-byte COMPLETE_IO with the full 64-bit id.
    r.version(0x0602)?;
    let a = r.step(Operation::QUERY_PROPERTIES, &[])?;
    ensure!(
        a.header()?.flags.get() == 0,
        "flags {:#x}",
        a.header()?.flags.get()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// SCSI commands
// ---------------------------------------------------------------------------

fn tur_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let a = r.srb_nodata(0, &TUR)?;
    good(&a, 0)?;
    let srb = a.srb()?;
    ensure!(
        srb.sense_info_length == 0,
        "sense on GOOD: {}",
        srb.sense_info_length
    );
    ensure!(
        (srb.path_id, srb.target_id, srb.lun, srb.cdb_length) == (0, 0, 0, 6),
        "address/CDB length not echoed: {srb:?}"
    );
    Ok(())
}

fn inquiry_standard_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    r.write_ram(5 * 4096 + 0x7F0, &[0xEE; 96])?;
    let a = r.srb_data(0, &inquiry(false, 0, 36), DataDirection::In, (0x7F0, 36, &[5]))?;
    good(&a, 36)?;
    let d = r.read_ram(5 * 4096 + 0x7F0, 36)?;
    ensure!(d[0] == 0x00, "peripheral {:#x}", d[0]);
    ensure!(
        d[2] == 0x06 && d[3] & 0x0F == 0x02,
        "version {:#x} format {:#x}",
        d[2],
        d[3]
    );
    ensure!(d[4] == 31, "additional length {}", d[4]);
    ensure!(d[7] & 0x02 != 0, "CMDQUE clear");
    ensure!(&d[8..16] == b"Msft    ", "vendor {:?}", &d[8..16]);
    ensure!(&d[16..32] == b"Virtual Disk    ", "product {:?}", &d[16..32]);
    // A bigger buffer: the 36 bytes there are, SUCCESS, no overrun.
    let a = r.srb_data(0, &inquiry(false, 0, 96), DataDirection::In, (0, 96, &[6]))?;
    good(&a, 36)?;
    // A smaller allocation length: truncated (SPC-4 §4.2.5.6).
    let a = r.srb_data(0, &inquiry(false, 0, 5), DataDirection::In, (0, 36, &[7]))?;
    good(&a, 5)?;
    // PAGE CODE without EVPD is invalid (§6.6.1).
    let a = r.srb_data(0, &inquiry(false, 0x80, 36), DataDirection::In, (0, 36, &[7]))?;
    check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)
}

/// One VPD page: GOOD, the page header right, the body.
fn vpd(page: u8) -> Result<Vec<u8>, String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let a = r.srb_data(0, &inquiry(true, page, 255), DataDirection::In, (0x40, 255, &[9]))?;
    let moved = a.srb()?.data_transfer_length.get() as usize;
    good(&a, moved as u32)?;
    let d = r.read_ram(9 * 4096 + 0x40, moved)?;
    ensure!(moved >= 4, "{moved} bytes");
    ensure!(d[0] == 0 && d[1] == page, "header {:02x?}", &d[..4]);
    let len = u16::from_be_bytes([d[2], d[3]]) as usize;
    ensure!(len + 4 == moved, "page length {len}, {moved} bytes moved");
    Ok(d[4..].to_vec())
}

fn vpd_case(page: u8) -> Result<(), String> {
    let body = vpd(page)?;
    match page {
        0x00 => ensure!(
            body == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2],
            "supported pages {body:02x?}"
        ),
        0x80 => ensure!(body == b"conformance-0", "serial {body:?}"),
        0x83 => {
            // NAA designator: binary, LU association, type 3, 8 bytes, NAA 3h.
            ensure!(
                body.get(..4) == Some(&[0x01, 0x03, 0x00, 0x08][..]),
                "{body:02x?}"
            );
            let naa = u64::from_be_bytes(body.get(4..12).ok_or("short")?.try_into().map_err(err)?);
            ensure!(naa == (3u64 << 60) | 0x5_7042, "NAA {naa:#x}");
            // T10 vendor id designator: ASCII, type 1, vendor then serial.
            let t10 = body.get(12..).ok_or("no T10 designator")?;
            ensure!(t10.get(..2) == Some(&[0x02, 0x01][..]), "{t10:02x?}");
            ensure!(t10.get(4..12) == Some(&b"Msft    "[..]), "{t10:02x?}");
            ensure!(t10.get(12..) == Some(&b"conformance-0"[..]), "{t10:02x?}");
        }
        0xB0 => {
            ensure!(body.len() == 0x3C, "block limits length {}", body.len());
            let max = u32::from_be_bytes(body[4..8].try_into().map_err(err)?);
            ensure!(max == 512, "MAXIMUM TRANSFER LENGTH {max}");
        }
        0xB1 => {
            ensure!(body.len() == 0x3C, "characteristics length {}", body.len());
            ensure!(body[..2] == [0, 1], "rotation rate {:02x?}", &body[..2]);
        }
        _ => ensure!(body.len() == 4, "provisioning length {}", body.len()),
    }
    Ok(())
}

macro_rules! vpd_case {
    ($id:literal, $page:literal, $rule:literal, $expect:literal) => {
        Case {
            id: $id,
            rule: $rule,
            expect: $expect,
            run: || vpd_case($page),
        }
    };
}

fn vpd_unknown_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    for page in [0x86u8, 0x89, 0xB7, 0xFF] {
        let a = r.srb_data(0, &inquiry(true, page, 255), DataDirection::In, (0, 255, &[9]))?;
        check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)
            .map_err(|e| format!("page {page:#x}: {e}"))?;
    }
    Ok(())
}

fn read_capacity_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let a = r.srb_data(
        0,
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        DataDirection::In,
        (0, 8, &[2]),
    )?;
    good(&a, 8)?;
    let d = r.read_ram(2 * 4096, 8)?;
    ensure!(
        d[..4] == (SECTORS as u32 - 1).to_be_bytes() && d[4..] == 512u32.to_be_bytes(),
        "READ CAPACITY(10) {d:02x?}"
    );
    let mut c16 = [0u8; 16];
    c16[0] = 0x9E;
    c16[1] = 0x10;
    c16[13] = 32;
    let a = r.srb_data(0, &c16, DataDirection::In, (0, 32, &[3]))?;
    good(&a, 32)?;
    let d = r.read_ram(3 * 4096, 32)?;
    ensure!(
        d[..8] == (SECTORS - 1).to_be_bytes() && d[8..12] == 512u32.to_be_bytes(),
        "READ CAPACITY(16) {d:02x?}"
    );
    ensure!(d[12] & 0x01 == 0, "PROT_EN set");
    // LBA != 0 with PMI = 0 is invalid (SBC-3 §5.15.1).
    let a = r.srb_data(
        0,
        &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0],
        DataDirection::In,
        (0, 8, &[2]),
    )?;
    check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)
}

/// Write `blocks` blocks at `lba` with `wcdb`, read them back with
/// `rcdb` into other pages, compare byte for byte with the disk too.
fn write_read(
    r: &mut Rig<'_>,
    wcdb: &[u8],
    rcdb: &[u8],
    lba: u64,
    blocks: u32,
    seed: u8,
) -> Result<(), String> {
    let len = blocks * 512;
    let data = pattern(len as usize, seed);
    let pages = (len as usize).div_ceil(4096) as u64;
    let out: Vec<u64> = (10..10 + pages).collect();
    r.write_ram(10 * 4096, &data)?;
    good(&r.srb_data(0, wcdb, DataDirection::Out, (0, len, &out))?, len)?;
    let at = lba as usize * 512;
    ensure!(
        r.disk_bytes(0)?.get(at..at + len as usize) == Some(&data[..]),
        "the disk does not hold what was written"
    );
    let inp: Vec<u64> = (30..30 + pages).collect();
    r.write_ram(30 * 4096, &vec![0u8; len as usize])?;
    good(&r.srb_data(0, rcdb, DataDirection::In, (0, len, &inp))?, len)?;
    ensure!(r.read_ram(30 * 4096, len as usize)? == data, "read back differs");
    Ok(())
}

fn rw10_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    write_read(&mut r, &write10(100, 16), &read10(100, 16), 100, 16, 1)?;
    // The last block.
    let last = SECTORS as u32 - 1;
    write_read(&mut r, &write10(last, 1), &read10(last, 1), last as u64, 1, 2)?;
    let s = r.dev.stats();
    ensure!(s.bytes_written == 17 * 512 && s.bytes_read == 17 * 512, "{s:?}");
    Ok(())
}

fn rw6_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    write_read(&mut r, &rw6(0x0A, 7, 3), &rw6(0x08, 7, 3), 7, 3, 3)?;
    // TRANSFER LENGTH 0 means 256 blocks (SBC-3 §5.10, §5.32).
    write_read(&mut r, &rw6(0x0A, 1000, 0), &rw6(0x08, 1000, 0), 1000, 256, 4)
}

fn rw12_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    write_read(&mut r, &rw12(0xAA, 1500, 40), &rw12(0xA8, 1500, 40), 1500, 40, 5)
}

fn rw16_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    write_read(
        &mut r,
        &rw16(0x8A, 2000, 48, 0),
        &rw16(0x88, 2000, 48, 0),
        2000,
        48,
        6,
    )
}

fn fua_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let before = r.flushes()?;
    r.write_ram(10 * 4096, &pattern(512, 7))?;
    good(
        &r.srb_data(0, &write10(5, 1), DataDirection::Out, (0, 512, &[10]))?,
        512,
    )?;
    ensure!(r.flushes()? == before, "a plain write flushed");
    for cdb in [&rw10(0x2A, 6, 1, 0x08)[..], &rw16(0x8A, 7, 1, 0x08)[..]] {
        let n = r.flushes()?;
        good(&r.srb_data(0, cdb, DataDirection::Out, (0, 512, &[10]))?, 512)?;
        ensure!(r.flushes()? == n + 1, "FUA write {:#x} did not flush", cdb[0]);
    }
    // FUA on a read needs no flush of written data; it is a plain read here.
    good(
        &r.srb_data(0, &rw10(0x28, 6, 1, 0x08), DataDirection::In, (0, 512, &[11]))?,
        512,
    )?;
    ensure!(r.read_ram(11 * 4096, 512)? == pattern(512, 7), "FUA read");
    Ok(())
}

fn mode_sense6_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    // Caching page, block descriptor included (what sd_read_cache_type asks).
    let a = r.srb_data(0, &[0x1A, 0, 0x08, 0, 192, 0], DataDirection::In, (0, 192, &[4]))?;
    let moved = a.srb()?.data_transfer_length.get() as usize;
    good(&a, moved as u32)?;
    let d = r.read_ram(4 * 4096, moved)?;
    ensure!(moved == 4 + 8 + 20, "{moved} bytes");
    ensure!(d[0] as usize == moved - 1, "mode data length {}", d[0]);
    ensure!(d[2] & 0x80 == 0 && d[2] & 0x10 != 0, "WP/DPOFUA {:#x}", d[2]);
    ensure!(d[3] == 8, "block descriptor length {}", d[3]);
    ensure!(d[9..12] == [0, 2, 0], "block length {:02x?}", &d[9..12]);
    ensure!(d[12] & 0x3F == 0x08 && d[13] == 0x12, "page {:02x?}", &d[12..14]);
    ensure!(
        d[14] & 0x04 != 0,
        "WCE clear: Linux would not send SYNCHRONIZE CACHE"
    );
    // PC = 3 (saved values) is not supported (SPC-4 §6.13).
    let a = r.srb_data(0, &[0x1A, 0, 0xC8, 0, 192, 0], DataDirection::In, (0, 192, &[4]))?;
    check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, 0x39)?;
    // An unsupported page.
    let a = r.srb_data(0, &[0x1A, 0, 0x1C, 0, 192, 0], DataDirection::In, (0, 192, &[4]))?;
    check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)
}

fn mode_sense10_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    // All pages, no block descriptors.
    let a = r.srb_data(
        0,
        &[0x5A, 0x08, 0x3F, 0, 0, 0, 0, 0x01, 0x00, 0],
        DataDirection::In,
        (0, 256, &[4]),
    )?;
    let moved = a.srb()?.data_transfer_length.get() as usize;
    good(&a, moved as u32)?;
    let d = r.read_ram(4 * 4096, moved)?;
    ensure!(moved == 8 + 20 + 12, "{moved} bytes");
    ensure!(
        u16::from_be_bytes([d[0], d[1]]) as usize == moved - 2,
        "mode data length {:02x?}",
        &d[..2]
    );
    ensure!(d[3] & 0x10 != 0, "DPOFUA clear");
    ensure!(d[6..8] == [0, 0], "block descriptor length with DBD");
    ensure!(
        d[8] & 0x3F == 0x08 && d[28] & 0x3F == 0x0A,
        "pages {:#x} {:#x}",
        d[8],
        d[28]
    );
    Ok(())
}

fn report_luns_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut dev = Dev::new(disk(SECTORS)?, StorvspConfig::default()).map_err(err)?;
    dev.attach(3, disk(64)?).map_err(err)?;
    let mut r = Rig::with(&mem, dev)?;
    r.init()?;
    let mut rl = [0u8; 12];
    rl[0] = 0xA0;
    rl[9] = 64;
    let a = r.srb_data(0, &rl, DataDirection::In, (0, 64, &[7]))?;
    good(&a, 24)?;
    let d = r.read_ram(7 * 4096, 24)?;
    ensure!(d[..4] == 16u32.to_be_bytes(), "LUN list length {:02x?}", &d[..4]);
    ensure!(d[8..16] == [0; 8], "first LUN {:02x?}", &d[8..16]);
    ensure!(
        d[16..24] == [0, 3, 0, 0, 0, 0, 0, 0],
        "second LUN {:02x?}",
        &d[16..24]
    );
    // Allocation length below 16 is invalid (SPC-4 §6.33.1).
    rl[9] = 8;
    let a = r.srb_data(0, &rl, DataDirection::In, (0, 64, &[7]))?;
    check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)
}

fn request_sense_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    // A failed command first: its sense went back with it (autosense), so
    // nothing is pending afterwards.
    check(
        &r.srb_nodata(0, &[0x85, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])?,
        SrbStatus::INVALID_REQUEST,
        ILLEGAL_REQUEST,
        INVALID_OPCODE,
    )?;
    let a = r.srb_data(0, &[0x03, 0, 0, 0, 18, 0], DataDirection::In, (0, 252, &[8]))?;
    good(&a, 18)?;
    let d = r.read_ram(8 * 4096, 18)?;
    ensure!(d[0] == 0x70, "response code {:#x}", d[0]);
    ensure!(d[2] & 0x0F == 0 && d[12] == 0, "key {:#x} ASC {:#x}", d[2], d[12]);
    ensure!(d[7] == 10, "additional length {}", d[7]);
    Ok(())
}

fn sync_cache_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let n = r.flushes()?;
    good(&r.srb_nodata(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0])?, 0)?;
    ensure!(r.flushes()? == n + 1, "SYNCHRONIZE CACHE(10) not flushed");
    let mut c16 = [0u8; 16];
    c16[0] = 0x91;
    c16[9] = 10;
    c16[13] = 10;
    good(&r.srb_nodata(0, &c16)?, 0)?;
    ensure!(r.flushes()? == n + 2, "SYNCHRONIZE CACHE(16) not flushed");
    // A range past the end: LBA OUT OF RANGE, no flush (SBC-3 §5.22).
    let past = rw10(0x35, SECTORS as u32 - 1, 2, 0);
    check(
        &r.srb_nodata(0, &past)?,
        SrbStatus::INVALID_REQUEST,
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    )?;
    ensure!(r.flushes()? == n + 2, "flushed on a refused range");
    Ok(())
}

fn start_stop_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let n = r.flushes()?;
    good(&r.srb_nodata(0, &[0x1B, 0, 0, 0, 0x01, 0])?, 0)?;
    ensure!(r.flushes()? == n, "START flushed");
    good(&r.srb_nodata(0, &[0x1B, 0, 0, 0, 0x00, 0])?, 0)?;
    ensure!(r.flushes()? == n + 1, "STOP did not write the cache back");
    // LOEJ without START: a fixed medium cannot be ejected (SBC-3 §5.25).
    check(
        &r.srb_nodata(0, &[0x1B, 0, 0, 0, 0x02, 0])?,
        SrbStatus::INVALID_REQUEST,
        ILLEGAL_REQUEST,
        INVALID_FIELD,
    )?;
    // The unit keeps serving after STOP.
    good(&r.srb_nodata(0, &TUR)?, 0)
}

fn lba_range_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let before = r.disk_bytes(0)?.to_vec();
    let last = SECTORS as u32 - 1;
    r.write_ram(10 * 4096, &[0xAB; 8192])?;
    let cases: [(&[u8], DataDirection); 6] = [
        (&read10(last, 2), DataDirection::In),
        (&write10(last, 2), DataDirection::Out),
        (&rw16(0x88, SECTORS, 1, 0), DataDirection::In),
        (&rw16(0x8A, u64::MAX, 1, 0), DataDirection::Out),
        (&rw12(0xAA, last - 1, 3), DataDirection::Out),
        (&rw6(0x08, 0x1F_FFFF, 1), DataDirection::In),
    ];
    for (cdb, dir) in cases {
        let a = r.srb_data(0, cdb, dir, (0, 1536, &[10]))?;
        check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, LBA_OUT_OF_RANGE)
            .map_err(|e| format!("{cdb:02x?}: {e}"))?;
    }
    ensure!(r.disk_bytes(0)? == before, "a refused write reached the disk");
    Ok(())
}

fn invalid_opcode_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    // ATA PASS-THROUGH(16), UNMAP, WRITE SAME(10/16), MODE SELECT(6),
    // VERIFY(10), REPORT SUPPORTED OPERATION CODES, a vendor opcode.
    for op in [0x85u8, 0x42, 0x41, 0x93, 0x15, 0x2F, 0xA3, 0xC0, 0xFF] {
        let cdb = [op, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let a = r.srb_nodata(0, &cdb)?;
        check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_OPCODE)
            .map_err(|e| format!("opcode {op:#x}: {e}"))?;
    }
    ensure!(r.dev.stats().srb_failures == 9, "{:?}", r.dev.stats());
    good(&r.srb_nodata(0, &TUR)?, 0)
}

fn bad_cdb_length_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    // cdb_length 0 and past 16: the SRB fails, echoing its address.
    for n in [0u8, 17, 255] {
        let mut srb = scsi_request(0, &TUR, DataDirection::Unspecified, 0);
        srb.cdb_length = n;
        srb.lun = 0;
        let a = r.srb_request(&srb, None)?;
        check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)
            .map_err(|e| format!("cdb_length {n}: {e}"))?;
    }
    // Fewer CDB bytes than the opcode's group has (a READ(10) in 6 bytes).
    let mut srb = scsi_request(0, &read10(0, 1), DataDirection::In, 512);
    srb.cdb_length = 6;
    let a = r.srb_request(&srb, Some((0, 512, &[3])))?;
    check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)?;
    good(&r.srb_nodata(0, &TUR)?, 0)
}

fn short_buffer_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let before = r.disk_bytes(0)?.to_vec();
    r.write_ram(3 * 4096, &[0x5A; 4096])?;
    r.write_ram(4 * 4096, &[0x11; 4096])?;
    // READ of 2 blocks into a 512-byte buffer: refused, not half done.
    let a = r.srb_data(0, &read10(0, 2), DataDirection::In, (0, 512, &[4]))?;
    check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)?;
    ensure!(
        r.read_ram(4 * 4096, 4096)? == vec![0x11; 4096],
        "guest buffer written"
    );
    // WRITE of 4 blocks from 1024 bytes.
    let a = r.srb_data(0, &write10(0, 4), DataDirection::Out, (0, 1024, &[3]))?;
    check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)?;
    // data_transfer_length past the range it names.
    let vstor = request_packet(
        Operation::EXECUTE_SRB,
        scsi_request(0, &read10(0, 2), DataDirection::In, 1024).as_bytes(),
    );
    let id = r.id();
    r.send_gpa(id, &[(0, 512, &[4])], &vstor)?;
    let a = r.answer()?;
    a.linux_accepts(id)?;
    check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)?;
    // Data promised with no ranges at all (in-band).
    let id = r.id();
    r.send_inband(id, &vstor, FLAG_COMPLETION_REQUESTED)?;
    let a = r.answer()?;
    a.linux_accepts(id)?;
    check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)?;
    ensure!(r.disk_bytes(0)? == before, "a refused write reached the disk");
    ensure!(
        r.read_ram(4 * 4096, 4096)? == vec![0x11; 4096],
        "guest buffer written"
    );
    Ok(())
}

fn outside_ram_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    // Data the disk would return, so a wrongly done read shows.
    let pat = pattern(8192, 9);
    r.write_ram(10 * 4096, &pat)?;
    good(
        &r.srb_data(0, &write10(0, 16), DataDirection::Out, (0, 8192, &[10, 11]))?,
        8192,
    )?;
    let disk_before = r.disk_bytes(0)?.to_vec();
    r.write_ram(2 * 4096, &[0x33; 4096])?;
    for pages in [
        &[RAM_PAGES][..],
        &[2, RAM_PAGES + 1000],
        &[gpa::MAX_GPN],
        &[u64::MAX],
    ] {
        let len = pages.len() as u32 * 4096;
        let blocks = (len / 512) as u16;
        let a = r.srb_data(0, &write10(0, blocks), DataDirection::Out, (0, len, pages))?;
        check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)
            .map_err(|e| format!("write {pages:x?}: {e}"))?;
        let a = r.srb_data(0, &read10(0, blocks), DataDirection::In, (0, len, pages))?;
        check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)
            .map_err(|e| format!("read {pages:x?}: {e}"))?;
    }
    ensure!(r.disk_bytes(0)? == disk_before, "the disk changed");
    ensure!(
        r.read_ram(2 * 4096, 4096)? == vec![0x33; 4096],
        "the in-RAM page of a refused read was written"
    );
    let s = r.dev.stats();
    ensure!(s.bytes_read == 0 && s.bytes_written == 8192, "{s:?}");
    Ok(())
}

fn multi_page_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    // 25 blocks from 0x234 into the first of four scattered pages.
    let len = 25 * 512u32;
    let offset = 0x234u32;
    let out = [10u64, 3, 17, 8];
    let data = pattern(len as usize, 0x42);
    let mut at = 0usize;
    let mut pos = offset as u64;
    for p in out {
        let n = ((4096 - pos) as usize).min(len as usize - at);
        r.write_ram(p * 4096 + pos, &data[at..at + n])?;
        at += n;
        pos = 0;
    }
    good(
        &r.srb_data(0, &write10(100, 25), DataDirection::Out, (offset, len, &out))?,
        len,
    )?;
    ensure!(
        r.disk_bytes(0)?.get(100 * 512..125 * 512) == Some(&data[..]),
        "the disk does not hold the scattered buffer in order"
    );
    // Read back into other pages at another offset, with guard bytes
    // around the buffer that must stay as they are.
    let inp = [20u64, 21, 30, 5];
    for p in inp {
        r.write_ram(p * 4096, &[0xCC; 4096])?;
    }
    let off = 0x10u64;
    good(
        &r.srb_data(0, &read10(100, 25), DataDirection::In, (off as u32, len, &inp))?,
        len,
    )?;
    let mut back = Vec::new();
    let mut pos = off;
    for p in inp {
        let n = ((4096 - pos) as usize).min(len as usize - back.len());
        back.extend(r.read_ram(p * 4096 + pos, n)?);
        pos = 0;
    }
    ensure!(back == data, "read back differs");
    ensure!(
        r.read_ram(20 * 4096, off as usize)? == vec![0xCC; off as usize],
        "bytes before the offset written"
    );
    let used_last = (off as usize + len as usize) - 3 * 4096;
    ensure!(
        r.read_ram(5 * 4096 + used_last as u64, 4096 - used_last)? == vec![0xCC; 4096 - used_last],
        "bytes after the buffer written"
    );
    Ok(())
}

fn in_flight_case() -> Result<(), String> {
    // A 4 KiB host-to-guest ring: completions wait for the guest to read.
    let mem = Mem::new(64 * 1024, 4096)?;
    let mut r = Rig::ready(&mem)?;
    let mut ids = Vec::new();
    for i in 0..200u64 {
        let id = r.id();
        if i % 2 == 0 {
            let vstor = request_packet(
                Operation::EXECUTE_SRB,
                scsi_request(0, &TUR, DataDirection::Unspecified, 0).as_bytes(),
            );
            r.send_inband(id, &vstor, FLAG_COMPLETION_REQUESTED)?;
        } else {
            let vstor = request_packet(
                Operation::EXECUTE_SRB,
                scsi_request(0, &read10(i as u32, 1), DataDirection::In, 512).as_bytes(),
            );
            r.send_gpa(id, &[(0, 512, &[1 + i % 32])], &vstor)?;
        }
        ids.push(id);
    }
    let mut seen = Vec::new();
    for polls in 1..10_000 {
        let p = r.dev.poll(7);
        ensure!(p.broke.is_none(), "{p:?}");
        if polls % 10 == 0 {
            for a in r.receive_all()? {
                a.linux_accepts(a.id)?;
                good(&a, a.srb()?.data_transfer_length.get())?;
                seen.push(a.id);
            }
        }
        if seen.len() == ids.len() {
            break;
        }
    }
    ensure!(
        seen == ids,
        "{} of {} answered (each once, in order)",
        seen.len(),
        ids.len()
    );
    let stalls = r.dev.channel().ok_or("closed")?.stats().stalls;
    ensure!(stalls > 0, "the ring never filled");
    ensure!(r.dev.stats().srbs == 200, "{:?}", r.dev.stats());
    Ok(())
}

fn wrong_address_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    for cdb in [&TUR[..], &read10(0, 1)[..]] {
        let a = r.srb_nodata(1, cdb)?;
        let srb = a.srb()?;
        ensure!(
            SrbStatus(srb.srb_status) == SrbStatus::INVALID_LUN,
            "srb_status {:#x}",
            srb.srb_status
        );
        ensure!(
            a.status()? == NtStatus::DEVICE_DOES_NOT_EXIST,
            "{:?}",
            a.status()?
        );
        ensure!(srb.lun == 1, "LUN not echoed");
    }
    // A standard INQUIRY at LUN 1 and at target 1: qualifier 3, type 1Fh.
    r.write_ram(4 * 4096, &[0xEE; 36])?;
    good(
        &r.srb_data(1, &inquiry(false, 0, 36), DataDirection::In, (0, 36, &[4]))?,
        36,
    )?;
    ensure!(r.read_ram(4 * 4096, 1)? == [0x7F], "LUN 1 peripheral byte");
    let mut srb = scsi_request(0, &inquiry(false, 0, 36), DataDirection::In, 36);
    srb.target_id = 1;
    r.write_ram(4 * 4096, &[0xEE; 36])?;
    good(&r.srb_request(&srb, Some((0, 36, &[4])))?, 36)?;
    ensure!(r.read_ram(4 * 4096, 1)? == [0x7F], "target 1 peripheral byte");
    // Path 1 has no disks either; nothing reaches the disk.
    let mut srb = scsi_request(0, &write10(0, 1), DataDirection::Out, 512);
    srb.path_id = 1;
    r.write_ram(6 * 4096, &[0x99; 512])?;
    let a = r.srb_request(&srb, Some((0, 512, &[6])))?;
    ensure!(
        SrbStatus(a.srb()?.srb_status) == SrbStatus::INVALID_LUN,
        "path 1 write: {:#x}",
        a.srb()?.srb_status
    );
    ensure!(
        r.disk_bytes(0)?.get(..512) == Some(&[0u8; 512][..]),
        "path 1 write reached LUN 0"
    );
    Ok(())
}

fn too_long_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let big = DEFAULT_MAX_TRANSFER_BYTES + 4096;
    let pfns: Vec<u64> = (0..(big / 4096) as u64).collect();
    let a = r.srb_data(
        0,
        &read10(0, (big / 512) as u16),
        DataDirection::In,
        (0, big, &pfns),
    )?;
    check(&a, SrbStatus::INVALID_REQUEST, ILLEGAL_REQUEST, INVALID_FIELD)?;
    // Exactly the limit is fine (the pages repeat: a guest may name a page twice).
    let max = DEFAULT_MAX_TRANSFER_BYTES;
    let pfns: Vec<u64> = (0..(max / 4096) as u64).map(|i| i % RAM_PAGES).collect();
    good(
        &r.srb_data(
            0,
            &read10(0, (max / 512) as u16),
            DataDirection::In,
            (0, max, &pfns),
        )?,
        max,
    )
}

fn reopen_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mem2 = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    r.dev.reset();
    ensure!(r.dev.state() == InitState::Begin, "{:?}", r.dev.state());
    let p = r.dev.poll(vsp::POLL_BUDGET);
    ensure!(p == vsp::PollResult::default(), "closed device did work: {p:?}");
    r.dev.open(mem2.channel()?).map_err(err)?;
    r.mem = &mem2;
    let a = r.srb_nodata(0, &TUR)?;
    ensure!(
        a.status()? == NtStatus::INVALID_DEVICE_STATE,
        "an SRB before the new handshake: {:?}",
        a.status()?
    );
    r.init()?;
    good(&r.srb_nodata(0, &TUR)?, 0)?;
    ensure!(
        matches!(r.dev.open(mem.channel()?), Err(vsp::OpenError::AlreadyOpen)),
        "a second open was taken"
    );
    r.dev.close();
    ensure!(r.dev.state() == InitState::Begin, "{:?}", r.dev.state());
    // Without the guest's RAM there is no GPA-direct data: refused.
    let bare = Channel::new(&mem.up, &mem.down, Box::new(Quiet)).map_err(err)?;
    ensure!(
        matches!(r.dev.open(bare), Err(vsp::OpenError::Refused(_))),
        "opened without guest RAM"
    );
    Ok(())
}

fn mode_sense_large_case() -> Result<(), String> {
    // 2^25 blocks of 512 bytes (16 GiB): more than the 24 bits the
    // general block descriptor's NUMBER OF BLOCKS had, well within the
    // 32 bits SBC-3 gives a direct-access device.
    let blocks = 1u64 << 25;
    let mem = Mem::std()?;
    let d = ScsiDisk::new(Sparse(blocks), DiskConfig::new("big", 1)).map_err(err)?;
    let mut r = Rig::with(&mem, Dev::new(d, StorvspConfig::default()).map_err(err)?)?;
    r.init()?;
    for cdb in [
        &[0x1A, 0, 0x08, 0, 192, 0][..],
        &[0x5A, 0, 0x08, 0, 0, 0, 0, 0, 192, 0][..],
    ] {
        let a = r.srb_data(0, cdb, DataDirection::In, (0, 192, &[4]))?;
        let moved = a.srb()?.data_transfer_length.get() as usize;
        good(&a, moved as u32)?;
        let d = r.read_ram(4 * 4096, moved)?;
        let at = if cdb[0] == 0x1A { 4 } else { 8 };
        let desc = d.get(at..at + 8).ok_or("no block descriptor")?;
        // SBC-3 §6.4.2.2 short LBA mode parameter block descriptor: bytes
        // 0-3 NUMBER OF LOGICAL BLOCKS, byte 4 reserved, 5-7 LOGICAL
        // BLOCK LENGTH (FFFFFFFFh only when the count does not fit).
        let n = u32::from_be_bytes([desc[0], desc[1], desc[2], desc[3]]);
        ensure!(
            n as u64 == blocks,
            "MODE SENSE({}) NUMBER OF LOGICAL BLOCKS {n:#x} for {blocks:#x} blocks (descriptor {desc:02x?})",
            if cdb[0] == 0x1A { 6 } else { 10 }
        );
        ensure!(desc[5..8] == [0, 2, 0], "block length {:02x?}", &desc[5..8]);
    }
    Ok(())
}

/// Known device bugs: cases written to the correct behaviour, kept out of
/// the catalogue until the device is fixed (see each `// BUG:` note).
pub fn known_bugs() -> Vec<Case> {
    vec![
        // (none open: STOR-42, the MODE SENSE short LBA descriptor, was
        // found here and fixed in scsi_disk)
    ]
}

fn offer_case() -> Result<(), String> {
    let dev = Dev::new(disk(SECTORS)?, StorvspConfig::default()).map_err(err)?;
    let o = Device::<&AtomicMemory>::offer(&dev);
    // ba6163d9-04a1-4d29-b605-72e2ffb1dc7f (Linux hyperv.h HV_SCSI_GUID),
    // wire byte order.
    let want = [
        0xd9, 0x63, 0x61, 0xba, 0xa1, 0x04, 0x29, 0x4d, 0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1, 0xdc, 0x7f,
    ];
    ensure!(o.interface_type == want, "{:02x?}", o.interface_type);
    Ok(())
}

/// The STOR cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "STOR-01",
            rule: "the device is offered with HV_SCSI_GUID ba6163d9-04a1-4d29-b605-72e2ffb1dc7f (Linux include/linux/hyperv.h), which storvsc binds",
            expect: "offer interface type in wire byte order",
            run: offer_case,
        },
        Case {
            id: "STOR-02",
            rule: "BEGIN_INITIALIZATION opens the handshake; every answer is a VM_PKT_COMP with the request's 64-bit transaction id (VMBUS_RQST_INIT), 64 bytes, operation COMPLETE_IO (storvsc_drv.c storvsc_channel_init, storvsc_on_channel_callback)",
            expect: "SUCCESS, state QueryVersion",
            run: begin_case,
        },
        version_case!(
            "STOR-03",
            0x0602,
            ProtocolVersion::WIN10,
            "6.2 (VMSTOR_PROTO_VERSION_WIN10)"
        ),
        version_case!(
            "STOR-04",
            0x0600,
            ProtocolVersion::WIN8_1,
            "6.0 (VMSTOR_PROTO_VERSION_WIN8_1)"
        ),
        version_case!(
            "STOR-05",
            0x0501,
            ProtocolVersion::WIN8,
            "5.1 (VMSTOR_PROTO_VERSION_WIN8)"
        ),
        Case {
            id: "STOR-06",
            rule: "a version the host does not speak is refused and the guest proposes the next (storvsc_channel_init: status != 0 → try the next vmstor_protocols entry)",
            expect: "7.0, 6.3, 0, 0xFFFF and 4.2 get REVISION_MISMATCH with the state unchanged; 6.0 is then accepted",
            run: version_refused_case,
        },
        Case {
            id: "STOR-07",
            rule: "QUERY_PROPERTIES answers vmstorage_channel_properties: max_transfer_bytes caps Linux's max_sectors; max_channel_count and STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL tell Linux how many sub-channels it may ask for (storvsc_drv.c storvsc_channel_init)",
            expect: "max_transfer_bytes and max_channel_count as configured (256 KiB/4, 1 MiB/0, 4 KiB/16), the flag exactly when the count is not 0",
            run: properties_case,
        },
        Case {
            id: "STOR-08",
            rule: "END_INITIALIZATION completes the handshake; then SRBs run; CREATE_SUB_CHANNELS of 0 is refused, RESET_LUN/ADAPTER/BUS succeed, host-only or unknown operations are INVALID_DEVICE_REQUEST (OpenVMM storvsp)",
            expect: "Ready(6.2), TEST UNIT READY GOOD, INVALID_PARAMETER, 3 × SUCCESS, 3 × INVALID_DEVICE_REQUEST, still Ready",
            run: end_case,
        },
        Case {
            id: "STOR-09",
            rule: "packets out of handshake order (an SRB before END_INITIALIZATION, a step skipped or repeated) are refused without changing state (OpenVMM storvsp process_primary: INVALID_DEVICE_STATE)",
            expect: "INVALID_DEVICE_STATE for each, no SRB run; the handshake then completes",
            run: before_init_case,
        },
        Case {
            id: "STOR-10",
            rule: "a completion is sent only when the guest set VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED; its body is as long as the request's (Hyper-V sizes answers so; Linux's are 64 bytes)",
            expect: "no answer without the flag (but the BEGIN acted on); a 48-byte request gets a 48-byte answer; header flags 0",
            run: completion_shape_case,
        },
        Case {
            id: "STOR-11",
            rule: "TEST UNIT READY on a ready unit is GOOD with no data (SPC-4 §6.47); the completion echoes the SRB's address and CDB length (storvsc_on_io_completion reads them back)",
            expect: "SUCCESS/GOOD, 0 bytes, no sense, path/target/LUN 0/0/0, cdb_length 6",
            run: tur_case,
        },
        Case {
            id: "STOR-12",
            rule: "standard INQUIRY (SPC-4 §6.6.2): peripheral type 0, VERSION 6, response format 2, additional length 31, CMDQUE, vendor \"Msft\" (storvsc quirks); truncated to the allocation length; PAGE CODE without EVPD is an INVALID FIELD IN CDB",
            expect: "36 bytes at a mid-page offset; a 96-byte buffer moves 36; allocation 5 moves 5; page 0x80 without EVPD: CHECK CONDITION 05/24",
            run: inquiry_standard_case,
        },
        vpd_case!(
            "STOR-13",
            0x00,
            "VPD page 0x00 lists the supported VPD pages in ascending order (SPC-4 §7.8.13)",
            "00 80 83 B0 B1 B2, page length 6"
        ),
        vpd_case!(
            "STOR-14",
            0x80,
            "VPD page 0x80 carries the unit serial number (SPC-4 §7.8.15)",
            "the configured serial, page length = its length"
        ),
        vpd_case!(
            "STOR-15",
            0x83,
            "VPD page 0x83 identifies the logical unit: an NAA 3h designator (SPC-4 §7.8.6.6.4; Linux wwn- names) and a T10 vendor id designator (§7.8.6.4)",
            "binary NAA 0x3<local id>, then ASCII \"Msft    \" + serial"
        ),
        vpd_case!(
            "STOR-16",
            0xB0,
            "VPD page 0xB0 block limits, page length 0x3C (SBC-3 §6.5.3); MAXIMUM TRANSFER LENGTH bounds Linux's requests",
            "page length 0x3C, MAXIMUM TRANSFER LENGTH 512 blocks"
        ),
        vpd_case!(
            "STOR-17",
            0xB1,
            "VPD page 0xB1 block device characteristics, page length 0x3C (SBC-3 §6.5.2); rotation rate 1 marks a non-rotational queue in Linux (sd_read_block_characteristics)",
            "page length 0x3C, MEDIUM ROTATION RATE 1"
        ),
        vpd_case!(
            "STOR-18",
            0xB2,
            "VPD page 0xB2 logical block provisioning, page length 4 (SBC-3 §6.5.4)",
            "page length 4"
        ),
        Case {
            id: "STOR-19",
            rule: "an INQUIRY for a VPD page the unit does not have is ILLEGAL REQUEST, INVALID FIELD IN CDB (SPC-4 §6.6.1)",
            expect: "pages 0x86, 0x89, 0xB7, 0xFF: CHECK CONDITION 05/24, SRB_STATUS_INVALID_REQUEST with autosense",
            run: vpd_unknown_case,
        },
        Case {
            id: "STOR-20",
            rule: "READ CAPACITY(10) returns the last LBA and block length (SBC-3 §5.15), READ CAPACITY(16) the same in 32 bytes (§5.16); LBA != 0 with PMI = 0 is invalid",
            expect: "2047/512 in both, PROT_EN 0; LBA 1 without PMI: CHECK CONDITION 05/24",
            run: read_capacity_case,
        },
        Case {
            id: "STOR-21",
            rule: "WRITE(10) then READ(10) move exactly the addressed blocks (SBC-3 §5.35, §5.11); write then read back byte for byte",
            expect: "16 blocks at LBA 100 and the last block: the disk and the read-back buffer equal what was written",
            run: rw10_case,
        },
        Case {
            id: "STOR-22",
            rule: "READ(6)/WRITE(6): 21-bit LBA, TRANSFER LENGTH 0 means 256 blocks (SBC-3 §5.10, §5.32)",
            expect: "3 blocks at LBA 7 and 256 blocks at LBA 1000 written and read back",
            run: rw6_case,
        },
        Case {
            id: "STOR-23",
            rule: "READ(12)/WRITE(12): 32-bit LBA and length (SBC-3 §5.12, §5.34)",
            expect: "40 blocks at LBA 1500 written and read back",
            run: rw12_case,
        },
        Case {
            id: "STOR-24",
            rule: "READ(16)/WRITE(16): 64-bit LBA, 32-bit length (SBC-3 §5.13, §5.35)",
            expect: "48 blocks at LBA 2000 written and read back",
            run: rw16_case,
        },
        Case {
            id: "STOR-25",
            rule: "FUA = 1 on a write makes the data durable before GOOD (SBC-3 §5.35; Linux sends it for journal writes when DPOFUA is set): the backend is flushed",
            expect: "plain WRITE(10): no flush; WRITE(10)/WRITE(16) with FUA: one flush each; READ(10) with FUA reads",
            run: fua_case,
        },
        Case {
            id: "STOR-26",
            rule: "MODE SENSE(6) (SPC-4 §6.13): header with WP 0 and DPOFUA (SBC-3 §6.4.1), an 8-byte block descriptor, the caching page with WCE (Linux sd_read_cache_type); saved values (PC 3) are not supported (SPC-4 ASC 39h)",
            expect: "32 bytes, mode data length 31, DPOFUA, block length 512, page 08h length 12h WCE; PC 3: 05/39; page 1Ch: 05/24",
            run: mode_sense6_case,
        },
        Case {
            id: "STOR-27",
            rule: "MODE SENSE(10) of all pages with DBD (SPC-4 §6.14): 8-byte header, no block descriptors, caching then control page (§7.5.8)",
            expect: "40 bytes, mode data length 38, DPOFUA, block descriptor length 0, pages 08h and 0Ah",
            run: mode_sense10_case,
        },
        Case {
            id: "STOR-28",
            rule: "REPORT LUNS lists the target's LUNs, single-level peripheral addressing (SPC-4 §6.33, SAM-5 §4.7); allocation length below 16 is invalid",
            expect: "LUN list length 16: LUN 0 and LUN 3; allocation 8: CHECK CONDITION 05/24",
            run: report_luns_case,
        },
        Case {
            id: "STOR-29",
            rule: "REQUEST SENSE with nothing pending returns NO SENSE in fixed format (SPC-4 §6.39, §4.5.3): sense travels with each failed command as autosense",
            expect: "after a failed command: 18 bytes, response code 70h, key 0, ASC 0, additional length 10",
            run: request_sense_case,
        },
        Case {
            id: "STOR-30",
            rule: "SYNCHRONIZE CACHE(10/16) makes the cache durable (SBC-3 §5.22-23): the backend flush is counted; a range past the capacity is LBA OUT OF RANGE",
            expect: "one backend flush each; LBA 2047 + 2 blocks: CHECK CONDITION 05/21 and no flush",
            run: sync_cache_case,
        },
        Case {
            id: "STOR-31",
            rule: "START STOP UNIT (SBC-3 §5.25): START is GOOD, STOP writes the cache back, LOEJ without START on a fixed medium is invalid",
            expect: "START: GOOD, no flush; STOP: GOOD, one flush; LOEJ: 05/24; TEST UNIT READY still GOOD",
            run: start_stop_case,
        },
        Case {
            id: "STOR-32",
            rule: "LBA + transfer length past the capacity is CHECK CONDITION, ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE (SBC-3 §5.11, §5.35; SPC-4 ASC 21h/00h) and nothing is transferred",
            expect: "READ(10)/WRITE(10) at 2047 × 2, READ(16) at 2048, WRITE(16) at 2^64-1, WRITE(12) at 2046 × 3, READ(6) at 1FFFFFh: 05/21, the disk unchanged",
            run: lba_range_case,
        },
        Case {
            id: "STOR-33",
            rule: "an operation code the unit does not implement is CHECK CONDITION, ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (SPC-4 ASC 20h/00h; Linux sd_done then disables WRITE SAME / discard)",
            expect: "85h, 42h, 41h, 93h, 15h, 2Fh, A3h, C0h, FFh: 05/20 with autosense; the unit keeps working",
            run: invalid_opcode_case,
        },
        Case {
            id: "STOR-34",
            rule: "a bad CDB length fails that SRB only: cdb_length 0 or past 16 (vmscsi_request.cdb_length), or fewer bytes than the opcode's group (SPC-4 §4.2.5.1)",
            expect: "cdb_length 0, 17, 255 and a 6-byte READ(10): SRB_STATUS_INVALID_REQUEST, 05/24; the unit keeps working",
            run: bad_cdb_length_case,
        },
        Case {
            id: "STOR-35",
            rule: "a data buffer shorter than the transfer is refused rather than partly done: the CDB's length past data_transfer_length, or data_transfer_length past the GPA ranges (vmbus_sendpacket_mpb_desc describes exactly the buffer)",
            expect: "READ 1024 into 512, WRITE 2048 from 1024, 1024 over a 512-byte range, data with no ranges: 05/24 each; disk and guest buffer unchanged",
            run: short_buffer_case,
        },
        Case {
            id: "STOR-36",
            rule: "GPA ranges naming pages outside the guest's RAM are refused before anything is read or written (the host must not touch memory the guest does not own)",
            expect: "PFN 64 (one past), 1064, MAX_GPN, u64::MAX for writes and reads: 05/24; disk unchanged; the in-RAM page of a mixed range not written",
            run: outside_ram_case,
        },
        Case {
            id: "STOR-37",
            rule: "GPA-direct data at a non-zero offset spanning several scattered pages is moved in range order (hyperv.h vmbus_packet_mpb_array: offset into the first page, one PFN per page)",
            expect: "25 blocks from offset 0x234 over pages 10,3,17,8 land on disk in order; read back at offset 0x10 over 20,21,30,5 equal; bytes outside the range untouched",
            run: multi_page_case,
        },
        Case {
            id: "STOR-38",
            rule: "many requests in flight are each completed exactly once, in order, through a full host-to-guest ring (Linux keeps up to can_queue requests outstanding; completions wait for room via pending_send_sz)",
            expect: "200 SRBs (TEST UNIT READY and GPA-direct READs) with a 4 KiB ring and budget 7: 200 SUCCESS in order, the ring stalled at least once",
            run: in_flight_case,
        },
        Case {
            id: "STOR-39",
            rule: "an address with no disk: SRB_STATUS_INVALID_LUN (Linux: DID_NO_CONNECT), but a standard INQUIRY answers qualifier 3 / type 1Fh so the scan moves on (SPC-4 §6.6.2, OpenVMM storvsp)",
            expect: "LUN 1: INVALID_LUN / DEVICE_DOES_NOT_EXIST with the LUN echoed; INQUIRY at LUN 1 and target 1: 7Fh; a write to path 1 reaches no disk",
            run: wrong_address_case,
        },
        Case {
            id: "STOR-40",
            rule: "data_transfer_length past the announced max_transfer_bytes is refused at parse; exactly the limit is served (storvsc caps max_sectors by it)",
            expect: "256 KiB + 4 KiB: 05/24; 256 KiB: SUCCESS, 262144 bytes",
            run: too_long_case,
        },
        Case {
            id: "STOR-41",
            rule: "every open starts a new handshake (storvsc_channel_init runs after each open, resume included); a reset device does no work; a second open and an open without guest RAM are refused",
            expect: "after reset: Begin, poll idle; on the new rings an SRB is INVALID_DEVICE_STATE until the handshake; AlreadyOpen; Refused",
            run: reopen_case,
        },
        Case {
            id: "STOR-42",
            rule: "MODE SENSE(6)/(10) without LLBAA return the short LBA mode parameter block descriptor: NUMBER OF LOGICAL BLOCKS in bytes 0-3 (SBC-3 §6.4.2.2)",
            expect: "a 2^25-block disk: 02000000h in bytes 0-3, block length 512 in bytes 5-7",
            run: mode_sense_large_case,
        },
        Case {
            id: "STOR-43",
            rule: "CREATE_SUB_CHANNELS n after the handshake: SUCCESS while the sub-channels so far plus n stay within max_channel_count, INVALID_PARAMETER otherwise (storvsc_drv.c handle_multichannel_storage; OpenVMM storvsp); each sub-channel is offered with the primary's interface (vmbus_process_offer pairs them by GUIDs)",
            expect: "2 granted then 2 more, 1 more refused; 4 sub-channel devices numbered 1-4 with the SCSI interface; none before the request",
            run: sub_channel_grant_case,
        },
        Case {
            id: "STOR-44",
            rule: "a sub-channel takes SRBs at once, with no handshake (storvsc_drv.c handle_sc_creation opens it and queues I/O), on the disks the primary serves; handshake operations on it are INVALID_DEVICE_STATE",
            expect: "a write on sub-channel 1 reads back on the primary byte for byte; BEGIN_INITIALIZATION and CREATE_SUB_CHANNELS on it refused",
            run: sub_channel_io_case,
        },
        Case {
            id: "STOR-45",
            rule: "the primary's close (or a bus reset) ends its sub-channels: the next open starts a new handshake with none offered (Linux re-runs storvsc_channel_init and asks again)",
            expect: "0 offered after the close; a new request after the new handshake gets the full count again",
            run: sub_channel_reset_case,
        },
        Case {
            id: "STOR-46",
            rule: "completions need not follow request order: storvsc matches each by its 64-bit transaction id (storvsc_on_channel_callback), so a host completes each SRB when its I/O finishes, with its data placed before its completion",
            expect: "two reads in flight, the second finishes first: its completion (its id, SUCCESS, 4096 bytes, data in its page) comes first, the first's only after it finishes",
            run: out_of_order_case,
        },
    ]
}
