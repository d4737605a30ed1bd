//! jepsen-style-tests: fault-injection runs against real multi-process clusters, with a
//! linearizability checker. The runner, nemeses and checker arrive with issue #5.
