//! Hostile CPU probes: mode `cpu-hostile`.

use boot_proto::child::BootInfo;

/// Run every probe.
pub fn run(name: &str, _info: &'static BootInfo) -> ! {
    crate::guest::say_line(format_args!("testos {name}: cpu-hostile not written yet"));
    crate::guest::halt_forever()
}
