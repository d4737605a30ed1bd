//! Security: who gets in, what each certificate may do, renewal and rotation, and
//! hostile bytes. Every refusal is checked together with "nothing changed": the KV
//! revision, the members, the registry's events and the networks are the same after.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coord::codec::encode;
use coord::types::{TypeConfig, Vote};
use futures::StreamExt;
use openraft::raft::VoteRequest;
use proto::clusterpb as pb;
use proto::clusterpb::cluster_admin_client::ClusterAdminClient;
use proto::clusterpb::ipam_client::IpamClient;
use proto::clusterpb::registry_client::RegistryClient;
use proto::etcdserverpb as epb;
use proto::etcdserverpb::kv_client::KvClient;
use proto::raftpb::raft_client::RaftClient;
use proto::raftpb::{snapshot_chunk, RaftPayload, SnapshotChunk};
use tonic::transport::Channel;
use tonic::Code;

use crate::harness::{agent_channel, cli, same_cluster, trust, Cluster};

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn tls_dir(node_dir: &Path) -> PathBuf {
    node_dir.join("tls")
}

/// Client TLS from `dir/{ca.crt, STEM.crt, STEM.key}`.
fn tls_from(dir: &Path, stem: &str) -> client::ClientTls {
    client::CredentialFiles::in_dir(dir, stem).load().and_then(|c| c.client()).expect("credential")
}

/// Client TLS that trusts `ca_file` and presents no certificate.
fn anonymous(ca_file: &Path) -> client::ClientTls {
    let roots = client::pki::files::read_certs(ca_file).unwrap();
    client::Credentials::new(roots, vec![], None).and_then(|c| c.client()).unwrap()
}

async fn connect(addr: &str, tls: &client::ClientTls) -> Result<Channel, String> {
    let o = client::pki::net::ChannelOptions { connect_timeout: Duration::from_secs(3), ..Default::default() };
    client::pki::net::connect(addr, tls, &o).await.map_err(|e| e.to_string())
}

/// Copies a credential (so that a renewal or rotation in place does not change it).
fn copy_credential(from: &Path, stem: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["ca.crt".to_string(), format!("{stem}.crt"), format!("{stem}.key")] {
        std::fs::copy(from.join(&f), to.join(&f)).unwrap();
    }
}

/// What must not change when a request is refused.
#[derive(Debug, PartialEq)]
struct Snapshot {
    revision: i64,
    members: Vec<u64>,
    events: usize,
    networks: Vec<String>,
}

async fn observe(c: &Cluster) -> Snapshot {
    let s = c.status(0).await.expect("status");
    let mut ipam = IpamClient::new(agent_channel(&c.nodes[0].addr).await.unwrap());
    let nets = ipam.list_networks(pb::ListNetworksRequest {}).await.unwrap().into_inner();
    Snapshot {
        revision: s.revision,
        members: s.members.iter().map(|m| m.node_id).collect(),
        events: c.events().await.len(),
        networks: nets.networks.iter().map(|n| n.name.clone()).collect(),
    }
}

fn vote_payload(term: u64, node: u64) -> RaftPayload {
    let v: VoteRequest<TypeConfig> = VoteRequest::new(Vote::new(term, node), None);
    RaftPayload { data: encode(&v).unwrap() }
}

fn append_payload(term: u64, node: u64) -> RaftPayload {
    let a = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, node),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    RaftPayload { data: encode(&a).unwrap() }
}

fn snapshot_meta_chunk(term: u64, node: u64) -> SnapshotChunk {
    let meta = coord::types::SnapshotMeta::default();
    let data = encode(&(Vote::new_committed(term, node), meta)).unwrap();
    SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Meta(data)) }
}

fn register_req(node_id: u64) -> pb::RegisterRequest {
    pb::RegisterRequest {
        node_id,
        node_secret: "whatever".into(),
        name: format!("squat-{node_id}"),
        addr: "127.0.0.1:1".into(),
        role: "worker".into(),
        resources: Some(pb::Resources { cpus_milli: 1000, memory_mb: 100, disk_mb: 0, ports: vec![] }),
        labels: Default::default(),
    }
}

fn create_net() -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest { name: "evil".into(), subnets: vec!["10.66.0.0/24".into()], ..Default::default() }
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(s) => s.code(),
    }
}

async fn wait_worker_active(c: &Cluster, dir: &Path) -> u64 {
    let file: serde_json::Value = loop {
        if let Ok(b) = std::fs::read(dir.join("node.json")) {
            if let Ok(v) = serde_json::from_slice(&b) {
                break v;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = file["node_id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = c.nodes().await {
            if r.nodes.iter().any(|n| n.node_id == id && n.state == "active") {
                return id;
            }
        }
        assert!(Instant::now() < deadline, "worker {id} never became active");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Until every node the registry knows is active (the masters' own agents included), so
/// that no event of the cluster's start-up lands in the middle of a test.
async fn settle(c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = c.nodes().await {
            if !r.nodes.is_empty() && r.nodes.iter().all(|n| n.state == "active") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the cluster did not settle");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_of_this_cluster_every_call_is_refused() {
    let c = Cluster::start(1).await;
    let other = Cluster::start(1).await;
    let addr = c.nodes[0].addr.clone();
    settle(&c).await;
    let before = observe(&c).await;

    // No certificate: the handshake succeeds (a joiner has none), every call but Join
    // answers unauthenticated.
    let ch = connect(&addr, &anonymous(&tls_dir(&c.nodes[0].dir).join("ca.crt"))).await.unwrap();
    let mut kv = KvClient::new(ch.clone());
    let put = epb::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() };
    assert_eq!(code(kv.put(put.clone()).await), Code::Unauthenticated);
    assert_eq!(
        code(kv.range(epb::RangeRequest { key: b"k".to_vec(), ..Default::default() }).await),
        Code::Unauthenticated
    );
    let mut admin = ClusterAdminClient::new(ch.clone());
    assert_eq!(code(admin.token(pb::TokenRequest { role: "manager".into() }).await), Code::Unauthenticated);
    assert_eq!(code(admin.leave(pb::LeaveRequest { node_id: 1 }).await), Code::Unauthenticated);
    assert_eq!(code(admin.status(pb::StatusRequest {}).await), Code::Unauthenticated);
    assert_eq!(code(admin.save_snapshot(pb::SaveSnapshotRequest {}).await), Code::Unauthenticated);
    let rotate = pb::RotateCaRequest { phase: "start".into(), force: false };
    assert_eq!(code(admin.rotate_ca(rotate).await), Code::Unauthenticated);
    let mut reg = RegistryClient::new(ch.clone());
    assert_eq!(code(reg.register(register_req(1)).await), Code::Unauthenticated);
    assert_eq!(code(reg.nodes(pb::NodesRequest { node_id: 0 }).await), Code::Unauthenticated);
    let mut ipam = IpamClient::new(ch.clone());
    assert_eq!(code(ipam.create_network(create_net()).await), Code::Unauthenticated);
    let alloc = pb::AllocateRequest { network: "evil".into(), owner: "x".into(), ..Default::default() };
    assert_eq!(code(ipam.allocate(alloc).await), Code::Unauthenticated);
    let mut raft = RaftClient::new(ch.clone());
    assert_eq!(code(raft.vote(vote_payload(1_000, 1)).await), Code::Unauthenticated);
    assert_eq!(code(raft.append_entries(append_payload(1_000, 1)).await), Code::Unauthenticated);

    // Another cluster's admin certificate: our master does not know its CA, so the
    // handshake itself fails; nothing reaches a handler.
    let foreign = client::pki::files::read_certs(&tls_dir(&c.nodes[0].dir).join("ca.crt")).unwrap();
    let theirs = client::CredentialFiles::in_dir(&tls_dir(&other.nodes[0].dir), "admin");
    let tls = client::ClientTls::for_server(
        foreign,
        client::pki::files::read_certs(&theirs.cert).unwrap(),
        Some(client::pki::files::read_key(&theirs.key).unwrap()),
        client::pki::cert::SERVER_NAME,
    )
    .unwrap();
    let refused = match connect(&addr, &tls).await {
        Err(_) => true,
        Ok(ch) => KvClient::new(ch).put(put.clone()).await.is_err(),
    };
    assert!(refused, "a certificate of another cluster's CA was accepted");

    assert_eq!(observe(&c).await, before, "a refused call changed the cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_readers_and_removed_masters_get_only_their_own_calls() {
    let mut c = Cluster::start(3).await;
    let addr = c.nodes[0].addr.clone();
    let w = c.add_worker(0, &[]);
    let wid = wait_worker_active(&c, &c.nodes[w].dir).await;
    let rd = c.tmp.path().join("reader");
    let o = cli(&["cert", "issue", "--role", "reader", "--out", rd.to_str().unwrap(), "--endpoints", &addr]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    settle(&c).await;
    let before = observe(&c).await;

    // A worker's certificate: its own registry calls only.
    let ch = connect(&addr, &tls_from(&tls_dir(&c.nodes[w].dir), "node")).await.unwrap();
    let mut raft = RaftClient::new(ch.clone());
    assert_eq!(code(raft.vote(vote_payload(1_000, wid)).await), Code::PermissionDenied);
    assert_eq!(code(raft.append_entries(append_payload(1_000, wid)).await), Code::PermissionDenied);
    let chunks = futures::stream::iter(vec![snapshot_meta_chunk(1_000, wid)]);
    assert_eq!(code(raft.install_snapshot(chunks).await), Code::PermissionDenied);
    let mut admin = ClusterAdminClient::new(ch.clone());
    assert_eq!(code(admin.leave(pb::LeaveRequest { node_id: 1 }).await), Code::PermissionDenied);
    assert_eq!(code(admin.token(pb::TokenRequest { role: "manager".into() }).await), Code::PermissionDenied);
    let mut reg = RegistryClient::new(ch.clone());
    let rm = pb::RemoveNodeRequest { node_id: wid, force: true };
    assert_eq!(code(reg.remove_node(rm).await), Code::PermissionDenied);
    assert_eq!(code(IpamClient::new(ch.clone()).create_network(create_net()).await), Code::PermissionDenied);
    // ... and never as another node: the id comes from the certificate.
    let e = reg.register(register_req(1)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains(&format!("node {wid}")), "{e:?}");
    let first = pb::HeartbeatRequest { node_id: 1, node_secret: "x".into(), seq: 1, prev_leader_id: 0 };
    assert_eq!(code(reg.heartbeat(futures::stream::iter(vec![first])).await), Code::PermissionDenied);
    let held = pb::ReportHeldRequest { node_id: 1, node_secret: "x".into(), held: vec![] };
    assert_eq!(code(IpamClient::new(ch.clone()).report_held(held).await), Code::PermissionDenied);

    // A reader: reads and watches, no writes.
    let ch = connect(&addr, &tls_from(&rd, "reader")).await.unwrap();
    let mut kv = KvClient::new(ch.clone());
    kv.range(epb::RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap();
    RegistryClient::new(ch.clone()).nodes(pb::NodesRequest { node_id: 0 }).await.unwrap();
    let put = epb::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() };
    assert_eq!(code(kv.put(put.clone()).await), Code::PermissionDenied);
    let del = epb::DeleteRangeRequest { key: b"k".to_vec(), ..Default::default() };
    assert_eq!(code(kv.delete_range(del).await), Code::PermissionDenied);
    let txn = epb::TxnRequest {
        success: vec![epb::RequestOp { request: Some(epb::request_op::Request::RequestPut(put.clone())) }],
        ..Default::default()
    };
    assert_eq!(code(kv.txn(txn).await), Code::PermissionDenied);
    assert_eq!(code(kv.compact(epb::CompactionRequest { revision: 1, physical: false }).await), Code::PermissionDenied);
    assert_eq!(code(IpamClient::new(ch.clone()).create_network(create_net()).await), Code::PermissionDenied);

    // A master's certificate claiming to be another master is refused on Raft.
    let m2 = connect(&addr, &tls_from(&tls_dir(&c.nodes[1].dir), "node")).await.unwrap();
    let e = RaftClient::new(m2).vote(vote_payload(1_000, 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(observe(&c).await, before, "a refused call changed the cluster");

    // A master that left keeps a valid certificate, and is refused on Raft.
    let m3 = c.status(2).await.unwrap().node_id;
    let keep = c.tmp.path().join("left");
    copy_credential(&tls_dir(&c.nodes[2].dir), "node", &keep);
    let o = cli(&["leave", &m3.to_string(), "--endpoints", &addr]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = c.wait_exit(2, Duration::from_secs(10)).await;
    let after_leave = observe(&c).await;
    let ch = connect(&addr, &tls_from(&keep, "node")).await.unwrap();
    let e = RaftClient::new(ch.clone()).vote(vote_payload(1_000, m3)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("was removed"), "{e:?}");
    let e = RaftClient::new(ch).append_entries(append_payload(1_000, m3)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let s = c.status(0).await.unwrap();
    assert_eq!(s.state, "leader", "a removed master's vote disturbed the leader");
    assert_eq!(observe(&c).await, after_leave);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_cluster_stops_at_the_handshake_before_its_secret() {
    let c = Cluster::start(1).await;
    let impostor = Cluster::start(1).await;
    settle(&c).await;
    settle(&impostor).await;
    let before = (observe(&c).await, observe(&impostor).await);
    // Our token, but the seed address is another cluster's master: its CA does not
    // have the token's digest, so the joiner stops before it sends anything.
    let dir = c.tmp.path().join("joiner");
    let listen =
        format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let o = cli(&[
        "join",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        &listen,
        "--token",
        &c.worker_token,
        &impostor.nodes[0].addr,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("CA digest"), "{err}");
    // The impostor saw no request: no join was refused there, nothing was allocated.
    let log = std::fs::read_to_string(&impostor.nodes[0].log).unwrap();
    assert!(!log.contains("join{"), "the impostor received a join request:\n{log}");
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none());
    assert_eq!((observe(&c).await, observe(&impostor).await), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_and_nodes_renew_without_a_restart() {
    let mut c = Cluster::start_with(1, &["--cert-validity-secs", "30"]).await;
    let addr = c.nodes[0].addr.clone();
    let w = c.add_worker(0, &[]);
    let wid = wait_worker_active(&c, &c.nodes[w].dir).await;
    let old = c.tmp.path().join("old-worker-cert");
    copy_credential(&tls_dir(&c.nodes[w].dir), "node", &old);
    let pem = client::pki::files::read_certs(&old.join("node.crt")).unwrap();
    let not_after = client::pki::PeerIdentity::from_der(&pem[0]).unwrap().not_after_unix;
    // The old certificate works while valid.
    let ch = connect(&addr, &tls_from(&old, "node")).await.unwrap();
    let first = pb::HeartbeatRequest { node_id: wid, node_secret: "x".into(), seq: 1, prev_leader_id: 0 };
    let e = RegistryClient::new(ch.clone()).heartbeat(futures::stream::iter(vec![first.clone()])).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "authenticated, then refused for the wrong secret: {e:?}");
    while now_unix() <= not_after + 1 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Expired: refused on a new connection (at the handshake) and on the open one.
    let refused = match connect(&addr, &tls_from(&old, "node")).await {
        Err(_) => true,
        Ok(ch) => RegistryClient::new(ch).heartbeat(futures::stream::iter(vec![first.clone()])).await.is_err(),
    };
    assert!(refused, "an expired certificate made a new connection");
    let e = RegistryClient::new(ch).heartbeat(futures::stream::iter(vec![first])).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("expired"), "{e:?}");

    // Meanwhile both nodes renewed in place: same processes, sessions never lost.
    assert!(c.wait_exit(w, Duration::from_millis(100)).await.is_none(), "the worker restarted");
    let s = c.status(0).await.unwrap();
    assert!(s.cert_not_after > now_unix(), "the master's certificate was not renewed");
    let r = c.nodes().await.unwrap();
    let wn = r.nodes.iter().find(|n| n.node_id == wid).unwrap();
    assert_eq!(wn.state, "active");
    assert!(wn.cert_not_after > now_unix(), "the worker's session presents an expired certificate: {wn:?}");
    let lost: Vec<_> =
        c.events().await.into_iter().filter(|e| e.to_state == "unreachable" || e.to_state == "down").collect();
    assert!(lost.is_empty(), "renewal cost a session: {lost:?}");
    let o = cli(&["kv", "put", "after", "renewal", "--endpoints", &addr]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_refused_and_its_successor_works() {
    let mut c = Cluster::start(1).await;
    let addr = c.nodes[0].addr.clone();
    let old = c.worker_token.clone();
    let o = cli(&["token", "rotate", "worker", "-q", "--endpoints", &addr]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let new = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert_ne!(new, old);
    settle(&c).await;
    let before = observe(&c).await;
    let dir = c.tmp.path().join("old-token");
    let listen =
        format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let o = cli(&["join", "--data-dir", dir.to_str().unwrap(), "--listen", &listen, "--token", &old, &addr]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid join token"), "{o:?}");
    assert_eq!(observe(&c).await, before, "a refused join changed the cluster");
    // The manager token did not change; the new worker token works.
    c.worker_token = new;
    let w = c.add_worker(0, &[]);
    wait_worker_active(&c, &c.nodes[w].dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_ca_rotation_every_node_is_connected_and_new_joins_work() {
    let mut c = Cluster::start(3).await;
    let addr = c.nodes[0].addr.clone();
    let w = c.add_worker(1, &[]);
    wait_worker_active(&c, &c.nodes[w].dir).await;
    let old_admin = c.tmp.path().join("old-admin");
    copy_credential(&tls_dir(&c.nodes[0].dir), "admin", &old_admin);
    // A connection opened with the old CA's certificate before the rotation.
    let held = connect(&addr, &tls_from(&old_admin, "admin")).await.unwrap();
    let range = epb::RangeRequest { key: b"k".to_vec(), ..Default::default() };
    KvClient::new(held.clone()).range(range.clone()).await.unwrap();
    let events_before = c.events().await.len();

    let o = cli(&["ca", "rotate", "-o", "json", "--endpoints", &addr]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let new_ca = out["ca_name"].as_str().unwrap().to_string();
    assert_eq!(out["rotating"], false);
    // The admin credential in the data dir was reissued in place: use it again.
    trust(&addr, &c.nodes[0].dir).await;
    for i in 1..c.nodes.len() {
        same_cluster(&c.nodes[i].addr, &addr);
    }
    // Every master and agent presents a certificate of the new CA and still holds its
    // session; no agent was ever seen unreachable.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c.nodes().await.unwrap();
        let all = r.nodes.iter().all(|n| n.state == "active" && n.cert_issuer == new_ca);
        if all && r.nodes.len() == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "not every node renewed under {new_ca}: {:#?}", r.nodes);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        assert_eq!(c.status(i).await.unwrap().cert_issuer, new_ca, "master {i}");
        let o = cli(&["kv", "put", &format!("via-{i}"), "x", "--endpoints", &c.nodes[i].addr]);
        assert!(o.status.success(), "write through master {i}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let lost: Vec<_> = c.events().await.into_iter().skip(events_before).filter(|e| e.kind == "state").collect();
    assert!(lost.is_empty(), "the rotation changed a node's state: {lost:?}");
    // The connection opened before is refused from now on: the handshake is not the
    // only check.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match KvClient::new(held.clone()).range(range.clone()).await {
            Err(e) if e.code() == Code::Unauthenticated => {
                assert!(e.message().contains("no longer trusts"), "{e:?}");
                break;
            }
            r => assert!(Instant::now() < deadline, "a connection of the old CA still works: {r:?}\n{}", c.logs()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The old CA is no longer trusted, by any master, once each has applied the end of
    // the rotation (within a second or so).
    for m in c.endpoints().iter().take(3) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let refused = match connect(m, &tls_from(&old_admin, "admin")).await {
                Err(_) => true,
                Ok(ch) => KvClient::new(ch)
                    .range(epb::RangeRequest { key: b"k".to_vec(), ..Default::default() })
                    .await
                    .is_err(),
            };
            if refused {
                break;
            }
            assert!(Instant::now() < deadline, "{m} still accepts a certificate of the old CA");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // New tokens pin the new CA; a worker joins with one.
    let o = cli(&["token", "worker", "-q", "--endpoints", &addr]);
    c.worker_token = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let w2 = c.add_worker(2, &[]);
    wait_worker_active(&c, &c.nodes[w2].dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_crash_nothing_change_nothing_and_memory_stays_bounded() {
    let c = Cluster::start_with(1, &["--snapshot-max-bytes", "33554432"]).await;
    let addr = c.nodes[0].addr.clone();
    let pid = c.status(0).await.unwrap().pid;
    // Some ordinary traffic first, then the steady memory.
    for i in 0..50 {
        assert!(cli(&["kv", "put", &format!("k{i}"), "v", "--endpoints", &addr]).status.success());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let steady = rss_kib(pid);
    let before = observe(&c).await;
    // The master's own certificate: past the role checks, to reach the decoders.
    let ch = connect(&addr, &tls_from(&tls_dir(&c.nodes[0].dir), "node")).await.unwrap();

    // Oversized messages: refused by the KV service's limit before decoding.
    let mut kv = KvClient::new(ch.clone()).max_encoding_message_size(64 << 20);
    for _ in 0..20 {
        let huge = epb::PutRequest { key: b"k".to_vec(), value: vec![7; 8 << 20], ..Default::default() };
        assert!(kv.put(huge).await.is_err());
    }

    // bincode length bombs: a handful of bytes that claim 2^40 and 2^60 bytes.
    let mut raft = RaftClient::new(ch.clone());
    for claim in [1u64 << 40, 1 << 60, u64::MAX] {
        let mut bomb = vec![253u8];
        bomb.extend_from_slice(&claim.to_le_bytes());
        bomb.extend_from_slice(b"xyz");
        for _ in 0..300 {
            let e = raft.vote(RaftPayload { data: bomb.clone() }).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            let e = raft.append_entries(RaftPayload { data: bomb.clone() }).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
        }
    }

    // A snapshot that never ends: refused at --snapshot-max-bytes (32 MiB), on disk, not
    // in memory, and its partial file removed.
    let endless =
        futures::stream::iter(std::iter::once(snapshot_meta_chunk(1, 1)).chain(std::iter::repeat_with(|| {
            SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Data(vec![0xAB; 1 << 20])) }
        })));
    let r = tokio::time::timeout(Duration::from_secs(60), raft.install_snapshot(endless)).await;
    let e = r.expect("the endless snapshot was not cut off within 60 s").unwrap_err();
    assert!(e.message().contains("snapshot"), "{e:?}");
    let leftovers: Vec<_> = std::fs::read_dir(c.nodes[0].dir.join("snapshot"))
        .map(|d| d.flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().contains("recv")).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "partial snapshot files left: {leftovers:?}");

    // 10,000 streams on one connection: at most 1,024 open at once, at most 100 watch
    // streams for one certificate; the rest wait or are refused.
    let admin = agent_channel(&addr).await.unwrap();
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut held = Vec::new();
    let mut calls = futures::stream::iter(0..10_000)
        .map(|_| {
            let mut reg = RegistryClient::new(admin.clone());
            async move {
                let call = reg.watch(pb::WatchRegistryRequest { start_index: 0, follow: true });
                tokio::time::timeout(Duration::from_secs(5), call).await
            }
        })
        .buffer_unordered(10_000);
    let mut exhausted = 0;
    while let Some(r) = calls.next().await {
        match r {
            Ok(Ok(s)) => {
                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                held.push(s);
            }
            Ok(Err(s)) if s.code() == Code::ResourceExhausted => exhausted += 1,
            _ => {}
        }
    }
    let n = opened.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n <= 100, "{n} watch streams open for one certificate");
    assert!(exhausted > 0, "no stream was refused");
    let peak = rss_kib(pid);
    drop(held);

    // Alive, unchanged, and within twice its steady memory.
    assert_eq!(c.status(0).await.unwrap().state, "leader");
    assert_eq!(observe(&c).await, before, "hostile input changed the cluster");
    let end = rss_kib(pid);
    eprintln!("master RSS: steady {steady} KiB, with 100 watches and 9,900 refused streams {peak} KiB, end {end} KiB");
    assert!(peak < 2 * steady && end < 2 * steady, "RSS went from {steady} KiB to {peak} KiB (end {end})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_does_not_finish_while_a_master_has_not_renewed() {
    let c = Cluster::start(3).await;
    let l = c.leader(Duration::from_secs(5)).await;
    let stuck = (0..3).find(|i| *i != l).unwrap();
    let stuck_id = c.status(stuck).await.unwrap().node_id;
    let mut admin = ClusterAdminClient::new(agent_channel(&c.nodes[l].addr).await.unwrap());
    // A master that cannot renew (stopped) while the rotation starts.
    c.pause(stuck, true);
    let started = admin.rotate_ca(pb::RotateCaRequest { phase: "start".into(), force: false }).await.unwrap();
    assert!(started.get_ref().rotating);
    let e = admin.rotate_ca(pb::RotateCaRequest { phase: "finish".into(), force: false }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&format!("master {stuck_id}")), "{e:?}");
    // Refused means unchanged: the old CA is still trusted.
    let again = admin.rotate_ca(pb::RotateCaRequest { phase: "start".into(), force: false }).await.unwrap();
    assert!(again.get_ref().rotating && again.get_ref().ca_name == started.get_ref().ca_name);
    // Once it runs again it renews, and the rotation finishes with every master in.
    c.pause(stuck, false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match admin.rotate_ca(pb::RotateCaRequest { phase: "finish".into(), force: false }).await {
            Ok(r) => {
                assert!(!r.get_ref().rotating);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "the rotation never finished: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The test's own admin credential is of the old CA: it reloads the one the init
    // master reissued in its data dir.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        trust(&c.nodes[0].addr, &c.nodes[0].dir).await;
        for i in 1..3 {
            same_cluster(&c.nodes[i].addr, &c.nodes[0].addr);
        }
        if c.status(stuck).await.map(|s| s.cert_issuer) == Some(started.get_ref().ca_name.clone()) {
            break;
        }
        assert!(Instant::now() < deadline, "master {stuck_id} is not on the new CA");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.status(l).await.unwrap().members.len(), 3);
}
