//! Health checks, run by the agent: HTTP (a 2xx or 3xx answer), TCP (a connection) or
//! COMMAND (exit 0), each on its own interval. Only changes leave this module: the first
//! success makes a task healthy; `maxConsecutiveFailures` failures in a row make it
//! unhealthy, except failures in the grace period before the first success (Marathon's
//! rules). Results go to the masters as state changes, never one write per check.

use std::time::Duration;

use proto::clusterpb as pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One check's verdict change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub task_id: String,
    pub check: usize,
    pub healthy: bool,
    pub why: String,
}

/// Decides verdicts from results; kept apart from the IO so the rules are tested alone.
#[derive(Debug, Default)]
pub struct Rule {
    pub grace: Duration,
    pub max_failures: u32,
    healthy: Option<bool>,
    ever_healthy: bool,
    failures: u32,
}

impl Rule {
    pub fn new(grace: Duration, max_failures: u32) -> Rule {
        Rule { grace, max_failures, ..Default::default() }
    }

    /// A result `since_start` after the task started: the new verdict, if it changed.
    pub fn observe(&mut self, ok: bool, since_start: Duration) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.ever_healthy = true;
            if self.healthy != Some(true) {
                self.healthy = Some(true);
                return Some(true);
            }
            return None;
        }
        if !self.ever_healthy && since_start < self.grace {
            return None;
        }
        self.failures += 1;
        if self.max_failures > 0 && self.failures >= self.max_failures && self.healthy != Some(false) {
            self.healthy = Some(false);
            return Some(false);
        }
        None
    }
}

async fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let call = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let s = resp.status().as_u16();
        if (200..400).contains(&s) {
            Ok(())
        } else {
            Err(format!("HTTP {s}"))
        }
    };
    tokio::time::timeout(timeout, call).await.map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

async fn tcp(port: u16, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {} s", timeout.as_secs())),
    }
}

async fn command(cmd: &str, env: &[(String, String)], cwd: &std::path::Path, timeout: Duration) -> Result<(), String> {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c").arg(cmd).current_dir(cwd).envs(env.iter().cloned()).kill_on_drop(true);
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    match tokio::time::timeout(timeout, c.status()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("exited with {s}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("still running after {} s", timeout.as_secs())),
    }
}

/// Starts one loop per check of `task`; verdict changes go to `tx`. Dropping (aborting)
/// the handles stops them.
pub fn start(
    task: &pb::AssignedTask,
    env: Vec<(String, String)>,
    cwd: std::path::PathBuf,
    tx: mpsc::UnboundedSender<Verdict>,
) -> Vec<JoinHandle<()>> {
    let started = tokio::time::Instant::now();
    task.health_checks
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let (h, id, env, cwd, tx) = (h.clone(), task.id.clone(), env.clone(), cwd.clone(), tx.clone());
            let port = task.ports.get(h.port_index as usize).copied().unwrap_or(0) as u16;
            tokio::spawn(async move {
                let mut rule = Rule::new(Duration::from_secs(u64::from(h.grace_period_s)), h.max_consecutive_failures);
                let interval = Duration::from_secs(u64::from(h.interval_s.max(1)));
                let timeout = Duration::from_secs(u64::from(h.timeout_s.max(1)));
                // The first check comes soon after start: a healthy task need not wait a
                // whole interval (60 s by default) to count.
                tokio::time::sleep(Duration::from_millis(500).min(interval)).await;
                loop {
                    let r = match h.protocol.as_str() {
                        "HTTP" => http_get(port, &h.path, timeout).await,
                        "TCP" => tcp(port, timeout).await,
                        _ => command(&h.command, &env, &cwd, timeout).await,
                    };
                    let ok = r.is_ok();
                    if let Some(healthy) = rule.observe(ok, started.elapsed()) {
                        let why = r.err().unwrap_or_default();
                        if tx.send(Verdict { task_id: id.clone(), check: i, healthy, why }).is_err() {
                            return;
                        }
                    }
                    // Within the grace period and before the first success, check every
                    // second so a new task becomes healthy promptly; otherwise at the
                    // configured interval (so failures count at Marathon's pace).
                    let early = rule.healthy.is_none() && started.elapsed() < rule.grace;
                    let wait = if early { interval.min(Duration::from_secs(1)) } else { interval };
                    tokio::time::sleep(wait).await;
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_hides_early_failures_and_only_changes_are_reported() {
        let s = Duration::from_secs;
        let mut r = Rule::new(s(10), 3);
        assert_eq!(r.observe(false, s(1)), None);
        assert_eq!(r.observe(false, s(2)), None);
        assert_eq!(r.observe(false, s(3)), None, "three failures inside the grace period count for nothing");
        assert_eq!(r.observe(true, s(4)), Some(true));
        assert_eq!(r.observe(true, s(5)), None, "no change, nothing to report");
        assert_eq!(r.observe(false, s(6)), None, "after the first success grace is over");
        assert_eq!(r.observe(false, s(7)), None);
        assert_eq!(r.observe(false, s(8)), Some(false), "the third failure in a row");
        assert_eq!(r.observe(false, s(9)), None);
        assert_eq!(r.observe(true, s(10)), Some(true));
        let mut never = Rule::new(s(0), 0);
        for i in 0..10 {
            assert_eq!(never.observe(false, s(i)), None, "maxConsecutiveFailures 0: never unhealthy");
        }
    }
}
