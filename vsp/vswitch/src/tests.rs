//! Host tests of the switch as a whole.

use std::collections::HashMap;
use std::vec::Vec;

use proptest::prelude::*;

use crate::*;

fn mac(n: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, n])
}

const MCAST: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]);

/// A frame of `len` bytes (at least 14) with a payload that identifies `tag`.
fn frame_len(dst: MacAddr, src: MacAddr, len: usize, tag: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(len.max(14), tag);
    f.truncate(len);
    f
}

fn frame(dst: MacAddr, src: MacAddr, tag: u8) -> Vec<u8> {
    frame_len(dst, src, 60, tag)
}

fn drain(sw: &Switch, port: PortId) -> Vec<Vec<u8>> {
    core::iter::from_fn(|| sw.egress(port))
        .map(|f| f.to_vec())
        .collect()
}

fn switch() -> Switch {
    Switch::new(Config::default()).unwrap()
}

/// Three uplink-like ports with no assigned MACs, so every address is learned.
fn three_plain() -> (Switch, PortId, PortId, PortId) {
    let mut sw = switch();
    let a = sw.add_port(PortConfig::uplink("a")).unwrap();
    let b = sw.add_port(PortConfig::uplink("b")).unwrap();
    let c = sw.add_port(PortConfig::uplink("c")).unwrap();
    (sw, a, b, c)
}

#[test]
fn switch_and_queue_handles_can_cross_cpus() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Switch>();
    send_sync::<EgressQueue>();
    send_sync::<Frame>();
}

#[test]
fn learning_then_unicast_to_one_port() {
    let (mut sw, a, b, c) = three_plain();
    let x = mac(1);
    let y = mac(2);
    // Y unknown: flooded to b and c.
    let d = sw.ingress(a, &frame(y, x, 1), 0).unwrap();
    assert_eq!(d.forward, Forward::Flood(FloodReason::UnknownUnicast));
    assert_eq!((d.queued, d.queue_full, d.reached(), d.targets()), (2, 0, 2, 2));
    assert_eq!(drain(&sw, b), [frame(y, x, 1)]);
    assert_eq!(drain(&sw, c), [frame(y, x, 1)]);
    assert_eq!(sw.lookup_mac(x, 0), Some(a));
    // Y answers from b: X was learned on a, so only a gets it.
    let d = sw.ingress(b, &frame(x, y, 2), 1).unwrap();
    assert_eq!(d.forward, Forward::Unicast(a));
    assert_eq!(d.reached(), 1);
    assert_eq!(drain(&sw, a), [frame(x, y, 2)]);
    assert!(drain(&sw, c).is_empty());
    // And now X to Y goes to b only.
    let d = sw.ingress(a, &frame(y, x, 3), 2).unwrap();
    assert_eq!(d.forward, Forward::Unicast(b));
    assert_eq!(drain(&sw, b), [frame(y, x, 3)]);
    assert!(drain(&sw, c).is_empty());
    let k = sw.counters();
    assert_eq!((k.unicast, k.flooded_unknown, k.macs_learned), (2, 1, 2));
}

#[test]
fn assigned_mac_is_reached_without_learning() {
    let mut sw = switch();
    let up = sw.add_port(PortConfig::uplink("up")).unwrap();
    let nic = sw.add_port(PortConfig::child_nic("c1", mac(10))).unwrap();
    let other = sw.add_port(PortConfig::child_nic("c2", mac(11))).unwrap();
    let d = sw.ingress(up, &frame(mac(10), mac(99), 0), 0).unwrap();
    assert_eq!(d.forward, Forward::Unicast(nic));
    assert_eq!(drain(&sw, nic).len(), 1);
    assert!(drain(&sw, other).is_empty());
    // Assigned MACs do not age.
    assert_eq!(sw.lookup_mac(mac(10), u64::MAX), Some(nic));
}

#[test]
fn broadcast_multicast_and_unknown_flood_to_every_other_port() {
    let mut sw = switch();
    let root = sw.add_port(PortConfig::root_host("root", mac(1))).unwrap();
    let up = sw.add_port(PortConfig::uplink("up")).unwrap();
    let c1 = sw.add_port(PortConfig::child_nic("c1", mac(2))).unwrap();
    let c2 = sw.add_port(PortConfig::child_nic("c2", mac(3))).unwrap();
    let all = [root, up, c1, c2];
    let cases = [
        (MacAddr::BROADCAST, FloodReason::Broadcast),
        (MCAST, FloodReason::Multicast),
        (MacAddr([0x33, 0x33, 0, 0, 0, 1]), FloodReason::Multicast),
        (mac(77), FloodReason::UnknownUnicast),
    ];
    for (dst, reason) in cases {
        for (i, &from) in all.iter().enumerate() {
            let src = sw.port_config(from).unwrap().mac.unwrap_or(mac(50));
            let d = sw.ingress(from, &frame(dst, src, i as u8), 0).unwrap();
            assert_eq!(d.forward, Forward::Flood(reason));
            assert_eq!(d.reached(), 3);
            for &to in &all {
                let got = drain(&sw, to);
                if to == from {
                    assert!(got.is_empty(), "reflected to the ingress port");
                } else {
                    assert_eq!(got, [frame(dst, src, i as u8)]);
                }
            }
        }
    }
    let k = sw.counters();
    assert_eq!(
        (k.flooded_broadcast, k.flooded_multicast, k.flooded_unknown),
        (4, 8, 4)
    );
}

#[test]
fn destination_on_the_ingress_port_is_filtered() {
    let (mut sw, a, b, c) = three_plain();
    sw.ingress(a, &frame(MacAddr::BROADCAST, mac(1), 0), 0).unwrap();
    drain(&sw, b);
    drain(&sw, c);
    // mac(2) also behind a (two stations behind one uplink talking to each other).
    let d = sw.ingress(a, &frame(mac(1), mac(2), 0), 1).unwrap();
    assert_eq!(d.forward, Forward::Filtered);
    assert_eq!(d.targets(), 0);
    for p in [a, b, c] {
        assert_eq!(sw.queued(p), Some(0));
    }
    assert_eq!(sw.counters().filtered, 1);
}

#[test]
fn spoofed_source_is_dropped_and_counted_when_enforced() {
    let mut sw = switch();
    let c1 = sw.add_port(PortConfig::child_nic("c1", mac(1))).unwrap();
    let c2 = sw
        .add_port(PortConfig::child_nic("c2", mac(2)).with_enforce_source_mac(false))
        .unwrap();
    let up = sw.add_port(PortConfig::uplink("up")).unwrap();
    let err = sw
        .ingress(c1, &frame(MacAddr::BROADCAST, mac(66), 0), 0)
        .unwrap_err();
    assert_eq!(
        err,
        SwitchError::SpoofedSource {
            source: mac(66),
            assigned: mac(1)
        }
    );
    assert!(err.is_frame_drop());
    let k = sw.port_counters(c1).unwrap();
    assert_eq!((k.drop_spoofed_source, k.rx_frames, k.offered()), (1, 0, 1));
    assert_eq!(sw.queued(up), Some(0));
    assert_eq!(sw.queued(c2), Some(0));
    assert_eq!(sw.lookup_mac(mac(66), 0), None, "a dropped frame teaches nothing");
    // Its own MAC passes.
    assert_eq!(
        sw.ingress(c1, &frame(MacAddr::BROADCAST, mac(1), 0), 0)
            .unwrap()
            .reached(),
        2
    );
    // Without enforcement any station source passes and is learned.
    assert_eq!(
        sw.ingress(c2, &frame(MacAddr::BROADCAST, mac(67), 0), 0)
            .unwrap()
            .reached(),
        2
    );
    assert_eq!(sw.lookup_mac(mac(67), 0), Some(c2));
}

#[test]
fn multicast_or_zero_source_is_dropped() {
    let (mut sw, a, b, _) = three_plain();
    for src in [MCAST, MacAddr::BROADCAST, MacAddr::ZERO] {
        assert_eq!(
            sw.ingress(a, &frame(mac(1), src, 0), 0),
            Err(SwitchError::InvalidSource(src))
        );
    }
    assert_eq!(sw.port_counters(a).unwrap().drop_invalid_source, 3);
    assert_eq!(sw.queued(b), Some(0));
    assert_eq!(sw.mac_table_len(), 0);
}

#[test]
fn a_full_queue_drops_for_that_port_only() {
    let mut sw = switch();
    let a = sw.add_port(PortConfig::uplink("a")).unwrap();
    let small = sw
        .add_port(PortConfig::uplink("small").with_queue_depth(2))
        .unwrap();
    let big = sw
        .add_port(PortConfig::uplink("big").with_queue_depth(8))
        .unwrap();
    for i in 0..5u8 {
        let d = sw.ingress(a, &frame(MacAddr::BROADCAST, mac(1), i), 0).unwrap();
        let expect_full = usize::from(i >= 2);
        assert_eq!((d.queued, d.queue_full), (2 - expect_full, expect_full));
    }
    assert_eq!(sw.queued(small), Some(2));
    let k = sw.port_counters(small).unwrap();
    assert_eq!((k.tx_frames, k.drop_queue_full, k.tx_bytes), (2, 3, 120));
    // The other port got everything, in order.
    let got = drain(&sw, big);
    assert_eq!(
        got,
        (0..5)
            .map(|i| frame(MacAddr::BROADCAST, mac(1), i))
            .collect::<Vec<_>>()
    );
    // The small port kept the first two; once drained it takes frames again.
    assert_eq!(
        drain(&sw, small),
        [
            frame(MacAddr::BROADCAST, mac(1), 0),
            frame(MacAddr::BROADCAST, mac(1), 1)
        ]
    );
    // Unicast to a full port is dropped there and reaches nobody.
    sw.ingress(small, &frame(MacAddr::BROADCAST, mac(2), 9), 0)
        .unwrap();
    drain(&sw, a);
    drain(&sw, big);
    for i in 0..2 {
        sw.ingress(a, &frame(mac(2), mac(1), i), 0).unwrap();
    }
    let d = sw.ingress(a, &frame(mac(2), mac(1), 2), 0).unwrap();
    assert_eq!(
        d,
        Delivery {
            forward: Forward::Unicast(small),
            queued: 0,
            queue_full: 1
        }
    );
    assert_eq!(sw.queued(big), Some(0));
}

#[test]
fn learned_entries_age_out_with_the_callers_clock() {
    let mut sw = Switch::new(Config {
        mac_max_age: 100,
        ..Config::default()
    })
    .unwrap();
    let a = sw.add_port(PortConfig::uplink("a")).unwrap();
    let b = sw.add_port(PortConfig::uplink("b")).unwrap();
    sw.ingress(a, &frame(MacAddr::BROADCAST, mac(1), 0), 1_000)
        .unwrap();
    assert_eq!(
        sw.ingress(b, &frame(mac(1), mac(2), 0), 1_100).unwrap().forward,
        Forward::Unicast(a)
    );
    assert_eq!(sw.lookup_mac(mac(1), 1_101), None);
    let d = sw.ingress(b, &frame(mac(1), mac(2), 0), 1_101).unwrap();
    assert_eq!(d.forward, Forward::Flood(FloodReason::UnknownUnicast));
    assert_eq!(sw.counters().macs_aged, 1);
    // Traffic refreshes an entry; expire() sweeps the rest.
    sw.ingress(a, &frame(MacAddr::BROADCAST, mac(1), 0), 2_000)
        .unwrap();
    sw.ingress(a, &frame(MacAddr::BROADCAST, mac(3), 0), 2_050)
        .unwrap();
    sw.ingress(a, &frame(MacAddr::BROADCAST, mac(1), 0), 2_090)
        .unwrap();
    assert_eq!(sw.expire(2_170), 1, "mac(3) last seen at 2050");
    assert_eq!(sw.lookup_mac(mac(1), 2_170), Some(a));
    assert_eq!(sw.expire(2_191), 1);
    // mac(2) (learned on b at 1_101) went in an earlier sweep or the opportunistic one.
    assert_eq!(sw.learned_mac_count(), 0);
}

#[test]
fn the_learned_table_is_bounded_and_evicts_the_oldest() {
    let mut sw = Switch::new(Config {
        mac_table_capacity: 3,
        ..Config::default()
    })
    .unwrap();
    let a = sw.add_port(PortConfig::uplink("a")).unwrap();
    let b = sw.add_port(PortConfig::child_nic("b", mac(200))).unwrap();
    for n in 1..=5u8 {
        sw.ingress(a, &frame(MacAddr::BROADCAST, mac(n), 0), u64::from(n))
            .unwrap();
    }
    assert_eq!(sw.learned_mac_count(), 3);
    assert_eq!(sw.mac_table_len(), 4, "plus b's assigned MAC");
    assert_eq!(sw.counters().macs_evicted, 2);
    for n in 1..=2 {
        assert_eq!(sw.lookup_mac(mac(n), 5), None);
    }
    for n in 3..=5 {
        assert_eq!(sw.lookup_mac(mac(n), 5), Some(a));
    }
    // The assigned MAC survives any amount of learning.
    for n in 6..=20u8 {
        sw.ingress(a, &frame(MacAddr::BROADCAST, mac(n), 0), u64::from(n))
            .unwrap();
    }
    assert_eq!(sw.lookup_mac(mac(200), 20), Some(b));
    assert_eq!(sw.learned_mac_count(), 3);
}

#[test]
fn removing_a_port_clears_its_state() {
    let mut sw = switch();
    let a = sw.add_port(PortConfig::uplink("a")).unwrap();
    let b = sw.add_port(PortConfig::child_nic("b", mac(20))).unwrap();
    let c = sw.add_port(PortConfig::uplink("c")).unwrap();
    let handle = sw.egress_queue(b).unwrap();
    sw.ingress(c, &frame(MacAddr::BROADCAST, mac(30), 0), 0).unwrap();
    sw.ingress(c, &frame(MacAddr::BROADCAST, mac(31), 0), 0).unwrap();
    sw.ingress(b, &frame(MacAddr::BROADCAST, mac(20), 0), 0).unwrap();
    assert_eq!(handle.len(), 2);
    let removed = sw.remove_port(c).unwrap();
    assert_eq!(removed.config.name, "c");
    assert_eq!(removed.counters.rx_frames, 2);
    assert_eq!(removed.dropped_frames, 1, "b's broadcast was queued on c");
    assert_eq!(removed.forgotten_macs, 2);
    assert_eq!(sw.lookup_mac(mac(30), 0), None);
    // Frames to the forgotten stations flood again (to the ports that remain).
    let d = sw.ingress(a, &frame(mac(30), mac(1), 0), 0).unwrap();
    assert_eq!(
        (d.forward, d.reached()),
        (Forward::Flood(FloodReason::UnknownUnicast), 1)
    );

    let removed = sw.remove_port(b).unwrap();
    assert_eq!((removed.dropped_frames, removed.forgotten_macs), (3, 1));
    assert!(handle.is_removed());
    assert_eq!(handle.pop(), None);
    assert_eq!(sw.egress(b), None);
    assert_eq!(sw.counters().dropped_on_removal, 4);
    assert_eq!(sw.lookup_mac(mac(20), 0), None);
    assert_eq!(sw.remove_port(b), Err(SwitchError::NoSuchPort(b)));
    assert_eq!(
        sw.ingress(b, &frame(mac(1), mac(20), 0), 0),
        Err(SwitchError::NoSuchPort(b))
    );
    assert_eq!(sw.counters().ingress_no_such_port, 1);
    // Its name and MAC can be used again; its id is not.
    let b2 = sw.add_port(PortConfig::child_nic("b", mac(20))).unwrap();
    assert!(b2 > c);
    assert_eq!(sw.port_ids().collect::<Vec<_>>(), [a, b2]);
    assert_eq!(
        sw.ingress(a, &frame(mac(20), mac(1), 0), 0).unwrap().forward,
        Forward::Unicast(b2)
    );
}

#[test]
fn frame_size_limits() {
    let mut sw = Switch::new(Config {
        max_frame_size: 100,
        ..Config::default()
    })
    .unwrap();
    let a = sw.add_port(PortConfig::uplink("a")).unwrap();
    let b = sw.add_port(PortConfig::uplink("b")).unwrap();
    for len in [0, 1, 13, 101, 9000] {
        let f = frame_len(MacAddr::BROADCAST, mac(1), len, 0);
        let err = sw.ingress(a, &f, 0).unwrap_err();
        assert_eq!(
            err,
            SwitchError::BadFrameSize {
                len,
                min: 14,
                max: 100
            }
        );
    }
    for len in [14, 60, 100] {
        sw.ingress(a, &frame_len(MacAddr::BROADCAST, mac(1), len, 0), 0)
            .unwrap();
    }
    let k = sw.port_counters(a).unwrap();
    assert_eq!((k.drop_bad_size, k.rx_frames, k.rx_bytes), (5, 3, 174));
    assert_eq!(
        drain(&sw, b).iter().map(Vec::len).collect::<Vec<_>>(),
        [14, 60, 100]
    );
    assert_eq!(sw.port_counters(b).unwrap().tx_bytes, 174);
}

#[test]
fn port_and_config_validation() {
    for bad in [
        Config {
            max_ports: 0,
            ..Config::default()
        },
        Config {
            max_frame_size: 13,
            ..Config::default()
        },
        Config {
            max_frame_size: MAX_FRAME_SIZE_LIMIT + 1,
            ..Config::default()
        },
        Config {
            max_queue_depth: 0,
            ..Config::default()
        },
    ] {
        assert!(matches!(Switch::new(bad), Err(SwitchError::InvalidConfig { .. })));
    }
    let mut sw = Switch::new(Config {
        max_ports: 2,
        max_queue_depth: 16,
        ..Config::default()
    })
    .unwrap();
    let nic = |n: &str, m| PortConfig::child_nic(n, m).with_queue_depth(8);
    assert_eq!(sw.add_port(nic("", mac(1))), Err(SwitchError::InvalidName));
    assert_eq!(sw.add_port(nic("a b", mac(1))), Err(SwitchError::InvalidName));
    assert_eq!(
        sw.add_port(nic("x", MCAST)),
        Err(SwitchError::InvalidPortMac(MCAST))
    );
    assert_eq!(
        sw.add_port(nic("x", MacAddr::ZERO)),
        Err(SwitchError::InvalidPortMac(MacAddr::ZERO))
    );
    assert_eq!(
        sw.add_port(PortConfig::uplink("x").with_enforce_source_mac(true)),
        Err(SwitchError::EnforceWithoutMac)
    );
    for depth in [0, 17] {
        assert_eq!(
            sw.add_port(nic("x", mac(1)).with_queue_depth(depth)),
            Err(SwitchError::InvalidQueueDepth { depth, max: 16 })
        );
    }
    sw.add_port(nic("x", mac(1)).with_queue_depth(16)).unwrap();
    assert_eq!(sw.add_port(nic("x", mac(2))), Err(SwitchError::DuplicateName));
    assert_eq!(
        sw.add_port(nic("y", mac(1))),
        Err(SwitchError::DuplicateMac(mac(1)))
    );
    sw.add_port(nic("y", mac(2))).unwrap();
    assert_eq!(
        sw.add_port(nic("z", mac(3))),
        Err(SwitchError::TooManyPorts { max: 2 })
    );
    assert_eq!(sw.port_count(), 2);
    // Every error has a message.
    assert!(!SwitchError::DuplicateName.to_string().is_empty());
}

#[test]
fn another_ports_assigned_mac_as_source_is_not_learned() {
    let mut sw = switch();
    let nic = sw.add_port(PortConfig::child_nic("c1", mac(1))).unwrap();
    let up = sw.add_port(PortConfig::uplink("up")).unwrap();
    let d = sw.ingress(up, &frame(MacAddr::BROADCAST, mac(1), 0), 0).unwrap();
    assert_eq!(d.reached(), 1);
    assert_eq!(sw.counters().mac_conflicts, 1);
    assert_eq!(sw.lookup_mac(mac(1), 0), Some(nic));
}

#[test]
fn notify_names_each_port_that_queued() {
    let mut sw = switch();
    let a = sw.add_port(PortConfig::uplink("a")).unwrap();
    let b = sw.add_port(PortConfig::uplink("b").with_queue_depth(1)).unwrap();
    let c = sw.add_port(PortConfig::uplink("c")).unwrap();
    let mut seen = Vec::new();
    sw.ingress_notify(a, &frame(MacAddr::BROADCAST, mac(1), 0), 0, |p| seen.push(p))
        .unwrap();
    assert_eq!(seen, [b, c]);
    seen.clear();
    sw.ingress_notify(a, &frame(MacAddr::BROADCAST, mac(1), 0), 0, |p| seen.push(p))
        .unwrap();
    assert_eq!(seen, [c], "b's queue was full");
}

#[test]
fn flooded_frames_share_one_buffer() {
    let (mut sw, a, b, c) = three_plain();
    sw.ingress(a, &frame(MacAddr::BROADCAST, mac(1), 7), 0).unwrap();
    let fb = sw.egress(b).unwrap();
    let fc = sw.egress(c).unwrap();
    assert_eq!(fb, fc);
    assert!(core::ptr::eq(fb.as_bytes(), fc.as_bytes()));
    assert_eq!(
        (fb.destination(), fb.source()),
        (Some(MacAddr::BROADCAST), Some(mac(1)))
    );
}

#[test]
fn an_egress_queue_drains_on_another_thread() {
    let mut sw = switch();
    let a = sw.add_port(PortConfig::uplink("a")).unwrap();
    let b = sw.add_port(PortConfig::uplink("b").with_queue_depth(4)).unwrap();
    let q = sw.egress_queue(b).unwrap();
    assert_eq!((q.port(), q.capacity()), (b, 4));
    let consumer = std::thread::spawn(move || {
        let mut got = 0u32;
        while got < 1000 {
            if q.pop().is_some() {
                got += 1;
            } else {
                std::thread::yield_now();
            }
        }
        got
    });
    let mut sent = 0;
    while sent < 1000 {
        let d = sw.ingress(a, &frame(MacAddr::BROADCAST, mac(1), 0), 0).unwrap();
        if d.queued == 1 {
            sent += 1;
        } else {
            std::thread::yield_now();
        }
    }
    assert_eq!(consumer.join().unwrap(), 1000);
    let k = sw.port_counters(b).unwrap();
    assert_eq!(k.tx_frames, 1000);
    assert_eq!(
        k.tx_frames + k.drop_queue_full,
        sw.port_counters(a).unwrap().rx_frames
    );
}

#[test]
fn snapshot_and_json() {
    let mut sw = Switch::new(Config {
        mac_max_age: 10,
        ..Config::default()
    })
    .unwrap();
    let root = sw.add_port(PortConfig::root_host("root", mac(1))).unwrap();
    let up = sw
        .add_port(PortConfig::uplink("up\"link").with_queue_depth(4))
        .unwrap();
    let c1 = sw.add_port(PortConfig::child_nic("child1/nic0", mac(2))).unwrap();
    sw.ingress(up, &frame(MacAddr::BROADCAST, mac(9), 0), 5).unwrap();
    sw.ingress(c1, &frame(MacAddr::BROADCAST, mac(66), 0), 5)
        .unwrap_err();
    let snap = sw.snapshot();
    assert_eq!(
        snap.ports.iter().map(|p| p.id).collect::<Vec<_>>(),
        [root, up, c1]
    );
    assert_eq!(snap.ports[1].mac, None);
    assert_eq!(snap.ports[1].queue_depth, 4);
    assert_eq!(snap.ports[0].queued, 1);
    assert_eq!(snap.ports[2].counters.drop_spoofed_source, 1);
    assert_eq!(
        snap.mac_table,
        [
            MacEntry {
                mac: mac(1),
                port: root,
                origin: MacOrigin::Static
            },
            MacEntry {
                mac: mac(9),
                port: up,
                origin: MacOrigin::Learned { last_seen: 5 }
            },
            MacEntry {
                mac: mac(2),
                port: c1,
                origin: MacOrigin::Static
            },
        ]
    );

    let json: serde_json::Value = serde_json::from_str(&snap.to_json()).unwrap();
    assert_eq!(json["config"]["mac_max_age"], 10);
    assert_eq!(json["ports"][0]["kind"], "root-host");
    assert_eq!(json["ports"][0]["mac"], "02:00:00:00:00:01");
    assert_eq!(json["ports"][0]["queued"], 1);
    assert_eq!(json["ports"][1]["name"], "up\"link");
    assert_eq!(json["ports"][1]["mac"], serde_json::Value::Null);
    assert_eq!(json["ports"][1]["counters"]["rx_frames"], 1);
    assert_eq!(json["ports"][1]["counters"]["rx_bytes"], 60);
    assert_eq!(json["ports"][2]["kind"], "child-nic");
    assert_eq!(json["ports"][2]["enforce_source_mac"], true);
    assert_eq!(json["ports"][2]["counters"]["drop_spoofed_source"], 1);
    assert_eq!(json["mac_table"][1]["mac"], "02:00:00:00:00:09");
    assert_eq!(json["mac_table"][1]["static"], false);
    assert_eq!(json["mac_table"][1]["last_seen"], 5);
    assert_eq!(json["mac_table"][0]["last_seen"], serde_json::Value::Null);
    assert_eq!(json["counters"]["flooded_broadcast"], 1);
    assert_eq!(json["counters"]["macs_learned"], 1);
}

// ---------------------------------------------------------------------------------------------
// Property test: random sequences of port add/remove, ingress, egress and clock ticks.

const P_MAX_PORTS: usize = 5;
const P_MAX_FRAME: usize = 64;
const P_TABLE: usize = 3;
const P_MAX_DEPTH: usize = 4;

/// MACs the generator picks from: stations 1..=6, then broadcast, multicast, zero.
fn pool(i: u8) -> MacAddr {
    match i {
        0..=5 => mac(i + 1),
        6 => MacAddr::BROADCAST,
        7 => MCAST,
        _ => MacAddr::ZERO,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Add {
        kind: u8,
        mac: Option<u8>,
        enforce: bool,
        depth: usize,
    },
    Remove(Option<usize>),
    Ingress {
        port: Option<usize>,
        dst: u8,
        src: u8,
        len: usize,
    },
    Egress(Option<usize>),
    Tick(u64),
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (
            0u8..3,
            proptest::option::of(prop_oneof![8 => 0u8..6, 1 => 6u8..9]),
            any::<bool>(),
            prop_oneof![8 => 1usize..=P_MAX_DEPTH, 1 => Just(0), 1 => Just(P_MAX_DEPTH + 1)],
        )
            .prop_map(|(kind, mac, enforce, depth)| Op::Add { kind, mac, enforce, depth }),
        1 => port_sel().prop_map(Op::Remove),
        10 => (
            port_sel(),
            0u8..9,
            prop_oneof![8 => 0u8..6, 1 => 6u8..9],
            prop_oneof![1 => 0usize..=P_MAX_FRAME + 4, 1 => Just(14), 1 => Just(P_MAX_FRAME), 4 => 15usize..P_MAX_FRAME],
        )
            .prop_map(|(port, dst, src, len)| Op::Ingress { port, dst, src, len }),
        5 => port_sel().prop_map(Op::Egress),
        1 => (0u64..40).prop_map(Op::Tick),
        1 => Just(Op::Expire),
    ]
}

/// A port selector: mostly a live port (index modulo the live count), sometimes an id that
/// names no port.
fn port_sel() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![9 => (0usize..16).prop_map(Some), 1 => Just(None)]
}

fn pick(ids: &[PortId], sel: Option<usize>) -> PortId {
    match sel {
        Some(i) if !ids.is_empty() => ids[i % ids.len()],
        _ => PortId(u32::MAX),
    }
}

fn all_counters(sw: &Switch) -> HashMap<PortId, PortCounters> {
    sw.port_ids()
        .map(|id| (id, sw.port_counters(id).unwrap()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn random_operations_keep_the_invariants(ops in proptest::collection::vec(op(), 1..200)) {
        let config = Config {
            max_ports: P_MAX_PORTS,
            max_frame_size: P_MAX_FRAME,
            max_queue_depth: P_MAX_DEPTH,
            mac_table_capacity: P_TABLE,
            mac_max_age: 50,
        };
        let mut sw = Switch::new(config).unwrap();
        let mut now = 0u64;
        let mut popped: HashMap<PortId, u64> = HashMap::new();
        let mut added = 0u32;
        // Start with a child NIC and an uplink so early operations have ports to work on.
        for cfg in [PortConfig::child_nic("nic0", mac(1)).with_queue_depth(2), PortConfig::uplink("up0").with_queue_depth(3)] {
            popped.insert(sw.add_port(cfg).unwrap(), 0);
        }

        for op in ops {
            let ids: Vec<PortId> = sw.port_ids().collect();
            match op {
                Op::Add { kind, mac, enforce, depth } => {
                    added += 1;
                    let kind = [PortKind::ChildNic, PortKind::RootHost, PortKind::Uplink][usize::from(kind)];
                    let cfg = PortConfig {
                        kind,
                        name: std::format!("p{added}"),
                        mac: mac.map(pool),
                        enforce_source_mac: enforce,
                        queue_depth: depth,
                    };
                    let dup = cfg.mac.is_some_and(|m| {
                        ids.iter().any(|&id| sw.port_config(id).unwrap().mac == Some(m))
                    });
                    let expect_ok = ids.len() < P_MAX_PORTS
                        && (1..=P_MAX_DEPTH).contains(&depth)
                        && cfg.mac.is_none_or(|m| m.is_valid_station())
                        && !dup
                        && (cfg.mac.is_some() || !enforce);
                    let r = sw.add_port(cfg);
                    prop_assert_eq!(r.is_ok(), expect_ok, "{:?}", r);
                    if let Ok(id) = r {
                        prop_assert!(ids.iter().all(|&old| old < id), "ids only grow");
                        popped.insert(id, 0);
                    }
                }
                Op::Remove(i) => {
                    let id = pick(&ids, i);
                    let queued = sw.queued(id);
                    match sw.remove_port(id) {
                        Ok(removed) => {
                            prop_assert_eq!(Some(removed.dropped_frames), queued);
                            prop_assert_eq!(sw.egress(id), None);
                            prop_assert!(sw.snapshot().mac_table.iter().all(|e| e.port != id));
                        }
                        Err(e) => {
                            prop_assert_eq!(e, SwitchError::NoSuchPort(id));
                            prop_assert!(queued.is_none());
                        }
                    }
                }
                Op::Ingress { port, dst, src, len } => {
                    let id = pick(&ids, port);
                    let (dst, src) = (pool(dst), pool(src));
                    let bytes = frame_len(dst, src, len, 0xa5);
                    let before = all_counters(&sw);
                    let switch_before = sw.counters();
                    let r = sw.ingress(id, &bytes, now);
                    let after = all_counters(&sw);
                    let delta = |id: PortId, f: fn(&PortCounters) -> u64| f(&after[&id]) - f(&before[&id]);
                    match r {
                        Ok(d) => {
                            prop_assert!((14..=P_MAX_FRAME).contains(&len));
                            prop_assert_eq!(delta(id, |k| k.rx_frames), 1);
                            prop_assert_eq!(delta(id, |k| k.rx_bytes), len as u64);
                            let mut queued = 0;
                            let mut full = 0;
                            for &other in &ids {
                                let t = delta(other, |k| k.tx_frames);
                                let f = delta(other, |k| k.drop_queue_full);
                                prop_assert!(t + f <= 1, "one copy per port at most");
                                if other == id {
                                    prop_assert_eq!(t + f, 0, "never back to the ingress port");
                                }
                                prop_assert_eq!(delta(other, |k| k.tx_bytes), t * len as u64);
                                queued += t;
                                full += f;
                            }
                            prop_assert_eq!(queued, d.queued as u64);
                            prop_assert_eq!(full, d.queue_full as u64);
                            match d.forward {
                                Forward::Flood(reason) => {
                                    prop_assert_eq!(d.targets(), ids.len() - 1);
                                    let expect = if dst.is_broadcast() {
                                        FloodReason::Broadcast
                                    } else if dst.is_multicast() {
                                        FloodReason::Multicast
                                    } else {
                                        FloodReason::UnknownUnicast
                                    };
                                    prop_assert_eq!(reason, expect);
                                }
                                Forward::Unicast(to) => {
                                    prop_assert!(!dst.is_multicast());
                                    prop_assert!(to != id && ids.contains(&to));
                                    prop_assert_eq!(d.targets(), 1);
                                }
                                Forward::Filtered => prop_assert_eq!(d.targets(), 0),
                            }
                        }
                        Err(SwitchError::NoSuchPort(p)) => {
                            prop_assert_eq!(p, id);
                            prop_assert!(!ids.contains(&id));
                            prop_assert_eq!(sw.counters().ingress_no_such_port, switch_before.ingress_no_such_port + 1);
                            prop_assert_eq!(&before, &after);
                        }
                        Err(e) => {
                            prop_assert!(e.is_frame_drop(), "{:?}", e);
                            if let SwitchError::BadFrameSize { .. } = e {
                                prop_assert!(!(14..=P_MAX_FRAME).contains(&len));
                            } else {
                                prop_assert!((14..=P_MAX_FRAME).contains(&len));
                            }
                            prop_assert_eq!(delta(id, |k| k.offered()), 1);
                            prop_assert_eq!(delta(id, |k| k.rx_frames), 0);
                            for &other in &ids {
                                prop_assert_eq!(delta(other, |k| k.tx_frames + k.drop_queue_full), 0);
                            }
                        }
                    }
                }
                Op::Egress(i) => {
                    let id = pick(&ids, i);
                    if let Some(f) = sw.egress(id) {
                        prop_assert!((14..=P_MAX_FRAME).contains(&f.len()));
                        prop_assert!(f.source().is_some_and(|s| s.is_valid_station()));
                        *popped.get_mut(&id).unwrap() += 1;
                    }
                }
                Op::Tick(dt) => now += dt,
                Op::Expire => {
                    sw.expire(now);
                    let fresh = sw.snapshot().mac_table.iter().all(|e| match e.origin {
                        MacOrigin::Learned { last_seen } => now - last_seen <= 50,
                        MacOrigin::Static => true,
                    });
                    prop_assert!(fresh, "expire left an aged entry");
                }
            }

            // Invariants after every step.
            prop_assert!(sw.port_count() <= P_MAX_PORTS);
            prop_assert!(sw.learned_mac_count() <= P_TABLE);
            let assigned = sw.port_ids().filter(|&id| sw.port_config(id).unwrap().mac.is_some()).count();
            prop_assert_eq!(sw.mac_table_len(), sw.learned_mac_count() + assigned);
            for id in sw.port_ids() {
                let depth = sw.port_config(id).unwrap().queue_depth;
                let queued = sw.queued(id).unwrap();
                prop_assert!(queued <= depth);
                let k = sw.port_counters(id).unwrap();
                prop_assert_eq!(k.tx_frames, popped[&id] + queued as u64, "queued copies are popped or waiting");
            }
        }
    }
}
