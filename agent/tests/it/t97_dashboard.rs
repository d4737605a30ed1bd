//! The dashboard in headless Chromium (Debian's, driven by Selenium from PyPI): 3
//! masters with their HTTP faces, a network, a service and a job so that no page is
//! empty. Every page loads with no console error (screenshots of each go to
//! `$CLUSTER_SCREENSHOTS`, or the test's temporary directory); then the leader is
//! killed and the masters page, served by a follower, shows the new leader within 2 s
//! without a reload.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{cli, Cluster};
use crate::t95_http::python;
use crate::t96_discovery::{token, wait_ready, with_faces};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_load_clean_and_show_a_new_leader_within_2_s() {
    let mut c = Cluster::start(3).await;
    let (http, _) = with_faces(&mut c, 3, false).await;
    let ep = c.endpoints().join(",");
    let ca = c.nodes[0].dir.join("tls/ca.crt").display().to_string();
    let tmp = c.nodes[0].dir.parent().unwrap().to_path_buf();
    let o = cli(&["network", "create", "overlay", "--subnet", "10.97.0.0/24", "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let app = tmp.join("app.json");
    std::fs::write(
        &app,
        r#"{"id": "/shop/web", "cmd": "echo serving; exec sleep 1000", "cpus": 0.1, "mem": 32, "instances": 2,
            "networks": [{"mode": "container", "name": "overlay"}]}"#,
    )
    .unwrap();
    let o = cli(&["service", "create", "-d", "-f", app.to_str().unwrap(), "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let job = tmp.join("job.json");
    std::fs::write(&job, r#"{"name": "tick", "command": "echo tick", "schedule": "R//PT5S", "cpus": 0.1, "mem": 16}"#)
        .unwrap();
    let o = cli(&["job", "create", "-f", job.to_str().unwrap(), "--endpoints", &ep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let l = c.leader(Duration::from_secs(10)).await;
    let f = (l + 1) % 3;
    let url = format!("https://{}", http[f]);
    wait_ready(&c, &ca, &url).await;
    let admin = token(&ep, "admin");
    let shots = std::env::var("CLUSTER_SCREENSHOTS").unwrap_or_else(|_| tmp.join("shots").display().to_string());
    let script = format!("{}/tests/it/py/dashboard.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python())
        .args([&script, &url, &admin, &shots])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    let mut stdin = child.stdin.take().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut next = async |what: &str| -> Option<String> {
        loop {
            match tokio::time::timeout(Duration::from_secs(90), rx.recv()).await {
                Ok(Some(line)) => {
                    eprintln!("dashboard.py: {line}");
                    if line.starts_with(what) {
                        return Some(line);
                    }
                }
                _ => return None,
            }
        }
    };
    let Some(before) = next("leader ").await else {
        let o = child.wait_with_output().unwrap();
        panic!("dashboard.py failed before the failover:\n{}\n{}", String::from_utf8_lossy(&o.stderr), c.logs());
    };
    assert!(before.contains(&format!("({})", c.status(l).await.map(|s| s.node_id).unwrap_or(0))), "{before}");
    c.kill9(l);
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    let Some(after) = next("new-leader ").await else {
        let o = child.wait_with_output().unwrap();
        panic!("dashboard.py failed after the failover:\n{}\n{}", String::from_utf8_lossy(&o.stderr), c.logs());
    };
    let ms: u64 = after.rsplit(' ').next().unwrap().parse().unwrap();
    let nl = c.leader(Duration::from_secs(10)).await;
    let new_id = c.status(nl).await.map(|s| s.node_id).unwrap_or(0);
    assert!(after.contains(&format!("({new_id})")), "the page shows {after}, the new leader is {new_id}");
    assert!(ms <= 2000, "the masters page showed the new leader {ms} ms after the kill");
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
