//! Starts and kills `cluster` processes in temporary data dirs.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::clusterpb::cluster_admin_client::ClusterAdminClient;
use proto::clusterpb::StatusRequest;
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::{PutRequest, RangeRequest};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cluster")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Node {
    pub addr: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    /// Extra flags for every init/join/start (tuning).
    pub extra: Vec<String>,
    pub nodes: Vec<Node>,
    pub tmp: tempfile::TempDir,
    pub manager_token: String,
    pub worker_token: String,
}

/// What a test connects to a master with: the admin credential of its cluster.
#[derive(Clone)]
struct Trust {
    tls: client::ClientTls,
    /// `<data dir>/tls`, holding ca.crt and admin.*: `--cert-dir` for the CLI.
    dir: PathBuf,
}

/// Master address → its cluster's admin credential. Tests run in parallel, one cluster
/// (and CA) each, and every address is a fresh port, so the address names the cluster.
static TRUST: Mutex<BTreeMap<String, Trust>> = Mutex::new(BTreeMap::new());

/// Connect to `addr` with the admin credential `init` (or `snapshot restore`) wrote into
/// `data_dir`, waiting up to 30 s for it to appear.
pub async fn trust(addr: &str, data_dir: &Path) {
    let dir = data_dir.join("tls");
    let files = client::CredentialFiles::in_dir(&dir, "admin");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !files.exist() {
        assert!(Instant::now() < deadline, "no admin credential in {} after 30 s", dir.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Written by another process: a partly written file may fail to load once.
    let tls = loop {
        match files.load().and_then(|c| c.client()) {
            Ok(t) => break t,
            Err(e) => {
                assert!(Instant::now() < deadline, "admin credential in {}: {e}", dir.display());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    TRUST.lock().unwrap().insert(addr.to_string(), Trust { tls, dir });
}

/// `addr` is served by the same cluster as `known`.
pub fn same_cluster(addr: &str, known: &str) {
    let t = TRUST.lock().unwrap().get(known).cloned().expect("known address");
    TRUST.lock().unwrap().insert(addr.to_string(), t);
}

fn trust_of(addr: &str) -> Option<Trust> {
    TRUST.lock().unwrap().get(addr).cloned()
}

/// The admin client TLS for master `addr`.
pub fn tls_for(addr: &str) -> client::ClientTls {
    trust_of(addr).unwrap_or_else(|| panic!("no credential registered for {addr}")).tls
}

/// A `client::Client` of `endpoints` (all of one cluster) with its admin credential.
pub fn client_of<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> client::Client {
    let eps: Vec<String> = endpoints.into_iter().map(Into::into).collect();
    let tls = tls_for(&eps[0]);
    client::Client::new(eps, tls)
}

/// Runs `cluster ARGS` to completion. A client command (`--endpoints`) gets the admin
/// credential of the cluster its first endpoint belongs to, unless it names one itself.
pub fn cli(args: &[&str]) -> Output {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let named = a.iter().any(|x| matches!(x.as_str(), "--cert-dir" | "--data-dir" | "--cacert"));
    let first = a
        .iter()
        .position(|x| x == "--endpoints")
        .and_then(|i| a.get(i + 1))
        .map(|e| e.split(',').next().unwrap_or("").to_string());
    if let (false, Some(ep)) = (named, first) {
        if let Some(t) = trust_of(&ep) {
            a.extend(["--cert-dir".to_string(), t.dir.display().to_string()]);
        }
    }
    Command::new(bin()).args(&a).output().expect("run cluster")
}

impl Cluster {
    /// `init` on node 0, `join` on the others, until all are voters.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// Like [`Cluster::start`], with extra node flags such as `--snapshot-every-entries`.
    pub async fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut c =
            Cluster { extra, nodes: Vec::new(), tmp, manager_token: String::new(), worker_token: String::new() };
        for i in 0..n {
            let addr = format!("127.0.0.1:{}", free_port());
            let dir = c.tmp.path().join(format!("n{i}"));
            let log = c.tmp.path().join(format!("n{i}.log"));
            c.nodes.push(Node { addr, dir, log, child: None });
        }
        let n0 = &c.nodes[0];
        let (dir, addr) = (n0.dir.to_str().unwrap().to_string(), n0.addr.clone());
        c.spawn(0, &["init", "--data-dir", &dir, "--listen", &addr]);
        trust(&addr, &c.nodes[0].dir).await;
        for i in 1..n {
            same_cluster(&c.nodes[i].addr, &addr);
        }
        c.manager_token = c.token("manager").await;
        c.worker_token = c.token("worker").await;
        for i in 1..n {
            c.join(i).await;
        }
        c.wait_voters(n).await;
        c
    }

    /// Adds a node slot (a free port, a data dir path, a log file); starts nothing.
    pub fn add_slot(&mut self) -> usize {
        let i = self.nodes.len();
        let addr = format!("127.0.0.1:{}", free_port());
        let dir = self.tmp.path().join(format!("n{i}"));
        let log = self.tmp.path().join(format!("n{i}.log"));
        same_cluster(&addr, &self.nodes[0].addr);
        self.nodes.push(Node { addr, dir, log, child: None });
        i
    }

    /// Adds a node slot and joins it as a manager.
    pub async fn add_node(&mut self) -> usize {
        let i = self.add_slot();
        self.join(i).await;
        i
    }

    /// Adds a node slot and joins it as a worker agent through master `seed`.
    pub fn add_worker(&mut self, seed: usize, args: &[&str]) -> usize {
        let i = self.nodes.len();
        let addr = format!("127.0.0.1:{}", free_port());
        let dir = self.tmp.path().join(format!("n{i}"));
        let log = self.tmp.path().join(format!("n{i}.log"));
        same_cluster(&addr, &self.nodes[0].addr);
        self.nodes.push(Node { addr: addr.clone(), dir: dir.clone(), log, child: None });
        let (seed, token) = (self.nodes[seed].addr.clone(), self.worker_token.clone());
        let mut a = vec!["join", "--data-dir", dir.to_str().unwrap(), "--listen", &addr, "--token", &token, &seed];
        a.extend_from_slice(args);
        let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        self.spawn(i, &a);
        i
    }

    /// The registry as the leader sees it (heartbeat ages and sessions included).
    pub async fn nodes(&self) -> Option<proto::clusterpb::NodesResponse> {
        use proto::clusterpb::registry_client::RegistryClient;
        let l = self.leader(Duration::from_secs(10)).await;
        for i in [l] {
            let Some(ch) = agent_channel(&self.nodes[i].addr).await else { continue };
            let mut client = RegistryClient::new(ch);
            let call = client.nodes(proto::clusterpb::NodesRequest { node_id: 0 });
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), call).await {
                if r.get_ref().from_leader {
                    return Some(r.into_inner());
                }
            }
        }
        None
    }

    /// Every committed registry event, read from a live master.
    pub async fn events(&self) -> Vec<proto::clusterpb::RegistryEvent> {
        use proto::clusterpb::registry_client::RegistryClient;
        for i in self.alive() {
            let Some(ch) = agent_channel(&self.nodes[i].addr).await else { continue };
            let req = proto::clusterpb::WatchRegistryRequest { start_index: 1, follow: false };
            let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), RegistryClient::new(ch).watch(req)).await
            else {
                continue;
            };
            let mut s = r.into_inner();
            let mut out = Vec::new();
            while let Ok(Some(e)) = s.message().await {
                out.push(e);
            }
            return out;
        }
        panic!("no master answered a registry watch\n{}", self.logs());
    }

    /// Waits for node `i`'s process to exit on its own; returns its exit status.
    pub async fn wait_exit(&mut self, i: usize, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(c) = self.nodes[i].child.as_mut() {
                if let Some(st) = c.try_wait().unwrap() {
                    self.nodes[i].child = None;
                    return Some(st);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn spawn(&mut self, i: usize, args: &[&str]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.nodes[i].log).unwrap();
        let child = Command::new(bin())
            .args(args)
            .args(&self.extra)
            .env("CLUSTER_LOG", "info,openraft=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn cluster");
        self.nodes[i].child = Some(child);
    }

    pub async fn join(&mut self, i: usize) {
        let (dir, addr) = (self.nodes[i].dir.to_str().unwrap().to_string(), self.nodes[i].addr.clone());
        let seed = self.nodes[0].addr.clone();
        let token = self.manager_token.clone();
        self.spawn(i, &["join", "--data-dir", &dir, "--listen", &addr, "--token", &token, &seed]);
    }

    async fn token(&self, role: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let o = cli(&["token", role, "-q", "--endpoints", &self.nodes[0].addr]);
            if o.status.success() {
                return String::from_utf8(o.stdout).unwrap().trim().to_string();
            }
            assert!(Instant::now() < deadline, "no token: {}", String::from_utf8_lossy(&o.stderr));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].child.is_some()).collect()
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) node `i`'s process.
    pub fn pause(&self, i: usize, stop: bool) {
        let pid = self.nodes[i].child.as_ref().expect("node running").id().to_string();
        let st = Command::new("kill").args([if stop { "-STOP" } else { "-CONT" }, &pid]).status().unwrap();
        assert!(st.success());
    }

    pub fn restart(&mut self, i: usize) {
        let dir = self.nodes[i].dir.to_str().unwrap().to_string();
        self.spawn(i, &["start", "--data-dir", &dir]);
    }

    pub async fn status(&self, i: usize) -> Option<proto::clusterpb::StatusResponse> {
        let ch = agent_channel(&self.nodes[i].addr).await?;
        let r =
            tokio::time::timeout(Duration::from_secs(1), ClusterAdminClient::new(ch).status(StatusRequest {})).await;
        r.ok()?.ok().map(|r| r.into_inner())
    }

    /// Index of the node that reports itself leader, waiting up to `within`.
    pub async fn leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            for i in self.alive() {
                if let Some(s) = self.status(i).await {
                    if s.state == "leader" {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_voters(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let l = self.leader(Duration::from_secs(10)).await;
            if let Some(s) = self.status(l).await {
                if s.members.iter().filter(|m| m.role == "voter").count() == n {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "cluster did not reach {n} voters\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until node `i` has applied at least what the leader has committed.
    pub async fn wait_caught_up(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let l = self.leader(within).await;
            // Caught up: the leader committed its whole log and node i applied all of it.
            if let (Some(ls), Some(s)) = (self.status(l).await, self.status(i).await) {
                if ls.commit_index == ls.last_log_index
                    && s.applied_index.is_some()
                    && s.applied_index >= ls.last_log_index
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "node {i} did not catch up\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            s += &format!("--- node {i} ({}) last lines:\n", n.addr);
            for l in tail.into_iter().rev() {
                s += l;
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        // Tasks outlive their agents by design: a test ends them itself.
        for n in &self.nodes {
            for r in agent::tasks::sandbox::load_all(&n.dir) {
                if r.ended.is_none() && agent::tasks::sandbox::alive(r.pid, r.start_ticks) {
                    // SAFETY: the task leads its own process group (setsid).
                    unsafe {
                        libc::kill(-r.pid, libc::SIGKILL);
                    }
                }
                if let Some(g) = &r.group {
                    g.signal_all(libc::SIGKILL);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for n in &self.nodes {
            for r in agent::tasks::sandbox::load_all(&n.dir) {
                if let Some(g) = &r.group {
                    g.remove();
                    // The node's own level, empty once its tasks' groups are gone.
                    for p in g.paths.values() {
                        if let Some(parent) = p.parent() {
                            let _ = std::fs::remove_dir(parent);
                        }
                    }
                }
            }
        }
    }
}

/// A connected channel to master `addr` with its cluster's admin credential; `None` if
/// it cannot be reached.
pub async fn agent_channel(addr: &str) -> Option<tonic::transport::Channel> {
    // The timeout covers the TLS handshake too, which needs the server to be scheduled.
    let o = client::pki::net::ChannelOptions { connect_timeout: Duration::from_secs(2), ..Default::default() };
    client::pki::net::connect(addr, &tls_for(addr), &o).await.ok()
}

/// A connected channel to master `addr` that presents the node certificate kept in
/// `data_dir` (a master's: manager; an agent's: worker).
pub async fn node_channel(addr: &str, data_dir: &Path) -> tonic::transport::Channel {
    let tls = client::CredentialFiles::in_dir(&data_dir.join("tls"), "node")
        .load()
        .and_then(|c| c.client())
        .unwrap_or_else(|e| panic!("node credential in {}: {e}", data_dir.display()));
    let o = client::pki::net::ChannelOptions { connect_timeout: Duration::from_secs(2), ..Default::default() };
    client::pki::net::connect(addr, &tls, &o).await.expect("connect with the node credential")
}

/// An etcd-client connection to one member.
pub async fn etcd(addr: &str) -> etcd_client::Client {
    // etcd-client speaks over our TLS channel (its `raw-channel` feature), with the
    // cluster's admin certificate.
    let ch = agent_channel(addr).await.expect("connect");
    etcd_client::Client::from_channel(etcd_client::Channel::Tonic(ch), None).await.expect("etcd client")
}

/// Writers that record every key whose put was acknowledged.
pub struct Writers {
    pub acked: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    pub fn start(endpoints: Vec<String>, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let tasks = (0..n)
            .map(|w| {
                let (stop, acked, endpoints) = (stop.clone(), acked.clone(), endpoints.clone());
                tokio::spawn(async move {
                    let mut seq = 0u64;
                    let mut ep = w % endpoints.len();
                    // One connection per writer, kept until a put fails, as a real client
                    // does: a new connection per put made the writers themselves the
                    // bottleneck on a loaded machine.
                    let mut conn: Option<KvClient<tonic::transport::Channel>> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("w{w:02}/{seq:08}");
                        if conn.is_none() {
                            conn = agent_channel(&endpoints[ep]).await.map(KvClient::new);
                        }
                        let Some(kv) = conn.as_mut() else {
                            ep = (ep + 1) % endpoints.len();
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        let req = PutRequest {
                            key: key.clone().into_bytes(),
                            value: key.clone().into_bytes(),
                            ..Default::default()
                        };
                        match tokio::time::timeout(Duration::from_secs(3), kv.put(req)).await {
                            Ok(Ok(_)) => {
                                acked.lock().unwrap().insert(key);
                                seq += 1;
                            }
                            // Unknown outcome: never counted as acknowledged; use a new key.
                            _ => {
                                seq += 1;
                                conn = None;
                                ep = (ep + 1) % endpoints.len();
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Writers { stop, acked, tasks }
    }

    pub async fn stop(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// etcdctl (v3 API) against every master of `c`, over TLS with its admin credential, as
/// an operator runs it. Stdout is piped; stderr goes nowhere (a spawned watcher's is
/// never read), [`etcdctl`] pipes it to report failures.
pub fn etcdctl_cmd(c: &Cluster, args: &[&str]) -> Command {
    let eps: Vec<String> = c.endpoints().iter().map(|e| format!("https://{e}")).collect();
    let tls = c.nodes[0].dir.join("tls");
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", eps.join(",")))
        .arg(format!("--cacert={}", tls.join("ca.crt").display()))
        .arg(format!("--cert={}", tls.join("admin.crt").display()))
        .arg(format!("--key={}", tls.join("admin.key").display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Runs etcdctl to completion, feeding it `stdin`; asserts it succeeded and returns its
/// stdout.
pub fn etcdctl(c: &Cluster, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut cmd = etcdctl_cmd(c, args);
    cmd.stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("etcdctl must be installed (run .ci/install-deps)");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "etcdctl {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Every key-value on node `i`, read locally (serializable), with revisions.
pub async fn dump(c: &Cluster, i: usize) -> Vec<(String, String, i64, i64)> {
    let ch = agent_channel(&c.nodes[i].addr).await.expect("connect");
    let r = KvClient::new(ch)
        .max_decoding_message_size(256 << 20)
        .range(RangeRequest { key: vec![0], range_end: vec![0], serializable: true, ..Default::default() })
        .await
        .expect("range")
        .into_inner();
    r.kvs
        .into_iter()
        .map(|kv| {
            (String::from_utf8(kv.key).unwrap(), String::from_utf8(kv.value).unwrap(), kv.mod_revision, kv.version)
        })
        .collect()
}
