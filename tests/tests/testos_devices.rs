//! The test OS as a guest of the root's synthetic devices (modes `disk`,
//! `disk-verify`, `disk-multi` (storvsp sub-channels), `net`, `net-ping` and the `*-hostile-*` attackers in
//! `tests/guests/testos/src/{devices,device_hostile}.rs`): storvsc against
//! storvsp on a child disk of the root's passthrough virtio-blk, netvsc
//! against netvsp on the root's virtual switch, and attacks on both that
//! must stop or refuse only the attacker's channel or request.

use qemu_tests::{Machine, created_partition, images, scratch};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A GPT child-disk image with these disks (MiB), in a directory of its own.
fn child_disk_image(test: &str, disks: &[(&str, u64)]) -> (PathBuf, PathBuf) {
    let dir = scratch(test);
    let path = dir.join("child-disks.img");
    let named: Vec<(&str, u64)> = disks.iter().map(|(n, mib)| (*n, mib << 20)).collect();
    xtask::disk_image::ensure_child_disks(&path, 64 << 20, &named).expect("child-disk image");
    (dir, path)
}

/// Boot with the child-disk image as the root's `vdb`; wait for the root's
/// shell (the manifest children alpha = 2 and beta = 3 are up).
fn boot(name: &str, image: &Path) -> Machine {
    let mut m = Machine::boot_with_disks(
        images(),
        name,
        "",
        None,
        vec![image.to_path_buf()],
        xtask::Network::None,
        512,
    );
    m.expect("root: partition 3 (beta) created and started");
    m
}

/// Create and start a 16 MiB test OS child; returns its id.
fn create(m: &mut Machine, name: &str, mode: &str, extra: &str) -> u64 {
    let out = m.hvctl(&format!(
        "create {name} --memory 16M --image testos --mode {mode} {extra} --start"
    ));
    let id = created_partition(&out).unwrap_or_else(|| m.fail_with(&format!("create {name}: {out}")));
    assert!(out.contains(&format!("({name}) created and started")), "{out}");
    id
}

/// Wait for child `id`'s console to have a whole line containing `needle`;
/// fail at once on a whole line containing `fail`, or a panic.
fn wait_line(m: &mut Machine, id: u64, needle: &str, fail: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let out = m.hvctl(&format!("console {id}"));
        if qemu_tests::contains_line(&out, needle) {
            return out;
        }
        if qemu_tests::contains_line(&out, fail) || out.contains("panic") {
            m.fail_with(&format!("child {id} printed {fail:?}:\n{out}"));
        }
        if start.elapsed() > qemu_tests::BOOT_DEADLINE {
            m.fail_with(&format!("child {id}: no {needle:?}:\n{out}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn destroy(m: &mut Machine, id: u64) {
    m.hvctl(&format!("stop {id}"));
    let out = m.hvctl(&format!("destroy {id}"));
    assert!(out.contains("destroyed"), "{out}");
}

/// Channel `relid`'s entry in `channels ID --json`, by interface GUID text.
fn channel_of<'a>(v: &'a Value, interface: &str) -> &'a Value {
    v["channels"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["interface"] == interface))
        .unwrap_or_else(|| panic!("no {interface} channel in {v}"))
}

/// The SCSI controller's and the NIC's interface types as `channels`
/// prints them (the GUIDs' wire bytes in order).
const SCSI: &str = "d96361ba-a104-294d-b605-72e2ffb1dc7f";
const NIC: &str = "635161f8-3edf-c546-913f-f2d2f965ed0e";

#[test]
fn disk_mode_writes_and_a_second_boot_on_the_disk_reads_it_back_while_another_disk_stays_clean() {
    let (dir, image) = child_disk_image("testos-disk", &[("one", 8), ("two", 8)]);
    let mut m = boot("testos-disk", &image);
    let a = create(&mut m, "writer", "disk:0xA11CE", "--disk one");
    let out = wait_line(&mut m, a, "disk: PASS", "disk: FAIL");
    assert!(
        qemu_tests::contains_line(&out, "disk: capacity 16384 sectors of 512"),
        "{out}"
    );
    assert!(
        qemu_tests::contains_line(
            &out,
            "disk: prior contents of 107 blocks: 107 zero, 0 pattern (seeds: none), 0 other"
        ),
        "a fresh disk is zero: {out}"
    );
    assert!(
        qemu_tests::contains_line(&out, "disk: wrote 107 blocks, verified"),
        "{out}"
    );
    // 200 pages in descending order: 200 segments, which the root splits
    // over two virtio-blk requests, each page's bytes still in place.
    assert!(
        qemu_tests::contains_line(&out, "disk: 200 scattered pages written and read back in place"),
        "{out}"
    );
    let ch = m.hvctl_json(&format!("channels {a} --json"));
    let scsi = channel_of(&ch, SCSI);
    // (The device's own "state" field follows the channel's.)
    assert_eq!(scsi["handshake"], "ready", "{ch}");
    assert_eq!(
        scsi["state"], "open",
        "the channel's state, not a device field: {ch}"
    );
    assert_eq!(scsi["broken"], "", "{ch}");
    assert_eq!(scsi["srb_failures"], 0, "{ch}");
    assert_eq!(scsi["bytes_written"], 107 * 512 + 200 * 4096, "{ch}");
    destroy(&mut m, a);

    // A new partition on the same disk reads back what the first wrote.
    let b = create(&mut m, "reader", "disk-verify:0xA11CE", "--disk one");
    let out = wait_line(&mut m, b, "disk: PASS", "disk: FAIL");
    assert!(
        qemu_tests::contains_line(&out, "disk: read back 107 blocks of seed 0xa11ce, verified"),
        "{out}"
    );
    // Another child, its own disk: none of the first one's pattern.
    let c = create(&mut m, "other", "disk:0xB0B", "--disk two");
    let out = wait_line(&mut m, c, "disk: PASS", "disk: FAIL");
    assert!(
        qemu_tests::contains_line(
            &out,
            "disk: prior contents of 107 blocks: 107 zero, 0 pattern (seeds: none), 0 other"
        ),
        "the other disk holds none of the first one's blocks: {out}"
    );
    // And the first disk still holds its own pattern, not the second's.
    destroy(&mut m, b);
    let d = create(&mut m, "again", "disk-verify:0xA11CE", "--disk one");
    wait_line(&mut m, d, "disk: PASS", "disk: FAIL");
    drop(m);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The SCSI channels in `channels ID --json`, by sub-channel index.
fn scsi_channels(m: &mut Machine, id: u64) -> (Value, Vec<Value>) {
    let v = m.hvctl_json(&format!("channels {id} --json"));
    let mut scsi: Vec<Value> = v["channels"]
        .as_array()
        .map(|a| a.iter().filter(|c| c["interface"] == SCSI).cloned().collect())
        .unwrap_or_default();
    scsi.sort_by_key(|c| c["sub_channel_index"].as_u64());
    (v, scsi)
}

/// Child `id`'s console once it has `count` whole lines containing
/// `needle`; fails on a whole line containing `fail`, a panic or the deadline.
fn wait_lines(m: &mut Machine, id: u64, needle: &str, count: usize, fail: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let out = m.hvctl(&format!("console {id}"));
        if out.lines().filter(|l| l.contains(needle)).count() >= count
            && qemu_tests::contains_line(&out, needle)
        {
            return out;
        }
        if qemu_tests::contains_line(&out, fail) || out.contains("panic") {
            m.fail_with(&format!("child {id} printed {fail:?}:\n{out}"));
        }
        if start.elapsed() > qemu_tests::BOOT_DEADLINE {
            m.fail_with(&format!("child {id}: not {count} x {needle:?}:\n{out}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The primary and two open sub-channels of one controller: indices 0, 1,
/// 2, the same interface and instance, roles as storvsp names them.
fn assert_primary_and_two_sub_channels(v: &Value, scsi: &[Value]) {
    let indices: Vec<Option<u64>> = scsi.iter().map(|c| c["sub_channel_index"].as_u64()).collect();
    assert_eq!(indices, [Some(0), Some(1), Some(2)], "{v}");
    for (i, c) in scsi.iter().enumerate() {
        assert_eq!(c["instance"], scsi[0]["instance"], "one controller: {v}");
        assert_eq!(c["handshake"], "ready", "{v}");
        assert_eq!(c["broken"], "", "{v}");
        assert_eq!(c["srb_failures"], 0, "{v}");
        let role = if i == 0 {
            "primary".to_string()
        } else {
            format!("sub-channel {i}")
        };
        assert_eq!(c["role"], role.as_str(), "{v}");
        // Every channel carried SRBs of its own.
        assert!(c["packets"].as_u64() > Some(0), "{v}");
    }
    assert_eq!(scsi[0]["sub_channels"], 2, "{v}");
}

#[test]
fn disk_multi_runs_io_over_two_storvsp_sub_channels_which_a_restart_forgets() {
    let (dir, image) = child_disk_image("testos-disk-multi", &[("multi", 8)]);
    let mut m = boot("testos-disk-multi", &image);
    let id = create(&mut m, "multi", "disk-multi:0x5C5C", "--disk multi");
    let out = wait_line(&mut m, id, "disk: PASS", "disk: FAIL");
    eprintln!("{out}");
    for line in [
        "max_channel_count 4, multi-channel yes",
        "disk: client refused 5 sub-channels",
        // INVALID_PARAMETER, as OpenVMM answers a count it cannot serve.
        "disk: host refused CREATE_SUB_CHANNELS 5: status 0xc000000d",
        "disk: host granted 2 sub-channels",
        "disk: 2 sub-channels open",
        "disk: host refused 3 more sub-channels: status 0xc000000d",
        "disk: prior contents of 107 blocks: 107 zero, 0 pattern (seeds: none), 0 other",
        "disk: wrote 107 blocks across 3 channels, read back through another channel, verified",
    ] {
        assert!(qemu_tests::contains_line(&out, line), "{line:?} in:\n{out}");
    }
    let (v, scsi) = scsi_channels(&mut m, id);
    assert_primary_and_two_sub_channels(&v, &scsi);
    // The counters are the controller's, shared by its channels.
    assert_eq!(scsi[2]["bytes_written"], 107 * 512, "{v}");

    // A stop resets the bus: the sub-channels go with the primary's
    // channel, and nothing offers them again until the next boot asks.
    let out = m.hvctl(&format!("stop {id}"));
    assert!(out.contains("stopped"), "{out}");
    let (v, scsi) = scsi_channels(&mut m, id);
    assert!(
        scsi.iter().all(|c| c["sub_channel_index"] == 0),
        "no sub-channel after the stop: {v}"
    );
    let out = m.hvctl(&format!("start {id}"));
    assert!(out.contains("started"), "{out}");
    // The second boot asks again and gets indices 1 and 2 afresh (not 3
    // and 4: the first boot's are gone).
    let out = wait_lines(&mut m, id, "disk: PASS", 2, "disk: FAIL");
    assert_eq!(out.matches("disk: 2 sub-channels open").count(), 2, "{out}");
    let (v, scsi) = scsi_channels(&mut m, id);
    assert_primary_and_two_sub_channels(&v, &scsi);
    destroy(&mut m, id);
    drop(m);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `net ping TARGET --json`: (sent, received).
fn root_ping(m: &mut Machine, target: &str) -> (u64, u64) {
    let r = m.hvctl_json(&format!("net ping {target} --json"));
    (
        r["sent"].as_u64().unwrap_or(0),
        r["received"].as_u64().unwrap_or(0),
    )
}

#[test]
fn net_children_ping_each_other_through_the_switch_and_the_root_pings_them() {
    let mut m = Machine::boot_images(images(), "testos-net", "", None, 512);
    m.expect("root: partition 3 (beta) created and started");
    let a = create(&mut m, "neta", "net-ping:10.0.2.31,10.0.2.32", "--nic");
    let b = create(&mut m, "netb", "net-ping:10.0.2.32,10.0.2.31", "--nic");
    let out = wait_line(&mut m, a, "net: 3/3 replies from 10.0.2.32", "net: FAIL");
    assert!(
        qemu_tests::contains_line(&out, "net: address 10.0.2.31 announced"),
        "{out}"
    );
    wait_line(&mut m, b, "net: 3/3 replies from 10.0.2.31", "net: FAIL");
    // The root learnt both addresses from their ARP and pings each by id.
    for (id, ip) in [(a, "10.0.2.31"), (b, "10.0.2.32")] {
        let r = m.hvctl_json(&format!("net ping {id} --json"));
        assert_eq!(r["target"], ip, "{r}");
        assert_eq!(
            (r["sent"].as_u64(), r["received"].as_u64()),
            (Some(3), Some(3)),
            "{r}"
        );
        let ch = m.hvctl_json(&format!("channels {id} --json"));
        let nic = channel_of(&ch, NIC);
        assert_eq!(nic["rndis_state"], "data initialized", "{ch}");
        assert_eq!(nic["guest_errors"], 0, "{ch}");
        assert_eq!(nic["broken"], "", "{ch}");
    }
    let out = m.hvctl(&format!("console {a}"));
    assert!(
        out.contains("net: echo request 1 from 10.0.2.254, answered"),
        "{out}"
    );
}

// ---- hostile guests ----

/// A machine with two child disks; `victim` holds [`VICTIM_SEED`]'s
/// pattern (written by a `disk` child, since destroyed), alpha's memory
/// checksum is taken.
struct Rig {
    m: Machine,
    dir: PathBuf,
    peer: Value,
}

const VICTIM_SEED: &str = "0x71C71C";

impl Rig {
    fn disks(name: &str) -> Self {
        let (dir, image) = child_disk_image(name, &[("victim", 8), ("attacker", 8)]);
        let mut m = boot(name, &image);
        let peer = m.peer_checksum();
        let v = create(&mut m, "victim", &format!("disk:{VICTIM_SEED}"), "--disk victim");
        wait_line(&mut m, v, "disk: PASS", "disk: FAIL");
        destroy(&mut m, v);
        Self { m, dir, peer }
    }

    /// Start the attacker in `mode`; wait for its done line.
    fn attack(&mut self, mode: &str, extra: &str) -> (u64, String) {
        let id = create(&mut self.m, "attacker", mode, extra);
        let case = mode
            .split(':')
            .next()
            .unwrap()
            .rsplit("hostile-")
            .next()
            .unwrap()
            .to_string();
        let out = wait_line(
            &mut self.m,
            id,
            &format!("-- end of {case}"),
            "done with an error",
        );
        let line = out
            .lines()
            .rfind(|l| l.contains(&format!("{case} done:")))
            .unwrap_or_else(|| panic!("no done line: {out}"))
            .to_string();
        eprintln!("{mode}: {line}");
        (id, line)
    }

    /// The attacker's channel is reported; then: everything else intact
    /// (hv-core, the root's shell and canary, alpha's memory), the
    /// victim's disk still holds its pattern, the attacker is destroyed.
    fn finish(mut self, attacker: u64) {
        let m = &mut self.m;
        m.assert_intact(&self.peer);
        destroy(m, attacker);
        let c = create(m, "check", &format!("disk-verify:{VICTIM_SEED}"), "--disk victim");
        wait_line(m, c, "disk: PASS", "disk: FAIL");
        drop(self.m);
        std::fs::remove_dir_all(&self.dir).unwrap();
    }
}

fn scsi_channel(m: &mut Machine, id: u64) -> Value {
    let ch = m.hvctl_json(&format!("channels {id} --json"));
    channel_of(&ch, SCSI).clone()
}

#[test]
fn gpa_direct_pages_outside_the_child_are_refused_per_request() {
    let mut r = Rig::disks("testos-hostile-gpa");
    let (id, done) = r.attack("disk-hostile-gpa", "--disk attacker");
    assert!(
        done.contains("12 of 12 requests naming foreign pages refused"),
        "{done}"
    );
    assert!(done.contains("nothing moved, the channel still works"), "{done}");
    let scsi = scsi_channel(&mut r.m, id);
    assert_eq!(scsi["broken"], "", "{scsi}");
    assert!(scsi["srb_failures"].as_u64() >= Some(12), "{scsi}");
    r.finish(id);
}

#[test]
fn transfer_lengths_past_the_buffer_are_refused_per_request() {
    let mut r = Rig::disks("testos-hostile-length");
    let (id, done) = r.attack("disk-hostile-length", "--disk attacker");
    assert!(done.contains("5 of 5 refused"), "{done}");
    assert!(done.contains("then a good read works"), "{done}");
    let scsi = scsi_channel(&mut r.m, id);
    assert_eq!(scsi["broken"], "", "{scsi}");
    r.finish(id);
}

#[test]
fn an_srb_flood_completes_every_request() {
    let mut r = Rig::disks("testos-hostile-flood");
    let (id, done) = r.attack("disk-hostile-flood", "--disk attacker");
    assert!(
        done.contains("4096 SRBs, 512 queued at a time, 4096 completed (4096 ok)"),
        "{done}"
    );
    let scsi = scsi_channel(&mut r.m, id);
    assert_eq!(scsi["broken"], "", "{scsi}");
    r.finish(id);
}

#[test]
fn a_held_full_ring_stalls_only_that_controller() {
    let mut r = Rig::disks("testos-hostile-ring-full");
    let (id, done) = r.attack("disk-hostile-ring-full", "--disk attacker");
    assert!(done.contains("never reading the host-to-guest ring"), "{done}");
    let scsi = scsi_channel(&mut r.m, id);
    assert_eq!(scsi["broken"], "", "a stall, not a broken ring: {scsi}");
    assert!(scsi["stalls"].as_u64() >= Some(1), "{scsi}");
    assert!(
        scsi["host_to_guest"]["pending_send_size"].as_u64() > Some(0),
        "the root waits for room: {scsi}"
    );
    r.finish(id);
}

/// Boot with a `net` peer at 10.0.2.31 (pinged 3/3 by the root); start
/// `mode` as the attacker at 10.0.2.41.
fn net_attack(name: &str, mode: &str) -> (Machine, Value, u64, String) {
    let mut m = Machine::boot_images(images(), name, "", None, 512);
    m.expect("root: partition 3 (beta) created and started");
    let peer = m.peer_checksum();
    let p = create(&mut m, "peer", "net:10.0.2.31", "--nic");
    wait_line(&mut m, p, "net: serving", "net: FAIL");
    let id = create(&mut m, "attacker", &format!("{mode}:10.0.2.41"), "--nic");
    let case = mode.rsplit("hostile-").next().unwrap();
    let out = wait_line(&mut m, id, &format!("-- end of {case}"), "done with an error");
    let line = out
        .lines()
        .rfind(|l| l.contains(&format!("{case} done:")))
        .unwrap_or_else(|| panic!("no done line: {out}"))
        .to_string();
    eprintln!("{mode}: {line}");
    assert_eq!(root_ping(&mut m, "10.0.2.31"), (3, 3), "the peer answers");
    (m, peer, id, line)
}

fn nic_channel(m: &mut Machine, id: u64) -> Value {
    let ch = m.hvctl_json(&format!("channels {id} --json"));
    channel_of(&ch, NIC).clone()
}

#[test]
fn an_rndis_flood_is_absorbed_and_the_nic_keeps_working() {
    let (mut m, peer, id, done) = net_attack("testos-hostile-net-flood", "net-hostile-flood");
    assert!(
        done.contains("3000 frames sent, 600 RNDIS queries completed"),
        "{done}"
    );
    assert_eq!(
        root_ping(&mut m, "10.0.2.41"),
        (3, 3),
        "the attacker's NIC still works"
    );
    let nic = nic_channel(&mut m, id);
    assert_eq!(nic["broken"], "", "{nic}");
    m.assert_intact(&peer);
}

#[test]
fn oversize_frames_and_bad_sections_are_refused_per_packet() {
    let (mut m, peer, id, done) = net_attack("testos-hostile-net-oversize", "net-hostile-oversize");
    assert!(done.contains("6 of 6 refused"), "{done}");
    assert_eq!(
        root_ping(&mut m, "10.0.2.41"),
        (3, 3),
        "the attacker's NIC still works"
    );
    let nic = nic_channel(&mut m, id);
    assert_eq!(nic["broken"], "", "{nic}");
    assert!(nic["guest_errors"].as_u64() >= Some(5), "{nic}");
    m.assert_intact(&peer);
}

#[test]
fn a_nic_whose_ring_is_held_full_stalls_alone() {
    let (mut m, peer, id, done) = net_attack("testos-hostile-net-ring-full", "net-hostile-ring-full");
    assert!(done.contains("never reading the host-to-guest ring"), "{done}");
    // Frames for the attacker pile up and are dropped; the root's ping gets
    // no answer, its shell answers, the peer still does.
    for _ in 0..3 {
        assert_eq!(root_ping(&mut m, "10.0.2.41").1, 0);
    }
    assert_eq!(root_ping(&mut m, "10.0.2.31"), (3, 3), "the peer answers");
    let nic = nic_channel(&mut m, id);
    assert_eq!(nic["broken"], "", "{nic}");
    m.assert_intact(&peer);
    destroy(&mut m, id);
}

/// The `disk-bench` mode (what `cargo bench --bench devices` times) runs to
/// its end: sequential reads with 8 in flight, 4 KiB reads at depth 1 and
/// 32, each a whole line with a rate, and storvsp counts the reads.
#[test]
fn disk_bench_mode_reads_at_depth_and_reports_its_rates() {
    let (dir, image) = child_disk_image("disk-bench", &[("b", 8)]);
    let mut m = boot("disk-bench", &image);
    let id = create(&mut m, "bench", "disk-bench:8", "--disk b");
    let out = wait_line(&mut m, id, "disk-bench: PASS", "disk-bench: FAIL");
    let rate = |prefix: &str, unit: &str| -> u64 {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split(": ").last())
            .and_then(|r| r.split_whitespace().next().filter(|_| r.contains(unit)))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} line with {unit}: {out}"))
    };
    for size in ["128", "1024"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("disk-bench: sequential 8 MiB in ")
                    && l.ends_with(&format!("(8 x {size} KiB in flight)"))),
            "{out}"
        );
    }
    assert!(rate("disk-bench: 4 KiB reads at depth 1:", "IOPS") > 0, "{out}");
    assert!(rate("disk-bench: 4 KiB reads at depth 32:", "IOPS") > 0, "{out}");
    let ch = m.hvctl_json(&format!("channels {id} --json"));
    let scsi = channel_of(&ch, SCSI);
    assert!(scsi["bytes_read"].as_u64() >= Some(16 << 20), "{scsi}");
    assert_eq!(scsi["srb_failures"], 0, "{scsi}");
    // While SRBs are in flight storvsp masks the guest-to-host ring (it
    // polls again anyway) and the client signals once per burst: only the
    // depth-1 reads (nothing in flight) cost a signal each, so the child's
    // hypercalls stay well under one per SRB (measured: 0.15-0.2; each
    // request signalled, and cost a world switch, before).
    let srbs = scsi["srbs"].as_u64().unwrap_or(0);
    let info = m.hvctl_json(&format!("info {id} --json"));
    let hypercalls = info["exits"]["vmmcall"].as_u64().unwrap_or(u64::MAX);
    println!("disk-bench: {hypercalls} child hypercalls for {srbs} SRBs");
    assert!(srbs > 1000, "{scsi}");
    assert!(
        hypercalls * 2 < srbs,
        "{hypercalls} hypercalls for {srbs} SRBs: {}",
        info["exits"]
    );
    // The only running child, one VP: after its first entry the child
    // ASID's TLB entries stay its own, so entries flush only when its
    // paging state or NPT changed (loading, the guest's own setup), not
    // at each of its thousands of entries.
    let exits = info["exits"]["total"].as_u64().unwrap_or(0);
    let flushes = info["tlb_flushes"].as_u64().expect("tlb_flushes");
    println!("disk-bench: {flushes} TLB flushes over {exits} exits");
    assert!(
        flushes > 0 && flushes * 20 < exits,
        "{flushes} TLB flushes for {exits} exits"
    );
    drop(m);
    std::fs::remove_dir_all(&dir).unwrap();
}
