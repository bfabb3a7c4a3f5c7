//! QEMU benchmark (not part of `cargo xtask test`; run with
//! `cargo bench -p qemu_tests --bench linux_boot`): how long Debian's 6.1
//! kernel and the Linux-child initramfs (`xtask::linux`) take to reach
//! `/init`'s marker line as a child partition, against the same kernel and
//! initramfs on bare QEMU measured in the same run.
//!
//! Each round (`LINUX_BOOT_ROUNDS`, default 3) runs, one after the other:
//!
//! - bare: QEMU (same accelerator as the hypervisor run, q35, 1 CPU,
//!   256 MiB) boots the pair directly; time from spawning QEMU to the whole
//!   marker line on its serial output;
//! - child: root + hv-core + the manifest child `linux` (partition 4,
//!   256 MiB, started at boot) in a 768 MiB machine; time from the root's
//!   whole line `partition 4 (linux) created and started` to the whole
//!   marker line in `hvctl console 4` (polled every `LINUX_BOOT_POLL_MS`,
//!   default 100), and the total from spawning QEMU.
//!
//! Prints per-round times, medians and the ratio child/bare (host wall
//! clock; no assertion), each boot split into phases at console milestones
//! (`MILESTONES`), and where the child's time goes: its VM exits by reason,
//! the root's exits and its port-intercept counters over the boot, and
//! hv-core's log lines.
//!
//! For finding where the time goes: `LINUX_BOOT_EXTRA_CMDLINE` (e.g.
//! `quiet`) appends kernel arguments on both sides (the child's bundle,
//! `boot-bundle-linux-bench.img`, is built from `LINUX_CMDLINE` plus them,
//! without the tests' RAM disk), and `LINUX_BOOT_POLL_AFTER_MS` waits that long after
//! `created` before the first poll (each poll is a `console 4` snapshot the
//! root sends over COM2 while the child waits for the one CPU).

use qemu_tests::{Machine, complete_match, contains_line, linux_images, scratch};
use serde_json::Value;
use std::io::Read;
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};
use xtask::linux::{BareOptions, INIT_MARKER, LinuxArtifacts};

/// Deadline for one boot (bare or child) to reach the marker.
const ROUND_DEADLINE: Duration = Duration::from_secs(300);

/// The child's memory (`linux_images`), used for the bare machine too.
const CHILD_MIB: u32 = 256;

/// The machine the hypervisor runs in.
const MACHINE_MIB: u32 = 768;

/// The root's line once the manifest child exists and runs.
const CREATED: &str = "partition 4 (linux) created and started";

/// Lines on the guest's console that split a boot into phases (host clock,
/// first time each whole line is seen): the kernel starting `/init`, `/init`
/// done with the modules (the last one in load order is `hv_netvsc`:
/// `loaded` in a child, `skipped` on bare QEMU), the KVP step (the child
/// waits for `/dev/vmbus/hv_kvp` and starts `hv_kvp_daemon`; bare QEMU
/// says it has none) and the marker.
const MILESTONES: [(&str, &str); 4] = [
    ("kernel", "Run /init as init process"),
    ("modules", "module hv_netvsc "),
    ("kvp", "hv_kvp_daemon "),
    ("marker", INIT_MARKER),
];

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Bare QEMU booting the pair; killed when dropped.
struct Bare {
    child: Child,
    /// Output chunks with the instant the reader got them.
    output: Receiver<(Instant, Vec<u8>)>,
    console: String,
}

impl Bare {
    fn spawn(artifacts: &LinuxArtifacts, opts: &BareOptions) -> (Self, Instant) {
        let spawned = Instant::now();
        let mut child = xtask::linux::bare_qemu_command(artifacts, opts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qemu-system-x86_64");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        });
        let bare = Self {
            child,
            output: rx,
            console: String::new(),
        };
        (bare, spawned)
    }

    /// The instants each of `needles`' whole lines had arrived (the last
    /// needle ends the wait).
    fn wait_lines(&mut self, needles: &[&str], deadline: Instant) -> Vec<Option<Instant>> {
        let mut seen = vec![None; needles.len()];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.fail(&format!("bare: no {needles:?} within {ROUND_DEADLINE:?}"));
            }
            match self.output.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((at, bytes)) => {
                    self.console.extend(bytes.iter().map(|&b| b as char));
                    for (slot, needle) in seen.iter_mut().zip(needles) {
                        if slot.is_none() && complete_match(&self.console, needle).is_some() {
                            *slot = Some(at);
                        }
                    }
                    if seen.last().is_some_and(Option::is_some) {
                        return seen;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("bare: QEMU exited before {needles:?}"))
                }
            }
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = scratch("linux-boot-bare");
        let _ = std::fs::write(dir.join("console.log"), &self.console);
        panic!("{why} (console in {})", dir.display());
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds from `from` to each milestone.
type Phases = Vec<Option<f64>>;

fn since(from: Instant, seen: &[Option<Instant>]) -> Phases {
    seen.iter()
        .map(|t| t.map(|t| t.saturating_duration_since(from).as_secs_f64()))
        .collect()
}

struct BareRound {
    to_marker: Duration,
    phases: Phases,
    console: String,
}

fn bare_round(artifacts: &LinuxArtifacts, opts: &BareOptions) -> BareRound {
    let (mut bare, spawned) = Bare::spawn(artifacts, opts);
    let needles: Vec<&str> = MILESTONES.iter().map(|m| m.1).collect();
    let seen = bare.wait_lines(&needles, spawned + ROUND_DEADLINE);
    let console = std::mem::take(&mut bare.console);
    drop(bare);
    let at = seen.last().copied().flatten().expect("the marker ends the wait");
    BareRound {
        to_marker: at - spawned,
        phases: since(spawned, &seen),
        console,
    }
}

/// Exit counts by reason, highest first, without `total` and zeros.
fn exit_reasons(info: &Value) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = info["exits"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.as_str() != "total")
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .filter(|(_, v)| *v != 0)
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

fn total_exits(info: &Value) -> u64 {
    info["exits"]["total"].as_u64().unwrap_or(0)
}

struct ChildRound {
    /// From the root's `created and started` line to the marker.
    created_to_marker: Duration,
    /// From spawning QEMU to the marker.
    total: Duration,
    /// From spawning QEMU to the `created and started` line.
    to_created: Duration,
    polls: u32,
    poll_time: Duration,
    /// Milestones from `created`.
    phases: Phases,
    child_exits: u64,
    child_reasons: Vec<(String, u64)>,
    root_exits: u64,
    console_bytes: u64,
    /// The root's counters for the child: port/MMIO intercepts it handled
    /// and accesses to ports nothing claims.
    intercepts: u64,
    stray_io: u64,
    hv_log_lines: usize,
    hv_log_top: Vec<(String, usize)>,
    console: String,
}

/// hv-core's log lines grouped by their text without digits, most frequent
/// first.
fn log_summary(log: &str) -> (usize, Vec<(String, usize)>) {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    let mut lines = 0;
    for line in log.lines() {
        lines += 1;
        let mut key: String = line
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        key.truncate(90);
        *counts.entry(key).or_default() += 1;
    }
    let mut top: Vec<(String, usize)> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(5);
    (lines, top)
}

fn child_round(images: &xtask::Images, poll: Duration, poll_after: Duration) -> ChildRound {
    let spawned = Instant::now();
    let mut m = Machine::boot_images(images, "bench-linux-boot", "", None, MACHINE_MIB);
    m.expect(CREATED);
    let created = Instant::now();
    let deadline = created + ROUND_DEADLINE;
    std::thread::sleep(poll_after);
    let mut polls = 0;
    let mut poll_time = Duration::ZERO;
    let mut seen = vec![None; MILESTONES.len()];
    let (marker, console) = loop {
        let asked = Instant::now();
        let out = m.hvctl("console 4");
        let answered = Instant::now();
        polls += 1;
        poll_time += answered - asked;
        for (slot, (_, needle)) in seen.iter_mut().zip(MILESTONES) {
            if slot.is_none() && contains_line(&out, needle) {
                *slot = Some(answered);
            }
        }
        if contains_line(&out, INIT_MARKER) {
            break (answered, out);
        }
        if answered > deadline {
            m.fail_with(&format!(
                "child: no {INIT_MARKER:?} within {ROUND_DEADLINE:?}; last console 4:\n{out}"
            ));
        }
        std::thread::sleep(poll);
    };
    let child = m.hvctl_json("info 4 --json");
    let root = m.hvctl_json("info 1 --json");
    let (hv_log_lines, hv_log_top) = log_summary(&m.hv_log());
    drop(m);
    ChildRound {
        created_to_marker: marker - created,
        total: marker - spawned,
        to_created: created - spawned,
        polls,
        poll_time,
        phases: since(created, &seen),
        child_exits: total_exits(&child),
        child_reasons: exit_reasons(&child),
        root_exits: total_exits(&root),
        console_bytes: child["console_bytes"].as_u64().unwrap_or(0),
        intercepts: child["intercepts"].as_u64().unwrap_or(0),
        stray_io: child["stray_io"].as_u64().unwrap_or(0),
        hv_log_lines,
        hv_log_top,
        console,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Each phase's own length: milestone minus the last one seen before it
/// (or the start), `None` when it was not seen (`quiet` hides `Run /init`).
fn phase_lengths(p: &Phases) -> Vec<Option<f64>> {
    let mut prev = 0.0;
    p.iter()
        .map(|t| {
            let len = t.map(|t| t - prev);
            prev = t.unwrap_or(prev);
            len
        })
        .collect()
}

fn show_phases(p: &Phases) -> String {
    MILESTONES
        .iter()
        .zip(phase_lengths(p))
        .map(|((name, _), len)| len.map_or(format!("{name} n/a"), |l| format!("{name} {l:.2}")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let rounds = env_number("LINUX_BOOT_ROUNDS", 3).max(1) as usize;
    let poll = Duration::from_millis(env_number("LINUX_BOOT_POLL_MS", 100));
    let poll_after = Duration::from_millis(env_number("LINUX_BOOT_POLL_AFTER_MS", 0));
    let extra: Vec<String> = std::env::var("LINUX_BOOT_EXTRA_CMDLINE")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    // Built before any timing.
    let (_, artifacts) = linux_images();
    let child_cmdline = std::iter::once(qemu_tests::LINUX_CMDLINE.to_string())
        .chain(extra.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    // The bench's own bundle: the same child as the tests' but without the
    // tests' RAM disk, so both machines boot the same devices' worth of work
    // (bare QEMU has no disk either).
    let child = xtask::HostChild {
        name: "linux".into(),
        kernel: artifacts.vmlinuz.clone(),
        initrd: Some(artifacts.initramfs.clone()),
        cmdline: Some(child_cmdline.clone()),
        memory_mib: CHILD_MIB.into(),
        vps: 1,
        ramdisk_mib: None,
        nic: false,
        disk: None,
    };
    let own_images =
        xtask::build_images_with(&[child], "boot-bundle-linux-bench.img", xtask::DEFAULT_MANIFEST)
            .unwrap_or_else(|e| panic!("building images: {e}"));
    let images = &own_images;
    let (accel, accel_why) = xtask::choose_accel();
    // The child's command line (`LINUX_CMDLINE`) but for `panic=`: the
    // bare machine keeps `panic=-1` so that a panic ends QEMU at once.
    let opts = BareOptions {
        memory_mib: CHILD_MIB,
        accel,
        console: xtask::Console::Pipes,
        hostname: Some("debian-child".into()),
        extra_cmdline: extra,
    };
    println!("Linux boot benchmark: {rounds} rounds, accelerator {accel_why}");
    println!(
        "  kernel {} ({})",
        artifacts.kernel_release,
        artifacts.vmlinuz.display()
    );
    println!("  bare  cmdline: {}", xtask::linux::kernel_cmdline(&opts));
    println!("  child cmdline: {child_cmdline}");
    if !poll_after.is_zero() {
        println!(
            "  child: first poll {} ms after 'created'",
            poll_after.as_millis()
        );
    }

    let mut bare = Vec::new();
    let mut child = Vec::new();
    for round in 1..=rounds {
        let b = bare_round(artifacts, &opts);
        println!(
            "round {round}: bare  spawn -> marker {:6.2} s   phases (s): {}",
            b.to_marker.as_secs_f64(),
            show_phases(&b.phases)
        );
        let c = child_round(images, poll, poll_after);
        println!(
            "round {round}: child created -> marker {:6.2} s   phases (s): {}",
            c.created_to_marker.as_secs_f64(),
            show_phases(&c.phases)
        );
        println!(
            "         child spawn -> marker {:6.2} s (spawn -> created {:.2} s)",
            c.total.as_secs_f64(),
            c.to_created.as_secs_f64()
        );
        let top: Vec<String> = c
            .child_reasons
            .iter()
            .take(8)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "         child exits {} ({}), root exits {}",
            c.child_exits,
            top.join(", "),
            c.root_exits,
        );
        println!(
            "         child console {} bytes, intercepts handled by the root {}, stray port accesses {}",
            c.console_bytes, c.intercepts, c.stray_io
        );
        println!(
            "         {} polls of console 4, {:.2} s inside them; hv-core log {} lines",
            c.polls,
            c.poll_time.as_secs_f64(),
            c.hv_log_lines
        );
        for (line, n) in &c.hv_log_top {
            println!("           {n:6}x {line}");
        }
        bare.push(b);
        child.push(c);
    }

    // The last round's consoles, for reading the guest's own timeline.
    let keep = xtask::workspace_root().join("target").join("linux-boot-bench");
    let _ = std::fs::create_dir_all(&keep);
    if let (Some(b), Some(c)) = (bare.last(), child.last()) {
        let _ = std::fs::write(keep.join("bare-console.txt"), &b.console);
        let _ = std::fs::write(keep.join("child-console.txt"), &c.console);
        println!("last round's consoles in {}", keep.display());
    }

    let bare_m = median(bare.iter().map(|b| b.to_marker.as_secs_f64()).collect());
    let child_m = median(child.iter().map(|c| c.created_to_marker.as_secs_f64()).collect());
    let total_m = median(child.iter().map(|c| c.total.as_secs_f64()).collect());
    let root_m = median(child.iter().map(|c| c.to_created.as_secs_f64()).collect());
    println!("medians over {rounds} rounds (host wall clock):");
    println!("  bare  (QEMU spawn -> marker):          {bare_m:7.2} s  1.00x");
    println!(
        "  child (root 'created' -> marker):      {child_m:7.2} s  {:.2}x bare (goal <= 1.5x)",
        child_m / bare_m
    );
    println!(
        "  child total (QEMU spawn -> marker):    {total_m:7.2} s  {:.2}x bare",
        total_m / bare_m
    );
    println!("  root boot (QEMU spawn -> 'created'):   {root_m:7.2} s");
    println!("phases, medians (bare from QEMU spawn, child from 'created'; child within 0.1 s + a poll):");
    let bare_p: Vec<_> = bare.iter().map(|b| phase_lengths(&b.phases)).collect();
    let child_p: Vec<_> = child.iter().map(|c| phase_lengths(&c.phases)).collect();
    for (i, (name, needle)) in MILESTONES.iter().enumerate() {
        let med = |rows: &[Vec<Option<f64>>]| {
            let v: Vec<f64> = rows.iter().filter_map(|r| r[i]).collect();
            (!v.is_empty()).then(|| median(v))
        };
        match (med(&bare_p), med(&child_p)) {
            (Some(b), Some(c)) => println!(
                "  {name:<8} bare {b:6.2} s  child {c:6.2} s  ({:+.2} s)   up to {needle:?}",
                c - b
            ),
            (b, c) => println!("  {name:<8} bare {b:?}  child {c:?}   up to {needle:?}"),
        }
    }
}
