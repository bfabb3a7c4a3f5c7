//! Debian's stock 6.1 kernel and the Linux-child initramfs (built by
//! `xtask::linux`) boot on bare QEMU: no hypervisor, so every Hyper-V module
//! is reported and skipped, and `/init` still reaches its marker and an
//! interactive shell. This is the baseline a Linux child partition is
//! compared with.
//!
//! Run with `--nocapture` to see the boot time to the marker.

use qemu_tests::{complete_match, scratch};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};
use xtask::linux::{BareOptions, INIT_MARKER, LinuxArtifacts};

/// Deadline for each wait (TCG on two cores; a boot takes seconds).
const DEADLINE: Duration = Duration::from_secs(180);

/// Bare QEMU running the Linux child, killed when dropped.
struct Bare {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Receiver<u8>,
    console: String,
    /// Holds the console transcript; removed when the test passes.
    dir: PathBuf,
}

impl Bare {
    fn boot(artifacts: &LinuxArtifacts, hostname: &str) -> Self {
        let dir = scratch("linux-bare");
        let opts = BareOptions {
            console: xtask::Console::Pipes,
            hostname: Some(hostname.into()),
            ..BareOptions::default()
        };
        let mut child = xtask::linux::bare_qemu_command(artifacts, &opts)
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
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if tx.send(b).is_err() {
                        return;
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            output: rx,
            console: String::new(),
            dir,
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        while let Ok(b) = self.output.recv_timeout(Duration::from_millis(200)) {
            self.console.push(b as char);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("{why}\n--- console ---\n{}", self.console);
    }

    /// Wait for `needle` after what was consumed: its whole line, or just the
    /// text itself when `prompt` (a prompt waits for input, with no newline).
    fn wait_for(&mut self, needle: &str, prompt: bool) -> String {
        let start = Instant::now();
        let from = self.console.len();
        loop {
            let found = if prompt {
                self.console[from..].find(needle).map(|at| at + needle.len())
            } else {
                complete_match(&self.console[from..], needle).map(|(_, end)| end)
            };
            if let Some(end) = found {
                return self.console[from..from + end].to_string();
            }
            let left = DEADLINE.saturating_sub(start.elapsed());
            if left.is_zero() {
                self.fail(&format!("timed out after {DEADLINE:?} waiting for {needle:?}"));
            }
            match self.output.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(b) => self.console.push(b as char),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    self.fail(&format!("QEMU exited while waiting for {needle:?}"));
                }
            }
        }
    }

    fn send_line(&mut self, line: &str) {
        let ok = self.stdin.as_mut().is_some_and(|s| {
            s.write_all(format!("{line}\r").as_bytes())
                .and_then(|_| s.flush())
                .is_ok()
        });
        if !ok {
            self.fail("could not write to QEMU's console");
        }
    }

    /// Type `command` at `prompt`; return its output lines (without the
    /// echoed command and the next prompt).
    fn run(&mut self, command: &str, prompt: &str) -> Vec<String> {
        self.send_line(command);
        let text = self.wait_for(prompt, true);
        let text = text.strip_suffix(prompt).unwrap_or(&text);
        text.lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.contains(command))
            .collect()
    }

    fn wait_exit(&mut self) -> i32 {
        let start = Instant::now();
        loop {
            while let Ok(b) = self.output.try_recv() {
                self.console.push(b as char);
            }
            match self.child.try_wait() {
                Ok(Some(status)) => return status.code().unwrap_or(-1),
                Ok(None) if start.elapsed() > DEADLINE => self.fail("QEMU did not exit before the deadline"),
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => self.fail(&format!("waiting for QEMU: {e}")),
            }
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::write(self.dir.join("console.log"), &self.console);
        if std::thread::panicking() {
            eprintln!("console kept in {}", self.dir.join("console.log").display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
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

    let started = Instant::now();
    let mut m = Bare::boot(&artifacts, "bare-test");
    let boot = m.wait_for(INIT_MARKER, false);
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
    m.wait_for(prompt, true);
    let release = m.run("uname -r", prompt);
    assert!(
        release.iter().any(|l| l == &artifacts.kernel_release),
        "uname -r: {release:?}"
    );
    let answer = m.run("echo done-$((6*7))", prompt);
    assert!(answer.iter().any(|l| l == "done-42"), "echo: {answer:?}");
    // hv_kvp_daemon and its glibc are in place and runnable.
    let kvp = m.run("hv_kvp_daemon --help", prompt);
    assert!(
        kvp.iter().any(|l| l.starts_with("Usage: hv_kvp_daemon")),
        "{kvp:?}"
    );

    m.send_line("poweroff -f");
    let code = m.wait_exit();
    assert_eq!(code, 0, "QEMU exit status after poweroff -f");
}
