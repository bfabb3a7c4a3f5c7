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
