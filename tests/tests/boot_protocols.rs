//! QEMU tests for the 32-bit child boot protocols: the test OS booted through
//! PVH and through Multiboot v1 (`create --boot pvh|multiboot`) with a module
//! (`--initrd`) and a command line, reporting what it was given; and bad
//! images refused with the reason and nothing created.

use qemu_tests::Machine;
use serde_json::Value;
use std::sync::OnceLock;

/// First bytes of the module the children get (then a counting pattern).
const MODULE_HEAD: &[u8] = b"MODULE42";
const MODULE_LEN: usize = 5000;

/// An ELF32 i386 executable with one loadable segment at 1 MiB and no
/// entry any protocol can use (no PVH note, no Multiboot header).
fn plain_elf32() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    for h in [2u16, 3] {
        v.extend_from_slice(&h.to_le_bytes()); // e_type EXEC, e_machine 386
    }
    for w in [1u32, 0x10_0000, 52, 0, 0] {
        v.extend_from_slice(&w.to_le_bytes()); // version, entry, phoff, shoff, flags
    }
    for h in [52u16, 32, 1, 0, 0, 0] {
        v.extend_from_slice(&h.to_le_bytes());
    }
    for w in [1u32, 0x54, 0x10_0000, 0x10_0000, 4, 4, 5, 0x1000] {
        v.extend_from_slice(&w.to_le_bytes()); // PT_LOAD
    }
    v.extend_from_slice(&[0xF4, 0xEB, 0xFD, 0x90]); // hlt; jmp
    v
}

/// The default images with extra bundle entries: a module, one too big for
/// a small child, a truncated test OS and an ELF with no supported entry.
fn images() -> &'static xtask::Images {
    static IMAGES: OnceLock<xtask::Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let base = qemu_tests::images();
        let bytes = std::fs::read(&base.bundle).expect("read the boot bundle");
        let bundle = boot_proto::bundle::Bundle::parse(&bytes).expect("parse the boot bundle");
        let testos = bundle.find("testos").expect("testos in the bundle");
        let mut module = MODULE_HEAD.to_vec();
        module.extend((0..MODULE_LEN - MODULE_HEAD.len()).map(|i| i as u8));
        let big = vec![0x5A; 3 << 20];
        let truncated = testos[..4096].to_vec();
        let plain = plain_elf32();
        let mut entries: Vec<(&str, &[u8])> = bundle.entries().collect();
        entries.extend([
            ("bootmod", module.as_slice()),
            ("bigmod", big.as_slice()),
            ("truncated", truncated.as_slice()),
            ("plain32", plain.as_slice()),
        ]);
        let built = boot_proto::bundle::build(&entries).expect("build the bundle");
        // Beside the other built images (kept between runs, like them).
        let path = xtask::build_dir().join("boot-bundle-protocols-test.img");
        std::fs::write(&path, built).expect("write the bundle");
        xtask::Images {
            bundle: path,
            ..base.clone()
        }
    })
}

fn ids_and_names(list: &Value) -> Vec<(u64, String)> {
    let mut v: Vec<_> = list
        .as_array()
        .unwrap_or_else(|| panic!("list is not an array: {list}"))
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap_or(0),
                p["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Create a child and wait for its test OS to be ready; returns its console.
fn boot_child(m: &mut Machine, name: &str, memory_mib: u64, protocol: &str) -> String {
    let out = m.hvctl(&format!(
        "create {name} --memory {memory_mib}M --image testos --boot {protocol} --initrd bootmod \
         --cmdline \"name={name} mode=hello\" --start"
    ));
    let id: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| m.fail_with(&format!("create {name}: {out}")));
    m.wait_text(&format!("console {id}"), &format!("testos {name}: ready"))
}

fn expect_lines(m: &mut Machine, text: &str, lines: &[String]) {
    for l in lines {
        if !text.lines().any(|t| t.trim_end() == l) {
            m.fail_with(&format!("missing line '{l}' in:\n{text}"));
        }
    }
}

#[test]
fn test_os_boots_through_pvh_and_multiboot_and_bad_images_are_refused() {
    let mut m = Machine::boot_images(images(), "boot-protocols", "", None, 512);
    m.expect("management shell ready");

    // `images` names the protocols; the test OS keeps its native ABI by default.
    let v = m.hvctl_json("images --json");
    let entry = |name: &str| {
        v.as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {v}"))
    };
    let testos = entry("testos");
    assert_eq!(
        testos["boot"],
        serde_json::json!(["native", "pvh", "multiboot"]),
        "{testos}"
    );
    assert_eq!(testos["boot_auto"], "native", "{testos}");
    assert_eq!(entry("plain32")["boot_auto"], Value::Null);

    let head: String = format!(
        "[{}]",
        MODULE_HEAD
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let text = boot_child(&mut m, "pvhkid", 24, "pvh");
    let at = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("testos {name}: initrd {MODULE_LEN} bytes at ")))
            .and_then(|rest| rest.split(',').next())
            .map(str::to_string)
            .unwrap_or_default()
    };
    let pvh_at = at(&text, "pvhkid");
    expect_lines(
        &mut m,
        &text,
        &[
            "testos pvhkid: booted via pvh: memory 24 MiB, cmdline 'name=pvhkid mode=hello'".into(),
            format!("testos pvhkid: initrd {MODULE_LEN} bytes at {pvh_at}, first bytes {head}"),
            "testos pvhkid: booted on VP 0 of 1 (mode hello, 24 MiB)".into(),
            "testos pvhkid: hello from a child partition".into(),
        ],
    );

    let text = boot_child(&mut m, "mbkid", 20, "multiboot");
    let mb_at = at(&text, "mbkid");
    expect_lines(
        &mut m,
        &text,
        &[
            // QEMU's Multiboot loader passes "KERNEL ARGS" too.
            "testos mbkid: booted via multiboot: memory 20 MiB, cmdline 'testos name=mbkid mode=hello'"
                .into(),
            format!("testos mbkid: initrd {MODULE_LEN} bytes at {mb_at}, first bytes {head}"),
            "testos mbkid: booted on VP 0 of 1 (mode hello, 20 MiB)".into(),
        ],
    );
    assert!(
        mb_at.starts_with("0x") && u64::from_str_radix(&mb_at[2..], 16).is_ok_and(|a| a % 4096 == 0),
        "module page-aligned: {mb_at}"
    );

    // Refusals: the reason, and nothing created.
    let before = ids_and_names(&m.hvctl_json("list --json"));
    for (line, reason) in [
        ("create bad1 --memory 16M --image truncated", "truncated"),
        ("create bad2 --memory 16M --image plain32", "no entry we can boot"),
        (
            "create bad3 --memory 16M --image plain32 --boot pvh",
            "no PVH entry",
        ),
        (
            "create bad4 --memory 16M --image plain32 --boot multiboot",
            "no Multiboot header",
        ),
        (
            "create bad5 --memory 4M --image testos --boot multiboot --initrd bigmod --start",
            "module 'bigmod' (3145728 bytes) does not fit",
        ),
        (
            "create bad6 --memory 16M --image testos --boot pvh --vps 2",
            "1 VP",
        ),
    ] {
        let out = m.hvctl(line);
        if !out.starts_with("error: ") || !out.contains(reason) {
            m.fail_with(&format!(
                "'{line}': expected an error with '{reason}', got '{out}'"
            ));
        }
    }
    let after = ids_and_names(&m.hvctl_json("list --json"));
    assert_eq!(before, after, "a refused create created something");
}
