//! Each provider over real rings against the guest side
//! (`vsc_drivers::ic`), and against hostile guests.

use crate::fuzzing::Wire;
use crate::*;
use ic_protocol::{KvpPool, Message, MessageType, Status, Version};
use std::collections::BTreeMap;
use vmbus::memory::AtomicMemory;
use vmbus::packet::PacketType;
use vmbus::ring::RingState;
use vsc_drivers::ic::{Action, IcClient, KvpStore, Service as GuestService};
use vsp::{Device, InspectSink};

const SEC: u64 = 1_000_000_000;

/// The four devices, their wires and guest clients.
struct Rig {
    devices: Vec<Box<dyn Device<&'static AtomicMemory>>>,
    wires: Vec<Wire<'static>>,
    clients: Vec<IcClient>,
    controls: Controls,
    actions: Vec<Action>,
    now: u64,
}

fn leak_wire() -> Wire<'static> {
    let (up, down) = Wire::memory(3 * 4096);
    Wire {
        up: Box::leak(Box::new(up)),
        down: Box::leak(Box::new(down)),
    }
}

impl Rig {
    fn new() -> Self {
        let (mut devices, controls) = IntegrationServices::new::<&'static AtomicMemory>(IcConfig {
            timesync_reference_time: true,
            ..IcConfig::default()
        });
        let mut wires = Vec::new();
        let mut clients = Vec::new();
        for d in devices.iter_mut() {
            let service = GuestService::from_interface(&d.offer().interface_type).unwrap();
            let wire = leak_wire();
            d.open(wire.channel().unwrap()).unwrap();
            wires.push(wire);
            let mut client = IcClient::new(service);
            if service == GuestService::Kvp {
                let mut store = KvpStore::new();
                store.set(KvpPool::AUTO, "OSName", "hv-rs test OS");
                store.set(KvpPool::AUTO, "OSMajorVersion", "1");
                client = IcClient::with_kvp(store);
            }
            clients.push(client);
        }
        Self {
            devices,
            wires,
            clients,
            controls,
            actions: Vec::new(),
            now: 0,
        }
    }

    /// One round: tick and poll every device, the guests answer all.
    fn round(&mut self, advance: u64) {
        self.now += advance;
        for i in 0..4 {
            self.devices[i].tick(self.now);
            while let Some((id, payload)) = self.wires[i].receive() {
                if let Ok(r) = self.clients[i].handle(&payload) {
                    assert!(self.wires[i].send(id, &r.payload));
                    self.actions.push(r.action);
                }
            }
            self.devices[i].poll(vsp::POLL_BUDGET);
        }
    }

    fn settle(&mut self) {
        for _ in 0..8 {
            self.round(1);
        }
    }
}

#[derive(Default)]
struct Fields(BTreeMap<&'static str, String>);

impl InspectSink for Fields {
    fn counter(&mut self, name: &'static str, _: &'static str, value: u64) {
        self.0.insert(name, value.to_string());
    }
    fn text(&mut self, name: &'static str, _: &'static str, value: &str) {
        self.0.insert(name, value.to_string());
    }
    fn ring(&mut self, name: &'static str, _: &'static str, state: Option<RingState>) {
        self.0
            .insert(name, format!("{:?}", state.map(|s| s.bytes_pending)));
    }
}

#[test]
fn every_service_negotiates_its_highest_versions() {
    let mut rig = Rig::new();
    rig.settle();
    let c = &rig.controls;
    let fw = Version::new(3, 0);
    assert_eq!(c.shutdown().service.phase, Phase::Ready(fw, Version::new(3, 2)));
    assert_eq!(c.timesync().service.phase, Phase::Ready(fw, Version::new(4, 0)));
    assert_eq!(c.heartbeat().service.phase, Phase::Ready(fw, Version::new(3, 0)));
    assert_eq!(c.kvp().service.phase, Phase::Ready(fw, Version::new(4, 0)));
    for d in &rig.devices {
        let mut f = Fields::default();
        d.inspect(&mut f);
        assert!(f.0["ic_state"].starts_with("framework 3.0"), "{:?}", f.0);
        assert_eq!(f.0["violations"], "0");
    }
}

#[test]
fn heartbeats_are_acked_and_missed_ones_counted() {
    let mut rig = Rig::new();
    rig.settle();
    for _ in 0..3 {
        rig.round(2 * SEC);
    }
    let hb = rig.controls.heartbeat();
    assert!(hb.state.acked >= 3, "{hb:?}");
    assert_eq!(hb.state.missed, 0);
    assert_eq!(hb.state.last_acked, Some(hb.state.sent));
    // The guest stops answering: the next interval counts a miss.
    rig.devices[2].tick(rig.now + 2 * SEC);
    rig.devices[2].tick(rig.now + 4 * SEC);
    let hb = rig.controls.heartbeat();
    assert!(hb.state.missed >= 1, "{hb:?}");
    assert_eq!(hb.service.timeouts, hb.state.missed);
}

#[test]
fn shutdown_is_acknowledged_and_the_guest_powers_off() {
    let mut rig = Rig::new();
    rig.settle();
    rig.controls.request_shutdown(false, "maintenance").unwrap();
    assert_eq!(
        rig.controls.shutdown().state,
        ShutdownState::Queued { reboot: false }
    );
    rig.settle();
    assert_eq!(
        rig.controls.shutdown().state,
        ShutdownState::Acknowledged { reboot: false }
    );
    assert!(rig.actions.contains(&Action::PowerOff));
    rig.controls.request_shutdown(true, "restart").unwrap();
    rig.settle();
    assert_eq!(
        rig.controls.shutdown().state,
        ShutdownState::Acknowledged { reboot: true }
    );
    assert!(rig.actions.contains(&Action::Reboot));
}

#[test]
fn time_is_pushed_and_acked() {
    let mut rig = Rig::new();
    let t = ic_protocol::WLTIMEDELTA + 17_000_000_000;
    // Pushed before negotiation: goes out once ready.
    rig.controls.push_time(t, Some(42), true);
    rig.settle();
    let ts = rig.controls.timesync();
    assert_eq!((ts.state.last_pushed, ts.state.last_acked), (Some(t), Some(t)));
    assert!(rig.actions.contains(&Action::SetTime {
        host_time: t,
        reference_time: Some(42),
        sync: true
    }));
}

#[test]
fn kvp_enumerate_get_set_delete() {
    let mut rig = Rig::new();
    rig.settle();
    let c = rig.controls.clone();
    let e = c.kvp_enumerate(KvpPool::AUTO).unwrap();
    let s = c
        .kvp_set(KvpPool::EXTERNAL, "VirtualMachineName", "child-1")
        .unwrap();
    let g = c.kvp_get(KvpPool::EXTERNAL, "VirtualMachineName").unwrap();
    let missing = c.kvp_get(KvpPool::EXTERNAL, "nope").unwrap();
    let d = c.kvp_delete(KvpPool::EXTERNAL, "VirtualMachineName").unwrap();
    for _ in 0..20 {
        rig.round(1);
    }
    assert_eq!(c.kvp_result(e).unwrap().outcome, KvpOutcome::Enumerated(2));
    assert_eq!(c.kvp_result(s).unwrap().outcome, KvpOutcome::Done);
    assert_eq!(
        c.kvp_result(g).unwrap().outcome,
        KvpOutcome::Value("child-1".into())
    );
    assert_eq!(
        c.kvp_result(missing).unwrap().outcome,
        KvpOutcome::Failed(Status::S_CONT)
    );
    assert_eq!(c.kvp_result(d).unwrap().outcome, KvpOutcome::Done);
    let k = c.kvp();
    assert_eq!(
        k.pools[2].1,
        vec![
            ("OSName".to_string(), "hv-rs test OS".to_string()),
            ("OSMajorVersion".to_string(), "1".to_string())
        ]
    );
    assert!(k.pools[0].1.is_empty());
    assert_eq!(
        rig.clients[3].kvp.get(KvpPool::EXTERNAL, "VirtualMachineName"),
        None
    );
    assert_eq!(c.kvp_get(KvpPool(9), "x"), Err(ControlError::UnknownPool(9)));
    assert_eq!(
        c.kvp_set(KvpPool::GUEST, &"k".repeat(256), "v"),
        Err(ControlError::TooLong("key"))
    );
    for _ in 0..MAX_QUEUED {
        c.kvp_enumerate(KvpPool::GUEST).unwrap();
    }
    assert_eq!(c.kvp_enumerate(KvpPool::GUEST), Err(ControlError::QueueFull));
}

#[test]
fn enumeration_stops_at_the_pool_bound() {
    let mut rig = Rig::new();
    for i in 0..100 {
        rig.clients[3].kvp.set(KvpPool::GUEST, &format!("k{i}"), "v");
    }
    rig.settle();
    let id = rig.controls.kvp_enumerate(KvpPool::GUEST).unwrap();
    for _ in 0..100 {
        rig.round(1);
    }
    assert_eq!(
        rig.controls.kvp_result(id).unwrap().outcome,
        KvpOutcome::Enumerated(vsc_drivers::ic::KVP_MAX_ENTRIES.min(MAX_ENTRIES_PER_POOL))
    );
}

/// A device and its wire, negotiated through a real guest client.
fn negotiated_alone(
    service: GuestService,
) -> (Box<dyn Device<&'static AtomicMemory>>, Wire<'static>, Controls) {
    let (devices, controls) = IntegrationServices::new::<&'static AtomicMemory>(IcConfig {
        timesync_reference_time: true,
        ..IcConfig::default()
    });
    let mut dev = devices
        .into_iter()
        .find(|d| d.offer().interface_type == service.interface())
        .unwrap();
    let wire = leak_wire();
    dev.open(wire.channel().unwrap()).unwrap();
    dev.tick(1);
    let (id, p) = wire.receive().unwrap();
    let r = IcClient::new(service).handle(&p).unwrap();
    wire.send(id, &r.payload);
    dev.poll(64);
    (dev, wire, controls)
}

#[test]
fn version_mismatch_leaves_the_service_idle() {
    let (devices, controls) = IntegrationServices::new::<&'static AtomicMemory>(IcConfig {
        timesync_reference_time: true,
        ..IcConfig::default()
    });
    let mut dev = devices.into_iter().nth(2).unwrap(); // heartbeat
    let wire = leak_wire();
    dev.open(wire.channel().unwrap()).unwrap();
    dev.tick(1);
    let (id, p) = wire.receive().unwrap();
    let answer = ic_protocol::build_negotiate_response(&p, None).unwrap();
    wire.send(id, &answer);
    dev.poll(64);
    assert_eq!(controls.heartbeat().service.phase, Phase::NoCommonVersion);
    dev.tick(10 * SEC);
    assert!(wire.receive().is_none(), "nothing is sent without versions");
    // A guest choosing a version that was not offered is a violation.
    let (devices, controls) = IntegrationServices::new::<&'static AtomicMemory>(IcConfig {
        timesync_reference_time: true,
        ..IcConfig::default()
    });
    let mut dev = devices.into_iter().nth(2).unwrap();
    let wire = leak_wire();
    dev.open(wire.channel().unwrap()).unwrap();
    dev.tick(1);
    let (id, p) = wire.receive().unwrap();
    let answer =
        ic_protocol::build_negotiate_response(&p, Some((Version::new(3, 0), Version::new(9, 0)))).unwrap();
    wire.send(id, &answer);
    dev.poll(64);
    let s = controls.heartbeat().service;
    assert_eq!((s.phase, s.violations), (Phase::Failed, 1));
}

/// The newest packet from the host (older ones dropped).
fn newest(wire: &Wire<'_>) -> Option<(u64, Vec<u8>)> {
    let mut last = None;
    while let Some(p) = wire.receive() {
        last = Some(p);
    }
    last
}

#[test]
fn hostile_answers_are_counted_and_the_channel_keeps_working() {
    let (mut dev, wire, controls) = negotiated_alone(GuestService::Heartbeat);
    assert!(controls.heartbeat().service.phase.versions().is_some());
    let mut client = IcClient::new(GuestService::Heartbeat);
    client
        .handle(
            &ic_protocol::build_negotiate(ic_protocol::FRAMEWORK_VERSIONS, ic_protocol::HEARTBEAT_VERSIONS)
                .unwrap(),
        )
        .unwrap();
    let mut now = 2 * SEC;
    // Short, wrong flags, wrong type, wrong sequence: four violations.
    type Mangle = Box<dyn Fn(&[u8]) -> Vec<u8>>;
    let mut bad: Vec<Mangle> = Vec::new();
    bad.push(Box::new(|_| vec![1, 2, 3]));
    bad.push(Box::new(|p| p.to_vec())); // the request echoed: flags REQUEST, not RESPONSE
    bad.push(Box::new(|p| {
        let mut v = ic_protocol::build_response(p, Status::OK, |_| {}).unwrap();
        v[12] = MessageType::SHUTDOWN.0 as u8;
        v
    }));
    bad.push(Box::new(|p| {
        ic_protocol::build_response(p, Status::OK, |_| {}).unwrap()
    })); // seq not +1
    for make in &bad {
        now += 2 * SEC;
        dev.tick(now);
        let (id, p) = newest(&wire).unwrap();
        wire.send(id, &make(&p));
        dev.poll(64);
    }
    let s = controls.heartbeat().service;
    assert_eq!(s.violations, 4, "{s:?}");
    // Unsolicited: a duplicate of an answered id, an invented id; a
    // completion packet is ignored.
    now += 2 * SEC;
    dev.tick(now);
    let (id, p) = newest(&wire).unwrap();
    let good = client.handle(&p).unwrap().payload;
    wire.send(id, &good);
    wire.send(id, &good);
    wire.send(id + 1000, &good);
    wire.send_kind(PacketType::COMPLETION, id, &good);
    dev.poll(64);
    let s = controls.heartbeat();
    assert_eq!((s.service.unsolicited, s.service.ignored), (2, 1), "{s:?}");
    assert_eq!(s.state.acked, 1);
    // Still working.
    now += 2 * SEC;
    dev.tick(now);
    let (id, p) = newest(&wire).unwrap();
    wire.send(id, &client.handle(&p).unwrap().payload);
    dev.poll(64);
    assert_eq!(controls.heartbeat().state.acked, 2);
}

#[test]
fn an_oversize_answer_stops_only_that_channel() {
    let (mut dev, wire, controls) = negotiated_alone(GuestService::Shutdown);
    controls.request_shutdown(false, "x").unwrap();
    dev.tick(2);
    let (id, _) = wire.receive().unwrap();
    // Bigger than the host's 4 KiB receive buffer.
    wire.send(id, &vec![0u8; 6000]);
    let r = dev.poll(64);
    assert!(r.broke.is_some());
    assert_eq!(controls.shutdown().state, ShutdownState::Sent { reboot: false });
    dev.tick(20 * SEC);
    assert_eq!(controls.shutdown().state, ShutdownState::TimedOut);
    let mut f = Fields::default();
    dev.inspect(&mut f);
    assert_ne!(f.0["broken"], "");
}

#[test]
fn packets_to_the_guest_stay_within_4k() {
    let mut rig = Rig::new();
    rig.controls.request_shutdown(false, &"x".repeat(5000)).unwrap();
    rig.controls
        .kvp_set(KvpPool::EXTERNAL, &"k".repeat(255), &"v".repeat(1023))
        .unwrap();
    rig.now += 1;
    for i in 0..4 {
        rig.devices[i].tick(rig.now);
    }
    for _ in 0..6 {
        rig.now += 1;
        for i in 0..4 {
            rig.devices[i].tick(rig.now);
            while let Some((id, p)) = rig.wires[i].receive() {
                assert!(p.len() + 16 <= ic_protocol::MAX_HOST_PACKET, "{} bytes", p.len());
                let m = Message::parse(&p).unwrap();
                assert!(m.body().is_ok());
                if let Ok(r) = rig.clients[i].handle(&p) {
                    rig.wires[i].send(id, &r.payload);
                }
            }
            rig.devices[i].poll(64);
        }
    }
    assert_eq!(
        rig.controls.shutdown().state,
        ShutdownState::Acknowledged { reboot: false }
    );
}

#[test]
fn reset_and_reopen_negotiate_again() {
    let mut rig = Rig::new();
    rig.settle();
    rig.controls.kvp_enumerate(KvpPool::AUTO).unwrap();
    rig.devices[3].tick(rig.now + 1); // the request goes out, unanswered
    for d in rig.devices.iter_mut() {
        d.reset();
    }
    assert_eq!(rig.controls.kvp().service.phase, Phase::Closed);
    assert_eq!(
        rig.controls.kvp().results.last().unwrap().outcome,
        KvpOutcome::Cancelled
    );
    let mut f = Fields::default();
    rig.devices[0].inspect(&mut f);
    assert!(f.0.is_empty(), "a closed device reports nothing");
    // Reopen over fresh rings with fresh guests.
    for i in 0..4 {
        rig.wires[i] = leak_wire();
        rig.devices[i].open(rig.wires[i].channel().unwrap()).unwrap();
        rig.clients[i] = IcClient::new(rig.clients[i].service());
    }
    assert!(rig.devices[0].open(rig.wires[0].channel().unwrap()).is_err());
    rig.settle();
    assert!(rig.controls.heartbeat().service.phase.versions().is_some());
    assert_eq!(rig.controls.kvp().service.requests_sent, 3);
}

/// A host that cannot read the guest's reference time offers time sync
/// 3.0 and 1.0 only (IcConfig's default), and the guest settles on 3.0.
#[test]
fn without_reference_time_timesync_stops_at_3_0() {
    let (mut devices, _controls) = IntegrationServices::new::<&'static AtomicMemory>(IcConfig::default());
    let timesync = &mut devices[1];
    assert_eq!(timesync.offer().interface_type, ic_protocol::TIMESYNC_GUID);
    let wire = leak_wire();
    timesync.open(wire.channel().unwrap()).unwrap();
    timesync.tick(1);
    let (id, negotiate) = wire.receive().expect("negotiation sent");
    let mut client = IcClient::new(GuestService::TimeSync);
    let reply = client.handle(&negotiate).expect("answered");
    wire.send(id, &reply.payload);
    timesync.poll(64);
    assert_eq!(
        client.versions().map(|(_, s)| s),
        Some(ic_protocol::Version::new(3, 0))
    );
}
