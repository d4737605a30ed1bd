//! Running a node: `init`, `join` and `start`. Each runs in the foreground until
//! Ctrl-C/SIGTERM, or until the node is removed from the cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use client::Role;
use coord::{CoordConfig, CoordNode, InitSecrets, NodeOptions};
use proto::clusterpb::cluster_admin_client::ClusterAdminClient;
use proto::clusterpb::JoinRequest;
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::resources::AgentSettings;
use crate::session;

const NODE_FILE: &str = "node.json";

/// A new node, as `init` and `join` get it.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Must be empty or absent.
    pub data_dir: PathBuf,
    /// host:port to serve gRPC on.
    pub listen: String,
    /// host:port others reach this node at; `None` is `listen`.
    pub advertise: Option<String>,
    /// `None` is `node-<id>`.
    pub name: Option<String>,
    pub agent: AgentFlags,
    pub config: CoordConfig,
}

/// What the agent should offer, as given on the command line: each value given replaces
/// the recorded one, and labels given replace all recorded labels.
#[derive(Debug, Clone, Default)]
pub struct AgentFlags {
    /// Run no agent on this master (a worker always runs one).
    pub no_worker: bool,
    pub cpus: Option<f64>,
    pub memory_mb: Option<u64>,
    pub disk_mb: Option<u64>,
    pub ports: Option<String>,
    pub labels: Vec<(String, String)>,
}

impl AgentFlags {
    /// Applies these flags over recorded settings.
    fn merge_into(&self, no_worker: &mut bool, s: &mut AgentSettings) {
        if self.no_worker {
            *no_worker = true;
        }
        s.cpus = self.cpus.or(s.cpus);
        s.memory_mb = self.memory_mb.or(s.memory_mb);
        s.disk_mb = self.disk_mb.or(s.disk_mb);
        s.ports = self.ports.clone().or(s.ports.take());
        if !self.labels.is_empty() {
            s.labels = self.labels.iter().cloned().collect();
        }
    }
}

/// What a node must remember across restarts, besides its RocksDB.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeFile {
    pub(crate) node_id: u64,
    pub(crate) name: String,
    pub(crate) cluster_id: String,
    pub(crate) role: Role,
    pub(crate) listen: String,
    pub(crate) advertise: String,
    /// Only on the node that ran `init`, until its identity is committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) init: Option<InitFile>,
    /// Proves to the registry that this node owns its id.
    #[serde(default)]
    pub(crate) node_secret: String,
    /// A master that runs no agent.
    #[serde(default)]
    pub(crate) no_worker: bool,
    #[serde(default)]
    pub(crate) agent: AgentSettings,
    /// Master addresses, as last pushed by the leader: where a restarted agent looks.
    #[serde(default)]
    pub(crate) masters: Vec<String>,
}

impl NodeFile {
    fn merge_agent_flags(&mut self, a: &AgentFlags) {
        a.merge_into(&mut self.no_worker, &mut self.agent);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InitFile {
    pub(crate) manager_secret: String,
    pub(crate) worker_secret: String,
}

pub(crate) fn write_node_file(dir: &Path, f: &NodeFile) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = dir.join("node.json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(serde_json::to_string_pretty(f)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(NODE_FILE))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

pub(crate) fn read_node_file(dir: &Path) -> anyhow::Result<NodeFile> {
    let p = dir.join(NODE_FILE);
    let b = std::fs::read(&p).with_context(|| {
        format!(
            "{} not found: {} is not a node data dir (create one with `cluster init` or `cluster join`)",
            p.display(),
            dir.display()
        )
    })?;
    serde_json::from_slice(&b).with_context(|| format!("corrupt {}", p.display()))
}

/// `init` and `join` need a fresh data dir; anything in it means a node lived there.
pub(crate) fn require_empty_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "data dir {} is not empty; to restart the node that lives there use `cluster start --data-dir {}`",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}

/// The listen address and the address others use (`advertise`, default `listen`).
pub(crate) fn resolve_addrs(listen: &str, advertise: Option<&str>) -> anyhow::Result<(String, String)> {
    let listen_addr: SocketAddr = listen.parse().with_context(|| format!("--listen {listen:?} is not IP:PORT"))?;
    let advertise = advertise.unwrap_or(listen).to_string();
    let adv: SocketAddr = advertise.parse().with_context(|| format!("--advertise {advertise:?} is not IP:PORT"))?;
    if adv.ip().is_unspecified() {
        bail!("--listen {listen_addr} is a wildcard address; give --advertise with the address other nodes should use");
    }
    Ok((listen_addr.to_string(), advertise))
}

async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))
}

pub(crate) fn secret() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 26)
}

/// `init`: a new cluster with this node as its only master; prints the join tokens and
/// serves until stopped.
pub async fn init(node: NodeSpec) -> anyhow::Result<()> {
    let (listen, advertise) = resolve_addrs(&node.listen, node.advertise.as_deref())?;
    require_empty_dir(&node.data_dir)?;
    let listener = bind(&listen).await?;
    let mut file = NodeFile {
        node_id: 1,
        name: node.name.clone().unwrap_or_else(|| "node-1".into()),
        cluster_id: hex_id(),
        role: Role::Manager,
        listen,
        advertise: advertise.clone(),
        init: Some(InitFile { manager_secret: secret(), worker_secret: secret() }),
        node_secret: secret(),
        no_worker: false,
        agent: AgentSettings::default(),
        masters: vec![advertise],
    };
    file.merge_agent_flags(&node.agent);
    // Fail before anything is written if the agent's resources are malformed.
    crate::resources::resolve(&file.agent, &node.data_dir)?;
    write_node_file(&node.data_dir, &file)?;
    let coord = open(&node.data_dir, &file, &node.config).await?;
    coord.initialize().await.context("initialize the Raft group")?;
    let serving = serve(coord.clone(), listener);
    wait_for_identity(&coord).await?;
    spawn_own_agent(&node.data_dir, &file)?;
    let st = coord.cluster();
    let mt = coord::token::format_token(&st.cluster_id, &st.manager_secret);
    let wt = coord::token::format_token(&st.cluster_id, &st.worker_secret);
    println!("Cluster {} initialized; this is node 1 ({}), its leader.", st.cluster_id, file.advertise);
    println!();
    println!("To add a manager (master), run on the other machine:");
    println!("    cluster join --data-dir DIR --listen IP:PORT --token {mt} {}", file.advertise);
    println!();
    println!("To add a worker:");
    println!("    cluster join --data-dir DIR --listen IP:PORT --token {wt} {}", file.advertise);
    println!();
    println!("etcdctl works too: ETCDCTL_API=3 etcdctl --endpoints {} member list", file.advertise);
    serving.await
}

pub(crate) fn hex_id() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn wait_for_identity(coord: &CoordNode) -> anyhow::Result<()> {
    for _ in 0..200 {
        if !coord.cluster_id().is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the cluster identity was not committed within 10 s")
}

/// `join`: becomes a member of `seed`'s cluster as the token's role, then runs the node.
pub async fn join(node: NodeSpec, token: String, seed: String) -> anyhow::Result<()> {
    let (listen, advertise) = resolve_addrs(&node.listen, node.advertise.as_deref())?;
    coord::token::parse_token(&token).map_err(anyhow::Error::msg)?;
    let (mut no_worker, mut agent) = (false, AgentSettings::default());
    node.agent.merge_into(&mut no_worker, &mut agent);
    let probe = node.data_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::resources::resolve(&agent, probe)?;
    require_empty_dir(&node.data_dir)?;
    let listener = bind(&listen).await?;
    let joined = join_rpc(&seed, &token, &advertise, node.name.clone().unwrap_or_default()).await.and_then(|r| {
        // The role is checked before anything is written, like every other refusal.
        let role = r.role.parse::<Role>().with_context(|| format!("join answered by {seed}"))?;
        Ok((r, role))
    });
    let (resp, role) = match joined {
        Ok(r) => r,
        Err(e) => {
            // Leave nothing behind: the directory must stay usable for another attempt.
            let _ = std::fs::remove_dir(&node.data_dir);
            return Err(e);
        }
    };
    let mut masters: Vec<String> = resp.members.iter().map(|m| m.addr.clone()).collect();
    if !masters.contains(&seed) {
        masters.push(seed.clone());
    }
    let file = NodeFile {
        node_id: resp.node_id,
        name: node.name.clone().unwrap_or_else(|| format!("node-{}", resp.node_id)),
        cluster_id: resp.cluster_id.clone(),
        role,
        listen,
        advertise,
        init: None,
        node_secret: secret(),
        no_worker,
        agent,
        masters,
    };
    write_node_file(&node.data_dir, &file)?;
    println!("Joined cluster {} as node {} ({role}).", resp.cluster_id, resp.node_id);
    run(&node.data_dir, file, Some(listener), &node.config).await
}

async fn join_rpc(
    seed: &str,
    token: &str,
    advertise: &str,
    name: String,
) -> anyhow::Result<proto::clusterpb::JoinResponse> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{seed}"))
        .with_context(|| format!("bad seed address {seed:?}"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot reach {seed}"))?;
    let mut c = ClusterAdminClient::new(ch);
    let req = JoinRequest { token: token.to_string(), advertise_addr: advertise.to_string(), name };
    // A cluster that just started may still be committing its identity.
    let mut attempts = 0;
    loop {
        match c.join(req.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(s) => bail!("join refused by {seed}: {}", s.message()),
        }
    }
}

/// `start`: restarts the node recorded in `data_dir`; `listen` and `agent` override what
/// init/join recorded.
pub async fn start(
    data_dir: PathBuf,
    listen: Option<String>,
    agent: AgentFlags,
    config: CoordConfig,
) -> anyhow::Result<()> {
    let mut file = read_node_file(&data_dir)?;
    if let Some(l) = listen {
        file.listen = l;
    }
    let before = (file.no_worker, file.agent.clone(), file.node_secret.clone());
    file.merge_agent_flags(&agent);
    crate::resources::resolve(&file.agent, &data_dir)?;
    if file.node_secret.is_empty() {
        file.node_secret = secret();
    }
    if before != (file.no_worker, file.agent.clone(), file.node_secret.clone()) {
        write_node_file(&data_dir, &file)?;
    }
    info!(node = file.node_id, role = %file.role, "restarting node from {}", data_dir.display());
    let listener = if file.role == Role::Worker { None } else { Some(bind(&file.listen).await?) };
    run(&data_dir, file, listener, &config).await
}

async fn run(dir: &Path, file: NodeFile, listener: Option<TcpListener>, config: &CoordConfig) -> anyhow::Result<()> {
    if file.role == Role::Worker {
        // A worker serves nothing yet: a socket left listening would accept connections
        // that are never answered.
        drop(listener);
        return run_worker(dir, file).await;
    }
    let listener = listener.context("a master needs its listener")?;
    let coord = open(dir, &file, config).await?;
    let serving = serve(coord, listener);
    spawn_own_agent(dir, &file)?;
    serving.await
}

/// The agent's identity and a hook that keeps node.json's master list current.
fn agent_parts(dir: &Path, file: &NodeFile) -> anyhow::Result<(session::Identity, session::Hooks)> {
    let resources = crate::resources::resolve(&file.agent, dir)?;
    let id = session::Identity {
        node_id: file.node_id,
        secret: file.node_secret.clone(),
        name: file.name.clone(),
        addr: file.advertise.clone(),
        role: file.role,
        resources: crate::resources::to_pb(&resources),
        labels: file.agent.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    let saved = Arc::new(std::sync::Mutex::new(file.clone()));
    let dir = dir.to_path_buf();
    let on_masters = move |list: &proto::clusterpb::MasterList| {
        let addrs: Vec<String> = list.masters.iter().map(|m| m.addr.clone()).collect();
        let mut f = saved.lock().expect("node file lock");
        if addrs.is_empty() || f.masters == addrs {
            return;
        }
        f.masters = addrs;
        if let Err(e) = write_node_file(&dir, &f) {
            warn!("saving the master list to node.json failed: {e:#}");
        }
    };
    Ok((id, session::Hooks { on_masters: Some(Arc::new(on_masters)), on_attach: None }))
}

fn connector() -> session::Connect {
    let cache = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<String, tonic::transport::Channel>::new()));
    Arc::new(move |addr: &str| {
        let mut c = cache.lock().expect("channel cache lock");
        if let Some(ch) = c.get(addr) {
            return Ok(ch.clone());
        }
        let ch = client::channel(addr)?;
        c.insert(addr.to_string(), ch.clone());
        Ok(ch)
    })
}

/// A master's own agent (unless `--no-worker`): a refusal is logged, the master stays up.
fn spawn_own_agent(dir: &Path, file: &NodeFile) -> anyhow::Result<()> {
    if file.no_worker {
        info!("--no-worker: this master runs no agent");
        return Ok(());
    }
    let (id, hooks) = agent_parts(dir, file)?;
    let mut masters = vec![file.advertise.clone()];
    masters.extend(file.masters.iter().filter(|m| **m != file.advertise).cloned());
    tokio::spawn(async move {
        if let Err(e) = session::run(id, masters, connector(), hooks).await {
            tracing::error!("this master's agent stopped: {e}");
        }
    });
    Ok(())
}

/// A worker: only the agent runs; it exits on Ctrl-C/SIGTERM or when refused.
async fn run_worker(dir: &Path, file: NodeFile) -> anyhow::Result<()> {
    let (id, hooks) = agent_parts(dir, &file)?;
    info!(node = file.node_id, masters = ?file.masters, "worker agent starting");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = session::run(id, file.masters.clone(), connector(), hooks) => r.map_err(anyhow::Error::from),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    }
}

async fn open(dir: &Path, file: &NodeFile, config: &CoordConfig) -> anyhow::Result<Arc<CoordNode>> {
    let opts = NodeOptions {
        node_id: file.node_id,
        name: file.name.clone(),
        data_dir: dir.to_path_buf(),
        advertise_addr: file.advertise.clone(),
        config: config.clone(),
        init: file.init.as_ref().map(|i| InitSecrets {
            cluster_id: file.cluster_id.clone(),
            manager_secret: i.manager_secret.clone(),
            worker_secret: i.worker_secret.clone(),
        }),
    };
    Ok(CoordNode::open(opts).await?)
}

/// Serves until Ctrl-C, SIGTERM or removal from the cluster, then shuts Raft down.
fn serve(coord: Arc<CoordNode>, listener: TcpListener) -> impl std::future::Future<Output = anyhow::Result<()>> {
    let mut removed = coord.removed();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(coord::grpc::serve(coord.clone(), listener, async move {
        let _ = stop_rx.await;
    }));
    async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let reason = tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupted",
            _ = term.recv() => "terminated",
            _ = removed.wait_for(|r| *r) => "removed from the cluster",
            r = server => {
                r??;
                "server stopped"
            }
        };
        info!("shutting down: {reason}");
        let _ = stop_tx.send(());
        if tokio::time::timeout(Duration::from_secs(3), coord.shutdown()).await.is_err() {
            warn!("raft shutdown timed out");
        }
        Ok(())
    }
}
