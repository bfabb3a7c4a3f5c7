//! Hyper-V integration services between the root's providers (`vsp/ic`)
//! and a test OS child answering as Linux's `hv_utils` does
//! (`vsc_drivers::ic`, test OS mode `ic`): negotiation, heartbeats the root
//! counts, the child's KVP pools read by the host and a host value set in
//! the child, time pushed at start and on `timesync ID`, and `shutdown ID`
//! powering the child off through its ACPI sleep port. A child that
//! acknowledges but keeps running is reported and left running; a child
//! without the services gets a refusal and nothing is sent.

use qemu_tests::Machine;
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// Create the IC child (id 4) in `mode` and wait until its services are open.
fn boot_with_ic_child(name: &str, mode: &str) -> Machine {
    let mut m = Machine::boot(name, "", None);
    let created = m.hvctl(&format!(
        "create icx --memory 16M --image testos --mode {mode} --start"
    ));
    assert!(
        created.contains("partition 4 (icx) created and started"),
        "{created}"
    );
    m.wait_text("console 4", "testos icx: ic: 4 services open\n");
    m
}

fn integration(info: &Value, service: &str) -> Value {
    info["integration"][service].clone()
}

/// Now as Windows FILETIME (100 ns since 1601).
fn filetime_now() -> u64 {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
    (unix.as_secs() + 11_644_473_600) * 10_000_000
}

#[test]
fn heartbeat_kvp_timesync_and_shutdown_work_end_to_end() {
    let mut m = boot_with_ic_child("ic-end-to-end", "ic");

    // All four negotiated at the versions Linux 6.1 picks.
    let console = m.wait_text(
        "console 4",
        "testos icx: ic: kvp negotiated framework 3.0, service 4.0\n",
    );
    for line in [
        "testos icx: ic: shutdown negotiated framework 3.0, service 3.2",
        "testos icx: ic: timesync negotiated framework 3.0, service 4.0",
        "testos icx: ic: heartbeat negotiated framework 3.0, service 3.0",
    ] {
        assert!(console.contains(line), "{line:?} missing:\n{console}");
    }

    // Heartbeats flow and the sequence advances.
    let first = m.wait_json("info 4 --json", "two heartbeats answered", |v| {
        integration(v, "heartbeat")["acked"].as_u64() >= Some(2)
    });
    let seq1 = integration(&first, "heartbeat")["last_sequence"]
        .as_u64()
        .expect("a sequence");
    let later = m.wait_json("info 4 --json", "another heartbeat", |v| {
        integration(v, "heartbeat")["last_sequence"].as_u64() > Some(seq1)
    });
    assert_eq!(integration(&later, "heartbeat")["missed"], 0, "{later}");
    assert_eq!(integration(&later, "heartbeat")["violations"], 0, "{later}");
    assert_eq!(integration(&later, "heartbeat")["ready"], true, "{later}");

    // The guest's pools, enumerated by the host.
    let kvp = m.wait_json("kvp 4 --json", "the guest's host name", |v| {
        v["pools"]["auto"]["FullyQualifiedDomainName"] == "testos-icx"
    });
    assert_eq!(kvp["pools"]["auto"]["OSName"], "hv-rs testos", "{kvp}");
    assert_eq!(kvp["pools"]["guest"]["Mode"], "ic", "{kvp}");
    // What the root keeps of them is counted against its bound.
    let info = m.hvctl_json("info 4 --json");
    let pairs = &info["quotas"]["kvp_pairs"];
    assert!(pairs["used"].as_u64() >= Some(4), "{info}");
    assert_eq!(pairs["limit"], 160, "{info}");

    // A host value reaches the guest and reads back.
    let set = m.hvctl("kvp 4 set Owner ops-team");
    assert!(set.contains("set 'Owner' in the external pool"), "{set}");
    m.wait_text("console 4", "testos icx: ic: kvp external Owner = ops-team\n");
    m.wait_json("kvp 4 --json", "the host value in the external pool", |v| {
        v["pools"]["external"]["Owner"] == "ops-team"
    });

    // Time: pushed at start, and again on request; it is the host's (the
    // RTC QEMU gives the root is the host's UTC clock).
    let console = m.wait_text("console 4", "testos icx: ic: time set to ");
    let times: Vec<u64> = console
        .lines()
        .filter_map(|l| l.split("ic: time set to ").nth(1))
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    assert_eq!(times.len(), 1, "one push at start:\n{console}");
    let skew = times[0].abs_diff(filetime_now());
    assert!(
        skew < 600 * 10_000_000,
        "guest time {} is {skew} away from the host's",
        times[0]
    );
    let pushed = m.hvctl("timesync 4");
    assert!(pushed.contains("pushed"), "{pushed}");
    m.wait_json("info 4 --json", "the second sample answered", |v| {
        integration(v, "timesync")["acked"].as_u64() >= Some(2)
    });
    // The guest prints its line after it answered: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let console = m.hvctl("console 4");
        let lines = console.lines().filter(|l| l.contains("ic: time set to")).count();
        if lines == 2 && console.ends_with('\n') {
            break;
        }
        assert!(lines <= 2, "{console}");
        assert!(
            std::time::Instant::now() < deadline,
            "one time line only:\n{console}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // A child without the services: refused, nothing sent.
    let refused = m.hvctl("shutdown 2");
    assert!(
        refused.contains("has not negotiated the shutdown service"),
        "{refused}"
    );
    assert_eq!(m.hvctl_json("info 2 --json")["state"], "running");

    // Graceful shutdown: the guest acknowledges and powers off.
    let asked = m.hvctl("shutdown 4");
    assert!(
        asked.contains("shutdown requested through the shutdown service"),
        "{asked}"
    );
    let info = m.wait_json("info 4 --json", "the child to power off", |v| {
        v["state"] == "stopped"
    });
    assert_eq!(info["last_exit"], "powered off by the guest", "{info}");
    assert!(info["crash"].is_null(), "{info}");
    assert!(
        m.hvctl("console 4")
            .contains("testos icx: ic shutdown: powering off"),
        "no power-off line"
    );
    // Stopped: nothing more to ask.
    let again = m.hvctl("shutdown 4");
    assert!(again.contains("is not running"), "{again}");
}

#[test]
fn a_child_that_ignores_shutdown_is_reported_and_left_running() {
    let mut m = boot_with_ic_child("ic-stubborn", "ic-stubborn");
    m.wait_json("info 4 --json", "shutdown negotiated", |v| {
        integration(v, "shutdown")["ready"] == true
    });
    let asked = m.hvctl("shutdown 4");
    assert!(asked.contains("requested"), "{asked}");
    m.wait_text("console 4", "testos icx: ic shutdown: acknowledged, staying up\n");
    m.expect(
        "root: partition 4 (icx) did not power off within 30 s of the shutdown request; it is still running",
    );
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["state"], "running", "{info}");
    assert!(
        integration(&info, "shutdown")["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("acknowledged")),
        "{info}"
    );
}
