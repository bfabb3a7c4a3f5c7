//! `cargo xtask <command>`: the project's two front doors and their helpers.
//!
//! - `run`   build everything and boot the root partition in QEMU, landing
//!   in its management shell (Ctrl-A X quits QEMU);
//! - `test`  every test: host unit/property tests and the QEMU integration tests;
//! - `build` only build the images (into `target/images/`);
//! - `lint`  `cargo fmt --check` and clippy (`-D warnings`) for host and kernels.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::process::{Command, ExitCode};
use std::time::Duration;
use xtask::{BootOptions, KERNEL_TARGET, QEMU, XtaskError};

/// Crates that only build for the bare-metal target.
const KERNEL_CRATES: [&str; 5] = [
    "hv_core",
    "root_partition",
    "kernel_x86",
    "testos",
    "linux_iobench",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("build") => xtask::build_images().map(|i| {
            println!(
                "images: {} {} {}",
                i.root_kernel.display(),
                i.bundle.display(),
                i.disk.display()
            );
        }),
        Some("lint") => lint(),
        Some("linux") => xtask::linux::run(&args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            usage();
            Ok(())
        }
        Some(other) => {
            eprintln!("xtask: unknown command '{other}'");
            usage();
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() {
    eprintln!("usage: cargo xtask <command>");
    eprintln!(
        "  run [--tcg] [--no-disk] [--disk IMAGE]... [--no-network] [--no-linux] [--memory SIZE] [--child NAME=KERNEL[,initrd=FILE][,cmdline=\"...\"][,memory=SIZE][,vps=N][,disk=NAME][,nic]]... [KERNEL ARGS...]"
    );
    eprintln!(
        "                                            build and boot root + hv-core in QEMU (Ctrl-A X quits)"
    );
    eprintln!("  test [CARGO TEST ARGS...]                 run every test (host and QEMU)");
    eprintln!("  build                                     build the images into target/images/");
    eprintln!("  lint                                      cargo fmt --check and clippy -D warnings");
    eprintln!("  linux [--fetch-only] [KERNEL ARGS...]     build the Linux child; boot it on bare QEMU");
}

/// The Linux child in the default `run` machine.
const DEFAULT_LINUX_CHILD: &str = "linux";

fn run(args: &[String]) -> Result<(), XtaskError> {
    xtask::ensure_qemu()?;
    let (mut accel, why) = xtask::choose_accel();
    let mut why = why;
    let mut no_disk = false;
    let mut user_disks: Vec<std::path::PathBuf> = Vec::new();
    let mut no_linux = false;
    let mut no_network = false;
    let mut cmdline = Vec::new();
    let mut children: Vec<xtask::HostChild> = Vec::new();
    let mut memory_mib = None;
    let bad = |detail: String| XtaskError::Command {
        what: "reading the arguments".into(),
        detail,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tcg" => {
                accel = xtask::Accel::Tcg;
                why = "TCG (--tcg)".into();
            }
            "--no-disk" => no_disk = true,
            "--disk" => {
                let v = it
                    .next()
                    .ok_or_else(|| bad("--disk needs the path of a raw disk image".into()))?;
                let path = std::path::PathBuf::from(v);
                if !path.is_file() {
                    return Err(bad(format!("--disk {v}: no such file (a raw disk image)")));
                }
                user_disks.push(path);
            }
            "--no-linux" => no_linux = true,
            "--no-network" => no_network = true,
            "--child" => {
                let v = it
                    .next()
                    .ok_or_else(|| bad("--child needs NAME=KERNEL[,...]".into()))?;
                children.push(xtask::HostChild::parse(v).map_err(bad)?);
            }
            "--memory" => {
                let v = it
                    .next()
                    .ok_or_else(|| bad("--memory needs a size like 2G".into()))?;
                memory_mib = Some(xtask::parse_mib(v).map_err(bad)?);
            }
            other => cmdline.push(other.to_string()),
        }
    }
    for (i, c) in children.iter().enumerate() {
        if children[..i].iter().any(|d| d.name == c.name) {
            return Err(bad(format!("--child {} given twice", c.name)));
        }
    }
    // The default machine has a Linux child too: Debian's kernel with the
    // Hyper-V drivers (fetched and cached by `xtask linux`), started at
    // boot; the root's prompt does not wait for it.
    if !no_linux && !children.iter().any(|c| c.name == DEFAULT_LINUX_CHILD) {
        let linux = xtask::linux::linux_artifacts(&xtask::workspace_root())?;
        eprintln!(
            "xtask: Linux child '{DEFAULT_LINUX_CHILD}': Debian {} (partition 4; `console 4` for its shell; --no-linux leaves it out)",
            linux.kernel_release
        );
        children.insert(
            0,
            xtask::HostChild {
                name: DEFAULT_LINUX_CHILD.into(),
                kernel: linux.vmlinuz,
                initrd: Some(linux.initramfs),
                // With the uplink, it asks QEMU's user network for an
                // address (`dhcp=eth0`, the initramfs's /init).
                cmdline: Some(format!(
                    "{} panic=0 hostname=debian-child{}",
                    xtask::linux::CHILD_CMDLINE_BASE,
                    if no_network { "" } else { " dhcp=eth0" }
                )),
                memory_mib: xtask::DEFAULT_CHILD_MIB,
                // Two VPs: Linux starts the second with INIT-SIPI and asks
                // storvsp for a sub-channel for it.
                vps: 2,
                ramdisk_mib: None,
                nic: true,
                disk: None,
            },
        );
    }
    // Every child has its own disk on the root's child-disk image (kept
    // between runs; only missing disks are added): named after the child
    // unless it says `disk=NAME`.
    let mut extra_disks = Vec::new();
    if !no_disk {
        let mut wanted: Vec<(String, u64)> = xtask::RUN_MANIFEST_DISKS
            .iter()
            .map(|(n, b)| (n.to_string(), *b))
            .collect();
        for c in children.iter_mut() {
            // A child that asked for a RAM disk keeps it.
            if c.ramdisk_mib.is_some() && c.disk.is_none() {
                continue;
            }
            let name = c.disk.get_or_insert_with(|| c.name.clone()).clone();
            if !wanted.iter().any(|(n, _)| *n == name) {
                wanted.push((name, xtask::LINUX_DISK_BYTES));
            }
        }
        let image = xtask::build_dir().join("child-disks.img");
        let list: Vec<(&str, u64)> = wanted.iter().map(|(n, b)| (n.as_str(), *b)).collect();
        let made = xtask::disk_image::ensure_child_disks(&image, xtask::CHILD_DISK_IMAGE_BYTES, &list)
            .map_err(bad)?;
        eprintln!(
            "xtask: children's disks on {} (kept between runs){}",
            image.display(),
            if made.is_empty() {
                String::new()
            } else {
                format!("; new: {}", made.join(", "))
            }
        );
        extra_disks.push(image);
        extra_disks.extend(user_disks);
    } else if !user_disks.is_empty() {
        return Err(bad("--disk and --no-disk contradict each other".into()));
    }
    let manifest = if no_disk {
        xtask::DEFAULT_MANIFEST
    } else {
        xtask::RUN_MANIFEST
    };
    let images = xtask::build_images_with(&children, "boot-bundle-run.img", manifest)?;
    let disk = (!no_disk).then(|| images.disk.clone());
    // The root's own 512 MiB plus what the children are given.
    let memory_mib = memory_mib.unwrap_or(512 + children.iter().map(|c| c.memory_mib + 8).sum::<u64>());
    let hv_log = xtask::build_dir().join("hv-core.log");
    let _ = std::fs::write(&hv_log, b"");
    let mgmt_socket = xtask::build_dir().join("mgmt.sock");
    let _ = std::fs::remove_file(&mgmt_socket);
    let opts = BootOptions {
        cmdline: cmdline.join(" "),
        disk,
        extra_disks,
        network: if no_network {
            xtask::Network::None
        } else {
            xtask::Network::User
        },
        hv_log: hv_log.clone(),
        memory_mib: u32::try_from(memory_mib)
            .map_err(|_| bad(format!("--memory {memory_mib}M is too large")))?,
        accel,
        console: xtask::Console::Terminal,
        mgmt_socket: Some(mgmt_socket.clone()),
    };
    eprintln!("xtask: accelerator: {why}");
    eprintln!("xtask: root console below; hv-core's log lines are prefixed [hv-core]; Ctrl-A X quits QEMU");
    eprintln!(
        "xtask: scripts can drive it with: cargo run -q -p hvctl -- --socket {} list --json",
        mgmt_socket.display()
    );
    let tail = std::thread::spawn(move || tail_log(&hv_log));
    let status = Command::new(QEMU)
        .args(xtask::qemu_args(&images, &opts))
        .status()
        .map_err(|e| XtaskError::Command {
            what: "starting QEMU".into(),
            detail: e.to_string(),
        })?;
    drop(tail);
    match status.code() {
        Some(0) | Some(xtask::QEMU_EXIT_SUCCESS) => Ok(()),
        _ => Err(XtaskError::Command {
            what: "QEMU".into(),
            detail: status.to_string(),
        }),
    }
}

/// Follow hv-core's debugcon log and copy it to stderr beside the console.
fn tail_log(path: &std::path::Path) {
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    let mut reader = BufReader::new(file);
    let _ = reader.seek(SeekFrom::Start(0));
    let mut line = String::new();
    let mut stderr = std::io::stderr();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => std::thread::sleep(Duration::from_millis(50)),
            Ok(_) if line.ends_with('\n') => to_operator(&mut stderr, line.replace('\n', "\r\n").as_bytes()),
            Ok(_) => {
                // Partial line: wait for the rest.
                std::thread::sleep(Duration::from_millis(20));
                let mut rest = String::new();
                let _ = reader.read_line(&mut rest);
                to_operator(&mut stderr, line.as_bytes());
                to_operator(&mut stderr, rest.replace('\n', "\r\n").as_bytes());
            }
            Err(_) => return,
        }
    }
}

/// Write hv-core's log to the operator's terminal without ever failing.
///
/// QEMU's stdio chardev puts the shared terminal in non-blocking mode, so a
/// terminal that stops reading (Ctrl-S, a paused tmux pane, a slow SSH link)
/// makes writes fail with EAGAIN. `eprint!` would panic on that and, with
/// `panic = "abort"`, take QEMU down with xtask. Here a full terminal only
/// makes this thread wait; any other error drops the line (the whole log
/// stays in `target/images/hv-core.log`).
fn to_operator(out: &mut impl std::io::Write, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match out.write(bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = out.flush();
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(xtask::workspace_root());
    c
}

fn test(extra: &[String]) -> Result<(), XtaskError> {
    xtask::ensure_qemu()?;
    // Build the images once up front so build errors surface here, not as a
    // failure inside the first QEMU test.
    xtask::build_images()?;
    let (_, why) = xtask::choose_accel();
    eprintln!("xtask: QEMU tests use {why}");
    xtask::run_command(
        "cargo test",
        cargo()
            .args(["test", "--workspace"])
            .args(KERNEL_CRATES.iter().flat_map(|c| ["--exclude", c]))
            .args(extra),
    )
}

fn lint() -> Result<(), XtaskError> {
    xtask::ensure_kernel_target()?;
    xtask::run_command(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    xtask::run_command(
        "clippy (host crates)",
        cargo()
            .args(["clippy", "--workspace", "--all-targets"])
            .args(KERNEL_CRATES.iter().flat_map(|c| ["--exclude", c]))
            .args(["--", "-D", "warnings"]),
    )?;
    xtask::run_command(
        "clippy (kernels)",
        cargo()
            .args(["clippy", "--release", "--target", KERNEL_TARGET])
            .args(KERNEL_CRATES.iter().flat_map(|c| ["-p", c]))
            .args(["--", "-D", "warnings"]),
    )
}

#[cfg(test)]
mod tests {
    use super::to_operator;
    use std::io::{self, Write};

    /// A terminal that is not being read: every other write would block,
    /// then it takes one byte at a time.
    struct StalledTerminal {
        written: Vec<u8>,
        calls: u32,
    }

    impl Write for StalledTerminal {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 2 == 1 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.written.push(buf[0]);
            Ok(1)
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    #[test]
    fn a_stalled_terminal_delays_the_log_but_never_fails() {
        let mut t = StalledTerminal {
            written: Vec::new(),
            calls: 0,
        };
        to_operator(&mut t, b"[hv-core] line\r\n");
        assert_eq!(t.written, b"[hv-core] line\r\n");
    }
}
