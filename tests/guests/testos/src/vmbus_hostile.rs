//! Hostile VMBus clients: modes `vmbus-hostile-<case>` (see `run`).

use boot_proto::child::BootInfo;

/// Run hostile VMBus case `case`.
pub fn run(name: &str, case: &str, _info: &'static BootInfo) -> ! {
    crate::guest::say_line(format_args!("testos {name}: unknown hostile vmbus case '{case}'"));
    crate::guest::halt_forever()
}
