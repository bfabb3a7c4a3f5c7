//! A Linux child: Debian 12's stock 6.1 kernel and a small busybox
//! initramfs, and the QEMU command line that boots the same pair on bare
//! QEMU (the baseline a benchmark compares a Linux child partition with).
//!
//! [`linux_artifacts`] fetches the packages with `apt-get download` (no root
//! needed) and caches everything under `target/linux/`:
//!
//! ```text
//! target/linux/debs/<package>_<version>_amd64.deb    the downloaded packages
//! target/linux/extract/<package>_<version>_amd64/    `dpkg-deb -x` of each
//! target/linux/initramfs-<kernel release>.cpio       the built initramfs
//! ```
//!
//! A package whose candidate version is already in `debs/` is never
//! downloaded again, and when apt cannot say (or download) anything the
//! newest cached one is used, so later runs work offline.
//!
//! The initramfs is an uncompressed cpio "newc" archive written here
//! ([`Cpio`]): busybox-static and its applet links, `/init` (see
//! [`init_script`]), the Hyper-V modules [`HV_MODULES`] with their
//! dependencies (read from each module's `.modinfo`, because Debian's package
//! ships no `modules.dep`; one is generated for busybox `modprobe`), and
//! `hv_kvp_daemon` with the glibc it links against (from Debian's `libc6`).

use crate::{Accel, Console, XtaskError, run_command};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The line `/init` prints once it has loaded the modules and is about to
/// start the shell.
pub const INIT_MARKER: &str = "hv-rs linux child: init reached";

/// The Hyper-V drivers `/init` loads, before their dependencies are added.
pub const HV_MODULES: [&str; 4] = ["hv_vmbus", "hv_utils", "hv_storvsc", "hv_netvsc"];

/// Modules the child needs beside the Hyper-V ones: `sd_mod` turns the
/// SCSI disks hv_storvsc finds into block devices (`/dev/sda`); `ext4`
/// mounts the file systems busybox's `mke2fs` makes on them (with
/// `crc32c_generic`, the checksum ext4 asks for by softdep).
pub const EXTRA_MODULES: [&str; 3] = ["sd_mod", "crc32c_generic", "ext4"];

/// The hostname `/init` sets when the command line has no `hostname=`.
pub const DEFAULT_HOSTNAME: &str = "linux-child";

/// The metapackage whose dependency names the current kernel image.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";

/// Everything needed to boot the Linux child.
#[derive(Debug, Clone)]
pub struct LinuxArtifacts {
    /// The kernel release, e.g. `6.1.0-56-amd64` (`uname -r` in the guest).
    pub kernel_release: String,
    /// Debian's kernel (a bzImage).
    pub vmlinuz: PathBuf,
    /// The initramfs (uncompressed cpio "newc").
    pub initramfs: PathBuf,
    /// The packages it was built from.
    pub packages: Vec<Package>,
    /// The modules `/init` loads, in load order (dependencies first).
    pub modules: Vec<Module>,
}

/// A fetched Debian package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Debian version.
    pub version: String,
    /// The cached `.deb`.
    pub deb: PathBuf,
}

/// A kernel module in the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Module name (`_` form, as `lsmod` shows it).
    pub name: String,
    /// Path below `/lib/modules/<release>/`, e.g. `kernel/drivers/hv/hv_vmbus.ko`.
    pub path: String,
    /// The modules it needs (names).
    pub depends: Vec<String>,
}

/// `target/linux/` under `workspace_root`.
pub fn linux_dir(workspace_root: &Path) -> PathBuf {
    workspace_root.join("target").join("linux")
}

/// Fetch (or reuse) Debian's newest 6.1 `amd64` kernel, `busybox-static`,
/// `hyperv-daemons` and `libc6`, and build the initramfs.
pub fn linux_artifacts(workspace_root: &Path) -> Result<LinuxArtifacts, XtaskError> {
    for (tool, install) in [
        ("dpkg-deb", "sudo apt-get install -y dpkg"),
        (
            "apt-get",
            "use a Debian or Ubuntu host (apt-get download fetches the packages)",
        ),
    ] {
        if Command::new(tool).arg("--version").output().is_err() {
            // With every package cached, apt-get is not needed.
            if tool == "apt-get" && linux_dir(workspace_root).join("debs").is_dir() {
                continue;
            }
            return Err(XtaskError::Missing { tool, install });
        }
    }
    let dir = linux_dir(workspace_root);
    mkdir(&dir)?;
    // Tests and `cargo xtask` may build at the same time: one at a time.
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).map_err(|e| XtaskError::Io(lock_path.clone(), e))?;
    lock.lock().map_err(|e| XtaskError::Io(lock_path.clone(), e))?;

    let kernel_pkg = fetch(&dir, &PackageSpec::Kernel)?;
    let busybox_pkg = fetch(&dir, &PackageSpec::Named("busybox-static"))?;
    let daemons_pkg = fetch(&dir, &PackageSpec::Named("hyperv-daemons"))?;
    let libc_pkg = fetch(&dir, &PackageSpec::Named("libc6"))?;
    let kernel_root = extract(&dir, &kernel_pkg)?;
    let busybox_root = extract(&dir, &busybox_pkg)?;
    let daemons_root = extract(&dir, &daemons_pkg)?;
    let libc_root = extract(&dir, &libc_pkg)?;

    let kernel_release = kernel_pkg
        .name
        .strip_prefix("linux-image-")
        .map(|r| r.trim_end_matches("-unsigned").to_string())
        .ok_or_else(|| command_error("naming the kernel release", &kernel_pkg.name))?;
    let vmlinuz = kernel_root.join("boot").join(format!("vmlinuz-{kernel_release}"));
    let image = read(&vmlinuz)?;
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err(command_error(
            "checking the kernel image",
            &format!("{} is not a bzImage", vmlinuz.display()),
        ));
    }
    let modules_dir = kernel_root.join("lib").join("modules").join(&kernel_release);
    let wanted: Vec<&str> = HV_MODULES.iter().chain(EXTRA_MODULES.iter()).copied().collect();
    let modules = resolve_modules(&modules_dir, &wanted)?;

    let mut cpio = Cpio::new();
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "root",
        "etc",
        "var/log",
        "var/lib/hyperv",
    ] {
        cpio.dir(d, 0o755);
    }
    cpio.dir("tmp", 0o1777);
    cpio.char_dev("dev/console", 0o600, 5, 1);
    add_busybox(&mut cpio, &busybox_root)?;
    let mod_root = format!("lib/modules/{kernel_release}");
    for m in &modules {
        let bytes = module_bytes(&modules_dir.join(&m.path))?;
        cpio.file(&format!("{mod_root}/{}", m.path), 0o644, bytes);
    }
    cpio.file(
        &format!("{mod_root}/modules.dep"),
        0o644,
        modules_dep(&modules).into_bytes(),
    );
    add_elf_with_libs(&mut cpio, &daemons_root, "usr/sbin/hv_kvp_daemon", &libc_root)?;
    cpio.file("bin/iobench", 0o755, iobench(workspace_root)?);
    for (path, text) in etc_files(&kernel_release) {
        cpio.file(path, 0o644, text.into_bytes());
    }
    cpio.file("init", 0o755, init_script(&kernel_release, &modules).into_bytes());
    cpio.file("etc/udhcpc.script", 0o755, UDHCPC_SCRIPT.as_bytes().to_vec());

    let initramfs = dir.join(format!("initramfs-{kernel_release}.cpio"));
    let bytes = cpio.finish();
    if std::fs::read(&initramfs).ok().as_deref() != Some(&bytes[..]) {
        let tmp = dir.join(format!(".initramfs.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|e| XtaskError::Io(tmp.clone(), e))?;
        std::fs::rename(&tmp, &initramfs).map_err(|e| XtaskError::Io(initramfs.clone(), e))?;
    }
    drop(lock);
    Ok(LinuxArtifacts {
        kernel_release,
        vmlinuz,
        initramfs,
        packages: vec![kernel_pkg, busybox_pkg, daemons_pkg, libc_pkg],
        modules,
    })
}

/// `/bin/iobench` (`tests/guests/linux-iobench`): a static program (no
/// libc) that times random 4 KiB O_DIRECT reads with N in flight through
/// Linux's native AIO, for the device benchmark; built here for the
/// bare-metal target, which makes a static x86-64 executable Linux runs.
fn iobench(workspace_root: &Path) -> Result<Vec<u8>, XtaskError> {
    crate::ensure_kernel_target()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_command(
        "building iobench for the Linux child",
        Command::new(&cargo)
            .current_dir(workspace_root)
            .args([
                "build",
                "--release",
                "--target",
                crate::KERNEL_TARGET,
                "-p",
                "linux_iobench",
            ])
            // Tests run this from inside `cargo test`; keep its flags out.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
    )?;
    read(
        &workspace_root
            .join("target")
            .join(crate::KERNEL_TARGET)
            .join("release")
            .join("iobench"),
    )
}

/// The `/init` script: mounts, hostname from `hostname=` on the kernel
/// command line, the modules in order (a failure is reported and skipped, so
/// a machine without Hyper-V still reaches the shell), `hv_kvp_daemon` when
/// the KVP device exists, [`INIT_MARKER`], an interactive shell on the
/// console, and `poweroff -f` when the shell exits.
pub fn init_script(kernel_release: &str, modules: &[Module]) -> String {
    let mut loads = String::new();
    for m in modules {
        loads.push_str(&format!(
            "load {} /lib/modules/{kernel_release}/{}",
            m.name, m.path
        ));
        for d in &m.depends {
            loads.push(' ');
            loads.push_str(d);
        }
        loads.push('\n');
    }
    format!(
        r#"#!/bin/sh
# /init of the hv-rs Linux child (generated by tools/xtask/src/linux.rs).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts

name={DEFAULT_HOSTNAME}
dhcp=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        hostname=?*) name="${{arg#hostname=}}" ;;
        dhcp=?*) dhcp="${{arg#dhcp=}}" ;;
    esac
done
hostname "$name"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$name" > /etc/hosts
ip link set lo up 2>/dev/null

# load NAME FILE DEPENDENCIES...: a module whose dependency is missing is
# skipped (on a machine without Hyper-V, hv_vmbus finds no VMBus).
load() {{
    local module=$1 file=$2
    shift 2
    for dep in "$@"; do
        if [ ! -d "/sys/module/$dep" ]; then
            echo "hv-rs linux child: module $module skipped: needs $dep"
            return
        fi
    done
    local out
    if out=$(insmod "$file" 2>&1); then
        echo "hv-rs linux child: module $module loaded"
    else
        echo "hv-rs linux child: module $module failed: $out"
    fi
}}
{loads}
if grep -q '^hv_utils ' /proc/modules; then
    # hv_utils creates the device once the host has offered KVP.
    for i in 1 2 3 4 5 6 7 8 9 10; do
        [ -c /dev/vmbus/hv_kvp ] && break
        sleep 0.5
    done
fi
if [ -c /dev/vmbus/hv_kvp ]; then
    if hv_kvp_daemon; then
        echo "hv-rs linux child: hv_kvp_daemon started"
    else
        echo "hv-rs linux child: hv_kvp_daemon failed to start"
    fi
else
    echo "hv-rs linux child: no /dev/vmbus/hv_kvp, hv_kvp_daemon not started"
fi

# dhcp=IFACE on the command line: ask the network for an address in the
# background (busybox udhcpc, RFC 2131; /etc/udhcpc.script applies it).
if [ -n "$dhcp" ]; then
    ip link set "$dhcp" up 2>/dev/null
    udhcpc -i "$dhcp" -b -s /etc/udhcpc.script >/dev/null 2>&1
fi

# Keep later kernel messages below errors off the shell's console (dmesg
# has them all) unless the command line sets loglevel=.
grep -q 'loglevel=' /proc/cmdline || dmesg -n 4
echo "{INIT_MARKER}"
setsid cttyhack sh -l
echo "hv-rs linux child: shell exited, powering off"
poweroff -f
"#
    )
}

/// busybox udhcpc's event script (`dhcp=IFACE`): apply the lease (address,
/// prefix — busybox passes the prefix length as `mask` —, default route),
/// announce it by ARP and say so on the console (udhcpc's own output goes
/// nowhere once it is in the background).
pub const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        if [ -n "$router" ]; then
            ip route replace default via "${router%% *}" dev "$interface"
        fi
        # Announce the address (gratuitous ARP, RFC 5227), so the switch's
        # neighbours, the root's `net ping ID` among them, learn it now.
        arping -U -c 1 -I "$interface" "$ip" >/dev/null 2>&1
        echo "hv-rs linux child: $interface has $ip/${mask:-24} by DHCP" > /dev/console
        ;;
    deconfig)
        ip addr flush dev "$interface"
        ip link set "$interface" up
        ;;
esac
"#;

/// Files under `/etc`: identity for `hv_kvp_daemon` (it reads
/// `/etc/os-release` and resolves the hostname through `/etc/hosts`, which
/// `/init` rewrites), users for busybox, and the shell's profile.
fn etc_files(kernel_release: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "etc/os-release",
            format!(
                "PRETTY_NAME=\"hv-rs Linux child (Debian 12 kernel {kernel_release}, busybox)\"\n\
                 NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\n\
                 VERSION_CODENAME=bookworm\nID=debian\n"
            ),
        ),
        ("etc/hosts", "127.0.0.1 localhost\n".into()),
        ("etc/nsswitch.conf", "hosts: files\n".into()),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n".into()),
        ("etc/group", "root:x:0:\n".into()),
        ("etc/profile", "export PS1='\\h:\\w# '\n".into()),
    ]
}

// ---------------------------------------------------------------------------
// Bare QEMU

/// How to boot the Linux child on bare QEMU.
#[derive(Debug, Clone)]
pub struct BareOptions {
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Accelerator (TCG for a comparison with a child partition under TCG).
    pub accel: Accel,
    /// Where the serial console goes.
    pub console: Console,
    /// The guest's hostname (`hostname=` on the command line).
    pub hostname: Option<String>,
    /// More kernel command-line arguments.
    pub extra_cmdline: Vec<String>,
}

impl Default for BareOptions {
    fn default() -> Self {
        Self {
            memory_mib: 512,
            accel: Accel::Tcg,
            console: Console::Terminal,
            hostname: None,
            extra_cmdline: Vec::new(),
        }
    }
}

/// The kernel command line for `opts`: serial console (with an early
/// console on COM1's ports), no I/O-port delays, and no reboot loop after a
/// panic (with `-no-reboot` QEMU exits).
/// The command line a Linux child and the bare-QEMU comparison share:
/// serial console, no port-0x80 delays, no PCI probing (a child has no PCI
/// bus: type-1 probes would each be a port exit), and boot messages below
/// warnings kept in `dmesg` rather than printed (each byte on COM1 is two
/// port exits in a child).
pub const CHILD_CMDLINE_BASE: &str = "console=ttyS0 io_delay=none pci=off quiet";

/// The bare-QEMU kernel command line: [`CHILD_CMDLINE_BASE`], `panic=-1`
/// (a panic ends QEMU), the host name and the extras.
pub fn kernel_cmdline(opts: &BareOptions) -> String {
    let mut args: Vec<String> = CHILD_CMDLINE_BASE
        .split_whitespace()
        .chain(["panic=-1"])
        .map(String::from)
        .collect();
    if let Some(h) = &opts.hostname {
        args.push(format!("hostname={h}"));
    }
    args.extend(opts.extra_cmdline.iter().cloned());
    args.join(" ")
}

/// QEMU's arguments for booting the kernel and initramfs directly (no
/// hypervisor, no Hyper-V): q35, one CPU, serial console only.
pub fn bare_qemu_args(artifacts: &LinuxArtifacts, opts: &BareOptions) -> Vec<String> {
    let mut args = crate::machine_args(opts.accel, opts.memory_mib);
    let mut push = |a: &str| args.push(a.to_string());
    match opts.console {
        // Serial and QEMU's monitor on the terminal (Ctrl-A X quits).
        Console::Terminal => push("-nographic"),
        Console::Pipes => {
            push("-display");
            push("none");
            push("-serial");
            push("stdio");
            push("-monitor");
            push("none");
        }
    }
    // No network card: the child partition has none outside VMBus either.
    push("-nic");
    push("none");
    push("-kernel");
    push(&artifacts.vmlinuz.display().to_string());
    push("-initrd");
    push(&artifacts.initramfs.display().to_string());
    push("-append");
    push(&kernel_cmdline(opts));
    args
}

/// [`bare_qemu_args`] as a command, ready to spawn.
pub fn bare_qemu_command(artifacts: &LinuxArtifacts, opts: &BareOptions) -> Command {
    let mut c = Command::new(crate::QEMU);
    c.args(bare_qemu_args(artifacts, opts));
    c
}

/// `cargo xtask linux [--fetch-only] [--kvm] [KERNEL ARGS...]`: fetch and
/// build, print what was built, then (without `--fetch-only`) boot it on
/// bare QEMU with the console on the terminal.
pub fn run(args: &[String]) -> Result<(), XtaskError> {
    let mut fetch_only = false;
    let mut opts = BareOptions::default();
    for a in args {
        match a.as_str() {
            "--fetch-only" => fetch_only = true,
            "--kvm" => opts.accel = Accel::Kvm,
            other => opts.extra_cmdline.push(other.to_string()),
        }
    }
    let a = linux_artifacts(&crate::workspace_root())?;
    for p in &a.packages {
        println!("package:   {} {} ({})", p.name, p.version, p.deb.display());
    }
    let order: Vec<&str> = a.modules.iter().map(|m| m.name.as_str()).collect();
    println!("modules:   {}", order.join(" "));
    println!("release:   {}", a.kernel_release);
    println!("vmlinuz:   {}", a.vmlinuz.display());
    let size = std::fs::metadata(&a.initramfs).map(|m| m.len()).unwrap_or(0);
    println!("initramfs: {} ({size} bytes)", a.initramfs.display());
    if fetch_only {
        return Ok(());
    }
    crate::ensure_qemu()?;
    eprintln!(
        "xtask: booting the Linux child on bare QEMU; Ctrl-A X quits, `poweroff -f` or exit powers off"
    );
    run_command("QEMU", &mut bare_qemu_command(&a, &opts))
}

// ---------------------------------------------------------------------------
// Packages

enum PackageSpec {
    /// Debian's newest 6.1 `amd64` kernel image.
    Kernel,
    /// A package by name.
    Named(&'static str),
}

impl PackageSpec {
    fn describe(&self) -> String {
        match self {
            Self::Kernel => "linux-image-6.1.0-*-amd64".into(),
            Self::Named(n) => (*n).into(),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Kernel => is_kernel_image(name),
            Self::Named(n) => name == *n,
        }
    }
}

/// `linux-image-6.1.0-<abi>-amd64` (optionally `-unsigned`).
fn is_kernel_image(name: &str) -> bool {
    kernel_abi(name).is_some()
}

fn kernel_abi(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("linux-image-6.1.0-")?;
    let rest = rest.strip_suffix("-unsigned").unwrap_or(rest);
    rest.strip_suffix("-amd64")?.parse().ok()
}

/// Output of a command that ran successfully, or `None`.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel image package apt would install now.
fn kernel_package_name() -> Option<String> {
    // The metapackage's dependency is the current ABI's image.
    let deps = output(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]))?;
    let from_meta = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|n| is_kernel_image(n) && !n.ends_with("-unsigned"))
        .map(str::to_string);
    if from_meta.is_some() {
        return from_meta;
    }
    let found = output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.1\.0-[0-9]+-amd64$",
    ]))?;
    found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| is_kernel_image(n))
        .max_by_key(|n| kernel_abi(n))
        .map(str::to_string)
}

/// apt's candidate version of `name`.
fn candidate_version(name: &str) -> Option<String> {
    let policy = output(Command::new("apt-cache").args(["policy", name]))?;
    let v = policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))?;
    (v != "(none)").then(|| v.trim().to_string())
}

/// The cache's file name for a package (apt's own, with `:` escaped).
fn deb_file_name(name: &str, version: &str) -> String {
    format!("{name}_{}_amd64.deb", version.replace(':', "%3a"))
}

/// The package behind `spec`: the cached `.deb` of apt's candidate, or a
/// fresh download of it, or (apt unable) the newest cached one.
fn fetch(dir: &Path, spec: &PackageSpec) -> Result<Package, XtaskError> {
    let debs = dir.join("debs");
    mkdir(&debs)?;
    let name = match spec {
        PackageSpec::Kernel => kernel_package_name(),
        PackageSpec::Named(n) => Some((*n).to_string()),
    };
    let mut wanted = name.and_then(|n| candidate_version(&n).map(|v| (n, v)));
    if wanted.is_none() && is_root() && apt_update_once() {
        // A fresh machine's apt may have no package lists yet.
        let name = match spec {
            PackageSpec::Kernel => kernel_package_name(),
            PackageSpec::Named(n) => Some((*n).to_string()),
        };
        wanted = name.and_then(|n| candidate_version(&n).map(|v| (n, v)));
    }
    let mut download_error = None;
    if let Some((name, version)) = wanted {
        let deb = debs.join(deb_file_name(&name, &version));
        if deb.is_file() {
            return Ok(Package { name, version, deb });
        }
        match download(dir, &name, &version, &deb) {
            Ok(()) => return Ok(Package { name, version, deb }),
            Err(e) => download_error = Some(e),
        }
    }
    // Offline (or apt knows nothing): the newest cached package that fits.
    let mut cached: Vec<(std::time::SystemTime, Package)> = Vec::new();
    for entry in std::fs::read_dir(&debs).map_err(|e| XtaskError::Io(debs.clone(), e))? {
        let path = entry.map_err(|e| XtaskError::Io(debs.clone(), e))?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let mut parts = file.strip_suffix("_amd64.deb").unwrap_or("").splitn(2, '_');
        let (Some(name), Some(version)) = (parts.next(), parts.next()) else {
            continue;
        };
        if spec.matches(name) {
            let modified = path
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            cached.push((
                modified,
                Package {
                    name: name.to_string(),
                    version: version.replace("%3a", ":"),
                    deb: path.clone(),
                },
            ));
        }
    }
    cached.sort_by_key(|(t, _)| *t);
    if let Some((_, p)) = cached.pop() {
        if let Some(e) = download_error {
            eprintln!("xtask: {e}; using the cached {} {}", p.name, p.version);
        }
        return Ok(p);
    }
    Err(download_error.unwrap_or_else(|| {
        command_error(
            &format!("finding the package {}", spec.describe()),
            "apt-cache knows no candidate and nothing is cached in target/linux/debs",
        )
    }))
}

/// `apt-get download name=version` into `deb` (through a scratch directory,
/// so an interrupted download never looks cached). When it fails and we
/// are root, `apt-get update` once and try again.
fn download(dir: &Path, name: &str, version: &str, deb: &Path) -> Result<(), XtaskError> {
    let scratch = dir.join(format!(".download.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    mkdir(&scratch)?;
    eprintln!("xtask: downloading {name} {version}");
    let attempt = || {
        Command::new("apt-get")
            .current_dir(&scratch)
            .args(["download", "-q", &format!("{name}={version}")])
            .output()
    };
    let mut result = attempt();
    let failed = |r: &std::io::Result<std::process::Output>| !r.as_ref().is_ok_and(|o| o.status.success());
    if failed(&result) && is_root() && apt_update_once() {
        eprintln!("xtask: apt-get download failed; retrying after apt-get update");
        result = attempt();
    }
    let outcome = match result {
        Err(e) => Err(command_error(&format!("apt-get download {name}"), &e.to_string())),
        Ok(o) if !o.status.success() => Err(command_error(
            &format!("apt-get download {name}={version}"),
            String::from_utf8_lossy(&o.stderr).trim(),
        )),
        Ok(_) => {
            let got = std::fs::read_dir(&scratch)
                .map_err(|e| XtaskError::Io(scratch.clone(), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "deb"));
            match got {
                Some(p) => std::fs::rename(&p, deb).map_err(|e| XtaskError::Io(deb.to_path_buf(), e)),
                None => Err(command_error(
                    &format!("apt-get download {name}"),
                    "no .deb was written",
                )),
            }
        }
    };
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

/// `apt-get update`, at most once per process; true if it ran now.
fn apt_update_once() -> bool {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return false;
    }
    eprintln!("xtask: apt knows no candidate; running apt-get update");
    Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `dpkg-deb -x` the package once into `extract/<deb stem>/`.
fn extract(dir: &Path, pkg: &Package) -> Result<PathBuf, XtaskError> {
    let stem = pkg
        .deb
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| pkg.name.clone());
    let target = dir.join("extract").join(&stem);
    let stamp = target.join(".extracted");
    if stamp.is_file() {
        return Ok(target);
    }
    let _ = std::fs::remove_dir_all(&target);
    let tmp = dir
        .join("extract")
        .join(format!(".{stem}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    mkdir(&tmp)?;
    run_command(
        &format!("dpkg-deb -x {}", pkg.deb.display()),
        Command::new("dpkg-deb").arg("-x").arg(&pkg.deb).arg(&tmp),
    )?;
    std::fs::write(tmp.join(".extracted"), b"").map_err(|e| XtaskError::Io(tmp.clone(), e))?;
    std::fs::rename(&tmp, &target).map_err(|e| XtaskError::Io(target.clone(), e))?;
    Ok(target)
}

// ---------------------------------------------------------------------------
// Modules

/// `wanted` and everything they depend on, dependencies first, found by
/// reading `depends=` from each module's `.modinfo`. Modules built into the
/// kernel (`modules.builtin`) are left out.
pub fn resolve_modules(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<Module>, XtaskError> {
    let mut paths: BTreeMap<String, String> = BTreeMap::new();
    index_modules(modules_dir, Path::new(""), &mut paths)?;
    let builtin: BTreeSet<String> = std::fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(module_name)
        .collect();
    let mut order = Vec::new();
    let mut visiting = BTreeSet::new();
    for w in wanted {
        visit(
            modules_dir,
            &paths,
            &builtin,
            &module_name(w),
            &mut visiting,
            &mut order,
        )?;
    }
    Ok(order)
}

fn visit(
    modules_dir: &Path,
    paths: &BTreeMap<String, String>,
    builtin: &BTreeSet<String>,
    name: &str,
    visiting: &mut BTreeSet<String>,
    order: &mut Vec<Module>,
) -> Result<(), XtaskError> {
    if order.iter().any(|m| m.name == name) || builtin.contains(name) || !visiting.insert(name.into()) {
        return Ok(());
    }
    let path = paths.get(name).ok_or_else(|| {
        command_error(
            "resolving kernel modules",
            &format!("no module {name} in {}", modules_dir.display()),
        )
    })?;
    let bytes = module_bytes(&modules_dir.join(path))?;
    let info = Elf::parse(&bytes)
        .and_then(|e| e.section(".modinfo"))
        .ok_or_else(|| command_error("reading .modinfo", &format!("{path} has no .modinfo section")))?;
    let depends: Vec<String> = info
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .map(|d| module_name(&d))
        .collect();
    for d in &depends {
        visit(modules_dir, paths, builtin, d, visiting, order)?;
    }
    order.push(Module {
        name: name.into(),
        path: path.clone(),
        depends,
    });
    Ok(())
}

/// `hv-vmbus.ko.xz` → `hv_vmbus`.
fn module_name(file: &str) -> String {
    let base = file.split(".ko").next().unwrap_or(file);
    base.replace('-', "_")
}

fn index_modules(root: &Path, rel: &Path, out: &mut BTreeMap<String, String>) -> Result<(), XtaskError> {
    let dir = root.join(rel);
    for entry in std::fs::read_dir(&dir).map_err(|e| XtaskError::Io(dir.clone(), e))? {
        let entry = entry.map_err(|e| XtaskError::Io(dir.clone(), e))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let rel_path = rel.join(&file);
        let ty = entry.file_type().map_err(|e| XtaskError::Io(entry.path(), e))?;
        if ty.is_dir() {
            index_modules(root, &rel_path, out)?;
        } else if [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
            .iter()
            .any(|s| file.ends_with(s))
        {
            out.insert(module_name(&file), rel_path.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// A module's ELF bytes. Debian 12 ships plain `.ko` (its config has
/// `CONFIG_MODULE_COMPRESS_NONE=y`, and busybox `insmod` loads those
/// directly); a compressed module from another kernel is decompressed with
/// the host's `xz`/`zstd`/`gzip`, so the initramfs always holds plain `.ko`
/// files under the same name.
fn module_bytes(path: &Path) -> Result<Vec<u8>, XtaskError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        return read(path);
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| command_error(&format!("{tool} -dc {name}"), &e.to_string()))?;
    if !out.status.success() {
        return Err(command_error(
            &format!("{tool} -dc {name}"),
            &out.status.to_string(),
        ));
    }
    Ok(out.stdout)
}

/// A `modules.dep` for busybox `modprobe` (paths relative to the release directory).
fn modules_dep(modules: &[Module]) -> String {
    let path_of = |n: &str| {
        modules
            .iter()
            .find(|m| m.name == n)
            .map(|m| m.path.clone())
            .unwrap_or_default()
    };
    let mut s = String::new();
    for m in modules {
        // modprobe wants every (transitive) dependency, most basic last.
        let mut deps = Vec::new();
        let mut todo = m.depends.clone();
        while let Some(d) = todo.pop() {
            let p = path_of(&d);
            if !p.is_empty() && !deps.contains(&p) {
                deps.push(p);
                if let Some(dm) = modules.iter().find(|x| x.name == d) {
                    todo.extend(dm.depends.iter().cloned());
                }
            }
        }
        s.push_str(&format!("{}:", m.path));
        for d in &deps {
            s.push(' ');
            s.push_str(d);
        }
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------
// Programs

/// busybox at `/bin/busybox` and a link for every applet it lists
/// (`--list-full` gives each applet's usual directory).
fn add_busybox(cpio: &mut Cpio, busybox_root: &Path) -> Result<(), XtaskError> {
    let busybox = busybox_root.join("bin").join("busybox");
    cpio.file("bin/busybox", 0o755, read(&busybox)?);
    let listed = output(Command::new(&busybox).arg("--list-full")).unwrap_or_default();
    let mut applets: Vec<String> = listed
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != "bin/busybox" && !l.contains(".."))
        .collect();
    if applets.is_empty() {
        // A host that cannot run it: the applets /init and a person need.
        applets = [
            "sh", "ash", "mount", "umount", "insmod", "rmmod", "lsmod", "modprobe", "dmesg", "cat", "echo",
            "ls", "sleep", "hostname", "uname", "mkdir", "grep", "setsid", "cttyhack", "poweroff", "reboot",
            "printf", "ip", "ps", "vi", "cp", "mv", "rm", "ln", "dd", "sync", "free", "df",
        ]
        .iter()
        .map(|a| format!("bin/{a}"))
        .collect();
    }
    for a in applets {
        // `/init` is a shell script, not busybox init: busybox's poweroff,
        // reboot and halt would signal PID 1, which ignores them. The
        // kernel runs `/sbin/poweroff` for an orderly power-off (hv_utils'
        // shutdown IC: `orderly_poweroff`, kernel/reboot.c), so these act at
        // once instead (`-f`: sync, then the reboot(2) call).
        let name = a.rsplit('/').next().unwrap_or(&a);
        if matches!(name, "poweroff" | "reboot" | "halt") {
            let script = format!("#!/bin/sh\nsync\nexec /bin/busybox {name} -f \"$@\"\n");
            cpio.file(&a, 0o755, script.into_bytes());
        } else {
            cpio.symlink(&a, "/bin/busybox");
        }
    }
    Ok(())
}

/// The program at `path` in `root` at the same path in the archive, with its
/// ELF interpreter and every shared library it needs (transitively), taken
/// from `lib_root` (an extracted `libc6`).
fn add_elf_with_libs(cpio: &mut Cpio, root: &Path, path: &str, lib_root: &Path) -> Result<(), XtaskError> {
    let bytes = read(&root.join(path))?;
    let mut todo = vec![bytes.clone()];
    cpio.file(path, 0o755, bytes);
    let mut added: BTreeSet<String> = BTreeSet::new();
    // A file needed under two names (the interpreter is also libc's
    // NEEDED) is stored once, the second name a link to the first.
    let mut stored: BTreeMap<PathBuf, String> = BTreeMap::new();
    while let Some(bytes) = todo.pop() {
        let elf = Elf::parse(&bytes).ok_or_else(|| command_error("reading ELF", path))?;
        let mut needed: Vec<String> = Vec::new();
        if let Some(interp) = elf.interpreter() {
            needed.push(interp);
        }
        for lib in elf.needed() {
            needed.push(format!("/lib/x86_64-linux-gnu/{lib}"));
        }
        for want in needed {
            if !added.insert(want.clone()) {
                continue;
            }
            let file = find_lib(lib_root, &want).ok_or_else(|| {
                command_error(
                    &format!("finding {want} for {path}"),
                    &format!("not in {}", lib_root.display()),
                )
            })?;
            if let Some(first) = stored.get(&file) {
                cpio.symlink(want.trim_start_matches('/'), first);
                continue;
            }
            stored.insert(file.clone(), want.clone());
            let lib = read(&file)?;
            todo.push(lib.clone());
            cpio.file(want.trim_start_matches('/'), 0o755, lib);
        }
    }
    Ok(())
}

/// `want` (an absolute path in the guest) inside `root`, trying the usual
/// library directories and following symlinks inside `root`.
fn find_lib(root: &Path, want: &str) -> Option<PathBuf> {
    let file = want.rsplit('/').next()?;
    let mut candidates = vec![want.to_string()];
    for d in [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
    ] {
        candidates.push(format!("{d}/{file}"));
    }
    candidates.into_iter().find_map(|c| resolve_in(root, &c))
}

/// Follow symlinks for `path` as if `root` were `/`.
fn resolve_in(root: &Path, path: &str) -> Option<PathBuf> {
    let mut path = path.to_string();
    for _ in 0..16 {
        let on_host = root.join(path.trim_start_matches('/'));
        let meta = std::fs::symlink_metadata(&on_host).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(on_host);
        }
        let target = std::fs::read_link(&on_host).ok()?;
        let target = target.to_string_lossy();
        path = if target.starts_with('/') {
            target.into_owned()
        } else {
            let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            format!("{parent}/{target}")
        };
    }
    None
}

// ---------------------------------------------------------------------------
// ELF (just enough for .modinfo, DT_NEEDED and PT_INTERP)

struct Elf<'a> {
    bytes: &'a [u8],
    sections: Vec<SectionHeader>,
    shstrndx: usize,
    interp: Option<(usize, usize)>,
}

#[derive(Clone, Copy)]
struct SectionHeader {
    name: u32,
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> Elf<'a> {
    /// A little-endian ELF64 file, or `None`.
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        if bytes.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let phoff = le_u64(bytes, 0x20)? as usize;
        let shoff = le_u64(bytes, 0x28)? as usize;
        let phentsize = le_u16(bytes, 0x36)? as usize;
        let phnum = le_u16(bytes, 0x38)? as usize;
        let shentsize = le_u16(bytes, 0x3A)? as usize;
        let shnum = le_u16(bytes, 0x3C)? as usize;
        let shstrndx = le_u16(bytes, 0x3E)? as usize;
        let mut sections = Vec::with_capacity(shnum);
        for i in 0..shnum {
            let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
            sections.push(SectionHeader {
                name: le_u32(bytes, h)?,
                kind: le_u32(bytes, h + 4)?,
                offset: le_u64(bytes, h + 0x18)? as usize,
                size: le_u64(bytes, h + 0x20)? as usize,
                link: le_u32(bytes, h + 0x28)?,
            });
        }
        let mut interp = None;
        for i in 0..phnum {
            let h = phoff.checked_add(i.checked_mul(phentsize)?)?;
            if le_u32(bytes, h)? == 3 {
                interp = Some((le_u64(bytes, h + 8)? as usize, le_u64(bytes, h + 0x20)? as usize));
            }
        }
        Some(Self {
            bytes,
            sections,
            shstrndx,
            interp,
        })
    }

    fn data(&self, s: &SectionHeader) -> Option<&'a [u8]> {
        self.bytes.get(s.offset..s.offset.checked_add(s.size)?)
    }

    fn cstr(bytes: &[u8], at: usize) -> Option<String> {
        let rest = bytes.get(at..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    /// The contents of the section called `name`.
    fn section(&self, name: &str) -> Option<&'a [u8]> {
        let names = self.data(self.sections.get(self.shstrndx)?)?;
        let s = self
            .sections
            .iter()
            .find(|s| Self::cstr(names, s.name as usize).as_deref() == Some(name))?;
        self.data(s)
    }

    /// `PT_INTERP`.
    fn interpreter(&self) -> Option<String> {
        let (offset, size) = self.interp?;
        Self::cstr(self.bytes.get(offset..offset.checked_add(size)?)?, 0)
    }

    /// The `DT_NEEDED` libraries.
    fn needed(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in self.sections.iter().filter(|s| s.kind == 6) {
            let (Some(dynamic), Some(strtab)) = (
                self.data(s),
                self.sections.get(s.link as usize).and_then(|t| self.data(t)),
            ) else {
                continue;
            };
            for entry in dynamic.chunks_exact(16) {
                let tag = le_u64(entry, 0).unwrap_or(0);
                let val = le_u64(entry, 8).unwrap_or(0) as usize;
                match tag {
                    0 => break,
                    1 => out.extend(Self::cstr(strtab, val)),
                    _ => {}
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// cpio "newc"

/// An initramfs being assembled: a cpio "newc" (`070701`) archive, the
/// format the kernel unpacks. Entries are kept sorted by path and every
/// parent directory is added, so directories always precede their
/// contents. Owner root, mtime 0, so the same inputs give the same bytes.
#[derive(Debug, Default)]
pub struct Cpio {
    entries: BTreeMap<String, CpioEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CpioEntry {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(String),
    CharDev(u32, u32, u32),
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, path: &str, entry: CpioEntry) {
        let path = path.trim_matches('/').to_string();
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            self.entries.entry(p.to_string()).or_insert(CpioEntry::Dir(0o755));
            parent = p;
        }
        self.entries.insert(path, entry);
    }

    /// A directory with permission bits `mode`.
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.insert(path, CpioEntry::Dir(mode));
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.insert(path, CpioEntry::File(mode, data));
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, CpioEntry::Symlink(target.to_string()));
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.insert(path, CpioEntry::CharDev(mode, major, minor));
    }

    /// The archive's bytes, ending with the `TRAILER!!!` entry.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match entry {
                CpioEntry::Dir(m) => (0o040000 | m, 2, &[], (0, 0)),
                CpioEntry::File(m, d) => (0o100000 | m, 1, d, (0, 0)),
                CpioEntry::Symlink(t) => (0o120777, 1, t.as_bytes(), (0, 0)),
                CpioEntry::CharDev(m, ma, mi) => (0o020000 | m, 1, &[], (*ma, *mi)),
            };
            cpio_entry(&mut out, ino as u32 + 1, mode, nlink, rdev, path, data);
        }
        cpio_entry(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[]);
        out
    }
}

fn cpio_entry(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, rdev: (u32, u32), name: &str, data: &[u8]) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

// ---------------------------------------------------------------------------

fn mkdir(path: &Path) -> Result<(), XtaskError> {
    std::fs::create_dir_all(path).map_err(|e| XtaskError::Io(path.to_path_buf(), e))
}

fn read(path: &Path) -> Result<Vec<u8>, XtaskError> {
    std::fs::read(path).map_err(|e| XtaskError::Io(path.to_path_buf(), e))
}

fn command_error(what: &str, detail: &str) -> XtaskError {
    XtaskError::Command {
        what: what.into(),
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive entry read back: (path, mode, rdev, data).
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// Parse a newc archive back.
    fn parse(mut b: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap()
            };
            let (mode, size, rdev, namesize) = (
                field(1),
                field(6) as usize,
                (field(9), field(10)),
                field(11) as usize,
            );
            let name = String::from_utf8(b[110..110 + namesize - 1].to_vec()).unwrap();
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = b[data_at..data_at + size].to_vec();
            b = &b[(data_at + size).next_multiple_of(4)..];
            assert_eq!((total - b.len()) % 4, 0);
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn cpio_round_trips_with_parents_first() {
        let mut c = Cpio::new();
        c.file("lib/modules/x/a.ko", 0o644, b"abc".to_vec());
        c.symlink("bin/sh", "/bin/busybox");
        c.char_dev("dev/console", 0o600, 5, 1);
        c.file("init", 0o755, b"#!/bin/sh\n".to_vec());
        let entries = parse(&c.finish());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/a.ko"
            ]
        );
        assert_eq!(entries[1].1, 0o120777);
        assert_eq!(entries[1].3, b"/bin/busybox");
        assert_eq!((entries[3].1, entries[3].2), (0o020600, (5, 1)));
        assert_eq!(entries[4].1, 0o100755);
        assert_eq!(entries[8].3, b"abc");
        assert_eq!(entries[0].1, 0o040755);
        // Same inputs, same bytes.
        assert_eq!(c.finish(), c.finish());
    }

    #[test]
    fn kernel_image_names() {
        assert_eq!(kernel_abi("linux-image-6.1.0-56-amd64"), Some(56));
        assert_eq!(kernel_abi("linux-image-6.1.0-56-amd64-unsigned"), Some(56));
        assert_eq!(kernel_abi("linux-image-6.1.0-56-cloud-amd64"), None);
        assert_eq!(kernel_abi("linux-image-6.1.0-56-rt-amd64"), None);
        assert_eq!(kernel_abi("linux-image-amd64"), None);
        assert_eq!(module_name("hv-vmbus.ko.xz"), "hv_vmbus");
        assert_eq!(
            deb_file_name("busybox-static", "1:1.35.0-4"),
            "busybox-static_1%3a1.35.0-4_amd64.deb"
        );
    }

    #[test]
    fn modules_dep_lists_transitive_dependencies() {
        let m = |n: &str, d: &[&str]| Module {
            name: n.into(),
            path: format!("kernel/{n}.ko"),
            depends: d.iter().map(|s| s.to_string()).collect(),
        };
        let mods = [m("a", &[]), m("b", &["a"]), m("c", &["b"])];
        assert_eq!(
            modules_dep(&mods),
            "kernel/a.ko:\nkernel/b.ko: kernel/a.ko\nkernel/c.ko: kernel/b.ko kernel/a.ko\n"
        );
    }

    #[test]
    fn the_init_script_loads_in_order_and_prints_the_marker() {
        let mods = [
            Module {
                name: "hv_vmbus".into(),
                path: "kernel/drivers/hv/hv_vmbus.ko".into(),
                depends: vec![],
            },
            Module {
                name: "hv_utils".into(),
                path: "kernel/drivers/hv/hv_utils.ko".into(),
                depends: vec!["hv_vmbus".into()],
            },
        ];
        let s = init_script("6.1.0-56-amd64", &mods);
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("load hv_vmbus /lib/modules/6.1.0-56-amd64/kernel/drivers/hv/hv_vmbus.ko\n"));
        assert!(
            s.contains("load hv_utils /lib/modules/6.1.0-56-amd64/kernel/drivers/hv/hv_utils.ko hv_vmbus\n")
        );
        assert!(s.contains(&format!("echo \"{INIT_MARKER}\"\n")));
        assert!(s.trim_end().ends_with("poweroff -f"));
    }

    #[test]
    fn the_command_line_boots_the_kernel_and_initramfs() {
        let a = LinuxArtifacts {
            kernel_release: "r".into(),
            vmlinuz: "/k/vmlinuz".into(),
            initramfs: "/k/initrd".into(),
            packages: vec![],
            modules: vec![],
        };
        let opts = BareOptions {
            hostname: Some("h".into()),
            console: Console::Pipes,
            ..BareOptions::default()
        };
        let args = bare_qemu_args(&a, &opts).join(" ");
        assert!(args.contains("-machine q35 -accel tcg"), "{args}");
        assert!(args.contains("-kernel /k/vmlinuz -initrd /k/initrd"), "{args}");
        assert!(args.ends_with("console=ttyS0 io_delay=none pci=off quiet panic=-1 hostname=h"));
    }
}
