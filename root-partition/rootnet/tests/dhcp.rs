//! DHCP (RFC 2131) against a minimal in-test server built from smoltcp's wire
//! types, then a ping to the server's host over the leased address.

mod common;

use common::*;
use rootnet::{AddrSource, DhcpState, Ipv4Net, NetConfig, RootNet};

/// One ms: the client polls, the server and B see its frames, B polls.
fn step_with_server(client: &mut RootNet, b: &mut RootNet, server: &mut Server, now: u64) {
    client.poll(now);
    while let Some(frame) = client.take_frame() {
        if let Some(reply) = server.handle(&frame) {
            client.receive_frame(&reply);
        }
        b.receive_frame(&frame);
    }
    b.poll(now);
    forward(b, client, |_| true);
}

#[test]
fn dhcp_client_takes_the_offered_lease_and_can_ping() {
    let mut client = RootNet::new(CLIENT_MAC, NetConfig::Dhcp, 0).expect("dhcp");
    let s = client.status();
    assert_eq!(
        (s.ipv4, s.source, s.dhcp),
        (None, AddrSource::None, DhcpState::Discovering)
    );

    // B is the host the server runs on, so the leased address can ping it.
    let mut b = static_net(MAC_B, SERVER_IP, None);
    let mut server = Server::new(3600);
    let mut bound_at = None;
    for now in 0..100 {
        step_with_server(&mut client, &mut b, &mut server, now);
        if client.status().ipv4.is_some() {
            bound_at = Some(now);
            break;
        }
    }
    assert!(bound_at.is_some(), "never bound: {:?}", client.status());
    assert_eq!((server.offers, server.acks), (1, 1));
    let s = client.status();
    assert_eq!(s.ipv4, Some(Ipv4Net::new(OFFERED, 24)));
    assert_eq!(s.gateway, Some(SERVER_IP));
    assert_eq!(s.source, AddrSource::Dhcp);
    assert_eq!(s.dhcp, DhcpState::Bound { server: SERVER_IP });

    client.ping(SERVER_IP, 3, 20, 500).expect("ping starts");
    let start = bound_at.unwrap_or(0) + 1;
    for now in start..start + 2000 {
        step_with_server(&mut client, &mut b, &mut server, now);
        if client.ping_status().is_some_and(|r| r.done) {
            break;
        }
    }
    let report = client.ping_status().expect("session");
    assert!(report.done);
    assert_eq!(report.received, 3, "{report:?}");
}

#[test]
fn lease_expiry_clears_the_address_and_restarts_discovery() {
    let mut client = RootNet::new(CLIENT_MAC, NetConfig::Dhcp, 0).expect("dhcp");
    let mut b = static_net(MAC_B, SERVER_IP, None);
    let mut server = Server::new(60);
    for now in 0..100 {
        step_with_server(&mut client, &mut b, &mut server, now);
    }
    assert_eq!(client.status().source, AddrSource::Dhcp);
    // A long ping that the lease loss interrupts.
    client.ping(SERVER_IP, 1000, 1000, 500).expect("ping starts");

    // The server goes away; renew (T1) and rebind (T2) get no answer and the
    // lease runs out after 60 s (RFC 2131 §4.4.5).
    server.answering = false;
    for now in (100..70_000).step_by(250) {
        step_with_server(&mut client, &mut b, &mut server, now);
    }
    let s = client.status();
    assert_eq!((s.ipv4, s.gateway), (None, None));
    assert_eq!((s.source, s.dhcp), (AddrSource::None, DhcpState::Discovering));
    let report = client.ping_status().expect("session");
    assert!(report.done);
    assert_eq!(report.failure, Some(rootnet::PingFailure::AddressLost));
}

/// Found by fuzz_rootnet: an OFFER/ACK from IPv4 source 0.0.0.0 made it the
/// lease's server, and at renewal (T1) smoltcp asserted on sending there.
/// A hostile child on the switch must not be able to stop the root.
#[test]
fn a_server_answering_from_0_0_0_0_gets_nowhere() {
    let mut client = RootNet::new(CLIENT_MAC, NetConfig::Dhcp, 0).expect("dhcp");
    let mut b = static_net(MAC_B, SERVER_IP, None);
    let mut server = Server::new(60);
    server.source_ip = std::net::Ipv4Addr::UNSPECIFIED;
    for now in (0..70_000).step_by(50) {
        step_with_server(&mut client, &mut b, &mut server, now);
    }
    let s = client.status();
    assert!(server.offers >= 1, "the server was asked");
    assert_eq!(
        (s.ipv4, s.source, s.dhcp),
        (None, AddrSource::None, DhcpState::Discovering)
    );
    assert!(s.counters.frames_in_malformed >= 1, "{s:?}");
}

/// Found by fuzz_rootnet: a subnet mask of 0.0.0.0 gave a /0 lease (every
/// address on-link). Refused: the client asks again.
#[test]
fn a_lease_with_a_zero_mask_is_refused() {
    let mut client = RootNet::new(CLIENT_MAC, NetConfig::Dhcp, 0).expect("dhcp");
    let mut b = static_net(MAC_B, SERVER_IP, None);
    let mut server = Server::new(3600);
    server.mask = std::net::Ipv4Addr::UNSPECIFIED;
    for now in (0..30_000).step_by(50) {
        step_with_server(&mut client, &mut b, &mut server, now);
    }
    let s = client.status();
    assert!(server.acks >= 1, "the lease was offered and acknowledged");
    assert!(server.offers >= 2, "and asked for again after the refusal");
    assert_eq!(
        (s.ipv4, s.source, s.dhcp),
        (None, AddrSource::None, DhcpState::Discovering)
    );
}
