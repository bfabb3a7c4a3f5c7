//! Hostile VMBus clients: a test OS child (the attacker, partition 4) floods
//! or abuses the root's VMBus server and echo device; the root must refuse
//! what is past its quotas, keep its console and its shell usable, and tear
//! the child's devices down on stop, crash and restart, while hv-core, the
//! root and the peer children keep running and the peer's memory is
//! unchanged. The attacks are the `vmbus-hostile-<case>` modes of the test
//! OS (`tests/guests/testos/src/vmbus_hostile.rs`).

use qemu_tests::Machine;
use serde_json::Value;
use std::time::{Duration, Instant};

/// What an attack left behind.
struct Attack {
    machine: Machine,
    /// The attacker's console up to and including its done line.
    console: String,
    /// The done line itself.
    done: String,
}

/// Boot, checksum the peer (alpha, idle after boot), create and start the
/// attacker (partition 4) in `mode`, run `during` (the test's part while
/// the attack runs), wait for the attacker's line that ends with `end`
/// (`console N` completes a partial last line with a newline, so only a
/// needle that ends its line proves the line is whole) and take the line
/// containing `done`, then check that everything else is intact: hv-core
/// present, alpha and beta running, alpha's memory unchanged, the root's
/// canary page unchanged.
fn attack(mode: &str, done: &str, end: &str, during: impl FnOnce(&mut Machine)) -> Attack {
    let mut m = Machine::boot(&format!("hostile-{mode}"), "", None);
    let peer_before = m.peer_checksum();
    m.start_attacker(mode);
    during(&mut m);
    let console = m.wait_text("console 4", end);
    let line = console
        .lines()
        .rfind(|l| l.contains(done))
        .expect("wait_text found it")
        .to_string();
    for bad in [
        "done with an error",
        "ESCAPED",
        "panic",
        "unknown hostile vmbus case",
    ] {
        assert!(
            !console.contains(bad),
            "{bad:?} in the attacker's console:\n{console}"
        );
    }

    m.assert_intact(&peer_before);
    Attack {
        machine: m,
        console,
        done: line,
    }
}

/// The number just before `label` in `line` ("... 1936 refused ...").
fn count_before(line: &str, label: &str) -> u64 {
    let at = line
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"));
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number before {label:?} in {line:?}"))
}

fn quota(info: &Value, name: &str) -> (u64, u64) {
    let q = &info["quotas"][name];
    match (q["used"].as_u64(), q["limit"].as_u64()) {
        (Some(used), Some(limit)) => (used, limit),
        _ => panic!("no quota {name} in {info}"),
    }
}

/// Channel `relid` in a `channels --json` answer.
fn channel(v: &Value, relid: u64) -> &Value {
    v["channels"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["relid"] == relid))
        .unwrap_or_else(|| panic!("no channel {relid} in {v}"))
}

/// The root's VMBus state for a child that has no channel open and holds
/// no GPADL: not connected (or just reconnected) with every device torn down.
fn assert_devices_torn_down(m: &mut Machine) {
    let v = m.hvctl_json("channels 4 --json");
    let ch = channel(&v, 1);
    assert_eq!(ch["state"], "offered", "{v}");
    assert!(ch.get("packets").is_none(), "the echo device is gone: {v}");
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(quota(&info, "gpadls").0, 0, "{info}");
    assert_eq!(quota(&info, "open_channels").0, 0, "{info}");
}

#[test]
fn a_gpadl_header_flood_is_refused_at_the_quota() {
    let a = attack(
        "vmbus-hostile-gpadl-flood",
        "gpadl-flood done",
        "-- end of gpadl-flood",
        |_| {},
    );
    let mut m = a.machine;
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["state"], "running", "a refusal, not a crash: {info}");
    let (used, limit) = quota(&info, "gpadls");
    assert!(used <= limit, "GPADLs held past the quota: {info}");
    assert_eq!(limit, 64, "{info}");
    // Every header past the quota got a GPADL_CREATED failure; the ones
    // the root holds (assemblies waiting for bodies) got no answer.
    let refused = count_before(&a.done, " refused (GPADL_CREATED failure)");
    let held = count_before(&a.done, " held without an answer");
    assert_eq!(held, used, "{}\n{info}", a.done);
    assert_eq!(refused, 2000 - limit, "{}", a.done);
    assert!(a.done.contains(" 0 created,"), "{}", a.done);
    assert!(!a.done.contains("marker status 0x0,"), "{}", a.done);
    // Each refusal was counted (the marker's too).
    let violations = info["vmbus_violations"].as_u64().unwrap();
    assert!(violations > refused, "{violations} violations: {info}");
    assert_eq!(info["replies_refused"], 0, "every answer was delivered: {info}");
    let (pages, page_limit) = quota(&info, "gpadl_pages");
    assert!(pages <= page_limit, "{info}");
    eprintln!("gpadl-flood: {}", a.done);
}

#[test]
fn connect_churn_does_not_flood_the_root_console() {
    let a = attack(
        "vmbus-hostile-connect-churn",
        "connect-churn done",
        "-- end of connect-churn",
        |_| {},
    );
    let mut m = a.machine;
    assert!(
        a.done
            .contains("300 of 300 connect/unload cycles (300 at version 5.3)"),
        "{}",
        a.done
    );
    // The root's own console is the observable here: have its shell print
    // something after the churn so everything before it has been read.
    m.send_line("info 4");
    m.expect("quotas:");
    let root = m.console().to_string();
    let lines = root.lines().filter(|l| l.contains("partition 4 vmbus")).count();
    eprintln!("connect-churn: {lines} root console lines mention partition 4's vmbus");
    assert!(lines <= 65, "{lines} lines for 600 connects and unloads:\n{root}");
    assert_eq!(
        root.matches("root: partition 4: further messages are counted, not logged")
            .count(),
        1,
        "{root}"
    );
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["state"], "running", "{info}");
    let (used, limit) = quota(&info, "console_lines");
    eprintln!("connect-churn: console_lines quota {used}/{limit}");
    assert_eq!(limit, 64, "{info}");
    assert_eq!(used, limit, "{info}");
    // Everything past the budget is counted: 600 connect/unload lines.
    let suppressed = info["console_lines_suppressed"].as_u64().unwrap();
    assert_eq!(suppressed + limit - 1, 600, "{info}");
}

#[test]
fn initiate_contact_without_unload_reconnects() {
    let a = attack(
        "vmbus-hostile-reconnect",
        "reconnect done",
        "-- end of reconnect",
        |m| {
            m.wait_text(
                "console 4",
                "reconnect: second INITIATE_CONTACT accepted at version 5.3, relid 1 offered again: true; \
             waiting for an offer",
            );
            // The reconnect closed the channel and dropped its GPADL.
            let v = m.hvctl_json("channels 4 --json");
            assert_eq!(v["version"], "5.3", "{v}");
            assert_devices_torn_down(m);
            let out = m.hvctl("offer 4");
            assert!(
                // Relid 1 is the echo device, 2-5 the integration services.
                out.contains("partition 4: echo device offered on relid 6"),
                "{out}"
            );
        },
    );
    let mut m = a.machine;
    assert!(
        a.done.contains(
            "first at version 5.3, 5 of 5 echoes; reconnected at version 5.3 without UNLOAD; \
             new offer on relid 6; relid 1 reopened on gpadl 0xe1e10 (reused), 10 of 10 echoes"
        ),
        "{}",
        a.done
    );
    let v = m.hvctl_json("channels 4 --json");
    let ch = channel(&v, 1);
    assert_eq!(ch["state"], "open", "{v}");
    assert_eq!(ch["ring_gpadl"], 0xe1e10, "{v}");
    // A fresh device: the 5 echoes before the reconnect are not counted.
    assert_eq!(ch["packets"], 10, "{v}");
    assert_eq!(channel(&v, 2)["state"], "offered", "{v}");
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["vmbus_violations"], 0, "a reconnect is no violation: {info}");
}

/// `list --json` round trips over the management channel, timed.
fn list_latencies(m: &mut Machine, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let out = m.hvctl("list --json");
            let took = t.elapsed();
            assert!(out.contains("\"alpha\""), "{out}");
            took
        })
        .collect()
}

/// (worst, median) in milliseconds.
fn worst_and_median(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() - 1]), ms(v[v.len() / 2]))
}

#[test]
fn a_flooded_ring_costs_the_root_a_bounded_poll() {
    let mut seen = None;
    let a = attack(
        "vmbus-hostile-ring-flood",
        "ring-flood done",
        "-- end of ring-flood",
        |m| {
            m.wait_text(
                "console 4",
                "ring-flood: 53248 byte guest-to-host ring (14+2 pages); flooding relid 1",
            );
            let before = m.hvctl_json("channels 4 --json");
            let flooded = list_latencies(m, 20);
            let after = m.hvctl_json("channels 4 --json");
            let info = m.hvctl_json("info 4 --json");
            let out = m.hvctl("rescind 4 1");
            assert!(out.contains("partition 4: channel 1 rescinded"), "{out}");
            seen = Some((before, flooded, after, info));
        },
    );
    let mut m = a.machine;
    let (before, flooded, after, info) = seen.expect("the flood ran");
    assert!(a.done.contains("stopped by the rescind"), "{}", a.done);
    // While flooded, the root kept serving the channel (or stopped it as
    // broken), and the attacker kept running.
    assert_eq!(info["state"], "running", "{info}");
    let (c0, c1) = (channel(&before, 1), channel(&after, 1));
    assert_eq!(c0["state"], "open", "{before}");
    assert_eq!(c0["guest_to_host"]["data_size"], 13 * 4096, "{before}");
    let broken = c1["broken"].as_str().unwrap_or("");
    let grew = |k: &str| c1[k].as_u64().unwrap() > c0[k].as_u64().unwrap();
    assert!(
        !broken.is_empty() || (grew("packets") && grew("signals_received")),
        "the root stopped serving a flooded channel:\nbefore {before}\nafter {after}"
    );
    // The ring never ran dry, so polls kept ending on the 64-packet budget.
    let budget = |c: &Value| {
        c["budget_exhausted"]
            .as_u64()
            .unwrap_or_else(|| panic!("no budget_exhausted in {c}"))
    };
    assert!(
        !broken.is_empty() || budget(c1) > budget(c0),
        "the poll budget never ran out under a flood:\nbefore {before}\nafter {after}"
    );
    // After the rescind: the attacker closed and released the relid.
    m.wait_json("channels 4 --json", "the attacker to release relid 1", |v| {
        v["channels"]
            .as_array()
            .is_some_and(|a| a.iter().all(|c| c["relid"] != 1))
    });
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(quota(&info, "open_channels").0, 0, "{info}");
    // Baselines, measured the same way: with the attacker gone and every
    // child halted (the root idles until its next 10 ms tick and notices the
    // command late), and with a well-behaved busy child (`spin`) instead of
    // the attacker (the root's loop goes round as often as under the flood).
    let out = m.hvctl("stop 4");
    assert!(out.contains("partition 4 (attacker) stopped"), "{out}");
    let out = m.hvctl("destroy 4");
    assert!(out.contains("partition 4 (attacker) destroyed"), "{out}");
    let idle = list_latencies(&mut m, 20);
    let out = m.hvctl("create spinner --memory 8M --image testos --mode spin --start");
    let id: u64 = out
        .strip_prefix("partition ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(out.contains("(spinner) created and started"), "{out}");
    m.wait_text(&format!("console {id}"), "testos spinner: ready");
    let busy = list_latencies(&mut m, 20);
    let (fw, fm) = worst_and_median(flooded);
    let (iw, im) = worst_and_median(idle);
    let (bw, bm) = worst_and_median(busy);
    // A measurement to report, not an assertion (timing varies).
    eprintln!(
        "ring-flood: `list --json` under the flood: worst {fw:.1} ms, median {fm:.1} ms; \
         baseline with a busy well-behaved child: worst {bw:.1} ms, median {bm:.1} ms \
         (flood/busy: worst {:.2}x, median {:.2}x); \
         baseline with every child halted: worst {iw:.1} ms, median {im:.1} ms \
         (flood/idle: worst {:.2}x, median {:.2}x)",
        fw / bw,
        fm / bm,
        fw / iw,
        fm / im
    );
    eprintln!("ring-flood: {}", a.done);
    eprintln!(
        "ring-flood: channel 1 before {c0}\nafter {c1}",
        c0 = channel(&before, 1),
        c1 = channel(&after, 1)
    );
}

#[test]
fn a_stopped_and_restarted_child_reconnects() {
    let a = attack(
        "vmbus-hold",
        "vmbus holding channel 1 open",
        "vmbus holding channel 1 open",
        |m| {
            m.wait_text("console 4", "vmbus holding channel 1 open");
            let v = m.hvctl_json("channels 4 --json");
            assert_eq!(v["version"], "5.3", "{v}");
            assert_eq!(channel(&v, 1)["state"], "open", "{v}");
            let out = m.hvctl("stop 4");
            assert!(out.contains("partition 4 (attacker) stopped"), "{out}");
            let v = m.hvctl_json("channels 4 --json");
            assert_eq!(v["version"], "", "stopped means disconnected: {v}");
            assert_devices_torn_down(m);
            let out = m.hvctl("start 4");
            assert!(out.contains("partition 4 (attacker) started"), "{out}");
            // The device was torn down at the stop: `open` with 200 packets is
            // the second boot's channel.
            m.wait_json(
                "channels 4 --json",
                "the restarted child to hold its channel",
                |v| {
                    v["version"] == "5.3"
                        && v["channels"][0]["state"] == "open"
                        && v["channels"][0]["packets"] == 200
                },
            );
        },
    );
    let console = a.console;
    let mut m = a.machine;
    assert!(!console.contains("no version accepted"), "{console}");
    assert_eq!(
        console.matches("vmbus connected at version 5.3").count(),
        2,
        "two boots, each connected:\n{console}"
    );
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["state"], "running", "{info}");
    assert!(
        info["vmbus_resets"].as_u64().unwrap() >= 2,
        "stop and start: {info}"
    );
    assert_eq!(info["vmbus_violations"], 0, "{info}");
}

#[test]
fn a_crashed_child_restarts_and_reconnects() {
    let a = attack("vmbus-hostile-crash", "crash done", "-- end of crash", |m| {
        let info = m.wait_json("info 4 --json", "the attacker to crash", |v| {
            v["state"] == "crashed"
        });
        assert!(
            info["crash"].as_str().unwrap_or("").starts_with("triple fault"),
            "{info}"
        );
        // The crash tore the channel down and disconnected the bus.
        let v = m.hvctl_json("channels 4 --json");
        assert_eq!(v["version"], "", "{v}");
        assert_devices_torn_down(m);
        let out = m.hvctl("start 4");
        assert!(out.contains("partition 4 (attacker) started"), "{out}");
        // `start` made it running; crashed again means the second boot ran.
        m.wait_json("info 4 --json", "the restarted attacker to crash again", |v| {
            v["state"] == "crashed"
        });
    });
    let console = a.console;
    let mut m = a.machine;
    assert!(!console.contains("no version accepted"), "{console}");
    assert_eq!(
        console
            .matches("crash done: connected at version 5.3, 20 of 20 echoes")
            .count(),
        2,
        "both boots connected, opened and echoed:\n{console}"
    );
    let info = m.hvctl_json("info 4 --json");
    assert!(
        info["vmbus_resets"].as_u64().unwrap() >= 3,
        "crash, start, crash: {info}"
    );
    assert_eq!(info["vmbus_violations"], 0, "{info}");
    let v = m.hvctl_json("channels 4 --json");
    assert_eq!(v["version"], "", "{v}");
    assert_devices_torn_down(&mut m);
}

/// Edge inputs around an open channel: a signal flag past its port's count
/// and reserved bits in the signal input get INVALID_PARAMETER, an oversized
/// post is refused, RELID_RELEASED without a rescind and a 1000-message
/// MODIFYCHANNEL flood (answers unread) are refused or bounded, and the
/// channel still echoes afterwards.
#[test]
fn edge_inputs_are_refused_and_the_channel_survives() {
    let a = attack("vmbus-hostile-edges", "edges done", "-- end of edges", |_| {});
    eprintln!("{}", a.done);
    let mut m = a.machine;
    for part in [
        "signal flag 1 of 1: INVALID_PARAMETER",
        "signal reserved bits: INVALID_PARAMETER",
        "signal flag 0: SUCCESS",
        "post of 241 bytes: INVALID_PARAMETER",
        "after all of it 10 of 10 echoes",
    ] {
        assert!(a.done.contains(part), "missing {part:?} in {}", a.done);
    }
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["state"], "running", "{info}");
    // RELID_RELEASED without a rescind, and the MODIFYCHANNELs the outbox
    // had no room to answer, are counted as violations.
    assert!(info["vmbus_violations"].as_u64().unwrap() >= 1, "{info}");
    let q = &info["quotas"]["vmbus_outbox"];
    assert!(
        q["used"].as_u64().unwrap() <= q["limit"].as_u64().unwrap(),
        "{info}"
    );
    // Every MODIFYCHANNEL hv-core delivered was answered or refused, never
    // queued without bound: answers read + refusals cover the posts.
    let posted = count_before(&a.done, "posted");
    let answers = count_before(&a.done, "answers read");
    assert!(posted >= 1, "{}", a.done);
    assert!(answers <= posted, "{}", a.done);
    // What was neither answered nor still queued (worker outbox 64, server
    // outbox 128) was dropped and counted, never held.
    let dropped = info["replies_refused"].as_u64().unwrap() + info["vmbus_violations"].as_u64().unwrap();
    assert!(dropped + answers + 64 + 128 >= posted, "{} / {info}", a.done);
}

/// Two channels whose ring GPADLs name the same pages (aliased rings): two
/// echo devices in the root then share one set of rings. Only the child's
/// own memory is at stake; the root keeps serving (checked by `attack`) and
/// reports what it found.
#[test]
fn aliased_rings_hurt_only_their_owner() {
    let a = attack("vmbus-hostile-alias", "alias done", "-- end of alias", |m| {
        m.wait_text("console 4", "alias: relid 1 open; waiting for a second offer");
        let out = m.hvctl("offer 4");
        // Relid 1 is the echo device, 2-5 the integration services.
        assert!(out.contains("offered on relid 6"), "{out}");
    });
    eprintln!("{}", a.done);
    let mut m = a.machine;
    assert!(
        a.done.contains("second gpadl over the same pages: status 0x0"),
        "{}",
        a.done
    );
    assert!(a.done.contains("relid 6 open status 0x0"), "{}", a.done);
    let info = m.hvctl_json("info 4 --json");
    assert_eq!(info["state"], "running", "{info}");
    let channels = m.hvctl_json("channels 4 --json");
    let open = channels["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .filter(|c| c["state"] == "open")
        .count();
    assert_eq!(open, 2, "{channels}");
    eprintln!("aliased rings: rings_broken {}", info["rings_broken"]);
}
