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
/// Where a node keeps its certificates and keys, inside its data dir.
pub const TLS_DIR: &str = "tls";

/// A node's own credential: `tls/ca.crt`, `tls/node.crt`, `tls/node.key`.
pub fn node_credential(dir: &Path) -> pki::CredentialFiles {
    pki::CredentialFiles::in_dir(&dir.join(TLS_DIR), "node")
}

/// The admin credential `init` writes: `tls/ca.crt`, `tls/admin.crt`, `tls/admin.key`.
pub fn admin_credential(dir: &Path) -> pki::CredentialFiles {
    pki::CredentialFiles::in_dir(&dir.join(TLS_DIR), "admin")
}

fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join(TLS_DIR).join("ca.key")
}

/// How long the admin credential `init` writes lasts (`cluster cert issue` makes more).
const ADMIN_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

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
    /// Recorded as the label `hostname`.
    pub hostname: Option<String>,
    pub no_cgroups: bool,
    pub canary_keep_replaced_tasks: bool,
    /// A master's HTTP face (Marathon and Chronos REST): host:port, kept for `start`.
    pub http_listen: Option<String>,
    /// A master's DNS face: `IP[:PORT]`, kept for `start`.
    pub dns_listen: Option<String>,
    pub dns_domain: Option<String>,
    pub dns_ttl_s: Option<u32>,
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
        if let Some(h) = &self.hostname {
            s.labels.insert("hostname".to_string(), h.clone());
        }
        if self.no_cgroups {
            s.no_cgroups = true;
        }
        s.canary_keep_replaced_tasks = self.canary_keep_replaced_tasks;
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
    /// Where a master serves its HTTP face; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) http_listen: Option<String>,
    /// Where and for which domain a master serves DNS; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dns: Option<DnsSettings>,
}

/// The DNS face after `a`'s flags are applied over what was recorded.
fn dns_settings(a: &AgentFlags, recorded: Option<DnsSettings>) -> Option<DnsSettings> {
    let mut dns = match (&a.dns_listen, recorded) {
        (Some(listen), r) => {
            let d = coord::dns::DnsConfig::default();
            Some(DnsSettings {
                listen: listen.clone(),
                domain: r.as_ref().map_or(d.domain, |b| b.domain.clone()),
                ttl_s: r.as_ref().map_or(d.ttl_s, |b| b.ttl_s),
            })
        }
        (None, r) => r,
    };
    if let Some(dns) = &mut dns {
        if let Some(domain) = &a.dns_domain {
            dns.domain = domain.trim_end_matches('.').to_ascii_lowercase();
        }
        if let Some(ttl) = a.dns_ttl_s {
            dns.ttl_s = ttl;
        }
    }
    dns
}

/// A master's DNS face, as recorded in node.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DnsSettings {
    pub(crate) listen: String,
    pub(crate) domain: String,
    pub(crate) ttl_s: u32,
}

impl DnsSettings {
    fn config(&self) -> coord::dns::DnsConfig {
        coord::dns::DnsConfig { domain: self.domain.clone(), ttl_s: self.ttl_s }
    }
}

impl NodeFile {
    fn merge_agent_flags(&mut self, a: &AgentFlags) {
        if a.http_listen.is_some() {
            self.http_listen = a.http_listen.clone();
        }
        self.dns = dns_settings(a, self.dns.take());
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
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join("node.json.tmp");
    // It holds the node's secret (and on the init node, until its identity is committed,
    // the join secrets): owner only.
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
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
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    // The state (and so the CA key and join secrets) lives here: owner only.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 700 {}", dir.display()))
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
    check_faces(&node.agent).await?;
    let cluster_id = hex_id();
    let mut file = NodeFile {
        node_id: 1,
        name: node.name.clone().unwrap_or_else(|| "node-1".into()),
        cluster_id: cluster_id.clone(),
        role: Role::Manager,
        listen,
        advertise: advertise.clone(),
        init: Some(InitFile { manager_secret: secret(), worker_secret: secret() }),
        node_secret: secret(),
        no_worker: false,
        agent: AgentSettings::default(),
        masters: vec![advertise.clone()],
        http_listen: None,
        dns: None,
    };
    file.merge_agent_flags(&node.agent);
    // Fail before anything is written if the agent's resources are malformed.
    crate::resources::resolve(&file.agent, &node.data_dir)?;
    let ca = make_init_pki(&node.data_dir, &cluster_id, &advertise, &node.config)?;
    write_node_file(&node.data_dir, &file)?;
    let coord = open(&node.data_dir, &file, &node.config, load_node_credential(&node.data_dir)?).await?;
    coord.initialize().await.context("initialize the Raft group")?;
    let faces = Faces { http: bind_http(&file).await?, dns: bind_dns(&file).await? };
    let serving = serve(coord.clone(), listener, faces);
    wait_for_identity(&coord).await?;
    crate::renewal::save_record_digest(&node.data_dir, &coord.ca_record_digest());
    // The join secrets now live in the replicated state; node.json keeps none.
    file.init = None;
    write_node_file(&node.data_dir, &file)?;
    spawn_own_agent(&node.data_dir, &file, coord.clone())?;
    let st = coord.cluster();
    let mt = coord::token::format_token(&ca, &st.manager_secret);
    let wt = coord::token::format_token(&ca, &st.worker_secret);
    let admin = admin_credential(&node.data_dir);
    println!("Cluster {} initialized; this is node 1 ({}), its leader.", st.cluster_id, file.advertise);
    println!();
    println!("To add a manager (master), run on the other machine:");
    println!("    cluster join --data-dir DIR --listen IP:PORT --token {mt} {}", file.advertise);
    println!();
    println!("To add a worker:");
    println!("    cluster join --data-dir DIR --listen IP:PORT --token {wt} {}", file.advertise);
    println!();
    println!(
        "An admin credential is in {} (keep it private).",
        admin.cert.parent().unwrap_or(Path::new(".")).display()
    );
    println!("`cluster` commands find it with --data-dir {}, or --cert-dir.", node.data_dir.display());
    println!("etcdctl works too:");
    println!(
        "    ETCDCTL_API=3 etcdctl --endpoints https://{} --cacert {} --cert {} --key {} member list",
        file.advertise,
        admin.ca.display(),
        admin.cert.display(),
        admin.key.display()
    );
    serving.await
}

/// `init`'s certificates: a new CA (its key kept in `tls/ca.key` until the cluster has
/// it in its state, and after, as the one offline copy), this node's manager certificate
/// and an admin credential. Returns the CA digest that tokens carry.
fn make_init_pki(dir: &Path, cluster_id: &str, advertise: &str, config: &CoordConfig) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now();
    let ca = pki::cert::Ca::generate(cluster_id, now)?;
    write_node_pki(dir, &ca, cluster_id, 1, advertise, Duration::from_secs(config.cert_validity_secs))?;
    Ok(ca.digest())
}

/// A manager's certificate for `node_id` signed by `ca` (a key made here), the CA's key
/// and an admin credential, all under `dir/tls`: what `init` and `snapshot restore` leave.
pub(crate) fn write_node_pki(
    dir: &Path,
    ca: &pki::cert::Ca,
    cluster_id: &str,
    node_id: u64,
    advertise: &str,
    validity: Duration,
) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now();
    let (key, csr) = pki::cert::new_key_and_csr()?;
    let hosts = [pki::cert::host_of(advertise)];
    let spec = pki::cert::NodeCert { cluster_id, node_id, role: pki::CertRole::Manager, hosts: &hosts, validity, now };
    let cert = ca.sign_node(&csr, &spec)?;
    node_credential(dir).save(std::slice::from_ref(&ca.cert), &[cert, ca.cert.clone()], &key)?;
    pki::files::write_key(&ca_key_path(dir), &rustls_key(ca.key_der()))?;
    let (acert, akey) = ca.issue_client(cluster_id, pki::CertRole::Admin, "admin", ADMIN_CERT_VALIDITY, now)?;
    admin_credential(dir).save(std::slice::from_ref(&ca.cert), &[acert], &akey)?;
    Ok(())
}

fn rustls_key(pkcs8: Vec<u8>) -> pki::types::PrivateKeyDer<'static> {
    pki::types::PrivateKeyDer::Pkcs8(pkcs8.into())
}

pub(crate) fn hex_id() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn wait_for_identity(coord: &CoordNode) -> anyhow::Result<()> {
    for _ in 0..200 {
        if !coord.cluster_id().is_empty() && coord.view(|v| v.ca().is_some()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the cluster identity and CA were not committed within 10 s")
}

/// `join`: becomes a member of `seed`'s cluster as the token's role, then runs the node.
pub async fn join(node: NodeSpec, token: String, seed: String) -> anyhow::Result<()> {
    let (listen, advertise) = resolve_addrs(&node.listen, node.advertise.as_deref())?;
    let parsed = coord::token::parse_token(&token).map_err(anyhow::Error::msg)?;
    let (mut no_worker, mut agent) = (false, AgentSettings::default());
    node.agent.merge_into(&mut no_worker, &mut agent);
    let probe = node.data_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::resources::resolve(&agent, probe)?;
    require_empty_dir(&node.data_dir)?;
    let listener = bind(&listen).await?;
    // Before the cluster admits this node: a node that joined and then cannot start
    // would weaken the quorum.
    check_faces(&node.agent).await?;
    let (key, csr) = pki::cert::new_key_and_csr()?;
    let req = JoinRequest {
        token: token.clone(),
        advertise_addr: advertise.clone(),
        name: node.name.clone().unwrap_or_default(),
        csr,
    };
    let joined = join_rpc(&seed, &parsed.digest, req).await.and_then(|r| {
        // The role is checked before anything is written, like every other refusal.
        let role = r.role.parse::<Role>().with_context(|| format!("join answered by {seed}"))?;
        let pki::cert::Signed { chain, trusted } =
            pki::cert::Signed::from_der(r.cert.clone(), r.chain.clone(), r.trusted.clone());
        // Check the credential before writing it: it must load and name this node.
        let creds = pki::Credentials::new(trusted.clone(), chain.clone(), Some(key.clone_key()))
            .with_context(|| format!("the certificate {seed} signed is unusable"))?;
        if creds.identity().and_then(|i| i.node_id) != Some(r.node_id) {
            bail!("the certificate {seed} signed does not name node {}", r.node_id);
        }
        Ok((r, role, trusted, chain))
    });
    let (resp, role, trusted, chain) = match joined {
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
        http_listen: node.agent.http_listen.clone(),
        dns: dns_settings(&node.agent, None),
    };
    node_credential(&node.data_dir).save(&trusted, &chain, &key)?;
    crate::renewal::save_record_digest(&node.data_dir, &resp.ca_record_digest);
    write_node_file(&node.data_dir, &file)?;
    println!("Joined cluster {} as node {} ({role}).", resp.cluster_id, resp.node_id);
    run(&node.data_dir, file, Some(listener), &node.config).await
}

/// Asks `seed` to admit this node. The TLS handshake checks that the seed's CA has the
/// token's digest; if it does not, the call fails before the token's secret is sent.
async fn join_rpc(seed: &str, ca_digest: &str, req: JoinRequest) -> anyhow::Result<proto::clusterpb::JoinResponse> {
    let (tls, _found) = pki::ClientTls::pinned(ca_digest)?;
    let o = pki::net::ChannelOptions { connect_timeout: Duration::from_secs(3), ..Default::default() };
    let ch = pki::net::channel(seed, &tls, &o).with_context(|| format!("bad seed address {seed:?}"))?;
    let mut c = ClusterAdminClient::new(ch);
    // A cluster that just started may still be committing its identity.
    let mut attempts = 0;
    loop {
        match c.join(req.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            // A CA that does not match the token is final: retrying cannot help.
            Err(s) if transport_reason(&s).contains("CA digest") => {
                bail!("cannot join through {seed}: {} (is the token for this cluster?)", transport_reason(&s))
            }
            Err(s) if s.code() == tonic::Code::Unavailable && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(s) => bail!("join refused by {seed}: {}", s.message()),
        }
    }
}

/// The deepest cause of a transport failure (the TLS alert, the refused connection).
fn transport_reason(s: &tonic::Status) -> String {
    use std::error::Error;
    let mut e: Option<&(dyn Error + 'static)> = s.source();
    let mut last = s.message().to_string();
    while let Some(x) = e {
        last = x.to_string();
        e = x.source();
    }
    last
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
    if file.role == Role::Worker && agent.http_listen.is_some() {
        anyhow::bail!("--http-listen is for masters: a worker serves no HTTP");
    }
    if file.role == Role::Worker && (agent.dns_listen.is_some() || agent.dns_domain.is_some()) {
        anyhow::bail!("--dns-listen is for masters: a worker serves no DNS");
    }
    check_dns_flags(&agent, file.dns.as_ref())?;
    let before =
        (file.no_worker, file.agent.clone(), file.node_secret.clone(), file.http_listen.clone(), file.dns.clone());
    file.merge_agent_flags(&agent);
    crate::resources::resolve(&file.agent, &data_dir)?;
    if file.node_secret.is_empty() {
        file.node_secret = secret();
    }
    if before
        != (file.no_worker, file.agent.clone(), file.node_secret.clone(), file.http_listen.clone(), file.dns.clone())
    {
        write_node_file(&data_dir, &file)?;
    }
    info!(node = file.node_id, role = %file.role, "restarting node from {}", data_dir.display());
    let listener = if file.role == Role::Worker { None } else { Some(bind(&file.listen).await?) };
    run(&data_dir, file, listener, &config).await
}

async fn run(dir: &Path, file: NodeFile, listener: Option<TcpListener>, config: &CoordConfig) -> anyhow::Result<()> {
    let tls = load_node_credential(dir)?;
    if file.role == Role::Worker {
        // A worker serves nothing yet: a socket left listening would accept connections
        // that are never answered.
        drop(listener);
        return run_worker(dir, file, tls).await;
    }
    let listener = listener.context("a master needs its listener")?;
    let faces = Faces { http: bind_http(&file).await?, dns: bind_dns(&file).await? };
    let coord = open(dir, &file, config, tls).await?;
    let serving = serve(coord.clone(), listener, faces);
    spawn_own_agent(dir, &file, coord.clone())?;
    serving.await
}

pub(crate) fn load_node_credential(dir: &Path) -> anyhow::Result<Arc<pki::Credentials>> {
    let f = node_credential(dir);
    f.load().with_context(|| format!("loading this node's certificate from {}", f.cert.display()))
}

/// What ties a node's agent session to its certificate keeper.
struct Wiring {
    hooks: session::Hooks,
    /// The masters the session last heard of (a worker renews through them).
    masters: Arc<std::sync::Mutex<Vec<String>>>,
    /// The CA record digest the leader last sent.
    hint: tokio::sync::watch::Receiver<String>,
    /// Notified after each renewal.
    renewed: Arc<tokio::sync::Notify>,
}

/// The agent's identity, and hooks that keep node.json's master list current and tell
/// the certificate keeper what the leader says about the CA.
fn agent_parts(dir: &Path, file: &NodeFile) -> anyhow::Result<(session::Identity, Wiring)> {
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
    let masters = Arc::new(std::sync::Mutex::new(file.masters.clone()));
    let dir = dir.to_path_buf();
    let known = masters.clone();
    let on_masters = move |list: &proto::clusterpb::MasterList| {
        let addrs: Vec<String> = list.masters.iter().map(|m| m.addr.clone()).collect();
        let mut f = saved.lock().expect("node file lock");
        if addrs.is_empty() || f.masters == addrs {
            return;
        }
        *known.lock().expect("masters") = addrs.clone();
        f.masters = addrs;
        if let Err(e) = write_node_file(&dir, &f) {
            warn!("saving the master list to node.json failed: {e:#}");
        }
    };
    let (hint_tx, hint) = tokio::sync::watch::channel(String::new());
    let on_ca_record = move |d: &str| {
        hint_tx.send_if_modified(|cur| {
            let changed = cur != d;
            if changed {
                *cur = d.to_string();
            }
            changed
        });
    };
    let renewed = Arc::new(tokio::sync::Notify::new());
    let hooks = session::Hooks {
        on_masters: Some(Arc::new(on_masters)),
        on_attach: None,
        on_ca_record: Some(Arc::new(on_ca_record)),
        restart: Some(renewed.clone()),
    };
    Ok((id, Wiring { hooks, masters, hint, renewed }))
}

/// Starts the keeper of this node's certificate.
fn spawn_keeper(dir: &Path, creds: Arc<pki::Credentials>, signer: crate::renewal::Signer, w: &Wiring) {
    let keeper = crate::renewal::Keeper {
        dir: dir.to_path_buf(),
        creds,
        signer,
        hint: w.hint.clone(),
        renewed: w.renewed.clone(),
    };
    tokio::spawn(keeper.run());
}

/// Channels to masters, one per address, made again after a renewal (the credentials'
/// generation moved) so that new sessions present the new certificate.
fn connector(creds: Arc<pki::Credentials>) -> session::Connect {
    let tls = creds.client();
    type Cache = (u64, std::collections::BTreeMap<String, tonic::transport::Channel>);
    let cache: Arc<std::sync::Mutex<Cache>> = Arc::default();
    Arc::new(move |addr: &str| {
        let mut c = cache.lock().expect("channel cache lock");
        let g = creds.generation();
        if c.0 != g {
            *c = (g, Default::default());
        }
        if let Some(ch) = c.1.get(addr) {
            return Ok(ch.clone());
        }
        let tls = tls
            .as_ref()
            .map_err(|e| client::ClientError::BadEndpoint { addr: addr.to_string(), reason: e.to_string() })?;
        let ch = client::channel(addr, tls)?;
        c.1.insert(addr.to_string(), ch.clone());
        Ok(ch)
    })
}

/// Starts the task runner of this node's agent. Without a writable cgroup hierarchy it
/// says so now and refuses tasks, unless the node runs with `--no-cgroups`.
fn spawn_runner(
    dir: &Path,
    file: &NodeFile,
    creds: &Arc<pki::Credentials>,
    masters: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let (cgroups, refuse) = match crate::tasks::cgroup::Cgroups::detect(file.node_id) {
        Ok(c) => {
            info!(hierarchy = ?c.hierarchy, "tasks run in cgroups");
            (Some(c), None)
        }
        Err(e) if file.agent.no_cgroups => {
            warn!("{e}; --no-cgroups: tasks run without limits");
            (None, None)
        }
        Err(e) => {
            tracing::error!("{e}: this agent refuses tasks; start it with --no-cgroups to run them without limits");
            (None, Some(format!("{e} (the agent runs without --no-cgroups)")))
        }
    };
    let tls = match creds.client() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("the task runner has no client credential: {e}");
            return;
        }
    };
    let host = file.agent.labels.get("hostname").cloned().unwrap_or_else(|| coord::scheduler::host_of(&file.advertise));
    let cfg = crate::tasks::RunnerConfig {
        node_id: file.node_id,
        data_dir: dir.to_path_buf(),
        cgroups,
        refuse,
        host,
        masters,
        tls,
        canary_keep_replaced: file.agent.canary_keep_replaced_tasks,
    };
    tokio::spawn(crate::tasks::run(cfg));
}

/// A master's certificate keeper, and its own agent (unless `--no-worker`): a refusal
/// is logged, the master stays up.
fn spawn_own_agent(dir: &Path, file: &NodeFile, coord: Arc<CoordNode>) -> anyhow::Result<()> {
    let (id, w) = agent_parts(dir, file)?;
    spawn_keeper(dir, coord.tls.clone(), crate::renewal::Signer::Local(coord.clone()), &w);
    if file.no_worker {
        info!("--no-worker: this master runs no agent");
        return Ok(());
    }
    let mut masters = vec![file.advertise.clone()];
    masters.extend(file.masters.iter().filter(|m| **m != file.advertise).cloned());
    {
        let mut known = w.masters.lock().expect("masters");
        if known.is_empty() {
            *known = masters.clone();
        }
    }
    spawn_runner(dir, file, &coord.tls, w.masters.clone());
    let connect = connector(coord.tls.clone());
    tokio::spawn(async move {
        if let Err(e) = session::run(id, masters, connect, w.hooks).await {
            tracing::error!("this master's agent stopped: {e}");
        }
    });
    Ok(())
}

/// A worker: its agent and its certificate keeper; it exits on Ctrl-C/SIGTERM or when
/// refused.
async fn run_worker(dir: &Path, file: NodeFile, tls: Arc<pki::Credentials>) -> anyhow::Result<()> {
    let (id, w) = agent_parts(dir, &file)?;
    spawn_keeper(dir, tls.clone(), crate::renewal::Signer::Remote(w.masters.clone()), &w);
    info!(node = file.node_id, masters = ?file.masters, "worker agent starting");
    spawn_runner(dir, &file, &tls, w.masters.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let connect = connector(tls);
    tokio::select! {
        r = session::run(id, file.masters.clone(), connect, w.hooks) => r.map_err(anyhow::Error::from),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    }
}

async fn open(
    dir: &Path,
    file: &NodeFile,
    config: &CoordConfig,
    tls: Arc<pki::Credentials>,
) -> anyhow::Result<Arc<CoordNode>> {
    // Until the init node's identity is committed, it proposes its CA from the files.
    let ca = match &file.init {
        Some(_) => {
            let cert = pki::files::read_certs(&node_credential(dir).ca)?.swap_remove(0).to_vec();
            let key = pki::files::read_key(&ca_key_path(dir))?.secret_der().to_vec();
            Some((cert, key))
        }
        None => None,
    };
    let opts = NodeOptions {
        node_id: file.node_id,
        name: file.name.clone(),
        data_dir: dir.to_path_buf(),
        advertise_addr: file.advertise.clone(),
        config: config.clone(),
        init: file.init.as_ref().zip(ca).map(|(i, (ca_cert, ca_key))| InitSecrets {
            cluster_id: file.cluster_id.clone(),
            manager_secret: i.manager_secret.clone(),
            worker_secret: i.worker_secret.clone(),
            ca_cert,
            ca_key,
        }),
        tls,
    };
    Ok(CoordNode::open(opts).await?)
}

/// Fails early when `--http-listen` or `--dns-listen` cannot be bound, or the DNS flags
/// are malformed (a typo, a port in use), before anything is written or joined.
async fn check_faces(a: &AgentFlags) -> anyhow::Result<()> {
    if let Some(addr) = &a.http_listen {
        drop(bind(addr).await.with_context(|| format!("--http-listen {addr}"))?);
    }
    check_dns_flags(a, None)?;
    if let Some(d) = dns_settings(a, None) {
        drop(bind_dns_at(&d).await?);
    }
    Ok(())
}

/// `--dns-domain` and `--dns-ttl-s` refine a DNS face: one given (now, or recorded).
fn check_dns_flags(a: &AgentFlags, recorded: Option<&DnsSettings>) -> anyhow::Result<()> {
    if a.dns_listen.is_none() && recorded.is_none() && (a.dns_domain.is_some() || a.dns_ttl_s.is_some()) {
        anyhow::bail!("--dns-domain and --dns-ttl-s need --dns-listen (this master serves no DNS yet)");
    }
    let Some(d) = dns_settings(a, recorded.cloned()) else { return Ok(()) };
    coord::dns::parse_listen(&d.listen).map_err(|e| anyhow::anyhow!("--dns-listen: {e}"))?;
    d.config().validate().map_err(|e| anyhow::anyhow!("--dns-domain/--dns-ttl-s: {e}"))
}

type DnsSockets = (tokio::net::UdpSocket, TcpListener, coord::dns::DnsConfig);

/// The DNS face's sockets, when this master has one.
async fn bind_dns(file: &NodeFile) -> anyhow::Result<Option<DnsSockets>> {
    match file.dns.as_ref().filter(|_| file.role != Role::Worker) {
        Some(d) => Ok(Some(bind_dns_at(d).await?)),
        None => Ok(None),
    }
}

/// UDP and TCP on the one address the settings name.
async fn bind_dns_at(d: &DnsSettings) -> anyhow::Result<DnsSockets> {
    let addr = coord::dns::parse_listen(&d.listen).map_err(|e| anyhow::anyhow!("--dns-listen: {e}"))?;
    let udp = tokio::net::UdpSocket::bind(addr).await.with_context(|| {
        format!("--dns-listen {addr} (UDP){}", if addr.port() < 1024 { ": ports below 1024 need root" } else { "" })
    })?;
    let tcp = TcpListener::bind(addr).await.with_context(|| format!("--dns-listen {addr} (TCP)"))?;
    Ok((udp, tcp, d.config()))
}

/// The HTTP face's listener, when this master has one.
async fn bind_http(file: &NodeFile) -> anyhow::Result<Option<TcpListener>> {
    match &file.http_listen {
        Some(addr) if file.role != Role::Worker => {
            Ok(Some(bind(addr).await.with_context(|| format!("--http-listen {addr}"))?))
        }
        _ => Ok(None),
    }
}

/// A master's faces besides gRPC, bound before Raft opens (a port in use fails fast).
struct Faces {
    http: Option<TcpListener>,
    dns: Option<DnsSockets>,
}

/// Serves until Ctrl-C, SIGTERM or removal from the cluster, then shuts Raft down.
fn serve(
    coord: Arc<CoordNode>,
    listener: TcpListener,
    faces: Faces,
) -> impl std::future::Future<Output = anyhow::Result<()>> {
    let mut removed = coord.removed();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (dns_stop_tx, dns_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = faces.http;
    if let Some((udp, tcp, cfg)) = faces.dns {
        let c = coord.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = dns_stop_rx.await;
            };
            if let Err(e) = coord::dns::serve(c, udp, tcp, cfg, stop).await {
                warn!("the DNS face stopped: {e}");
            }
        });
    }
    let shared = coord::grpc::Shared::new(coord.clone());
    let server = tokio::spawn(coord::grpc::serve(coord.clone(), shared.clone(), listener, async move {
        let _ = stop_rx.await;
    }));
    if let Some(l) = http {
        let c = coord.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = http_stop_rx.await;
            };
            if let Err(e) = coord::http::serve(c, shared, l, stop).await {
                warn!("the HTTP face stopped: {e}");
            }
        });
    }
    async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let reason = tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupted",
            _ = term.recv() => "terminated",
            _ = removed.wait_for(|r| *r) => "removed from the cluster",
            e = coord.fatal_error() => {
                // Stop answering at once: what is in memory may be ahead of the disk.
                let _ = stop_tx.send(());
                tracing::error!("raft stopped: {e}");
                anyhow::bail!(
                    "this master stopped because its storage failed: {e}. Fix the disk (space, permissions, \
                     hardware), then run `cluster start` again; the other masters carry on meanwhile"
                );
            }
            r = server => {
                r?.map_err(|e| anyhow::anyhow!("gRPC server: {e}"))?;
                "server stopped"
            }
        };
        info!("shutting down: {reason}");
        let _ = stop_tx.send(());
        let _ = http_stop_tx.send(());
        let _ = dns_stop_tx.send(());
        if tokio::time::timeout(Duration::from_secs(3), coord.shutdown()).await.is_err() {
            warn!("raft shutdown timed out");
        }
        Ok(())
    }
}
