//! `vsc_drivers::storvsc` against the real `storvsp` over real rings, with
//! a `scsi_disk` over `MemoryBackend` behind it and data moved by
//! GPA-direct ranges in a separate guest RAM.

mod common;

use common::{Rings, leak};
use scsi_disk::{DiskConfig, MemoryBackend, ScsiDisk};
use storvsp::{DEFAULT_MAX_TRANSFER_BYTES, Storvsp, StorvspConfig};
use storvsp_protocol::{ProtocolVersion, ScsiStatus, SrbStatus};
use vmbus::memory::{AtomicMemory, SharedMemory};
use vsc_drivers::storvsc::{
    Blocks, Capacity, Command, CommandError, Completion, DataBuffer, Event, InquiryData, RequestId, Storvsc,
    sense_key,
};
use vsp::Device;

/// Guest RAM: 64 pages.
const RAM_PAGES: u64 = 64;
/// Disk: 2048 blocks of 512 bytes.
const SECTORS: u64 = 2048;

type Dev = Storvsp<&'static AtomicMemory, MemoryBackend>;

struct Rig {
    rings: Rings,
    ram: &'static AtomicMemory,
    dev: Dev,
    client: Storvsc,
}

impl Rig {
    /// A controller with one disk, open, and a client not yet started.
    fn new() -> Self {
        let (rings, channel) = Rings::new(64 * 1024);
        let ram = leak(RAM_PAGES * 4096);
        let disk = ScsiDisk::new(
            MemoryBackend::new(512, SECTORS),
            DiskConfig::new("vsc-test-0", 0x5_7043),
        )
        .unwrap();
        let mut dev = Dev::new(disk, StorvspConfig::default()).unwrap();
        dev.open(channel.with_guest_ram(ram)).unwrap();
        Self {
            rings,
            ram,
            dev,
            client: Storvsc::default(),
        }
    }

    /// Started and initialized.
    fn ready() -> Self {
        let mut rig = Self::new();
        rig.client.start().unwrap();
        let events = rig.pump();
        assert!(matches!(events.as_slice(), [Event::Ready { .. }]), "{events:?}");
        rig
    }

    /// Move packets both ways until neither side has anything to say;
    /// the events the client produced.
    fn pump(&mut self) -> Vec<Event> {
        loop {
            let mut progress = false;
            while let Some(p) = self.client.poll_transmit() {
                assert!(self.rings.write(&p), "guest-to-host ring full");
                progress = true;
            }
            let r = self.dev.poll(vsp::POLL_BUDGET);
            assert!(r.broke.is_none(), "{r:?}");
            while let Some(p) = self.rings.read() {
                self.client
                    .handle(&p)
                    .expect("the real storvsp follows the protocol");
                progress = true;
            }
            if !progress {
                break;
            }
        }
        core::iter::from_fn(|| self.client.poll_event()).collect()
    }

    /// Pump and return the one completion.
    fn complete(&mut self) -> Completion {
        let mut events = self.pump();
        assert_eq!(events.len(), 1, "{events:?}");
        match events.pop() {
            Some(Event::Completed(c)) => c,
            e => panic!("{e:?}"),
        }
    }

    fn write_ram(&self, pfns: &[u64], offset: u32, data: &[u8]) {
        each_chunk(pfns, offset, data.len(), |gpa, r| {
            self.ram.write_at(gpa, &data[r]).unwrap()
        });
    }

    fn read_ram(&self, pfns: &[u64], offset: u32, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        each_chunk(pfns, offset, len, |gpa, r| {
            self.ram.read_at(gpa, &mut out[r]).unwrap()
        });
        out
    }
}

/// Walk `len` bytes from `offset` into the first of `pfns`, page by page.
fn each_chunk(pfns: &[u64], offset: u32, len: usize, mut f: impl FnMut(u64, core::ops::Range<usize>)) {
    let mut done = 0;
    while done < len {
        let pos = offset as usize + done;
        let n = (4096 - pos % 4096).min(len - done);
        f(pfns[pos / 4096] * 4096 + (pos % 4096) as u64, done..done + n);
        done += n;
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn blocks(lba: u64, count: u32) -> Blocks {
    Blocks {
        lba,
        count,
        block_size: 512,
    }
}

#[test]
fn init_negotiates_6_2() {
    let mut rig = Rig::new();
    assert!(!rig.client.is_ready());
    assert_eq!(
        rig.client.synchronize_cache(0),
        Err(vsc_drivers::storvsc::StorvscError::NotReady)
    );
    rig.client.start().unwrap();
    let events = rig.pump();
    let [Event::Ready { version, properties }] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(*version, ProtocolVersion::WIN10);
    assert_eq!(properties.max_transfer_bytes, DEFAULT_MAX_TRANSFER_BYTES);
    assert_eq!(properties.max_channel_count, storvsp::DEFAULT_SUB_CHANNELS);
    assert!(properties.multi_channel);
    assert_eq!(rig.dev.version(), Some(ProtocolVersion::WIN10));
    assert_eq!(rig.dev.state(), storvsp::InitState::Ready(ProtocolVersion::WIN10));
    assert_eq!(rig.dev.stats().protocol_errors, 0);
}

#[test]
fn inquiry_and_capacity_match_the_backend() {
    let mut rig = Rig::ready();
    let id = rig.client.inquiry(0, DataBuffer::new(&[10], 100, 36)).unwrap();
    let c = rig.complete();
    assert_eq!((c.id, c.command, c.result), (id, Command::Inquiry, Ok(36)));
    let inq = InquiryData::parse(&rig.read_ram(&[10], 100, 36)).unwrap();
    assert_eq!((inq.qualifier, inq.device_type), (0, 0));
    assert_eq!(&inq.vendor, b"Msft    ");

    // Across a page boundary: 16 bytes in page 11, the rest in page 5.
    let pfns = [11, 5];
    let id = rig
        .client
        .read_capacity(0, DataBuffer::new(&pfns, 4080, 32))
        .unwrap();
    let c = rig.complete();
    assert_eq!((c.id, c.command), (id, Command::ReadCapacity16));
    let moved = c.result.unwrap() as usize;
    let cap = Capacity::parse(c.command, &rig.read_ram(&pfns, 4080, moved)).unwrap();
    let disk = rig.dev.disk(0).unwrap();
    assert_eq!(cap.blocks(), Some(disk.sector_count()));
    assert_eq!(cap.block_size, disk.sector_size());
    assert_eq!(cap.bytes(), Some(SECTORS * 512));
}

#[test]
fn write_then_read_back_byte_for_byte() {
    let mut rig = Rig::ready();
    // 16 blocks (8 KiB) from 0x234 into scattered pages: spans 3 pages.
    let out_pfns = [20, 17, 30];
    let data = pattern(7, 8192);
    rig.write_ram(&out_pfns, 0x234, &data);
    let id = rig
        .client
        .write(0, blocks(100, 16), DataBuffer::new(&out_pfns, 0x234, 8192))
        .unwrap();
    let c = rig.complete();
    assert_eq!((c.id, c.command, c.result), (id, Command::Write16, Ok(8192)));
    let stored = rig.dev.disk(0).unwrap().backend().bytes()[100 * 512..116 * 512].to_vec();
    assert_eq!(stored, &data[..]);

    let in_pfns = [40, 33];
    let id = rig
        .client
        .read(0, blocks(100, 16), DataBuffer::new(&in_pfns, 0, 8192))
        .unwrap();
    let c = rig.complete();
    assert_eq!((c.id, c.command, c.result), (id, Command::Read16, Ok(8192)));
    assert_eq!(rig.read_ram(&in_pfns, 0, 8192), data);
    assert_eq!(rig.dev.stats().bytes_written, 8192);
    assert_eq!(rig.dev.stats().bytes_read, 8192);
}

#[test]
fn synchronize_cache_is_counted_by_the_backend() {
    let mut rig = Rig::ready();
    assert_eq!(rig.dev.disk(0).unwrap().backend().flushes, 0);
    let id = rig.client.synchronize_cache(0).unwrap();
    let c = rig.complete();
    assert_eq!(
        (c.id, c.command, c.result),
        (id, Command::SynchronizeCache, Ok(0))
    );
    assert_eq!(rig.dev.disk(0).unwrap().backend().flushes, 1);
}

#[test]
fn a_read_past_the_end_is_check_condition_illegal_request() {
    let mut rig = Rig::ready();
    for lba in [SECTORS - 1, SECTORS, u64::MAX - 1] {
        let id = rig
            .client
            .read(0, blocks(lba, 2), DataBuffer::new(&[12], 0, 1024))
            .unwrap();
        let c = rig.complete();
        assert_eq!(c.id, id);
        let Err(CommandError::Scsi(e)) = c.result else {
            panic!("{c:?}")
        };
        assert_eq!(e.scsi_status, ScsiStatus::CHECK_CONDITION);
        assert_eq!(e.srb_status, SrbStatus::INVALID_REQUEST);
        assert_eq!(e.sense_key(), Some(sense_key::ILLEGAL_REQUEST));
        // LOGICAL BLOCK ADDRESS OUT OF RANGE.
        assert_eq!(e.sense.map(|s| (s.asc, s.ascq)), Some((0x21, 0)));
    }
    // The channel keeps working.
    rig.client.synchronize_cache(0).unwrap();
    assert_eq!(rig.complete().result, Ok(0));
    // No disk at LUN 3: INVALID_LUN, no sense.
    rig.client.synchronize_cache(3).unwrap();
    let Err(CommandError::Scsi(e)) = rig.complete().result else {
        panic!()
    };
    assert_eq!((e.srb_status, e.sense), (SrbStatus::INVALID_LUN, None));
}

#[test]
fn several_requests_in_flight_complete() {
    let mut rig = Rig::ready();
    // Eight writes of 4 blocks each, every buffer in its own two pages at
    // an odd offset, all queued before the host runs any.
    let mut ids = Vec::new();
    for i in 0..8u64 {
        let pfns = [2 * i + 16, 2 * i + 17];
        rig.write_ram(&pfns, 0xC00, &pattern(i as u8, 2048));
        let id = rig
            .client
            .write(0, blocks(i * 64, 4), DataBuffer::new(&pfns, 0xC00, 2048))
            .unwrap();
        ids.push(id);
    }
    assert_eq!(rig.client.in_flight(), 8);
    let events = rig.pump();
    let mut done: Vec<RequestId> = events
        .iter()
        .map(|e| match e {
            Event::Completed(c) => {
                assert_eq!(c.result, Ok(2048), "{c:?}");
                c.id
            }
            e => panic!("{e:?}"),
        })
        .collect();
    done.sort();
    assert_eq!(done, ids);
    assert_eq!(rig.client.in_flight(), 0);

    // Eight reads in flight, plus a flush among them.
    let mut reads = Vec::new();
    for i in 0..8u64 {
        let pfns = [40 + i];
        let id = rig
            .client
            .read(0, blocks(i * 64, 4), DataBuffer::new(&pfns, 0, 2048))
            .unwrap();
        reads.push((id, i));
    }
    let flush = rig.client.synchronize_cache(0).unwrap();
    let events = rig.pump();
    assert_eq!(events.len(), 9);
    for e in &events {
        let Event::Completed(c) = e else { panic!("{e:?}") };
        assert!(c.result.is_ok(), "{c:?}");
        if c.id == flush {
            continue;
        }
        let (_, i) = reads.iter().find(|(id, _)| *id == c.id).expect("a read");
        assert_eq!(rig.read_ram(&[40 + i], 0, 2048), pattern(*i as u8, 2048));
    }
    assert_eq!(rig.dev.disk(0).unwrap().backend().flushes, 1);
    assert_eq!(rig.client.stats().host_errors, 0);
    assert_eq!(rig.dev.stats().srb_failures, 0);
}

#[test]
fn sub_channels_are_granted_and_carry_io_without_a_handshake() {
    let mut rig = Rig::ready();
    let props = rig.client.properties().unwrap();
    assert!(props.multi_channel);
    assert_eq!(props.max_channel_count, storvsp::DEFAULT_SUB_CHANNELS);
    // More than announced, or none: the caller's mistake, nothing sent.
    for bad in [0, props.max_channel_count + 1] {
        assert!(matches!(
            rig.client.create_sub_channels(bad),
            Err(vsc_drivers::storvsc::StorvscError::SubChannels { .. })
        ));
    }
    rig.client.create_sub_channels(2).unwrap();
    assert!(
        rig.client.create_sub_channels(1).is_err(),
        "one request at a time"
    );
    assert_eq!(rig.pump(), [Event::SubChannelsGranted(2)]);
    let mut subs = rig.dev.take_sub_channel_devices();
    assert_eq!(subs.len(), 2);
    // Sub-channel 1 on rings of its own, over the same guest RAM.
    let (rings, channel) = Rings::new(64 * 1024);
    let mut sub = subs.remove(0);
    sub.open(channel.with_guest_ram(rig.ram)).unwrap();
    let mut client = Storvsc::for_sub_channel(rig.client.version().unwrap(), props, 8);
    assert!(client.is_ready());
    let data = pattern(3, 4096);
    rig.write_ram(&[5], 0, &data);
    let id = client
        .write(0, blocks(300, 8), DataBuffer::new(&[5], 0, 4096))
        .unwrap();
    while let Some(p) = client.poll_transmit() {
        assert!(rings.write(&p));
    }
    assert!(sub.poll(vsp::POLL_BUDGET).broke.is_none());
    while let Some(p) = rings.read() {
        client.handle(&p).unwrap();
    }
    match client.poll_event() {
        Some(Event::Completed(c)) => assert_eq!((c.id, c.result), (id, Ok(4096))),
        e => panic!("{e:?}"),
    }
    // The primary's disk has it: one controller, several channels.
    let stored = rig.dev.disk(0).unwrap().backend().bytes()[300 * 512..308 * 512].to_vec();
    assert_eq!(stored, data);
}
