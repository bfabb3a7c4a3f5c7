//! Two static `RootNet`s back to back: ARP (RFC 826) and ICMP echo (RFC 792).

mod common;

use common::*;
use rootnet::{
    AddrSource, DhcpState, Ipv4Addr, Ipv4Net, NetConfig, NetError, PingFailure, PingReport, RootNet,
    arp_sender,
};

/// Step both nodes until A's ping is done (or `limit` ms pass).
fn run_ping(
    a: &mut RootNet,
    b: &mut RootNet,
    start: u64,
    limit: u64,
    b_to_a: impl Fn(&[u8]) -> bool,
) -> (PingReport, u64) {
    for now in start..start + limit {
        step(a, b, now, &b_to_a);
        let report = a.ping_status().expect("a session");
        if report.done {
            return (report, now);
        }
    }
    panic!("ping not done after {limit} ms: {:?}", a.ping_status());
}

#[test]
fn back_to_back_ping_resolves_arp_and_gets_every_reply() {
    let mut a = static_net(MAC_A, IP_A, None);
    let mut b = static_net(MAC_B, IP_B, None);

    let id = a.ping(IP_B, 3, 100, 1000).expect("ping starts");
    // The first frame A sends is its ARP request for B, and snooping it
    // yields A's own mapping.
    a.poll(0);
    let first = a.take_frame().expect("ARP request");
    assert_eq!(arp_sender(&first), Some((MAC_A, IP_A.octets())));
    b.receive_frame(&first);

    let (report, end) = run_ping(&mut a, &mut b, 0, 5000, |_| true);
    assert_eq!(report.id, id);
    assert_eq!(report.target, IP_B);
    assert_eq!((report.count, report.sent, report.received), (3, 3, 3));
    assert_eq!(report.failure, None);
    // Simulated clock, 1 ms per step: the first reply waits for the ARP
    // round trip (2 ms), the others take one step (1 ms).
    let rtt = report.rtt.expect("rtts");
    assert_eq!((rtt.min_ms, rtt.max_ms), (1, 2));
    assert!(rtt.avg_ms >= 1 && rtt.avg_ms <= 2);
    // Requests at 0, 100, 200 ms; the last reply is in one step later.
    assert!((200..=210).contains(&end), "done at {end}");

    let sa = a.status();
    assert!(
        sa.counters.frames_in >= 4 && sa.counters.frames_out >= 4,
        "{sa:?}"
    );
    assert_eq!(sa.counters.frames_in_dropped + sa.counters.frames_out_dropped, 0);

    // The other way round works too (B learnt A from A's ARP request).
    let id_b = b.ping(IP_A, 3, 10, 1000).expect("ping starts");
    let (report, _) = run_ping(&mut b, &mut a, end + 1, 5000, |_| true);
    assert_eq!(report.id, id_b);
    assert_eq!(report.received, 3);
}

#[test]
fn ping_to_nobody_times_out_with_arp_unresolved() {
    let mut a = static_net(MAC_A, IP_A, None);
    let nobody = Ipv4Addr::new(10, 0, 0, 99);
    a.ping(nobody, 2, 100, 500).expect("ping starts");
    let mut arp_requests = 0;
    let mut done_at = None;
    for now in 0..3000 {
        a.poll(now);
        while let Some(frame) = a.take_frame() {
            // Only ARP requests leave (RFC 826 target address = nobody).
            assert_eq!(frame.get(12..14), Some(&[0x08, 0x06][..]));
            assert_eq!(frame.get(38..42), Some(&nobody.octets()[..]));
            arp_requests += 1;
        }
        if a.ping_status().is_some_and(|r| r.done) {
            done_at = Some(now);
            break;
        }
    }
    let report = a.ping_status().expect("a session");
    assert!(report.done);
    assert_eq!((report.sent, report.received), (2, 0));
    assert_eq!(report.rtt, None);
    assert_eq!(report.failure, Some(PingFailure::ArpUnresolved));
    // The second request goes at 100 ms and times out at 600 ms.
    assert_eq!(done_at, Some(600));
    assert!(arp_requests >= 1);
}

#[test]
fn lost_replies_end_with_no_reply() {
    let mut a = static_net(MAC_A, IP_A, None);
    let mut b = static_net(MAC_B, IP_B, None);
    a.ping(IP_B, 2, 50, 200).expect("ping starts");
    // ARP gets through, echo replies do not.
    let (report, _) = run_ping(&mut a, &mut b, 0, 5000, |f| !is_echo_reply(f));
    assert_eq!((report.sent, report.received), (2, 0));
    assert_eq!(report.failure, Some(PingFailure::NoReply));
}

#[test]
fn off_link_target_goes_through_the_gateway() {
    // B is A's gateway; B does not route, so the ping gets no reply, but the
    // echo requests must leave addressed to B's MAC (ARP for the gateway).
    let mut a = static_net(MAC_A, IP_A, Some(IP_B));
    let mut b = static_net(MAC_B, IP_B, None);
    let far = Ipv4Addr::new(192, 0, 2, 7);
    a.ping(far, 1, 10, 100).expect("ping starts");
    let mut echo_to_gateway = 0;
    for now in 0..500 {
        a.poll(now);
        while let Some(frame) = a.take_frame() {
            if frame.get(23) == Some(&1) {
                assert_eq!(frame.get(..6), Some(&MAC_B[..]));
                assert_eq!(frame.get(30..34), Some(&far.octets()[..]));
                echo_to_gateway += 1;
            }
            b.receive_frame(&frame);
        }
        b.poll(now);
        forward(&mut b, &mut a, |_| true);
        if a.ping_status().is_some_and(|r| r.done) {
            break;
        }
    }
    assert_eq!(echo_to_gateway, 1);
    let report = a.ping_status().expect("a session");
    assert_eq!(report.failure, Some(PingFailure::NoReply));
}

#[test]
fn ping_refuses_bad_requests_with_typed_errors() {
    let mut a = static_net(MAC_A, IP_A, None);
    let far = Ipv4Addr::new(192, 0, 2, 1);
    assert_eq!(a.ping(far, 1, 10, 10), Err(NetError::NoRoute));
    for bad in [
        IP_A,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(10, 0, 0, 255),
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::LOCALHOST,
    ] {
        assert_eq!(a.ping(bad, 1, 10, 10), Err(NetError::InvalidTarget), "{bad}");
    }
    assert_eq!(a.ping(IP_B, 0, 10, 10), Err(NetError::InvalidArgument));
    assert_eq!(a.ping(IP_B, 1001, 10, 10), Err(NetError::InvalidArgument));
    assert_eq!(a.ping(IP_B, 1, 10, 0), Err(NetError::InvalidArgument));

    let first = a.ping(IP_B, 1, 10, 10).expect("starts");
    assert_eq!(a.ping(IP_B, 1, 10, 10), Err(NetError::PingBusy));
    for now in 0..100 {
        a.poll(now);
        while a.take_frame().is_some() {}
    }
    let done = a.ping_status().expect("a session");
    assert!(done.done);
    // Once done, the report stays until the next session replaces it.
    let second = a.ping(IP_B, 1, 10, 10).expect("a new session");
    assert_ne!(first, second);
    assert_eq!(a.ping_status().map(|r| (r.id, r.done)), Some((second, false)));

    let mut d = RootNet::new(MAC_B, NetConfig::Dhcp, 0).expect("dhcp");
    assert_eq!(d.ping(IP_A, 1, 10, 10), Err(NetError::NoAddress));
}

#[test]
fn constructor_validates_mac_and_static_config() {
    let net = |addr: Ipv4Net, gateway| NetConfig::Static { addr, gateway };
    let ok = net(Ipv4Net::new(IP_A, 24), None);
    for mac in [[0xff; 6], [0; 6], [0x01, 0, 0x5e, 0, 0, 1]] {
        assert_eq!(RootNet::new(mac, ok, 0).err(), Some(NetError::InvalidMac));
    }
    let bad = [
        net(Ipv4Net::new(IP_A, 0), None),
        net(Ipv4Net::new(IP_A, 33), None),
        net(Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 255), 24), None),
        net(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 24), None),
        net(Ipv4Net::new(Ipv4Addr::new(224, 1, 1, 1), 24), None),
        net(Ipv4Net::new(IP_A, 24), Some(Ipv4Addr::new(10, 0, 1, 1))),
        net(Ipv4Net::new(IP_A, 24), Some(IP_A)),
        net(Ipv4Net::new(IP_A, 24), Some(Ipv4Addr::new(10, 0, 0, 255))),
    ];
    for config in bad {
        assert_eq!(
            RootNet::new(MAC_A, config, 0).err(),
            Some(NetError::InvalidConfig),
            "{config:?}"
        );
    }
    // /32 is a valid host route; /31 has no broadcast address (RFC 3021).
    assert!(RootNet::new(MAC_A, net(Ipv4Net::new(IP_A, 32), None), 0).is_ok());
    assert!(
        RootNet::new(
            MAC_A,
            net(Ipv4Net::new(IP_A, 31), Some(Ipv4Addr::new(10, 0, 0, 0))),
            0
        )
        .is_ok()
    );
}

#[test]
fn status_reports_static_configuration() {
    let a = static_net(MAC_A, IP_A, Some(IP_B));
    let s = a.status();
    assert_eq!(s.mac, MAC_A);
    assert_eq!(s.ipv4, Some(Ipv4Net::new(IP_A, 24)));
    assert_eq!(s.gateway, Some(IP_B));
    assert_eq!(s.source, AddrSource::Static);
    assert_eq!(s.dhcp, DhcpState::Disabled);
    assert_eq!(s.counters, Default::default());
    assert_eq!(Ipv4Net::new(IP_A, 24).to_string(), "10.0.0.1/24");
}

#[test]
fn a_cancelled_ping_ends_at_once_and_frees_the_next() {
    let mut a = static_net(MAC_A, IP_A, None);
    let nobody = Ipv4Addr::new(IP_B.octets()[0], IP_B.octets()[1], IP_B.octets()[2], 77);
    a.ping(nobody, 5, 1000, 1000).expect("ping starts");
    a.poll(0);
    assert_eq!(a.ping(IP_B, 1, 100, 100), Err(NetError::PingBusy));
    a.cancel_ping();
    let r = a.ping_status().expect("a session");
    assert!(r.done, "{r:?}");
    assert_eq!(r.failure, Some(PingFailure::Cancelled));
    assert_eq!(r.received, 0);
    // Cancelling again, or with nothing running, changes nothing.
    a.cancel_ping();
    assert_eq!(
        a.ping_status().map(|r| r.failure),
        Some(Some(PingFailure::Cancelled))
    );
    a.ping(IP_B, 1, 100, 100).expect("the next ping may start");
}
