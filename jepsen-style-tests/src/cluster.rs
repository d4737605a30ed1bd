//! The cluster under test: one `cluster` process per namespace, started through the real
//! `init` and `join`, and the process-level faults (kill -9 + restart, SIGSTOP/SIGCONT,
//! clock offsets through libfaketime, leave + rejoin).

use crate::net::{self, Net};
use anyhow::{bail, Context, Result};
use client::{Client, RaftRole, Role, Settings};
use proto::clusterpb::StatusResponse;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const PORT: u16 = 2379;
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

pub struct NodeProc {
    pub name: String,
    pub ip: String,
    pub ns: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    /// Raft / registry id, known once the node answered Status.
    pub id: u64,
    /// Worker-only agents take no part in Raft and are never faulted.
    pub worker: bool,
    pub removed: bool,
}

pub struct Cluster {
    pub bin: PathBuf,
    pub net: Net,
    pub nodes: Vec<NodeProc>,
    pub masters: usize,
    extra: Vec<String>,
    clock_dir: Option<PathBuf>,
}

/// The admin credential the first master wrote at `init`; every client of the run uses it.
static ADMIN_TLS: std::sync::OnceLock<client::ClientTls> = std::sync::OnceLock::new();

/// A client of the one master at `ip`. It does not follow a not-leader answer: the
/// suite chooses which master each request goes to. Callers set their own deadlines.
pub fn master(ip: &str) -> Client {
    let settings = Settings {
        connect_timeout: Duration::from_millis(500),
        request_timeout: None,
        follow_leader: false,
        ..Settings::default()
    };
    let tls = ADMIN_TLS.get().expect("the admin credential is loaded right after init").clone();
    Client::with_settings([format!("{ip}:{PORT}")], tls, settings)
}

/// Waits for `init` to write its admin credential into `data_dir`, then loads it for
/// [`master`].
async fn load_admin_credential(data_dir: &Path) -> Result<()> {
    let files = client::CredentialFiles::in_dir(&data_dir.join("tls"), "admin");
    for _ in 0..300 {
        if files.exist() {
            let tls = files.load()?.client()?;
            let _ = ADMIN_TLS.set(tls);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("init wrote no admin credential to {} within 30 s", files.cert.display())
}

impl Cluster {
    /// Creates the namespaces and starts `masters` masters (init + joins, each waited for
    /// until it is a voter) and `workers` worker-only agents, every one with `flags`
    /// (also on restarts).
    pub async fn start(
        bin: &Path,
        dir: &Path,
        masters: usize,
        workers: usize,
        flags: Vec<String>,
        faketime: bool,
    ) -> Result<Cluster> {
        if !bin.exists() {
            bail!("{} not found: build it with `cargo build --release --bin cluster` (or pass --bin)", bin.display());
        }
        if faketime && !Path::new(FAKETIME_LIB).exists() {
            bail!("the clock nemesis needs libfaketime ({FAKETIME_LIB}): run `make jepsen-deps`");
        }
        let net = Net::create(masters + workers)?;
        std::fs::create_dir_all(dir.join("nodes"))?;
        let mut nodes = Vec::new();
        for i in 0..masters + workers {
            let worker = i >= masters;
            let name = if worker { format!("w{}", i - masters + 1) } else { format!("n{}", i + 1) };
            nodes.push(NodeProc {
                ip: net.ips[i].clone(),
                ns: net.namespaces[i].clone(),
                data_dir: dir.join("data").join(&name),
                log: dir.join("nodes").join(format!("{name}.log")),
                name,
                child: None,
                paused: false,
                id: 0,
                worker,
                removed: false,
            });
        }
        let extra = flags;
        let clock_dir = if faketime {
            let d = dir.join("clock");
            std::fs::create_dir_all(&d)?;
            Some(d)
        } else {
            None
        };
        let mut c = Cluster { bin: bin.to_path_buf(), net, nodes, masters, extra, clock_dir };
        c.bootstrap(workers).await?;
        Ok(c)
    }

    async fn bootstrap(&mut self, workers: usize) -> Result<()> {
        let first = self.nodes[0].ip.clone();
        let args = self.node_args(0);
        self.spawn(0, "init", &args)?;
        load_admin_credential(&self.nodes[0].data_dir).await?;
        self.wait_status(0, Duration::from_secs(30)).await.context("n1 did not come up after init")?;
        let token = self.token(Role::Manager).await?;
        for i in 1..self.masters {
            let mut args = self.node_args(i);
            args.extend(["--token".into(), token.clone(), format!("{first}:{PORT}")]);
            self.spawn(i, "join", &args)?;
            self.wait_voters(i + 1, Duration::from_secs(60)).await?;
            self.wait_status(i, Duration::from_secs(10)).await?;
        }
        if workers > 0 {
            let wtoken = self.token(Role::Worker).await?;
            for i in self.masters..self.nodes.len() {
                let mut args = self.node_args(i);
                args.extend(["--token".into(), wtoken.clone(), format!("{first}:{PORT}")]);
                self.spawn(i, "join", &args)?;
            }
        }
        Ok(())
    }

    fn node_args(&self, i: usize) -> Vec<String> {
        let n = &self.nodes[i];
        let mut a = vec![
            "--data-dir".to_string(),
            n.data_dir.display().to_string(),
            "--listen".into(),
            format!("{}:{PORT}", n.ip),
            "--name".into(),
            n.name.clone(),
        ];
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts `cluster <sub> <args>` inside node i's namespace, logging to its log file.
    fn spawn(&mut self, i: usize, sub: &str, args: &[String]) -> Result<()> {
        let n = &self.nodes[i];
        let log = OpenOptions::new().create(true).append(true).open(&n.log)?;
        // nsenter enters only the network namespace: `ip netns exec` would also remount
        // /sys for it, hiding the cgroup hierarchies the agents put tasks in.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", n.ns)).arg("--").arg(&self.bin).arg(sub).args(args);
        if let Some(d) = &self.clock_dir {
            let f = d.join(&n.name);
            if !f.exists() {
                std::fs::write(&f, "+0\n")?;
            }
            // Only the wall clock moves; tokio's timers run on CLOCK_MONOTONIC, which no
            // real clock skew touches either.
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME_TIMESTAMP_FILE", &f)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().with_context(|| format!("cannot start {} in {}", self.bin.display(), n.ns))?;
        net::track_pid(child.id() as i32);
        self.nodes[i].child = Some(child);
        self.nodes[i].paused = false;
        Ok(())
    }

    pub fn pid(&self, i: usize) -> Option<i32> {
        self.nodes[i].child.as_ref().map(|c| c.id() as i32)
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let pid = c.id() as i32;
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let _ = c.wait();
            net::untrack_pid(pid);
        }
        self.nodes[i].paused = false;
    }

    /// Restarts a killed node from its data dir (`cluster start`).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.is_running(i) {
            return Ok(());
        }
        self.kill(i);
        let d = self.nodes[i].data_dir.display().to_string();
        let mut args = vec!["--data-dir".to_string(), d];
        args.extend(self.extra.iter().cloned());
        self.spawn(i, "start", &args)
    }

    pub fn signal(&mut self, i: usize, sig: i32) {
        if let Some(pid) = self.pid(i) {
            unsafe {
                libc::kill(pid, sig);
            }
            self.nodes[i].paused = sig == libc::SIGSTOP;
        }
    }

    pub fn set_clock(&self, i: usize, offset_ms: i64) -> Result<()> {
        let d = self.clock_dir.as_ref().context("clock nemesis without faketime")?;
        let s = offset_ms / 1000;
        std::fs::write(d.join(&self.nodes[i].name), format!("{}{}\n", if s >= 0 { "+" } else { "" }, s))?;
        Ok(())
    }

    pub async fn status(&self, i: usize) -> Option<StatusResponse> {
        match tokio::time::timeout(Duration::from_millis(700), master(&self.nodes[i].ip).status()).await {
            Ok(Ok(s)) => Some(s),
            _ => None,
        }
    }

    async fn wait_status(&mut self, i: usize, within: Duration) -> Result<StatusResponse> {
        let end = tokio::time::Instant::now() + within;
        loop {
            if let Some(s) = self.status(i).await {
                self.nodes[i].id = s.node_id;
                return Ok(s);
            }
            if !self.is_running(i) {
                bail!("{} exited; see {}", self.nodes[i].name, self.nodes[i].log.display());
            }
            if tokio::time::Instant::now() > end {
                bail!("{} did not answer Status within {within:?}", self.nodes[i].name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn token(&self, role: Role) -> Result<String> {
        for _ in 0..50 {
            for n in self.nodes.iter().take(self.masters) {
                if let Ok(Ok(t)) = tokio::time::timeout(Duration::from_secs(2), master(&n.ip).token(role)).await {
                    return Ok(t);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("no master handed out a {role} token")
    }

    /// Waits until the leader lists `want` voters.
    async fn wait_voters(&self, want: usize, within: Duration) -> Result<()> {
        let end = tokio::time::Instant::now() + within;
        loop {
            let first = master(&self.nodes[0].ip);
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), first.members()).await {
                let voters = m.members.iter().filter(|m| m.role.parse() == Ok(RaftRole::Voter)).count();
                if voters >= want {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > end {
                bail!("the cluster did not reach {want} voters within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The master that leads in the highest term any running master reports.
    pub async fn leader(&self) -> Option<usize> {
        let futs = (0..self.masters).map(|i| async move { (i, self.status(i).await) });
        let all = futures::future::join_all(futs).await;
        all.into_iter()
            .filter_map(|(i, s)| s.filter(|s| s.state == "leader").map(|s| (s.term, i)))
            .max()
            .map(|(_, i)| i)
    }

    /// Waits until one leader is known and every running master follows it.
    pub async fn wait_healthy(&self, within: Duration) -> Result<usize> {
        let end = tokio::time::Instant::now() + within;
        loop {
            let futs = (0..self.masters).filter(|i| !self.nodes[*i].removed).map(|i| self.status(i));
            let all = futures::future::join_all(futs).await;
            let leaders: Vec<u64> = all.iter().flatten().filter_map(|s| s.leader_id).collect();
            if all.iter().all(|s| s.is_some()) && !leaders.is_empty() && leaders.len() == all.len() {
                let l = leaders[0];
                if leaders.iter().all(|x| *x == l) {
                    if let Some(i) = self.nodes.iter().position(|n| n.id == l) {
                        return Ok(i);
                    }
                }
            }
            if tokio::time::Instant::now() > end {
                bail!("the cluster did not agree on a leader within {within:?} after the heal");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes master i from the Raft group through another master; the node exits.
    pub async fn leave(&mut self, i: usize) -> Result<()> {
        let id = self.nodes[i].id;
        let via = (0..self.masters).find(|&j| j != i && !self.nodes[j].removed).context("no other master")?;
        let c = master(&self.nodes[via].ip);
        let res = tokio::time::timeout(Duration::from_secs(10), c.leave(Some(id))).await;
        if !matches!(res, Ok(Ok(_))) {
            // The removal may still have committed: the member list decides.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let members = tokio::time::timeout(Duration::from_secs(5), c.members()).await;
            let still = match members {
                Ok(Ok(m)) => m.members.iter().any(|m| m.node_id == id),
                _ => true,
            };
            if still {
                bail!("leave of {} failed: {:?}", self.nodes[i].name, res.map(|r| r.map(|_| ())));
            }
        }
        self.nodes[i].removed = true;
        // The removed node exits by itself; make sure.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.kill(i);
        Ok(())
    }

    /// Wipes a removed master and joins it again with a fresh manager token.
    pub async fn rejoin(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        let _ = std::fs::remove_dir_all(&self.nodes[i].data_dir);
        let token = self.token(Role::Manager).await?;
        let seed = (0..self.masters).find(|&j| j != i && !self.nodes[j].removed).context("no master to join")?;
        let mut args = self.node_args(i);
        args.extend(["--token".into(), token, format!("{}:{PORT}", self.nodes[seed].ip)]);
        self.spawn(i, "join", &args)?;
        self.nodes[i].removed = false;
        self.wait_status(i, Duration::from_secs(30)).await?;
        Ok(())
    }

    /// Undoes every fault: network healed, clocks reset, paused nodes resumed, killed
    /// nodes restarted, removed masters joined again.
    pub async fn heal_all(&mut self) -> Result<()> {
        self.net.heal()?;
        for i in 0..self.nodes.len() {
            if self.clock_dir.is_some() {
                self.set_clock(i, 0)?;
            }
            if self.nodes[i].paused {
                self.signal(i, libc::SIGCONT);
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].removed {
                self.rejoin(i).await?;
            } else if !self.is_running(i) {
                self.restart(i)?;
            }
        }
        Ok(())
    }

    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
