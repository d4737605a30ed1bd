//! The registry with real processes: agents follow the leader across kills without a
//! false transition; a killed agent goes unreachable, then down, then active again
//! under its id; bad registrations, heartbeats and removals are refused.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::clusterpb as pb;
use proto::clusterpb::registry_client::RegistryClient;
use tonic::Code;

use crate::harness::{agent_channel, cli, node_channel, Cluster};

const UNREACHABLE_MS: u64 = 2_000;
const DOWN_MS: u64 = 2_000;
const FLAGS: [&str; 7] = [
    "--no-worker",
    "--unreachable-after-ms",
    "2000",
    "--down-after-ms",
    "2000",
    "--agent-heartbeat-interval-ms",
    "250",
];

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Waits until `ok` holds for the leader's registry view; returns that view.
async fn wait_nodes<F: Fn(&pb::NodesResponse) -> bool>(
    c: &Cluster,
    within: Duration,
    what: &str,
    ok: F,
) -> pb::NodesResponse {
    let deadline = Instant::now() + within;
    let t0 = Instant::now();
    loop {
        let r = c.nodes().await;
        if std::env::var("T50_DEBUG").is_ok() {
            let w: Vec<_> =
                r.iter().flat_map(|r| workers(r)).map(|n| (n.node_id, n.state.clone(), n.connected_to)).collect();
            eprintln!("{:?} leader {:?} {:?}", t0.elapsed(), r.as_ref().map(|r| r.leader_id), w);
        }
        if let Some(r) = r {
            if ok(&r) {
                return r;
            }
            if Instant::now() >= deadline {
                panic!("{what}: not within {within:?}; registry: {:#?}\n{}", r.nodes, c.logs());
            }
        }
        assert!(Instant::now() < deadline, "{what}: no registry view within {within:?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn workers(r: &pb::NodesResponse) -> Vec<&pb::NodeInfo> {
    r.nodes.iter().filter(|n| n.role == "worker").collect()
}

fn bad_transitions(events: &[pb::RegistryEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == "state" && (e.to_state == "unreachable" || e.to_state == "down"))
        .map(|e| format!("#{} node {} {} -> {} ({})", e.index, e.node_id, e.from_state, e.to_state, e.reason))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_follow_leader_kills_without_false_transitions_and_a_killed_agent_goes_down() {
    let mut c = Cluster::start_with(3, &FLAGS).await;
    let wa = c.add_worker(0, &["--label", "zone=a", "--cpus", "2"]);
    let wb = c.add_worker(1, &["--label", "zone=b"]);
    let r = wait_nodes(&c, Duration::from_secs(15), "two active workers", |r| {
        workers(r).len() == 2 && workers(r).iter().all(|n| n.state == "active")
    })
    .await;
    // Masters run no agent: they are listed without one.
    assert_eq!(r.nodes.iter().filter(|n| n.state == "no-agent").count(), 3, "{:#?}", r.nodes);
    let a = workers(&r).iter().find(|n| n.labels.get("zone").map(String::as_str) == Some("a")).unwrap().node_id;
    assert_eq!(r.nodes.iter().find(|n| n.node_id == a).unwrap().resources.as_ref().unwrap().cpus_milli, 2000);

    for round in 0..2 {
        let l = c.leader(Duration::from_secs(5)).await;
        let old_leader_id = c.status(l).await.unwrap().node_id;
        c.kill9(l);
        let killed = Instant::now();
        let r = wait_nodes(&c, Duration::from_secs(10), "both agents attached to the new leader", |r| {
            r.leader_id != old_leader_id
                && r.leader_id != 0
                && workers(r).iter().all(|n| n.connected_to == Some(r.leader_id))
        })
        .await;
        let attached = killed.elapsed();
        eprintln!("round {round}: agents attached to new leader {} {attached:?} after the kill", r.leader_id);
        assert!(
            attached < Duration::from_secs(2),
            "agents attached {attached:?} after the kill (limit 2 s)\n{}",
            c.logs()
        );
        c.restart(l);
        c.wait_caught_up(l, Duration::from_secs(15)).await;
    }
    // Outlast the new leader's grace period before judging.
    tokio::time::sleep(Duration::from_millis(UNREACHABLE_MS + 1_000)).await;
    let events = c.events().await;
    assert!(
        bad_transitions(&events).is_empty(),
        "false transitions after leader kills: {:?}",
        bad_transitions(&events)
    );
    let registered_a = events.iter().filter(|e| e.node_id == a && e.kind == "registered").count();
    assert_eq!(registered_a, 1);

    // kill -9 agent A: unreachable after UNREACHABLE_MS, down DOWN_MS later.
    c.kill9(wa);
    let killed_ms = now_ms();
    wait_nodes(&c, Duration::from_secs(15), "agent A down", |r| {
        r.nodes.iter().any(|n| n.node_id == a && n.state == "down")
    })
    .await;
    let events = c.events().await;
    let at = |to: &str| {
        events.iter().find(|e| e.node_id == a && e.kind == "state" && e.to_state == to).map(|e| e.time_ms).unwrap()
    };
    let (unreachable, down) = (at("unreachable"), at("down"));
    // The last heartbeat came up to one interval (250 ms) before the kill.
    let to_unreachable = unreachable as i64 - killed_ms as i64;
    assert!(
        (UNREACHABLE_MS as i64 - 300..=UNREACHABLE_MS as i64 + 1_000).contains(&to_unreachable),
        "unreachable {to_unreachable} ms after the kill"
    );
    let to_down = down as i64 - unreachable as i64;
    assert!((DOWN_MS as i64 - 100..=DOWN_MS as i64 + 1_000).contains(&to_down), "down {to_down} ms after unreachable");
    assert!(
        bad_transitions(&events).iter().all(|t| t.contains(&format!("node {a} "))),
        "{:?}",
        bad_transitions(&events)
    );

    // Restarted, it is active again under the same id, without registering anew.
    c.restart(wa);
    wait_nodes(&c, Duration::from_secs(10), "agent A active again", |r| {
        r.nodes.iter().any(|n| n.node_id == a && n.state == "active") && workers(r).len() == 2
    })
    .await;
    let events = c.events().await;
    assert_eq!(events.iter().filter(|e| e.node_id == a && e.kind == "registered").count(), 1);
    assert!(events.iter().any(|e| e.node_id == a && e.from_state == "down" && e.to_state == "active"));
    let _ = wb;
}

/// A paused (SIGSTOP) leader is left: agents attach to the new leader, and when the old
/// one resumes, nobody is marked unreachable or down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_leave_a_paused_leader_without_false_transitions() {
    let mut c = Cluster::start_with(3, &FLAGS).await;
    c.add_worker(0, &[]);
    c.add_worker(2, &[]);
    wait_nodes(&c, Duration::from_secs(15), "two active workers", |r| {
        workers(r).len() == 2 && workers(r).iter().all(|n| n.state == "active")
    })
    .await;
    let l = c.leader(Duration::from_secs(5)).await;
    let old = c.status(l).await.unwrap().node_id;
    c.pause(l, true);
    let paused = Instant::now();
    // The paused process still owns its socket: ask the others only.
    let r = loop {
        let mut found = None;
        for i in (0..3).filter(|i| *i != l) {
            if let Some(s) = c.status(i).await.filter(|s| s.state == "leader") {
                let ch = agent_channel(&c.nodes[i].addr).await.unwrap();
                let r = RegistryClient::new(ch).nodes(pb::NodesRequest { node_id: 0 }).await.unwrap().into_inner();
                if workers(&r).iter().all(|n| n.connected_to == Some(s.node_id)) {
                    found = Some(r);
                }
            }
        }
        if let Some(r) = found {
            break r;
        }
        assert!(paused.elapsed() < Duration::from_secs(10), "agents did not attach to a new leader\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("agents attached to new leader {} {:?} after the pause", r.leader_id, paused.elapsed());
    assert_ne!(r.leader_id, old);
    // Hold the old leader paused past the grace period, then let it resume.
    tokio::time::sleep(Duration::from_millis(UNREACHABLE_MS + 500)).await;
    c.pause(l, false);
    tokio::time::sleep(Duration::from_millis(UNREACHABLE_MS + 1_000)).await;
    let events = c.events().await;
    assert!(
        bad_transitions(&events).is_empty(),
        "false transitions around a paused leader: {:?}",
        bad_transitions(&events)
    );
    let r = c.nodes().await.unwrap();
    assert!(workers(&r).iter().all(|n| n.state == "active" && n.connected_to == Some(r.leader_id)), "{:#?}", r.nodes);
}

/// The registry of master 0, called with its own (manager) certificate: a master may
/// act for any node, so these calls reach the registry's own checks.
async fn registry(c: &Cluster) -> RegistryClient<tonic::transport::Channel> {
    RegistryClient::new(node_channel(&c.nodes[0].addr, &c.nodes[0].dir).await)
}

fn register_req(node_id: u64, secret: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        node_id,
        node_secret: secret.into(),
        name: format!("x{node_id}"),
        addr: "127.0.0.1:1".into(),
        role: "worker".into(),
        resources: Some(pb::Resources { cpus_milli: 1000, memory_mb: 100, disk_mb: 0, ports: vec![] }),
        labels: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_heartbeats_and_removals_are_refused() {
    let mut c = Cluster::start_with(1, &FLAGS).await;
    let w = c.add_worker(0, &[]);
    let r =
        wait_nodes(&c, Duration::from_secs(15), "worker active", |r| workers(r).iter().any(|n| n.state == "active"))
            .await;
    let id = workers(&r)[0].node_id;
    let before = c.events().await.len();
    let mut reg = registry(&c).await;

    // Under another node's id.
    let e = reg.register(register_req(id, "not-its-secret")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // An id the cluster never handed out.
    let e = reg.register(register_req(9_999, "s")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("join"), "{e:?}");
    // Malformed resources and labels.
    let mut bad = register_req(id, "s");
    bad.resources.as_mut().unwrap().cpus_milli = 0;
    assert_eq!(reg.register(bad).await.unwrap_err().code(), Code::InvalidArgument);
    let mut bad = register_req(id, "s");
    bad.resources.as_mut().unwrap().ports = vec![pb::PortRange { begin: 10, end: 5 }];
    assert_eq!(reg.register(bad).await.unwrap_err().code(), Code::InvalidArgument);
    let mut bad = register_req(id, "s");
    bad.labels.insert("no spaces".into(), "x".into());
    assert_eq!(reg.register(bad).await.unwrap_err().code(), Code::InvalidArgument);
    let o = cli(&[
        "join",
        "--data-dir",
        "/tmp/never-created-x",
        "--token",
        &c.worker_token,
        &c.nodes[0].addr,
        "--label",
        "=x",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("label"), "{}", String::from_utf8_lossy(&o.stderr));
    // A heartbeat from an unknown node: told to register.
    let first = pb::HeartbeatRequest { node_id: 9_999, node_secret: "s".into(), seq: 1, prev_leader_id: 0 };
    let e = reg.heartbeat(futures::stream::iter(vec![first])).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("register"), "{e:?}");
    // None of that changed the registry.
    assert_eq!(c.events().await.len(), before);

    // Removing a master, or an active agent without --force, is refused.
    let ep = c.nodes[0].addr.clone();
    let o = cli(&["node", "rm", "1", "--endpoints", &ep]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("cluster leave"));
    let o = cli(&["node", "rm", &id.to_string(), "--endpoints", &ep]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--force"), "{o:?}");
    assert_eq!(c.events().await.len(), before);
    // Drain and activate are committed and visible.
    assert!(cli(&["node", "drain", &id.to_string(), "--endpoints", &ep]).status.success());
    wait_nodes(&c, Duration::from_secs(5), "drained", |r| {
        r.nodes.iter().any(|n| n.node_id == id && n.availability == "drain")
    })
    .await;
    assert!(cli(&["node", "activate", &id.to_string(), "--endpoints", &ep]).status.success());
    // --force removes it; its heartbeats are rejected, re-registering is refused and the
    // worker process exits.
    let o = cli(&["node", "rm", &id.to_string(), "--force", "--endpoints", &ep]);
    assert!(o.status.success(), "{o:?}");
    let st = c.wait_exit(w, Duration::from_secs(10)).await.expect("removed worker exits");
    assert!(!st.success());
    let log = std::fs::read_to_string(&c.nodes[w].log).unwrap();
    assert!(log.contains("was removed"), "{log}");
    let e = reg.register(register_req(id, "s")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let r = c.nodes().await.unwrap();
    assert!(workers(&r).is_empty(), "{:#?}", r.nodes);
}
