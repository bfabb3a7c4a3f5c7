//! The echo device (the simplest VMBus device, to prove the data path):
//! every in-band packet the guest writes into the channel's guest-to-host
//! ring comes back on the host-to-guest ring with the same transaction id and
//! payload. Other packet types are skipped (they still count against the
//! poll budget). Flow control, signalling and broken-ring handling are the
//! channel's ([`vsp::Channel`]).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use vmbus::memory::SharedMemory;
use vmbus::packet::PacketType;
use vsp::{Channel, Device, IncomingPacket, InspectSink, OfferParams, OpenError, PollResult};

/// Interface type of the echo device (a GUID of our own, wire byte order).
pub const INTERFACE: [u8; 16] = *b"hv-rs echo dev\x00\x01";

/// The echo device: idle until the guest opens it.
pub struct Echo<M: SharedMemory> {
    channel: Option<Channel<M>>,
}

impl<M: SharedMemory> Echo<M> {
    /// A closed echo device.
    pub fn new() -> Self {
        Self { channel: None }
    }
}

impl<M: SharedMemory> Default for Echo<M> {
    fn default() -> Self {
        Self::new()
    }
}

/// The echo of one packet: in-band packets only.
fn echo(p: &IncomingPacket<'_>) -> Option<Vec<u8>> {
    (p.kind == PacketType::DATA_INBAND).then(|| vsp::inband_packet(p.transaction_id, p.payload))
}

impl<M: SharedMemory> Device<M> for Echo<M> {
    fn offer(&self) -> OfferParams {
        OfferParams::new(INTERFACE)
    }

    fn open(&mut self, channel: Channel<M>) -> Result<(), OpenError> {
        if self.channel.is_some() {
            return Err(OpenError::AlreadyOpen);
        }
        self.channel = Some(channel);
        Ok(())
    }

    fn poll(&mut self, budget: u32) -> PollResult {
        match &mut self.channel {
            Some(c) => c.poll(budget, &mut echo),
            None => PollResult::default(),
        }
    }

    fn close(&mut self) {
        self.channel = None;
    }

    fn reset(&mut self) {
        self.channel = None;
    }

    fn inspect(&self, out: &mut dyn InspectSink) {
        if let Some(c) = &self.channel {
            c.inspect(out, "packets echoed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use vmbus::memory::AtomicMemory;
    use vmbus::packet::Descriptor;
    use vmbus::ring::{CONTROL_SIZE, FEAT_PENDING_SEND_SZ, Reader, Ring, RingState, Writer};
    use vsp::GuestSignal;

    struct Quiet;

    impl GuestSignal for Quiet {
        fn signal(&mut self) -> bool {
            true
        }
    }

    fn rings() -> (&'static AtomicMemory, &'static AtomicMemory) {
        let up: &'static AtomicMemory = Box::leak(Box::new(AtomicMemory::new(CONTROL_SIZE + 8192)));
        let down: &'static AtomicMemory = Box::leak(Box::new(AtomicMemory::new(CONTROL_SIZE + 8192)));
        Ring::new(up).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
        Ring::new(down).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
        (up, down)
    }

    fn send(up: &AtomicMemory, kind: PacketType, id: u64, payload: &[u8]) {
        let d = Descriptor::new(kind, 16, payload.len(), 0, id);
        let _ = Writer::new(Ring::new(up).unwrap())
            .write(&[zerocopy::IntoBytes::as_bytes(&d), payload])
            .unwrap();
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
        fn ring(&mut self, name: &'static str, _: &'static str, state: Option<RingState>) {
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
    fn in_band_packets_come_back_others_are_skipped() {
        let (up, down) = rings();
        let mut dev: Box<dyn Device<&AtomicMemory>> = Box::new(Echo::new());
        assert_eq!(dev.offer().interface_type, INTERFACE);
        dev.open(Channel::new(up, down, Box::new(Quiet)).unwrap())
            .unwrap();
        send(up, PacketType::DATA_INBAND, 0x1234, b"hello, w");
        send(up, PacketType::COMPLETION, 5, b"ignored");
        send(up, PacketType::DATA_INBAND, 0x5678, b"");
        let r = dev.poll(vsp::POLL_BUDGET);
        assert!(r.signalled && !r.more && r.broke.is_none());
        let mut reader = Reader::new(Ring::new(down).unwrap());
        let mut buf = [0u8; 256];
        let (p, _) = reader.read(&mut buf).unwrap().unwrap();
        assert_eq!(p.kind, PacketType::DATA_INBAND);
        assert_eq!(p.descriptor.transaction_id, 0x1234);
        assert_eq!(&buf[p.descriptor.payload()], b"hello, w");
        let (p, _) = reader.read(&mut buf).unwrap().unwrap();
        assert_eq!(p.descriptor.transaction_id, 0x5678);
        assert!(p.descriptor.payload().is_empty());
        assert!(reader.read(&mut buf).unwrap().is_none());
        let mut f = Fields::default();
        dev.inspect(&mut f);
        assert_eq!(f.get("packets"), Some("2"));
        assert_eq!(f.get("signals_received"), Some("1"));
        assert_eq!(f.get("broken"), Some(""));
        assert!(f.get("guest_to_host").is_some() && f.get("host_to_guest").is_some());
    }

    #[test]
    fn open_twice_is_refused_and_close_forgets_the_channel() {
        let (up, down) = rings();
        let mut dev = Echo::new();
        dev.open(Channel::new(up, down, Box::new(Quiet)).unwrap())
            .unwrap();
        assert_eq!(
            dev.open(Channel::new(up, down, Box::new(Quiet)).unwrap()),
            Err(OpenError::AlreadyOpen)
        );
        dev.close();
        send(up, PacketType::DATA_INBAND, 1, b"x");
        assert_eq!(dev.poll(64), PollResult::default());
        let mut f = Fields::default();
        dev.inspect(&mut f);
        assert!(f.0.is_empty(), "a closed device reports nothing");
        dev.open(Channel::new(up, down, Box::new(Quiet)).unwrap())
            .unwrap();
        dev.reset();
        assert_eq!(dev.poll(64), PollResult::default());
    }
}
