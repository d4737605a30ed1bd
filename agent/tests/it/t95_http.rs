//! The HTTP face with third-party clients: 3 masters, each serving `--http-listen`.
//! marathon-python and chronos-python (from PyPI, in the venv `.ci/install-deps` makes)
//! drive a follower's HTTP port, so every write goes through the forwarding to the
//! leader: an app is created from Marathon JSON, scaled, listed, restarted and deleted;
//! a scheduled job and a dependent one are added, run and deleted. Credentials: no
//! credential is refused (but `/health` and `/ready` need none), a reader may read and
//! not write, a revoked token is refused by every master.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::{cli, Cluster};

pub(crate) fn python() -> PathBuf {
    let venv = std::env::var("CLUSTER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/cluster-venv"));
    let py = venv.join("bin/python");
    assert!(py.exists(), "{} is missing: run .ci/install-deps (it makes the venv of client libraries)", py.display());
    py
}

pub(crate) fn py(script: &str, args: &[&str]) -> Output {
    let path = format!("{}/tests/it/py/{script}", env!("CARGO_MANIFEST_DIR"));
    Command::new(python()).arg(path).args(args).output().expect("run python")
}

pub(crate) fn ok(o: &Output, what: &str, c: &Cluster) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{what} failed:\n{out}\n{}\n{}", String::from_utf8_lossy(&o.stderr), c.logs());
    out
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathon_and_chronos_clients_work_through_a_followers_http_port() {
    let mut c = Cluster::start(3).await;
    // Each master restarts with its HTTP face on (kept in its node.json from then on).
    let mut http = Vec::new();
    for i in 0..3 {
        let port = free_port();
        http.push(format!("127.0.0.1:{port}"));
        c.kill9(i);
        let dir = c.nodes[i].dir.display().to_string();
        c.spawn(i, &["start", "--data-dir", &dir, "--http-listen", &http[i]]);
        c.leader(Duration::from_secs(15)).await;
        c.wait_caught_up(i, Duration::from_secs(20)).await;
    }
    let ep = c.endpoints().join(",");
    let ca = c.nodes[0].dir.join("tls/ca.crt").display().to_string();
    let l = c.leader(Duration::from_secs(10)).await;
    let f = (l + 1) % 3;
    let url = format!("https://{}", http[f]);
    // Wait for the follower's HTTP face.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = py("http_status.py", &[&ca, "GET", &format!("{url}/ready"), "-"]);
        if String::from_utf8_lossy(&o.stdout).trim() == "200" {
            break;
        }
        assert!(Instant::now() < deadline, "{url}/ready: {}\n{}", String::from_utf8_lossy(&o.stderr), c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let token = |role: &str| {
        let o = cli(&["token", "issue-http", "--role", role, "--name", "t95", "-q", "--endpoints", &ep]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let admin = token("admin");
    let reader = token("reader");

    // Who may do what.
    let apps = format!("{url}/v2/apps");
    let o = py(
        "http_status.py",
        &[
            &ca,
            "GET",
            &format!("{url}/health"),
            "-",
            "GET",
            &apps,
            "-",
            "GET",
            &apps,
            "cht_0000000000000000_00",
            "GET",
            &apps,
            &reader,
            "POST",
            &apps,
            &reader,
            "GET",
            &apps,
            &admin,
            "GET",
            &format!("{url}/v2/no-such-thing"),
            &admin,
        ],
    );
    let codes: Vec<String> = ok(&o, "status checks", &c).lines().map(str::to_string).collect();
    assert_eq!(codes, ["200", "401", "401", "200", "403", "200", "404"]);

    // marathon-python, through a follower.
    let out = ok(&py("marathon_client.py", &[&url, &admin, &ca, "/compat"]), "marathon-python", &c);
    assert!(out.contains("deleted"), "{out}");
    // chronos-python, through a follower.
    let out = ok(&py("chronos_client.py", &[&http[f], &admin, &ca]), "chronos-python", &c);
    assert!(out.contains("ran parent and child"), "{out}");

    // A revoked token is refused by every master.
    let o = cli(&["token", "ls-http", "-o", "json", "--endpoints", &ep]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<String> =
        v["tokens"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2);
    let reader_id = reader.split('_').nth(1).unwrap();
    assert!(cli(&["token", "revoke-http", "--id", reader_id, "--endpoints", &ep]).status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    for h in &http {
        let o = py("http_status.py", &[&ca, "GET", &format!("https://{h}/v2/apps"), &reader]);
        assert_eq!(ok(&o, "revoked", &c).trim(), "401", "{h} still takes a revoked token");
    }
}
