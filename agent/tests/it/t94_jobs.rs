//! Jobs with real processes: 3 masters (`--no-worker`) and 2 workers. A job
//! `R/<now+5s>/PT5S` appends its scheduled instant to a file while the leader is killed
//! twice in 60 s: every instant in the window ran exactly once or is recorded as skipped
//! under its policy, nothing doubled, nothing silently lost. A dependent job runs once
//! per successful parent run, across a failover between the parent's success and the
//! child's start.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proto::clusterpb as pb;

use crate::harness::{cli, client_of, Cluster};

const FLAGS: [&str; 6] =
    ["--unreachable-after-ms", "2000", "--down-after-ms", "4000", "--agent-heartbeat-interval-ms", "250"];

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn iso(ms: u64) -> String {
    coord::jobs::schedule::show_utc(ms)
}

fn client(c: &Cluster) -> client::Client {
    client_of(c.endpoints()[..3].iter().cloned())
}

async fn history(c: &Cluster, job: &str) -> Vec<pb::RunInfo> {
    let cl = client(c);
    for _ in 0..100 {
        if let Ok(h) = cl.job_history(job).await {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no history of {job}\n{}", c.logs());
}

async fn wait_runs(c: &Cluster, job: &str, within: Duration, what: &str, ok: impl Fn(&[pb::RunInfo]) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let h = history(c, job).await;
        if ok(&h) {
            return;
        }
        if Instant::now() > deadline {
            let rows: Vec<String> = h
                .iter()
                .map(|r| format!("{} {} {} {:?} {}", r.instant_ms, r.trigger, r.state, r.tasks, r.reason))
                .collect();
            panic!("{what}: not within {within:?}; runs:\n{}\n{}", rows.join("\n"), c.logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn kill_leader(c: &mut Cluster) -> usize {
    let l = c.leader(Duration::from_secs(10)).await;
    c.kill9(l);
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.leader(Duration::from_secs(10)).await == l {
        assert!(Instant::now() < deadline, "no new leader\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    l
}

fn write_job(c: &Cluster, name: &str, v: serde_json::Value) -> String {
    let path = c.tmp.path().join(format!("{name}.json"));
    std::fs::write(&path, v.to_string()).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_instants_run_exactly_once_across_leader_kills_and_children_once_per_parent_success() {
    let mut flags = vec!["--no-worker"];
    flags.extend(FLAGS);
    let mut c = Cluster::start_with(3, &flags).await;
    for i in 0..2 {
        let ports = format!("{}-{}", 28_000 + i * 1000, 28_099 + i * 1000);
        let host = format!("worker-{i}");
        c.add_worker(i, &["--hostname", &host, "--ports", &ports, "--cpus", "2", "--memory-mb", "2048"]);
    }
    let ep = c.endpoints()[..3].join(",");
    let out = c.tmp.path().join("runs.txt");

    // Bad input is refused by field and changes nothing.
    let bad = write_job(&c, "bad", serde_json::json!({"name": "ticker", "command": "true", "schedule": "R/soon/PT5S"}));
    let o = cli(&["job", "create", "-f", &bad, "--endpoints", &ep]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not an ISO 8601 date-time"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let start = (now_ms() / 1000 + 8) * 1000;
    let job = write_job(
        &c,
        "ticker",
        serde_json::json!({
            "name": "ticker",
            "command": format!("echo \"$CLUSTER_JOB_INSTANT_MS $CLUSTER_JOB_ATTEMPT $TASK_ID\" >> {}", out.display()),
            "schedule": format!("R/{}/PT5S", iso(start)),
            "owner": "ops@example.com",
            "cpus": 0.1,
            "mem": 32,
        }),
    );
    let o = cli(&["job", "create", "-f", &job, "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli(&["job", "create", "-f", &job, "--endpoints", &ep]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("already exists"));

    // 60 s, with two leader kills (each killed master comes back after a few seconds).
    let window_end = start + 60_000;
    for at in [start + 12_000, start + 33_000] {
        while now_ms() < at {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let l = kill_leader(&mut c).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.restart(l);
    }
    while now_ms() < window_end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every instant up to the window's end is decided and ended.
    let last = start + (window_end - start) / 5000 * 5000;
    wait_runs(&c, "ticker", Duration::from_secs(20), "every instant decided and ended", |h| {
        h.iter().any(|r| r.instant_ms >= last)
            && h.iter().filter(|r| r.instant_ms <= last).all(|r| r.state != "pending" && r.state != "running")
    })
    .await;
    let h = history(&c, "ticker").await;
    let mut runs: BTreeMap<u64, &pb::RunInfo> = BTreeMap::new();
    for r in &h {
        assert!(runs.insert(r.instant_ms, r).is_none(), "instant {} recorded twice", r.instant_ms);
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let mut written: BTreeMap<u64, usize> = BTreeMap::new();
    for line in text.lines() {
        let instant: u64 = line.split(' ').next().unwrap().parse().unwrap();
        *written.entry(instant).or_default() += 1;
    }
    let mut ran = 0;
    let mut skipped = 0;
    let mut k = start;
    while k <= last {
        let r = runs.get(&k).unwrap_or_else(|| panic!("instant {k} ({}) was lost: no run recorded\n{h:#?}", iso(k)));
        assert_eq!(r.trigger, "schedule");
        match r.state.as_str() {
            "succeeded" => {
                assert_eq!(written.get(&k), Some(&1), "instant {k} succeeded but wrote {:?} times", written.get(&k));
                ran += 1;
            }
            "skipped" => {
                assert!(!r.reason.is_empty(), "a skip has its reason");
                assert_eq!(written.get(&k), None, "skipped instant {k} ran");
                skipped += 1;
            }
            s => panic!("instant {k} ended {s}: {}", r.reason),
        }
        k += 5000;
    }
    assert!(written.keys().all(|i| runs.contains_key(i)), "a run no record explains: {written:?}");
    assert!(written.values().all(|n| *n == 1), "an instant ran twice: {written:?}");
    assert_eq!(ran + skipped, (last - start) / 5000 + 1);
    // With epsilon 60 s, failovers of a second or two skip nothing.
    assert_eq!(skipped, 0, "skipped runs: {h:#?}");
    let o = cli(&["job", "history", "ticker", "--endpoints", &ep]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("succeeded"));
    let o = cli(&["job", "rm", "ticker", "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Parent and child: the child can only run on a worker labelled role=batch, which
    // joins after the leader that committed the parent's success is killed.
    let p = write_job(
        &c,
        "extract",
        serde_json::json!({"name": "extract", "command": "echo extracted", "schedule": "R/2100-01-01T00:00:00Z/P1D", "cpus": 0.1, "mem": 32}),
    );
    let child_out = c.tmp.path().join("child.txt");
    let ch = write_job(
        &c,
        "load",
        serde_json::json!({
            "name": "load", "parents": ["extract"], "cpus": 0.1, "mem": 32,
            "command": format!("echo \"$CLUSTER_JOB_INSTANT_MS\" >> {}", child_out.display()),
            "constraints": [["role", "IS", "batch"]],
        }),
    );
    for f in [&p, &ch] {
        let o = cli(&["job", "create", "-f", f, "--endpoints", &ep]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = cli(&["job", "rm", "extract", "--endpoints", &ep]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a parent of"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(cli(&["job", "run", "extract", "--endpoints", &ep]).status.success());
    wait_runs(&c, "extract", Duration::from_secs(20), "the parent succeeded", |h| {
        h.iter().any(|r| r.state == "succeeded")
    })
    .await;
    // The child's run exists (pending: no worker fits) as of the parent's success.
    let runs = history(&c, "load").await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].state, "pending");
    assert_eq!(runs[0].trigger, "parents");
    let parent_instant = history(&c, "extract").await[0].instant_ms;
    assert_eq!(runs[0].satisfied_by, vec![format!("extract@{parent_instant}")]);
    let l = kill_leader(&mut c).await;
    c.add_worker(
        if l == 0 { 1 } else { 0 },
        &["--hostname", "batch-0", "--label", "role=batch", "--ports", "30000-30099"],
    );
    wait_runs(&c, "load", Duration::from_secs(30), "the child succeeded", |h| h.iter().any(|r| r.state == "succeeded"))
        .await;
    c.restart(l);
    // A second parent success: a second child run, and no more.
    assert!(cli(&["job", "run", "extract", "--endpoints", &ep]).status.success());
    wait_runs(&c, "load", Duration::from_secs(30), "two child runs", |h| {
        h.iter().filter(|r| r.state == "succeeded").count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = history(&c, "load").await;
    assert_eq!(runs.len(), 2, "one child run per parent success: {runs:#?}");
    let lines = std::fs::read_to_string(&child_out).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    let parents: Vec<String> =
        history(&c, "extract").await.iter().map(|r| format!("extract@{}", r.instant_ms)).collect();
    let satisfied: Vec<String> = runs.iter().flat_map(|r| r.satisfied_by.clone()).collect();
    assert_eq!(satisfied, parents, "each child run names the parent run that satisfied it");
}
