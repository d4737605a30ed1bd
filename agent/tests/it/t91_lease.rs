//! etcd leases against a real 3-master cluster: etcdctl, the etcd-client crate, expiry,
//! and a lease whose countdown survives a kill -9 of the leader.

use std::time::Duration;

use etcd_client::{GetOptions, LeaseTimeToLiveOptions, PutOptions};
use tokio::time::Instant;

use crate::harness::{etcdctl, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lease_grant_put_keepalive_timetolive_revoke() {
    let c = Cluster::start(3).await;
    let out = etcdctl(&c, &["lease", "grant", "30"], None);
    // "lease 694d7a1b6f0c8a04 granted with TTL(30s)"
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    assert!(out.contains("granted with TTL(30s)"), "{out}");
    assert_eq!(etcdctl(&c, &["put", "--lease", &id, "held", "v"], None).trim(), "OK");
    assert_eq!(etcdctl(&c, &["put", "free", "v"], None).trim(), "OK");
    let ttl = etcdctl(&c, &["lease", "timetolive", &id, "--keys"], None);
    assert!(ttl.contains("granted with TTL(30s)") && ttl.contains("attached keys([held])"), "{ttl}");
    let alive = etcdctl(&c, &["lease", "keep-alive", "--once", &id], None);
    assert!(alive.contains("keepalived with TTL(30)"), "{alive}");
    let list = etcdctl(&c, &["lease", "list"], None);
    assert!(list.contains(&id), "{list}");
    assert!(etcdctl(&c, &["lease", "revoke", &id], None).contains("revoked"));
    assert_eq!(etcdctl(&c, &["get", "held"], None).trim(), "", "a revoke deletes the lease's keys");
    assert_eq!(etcdctl(&c, &["get", "free", "--print-value-only"], None).trim(), "v");
    let gone = etcdctl(&c, &["lease", "timetolive", &id], None);
    assert!(gone.contains("already expired"), "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_crate_leases_through_a_follower_expire_and_answer_unknown_ids() {
    let c = Cluster::start(3).await;
    let l = c.leader(Duration::from_secs(5)).await;
    // Everything through a follower: writes and leader work are forwarded.
    let mut e = crate::harness::etcd(&c.nodes[(l + 1) % 3].addr).await;
    let g = e.lease_grant(20, None).await.unwrap();
    assert_eq!(g.ttl(), 20);
    let id = g.id();
    e.put("a", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    e.put("b", "2", Some(PutOptions::new().with_lease(id))).await.unwrap();
    let r = e.get("a", None).await.unwrap();
    assert_eq!(r.kvs()[0].lease(), id);
    // A txn compares on the lease.
    let txn = etcd_client::Txn::new()
        .when([etcd_client::Compare::lease("a", etcd_client::CompareOp::Equal, id)])
        .and_then([etcd_client::TxnOp::put("c", "3", None)]);
    assert!(e.txn(txn).await.unwrap().succeeded());

    let t = e.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!(t.granted_ttl(), 20);
    assert!((18..=20).contains(&t.ttl()), "remaining {}", t.ttl());
    let mut keys: Vec<&[u8]> = t.keys().iter().map(|k| &k[..]).collect();
    keys.sort();
    assert_eq!(keys, vec![&b"a"[..], &b"b"[..]]);

    let (mut keeper, mut stream) = e.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let r = stream.message().await.unwrap().unwrap();
    assert_eq!((r.id(), r.ttl()), (id, 20));
    assert!(e.leases().await.unwrap().leases().iter().any(|s| s.id() == id));

    // Unknown leases: KeepAlive answers TTL 0 (which the crate reports as "lease not
    // found"), TimeToLive -1, a put is refused.
    let ch = crate::harness::agent_channel(&c.nodes[(l + 1) % 3].addr).await.unwrap();
    let req = proto::etcdserverpb::LeaseKeepAliveRequest { id: 0x7777 };
    let mut raw = proto::etcdserverpb::lease_client::LeaseClient::new(ch)
        .lease_keep_alive(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let r = raw.message().await.unwrap().unwrap();
    assert_eq!((r.id, r.ttl), (0x7777, 0));
    let err = e.lease_keep_alive(0x7777).await.unwrap_err();
    assert!(err.to_string().contains("lease not found"), "{err}");
    assert_eq!(e.lease_time_to_live(0x7777, None).await.unwrap().ttl(), -1);
    let err = e.put("x", "1", Some(PutOptions::new().with_lease(0x7777))).await.unwrap_err();
    assert!(err.to_string().contains("lease not found"), "{err}");
    // A duplicate id is refused.
    let dup = e.lease_grant(5, Some(etcd_client::LeaseGrantOptions::new().with_id(id))).await.unwrap_err();
    assert!(dup.to_string().contains("lease already exists"), "{dup}");

    // The minimum TTL is ceil(1.5 x election timeout) = 1 s here; a 2 s lease nobody
    // keeps alive expires, taking its key, within its TTL plus a second.
    let short = e.lease_grant(2, None).await.unwrap();
    e.put("short", "x", Some(PutOptions::new().with_lease(short.id()))).await.unwrap();
    let t0 = Instant::now();
    loop {
        if e.get("short", None).await.unwrap().kvs().is_empty() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(4), "a 2 s lease still holds its key after 4 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(t0.elapsed() >= Duration::from_millis(1_900), "expired early: {:?}", t0.elapsed());
    // The kept-alive lease's keys are still there, and a revoke removes them at once.
    assert_eq!(e.get("a", Some(GetOptions::new())).await.unwrap().kvs().len(), 1);
    e.lease_revoke(id).await.unwrap();
    assert!(e.get("a", None).await.unwrap().kvs().is_empty());
    assert!(e.get("b", None).await.unwrap().kvs().is_empty());
}

/// The must-show: a 30 s lease, no keepalive, the leader killed at 20 s. etcd's new
/// leader restarts the countdown from the full TTL (expiry near 50 s); here the lease
/// still expires at 30 s, within one election timeout plus 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_keeps_its_remaining_ttl_across_a_leader_kill() {
    let mut c = Cluster::start(3).await;
    let l = c.leader(Duration::from_secs(5)).await;
    let mut e = crate::harness::etcd(&c.nodes[l].addr).await;
    let id = e.lease_grant(30, None).await.unwrap().id();
    let granted = Instant::now();
    e.put("session", "x", Some(PutOptions::new().with_lease(id))).await.unwrap();
    tokio::time::sleep_until(granted + Duration::from_secs(20)).await;
    c.kill9(l);
    let survivor = (l + 1) % 3;
    let mut s = crate::harness::etcd(&c.nodes[survivor].addr).await;
    let expired = loop {
        let gone = match s.get("session", Some(GetOptions::new().with_serializable())).await {
            Ok(r) => r.kvs().is_empty(),
            Err(_) => false,
        };
        if gone {
            break granted.elapsed();
        }
        assert!(granted.elapsed() < Duration::from_secs(45), "the lease outlived 45 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("a 30 s lease, leader killed at 20 s, expired after {:.2} s", expired.as_secs_f64());
    // Election timeout 300 ms (max) + 1 s.
    assert!(expired >= Duration::from_millis(29_900), "expired early: {expired:?}");
    assert!(expired <= Duration::from_millis(31_300), "expired late: {expired:?}");
}

/// A renewal is a promise a new leader keeps: a 6 s lease renewed at 3 s, then left
/// alone, with the leader killed at 4 s, still holds its key at 8.5 s (the promise was
/// 9 s). Without a checkpoint covering the renewal, the new leader would count from
/// the grant and expire it near 6.3 s. It still expires in the end, within the 2 x TTL
/// the renewal's checkpoint reaches, plus grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_lease_keeps_its_promise_across_a_leader_kill() {
    let mut c = Cluster::start(3).await;
    let l = c.leader(Duration::from_secs(5)).await;
    let mut e = crate::harness::etcd(&c.nodes[l].addr).await;
    let id = e.lease_grant(6, None).await.unwrap().id();
    let granted = Instant::now();
    e.put("promised", "x", Some(PutOptions::new().with_lease(id))).await.unwrap();
    tokio::time::sleep_until(granted + Duration::from_secs(3)).await;
    let (mut keeper, mut stream) = e.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().ttl(), 6);
    let renewed = Instant::now();
    drop((keeper, stream));
    tokio::time::sleep_until(granted + Duration::from_secs(4)).await;
    c.kill9(l);
    let survivor = (l + 1) % 3;
    let mut s = crate::harness::etcd(&c.nodes[survivor].addr).await;
    tokio::time::sleep_until(renewed + Duration::from_millis(5_500)).await;
    let r = s.get("promised", Some(GetOptions::new().with_serializable())).await.unwrap();
    assert_eq!(r.kvs().len(), 1, "the new leader expired a lease before the TTL its renewal promised");
    loop {
        let gone = s.get("promised", Some(GetOptions::new().with_serializable())).await.map(|r| r.kvs().is_empty());
        if gone.unwrap_or(false) {
            break;
        }
        assert!(renewed.elapsed() < Duration::from_millis(13_300), "the lease outlived 2 x TTL + grace + 1 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "a 6 s lease renewed at 3 s, leader killed at 4 s: gone {:.2} s after the renewal",
        renewed.elapsed().as_secs_f64()
    );
}
