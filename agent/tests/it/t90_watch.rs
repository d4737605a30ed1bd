//! etcd Watch against a real 3-master cluster: the etcd-client crate, Debian's etcdctl,
//! and a watcher that survives a kill -9 of the master serving it.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::time::Duration;

use etcd_client::{EventType, WatchFilterType, WatchOptions};

use crate::harness::{client_of, dump, etcdctl, etcdctl_cmd, Cluster, Writers};

async fn next_message(s: &mut etcd_client::WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("a watch answer within 10 s")
        .expect("watch stream error")
        .expect("watch stream ended")
}

/// (type, key, value, mod revision, previous value) of every event of a response.
fn events(r: &etcd_client::WatchResponse) -> Vec<(EventType, String, String, i64, Option<String>)> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
                e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_crate_watches_history_live_writes_filters_and_cancels() {
    let c = Cluster::start(3).await;
    let l = c.leader(Duration::from_secs(5)).await;
    // A follower serves the watch from its own state; writes go through the leader.
    let mut w = crate::harness::etcd(&c.nodes[(l + 1) % 3].addr).await;
    let mut e = crate::harness::etcd(&c.nodes[l].addr).await;
    let first = e.put("app/a", "1", None).await.unwrap().header().unwrap().revision();
    e.put("app/a", "2", None).await.unwrap();
    e.put("other", "x", None).await.unwrap();
    // A txn writes two keys in one revision: one response carries both.
    let txn = etcd_client::Txn::new()
        .and_then([etcd_client::TxnOp::put("app/b", "3", None), etcd_client::TxnOp::delete("app/a", None)]);
    let txn_rev = e.txn(txn).await.unwrap().header().unwrap().revision();

    // History from the first write, with previous values.
    let mut s = w
        .watch("app/", Some(WatchOptions::new().with_prefix().with_start_revision(first).with_prev_key()))
        .await
        .unwrap();
    let created = next_message(&mut s).await;
    assert!(created.created());
    let mut got = Vec::new();
    while got.len() < 4 {
        let r = next_message(&mut s).await;
        let revs: BTreeSet<i64> = r.events().iter().map(|e| e.kv().unwrap().mod_revision()).collect();
        if revs.contains(&txn_rev) {
            assert_eq!(r.events().iter().filter(|e| e.kv().unwrap().mod_revision() == txn_rev).count(), 2);
        }
        got.extend(events(&r));
    }
    assert_eq!(
        got,
        vec![
            (EventType::Put, "app/a".into(), "1".into(), first, None),
            (EventType::Put, "app/a".into(), "2".into(), first + 1, Some("1".into())),
            (EventType::Put, "app/b".into(), "3".into(), txn_rev, None),
            (EventType::Delete, "app/a".into(), "".into(), txn_rev, Some("2".into())),
        ]
    );

    // Live writes reach the same watcher; a second watcher on the stream filters puts.
    let no_put = WatchOptions::new().with_prefix().with_filters([WatchFilterType::NoPut]).with_watch_id(7);
    s.watch("app/", Some(no_put)).await.unwrap();
    let r = next_message(&mut s).await;
    assert!(r.created() && r.watch_id() == 7, "{r:?}");
    // A duplicate id is refused.
    s.watch("app/", Some(WatchOptions::new().with_watch_id(7))).await.unwrap();
    let r = next_message(&mut s).await;
    assert!(r.canceled() && r.cancel_reason().contains("duplicate"), "{r:?}");
    let live = e.put("app/c", "4", None).await.unwrap().header().unwrap().revision();
    e.delete("app/c", None).await.unwrap();
    let mut by_watcher: std::collections::BTreeMap<i64, Vec<(EventType, i64)>> = Default::default();
    while by_watcher.values().map(Vec::len).sum::<usize>() < 3 {
        let r = next_message(&mut s).await;
        for ev in r.events() {
            by_watcher.entry(r.watch_id()).or_default().push((ev.event_type(), ev.kv().unwrap().mod_revision()));
        }
    }
    assert_eq!(by_watcher[&0], vec![(EventType::Put, live), (EventType::Delete, live + 1)]);
    assert_eq!(by_watcher[&7], vec![(EventType::Delete, live + 1)]);

    // RequestProgress: every watcher is synced, so it answers with the current revision.
    s.request_progress().await.unwrap();
    let r = next_message(&mut s).await;
    assert_eq!((r.watch_id(), r.events().len()), (-1, 0));
    assert_eq!(r.header().unwrap().revision(), live + 1);

    // Cancel: acknowledged, and nothing more arrives for that watcher.
    s.cancel(7).await.unwrap();
    let r = next_message(&mut s).await;
    assert!(r.canceled() && r.watch_id() == 7, "{r:?}");
    e.delete("app/b", None).await.unwrap();
    let r = next_message(&mut s).await;
    assert_eq!(r.watch_id(), 0);
    assert_eq!(events(&r)[0].0, EventType::Delete);

    // Below the compact revision, the watcher is canceled and names it.
    e.compact(live, None).await.unwrap();
    let mut s2 = w.watch("app/", Some(WatchOptions::new().with_prefix().with_start_revision(first))).await.unwrap();
    assert!(next_message(&mut s2).await.created());
    let r = next_message(&mut s2).await;
    assert!(r.canceled(), "{r:?}");
    assert_eq!(r.compact_revision(), live + 1, "the oldest revision it may watch from");
    // Just above it, history is served.
    let mut s3 = w.watch("app/", Some(WatchOptions::new().with_prefix().with_start_revision(live + 1))).await.unwrap();
    assert!(next_message(&mut s3).await.created());
    let r = next_message(&mut s3).await;
    assert_eq!(events(&r)[0].3, live + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prefix_live_and_from_a_revision() {
    let c = Cluster::start(3).await;
    let put = |k: &str, v: &str| etcdctl(&c, &["put", k, v], None);
    put("cfg/a", "1");
    let v: serde_json::Value = serde_json::from_str(&etcdctl(&c, &["get", "cfg/a", "-w", "json"], None)).unwrap();
    let rev = v["header"]["revision"].as_i64().unwrap();
    put("cfg/b", "2");
    put("zzz", "not watched");

    // `watch --prefix --rev` replays from the revision, then follows.
    let mut child = etcdctl_cmd(&c, &["watch", "--prefix", "cfg/", &format!("--rev={rev}")]).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut read = |n: usize| -> Vec<String> { (0..n).map(|_| lines.next().unwrap().unwrap()).collect() };
    assert_eq!(read(6), vec!["PUT", "cfg/a", "1", "PUT", "cfg/b", "2"]);
    put("cfg/c", "3");
    etcdctl(&c, &["del", "cfg/a"], None);
    assert_eq!(read(5), vec!["PUT", "cfg/c", "3", "DELETE", "cfg/a"]);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The must-show: a watcher on the leader, the leader killed with -9, the watch resumed
/// on another master from its last revision. Writers write unique keys and never
/// delete, so the committed history of the prefix is the final set of keys, one
/// revision each: the events must be exactly those, in revision order, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_another_master_after_its_leader_is_killed() {
    let mut c = Cluster::start(3).await;
    let l = c.leader(Duration::from_secs(5)).await;
    // The watcher's first endpoint is the leader.
    let mut eps = c.endpoints();
    eps.rotate_left(l);
    let watcher = client_of(eps.clone());
    let start = watcher.put("marker", "x").await.unwrap().header.unwrap().revision + 1;
    let mut w = watcher.watch(
        "w",
        client::WatchOptions {
            prefix: true,
            start_revision: start,
            give_up_after: Some(Duration::from_secs(30)),
            ..Default::default()
        },
    );
    let writers = Writers::start(c.endpoints(), 4);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(i64, String)>::new()));
    let collector = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                match w.next().await {
                    Ok(client::WatchItem::Events(evs)) => {
                        let mut s = seen.lock().unwrap();
                        for e in evs {
                            let kv = e.kv.unwrap();
                            s.push((kv.mod_revision, String::from_utf8(kv.key).unwrap()));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return (w.resumes, Err(e)),
                }
                if seen.lock().unwrap().last().is_some_and(|(_, k)| k == "wdone") {
                    return (w.resumes, Ok(()));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = seen.lock().unwrap().len();
    assert!(before_kill > 0, "the watcher saw nothing before the kill");
    c.kill9(l);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked = writers.stop().await;
    // The last write: when the watcher sees it, it has seen everything before it.
    let survivor = (l + 1) % 3;
    client_of([c.nodes[survivor].addr.clone()]).put("wdone", "end").await.unwrap();
    let (resumes, r) = tokio::time::timeout(Duration::from_secs(30), collector).await.expect("watch finished").unwrap();
    r.unwrap();
    assert!(resumes >= 1, "the watch never moved to another master");
    let seen = seen.lock().unwrap().clone();
    let committed: BTreeSet<String> =
        dump(&c, survivor).await.into_iter().map(|(k, ..)| k).filter(|k| k.starts_with('w')).collect();
    let keys: Vec<String> = seen.iter().map(|(_, k)| k.clone()).collect();
    let unique: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(unique.len(), keys.len(), "an event was delivered twice");
    assert!(seen.windows(2).all(|p| p[0].0 < p[1].0), "events out of revision order");
    assert_eq!(unique, committed, "the events differ from the committed writes");
    let missing: Vec<&String> = acked.iter().filter(|k| !unique.contains(*k)).collect();
    assert!(missing.is_empty(), "acknowledged writes without an event: {missing:?}");
    // Every revision of the range is there: one put per revision, none skipped.
    assert!(seen.windows(2).all(|p| p[1].0 == p[0].0 + 1), "a revision of the range is missing");
    assert!(acked.len() > 50, "too few writes to mean anything: {}", acked.len());
    println!("watch across a leader kill: {} events, {} acknowledged, {resumes} resume(s)", keys.len(), acked.len());
}
