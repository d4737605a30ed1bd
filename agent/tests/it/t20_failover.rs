//! Failures: a killed leader is replaced fast and loses nothing acknowledged; a node far
//! behind catches up by snapshot; a whole-cluster kill -9 loses no acknowledged write.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::PutRequest;

use crate::harness::{agent_channel, dump, Cluster, Writers};

async fn assert_all_acked_and_equal(c: &Cluster, acked: &BTreeSet<String>) {
    let first = dump(c, 0).await;
    let keys: BTreeSet<String> = first.iter().map(|(k, ..)| k.clone()).collect();
    let missing: Vec<&String> = acked.difference(&keys).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // Replicas converge: every node holds exactly node 0's data (allowing a moment for
    // the last commit to reach all of them).
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 1..c.nodes.len() {
        loop {
            let (a, b) = (dump(c, 0).await, dump(c, i).await);
            if a == b {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i}'s data differs from node 0's ({} vs {} keys)",
                b.len(),
                a.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn put_via_any(c: &Cluster, nodes: &[usize], key: &str) -> bool {
    for &i in nodes {
        if let Some(ch) = agent_channel(&c.nodes[i].addr).await {
            let req = PutRequest { key: key.into(), value: b"p".to_vec(), ..Default::default() };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), KvClient::new(ch).put(req)).await {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_is_replaced_within_1s_and_no_acked_write_is_lost() {
    let mut c = Cluster::start(3).await;
    let writers = Writers::start(c.endpoints(), 8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = c.leader(Duration::from_secs(5)).await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let killed_at = Instant::now();
    c.kill9(old);
    let mut n = 0;
    while !put_via_any(&c, &survivors, &format!("probe/{n}")).await {
        n += 1;
        assert!(killed_at.elapsed() < Duration::from_secs(10), "no write succeeded 10 s after the kill\n{}", c.logs());
    }
    let took = killed_at.elapsed();
    eprintln!("first write after leader kill: {took:?}");
    assert!(took < Duration::from_secs(1), "new leader served a write only {took:?} after the kill");
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.restart(old);
    c.wait_caught_up(old, Duration::from_secs(30)).await;
    let acked = writers.stop().await;
    assert!(acked.len() > 100, "writers made too little progress: {}", acked.len());
    // Let the last commits reach every node.
    for i in 0..3 {
        c.wait_caught_up(i, Duration::from_secs(30)).await;
    }
    assert_all_acked_and_equal(&c, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_far_behind_catches_up_by_snapshot_install() {
    let mut c = Cluster::start_with(3, &["--snapshot-every-entries", "5000"]).await;
    let l = c.leader(Duration::from_secs(5)).await;
    let victim = (l + 1) % 3;
    c.kill9(victim);
    let leader_only = vec![c.nodes[l].addr.clone()];
    let writers = Writers::start(leader_only, 32);
    // A liveness bound, not a speed check: alone this takes a few seconds.
    let deadline = Instant::now() + Duration::from_secs(180);
    while writers.acked.lock().unwrap().len() < 12_000 {
        let n = writers.acked.lock().unwrap().len();
        assert!(Instant::now() < deadline, "only {n} of 12,000 writes acknowledged in 180 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked = writers.stop().await;
    // A snapshot is built every 5,000 entries here and 1,000 entries are kept behind it,
    // so the entries the stopped node needs next are purged.
    let ls = c.status(l).await.unwrap();
    let snap = ls.snapshot_index.unwrap_or(0);
    assert!(snap >= 9_999, "leader built no second snapshot: {ls:?}");
    c.restart(victim);
    c.wait_caught_up(victim, Duration::from_secs(60)).await;
    let vs = c.status(victim).await.unwrap();
    assert!(
        vs.snapshot_index.unwrap_or(0) >= snap,
        "the lagging node did not install a snapshot (snapshot index {:?})",
        vs.snapshot_index
    );
    let log = std::fs::read_to_string(&c.nodes[victim].log).unwrap();
    assert!(log.contains("snapshot installed"), "no snapshot install in the lagging node's log");
    assert_all_acked_and_equal(&c, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_every_node_during_writes_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3).await;
    let writers = Writers::start(c.endpoints(), 16);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..3 {
        c.kill9(i);
    }
    let acked = writers.stop().await;
    assert!(acked.len() > 100, "writers made too little progress: {}", acked.len());
    for i in 0..3 {
        c.restart(i);
    }
    c.leader(Duration::from_secs(10)).await;
    for i in 0..3 {
        c.wait_caught_up(i, Duration::from_secs(30)).await;
    }
    assert_all_acked_and_equal(&c, &acked).await;
}
