//! Build and boot logic shared by `cargo xtask` and the QEMU integration
//! tests: compiling the two kernels, packing the boot bundle, choosing an
//! accelerator and assembling the QEMU command line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod disk_image;
pub mod linux;

/// The bare-metal target both kernels build for.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// Anything that stops a build or boot, with what to do about it.
#[derive(Debug)]
pub enum XtaskError {
    /// A command could not be started or failed.
    Command {
        /// What was being done.
        what: String,
        /// Details (exit status or I/O error).
        detail: String,
    },
    /// A required tool is missing.
    Missing {
        /// The tool.
        tool: &'static str,
        /// How to install it.
        install: &'static str,
    },
    /// An I/O error on a file.
    Io(PathBuf, std::io::Error),
    /// Bundle packing failed.
    Bundle(boot_proto::bundle::BundleError),
}

impl fmt::Display for XtaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Command { what, detail } => write!(f, "{what} failed: {detail}"),
            Self::Missing { tool, install } => {
                write!(f, "{tool} is not installed; install it with: {install}")
            }
            Self::Io(path, e) => write!(f, "{}: {e}", path.display()),
            Self::Bundle(e) => write!(f, "packing the boot bundle: {e:?}"),
        }
    }
}

impl std::error::Error for XtaskError {}

/// The workspace root (this crate lives in `tools/xtask`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tools/xtask is two levels down")
        .to_path_buf()
}

/// Where built images go.
pub fn build_dir() -> PathBuf {
    workspace_root().join("target").join("images")
}

/// Built artefacts.
#[derive(Debug, Clone)]
pub struct Images {
    /// The root-partition kernel (PVH ELF, `-kernel`).
    pub root_kernel: PathBuf,
    /// The boot bundle (`-initrd`).
    pub bundle: PathBuf,
    /// A small demo disk for the root's passthrough virtio-blk.
    pub disk: PathBuf,
    /// The host tool `hvctl`.
    pub hvctl: PathBuf,
}

/// Run `cmd`, turning a failure to start or a non-zero exit into an error
/// that says what was being done.
pub fn run_command(what: &str, cmd: &mut Command) -> Result<(), XtaskError> {
    let status = cmd.status().map_err(|e| XtaskError::Command {
        what: what.into(),
        detail: e.to_string(),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(XtaskError::Command {
            what: what.into(),
            detail: status.to_string(),
        })
    }
}

/// A child the user names on the host (`--child NAME=KERNEL[,initrd=FILE]
/// [,cmdline="…"][,memory=SIZE]`): its files go into the boot bundle as
/// `NAME.kernel` / `NAME.initrd` and a manifest line creates and starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChild {
    /// Partition name.
    pub name: String,
    /// The kernel (a bzImage).
    pub kernel: PathBuf,
    /// Its initramfs.
    pub initrd: Option<PathBuf>,
    /// Its command line.
    pub cmdline: Option<String>,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual processors (`vps=N`, 1 to 4): VP 0 boots, the kernel starts
    /// the others with INIT-SIPI.
    pub vps: u32,
    /// A RAM-backed SCSI disk of this many MiB (`ramdisk=SIZE`).
    pub ramdisk_mib: Option<u64>,
    /// A synthetic NIC (`nic`).
    pub nic: bool,
    /// Its disk: a child disk of that name on the root's disk image
    /// (`disk=NAME`; `cargo xtask run` gives every child one named after it).
    pub disk: Option<String>,
}

/// A partition or disk name as the root accepts it: 1-15 characters, a
/// letter, then letters, digits, '-' or '_'.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Memory a `--child` gets unless it says `memory=`.
pub const DEFAULT_CHILD_MIB: u64 = 256;

impl HostChild {
    /// Parse `NAME=KERNEL[,initrd=FILE][,cmdline="…"][,memory=SIZE]` (a
    /// command line with commas or spaces goes in double quotes).
    pub fn parse(arg: &str) -> Result<Self, String> {
        let (name, rest) = arg.split_once('=').ok_or_else(|| {
            format!("--child {arg}: expected NAME=KERNEL[,initrd=FILE][,cmdline=\"…\"][,memory=SIZE]")
        })?;
        if !valid_name(name) {
            return Err(format!(
                "--child: bad name '{name}': 1-15 characters, a letter, then letters, digits, '-' or '_'"
            ));
        }
        // Split at commas outside double quotes.
        let mut fields = Vec::new();
        let (mut cur, mut quoted) = (String::new(), false);
        for c in rest.chars() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        if quoted {
            return Err(format!("--child {name}: a '\"' without its closing '\"'"));
        }
        fields.push(cur);
        let kernel = fields.remove(0);
        if kernel.is_empty() {
            return Err(format!("--child {name}: no kernel file"));
        }
        let mut child = Self {
            name: name.to_string(),
            kernel: PathBuf::from(kernel),
            initrd: None,
            cmdline: None,
            memory_mib: DEFAULT_CHILD_MIB,
            vps: 1,
            ramdisk_mib: None,
            nic: false,
            disk: None,
        };
        for f in fields {
            if f == "nic" {
                child.nic = true;
                continue;
            }
            match f.split_once('=') {
                Some(("initrd", v)) if !v.is_empty() => child.initrd = Some(PathBuf::from(v)),
                Some(("cmdline", v)) => {
                    if v.contains('"') || !v.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
                        return Err(format!(
                            "--child {name}: cmdline must be printable ASCII without '\"'"
                        ));
                    }
                    child.cmdline = Some(v.to_string());
                }
                Some(("memory", v)) => {
                    child.memory_mib = parse_mib(v).map_err(|e| format!("--child {name}: {e}"))?
                }
                Some(("vps", v)) => {
                    // The root's limit (`create --vps`: 1 to 4).
                    child.vps = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=4).contains(n))
                        .ok_or_else(|| format!("--child {name}: vps={v}: 1 to 4"))?;
                }
                Some(("disk", v)) => {
                    if !valid_name(v) {
                        return Err(format!(
                            "--child {name}: disk={v}: 1-15 characters, a letter, then letters, digits, '-' or '_'"
                        ));
                    }
                    child.disk = Some(v.to_string());
                }
                Some(("ramdisk", v)) => {
                    let mib = parse_mib(v).map_err(|e| format!("--child {name}: {e}"))?;
                    // The root's limit (mgmt::cli::limits::MAX_RAMDISK): a bad
                    // manifest line would make it skip the whole manifest.
                    if !(1..=16).contains(&mib) {
                        return Err(format!("--child {name}: ramdisk={v}: 1M to 16M"));
                    }
                    child.ramdisk_mib = Some(mib);
                }
                _ => {
                    return Err(format!(
                        "--child {name}: unknown field '{f}' (initrd=FILE, cmdline=\"…\", memory=SIZE, vps=N, ramdisk=SIZE, disk=NAME, nic)"
                    ));
                }
            }
        }
        Ok(child)
    }

    /// Its manifest line.
    pub fn manifest_line(&self) -> String {
        let mut line = format!(
            "{} --memory {}M --vps {} --image {}.kernel",
            self.name, self.memory_mib, self.vps, self.name
        );
        if self.initrd.is_some() {
            line.push_str(&format!(" --initrd {}.initrd", self.name));
        }
        if let Some(c) = &self.cmdline {
            line.push_str(&format!(" --cmdline \"{c}\""));
        }
        if let Some(d) = &self.disk {
            line.push_str(&format!(" --disk {d}"));
        } else if let Some(r) = self.ramdisk_mib {
            line.push_str(&format!(" --ramdisk {r}M"));
        }
        if self.nic {
            line.push_str(" --nic");
        }
        line.push_str(" --start\n");
        line
    }
}

/// A size in MiB: `512`, `512M`, `2G`.
pub fn parse_mib(v: &str) -> Result<u64, String> {
    let (digits, scale) = match v.strip_suffix(['G', 'g']) {
        Some(d) => (d, 1024),
        None => (v.strip_suffix(['M', 'm']).unwrap_or(v), 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("bad size '{v}': expected MiB like 512M or 2G"))
}

/// Compile hv-core and the root kernel, pack the bundle, make the demo disk.
pub fn build_images() -> Result<Images, XtaskError> {
    build_images_with(&[], "boot-bundle.img", DEFAULT_MANIFEST)
}

/// [`build_images`] with `children` added to the bundle and to `manifest`,
/// written to `bundle_name` in [`build_dir`].
pub fn build_images_with(
    children: &[HostChild],
    bundle_name: &str,
    manifest: &str,
) -> Result<Images, XtaskError> {
    ensure_kernel_target()?;
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_command(
        "building the kernels",
        Command::new(&cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--target",
                KERNEL_TARGET,
                "-p",
                "hv_core",
                "-p",
                "root_partition",
                "-p",
                "testos",
            ])
            // Tests run this from inside `cargo test`; keep its flags out.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
    )?;
    let bin = root.join("target").join(KERNEL_TARGET).join("release");
    let out = build_dir();
    std::fs::create_dir_all(&out).map_err(|e| XtaskError::Io(out.clone(), e))?;

    let hv_core_path = bin.join("hv-core");
    let hv_core = std::fs::read(&hv_core_path).map_err(|e| XtaskError::Io(hv_core_path.clone(), e))?;
    let testos_path = bin.join("testos");
    let testos = std::fs::read(&testos_path).map_err(|e| XtaskError::Io(testos_path.clone(), e))?;
    let mut manifest = manifest.to_string();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for c in children {
        let read = |p: &Path| std::fs::read(p).map_err(|e| XtaskError::Io(p.to_path_buf(), e));
        files.push((format!("{}.kernel", c.name), read(&c.kernel)?));
        if let Some(i) = &c.initrd {
            files.push((format!("{}.initrd", c.name), read(i)?));
        }
        manifest.push_str(&c.manifest_line());
    }
    let mut entries: Vec<(&str, &[u8])> = vec![
        (boot_proto::bundle::HV_CORE_ENTRY, &hv_core),
        ("testos", &testos),
        ("manifest", manifest.as_bytes()),
    ];
    entries.extend(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    let bundle = boot_proto::bundle::build(&entries).map_err(XtaskError::Bundle)?;
    let bundle_path = out.join(bundle_name);
    write_if_changed(&bundle_path, &bundle)?;

    let root_kernel = out.join("root-partition.elf");
    let kernel_bytes = std::fs::read(bin.join("root-partition"))
        .map_err(|e| XtaskError::Io(bin.join("root-partition"), e))?;
    write_if_changed(&root_kernel, &kernel_bytes)?;

    let disk = out.join("demo-disk.img");
    write_if_changed(&disk, &demo_disk())?;
    run_command(
        "building hvctl",
        Command::new(&cargo)
            .current_dir(&root)
            .args(["build", "--quiet", "-p", "hvctl"])
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
    )?;
    let hvctl = root.join("target").join("debug").join("hvctl");
    Ok(Images {
        root_kernel,
        bundle: bundle_path,
        disk,
        hvctl,
    })
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), XtaskError> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes).map_err(|e| XtaskError::Io(path.to_path_buf(), e))
}

/// The partition manifest in the default bundle: two test OS children,
/// started at boot (format: `mgmt::manifest`).
pub const DEFAULT_MANIFEST: &str = "\
# Child partitions the root builds at boot. One per line, options as for the
# shell's `create` command.
alpha --memory 32M --vps 1 --image testos --mode hello --start
beta  --memory 32M --vps 1 --image testos --mode hello --start
";

/// The manifest of `cargo xtask run`: the two test OS children, each with
/// its own disk on the root's child-disk image and a NIC on the switch.
pub const RUN_MANIFEST: &str = "\
# Child partitions the root builds at boot. One per line, options as for the
# shell's `create` command.
alpha --memory 32M --vps 1 --image testos --mode hello --disk alpha --nic --start
beta  --memory 32M --vps 1 --image testos --mode hello --disk beta --nic --start
";

/// The test OS children in [`RUN_MANIFEST`], with their disk sizes.
pub const RUN_MANIFEST_DISKS: &[(&str, u64)] = &[("alpha", 16 << 20), ("beta", 16 << 20)];

/// Size of a Linux child's disk on the run image (sparse until written).
pub const LINUX_DISK_BYTES: u64 = 256 << 20;

/// Size of the root's child-disk image (a sparse file).
pub const CHILD_DISK_IMAGE_BYTES: u64 = 4 << 30;

/// A 1 MiB disk whose first sector says what it is.
pub fn demo_disk() -> Vec<u8> {
    let mut disk = vec![0u8; 1 << 20];
    let label = b"hv demo disk: sector 0 read by the root partition through virtio-blk after demotion\n";
    disk[..label.len()].copy_from_slice(label);
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk
}

/// The machine every QEMU here is: q35 with the accelerator, `memory_mib`
/// of RAM, one CPU, no reboot (a triple fault ends QEMU).
pub fn machine_args(accel: Accel, memory_mib: u32) -> Vec<String> {
    let (accel, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    [
        "-machine",
        "q35",
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-m",
        &format!("{memory_mib}M"),
        "-smp",
        "1",
        "-no-reboot",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM on an AMD host that offers nested SVM.
    Kvm,
    /// Pure emulation.
    Tcg,
}

/// Use KVM only when it can give the guest SVM: `/dev/kvm` is
/// usable, the host CPU has `svm`, and kvm_amd's `nested` is on. A PVM
/// `/dev/kvm` without SVM would hang, so anything less means TCG.
pub fn choose_accel() -> (Accel, String) {
    if std::env::var("HV_ACCEL").as_deref() == Ok("tcg") {
        return (Accel::Tcg, "TCG (HV_ACCEL=tcg)".into());
    }
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let svm = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "svm"))
        })
        .unwrap_or(false);
    let nested = std::fs::read_to_string("/sys/module/kvm_amd/parameters/nested")
        .map(|s| matches!(s.trim(), "1" | "Y" | "y"))
        .unwrap_or(false);
    match (kvm_usable, svm, nested) {
        (true, true, true) => (Accel::Kvm, "KVM (host has SVM with nested virtualization)".into()),
        (false, _, _) => (Accel::Tcg, "TCG (no usable /dev/kvm)".into()),
        (true, false, _) => (Accel::Tcg, "TCG (/dev/kvm has no SVM to offer a guest)".into()),
        (true, true, false) => (Accel::Tcg, "TCG (kvm_amd nested virtualization is off)".into()),
    }
}

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// Make sure QEMU is installed: install it with apt when running as root on
/// Debian/Ubuntu, otherwise say exactly how.
pub fn ensure_qemu() -> Result<(), XtaskError> {
    if Command::new(QEMU)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let missing = XtaskError::Missing {
        tool: QEMU,
        install: "sudo apt-get install -y qemu-system-x86",
    };
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !is_root || Command::new("apt-get").arg("--version").output().is_err() {
        return Err(missing);
    }
    eprintln!("xtask: {QEMU} not found; installing qemu-system-x86 with apt-get");
    run_command("apt-get update", Command::new("apt-get").args(["update", "-qq"]))?;
    run_command(
        "apt-get install qemu-system-x86",
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "qemu-system-x86"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(())
}

/// Make sure the bare-metal target is installed for the pinned toolchain.
///
/// rustup installs a `rust-toolchain.toml`'s targets only when it installs
/// the toolchain itself; a machine that already had the pinned toolchain
/// lacks `x86_64-unknown-none`, and the kernel build then fails with "can't
/// find crate for `core`". Ask rustc where its sysroot is, and when the
/// target's library is missing, add it with rustup (or say how).
pub fn ensure_kernel_target() -> Result<(), XtaskError> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .current_dir(workspace_root())
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| XtaskError::Command {
            what: "asking rustc for its sysroot".into(),
            detail: e.to_string(),
        })?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let target_lib = sysroot
        .join("lib")
        .join("rustlib")
        .join(KERNEL_TARGET)
        .join("lib");
    if target_lib.is_dir() {
        return Ok(());
    }
    let missing = XtaskError::Missing {
        tool: "the x86_64-unknown-none Rust target",
        install: "rustup target add x86_64-unknown-none",
    };
    if Command::new("rustup").arg("--version").output().is_err() {
        return Err(missing);
    }
    eprintln!("xtask: the {KERNEL_TARGET} target is missing; adding it with rustup");
    // Inside `cargo xtask`, RUSTUP_TOOLCHAIN names the pinned toolchain, so
    // rustup adds the target to that one.
    run_command(
        "rustup target add x86_64-unknown-none",
        Command::new("rustup")
            .current_dir(workspace_root())
            .args(["target", "add", KERNEL_TARGET]),
    )?;
    if target_lib.is_dir() { Ok(()) } else { Err(missing) }
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Kernel command line (e.g. `test=cpuid`).
    pub cmdline: String,
    /// Disk image for the root's first virtio-blk (none: no disk).
    pub disk: Option<PathBuf>,
    /// More disk images, each another virtio-blk device (`vdb`, …).
    pub extra_disks: Vec<PathBuf>,
    /// Give the root a NIC (virtio-net on QEMU's user network, with its
    /// DHCP server at 10.0.2.2): the virtual switch's uplink.
    pub network: Network,
    /// hv-core's log file (debugcon).
    pub hv_log: PathBuf,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Accelerator.
    pub accel: Accel,
    /// How COM1 (the root's console) is connected.
    pub console: Console,
    /// Unix socket for COM2, the management channel `hvctl` talks to.
    pub mgmt_socket: Option<PathBuf>,
}

/// The root's passthrough NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// No NIC.
    None,
    /// QEMU's user network, reaching the host's network (`cargo xtask run`).
    User,
    /// QEMU's user network cut off from the host and the outside
    /// (`restrict=on`): its DHCP server and gateway only (tests).
    Isolated,
}

/// Where the root's console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// The terminal, with QEMU's monitor muxed in (Ctrl-A X quits).
    Terminal,
    /// Plain stdin/stdout (tests).
    Pipes,
}

/// QEMU arguments for booting `images` with `opts`.
pub fn qemu_args(images: &Images, opts: &BootOptions) -> Vec<String> {
    let mut args = machine_args(opts.accel, opts.memory_mib);
    let mut push = |a: &str| args.push(a.to_string());
    push("-kernel");
    push(&images.root_kernel.display().to_string());
    push("-initrd");
    push(&images.bundle.display().to_string());
    push("-append");
    push(&opts.cmdline);
    push("-display");
    push("none");
    push("-serial");
    push(match opts.console {
        Console::Terminal => "mon:stdio",
        Console::Pipes => "stdio",
    });
    if opts.console == Console::Pipes {
        push("-monitor");
        push("none");
    }
    if let Some(sock) = &opts.mgmt_socket {
        push("-serial");
        push(&format!("unix:{},server=on,wait=off", sock.display()));
    }
    push("-debugcon");
    push(&format!("file:{}", opts.hv_log.display()));
    push("-device");
    push("isa-debug-exit,iobase=0xf4,iosize=0x04");
    // The AMD IOMMU hv-core programs so that no device can DMA into its region.
    push("-device");
    push("amd-iommu");
    if opts.network == Network::None {
        // No NIC at all (QEMU would add its default e1000e).
        push("-nic");
        push("none");
    } else {
        push("-netdev");
        push(if opts.network == Network::Isolated {
            "user,id=net0,restrict=on"
        } else {
            "user,id=net0"
        });
        push("-device");
        // Behind the IOMMU like the disks.
        push("virtio-net-pci,netdev=net0,disable-legacy=on,iommu_platform=on");
    }
    // The disks' virtqueues are served by a QEMU iothread, not the vCPU
    // thread that wrote the notify: the root's reads overlap its own (and
    // its children's) emulated work. Measured in the devices bench, same
    // build: the root's 4 KiB depth-1 reads 16.5 k -> 38.5 k IOPS
    // (docs/storage-network.md, "A QEMU iothread for the disks").
    if opts.disk.is_some() || !opts.extra_disks.is_empty() {
        push("-object");
        push("iothread,id=blkio");
    }
    for (i, disk) in opts.disk.iter().chain(&opts.extra_disks).enumerate() {
        push("-drive");
        push(&format!("file={},if=none,id=disk{i},format=raw", disk.display()));
        push("-device");
        // Its DMA goes through the IOMMU (the driver must accept
        // VIRTIO_F_ACCESS_PLATFORM, or QEMU refuses FEATURES_OK).
        push(&format!(
            "virtio-blk-pci,drive=disk{i},disable-legacy=on,iommu_platform=on,iothread=blkio"
        ));
    }
    args
}

/// QEMU's exit status when the root wrote `EXIT_SUCCESS` (0x10) to isa-debug-exit.
pub const QEMU_EXIT_SUCCESS: i32 = (0x10 << 1) | 1;
/// QEMU's exit status for `EXIT_FAILURE` (0x11).
pub const QEMU_EXIT_FAILURE: i32 = (0x11 << 1) | 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_arguments_parse_with_quoted_command_lines() {
        let c = HostChild::parse("deb=/k/vmlinuz,initrd=/k/initrd,cmdline=\"console=ttyS0 a=1,2\",memory=1G")
            .unwrap();
        assert_eq!(c.name, "deb");
        assert_eq!(c.kernel, PathBuf::from("/k/vmlinuz"));
        assert_eq!(c.initrd, Some(PathBuf::from("/k/initrd")));
        assert_eq!(c.cmdline.as_deref(), Some("console=ttyS0 a=1,2"));
        assert_eq!(c.memory_mib, 1024);
        assert_eq!(
            c.manifest_line(),
            "deb --memory 1024M --vps 1 --image deb.kernel --initrd deb.initrd --cmdline \"console=ttyS0 a=1,2\" --start\n"
        );
        let d = HostChild::parse("x=k").unwrap();
        assert_eq!(
            (d.memory_mib, d.initrd, d.cmdline),
            (DEFAULT_CHILD_MIB, None, None)
        );
        for bad in [
            "novalue",
            "9x=k",
            "x=",
            "x=k,colour=red",
            "x=k,cmdline=\"a",
            "x=k,memory=lots",
        ] {
            assert!(HostChild::parse(bad).is_err(), "{bad}");
        }
    }
}
