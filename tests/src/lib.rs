//! A small harness for booting the real images in QEMU from tests: every boot
//! has a deadline, QEMU is killed when a test fails or the deadline passes,
//! and the serial console and hv-core's debugcon log are kept for the
//! assertion messages.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use xtask::{QEMU_EXIT_FAILURE, QEMU_EXIT_SUCCESS};

/// Deadline for one boot to reach a given point (TCG is slow; CI has 2 cores).
pub const BOOT_DEADLINE: Duration = Duration::from_secs(120);

/// Images are built once per test binary.
pub fn images() -> &'static xtask::Images {
    static IMAGES: OnceLock<xtask::Images> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    IMAGES.get_or_init(|| {
        xtask::ensure_qemu().unwrap_or_else(|e| panic!("{e}"));
        xtask::build_images().unwrap_or_else(|e| panic!("building images: {e}"))
    })
}

/// The Linux child's kernel command line in the QEMU tests and benchmarks:
/// what the bare-QEMU comparison boots with too
/// (`xtask::linux::CHILD_CMDLINE_BASE`), except that a panic stops the
/// guest (`panic=0`) instead of rebooting it.
pub const LINUX_CMDLINE: &str = "console=ttyS0 io_delay=none pci=off quiet panic=0 hostname=debian-child";

/// Images with Debian's kernel as a manifest child `linux` (partition 4,
/// after alpha and beta; 256 MiB), built once per test binary, plus the
/// Linux artifacts.
pub fn linux_images() -> &'static (xtask::Images, xtask::linux::LinuxArtifacts) {
    static IMAGES: OnceLock<(xtask::Images, xtask::linux::LinuxArtifacts)> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    IMAGES.get_or_init(|| {
        xtask::ensure_qemu().unwrap_or_else(|e| panic!("{e}"));
        let linux = xtask::linux::linux_artifacts(&xtask::workspace_root())
            .unwrap_or_else(|e| panic!("building the Linux child: {e}"));
        let child = xtask::HostChild {
            name: "linux".into(),
            kernel: linux.vmlinuz.clone(),
            initrd: Some(linux.initramfs.clone()),
            cmdline: Some(LINUX_CMDLINE.into()),
            memory_mib: 256,
            vps: 1,
            ramdisk_mib: Some(8),
            nic: true,
            disk: None,
        };
        let images =
            xtask::build_images_with(&[child], "boot-bundle-linux-test.img", xtask::DEFAULT_MANIFEST)
                .unwrap_or_else(|e| panic!("building images: {e}"));
        (images, linux)
    })
}

/// A scratch directory for one test's files.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hv-qemu-{}-{}-{}",
        std::process::id(),
        name,
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A running QEMU.
pub struct Machine {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Receiver<u8>,
    console: String,
    hv_log: PathBuf,
    mgmt_socket: PathBuf,
    mgmt: Option<hvctl::Client>,
    /// The scratch directory: removed when the test passes, kept (and its
    /// path printed) when it fails.
    dir: PathBuf,
}

/// Where `needle` ends in `text` once its whole line has arrived: the index
/// after the line's newline. A needle ending in "> " is a prompt, a line that
/// waits for input, and is complete as soon as it is there. Waiting for whole
/// lines keeps a test from reading a line the guest is still printing.
pub fn complete_match(text: &str, needle: &str) -> Option<(usize, usize)> {
    let at = text.find(needle)?;
    let after = at + needle.len();
    if needle.ends_with("> ") || needle.ends_with('\n') {
        return Some((at, after));
    }
    let newline = text[after..].find('\n')?;
    Some((at, after + newline + 1))
}

/// Whether `needle` occurs in `text` on a line that has been completed.
pub fn contains_line(text: &str, needle: &str) -> bool {
    let mut from = 0;
    while let Some(at) = text[from..].find(needle) {
        let after = from + at + needle.len();
        if needle.ends_with('\n') || text[after..].contains('\n') {
            return true;
        }
        from = from + at + 1;
    }
    false
}

/// The partition id in the root's answer to `create` ("partition N
/// (NAME) created ..."), if it has one.
pub fn created_partition(answer: &str) -> Option<u64> {
    answer
        .split("partition ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|w| w.parse().ok())
}

impl Machine {
    /// Boot with kernel command line `cmdline` and an optional disk image.
    pub fn boot(name: &str, cmdline: &str, disk: Option<PathBuf>) -> Self {
        Self::boot_images(images(), name, cmdline, disk, 512)
    }

    /// Boot `images` in a machine of `memory_mib`.
    pub fn boot_images(
        images: &xtask::Images,
        name: &str,
        cmdline: &str,
        disk: Option<PathBuf>,
        memory_mib: u32,
    ) -> Self {
        Self::boot_with_disks(
            images,
            name,
            cmdline,
            disk,
            Vec::new(),
            xtask::Network::None,
            memory_mib,
        )
    }

    /// [`Self::boot_images`] with more disk images, each another virtio-blk
    /// device after `disk` (the root's `vdb`, …), and a NIC for the root.
    pub fn boot_with_disks(
        images: &xtask::Images,
        name: &str,
        cmdline: &str,
        disk: Option<PathBuf>,
        extra_disks: Vec<PathBuf>,
        network: xtask::Network,
        memory_mib: u32,
    ) -> Self {
        let dir = scratch(name);
        let hv_log = dir.join("hv-core.log");
        let (accel, _) = xtask::choose_accel();
        let mgmt_socket = dir.join("mgmt.sock");
        let opts = xtask::BootOptions {
            cmdline: cmdline.into(),
            disk,
            extra_disks,
            network,
            hv_log: hv_log.clone(),
            memory_mib,
            accel,
            console: xtask::Console::Pipes,
            mgmt_socket: Some(mgmt_socket.clone()),
        };
        let mut command = Command::new(xtask::QEMU);
        command.args(xtask::qemu_args(images, &opts));
        Self::spawn(command, dir, hv_log, mgmt_socket)
    }

    /// Attach the root's console to child `id`, run `command` in its shell
    /// and return what it printed between two markers (computed by the
    /// guest's shell, so the echo of the typed line never matches them);
    /// detach again (Ctrl-]).
    pub fn run_in_child(&mut self, id: u64, command: &str, tag: &str) -> String {
        self.send_line(&format!("console {id}"));
        self.expect(&format!(
            "[attached to partition {id}'s console; Ctrl-] detaches]"
        ));
        self.send_line(&format!("echo {tag}-$((40+2)); {command}; echo {tag}-$((50+5))"));
        self.expect(&format!("{tag}-42"));
        let out = self.expect(&format!("{tag}-55"));
        self.send_raw(&[0x1D]);
        self.expect("[detached]");
        out.lines()
            .filter(|l| !l.contains(&format!("{tag}-55")))
            .map(|l| l.trim_end_matches('\r'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Start `command` (a QEMU whose serial console is its stdio) under the
    /// harness: console collected, killed when dropped, `dir` removed when
    /// the test passes. `hv_log` and `mgmt_socket` may not exist (bare QEMU).
    pub fn spawn(mut command: Command, dir: PathBuf, hv_log: PathBuf, mgmt_socket: PathBuf) -> Self {
        let mut child = command
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
            hv_log,
            mgmt_socket,
            mgmt: None,
            dir,
        }
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> &str {
        &self.console
    }

    /// hv-core's log so far.
    pub fn hv_log(&self) -> String {
        std::fs::read_to_string(&self.hv_log).unwrap_or_default()
    }

    fn fail(&mut self, why: &str) -> ! {
        // Show everything the console printed, not only what was awaited.
        while let Ok(b) = self.output.recv_timeout(Duration::from_millis(200)) {
            self.console.push(b as char);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "{why}\n--- console ---\n{}\n--- hv-core log ---\n{}",
            self.console,
            self.hv_log()
        );
    }

    /// Wait until the console has a whole line containing `needle` (after
    /// what was consumed), or fail; returns the console up to the end of
    /// that line (up to the prompt for a prompt, see [`complete_match`]).
    pub fn expect(&mut self, needle: &str) -> String {
        let start = Instant::now();
        let from = self.console.len();
        loop {
            if let Some((_, end)) = complete_match(&self.console[from..], needle) {
                return self.console[from..from + end].to_string();
            }
            let left = BOOT_DEADLINE.saturating_sub(start.elapsed());
            if left.is_zero() {
                self.fail(&format!(
                    "timed out after {BOOT_DEADLINE:?} waiting for {needle:?}"
                ));
            }
            match self.output.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(b) => self.console.push(b as char),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    self.fail(&format!("QEMU exited while waiting for {needle:?}"));
                }
            }
        }
    }

    /// Wait until the console shows `prompt` (a shell prompt: text that
    /// waits for input, no newline after it) after what was consumed;
    /// returns the console up to and including it.
    pub fn expect_prompt(&mut self, prompt: &str) -> String {
        let start = Instant::now();
        let from = self.console.len();
        loop {
            if let Some(at) = self.console[from..].find(prompt) {
                return self.console[from..from + at + prompt.len()].to_string();
            }
            let left = BOOT_DEADLINE.saturating_sub(start.elapsed());
            if left.is_zero() {
                self.fail(&format!(
                    "timed out after {BOOT_DEADLINE:?} waiting for the prompt {prompt:?}"
                ));
            }
            match self.output.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(b) => self.console.push(b as char),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    self.fail(&format!("QEMU exited while waiting for the prompt {prompt:?}"));
                }
            }
        }
    }

    /// Type `line` and Enter on the console.
    pub fn send_line(&mut self, line: &str) {
        let ok = self.stdin.as_mut().is_some_and(|s| {
            s.write_all(format!("{line}\r").as_bytes())
                .and_then(|_| s.flush())
                .is_ok()
        });
        if !ok {
            self.fail("could not write to QEMU's console");
        }
    }

    /// Send raw bytes to the console (control keys).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let ok = self
            .stdin
            .as_mut()
            .is_some_and(|s| s.write_all(bytes).and_then(|_| s.flush()).is_ok());
        if !ok {
            self.fail("could not write to QEMU's console");
        }
    }

    /// Wait for QEMU to exit and return its status code (killing it at the deadline).
    pub fn wait_exit(&mut self) -> i32 {
        let start = Instant::now();
        loop {
            while let Ok(b) = self.output.try_recv() {
                self.console.push(b as char);
            }
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    // Drain what is left.
                    while let Ok(b) = self.output.recv_timeout(Duration::from_millis(100)) {
                        self.console.push(b as char);
                    }
                    return status.code().unwrap_or(-1);
                }
                Ok(None) if start.elapsed() > BOOT_DEADLINE => {
                    self.fail("QEMU did not exit before the deadline")
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => self.fail(&format!("waiting for QEMU: {e}")),
            }
        }
    }

    /// Wait for the root's shell, then run `command` on the management
    /// channel (COM2) and return its response.
    pub fn hvctl(&mut self, command: &str) -> String {
        if self.mgmt.is_none() {
            if !self.console.contains("management shell ready") {
                self.expect("management shell ready");
            }
            match hvctl::Client::connect(&self.mgmt_socket, Duration::from_secs(20)) {
                Ok(c) => self.mgmt = Some(c),
                Err(e) => self.fail(&format!("hvctl: {e}")),
            }
        }
        let client = self.mgmt.as_mut().expect("connected above");
        match client.run(command, BOOT_DEADLINE) {
            Ok(out) => out,
            Err(e) => self.fail(&format!("hvctl {command:?}: {e}")),
        }
    }

    /// `hvctl` for a `--json` command, parsed.
    pub fn hvctl_json(&mut self, command: &str) -> serde_json::Value {
        let out = self.hvctl(command);
        match serde_json::from_str(out.trim()) {
            Ok(v) => v,
            Err(e) => self.fail(&format!("{command:?} returned bad JSON ({e}): {out}")),
        }
    }

    /// Poll `command` (JSON) until `pred` holds, or fail at the deadline.
    pub fn wait_json(
        &mut self,
        command: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_json_every(command, what, Duration::from_millis(100), BOOT_DEADLINE, pred)
    }

    /// [`Self::wait_json`] polling every `interval` until `deadline`.
    pub fn wait_json_every(
        &mut self,
        command: &str,
        what: &str,
        interval: Duration,
        deadline: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let v = self.hvctl_json(command);
            if pred(&v) {
                return v;
            }
            if start.elapsed() > deadline {
                self.fail(&format!("timed out waiting for {what}; last {command:?}: {v}"));
            }
            std::thread::sleep(interval);
        }
    }

    /// Poll `command` until its output has a whole line containing
    /// `needle`, or fail at the deadline.
    pub fn wait_text(&mut self, command: &str, needle: &str) -> String {
        self.wait_text_every(command, needle, Duration::from_millis(100), BOOT_DEADLINE)
    }

    /// [`Self::wait_text`] polling every `interval` until `deadline`: a
    /// large output (a Linux child's console) costs the root a serial
    /// line's worth of work per poll, so long waits poll slowly.
    pub fn wait_text_every(
        &mut self,
        command: &str,
        needle: &str,
        interval: Duration,
        deadline: Duration,
    ) -> String {
        let start = Instant::now();
        loop {
            let out = self.hvctl(command);
            if contains_line(&out, needle) {
                return out;
            }
            if start.elapsed() > deadline {
                self.fail(&format!(
                    "timed out after {deadline:?} waiting for {needle:?} in {command:?}; last: {out}"
                ));
            }
            std::thread::sleep(interval);
        }
    }

    /// The peer child's (alpha, id 2) memory checksum, once it has booted
    /// and halted: taken before an attack, compared by [`Self::assert_intact`].
    pub fn peer_checksum(&mut self) -> serde_json::Value {
        self.wait_json("info 2 --json", "alpha to halt", |v| v["halted_vps"] == 1);
        let sum = self.hvctl_json("info 2 --json --checksum")["memory_fnv1a"].clone();
        assert!(sum.is_u64(), "no checksum: {sum}");
        sum
    }

    /// Create and start an 8 MiB test OS child named `attacker` in `mode`;
    /// with the two manifest children it gets id 4.
    pub fn start_attacker(&mut self, mode: &str) {
        let created = self.hvctl(&format!(
            "create attacker --memory 8M --image testos --mode {mode} --start"
        ));
        assert!(
            created.contains("partition 4 (attacker) created and started"),
            "{created}"
        );
    }

    /// After an attack: hv-core answers, the root's shell works, both
    /// manifest children still run, the peer's memory checksum is
    /// `peer_before`, and the root's canary page is intact.
    pub fn assert_intact(&mut self, peer_before: &serde_json::Value) {
        let status = self.hvctl_json("hv status --json");
        assert_eq!(status["present"], true, "{status}");
        let list = self.hvctl_json("list --json");
        for name in ["alpha", "beta"] {
            let p = list
                .as_array()
                .and_then(|a| a.iter().find(|p| p["name"] == name))
                .unwrap_or_else(|| panic!("{name} not listed: {list}"));
            assert_eq!(p["state"], "running", "{name}: {list}");
        }
        let peer_after = self.hvctl_json("info 2 --json --checksum")["memory_fnv1a"].clone();
        assert_eq!(*peer_before, peer_after, "the peer's memory changed");
        let mem = self.hvctl_json("mem --json");
        assert_eq!(
            mem["canary_intact"], true,
            "the root's canary page changed: {mem}"
        );
    }

    /// The socket of the management channel.
    pub fn mgmt_socket(&self) -> &std::path::Path {
        &self.mgmt_socket
    }

    /// Fail the test with `why`, showing the console and hv-core's log.
    pub fn fail_with(&mut self, why: &str) -> ! {
        self.fail(why)
    }

    /// Boot-to-exit for a self-test: returns the console; fails unless the
    /// scenario printed PASS and QEMU exited with the success status.
    pub fn run_scenario(name: &str, disk: Option<PathBuf>) -> (String, String) {
        let mut m = Self::boot(name, &format!("test={name}"), disk);
        m.expect(&format!("TEST {name}: "));
        let code = m.wait_exit();
        let console = m.console.clone();
        if !console.contains(&format!("TEST {name}: PASS")) || code != QEMU_EXIT_SUCCESS {
            m.fail(&format!("scenario {name} failed (QEMU exit status {code})"));
        }
        (console, m.hv_log())
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("QEMU test files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_match_waits_for_the_end_of_its_line() {
        assert_eq!(complete_match("a synic done: 20 replies to ", "synic done"), None);
        assert_eq!(
            complete_match("a synic done: 20\nnext", "synic done"),
            Some((2, 17))
        );
        assert_eq!(complete_match("x\nroot> ", "root> "), Some((2, 8)));
        assert!(!contains_line("done: 20 replies to ", "done"));
        assert!(contains_line("done: 1\ndone: 20 replies", "done"));
        assert!(!contains_line("xx done: 2", "done"));
        assert!(contains_line("0 failed\n", " failed\n"));
        assert_eq!(complete_match("0 failed\n", " failed\n"), Some((1, 9)));
    }
}
