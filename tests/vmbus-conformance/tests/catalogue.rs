//! The whole catalogue as part of `cargo test`.

#[test]
fn every_conformance_case_passes() {
    let mut failures = Vec::new();
    let (passed, failed) = vmbus_conformance::run_all(|line| {
        println!("{line}");
        if line.starts_with("FAIL") {
            failures.push(line.to_string());
        }
    });
    println!("{passed} passed, {failed} failed");
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(passed >= 30, "the catalogue shrank: {passed} cases");
}
