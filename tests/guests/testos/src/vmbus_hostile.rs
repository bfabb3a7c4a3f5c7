//! Hostile VMBus clients: modes `vmbus-hostile-<case>` (see `run`). Each
//! case attacks the root's VMBus server or echo device the way a broken or
//! malicious guest kernel could, counts what the root answered, and ends with
//! one line `testos NAME: CASE done: ... -- end of CASE` (or `CASE done with
//! an error: ... -- end of CASE`) that the QEMU tests in
//! `tests/tests/hostile_vmbus.rs` read.

use crate::guest::{self, Bus};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use boot_proto::child::BootInfo;
use core::fmt::Write;
use hv1_abi::{HvCallCode, HvStatus, HypercallControl};
use vmbus::client::ClientEvent;

macro_rules! say {
    ($($arg:tt)*) => {
        crate::guest::say_line(format_args!($($arg)*))
    };
}

/// Run hostile VMBus case `case`.
pub fn run(name: &str, case: &str, _info: &'static BootInfo) -> ! {
    guest::init_heap();
    guest::enable_hypercalls();
    guest::enable_synic();
    let result = match case {
        "gpadl-flood" => gpadl_flood(name),
        "connect-churn" => connect_churn(name),
        "reconnect" => reconnect(name),
        "ring-flood" => ring_flood(name),
        "crash" => crash(name),
        "edges" => edges(name),
        "alias" => alias(name),
        _ => {
            say!("testos {name}: unknown hostile vmbus case '{case}'");
            guest::halt_forever()
        }
    };
    // The line ends with a fixed marker: a reader that sees the marker has
    // the whole line (the root's `console` completes a partial last line).
    match result {
        Ok(summary) => say!("testos {name}: {case} done: {summary} -- end of {case}"),
        Err(why) => say!("testos {name}: {case} done with an error: {why} -- end of {case}"),
    }
    guest::halt_forever()
}

/// HvSignalEvent as a fast call (the connection id in RCX).
fn signal_control() -> u64 {
    HypercallControl {
        fast: true,
        ..HypercallControl::simple(HvCallCode::SIGNAL_EVENT)
    }
    .encode()
}

// ---- gpadl-flood ----

/// GPADL_HEADERs the flood posts.
const FLOOD_HEADERS: u32 = 2000;
/// Pages each flooded GPADL announces: 27 needs one GPADL_BODY after the
/// header's 26 PFNs, and it never comes. 64 of them (the root's GPADL quota)
/// announce 1728 pages, below the 2048 pages of an 8 MiB child, so the
/// count quota is the one that bites.
const FLOOD_GPADL_PAGES: u64 = 27;
/// Consecutive INSUFFICIENT_BUFFERS answers one post may get before the
/// flood gives up (the root takes a message within a tick).
const POST_RETRIES: u64 = 20_000_000;

/// What came back from the root during a flood.
#[derive(Default)]
struct Replies {
    /// GPADL_CREATED with status 0.
    created: u32,
    /// GPADL_CREATED with a failure status.
    refused: u32,
    /// The marker's status, once its GPADL_CREATED arrived.
    marker: Option<u32>,
    /// Any other message.
    other: u32,
    /// Posts retried because the root's message slot was full.
    retries: u64,
}

impl Replies {
    /// Take one message from our SynIC slot, if any, and count it.
    fn take_one(&mut self, bus: &mut Bus, marker: u32, buf: &mut [u8; 240]) -> Result<bool, String> {
        let Some((t, n)) = guest::take_message(buf) else {
            return Ok(false);
        };
        if t != vmbus::protocol::VMBUS_MESSAGE_TYPE {
            self.other += 1;
            return Ok(true);
        }
        let events = bus
            .client
            .handle(&buf[..n])
            .map_err(|e| format!("host message: {e:?}"))?;
        for e in events {
            match e {
                ClientEvent::GpadlCreated { handle, status } if handle == marker => {
                    self.marker = Some(status)
                }
                ClientEvent::GpadlCreated { status: 0, .. } => self.created += 1,
                ClientEvent::GpadlCreated { .. } => self.refused += 1,
                _ => self.other += 1,
            }
        }
        Ok(true)
    }

    /// Post `bytes` on `connection`, taking replies while the root's slot is
    /// full, then take whatever else is waiting.
    fn post(
        &mut self,
        bus: &mut Bus,
        connection: u32,
        bytes: &[u8],
        marker: u32,
        buf: &mut [u8; 240],
    ) -> Result<(), String> {
        let mut tries = 0u64;
        loop {
            let r = guest::post_raw(
                connection,
                vmbus::protocol::VMBUS_MESSAGE_TYPE,
                bytes.len() as u32,
                bytes,
            );
            match r.status {
                HvStatus::SUCCESS => break,
                HvStatus::INSUFFICIENT_BUFFERS => {
                    self.retries += 1;
                    tries += 1;
                    if tries > POST_RETRIES {
                        return Err("the root stopped taking messages".into());
                    }
                    if !self.take_one(bus, marker, buf)? {
                        core::hint::spin_loop();
                    }
                }
                other => return Err(format!("post on connection {connection}: {other:?}")),
            }
        }
        while self.take_one(bus, marker, buf)? {}
        Ok(())
    }
}

/// Connect, then post [`FLOOD_HEADERS`] GPADL_HEADERs with fresh handles
/// and never their bodies: every one the root accepts is an assembly it
/// must hold. Then one complete 1-page GPADL as a marker: its GPADL_CREATED
/// comes after the answers to everything before it. Stays connected (the
/// held assemblies show in `info`'s quotas).
fn gpadl_flood(name: &str) -> Result<String, String> {
    let mut bus = Bus::new(None);
    bus.connect()?;
    let pfns: Vec<u64> = (0x400..0x400 + FLOOD_GPADL_PAGES).collect();
    let mut replies = Replies::default();
    let mut buf = [0u8; 240];
    let mut first = 0;
    for i in 0..FLOOD_HEADERS {
        // The client numbers the handle and queues the header and its body;
        // only the header goes out.
        let handle = bus.client.create_gpadl(1, &pfns);
        if i == 0 {
            first = handle;
        }
        let (connection, header) = bus.client.next_message().ok_or("no GPADL_HEADER queued")?;
        let _body = bus.client.next_message();
        replies.post(&mut bus, connection, &header, u32::MAX, &mut buf)?;
    }
    let marker = bus.client.create_gpadl(1, &guest::ring_pfns(1));
    let (connection, header) = bus.client.next_message().ok_or("no marker queued")?;
    replies.post(&mut bus, connection, &header, marker, &mut buf)?;
    let mut spins = 0u64;
    while replies.marker.is_none() {
        if !replies.take_one(&mut bus, marker, &mut buf)? {
            spins += 1;
            if spins > guest::REPLY_SPINS {
                return Err(format!(
                    "no GPADL_CREATED for the marker; {} refused so far",
                    replies.refused
                ));
            }
            core::hint::spin_loop();
        }
    }
    let held = FLOOD_HEADERS - replies.refused - replies.created;
    say!(
        "testos {name}: gpadl-flood: handles {first:#x}..={:#x}, marker {marker:#x}",
        first + FLOOD_HEADERS - 1
    );
    Ok(format!(
        "{FLOOD_HEADERS} headers posted, {} refused (GPADL_CREATED failure), {} created, {held} held \
         without an answer, marker status {:#x}, {} other replies, {} post retries",
        replies.refused,
        replies.created,
        replies.marker.unwrap_or(0),
        replies.other,
        replies.retries
    ))
}

// ---- connect-churn ----

/// Connect/unload cycles of `connect-churn`.
const CHURN_CYCLES: u32 = 300;

/// Connect and unload [`CHURN_CYCLES`] times: each cycle makes the root log
/// a connect and an unload unless its console budget holds.
fn connect_churn(_name: &str) -> Result<String, String> {
    let mut bus = Bus::new(None);
    let mut at_5_3 = 0;
    for i in 0..CHURN_CYCLES {
        let v = bus.connect().map_err(|e| format!("cycle {i}: connect: {e}"))?;
        if v == vmbus::version::Version::WIN10_V5_3 {
            at_5_3 += 1;
        }
        bus.unload().map_err(|e| format!("cycle {i}: unload: {e}"))?;
    }
    Ok(format!(
        "{CHURN_CYCLES} of {CHURN_CYCLES} connect/unload cycles ({at_5_3} at version 5.3)"
    ))
}

// ---- reconnect ----

/// Connect, open the echo channel and echo; then INITIATE_CONTACT again
/// without UNLOAD (what Linux does after a reboot or kexec). The root must
/// accept it, close the channel and forget the GPADLs. The test checks the
/// channel is back to offered, then offers a second device (`offer 4`) to
/// let us go on: the old GPADL handle is free again, channel 1 opens on it
/// and echoes. The channel stays open.
fn reconnect(name: &str) -> Result<String, String> {
    let mut bus = Bus::new(None);
    let first = bus.connect()?;
    let handle = guest::open_fresh(&mut bus)?;
    let before = guest::echo_through(name, 1, 0x2001, 5, 2, 2).unwrap_or(0);
    // INITIATE_CONTACT on a connected bus, no UNLOAD.
    let again = bus.connect()?;
    let offered = bus.client.offers().contains_key(&1);
    say!(
        "testos {name}: reconnect: second INITIATE_CONTACT accepted at version {}.{}, relid 1 offered again: \
         {offered}; waiting for an offer",
        again.0 >> 16,
        again.0 & 0xFFFF
    );
    let relid = match guest::await_host(&mut bus, "OFFERCHANNEL", 20, |e| {
        matches!(e, ClientEvent::Offer(_))
    })? {
        ClientEvent::Offer(o) => o.child_relid,
        _ => return Err("not an offer".into()),
    };
    // The old handle: the reconnect dropped the GPADL, so it is free.
    guest::clear_ring(4);
    for m in vmbus::gpadl::encode(1, handle, &guest::ring_pfns(4)) {
        bus.client.post_raw(vmbus::protocol::MESSAGE_CONNECTION_ID, &m);
    }
    let status = match bus.until("GPADL_CREATED", |e| matches!(e, ClientEvent::GpadlCreated { .. }))? {
        ClientEvent::GpadlCreated { handle: h, status } if h == handle => status,
        other => return Err(format!("{other:?}")),
    };
    if status != 0 {
        return Err(format!(
            "the old handle {handle:#x} was not free: status {status:#x}"
        ));
    }
    let open = bus.open(1, handle, 2)?;
    if open != 0 {
        return Err(format!("reopening relid 1: status {open:#x}"));
    }
    let after = guest::echo_through(name, 1, 0x2001, 10, 2, 2).unwrap_or(0);
    Ok(format!(
        "first at version {}.{}, {before} of 5 echoes; reconnected at version {}.{} without UNLOAD; \
         new offer on relid {relid}; relid 1 reopened on gpadl {handle:#x} (reused), {after} of 10 echoes",
        first.0 >> 16,
        first.0 & 0xFFFF,
        again.0 >> 16,
        again.0 & 0xFFFF
    ))
}

// ---- edges ----

/// Edge inputs around an open channel, each with the status (or refusal) the
/// TLFS or the VMBus protocol gives it, and the channel still echoing after
/// all of them: HvSignalEvent with a flag past its port's count and with
/// reserved bits, HvPostMessage with a too-large payload size, RELID_RELEASED
/// for a channel that was never rescinded, and a flood of MODIFYCHANNELs
/// whose answers the child does not read.
fn edges(name: &str) -> Result<String, String> {
    let mut bus = Bus::new(None);
    bus.connect()?;
    let handle = guest::open_fresh(&mut bus)?;
    let mut report = String::new();
    // The channel's connection (0x2001) reaches a one-flag root port.
    let past_count = guest::hypercall(signal_control(), 0x2001 | (1 << 32), 0).status;
    let reserved = guest::hypercall(signal_control(), 0x2001 | (1 << 48), 0).status;
    let good = guest::hypercall(signal_control(), 0x2001, 0).status;
    let _ = write!(
        report,
        "signal flag 1 of 1: {past_count:?}; signal reserved bits: {reserved:?}; signal flag 0: {good:?}; "
    );
    if past_count != HvStatus::INVALID_PARAMETER
        || reserved != HvStatus::INVALID_PARAMETER
        || good != HvStatus::SUCCESS
    {
        return Err(report);
    }
    let oversized = guest::post_raw(
        guest::MESSAGE_CONNECTION_ID,
        guest::ECHO_MESSAGE_TYPE,
        241,
        &[0; 240],
    )
    .status;
    let _ = write!(report, "post of 241 bytes: {oversized:?}; ");
    if oversized != HvStatus::INVALID_PARAMETER {
        return Err(report);
    }
    // RELID_RELEASED without a RESCIND: a protocol violation the server
    // counts; the channel stays open.
    let released = vmbus::protocol::RelidReleased {
        header: vmbus::protocol::Header::new(vmbus::protocol::RelidReleased::TYPE),
        child_relid: 1,
    };
    {
        use zerocopy::IntoBytes;
        bus.client.post_raw(4, released.as_bytes());
    }
    bus.flush()?;
    // MODIFYCHANNEL flood: 1000 requests, answers not read until the end.
    let mut posted = 0u32;
    let mut refused = 0u32;
    for _ in 0..1000 {
        let m = vmbus::protocol::ModifyChannel {
            header: vmbus::protocol::Header::new(vmbus::protocol::ModifyChannel::TYPE),
            child_relid: 1,
            target_vp: 0,
        };
        let bytes = {
            use zerocopy::IntoBytes;
            m.as_bytes().to_vec()
        };
        match guest::post_raw(4, vmbus::protocol::VMBUS_MESSAGE_TYPE, bytes.len() as u32, &bytes).status {
            HvStatus::SUCCESS => posted += 1,
            _ => refused += 1,
        }
    }
    // Drain whatever answers arrived (the root holds at most its outbox).
    let mut answers = 0u32;
    let mut buf = [0u8; 240];
    let mut quiet = 0u64;
    while quiet < guest::REPLY_SPINS / 100 {
        match guest::take_message(&mut buf) {
            Some(_) => {
                answers += 1;
                quiet = 0;
            }
            None => {
                quiet += 1;
                core::hint::spin_loop();
            }
        }
    }
    let _ = write!(
        report,
        "modifychannel flood: {posted} posted, {refused} refused by hv-core, {answers} answers read; "
    );
    let echoes = guest::echo_through(name, 1, 0x2001, 10, 2, 2).unwrap_or(0);
    let _ = write!(report, "after all of it {echoes} of 10 echoes");
    if echoes != 10 {
        return Err(report);
    }
    guest::close_and_teardown(&mut bus, handle)?;
    bus.unload()?;
    Ok(report)
}

// ---- alias ----

/// Two channels on the same ring pages: GPADLs for relid 1 and relid 2 over
/// one set of pages, both opened, so two echo devices in the root read and
/// write the same rings. Whatever the rings come to, only this child's own
/// memory is involved: the root must stay up and serve, at worst stopping
/// the channels whose indices it finds broken.
fn alias(name: &str) -> Result<String, String> {
    let mut bus = Bus::new(None);
    bus.connect()?;
    guest::clear_ring(4);
    let pages = guest::ring_pfns(4);
    let (a, status_a) = bus.gpadl(1, &pages)?;
    if status_a != 0 || bus.open(1, a, 2)? != 0 {
        return Err(format!("relid 1 did not open: gpadl status {status_a:#x}"));
    }
    say!("testos {name}: alias: relid 1 open; waiting for a second offer");
    let relid = match guest::await_host(&mut bus, "OFFERCHANNEL", 20, |e| {
        matches!(e, ClientEvent::Offer(_))
    })? {
        ClientEvent::Offer(o) => o.child_relid,
        _ => return Err("not an offer".into()),
    };
    let (b, status_b) = bus.gpadl(relid, &pages)?;
    let open_b = if status_b == 0 {
        bus.open(relid, b, 2)?
    } else {
        u32::MAX
    };
    // Traffic on both channels over the shared pages.
    let echoes = guest::echo_through(name, 1, 0x2001, 20, 2, 2).unwrap_or(0);
    let second = guest::hypercall(signal_control(), u64::from(0x2000 | relid), 0).status;
    Ok(format!(
        "second gpadl over the same pages: status {status_b:#x}; relid {relid} open status {open_b:#x}; \
         {echoes} of 20 echoes on relid 1; signal on relid {relid}: {second:?}"
    ))
}

// ---- ring-flood ----

/// Guest-to-host ring pages of `ring-flood` (control page included): all of
/// RING but the host-to-guest ring's two.
const FLOOD_UP_PAGES: u64 = guest::RING_PAGES as u64 - FLOOD_DOWN_PAGES;
const FLOOD_DOWN_PAGES: u64 = 2;
/// Every this many packets one is in-band (echoed); the rest are
/// completions the root reads and skips.
const FLOOD_INBAND_EVERY: u64 = 8;
/// Safety net: the flood ends after this many rounds if nobody rescinds.
const FLOOD_MAX_ROUNDS: u64 = 10_000_000;

/// Open the echo channel on the largest ring RING holds (14 pages up, 2
/// down), then keep the guest-to-host ring full of tiny packets (mostly
/// COMPLETIONs the root reads and skips, every eighth in-band and echoed),
/// signalling the root every round whether or not the ring was empty, and
/// draining the echoes. Until the operator rescinds the channel
/// (`rescind 4 1`): then close and release it.
fn ring_flood(name: &str) -> Result<String, String> {
    use vmbus::packet::{Descriptor, PacketType};
    use vmbus::ring::{Reader, Ring, RingError, Writer};
    use zerocopy::IntoBytes;
    let mut bus = Bus::new(None);
    bus.connect()?;
    let pages = FLOOD_UP_PAGES + FLOOD_DOWN_PAGES;
    guest::clear_ring(pages);
    let (handle, status) = bus.gpadl(1, &guest::ring_pfns(pages))?;
    if status != 0 {
        return Err(format!("GPADL status {status:#x}"));
    }
    let open = bus.open(1, handle, FLOOD_UP_PAGES as u32)?;
    if open != 0 {
        return Err(format!("OPENCHANNEL_RESULT {open:#x}"));
    }
    let connection = bus.client.offers().get(&1).map_or(0x2001, |o| o.connection_id);
    let base = core::ptr::addr_of!(guest::RING) as u64;
    let (Ok(up), Ok(down)) = (
        Ring::new(guest::StaticMemory {
            base,
            len: FLOOD_UP_PAGES * 4096,
        }),
        Ring::new(guest::StaticMemory {
            base: base + FLOOD_UP_PAGES * 4096,
            len: FLOOD_DOWN_PAGES * 4096,
        }),
    ) else {
        return Err("ring geometry".into());
    };
    let data_size = up.data_size();
    let (mut writer, mut reader) = (Writer::new(up), Reader::new(down));
    let signal = signal_control();
    say!(
        "testos {name}: ring-flood: {data_size} byte guest-to-host ring ({FLOOD_UP_PAGES}+{FLOOD_DOWN_PAGES} pages); \
         flooding relid 1"
    );
    let (mut sent, mut inband, mut echoes, mut signals, mut refused_signals) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut rescinded = false;
    let mut rounds = 0u64;
    let mut msg = [0u8; 240];
    let mut buf = [0u8; 512];
    while rounds < FLOOD_MAX_ROUNDS {
        rounds += 1;
        // Fill the ring.
        loop {
            let seq = sent;
            let r = if seq.is_multiple_of(FLOOD_INBAND_EVERY) {
                let d = Descriptor::new(PacketType::DATA_INBAND, 16, 8, 0, seq);
                writer.write(&[d.as_bytes(), &seq.to_le_bytes()])
            } else {
                let d = Descriptor::new(PacketType::COMPLETION, 16, 0, 0, seq);
                writer.write(&[d.as_bytes()])
            };
            match r {
                Ok(_) => {
                    sent += 1;
                    if seq.is_multiple_of(FLOOD_INBAND_EVERY) {
                        inband += 1;
                    }
                }
                Err(RingError::Full { .. }) => break,
                Err(e) => return Err(format!("write: {e:?}")),
            }
        }
        // Signal whether or not the ring was empty.
        if guest::hypercall(signal, connection as u64, 0).status == HvStatus::SUCCESS {
            signals += 1;
        } else {
            refused_signals += 1;
        }
        // Take the echoes.
        loop {
            match reader.read(&mut buf) {
                Ok(Some(_)) => echoes += 1,
                Ok(None) => break,
                Err(e) => return Err(format!("read: {e:?}")),
            }
        }
        // The operator ends the flood by rescinding the channel.
        if let Some((t, n)) = guest::take_message(&mut msg)
            && t == vmbus::protocol::VMBUS_MESSAGE_TYPE
        {
            let events = bus
                .client
                .handle(&msg[..n])
                .map_err(|e| format!("host message: {e:?}"))?;
            if events.contains(&ClientEvent::Rescinded(1)) {
                rescinded = true;
                break;
            }
        }
    }
    // The client queued CLOSECHANNEL and RELID_RELEASED for the rescind.
    bus.flush()?;
    let mut text = String::new();
    let _ = write!(
        text,
        "{rounds} rounds, {sent} packets written ({inband} in-band), {echoes} echoes read, \
         {signals} signals ({refused_signals} refused), "
    );
    text.push_str(if rescinded {
        "stopped by the rescind"
    } else {
        "stopped at the round limit (no rescind)"
    });
    Ok(text)
}

// ---- crash ----

/// Connect, open the echo channel, echo, then triple-fault with it open: the
/// root must tear the channel down; after `start` the same image connects
/// and opens again.
fn crash(name: &str) -> Result<String, String> {
    let mut bus = Bus::new(None);
    let v = bus.connect()?;
    guest::open_fresh(&mut bus)?;
    let back = guest::echo_through(name, 1, 0x2001, 20, 2, 2).unwrap_or(0);
    say!(
        "testos {name}: crash done: connected at version {}.{}, {back} of 20 echoes; faulting with channel 1 open \
         -- end of crash",
        v.0 >> 16,
        v.0 & 0xFFFF
    );
    guest::triple_fault(name)
}
