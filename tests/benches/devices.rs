//! QEMU benchmark (not part of `cargo xtask test`; run with
//! `cargo bench -p qemu_tests --bench devices`): a Debian child's synthetic
//! devices against a baseline measured in the same boot.
//!
//! One machine (1100 MiB, no uplink) with the Linux test bundle: the
//! manifest child `linux` (partition 4, NIC, RAM disk) and a second Debian
//! child `disk` (partition 5) created with `--disk data --nic` on a GPT
//! child-disk image (512 MiB sparse, one 256 MiB disk `data`) in a scratch
//! directory. Rounds: `DEVICES_ROUNDS` (default 5), interleaved, medians.
//!
//! - Storage (storvsp): partition 5 first fills the disk's first 64 MiB
//!   from `/dev/urandom` (a sparse image would read zeros from holes). Each
//!   round: the root's `disk bench data --mib 64` (sequential 128 KiB reads,
//!   then 4 KiB reads at depth 1 for a second, scattered over the whole
//!   256 MiB disk); in the child, with the page cache dropped, `dd` of the
//!   64 MiB with `iflag=direct` (1 MiB reads) and buffered (readahead), and
//!   4 KiB `iflag=direct` reads at depth 1 (sequential within the filled
//!   part), then random 4 KiB O_DIRECT reads over the whole disk at depth 1
//!   and 32 with the initramfs's `iobench` (Linux native AIO, as fio's
//!   libaio engine; `tests/guests/linux-iobench`), which times itself on
//!   CLOCK_MONOTONIC. `dd` runs are timed with ash's `$EPOCHREALTIME`
//!   (busybox `dd` prints no timing); the root with its own clock.
//! - Network (netvsp + the switch): ping RTT child<->child, child->root
//!   (10.0.2.254, the root's static address) and root->child (`net ping`,
//!   10 ms resolution), each against ping over the child's loopback; TCP
//!   throughput child->child with busybox `nc` (16 MiB of zeros), against
//!   the same transfer over the sender's loopback, and the switch's per-port
//!   frame counters over the transfer (frames/s, bytes a frame).
//! - The Rust client: at least five rounds (`DEVICES_ROUNDS` if more), each
//!   a new test OS child in mode `disk-bench:64` on the same disk (our own
//!   storvsc: 8 × 128 KiB and 8 × 1 MiB sequential, 4 KiB at depth 1 and
//!   32) and then the root's `disk bench` at depth 1 and 8; medians.
//! - VM exits (hv-core's counters) per 4 KiB read and per switched frame:
//!   the child's and the root's, including the console's own traffic for the
//!   one command line (a few hundred exits). Exits per VMBus echo message
//!   are `qemu_vmbus`'s figures.
//!
//! Host wall clock under QEMU (TCG unless KVM with SVM): noisy, no
//! assertion on times. The guest clock is checked against the host's over
//! the run.

use qemu_tests::{Machine, created_partition, linux_images, scratch};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a Linux boot may take to reach its init under TCG.
const LINUX_BOOT_DEADLINE: Duration = Duration::from_secs(300);

/// The disk the storage child reads, and how much of it is filled.
const DISK_MIB: u64 = 256;
const FILL_MIB: u64 = 64;

/// `disk bench` runs a round in the root.
const ROOT_RUNS: u64 = 4;

/// 4 KiB reads a round in the child.
const READS_4K: u64 = 2000;

/// `iobench` reads a round at depth 32.
const READS_DEPTH_32: u64 = 4000;

/// IOPS from `iobench DEV DEPTH COUNT`'s line.
fn iobench(m: &mut Machine, id: u64, depth: u64, count: u64, tag: &str) -> f64 {
    let out = run_in(m, id, &format!("iobench /dev/sda {depth} {count}"), tag);
    out.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(&format!(
                "iobench: {count} reads of 4096 bytes at depth {depth} in "
            ))?;
            rest.split_whitespace().nth(2)?.parse().ok()
        })
        .unwrap_or_else(|| m.fail_with(&format!("iobench depth {depth}: {out}")))
}

/// TCP transfer: 256 x 64 KiB.
const XFER_BYTES: u64 = 256 * 65536;

/// The storage child (the manifest `linux` child is partition 4).
const DISK_CHILD: u64 = 5;
const NET_A: u64 = 4;
const NET_B: u64 = 5;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.1}..{hi:.1}")
}

/// Run `command` in child `id`'s shell (see `Machine::run_in_child`). The
/// tag gets a number of its own: attaching replays the child's console, so
/// a tag used before would match the old output.
fn run_in(m: &mut Machine, id: u64, command: &str, tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let tag = format!("{tag}{}", N.fetch_add(1, Ordering::Relaxed));
    m.run_in_child(id, command, &tag)
}

/// Run `command` in child `id` between two `$EPOCHREALTIME` readings;
/// returns the guest's seconds and the output.
fn timed(m: &mut Machine, id: u64, prep: &str, command: &str, tag: &str) -> (f64, String) {
    let line = format!("{prep} t0=$EPOCHREALTIME; {command}; t1=$EPOCHREALTIME; echo T $t0 $t1");
    let out = run_in(m, id, &line, tag);
    let secs = out
        .lines()
        .find_map(|l| {
            let mut w = l.strip_prefix("T ")?.split_whitespace();
            let t0: f64 = w.next()?.parse().ok()?;
            let t1: f64 = w.next()?.parse().ok()?;
            Some(t1 - t0)
        })
        .unwrap_or_else(|| m.fail_with(&format!("no timing from child {id} ({tag}): {out}")));
    (secs, out)
}

/// Fail unless busybox `dd` copied `blocks` whole blocks.
fn check_records(m: &mut Machine, out: &str, blocks: u64, what: &str) {
    if !out.lines().any(|l| l.trim() == format!("{blocks}+0 records in")) {
        m.fail_with(&format!("{what}: dd did not read {blocks} blocks: {out}"));
    }
}

fn total_exits(info: &Value) -> u64 {
    info["exits"]["total"].as_u64().unwrap_or(0)
}

/// Exit counts by reason, highest first, without `total` and zeros.
fn exit_reasons(info: &Value) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = info["exits"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.as_str() != "total")
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// Exits of the child and the root, to difference around a measurement.
struct Exits {
    child: Value,
    root: Value,
}

impl Exits {
    fn take(m: &mut Machine, id: u64) -> Self {
        Self {
            child: m.hvctl_json(&format!("info {id} --json")),
            root: m.hvctl_json("info 1 --json"),
        }
    }

    /// (child exits, root exits, the child's top reasons) since `self`.
    fn since(&self, later: &Exits) -> (u64, u64, String) {
        let before: std::collections::HashMap<String, u64> = exit_reasons(&self.child).into_iter().collect();
        let mut diff: Vec<(String, u64)> = exit_reasons(&later.child)
            .into_iter()
            .map(|(k, v)| {
                let d = v - before.get(&k).copied().unwrap_or(0);
                (k, d)
            })
            .filter(|(_, d)| *d != 0)
            .collect();
        diff.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let top: Vec<String> = diff.iter().take(4).map(|(k, v)| format!("{k} {v}")).collect();
        (
            total_exits(&later.child) - total_exits(&self.child),
            total_exits(&later.root) - total_exits(&self.root),
            top.join(", "),
        )
    }
}

/// The guest's `$EPOCHREALTIME` against the host's clock at the middle of
/// the request (a console round trip: within a few tenths of a second).
fn clock_pair(m: &mut Machine, id: u64) -> (f64, f64) {
    let host = |t: SystemTime| t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64();
    let before = host(SystemTime::now());
    let out = run_in(m, id, "echo C $EPOCHREALTIME", "clock");
    let after = host(SystemTime::now());
    let guest = out
        .lines()
        .find_map(|l| l.strip_prefix("C ")?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| m.fail_with(&format!("no guest time: {out}")));
    ((before + after) / 2.0, guest)
}

/// `round-trip min/avg/max = a/b/c ms` and the received count of busybox ping.
fn parse_ping(out: &str) -> Option<(f64, f64, f64, u64)> {
    let received = out.lines().find_map(|l| {
        let (_, rest) = l.split_once(" packets transmitted, ")?;
        rest.split_whitespace().next()?.parse().ok()
    })?;
    let rtt = out.lines().find_map(|l| l.split_once("min/avg/max = "))?.1;
    let mut v = rtt
        .trim_end_matches(" ms")
        .split('/')
        .map(|x| x.trim().parse::<f64>());
    Some((v.next()?.ok()?, v.next()?.ok()?, v.next()?.ok()?, received))
}

fn ping(m: &mut Machine, id: u64, target: &str, count: u32, tag: &str) -> (f64, f64, f64, u64) {
    let out = run_in(m, id, &format!("ping -c {count} -i 0.2 -W 5 {target}"), tag);
    parse_ping(&out).unwrap_or_else(|| m.fail_with(&format!("ping {target} from {id}: {out}")))
}

/// The switch's child-NIC ports: (name, rx_frames, rx_bytes, tx_frames), in
/// the switch's order.
fn switch_ports(m: &mut Machine) -> Vec<(String, u64, u64, u64)> {
    let sw = m.hvctl_json("switch --json");
    sw["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .filter(|p| p["kind"] == "child-nic")
                .map(|p| {
                    let c = &p["counters"];
                    (
                        p["name"].as_str().unwrap_or("").to_string(),
                        c["rx_frames"].as_u64().unwrap_or(0),
                        c["rx_bytes"].as_u64().unwrap_or(0),
                        c["tx_frames"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Row {
    what: &'static str,
    child: String,
    baseline: String,
    ratio: String,
}

fn row(what: &'static str, child: f64, baseline: f64, unit: &str, digits: usize) -> Row {
    Row {
        what,
        child: format!("{child:.digits$} {unit}"),
        baseline: format!("{baseline:.digits$} {unit}"),
        ratio: format!("{:.2}x", child / baseline),
    }
}

/// Storage: fill, then interleaved rounds of the root's bench and the
/// child's reads.
fn storage(m: &mut Machine, rounds: usize, table: &mut Vec<Row>) {
    let id = DISK_CHILD;
    let size = run_in(m, id, "cat /sys/block/sda/size", "size");
    let sectors = (DISK_MIB << 20) / 512;
    if !size.lines().any(|l| l.trim() == sectors.to_string()) {
        m.fail_with(&format!(
            "partition {id}'s sda is not the {DISK_MIB} MiB disk: {size}"
        ));
    }
    // Filled in 16 MiB steps (one console command each stays well within
    // the harness's deadline).
    let mut fill_s = 0.0;
    for step in 0..FILL_MIB / 16 {
        let (s, out) = timed(
            m,
            id,
            "",
            &format!(
                "dd if=/dev/urandom of=/dev/sda bs=1M count=16 seek={} conv=fsync 2>&1",
                step * 16
            ),
            &format!("fill{step}"),
        );
        check_records(m, &out, 16, "fill");
        fill_s += s;
    }
    println!(
        "storage: filled {FILL_MIB} MiB from /dev/urandom in {fill_s:.2} s ({:.1} MiB/s, urandom + write + fsync)",
        FILL_MIB as f64 / fill_s
    );
    let drop = "echo 3 > /proc/sys/vm/drop_caches;";
    let mut root_seq = Vec::new();
    let mut root_iops = Vec::new();
    let mut direct = Vec::new();
    let mut buffered = Vec::new();
    let mut iops = Vec::new();
    let mut aio_d1 = Vec::new();
    let mut aio_d32 = Vec::new();
    let mut exit_lines = Vec::new();
    let mut exit_lines_d32 = Vec::new();
    let mut root_clock = Vec::new();
    for round in 1..=rounds {
        // The root times itself on its TSC (its rate measured against its
        // timer); several runs a round, their sums.
        let (mut bytes, mut seq_us, mut reads, mut rnd_us, mut host_s) = (0, 0, 0, 0, 0.0);
        for _ in 0..ROOT_RUNS {
            let asked = Instant::now();
            let b = m.hvctl_json(&format!("disk bench data --mib {FILL_MIB} --json"));
            host_s += asked.elapsed().as_secs_f64();
            let got = (
                b["bytes"].as_u64(),
                b["seq_us"].as_u64(),
                b["random_4k_reads"].as_u64(),
                b["random_us"].as_u64(),
            );
            let (Some(by), Some(sm), Some(rd), Some(rm)) = got else {
                m.fail_with(&format!("disk bench: {b}"));
            };
            (bytes, seq_us, reads, rnd_us) = (bytes + by, seq_us + sm, reads + rd, rnd_us + rm);
        }
        let r_seq = bytes as f64 / 1048576.0 / (seq_us.max(1) as f64 / 1e6);
        let r_iops = reads as f64 / (rnd_us.max(1) as f64 / 1e6);
        root_clock.push((seq_us + rnd_us) as f64 / 1e6 / host_s);
        let (d_s, out) = timed(
            m,
            id,
            drop,
            &format!("dd if=/dev/sda of=/dev/null bs=1M count={FILL_MIB} iflag=direct 2>&1"),
            "seqd",
        );
        check_records(m, &out, FILL_MIB, "direct read");
        let (b_s, out) = timed(
            m,
            id,
            drop,
            &format!("dd if=/dev/sda of=/dev/null bs=1M count={FILL_MIB} 2>&1"),
            "seqb",
        );
        check_records(m, &out, FILL_MIB, "buffered read");
        let before = Exits::take(m, id);
        // A different stretch of the filled part each round.
        let skip = (round as u64 - 1) * READS_4K % ((FILL_MIB << 20) / 4096 - READS_4K);
        let (k_s, out) = timed(
            m,
            id,
            drop,
            &format!("dd if=/dev/sda of=/dev/null bs=4k count={READS_4K} skip={skip} iflag=direct 2>&1"),
            "rd4k",
        );
        let after = Exits::take(m, id);
        check_records(m, &out, READS_4K, "4 KiB reads");
        let (cx, rx, top) = before.since(&after);
        let a1 = iobench(m, id, 1, READS_4K, "aio1");
        let before = Exits::take(m, id);
        let a32 = iobench(m, id, 32, READS_DEPTH_32, "aio32");
        let after = Exits::take(m, id);
        let (cx32, rx32, top32) = before.since(&after);
        println!(
            "         iobench random 4k: depth 1 {a1:6.0} IOPS, depth 32 {a32:6.0} IOPS; exits over depth 32: child {:.2}/read ({top32}), root {:.2}/read",
            cx32 as f64 / READS_DEPTH_32 as f64,
            rx32 as f64 / READS_DEPTH_32 as f64
        );
        aio_d1.push(a1);
        aio_d32.push(a32);
        exit_lines_d32.push((
            cx32 as f64 / READS_DEPTH_32 as f64,
            rx32 as f64 / READS_DEPTH_32 as f64,
        ));
        let c_seq_d = FILL_MIB as f64 / d_s;
        let c_seq_b = FILL_MIB as f64 / b_s;
        let c_iops = READS_4K as f64 / k_s;
        println!(
            "round {round}: root seq {r_seq:7.1} MiB/s ({seq_us} us for {ROOT_RUNS}x), 4k {r_iops:6.0} IOPS ({reads} in {rnd_us} us) | \
             child seq direct {c_seq_d:7.1} MiB/s ({d_s:.2} s), buffered {c_seq_b:7.1} MiB/s ({b_s:.2} s), \
             4k direct {c_iops:6.0} IOPS ({k_s:.2} s)"
        );
        println!(
            "         exits over the 4k run: child {cx} ({:.2}/read: {top}), root {rx} ({:.2}/read)",
            cx as f64 / READS_4K as f64,
            rx as f64 / READS_4K as f64
        );
        exit_lines.push((cx as f64 / READS_4K as f64, rx as f64 / READS_4K as f64));
        root_seq.push(r_seq);
        root_iops.push(r_iops);
        direct.push(c_seq_d);
        buffered.push(c_seq_b);
        iops.push(c_iops);
    }
    println!(
        "storage ranges: root seq {} MiB/s, child direct {} MiB/s, buffered {} MiB/s; root {} IOPS, child {} IOPS",
        spread(&root_seq),
        spread(&direct),
        spread(&buffered),
        spread(&root_iops),
        spread(&iops)
    );
    println!(
        "root clock check: its disk bench timings are {:.0}% of the host's time for the commands (median)",
        median(root_clock) * 100.0
    );
    let rs = median(root_seq);
    let ri = median(root_iops);
    table.push(row(
        "seq read 64 MiB, child dd 1M direct vs root",
        median(direct),
        rs,
        "MiB/s",
        1,
    ));
    table.push(row(
        "seq read 64 MiB, child dd 1M buffered vs root",
        median(buffered),
        rs,
        "MiB/s",
        1,
    ));
    table.push(row("4 KiB reads depth 1 (IOPS)", median(iops), ri, "IOPS", 0));
    table.push(row(
        "random 4 KiB reads depth 1, Linux iobench (AIO) vs root d1",
        median(aio_d1),
        ri,
        "IOPS",
        0,
    ));
    table.push(row(
        "random 4 KiB reads depth 32, Linux iobench (AIO) vs root d1",
        median(aio_d32),
        ri,
        "IOPS",
        0,
    ));
    let cx32 = median(exit_lines_d32.iter().map(|e| e.0).collect());
    let rx32 = median(exit_lines_d32.iter().map(|e| e.1).collect());
    table.push(Row {
        what: "VM exits per 4 KiB read at depth 32: child / root",
        child: format!("{cx32:.2}"),
        baseline: format!("{rx32:.2} (root)"),
        ratio: "-".into(),
    });
    let cx = median(exit_lines.iter().map(|e| e.0).collect());
    let rx = median(exit_lines.iter().map(|e| e.1).collect());
    table.push(Row {
        what: "VM exits per 4 KiB read: child / root",
        child: format!("{cx:.2}"),
        baseline: format!("{rx:.2} (root)"),
        ratio: "-".into(),
    });
}

/// The Rust test OS as the storage client (`disk-bench:64` over our own
/// storvsc, requests in flight), against the root's `disk bench` of the same
/// disk, in the same boot: `rounds` rounds, each a new child's run then the
/// root's (a 64 MiB read lasts milliseconds, so one run says little);
/// medians. The Debian storage child is destroyed first (a disk has one
/// holder).
fn rust_child(m: &mut Machine, rounds: usize, table: &mut Vec<Row>) {
    m.hvctl(&format!("stop {DISK_CHILD}"));
    m.hvctl(&format!("destroy {DISK_CHILD}"));
    let (mut seq, mut seq_1m, mut d1, mut d32) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut seqs, mut iopss, mut deep) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let out = m.hvctl(&format!(
            "create rbench{round} --memory 16M --image testos --mode disk-bench:64 --disk data --start"
        ));
        let id = created_partition(&out)
            .unwrap_or_else(|| m.fail_with(&format!("creating the Rust child: {out}")));
        let console = m.wait_text_every(
            &format!("console {id}"),
            "disk-bench: PASS",
            Duration::from_secs(1),
            LINUX_BOOT_DEADLINE,
        );
        // "...: R MiB/s (...)" and "...: I IOPS": the number before the unit.
        let figure = |prefix: &str, unit: &str| -> f64 {
            console
                .lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(": ").next())
                .filter(|r| r.contains(unit))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {prefix:?} line in {console}"))
        };
        seq.push(figure("disk-bench: sequential", "MiB/s"));
        seq_1m.push(
            console
                .lines()
                .find(|l| l.starts_with("disk-bench: sequential") && l.ends_with("(8 x 1024 KiB in flight)"))
                .and_then(|l| l.split(": ").nth(2))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no 1 MiB sequential line in {console}")),
        );
        d1.push(figure("disk-bench: 4 KiB reads at depth 1:", "IOPS"));
        d32.push(figure("disk-bench: 4 KiB reads at depth 32:", "IOPS"));
        for l in console.lines().filter(|l| l.starts_with("disk-bench:")) {
            println!("rust child round {round}: {l}");
        }
        m.hvctl(&format!("stop {id}"));
        m.hvctl(&format!("destroy {id}"));
        // The root right after, at depth 1 and at the child's depth (8 x
        // 1 MiB in flight).
        let root = m.hvctl_json("disk bench data --mib 64 --json");
        seqs.push(root["seq_mib_per_s"].as_f64().unwrap_or(0.0));
        iopss.push(root["random_4k_iops"].as_f64().unwrap_or(0.0));
        let root = m.hvctl_json("disk bench data --mib 64 --depth 8 --json");
        deep.push(root["seq_mib_per_s"].as_f64().unwrap_or(0.0));
    }
    println!(
        "rust child part: child 8 x 1M {} MiB/s, 8 x 128K {}, 4K d1 {} IOPS, d32 {}; root disk bench {} MiB/s (8 deep: {}), {} IOPS",
        spread(&seq_1m),
        spread(&seq),
        spread(&d1),
        spread(&d32),
        spread(&seqs),
        spread(&deep),
        spread(&iopss)
    );
    let (rs, ri, rd) = (median(seqs), median(iopss), median(deep));
    let (seq, seq_1m, d1, d32) = (median(seq), median(seq_1m), median(d1), median(d32));
    table.push(row(
        "seq read 64 MiB, Rust child 8 x 128K vs root",
        seq,
        rs,
        "MiB/s",
        1,
    ));
    table.push(row(
        "seq read 64 MiB, Rust child 8 x 1M vs root",
        seq_1m,
        rs,
        "MiB/s",
        1,
    ));
    table.push(row(
        "seq read 64 MiB, Rust child 8 x 1M vs root 8 x 1M",
        seq_1m,
        rd,
        "MiB/s",
        1,
    ));
    table.push(row("4 KiB reads depth 1, Rust child vs root", d1, ri, "IOPS", 0));
    table.push(row(
        "4 KiB reads depth 32, Rust child vs root d1",
        d32,
        ri,
        "IOPS",
        0,
    ));
}

/// One TCP transfer of `XFER_BYTES` from `from` to `addr` (a listener in
/// child `to`, started first); returns the guest's seconds.
fn transfer(m: &mut Machine, from: u64, to: u64, addr: &str, port: u16, tag: &str) -> f64 {
    let dd = format!(
        "dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc {addr} {port}",
        XFER_BYTES / 65536
    );
    let listen = format!("rm -f /tmp/rx; nc -l -p {port} | wc -c > /tmp/rx & sleep 1");
    let (secs, out) = if from == to {
        timed(m, from, &format!("{listen};"), &dd, tag)
    } else {
        run_in(m, to, &listen, &format!("{tag}l"));
        timed(m, from, "", &dd, tag)
    };
    let got = run_in(m, to, "sleep 1; cat /tmp/rx", &format!("{tag}c"));
    if !got.lines().any(|l| l.trim() == XFER_BYTES.to_string()) {
        m.fail_with(&format!(
            "{tag}: the receiver got {got:?}, not {XFER_BYTES} bytes ({out})"
        ));
    }
    secs
}

fn network(m: &mut Machine, rounds: usize, table: &mut Vec<Row>) {
    // 4: 10.7.0.4 for its peer, 10.0.2.4 beside the root's 10.0.2.254.
    run_in(
        m,
        NET_A,
        "ip link set lo up; ip addr add 10.7.0.4/24 dev eth0; ip addr add 10.0.2.4/24 dev eth0; ip link set eth0 up",
        "up4",
    );
    run_in(
        m,
        NET_B,
        "ip link set lo up; ip addr add 10.7.0.5/24 dev eth0; ip link set eth0 up",
        "up5",
    );
    // ARP and the links settle before anything is timed.
    for (id, target) in [(NET_A, "10.7.0.5"), (NET_A, "10.0.2.254"), (NET_B, "10.7.0.4")] {
        let (_, _, _, got) = ping(m, id, target, 2, "warm");
        if got == 0 {
            m.fail_with(&format!("partition {id} cannot reach {target}"));
        }
    }

    let lo = ping(m, NET_A, "127.0.0.1", 20, "pinglo");
    let cc = ping(m, NET_A, "10.7.0.5", 20, "pingcc");
    let cr = ping(m, NET_A, "10.0.2.254", 20, "pingcr");
    println!(
        "ping (ms, min/avg/max, received of 20): loopback {:.3}/{:.3}/{:.3} ({}), child->child {:.3}/{:.3}/{:.3} ({}), child->root {:.3}/{:.3}/{:.3} ({})",
        lo.0, lo.1, lo.2, lo.3, cc.0, cc.1, cc.2, cc.3, cr.0, cr.1, cr.2, cr.3
    );
    let root_ping = {
        let out = m.hvctl(&format!("net ping {NET_A} --count 10 --json"));
        match serde_json::from_str::<Value>(out.trim()) {
            Ok(v) => v,
            Err(_) => {
                println!("net ping {NET_A}: {}", out.trim());
                m.hvctl_json("net ping 10.0.2.4 --count 10 --json")
            }
        }
    };
    println!("root -> child (net ping, 10 ms resolution): {root_ping}");
    table.push(row("ping RTT avg child->child vs loopback", cc.1, lo.1, "ms", 3));
    table.push(row("ping RTT avg child->root vs loopback", cr.1, lo.1, "ms", 3));
    match (
        root_ping["rtt_min_ms"].as_u64(),
        root_ping["rtt_avg_ms"].as_u64(),
        root_ping["rtt_max_ms"].as_u64(),
    ) {
        (Some(a), Some(b), Some(c)) => table.push(Row {
            what: "ping RTT root->child (net ping, min/avg/max)",
            child: format!("{a}/{b}/{c} ms"),
            baseline: "-".into(),
            ratio: "-".into(),
        }),
        _ => table.push(Row {
            what: "ping RTT root->child (net ping)",
            child: format!("failed: {root_ping}"),
            baseline: "-".into(),
            ratio: "-".into(),
        }),
    }

    let ports = switch_ports(m);
    println!("switch child-NIC ports: {ports:?}");
    // The ports are named after their children (`linux-…`, `disk-…`).
    let find = |prefix: &str| ports.iter().position(|p| p.0.starts_with(prefix));
    let (Some(pa), Some(pb)) = (find("linux"), find("disk")) else {
        m.fail_with(&format!("no ports for both children: {ports:?}"));
    };
    let mut sw = Vec::new();
    let mut lo_x = Vec::new();
    let mut fps = Vec::new();
    let mut per_frame = Vec::new();
    let mut frame_exits = Vec::new();
    let mut port = 5001;
    for round in 1..=rounds {
        let before = switch_ports(m);
        let exits_before = Exits::take(m, NET_A);
        let s = transfer(m, NET_A, NET_B, "10.7.0.5", port, "xfer");
        let exits_after = Exits::take(m, NET_A);
        let after = switch_ports(m);
        port += 1;
        let l = transfer(m, NET_A, NET_A, "127.0.0.1", port, "xlo");
        port += 1;
        let data = after[pa].1 - before[pa].1;
        let data_bytes = after[pa].2 - before[pa].2;
        let acks = after[pb].1 - before[pb].1;
        let delivered = after[pb].3 - before[pb].3;
        let (cx, rx, top) = exits_before.since(&exits_after);
        let mbs = XFER_BYTES as f64 / 1e6 / s;
        let lmbs = XFER_BYTES as f64 / 1e6 / l;
        let frames = (data + acks) as f64 / s;
        println!(
            "round {round}: switch {mbs:6.2} MB/s ({s:.2} s) | loopback {lmbs:6.2} MB/s ({l:.2} s) | \
             frames: {data} data in from 4 ({:.0} B each), {delivered} out to 5, {acks} acks in from 5: \
             {frames:.0} frames/s",
            data_bytes as f64 / data.max(1) as f64
        );
        println!(
            "         exits over the transfer: sender {cx} ({:.2}/frame: {top}), root {rx} ({:.2}/frame)",
            cx as f64 / (data + acks).max(1) as f64,
            rx as f64 / (data + acks).max(1) as f64
        );
        sw.push(mbs);
        lo_x.push(lmbs);
        fps.push(frames);
        per_frame.push(data_bytes as f64 / data.max(1) as f64);
        frame_exits.push((
            cx as f64 / (data + acks).max(1) as f64,
            rx as f64 / (data + acks).max(1) as f64,
        ));
    }
    println!(
        "network ranges: switch {} MB/s, loopback {} MB/s, {} frames/s",
        spread(&sw),
        spread(&lo_x),
        spread(&fps)
    );
    table.push(row(
        "TCP 16 MiB child->child (nc) vs loopback",
        median(sw),
        median(lo_x),
        "MB/s",
        2,
    ));
    table.push(Row {
        what: "switch frames/s over the transfer (data+acks)",
        child: format!("{:.0} /s", median(fps)),
        baseline: format!("{:.0} B/data frame", median(per_frame)),
        ratio: "-".into(),
    });
    table.push(Row {
        what: "VM exits per switched frame: sender / root",
        child: format!("{:.2}", median(frame_exits.iter().map(|e| e.0).collect())),
        baseline: format!("{:.2} (root)", median(frame_exits.iter().map(|e| e.1).collect())),
        ratio: "-".into(),
    });
}

fn main() {
    let rounds = env_number("DEVICES_ROUNDS", 5).max(1) as usize;
    let (images, _) = linux_images();
    let dir = scratch("bench-devices");
    let image = dir.join("child-disks.img");
    xtask::disk_image::ensure_child_disks(&image, 512 << 20, &[("data", DISK_MIB << 20)])
        .unwrap_or_else(|e| panic!("child-disk image: {e}"));
    let (_, accel_why) = xtask::choose_accel();
    println!("devices benchmark: {rounds} rounds, accelerator {accel_why}");
    let started = Instant::now();
    let mut m = Machine::boot_with_disks(
        images,
        "bench-devices",
        "",
        None,
        vec![image],
        xtask::Network::None,
        1100,
    );
    m.expect("root: partition 4 (linux) created and started");
    let created = m.hvctl(&format!(
        "create disk --memory 256M --image linux.kernel --initrd linux.initrd --cmdline \"{}\" --disk data --nic --start",
        qemu_tests::LINUX_CMDLINE.replace("hostname=debian-child", "hostname=disk")
    ));
    if !created.contains("partition 5 (disk) created and started") {
        m.fail_with(&format!("creating the storage child: {created}"));
    }
    for id in [4, 5] {
        m.wait_text_every(
            &format!("console {id}"),
            "hv-rs linux child: init reached",
            Duration::from_secs(1),
            LINUX_BOOT_DEADLINE,
        );
    }
    println!(
        "both Debian children at init {:.1} s after QEMU started",
        started.elapsed().as_secs_f64()
    );
    let clocks = |m: &mut Machine| [clock_pair(m, NET_A), clock_pair(m, DISK_CHILD)];
    let start = clocks(&mut m);

    let mut table = Vec::new();
    let t = Instant::now();
    storage(&mut m, rounds, &mut table);
    println!("storage part: {:.0} s", t.elapsed().as_secs_f64());
    let mid = clocks(&mut m);
    let t = Instant::now();
    network(&mut m, rounds, &mut table);
    println!("network part: {:.0} s", t.elapsed().as_secs_f64());
    let end = clocks(&mut m);
    let t = Instant::now();

    // The children time themselves: their clocks against the host's.
    for (i, id) in [NET_A, DISK_CHILD].into_iter().enumerate() {
        let drift = |a: (f64, f64), b: (f64, f64)| {
            let (host_s, guest_s) = (b.0 - a.0, b.1 - a.1);
            format!(
                "host {host_s:.1} s, guest {guest_s:.1} s ({:+.2}%)",
                (guest_s / host_s - 1.0) * 100.0
            )
        };
        let source = run_in(
            &mut m,
            id,
            "cat /sys/devices/system/clocksource/clocksource0/current_clocksource; \
             dmesg | grep -i -E 'clocksource|tsc' | tail -4",
            "cs",
        );
        println!(
            "partition {id} clock: storage part {}, network part {}; clock source now: {}",
            drift(start[i], mid[i]),
            drift(mid[i], end[i]),
            source.trim().replace('\n', " | ")
        );
    }
    rust_child(&mut m, rounds.max(5), &mut table);
    println!("Rust child part: {:.0} s", t.elapsed().as_secs_f64());
    drop(m);
    let _ = std::fs::remove_dir_all(&dir);

    println!("medians over {rounds} rounds (child: guest clock; root: its own clock):");
    let w = table.iter().map(|r| r.what.len()).max().unwrap_or(0);
    println!(
        "  {:<w$}  {:>18}  {:>18}  {:>7}",
        "what", "child", "baseline", "ratio"
    );
    for r in &table {
        println!(
            "  {:<w$}  {:>18}  {:>18}  {:>7}",
            r.what, r.child, r.baseline, r.ratio
        );
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
}
