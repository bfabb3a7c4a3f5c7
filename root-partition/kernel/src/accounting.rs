//! Where the root's CPU time goes: the main loop's phases, timed on the
//! TSC since boot (`info 1` shows them). A measurement for performance
//! work: which side of a child's I/O round trip the root spends on.

use core::sync::atomic::{AtomicU64, Ordering};

/// A phase of the root's main loop (`shell::run`).
#[derive(Clone, Copy, Debug)]
pub enum Phase {
    /// The console and management sessions (the CLI).
    Sessions = 0,
    /// SynIC messages and event flags from children.
    Messages,
    /// Device polls on children's channels (storvsp, netvsp, …).
    Channels,
    /// The switch, the uplink and the root's own IP stack.
    Network,
    /// Timed device work and scheduled requests.
    Tick,
    /// Dispatching children's VPs (their time and hv-core's included).
    Children,
    /// Halted, waiting for an interrupt.
    Idle,
}

/// Every phase, in display order, with its name.
pub const PHASES: [(Phase, &str); 7] = [
    (Phase::Children, "children"),
    (Phase::Channels, "channels"),
    (Phase::Network, "network"),
    (Phase::Messages, "messages"),
    (Phase::Tick, "tick"),
    (Phase::Sessions, "sessions"),
    (Phase::Idle, "idle"),
];

static CYCLES: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

/// Charge the TSC cycles since `since` to `phase`; the TSC now (the next
/// phase's start).
pub fn charge(phase: Phase, since: u64) -> u64 {
    let now = kernel_x86::arch::rdtsc();
    CYCLES[phase as usize].fetch_add(now.wrapping_sub(since), Ordering::Relaxed);
    now
}

/// Cycles charged to `phase` since boot.
pub fn cycles(phase: Phase) -> u64 {
    CYCLES[phase as usize].load(Ordering::Relaxed)
}
