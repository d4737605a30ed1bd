//! A data dir written by a newer release is refused at open with both versions named,
//! and a snapshot of an unknown version is refused before it touches the state.

use coord::store::format::{OpenError, FORMAT_VERSION};
use coord::store::open_db;
use coord::{CoordConfig, CoordNode, NodeOptions};

/// Opens `dir`'s DB once (stamping the current version), then overwrites the version
/// key of `cf` with `version`, as a newer binary would have left it.
fn stamp(dir: &std::path::Path, cf: &str, key: &[u8], version: u32) {
    let db = open_db(&dir.join("db")).expect("open");
    let h = db.cf_handle(cf).expect("cf");
    db.put_cf(h, key, version.to_be_bytes()).expect("put");
    db.flush_wal(true).expect("sync");
}

#[test]
fn a_fresh_data_dir_gets_the_current_version_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_db(&dir.path().join("db")).unwrap());
    let db = open_db(&dir.path().join("db")).expect("reopen");
    let sm = db.cf_handle("sm").unwrap();
    assert_eq!(db.get_cf(sm, b"m/format").unwrap().as_deref(), Some(&FORMAT_VERSION.to_be_bytes()[..]));
}

#[test]
fn newer_state_machine_format_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    stamp(dir.path(), "sm", b"m/format", FORMAT_VERSION + 1);
    let err = open_db(&dir.path().join("db")).expect_err("a newer format must be refused");
    assert!(
        matches!(err, OpenError::NewerFormat { found, supported, .. } if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&format!("format version {}", FORMAT_VERSION + 1)), "{msg}");
    assert!(msg.contains(&format!("up to {FORMAT_VERSION}")), "{msg}");
}

#[test]
fn newer_raft_metadata_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    stamp(dir.path(), "raft_meta", b"format", FORMAT_VERSION + 7);
    let err = open_db(&dir.path().join("db")).expect_err("refused");
    assert!(err.to_string().contains("Raft metadata"), "{err}");
}

#[tokio::test]
async fn a_node_on_newer_data_fails_to_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    stamp(dir.path(), "sm", b"m/format", 99);
    let opts = NodeOptions {
        node_id: 1,
        name: "n1".into(),
        data_dir: dir.path().to_path_buf(),
        advertise_addr: "127.0.0.1:1".into(),
        config: CoordConfig::default(),
        init: None,
        tls: {
            let ca =
                pki::cert::Ca::generate("c", std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
                    .unwrap();
            pki::Credentials::new(vec![ca.cert.clone()], vec![], None).unwrap()
        },
    };
    let err = CoordNode::open(opts).await.err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("format version 99") && msg.contains(&format!("up to {FORMAT_VERSION}")), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "names the data dir: {msg}");
}

#[tokio::test]
async fn a_snapshot_of_unknown_version_is_refused_and_changes_nothing() {
    use openraft::storage::RaftStateMachine;
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("db")).unwrap();
    let mut sm = coord::store::StateMachineStore::new(db, dir.path().join("snap")).unwrap();
    let before = sm.state().read().unwrap().kv.clone();
    let meta = coord::types::SnapshotMeta {
        last_log_id: Some(openraft::testing::log_id::<coord::types::TypeConfig>(1, 1, 10)),
        last_membership: Default::default(),
    };
    let mut data = b"CLSNAP\0\0".to_vec();
    data.extend_from_slice(&(FORMAT_VERSION + 1).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, 0]);
    let err = sm.install_snapshot(&meta, file_data(&data)).await.expect_err("refused");
    assert!(err.to_string().contains(&format!("format version {}", FORMAT_VERSION + 1)), "{err}");
    let err =
        sm.install_snapshot(&meta, file_data(b"garbage, and not a snapshot file at all")).await.expect_err("refused");
    assert!(err.to_string().contains("not a cluster snapshot"), "{err}");
    assert_eq!(sm.state().read().unwrap().kv, before);
    assert!(sm.state().read().unwrap().last_applied.is_none(), "nothing was installed");
}

fn file_data(b: &[u8]) -> coord::types::SnapshotData {
    use std::io::{Seek, Write};
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(b).unwrap();
    file.rewind().unwrap();
    coord::types::SnapshotData { file, size_bytes: b.len() as u64 }
}
