//! `hvctl [--socket PATH] COMMAND...`: run one management command against a
//! running machine and print its output (use `--json` forms for scripts).
//! Exits 1 if the root refused the command, 2 if it could not be reached.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut socket = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/images/mgmt.sock");
    let mut timeout = Duration::from_secs(60);
    while let Some(first) = args.first().cloned() {
        match first.as_str() {
            "--socket" if args.len() > 1 => {
                socket = PathBuf::from(&args[1]);
                args.drain(..2);
            }
            "--timeout" if args.len() > 1 => {
                let Ok(secs) = args[1].parse() else {
                    eprintln!("hvctl: --timeout takes seconds");
                    return ExitCode::from(2);
                };
                timeout = Duration::from_secs(secs);
                args.drain(..2);
            }
            "-h" | "--help" => {
                println!("usage: hvctl [--socket PATH] [--timeout SECS] COMMAND [ARGS...]");
                println!("runs a root management command (e.g. `list --json`) through QEMU's COM2 socket");
                return ExitCode::SUCCESS;
            }
            _ => break,
        }
    }
    if args.is_empty() {
        eprintln!("hvctl: no command (try `hvctl help`)");
        return ExitCode::from(2);
    }
    let result = hvctl::Client::connect(&socket, Duration::from_secs(10))
        .and_then(|mut c| c.run(&args.join(" "), timeout));
    match result {
        Ok(out) => {
            print!("{out}");
            if hvctl::is_error(&out) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("hvctl: {e}");
            ExitCode::from(2)
        }
    }
}
