//! The deliberately broken configuration in `fixtures/broken/` yields every
//! problem listed in `fixtures/broken.expected`, one per line, and no other.

use std::path::Path;

use meridian_config::Platform;

#[test]
fn every_problem_of_the_broken_set_is_reported() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken");
    let problems = Platform::load(&dir).expect_err("the broken set must not load");
    let got: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
    let expected: Vec<String> = std::fs::read_to_string(dir.with_extension("expected"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let missing: Vec<_> = expected.iter().filter(|e| !got.contains(e)).collect();
    let unexpected: Vec<_> = got.iter().filter(|g| !expected.contains(g)).collect();
    assert!(missing.is_empty() && unexpected.is_empty(), "missing: {missing:#?}\nunexpected: {unexpected:#?}");
}
