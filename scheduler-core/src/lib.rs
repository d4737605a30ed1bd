//! scheduler-core: pure placement logic (resources, constraints, scoring).
//!
//! Architecture invariant: this crate does no IO and knows nothing of Raft, gRPC or
//! RocksDB: inputs in, a plan out. It holds no code yet; placement arrives with services
//! and tasks. What a node offers is defined once, in `coord::registry::NodeResources`:
//! this crate does not keep a second copy of it.
