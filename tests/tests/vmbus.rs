//! VMBus control plane between a real child and the root, over SynIC: the
//! test OS's VMBus client connects to the root worker's server, takes the
//! echo device's offer, builds a ring GPADL, opens and closes the channel,
//! tears the GPADL down and unloads. Both sides log each step; the test
//! checks them against each other.

use qemu_tests::Machine;

fn session(mode: &str, version: &str) {
    let mut m = Machine::boot(&format!("vmbus-{mode}"), "", None);
    m.wait_json("info 2 --json", "alpha to halt", |v| v["halted_vps"] == 1);
    let created = m.hvctl(&format!(
        "create client --memory 8M --image testos --mode {mode} --start"
    ));
    assert!(
        created.contains("partition 4 (client) created and started"),
        "{created}"
    );
    let console = m.wait_text("console 4", "vmbus done");
    for step in [
        format!("vmbus connected at version {version}"),
        "vmbus offer relid 1 (hv-rs echo dev), signal connection 0x2001".to_string(),
        "vmbus all offers in; gpadl 0xe1e10 for relid 1".to_string(),
        "vmbus gpadl 0xe1e10 created, status 0x0".to_string(),
        "vmbus channel 1 open result 0x0".to_string(),
        "vmbus echo: 200 of 200 round trips ok".to_string(),
        "vmbus gpadl 0xe1e10 torn down".to_string(),
        "vmbus unloaded; vmbus done".to_string(),
    ] {
        assert!(console.contains(&step), "missing {step:?} in\n{console}");
    }
    assert!(!console.contains("failed"), "{console}");
    m.expect("partition 4 vmbus: unloaded");
    let root = m.console().to_string();
    for step in [
        format!("root: partition 4 vmbus: connected at version {version}"),
        "root: partition 4 vmbus: channel 1 opened (gpadl 0xe1e10, 4 pages, host-to-guest ring at page 2)"
            .to_string(),
        "root: partition 4 vmbus: channel 1 closed".to_string(),
    ] {
        assert!(
            root.contains(&step),
            "missing {step:?} in the root console:\n{root}"
        );
    }
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["vmbus_violations"], 0, "{info}");
    assert_eq!(info["replies_refused"], 0, "{info}");
    assert_eq!(info["failed_hypercalls"], 0, "{info}");
}

#[test]
fn linux_version_list_negotiates_5_3() {
    session("vmbus", "5.3");
}

#[test]
fn a_2_4_client_connects_on_connection_1() {
    session("vmbus-2.4", "2.4");
}

#[test]
fn channels_shows_live_ring_state() {
    let mut m = Machine::boot("vmbus-channels", "", None);
    m.wait_json("info 2 --json", "alpha to halt", |v| v["halted_vps"] == 1);
    // Before the child connects: offered, no version.
    let created = m.hvctl("create holder --memory 8M --image testos --mode vmbus-hold");
    assert!(created.contains("partition 4 (holder) created"), "{created}");
    let before = m.hvctl_json("channels 4 --json");
    assert_eq!(before["version"], "", "{before}");
    assert_eq!(before["channels"][0]["state"], "offered", "{before}");
    assert!(m.hvctl("start 4").contains("started"));
    m.wait_text("console 4", "holding channel 1 open");
    let v = m.hvctl_json("channels 4 --json");
    assert_eq!(v["version"], "5.3", "{v}");
    let ch = &v["channels"][0];
    assert_eq!(ch["relid"], 1, "{v}");
    assert_eq!(ch["state"], "open", "{v}");
    assert_eq!(ch["connection_id"], 0x2001, "{v}");
    assert_eq!(ch["downstream_page_offset"], 2, "{v}");
    assert_eq!(ch["packets"], 200, "{v}");
    assert_eq!(ch["broken"], "", "{v}");
    for ring in ["guest_to_host", "host_to_guest"] {
        let r = &ch[ring];
        assert_eq!(r["bytes_pending"], 0, "{ring} drained: {v}");
        assert_eq!(r["read_index"], r["write_index"], "{ring}: {v}");
        assert_eq!(r["data_size"], 4096, "{ring}: {v}");
        assert_eq!(r["interrupt_mask"], 0, "{ring}: {v}");
        assert!(r["write_index"].as_u64().unwrap() > 0, "{ring} was used: {v}");
    }
    // The child signals once per packet (its ring was empty each time), the
    // root once per echo.
    assert_eq!(ch["signals_received"], 200, "{v}");
    assert_eq!(ch["signals_sent"], 200, "{v}");
    let text = m.hvctl("channels 4");
    assert!(text.contains("partition 4 VMBus: version 5.3"), "{text}");
    assert!(text.contains("relid 1: open"), "{text}");
    assert!(text.contains("200 packets echoed"), "{text}");
    // Bad input: a clear error, nothing changed.
    assert!(
        m.hvctl("channels 99").contains("error: no partition 99"),
        "channels 99"
    );
    assert!(
        m.hvctl("channels 1")
            .contains("error: the root partition is the VMBus host")
    );
    assert!(m.hvctl("channels").contains("error: missing partition id"));
    assert!(
        m.hvctl("rescind 4 9")
            .contains("error: partition 4 has no channel 9")
    );
    assert!(m.hvctl("rescind 99 1").contains("error: no partition 99"));
    assert!(m.hvctl("rescind 4 0").contains("relid from 1 to 2047"));
    let after = m.hvctl_json("channels 4 --json");
    assert_eq!(
        after["channels"][0]["state"], "open",
        "a refused command changed nothing: {after}"
    );
}

/// The QEMU half of the conformance suite (docs/vmbus.md): the test OS runs
/// each case against the root's real server over SynIC, one line per case.
#[test]
fn conformance_cases_pass_between_a_real_child_and_the_root() {
    let mut m = Machine::boot("vmbus-conformance", "", None);
    m.wait_json("info 2 --json", "alpha to halt", |v| v["halted_vps"] == 1);
    let created = m.hvctl("create conform --memory 8M --image testos --mode vmbus-conformance --start");
    assert!(
        created.contains("partition 4 (conform) created and started"),
        "{created}"
    );
    // Q-RES-01 needs the operator: rescind the open channel, then offer anew.
    m.wait_text("console 4", "Q-RES-01 waiting for rescind");
    let before = m.hvctl_json("channels 4 --json");
    assert_eq!(before["channels"][0]["relid"], 1, "{before}");
    let out = m.hvctl("rescind 4 1");
    assert!(out.contains("partition 4: channel 1 rescinded"), "{out}");
    m.wait_text("console 4", "Q-RES-01 waiting for a new offer");
    // The child's RELID_RELEASED freed relid 1: the new offer takes it again
    // (the lowest free relid), with a new instance GUID.
    let out = m.hvctl("offer 4");
    assert!(
        out.contains("partition 4: echo device offered on relid 1"),
        "{out}"
    );
    let after = m.hvctl_json("channels 4 --json");
    let instance = |v: &serde_json::Value| v["channels"][0]["instance"].clone();
    assert!(instance(&before).is_string(), "{before}");
    assert_ne!(instance(&before), instance(&after), "{before} vs {after}");
    // The summary line, complete (up to its newline).
    let console = m.wait_text("console 4", " failed\n");
    println!("{console}");
    assert!(console.contains("conformance: 20 passed, 0 failed"), "{console}");
    assert_eq!(
        console.lines().filter(|l| l.starts_with("PASS Q-")).count(),
        20,
        "{console}"
    );
    // The three bad messages of Q-BAD-01, the unknown relid of Q-OPN-05,
    // the VP the child does not have of Q-OPN-06, the out-of-range GPADLs of Q-GPA-04 and Q-GPA-05 and the three refused
    // MODIFYCHANNELs of Q-MOD-01 were refused by the server (and counted),
    // nothing else.
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["vmbus_violations"], 10, "{info}");
    assert_eq!(info["state"], "running", "{info}");
    // Q-BAD-02's corrupt ring stopped that channel (and only it).
    assert_eq!(info["rings_broken"], 1, "{info}");
}
