//! coord integration tests: the RocksDB store through openraft's traits.

mod t10_storage_suite;
mod t20_state_machine;
mod t30_format;
mod t40_untrusted_bytes;
