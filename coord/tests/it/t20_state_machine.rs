//! The state machine on RocksDB: restart, compaction and snapshot install keep every
//! read that etcd semantics promise.

use coord::command::Command;
use coord::kv::types::{PutRequest, RangeRequest};
use coord::kv::KvStore;
use coord::store::state_machine::ReadOnlyHistory;
use coord::store::{open_db, StateMachineStore};
use coord::types::{Entry, LogEntry, TypeConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;

fn put_entry(index: u64, key: &str, value: &str) -> Entry {
    let mut e: Entry = openraft::testing::blank_ent::<TypeConfig>(1, 1, index);
    e.payload = EntryPayload::Normal(LogEntry {
        time_ms: 0,
        cmd: Command::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
    });
    e
}

fn cmd_entry(index: u64, cmd: Command) -> Entry {
    let mut e: Entry = openraft::testing::blank_ent::<TypeConfig>(1, 1, index);
    e.payload = EntryPayload::Normal(LogEntry { time_ms: 0, cmd });
    e
}

async fn apply(sm: &mut StateMachineStore, entries: Vec<Entry>) {
    let s = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(s).await.expect("apply");
}

fn read(
    sm: &StateMachineStore,
    key: &str,
    revision: i64,
) -> Result<Vec<String>, coord::command::ApplyError> {
    let st = sm.state();
    let st = st.read().unwrap();
    let db = sm.db();
    let req = RangeRequest {
        key: key.into(),
        range_end: coord::kv::prefix_range_end(key.as_bytes()),
        revision,
        ..Default::default()
    };
    let r = st.kv.range(&req, &mut ReadOnlyHistory(&db))?;
    Ok(r.kvs
        .iter()
        .map(|kv| {
            format!(
                "{}={}",
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value)
            )
        })
        .collect())
}

fn kv_state(sm: &StateMachineStore) -> KvStore {
    sm.state().read().unwrap().kv.clone()
}

#[tokio::test]
async fn applied_state_survives_reopen_and_history_survives_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachineStore::new(
        open_db(&dir.path().join("db")).unwrap(),
        dir.path().join("snap"),
    )
    .unwrap();
    // Revisions: a=1 @2, a=2 @3, b=1 @4, a=3 @5, delete b @6.
    apply(
        &mut sm,
        vec![
            put_entry(1, "a", "1"),
            put_entry(2, "a", "2"),
            put_entry(3, "b", "1"),
            put_entry(4, "a", "3"),
        ],
    )
    .await;
    apply(
        &mut sm,
        vec![cmd_entry(
            5,
            Command::DeleteRange(coord::kv::types::DeleteRangeRequest {
                key: b"b".to_vec(),
                ..Default::default()
            }),
        )],
    )
    .await;
    assert_eq!(read(&sm, "", 4).unwrap(), vec!["a=2", "b=1"]);
    apply(
        &mut sm,
        vec![cmd_entry(6, Command::Compact { revision: 5 })],
    )
    .await;
    assert!(
        read(&sm, "", 4).is_err(),
        "reads below the compact revision are refused"
    );
    assert_eq!(
        read(&sm, "", 5).unwrap(),
        vec!["a=3", "b=1"],
        "the compact revision itself stays readable"
    );
    assert_eq!(read(&sm, "", 6).unwrap(), vec!["a=3"]);
    let before = kv_state(&sm);
    drop(sm);
    let sm = StateMachineStore::new(
        open_db(&dir.path().join("db")).unwrap(),
        dir.path().join("snap"),
    )
    .unwrap();
    assert_eq!(
        kv_state(&sm),
        before,
        "reopened state equals the state before"
    );
    assert_eq!(read(&sm, "", 5).unwrap(), vec!["a=3", "b=1"]);
    let st = sm.state();
    assert_eq!(
        st.read().unwrap().last_applied.as_ref().map(|l| l.index),
        Some(6)
    );
}

#[tokio::test]
async fn snapshot_install_reproduces_the_state_byte_for_byte() {
    let d1 = tempfile::tempdir().unwrap();
    let mut sm1 = StateMachineStore::new(
        open_db(&d1.path().join("db")).unwrap(),
        d1.path().join("snap"),
    )
    .unwrap();
    let entries: Vec<Entry> = (1..=200)
        .map(|i| put_entry(i, &format!("k{}", i % 37), &format!("v{i}")))
        .collect();
    apply(&mut sm1, entries).await;
    let mut builder = sm1.get_snapshot_builder().await;
    // Writes after the builder was created must not leak into the snapshot.
    apply(&mut sm1, vec![put_entry(201, "late", "x")]).await;
    let snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.as_ref().map(|l| l.index), Some(200));

    let d2 = tempfile::tempdir().unwrap();
    let mut sm2 = StateMachineStore::new(
        open_db(&d2.path().join("db")).unwrap(),
        d2.path().join("snap"),
    )
    .unwrap();
    apply(&mut sm2, vec![put_entry(1, "stale", "gone")]).await;
    sm2.install_snapshot(&snap.meta, snap.snapshot.clone())
        .await
        .unwrap();
    let mut sm1_at_200 = kv_state(&sm1);
    sm1_at_200.live.remove(b"late".as_slice());
    sm1_at_200.revision -= 1;
    assert_eq!(kv_state(&sm2), sm1_at_200);
    assert_eq!(
        read(&sm2, "k1", 100).unwrap(),
        read(&sm1, "k1", 100).unwrap()
    );
    // A snapshot of the installed state has the same bytes.
    let again = sm2
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert!(
        again.snapshot == snap.snapshot,
        "re-snapshot of the installed state differs"
    );
    let current = sm2
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("installed snapshot is kept");
    assert_eq!(current.meta.last_log_id, snap.meta.last_log_id);
}
