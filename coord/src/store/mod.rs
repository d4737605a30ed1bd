//! Durable storage: one RocksDB instance per node, one shared WAL.
//!
//! Column families: `log` (Raft entries by index), `raft_meta` (vote, committed,
//! last purged) and `sm` (the state machine). Appends and votes are synced before they
//! are acknowledged; state-machine writes are not, because the log is durable and
//! replay restarts from `last_applied`, which is written in the same batch as the data.

/// Value and key encodings; also used for Raft payloads on the wire.
pub(crate) mod codec;
pub mod log_store;
pub mod state_machine;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

pub use log_store::LogStore;
pub use state_machine::{SmState, StateMachineStore};

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT_META: &str = "raft_meta";
pub(crate) const CF_SM: &str = "sm";

/// Opens (or creates) the node's RocksDB at `path`.
pub fn open_db(path: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Recycled WAL files are already allocated on disk, so the fdatasync after an append
    // writes data only instead of also growing the file (0.11 ms vs 2.75 ms here, DESIGN §2).
    opts.set_recycle_log_file_num(4);
    // A WAL file is recycled only once every column family in it has flushed; a small cap
    // forces those flushes early, so appends soon land in recycled files.
    opts.set_max_total_wal_size(16 << 20);
    opts.increase_parallelism(2);
    let cf = |name: &str| {
        let mut o = Options::default();
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        ColumnFamilyDescriptor::new(name, o)
    };
    let db = DB::open_cf_descriptors(&opts, path, [cf(CF_LOG), cf(CF_RAFT_META), cf(CF_SM)])?;
    Ok(Arc::new(db))
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
