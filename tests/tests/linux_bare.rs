//! Debian's stock 6.1 kernel and the Linux-child initramfs (built by
//! `xtask::linux`) boot on bare QEMU: no hypervisor, so every Hyper-V module
//! is reported and skipped, and `/init` still reaches its marker and an
//! interactive shell. This is the baseline a Linux child partition is
//! compared with.
//!
//! Run with `--nocapture` to see the boot time to the marker.

use qemu_tests::{Machine, scratch};
use xtask::linux::{BareOptions, INIT_MARKER, LinuxArtifacts};

/// Bare QEMU running the Linux child, under the harness (deadlines, console
/// kept on failure, killed when dropped).
fn boot_bare(artifacts: &LinuxArtifacts, hostname: &str) -> Machine {
    let dir = scratch("linux-bare");
    let opts = BareOptions {
        console: xtask::Console::Pipes,
        hostname: Some(hostname.into()),
        ..BareOptions::default()
    };
    let command = xtask::linux::bare_qemu_command(artifacts, &opts);
    let (hv_log, socket) = (dir.join("hv-core.log"), dir.join("mgmt.sock"));
    Machine::spawn(command, dir, hv_log, socket)
}

/// Type `command` at `prompt`; return its output lines (without the
/// echoed command and the next prompt).
fn run(m: &mut Machine, command: &str, prompt: &str) -> Vec<String> {
    m.send_line(command);
    let text = m.expect_prompt(prompt);
    let text = text.strip_suffix(prompt).unwrap_or(&text);
    text.lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.contains(command))
        .collect()
}

#[test]
fn debian_kernel_boots_the_child_initramfs_on_bare_qemu() {
    xtask::ensure_qemu().unwrap_or_else(|e| panic!("{e}"));
    let artifacts = xtask::linux::linux_artifacts(&xtask::workspace_root())
        .unwrap_or_else(|e| panic!("Linux child: {e}"));
    let names: Vec<&str> = artifacts.modules.iter().map(|m| m.name.as_str()).collect();
    for m in xtask::linux::HV_MODULES {
        assert!(names.contains(&m), "{m} missing from {names:?}");
    }
    let pos = |n: &str| names.iter().position(|m| *m == n).unwrap();
    assert!(
        pos("hv_vmbus") < pos("hv_utils") && pos("scsi_mod") < pos("hv_storvsc"),
        "{names:?}"
    );

    let started = std::time::Instant::now();
    let mut m = boot_bare(&artifacts, "bare-test");
    let boot = m.expect(INIT_MARKER);
    let to_marker = started.elapsed();
    eprintln!("linux_bare: bare QEMU (TCG) boot to the init marker took {to_marker:.2?}");

    // No VMBus here: hv_vmbus fails and everything needing it is skipped,
    // but the modules that need nothing Hyper-V load.
    assert!(
        boot.contains("hv-rs linux child: module hv_vmbus failed"),
        "{boot}"
    );
    assert!(
        boot.contains("hv-rs linux child: module hv_utils skipped: needs hv_vmbus"),
        "{boot}"
    );
    assert!(
        boot.contains("hv-rs linux child: module scsi_mod loaded"),
        "{boot}"
    );
    assert!(
        boot.contains("no /dev/vmbus/hv_kvp, hv_kvp_daemon not started"),
        "{boot}"
    );

    // The hostname from the command line is in the prompt.
    let prompt = "bare-test:/# ";
    m.expect_prompt(prompt);
    let release = run(&mut m, "uname -r", prompt);
    assert!(
        release.iter().any(|l| l == &artifacts.kernel_release),
        "uname -r: {release:?}"
    );
    let answer = run(&mut m, "echo done-$((6*7))", prompt);
    assert!(answer.iter().any(|l| l == "done-42"), "echo: {answer:?}");
    // hv_kvp_daemon and its glibc are in place and runnable.
    let kvp = run(&mut m, "hv_kvp_daemon --help", prompt);
    assert!(
        kvp.iter().any(|l| l.starts_with("Usage: hv_kvp_daemon")),
        "{kvp:?}"
    );

    m.send_line("poweroff -f");
    let code = m.wait_exit();
    assert_eq!(code, 0, "QEMU exit status after poweroff -f");
}
