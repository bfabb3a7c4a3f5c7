//! The platform a Linux child needs from hv-core (virtual local APIC, the
//! Hyper-V time enlightenments, synthetic timers), checked from inside a test
//! OS child in mode `apic-timer` (`tests/guests/testos/src/apic.rs`): every
//! check prints one line ending in `ok` or `FAILED`.

use qemu_tests::Machine;

/// Lines the child prints, one per check, in order.
const CHECKS: [&str; 12] = [
    "cpuid: ",
    "xapic: ",
    "x2apic: enabled",
    "frequencies: ",
    "one-shot timer: ",
    "eoi: ",
    "periodic timer: ",
    "tpr: ",
    "self ipi via icr: ",
    "reference counter: ",
    "reference tsc page: ",
    "synthetic timer: ",
];

/// The console line that starts with `prefix` (after the test OS's name
/// tag) must exist and end in `: ok`.
fn assert_check_ok(console: &str, prefix: &str) {
    let line = console
        .lines()
        .find(|l| l.contains(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in\n{console}"));
    assert!(
        line.trim_end().ends_with(": ok"),
        "check failed: {line}\n{console}"
    );
}

#[test]
fn a_child_gets_an_apic_timers_and_reference_time() {
    let mut m = Machine::boot("linux-platform", "", None);
    m.wait_json("info 2 --json", "alpha to halt", |v| v["halted_vps"] == 1);
    let created = m.hvctl("create plat --memory 8M --image testos --mode apic-timer --start");
    assert!(created.contains("created and started"), "{created}");
    let console = m.wait_text("console 4", "apic-timer done");
    eprintln!("{console}");
    for check in CHECKS {
        assert_check_ok(&console, &format!("testos plat: {check}"));
    }
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["injected_exceptions"], 0, "{info}");
    assert_eq!(info["state"], "running", "{info}");
}

/// IPIs between a child's two VPs (test OS mode `smp-ipi`,
/// `tests/guests/testos/src/smp.rs`): 100 fixed IPIs from VP 0 to VP 1 each
/// arrive, so do a broadcast to all but the sender and a lowest-priority
/// IPI; an unknown APIC id reaches nobody; a Startup IPI to a running VP, an
/// NMI and INIT to the boot processor change nothing (VP 1 still counts).
/// Then Hyper-V's synthetic cluster IPIs (bad inputs refused) and a
/// GUEST_IDLE read with interrupts off that only VP 1's kick ends.
#[test]
fn ipis_travel_between_a_childs_vps() {
    let mut m = Machine::boot("smp-ipi", "", None);
    m.wait_json("info 2 --json", "alpha to halt", |v| v["halted_vps"] == 1);
    let created = m.hvctl("create smp --memory 16M --vps 2 --image testos --mode smp-ipi --start");
    assert!(created.contains("created and started"), "{created}");
    let console = m.wait_text("console 4", "smp-ipi done");
    // The APIC's IPIs, then Hyper-V's synthetic IPIs and guest idle
    // (Linux's paravirtual spinlocks): one result line each.
    for check in ["fixed", "synthetic"] {
        assert_check_ok(&console, &format!("testos smp: smp-ipi: {check} "));
    }
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["injected_exceptions"], 0, "{info}");
    // The idle was one GUEST_IDLE read, counted apart from other MSR reads;
    // the refused calls are the failed hypercalls (3 bad inputs, 1 rep).
    assert_eq!(info["exits"]["guest_idle"], 1, "{info}");
    assert_eq!(info["failed_hypercalls"], 4, "{info}");
}
