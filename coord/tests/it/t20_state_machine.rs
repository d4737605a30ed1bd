//! The state machine on RocksDB: restart, compaction and snapshot install keep every
//! read that etcd semantics promise.

use coord::command::Command;
use coord::kv::types::{PutRequest, RangeRequest};
use coord::kv::KvStore;
use coord::store::state_machine::ReadOnlyHistory;
use coord::store::{open_db, StateMachineStore};
use coord::types::{Entry, LogEntry, SnapshotData, TypeConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;

fn put_entry(index: u64, key: &str, value: &str) -> Entry {
    let mut e: Entry = openraft::testing::blank_ent::<TypeConfig>(1, 1, index);
    e.payload = EntryPayload::Normal(LogEntry {
        time_ms: 0,
        cmd: Command::Put(PutRequest { key: key.into(), value: value.into(), ..Default::default() }),
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

fn read(sm: &StateMachineStore, key: &str, revision: i64) -> Result<Vec<String>, coord::command::ApplyError> {
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
        .map(|kv| format!("{}={}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value)))
        .collect())
}

/// The bytes of snapshot data, read without moving its file offset.
fn bytes(d: &SnapshotData) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut v = vec![0u8; d.size_bytes as usize];
    d.file.read_exact_at(&mut v, 0).unwrap();
    v
}

/// Snapshot data backed by an anonymous temporary file holding `b`.
fn data(b: &[u8]) -> SnapshotData {
    use std::io::{Seek, Write};
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(b).unwrap();
    file.rewind().unwrap();
    SnapshotData { file, size_bytes: b.len() as u64 }
}

fn kv_state(sm: &StateMachineStore) -> KvStore {
    sm.state().read().unwrap().kv.clone()
}

#[tokio::test]
async fn applied_state_survives_reopen_and_history_survives_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachineStore::new(open_db(&dir.path().join("db")).unwrap(), dir.path().join("snap")).unwrap();
    // Revisions: a=1 @2, a=2 @3, b=1 @4, a=3 @5, delete b @6.
    apply(
        &mut sm,
        vec![put_entry(1, "a", "1"), put_entry(2, "a", "2"), put_entry(3, "b", "1"), put_entry(4, "a", "3")],
    )
    .await;
    apply(
        &mut sm,
        vec![cmd_entry(
            5,
            Command::DeleteRange(coord::kv::types::DeleteRangeRequest { key: b"b".to_vec(), ..Default::default() }),
        )],
    )
    .await;
    assert_eq!(read(&sm, "", 4).unwrap(), vec!["a=2", "b=1"]);
    apply(&mut sm, vec![cmd_entry(6, Command::Compact { revision: 5 })]).await;
    assert!(read(&sm, "", 4).is_err(), "reads below the compact revision are refused");
    assert_eq!(read(&sm, "", 5).unwrap(), vec!["a=3", "b=1"], "the compact revision itself stays readable");
    assert_eq!(read(&sm, "", 6).unwrap(), vec!["a=3"]);
    let before = kv_state(&sm);
    drop(sm);
    let sm = StateMachineStore::new(open_db(&dir.path().join("db")).unwrap(), dir.path().join("snap")).unwrap();
    assert_eq!(kv_state(&sm), before, "reopened state equals the state before");
    assert_eq!(read(&sm, "", 5).unwrap(), vec!["a=3", "b=1"]);
    let st = sm.state();
    assert_eq!(st.read().unwrap().last_applied.as_ref().map(|l| l.index), Some(6));
}

#[tokio::test]
async fn snapshot_install_reproduces_the_state_byte_for_byte() {
    let d1 = tempfile::tempdir().unwrap();
    let mut sm1 = StateMachineStore::new(open_db(&d1.path().join("db")).unwrap(), d1.path().join("snap")).unwrap();
    let entries: Vec<Entry> = (1..=200).map(|i| put_entry(i, &format!("k{}", i % 37), &format!("v{i}"))).collect();
    apply(&mut sm1, entries).await;
    let mut builder = sm1.get_snapshot_builder().await;
    // Writes after the builder was created must not leak into the snapshot.
    apply(&mut sm1, vec![put_entry(201, "late", "x")]).await;
    let snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.as_ref().map(|l| l.index), Some(200));

    let d2 = tempfile::tempdir().unwrap();
    let mut sm2 = StateMachineStore::new(open_db(&d2.path().join("db")).unwrap(), d2.path().join("snap")).unwrap();
    apply(&mut sm2, vec![put_entry(1, "stale", "gone")]).await;
    sm2.install_snapshot(&snap.meta, data(&bytes(&snap.snapshot))).await.unwrap();
    let mut sm1_at_200 = kv_state(&sm1);
    sm1_at_200.live.remove(b"late".as_slice());
    sm1_at_200.revision -= 1;
    assert_eq!(kv_state(&sm2), sm1_at_200);
    assert_eq!(read(&sm2, "k1", 100).unwrap(), read(&sm1, "k1", 100).unwrap());
    // A snapshot of the installed state has the same bytes.
    let again = sm2.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert!(bytes(&again.snapshot) == bytes(&snap.snapshot), "re-snapshot of the installed state differs");
    let current = sm2.get_current_snapshot().await.unwrap().expect("installed snapshot is kept");
    assert_eq!(current.meta.last_log_id, snap.meta.last_log_id);
}

/// Every read at or after the compact revision returns exactly what the model says,
/// across random puts, deletes and compactions (and a reopen at the end).
#[tokio::test]
async fn compaction_keeps_every_read_at_or_after_the_compact_revision() {
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let open = || StateMachineStore::new(open_db(&dir.path().join("db")).unwrap(), dir.path().join("snap")).unwrap();
    let mut sm = open();
    // states[r] = the store at revision r (revision 1 is empty).
    let mut states: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(), BTreeMap::new()];
    let mut compacted = 0i64;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let check = |sm: &StateMachineStore, states: &Vec<BTreeMap<String, String>>, compacted: i64| {
        let current = states.len() as i64 - 1;
        for r in compacted.max(1)..=current {
            let want: Vec<String> = states[r as usize].iter().map(|(k, v)| format!("{k}={v}")).collect();
            assert_eq!(read(sm, "k", r).unwrap(), want, "read at revision {r} (compacted {compacted})");
        }
        if compacted > 1 {
            assert!(read(sm, "k", compacted - 1).is_err());
        }
    };
    for index in 1..=800u64 {
        let key = format!("k{}", rnd(6));
        let mut next = states.last().unwrap().clone();
        let roll = rnd(100);
        if roll < 65 {
            next.insert(key.clone(), format!("v{index}"));
            apply(&mut sm, vec![put_entry(index, &key, &format!("v{index}"))]).await;
            states.push(next);
        } else if roll < 90 {
            let del = coord::kv::types::DeleteRangeRequest { key: key.clone().into_bytes(), ..Default::default() };
            apply(&mut sm, vec![cmd_entry(index, Command::DeleteRange(del))]).await;
            if next.remove(&key).is_some() {
                states.push(next);
            }
        } else {
            let current = states.len() as i64 - 1;
            if current > compacted {
                let to = compacted + 1 + rnd((current - compacted) as u64) as i64;
                apply(&mut sm, vec![cmd_entry(index, Command::Compact { revision: to })]).await;
                compacted = to;
                check(&sm, &states, compacted);
            } else {
                apply(&mut sm, vec![put_entry(index, "k-filler", "x")]).await;
                let mut n = states.last().unwrap().clone();
                n.insert("k-filler".into(), "x".into());
                states.push(n);
            }
        }
    }
    check(&sm, &states, compacted);
    drop(sm);
    let sm = open();
    check(&sm, &states, compacted);
}

/// The registry goes through the real store: it survives a reopen and a snapshot install
/// unchanged, and watchers learn the last event index after an install.
#[tokio::test]
async fn registry_survives_reopen_and_snapshot_install() {
    use coord::registry::*;
    let d1 = tempfile::tempdir().unwrap();
    let mut sm1 = StateMachineStore::new(open_db(&d1.path().join("db")).unwrap(), d1.path().join("snap")).unwrap();
    let mut entries = vec![cmd_entry(
        1,
        Command::InitCluster { cluster_id: "c".into(), manager_secret: "m".into(), worker_secret: "w".into() },
    )];
    for i in 0..4 {
        entries.push(cmd_entry(2 + i, Command::AllocNodeId { addr: format!("127.0.0.1:{}", 100 + i) }));
    }
    let reg = |id: u64| Registration {
        node_id: id,
        secret_hash: format!("{id:064}"),
        name: format!("n{id}"),
        addr: "127.0.0.1:1".into(),
        role: Role::Worker,
        resources: NodeResources { cpus_milli: 500, memory_mb: 64, disk_mb: 1, ports: vec![(31000, 31010)] },
        labels: [("zone".to_string(), format!("z{id}"))].into(),
    };
    let mut index = 6;
    for id in 2..=5 {
        entries.push(cmd_entry(index, Command::Registry(RegistryCommand::Register(reg(id)))));
        index += 1;
    }
    let t = |id, from, to| Transition { node_id: id, from, to, reason: "test".into() };
    for cmd in [
        RegistryCommand::Transitions {
            term: 1,
            transitions: vec![
                t(2, NodeState::Registered, NodeState::Active),
                t(3, NodeState::Registered, NodeState::Active),
                t(4, NodeState::Registered, NodeState::Unreachable),
            ],
        },
        RegistryCommand::Transitions { term: 1, transitions: vec![t(4, NodeState::Unreachable, NodeState::Down)] },
        RegistryCommand::SetAvailability { node_id: 3, availability: Availability::Drain },
        RegistryCommand::Remove { node_id: 5, force: false },
    ] {
        entries.push(cmd_entry(index, Command::Registry(cmd)));
        index += 1;
    }
    apply(&mut sm1, entries).await;
    let registry = |sm: &StateMachineStore| sm.state().read().unwrap().registry.clone();
    let r1 = registry(&sm1);
    assert_eq!(r1.nodes.len(), 3);
    assert_eq!(r1.nodes[&4].state, NodeState::Down);
    assert_eq!(r1.nodes[&3].availability, Availability::Drain);
    assert!(r1.removed.contains(&5));
    assert_eq!(r1.last_event_index(), 4 + 4 + 2);
    drop(sm1);
    let mut sm1 = StateMachineStore::new(open_db(&d1.path().join("db")).unwrap(), d1.path().join("snap")).unwrap();
    assert_eq!(registry(&sm1), r1, "reopened registry equals the one before");

    let snap = sm1.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let mut sm2 = StateMachineStore::new(open_db(&d2.path().join("db")).unwrap(), d2.path().join("snap")).unwrap();
    let events = sm2.registry_events();
    assert_eq!(*events.borrow(), 0);
    sm2.install_snapshot(&snap.meta, data(&bytes(&snap.snapshot))).await.unwrap();
    assert_eq!(registry(&sm2), r1, "installed registry equals the source");
    assert_eq!(*events.borrow(), r1.last_event_index());
    let again = sm2.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert!(bytes(&again.snapshot) == bytes(&snap.snapshot), "re-snapshot of the installed state differs");
}

/// IPAM through the real store: allocations, a release into quarantine and its expiry
/// survive a reopen and a snapshot install, byte for byte; the owner records on disk
/// agree with memory.
#[tokio::test]
async fn ipam_survives_reopen_and_snapshot_install() {
    use coord::ipam::*;
    let d1 = tempfile::tempdir().unwrap();
    let mut sm1 = StateMachineStore::new(open_db(&d1.path().join("db")).unwrap(), d1.path().join("snap")).unwrap();
    let at = |index: u64, time_ms: u64, cmd: IpamCommand| {
        let mut e = cmd_entry(index, Command::Ipam(cmd));
        if let EntryPayload::Normal(ref mut le) = e.payload {
            le.time_ms = time_ms;
        }
        e
    };
    let spec = NetworkSpec {
        name: "n".into(),
        subnets: vec![parse_cidr("10.9.0.0/24").unwrap(), parse_cidr("fd09::/64").unwrap()],
        gateways: vec![None, None],
        reserve: vec![(0, 10, 19)],
        quarantine_ms: 100,
    };
    let owners: Vec<String> = (0..50).map(|i| format!("o{i}")).collect();
    // Applied together: the batch sees the network created by the entry before it.
    apply(
        &mut sm1,
        vec![
            at(1, 1_000, IpamCommand::CreateNetwork(spec)),
            at(2, 1_000, IpamCommand::AllocateBatch { network: "n".into(), owners: owners.clone(), node: Some(7) }),
            at(
                3,
                1_000,
                IpamCommand::Allocate { network: "n".into(), owner: "o1".into(), requested: None, node: None },
            ),
            at(4, 1_010, IpamCommand::Release { network: "n".into(), owner: Some("o3".into()), address: None }),
            at(5, 1_020, IpamCommand::Release { network: "n".into(), owner: Some("o4".into()), address: None }),
        ],
    )
    .await;
    // Past o3's quarantine, not o4's... both are 100 ms: at 1,115 only o3's expired.
    apply(
        &mut sm1,
        vec![at(
            6,
            1_115,
            IpamCommand::Allocate { network: "n".into(), owner: "x".into(), requested: None, node: None },
        )],
    )
    .await;
    let ipam = |sm: &StateMachineStore| sm.state().read().unwrap().ipam.clone();
    let i1 = ipam(&sm1);
    let p = &i1.networks["n"].pools[0];
    assert_eq!((p.allocated, p.quarantined), (49, 1));
    drop(sm1);
    let mut sm1 = StateMachineStore::new(open_db(&d1.path().join("db")).unwrap(), d1.path().join("snap")).unwrap();
    assert_eq!(ipam(&sm1), i1, "reopened IPAM equals the one before");
    let snap = sm1.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let mut sm2 = StateMachineStore::new(open_db(&d2.path().join("db")).unwrap(), d2.path().join("snap")).unwrap();
    sm2.install_snapshot(&snap.meta, data(&bytes(&snap.snapshot))).await.unwrap();
    assert_eq!(ipam(&sm2), i1, "installed IPAM equals the source");
    let again = sm2.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert!(bytes(&again.snapshot) == bytes(&snap.snapshot), "re-snapshot of the installed state differs");
    // The installed node goes on allocating exactly as the source does.
    let next =
        |i| at(i, 2_000, IpamCommand::Allocate { network: "n".into(), owner: "y".into(), requested: None, node: None });
    apply(&mut sm1, vec![next(7)]).await;
    apply(&mut sm2, vec![next(7)]).await;
    assert_eq!(ipam(&sm1), ipam(&sm2));
}

/// Service entries allocate and release IPs through IPAM's records on disk, so entries
/// applied in one group must see those of the entries before them. Found by the `tasks`
/// fault workload: an entry that ended a task put its IP in quarantine, and two launches
/// in the same group each expired that quarantine, the second freeing the address again
/// (a panic in apply, on every master alike).
#[tokio::test]
async fn service_entries_in_one_group_see_each_others_ipam_writes() {
    use coord::ipam::*;
    use coord::services::{LaunchTask, ServiceCommand, ServiceSpec};
    let d = tempfile::tempdir().unwrap();
    let mut sm = StateMachineStore::new(open_db(&d.path().join("db")).unwrap(), d.path().join("snap")).unwrap();
    let at = |index: u64, time_ms: u64, cmd: Command| {
        let mut e = cmd_entry(index, cmd);
        if let EntryPayload::Normal(ref mut le) = e.payload {
            le.time_ms = time_ms;
        }
        e
    };
    let net = NetworkSpec {
        name: "n".into(),
        subnets: vec![parse_cidr("10.9.0.0/29").unwrap()],
        gateways: vec![None],
        reserve: vec![],
        quarantine_ms: 100,
    };
    let mut spec = ServiceSpec::new("/web", "serve");
    spec.instances = 3;
    spec.network = Some("n".into());
    let launch = |i, t| {
        let task = LaunchTask { service: "/web".into(), version: 1, agent: 7, host: "h".into(), ports: vec![] };
        at(i, t, Command::Services(ServiceCommand::Launch { tasks: vec![task] }))
    };
    let lost = |i, t, task: &str| {
        let c = ServiceCommand::Lost { agent: 7, tasks: vec![task.into()], reason: "down".into() };
        at(i, t, Command::Services(c))
    };
    apply(
        &mut sm,
        vec![
            at(1, 1_000, Command::Ipam(IpamCommand::CreateNetwork(net))),
            at(2, 1_000, Command::Services(ServiceCommand::Put { spec: Box::new(spec), create: true, force: false })),
            launch(3, 1_010),
            lost(4, 1_020, "web.1"),
        ],
    )
    .await;
    // The quarantine (100 ms) is over: the first launch frees web.1's address, and the
    // second must see that it did. Then a task ends and another starts in one group.
    apply(&mut sm, vec![launch(5, 2_000), launch(6, 2_010)]).await;
    apply(&mut sm, vec![lost(7, 2_020, "web.2"), launch(8, 2_030), launch(9, 3_000)]).await;
    let st = sm.state();
    let st = st.read().unwrap();
    let p = &st.ipam.networks["n"].pools[0];
    assert_eq!((p.allocated, p.quarantined), (3, 0), "three tasks hold an address, none is quarantined");
    let running: Vec<String> = st.services.tasks().filter(|t| !t.state.is_terminal()).map(|t| t.id.clone()).collect();
    assert_eq!(running, ["web.3", "web.4", "web.5"]);
}

#[tokio::test]
async fn a_stale_copy_killed_is_a_registry_event_that_survives_reopen() {
    use coord::registry::EventKind;
    use coord::services::{LaunchTask, ServiceCommand, ServiceSpec, TaskState, TaskUpdate};
    let d = tempfile::tempdir().unwrap();
    let open = || StateMachineStore::new(open_db(&d.path().join("db")).unwrap(), d.path().join("snap")).unwrap();
    let mut sm = open();
    let killed = TaskUpdate {
        task_id: "web.1".into(),
        agent: 7,
        state: TaskState::Killed,
        healthy: None,
        reason: "replaced elsewhere".into(),
        exit_code: None,
    };
    let task = LaunchTask { service: "/web".into(), version: 1, agent: 7, host: "h".into(), ports: vec![] };
    apply(
        &mut sm,
        vec![
            cmd_entry(
                1,
                Command::Services(ServiceCommand::Put {
                    spec: Box::new(ServiceSpec::new("/web", "serve")),
                    create: true,
                    force: false,
                }),
            ),
            cmd_entry(2, Command::Services(ServiceCommand::Launch { tasks: vec![task] })),
            cmd_entry(
                3,
                Command::Services(ServiceCommand::Lost {
                    agent: 7,
                    tasks: vec!["web.1".into()],
                    reason: "down".into(),
                }),
            ),
            cmd_entry(4, Command::Services(ServiceCommand::Reports { reports: vec![vec![killed.clone()]] })),
            cmd_entry(5, Command::Services(ServiceCommand::Reports { reports: vec![vec![killed]] })),
        ],
    )
    .await;
    drop(sm);
    let sm = open();
    let st = sm.state();
    let st = st.read().unwrap();
    let stale: Vec<_> = st
        .registry
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StaleTaskKilled { task, reason } => Some((e.node_id, task.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(stale, vec![(7, "web.1".to_string(), "replaced elsewhere".to_string())], "one event, after a reopen");
}
