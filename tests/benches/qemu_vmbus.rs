//! QEMU benchmark (not part of `cargo xtask test`; run with
//! `cargo bench -p qemu_tests --bench qemu_vmbus`): VMBus echo round trips
//! through a real child's rings and the root's echo device, against a
//! baseline measured in the same boot — the same child making null
//! hypercalls (HvGetPartitionId), the cheapest call that reaches hv-core.
//! Reports round trips per second (host wall clock, QEMU TCG) as a ratio to
//! the baseline, and VM exits per round trip from hv-core's counters (exact,
//! independent of the host).
//!
//! Then the same echo kept 16 and 32 packets deep (`vmbus-bench-batch:D`:
//! refill after reading what came back, signal the root only when the ring
//! was empty before the round's first write), and two variants at depth 16:
//! `eager` (signal right after the write that asks, as Linux's
//! `hv_ringbuffer_write`) and `masked` (the child keeps interrupt_mask set
//! on its host-to-guest ring, so the root's echoes need no signal). The
//! issue's goal: at most 1 exit per message at depth 1, at most 0.1 at
//! depth ≥ 16.

use qemu_tests::{Machine, created_partition};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Operations per run (the test OS's `NULL_HYPERCALLS`,
/// `BENCH_ROUND_TRIPS` and `BATCH_ROUND_TRIPS`): long enough (seconds)
/// that the 100 ms console polling is a small error.
const CALLS: u64 = 100_000;
const ROUND_TRIPS: u64 = 20_000;
const BATCH_ROUND_TRIPS: u64 = 100_000;

fn total_exits(v: &Value) -> u64 {
    v["exits"]["total"].as_u64().unwrap_or(0)
}

/// Hypercall exits (HvSignalEvent, HvPostMessage, …): the exits a message
/// itself costs, without the console's port exits.
fn vmmcall_exits(v: &Value) -> u64 {
    v["exits"]["vmmcall"].as_u64().unwrap_or(0)
}

/// One run: wall seconds, child exits, root exits, the child's console.
struct Run {
    seconds: f64,
    child: u64,
    /// Of `child`, hypercalls.
    child_calls: u64,
    root: u64,
    console: String,
}

/// Run one child in `mode` until a whole line with `done` shows on its
/// console (failing at once on a line with "failed" or "wrong"), then
/// destroy it.
fn measure(m: &mut Machine, name: &str, mode: &str, done: &str) -> Run {
    let created = m.hvctl(&format!("create {name} --memory 8M --image testos --mode {mode}"));
    let id = created_partition(&created).unwrap_or_else(|| m.fail_with(&format!("create {name}: {created}")));
    assert!(created.contains("created"), "{created}");
    let root_before = total_exits(&m.hvctl_json("info 1 --json"));
    let child_info = m.hvctl_json(&format!("info {id} --json"));
    let (child_before, calls_before) = (total_exits(&child_info), vmmcall_exits(&child_info));
    let start = Instant::now();
    assert!(m.hvctl(&format!("start {id}")).contains("started"));
    let console = loop {
        let out = m.hvctl(&format!("console {id}"));
        if qemu_tests::contains_line(&out, done) {
            break out;
        }
        if qemu_tests::contains_line(&out, "failed")
            || qemu_tests::contains_line(&out, "wrong")
            || out.contains("panic")
            || start.elapsed() > qemu_tests::BOOT_DEADLINE
        {
            m.fail_with(&format!("{mode}: no {done:?}:\n{out}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let seconds = start.elapsed().as_secs_f64();
    let root_after = total_exits(&m.hvctl_json("info 1 --json"));
    let child_info = m.hvctl_json(&format!("info {id} --json"));
    let (child_after, calls_after) = (total_exits(&child_info), vmmcall_exits(&child_info));
    m.hvctl(&format!("stop {id}"));
    let out = m.hvctl(&format!("destroy {id}"));
    assert!(out.contains("destroyed"), "{out}");
    Run {
        seconds,
        child: child_after - child_before,
        child_calls: calls_after - calls_before,
        root: root_after - root_before,
        console,
    }
}

fn main() {
    let mut m = Machine::boot("bench-vmbus", "", None);
    m.wait_json("info 2 --json", "alpha to halt", |v| v["halted_vps"] == 1);
    let base = measure(
        &mut m,
        "nullhc",
        "null-hypercalls",
        "100000 of 100000 null hypercalls done",
    );
    let echo = measure(&mut m, "echo", "vmbus-bench", "20000 of 20000 round trips ok");
    let batch_runs = [
        ("depth 16", "16"),
        ("depth 32", "32"),
        ("depth 16, eager signal", "16:eager"),
        ("depth 16, masked", "16:masked"),
    ];
    let mut batches = Vec::new();
    for (label, args) in batch_runs {
        let done = format!(
            "vmbus echo batch: {BATCH_ROUND_TRIPS} of {BATCH_ROUND_TRIPS} echoes ok at depth {}",
            args.split(':').next().unwrap()
        );
        let run = measure(&mut m, "batch", &format!("vmbus-bench-batch:{args}"), &done);
        batches.push((label, run, done));
    }
    // The echo runs include connecting, offers, GPADL, open and a few
    // console lines (each byte a port exit): small against the messages.
    let per_call = |x: u64| x as f64 / CALLS as f64;
    let call_s = base.seconds / CALLS as f64;
    println!("QEMU (TCG) VMBus echo benchmark, one boot:");
    println!(
        "  null hypercall:            {:>7.0} /s   exits per call: child {:.3}, root {:.3}",
        1.0 / call_s,
        per_call(base.child),
        per_call(base.root)
    );
    let row = |label: &str, run: &Run, messages: u64| {
        let per = |x: u64| x as f64 / messages as f64;
        println!(
            "  echo, {label:<22} {:>7.0} /s   exits per message: child {:.3} (hypercalls {:.3}), root {:.3}   ({:.2}x a null hypercall per message)",
            messages as f64 / run.seconds,
            per(run.child),
            per(run.child_calls),
            per(run.root),
            (run.seconds / messages as f64) / call_s
        );
    };
    row("depth 1:", &echo, ROUND_TRIPS);
    for (label, run, done) in &batches {
        row(&format!("{label}:"), run, BATCH_ROUND_TRIPS);
        let line = run
            .console
            .lines()
            .find(|l| l.contains(done.as_str()))
            .unwrap_or("");
        println!("      child: {}", line.split(" at depth ").nth(1).unwrap_or(line));
    }
}
