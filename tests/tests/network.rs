//! The root's network: its own interface on the virtual switch (`net`,
//! `net ping`), and the uplink to its passthrough virtio-net on QEMU's user
//! network (isolated from the host: `restrict=on`), whose DHCP server leases
//! addresses to the root and to a Debian child through the switch.

use qemu_tests::{Machine, images, linux_images};
use serde_json::Value;
use std::time::Duration;

/// How long a Linux boot may take to reach its init under TCG.
const LINUX_BOOT_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn without_an_uplink_the_root_has_a_static_address_and_net_ping_explains_refusals() {
    let mut m = Machine::boot_images(images(), "net-static", "", None, 512);
    m.expect("root: partition 3 (beta) created and started");
    let net = m.hvctl_json("net --json");
    assert_eq!(net["address"], "10.0.2.254", "{net}");
    assert_eq!(net["prefix"], 24, "{net}");
    assert_eq!(net["source"], "static", "{net}");
    assert_eq!(net["uplink"], false, "{net}");
    assert!(
        net["uplink_error"]
            .as_str()
            .unwrap_or("")
            .contains("no virtio-net device"),
        "{net}"
    );
    // The root's interface is a switch port.
    let sw = m.hvctl_json("switch --json");
    let kinds: Vec<&str> = sw["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["root-host"], "{sw}");

    for (cmd, why) in [
        (
            "net ping 2",
            "error: partition 2 (alpha) has no NIC on the switch (create it with --nic)",
        ),
        ("net ping 99", "error: no partition 99"),
        (
            "net ping 10.0.2.254",
            "error: ping 10.0.2.254: target is not a unicast address of another host",
        ),
        (
            "net ping 192.168.9.9",
            "error: ping 192.168.9.9: no route to the target (off-link, no gateway)",
        ),
        ("net ping 10.0.2.300", "error: bad value '10.0.2.300' for TARGET"),
    ] {
        let out = m.hvctl(cmd);
        assert!(out.starts_with(why), "{cmd}: {out}");
    }
    // Nobody has the address: ARP never resolves; the shell answers when the
    // request has timed out, and takes commands again.
    let r = m.hvctl_json("net ping 10.0.2.77 --count 1 --json");
    assert_eq!(r["sent"], 1, "{r}");
    assert_eq!(r["received"], 0, "{r}");
    assert_eq!(r["failure"], "ARP did not resolve the next hop", "{r}");
    let list = m.hvctl_json("list --json");
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
}

/// The address in udhcpc's "lease of A.B.C.D obtained" line.
fn leased(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let rest = l.split("lease of ").nth(1)?;
        let ip = rest.split_whitespace().next()?;
        rest.contains("obtained").then(|| ip.to_string())
    })
}

#[test]
fn over_the_uplink_the_root_and_a_debian_child_get_dhcp_leases_and_ping_each_other() {
    let (images, _) = linux_images();
    let mut m = Machine::boot_with_disks(
        images,
        "net-uplink",
        "",
        None,
        Vec::new(),
        xtask::Network::Isolated,
        768,
    );
    m.expect("root: partition 4 (linux) created and started");
    // The root asks QEMU's DHCP server (10.0.2.2) through the switch and
    // the uplink.
    let net = m.wait_json_every(
        "net --json",
        "a DHCP lease for the root",
        Duration::from_secs(1),
        Duration::from_secs(60),
        |n| n["source"] == "dhcp",
    );
    assert_eq!(net["uplink"], true, "{net}");
    // (An isolated user network offers no router: slirp's `restrict=on`
    // leaves the gateway option out of its DHCP replies.)
    assert_eq!(net["dhcp"], "bound to 10.0.2.2", "{net}");
    let root_ip = net["address"].as_str().expect("address").to_string();
    assert!(root_ip.starts_with("10.0.2."), "{net}");

    m.wait_text_every(
        "console 4",
        "hv-rs linux child: init reached",
        Duration::from_secs(1),
        LINUX_BOOT_DEADLINE,
    );
    // Debian's busybox DHCP client on eth0 (hv_netvsc): a lease from the
    // same server, through netvsp, the switch and the uplink, applied by the
    // initramfs's event script (what `dhcp=eth0` on the command line runs).
    let out = m.run_in_child(
        4,
        "ip link set eth0 up; udhcpc -i eth0 -n -q -t 10 -T 2 -s /etc/udhcpc.script 2>&1",
        "dhcp",
    );
    let child_ip = leased(&out).unwrap_or_else(|| panic!("no lease: {out}"));
    assert!(child_ip.starts_with("10.0.2.") && child_ip != root_ip, "{out}");
    assert!(
        out.lines()
            .any(|l| l == format!("hv-rs linux child: eth0 has {child_ip}/24 by DHCP")),
        "the script applied the lease: {out}"
    );
    let out = m.run_in_child(4, &format!("ping -c 3 -W 5 {root_ip}"), "ping");
    assert!(
        out.contains("3 packets transmitted, 3 packets received"),
        "the child pings the root: {out}"
    );
    // The root learnt the child's address from its ARP and pings it by id.
    let net = m.hvctl_json("net --json");
    let neighbours = net["neighbours"].as_array().expect("neighbours");
    assert!(
        neighbours.iter().any(|n| n["address"] == child_ip.as_str()),
        "{net}"
    );
    let r = m.hvctl_json("net ping 4 --json");
    assert_eq!(r["target"], child_ip.as_str(), "{r}");
    assert_eq!(
        (r["sent"].as_u64(), r["received"].as_u64()),
        (Some(3), Some(3)),
        "{r}"
    );
    assert!(r["rtt_max_ms"].as_u64().is_some(), "{r}");
    // The uplink and the root's port carried the frames.
    let sw = m.hvctl_json("switch --json");
    let port = |kind: &str| -> Value {
        sw["ports"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["kind"] == kind))
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} port: {sw}"))
    };
    for kind in ["uplink", "root-host", "child-nic"] {
        let p = port(kind);
        assert!(p["counters"]["rx_frames"].as_u64() >= Some(2), "{kind}: {p}");
        assert!(p["counters"]["tx_frames"].as_u64() >= Some(2), "{kind}: {p}");
    }
}
