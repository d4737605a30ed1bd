//! IPAM with real processes: concurrent allocations while the leader is killed twice
//! lose nothing acknowledged and never hand out an address twice; leaked addresses of a
//! removed agent are reported by `network check` and released after the grace period.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::clusterpb as pb;
use proto::clusterpb::ipam_client::IpamClient;
use tonic::transport::Channel;

use crate::harness::{agent_channel, cli, node_channel, Cluster};

/// Calls `f` on the endpoints in turn until one succeeds (following the cluster through
/// failovers); gives up after `within`.
async fn retry<T, F, Fut>(eps: &[String], within: Duration, f: F) -> Option<T>
where
    F: Fn(IpamClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + within;
    let mut i = 0;
    while Instant::now() < deadline {
        let ep = &eps[i % eps.len()];
        i += 1;
        let Some(ch) = agent_channel(ep).await else { continue };
        match tokio::time::timeout(Duration::from_secs(3), f(IpamClient::new(ch).max_decoding_message_size(64 << 20)))
            .await
        {
            Ok(Ok(v)) => return Some(v),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    None
}

async fn inspect(addr: &str) -> Option<BTreeMap<String, String>> {
    let ch = agent_channel(addr).await?;
    let r = IpamClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .inspect_network(pb::InspectNetworkRequest { name: "net".into(), limit: 1_000_000 })
        .await
        .ok()?
        .into_inner();
    Some(r.allocations.into_iter().map(|a| (a.owner, a.address)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_survive_two_leader_kills_without_duplicates_or_loss() {
    let mut c = Cluster::start_with(3, &["--no-worker"]).await;
    let eps = c.endpoints();
    let req = pb::CreateNetworkRequest {
        name: "net".into(),
        subnets: vec!["10.40.0.0/16".into()],
        quarantine_ms: Some(60_000),
        ..Default::default()
    };
    retry(&eps, Duration::from_secs(10), |mut cl| {
        let req = req.clone();
        async move { cl.create_network(req).await }
    })
    .await
    .expect("network created");

    // 8 clients, each allocating its own owners one after another. A failed call has an
    // unknown outcome, so it is retried for the same owner (allocation is idempotent)
    // until it is acknowledged. Every 10th owner releases its address right away.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let released: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..8 {
        let (eps, acked, released, stop) = (eps.clone(), acked.clone(), released.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let owner = format!("c{client}-{n}");
                n += 1;
                let req = pb::AllocateRequest { network: "net".into(), owner: owner.clone(), ..Default::default() };
                let r = retry(&eps, Duration::from_secs(30), |mut cl| {
                    let req = req.clone();
                    async move { cl.allocate(req).await }
                })
                .await
                .expect("allocation acknowledged within 30 s");
                acked.lock().unwrap().insert(owner.clone(), r.into_inner().address);
                if n % 10 == 0 {
                    let req = pb::ReleaseRequest { network: "net".into(), owner: owner.clone(), ..Default::default() };
                    retry(&eps, Duration::from_secs(30), |mut cl| {
                        let req = req.clone();
                        async move { cl.release(req).await }
                    })
                    .await
                    .expect("release acknowledged");
                    released.lock().unwrap().insert(owner);
                }
            }
        }));
    }
    for round in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let l = c.leader(Duration::from_secs(5)).await;
        c.kill9(l);
        eprintln!("round {round}: killed the leader with {} allocations acknowledged", acked.lock().unwrap().len());
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.restart(l);
        c.wait_caught_up(l, Duration::from_secs(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let released = released.lock().unwrap().clone();
    assert!(acked.len() > 200, "only {} allocations", acked.len());
    // No address was acknowledged to two owners, ever (releases are quarantined for 60 s,
    // longer than the test, so no address may come back).
    let mut by_addr: BTreeMap<&String, &String> = BTreeMap::new();
    for (o, a) in &acked {
        if let Some(other) = by_addr.insert(a, o) {
            panic!("address {a} acknowledged to {other} and to {o}");
        }
    }
    // Every acknowledged allocation that was not released is in the state, on every
    // master, with the same address; nothing else is.
    let l = c.leader(Duration::from_secs(5)).await;
    c.wait_caught_up((l + 1) % 3, Duration::from_secs(20)).await;
    c.wait_caught_up((l + 2) % 3, Duration::from_secs(20)).await;
    let want: BTreeMap<String, String> = acked.into_iter().filter(|(o, _)| !released.contains(o)).collect();
    for i in 0..3 {
        let got = inspect(&c.nodes[i].addr).await.expect("inspect");
        assert_eq!(got.len(), want.len(), "master {i}: allocations differ in number");
        assert!(got == want, "master {i}: allocations differ from the acknowledged ones");
    }
    eprintln!(
        "{} allocations acknowledged, {} released; all masters agree",
        want.len() + released.len(),
        released.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_addresses_are_reported_and_released_after_the_grace_period() {
    let mut c = Cluster::start_with(1, &["--no-worker", "--ip-leak-grace-ms", "1500"]).await;
    let ep = c.nodes[0].addr.clone();
    let w = c.add_worker(0, &[]);
    // Wait for the worker to register.
    let deadline = Instant::now() + Duration::from_secs(15);
    let node_id = loop {
        if let Some(r) = c.nodes().await {
            if let Some(n) = r.nodes.iter().find(|n| n.role == "worker" && n.state == "active") {
                break n.node_id;
            }
        }
        assert!(Instant::now() < deadline, "worker did not register\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.nodes[w].dir.join("node.json")).unwrap()).unwrap();
    let secret = file["node_secret"].as_str().unwrap().to_string();
    assert!(cli(&["network", "create", "net", "--subnet", "10.50.0.0/24", "--endpoints", &ep]).status.success());
    let node = node_id.to_string();
    for owner in ["task-a", "task-b", "task-c"] {
        let o = cli(&["ip", "allocate", "net", "--owner", owner, "--node", &node, "--endpoints", &ep]);
        assert!(o.status.success(), "{o:?}");
    }
    let free = cli(&["ip", "allocate", "net", "--owner", "unbound", "--endpoints", &ep]);
    assert!(free.status.success());
    let addr_of = |owner: &str| {
        let o = cli(&["ip", "allocate", "net", "--owner", owner, "--endpoints", &ep]);
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    // The agent reports task-a (right), task-b at the wrong address, and omits task-c.
    // Reported with the agent's own certificate, as the agent would.
    let mut reporter = IpamClient::new(node_channel(&ep, &c.nodes[w].dir).await);
    let mut ipam = IpamClient::new(agent_channel(&ep).await.unwrap());
    let held = vec![
        pb::HeldAddress { network: "net".into(), address: addr_of("task-a"), owner: "task-a".into() },
        pb::HeldAddress { network: "net".into(), address: addr_of("unbound"), owner: "task-b".into() },
    ];
    let e = reporter
        .report_held(pb::ReportHeldRequest { node_id, node_secret: "wrong".into(), held: held.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    reporter.report_held(pb::ReportHeldRequest { node_id, node_secret: secret, held }).await.unwrap();
    let check = ipam.check(pb::CheckRequest {}).await.unwrap().into_inner();
    let leaks: BTreeSet<(String, String)> = check.leaks.iter().map(|l| (l.owner.clone(), l.reason.clone())).collect();
    // task-b is reported (at the wrong address: a conflict, not a leak).
    assert_eq!(leaks, BTreeSet::from([("task-c".to_string(), "not reported by its node".to_string())]));
    assert_eq!(check.conflicts.len(), 1, "{:?}", check.conflicts);
    assert_eq!(check.conflicts[0].state_owner, "unbound");
    let o = cli(&["network", "check", "--endpoints", &ep]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("task-c"));
    // After the grace period repair releases task-c, nothing else.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let owners: BTreeSet<String> = inspect(&ep).await.unwrap().into_keys().collect();
    assert_eq!(owners, BTreeSet::from(["task-a".to_string(), "task-b".to_string(), "unbound".to_string()]));
    // Removing the agent leaks what is bound to it; both are released too.
    assert!(cli(&["node", "rm", &node, "--force", "--endpoints", &ep]).status.success());
    let check = ipam.check(pb::CheckRequest {}).await.unwrap().into_inner();
    let leaks: BTreeSet<(String, String)> = check.leaks.iter().map(|l| (l.owner.clone(), l.reason.clone())).collect();
    assert_eq!(
        leaks,
        BTreeSet::from([
            ("task-a".to_string(), "its node was removed".to_string()),
            ("task-b".to_string(), "its node was removed".to_string())
        ])
    );
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let owners: BTreeSet<String> = inspect(&ep).await.unwrap().into_keys().collect();
    assert_eq!(owners, BTreeSet::from(["unbound".to_string()]));
}
