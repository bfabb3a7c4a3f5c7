//! What each management command does. Output goes to a string the session
//! prints; a refused command prints `error: <why>` and changes nothing.

use crate::manager::Manager;
use crate::start::BootReport;
use crate::{disk, hv, memory, timer};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use hv1_abi::cpuid::PartitionPrivileges;
use hv1_abi::private::EXIT_REASONS;
use mgmt::cli::{self, Command};
use mgmt::json::{self, Object};

/// What the session must do after a command.
pub enum Effect {
    /// Nothing more.
    Done,
    /// Attach the console to this partition.
    Attach(u64),
    /// Stop the machine.
    Poweroff,
    /// A `net ping` runs: the session prints its result when it ends.
    AwaitPing {
        /// JSON result.
        json: bool,
    },
}

/// Run one parsed command.
pub fn execute(cmd: Command, m: &mut Manager, boot: &BootReport, out: &mut String) -> Effect {
    let result = match cmd {
        Command::Help(topic) => help(topic.as_deref(), out),
        Command::List { json } => list(m, boot, json, out),
        Command::Info { id, json, .. } if id == hv1_abi::ROOT_PARTITION_ID => root_info(m, boot, json, out),
        Command::Info { id, json, checksum } => info(m, id, json, checksum, out),
        Command::Channels { id, json } => channels(m, id, json, out),
        Command::Rescind { id, relid } => m.worker_mut(id).and_then(|w| w.rescind(relid)).map(|()| {
            let _ = writeln!(out, "partition {id}: channel {relid} rescinded");
        }),
        Command::Offer { id } => m
            .worker_mut(id)
            .and_then(|w| w.offer(crate::catalog::echo()))
            .map(|relid| {
                let _ = writeln!(out, "partition {id}: echo device offered on relid {relid}");
            }),
        Command::Console { id } => {
            return match m.get(id) {
                Ok(_) => Effect::Attach(id),
                Err(e) => {
                    let _ = writeln!(out, "error: {e}");
                    Effect::Done
                }
            };
        }
        Command::Shutdown { id, reboot } => m.request_shutdown(id, reboot).map(|msg| {
            let _ = writeln!(out, "{msg}");
        }),
        Command::Timesync { id } => crate::integration::timesync(m, id, out),
        Command::Kvp { id, op, json } => crate::integration::kvp(m, id, op, json, out),
        Command::Lifecycle { action, id } => m.apply(id, action).map(|msg| {
            let _ = writeln!(out, "{msg}");
        }),
        Command::Create { spec, start } => {
            let name = spec.name.clone();
            m.create(spec, start).map(|id| {
                let _ = writeln!(
                    out,
                    "partition {id} ({name}) created{}",
                    if start { " and started" } else { "" }
                );
            })
        }
        Command::HvStatus { json } => {
            hv_status(boot, json, out);
            Ok(())
        }
        Command::HvDisk { json } => {
            hv_disk(m, json, out);
            Ok(())
        }
        Command::Mem { json } => {
            mem(boot, m, json, out);
            Ok(())
        }
        Command::Images { json } => {
            images(m, json, out);
            Ok(())
        }
        Command::Switch { json } => {
            switch(m, json, out);
            Ok(())
        }
        Command::Net { json } => {
            net(m, json, out);
            Ok(())
        }
        Command::NetPing { target, count, json } => match m.start_ping(target, count) {
            Ok(header) => {
                if !json {
                    let _ = writeln!(out, "{header}");
                }
                return Effect::AwaitPing { json };
            }
            Err(e) => Err(e),
        },
        Command::Disks { json } => {
            disks(m, json, out);
            Ok(())
        }
        Command::DiskCreate { name, bytes, device } => {
            m.storage.create(&name, bytes, device.as_deref()).map(|d| {
                let _ = writeln!(
                    out,
                    "disk '{}' created on {}: {} MiB (sectors {}..{})",
                    d.name,
                    d.device,
                    d.sectors / 2048,
                    d.first_sector,
                    d.first_sector + d.sectors
                );
            })
        }
        Command::DiskBench { name, mib, depth, json } => m.storage.bench(&name, mib, depth as usize).and_then(|b| {
            if b.seq_us == 0 || b.random_us == 0 {
                return Err(String::from(
                    "the root's clock rate is not known yet (its first second): try again",
                ));
            }
            let mib_s = (b.bytes * 1_000_000 / b.seq_us) >> 20;
            let iops = b.random_reads * 1_000_000 / b.random_us;
            if json {
                let mut s = String::new();
                Object::new(&mut s)
                    .str("disk", &name)
                    .num("bytes", b.bytes)
                    .num("seq_us", b.seq_us)
                    .num("seq_ms", b.seq_us / 1000)
                    .num("seq_mib_per_s", mib_s)
                    .num("depth", depth)
                    .num("random_4k_reads", b.random_reads)
                    .num("random_us", b.random_us)
                    .num("random_ms", b.random_us / 1000)
                    .num("random_4k_iops", iops)
                    .end();
                let _ = writeln!(out, "{s}");
            } else {
                let _ = writeln!(
                    out,
                    "disk '{name}': {} MiB sequential ({depth} x 1 MiB in flight) in {} us ({mib_s} MiB/s); {} 4 KiB reads at depth 1 in {} us ({iops} IOPS)",
                    b.bytes >> 20,
                    b.seq_us,
                    b.random_reads,
                    b.random_us
                );
            }
            Ok(())
        }),
        Command::DiskDelete { name } => m.storage.delete(&name).map(|device| {
            let _ = writeln!(out, "disk '{name}' deleted from {device}");
        }),
        Command::Poweroff => return Effect::Poweroff,
    };
    if let Err(e) = result {
        let _ = writeln!(out, "error: {e}");
    }
    Effect::Done
}

fn help(topic: Option<&str>, out: &mut String) -> Result<(), String> {
    match topic {
        None => {
            let _ = writeln!(
                out,
                "commands (add --json where shown for machine-readable output):"
            );
            for (usage, what) in cli::HELP {
                let _ = writeln!(out, "  {usage:<34} {what}");
            }
            let _ = writeln!(
                out,
                "keys: backspace, Ctrl-U clear line, Ctrl-C cancel, up/down history"
            );
            Ok(())
        }
        Some(t) => {
            let entry = cli::HELP
                .iter()
                .find(|(usage, _)| usage.split_whitespace().next() == Some(t));
            match entry {
                Some((usage, what)) => {
                    let _ = writeln!(out, "{usage}\n  {what}");
                    Ok(())
                }
                None => Err(format!("no command '{t}'; type 'help'")),
            }
        }
    }
}

fn root_memory(boot: &BootReport) -> u64 {
    boot.ram_total - boot.region.size
}

fn list(m: &Manager, boot: &BootReport, json: bool, out: &mut String) -> Result<(), String> {
    let root_exits = hv::core_stats().map(|s| s.total_exits).unwrap_or(0);
    let uptime = timer::ticks() / timer::HZ;
    if json {
        let mut rows: Vec<String> = Vec::new();
        let mut r = String::new();
        Object::new(&mut r)
            .num("id", hv1_abi::ROOT_PARTITION_ID)
            .str("name", "root")
            .str("state", "running")
            .num("vps", 1)
            .num("memory", root_memory(boot))
            .num("uptime", uptime)
            .num("exits", root_exits)
            .end();
        rows.push(r);
        for w in &m.workers {
            let exits = hv::partition_stats(w.id).map(|s| s.total_exits).unwrap_or(0);
            let mut r = String::new();
            let obj = Object::new(&mut r)
                .num("id", w.id)
                .str("name", &w.spec.name)
                .str("state", w.state.name())
                .num("vps", w.vp_count() as u64)
                .num("memory", w.spec.memory)
                .num("uptime", w.uptime_secs())
                .num("exits", exits)
                .str("image", &w.spec.image)
                .str("mode", &w.spec.mode);
            match &w.crash {
                Some(c) => obj.str("crash", c).end(),
                None => obj.null("crash").end(),
            }
            rows.push(r);
        }
        json::array(out, rows.iter().map(String::as_str));
        out.push('\n');
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<4}{:<16}{:<10}{:<5}{:<11}{:<9}EXITS",
        "ID", "NAME", "STATE", "VPS", "MEMORY", "UPTIME"
    );
    let row =
        |out: &mut String, id: u64, name: &str, state: &str, vps: usize, mem: u64, up: u64, exits: u64| {
            let mut size = String::new();
            // Whole MiB are easier to scan than an odd KiB count.
            let _ = mgmt::size::format(
                if mem.is_multiple_of(1 << 20) {
                    mem
                } else {
                    mem >> 20 << 20
                },
                &mut size,
            );
            let _ = writeln!(
                out,
                "{id:<4}{name:<16}{state:<10}{vps:<5}{size:<11}{:<9}{exits}",
                format!("{up}s")
            );
        };
    row(
        out,
        1,
        "root",
        "running",
        1,
        root_memory(boot),
        uptime,
        root_exits,
    );
    for w in &m.workers {
        let exits = hv::partition_stats(w.id).map(|s| s.total_exits).unwrap_or(0);
        row(
            out,
            w.id,
            &w.spec.name,
            w.state.name(),
            w.vp_count(),
            w.spec.memory,
            w.uptime_secs(),
            exits,
        );
    }
    Ok(())
}

/// `info 1`: the root partition as hv-core sees it.
fn root_info(m: &Manager, boot: &BootReport, json: bool, out: &mut String) -> Result<(), String> {
    let st = hv::core_stats().map_err(|s| format!("hv-core statistics unavailable: {s:?}"))?;
    let lent: u64 = m.workers.iter().map(|w| w.spec.memory).sum();
    if json {
        let mut exits = String::new();
        let mut o = Object::new(&mut exits).num("total", st.total_exits);
        for (name, count) in EXIT_REASONS.iter().zip(st.exits) {
            o = o.num(name, count);
        }
        o.end();
        let mut s = String::new();
        Object::new(&mut s)
            .num("id", hv1_abi::ROOT_PARTITION_ID)
            .str("name", "root")
            .str("state", "running")
            .num("memory", root_memory(boot))
            .num("free", memory::free_bytes())
            .num("lent_to_children", lent)
            .raw("time_cycles", &phase_cycles_json())
            .num("dispatches", m.dispatches)
            .num("device_waits", m.device_waits)
            .num("stack_used", crate::boot::stack_high_water() as u64)
            .num("stack_size", crate::boot::BOOT_STACK_SIZE as u64)
            .num("uptime", timer::ticks() / timer::HZ)
            .num("injected_exceptions", st.injected_exceptions)
            .num("failed_hypercalls", st.failed_hypercalls)
            .raw("exits", &exits)
            .null("crash")
            .end();
        let _ = writeln!(out, "{s}");
        return Ok(());
    }
    let _ = writeln!(
        out,
        "partition 1 (root): running, 1 VP, the machine's own OS (demoted)"
    );
    let _ = writeln!(
        out,
        "memory:       {} MiB (hv-core's {} MiB region excluded); {} KiB free, {} KiB lent to children",
        root_memory(boot) >> 20,
        st.region_size >> 20,
        memory::free_bytes() >> 10,
        lent >> 10
    );
    let _ = writeln!(out, "time:         {}", phase_shares());
    let _ = writeln!(
        out,
        "stack:        {} KiB deepest of {} KiB (a guard page below it)",
        crate::boot::stack_high_water() >> 10,
        crate::boot::BOOT_STACK_SIZE >> 10
    );
    let _ = writeln!(out, "uptime:       {}s", timer::ticks() / timer::HZ);
    let _ = writeln!(
        out,
        "exits:        {} total ({} injected exceptions, {} failed hypercalls)",
        st.total_exits, st.injected_exceptions, st.failed_hypercalls
    );
    for (name, count) in EXIT_REASONS.iter().zip(st.exits) {
        if count != 0 {
            let _ = writeln!(out, "  {name:<12} {count}");
        }
    }
    Ok(())
}

fn info(m: &Manager, id: u64, json: bool, with_checksum: bool, out: &mut String) -> Result<(), String> {
    let w = m.get(id)?;
    let stats = hv::partition_stats(id).map_err(|s| format!("hv-core has no partition {id}: {s:?}"))?;
    let (lo, hi) = w.frame_span();
    let checksum = with_checksum.then(|| w.checksum());
    let regs: Vec<_> = (0..w.vp_count() as u32).map(|vp| (vp, w.registers(vp))).collect();
    if json {
        let mut exits = String::new();
        let mut o = Object::new(&mut exits).num("total", stats.total_exits);
        for (name, count) in EXIT_REASONS.iter().zip(stats.exits) {
            o = o.num(name, count);
        }
        o.end();
        let mut vps: Vec<String> = Vec::new();
        for (vp, r) in &regs {
            let mut s = String::new();
            let mut o = Object::new(&mut s).num("index", *vp as u64);
            match r {
                Ok(values) => {
                    for (name, v) in values {
                        o = o.num(name, *v);
                    }
                }
                Err(e) => o = o.str("error", &format!("{e:?}")),
            }
            o.end();
            vps.push(s);
        }
        let mut vp_json = String::new();
        json::array(&mut vp_json, vps.iter().map(String::as_str));
        let mut q: Vec<(&'static str, u64, u64)> = w.quotas().to_vec();
        if let Ok(c) = m.integration(id) {
            q.push(crate::integration::kvp_quota(c));
        }
        let mut quotas = String::new();
        let mut qo = Object::new(&mut quotas);
        for (name, used, limit) in q.iter() {
            let mut one = String::new();
            Object::new(&mut one)
                .num("used", *used)
                .num("limit", *limit)
                .end();
            qo = qo.raw(name, &one);
        }
        qo.end();
        let mut s = String::new();
        let o = Object::new(&mut s)
            .num("id", id)
            .str("name", &w.spec.name)
            .str("state", w.state.name())
            .num("memory", w.spec.memory)
            .num("mapped_pages", stats.mapped_pages)
            .num("frames_low", lo)
            .num("frames_high", hi)
            .num("uptime", w.uptime_secs())
            .num("guest_os_id", stats.guest_os_id)
            .num("console_bytes", w.uart.written())
            .num("intercepts", w.intercepts)
            .num("register_page_completions", w.register_page_completions)
            .num("ioapic_accesses", w.ioapic_accesses)
            .num("interrupts_asserted", w.interrupts_asserted)
            .num("interrupts_dropped", w.interrupts_dropped)
            .num("messages", w.messages)
            .num("replies", w.replies)
            .num("replies_refused", w.replies_refused)
            .num("replies_waiting", w.outbox_len() as u64)
            .num("vmbus_violations", w.vmbus_violations)
            .num("signals_with_dispatch", w.signals_with_dispatch)
            .num("signals_failed", w.signals_failed)
            .num("stray_io", w.stray_io)
            .num("halted_vps", w.halted_vps() as u64)
            .num("injected_exceptions", stats.injected_exceptions)
            .num("failed_hypercalls", stats.failed_hypercalls)
            .num("tlb_flushes", stats.tlb_flushes)
            .num("vmbus_resets", w.resets)
            .num("rings_broken", w.rings_broken)
            .num("console_lines_suppressed", w.lines_suppressed)
            .num("guest_reboots", w.guest_reboots)
            .num("console_input_dropped", w.console_input_dropped)
            .raw("quotas", &quotas)
            .raw("exits", &exits)
            .raw("vps", &vp_json);
        let o = match checksum {
            Some(c) => o.num("memory_fnv1a", c),
            None => o,
        };
        let o = match w.last_exit {
            Some(e) => o.str("last_exit", e),
            None => o.null("last_exit"),
        };
        let o = match m.integration(id) {
            Ok(c) => o.raw("integration", &crate::integration::info_json(c)),
            Err(_) => o.null("integration"),
        };
        match &w.crash {
            Some(c) => o.str("crash", c).end(),
            None => o.null("crash").end(),
        }
        let _ = writeln!(out, "{s}");
        return Ok(());
    }
    let _ = writeln!(out, "partition {id} ({}): {}", w.spec.name, w.state.name());
    if let Some(c) = &w.crash {
        let _ = writeln!(out, "crash:        {c}");
    }
    if let Some(e) = w.last_exit {
        let _ = writeln!(out, "last exit:    {e} ({} guest reboots)", w.guest_reboots);
    }
    let _ = writeln!(out, "image:        {} (mode {})", w.spec.image, w.spec.mode);
    if let Ok(c) = m.integration(id) {
        crate::integration::info_text(c, out);
    }
    let _ = writeln!(
        out,
        "memory:       GPA 0x0..{:#x} ({} pages lent by the root, frames {lo:#x}..{:#x})",
        w.spec.memory,
        stats.mapped_pages,
        hi + 0x1000
    );
    if let Some(c) = checksum {
        let _ = writeln!(out, "checksum:     fnv1a {c:#018x}");
    }
    let _ = writeln!(
        out,
        "uptime:       {}s; console {} bytes; {} intercepts handled, {} stray port accesses",
        w.uptime_secs(),
        w.uart.written(),
        w.intercepts,
        w.stray_io
    );
    let _ = writeln!(
        out,
        "synic:        {} messages received, {} replies posted, {} replies refused, {} refused as malformed",
        w.messages, w.replies, w.replies_refused, w.vmbus_violations
    );
    let _ = writeln!(
        out,
        "signals:      {} made with a dispatch, {} failed",
        w.signals_with_dispatch, w.signals_failed
    );
    let mut quotas: Vec<(&'static str, u64, u64)> = w.quotas().to_vec();
    if let Ok(c) = m.integration(id) {
        quotas.push(crate::integration::kvp_quota(c));
    }
    let quota_line: Vec<String> = quotas
        .iter()
        .map(|(name, used, limit)| format!("{name} {used}/{limit}"))
        .collect();
    let _ = writeln!(out, "quotas:       {}", quota_line.join(", "));
    let _ = writeln!(
        out,
        "exits:        {} total ({} injected exceptions, {} failed hypercalls, {} TLB flushes)",
        stats.total_exits, stats.injected_exceptions, stats.failed_hypercalls, stats.tlb_flushes
    );
    for (name, count) in EXIT_REASONS.iter().zip(stats.exits) {
        if count != 0 {
            let _ = writeln!(out, "  {name:<12} {count}");
        }
    }
    for (vp, r) in regs {
        match r {
            Ok(values) => {
                let _ = write!(out, "vp {vp}:");
                for (name, v) in values {
                    let _ = write!(out, " {name}={v:#x}");
                }
                let _ = writeln!(out);
            }
            Err(e) => {
                let _ = writeln!(out, "vp {vp}: registers unavailable: {e:?}");
            }
        }
    }
    Ok(())
}

fn privilege_names(p: PartitionPrivileges) -> String {
    let names: Vec<&str> = p.iter_names().map(|(n, _)| n).collect();
    names.join(" ")
}

fn hv_status(boot: &BootReport, json: bool, out: &mut String) {
    let d = hv::Discovery::read();
    let stats = hv::core_stats();
    let cpu_management = d.privileges.contains(PartitionPrivileges::CPU_MANAGEMENT);
    if json {
        let vendor = String::from_utf8_lossy(&d.vendor).into_owned();
        let interface = String::from_utf8_lossy(&d.interface.to_le_bytes()).into_owned();
        let mut s = String::new();
        let mut o = Object::new(&mut s)
            .bool("present", d.is_hv1())
            .str("vendor", &vendor)
            .num("max_leaf", d.max_leaf as u64)
            .str("interface", &interface)
            .str("version", &format!("{}.{}", d.version.0, d.version.1))
            .num("privileges", d.privileges.bits())
            .bool("cpu_management", cpu_management);
        o = match boot.partition_id {
            Ok(id) => o.num("partition_id", id),
            Err(_) => o.null("partition_id"),
        };
        match stats {
            Ok(st) => {
                let mut region = String::new();
                Object::new(&mut region)
                    .num("base", st.region_base)
                    .num("size", st.region_size)
                    .num("used", st.region_used)
                    .end();
                let mut exits = String::new();
                let mut e = Object::new(&mut exits).num("total", st.total_exits);
                for (name, count) in EXIT_REASONS.iter().zip(st.exits) {
                    e = e.num(name, count);
                }
                e.end();
                o.raw("region", &region)
                    .raw("exits", &exits)
                    .num("injected_exceptions", st.injected_exceptions)
                    .num("partitions", st.partitions)
                    .num("lent_pages", st.lent_pages)
                    .num("pinned_pages", st.pinned_pages)
                    .end();
            }
            Err(e) => o.str("error", &format!("{e:?}")).end(),
        }
        let _ = writeln!(out, "{s}");
        return;
    }
    let _ = writeln!(
        out,
        "hypervisor:    {}",
        if d.is_hv1() { "present" } else { "absent" }
    );
    let _ = writeln!(
        out,
        "vendor:        {} (max leaf {:#x})",
        d.vendor.escape_ascii(),
        d.max_leaf
    );
    let _ = writeln!(
        out,
        "interface:     {} ({:#010x})",
        d.interface.to_le_bytes().escape_ascii(),
        d.interface
    );
    let _ = writeln!(out, "version:       {}.{}", d.version.0, d.version.1);
    let _ = writeln!(
        out,
        "privileges:    {:#018x} {}",
        d.privileges.bits(),
        privilege_names(d.privileges)
    );
    let _ = writeln!(
        out,
        "partition:     {} (root{})",
        boot.partition_id
            .map_or_else(|s| format!("{s:?}"), |id| format!("{id}")),
        if cpu_management { ", CpuManagement" } else { "" }
    );
    match stats {
        Ok(s) => {
            let _ = writeln!(
                out,
                "hv-core:       region {:#x}..{:#x} ({} MiB, {} KiB used), hidden from the root",
                s.region_base,
                s.region_base + s.region_size,
                s.region_size >> 20,
                s.region_used >> 10
            );
            let _ = writeln!(
                out,
                "children:      {} partitions, {} root pages lent, {} pinned (never lent)",
                s.partitions, s.lent_pages, s.pinned_pages
            );
            let _ = writeln!(out, "exits:         {} total", s.total_exits);
            for (name, count) in EXIT_REASONS.iter().zip(s.exits) {
                let _ = writeln!(out, "  {name:<12} {count}");
            }
            let _ = writeln!(out, "injected:      {} exceptions", s.injected_exceptions);
        }
        Err(e) => {
            let _ = writeln!(out, "hv-core:       statistics unavailable: {e:?}");
        }
    }
}

/// The keys `channels --json` writes for every channel itself.
const CHANNEL_KEYS: [&str; 9] = [
    "relid",
    "interface",
    "instance",
    "state",
    "sub_channel_index",
    "connection_id",
    "ring_gpadl",
    "downstream_page_offset",
    "target_vp",
];

fn hv_disk(m: &Manager, json: bool, out: &mut String) {
    match m.storage.read_sector(0, 0) {
        Ok((location, sectors, sector)) if json => {
            let mut s = String::new();
            Object::new(&mut s)
                .str("location", &location)
                .num("sectors", sectors)
                .num("sector0_fnv1a", disk::fnv1a(&sector))
                .end();
            let _ = writeln!(out, "{s}");
        }
        Ok((location, sectors, sector)) => {
            let _ = writeln!(
                out,
                "disk {}: {} sectors ({} KiB)",
                location,
                sectors,
                sectors / 2
            );
            let _ = writeln!(
                out,
                "sector 0: fnv1a {:#018x}, first bytes {:02x?}",
                disk::fnv1a(&sector),
                &sector[..16]
            );
        }
        Err(e) => {
            let _ = writeln!(out, "error: disk: {e}");
        }
    }
}

/// `net`: the root's interface, the uplink, the children's addresses.
fn net(m: &Manager, json: bool, out: &mut String) {
    let n = &m.network;
    let status = n.stack.as_ref().map(|(s, _)| s.status());
    let mac = |m: [u8; 6]| format!("{}", vswitch::MacAddr(m));
    let child_of = |port: vswitch::PortId| {
        m.switch
            .port_config(port)
            .map(|c| c.name.clone())
            .unwrap_or_default()
    };
    if json {
        let mut s = String::new();
        let mut o = Object::new(&mut s);
        match &status {
            Some(st) => {
                o = o.str("mac", &mac(st.mac));
                o = match st.ipv4 {
                    Some(a) => o
                        .str("address", &format!("{}", a.addr))
                        .num("prefix", a.prefix_len.into()),
                    None => o.null("address").null("prefix"),
                };
                o = match st.gateway {
                    Some(g) => o.str("gateway", &format!("{g}")),
                    None => o.null("gateway"),
                };
                let source = match st.source {
                    rootnet::AddrSource::None => "none",
                    rootnet::AddrSource::Static => "static",
                    rootnet::AddrSource::Dhcp => "dhcp",
                };
                let dhcp = match st.dhcp {
                    rootnet::DhcpState::Disabled => String::from("disabled"),
                    rootnet::DhcpState::Discovering => String::from("discovering"),
                    rootnet::DhcpState::Bound { server } => format!("bound to {server}"),
                };
                let c = st.counters;
                o = o
                    .str("source", source)
                    .str("dhcp", &dhcp)
                    .num("frames_in", c.frames_in)
                    .num("frames_out", c.frames_out)
                    .num(
                        "frames_dropped",
                        c.frames_in_dropped + c.frames_out_dropped + c.frames_in_malformed,
                    );
            }
            None => {
                o = o
                    .null("mac")
                    .null("address")
                    .str("error", n.stack_error.as_deref().unwrap_or(""));
            }
        }
        o = match &n.uplink {
            Ok((u, _)) => o
                .bool("uplink", true)
                .str("uplink_mac", &mac(u.mac))
                .str("uplink_location", &u.location)
                .num("uplink_send_errors", u.send_errors),
            Err(why) => o.bool("uplink", false).str("uplink_error", why),
        };
        let rows: Vec<String> = n
            .neighbours
            .iter()
            .map(|x| {
                let mut r = String::new();
                Object::new(&mut r)
                    .str("port", &child_of(x.port))
                    .str("mac", &mac(x.mac))
                    .str("address", &format!("{}", x.ip))
                    .end();
                r
            })
            .collect();
        let mut arr = String::new();
        json::array(&mut arr, rows.iter().map(String::as_str));
        o.raw("neighbours", &arr).end();
        let _ = writeln!(out, "{s}");
        return;
    }
    match &status {
        Some(st) => {
            let addr = st
                .ipv4
                .map(|a| format!("{a}"))
                .unwrap_or_else(|| String::from("none yet"));
            let _ = writeln!(
                out,
                "root interface: {} address {addr} ({:?})",
                mac(st.mac),
                st.source
            );
            if let Some(g) = st.gateway {
                let _ = writeln!(out, "gateway:        {g}");
            }
            let _ = writeln!(out, "dhcp:           {:?}", st.dhcp);
            let c = st.counters;
            let _ = writeln!(
                out,
                "frames:         {} in, {} out, {} dropped",
                c.frames_in,
                c.frames_out,
                c.frames_in_dropped + c.frames_out_dropped + c.frames_in_malformed
            );
        }
        None => {
            let _ = writeln!(
                out,
                "root interface: none ({})",
                n.stack_error.as_deref().unwrap_or("unknown reason")
            );
        }
    }
    match &n.uplink {
        Ok((u, _)) => {
            let _ = writeln!(
                out,
                "uplink:         virtio-net at {} ({})",
                u.location,
                mac(u.mac)
            );
        }
        Err(why) => {
            let _ = writeln!(out, "uplink:         none ({why})");
        }
    }
    for x in &n.neighbours {
        let _ = writeln!(
            out,
            "child address:  {} on {} ({})",
            x.ip,
            child_of(x.port),
            mac(x.mac)
        );
    }
}

/// The result of a finished (or abandoned) `net ping`.
pub fn ping_result(report: Option<rootnet::PingReport>, json: bool, out: &mut String) {
    let Some(r) = report else {
        let _ = writeln!(out, "error: the ping session is gone");
        return;
    };
    let loss = if r.sent == 0 {
        100
    } else {
        100 - u64::from(r.received) * 100 / u64::from(r.sent)
    };
    if json {
        let mut s = String::new();
        let o = Object::new(&mut s)
            .str("target", &format!("{}", r.target))
            .num("count", r.count.into())
            .num("sent", r.sent.into())
            .num("received", r.received.into())
            .num("loss_percent", loss)
            .bool("done", r.done);
        let o = match r.rtt {
            Some(t) => o
                .num("rtt_min_ms", t.min_ms)
                .num("rtt_avg_ms", t.avg_ms)
                .num("rtt_max_ms", t.max_ms),
            None => o.null("rtt_min_ms").null("rtt_avg_ms").null("rtt_max_ms"),
        };
        match r.failure {
            Some(f) => o.str("failure", &format!("{f}")).end(),
            None => o.null("failure").end(),
        }
        let _ = writeln!(out, "{s}");
        return;
    }
    let _ = writeln!(
        out,
        "{} packets transmitted, {} received, {loss}% packet loss",
        r.sent, r.received
    );
    if let Some(t) = r.rtt {
        let _ = writeln!(out, "rtt min/avg/max = {}/{}/{} ms", t.min_ms, t.avg_ms, t.max_ms);
    }
    if let Some(f) = r.failure {
        let _ = writeln!(out, "failed: {f}");
    }
}

/// `disks`: the root's block devices and the child disks on them.
fn disks(m: &Manager, json: bool, out: &mut String) {
    let devices = m.storage.devices();
    let disks = m.storage.disks();
    let holder_name = |id: u64| m.get(id).map(|w| w.spec.name.clone()).unwrap_or_default();
    if json {
        let rows: Vec<String> = devices
            .iter()
            .map(|d| {
                let mut r = String::new();
                Object::new(&mut r)
                    .str("name", &d.name)
                    .str("location", &d.location)
                    .num("sectors", d.sectors)
                    .num("bytes", d.sectors * 512)
                    .str("layout", d.layout)
                    .str("note", &d.note)
                    .num("free_bytes", d.free_bytes)
                    .bool("read_only", d.read_only)
                    .num("seg_max", d.seg_max)
                    .num("requests", d.requests)
                    .bool("interrupts", d.interrupts)
                    .num("halted_waits", d.halted_waits)
                    .num("request_us", d.request_us)
                    .end();
                r
            })
            .collect();
        let mut dev_json = String::new();
        json::array(&mut dev_json, rows.iter().map(String::as_str));
        let rows: Vec<String> = disks
            .iter()
            .map(|d| {
                let mut r = String::new();
                let o = Object::new(&mut r)
                    .str("name", &d.name)
                    .str("device", &d.device)
                    .str("kind", d.kind)
                    .num("first_sector", d.first_sector)
                    .num("sectors", d.sectors)
                    .num("bytes", d.sectors * 512);
                match d.attached_to {
                    Some(id) => o
                        .num("attached_to", id)
                        .str("attached_name", &holder_name(id))
                        .end(),
                    None => o.null("attached_to").null("attached_name").end(),
                }
                r
            })
            .collect();
        let mut disk_json = String::new();
        json::array(&mut disk_json, rows.iter().map(String::as_str));
        let mut s = String::new();
        Object::new(&mut s)
            .raw("devices", &dev_json)
            .raw("disks", &disk_json)
            .num("completion_interrupts", crate::disk::completion_interrupts())
            .end();
        let _ = writeln!(out, "{s}");
        return;
    }
    if devices.is_empty() {
        let _ = writeln!(out, "no passthrough block devices (QEMU: -device virtio-blk-pci)");
        return;
    }
    let _ = writeln!(
        out,
        "{:<6}{:<10}{:>12}  {:<9}NOTE",
        "DEV", "PCI", "SIZE", "LAYOUT"
    );
    for d in &devices {
        let note = if d.layout == "gpt" {
            format!("{} MiB free", d.free_bytes >> 20)
        } else {
            d.note.clone()
        };
        let _ = writeln!(
            out,
            "{:<6}{:<10}{:>9} MiB  {:<9}{}{}",
            d.name,
            d.location,
            d.sectors / 2048,
            d.layout,
            note,
            if d.read_only { " (read-only)" } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "{:<17}{:<6}{:<10}{:>12}  ATTACHED TO",
        "DISK", "DEV", "KIND", "SIZE"
    );
    for d in &disks {
        let holder = d
            .attached_to
            .map(|id| format!("{id} ({})", holder_name(id)))
            .unwrap_or_else(|| String::from("-"));
        let _ = writeln!(
            out,
            "{:<17}{:<6}{:<10}{:>9} MiB  {}",
            d.name,
            d.device,
            d.kind,
            d.sectors / 2048,
            holder
        );
    }
}

/// Is the root page hostile children aim at still all 0xC5?
fn canary_intact(m: &Manager) -> bool {
    // SAFETY: the canary is a root frame set aside at boot and never freed.
    let page = unsafe { memory::phys_slice(m.canary, 4096) };
    page.iter().all(|&b| b == 0xC5)
}

/// What an image in the bundle is: a 64-bit ELF (the test OS, PVH or
/// Multiboot kernels), a Linux bzImage (checked by `boot_proto::bzimage`;
/// children cannot boot one yet), or unknown.
fn image_format(bytes: &[u8]) -> String {
    if bytes.starts_with(b"\x7fELF") {
        return String::from(if bytes.get(4) == Some(&2) {
            "elf64"
        } else {
            "elf32"
        });
    }
    match boot_proto::bzimage::parse(bytes) {
        Ok(bz) => format!(
            "bzImage (boot protocol {}.{:02})",
            bz.version >> 8,
            bz.version & 0xFF
        ),
        Err(_) => String::from("unknown"),
    }
}

/// The boot protocols an image carries entries for (`create --boot`
/// names) and the one `--boot auto` picks (empty: none).
fn image_boot(bytes: &[u8]) -> (Vec<&'static str>, &'static str) {
    match crate::loader::inspect(bytes) {
        Ok(o) => (o.names(), o.auto().map(|b| b.name()).unwrap_or("")),
        Err(_) => (Vec::new(), ""),
    }
}

fn images(m: &Manager, json: bool, out: &mut String) {
    if json {
        let items: Vec<String> = m
            .images()
            .iter()
            .map(|(name, bytes)| {
                let (boot, auto) = image_boot(bytes);
                let mut list = String::new();
                let quoted: Vec<String> = boot
                    .iter()
                    .map(|b| {
                        let mut q = String::new();
                        json::string(&mut q, b);
                        q
                    })
                    .collect();
                json::array(&mut list, quoted.iter().map(String::as_str));
                let mut s = String::new();
                let o = Object::new(&mut s)
                    .str("name", name)
                    .num("size", bytes.len() as u64)
                    .str("format", &image_format(bytes))
                    .raw("boot", &list);
                if auto.is_empty() {
                    o.null("boot_auto").end();
                } else {
                    o.str("boot_auto", auto).end();
                }
                s
            })
            .collect();
        let mut s = String::new();
        json::array(&mut s, items.iter().map(String::as_str));
        let _ = writeln!(out, "{s}");
        return;
    }
    let _ = writeln!(
        out,
        "{:<16} {:>10}  {:<32} BOOT (auto)",
        "NAME", "BYTES", "FORMAT"
    );
    for (name, bytes) in m.images() {
        let (boot, auto) = image_boot(bytes);
        let boot = if boot.is_empty() {
            String::from("-")
        } else {
            format!(
                "{} ({})",
                boot.join(","),
                if auto.is_empty() { "-" } else { auto }
            )
        };
        let _ = writeln!(
            out,
            "{name:<16} {:>10}  {:<32} {boot}",
            bytes.len(),
            image_format(bytes)
        );
    }
}

fn mem(boot: &BootReport, m: &Manager, json: bool, out: &mut String) {
    let free = memory::free_bytes();
    let (used, size) = memory::heap_usage();
    let lent: u64 = m.workers.iter().map(|w| w.spec.memory).sum();
    let hv = hv::core_stats().ok();
    if json {
        let mut s = String::new();
        let o = Object::new(&mut s)
            .num("free", free)
            .num("free_after_boot", boot.free_after_boot)
            .num("lent_to_children", lent)
            .num("heap_used", used as u64)
            .num("heap_size", size as u64)
            .bool("canary_intact", canary_intact(m));
        match hv {
            Some(st) => o
                .num("hv_region_used", st.region_used)
                .num("hv_lent_pages", st.lent_pages)
                .end(),
            None => o.end(),
        }
        let _ = writeln!(out, "{s}");
    } else {
        let _ = writeln!(
            out,
            "free frames:   {} KiB (after boot: {} KiB)",
            free >> 10,
            boot.free_after_boot >> 10
        );
        let _ = writeln!(
            out,
            "children:      {} KiB lent to {} partitions",
            lent >> 10,
            m.workers.len()
        );
        let _ = writeln!(
            out,
            "heap:          {} KiB used of {} KiB",
            used >> 10,
            size >> 10
        );
        if let Some(st) = hv {
            let _ = writeln!(
                out,
                "hv-core:       {} KiB of its region in use",
                st.region_used >> 10
            );
        }
    }
}

fn guid_text(g: &[u8; 16]) -> String {
    let mut s = String::new();
    for (i, b) in g.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn ring_json(state: Option<vmbus::ring::RingState>) -> String {
    let mut s = String::new();
    match state {
        Some(r) => Object::new(&mut s)
            .num("read_index", u64::from(r.read_index))
            .num("write_index", u64::from(r.write_index))
            .num("bytes_pending", r.bytes_pending)
            .num("data_size", r.data_size)
            .num("interrupt_mask", u64::from(r.interrupt_mask))
            .num("pending_send_size", u64::from(r.pending_send_size))
            .num("feature_bits", u64::from(r.feature_bits))
            .end(),
        None => s.push_str("null"),
    }
    s
}

fn ring_text(state: Option<vmbus::ring::RingState>) -> String {
    match state {
        Some(r) => format!(
            "read {:#x} write {:#x} pending {} of {} bytes, interrupt mask {}, pending_send_sz {}",
            r.read_index, r.write_index, r.bytes_pending, r.data_size, r.interrupt_mask, r.pending_send_size
        ),
        None => String::from("unreadable"),
    }
}

/// One field a device reported through its inspect hook.
enum Field {
    Counter(u64),
    Text(String),
    Ring(Option<vmbus::ring::RingState>),
}

/// A device's inspect output, in the order it reported it: (JSON key,
/// text label, value).
#[derive(Default)]
struct Fields(Vec<(&'static str, &'static str, Field)>);

impl vsp::InspectSink for Fields {
    fn counter(&mut self, name: &'static str, label: &'static str, value: u64) {
        self.0.push((name, label, Field::Counter(value)));
    }
    fn text(&mut self, name: &'static str, label: &'static str, value: &str) {
        self.0.push((name, label, Field::Text(String::from(value))));
    }
    fn ring(&mut self, name: &'static str, label: &'static str, state: Option<vmbus::ring::RingState>) {
        self.0.push((name, label, Field::Ring(state)));
    }
}

/// `channels ID`: the child's VMBus as its server and devices see it.
fn channels(m: &Manager, id: u64, json: bool, out: &mut String) -> Result<(), String> {
    if id == hv1_abi::ROOT_PARTITION_ID {
        return Err(String::from(
            "the root partition is the VMBus host; give a child's id",
        ));
    }
    let w = m.get(id)?;
    let version = w
        .vmbus
        .version()
        .map(|v| format!("{}.{}", v.0 >> 16, v.0 & 0xFFFF));
    let rows: Vec<(u32, &vmbus::server::Channel, Option<Fields>)> = w
        .vmbus
        .channels()
        .iter()
        .map(|(relid, c)| {
            let mut f = Fields::default();
            (*relid, c, w.inspect_channel(*relid, &mut f).then_some(f))
        })
        .collect();
    let state_name = |c: &vmbus::server::Channel| match c.state {
        vmbus::server::ChannelState::Offered => "offered",
        vmbus::server::ChannelState::Opening(_) => "opening",
        vmbus::server::ChannelState::Open(_) => "open",
        vmbus::server::ChannelState::Rescinded => "rescinded",
    };
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|(relid, c, dev)| {
                let mut s = String::new();
                let mut o = Object::new(&mut s)
                    .num("relid", u64::from(*relid))
                    .str("interface", &guid_text(&c.offer.interface_type))
                    .str("instance", &guid_text(&c.offer.interface_instance))
                    .str("state", state_name(c))
                    .num("sub_channel_index", u64::from(c.offer.sub_channel_index))
                    .num("connection_id", u64::from(c.connection_id));
                if let vmbus::server::ChannelState::Open(info) | vmbus::server::ChannelState::Opening(info) =
                    &c.state
                {
                    o = o
                        .num("ring_gpadl", u64::from(info.ring_gpadl))
                        .num("downstream_page_offset", u64::from(info.downstream_page_offset))
                        .num("target_vp", u64::from(info.target_vp));
                }
                for (name, _, field) in dev.iter().flat_map(|f| f.0.iter()) {
                    // The channel's own keys win: a device field of the same
                    // name would make a duplicate JSON key.
                    if CHANNEL_KEYS.contains(name) {
                        continue;
                    }
                    o = match field {
                        Field::Counter(v) => o.num(name, *v),
                        Field::Text(t) => o.str(name, t),
                        Field::Ring(r) => o.raw(name, &ring_json(*r)),
                    };
                }
                o.end();
                s
            })
            .collect();
        let mut list = String::new();
        json::array(&mut list, items.iter().map(String::as_str));
        let mut s = String::new();
        Object::new(&mut s)
            .num("id", id)
            .str("version", version.as_deref().unwrap_or(""))
            .num("messages", w.messages)
            .num("violations", w.vmbus_violations)
            .raw("channels", &list)
            .end();
        let _ = writeln!(out, "{s}");
        return Ok(());
    }
    let _ = writeln!(
        out,
        "partition {id} VMBus: {}; {} messages, {} refused",
        version.map_or_else(|| String::from("not connected"), |v| format!("version {v}")),
        w.messages,
        w.vmbus_violations
    );
    if rows.is_empty() {
        let _ = writeln!(out, "no channels offered");
    }
    for (relid, c, dev) in rows {
        let sub = match c.offer.sub_channel_index {
            0 => String::new(),
            n => format!(" sub-channel {n}"),
        };
        let _ = writeln!(
            out,
            "relid {relid}: {} interface {}{sub} connection {:#x}",
            state_name(c),
            guid_text(&c.offer.interface_type),
            c.connection_id
        );
        if let Some(f) = dev {
            let mut line = String::new();
            for (_, label, field) in &f.0 {
                match field {
                    Field::Ring(r) => {
                        let _ = writeln!(out, "  {label}: {}", ring_text(*r));
                    }
                    Field::Counter(v) => {
                        let sep = if line.is_empty() { "" } else { ", " };
                        let _ = write!(line, "{sep}{v} {label}");
                    }
                    Field::Text(t) if t.is_empty() => {}
                    Field::Text(t) => {
                        let sep = if line.is_empty() { "" } else { "; " };
                        let _ = write!(line, "{sep}{label}: {t}");
                    }
                }
            }
            if !line.is_empty() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    Ok(())
}

/// `switch [--json]`: ports (one per child NIC), their MACs and counters.
fn switch(m: &Manager, json: bool, out: &mut String) {
    let snap = m.switch.snapshot();
    if json {
        let _ = writeln!(out, "{}", snap.to_json());
        return;
    }
    let _ = writeln!(
        out,
        "{:<5}{:<18}{:<19}{:>9}{:>9}{:>9}",
        "PORT", "NAME", "MAC", "RX", "TX", "DROPPED"
    );
    for p in &snap.ports {
        let c = &p.counters;
        let mac = p.mac.map(|m| format!("{m}")).unwrap_or_default();
        let dropped = c.drop_queue_full + c.drop_spoofed_source + c.drop_invalid_source + c.drop_bad_size;
        let _ = writeln!(
            out,
            "{:<5}{:<18}{:<19}{:>9}{:>9}{:>9}",
            p.id.0, p.name, mac, c.rx_frames, c.tx_frames, dropped
        );
    }
    let _ = writeln!(out, "{} MAC addresses known", snap.mac_table.len());
}

/// The root's main-loop phases' TSC cycles since boot, as a JSON object.
fn phase_cycles_json() -> String {
    let mut s = String::new();
    let mut o = Object::new(&mut s);
    for (phase, name) in crate::accounting::PHASES {
        o = o.num(name, crate::accounting::cycles(phase));
    }
    o.end();
    s
}

/// The phases' shares of the root's time since boot: "children 62%, …".
fn phase_shares() -> String {
    use crate::accounting::{PHASES, cycles};
    let total: u64 = PHASES.iter().map(|&(p, _)| cycles(p)).sum::<u64>().max(1);
    let mut out = String::new();
    for (phase, name) in PHASES {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{name} {}%", cycles(phase) * 100 / total);
    }
    out
}
