//! scheduler-core's one integration-test binary: the data-driven plans in `testdata/`
//! and the proptest against a brute-force search.

mod datadriven_plans;
mod harness;
mod props;
