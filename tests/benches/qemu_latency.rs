//! QEMU benchmark (not part of `cargo xtask test`; run with
//! `cargo bench -p qemu_tests --bench qemu_latency`): how much a hostile
//! child costs the operator. In one boot, the round-trip latency of a
//! management command on COM2 (`hvctl list --json`) and of a command typed on
//! the root's console (COM1, until the next prompt) is sampled with no extra
//! child (the baseline), then while one child at a time floods the root:
//! a spinning child, the hostile CPU prober, and the hostile VMBus clients.
//! Reports median, 95th percentile and worst latency per flood, and each as a
//! ratio to the baseline of the same run (host wall clock; no assertion).

use qemu_tests::Machine;
use std::time::{Duration, Instant};

const SAMPLES: usize = 40;

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

struct Figures {
    median: Duration,
    p95: Duration,
    worst: Duration,
}

fn figures(mut samples: Vec<Duration>) -> Figures {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Figures {
        median: at(0.5),
        p95: at(0.95),
        worst: *samples.last().expect("samples"),
    }
}

/// (COM2, COM1) latencies while whatever runs now keeps running.
fn sample(m: &mut Machine) -> (Figures, Figures) {
    let mut com2 = Vec::new();
    let mut com1 = Vec::new();
    for i in 0..SAMPLES {
        let t = Instant::now();
        let _ = m.hvctl_json("list --json");
        com2.push(t.elapsed());
        // A command unique to this sample, so that the wait can only end on
        // its own answer (never on an earlier prompt still in the pipe).
        let word = format!(
            "latency{}x{i}",
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let t = Instant::now();
        m.send_line(&word);
        m.expect(&format!("unknown command '{word}'"));
        com1.push(t.elapsed());
    }
    (figures(com2), figures(com1))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(name: &str, (com2, com1): &(Figures, Figures), base: &(Figures, Figures)) {
    println!(
        "{name:<28} COM2 median {:7.2} ms ({:5.2}x) p95 {:7.2} ms worst {:7.2} ms ({:5.2}x) | COM1 median {:7.2} ms ({:5.2}x) worst {:7.2} ms ({:5.2}x)",
        ms(com2.median),
        ms(com2.median) / ms(base.0.median),
        ms(com2.p95),
        ms(com2.worst),
        ms(com2.worst) / ms(base.0.worst),
        ms(com1.median),
        ms(com1.median) / ms(base.1.median),
        ms(com1.worst),
        ms(com1.worst) / ms(base.1.worst),
    );
}

fn main() {
    let mut m = Machine::boot("bench-latency", "", None);
    m.wait_json("info 2 --json", "alpha to halt", |v| v["halted_vps"] == 1);
    let base = sample(&mut m);
    println!("operator latency under hostile children (QEMU, one boot, {SAMPLES} samples each):");
    report("baseline (no extra child)", &base, &base);
    let floods = [
        ("spin", "spinning child"),
        ("cpu-hostile", "hostile CPU prober"),
        ("vmbus-hostile-ring-flood", "ring flood"),
        ("vmbus-hostile-gpadl-flood", "GPADL flood"),
        ("vmbus-hostile-connect-churn", "connect/unload churn"),
    ];
    for (i, (mode, name)) in floods.iter().enumerate() {
        let id = 4 + i as u64;
        let out = m.hvctl(&format!(
            "create f{i} --memory 8M --image testos --mode {mode} --start"
        ));
        assert!(out.contains("created and started"), "{out}");
        // Let the flood get going.
        std::thread::sleep(Duration::from_millis(300));
        let under = sample(&mut m);
        report(name, &under, &base);
        let _ = m.hvctl(&format!("stop {id}"));
        let _ = m.hvctl(&format!("destroy {id}"));
    }
}
