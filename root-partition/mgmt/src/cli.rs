//! The management shell's command language. Every command validates its
//! arguments and a refused line says why (the caller prints it and changes
//! nothing).

use crate::size;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Limits on `create`.
pub mod limits {
    /// Smallest child memory (the test OS needs its image, stack and tables).
    pub const MIN_MEMORY: u64 = 4 << 20;
    /// Largest child memory: children get contiguous RAM from guest-physical
    /// 0, which must end below the 32-bit MMIO window (local APIC, IOAPIC,
    /// VMBus MMIO gaps). Whether the root can lend that much is checked when
    /// the child is built.
    pub const MAX_MEMORY: u64 = 3 << 30;
    /// Longest kernel command line (a page, with its NUL).
    pub const MAX_CMDLINE: usize = 4095;
    /// Most VPs per child.
    pub const MAX_VPS: u32 = 4;
    /// Longest partition name.
    pub const MAX_NAME: usize = 15;
    /// Largest RAM disk (it comes out of the root's heap).
    pub const MAX_RAMDISK: u64 = 16 << 20;
    /// Largest child disk `disk create` makes.
    pub const MAX_DISK: u64 = 1 << 40;
}

/// Whom `net ping` pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingTarget {
    /// A child partition, at the address its NIC announced.
    Partition(u64),
    /// An IPv4 address.
    Address([u8; 4]),
}

/// Most echo requests one `net ping` sends.
pub const MAX_PING_COUNT: u16 = 100;

/// Options for `create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSpec {
    /// Partition name.
    pub name: String,
    /// Memory in bytes.
    pub memory: u64,
    /// Virtual processors.
    pub vps: u32,
    /// Image name in the boot bundle.
    pub image: String,
    /// Mode string passed to the image (the test OS's behaviour).
    pub mode: String,
    /// Initramfs image name in the boot bundle (Linux children).
    pub initrd: Option<String>,
    /// Kernel command line (Linux children).
    pub cmdline: Option<String>,
    /// How the image boots (`--boot`; default [`BootProtocol::Auto`]).
    pub boot: BootProtocol,
    /// A RAM-backed SCSI disk of this many bytes on a synthetic SCSI
    /// controller (`--ramdisk SIZE`), until disks on the root's block
    /// devices exist.
    pub ramdisk: Option<u64>,
    /// A synthetic NIC (`--nic`) with a MAC address the root assigns.
    pub nic: bool,
    /// A disk on the root's passthrough block devices (`--disk NAME`: a
    /// child disk from `disks`), on a synthetic SCSI controller.
    pub disk: Option<String>,
}

/// `create --boot`: which boot protocol a child's image is started through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// Decided from the image: a bzImage boots Linux's protocol; an ELF with
    /// the native marker note, or with no PVH or Multiboot entry, the test
    /// OS's; else PVH when it has the PVH note, else Multiboot.
    #[default]
    Auto,
    /// The test OS's own boot-info ABI (64-bit entry).
    Native,
    /// The Linux 64-bit boot protocol (a bzImage).
    Linux,
    /// Xen's PVH boot ABI (32-bit entry from the ELF note).
    Pvh,
    /// Multiboot v1 (32-bit entry, EAX = 0x2BADB002).
    Multiboot,
}

impl BootProtocol {
    /// The `--boot` word.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Linux => "linux",
            Self::Pvh => "pvh",
            Self::Multiboot => "multiboot",
        }
    }
}

/// What `kvp ID ...` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvpCommand {
    /// Show the pools (and refresh them).
    Show,
    /// Set KEY to VALUE in the host's pool.
    Set(String, String),
    /// Delete KEY from the host's pool.
    Delete(String),
}

/// Longest KVP key (UTF-8 bytes) the shell takes: the wire field holds 512
/// bytes of UTF-16 with its NUL.
pub const MAX_KVP_KEY: usize = 255;
/// Longest KVP value (UTF-8 bytes): the wire field holds 2048 bytes of UTF-16.
pub const MAX_KVP_VALUE: usize = 1023;

/// Most sequential requests `disk bench` keeps in flight.
pub const MAX_BENCH_DEPTH: u64 = 16;

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `help [command]`.
    Help(Option<String>),
    /// `list [--json]`.
    List {
        /// JSON output.
        json: bool,
    },
    /// `info ID [--json] [--checksum]`.
    Info {
        /// Partition id.
        id: u64,
        /// JSON output.
        json: bool,
        /// Also checksum the partition's memory (reads all of it).
        checksum: bool,
    },
    /// `images [--json]`: the child images the boot bundle holds.
    Images {
        /// JSON output.
        json: bool,
    },
    /// `channels ID [--json]`: the partition's VMBus offers and open channels.
    Channels {
        /// Partition id.
        id: u64,
        /// JSON output.
        json: bool,
    },
    /// `rescind ID RELID`: take a device away from a child's VMBus.
    Rescind {
        /// Partition id.
        id: u64,
        /// The channel.
        relid: u32,
    },
    /// `offer ID`: offer (another) echo device on a child's VMBus.
    Offer {
        /// Partition id.
        id: u64,
    },
    /// `shutdown ID [--reboot]`: ask a child to power off (or restart)
    /// through its shutdown integration service.
    Shutdown {
        /// Partition id.
        id: u64,
        /// Restart instead of powering off.
        reboot: bool,
    },
    /// `timesync ID`: push the host's time to a child now.
    Timesync {
        /// Partition id.
        id: u64,
    },
    /// `kvp ID [--json]`: the child's KVP pools as last enumerated (and
    /// enumerate them again); `kvp ID set KEY VALUE` / `kvp ID delete KEY`:
    /// the host's pool (External) in the child.
    Kvp {
        /// Partition id.
        id: u64,
        /// What to do.
        op: KvpCommand,
        /// JSON output.
        json: bool,
    },
    /// `disks [--json]`: the root's block devices, the child disks on them
    /// and which child holds which.
    Disks {
        /// JSON output.
        json: bool,
    },
    /// `disk create NAME SIZE [--on DEVICE]`: a new (zeroed) child disk.
    DiskCreate {
        /// The disk's name.
        name: String,
        /// Size in bytes (whole MiB).
        bytes: u64,
        /// The device to put it on (default: the first with room).
        device: Option<String>,
    },
    /// `disk bench NAME [--mib N] [--depth D] [--json]`: the root reads
    /// disk NAME directly (sequential 1 MiB requests over its first N MiB,
    /// D in flight, then 4 KiB reads at depth 1), the baseline a child's
    /// reads through storvsp are compared with.
    DiskBench {
        /// The disk's name.
        name: String,
        /// MiB to read sequentially (1-1024).
        mib: u64,
        /// Sequential requests in flight (1-16).
        depth: u64,
        /// JSON output.
        json: bool,
    },
    /// `disk delete NAME`: delete a child disk no child holds.
    DiskDelete {
        /// The disk's name.
        name: String,
    },
    /// `net [--json]`: the root's own interface (address, how it got it,
    /// counters), the uplink and the addresses children announced.
    Net {
        /// JSON output.
        json: bool,
    },
    /// `net ping ID|IP [--count N] [--json]`: ICMP echo from the root's
    /// interface to a child (by partition id: the address it announced) or
    /// an address.
    NetPing {
        /// Whom to ping.
        target: PingTarget,
        /// Echo requests to send (1-100).
        count: u16,
        /// JSON output.
        json: bool,
    },
    /// `switch [--json]`: the virtual switch's ports, MACs and counters.
    Switch {
        /// JSON output.
        json: bool,
    },
    /// `console ID`.
    Console {
        /// Partition id.
        id: u64,
    },
    /// `start|pause|resume|stop|destroy ID`.
    Lifecycle {
        /// What to do.
        action: crate::lifecycle::Action,
        /// Partition id.
        id: u64,
    },
    /// `create NAME --memory SIZE --vps N --image IMAGE [--initrd IMAGE]
    /// [--cmdline "..."] [--boot auto|native|linux|pvh|multiboot] [--mode MODE] [--start]`.
    Create {
        /// What to build.
        spec: CreateSpec,
        /// Start it right away.
        start: bool,
    },
    /// `hv status [--json]`.
    HvStatus {
        /// JSON output.
        json: bool,
    },
    /// `hv disk [--json]`.
    HvDisk {
        /// JSON output.
        json: bool,
    },
    /// `mem [--json]`.
    Mem {
        /// JSON output.
        json: bool,
    },
    /// `poweroff`.
    Poweroff,
}

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not a command.
    UnknownCommand(String),
    /// `hv` without a known subcommand.
    UnknownSubcommand(String),
    /// A required argument is missing.
    Missing(&'static str),
    /// An argument that is not a partition id.
    BadId(String),
    /// Arguments left over.
    Unexpected(String),
    /// An option this command does not take.
    UnknownOption(String),
    /// An option given twice.
    Duplicate(&'static str),
    /// An option without its value.
    NoValue(&'static str),
    /// A `"` without its closing `"`.
    UnterminatedQuote,
    /// Options that cannot be used together.
    Conflict(&'static str),
    /// A bad value for an option.
    BadValue {
        /// The option.
        option: &'static str,
        /// What was given.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownCommand(c) => write!(f, "unknown command '{c}'; type 'help'"),
            Self::UnknownSubcommand(c) => write!(f, "unknown subcommand '{c}' (see 'help')"),
            Self::Missing(what) => write!(f, "missing {what}"),
            Self::BadId(s) => write!(f, "'{s}' is not a partition id (a number, see 'list')"),
            Self::Unexpected(s) => write!(f, "unexpected argument '{s}'"),
            Self::UnknownOption(o) => write!(f, "unknown option '{o}'"),
            Self::Duplicate(o) => write!(f, "option {o} given twice"),
            Self::Conflict(what) => write!(f, "cannot combine {what}"),
            Self::NoValue(o) => write!(f, "option {o} needs a value"),
            Self::UnterminatedQuote => f.write_str("a '\"' without its closing '\"'"),
            Self::BadValue {
                option,
                value,
                expected,
            } => {
                write!(f, "bad value '{value}' for {option}: expected {expected}")
            }
        }
    }
}

/// One-line help for each command, in `help` order.
pub const HELP: &[(&str, &str)] = &[
    (
        "list [--json]",
        "partitions with state, VPs, memory, uptime and exits",
    ),
    (
        "info ID [--json]",
        "one partition: exits by reason, memory map, VP registers, crash reason",
    ),
    (
        "channels ID [--json]",
        "a child's VMBus: version, offers, open channels with live ring state and signal counts",
    ),
    (
        "rescind ID RELID",
        "take a VMBus device away from a child (it closes the channel and releases the relid)",
    ),
    ("offer ID", "offer another echo device on a child's VMBus"),
    ("console ID", "attach to a child's console (Ctrl-] detaches)"),
    (
        "create NAME --memory SIZE --vps N --image IMAGE [--initrd IMAGE] [--cmdline \"...\"] [--boot auto|native|linux|pvh|multiboot] [--ramdisk SIZE | --disk NAME] [--nic] [--mode MODE] [--start]",
        "build a child partition",
    ),
    (
        "start ID",
        "boot a created, stopped or crashed child from its image",
    ),
    ("pause ID", "stop scheduling a running child"),
    ("resume ID", "schedule a paused child again"),
    ("stop ID", "power a child off (memory kept)"),
    (
        "shutdown ID [--reboot]",
        "ask the child to power off (or restart) through its shutdown service",
    ),
    ("timesync ID", "push the host's time to the child now"),
    (
        "disks [--json]",
        "the root's block devices, the child disks on them and which child holds each",
    ),
    (
        "disk create NAME SIZE [--on DEVICE]",
        "a new, zeroed child disk (a GPT partition) for 'create ... --disk NAME'",
    ),
    (
        "disk bench NAME [--mib N] [--depth D] [--json]",
        "the root reads a disk directly: sequential MiB/s and 4 KiB IOPS (the storvsp baseline; the shell waits)",
    ),
    (
        "disk delete NAME",
        "delete a child disk (refused while a child holds it)",
    ),
    (
        "net [--json]",
        "the root's own interface (address, DHCP, counters), the uplink, children's addresses",
    ),
    (
        "net ping ID|IP [--count N] [--json]",
        "ICMP echo from the root to a child (the address it announced) or an address",
    ),
    (
        "switch [--json]",
        "the virtual switch: each child NIC's port, MAC and counters",
    ),
    (
        "kvp ID [--json] | kvp ID set KEY VALUE | kvp ID delete KEY",
        "the child's KVP pools (guest and host); set or delete host values",
    ),
    ("destroy ID", "remove a stopped child and return all its memory"),
    (
        "hv status [--json]",
        "hypervisor presence, privileges, hv-core region, exits by reason",
    ),
    (
        "hv disk [--json]",
        "read sector 0 of the passthrough virtio-blk disk",
    ),
    ("mem [--json]", "root memory: free frames and heap"),
    (
        "images [--json]",
        "child images in the boot bundle: name, size, format",
    ),
    ("poweroff", "stop the machine"),
    ("help [COMMAND]", "this list, or one command"),
];

struct Words<'a> {
    words: Vec<&'a str>,
    json: bool,
}

impl<'a> Words<'a> {
    fn id(&mut self) -> Result<u64, ParseError> {
        if self.words.is_empty() {
            return Err(ParseError::Missing("partition id"));
        }
        let w = self.words.remove(0);
        w.parse().map_err(|_| ParseError::BadId(w.to_string()))
    }

    fn done<T>(self, value: T) -> Result<T, ParseError> {
        match self.words.first() {
            None => Ok(value),
            Some(w) if w.starts_with("--") => Err(ParseError::UnknownOption(w.to_string())),
            Some(w) => Err(ParseError::Unexpected(w.to_string())),
        }
    }
}

/// Split a line into words at whitespace; a word that starts with `"` runs
/// to the next `"` (which must end the word) and is given without its quotes,
/// so `--cmdline "console=ttyS0 quiet"` is two words.
fn split_words(line: &str) -> Result<Vec<&str>, ParseError> {
    let mut words = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').ok_or(ParseError::UnterminatedQuote)?;
            let after = &quoted[end + 1..];
            if !after.is_empty() && !after.starts_with(char::is_whitespace) {
                return Err(ParseError::Unexpected(
                    after.split_whitespace().next().unwrap_or("").to_string(),
                ));
            }
            words.push(&quoted[..end]);
            rest = after.trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            words.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    Ok(words)
}

/// Parse one shell line. An empty line is `Ok(None)`.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    let mut all: Vec<&str> = split_words(line)?;
    if all.is_empty() {
        return Ok(None);
    }
    let cmd = all.remove(0);
    let json = all.contains(&"--json");
    // `--json` is accepted only by commands with a JSON form (checked below).
    let takes_json = matches!(
        cmd,
        "list" | "info" | "mem" | "hv" | "channels" | "images" | "kvp" | "switch" | "disks" | "net" | "disk"
    );
    if takes_json {
        all.retain(|w| *w != "--json");
    }
    let mut w = Words { words: all, json };
    use crate::lifecycle::Action;
    let parsed = match cmd {
        "help" | "?" => {
            let topic = if w.words.is_empty() {
                None
            } else {
                Some(w.words.remove(0).to_string())
            };
            w.done(Command::Help(topic))?
        }
        "list" | "ls" => {
            let json = w.json;
            w.done(Command::List { json })?
        }
        "info" => {
            let checksum = w.words.contains(&"--checksum");
            w.words.retain(|x| *x != "--checksum");
            let id = w.id()?;
            let json = w.json;
            w.done(Command::Info { id, json, checksum })?
        }
        "images" => {
            let json = w.json;
            w.done(Command::Images { json })?
        }
        "channels" => {
            let id = w.id()?;
            let json = w.json;
            w.done(Command::Channels { id, json })?
        }
        "rescind" => {
            let id = w.id()?;
            if w.words.is_empty() {
                return Err(ParseError::Missing("relid"));
            }
            let word = w.words.remove(0);
            let relid = word
                .parse::<u32>()
                .ok()
                .filter(|r| (1..=2047).contains(r))
                .ok_or_else(|| ParseError::BadValue {
                    option: "RELID",
                    value: word.to_string(),
                    expected: "a channel relid from 1 to 2047 (see 'channels ID')",
                })?;
            w.done(Command::Rescind { id, relid })?
        }
        "offer" => {
            let id = w.id()?;
            w.done(Command::Offer { id })?
        }
        "console" => {
            let id = w.id()?;
            w.done(Command::Console { id })?
        }
        "shutdown" => {
            let reboot = w.words.contains(&"--reboot");
            w.words.retain(|x| *x != "--reboot");
            let id = w.id()?;
            w.done(Command::Shutdown { id, reboot })?
        }
        "switch" => {
            let json = w.json;
            w.done(Command::Switch { json })?
        }
        "disks" => {
            let json = w.json;
            w.done(Command::Disks { json })?
        }
        "net" => {
            let json = w.json;
            if w.words.is_empty() {
                w.done(Command::Net { json })?
            } else {
                let sub = w.words.remove(0);
                if sub != "ping" {
                    return Err(ParseError::UnknownSubcommand(sub.to_string()));
                }
                if w.words.is_empty() || w.words[0].starts_with("--") {
                    return Err(ParseError::Missing(
                        "ping target (a partition id or an IPv4 address)",
                    ));
                }
                let word = w.words.remove(0);
                let target = parse_ping_target(word).ok_or_else(|| ParseError::BadValue {
                    option: "TARGET",
                    value: word.to_string(),
                    expected: "a partition id (see 'list') or an IPv4 address like 10.0.2.15",
                })?;
                let mut count = 3;
                if w.words.first() == Some(&"--count") {
                    w.words.remove(0);
                    if w.words.is_empty() {
                        return Err(ParseError::NoValue("--count"));
                    }
                    let v = w.words.remove(0);
                    count = v
                        .parse::<u16>()
                        .ok()
                        .filter(|n| (1..=MAX_PING_COUNT).contains(n))
                        .ok_or_else(|| ParseError::BadValue {
                            option: "--count",
                            value: v.to_string(),
                            expected: "1 to 100",
                        })?;
                }
                w.done(Command::NetPing { target, count, json })?
            }
        }
        "disk" => {
            if w.words.is_empty() {
                return Err(ParseError::Missing("disk subcommand (create, delete, bench)"));
            }
            let sub = w.words.remove(0);
            let name = |w: &mut Words<'_>| -> Result<String, ParseError> {
                if w.words.is_empty() {
                    return Err(ParseError::Missing("disk NAME"));
                }
                let v = w.words.remove(0);
                if !valid_name(v) {
                    return Err(ParseError::BadValue {
                        option: "NAME",
                        value: v.to_string(),
                        expected: "1-15 characters: a letter, then letters, digits, '-' or '_'",
                    });
                }
                Ok(v.to_string())
            };
            match sub {
                "create" | "delete" if w.json => return Err(ParseError::UnknownOption("--json".into())),
                "create" => {
                    let name = name(&mut w)?;
                    if w.words.is_empty() {
                        return Err(ParseError::Missing("SIZE"));
                    }
                    let v = w.words.remove(0);
                    let bytes = size::parse(v)
                        .ok()
                        .filter(|b| (1 << 20..=limits::MAX_DISK).contains(b) && b % (1 << 20) == 0)
                        .ok_or_else(|| ParseError::BadValue {
                            option: "SIZE",
                            value: v.to_string(),
                            expected: "a whole number of MiB from 1M to 1T",
                        })?;
                    let mut device = None;
                    if w.words.first() == Some(&"--on") {
                        w.words.remove(0);
                        if w.words.is_empty() {
                            return Err(ParseError::NoValue("--on"));
                        }
                        device = Some(w.words.remove(0).to_string());
                    }
                    w.done(Command::DiskCreate { name, bytes, device })?
                }
                "delete" => {
                    let name = name(&mut w)?;
                    w.done(Command::DiskDelete { name })?
                }
                "bench" => {
                    let name = name(&mut w)?;
                    let (mut mib, mut depth) = (64, 1);
                    while let Some(word @ ("--mib" | "--depth")) = w.words.first().copied() {
                        let option = if word == "--mib" { "--mib" } else { "--depth" };
                        w.words.remove(0);
                        if w.words.is_empty() {
                            return Err(ParseError::NoValue(option));
                        }
                        let v = w.words.remove(0);
                        let (range, expected) = if option == "--mib" {
                            (1..=1024, "1 to 1024")
                        } else {
                            (1..=MAX_BENCH_DEPTH, "1 to 16")
                        };
                        let n = v
                            .parse::<u64>()
                            .ok()
                            .filter(|n| range.contains(n))
                            .ok_or_else(|| ParseError::BadValue {
                                option,
                                value: v.to_string(),
                                expected,
                            })?;
                        if option == "--mib" {
                            mib = n;
                        } else {
                            depth = n;
                        }
                    }
                    let json = w.json;
                    w.done(Command::DiskBench {
                        name,
                        mib,
                        depth,
                        json,
                    })?
                }
                other => return Err(ParseError::UnknownSubcommand(other.to_string())),
            }
        }
        "timesync" => {
            let id = w.id()?;
            w.done(Command::Timesync { id })?
        }
        "kvp" => {
            let id = w.id()?;
            let json = w.json;
            let text = |w: &mut Words<'_>, what: &'static str, max: usize| -> Result<String, ParseError> {
                if w.words.is_empty() {
                    return Err(ParseError::Missing(what));
                }
                let v = w.words.remove(0);
                if v.is_empty() || v.len() > max || v.contains('\0') {
                    return Err(ParseError::BadValue {
                        option: what,
                        value: v.to_string(),
                        expected: if max == MAX_KVP_KEY {
                            "1 to 255 bytes"
                        } else {
                            "1 to 1023 bytes"
                        },
                    });
                }
                Ok(v.to_string())
            };
            let op = match w.words.first().copied() {
                None => KvpCommand::Show,
                Some("set") => {
                    w.words.remove(0);
                    let key = text(&mut w, "KEY", MAX_KVP_KEY)?;
                    let value = text(&mut w, "VALUE", MAX_KVP_VALUE)?;
                    KvpCommand::Set(key, value)
                }
                Some("delete") => {
                    w.words.remove(0);
                    KvpCommand::Delete(text(&mut w, "KEY", MAX_KVP_KEY)?)
                }
                Some(_) => KvpCommand::Show,
            };
            w.done(Command::Kvp { id, op, json })?
        }
        "start" | "pause" | "resume" | "stop" | "destroy" => {
            let action = match cmd {
                "start" => Action::Start,
                "pause" => Action::Pause,
                "resume" => Action::Resume,
                "stop" => Action::Stop,
                _ => Action::Destroy,
            };
            let id = w.id()?;
            w.done(Command::Lifecycle { action, id })?
        }
        "create" => parse_create(w)?,
        "hv" => {
            if w.words.is_empty() {
                return Err(ParseError::Missing("hv subcommand (status, disk)"));
            }
            let sub = w.words.remove(0);
            let json = w.json;
            match sub {
                "status" => w.done(Command::HvStatus { json })?,
                "disk" => w.done(Command::HvDisk { json })?,
                other => return Err(ParseError::UnknownSubcommand(other.to_string())),
            }
        }
        "mem" => {
            let json = w.json;
            w.done(Command::Mem { json })?
        }
        "poweroff" => w.done(Command::Poweroff)?,
        other => return Err(ParseError::UnknownCommand(other.to_string())),
    };
    Ok(Some(parsed))
}

/// A partition id, or a dotted-quad IPv4 address.
fn parse_ping_target(word: &str) -> Option<PingTarget> {
    if !word.contains('.') {
        return word
            .parse::<u64>()
            .ok()
            .filter(|&id| id > 0)
            .map(PingTarget::Partition);
    }
    let mut octets = [0u8; 4];
    let mut parts = word.split('.');
    for o in octets.iter_mut() {
        let p = parts.next()?;
        // No signs, no leading zeros (no octal ambiguity), 0-255.
        if p.is_empty()
            || p.len() > 3
            || !p.bytes().all(|b| b.is_ascii_digit())
            || (p.len() > 1 && p.starts_with('0'))
        {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts.next().is_none().then_some(PingTarget::Address(octets))
}

/// A partition or disk name: 1-15 characters, a letter, then letters,
/// digits, '-' or '_'.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= limits::MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn parse_create(mut w: Words<'_>) -> Result<Command, ParseError> {
    use limits::*;
    if w.words.is_empty() || w.words[0].starts_with("--") {
        return Err(ParseError::Missing("partition name"));
    }
    let name = w.words.remove(0);
    if !valid_name(name) {
        return Err(ParseError::BadValue {
            option: "NAME",
            value: name.to_string(),
            expected: "1-15 characters: a letter, then letters, digits, '-' or '_'",
        });
    }
    let (mut memory, mut vps, mut image, mut mode, mut start) = (None, None, None, None, false);
    let (mut initrd, mut cmdline): (Option<String>, Option<String>) = (None, None);
    let mut boot: Option<BootProtocol> = None;
    let mut ramdisk: Option<u64> = None;
    let mut nic = false;
    let mut disk: Option<String> = None;
    while !w.words.is_empty() {
        let opt = w.words.remove(0);
        let key: &'static str = match opt {
            "--memory" => "--memory",
            "--vps" => "--vps",
            "--image" => "--image",
            "--mode" => "--mode",
            "--initrd" => "--initrd",
            "--cmdline" => "--cmdline",
            "--boot" => "--boot",
            "--ramdisk" => "--ramdisk",
            "--disk" => "--disk",
            "--nic" => {
                if nic {
                    return Err(ParseError::Duplicate("--nic"));
                }
                nic = true;
                continue;
            }
            "--start" => {
                if start {
                    return Err(ParseError::Duplicate("--start"));
                }
                start = true;
                continue;
            }
            o if o.starts_with("--") => return Err(ParseError::UnknownOption(o.to_string())),
            o => return Err(ParseError::Unexpected(o.to_string())),
        };
        // An option's value never starts with "--" (`--cmdline --start` is
        // a missing command line, not "--start"); an empty quoted command
        // line is allowed.
        if w.words.is_empty() || w.words[0].starts_with("--") {
            return Err(ParseError::NoValue(key));
        }
        let value = w.words.remove(0);
        let bad = |expected| ParseError::BadValue {
            option: key,
            value: value.to_string(),
            expected,
        };
        match key {
            "--memory" => {
                if memory.is_some() {
                    return Err(ParseError::Duplicate(key));
                }
                let bytes = size::parse(value).map_err(|_| bad("a size like 16M"))?;
                if !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) || bytes % (1 << 20) != 0 {
                    return Err(bad("a whole number of MiB from 4M to 3G"));
                }
                memory = Some(bytes);
            }
            "--vps" => {
                if vps.is_some() {
                    return Err(ParseError::Duplicate(key));
                }
                let n: u32 = value.parse().map_err(|_| bad("1 to 4"))?;
                if !(1..=MAX_VPS).contains(&n) {
                    return Err(bad("1 to 4"));
                }
                vps = Some(n);
            }
            "--image" => {
                if image.is_some() {
                    return Err(ParseError::Duplicate(key));
                }
                image = Some(value.to_string());
            }
            "--initrd" => {
                if initrd.is_some() {
                    return Err(ParseError::Duplicate(key));
                }
                initrd = Some(value.to_string());
            }
            "--cmdline" => {
                if cmdline.is_some() {
                    return Err(ParseError::Duplicate(key));
                }
                if value.len() > MAX_CMDLINE || !value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
                    return Err(bad("printable ASCII, at most 4095 bytes"));
                }
                cmdline = Some(value.to_string());
            }
            "--ramdisk" => {
                if ramdisk.is_some() {
                    return Err(ParseError::Duplicate(key));
                }
                let bytes = size::parse(value).map_err(|_| bad("a size like 8M"))?;
                if !(1 << 20..=MAX_RAMDISK).contains(&bytes) || bytes % (1 << 20) != 0 {
                    return Err(bad("a whole number of MiB from 1M to 16M"));
                }
                ramdisk = Some(bytes);
            }
            "--disk" => {
                if disk.is_some() {
                    return Err(ParseError::Duplicate(key));
                }
                if !valid_name(value) {
                    return Err(bad("a disk name from 'disks'"));
                }
                disk = Some(value.to_string());
            }
            "--boot" => {
                if boot.is_some() {
                    return Err(ParseError::Duplicate(key));
                }
                let all = [
                    BootProtocol::Auto,
                    BootProtocol::Native,
                    BootProtocol::Linux,
                    BootProtocol::Pvh,
                    BootProtocol::Multiboot,
                ];
                boot = Some(
                    all.into_iter()
                        .find(|b| b.name() == value)
                        .ok_or_else(|| bad("auto, native, linux, pvh or multiboot"))?,
                );
            }
            _ => {
                if mode.is_some() {
                    return Err(ParseError::Duplicate(key));
                }
                mode = Some(value.to_string());
            }
        }
    }
    let spec = CreateSpec {
        name: name.to_string(),
        memory: memory.ok_or(ParseError::Missing("--memory SIZE"))?,
        vps: vps.unwrap_or(1),
        image: image.ok_or(ParseError::Missing("--image IMAGE"))?,
        mode: mode.unwrap_or_else(|| "hello".to_string()),
        initrd,
        cmdline,
        boot: boot.unwrap_or_default(),
        ramdisk,
        nic,
        disk,
    };
    if spec.ramdisk.is_some() && spec.disk.is_some() {
        return Err(ParseError::Conflict(
            "--ramdisk and --disk (a child has one disk)",
        ));
    }
    Ok(Command::Create { spec, start })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Action;

    fn ok(line: &str) -> Command {
        parse(line).unwrap().unwrap()
    }

    #[test]
    fn rescind_and_offer_commands() {
        assert_eq!(ok("rescind 4 1"), Command::Rescind { id: 4, relid: 1 });
        assert_eq!(ok("offer 4"), Command::Offer { id: 4 });
        assert_eq!(parse("rescind 4").unwrap_err().to_string(), "missing relid");
        assert!(
            parse("rescind 4 0")
                .unwrap_err()
                .to_string()
                .contains("relid from 1 to 2047")
        );
        assert!(parse("rescind 4 x").is_err());
        assert!(parse("offer").is_err());
        assert!(parse("offer 4 5").is_err());
    }

    #[test]
    fn channels_command() {
        assert_eq!(ok("images"), Command::Images { json: false });
        assert_eq!(ok("images --json"), Command::Images { json: true });
        assert_eq!(
            parse("images 4").unwrap_err().to_string(),
            parse("list 4").unwrap_err().to_string()
        );
        assert_eq!(ok("channels 4"), Command::Channels { id: 4, json: false });
        assert_eq!(ok("channels 4 --json"), Command::Channels { id: 4, json: true });
        assert_eq!(parse("channels").unwrap_err().to_string(), "missing partition id");
        assert!(parse("channels 4 5").is_err());
    }

    #[test]
    fn simple_commands() {
        assert_eq!(parse("   "), Ok(None));
        assert_eq!(ok("list"), Command::List { json: false });
        assert_eq!(ok("list --json"), Command::List { json: true });
        assert_eq!(
            ok("info 2 --json"),
            Command::Info {
                id: 2,
                json: true,
                checksum: false
            }
        );
        assert_eq!(
            ok("info 2 --checksum"),
            Command::Info {
                id: 2,
                json: false,
                checksum: true
            }
        );
        assert_eq!(ok("console 3"), Command::Console { id: 3 });
        assert_eq!(
            ok("resume 2"),
            Command::Lifecycle {
                action: Action::Resume,
                id: 2
            }
        );
        assert_eq!(
            ok("destroy 9"),
            Command::Lifecycle {
                action: Action::Destroy,
                id: 9
            }
        );
        assert_eq!(ok("hv status --json"), Command::HvStatus { json: true });
        assert_eq!(ok("help create"), Command::Help(Some("create".into())));
        assert_eq!(ok("poweroff"), Command::Poweroff);
    }

    #[test]
    fn create_with_all_options() {
        let c = ok("create gamma --memory 16M --vps 2 --image testos --mode spin --start");
        let Command::Create { spec, start } = c else {
            panic!()
        };
        assert!(start);
        assert_eq!(spec.name, "gamma");
        assert_eq!(spec.memory, 16 << 20);
        assert_eq!(spec.vps, 2);
        assert_eq!(spec.image, "testos");
        assert_eq!(spec.mode, "spin");
        let Command::Create { spec, start } = ok("create a --memory 8M --image testos") else {
            panic!()
        };
        assert!(!start);
        assert_eq!((spec.vps, spec.mode.as_str()), (1, "hello"));
        assert_eq!((spec.initrd, spec.cmdline), (None, None));
        assert_eq!(spec.boot, BootProtocol::Auto);
    }

    #[test]
    fn net_commands_parse_and_refuse_bad_input() {
        let e = |line: &str| parse(line).unwrap_err().to_string();
        assert_eq!(ok("net"), Command::Net { json: false });
        assert_eq!(ok("net --json"), Command::Net { json: true });
        assert_eq!(
            ok("net ping 4"),
            Command::NetPing {
                target: PingTarget::Partition(4),
                count: 3,
                json: false
            }
        );
        assert_eq!(
            ok("net ping 10.0.2.2 --count 5 --json"),
            Command::NetPing {
                target: PingTarget::Address([10, 0, 2, 2]),
                count: 5,
                json: true
            }
        );
        assert_eq!(
            e("net ping"),
            "missing ping target (a partition id or an IPv4 address)"
        );
        for bad in [
            "10.0.2",
            "10.0.2.256",
            "10.0.2.1.5",
            "010.0.2.1",
            "a.b.c.d",
            "0",
            "-1",
            "10..2.1",
        ] {
            assert!(
                e(&format!("net ping {bad}")).contains("a partition id (see 'list') or an IPv4"),
                "{bad}"
            );
        }
        assert!(e("net ping 4 --count 0").contains("1 to 100"));
        assert!(e("net ping 4 --count 101").contains("1 to 100"));
        assert_eq!(e("net ping 4 --count"), "option --count needs a value");
        assert_eq!(e("net pong 4"), "unknown subcommand 'pong' (see 'help')");
        assert_eq!(e("net ping 4 extra"), "unexpected argument 'extra'");
    }

    #[test]
    fn disk_commands_parse_and_refuse_bad_input() {
        let e = |line: &str| parse(line).unwrap_err().to_string();
        assert_eq!(
            ok("disk create data 64M"),
            Command::DiskCreate {
                name: "data".into(),
                bytes: 64 << 20,
                device: None
            }
        );
        assert_eq!(
            ok("disk create d2 1G --on vdb"),
            Command::DiskCreate {
                name: "d2".into(),
                bytes: 1 << 30,
                device: Some("vdb".into())
            }
        );
        assert_eq!(
            ok("disk delete data"),
            Command::DiskDelete { name: "data".into() }
        );
        assert_eq!(e("disk"), "missing disk subcommand (create, delete, bench)");
        assert_eq!(e("disk resize x 1M"), "unknown subcommand 'resize' (see 'help')");
        assert_eq!(e("disk create"), "missing disk NAME");
        assert_eq!(e("disk create x"), "missing SIZE");
        assert!(e("disk create 9x 1M").contains("a letter, then letters"));
        assert!(e("disk create x 1500K").contains("whole number of MiB"));
        assert!(e("disk create x 0").contains("whole number of MiB"));
        assert!(e("disk create x 2T").contains("1M to 1T"));
        assert_eq!(e("disk create x 1M --on"), "option --on needs a value");
        assert_eq!(e("disk delete x y"), "unexpected argument 'y'");
        let Command::Create { spec, .. } = ok("create d --memory 64M --image k --disk data --nic") else {
            panic!()
        };
        assert_eq!((spec.disk.as_deref(), spec.nic), (Some("data"), true));
        assert_eq!(
            e("create d --memory 64M --image k --disk a --disk b"),
            "option --disk given twice"
        );
        assert!(e("create d --memory 64M --image k --disk \"x y\"").contains("a disk name"));
        assert_eq!(
            e("create d --memory 64M --image k --disk a --ramdisk 1M"),
            "cannot combine --ramdisk and --disk (a child has one disk)"
        );
    }

    #[test]
    fn create_with_a_ramdisk() {
        let Command::Create { spec, .. } = ok("create d --memory 64M --image k --ramdisk 8M") else {
            panic!()
        };
        assert_eq!(spec.ramdisk, Some(8 << 20));
        assert!(!spec.nic);
        let Command::Create { spec, .. } = ok("create d --memory 64M --image k --nic") else {
            panic!()
        };
        assert!(spec.nic);
        let e = |line: &str| parse(line).unwrap_err().to_string();
        assert!(e("create d --memory 64M --image k --ramdisk 17M").contains("1M to 16M"));
        assert!(e("create d --memory 64M --image k --ramdisk 1500K").contains("1M to 16M"));
        assert_eq!(
            e("create d --memory 64M --image k --ramdisk 1M --ramdisk 1M"),
            "option --ramdisk given twice"
        );
    }

    #[test]
    fn integration_service_commands() {
        assert_eq!(ok("shutdown 3"), Command::Shutdown { id: 3, reboot: false });
        assert_eq!(
            ok("shutdown 3 --reboot"),
            Command::Shutdown { id: 3, reboot: true }
        );
        assert_eq!(ok("timesync 3"), Command::Timesync { id: 3 });
        assert_eq!(ok("switch --json"), Command::Switch { json: true });
        assert_eq!(ok("disks --json"), Command::Disks { json: true });
        assert_eq!(ok("disks"), Command::Disks { json: false });
        assert_eq!(ok("switch"), Command::Switch { json: false });
        assert_eq!(
            ok("kvp 3 --json"),
            Command::Kvp {
                id: 3,
                op: KvpCommand::Show,
                json: true
            }
        );
        assert_eq!(
            ok("kvp 3 set Owner \"ops team\""),
            Command::Kvp {
                id: 3,
                op: KvpCommand::Set("Owner".into(), "ops team".into()),
                json: false
            }
        );
        assert_eq!(
            ok("kvp 3 delete Owner"),
            Command::Kvp {
                id: 3,
                op: KvpCommand::Delete("Owner".into()),
                json: false
            }
        );
        let e = |line: &str| parse(line).unwrap_err().to_string();
        assert_eq!(e("shutdown"), "missing partition id");
        assert_eq!(e("shutdown 3 --now"), "unknown option '--now'");
        assert_eq!(e("timesync 3 4"), "unexpected argument '4'");
        assert_eq!(e("kvp 3 set"), "missing KEY");
        assert_eq!(e("kvp 3 set k"), "missing VALUE");
        assert_eq!(e("kvp 3 bogus"), "unexpected argument 'bogus'");
        let long = "k".repeat(256);
        assert!(e(&format!("kvp 3 delete {long}")).contains("1 to 255 bytes"));
    }

    #[test]
    fn create_with_a_boot_protocol() {
        let Command::Create { spec, .. } = ok(
            "create mb --memory 16M --image testos --boot multiboot --initrd mod --cmdline \"name=mb mode=hello\"",
        ) else {
            panic!()
        };
        assert_eq!(spec.boot, BootProtocol::Multiboot);
        assert_eq!(spec.cmdline.as_deref(), Some("name=mb mode=hello"));
        for b in ["auto", "native", "linux", "pvh", "multiboot"] {
            let Command::Create { spec, .. } = ok(&format!("create p --memory 16M --image t --boot {b}"))
            else {
                panic!()
            };
            assert_eq!(spec.boot.name(), b);
        }
        let e = |line: &str| parse(line).unwrap_err().to_string();
        assert!(
            e("create p --memory 16M --image t --boot elf").contains("auto, native, linux, pvh or multiboot")
        );
        assert_eq!(
            e("create p --memory 16M --image t --boot pvh --boot pvh"),
            "option --boot given twice"
        );
        assert_eq!(
            e("create p --memory 16M --image t --boot"),
            "option --boot needs a value"
        );
    }

    #[test]
    fn create_a_linux_child_with_a_quoted_command_line() {
        let Command::Create { spec, .. } = ok(
            "create lin --memory 1G --image vmlinuz --initrd initramfs --cmdline \"console=ttyS0 quiet\" --start",
        ) else {
            panic!()
        };
        assert_eq!(spec.memory, 1 << 30);
        assert_eq!(spec.initrd.as_deref(), Some("initramfs"));
        assert_eq!(spec.cmdline.as_deref(), Some("console=ttyS0 quiet"));
        let Command::Create { spec, .. } = ok("create lin --memory 64M --image k --cmdline \"\"") else {
            panic!()
        };
        assert_eq!(spec.cmdline.as_deref(), Some(""));
        let e = |line: &str| parse(line).unwrap_err().to_string();
        assert_eq!(
            e("create l --memory 64M --image k --cmdline \"a b"),
            "a '\"' without its closing '\"'"
        );
        assert_eq!(
            e("create l --memory 64M --image k --cmdline \"a\"b"),
            "unexpected argument 'b'"
        );
        assert_eq!(
            e("create l --memory 64M --image k --initrd a --initrd b"),
            "option --initrd given twice"
        );
        assert!(e("create l --memory 64M --image k --cmdline \"a\tb\"").contains("printable ASCII"));
        assert_eq!(
            e("create l --memory 4G --image k"),
            "bad value '4G' for --memory: expected a whole number of MiB from 4M to 3G"
        );
    }

    #[test]
    fn refusals() {
        let e = |line: &str| parse(line).unwrap_err().to_string();
        assert_eq!(e("frob"), "unknown command 'frob'; type 'help'");
        assert_eq!(e("info"), "missing partition id");
        assert_eq!(e("info x"), "'x' is not a partition id (a number, see 'list')");
        assert_eq!(e("start 1 2"), "unexpected argument '2'");
        assert_eq!(e("start 1 --json"), "unknown option '--json'");
        assert_eq!(e("hv"), "missing hv subcommand (status, disk)");
        assert_eq!(e("hv bogus"), "unknown subcommand 'bogus' (see 'help')");
        assert_eq!(e("create"), "missing partition name");
        assert_eq!(
            e("create 9x --memory 8M --image t"),
            "bad value '9x' for NAME: expected 1-15 characters: a letter, then letters, digits, '-' or '_'"
        );
        assert_eq!(e("create g --image t"), "missing --memory SIZE");
        assert_eq!(e("create g --memory 8M"), "missing --image IMAGE");
        assert_eq!(e("create g --memory"), "option --memory needs a value");
        assert_eq!(
            e("create g --memory 1M --image t"),
            "bad value '1M' for --memory: expected a whole number of MiB from 4M to 3G"
        );
        assert_eq!(
            e("create g --memory 8M --memory 8M --image t"),
            "option --memory given twice"
        );
        assert_eq!(
            e("create g --memory 8M --vps 9 --image t"),
            "bad value '9' for --vps: expected 1 to 4"
        );
        assert_eq!(
            e("create g --memory 8M --image t --color red"),
            "unknown option '--color'"
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(line in "[ -~]{0,60}") {
            let _ = parse(&line);
        }
    }
}
