//! QEMU integration tests for child partitions (issue 3): the default boot
//! with two children, the management CLI (through `hvctl` on COM2 and the
//! interactive console on COM1), lifecycle transitions, churn, preemption.

use qemu_tests::{Machine, QEMU_EXIT_SUCCESS};
use serde_json::Value;

fn child<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// Root + two children boot; `list --json` through the real `hvctl` binary
/// shows both running with their memory and VP counts; each child's console
/// output arrives; `console N` on COM1 attaches and Ctrl-] detaches.
#[test]
fn root_and_two_children_boot_and_are_listed() {
    let mut m = Machine::boot("two-children", "", None);
    m.expect("management shell ready");
    // The hvctl binary itself, as a script would run it.
    let images = qemu_tests::images();
    let out = std::process::Command::new(&images.hvctl)
        .arg("--socket")
        .arg(m.mgmt_socket())
        .args(["list", "--json"])
        .output()
        .expect("run hvctl");
    assert!(
        out.status.success(),
        "hvctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("hvctl prints JSON");
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert_eq!(child(&list, "root")["id"], 1);
    for name in ["alpha", "beta"] {
        let c = child(&list, name);
        assert_eq!(c["state"], "running", "{c}");
        assert_eq!(c["memory"], 32 << 20, "{c}");
        assert_eq!(c["vps"], 1, "{c}");
    }
    // Each child's console output arrives (hvctl gets a snapshot).
    for (id, name) in [(2, "alpha"), (3, "beta")] {
        let text = m.wait_text(&format!("console {id}"), &format!("testos {name}: ready"));
        assert!(
            text.contains(&format!("testos {name}: hello from a child partition")),
            "{text}"
        );
        assert!(text.contains(&format!("testos {name}: ready")), "{text}");
    }
    // Interactive attach on COM1, then detach with Ctrl-].
    m.send_line("console 2");
    m.expect("testos alpha: ready");
    m.send_raw(&[0x1D]);
    m.expect("[detached]");
    m.expect("root> ");
    m.send_line("list");
    let table = m.expect("root> ");
    assert!(
        table.contains("alpha") && table.contains("running") && table.contains("32 MiB"),
        "{table}"
    );
    // info: exits by reason, memory map, VP registers.
    let info = m.hvctl_json("info 2 --json");
    assert_eq!(info["mapped_pages"], 8192, "{info}");
    assert!(info["exits"]["ioio"].as_u64().unwrap() > 0, "{info}");
    assert!(info["exits"]["hlt"].as_u64().unwrap() >= 1, "{info}");
    assert_eq!(info["vps"][0]["cs"], 8, "{info}");
    let root = m.hvctl_json("info 1 --json");
    assert_eq!(root["name"], "root", "{root}");
    assert!(root["exits"]["vmmcall"].as_u64().unwrap() > 0, "{root}");
    assert_eq!(root["stack_size"], 256 * 1024, "{root}");
    assert!(root["stack_used"].as_u64() > Some(0), "{root}");
    // Where the root's time went: every main-loop phase, children and
    // idle time among them after a child ran.
    let time = &root["time_cycles"];
    for phase in [
        "children", "channels", "network", "messages", "tick", "sessions", "idle",
    ] {
        assert!(time[phase].is_u64(), "{phase}: {root}");
    }
    assert!(time["children"].as_u64() > Some(0), "{root}");
    assert!(time["idle"].as_u64() > Some(0), "{root}");
    m.send_line("poweroff");
    assert_eq!(m.wait_exit(), QEMU_EXIT_SUCCESS);
}

/// pause/resume/stop/start/destroy, and refusals that say why and change nothing.
#[test]
fn lifecycle_transitions_and_refusals() {
    let mut m = Machine::boot("lifecycle", "", None);
    let state = |m: &mut Machine, id: u64| {
        let list = m.hvctl_json("list --json");
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["state"].as_str().unwrap().to_string())
    };
    m.wait_text("console 2", "testos alpha: ready");
    assert_eq!(m.hvctl("pause 2").trim(), "partition 2 (alpha) paused");
    assert_eq!(state(&mut m, 2).as_deref(), Some("paused"));
    assert_eq!(
        m.hvctl("pause 2").trim(),
        "error: cannot pause partition 2 (alpha): it is already paused"
    );
    assert_eq!(m.hvctl("resume 2").trim(), "partition 2 (alpha) resumed");
    assert_eq!(
        m.hvctl("resume 2").trim(),
        "error: cannot resume partition 2 (alpha): it is already running"
    );
    assert_eq!(
        m.hvctl("destroy 2").trim(),
        "error: cannot destroy partition 2 (alpha): it is running: 'stop' it first"
    );
    assert_eq!(m.hvctl("stop 2").trim(), "partition 2 (alpha) stopped");
    assert_eq!(
        m.hvctl("stop 2").trim(),
        "error: cannot stop partition 2 (alpha): it is not running"
    );
    assert_eq!(m.hvctl("start 2").trim(), "partition 2 (alpha) started");
    // A restarted child boots again from its image (its console keeps history).
    let start = std::time::Instant::now();
    let text = loop {
        let text = m.hvctl("console 2");
        if text.matches("testos alpha: ready").count() >= 2 || start.elapsed().as_secs() > 60 {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(text.matches("testos alpha: ready").count(), 2, "{text}");
    assert_eq!(
        m.hvctl("destroy 42").trim(),
        "error: no partition 42 (see 'list')"
    );
    assert!(m.hvctl("stop 1").starts_with("error: partition 1 is the root"));
    assert_eq!(
        m.hvctl("resume x").trim(),
        "error: 'x' is not a partition id (a number, see 'list')"
    );
    assert_eq!(
        m.hvctl("create alpha --memory 8M --image testos").trim(),
        "error: a partition named 'alpha' already exists"
    );
    assert!(
        m.hvctl("create g --memory 8M --image nosuch")
            .starts_with("error: no image 'nosuch'")
    );
    assert_eq!(
        state(&mut m, 3).as_deref(),
        Some("running"),
        "beta untouched by all of this"
    );
    assert_eq!(m.hvctl("stop 2").trim(), "partition 2 (alpha) stopped");
    assert_eq!(
        m.hvctl("destroy 2").trim(),
        "partition 2 (alpha) destroyed; its memory is back with the root"
    );
    assert_eq!(state(&mut m, 2), None);
    // create without --start, then start.
    assert_eq!(
        m.hvctl("create gamma --memory 16M --vps 2 --image testos").trim(),
        "partition 4 (gamma) created"
    );
    assert_eq!(state(&mut m, 4).as_deref(), Some("created"));
    assert_eq!(m.hvctl("start 4").trim(), "partition 4 (gamma) started");
    let text = m.wait_json("list --json", "gamma to run", |v| {
        v.as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "gamma" && p["vps"] == 2 && p["state"] == "running")
    });
    assert!(text.to_string().contains("gamma"));
}

/// Create and destroy a child 100 times: free memory (root frames, hv-core's
/// region, lent pages) returns to where it started.
#[test]
fn churn_returns_every_page() {
    let mut m = Machine::boot("churn", "", None);
    let before = m.hvctl_json("mem --json");
    for i in 0..100 {
        let out = m.hvctl(&format!("create churn{i} --memory 4M --image testos --start"));
        let id: u64 = out
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| m.fail_with(&format!("create {i}: {out}")));
        let stop = m.hvctl(&format!("stop {id}"));
        let gone = m.hvctl(&format!("destroy {id}"));
        if !stop.contains("stopped") || !gone.contains("destroyed") {
            m.fail_with(&format!("round {i}: {stop} / {gone}"));
        }
    }
    let after = m.hvctl_json("mem --json");
    for key in ["free", "lent_to_children", "hv_region_used", "hv_lent_pages"] {
        assert_eq!(before[key], after[key], "{key}: before {before} after {after}");
    }
    let status = m.hvctl_json("hv status --json");
    assert_eq!(status["partitions"], 2, "only alpha and beta remain: {status}");
}

/// A child that never exits on its own is preempted by the root's timer:
/// it makes progress, its peers keep running and the shell answers.
#[test]
fn spinning_child_is_preempted_and_the_root_stays_responsive() {
    let mut m = Machine::boot("spin", "", None);
    assert!(
        m.hvctl("create spinner --memory 8M --image testos --mode spin --start")
            .contains("started")
    );
    let ticks = |m: &mut Machine| {
        let text = m.hvctl("console 4");
        text.lines().filter(|l| l.contains("tick")).count()
    };
    let first = m.wait_json("info 4 --json", "the spinner to be preempted", |v| {
        v["exits"]["intr"].as_u64().unwrap_or(0) >= 3
    });
    let t1 = ticks(&mut m);
    let status = m.hvctl_json("hv status --json");
    assert_eq!(status["present"], true);
    m.wait_json("info 4 --json", "more preemptions", |v| {
        v["exits"]["intr"].as_u64().unwrap_or(0) > first["exits"]["intr"].as_u64().unwrap() + 3
    });
    let t2 = ticks(&mut m);
    assert!(t2 > t1, "the spinner made progress: {t1} -> {t2}");
    let list = m.hvctl_json("list --json");
    for name in ["alpha", "beta", "spinner"] {
        assert_eq!(child(&list, name)["state"], "running", "{list}");
    }
}

/// Two children keeping different patterns in their SSE registers across
/// preemptions never see each other's values (x87/SSE state is switched per VP).
#[test]
fn sse_state_is_private_to_each_child() {
    let mut m = Machine::boot("fpu", "", None);
    for name in ["fpu-a", "fpu-b"] {
        let out = m.hvctl(&format!(
            "create {name} --memory 8M --image testos --mode fpu --start"
        ));
        assert!(out.contains("started"), "{out}");
    }
    for id in [4, 5] {
        let text = m.wait_text(&format!("console {id}"), "fpu tick 5\n");
        assert!(!text.contains("CORRUPTED"), "{text}");
    }
    // Both are preempted by the root's timer in the middle of their loops
    // (polled, not asserted once: a tick is 10 ms and a loop a few).
    for id in [4, 5] {
        m.wait_json(&format!("info {id} --json"), "timer preemptions", |v| {
            v["exits"]["intr"].as_u64().unwrap_or(0) >= 2
        });
    }
    // Still intact after them.
    for id in [4, 5] {
        let text = m.hvctl(&format!("console {id}"));
        let last = text
            .lines()
            .filter_map(|l| l.split("fpu tick ").nth(1))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .max()
            .expect("ticks");
        let text = m.wait_text(&format!("console {id}"), &format!("fpu tick {}\n", last + 2));
        assert!(!text.contains("CORRUPTED"), "{text}");
    }
}

/// `images` lists what the boot bundle holds for `create --image`: the test
/// OS, with its size as built on the host and its format.
#[test]
fn images_lists_the_bundle() {
    let mut m = Machine::boot("images", "", None);
    let built = xtask::workspace_root()
        .join("target")
        .join(xtask::KERNEL_TARGET)
        .join("release")
        .join("testos");
    let size = std::fs::metadata(&built).expect("the built test OS").len();
    let v = m.hvctl_json("images --json");
    let testos = v
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "testos"))
        .unwrap_or_else(|| panic!("no testos in {v}"));
    assert_eq!(testos["size"], size, "{v}");
    assert_eq!(testos["format"], "elf64", "{v}");
    let text = m.hvctl("images");
    assert!(
        text.lines()
            .any(|l| l.starts_with("testos") && l.contains("elf64")),
        "{text}"
    );
    let bad = m.hvctl("images 4");
    assert!(bad.starts_with("error: "), "{bad}");
}
