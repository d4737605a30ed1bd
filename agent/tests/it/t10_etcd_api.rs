//! etcd v3 compatibility: a third-party Rust etcd client and Debian's etcdctl work
//! against a 3-node cluster formed by `init` plus two `join`s.

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::harness::{etcdctl, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_crate_works_against_three_node_cluster() {
    let c = Cluster::start(3).await;
    // Talk to a follower on purpose: writes must be forwarded to the leader.
    let l = c.leader(std::time::Duration::from_secs(5)).await;
    let follower = (l + 1) % 3;
    let mut e = crate::harness::etcd(&c.nodes[follower].addr).await;

    let r1 = e.put("app/a", "1", None).await.unwrap();
    let rev_a1 = r1.header().unwrap().revision();
    e.put("app/a", "2", None).await.unwrap();
    e.put("app/b", "3", None).await.unwrap();
    e.put("other", "x", None).await.unwrap();

    let r = e.get("app/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let got: Vec<(&str, &str)> = r.kvs().iter().map(|kv| (kv.key_str().unwrap(), kv.value_str().unwrap())).collect();
    assert_eq!(got, vec![("app/a", "2"), ("app/b", "3")]);
    assert_eq!(r.kvs()[0].version(), 2);
    assert_eq!(r.kvs()[0].create_revision(), rev_a1);

    let r = e.get("app/a", Some(GetOptions::new().with_revision(rev_a1))).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "1", "read at an old revision");

    let r = e.get("app/", Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(r.kvs().len(), 2);

    // Compare-and-swap on value, then on version.
    let cas = |expect: &str, new: &str| {
        Txn::new()
            .when([Compare::value("app/a", CompareOp::Equal, expect)])
            .and_then([TxnOp::put("app/a", new, None)])
            .or_else([TxnOp::get("app/a", None)])
    };
    assert!(e.txn(cas("2", "cas-1")).await.unwrap().succeeded());
    assert!(!e.txn(cas("2", "cas-2")).await.unwrap().succeeded());
    let by_version =
        Txn::new().when([Compare::version("app/a", CompareOp::Equal, 3)]).and_then([TxnOp::put("app/a", "v4", None)]);
    assert!(e.txn(by_version).await.unwrap().succeeded());
    let r = e.get("app/a", None).await.unwrap();
    assert_eq!((r.kvs()[0].value_str().unwrap(), r.kvs()[0].version()), ("v4", 4));

    let d = e.delete("app/", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    assert_eq!(d.deleted(), 2);
    assert!(e.get("app/a", None).await.unwrap().kvs().is_empty());

    let members = e.member_list().await.unwrap();
    assert_eq!(members.members().len(), 3);
    assert!(members.members().iter().all(|m| !m.is_learner()));

    let s = e.status().await.unwrap();
    assert!(s.leader() != 0);
    assert!(s.raft_index() > 0);

    // A linearizable read on a follower sees the write just made through another member.
    let mut e2 = crate::harness::etcd(&c.nodes[l].addr).await;
    e2.put("fresh", "yes", None).await.unwrap();
    assert_eq!(e.get("fresh", None).await.unwrap().kvs()[0].value_str().unwrap(), "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_against_three_node_cluster() {
    let c = Cluster::start(3).await;
    assert_eq!(etcdctl(&c, &["put", "foo", "bar"], None).trim(), "OK");
    assert_eq!(etcdctl(&c, &["put", "foo2", "baz"], None).trim(), "OK");
    let out = etcdctl(&c, &["get", "foo", "--prefix"], None);
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["foo", "bar", "foo2", "baz"]);

    let json = etcdctl(&c, &["get", "foo", "-w", "json"], None);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rev = v["kvs"][0]["mod_revision"].as_i64().unwrap();
    etcdctl(&c, &["put", "foo", "newer"], None);
    let old = etcdctl(&c, &["get", "foo", &format!("--rev={rev}")], None);
    assert_eq!(old.lines().collect::<Vec<_>>(), vec!["foo", "bar"]);

    let keys = etcdctl(&c, &["get", "foo", "--prefix", "--keys-only"], None);
    assert_eq!(keys.split_whitespace().collect::<Vec<_>>(), vec!["foo", "foo2"]);

    // txn: compares, blank line, success ops, blank line, failure ops.
    let txn = "value(\"foo\") = \"newer\"\nversion(\"foo\") = \"2\"\n\nput foo swapped\n\nput foo failed\n\n";
    let out = etcdctl(&c, &["txn"], Some(txn));
    assert!(out.starts_with("SUCCESS"), "txn output: {out}");
    let out = etcdctl(&c, &["txn"], Some(txn));
    assert!(out.starts_with("FAILURE"), "txn output: {out}");
    assert_eq!(etcdctl(&c, &["get", "foo", "--print-value-only"], None).trim(), "failed");

    assert_eq!(etcdctl(&c, &["del", "foo"], None).trim(), "1");
    assert_eq!(etcdctl(&c, &["get", "foo"], None).trim(), "");

    let members = etcdctl(&c, &["member", "list"], None);
    assert_eq!(members.lines().count(), 3, "member list: {members}");
    for n in &c.nodes {
        assert!(members.contains(&n.addr), "member list lacks {}: {members}", n.addr);
    }
    let status = etcdctl(&c, &["endpoint", "status", "-w", "json"], None);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    let leaders: std::collections::BTreeSet<u64> =
        arr.iter().map(|s| s["Status"]["leader"].as_u64().unwrap()).collect();
    assert_eq!(leaders.len(), 1, "all endpoints agree on one leader: {status}");
}
