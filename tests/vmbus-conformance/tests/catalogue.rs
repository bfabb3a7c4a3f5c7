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
    assert!(passed >= 50, "the catalogue shrank: {passed} cases");
}
