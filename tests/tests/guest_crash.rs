//! Guest crash reporting (TLFS "Guest Crash Reporting", as Linux uses it on
//! a panic): a test OS child in mode `crash-report` finds CPUID 0x40000003
//! EDX bit 10, writes the crash MSRs P0-P4 (P3/P4 naming a page of panic
//! text) and CRASH_CTL = CrashNotify | CrashMessage. hv-core stops the VP and
//! tells the root, which marks the child crashed with the parameters and the
//! panic line; the other children run on, and `start` brings the child back
//! from power-on state (it crashes the same way again).

use qemu_tests::Machine;
use serde_json::Value;

/// P0 the test OS writes (`tests/guests/testos/src/crash.rs`).
const P0: &str = "P0 0x7e57c0de000000a1";
const PANIC_LINE: &str = "Kernel panic - not syncing: testos crash-report";

fn wait_crashed(m: &mut Machine) -> Value {
    let info = m.wait_json("info 4 --json", "the child to report its crash", |v| {
        v["state"] == "crashed"
    });
    let reason = info["crash"].as_str().unwrap_or_default().to_owned();
    assert!(reason.starts_with("guest crash report: "), "{info}");
    assert!(reason.contains(P0), "{info}");
    assert!(reason.contains("P1 0x1111222233334444"), "{info}");
    assert!(reason.contains("P2 0xffffffff81000bad"), "{info}");
    assert!(reason.contains("CRASH_CTL 0xc000000000000000"), "{info}");
    // The line with "Kernel panic", not the last line of the page.
    assert!(reason.ends_with(&format!("] {PANIC_LINE}")), "{info}");
    assert!(!reason.contains("Comm: testos"), "{info}");
    info
}

#[test]
fn a_guest_crash_report_stops_only_that_child_and_start_restarts_it() {
    let mut m = Machine::boot("guest-crash", "", None);
    let peer_before = m.peer_checksum();
    m.start_attacker("crash-report");
    wait_crashed(&mut m);

    let console = m.wait_text("console 4", "reporting a crash");
    assert!(
        console.contains("CRASH_CTL reads 0xc000000000000000: ok"),
        "{console}"
    );
    assert!(console.contains("crash parameters read back: ok"), "{console}");
    assert!(!console.contains("CRASH REPORT IGNORED"), "{console}");
    assert!(!console.contains("FAILED"), "{console}");
    m.assert_intact(&peer_before);

    // hv-core logged the report once.
    let log = m.hv_log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("[hv-core] partition 4: VP 0: guest crash report")),
        "{log}"
    );

    // A restart is a reset: the VP runs again from power-on state (the
    // crash MSRs cleared: the read-back check passes only if the writes
    // land again) and crashes the same way.
    let out = m.hvctl("start 4");
    assert!(out.contains("started"), "{out}");
    let start = std::time::Instant::now();
    let console = loop {
        let c = m.hvctl("console 4");
        if c.matches("reporting a crash").count() >= 2 {
            break c;
        }
        assert!(start.elapsed() < qemu_tests::BOOT_DEADLINE, "no second run:\n{c}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(!console.contains("CRASH REPORT IGNORED"), "{console}");
    assert!(!console.contains("FAILED"), "{console}");
    wait_crashed(&mut m);
    m.assert_intact(&peer_before);
}

#[test]
fn a_message_page_outside_the_childs_ram_is_not_read() {
    let mut m = Machine::boot("guest-crash-outside", "", None);
    let peer_before = m.peer_checksum();
    m.start_attacker("crash-report-outside");
    let info = m.wait_json("info 4 --json", "the child to report its crash", |v| {
        v["state"] == "crashed"
    });
    let reason = info["crash"].as_str().unwrap_or_default();
    assert!(reason.starts_with("guest crash report: "), "{info}");
    assert!(reason.contains(P0), "{info}");
    assert!(reason.contains("P3 0xfffff000 P4 0x1000"), "{info}");
    assert!(
        reason.ends_with("(message page outside the child's RAM: not read)"),
        "{info}"
    );
    m.assert_intact(&peer_before);
}
