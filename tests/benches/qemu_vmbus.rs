//! QEMU benchmark (not part of `cargo xtask test`; run with
//! `cargo bench -p qemu_tests --bench qemu_vmbus`): VMBus echo round trips
//! through a real child's rings and the root's echo device, against a
//! baseline measured in the same boot — the same child making null
//! hypercalls (HvGetPartitionId), the cheapest call that reaches hv-core.
//! Reports round trips per second (host wall clock, QEMU TCG) as a ratio to
//! the baseline, and VM exits per round trip from hv-core's counters (exact,
//! independent of the host).

use qemu_tests::Machine;
use serde_json::Value;
use std::time::Instant;

/// Operations per run (the test OS's `NULL_HYPERCALLS` and
/// `BENCH_ROUND_TRIPS`): long enough (seconds) that the 100 ms console
/// polling is a small error.
const CALLS: f64 = 100_000.0;
const ROUND_TRIPS: f64 = 20_000.0;

fn total_exits(v: &Value) -> u64 {
    v["exits"]["total"].as_u64().unwrap_or(0)
}

/// Run one child in `mode` until `done` shows on its console; returns
/// (seconds, child exits, root exits) over the run.
fn measure(m: &mut Machine, id: u64, name: &str, mode: &str, done: &str) -> (f64, u64, u64) {
    let created = m.hvctl(&format!("create {name} --memory 8M --image testos --mode {mode}"));
    assert!(created.contains("created"), "{created}");
    let root_before = total_exits(&m.hvctl_json("info 1 --json"));
    let child_before = total_exits(&m.hvctl_json(&format!("info {id} --json")));
    let start = Instant::now();
    assert!(m.hvctl(&format!("start {id}")).contains("started"));
    let console = m.wait_text(&format!("console {id}"), done);
    let seconds = start.elapsed().as_secs_f64();
    assert!(
        !console.contains("failed") && !console.contains("wrong"),
        "{console}"
    );
    let root_after = total_exits(&m.hvctl_json("info 1 --json"));
    let child_after = total_exits(&m.hvctl_json(&format!("info {id} --json")));
    (seconds, child_after - child_before, root_after - root_before)
}

fn main() {
    let mut m = Machine::boot("bench-vmbus", "", None);
    m.wait_json("info 2 --json", "alpha to halt", |v| v["halted_vps"] == 1);
    let (base_s, base_child, base_root) = measure(
        &mut m,
        4,
        "nullhc",
        "null-hypercalls",
        "100000 of 100000 null hypercalls done",
    );
    let (echo_s, echo_child, echo_root) =
        measure(&mut m, 5, "echo", "vmbus-bench", "20000 of 20000 round trips ok");
    // The echo run includes connecting, offers, GPADL and open (a handful of
    // messages): small against 20000 round trips.
    let per = |x: u64| x as f64 / ROUND_TRIPS;
    println!("QEMU (TCG) VMBus echo benchmark, one boot:");
    println!(
        "  null hypercall:  {:>7.0} /s   exits per call: child {:.2}, root {:.2}",
        CALLS / base_s,
        base_child as f64 / CALLS,
        base_root as f64 / CALLS
    );
    println!(
        "  echo round trip: {:>7.0} /s   exits per round trip: child {:.2}, root {:.2}",
        ROUND_TRIPS / echo_s,
        per(echo_child),
        per(echo_root)
    );
    println!(
        "  ratio: an echo round trip costs {:.1}x a null hypercall in wall time",
        (echo_s / ROUND_TRIPS) / (base_s / CALLS)
    );
}
