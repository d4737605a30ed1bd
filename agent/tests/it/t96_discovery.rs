//! Discovery and observation from the masters' replicated state, with real clients:
//! `dig` against the DNS face (A, SRV, one task, leader, masters), HAProxy driven by
//! `docs/examples/haproxy/cluster-haproxy.py` from the discovery feed, marathon-python
//! following `/v2/events`, and prometheus-client parsing `/metrics`.
//!
//! The DNS and HAProxy test runs 3 masters (`--no-worker`) and 2 workers with a service
//! of 2 healthy tasks on an overlay network. A task is killed: its address leaves the
//! DNS answers within 1 s of the kill being committed, and its replacement's address
//! joins them within 1 s of the replacement turning healthy. HAProxy keeps answering,
//! from the remaining task, then from the replacement, after a task's process is killed
//! with -9.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::clusterpb as pb;

use crate::harness::{cli, client_of, Cluster};
use crate::t95_http::{free_port, ok, py};

/// Restarts masters `0..n` with their HTTP face (and DNS face) on; returns their
/// addresses.
pub(crate) async fn with_faces(c: &mut Cluster, n: usize, dns: bool) -> (Vec<String>, Vec<u16>) {
    let (mut http, mut dns_ports) = (Vec::new(), Vec::new());
    for i in 0..n {
        let port = free_port();
        http.push(format!("127.0.0.1:{port}"));
        let dport = free_port();
        dns_ports.push(dport);
        let dns_addr = format!("127.0.0.1:{dport}");
        c.kill9(i);
        let dir = c.nodes[i].dir.display().to_string();
        let mut args = vec!["start", "--data-dir", &dir, "--http-listen", &http[i]];
        if dns {
            args.extend(["--dns-listen", &dns_addr]);
        }
        c.spawn(i, &args);
        c.leader(Duration::from_secs(15)).await;
        c.wait_caught_up(i, Duration::from_secs(20)).await;
    }
    (http, dns_ports)
}

pub(crate) async fn wait_ready(c: &Cluster, ca: &str, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = py("http_status.py", &[ca, "GET", &format!("{url}/ready"), "-"]);
        if String::from_utf8_lossy(&o.stdout).trim() == "200" {
            return;
        }
        assert!(Instant::now() < deadline, "{url}/ready: {}\n{}", String::from_utf8_lossy(&o.stderr), c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn token(ep: &str, role: &str) -> String {
    let o = cli(&["token", "issue-http", "--role", role, "--name", "t96", "-q", "--endpoints", ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// `dig +short` lines (one query, no retries: a slow answer is a failure to see).
fn dig(port: u16, args: &[&str]) -> BTreeSet<String> {
    let o = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+short", "+tries=1", "+time=1"])
        .args(args)
        .output()
        .expect("dig (Debian's dnsutils; .ci/install-deps installs it)");
    assert!(o.status.success(), "dig {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

async fn tasks(c: &Cluster) -> Vec<pb::TaskInfo> {
    let cl = client_of(c.alive().into_iter().map(|i| c.nodes[i].addr.clone()));
    for _ in 0..50 {
        if let Ok(t) = cl.list_tasks("/web", 0, false).await {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no task list\n{}", c.logs());
}

fn healthy(t: &[pb::TaskInfo]) -> Vec<pb::TaskInfo> {
    t.iter().filter(|t| t.state == "healthy").cloned().collect()
}

/// One request through HAProxy: the id of the task that answered.
async fn through(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(b"GET /id.txt HTTP/1.0\r\nHost: web\r\n\r\n").await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&buf);
    if text.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    text.split("\r\n\r\n").nth(1).map(|b| b.trim().to_string())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SIGTERM: the generator stops its HAProxy too.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

const SERVICE: &str = r#"{
  "id": "/web",
  "cmd": "echo $TASK_ID > id.txt; exec python3 -m http.server --bind 127.0.0.1 $PORT0",
  "cpus": 0.1,
  "mem": 64,
  "instances": 2,
  "constraints": [["hostname", "UNIQUE"]],
  "portDefinitions": [{"port": 0, "name": "http", "protocol": "tcp"}],
  "healthChecks": [{"protocol": "HTTP", "path": "/id.txt", "portIndex": 0, "gracePeriodSeconds": 10,
                    "intervalSeconds": 1, "timeoutSeconds": 1, "maxConsecutiveFailures": 2}],
  "networks": [{"mode": "container", "name": "overlay"}]
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_and_haproxy_follow_a_task_kill_and_its_replacement() {
    let mut c = Cluster::start_with(3, &["--no-worker"]).await;
    let (http, dns) = with_faces(&mut c, 3, true).await;
    let mut workers = Vec::new();
    for i in 0..2 {
        let ports = format!("{}-{}", 30_200 + i * 300, 30_299 + i * 300);
        let host = format!("worker-{i}");
        workers
            .push(c.add_worker(i % 3, &["--hostname", &host, "--ports", &ports, "--cpus", "2", "--memory-mb", "1024"]));
    }
    let ep = c.endpoints()[..3].join(",");
    let ca = c.nodes[0].dir.join("tls/ca.crt").display().to_string();
    let o = cli(&["network", "create", "overlay", "--subnet", "10.96.0.0/24", "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let spec = c.nodes[0].dir.parent().unwrap().join("web.json");
    std::fs::write(&spec, SERVICE).unwrap();
    let o = cli(&["service", "create", "-d", "-f", spec.to_str().unwrap(), "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let deadline = Instant::now() + Duration::from_secs(60);
    let t = loop {
        let t = healthy(&tasks(&c).await);
        if t.len() == 2 {
            break t;
        }
        assert!(Instant::now() < deadline, "2 healthy tasks: {t:?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let l = c.leader(Duration::from_secs(10)).await;
    let f = (l + 1) % 3;
    let port = dns[f];
    // A: the healthy tasks' overlay addresses, from a follower.
    let ips: BTreeSet<String> = t.iter().map(|t| t.ip.clone()).collect();
    assert_eq!(dig(port, &["web.cluster.local"]), ips);
    // SRV: each task's agent and port.
    let srv = dig(port, &["SRV", "_http._tcp.web.cluster.local"]);
    let want: BTreeSet<String> =
        t.iter().map(|t| format!("0 1 {} {}.agents.cluster.local.", t.ports[0], t.agent)).collect();
    assert_eq!(srv, want);
    assert_eq!(dig(port, &[&format!("{}.agents.cluster.local", t[0].agent)]), BTreeSet::from(["127.0.0.1".into()]));
    // One task by its id; the leader; the masters; an unknown name.
    assert_eq!(dig(port, &[&format!("{}.web.cluster.local", t[0].id)]), BTreeSet::from([t[0].ip.clone()]));
    assert_eq!(dig(port, &["leader.cluster.local"]), BTreeSet::from(["127.0.0.1".into()]));
    assert_eq!(dig(port, &["masters.cluster.local"]), BTreeSet::from(["127.0.0.1".into()]));
    let o = Command::new("dig").args(["@127.0.0.1", "-p", &port.to_string(), "nope.cluster.local"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("NXDOMAIN"), "{}", String::from_utf8_lossy(&o.stdout));
    // Over TCP too.
    assert_eq!(dig(port, &["+tcp", "web.cluster.local"]), ips);

    // HAProxy, driven from the discovery feed of a follower.
    let url = format!("https://{}", http[f]);
    wait_ready(&c, &ca, &url).await;
    let reader = token(&ep, "reader");
    let hp = free_port();
    let cfg = c.nodes[0].dir.parent().unwrap().join("haproxy.cfg");
    let script = format!("{}/../docs/examples/haproxy/cluster-haproxy.py", env!("CARGO_MANIFEST_DIR"));
    let log = std::fs::File::create(c.nodes[0].dir.parent().unwrap().join("haproxy.log")).unwrap();
    let _gen = Killed(
        Command::new("python3")
            .args([&script, "--url", &url, "--token", &reader, "--cacert", &ca])
            .args(["--route", &format!("/web=127.0.0.1:{hp}"), "--config", cfg.to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let ids: BTreeSet<String> = t.iter().map(|t| t.id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(id) = through(hp).await {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "nothing through HAProxy: {}",
            std::fs::read_to_string(&cfg).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ids.contains(&first), "{first} is not one of {ids:?}");

    // Kill one task: its address leaves DNS within 1 s of the kill being committed.
    let victim = t.iter().find(|t| t.id == first).unwrap().clone();
    let o = cli(&["task", "kill", &victim.id, "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let killed_at = Instant::now();
    loop {
        let a = dig(port, &["web.cluster.local"]);
        if !a.contains(&victim.ip) {
            break;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(1), "{} still answered {:?} after the kill", victim.ip, a);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone_ms = killed_at.elapsed().as_millis();
    // The replacement: in DNS within 1 s of turning healthy.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (replacement, healthy_at) = loop {
        let h = healthy(&tasks(&c).await);
        if let Some(n) = h.iter().find(|x| !ids.contains(&x.id)) {
            break (n.clone(), Instant::now());
        }
        assert!(Instant::now() < deadline, "no replacement: {h:?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    loop {
        let a = dig(port, &["web.cluster.local"]);
        if a.contains(&replacement.ip) {
            break;
        }
        assert!(
            healthy_at.elapsed() < Duration::from_secs(1),
            "{} not answered 1 s after healthy: {a:?}",
            replacement.ip
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joined_ms = healthy_at.elapsed().as_millis();
    eprintln!("DNS: the killed task left the answers after {gone_ms} ms, its replacement joined {joined_ms} ms after turning healthy");
    let srv = dig(port, &["SRV", "_http._tcp.web.cluster.local"]);
    assert!(srv.iter().any(|l| l.contains(&format!(" {} ", replacement.ports[0]))), "{srv:?}");

    // HAProxy reaches the replacement, and every request succeeds meanwhile.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match through(hp).await {
            Some(id) if id == replacement.id => break,
            _ => {}
        }
        assert!(Instant::now() < deadline, "HAProxy never reached {}", replacement.id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A task's process killed with -9: requests keep succeeding, and its replacement
    // is reached in turn.
    let pids: Vec<(String, i32)> = workers
        .iter()
        .flat_map(|&w| agent::tasks::sandbox::load_all(&c.nodes[w].dir))
        .filter(|r| r.ended.is_none() && r.id == replacement.id)
        .map(|r| (r.id, r.pid))
        .collect();
    assert_eq!(pids.len(), 1, "the replacement's pid: {pids:?}");
    // The task's process group: what the runner started.
    unsafe { libc::kill(-pids[0].1, libc::SIGKILL) };
    let before: BTreeSet<String> = healthy(&tasks(&c).await).iter().map(|t| t.id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut served, mut failed) = (0, 0);
    loop {
        match through(hp).await {
            Some(id) if !before.contains(&id) && id != replacement.id => break,
            Some(_) => served += 1,
            None => failed += 1,
        }
        assert!(Instant::now() < deadline, "HAProxy never reached a task started after the kill -9");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("HAProxy after kill -9: {served} requests answered, {failed} failed, until the new task answered");
    // HAProxy's checks (1 s, 2 falls) take the dead server out; a request may fail in
    // that window, not after.
    for _ in 0..20 {
        assert!(through(hp).await.is_some(), "a request through HAProxy failed after the replacement");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_a_leader_change_and_events_follow_an_app() {
    let mut c = Cluster::start(3).await;
    let (http, _) = with_faces(&mut c, 3, false).await;
    let ep = c.endpoints().join(",");
    let ca = c.nodes[0].dir.join("tls/ca.crt").display().to_string();
    let l = c.leader(Duration::from_secs(10)).await;
    let f = (l + 1) % 3;
    let url = format!("https://{}", http[f]);
    wait_ready(&c, &ca, &url).await;
    let admin = token(&ep, "admin");
    let o = cli(&["network", "create", "overlay", "--subnet", "10.98.0.0/24", "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // marathon-python follows /v2/events while it creates and deletes an app.
    let out = ok(&py("marathon_events.py", &[&url, &admin, &ca, "/events"]), "marathon events", &c);
    assert!(out.contains("followed"), "{out}");

    let scrape = |c: &Cluster| {
        let out = ok(&py("metrics_check.py", &[&url, &admin, &ca]), "metrics", c);
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    let before = scrape(&c);
    assert_eq!(before["has_leader"], 1.0, "{before}");
    assert!(before["fsyncs"].as_f64().unwrap() > 0.0, "{before}");
    assert!(before["grpc_ok"].as_f64().unwrap() > 0.0, "{before}");
    assert_eq!(before["agents_active"], 3.0, "{before}");
    let changes = before["leader_changes"].as_f64().unwrap();
    assert!(changes >= 1.0, "{before}");

    c.kill9(l);
    let nl = c.leader(Duration::from_secs(15)).await;
    assert_ne!(nl, l);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = scrape(&c);
        if after["leader_changes"].as_f64().unwrap() > changes && after["has_leader"] == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the leader-change counter did not rise: {before} then {after}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
