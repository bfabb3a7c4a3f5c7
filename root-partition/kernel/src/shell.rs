//! The root's management shell on COM1. For now it knows the hypervisor's
//! status, the passthrough disk and memory; partition commands arrive with
//! child partitions. Every listing has a `--json` form.

use crate::start::BootReport;
use crate::{disk, hv, memory, qemu};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hv1_abi::private::{CoreStats, EXIT_REASONS};

const PROMPT: &str = "root> ";
const HISTORY: usize = 32;

/// Read-eval-print forever.
pub fn run(boot: &BootReport) -> ! {
    println!("root: management shell ready; type 'help'");
    let mut history: Vec<String> = Vec::new();
    loop {
        print!("{PROMPT}");
        let line = read_line(&history);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if history.last().map(String::as_str) != Some(line) {
            if history.len() == HISTORY {
                history.remove(0);
            }
            history.push(line.into());
        }
        execute(line, boot);
    }
}

fn read_byte() -> u8 {
    loop {
        if let Some(b) = crate::serial::CONSOLE.lock().try_read_byte() {
            return b;
        }
        core::hint::spin_loop();
    }
}

/// Line editing: backspace, Ctrl-U (kill line), Ctrl-C (cancel), up/down for history.
fn read_line(history: &[String]) -> String {
    let mut line = String::new();
    let mut back = 0usize; // how far up the history we are
    let replace = |line: &mut String, new: &str| {
        for _ in 0..line.len() {
            print!("\x08 \x08");
        }
        line.clear();
        line.push_str(new);
        print!("{line}");
    };
    loop {
        match read_byte() {
            b'\r' | b'\n' => {
                println!();
                return line;
            }
            0x08 | 0x7F if line.pop().is_some() => print!("\x08 \x08"),
            0x15 => replace(&mut line, ""),
            0x03 => {
                println!("^C");
                return String::new();
            }
            0x1B => {
                // ESC [ A / ESC [ B
                if read_byte() != b'[' {
                    continue;
                }
                match read_byte() {
                    b'A' if back < history.len() => {
                        back += 1;
                        replace(&mut line, &history[history.len() - back]);
                    }
                    b'B' if back > 0 => {
                        back -= 1;
                        let new = if back == 0 {
                            ""
                        } else {
                            &history[history.len() - back]
                        };
                        replace(&mut line, new);
                    }
                    _ => {}
                }
            }
            b if (0x20..0x7F).contains(&b) && line.len() < 256 => {
                line.push(b as char);
                print!("{}", b as char);
            }
            _ => {}
        }
    }
}

fn execute(line: &str, boot: &BootReport) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let json = words.contains(&"--json");
    let args: Vec<&str> = words.iter().copied().filter(|w| *w != "--json").collect();
    match args.as_slice() {
        ["help"] | ["?"] => help(),
        ["hv", "status"] => hv_status(boot, json),
        ["hv", "disk"] => hv_disk(json),
        ["mem"] => mem(boot, json),
        ["poweroff"] | ["shutdown"] => {
            println!("root: powering off");
            qemu::exit(qemu::EXIT_SUCCESS)
        }
        ["hv"] => println!("error: 'hv' needs a subcommand: status, disk"),
        ["hv", other, ..] => println!("error: unknown hv subcommand '{other}' (try: status, disk)"),
        [cmd, ..] => println!("error: unknown command '{cmd}'; type 'help'"),
        [] => {}
    }
}

fn help() {
    println!("commands (add --json for machine-readable output):");
    println!("  hv status    hypervisor presence, interface, privileges, hv-core region, exits by reason");
    println!("  hv disk      read sector 0 of the passthrough virtio-blk disk");
    println!("  mem          root memory: free frames and heap");
    println!("  poweroff     stop the machine");
    println!("  help         this list");
    println!("keys: backspace, Ctrl-U clear line, Ctrl-C cancel, up/down history");
}

fn privilege_names(p: hv1_abi::cpuid::PartitionPrivileges) -> String {
    let names: Vec<&str> = p.iter_names().map(|(n, _)| n).collect();
    names.join(" ")
}

fn hv_status(boot: &BootReport, json: bool) {
    let d = hv::Discovery::read();
    let stats: Result<CoreStats, _> = hv::core_stats();
    if json {
        let mut out = format!(
            "{{\"present\":{},\"vendor\":\"{}\",\"max_leaf\":{},\"interface\":\"{}\",\"version\":\"{}.{}\",\"privileges\":{},\"cpu_management\":{},\"partition_id\":{}",
            d.is_hv1(),
            d.vendor.escape_ascii(),
            d.max_leaf,
            d.interface.to_le_bytes().escape_ascii(),
            d.version.0,
            d.version.1,
            d.privileges.bits(),
            d.privileges
                .contains(hv1_abi::cpuid::PartitionPrivileges::CPU_MANAGEMENT),
            boot.partition_id
                .map_or_else(|_| "null".into(), |id| format!("{id}")),
        );
        match stats {
            Ok(s) => {
                out.push_str(&format!(
                    ",\"region\":{{\"base\":{},\"size\":{},\"used\":{}}},\"exits\":{{\"total\":{}",
                    s.region_base, s.region_size, s.region_used, s.total_exits
                ));
                for (name, count) in EXIT_REASONS.iter().zip(s.exits) {
                    out.push_str(&format!(",\"{name}\":{count}"));
                }
                out.push_str(&format!("}},\"injected_exceptions\":{}}}", s.injected_exceptions));
            }
            Err(e) => out.push_str(&format!(",\"error\":\"{e:?}\"}}")),
        }
        println!("{out}");
        return;
    }
    println!("hypervisor:    {}", if d.is_hv1() { "present" } else { "absent" });
    println!(
        "vendor:        {} (max leaf {:#x})",
        d.vendor.escape_ascii(),
        d.max_leaf
    );
    println!(
        "interface:     {} ({:#010x})",
        d.interface.to_le_bytes().escape_ascii(),
        d.interface
    );
    println!("version:       {}.{}", d.version.0, d.version.1);
    println!(
        "privileges:    {:#018x} {}",
        d.privileges.bits(),
        privilege_names(d.privileges)
    );
    println!(
        "partition:     {} (root{})",
        boot.partition_id
            .map_or_else(|s| format!("{s:?}"), |id| format!("{id}")),
        if d.privileges
            .contains(hv1_abi::cpuid::PartitionPrivileges::CPU_MANAGEMENT)
        {
            ", CpuManagement"
        } else {
            ""
        }
    );
    match stats {
        Ok(s) => {
            println!(
                "hv-core:       region {:#x}..{:#x} ({} MiB, {} KiB used), hidden from the root",
                s.region_base,
                s.region_base + s.region_size,
                s.region_size >> 20,
                s.region_used >> 10
            );
            println!("exits:         {} total", s.total_exits);
            for (name, count) in EXIT_REASONS.iter().zip(s.exits) {
                println!("  {name:<12} {count}");
            }
            println!("injected:      {} exceptions", s.injected_exceptions);
        }
        Err(e) => println!("hv-core:       statistics unavailable: {e:?}"),
    }
}

fn hv_disk(json: bool) {
    match disk::Disk::open().and_then(|mut d| d.read_sector(0).map(|s| (d, s))) {
        Ok((d, sector)) if json => println!(
            "{{\"location\":\"{}\",\"sectors\":{},\"sector0_fnv1a\":{}}}",
            d.location,
            d.capacity,
            disk::fnv1a(&sector)
        ),
        Ok((d, sector)) => {
            println!(
                "disk {}: {} sectors ({} KiB)",
                d.location,
                d.capacity,
                d.capacity / 2
            );
            println!(
                "sector 0: fnv1a {:#018x}, first bytes {:02x?}",
                disk::fnv1a(&sector),
                &sector[..16]
            );
        }
        Err(e) if json => println!("{{\"error\":\"{e}\"}}"),
        Err(e) => println!("error: disk: {e}"),
    }
}

fn mem(boot: &BootReport, json: bool) {
    let free = memory::free_bytes();
    let (used, size) = memory::heap_usage();
    if json {
        println!(
            "{{\"free\":{free},\"free_after_boot\":{},\"heap_used\":{used},\"heap_size\":{size}}}",
            boot.free_after_boot
        );
    } else {
        println!(
            "free frames:   {} KiB (after boot: {} KiB)",
            free >> 10,
            boot.free_after_boot >> 10
        );
        println!("heap:          {} KiB used of {} KiB", used >> 10, size >> 10);
    }
}
