//! openraft's storage conformance suite passes on our RocksDB log store and state machine.

use coord::store::{open_db, LogStore, StateMachineStore};
use coord::types::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(&dir.path().join("db")).expect("open db");
        let log = LogStore::new(db.clone());
        let sm = StateMachineStore::new(db, dir.path().join("snapshot")).expect("open sm");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_rocksdb_store() {
    Suite::test_all(RocksBuilder).await.expect("storage suite");
}
