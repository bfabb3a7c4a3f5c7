//! A child probing CPU state hv-core does not switch per partition (XSAVE,
//! PKRU, CET via CR4 and CPUID), the SVM instructions, MSRs and SynIC
//! registers with bad values, and page-straddling prefixed instructions
//! (issue 7, defects 3 and 5 and the hostile suite). The test OS runs each
//! case and prints PASS/FAIL; every case must pass, the attacker must still
//! be running (refusals, not crashes), and hv-core, the root and a peer must
//! be untouched.

use qemu_tests::Machine;

/// Cases the `cpu-hostile` mode runs (must match its list).
const CASES: usize = 48;

#[test]
fn cpu_state_that_is_not_switched_is_hidden_and_refused() {
    let mut m = Machine::boot("hostile-cpu", "", None);
    let peer_before = m.peer_checksum();
    m.start_attacker("cpu-hostile");
    let console = m.wait_text("console 4", "cpu-hostile: ");
    let summary = format!("cpu-hostile: {CASES} passed, 0 failed");
    let fails: Vec<&str> = console.lines().filter(|l| l.contains(": FAIL ")).collect();
    assert!(
        fails.is_empty(),
        "failed cases:\n{}\n\n{console}",
        fails.join("\n")
    );
    assert!(console.contains(&summary), "missing {summary:?} in\n{console}");
    let passes = console
        .lines()
        .filter(|l| l.starts_with("hostile H-") && l.contains(": PASS "))
        .count();
    assert_eq!(passes, CASES, "{console}");

    // Refused, not stopped: the attacker runs on (or halts at its end).
    let info = m.hvctl_json("info 4 --json");
    assert!(matches!(info["state"].as_str(), Some("running")), "{info}");
    assert_eq!(info["crash"], serde_json::Value::Null, "{info}");
    // #GP/#UD injected for every refusal: at least the 5000-WRMSR flood.
    assert!(info["injected_exceptions"].as_u64().unwrap() >= 5000, "{info}");

    // hv-core's log: a partition's behaviour gets at most 16 lines (defect 5:
    // 5,000 refused writes once made 5,001).
    let log = m.hv_log();
    let lines = log
        .lines()
        .filter(|l| l.starts_with("[hv-core] partition 4: "))
        .count();
    assert!(lines <= 16, "{lines} hv-core log lines for partition 4:\n{log}");

    // Restart is reset (defect 4): the first run locked its HYPERCALL MSR,
    // set GUEST_OS_ID, enabled its SynIC and left FX state behind. After
    // stop/start every probe must see power-on state again: VMMCALL #UD
    // before the page is enabled (H-VMM-01), the MSR writable, and so on.
    assert!(m.hvctl("stop 4").contains("stopped"));
    assert!(m.hvctl("start 4").contains("started"));
    let start = std::time::Instant::now();
    let console = loop {
        let c = m.hvctl("console 4");
        if c.matches("cpu-hostile: ").count() >= 2 {
            break c;
        }
        assert!(start.elapsed() < qemu_tests::BOOT_DEADLINE, "no second run:\n{c}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(console.matches(summary.as_str()).count(), 2, "{console}");
    assert!(!console.contains(": FAIL "), "{console}");
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["state"], "running", "{info}");

    m.assert_intact(&peer_before);
}
