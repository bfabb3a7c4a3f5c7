//! Debian's stock Linux 6.1 kernel as a child partition (partition 4,
//! `linux` in the manifest, 256 MiB): it detects Hyper-V, connects
//! `hv_vmbus` to the root's VMBus server, binds `hv_utils` to the root's
//! integration services, runs its shell on `console 4`, powers off on
//! `shutdown 4` and comes back from its own `reboot`. The kernel and
//! initramfs come from `cargo xtask linux` (Debian packages, cached under
//! `target/linux/`).

use qemu_tests::{Machine, linux_images};
use serde_json::Value;
use std::time::Duration;

/// How long a Linux boot may take to reach its init: under TCG on a loaded
/// 2-core machine it has taken 45 s alone.
const LINUX_BOOT_DEADLINE: Duration = Duration::from_secs(300);

/// Wait for a whole line in the child's console, polling once a second
/// (each poll copies its whole console buffer over the root's serial line).
fn wait_console(m: &mut Machine, needle: &str) -> String {
    m.wait_text_every("console 4", needle, Duration::from_secs(1), LINUX_BOOT_DEADLINE)
}

/// The byte that detaches the root's console from a child (Ctrl-]).
const DETACH: u8 = 0x1D;

/// Boot the machine with the Linux child and wait for its init.
fn boot_linux(name: &str) -> Machine {
    let (images, _) = linux_images();
    let mut m = Machine::boot_images(images, name, "", None, 768);
    m.expect("root: partition 4 (linux) created and started");
    wait_console(&mut m, "hv-rs linux child: init reached");
    m
}

/// Attach the root's console to the child, run `command` in its shell and
/// return what it printed between two markers; detach again.
fn run_in_guest(m: &mut Machine, command: &str, tag: &str) -> String {
    run_in(m, 4, command, tag)
}

/// [`run_in_guest`] on partition `id`.
fn run_in(m: &mut Machine, id: u64, command: &str, tag: &str) -> String {
    m.run_in_child(id, command, tag)
}

fn heartbeat(info: &Value) -> &Value {
    &info["integration"]["heartbeat"]
}

#[test]
fn debian_boots_binds_its_hyperv_drivers_and_powers_off_on_request() {
    let mut m = boot_linux("linux-boot");
    let (_, linux) = linux_images();

    // What the kernel said about the platform, asked in its own shell.
    let log = run_in_guest(
        &mut m,
        "dmesg | grep -E 'Hypervisor detected|Hyper-V: (privilege|features)|Vmbus version|IC version|registering driver hv_'",
        "platform",
    );
    for line in [
        "Hypervisor detected: Microsoft Hyper-V",
        "Hyper-V: privilege flags low 0x",
        "hv_vmbus: Vmbus version:5.3",
        "hv_utils: Shutdown IC version 3.2",
        "hv_utils: TimeSync IC version 4.0",
        "hv_utils: Heartbeat IC version 3.0",
        "hv_vmbus: registering driver hv_storvsc",
        "hv_vmbus: registering driver hv_netvsc",
    ] {
        assert!(log.contains(line), "{line:?} not in the guest's dmesg:\n{log}");
    }
    let bad = run_in_guest(
        &mut m,
        "dmesg | grep -c -E 'unchecked MSR|Call Trace|WARNING:|BUG:'",
        "clean",
    );
    assert!(
        bad.lines().any(|l| l.trim() == "0"),
        "the guest logged trouble:\n{bad}"
    );
    // Its clock is the host's: the RTC at boot, then time sync 4.0 samples
    // stamped with its reference time.
    let guest_now: u64 = run_in_guest(&mut m, "date +%s", "clock")
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .expect("a time");
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert!(
        guest_now.abs_diff(host_now) < 120,
        "guest clock {guest_now}, host {host_now}"
    );
    let release = run_in_guest(&mut m, "uname -r", "release");
    assert!(
        release.lines().any(|l| l.trim() == linux.kernel_release),
        "{release}"
    );

    // hv_storvsc binds the root's synthetic SCSI controller: the 8 MiB RAM
    // disk is sda, and data written through it reads back.
    let size = run_in_guest(&mut m, "cat /sys/block/sda/size", "disk");
    assert!(size.lines().any(|l| l.trim() == "16384"), "{size}");
    let back = run_in_guest(
        &mut m,
        "echo hv-rs-disk-check | dd of=/dev/sda bs=512 seek=100 conv=fsync 2>/dev/null; \
         echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/sda bs=512 skip=100 count=1 2>/dev/null | head -c 17; echo",
        "dd",
    );
    assert!(back.lines().any(|l| l.trim() == "hv-rs-disk-check"), "{back}");

    // hv_netvsc binds the root's synthetic NIC: eth0 carries the MAC the
    // root assigned (Hyper-V's OUI) and the link the NIC reports.
    let nic = run_in_guest(
        &mut m,
        "ip link set eth0 up; sleep 1; cat /sys/class/net/eth0/address /sys/class/net/eth0/carrier /sys/class/net/eth0/mtu",
        "nic",
    );
    let lines: Vec<&str> = nic.lines().map(str::trim).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("00:15:5d:") && l.len() == 17),
        "{nic}"
    );
    assert!(lines.contains(&"1") && lines.contains(&"1500"), "{nic}");

    // The hypercall page is in use (HvPostMessage/HvSignalEvent) and the
    // guest identified itself.
    let info = m.hvctl_json("info 4 --json");
    assert!(info["exits"]["vmmcall"].as_u64() > Some(4), "{info}");
    assert_ne!(info["guest_os_id"], 0, "{info}");

    // COM1 raises IRQ 4 through the I/O APIC the root models for a Linux
    // child: the 8250 driver takes interrupts instead of polling from a
    // timer, the guest programs the I/O APIC through its MMIO page, every
    // interrupt it fired reached the APIC, and an idle child makes no port
    // accesses (it polled COM1 400-900 times a second before).
    let irq = run_in_guest(&mut m, "grep ttyS0 /proc/interrupts", "irq");
    let taken: u64 = irq
        .split_whitespace()
        .skip(1)
        .map_while(|w| w.parse::<u64>().ok())
        .sum();
    assert!(
        irq.contains("IO-APIC") && irq.contains("4-edge") && taken > 0,
        "{irq}"
    );
    let info = m.hvctl_json("info 4 --json");
    assert!(info["interrupts_asserted"].as_u64() > Some(0), "{info}");
    assert!(info["ioapic_accesses"].as_u64() > Some(0), "{info}");
    assert_eq!(info["interrupts_dropped"], 0, "{info}");
    let port_exits = |v: &Value| v["exits"]["ioio"].as_u64().expect("ioio exits");
    let before = port_exits(&info);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let idle = port_exits(&m.hvctl_json("info 4 --json")) - before;
    assert!(idle < 30, "{idle} port exits in 3 s of idling");

    // Its channels, open, with live ring state.
    let channels = m.hvctl("channels 4");
    for needle in [
        "version 5.3",
        "service: shutdown",
        "service: timesync",
        "service: heartbeat",
        "service: kvp",
        "guest->host: read",
    ] {
        assert!(channels.contains(needle), "{needle:?} not in:\n{channels}");
    }

    // Heartbeats answered by hv_utils, the sequence advancing.
    let first = m.wait_json("info 4 --json", "heartbeats", |v| {
        heartbeat(v)["acked"].as_u64() >= Some(2)
    });
    let seq = heartbeat(&first)["last_sequence"].as_u64().expect("a sequence");
    let later = m.wait_json("info 4 --json", "a later heartbeat", |v| {
        heartbeat(v)["last_sequence"].as_u64() > Some(seq)
    });
    assert_eq!(heartbeat(&later)["missed"], 0, "{later}");

    // KVP through hv_kvp_daemon: the guest's host name and OS.
    let kvp = m.wait_json("kvp 4 --json", "the guest's KVP auto pool", |v| {
        v["pools"]["auto"]["FullyQualifiedDomainName"] == "debian-child"
    });
    assert_eq!(kvp["pools"]["auto"]["OSName"], "Debian GNU/Linux", "{kvp}");
    assert_eq!(
        kvp["pools"]["auto"]["OSBuildNumber"],
        linux.kernel_release.as_str(),
        "{kvp}"
    );

    // Bad images are refused with the reason, and nothing is created.
    let partitions = |v: &Value| -> Vec<(u64, String)> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|p| (p["id"].as_u64().unwrap_or(0), p["name"].to_string()))
            .collect()
    };
    let before = partitions(&m.hvctl_json("list --json"));
    for (line, why) in [
        (
            "create tiny --memory 16M --image linux.kernel --initrd linux.initrd",
            "kernel too big for the memory given",
        ),
        (
            "create small --memory 70M --image linux.kernel --initrd linux.initrd",
            "does not fit",
        ),
        (
            "create junk --memory 64M --image linux.initrd",
            "is neither an ELF",
        ),
        (
            "create huge --memory 3G --image linux.kernel",
            "not enough free memory",
        ),
    ] {
        let out = m.hvctl(line);
        assert!(out.contains("error:") && out.contains(why), "{line}: {out}");
    }
    assert_eq!(partitions(&m.hvctl_json("list --json")), before);

    // A graceful shutdown through the shutdown IC.
    let asked = m.hvctl("shutdown 4");
    assert!(asked.contains("shutdown requested"), "{asked}");
    let info = m.wait_json("info 4 --json", "Linux to power off", |v| v["state"] == "stopped");
    assert_eq!(info["last_exit"], "powered off by the guest", "{info}");
    assert!(
        m.hvctl("console 4").contains("reboot: Power down"),
        "no 'reboot: Power down' from the guest"
    );
    // The other children never noticed.
    let list = m.hvctl_json("list --json");
    for p in list.as_array().expect("a list") {
        if p["name"] == "alpha" || p["name"] == "beta" {
            assert_eq!(p["state"], "running", "{list}");
        }
    }
}

#[test]
fn a_reboot_inside_debian_comes_back_and_reconnects() {
    let mut m = boot_linux("linux-reboot");
    let before = m.hvctl_json("info 4 --json");
    assert_eq!(before["guest_reboots"], 0, "{before}");
    m.send_line("console 4");
    m.expect("[attached to partition 4's console; Ctrl-] detaches]");
    m.send_line("reboot -f");
    m.expect("root: partition 4 (linux) reset by the guest: rebooting");
    m.send_raw(&[DETACH]);
    m.expect("[detached]");
    // Booted again, bus reconnected, services renegotiated.
    let info = m.wait_json_every(
        "info 4 --json",
        "the second boot's heartbeats",
        Duration::from_secs(1),
        LINUX_BOOT_DEADLINE,
        |v| {
            v["guest_reboots"] == 1
                && heartbeat(v)["ready"] == true
                && heartbeat(v)["acked"].as_u64() >= Some(1)
        },
    );
    assert_eq!(info["state"], "running", "{info}");
    assert!(info["vmbus_resets"].as_u64() >= Some(1), "{info}");
    wait_console(&mut m, "hv-rs linux child: init reached");
    let channels = m.hvctl("channels 4");
    assert!(channels.contains("version 5.3"), "{channels}");
    let log = run_in_guest(&mut m, "dmesg | grep -c 'Vmbus version:5.3'", "again");
    assert!(log.lines().any(|l| l.trim() == "1"), "{log}");
}

#[test]
fn a_kernel_panic_stops_only_that_child_with_the_reason() {
    let mut m = boot_linux("linux-panic");
    m.send_line("console 4");
    m.expect("[attached to partition 4's console; Ctrl-] detaches]");
    m.send_line("echo c > /proc/sysrq-trigger");
    m.expect("root: partition 4 (linux) crashed: guest crash report");
    m.send_raw(&[DETACH]);
    m.expect("[detached]");
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["state"], "crashed", "{info}");
    let reason = info["crash"].as_str().unwrap_or_default();
    assert!(
        reason.contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{info}"
    );
    // Only that child: the root answers and the others run on.
    let list = m.hvctl_json("list --json");
    for p in list.as_array().expect("a list") {
        if p["name"] == "alpha" || p["name"] == "beta" {
            assert_eq!(p["state"], "running", "{list}");
        }
    }
    assert_eq!(m.hvctl_json("hv status --json")["present"], true);
}

#[test]
fn two_debian_children_ping_each_other_through_the_switch() {
    let (images, _) = linux_images();
    let mut m = Machine::boot_images(images, "linux-ping", "", None, 1100);
    m.expect("root: partition 4 (linux) created and started");
    let created = m.hvctl(&format!(
        "create second --memory 256M --image linux.kernel --initrd linux.initrd --cmdline \"{}\" --nic --start",
        qemu_tests::LINUX_CMDLINE.replace("hostname=debian-child", "hostname=second")
    ));
    assert!(
        created.contains("partition 5 (second) created and started"),
        "{created}"
    );
    wait_console(&mut m, "hv-rs linux child: init reached");
    m.wait_text_every(
        "console 5",
        "hv-rs linux child: init reached",
        Duration::from_secs(1),
        LINUX_BOOT_DEADLINE,
    );
    run_in(
        &mut m,
        4,
        "ip addr add 10.7.0.4/24 dev eth0; ip link set eth0 up",
        "up4",
    );
    run_in(
        &mut m,
        5,
        "ip addr add 10.7.0.5/24 dev eth0; ip link set eth0 up",
        "up5",
    );
    let ping = run_in(&mut m, 4, "ping -c 3 -W 5 10.7.0.5", "ping");
    assert!(
        ping.contains("3 packets transmitted, 3 packets received"),
        "{ping}"
    );
    // Both NICs are switch ports with the frames counted.
    let sw = m.hvctl_json("switch --json");
    let ports: Vec<&Value> = sw["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter(|p| p["kind"] == "child-nic")
        .collect();
    assert_eq!(ports.len(), 2, "{sw}");
    for p in ports {
        assert!(p["counters"]["rx_frames"].as_u64() >= Some(3), "{sw}");
        assert!(p["counters"]["tx_frames"].as_u64() >= Some(3), "{sw}");
    }
}
