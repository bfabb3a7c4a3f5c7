//! `cargo run -p vmbus_conformance`: run the catalogue, one line per case,
//! ending with `N passed, M failed`.

fn main() -> std::process::ExitCode {
    let (passed, failed) = vmbus_conformance::run_all(|line| println!("{line}"));
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
