//! QEMU integration tests for booting and demotion (issue 2): each boots the
//! real root kernel + hv-core under QEMU with a deadline, and checks the
//! console, hv-core's own log and the isa-debug-exit status.

use qemu_tests::{Machine, QEMU_EXIT_SUCCESS, scratch};

/// (a) Before launch CPUID shows no HV#1 interface; after launch it shows
/// ours, with root privileges.
#[test]
fn cpuid_shows_hv1_only_after_launch() {
    let (console, hv_log) = Machine::run_scenario("cpuid", None);
    let before = console
        .lines()
        .find(|l| l.starts_with("cpuid: before:"))
        .expect("before line");
    assert!(!before.contains("Microsoft Hv"), "{before}");
    assert!(before.contains("interface=0x0"), "{before}");
    let after = console
        .lines()
        .find(|l| l.starts_with("cpuid: after:"))
        .expect("after line");
    assert!(after.contains("vendor='Microsoft Hv'"), "{after}");
    assert!(after.contains("interface=0x31237648"), "{after}");
    // hv-core really launched the root in guest mode, on its own log channel.
    assert!(hv_log.contains("launching the root partition"), "{hv_log}");
    assert!(
        !console.contains("[hv-core]"),
        "hv-core must not write to the root's console"
    );
}

/// (b) Reading and writing hv-core's region from the root faults (#GP,
/// handled by the root) while hv-core keeps running and counts them.
#[test]
fn root_cannot_touch_hv_core_region() {
    let (console, hv_log) = Machine::run_scenario("hv-region", None);
    assert_eq!(
        console.matches(": #GP general protection").count(),
        8,
        "{console}"
    );
    assert!(console.contains("hv-core alive: partition id 1"), "{console}");
    assert_eq!(
        hv_log.matches("of hv-core's region at GPA").count(),
        8,
        "{hv_log}"
    );
}

/// (c) The hypercall page: HvCallGetPartitionId returns the root's id, an
/// unknown call code returns INVALID_HYPERCALL_CODE, bad inputs their statuses.
#[test]
fn hypercall_page_works() {
    let (console, _) = Machine::run_scenario("hypercall", None);
    assert!(
        console.contains("hypercall: HvCallGetPartitionId -> 1"),
        "{console}"
    );
    assert!(
        console.contains("hypercall: unknown call code 0x7777: INVALID_HYPERCALL_CODE"),
        "{console}"
    );
    assert!(
        console.contains("misaligned output GPA: INVALID_ALIGNMENT"),
        "{console}"
    );
    // The private signal-and-dispatch call checks its whole input first.
    for line in [
        "hypercall: signal and dispatch, too many signals: INVALID_PARAMETER",
        "hypercall: signal and dispatch, reserved header field: INVALID_PARAMETER",
        "hypercall: signal and dispatch, reserved signal field: INVALID_PARAMETER",
        "hypercall: signal and dispatch, no such partition: INVALID_PARTITION_ID",
        // HvCallAssertVirtualInterrupt checks its input before the partition.
        "hypercall: assert interrupt, level-triggered: INVALID_PARAMETER",
        "hypercall: assert interrupt, NMI: INVALID_PARAMETER",
        "hypercall: assert interrupt, reserved control bit: INVALID_PARAMETER",
        "hypercall: assert interrupt, vector 15: INVALID_PARAMETER",
        "hypercall: assert interrupt, target VTL 1: INVALID_PARAMETER",
        "hypercall: assert interrupt, reserved field: INVALID_PARAMETER",
        "hypercall: assert interrupt, no such partition: INVALID_PARTITION_ID",
        "hypercall: assert interrupt, the root: INVALID_PARTITION_ID",
    ] {
        assert!(console.lines().any(|l| l.trim_end() == line), "{line}\n{console}");
    }
}

/// (d) After demotion the root still drives its own virtio-blk disk: sector 0
/// matches the image's bytes.
#[test]
fn virtio_blk_sector_matches_image_after_demotion() {
    let dir = scratch("disk");
    let disk = dir.join("disk.img");
    // Sector 0 from a small PRNG seeded per run, so a stale or fake read cannot match.
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut bytes = vec![0u8; 64 * 1024];
    for b in bytes.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = state as u8;
    }
    std::fs::write(&disk, &bytes).unwrap();
    let (console, _) = Machine::run_scenario("disk", Some(disk));
    let expected: String = bytes[..512].iter().map(|b| format!("{b:02x}")).collect();
    let line = console
        .lines()
        .find(|l| l.starts_with("DISK sector0 "))
        .expect("sector line");
    assert_eq!(line.trim_end().trim_start_matches("DISK sector0 "), expected);
    assert!(console.contains("disk: 128 sectors"), "{console}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// (e) `hv status` in the root's shell, its JSON form, a refused command, and poweroff.
#[test]
fn hv_status_in_the_management_shell() {
    let images = qemu_tests::images();
    let mut m = Machine::boot("shell", "", Some(images.disk.clone()));
    m.expect("root> ");
    m.send_line("hv status");
    let out = m.expect("root> ");
    for needle in [
        "hypervisor:    present",
        "vendor:        Microsoft Hv",
        "interface:     Hv#1 (0x31237648)",
        "CPU_MANAGEMENT",
        "partition:     1 (root, CpuManagement)",
        "hv-core:       region 0x",
        "cpuid",
        "vmmcall",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let exits: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("exits:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("exit total");
    assert!(exits > 0, "{out}");

    m.send_line("hv status --json");
    let out = m.expect("root> ");
    let json = out.lines().find(|l| l.starts_with('{')).expect("a JSON line");
    assert!(json.contains("\"present\":true"), "{json}");
    assert!(json.contains("\"vendor\":\"Microsoft Hv\""), "{json}");
    assert!(json.contains("\"cpu_management\":true"), "{json}");
    assert!(json.contains("\"region\":{\"base\":"), "{json}");

    m.send_line("frobnicate");
    let out = m.expect("root> ");
    assert!(out.contains("error: unknown command 'frobnicate'"), "{out}");

    m.send_line("poweroff");
    assert_eq!(m.wait_exit(), QEMU_EXIT_SUCCESS);
}

/// Synthetic MSRs and EFER: read-only and unknown MSRs fault, EFER keeps SVME
/// set underneath the root (hidden from it), a hypercall page in hv-core's
/// region is refused, and GUEST_OS_ID = 0 disables hypercalls until re-enabled.
#[test]
fn synthetic_msrs_and_efer_are_policed() {
    let (console, hv_log) = Machine::run_scenario("msr", None);
    for needle in [
        "msr: write VP_INDEX (read-only): #GP",
        "msr: clear EFER.LME with paging on: #GP",
        "SVME hidden, hypercalls unaffected",
        "msr: hypercall page inside hv-core's region: #GP",
        "msr: GUEST_OS_ID = 0: VMMCALL raises #UD",
    ] {
        assert!(console.contains(needle), "missing {needle:?}:\n{console}");
    }
    assert!(hv_log.contains("is not its RAM: #GP"), "{hv_log}");
}
