//! Snapshot files and installs at the storage level: corruption is refused, and a crash
//! at any point of an install leaves the old state or the new one.

use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;

use super::snapshot::{self, SnapshotReader};
use super::{open_db, StateMachineStore};
use crate::command::Command;
use crate::kv::types::PutRequest;
use crate::kv::KvStore;
use crate::types::{Entry, LogEntry, SnapshotData, TypeConfig};

fn put(index: u64, key: &str, value: &str) -> Entry {
    let mut e: Entry = openraft::testing::blank_ent::<TypeConfig>(1, 1, index);
    e.payload = EntryPayload::Normal(LogEntry {
        time_ms: 0,
        cmd: Command::Put(PutRequest { key: key.into(), value: value.into(), ..Default::default() }),
    });
    e
}

async fn store_with(dir: &Path, entries: Vec<Entry>) -> StateMachineStore {
    let mut sm = StateMachineStore::new(open_db(&dir.join("db")).unwrap(), dir.join("snap")).unwrap();
    let s = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(s).await.unwrap();
    sm
}

fn kv(sm: &StateMachineStore) -> KvStore {
    sm.state().read().unwrap().kv.clone()
}

/// A leader with 3,000 keys over 4,000 revisions, its snapshot, and a follower that holds
/// an older, different state.
async fn leader_and_follower() -> (tempfile::TempDir, StateMachineStore, tempfile::TempDir, StateMachineStore) {
    let d1 = tempfile::tempdir().unwrap();
    let entries = (1..=4000).map(|i| put(i, &format!("k{}", i % 3000), &format!("v{i}"))).collect();
    let leader = store_with(d1.path(), entries).await;
    let d2 = tempfile::tempdir().unwrap();
    let follower = store_with(d2.path(), (1..=10).map(|i| put(i, &format!("old{i}"), "x")).collect()).await;
    (d1, leader, d2, follower)
}

async fn snapshot_of(sm: &mut StateMachineStore) -> crate::types::Snapshot {
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap()
}

/// Closes `sm` and its DB, then opens the data dir again as a restarted node would.
fn reopen(dir: &Path, sm: StateMachineStore) -> StateMachineStore {
    let db = sm.db();
    drop(sm);
    assert_eq!(Arc::strong_count(&db), 1, "the store still holds the DB");
    drop(db);
    StateMachineStore::new(open_db(&dir.join("db")).unwrap(), dir.join("snap")).unwrap()
}

#[test]
fn a_flipped_byte_anywhere_is_refused_by_the_checksum() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_d1, mut leader, _d2, _f) = leader_and_follower().await;
        let snap = snapshot_of(&mut leader).await;
        let mut bytes = vec![0u8; snap.snapshot.size_bytes as usize];
        std::os::unix::fs::FileExt::read_exact_at(&snap.snapshot.file, &mut bytes, 0).unwrap();
        let ok = SnapshotReader::new(&bytes[..]).unwrap();
        let mut r = ok;
        while r.next_record().unwrap().is_some() {}
        // 4,000 versions, 4,000 revision index entries, the revision and compact counters.
        assert_eq!(r.finish().unwrap().records, 8002);
        // Flip one byte in the records, in the checksum, and in the meta.
        for pos in [bytes.len() / 2, bytes.len() - 1, 20] {
            let mut bad = bytes.clone();
            bad[pos] ^= 0x01;
            let verdict = (|| -> std::io::Result<()> {
                let mut r = SnapshotReader::new(&bad[..])?;
                while r.next_record()?.is_some() {}
                r.finish().map(|_| ())
            })();
            assert!(verdict.is_err(), "a flipped byte at {pos} of {} went unnoticed", bad.len());
        }
    });
}

#[tokio::test]
async fn crash_after_the_marker_finishes_the_install_at_open() {
    let (_d1, mut leader, d2, follower) = leader_and_follower().await;
    let snap = snapshot_of(&mut leader).await;
    let db = follower.db();
    let dir = d2.path().join("snap");
    snapshot::stage(&db, &dir, &snap.meta, snap.snapshot, &|_| {}).unwrap();
    // The crash: the range delete is done, part of the records are in an SST file that
    // was never ingested, the final batch never ran.
    db.delete_range_cf(super::sm_cf(&db), [0u8].as_slice(), [0xffu8; 9].as_slice()).unwrap();
    std::fs::write(dir.join("ingest-0.sst"), b"half an sst file").unwrap();
    drop(db);
    assert!(snapshot::install_pending(&follower.db()).unwrap());
    let follower = reopen(d2.path(), follower);
    assert_eq!(kv(&follower), kv(&leader), "the restarted node has the new state");
    assert_eq!(follower.state().read().unwrap().last_applied, snap.meta.last_log_id);
    assert!(!snapshot::install_pending(&follower.db()).unwrap(), "the marker is cleared");
    assert!(!dir.join("ingest-0.sst").exists() && !dir.join("installing").exists());
    // And it serves the installed snapshot.
    let (meta, _) = snapshot::open_current(&dir).unwrap().expect("current snapshot");
    assert_eq!(meta.last_log_id, snap.meta.last_log_id);
}

#[tokio::test]
async fn crash_while_staging_keeps_the_old_state() {
    let (_d1, mut leader, d2, follower) = leader_and_follower().await;
    let before = kv(&follower);
    let applied = follower.state().read().unwrap().last_applied;
    let snap = snapshot_of(&mut leader).await;
    // The crash: half of the snapshot was copied to `installing.tmp`, no marker yet.
    let dir = d2.path().join("snap");
    let mut bytes = vec![0u8; snap.snapshot.size_bytes as usize / 2];
    std::os::unix::fs::FileExt::read_exact_at(&snap.snapshot.file, &mut bytes, 0).unwrap();
    std::fs::write(dir.join("installing.tmp"), &bytes).unwrap();
    let follower = reopen(d2.path(), follower);
    assert_eq!(kv(&follower), before, "the restarted node has the old state");
    assert_eq!(follower.state().read().unwrap().last_applied, applied);
    assert!(!dir.join("installing.tmp").exists(), "leftovers are removed at open");
}

#[tokio::test]
async fn a_corrupt_snapshot_changes_nothing() {
    let (_d1, mut leader, d2, mut follower) = leader_and_follower().await;
    let before = kv(&follower);
    let snap = snapshot_of(&mut leader).await;
    let mut bytes = vec![0u8; snap.snapshot.size_bytes as usize];
    std::os::unix::fs::FileExt::read_exact_at(&snap.snapshot.file, &mut bytes, 0).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x80;
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, &bytes).unwrap();
    std::io::Seek::rewind(&mut file).unwrap();
    let data = SnapshotData { file, size_bytes: bytes.len() as u64 };
    let err = follower.install_snapshot(&snap.meta, data).await.expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(kv(&follower), before);
    assert!(!snapshot::install_pending(&follower.db()).unwrap(), "nothing was staged");
    let _ = d2;
}
