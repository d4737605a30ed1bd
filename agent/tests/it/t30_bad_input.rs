//! Bad input gets a clear error and changes nothing.

use std::time::{Duration, Instant};

use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};

use crate::harness::{agent_channel, cli, Cluster};

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_duplicate_joins_and_used_data_dirs_are_refused() {
    let c = Cluster::start(1).await;
    let seed = c.nodes[0].addr.clone();
    let dir = c.tmp.path().join("joiner");
    let d = dir.to_str().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let try_join = |token: &str, extra: &[&str]| {
        let mut args = vec!["join", "--data-dir", d, "--listen", &listen, "--token", token];
        args.extend_from_slice(extra);
        args.push(&seed);
        cli(&args)
    };

    let o = try_join("not-a-token", &[]);
    assert!(!o.status.success());
    assert!(stderr_of(&o).contains("malformed token"), "{}", stderr_of(&o));

    // A token whose CA digest is not this cluster's: the TLS handshake fails before the
    // secret is sent.
    let other_cluster = coord::token::format_token(&"ab".repeat(32), "abcdefghijklmnopqrstuvwxyz");
    let o = try_join(&other_cluster, &[]);
    assert!(!o.status.success());
    assert!(stderr_of(&o).contains("CA digest"), "{}", stderr_of(&o));

    let digest = c.manager_token.split('-').nth(2).unwrap();
    let wrong_secret = format!("CLTKN-1-{digest}-abcdefghijklmnopqrstuvwxyz");
    let o = try_join(&wrong_secret, &[]);
    assert!(!o.status.success());
    assert!(stderr_of(&o).contains("invalid join token"), "{}", stderr_of(&o));

    // A node claiming the address of an existing member.
    let o = try_join(&c.manager_token, &["--advertise", &seed]);
    assert!(!o.status.success());
    assert!(stderr_of(&o).contains("already member"), "{}", stderr_of(&o));

    // None of that left a trace: the joiner's dir is reusable and membership unchanged.
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none());
    let s = c.status(0).await.unwrap();
    assert_eq!(s.members.len(), 1);

    // init and join refuse a data dir that holds a node, and name `start`.
    let used = c.nodes[0].dir.to_str().unwrap();
    let o = cli(&["init", "--data-dir", used, "--listen", &listen]);
    assert!(!o.status.success());
    assert!(stderr_of(&o).contains("cluster start"), "{}", stderr_of(&o));
    let o = cli(&["join", "--data-dir", used, "--listen", &listen, "--token", &c.manager_token, &seed]);
    assert!(!o.status.success());
    assert!(stderr_of(&o).contains("cluster start"), "{}", stderr_of(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kv_requests_get_etcd_errors_and_change_nothing() {
    let c = Cluster::start(1).await;
    let mut kv = KvClient::new(agent_channel(&c.nodes[0].addr).await.unwrap()).max_encoding_message_size(64 << 20);
    for i in 0..5 {
        kv.put(PutRequest { key: b"k".to_vec(), value: format!("{i}").into_bytes(), ..Default::default() })
            .await
            .unwrap();
    }
    let rev = |r: &proto::etcdserverpb::RangeResponse| r.header.unwrap().revision;
    let before = kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap().into_inner();

    let e = kv.put(PutRequest { key: vec![], value: b"v".to_vec(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("key is not provided"), "{}", e.message());

    // Over etcd's 1.5 MiB request limit: etcd's own error.
    let big = vec![b'x'; 1600 << 10];
    let e = kv.put(PutRequest { key: b"k".to_vec(), value: big, ..Default::default() }).await.unwrap_err();
    assert!(e.message().contains("request is too large"), "{}", e.message());
    // Over the KV service's 2 MiB message limit: refused before it is decoded.
    let huge = vec![b'x'; 3 << 20];
    let e = kv.put(PutRequest { key: b"k".to_vec(), value: huge, ..Default::default() }).await.unwrap_err();
    assert!(e.message().contains("too large"), "{e:?}");
    // A DeleteRange whose keys are over the limit.
    let e = kv
        .delete_range(proto::etcdserverpb::DeleteRangeRequest {
            key: b"k".to_vec(),
            range_end: vec![b'z'; 1600 << 10],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("request is too large"), "{}", e.message());

    kv.compact(CompactionRequest { revision: rev(&before) - 1, physical: false }).await.unwrap();
    let e = kv.range(RangeRequest { key: b"k".to_vec(), revision: 2, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange);
    assert!(e.message().contains("compacted"), "{}", e.message());
    let e = kv.range(RangeRequest { key: b"k".to_vec(), revision: 1_000_000, ..Default::default() }).await.unwrap_err();
    assert!(e.message().contains("future revision"), "{}", e.message());

    let after = kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(rev(&after), rev(&before), "refused requests took no revision");
    assert_eq!(after.kvs, before.kvs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_without_quorum_fails_unavailable_after_a_bounded_wait() {
    let mut c = Cluster::start(3).await;
    let l = c.leader(Duration::from_secs(5)).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    for i in others {
        c.kill9(i);
    }
    let mut kv = KvClient::new(agent_channel(&c.nodes[l].addr).await.unwrap());
    let t = Instant::now();
    let e = kv.put(PutRequest { key: b"q".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(took < Duration::from_secs(8), "the write hung for {took:?}");
    // Linearizable reads are refused the same way; serializable ones still answer.
    let e = kv.range(RangeRequest { key: b"q".to_vec(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    kv.range(RangeRequest { key: b"q".to_vec(), serializable: true, ..Default::default() }).await.unwrap();
}
