//! Integration services (IC-*): each `vsp_ic` provider over real rings
//! against the guest side `vsc_drivers::ic`, and against hostile guests.
//! Rules from Linux 6.1 `drivers/hv/hv_util.c`, `hv_kvp.c`,
//! `channel_mgmt.c` (`vmbus_prep_negotiate_resp`) and
//! `include/linux/hyperv.h`.

use crate::Case;
use ic_protocol::{HeaderFlags, KvpPool, Message, MessageType, Status, Version};
use vmbus::memory::AtomicMemory;
use vmbus::packet::PacketType;
use vsc_drivers::ic::{Action, IcClient, KvpStore, Service};
use vsp::Device;
use vsp_ic::fuzzing::Wire;
use vsp_ic::{Controls, IcConfig, IntegrationServices, KvpOutcome, MAX_QUEUED, Phase, ShutdownState};

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}

const SEC: u64 = 1_000_000_000;

type Dev = Box<dyn Device<&'static AtomicMemory>>;

/// The four services open over fresh rings, with well-behaved guests.
struct Rig {
    devices: Vec<Dev>,
    wires: Vec<Wire<'static>>,
    clients: Vec<IcClient>,
    controls: Controls,
    actions: Vec<Action>,
    /// Every host packet seen: (service index, transaction id, payload).
    seen: Vec<(usize, u64, Vec<u8>)>,
    now: u64,
}

fn wire() -> Wire<'static> {
    let (up, down) = Wire::memory(3 * 4096);
    Wire {
        up: Box::leak(Box::new(up)),
        down: Box::leak(Box::new(down)),
    }
}

impl Rig {
    fn new() -> Result<Self, String> {
        let (mut devices, controls) = IntegrationServices::new::<&'static AtomicMemory>(IcConfig {
            timesync_reference_time: true,
            ..IcConfig::default()
        });
        let mut wires = Vec::new();
        let mut clients = Vec::new();
        for d in devices.iter_mut() {
            let service = Service::from_interface(&d.offer().interface_type).ok_or("offer is not an IC")?;
            let w = wire();
            d.open(w.channel().ok_or("rings")?).map_err(|e| format!("{e}"))?;
            wires.push(w);
            let mut store = KvpStore::new();
            store.set(KvpPool::AUTO, "OSName", "hv-rs");
            let mut c = IcClient::with_kvp(store);
            if service != Service::Kvp {
                c = IcClient::new(service);
            }
            clients.push(c);
        }
        Ok(Self {
            devices,
            wires,
            clients,
            controls,
            actions: Vec::new(),
            seen: Vec::new(),
            now: 0,
        })
    }

    fn round(&mut self, advance: u64) {
        self.now += advance;
        for i in 0..self.devices.len() {
            self.devices[i].tick(self.now);
            while let Some((id, p)) = self.wires[i].receive() {
                if let Ok(r) = self.clients[i].handle(&p) {
                    self.wires[i].send(id, &r.payload);
                    self.actions.push(r.action);
                }
                self.seen.push((i, id, p));
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

/// One device (by index: 0 shutdown, 1 timesync, 2 heartbeat, 3 KVP),
/// open, its negotiation sent but not answered.
fn alone(index: usize) -> Result<(Dev, Wire<'static>, Controls, u64, Vec<u8>), String> {
    let (devices, controls) = IntegrationServices::new::<&'static AtomicMemory>(IcConfig {
        timesync_reference_time: true,
        ..IcConfig::default()
    });
    let mut dev = devices.into_iter().nth(index).ok_or("no device")?;
    let w = wire();
    dev.open(w.channel().ok_or("rings")?)
        .map_err(|e| format!("{e}"))?;
    dev.tick(1);
    let (id, p) = w.receive().ok_or("no negotiation sent")?;
    Ok((dev, w, controls, id, p))
}

fn newest(w: &Wire<'_>) -> Option<(u64, Vec<u8>)> {
    let mut last = None;
    while let Some(p) = w.receive() {
        last = Some(p);
    }
    last
}

fn negotiation_first() -> Result<(), String> {
    let expected: [&[Version]; 4] = [
        ic_protocol::SHUTDOWN_VERSIONS,
        ic_protocol::TIMESYNC_VERSIONS,
        ic_protocol::HEARTBEAT_VERSIONS,
        ic_protocol::KVP_VERSIONS,
    ];
    for (i, versions) in expected.iter().enumerate() {
        let (_, _, _, _, p) = alone(i)?;
        let m = Message::parse(&p).map_err(|e| format!("{e}"))?;
        ensure!(
            m.header.message_type() == MessageType::NEGOTIATE,
            "service {i}: first message {:?}",
            m.header.message_type()
        );
        ensure!(
            m.header.header_flags() == HeaderFlags::HOST_REQUEST,
            "flags {:?}",
            m.header.header_flags()
        );
        let n = ic_protocol::Negotiate::parse(m.body().map_err(|e| format!("{e}"))?)
            .map_err(|e| format!("{e}"))?;
        ensure!(
            n.framework == ic_protocol::FRAMEWORK_VERSIONS,
            "framework list {:?}",
            n.framework
        );
        ensure!(n.message == *versions, "service list {:?}", n.message);
    }
    let mut rig = Rig::new()?;
    rig.settle();
    let fw = Version::new(3, 0);
    let got = [
        rig.controls.shutdown().service.phase,
        rig.controls.timesync().service.phase,
        rig.controls.heartbeat().service.phase,
        rig.controls.kvp().service.phase,
    ];
    let want = [
        Phase::Ready(fw, Version::new(3, 2)),
        Phase::Ready(fw, Version::new(4, 0)),
        Phase::Ready(fw, Version::new(3, 0)),
        Phase::Ready(fw, Version::new(4, 0)),
    ];
    ensure!(got == want, "phases {got:?}");
    Ok(())
}

fn negotiation_answer_format() -> Result<(), String> {
    let (_, _, _, _, p) = alone(0)?;
    let r = IcClient::new(Service::Shutdown)
        .handle(&p)
        .map_err(|e| format!("{e}"))?;
    let m = Message::parse(&r.payload).map_err(|e| format!("{e}"))?;
    ensure!(
        m.header.header_flags() == HeaderFlags::GUEST_RESPONSE,
        "flags {:?}",
        m.header.header_flags()
    );
    ensure!(
        m.header.msg_size.get() == 16,
        "icmsgsize {}",
        m.header.msg_size.get()
    );
    ensure!(
        r.payload.len() == p.len(),
        "answer {} bytes, request {}",
        r.payload.len(),
        p.len()
    );
    let chosen = ic_protocol::parse_negotiate_response(m.body().map_err(|e| format!("{e}"))?)
        .map_err(|e| format!("{e}"))?;
    ensure!(
        chosen == Some((Version::new(3, 0), Version::new(3, 2))),
        "chosen {chosen:?}"
    );
    Ok(())
}

fn version_mismatch() -> Result<(), String> {
    let (mut dev, w, controls, id, p) = alone(2)?;
    let answer = ic_protocol::build_negotiate_response(&p, None).map_err(|e| format!("{e}"))?;
    w.send(id, &answer);
    dev.poll(64);
    ensure!(
        controls.heartbeat().service.phase == Phase::NoCommonVersion,
        "{:?}",
        controls.heartbeat().service.phase
    );
    dev.tick(10 * SEC);
    ensure!(w.receive().is_none(), "a request went out without versions");
    // A guest-side view: an offer listing nothing the guest knows.
    let req = ic_protocol::build_negotiate(&[Version::new(2, 0)], &[Version::new(3, 0)])
        .map_err(|e| format!("{e}"))?;
    let r = IcClient::new(Service::Heartbeat)
        .handle(&req)
        .map_err(|e| format!("{e}"))?;
    ensure!(r.action == Action::Negotiated(None), "{:?}", r.action);
    Ok(())
}

fn heartbeat() -> Result<(), String> {
    let mut rig = Rig::new()?;
    rig.settle();
    for _ in 0..3 {
        rig.round(2 * SEC);
    }
    let hb = rig.controls.heartbeat();
    ensure!(hb.state.acked >= 3 && hb.state.missed == 0, "{hb:?}");
    ensure!(
        hb.state.last_acked == Some(hb.state.sent),
        "last acked {:?} after {} sent",
        hb.state.last_acked,
        hb.state.sent
    );
    let last_seq = rig
        .seen
        .iter()
        .rev()
        .filter(|(i, _, _)| *i == 2)
        .filter_map(|(_, _, p)| {
            let m = Message::parse(p).ok()?;
            if m.header.message_type() != MessageType::HEARTBEAT {
                return None;
            }
            ic_protocol::parse_heartbeat(m.rest).ok()
        })
        .next()
        .ok_or("no heartbeat seen")?;
    ensure!(
        hb.state.last_acked == Some(last_seq + 1),
        "sent {last_seq}, acked {:?}",
        hb.state.last_acked
    );
    rig.devices[2].tick(rig.now + 2 * SEC);
    rig.devices[2].tick(rig.now + 4 * SEC);
    ensure!(
        rig.controls.heartbeat().state.missed >= 1,
        "a silent guest missed nothing"
    );
    Ok(())
}

fn shutdown() -> Result<(), String> {
    let mut rig = Rig::new()?;
    rig.settle();
    rig.controls
        .request_shutdown(false, "maintenance")
        .map_err(|e| format!("{e}"))?;
    rig.settle();
    ensure!(
        rig.controls.shutdown().state == ShutdownState::Acknowledged { reboot: false },
        "{:?}",
        rig.controls.shutdown().state
    );
    ensure!(rig.actions.contains(&Action::PowerOff), "guest did not power off");
    let req = rig
        .seen
        .iter()
        .rev()
        .find(|(i, _, _)| *i == 0)
        .ok_or("no shutdown request")?;
    let m = Message::parse(&req.2).map_err(|e| format!("{e}"))?;
    let s = ic_protocol::parse_shutdown(m.rest).map_err(|e| format!("{e}"))?;
    ensure!(s.flags.0 == 1 && s.message == "maintenance", "{s:?}");
    rig.controls
        .request_shutdown(true, "restart")
        .map_err(|e| format!("{e}"))?;
    rig.settle();
    ensure!(rig.actions.contains(&Action::Reboot), "guest did not restart");
    Ok(())
}

fn timesync() -> Result<(), String> {
    let mut rig = Rig::new()?;
    let t = ic_protocol::WLTIMEDELTA + 1_700_000_000 * 10_000_000;
    rig.controls.push_time(t, Some(99), true);
    rig.settle();
    let ts = rig.controls.timesync();
    ensure!(ts.state.last_acked == Some(t), "{ts:?}");
    let req = rig
        .seen
        .iter()
        .rev()
        .find(|(i, _, _)| *i == 1)
        .ok_or("no timesync request")?;
    ensure!(req.2.len() >= 28 + 22, "v4 message {} bytes", req.2.len());
    ensure!(
        rig.actions.contains(&Action::SetTime {
            host_time: t,
            reference_time: Some(99),
            sync: true
        }),
        "guest did not set its time"
    );
    Ok(())
}

fn kvp() -> Result<(), String> {
    let mut rig = Rig::new()?;
    rig.settle();
    let c = rig.controls.clone();
    let e = c.kvp_enumerate(KvpPool::AUTO).map_err(|e| format!("{e}"))?;
    let s = c
        .kvp_set(KvpPool::EXTERNAL, "VirtualMachineName", "child-1")
        .map_err(|e| format!("{e}"))?;
    let g = c
        .kvp_get(KvpPool::EXTERNAL, "VirtualMachineName")
        .map_err(|e| format!("{e}"))?;
    let d = c
        .kvp_delete(KvpPool::EXTERNAL, "VirtualMachineName")
        .map_err(|e| format!("{e}"))?;
    let m = c
        .kvp_get(KvpPool::EXTERNAL, "VirtualMachineName")
        .map_err(|e| format!("{e}"))?;
    for _ in 0..20 {
        rig.round(1);
    }
    let outcome = |id| c.kvp_result(id).map(|r| r.outcome);
    ensure!(
        outcome(e) == Some(KvpOutcome::Enumerated(1)),
        "enumerate {:?}",
        outcome(e)
    );
    ensure!(outcome(s) == Some(KvpOutcome::Done), "set {:?}", outcome(s));
    ensure!(
        outcome(g) == Some(KvpOutcome::Value("child-1".into())),
        "get {:?}",
        outcome(g)
    );
    ensure!(outcome(d) == Some(KvpOutcome::Done), "delete {:?}", outcome(d));
    ensure!(
        outcome(m) == Some(KvpOutcome::Failed(Status::S_CONT)),
        "get deleted {:?}",
        outcome(m)
    );
    let pools = c.kvp().pools;
    ensure!(
        pools[2].1 == vec![("OSName".to_string(), "hv-rs".to_string())],
        "{:?}",
        pools[2]
    );
    Ok(())
}

fn malformed_answers() -> Result<(), String> {
    let (mut dev, w, controls, id, p) = alone(2)?;
    let mut client = IcClient::new(Service::Heartbeat);
    let r = client.handle(&p).map_err(|e| format!("{e}"))?;
    w.send(id, &r.payload);
    dev.poll(64);
    let mut now = 1;
    type Mangle = fn(&[u8]) -> Vec<u8>;
    let bad: [Mangle; 4] = [
        |_| vec![0; 12],
        |p| p.to_vec(),
        |p| {
            let mut v = ic_protocol::build_response(p, Status::OK, |_| {}).unwrap_or_default();
            if let Some(x) = v.get_mut(12) {
                *x = 3;
            }
            v
        },
        |p| ic_protocol::build_response(p, Status::OK, |_| {}).unwrap_or_default(),
    ];
    for make in bad {
        now += 2 * SEC;
        dev.tick(now);
        let (id, p) = newest(&w).ok_or("no heartbeat")?;
        w.send(id, &make(&p));
        dev.poll(64);
    }
    let s = controls.heartbeat();
    ensure!(s.service.violations == 4, "{s:?}");
    now += 2 * SEC;
    dev.tick(now);
    let (id, p) = newest(&w).ok_or("no heartbeat")?;
    w.send(id, &client.handle(&p).map_err(|e| format!("{e}"))?.payload);
    dev.poll(64);
    ensure!(
        controls.heartbeat().state.acked == 1,
        "{:?}",
        controls.heartbeat()
    );
    Ok(())
}

fn unsolicited() -> Result<(), String> {
    let (mut dev, w, controls, id, p) = alone(2)?;
    let mut client = IcClient::new(Service::Heartbeat);
    let answer = client.handle(&p).map_err(|e| format!("{e}"))?.payload;
    w.send(id, &answer);
    w.send(id, &answer);
    w.send(id + 77, &answer);
    w.send_kind(PacketType::COMPLETION, id, &answer);
    dev.poll(64);
    let s = controls.heartbeat().service;
    ensure!(s.unsolicited == 2 && s.ignored == 1 && s.violations == 0, "{s:?}");
    ensure!(s.phase.versions().is_some(), "negotiation lost");
    Ok(())
}

fn quotas() -> Result<(), String> {
    let mut rig = Rig::new()?;
    for i in 0..100 {
        rig.clients[3].kvp.set(KvpPool::GUEST, &format!("k{i}"), "v");
    }
    rig.settle();
    let c = rig.controls.clone();
    let id = c.kvp_enumerate(KvpPool::GUEST).map_err(|e| format!("{e}"))?;
    for _ in 1..MAX_QUEUED {
        c.kvp_get(KvpPool::GUEST, "k1").map_err(|e| format!("{e}"))?;
    }
    ensure!(c.kvp_get(KvpPool::GUEST, "k1").is_err(), "queue unbounded");
    ensure!(
        c.kvp_set(KvpPool::GUEST, &"k".repeat(256), "v").is_err(),
        "key unbounded"
    );
    ensure!(
        c.kvp_set(KvpPool::GUEST, "k", &"v".repeat(1024)).is_err(),
        "value unbounded"
    );
    ensure!(c.kvp_get(KvpPool(5), "k").is_err(), "pool 5 accepted");
    c.request_shutdown(false, &"x".repeat(10_000))
        .map_err(|e| format!("{e}"))?;
    for _ in 0..200 {
        rig.round(1);
    }
    ensure!(
        c.kvp_result(id).map(|r| r.outcome) == Some(KvpOutcome::Enumerated(vsp_ic::MAX_ENTRIES_PER_POOL)),
        "{:?}",
        c.kvp_result(id)
    );
    let biggest = rig.seen.iter().map(|(_, _, p)| p.len()).max().unwrap_or(0);
    ensure!(
        biggest + 16 <= ic_protocol::MAX_HOST_PACKET,
        "a {biggest}-byte payload"
    );
    Ok(())
}

fn oversize() -> Result<(), String> {
    let mut rig = Rig::new()?;
    rig.settle();
    rig.controls
        .request_shutdown(false, "x")
        .map_err(|e| format!("{e}"))?;
    rig.devices[0].tick(rig.now + 1);
    let (id, _) = newest(&rig.wires[0]).ok_or("no request")?;
    rig.wires[0].send(id, &vec![0u8; 6000]);
    let r = rig.devices[0].poll(64);
    ensure!(r.broke.is_some(), "the channel kept reading");
    rig.round(2 * SEC);
    rig.round(2 * SEC);
    ensure!(
        rig.controls.heartbeat().state.acked >= 2,
        "the other channels stopped too"
    );
    rig.round(20 * SEC);
    ensure!(
        rig.controls.shutdown().state == ShutdownState::TimedOut,
        "{:?}",
        rig.controls.shutdown().state
    );
    Ok(())
}

fn reset() -> Result<(), String> {
    let mut rig = Rig::new()?;
    rig.settle();
    rig.controls
        .kvp_enumerate(KvpPool::AUTO)
        .map_err(|e| format!("{e}"))?;
    rig.devices[3].tick(rig.now + 1);
    for d in rig.devices.iter_mut() {
        d.reset();
    }
    let k = rig.controls.kvp();
    ensure!(k.service.phase == Phase::Closed, "{:?}", k.service.phase);
    ensure!(
        k.results.last().map(|r| &r.outcome) == Some(&KvpOutcome::Cancelled),
        "{:?}",
        k.results
    );
    for i in 0..4 {
        rig.wires[i] = wire();
        let ch = rig.wires[i].channel().ok_or("rings")?;
        rig.devices[i].open(ch).map_err(|e| format!("{e}"))?;
        rig.clients[i] = IcClient::new(rig.clients[i].service());
    }
    rig.settle();
    ensure!(
        rig.controls.heartbeat().service.phase.versions().is_some(),
        "no renegotiation"
    );
    Ok(())
}

fn hostile_bytes() -> Result<(), String> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut clients = [
        IcClient::new(Service::Shutdown),
        IcClient::new(Service::TimeSync),
        IcClient::new(Service::Heartbeat),
        IcClient::new(Service::Kvp),
    ];
    for c in clients.iter_mut() {
        let req = ic_protocol::build_negotiate(ic_protocol::FRAMEWORK_VERSIONS, c.service().versions())
            .map_err(|e| format!("{e}"))?;
        c.handle(&req).map_err(|e| format!("{e}"))?;
    }
    for n in 0..2000 {
        let len = (x % 3000) as usize;
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x as u8);
        }
        // Keep a plausible header on half of them, to reach the bodies.
        if n % 2 == 0 && v.len() >= 28 {
            v[10] = (n / 2 % 5) as u8;
            v[11] = 0;
        }
        for c in clients.iter_mut() {
            if let Ok(r) = c.handle(&v) {
                ensure!(r.payload.len() >= v.len(), "answer shorter than the request");
            }
        }
        vsp_ic::fuzzing::provider(&v);
    }
    Ok(())
}

/// The IC cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "IC-01",
            rule: "the host speaks first: after open, every IC channel carries NEGOTIATE (flags TRANSACTION|REQUEST) listing framework 3.0/1.0 and the service's versions; the guest settles on the highest common ones (hv_util.c fw/sd/ts/hb versions, hv_kvp.c)",
            expect: "shutdown 3.2, timesync 4.0, heartbeat 3.0, KVP 4.0, all on framework 3.0",
            run: negotiation_first,
        },
        Case {
            id: "IC-02",
            rule: "the guest answers NEGOTIATE in place: flags TRANSACTION|RESPONSE, icmsgsize 16, counts 1/1 and the chosen versions (channel_mgmt.c vmbus_prep_negotiate_resp)",
            expect: "same length as the request, framework 3.0 and service 3.2 chosen",
            run: negotiation_answer_format,
        },
        Case {
            id: "IC-03",
            rule: "no common version: counts 0/0; the host keeps the service idle",
            expect: "phase NoCommonVersion, nothing more sent; the guest reports Negotiated(None)",
            run: version_mismatch,
        },
        Case {
            id: "IC-04",
            rule: "heartbeat: the guest answers the sequence plus one (hv_util.c heartbeat_onchannelcallback); an unanswered one counts as missed at the next interval",
            expect: "every heartbeat acked with seq+1; a silent guest gets a miss",
            run: heartbeat,
        },
        Case {
            id: "IC-05",
            rule: "shutdown: flags 0/1 power off, 2/3 restart; the guest answers HV_S_OK, then acts (hv_util.c shutdown_onchannelcallback)",
            expect: "Acknowledged, the guest powers off; then a restart request makes it reboot",
            run: shutdown,
        },
        Case {
            id: "IC-06",
            rule: "time sync 4.0: ictimesync_ref_data (host time in 100 ns since 1601, reference time, SYNC/SAMPLE flags), echoed by the guest (hv_util.c timesync_onchannelcallback)",
            expect: "the pushed time acked; the guest applies it with SYNC",
            run: timesync,
        },
        Case {
            id: "IC-07",
            rule: "KVP: GET/SET/DELETE/ENUMERATE per pool, UTF-16LE strings with NUL-inclusive byte sizes, the end of a pool and a missing key answered HV_S_CONT (hv_kvp.c kvp_respond_to_host)",
            expect: "enumerate lists the guest's AUTO pool; set, get, delete and a failed get come back as expected",
            run: kvp,
        },
        Case {
            id: "IC-08",
            rule: "a guest answering garbage (short, request flags, wrong type, wrong sequence) gets counted violations and the channel keeps working",
            expect: "4 violations, then a good answer is acked",
            run: malformed_answers,
        },
        Case {
            id: "IC-09",
            rule: "answers nobody asked for (duplicate, invented transaction id) are counted and ignored; non-data packets are ignored",
            expect: "2 unsolicited, 1 ignored, no violation, negotiation kept",
            run: unsolicited,
        },
        Case {
            id: "IC-10",
            rule: "quotas: at most 16 KVP requests queued, 64 pairs kept per pool, keys < 256 and values < 1024 UTF-16 units, pools 0-4, host packets within 4096 bytes (Linux max_pkt_size)",
            expect: "over-quota requests refused; a 100-pair pool enumerates 64; the largest host packet fits 4 KiB",
            run: quotas,
        },
        Case {
            id: "IC-11",
            rule: "an answer larger than the host's receive buffer stops that channel only; its request times out",
            expect: "the shutdown channel broken and its request TimedOut; heartbeats still acked",
            run: oversize,
        },
        Case {
            id: "IC-12",
            rule: "a bus reset cancels what is in flight; reopened channels negotiate again",
            expect: "the enumeration Cancelled, phase Closed; after reopen every service is Ready",
            run: reset,
        },
        Case {
            id: "IC-13",
            rule: "hostile bytes never panic the guest client or a provider (2000 pseudo-random payloads, half with a plausible header)",
            expect: "no panic; every answer at least as long as its request",
            run: hostile_bytes,
        },
    ]
}
