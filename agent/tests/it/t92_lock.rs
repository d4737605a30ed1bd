//! Locks and elections against a real 3-master cluster: etcdctl's client-side recipes
//! and the etcd-client crate's Lock and Election RPCs, which share etcd's key layout.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::time::Duration;

use etcd_client::{LockOptions, ResignOptions};
use tokio::time::Instant;

use crate::harness::{etcdctl_cmd, Cluster};

/// Lines of a child's stdout, read on a thread, each with when it arrived.
fn lines(child: &mut Child) -> std::sync::mpsc::Receiver<(Instant, String)> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), l)).is_err() {
                return;
            }
        }
    });
    rx
}

fn next_line(rx: &std::sync::mpsc::Receiver<(Instant, String)>) -> (Instant, String) {
    rx.recv_timeout(Duration::from_secs(15)).expect("a line within 15 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_second_holder_waits_for_the_first_to_exit() {
    let c = Cluster::start(3).await;
    let mut a = etcdctl_cmd(&c, &["lock", "jobs", "--", "sh", "-c", "echo A $ETCD_LOCK_REV; sleep 2; echo A-done"])
        .spawn()
        .unwrap();
    let a_out = lines(&mut a);
    let (_, first) = next_line(&a_out);
    assert!(first.starts_with("A "), "{first}");
    let mut b = etcdctl_cmd(&c, &["lock", "jobs", "--", "sh", "-c", "echo B $ETCD_LOCK_REV"]).spawn().unwrap();
    let b_out = lines(&mut b);
    let (a_done, l) = next_line(&a_out);
    assert_eq!(l, "A-done");
    let (b_got, l) = next_line(&b_out);
    assert!(l.starts_with("B "), "{l}");
    assert!(b_got >= a_done, "the second holder ran before the first released");
    // The fencing tokens (create revisions) grow with each holder.
    let token = |s: &str| s.split_whitespace().nth(1).unwrap().parse::<i64>().unwrap();
    assert!(token(&l) > token(&first), "{first} then {l}");
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_campaigners_and_an_observer() {
    let c = Cluster::start(3).await;
    let mut observer = etcdctl_cmd(&c, &["elect", "-l", "boss"]).spawn().unwrap();
    let seen = lines(&mut observer);
    let mut alpha = etcdctl_cmd(&c, &["elect", "boss", "alpha"]).spawn().unwrap();
    let alpha_out = lines(&mut alpha);
    // A campaigner prints its key, then its proposal, once it leads.
    let (_, key) = next_line(&alpha_out);
    assert!(key.starts_with("boss/"), "{key}");
    assert_eq!(next_line(&alpha_out).1, "alpha");
    assert_eq!(next_line(&seen).1, key);
    assert_eq!(next_line(&seen).1, "alpha");
    let mut beta = etcdctl_cmd(&c, &["elect", "boss", "beta"]).spawn().unwrap();
    let beta_out = lines(&mut beta);
    assert!(beta_out.recv_timeout(Duration::from_secs(1)).is_err(), "beta leads while alpha does");
    // alpha resigns on SIGINT; beta leads, and the observer follows.
    Command::new("kill").args(["-INT", &alpha.id().to_string()]).status().unwrap();
    alpha.wait().unwrap();
    let (_, beta_key) = next_line(&beta_out);
    assert_eq!(next_line(&beta_out).1, "beta");
    assert_eq!(next_line(&seen).1, beta_key);
    assert_eq!(next_line(&seen).1, "beta");
    for mut p in [beta, observer] {
        p.kill().unwrap();
        p.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_crate_lock_and_election_rpcs() {
    let c = Cluster::start(3).await;
    let l = c.leader(Duration::from_secs(5)).await;
    let mut e = crate::harness::etcd(&c.nodes[(l + 1) % 3].addr).await;
    let lease1 = e.lease_grant(30, None).await.unwrap().id();
    let lease2 = e.lease_grant(30, None).await.unwrap().id();

    // Lock: the key is name/<lease hex>; a second locker waits until the first unlocks.
    let first = e.lock("res", Some(LockOptions::new().with_lease(lease1))).await.unwrap();
    assert_eq!(first.key(), format!("res/{lease1:x}").as_bytes());
    let token1 = e.get(first.key(), None).await.unwrap().kvs()[0].create_revision();
    let mut e2 = crate::harness::etcd(&c.nodes[l].addr).await;
    let waiter = tokio::spawn(async move {
        let r = e2.lock("res", Some(LockOptions::new().with_lease(lease2))).await.unwrap();
        (Instant::now(), r.key().to_vec())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the second locker got the lock while the first held it");
    let released = Instant::now();
    e.unlock(first.key()).await.unwrap();
    let (got_at, key2) = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
    assert!(got_at >= released);
    let token2 = e.get(key2.clone(), None).await.unwrap().kvs()[0].create_revision();
    assert!(token2 > token1, "fencing tokens grow");
    // A fenced write: accepted with the holder's token, refused with the old one.
    let fenced = |key: Vec<u8>, token: i64| {
        etcd_client::Txn::new()
            .when([etcd_client::Compare::create_revision(key, etcd_client::CompareOp::Equal, token)])
            .and_then([etcd_client::TxnOp::put("register", "v", None)])
    };
    assert!(e.txn(fenced(key2.clone(), token2)).await.unwrap().succeeded());
    assert!(!e.txn(fenced(first.key().to_vec(), token1)).await.unwrap().succeeded());
    // A lock whose lease ends while it waits is not handed out.
    let lease3 = e.lease_grant(2, None).await.unwrap().id();
    let r = tokio::time::timeout(Duration::from_secs(10), e.lock("res", Some(LockOptions::new().with_lease(lease3))))
        .await
        .unwrap();
    let err = r.unwrap_err().to_string();
    assert!(err.contains("session is expired"), "{err}");
    e.unlock(key2).await.unwrap();

    // Election: campaign, leader, proclaim, observe, resign.
    let won = e.campaign("chief", "v1", lease1).await.unwrap();
    let lk = won.leader().unwrap().clone();
    assert_eq!(lk.key(), format!("chief/{lease1:x}").as_bytes());
    let leader = e.leader("chief").await.unwrap();
    assert_eq!(leader.kv().unwrap().value(), b"v1");
    let mut obs = e.observe("chief").await.unwrap();
    assert_eq!(obs.message().await.unwrap().unwrap().kv().unwrap().value(), b"v1");
    e.proclaim("v2", Some(etcd_client::ProclaimOptions::new().with_leader(lk.clone()))).await.unwrap();
    assert_eq!(obs.message().await.unwrap().unwrap().kv().unwrap().value(), b"v2");
    let mut e3 = crate::harness::etcd(&c.nodes[l].addr).await;
    let second = tokio::spawn(async move { e3.campaign("chief", "w1", lease2).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "a second campaigner leads while the first does");
    e.resign(Some(ResignOptions::new().with_leader(lk.clone()))).await.unwrap();
    let won2 = tokio::time::timeout(Duration::from_secs(10), second).await.unwrap().unwrap();
    assert!(won2.leader().unwrap().rev() > lk.rev());
    assert_eq!(obs.message().await.unwrap().unwrap().kv().unwrap().value(), b"w1");
    // The old leader's proclaim is refused.
    let err = e.proclaim("stale", Some(etcd_client::ProclaimOptions::new().with_leader(lk))).await.unwrap_err();
    assert!(err.to_string().contains("not leader"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_cli_leases_and_a_lock_around_a_command() {
    let c = Cluster::start(1).await;
    let ep = c.nodes[0].addr.clone();
    let tls = c.nodes[0].dir.join("tls").display().to_string();
    let run = |args: &[&str]| {
        let o = Command::new(crate::harness::bin())
            .args(args)
            .args(["--endpoints", &ep, "--cert-dir", &tls])
            .output()
            .unwrap();
        assert!(o.status.success(), "cluster {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let out = run(&["lease", "grant", "40"]);
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    assert!(out.contains("granted with TTL(40s)"), "{out}");
    assert!(run(&["lease", "keepalive", "--once", &id]).contains("keepalived with TTL(40)"));
    assert!(run(&["lease", "ttl", &id, "--keys"]).contains("granted with TTL(40s)"));
    assert!(run(&["lease", "ls"]).contains(&id));
    assert!(run(&["lease", "revoke", &id]).contains("revoked"));
    assert!(run(&["lease", "ttl", &id]).contains("already expired"));
    // The command sees the lock's key and fencing token.
    let o = Command::new(crate::harness::bin())
        .args(["lock", "deploy", "--endpoints", &ep, "--cert-dir", &tls, "--"])
        .args(["sh", "-c", "echo $CLUSTER_LOCK_KEY $CLUSTER_LOCK_TOKEN"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let mut parts = out.split_whitespace();
    assert!(parts.next().unwrap().starts_with("deploy/"), "{out}");
    assert!(parts.next().unwrap().parse::<i64>().unwrap() > 0, "{out}");
    // Released afterwards: nothing is left under the lock's name.
    let left = run(&["kv", "get", "deploy/", "--prefix", "--keys-only"]);
    assert_eq!(left.trim(), "", "the lock key outlived the command");
}
