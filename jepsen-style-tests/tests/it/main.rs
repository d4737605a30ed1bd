//! Integration tests of the runner: one short real run per binary invocation would need
//! root and namespaces, so these drive the CLI's pure subcommands (schedule, check).

mod cli;
