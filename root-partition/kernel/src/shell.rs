//! The root's management sessions and its main loop.
//!
//! Two sessions share one command language: the interactive console on COM1
//! (echo, line editing, history, `console N` attaches to a child) and the
//! management channel on COM2 for host tools like `hvctl` (no echo; each
//! response ends with an EOT line). The loop alternates: the root's own work
//! (sessions), then one timer tick for the children, whose VPs are
//! dispatched round-robin within it.

use crate::accounting::{Phase, charge};
use crate::commands::{self, Effect};
use crate::manager::Manager;
use crate::serial::{CONSOLE, MGMT, Uart};
use crate::start::BootReport;
use crate::{qemu, timer};
use alloc::string::String;
use alloc::vec::Vec;
use spin::Mutex;

const PROMPT: &str = "root> ";
const HISTORY: usize = 32;
/// Ends every response on the management channel.
pub const END_OF_RESPONSE: &str = "\x04\n";
/// Detaches an attached console (Ctrl-]).
const DETACH: u8 = 0x1D;

/// One command session on a UART.
struct Session {
    uart: &'static Mutex<Uart>,
    interactive: bool,
    line: String,
    history: Vec<String>,
    back: usize,
    escape: u8,
    /// Attached to a child's console: (partition, output bytes already shown).
    attached: Option<(u64, u64)>,
    /// A `net ping` runs: (JSON result, tick by which it must be over).
    ping: Option<(bool, u64)>,
}

impl Session {
    fn new(uart: &'static Mutex<Uart>, interactive: bool) -> Self {
        Self {
            uart,
            interactive,
            line: String::new(),
            history: Vec::new(),
            back: 0,
            escape: 0,
            attached: None,
            ping: None,
        }
    }

    fn write(&self, s: &str) {
        use core::fmt::Write;
        let _ = self.uart.lock().write_str(s);
    }

    fn replace_line(&mut self, new: &str) {
        let mut erase = String::new();
        for _ in 0..self.line.len() {
            erase.push_str("\x08 \x08");
        }
        self.write(&erase);
        self.line.clear();
        self.line.push_str(new);
        self.write(new);
    }

    /// Handle waiting input; false if the machine should stop.
    fn poll(&mut self, m: &mut Manager, boot: &BootReport) {
        if let Some((json, deadline)) = self.ping {
            self.await_ping(m, json, deadline);
            return;
        }
        for _ in 0..64 {
            let Some(b) = self.uart.lock().try_read_byte() else {
                break;
            };
            if let Some((id, _)) = self.attached {
                if b == DETACH {
                    self.attached = None;
                    self.write("\n[detached]\n");
                    self.write(PROMPT);
                } else if let Some(w) = m.workers.iter_mut().find(|w| w.id == id) {
                    w.console_input(b);
                }
                continue;
            }
            self.key(b, m, boot);
        }
        self.forward_console(m);
    }

    fn key(&mut self, b: u8, m: &mut Manager, boot: &BootReport) {
        if self.escape == 1 {
            self.escape = if b == b'[' { 2 } else { 0 };
            return;
        }
        if self.escape == 2 {
            self.escape = 0;
            match b {
                b'A' if self.back < self.history.len() => {
                    self.back += 1;
                    let h = self.history[self.history.len() - self.back].clone();
                    self.replace_line(&h);
                }
                b'B' if self.back > 0 => {
                    self.back -= 1;
                    let h = if self.back == 0 {
                        String::new()
                    } else {
                        self.history[self.history.len() - self.back].clone()
                    };
                    self.replace_line(&h);
                }
                _ => {}
            }
            return;
        }
        match b {
            b'\r' | b'\n' => {
                if self.interactive {
                    self.write("\n");
                }
                let line = core::mem::take(&mut self.line);
                self.back = 0;
                self.run(line.trim(), m, boot);
            }
            0x08 | 0x7F if self.interactive && self.line.pop().is_some() => {
                self.write("\x08 \x08");
            }
            0x15 if self.interactive => self.replace_line(""),
            0x03 if self.interactive => {
                self.line.clear();
                self.write("^C\n");
                self.write(PROMPT);
            }
            0x1B if self.interactive => self.escape = 1,
            b if (0x20..0x7F).contains(&b) && self.line.len() < 256 => {
                self.line.push(b as char);
                if self.interactive {
                    let mut c = [0u8; 4];
                    self.write((b as char).encode_utf8(&mut c));
                }
            }
            _ => {}
        }
    }

    fn run(&mut self, line: &str, m: &mut Manager, boot: &BootReport) {
        if self.interactive && !line.is_empty() && self.history.last().map(String::as_str) != Some(line) {
            if self.history.len() == HISTORY {
                self.history.remove(0);
            }
            self.history.push(line.into());
        }
        let mut out = String::new();
        let effect = match mgmt::cli::parse(line) {
            Ok(Some(cmd)) => commands::execute(cmd, m, boot, &mut out),
            Ok(None) => Effect::Done,
            Err(e) => {
                out.push_str(&alloc::format!("error: {e}\n"));
                Effect::Done
            }
        };
        match effect {
            Effect::Done => {}
            Effect::AwaitPing { json } => {
                self.write(&out);
                let count = m.ping_report().map_or(1, |r| u64::from(r.count));
                let budget_ms =
                    count * crate::manager::PING_INTERVAL_MS + crate::manager::PING_TIMEOUT_MS + 1000;
                self.ping = Some((json, timer::ticks() + budget_ms * timer::HZ / 1000));
                return;
            }
            Effect::Poweroff => {
                self.write("root: powering off\n");
                if !self.interactive {
                    self.write(END_OF_RESPONSE);
                }
                qemu::exit(qemu::EXIT_SUCCESS)
            }
            Effect::Attach(id) if self.interactive => {
                self.write(&alloc::format!(
                    "[attached to partition {id}'s console; Ctrl-] detaches]\n"
                ));
                self.attached = Some((id, 0));
                self.forward_console(m);
                return;
            }
            Effect::Attach(id) => {
                // Host tools get a snapshot of the complete lines the console
                // holds: a line the child is still printing is left for the
                // next snapshot, so a script never matches half a line.
                if let Some(w) = m.workers.iter().find(|w| w.id == id) {
                    let start = out.len();
                    let (parts, _) = w.uart.output_since(0);
                    for part in parts {
                        out.extend(part.iter().filter_map(|&c| printable(c)));
                    }
                    let complete = out[start..].rfind('\n').map_or(start, |at| start + at + 1);
                    out.truncate(complete);
                }
            }
        }
        self.write(&out);
        self.end_response();
    }

    /// A `net ping` runs: print the result when it ends or its deadline
    /// passes. On the console, Ctrl-C ends it now (other keys typed
    /// meanwhile are dropped); the management channel sends nothing until
    /// it has its answer, so its input is left alone.
    fn await_ping(&mut self, m: &mut Manager, json: bool, deadline: u64) {
        let cancelled = self.interactive && self.uart.lock().try_read_byte() == Some(0x03);
        if cancelled {
            m.cancel_ping();
        }
        let report = m.ping_report();
        let over = report.is_none_or(|r| r.done) || timer::ticks() > deadline;
        if !(over || cancelled) {
            return;
        }
        self.ping = None;
        let mut out = String::new();
        if cancelled {
            out.push_str("^C\n");
        }
        commands::ping_result(report, json, &mut out);
        self.write(&out);
        self.end_response();
    }

    fn end_response(&self) {
        if self.interactive {
            self.write(PROMPT);
        } else {
            self.write(END_OF_RESPONSE);
        }
    }

    /// Copy new output of the attached child to this session.
    fn forward_console(&mut self, m: &Manager) {
        let Some((id, shown)) = self.attached else { return };
        let Some(w) = m.workers.iter().find(|w| w.id == id) else {
            self.attached = None;
            self.write("\n[partition is gone; detached]\n");
            self.write(PROMPT);
            return;
        };
        let (parts, end) = w.uart.output_since(shown);
        if end == shown {
            return;
        }
        let mut text = String::new();
        for part in parts {
            text.extend(part.iter().filter_map(|&c| printable(c)));
        }
        self.write(&text);
        self.attached = Some((id, end));
    }
}

/// Keep child output from driving the terminal or the EOT framing.
/// A child's console byte as the operator sees it: carriage returns
/// dropped (a guest's CR LF is one line break here), other control bytes
/// and non-ASCII shown as '?', so a child cannot drive the root's terminal.
fn printable(c: u8) -> Option<char> {
    match c {
        b'\r' => None,
        b'\n' | b'\t' => Some(c as char),
        0x20..=0x7E => Some(c as char),
        _ => Some('?'),
    }
}

/// The root's main loop: sessions, then one dispatch, forever (each
/// phase's time charged to `accounting`).
pub fn run(boot: &BootReport, manager: &mut Manager) -> ! {
    let mut sessions = Vec::new();
    sessions.push(Session::new(&CONSOLE, true));
    let mgmt_present = {
        let mut u = MGMT.lock();
        let present = u.present();
        if present {
            u.init();
        }
        present
    };
    if mgmt_present {
        sessions.push(Session::new(&MGMT, false));
        crate::println!("root: management channel on COM2 (for hvctl)");
    }
    crate::println!("root: management shell ready; type 'help'");
    crate::print!("{PROMPT}");
    let mut synic_seen = 0;
    let mut t = kernel_x86::arch::rdtsc();
    loop {
        for s in sessions.iter_mut() {
            s.poll(manager, boot);
        }
        t = charge(Phase::Sessions, t);
        // Messages are read when the SynIC interrupt says they arrived.
        let interrupts = crate::synic::interrupts();
        if interrupts != synic_seen {
            synic_seen = interrupts;
            crate::synic::drain(|m| manager.on_message(m));
            manager.route_events(&crate::synic::take_events());
        }
        t = charge(Phase::Messages, t);
        // Channels with work (signalled, or left over from a budgeted poll)
        // get one budgeted turn each per round. A device completion after
        // this look ends the children's turn and the root's sleep (below).
        let seen = crate::manager::Wakeups {
            synic: synic_seen,
            completions: crate::disk::completion_interrupts(),
        };
        manager.poll_channels();
        t = charge(Phase::Channels, t);
        manager.pump_network();
        t = charge(Phase::Network, t);
        manager.tick();
        t = charge(Phase::Tick, t);
        let ran = manager.run_children_for_a_tick(seen);
        t = charge(Phase::Children, t);
        if !ran && !manager.channels_want_poll() {
            // Nothing to run and nothing to poll now (a device transfer in
            // flight interrupts when it ends): sleep until an interrupt,
            // the next tick at the latest, unless one came since it was
            // looked for (the check runs with interrupts off, so it cannot
            // slip in between the check and the HLT).
            let awaiting = manager.channels_await_device();
            if kernel_x86::arch::halt_unless(|| crate::manager::Wakeups::now() != seen) && awaiting {
                manager.device_waits += 1;
            }
            t = charge(Phase::Idle, t);
        }
    }
}
