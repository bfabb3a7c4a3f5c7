//! Hostile guests of the root's synthetic SCSI controller and NIC: modes
//! `disk-hostile-<case>` and `net-hostile-<case>`. Each case attacks one
//! device channel the way a broken or malicious guest driver could, counts
//! what the root answered, and ends with one line `testos NAME: CASE done:
//! ... -- end of CASE` (or `CASE done with an error: ... -- end of CASE`)
//! that `tests/tests/testos_devices.rs` reads.
//!
//! - `disk-hostile-gpa`: READs and WRITEs whose GPA-direct pages lie
//!   outside the child's memory (the first page past it, hv-core, the
//!   root's canary page, the peer child's memory), alone and after a page
//!   of our own; every one must fail alone, nothing moved.
//! - `disk-hostile-length`: SRBs whose transfer length runs past their
//!   ranges, past the controller's maximum, ranges longer than their page
//!   lists or starting past their first page: each must fail alone.
//! - `disk-hostile-flood`: 4096 READs queued at once (no in-flight
//!   limit on our side), the rings kept full: every one must complete.
//! - `disk-hostile-ring-full`: SRBs until the guest-to-host ring is full,
//!   then never read the host-to-guest ring again (the device must stall
//!   that channel only).
//! - `net-hostile-flood`: 3000 frames as fast as the send sections allow,
//!   then 600 RNDIS QUERYs in flight 5 at a time; then serve as `net`.
//! - `net-hostile-oversize`: SEND_RNDIS_PACKETs with a frame over the MTU,
//!   a section past the buffer, a length past the section, an RNDIS length
//!   past its bytes, page buffers outside the child's memory; each must be
//!   refused alone; then serve as `net`.
//! - `net-hostile-ring-full`: bring the NIC up, announce the address, then
//!   never read the host-to-guest ring again.
//!
//! The NIC cases take the address in the mode after a colon
//! (`net-hostile-flood:10.0.2.41`; default as `net`).

use crate::devices::{self, DATA_PAGES, Deadline, DevChannel, Disk, Host, Nic, PAGE};
use crate::guest;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use boot_proto::child::{BootInfo, target};
use core::fmt::Write;
use storvsp_protocol::{DataDirection, IntoBytes, Operation, request_packet, scsi_request};
use vmbus::memory::SharedMemory;
use vmbus::packet::{Descriptor, FLAG_COMPLETION_REQUESTED, PacketType};
use vsc_drivers::storvsc::{self, Blocks, CommandError, DataBuffer};
use zerocopy::FromBytes;

macro_rules! say {
    ($($arg:tt)*) => {
        crate::guest::say_line(format_args!($($arg)*))
    };
}

/// Run hostile device case `mode`.
pub(crate) fn run(name: &str, mode: &str, info: &'static BootInfo) -> ! {
    let (case, arg) = mode.split_once(':').unwrap_or((mode, ""));
    let case = case
        .strip_prefix("disk-hostile-")
        .or_else(|| case.strip_prefix("net-hostile-"))
        .unwrap_or(case);
    let ip = devices::parse_ip(arg);
    let result = match case {
        "gpa" => gpa(info),
        "length" => length(),
        "flood" if mode.starts_with("disk") => srb_flood(),
        "ring-full" if mode.starts_with("disk") => disk_ring_full(name),
        "flood" => net_attack(name, ip, case, net_flood),
        "oversize" => net_attack(name, ip, case, |nic, _| oversize(nic, info)),
        "ring-full" => net_ring_full(name, ip),
        _ => {
            say!("testos {name}: unknown hostile device case '{mode}'");
            guest::halt_forever()
        }
    };
    match result {
        Ok(summary) => say!("testos {name}: {case} done: {summary} -- end of {case}"),
        Err(why) => say!("testos {name}: {case} done with an error: {why} -- end of {case}"),
    }
    guest::halt_forever()
}

fn open_disk(max_in_flight: usize) -> Result<Disk, String> {
    let mut bus = devices::connect()?;
    Disk::open(&mut bus, max_in_flight)
}

fn blocks(lba: u64, count: u32) -> Blocks {
    Blocks {
        lba,
        count,
        block_size: 512,
    }
}

/// A request that must have failed: its SRB status, or why not.
fn refused(c: &storvsc::Completion) -> Result<u8, String> {
    match &c.result {
        Err(CommandError::Scsi(e)) => Ok(e.srb_status.0),
        other => Err(format!("{:?} was not refused: {other:?}", c.command)),
    }
}

// ---- disk-hostile-gpa ----

fn gpa(info: &BootInfo) -> Result<String, String> {
    let mut d = open_disk(storvsc::DEFAULT_MAX_IN_FLIGHT)?;
    let cap = d.identify(true)?;
    if cap.block_size != 512 {
        return Err(format!("block size {}", cap.block_size));
    }
    // Known contents at LBA 8..16 (seed 0x6A), zeros at 16..24.
    let mut block = [0u8; 512];
    for i in 0..8u64 {
        devices::pattern_block(0x6A, 8 + i, &mut block);
        let _ = d.data.write_at(i * 512, &block);
    }
    let ours = d.pfns(0, 1);
    let c = d.run(|s| s.write(0, blocks(8, 8), DataBuffer::new(&ours, 0, 4096)))?;
    c.result.map_err(|e| format!("the good write: {e:?}"))?;
    let past = info.memory_size >> 12;
    let mut foreign = vec![("past the end", past)];
    for (what, t) in [
        ("hv-core", target::HV_CORE),
        ("root canary", target::ROOT),
        ("peer", target::PEER),
    ] {
        if info.targets[t] != 0 {
            foreign.push((what, info.targets[t] >> 12));
        }
    }
    foreign.push(("4 GiB up", 0x10_0000 + past));
    let (mut n, mut statuses) = (0, String::new());
    for (what, pfn) in &foreign {
        let p = [*pfn];
        let r = d.run(|s| s.read(0, blocks(8, 1), DataBuffer::new(&p, 0, 512)))?;
        let w = d.run(|s| s.write(0, blocks(16, 1), DataBuffer::new(&p, 0, 512)))?;
        let (r, w) = (refused(&r), refused(&w));
        match (r, w) {
            (Ok(a), Ok(b)) => {
                n += 2;
                let _ = write!(statuses, "{what} {a:#x}/{b:#x}; ");
            }
            (a, b) => return Err(format!("{what} (pfn {pfn:#x}): read {a:?}, write {b:?}")),
        }
    }
    // Half ours, half not: nothing may move, in either direction.
    let mixed = [ours[0], past];
    let w = d.run(|s| s.write(0, blocks(16, 8), DataBuffer::new(&mixed, 2048, 4096)))?;
    refused(&w)?;
    let _ = d.data.write_at(0, &[0xEE; 4096]);
    let r = d.run(|s| s.read(0, blocks(8, 8), DataBuffer::new(&mixed, 2048, 4096)))?;
    refused(&r)?;
    let mut page = [0u8; 4096];
    let _ = d.data.read_at(0, &mut page);
    let page_untouched = page.iter().all(|&b| b == 0xEE);
    n += 2;
    // The channel still works: LBA 8..16 hold the pattern, 16..24 zeros.
    let c = d.run(|s| s.read(0, blocks(8, 16), DataBuffer::new(&d_pfns(2), 0, 8192)))?;
    c.result.map_err(|e| format!("the good read: {e:?}"))?;
    let mut good = true;
    let mut zero = true;
    for i in 0..16u64 {
        let _ = d.data.read_at(i * 512, &mut block);
        if i < 8 {
            let mut want = [0u8; 512];
            devices::pattern_block(0x6A, 8 + i, &mut want);
            good &= block == want;
        } else {
            zero &= block.iter().all(|&b| b == 0);
        }
    }
    if !(page_untouched && good && zero) {
        return Err(format!(
            "{n} refused, but: our page untouched {page_untouched}, lba 8.. intact {good}, lba 16.. still zero {zero}"
        ));
    }
    Ok(format!(
        "{n} of {n} requests naming foreign pages refused (srb status read/write: {statuses}mixed too), \
         nothing moved, the channel still works"
    ))
}

/// PFNs of the first `n` data pages.
fn d_pfns(n: u64) -> Vec<u64> {
    let base = devices::data_area().base >> 12;
    (0..n).map(|i| base + i).collect()
}

// ---- disk-hostile-length ----

/// Write one raw GPA-direct EXECUTE_SRB (READ(16) of `dtl` bytes at LBA 0)
/// with `ranges`, wait for its completion: the SRB status.
fn raw_srb(d: &mut Disk, id: u64, dtl: u32, ranges: &[Range<'_>]) -> Result<u8, String> {
    let mut cdb = [0u8; 16];
    cdb[0] = storvsc::opcode::READ_16;
    cdb[10..14].copy_from_slice(&(dtl / 512).max(1).to_be_bytes());
    let srb = scsi_request(0, &cdb, DataDirection::In, dtl);
    let vstor = request_packet(Operation::EXECUTE_SRB, srb.as_bytes());
    let (after, offset8) = storvsp_protocol::gpa::build_gpa_direct(ranges, &vstor);
    let desc = Descriptor::new(
        PacketType::DATA_USING_GPA_DIRECT,
        offset8 as usize * 8,
        vstor.len(),
        FLAG_COMPLETION_REQUESTED,
        id,
    );
    let mut p = desc.as_bytes().to_vec();
    p.extend_from_slice(&after);
    let deadline = Deadline::secs(20);
    while !d.ch.send(&p).map_err(|e| format!("{e:?}"))? {
        if deadline.passed() {
            return Err("the ring stayed full".into());
        }
    }
    loop {
        if let Some(n) = d.ch.recv().map_err(|e| format!("{e:?}"))? {
            let (desc, _) = Descriptor::read_from_prefix(&d.ch.buf[..n]).map_err(|_| "short packet")?;
            if desc.transaction_id == id {
                let payload = &d.ch.buf[desc.payload()];
                return payload
                    .get(14)
                    .copied()
                    .ok_or_else(|| format!("completion of {} bytes", payload.len()));
            }
            let _ = d.client.handle(&d.ch.buf[..n]);
        }
        if deadline.passed() {
            return Err(format!("no completion for raw SRB {id:#x}"));
        }
    }
}

/// A GPA-direct range: (byte offset, byte count, PFNs).
type Range<'a> = (u32, u32, &'a [u64]);

fn length() -> Result<String, String> {
    let mut d = open_disk(storvsc::DEFAULT_MAX_IN_FLIGHT)?;
    let max = d.client.properties().map_or(0, |p| p.max_transfer_bytes);
    let one = d_pfns(1);
    let many: Vec<u64> = (0..u64::from(max / 4096 + 1))
        .map(|i| one[0] + i % DATA_PAGES)
        .collect();
    let cases: [(&str, u32, Vec<Range<'_>>); 5] = [
        (
            "transfer length past its one-page range",
            8192,
            vec![(0, 4096, &one[..])],
        ),
        (
            "transfer length past two ranges",
            3 * 4096,
            vec![(0, 4096, &one[..]), (0, 4096, &one[..])],
        ),
        (
            "a range longer than its page list",
            4096,
            vec![(0, 3 * 4096, &one[..])],
        ),
        (
            "a range starting past its first page",
            512,
            vec![(5000, 512, &one[..])],
        ),
        (
            "a transfer past the controller's maximum",
            max + 4096,
            vec![(0, max + 4096, &many[..])],
        ),
    ];
    let mut text = String::new();
    let mut refused = 0;
    for (i, (what, dtl, ranges)) in cases.iter().enumerate() {
        let status = raw_srb(&mut d, 0xBAD0 + i as u64, *dtl, ranges)?;
        // SRB_STATUS_SUCCESS is 1.
        if status & 0x3F == 1 {
            return Err(format!("{what}: completed with SRB status {status:#x}"));
        }
        refused += 1;
        let _ = write!(text, "{what}: {status:#x}; ");
    }
    let c = d.run(|s| s.read(0, blocks(0, 8), DataBuffer::new(&one, 0, 4096)))?;
    c.result.map_err(|e| format!("the good read after: {e:?}"))?;
    Ok(format!(
        "{refused} of {} refused ({text}), then a good read works",
        cases.len()
    ))
}

// ---- disk-hostile-flood ----

/// SRBs the flood sends in all.
const FLOOD_SRBS: u32 = 4096;
/// SRBs queued at once: several times what the rings hold, so the
/// guest-to-host ring stays full while completions come back.
const FLOOD_QUEUED: u32 = 512;

fn srb_flood() -> Result<String, String> {
    let mut d = open_disk(FLOOD_QUEUED as usize)?;
    let pfns = d_pfns(1);
    let (mut issued, mut completed, mut ok) = (0u32, 0u32, 0u32);
    let mut most_waiting = 0;
    let deadline = Deadline::secs(120);
    while completed < FLOOD_SRBS {
        while issued < FLOOD_SRBS && issued - completed < FLOOD_QUEUED {
            d.client
                .read(
                    0,
                    blocks(u64::from(issued % 64), 1),
                    DataBuffer::new(&pfns, 0, 512),
                )
                .map_err(|e| format!("srb {issued}: {e}"))?;
            issued += 1;
        }
        d.pump()?;
        most_waiting = most_waiting.max(d.pending.len());
        for c in d.done.drain(..) {
            completed += 1;
            if c.result == Ok(512) {
                ok += 1;
            }
        }
        if deadline.passed() {
            return Err(format!("{completed} of {FLOOD_SRBS} completed"));
        }
    }
    Ok(format!(
        "{FLOOD_SRBS} SRBs, {FLOOD_QUEUED} queued at a time, {completed} completed ({ok} ok), \
         up to {most_waiting} waiting for ring room"
    ))
}

// ---- disk-hostile-ring-full ----

fn disk_ring_full(name: &str) -> Result<String, String> {
    let mut d = open_disk(100_000)?;
    let pfns = d_pfns(1);
    let mut sent = 0u32;
    // Keep the guest-to-host ring topped up until the root stops reading
    // it, which it must once the host-to-guest ring has no room for more
    // completions (nobody reads them). One fill is not enough: a root that
    // serves SRBs quickly enough finds room for every completion of the
    // first fill. Stop when the ring stayed full for a second.
    let give_up = Deadline::secs(60);
    let mut full_for: Option<Deadline> = None;
    while sent < 50_000 && !give_up.passed() {
        if d.pending.is_empty() {
            full_for = None;
            d.client
                .read(0, blocks(0, 1), DataBuffer::new(&pfns, 0, 512))
                .map_err(|e| format!("{e}"))?;
            sent += 1;
        } else if full_for.get_or_insert_with(|| Deadline::secs(1)).passed() {
            break;
        } else {
            core::hint::spin_loop();
        }
        d.flush()?;
    }
    say!(
        "testos {name}: ring-full done: {} SRBs written, the guest-to-host ring full, never reading the host-to-guest ring -- end of ring-full",
        sent as usize - d.pending.len()
    );
    guest::halt_forever()
}

// ---- NIC cases ----

fn net_attack(
    name: &str,
    ip: Option<[u8; 4]>,
    case: &str,
    attack: impl FnOnce(&mut Nic, &mut Host) -> Result<String, String>,
) -> Result<String, String> {
    let (mut nic, mut host) = devices::net_up(name, ip)?;
    let summary = attack(&mut nic, &mut host)?;
    say!("testos {name}: {case} done: {summary} -- end of {case}");
    say!("net: serving ARP and ICMP echo");
    loop {
        devices::serve_once(&mut nic, &mut host)?;
    }
}

const FLOOD_FRAMES: u32 = 3000;
const FLOOD_QUERIES: u32 = 600;
const RAW_ID: u64 = 0xBAD0_0000;

fn net_flood(nic: &mut Nic, host: &mut Host) -> Result<String, String> {
    let mut frame = vec![0xFFu8; 6];
    frame.extend_from_slice(&nic.mac);
    frame.extend_from_slice(&0x88B5u16.to_be_bytes());
    frame.resize(600, 0x5A);
    for _ in 0..FLOOD_FRAMES {
        nic.send_frame(&frame)?;
        let _ = host;
    }
    // Every section back before the raw phase uses them.
    let sections = (devices::SEND_PAGES * PAGE / 6144) as usize;
    let deadline = Deadline::secs(20);
    while nic.client.free_send_sections() < sections {
        nic.pump()?;
        if deadline.passed() {
            return Err("send sections never came back".into());
        }
    }
    // RNDIS QUERYs (of the link speed) in every section, over and over.
    let mut statuses: Vec<(u32, u32)> = Vec::new();
    let mut next = 0u32;
    let mut in_flight: Vec<u64> = Vec::new();
    let deadline = Deadline::secs(60);
    while (statuses.iter().map(|s| s.1).sum::<u32>()) < FLOOD_QUERIES {
        while in_flight.len() < sections && next < FLOOD_QUERIES {
            let section = (next as usize % sections) as u32;
            let msg = nvsp_protocol::rndis::oid_request(
                nvsp_protocol::rndis::MessageType::QUERY,
                0x5000 + next,
                nvsp_protocol::rndis::Oid::GEN_LINK_SPEED,
                &[],
            );
            let _ = nic.send.write_at(u64::from(section) * 6144, &msg);
            let m = nvsp_protocol::send_rndis_packet_in_section(
                nvsp_protocol::CHANNEL_TYPE_CONTROL,
                Some((section, msg.len() as u32)),
            );
            let id = RAW_ID + u64::from(next);
            send_raw(nic, id, &m)?;
            in_flight.push(id);
            next += 1;
        }
        let (id, status) = raw_completion(nic, &deadline)?;
        in_flight.retain(|i| *i != id);
        match statuses.iter_mut().find(|s| s.0 == status) {
            Some(s) => s.1 += 1,
            None => statuses.push((status, 1)),
        }
    }
    Ok(format!(
        "{FLOOD_FRAMES} frames sent, {FLOOD_QUERIES} RNDIS queries completed with statuses {statuses:?} \
         (status, count), {} host packets refused",
        nic.host_errors
    ))
}

/// An in-band NVSP message with completion requested.
fn send_raw(nic: &mut Nic, id: u64, msg: &[u8]) -> Result<(), String> {
    let d = Descriptor::new(
        PacketType::DATA_INBAND,
        16,
        msg.len(),
        FLAG_COMPLETION_REQUESTED,
        id,
    );
    let mut p = d.as_bytes().to_vec();
    p.extend_from_slice(msg);
    send_packet(&mut nic.ch, &p)
}

fn send_packet(ch: &mut DevChannel, p: &[u8]) -> Result<(), String> {
    let deadline = Deadline::secs(20);
    while !ch.send(p).map_err(|e| format!("{e:?}"))? {
        if deadline.passed() {
            return Err("the guest-to-host ring stayed full".into());
        }
    }
    Ok(())
}

/// Read until a completion of a raw packet comes: (id, NVSP status). Other
/// packets go to the client (received RNDIS answers to our raw queries
/// are refused by it, and completed).
fn raw_completion(nic: &mut Nic, deadline: &Deadline) -> Result<(u64, u32), String> {
    loop {
        if let Some(n) = nic.ch.recv().map_err(|e| format!("{e:?}"))? {
            let (d, _) = Descriptor::read_from_prefix(&nic.ch.buf[..n]).map_err(|_| "short packet")?;
            if d.kind == PacketType::COMPLETION.0 && d.transaction_id >= RAW_ID {
                let p = &nic.ch.buf[d.payload()];
                let status = p
                    .get(4..8)
                    .map_or(u32::MAX, |s| u32::from_le_bytes(s.try_into().expect("4")));
                return Ok((d.transaction_id, status));
            }
            let buffers = vsc_drivers::netvsc::Buffers {
                receive: &nic.recv,
                send: &nic.send,
            };
            if nic.client.handle(&nic.ch.buf[..n], &buffers).is_err() {
                nic.host_errors += 1;
            }
            nic.flush()?;
        }
        while let Some(e) = nic.client.poll_event() {
            if let vsc_drivers::netvsc::Event::Frame(f) = e {
                nic.frames.push_back(f);
            }
        }
        nic.frames.clear();
        if deadline.passed() {
            return Err("no completion for a raw packet".into());
        }
    }
}

fn oversize(nic: &mut Nic, info: &BootInfo) -> Result<String, String> {
    use nvsp_protocol::{CHANNEL_TYPE_DATA, send_rndis_packet_in_section};
    let sections = (devices::SEND_PAGES * PAGE / 6144) as u32;
    let deadline = Deadline::secs(20);
    while (nic.client.free_send_sections() as u32) < sections {
        nic.pump()?;
        if deadline.passed() {
            return Err("send sections never came back".into());
        }
    }
    let mut big = vec![0xFFu8; 6];
    big.extend_from_slice(&nic.mac);
    big.extend_from_slice(&0x88B5u16.to_be_bytes());
    big.resize(4000, 0x33);
    let over_mtu = nvsp_protocol::rndis::packet_message(&big, &[]);
    let _ = nic.send.write_at(0, &over_mtu);
    let mut lying = nvsp_protocol::rndis::packet_message(&big[..60], &[]);
    // RNDIS message length (bytes 4..8) far past the bytes.
    lying[4..8].copy_from_slice(&60_000u32.to_le_bytes());
    let _ = nic.send.write_at(6144, &lying);
    let mut text = String::new();
    let mut refused = 0;
    let cases: [(&str, [u8; nvsp_protocol::MESSAGE_SIZE]); 4] = [
        (
            "a 4000-byte frame (MTU 1500)",
            send_rndis_packet_in_section(CHANNEL_TYPE_DATA, Some((0, over_mtu.len() as u32))),
        ),
        (
            "an RNDIS length past its bytes",
            send_rndis_packet_in_section(CHANNEL_TYPE_DATA, Some((1, lying.len() as u32))),
        ),
        (
            "a section past the buffer",
            send_rndis_packet_in_section(CHANNEL_TYPE_DATA, Some((1000, 60))),
        ),
        (
            "a length past the section",
            send_rndis_packet_in_section(CHANNEL_TYPE_DATA, Some((2, 6144 + 512))),
        ),
    ];
    for (i, (what, m)) in cases.iter().enumerate() {
        send_raw(nic, RAW_ID + i as u64, m)?;
        let (_, status) = raw_completion(nic, &Deadline::secs(20))?;
        // NVSP status 1 is SUCCESS.
        if status == 1 {
            return Err(format!("{what}: accepted"));
        }
        refused += 1;
        let _ = write!(text, "{what}: {status}; ");
    }
    // Page buffers (GPA-direct) outside the child's memory.
    let past = info.memory_size >> 12;
    let mut pages = vec![("past the end", past)];
    if info.targets[target::HV_CORE] != 0 {
        pages.push(("hv-core", info.targets[target::HV_CORE] >> 12));
    }
    for (i, (what, pfn)) in pages.iter().enumerate() {
        let m = send_rndis_packet_in_section(CHANNEL_TYPE_DATA, None);
        let p = [*pfn];
        let (after, offset8) = storvsp_protocol::gpa::build_gpa_direct(&[(0, 100, &p[..])], &m);
        let id = RAW_ID + 0x100 + i as u64;
        let d = Descriptor::new(
            PacketType::DATA_USING_GPA_DIRECT,
            offset8 as usize * 8,
            m.len(),
            FLAG_COMPLETION_REQUESTED,
            id,
        );
        let mut packet = d.as_bytes().to_vec();
        packet.extend_from_slice(&after);
        send_packet(&mut nic.ch, &packet)?;
        let (_, status) = raw_completion(nic, &Deadline::secs(20))?;
        if status == 1 {
            return Err(format!("page buffer {what}: accepted"));
        }
        refused += 1;
        let _ = write!(text, "page buffer {what}: {status}; ");
    }
    Ok(format!(
        "{refused} of {} refused ({text})",
        cases.len() + pages.len()
    ))
}

fn net_ring_full(name: &str, ip: Option<[u8; 4]>) -> Result<String, String> {
    let (nic, host) = devices::net_up(name, ip)?;
    let _ = (nic, host);
    say!(
        "testos {name}: ring-full done: NIC up, address announced, never reading the host-to-guest ring again -- end of ring-full"
    );
    guest::halt_forever()
}
