//! Every file in `scheduler-core/testdata/` holds plans: an input, `----`, the plan.
//! `REWRITE=1 cargo test -p scheduler-core` rewrites the expected plans; review the diff.

use std::collections::BTreeMap;

use crate::harness::{parse_input, render};

#[test]
fn testdata_plans() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
    datadriven::walk(dir, |f| {
        f.run(|tc| -> String {
            assert_eq!(tc.directive, "plan", "unknown directive");
            let args: BTreeMap<String, String> =
                tc.args.iter().map(|(k, v)| (k.clone(), v.first().cloned().unwrap_or_default())).collect();
            match parse_input(&args, &tc.input) {
                Ok(input) => {
                    let plan = scheduler_core::place(&input);
                    // The same input and seed give the same plan.
                    assert_eq!(plan, scheduler_core::place(&input), "plan is not deterministic");
                    render(&plan)
                }
                Err(e) => format!("error: {e}\n"),
            }
        })
    });
}
