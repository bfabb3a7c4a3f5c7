//! Entry points shared by the cargo-fuzz targets (`vsp/ic/fuzz/`) and the
//! corpus-replay test: each takes arbitrary bytes and must never panic.
//! Also [`Wire`], the guest's end of a channel over rings in
//! [`AtomicMemory`], which the tests and the conformance catalogue use.

use crate::device::{IcDevice, Service, Shared};
use crate::{Heartbeat, Kvp, Shutdown, Timesync};
use alloc::boxed::Box;
use alloc::vec::Vec;
use ic_protocol::{HeaderFlags, Message, MessageType, Negotiate, Status};
use vmbus::memory::AtomicMemory;
use vmbus::packet::{Descriptor, PacketType};
use vmbus::ring::{CONTROL_SIZE, FEAT_PENDING_SEND_SZ, Reader, Ring, Writer};
use vsp::{Channel, Device, GuestSignal};
use zerocopy::IntoBytes;

/// A guest signal that goes nowhere.
pub struct Quiet;

impl GuestSignal for Quiet {
    fn signal(&mut self) -> bool {
        true
    }
}

/// The guest's end of a channel: the guest-to-host ring (`up`) it writes
/// and the host-to-guest ring (`down`) it reads.
pub struct Wire<'a> {
    /// Guest-to-host ring (control page + data).
    pub up: &'a AtomicMemory,
    /// Host-to-guest ring (control page + data).
    pub down: &'a AtomicMemory,
}

impl<'a> Wire<'a> {
    /// Two rings of `data_bytes` each, reset with pending-send-size
    /// support.
    pub fn memory(data_bytes: u64) -> (AtomicMemory, AtomicMemory) {
        let up = AtomicMemory::new(CONTROL_SIZE + data_bytes);
        let down = AtomicMemory::new(CONTROL_SIZE + data_bytes);
        if let Ok(r) = Ring::new(&up) {
            let _ = r.reset(FEAT_PENDING_SEND_SZ);
        }
        if let Ok(r) = Ring::new(&down) {
            let _ = r.reset(FEAT_PENDING_SEND_SZ);
        }
        (up, down)
    }

    /// The host's channel over these rings (`None` if they are unusable).
    pub fn channel(&self) -> Option<Channel<&'a AtomicMemory>> {
        Channel::new(self.up, self.down, Box::new(Quiet)).ok()
    }

    /// Write a packet of `kind` carrying `payload` as the guest; false if
    /// the ring had no room or is broken.
    pub fn send_kind(&self, kind: PacketType, id: u64, payload: &[u8]) -> bool {
        let d = Descriptor::new(kind, 16, payload.len(), 0, id);
        let Ok(ring) = Ring::new(self.up) else {
            return false;
        };
        Writer::new(ring).write(&[d.as_bytes(), payload]).is_ok()
    }

    /// Write an in-band packet as the guest.
    pub fn send(&self, id: u64, payload: &[u8]) -> bool {
        self.send_kind(PacketType::DATA_INBAND, id, payload)
    }

    /// The next packet from the host: (transaction id, payload).
    pub fn receive(&self) -> Option<(u64, Vec<u8>)> {
        let mut buf = alloc::vec![0u8; 8192];
        let ring = Ring::new(self.down).ok()?;
        let (p, _) = Reader::new(ring).read(&mut buf).ok()??;
        let r = p.descriptor.payload();
        let payload = buf.get(r.start..r.end.min(p.len))?.to_vec();
        Some((p.descriptor.transaction_id, payload))
    }
}

/// A minimal well-behaved guest answer to `request` (what Linux would
/// send), for driving a provider into its deeper states: the negotiation
/// picks the host's first versions; a heartbeat adds one; anything else is
/// echoed with status OK (an enumeration ends at once).
pub fn well_behaved_answer(request: &[u8]) -> Option<Vec<u8>> {
    let m = Message::parse(request).ok()?;
    match m.header.message_type() {
        MessageType::NEGOTIATE => {
            let n = Negotiate::parse(m.rest).ok()?;
            let chosen = Some((*n.framework.first()?, *n.message.first()?));
            ic_protocol::build_negotiate_response(request, chosen).ok()
        }
        MessageType::HEARTBEAT => {
            let seq = ic_protocol::parse_heartbeat(m.rest).ok()?;
            ic_protocol::build_response(request, Status::OK, |out| {
                if let Some(s) = out.get_mut(28..36) {
                    s.copy_from_slice(&seq.wrapping_add(1).to_le_bytes());
                }
            })
            .ok()
        }
        MessageType::KVP_EXCHANGE => {
            let (op, _) = ic_protocol::parse_kvp_header(m.rest).ok()?;
            let status = if op == ic_protocol::KvpOperation::ENUMERATE {
                Status::S_CONT
            } else {
                Status::OK
            };
            ic_protocol::build_response(request, status, |_| {}).ok()
        }
        _ => ic_protocol::build_response(request, Status::OK, |_| {}).ok(),
    }
}

/// Parse `data` as every kind of IC message, both ways.
pub fn parse_any(data: &[u8]) {
    if let Ok(m) = Message::parse(data) {
        let _ = m.body();
        let _ = m.header.header_flags().contains(HeaderFlags::GUEST_RESPONSE);
    }
    let _ = Negotiate::parse(data);
    let _ = ic_protocol::parse_negotiate_response(data);
    let _ = ic_protocol::parse_heartbeat(data);
    let _ = ic_protocol::parse_shutdown(data);
    for v in ic_protocol::TIMESYNC_VERSIONS {
        let _ = ic_protocol::parse_timesync(*v, data);
    }
    let _ = ic_protocol::parse_kvp_request(data);
    let _ = ic_protocol::parse_kvp_answer(data);
    let size = data.first().copied().map(u32::from).unwrap_or(0);
    let _ = ic_protocol::decode_utf16(data, size, "fuzz");
    let _ = well_behaved_answer(data);
    let _ = ic_protocol::build_negotiate_response(data, None);
}

fn drive<S: Service>(service: S, data: &[u8]) {
    let (up, down) = Wire::memory(16384);
    let wire = Wire { up: &up, down: &down };
    let Some(channel) = wire.channel() else { return };
    let shared = Shared::new(service);
    let mut dev = IcDevice::<&AtomicMemory, S>::new(shared);
    if dev.open(channel).is_err() {
        return;
    }
    let mut now = 0u64;
    let mut last: Option<(u64, Vec<u8>)> = None;
    // Each step: [mode, a, b, len, payload...].
    let mut rest = data;
    let mut steps = 0;
    while rest.len() >= 4 && steps < 64 {
        steps += 1;
        let (mode, a, b, len) = (rest[0], rest[1], rest[2], usize::from(rest[3]) * 16);
        let take = len.min(rest.len() - 4);
        let payload = &rest[4..4 + take];
        rest = &rest[4 + take..];
        now = now.saturating_add(u64::from(a) * 50_000_000);
        let _ = dev.tick(now);
        while let Some(p) = wire.receive() {
            last = Some(p);
        }
        let id = last.as_ref().map(|l| l.0).unwrap_or(0);
        match mode % 6 {
            // A raw payload under the outstanding id.
            0 => {
                let _ = wire.send(id, payload);
            }
            // A well-behaved answer with one byte flipped (b == 0: none).
            1 | 2 => {
                if let Some(mut answer) = last.as_ref().and_then(|l| well_behaved_answer(&l.1)) {
                    if b != 0 {
                        let at = usize::from(a) % answer.len().max(1);
                        if let Some(x) = answer.get_mut(at) {
                            *x ^= b;
                        }
                    }
                    let _ = wire.send(id, &answer);
                }
            }
            // A duplicate or stale id.
            3 => {
                let _ = wire.send(id.wrapping_sub(u64::from(b)), payload);
            }
            // Another packet type.
            4 => {
                let _ = wire.send_kind(PacketType::COMPLETION, id, payload);
            }
            // Close and reopen, or reset.
            _ => {
                if b & 1 == 0 {
                    dev.close();
                } else {
                    dev.reset();
                }
                if let Some(c) = wire.channel() {
                    let _ = dev.open(c);
                }
            }
        }
        let _ = dev.poll(u32::from(b % 8) + 1);
        let mut sink = NullSink;
        dev.inspect(&mut sink);
    }
}

/// Feed a provider (chosen by the first byte; KVP, shutdown and time sync
/// get requests queued) a hostile sequence of guest packets.
pub fn provider(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => drive(Heartbeat::new(100_000_000), rest),
        1 => {
            let mut s = Shutdown::new();
            s.request(which & 4 != 0, "fuzz");
            drive(s, rest);
        }
        2 => {
            let mut t = Timesync::new();
            t.push(ic_protocol::TimeSample {
                host_time: ic_protocol::WLTIMEDELTA,
                reference_time: Some(1),
                flags: ic_protocol::TimesyncFlags::SYNC,
            });
            drive(t, rest);
        }
        _ => {
            let mut k = Kvp::new();
            k.enqueue(ic_protocol::KvpPool::AUTO, crate::KvpOp::Enumerate);
            k.enqueue(
                ic_protocol::KvpPool::EXTERNAL,
                crate::KvpOp::Set("k".into(), "v".into()),
            );
            k.enqueue(ic_protocol::KvpPool::EXTERNAL, crate::KvpOp::Get("k".into()));
            k.enqueue(ic_protocol::KvpPool::EXTERNAL, crate::KvpOp::Delete("k".into()));
            drive(k, rest);
        }
    }
}

struct NullSink;

impl vsp::InspectSink for NullSink {
    fn counter(&mut self, _: &'static str, _: &'static str, _: u64) {}
    fn text(&mut self, _: &'static str, _: &'static str, _: &str) {}
    fn ring(&mut self, _: &'static str, _: &'static str, _: Option<vmbus::ring::RingState>) {}
}

#[cfg(test)]
mod tests {
    /// Every file of the fuzz corpus runs through the targets as a normal test.
    #[test]
    fn corpus_replays() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join("corpus");
        let mut count = 0;
        for (target, f) in [
            ("fuzz_ic_parse", super::parse_any as fn(&[u8])),
            ("fuzz_ic_provider", super::provider),
        ] {
            let dir = root.join(target);
            let mut here = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                f(&bytes);
                here += 1;
            }
            assert!(here >= 10, "{target}: corpus too small: {here}");
            count += here;
        }
        assert!(count >= 20);
    }

    /// Pseudo-random inputs, so plain `cargo test` fuzzes a little too.
    #[test]
    fn random_inputs_do_not_panic() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            let len = (x % 600) as usize;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(x as u8);
            }
            super::parse_any(&v);
            super::provider(&v);
        }
    }
}
