//! Backup, restore and recovery, through the binary: `snapshot save` under a write load
//! and `snapshot restore` of it; a flipped byte refused; `recover` refused while a quorum
//! answers, and after losing two of three masters the survivor serving alone; kill -9
//! in the middle of a snapshot install.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use proto::clusterpb::cluster_admin_client::ClusterAdminClient;
use proto::clusterpb::{StatusRequest, StatusResponse};
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::{PutRequest, RangeRequest};

use crate::harness::{agent_channel, cli, dump, Cluster, Writers};

fn ok(args: &[&str]) -> String {
    let o = cli(args);
    assert!(o.status.success(), "cluster {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&ok(&a)).expect("json output")
}

/// Runs the CLI off the async workers, so that writers keep going meanwhile.
async fn cli_async(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || cli(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>())).await.unwrap()
}

/// Every key-value at `rev` (0: newest), linearizable, as (key, value, create, mod, version).
async fn range_at(addr: &str, rev: i64) -> Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)> {
    let ch = agent_channel(addr).await.expect("connect");
    let r = KvClient::new(ch)
        .max_decoding_message_size(256 << 20)
        .range(RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() })
        .await
        .expect("range")
        .into_inner();
    r.kvs.into_iter().map(|kv| (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)).collect()
}

/// Status with a longer patience than the harness's (a node answering alone may first
/// ask a paused leader for a second).
async fn status_within(addr: &str, within: Duration) -> StatusResponse {
    let deadline = Instant::now() + within;
    loop {
        if let Some(ch) = agent_channel(addr).await {
            let mut admin = ClusterAdminClient::new(ch);
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(3), admin.status(StatusRequest {})).await {
                return r.into_inner();
            }
        }
        assert!(Instant::now() < deadline, "{addr} did not answer a status within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The registry entries that a snapshot carries (not the leader's heartbeat view).
fn registry(n: &proto::clusterpb::NodesResponse) -> Vec<String> {
    n.nodes
        .iter()
        .map(|x| {
            format!(
                "{} {} {} {} {} {:?} {:?} {}",
                x.node_id, x.name, x.addr, x.role, x.availability, x.resources, x.labels, x.registered_at_ms
            )
        })
        .collect()
}

fn allocations(r: &proto::clusterpb::InspectNetworkResponse) -> Vec<String> {
    r.allocations.iter().map(|a| format!("{} {} {} {}", a.address, a.owner, a.node_id, a.since_ms)).collect()
}

/// Flips the last byte of the last record: only the checksum can notice.
fn flip_last_record_byte(from: &Path, to: &Path) {
    let mut b = std::fs::read(from).unwrap();
    let at = b.len() - 32 - 4 - 1;
    b[at] ^= 0x01;
    std::fs::write(to, b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_saved_under_writes_restores_exactly_the_saved_revision_and_a_flipped_byte_is_refused() {
    let mut c = Cluster::start(3).await;
    let ep = c.endpoints().join(",");
    ok(&["network", "create", "net", "--subnet", "10.30.0.0/24", "--endpoints", &ep]);
    for i in 0..20 {
        ok(&["ip", "allocate", "net", "--owner", &format!("task-{i}"), "--endpoints", &ep]);
    }
    let writers = Writers::start(c.endpoints(), 8);
    let deadline = Instant::now() + Duration::from_secs(30);
    while writers.acked.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "writers made no progress\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acked_before: BTreeSet<String> = writers.acked.lock().unwrap().clone();
    let file = c.tmp.path().join("backup.snap");
    let f = file.to_str().unwrap().to_string();
    let o = cli_async(vec!["snapshot".into(), "save".into(), f.clone(), "--endpoints".into(), ep.clone()]).await;
    assert!(o.status.success(), "snapshot save failed: {}", String::from_utf8_lossy(&o.stderr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = writers.stop().await;
    assert!(acked.len() > acked_before.len(), "the writes went on during the save");

    let saved = json(&["snapshot", "inspect", &f]);
    let rev = saved["revision"].as_i64().unwrap();
    let l = c.leader(Duration::from_secs(5)).await;
    let live_kv = range_at(&c.nodes[l].addr, rev).await;
    let live_keys: BTreeSet<String> = live_kv.iter().map(|kv| String::from_utf8(kv.0.clone()).unwrap()).collect();
    assert!(acked_before.is_subset(&live_keys), "a write acknowledged before the save is not in it");
    let live_client = crate::harness::client_of(c.endpoints());
    let live_nodes = live_client.nodes().await.unwrap();
    let live_net = live_client.inspect_network("net", 1000).await.unwrap();

    // A flipped byte: inspect and restore refuse it by its checksum, restore leaves nothing.
    let bad = c.tmp.path().join("bad.snap");
    flip_last_record_byte(&file, &bad);
    let o = cli(&["snapshot", "inspect", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("checksum"), "a corrupt file passed inspect: {err}");
    let bad_dir = c.tmp.path().join("bad-restore");
    let o = cli(&["snapshot", "restore", bad.to_str().unwrap(), "--data-dir", bad_dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("checksum"), "a corrupt file was restored: {err}");
    assert!(!bad_dir.exists(), "a refused restore left {} behind", bad_dir.display());

    // Restore into a fresh dir and start it.
    let r = c.add_slot();
    let (dir, addr) = (c.nodes[r].dir.to_str().unwrap().to_string(), c.nodes[r].addr.clone());
    let restored = json(&["snapshot", "restore", &f, "--data-dir", &dir, "--listen", &addr]);
    // The restored cluster has a CA of its own: talk to it with its admin credential.
    crate::harness::trust(&addr, &c.nodes[r].dir).await;
    c.spawn(r, &["start", "--data-dir", &dir]);
    let st = status_within(&addr, Duration::from_secs(15)).await;
    let old_id = c.status(l).await.unwrap().cluster_id;
    assert_eq!(st.cluster_id, restored["cluster_id"].as_str().unwrap());
    assert_ne!(st.cluster_id, old_id, "a restore gets a new cluster id");
    assert_eq!(st.members.len(), 1, "the restored cluster has one member: {:?}", st.members);
    let deadline = Instant::now() + Duration::from_secs(15);
    while status_within(&addr, Duration::from_secs(5)).await.state != "leader" {
        assert!(Instant::now() < deadline, "the restored node did not become leader\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Exactly the saved revision: every key with its revisions and version.
    let got = range_at(&addr, 0).await;
    assert_eq!(got.len(), live_kv.len());
    assert!(got == live_kv, "the restored keys differ from the cluster's at revision {rev}");
    assert_eq!(status_within(&addr, Duration::from_secs(5)).await.revision, rev);
    let rc = crate::harness::client_of([addr.clone()]);
    let got_nodes = registry(&rc.nodes().await.unwrap());
    for n in registry(&live_nodes) {
        assert!(got_nodes.contains(&n), "registry entry missing or changed after restore: {n}\n{got_nodes:#?}");
    }
    assert_eq!(allocations(&rc.inspect_network("net", 1000).await.unwrap()), allocations(&live_net));
    assert_eq!(rc.inspect_network("net", 1000).await.unwrap().network, live_net.network);

    // The old cluster's tokens are refused by the new one: it has a CA of its own, so the
    // joiner's TLS handshake fails on the digest before the secret is sent.
    let j = c.add_slot();
    let (jdir, jaddr) = (c.nodes[j].dir.to_str().unwrap().to_string(), c.nodes[j].addr.clone());
    let o = cli(&["join", "--data-dir", &jdir, "--listen", &jaddr, "--token", &c.manager_token, &addr]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("CA digest"), "an old token was accepted: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_is_refused_while_a_quorum_answers_and_changes_nothing() {
    let mut c = Cluster::start(3).await;
    ok(&["kv", "put", "k", "v", "--endpoints", &c.endpoints().join(",")]);
    let l = c.leader(Duration::from_secs(5)).await;
    let s = (l + 1) % 3;
    c.kill9(s);
    let dir = c.nodes[s].dir.to_str().unwrap().to_string();
    let o = cli(&["recover", "--data-dir", &dir]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "recover went ahead with a quorum up");
    assert!(err.contains("refused") && err.contains("quorum"), "unclear refusal: {err}");
    // Nothing changed: the node rejoins its three-voter cluster and catches up.
    ok(&["kv", "put", "k2", "v2", "--endpoints", &c.nodes[l].addr]);
    c.restart(s);
    c.wait_caught_up(s, Duration::from_secs(30)).await;
    let st = c.status(s).await.unwrap();
    assert_eq!(st.members.iter().filter(|m| m.role == "voter").count(), 3, "{:?}", st.members);
    assert_eq!(dump(&c, s).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_losing_two_of_three_masters_recover_serves_alone_keeps_acked_writes_and_fresh_masters_join() {
    let mut c = Cluster::start(3).await;
    let writers = Writers::start(c.endpoints(), 8);
    let deadline = Instant::now() + Duration::from_secs(30);
    while writers.acked.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "writers made no progress\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two masters are lost for good while the writes go on; then the survivor stops.
    // The follower goes first and the leader only after more writes were acknowledged:
    // those needed the survivor's vote, so it holds every acknowledged entry (a write
    // that only the two lost masters stored would be lost with them, as in any Raft).
    let l = c.leader(Duration::from_secs(5)).await;
    let s = (l + 1) % 3;
    let other = 3 - l - s;
    c.kill9(other);
    let n = writers.acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while writers.acked.lock().unwrap().len() < n + 50 {
        assert!(Instant::now() < deadline, "no writes acknowledged by the leader and the survivor\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.kill9(l);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kill9(s);
    let acked = writers.stop().await;

    let dir = c.nodes[s].dir.to_str().unwrap().to_string();
    let out = json(&["recover", "--data-dir", &dir]);
    assert_eq!(out["voters_before"].as_u64(), Some(3), "{out}");
    assert_eq!(out["answered"].as_array().map(|a| a.len()), Some(0), "{out}");
    c.restart(s);
    let addr = c.nodes[s].addr.clone();
    assert_eq!(c.leader(Duration::from_secs(15)).await, s);
    ok(&["kv", "put", "after", "recover", "--endpoints", &addr]);
    let keys: BTreeSet<String> = dump(&c, s).await.into_iter().map(|(k, ..)| k).collect();
    let lost: Vec<&String> = acked.difference(&keys).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    assert!(keys.contains("after"));

    // Two fresh masters join the survivor with its cluster's token.
    let token = ok(&["token", "manager", "-q", "--endpoints", &addr]).trim().to_string();
    let mut fresh = Vec::new();
    for _ in 0..2 {
        let i = c.add_slot();
        let (d, a) = (c.nodes[i].dir.to_str().unwrap().to_string(), c.nodes[i].addr.clone());
        c.spawn(i, &["join", "--data-dir", &d, "--listen", &a, "--token", &token, &addr]);
        fresh.push(i);
    }
    c.wait_voters(3).await;
    for i in fresh {
        c.wait_caught_up(i, Duration::from_secs(30)).await;
        assert_eq!(dump(&c, i).await, dump(&c, s).await, "node {i} differs from the survivor");
    }
    ok(&["kv", "put", "three", "voters", "--endpoints", &addr]);
}

/// Puts `n` keys `prefix/i`, 16 at a time, to `addr`; returns each key's revision.
async fn put_many(addr: &str, prefix: &str, n: usize) -> Vec<(String, i64)> {
    let ch = agent_channel(addr).await.expect("connect");
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let puts = chunk.iter().map(|i| {
            let mut kv = KvClient::new(ch.clone());
            let key = format!("{prefix}/{i:06}");
            async move {
                let req = PutRequest { key: key.clone().into_bytes(), value: vec![b'x'; 64], ..Default::default() };
                let r = kv.put(req).await.expect("put").into_inner();
                (key, r.header.unwrap().revision)
            }
        });
        out.extend(futures::future::join_all(puts).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_in_the_middle_of_a_snapshot_install_leaves_the_old_or_the_new_state_then_catches_up() {
    let mut c = Cluster::start_with(3, &["--snapshot-every-entries", "1000"]).await;
    let l = c.leader(Duration::from_secs(5)).await;
    let (v, other) = ((l + 1) % 3, (l + 2) % 3);
    let laddr = c.nodes[l].addr.clone();
    put_many(&laddr, "a", 300).await;
    c.wait_caught_up(v, Duration::from_secs(30)).await;
    let old = c.status(v).await.unwrap();
    c.kill9(v);

    // While v is down: a /14 of allocations (a snapshot big enough to take a while to
    // install) and enough entries that the log v needs is purged.
    let lc = crate::harness::client_of([laddr.clone()]);
    lc.create_network(client::NetworkSpec {
        name: "big".into(),
        subnets: vec!["10.64.0.0/14".into()],
        gateway: None,
        reserve: vec![],
        quarantine_ms: None,
    })
    .await
    .unwrap();
    for b in 0..1000 {
        let owners: Vec<String> = (0..256).map(|i| format!("t{b}-{i}")).collect();
        lc.allocate_batch("big", owners, None).await.unwrap();
    }
    let b_revs = put_many(&laddr, "b", 1600).await;
    // Snapshots are built in the background: wait for one whose kept log starts past v.
    let deadline = Instant::now() + Duration::from_secs(60);
    let snap = loop {
        let ls = c.status(l).await.unwrap();
        let snap = ls.snapshot_index.unwrap_or(0);
        if snap > old.applied_index.unwrap_or(0) + 1000 {
            break snap;
        }
        assert!(Instant::now() < deadline, "the leader built no snapshot past v: {ls:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let a_keys: BTreeSet<String> = (0..300).map(|i| format!("a/{i:06}")).collect();
    // Round 1 kills v while the received file is being staged (before the install marker
    // is synced): it must come back with the old state. Round 2 kills it while SST files
    // are being written for ingestion (after the marker, the `sm` range already deleted):
    // it must finish the install when it opens, and come back with the new state.
    let rounds: [Round; 2] =
        [("staging", |n| n == "installing.tmp", false), ("ingesting", |n| n.starts_with("ingest-"), true)];
    for (phase, during, expect_new) in rounds {
        let seen = restart_and_kill_during(&mut c, v, during).await;
        eprintln!("{phase}: killed node {v} while {seen} existed");
        // With the others paused, v can only show what its own disk holds.
        c.pause(l, true);
        c.pause(other, true);
        c.restart(v);
        let st = status_within(&c.nodes[v].addr, Duration::from_secs(30)).await;
        let keys: BTreeSet<String> = dump(&c, v).await.into_iter().map(|(k, ..)| k).collect();
        c.kill9(v);
        c.pause(l, false);
        c.pause(other, false);
        let b_keys: BTreeSet<String> =
            b_revs.iter().filter(|(_, r)| *r <= st.revision).map(|(k, _)| k.clone()).collect();
        let want: BTreeSet<String> = a_keys.union(&b_keys).cloned().collect();
        assert!(keys == want, "{phase}: node {v}'s keys are not the state at its revision {}", st.revision);
        if expect_new {
            // At the snapshot sent, which may be one the leader built after `snap`.
            assert!(st.applied_index >= Some(snap), "{phase}: the interrupted install was not finished: {st:?}");
            let log = std::fs::read_to_string(&c.nodes[v].log).unwrap();
            assert!(log.contains("interrupted snapshot install finished"), "{phase}: no redo in the log");
        } else {
            assert_eq!(
                (st.applied_index, st.revision),
                (old.applied_index, old.revision),
                "{phase}: node {v} did not come back with its old state"
            );
        }
    }

    c.restart(v);
    // And then it catches up.
    c.wait_caught_up(v, Duration::from_secs(60)).await;
    assert_eq!(dump(&c, v).await, dump(&c, l).await);
    let vc = crate::harness::client_of([c.nodes[v].addr.clone()]);
    let big = vc.inspect_network("big", 1).await.unwrap().network.unwrap();
    assert_eq!(big.subnets[0].allocated, 256_000, "{big:?}");
}

/// A phase of an install: its name, the file that shows it, and whether a kill then
/// must leave the new state.
type Round = (&'static str, fn(&str) -> bool, bool);

/// Restarts node `v` and kill -9s it as soon as a file named so that `during` holds
/// appears in its snapshot dir; returns that name.
async fn restart_and_kill_during(c: &mut Cluster, v: usize, during: fn(&str) -> bool) -> String {
    let snap_dir = c.nodes[v].dir.join("snapshot");
    c.restart(v);
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let found = std::fs::read_dir(&snap_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| during(n));
        if let Some(n) = found {
            break n;
        }
        assert!(Instant::now() < deadline, "no such install step seen on node {v}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(1));
    };
    c.kill9(v);
    seen
}
