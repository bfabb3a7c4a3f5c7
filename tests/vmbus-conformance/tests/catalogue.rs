//! The whole catalogue as part of `cargo test`: every case must pass.

#[test]
fn every_conformance_case_passes() {
    let cases = vmbus_conformance::catalogue();
    let mut ids: Vec<&str> = cases.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "duplicate case ids");
    let mut failures = Vec::new();
    let (passed, failed) = vmbus_conformance::run_all(|line| {
        println!("{line}");
        if line.starts_with("FAIL") {
            failures.push(line.to_string());
        }
    });
    println!("{passed} passed, {failed} failed");
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(failed, 0);
    assert_eq!(passed, cases.len(), "every case must pass");
    assert!(passed >= 120, "the catalogue shrank: {passed} cases");
}

/// The documented device bugs: run and reported, never in the catalogue.
/// A case that passes here means the device was fixed: move it into the
/// catalogue.
#[test]
fn known_bugs_are_reported() {
    let ids: Vec<&str> = vmbus_conformance::catalogue().iter().map(|c| c.id).collect();
    for case in vmbus_conformance::known_bugs() {
        assert!(!ids.contains(&case.id), "{} is in the catalogue too", case.id);
        match std::panic::catch_unwind(case.run) {
            Ok(Ok(())) => println!("FIXED {} (move it into the catalogue)", case.id),
            Ok(Err(why)) => println!("BUG {}: {why}", case.id),
            Err(_) => println!("BUG {}: panicked", case.id),
        }
    }
}
