//! Services with real processes: 3 masters (`--no-worker`) and 4 workers run
//! `docs/examples/web.json` (6 instances, hostname:MAX_PER:2, a port, an HTTP health
//! check, an overlay network). Leader kills restart nothing (same pids, same states); an
//! agent killed with -9 and restarted adopts its tasks; a stopped worker's tasks come
//! back elsewhere within down_after_ms + 5 s; a rolling update never drops below 3
//! healthy; a task that outgrows its memory is OOM-killed and relaunched with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use proto::clusterpb as pb;

use crate::harness::{cli, client_of, Cluster};

const UNREACHABLE_MS: u64 = 2_000;
const DOWN_MS: u64 = 2_000;
const FLAGS: [&str; 6] =
    ["--unreachable-after-ms", "2000", "--down-after-ms", "2000", "--agent-heartbeat-interval-ms", "250"];

fn example() -> String {
    format!("{}/../docs/examples/web.json", env!("CARGO_MANIFEST_DIR"))
}

async fn tasks(c: &Cluster, service: &str) -> Vec<pb::TaskInfo> {
    let cl = client_of(c.alive().into_iter().map(|i| c.nodes[i].addr.clone()));
    for _ in 0..50 {
        if let Ok(t) = cl.list_tasks(service, 0, false).await {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no task list\n{}", c.logs());
}

/// Waits until `ok` holds for the service's tasks.
async fn wait_tasks(
    c: &Cluster,
    service: &str,
    within: Duration,
    what: &str,
    ok: impl Fn(&[pb::TaskInfo]) -> bool,
) -> Vec<pb::TaskInfo> {
    let deadline = Instant::now() + within;
    loop {
        let t = tasks(c, service).await;
        if ok(&t) {
            return t;
        }
        if Instant::now() > deadline {
            let rows: Vec<String> = t
                .iter()
                .map(|t| format!("{} {} agent {} v{} {}", t.id, t.state, t.agent, t.version, t.reason))
                .collect();
            panic!("{what}: not within {within:?}; tasks:\n{}\n{}", rows.join("\n"), c.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn healthy(t: &[pb::TaskInfo]) -> usize {
    t.iter().filter(|t| t.state == "healthy").count()
}

fn per_agent(t: &[pb::TaskInfo]) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for t in t {
        *m.entry(t.agent).or_insert(0) += 1;
    }
    m
}

/// Task id → pid, as the agents' sandboxes record them.
fn pids(c: &Cluster, workers: &[usize]) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    for &w in workers {
        for r in agent::tasks::sandbox::load_all(&c.nodes[w].dir) {
            if r.ended.is_none() {
                out.insert(r.id, r.pid);
            }
        }
    }
    out
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

async fn serves(port: u32) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port as u16)).await else { return false };
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    let mut buf = vec![0; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.ok().and_then(|r| r.ok()).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.0 200")
}

/// What must not change across leader kills: each task's agent, state, start and pid.
fn fingerprint(t: &[pb::TaskInfo], pids: &BTreeMap<String, i32>) -> BTreeSet<(String, u64, String, u64, i32)> {
    t.iter()
        .map(|t| (t.id.clone(), t.agent, t.state.clone(), t.started_ms, pids.get(&t.id).copied().unwrap_or(0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_survive_leader_and_agent_failures_roll_and_respect_memory_limits() {
    let mut flags = vec!["--no-worker"];
    flags.extend(FLAGS);
    let mut c = Cluster::start_with(3, &flags).await;
    // Workers share this machine: each gets its own port range and host name. The ranges
    // are below 32768: a port in the ephemeral range can be held by any outgoing
    // connection on the machine, and a task given it fails to bind.
    let mut workers = Vec::new();
    for i in 0..4 {
        let ports = format!("{}-{}", 24_000 + i * 1000, 24_099 + i * 1000);
        let host = format!("worker-{i}");
        let rack = format!("rack={}", i % 2);
        let w = c.add_worker(
            i % 3,
            &["--hostname", &host, "--label", &rack, "--ports", &ports, "--cpus", "2", "--memory-mb", "2048"],
        );
        workers.push(w);
    }
    let ep = c.endpoints()[..3].join(",");
    let o = cli(&["network", "create", "overlay", "--subnet", "10.93.0.0/24", "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Workers register as they come up; the service waits for room meanwhile.
    let o = cli(&["service", "create", "-d", "-f", &example(), "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // 6 running, healthy tasks, at most 2 per worker, distinct addresses, each serving.
    let t =
        wait_tasks(&c, "/web", Duration::from_secs(60), "6 healthy tasks", |t| t.len() == 6 && healthy(t) == 6).await;
    assert!(per_agent(&t).values().all(|&n| n <= 2), "MAX_PER 2: {:?}", per_agent(&t));
    let ips: BTreeSet<IpAddr> = t.iter().map(|t| t.ip.parse().expect("an overlay address")).collect();
    assert_eq!(ips.len(), 6, "distinct addresses");
    assert!(ips.iter().all(|ip| ip.to_string().starts_with("10.93.0.")), "{ips:?}");
    for t in &t {
        assert!(serves(t.ports[0]).await, "{} does not serve on its PORT0 {}", t.id, t.ports[0]);
    }
    // Each task's logs, from its agent's sandbox through the masters: what it printed
    // at start (stdout) and the health checks it answered (http.server logs to stderr).
    for t in &t {
        let o = cli(&["task", "logs", &t.id, "--endpoints", &ep]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains(&format!("task {} at {} serving on {}", t.id, t.ip, t.ports[0])), "{}: {out:?}", t.id);
        let o = cli(&["task", "logs", &t.id, "--stderr", "--endpoints", &ep]);
        let err = String::from_utf8_lossy(&o.stdout);
        assert!(err.contains("GET / HTTP/1.1"), "{}: {err:?}", t.id);
        let o = cli(&["task", "logs", &t.id, "--stderr", "--tail-bytes", "300", "--endpoints", &ep]);
        assert!(!o.stdout.is_empty() && o.stdout.len() <= 300, "{}: {} bytes", t.id, o.stdout.len());
    }
    let o = cli(&["task", "logs", "web.99999", "--endpoints", &ep]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not found"));

    // Two leader kills: zero restarts, nothing changes but leadership.
    let before = fingerprint(&t, &pids(&c, &workers));
    assert_eq!(before.iter().filter(|f| f.4 > 0).count(), 6, "every task has a pid");
    for _ in 0..2 {
        let l = c.leader(Duration::from_secs(10)).await;
        c.kill9(l);
        let deadline = Instant::now() + Duration::from_secs(15);
        while c.leader(Duration::from_secs(10)).await == l {
            assert!(Instant::now() < deadline, "no new leader\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Give the new leader's scheduler some passes, then bring the old one back.
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.restart(l);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let t = tasks(&c, "/web").await;
    let after = fingerprint(&t, &pids(&c, &workers));
    assert_eq!(after, before, "a leader change restarted or changed a task\n{}", c.logs());
    assert!(after.iter().all(|f| alive(f.4)), "every task process is still alive");
    let all = client_of([c.nodes[0].addr.clone(), c.nodes[1].addr.clone(), c.nodes[2].addr.clone()])
        .list_tasks("/web", 0, true)
        .await
        .unwrap();
    assert_eq!(
        all.len(),
        6,
        "no task ended: {:?}",
        all.iter().map(|t| (&t.id, &t.state, &t.reason)).collect::<Vec<_>>()
    );

    // An agent killed with -9 and restarted adopts its tasks: same processes.
    let busy = *per_agent(&t).iter().find(|(_, n)| **n == 2).map(|(a, _)| a).expect("a worker with 2 tasks");
    let wi = workers.iter().copied().find(|&w| {
        let node: serde_json::Value =
            serde_json::from_slice(&std::fs::read(c.nodes[w].dir.join("node.json")).unwrap()).unwrap();
        node["node_id"].as_u64() == Some(busy)
    });
    let wi = wi.expect("the busy worker's slot");
    c.kill9(wi);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pids(&c, &[wi]).values().all(|&p| alive(p)), "tasks outlive their agent");
    c.restart(wi);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = tasks(&c, "/web").await;
    assert_eq!(fingerprint(&t, &pids(&c, &workers)), before, "the restarted agent adopted its tasks\n{}", c.logs());

    // Stop that worker entirely (agent and tasks): its 2 tasks run again elsewhere.
    let gone: BTreeMap<String, i32> = pids(&c, &[wi]);
    assert_eq!(gone.len(), 2);
    c.kill9(wi);
    for &p in gone.values() {
        // SAFETY: the task's own process group.
        unsafe {
            libc::kill(-p, libc::SIGKILL);
        }
    }
    let t0 = Instant::now();
    // The agent goes unreachable after 2 s of silence and down 2 s later (down_after_ms).
    let limit = Duration::from_millis(UNREACHABLE_MS + DOWN_MS + 5_000);
    let t = wait_tasks(&c, "/web", limit + Duration::from_secs(10), "replacements", |t| {
        t.len() == 6 && t.iter().all(|t| t.agent != busy && (t.state == "running" || t.state == "healthy"))
    })
    .await;
    let took = t0.elapsed();
    eprintln!("replacements running after {took:?} (allowed: unreachable 2 s + down 2 s + 5 s)");
    assert!(took <= limit, "replaced after {took:?}, allowed {limit:?}");
    assert!(per_agent(&t).values().all(|&n| n <= 2), "still MAX_PER 2: {:?}", per_agent(&t));
    let t =
        wait_tasks(&c, "/web", Duration::from_secs(20), "6 healthy again", |t| t.len() == 6 && healthy(t) == 6).await;

    // Roll v1 → v2 with minimumHealthCapacity 0.5: never fewer than 3 healthy.
    let mut app: serde_json::Value = serde_json::from_slice(&std::fs::read(example()).unwrap()).unwrap();
    app["env"] = serde_json::json!({"VERSION": "2"});
    let v2 = c.tmp.path().join("web-v2.json");
    std::fs::write(&v2, serde_json::to_vec(&app).unwrap()).unwrap();
    let v1 = t[0].version;
    let o = cli(&["service", "update", "-d", "-f", v2.to_str().unwrap(), "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut min_healthy = usize::MAX;
    loop {
        let t = tasks(&c, "/web").await;
        min_healthy = min_healthy.min(healthy(&t));
        if t.len() == 6 && t.iter().all(|t| t.version > v1 && t.state == "healthy") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the roll did not finish: {:?}\n{}",
            t.iter().map(|t| (&t.id, t.version, &t.state)).collect::<Vec<_>>(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("roll: fewest healthy tasks seen {min_healthy}");
    assert!(min_healthy >= 3, "the roll went down to {min_healthy} healthy tasks");

    // A task that outgrows its memory: OOM killed, reported so, relaunched after backoff.
    let hog = c.tmp.path().join("hog.json");
    std::fs::write(
        &hog,
        r#"{"id": "hog", "cmd": "python3 -c 'b = bytearray(256 << 20); import time; time.sleep(60)'", "cpus": 0.1, "mem": 32, "backoffSeconds": 1, "backoffFactor": 2}"#,
    )
    .unwrap();
    let o = cli(&["service", "create", "-d", "-f", hog.to_str().unwrap(), "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cl = client_of(c.endpoints()[..3].to_vec());
    let deadline = Instant::now() + Duration::from_secs(40);
    let ended = loop {
        let all = cl.list_tasks("/hog", 0, true).await.unwrap_or_default();
        let ended: Vec<pb::TaskInfo> = all.into_iter().filter(|t| t.state == "failed").collect();
        if ended.len() >= 3 {
            break ended;
        }
        assert!(Instant::now() < deadline, "hog: {ended:?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ended.iter().all(|t| t.reason == "OOM killed"), "{ended:?}");
    let mut ended = ended;
    ended.sort_by_key(|t| t.staged_ms);
    // Backoff 1 s, then 2 s: each launch waits at least that long after the last end.
    for (w, want_ms) in ended.windows(2).zip([1_000u64, 2_000]) {
        let gap = w[1].staged_ms.saturating_sub(w[0].ended_ms);
        assert!(gap + 150 >= want_ms, "relaunched {gap} ms after an OOM, backoff {want_ms} ms: {ended:?}");
    }
}
