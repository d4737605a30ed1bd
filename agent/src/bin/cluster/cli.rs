//! Command-line arguments. A command's arguments are parsed here, turned into plain
//! values, and handed to `agent::daemon`, `agent::bench` or [`crate::commands`]; clap
//! types go no further.

use std::path::PathBuf;

use agent::output::Format;
use agent::{bench, daemon};
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use client::{Availability, Client, GetOptions, NetworkSpec, Role, WatchOptions};

use crate::commands::{backup, cluster, ipam, jobs, kv, lease, nodes, services};

/// cluster: a cluster manager whose masters coordinate through their own Raft log.
///
/// Start a cluster with `cluster init` on the first machine; it prints join tokens.
/// Add masters and workers with `cluster join --token TOKEN ADDR`. Every master serves
/// the etcd v3 API on its listen address, so `etcdctl` works against it.
#[derive(Parser, Debug)]
#[command(name = "cluster", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// Comma-separated host:port list of masters to talk to. Any master works; the
    /// client follows the leader.
    #[arg(long, env = "CLUSTER_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:2379", global = true)]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub creds: CredArgs,
}

/// Every connection to a master is mutual TLS. The credential is found, in this order,
/// from --cacert/--cert/--key, --cert-dir, --data-dir, or the default data dir
/// /var/lib/cluster (a master's `tls/admin.*`, which `init` writes, or its `tls/node.*`).
#[derive(Args, Debug, Clone, Default)]
pub struct CredArgs {
    /// CA certificate to trust (PEM).
    #[arg(long = "cacert", id = "tls_cacert", env = "CLUSTER_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long = "cert", id = "tls_cert", env = "CLUSTER_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long = "key", id = "tls_key", env = "CLUSTER_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Directory with ca.crt and admin.crt/admin.key or reader.crt/reader.key.
    #[arg(long = "cert-dir", id = "tls_cert_dir", env = "CLUSTER_CERT_DIR", global = true)]
    pub cert_dir: Option<PathBuf>,
    /// A master's data dir, to use the credential it holds.
    #[arg(long = "data-dir", id = "tls_data_dir", env = "CLUSTER_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

impl CredArgs {
    fn source(&self) -> agent::credentials::CredentialSource {
        agent::credentials::CredentialSource {
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            cert_dir: self.cert_dir.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}

impl ClientOpts {
    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.endpoints.clone(), self.creds.source().load()?.client()?))
    }

    fn format(&self) -> Format {
        self.output.into()
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

impl From<OutputFormat> for Format {
    fn from(o: OutputFormat) -> Format {
        match o {
            OutputFormat::Table => Format::Table,
            OutputFormat::Json => Format::Json,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Directory for this node's data (Raft log, state machine, snapshots). `init` and
    /// `join` need it empty or absent.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// host:port to serve gRPC (Raft, cluster admin and the etcd v3 API) on.
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub listen: String,
    /// host:port other nodes and clients use to reach this node [default: --listen].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Name shown in member lists [default: node-<id>].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub agent: AgentArgs,
    #[command(flatten)]
    pub tuning: Tuning,
}

impl NodeArgs {
    fn spec(self) -> daemon::NodeSpec {
        daemon::NodeSpec {
            data_dir: self.data_dir,
            listen: self.listen,
            advertise: self.advertise,
            name: self.name,
            agent: self.agent.flags(),
            config: self.tuning.config(),
        }
    }
}

/// What this node's agent offers. Detected from the machine unless given; values given
/// at `init`/`join` are kept in the data dir, and `start` may override them (a change is
/// committed to the registry).
#[derive(Args, Debug, Clone, Default)]
pub struct AgentArgs {
    /// Run no worker agent on this master: it coordinates but takes no work (a worker
    /// token always runs an agent).
    #[arg(long)]
    pub no_worker: bool,
    /// CPUs to offer, fractions allowed [default: detected].
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory to offer in MiB [default: detected].
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Disk to offer in MiB [default: size of the data dir's filesystem].
    #[arg(long)]
    pub disk_mb: Option<u64>,
    /// Port ranges to offer, e.g. 31000-32000,8080 [default: 31000-32000].
    #[arg(long)]
    pub ports: Option<String>,
    /// A label KEY=VALUE for placement constraints; repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = agent::resources::parse_label)]
    pub labels: Vec<(String, String)>,
    /// The host name placement constraints on `hostname` see (recorded as the label
    /// hostname=NAME) [default: the host part of the advertised address]. Lets several
    /// nodes on one machine count as different hosts.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Run tasks without cgroup limits when no cgroup hierarchy is writable (without
    /// this, such an agent refuses its tasks).
    #[arg(long)]
    pub no_cgroups: bool,
    /// TEST ONLY, unsafe: the task runner leaves running the tasks the leader replaced
    /// elsewhere (Swarm's rule broken), for the fault-injection suite's tasks canary.
    #[arg(long, hide = true)]
    pub canary_keep_replaced_tasks: bool,
    /// Masters: host:port for the HTTP face (Marathon's /v2 and Chronos' /v1 REST APIs,
    /// /health, /ready), over TLS with the cluster's certificates. Callers present a
    /// client certificate or a token from `cluster token issue-http`. Off unless given;
    /// kept for `start`.
    #[arg(long, value_name = "HOST:PORT")]
    pub http_listen: Option<String>,
    /// Masters: IP[:PORT] for the DNS face, UDP and TCP: <service>.<domain> (healthy
    /// tasks), <task-id>.<service>.<domain>, SRV _<port-name>._tcp.<service>.<domain>,
    /// leader.<domain>, masters.<domain>. The port defaults to 53 as root, else 8600.
    /// Off unless given; kept for `start`.
    #[arg(long, value_name = "IP[:PORT]")]
    pub dns_listen: Option<String>,
    /// The DNS face's domain [default: cluster.local].
    #[arg(long, value_name = "DOMAIN")]
    pub dns_domain: Option<String>,
    /// The TTL of DNS answers, in seconds [default: 1]: short, so that clients follow
    /// tasks as they come and go.
    #[arg(long, value_name = "SECONDS")]
    pub dns_ttl_s: Option<u32>,
}

impl AgentArgs {
    fn flags(self) -> daemon::AgentFlags {
        daemon::AgentFlags {
            no_worker: self.no_worker,
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            disk_mb: self.disk_mb,
            ports: self.ports,
            labels: self.labels,
            hostname: self.hostname,
            no_cgroups: self.no_cgroups,
            canary_keep_replaced_tasks: self.canary_keep_replaced_tasks,
            http_listen: self.http_listen,
            dns_listen: self.dns_listen,
            dns_domain: self.dns_domain,
            dns_ttl_s: self.dns_ttl_s,
        }
    }
}

/// Raft and storage tuning; the defaults suit most clusters.
#[derive(Args, Debug, Clone)]
pub struct Tuning {
    /// How often the Raft leader sends heartbeats to the other masters (etcd's
    /// --heartbeat-interval; etcd's default is 100).
    #[arg(long, default_value_t = 50)]
    pub heartbeat_interval_ms: u64,
    /// A master that hears no leader for a random time between this and twice this starts
    /// an election (etcd's --election-timeout, default 1000 there). Longer rides out
    /// overloaded or slow machines, shorter replaces a dead leader sooner. At least twice
    /// the heartbeat interval, and --unreachable-after-ms must be at least 3 agent
    /// heartbeats plus 4 times this (above 500, raise it too); give every master the same
    /// value.
    #[arg(long, default_value_t = 150)]
    pub election_timeout_ms: u64,
    /// Build a snapshot (and purge the log behind it) after this many applied entries.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_every_entries: u64,
    /// How long a write or a linearizable read waits for a leader and a quorum before it
    /// fails with `unavailable`.
    #[arg(long, default_value_t = 5_000)]
    pub request_timeout_ms: u64,
    /// Heartbeat period the leader asks of agents.
    #[arg(long, default_value_t = 1_000)]
    pub agent_heartbeat_interval_ms: u64,
    /// The leader marks an agent unreachable after this long without a heartbeat (counted
    /// from its own election for a new leader). Give every master the same value.
    #[arg(long, default_value_t = 5_000)]
    pub unreachable_after_ms: u64,
    /// ...and down after this much longer.
    #[arg(long, default_value_t = 10_000)]
    pub down_after_ms: u64,
    /// An IP address whose owner is gone (its agent removed, or no longer reported by
    /// its agent) is released this long after the leader first sees it.
    #[arg(long, default_value_t = 180_000)]
    pub ip_leak_grace_ms: u64,
    /// TEST ONLY, unsafe: the leader answers linearizable reads from its own state without
    /// a quorum check, so a deposed leader serves stale reads. The fault-injection suite
    /// (`jepsen-style-tests run --canary`) uses it to prove that it catches the bug.
    #[arg(long, hide = true)]
    pub canary_unsafe_local_reads: bool,
    /// TEST ONLY, unsafe: Lock and Campaign skip the re-read of their own key (etcd
    /// #11456), for the fault-injection suite's lock and election canaries.
    #[arg(long, hide = true)]
    pub canary_lock_skip_reread: bool,
    /// TEST ONLY, unsafe: lease renewals skip their covering checkpoint, for the
    /// fault-injection suite's lease canary.
    #[arg(long, hide = true)]
    pub canary_lease_skip_checkpoint: bool,
    /// The largest snapshot this master accepts from a leader; a bigger one is refused
    /// (and its partial file removed).
    #[arg(long, default_value_t = 64 << 30)]
    pub snapshot_max_bytes: u64,
    /// How long receiving a snapshot from a leader may take before it is refused.
    #[arg(long, default_value_t = 3_600_000)]
    pub snapshot_receive_timeout_ms: u64,
    /// How long node certificates the cluster signs are valid; nodes renew theirs when a
    /// third of it is left. At least 30.
    #[arg(long, default_value_t = 90 * 86_400)]
    pub cert_validity_secs: u64,
}

impl Tuning {
    pub fn config(&self) -> coord::CoordConfig {
        coord::CoordConfig {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            election_timeout_min_ms: self.election_timeout_ms,
            election_timeout_max_ms: self.election_timeout_ms.saturating_mul(2),
            snapshot_every_entries: self.snapshot_every_entries,
            request_timeout_ms: self.request_timeout_ms,
            agent_heartbeat_interval_ms: self.agent_heartbeat_interval_ms,
            unreachable_after_ms: self.unreachable_after_ms,
            down_after_ms: self.down_after_ms,
            ip_leak_grace_ms: self.ip_leak_grace_ms,
            canary_unsafe_local_reads: self.canary_unsafe_local_reads,
            canary_lock_skip_reread: self.canary_lock_skip_reread,
            canary_lease_skip_checkpoint: self.canary_lease_skip_checkpoint,
            cert_validity_secs: self.cert_validity_secs,
            snapshot_max_bytes: self.snapshot_max_bytes,
            snapshot_receive_timeout_ms: self.snapshot_receive_timeout_ms,
            ..Default::default()
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new cluster with this node as its only master, and print join tokens.
    ///
    /// Runs the node in the foreground. Refuses a non-empty data dir: to restart a node
    /// use `cluster start`.
    Init {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Join an existing cluster through any member at SEED_ADDR.
    ///
    /// A manager token makes this node a Raft learner that is promoted to voter once it
    /// has caught up (up to 5 voters; later ones stay learners). A worker token makes it a
    /// worker agent. Runs the node in the foreground.
    Join {
        #[command(flatten)]
        node: NodeArgs,
        /// Join token printed by `cluster init` or `cluster token`.
        #[arg(long, env = "CLUSTER_TOKEN")]
        token: String,
        /// host:port of any member of the cluster.
        seed_addr: String,
    },
    /// Restart a node from its data dir; it rejoins its cluster silently.
    Start {
        /// Directory the node was initialized or joined with.
        #[arg(long)]
        data_dir: PathBuf,
        /// Override the listen address recorded at init/join.
        #[arg(long)]
        listen: Option<String>,
        #[command(flatten)]
        agent: AgentArgs,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Print the join token for a role: `cluster token worker`. Or replace its secret:
    /// `cluster token rotate worker` prints the new token, and the old one is refused
    /// from then on (nodes that already joined are not affected). HTTP bearer tokens:
    /// `cluster token issue-http --role reader --name grafana`, `ls-http`,
    /// `revoke-http --id ID`.
    Token {
        /// manager, worker, rotate (then the role follows), issue-http, revoke-http or
        /// ls-http.
        #[arg(value_enum)]
        action: TokenAction,
        /// With rotate: the role whose token to replace.
        #[arg(value_enum)]
        role: Option<TokenRole>,
        /// With issue-http: what the token may do.
        #[arg(long = "role", value_enum)]
        http_role: Option<ClientRole>,
        /// With issue-http: who or what the token is for.
        #[arg(long, default_value = "")]
        name: String,
        /// With revoke-http: the token's id (`ls-http` lists them).
        #[arg(long)]
        id: Option<String>,
        /// Print only the token.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Client certificates for operators and applications.
    Cert {
        #[command(subcommand)]
        op: CertOp,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The cluster CA.
    Ca {
        #[command(subcommand)]
        op: CaOp,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show the leader, term, commit and applied index, and each member's lag.
    Status {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List the Raft members (masters) with role and replication lag.
    Members {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove a master from the Raft group. Without NODE_ID, the node at the first
    /// endpoint leaves. The removed node process exits.
    Leave {
        node_id: Option<u64>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List masters and agents: role, state, resources, labels, heartbeat age, and the
    /// master each agent's session is held by.
    Nodes {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Inspect, drain, activate or remove one node, or show registry events.
    Node {
        #[command(subcommand)]
        op: NodeOp,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Services (Marathon apps): create from app JSON, list, inspect, update, scale,
    /// restart, remove.
    Service {
        #[command(subcommand)]
        op: ServiceOp,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Tasks: list and inspect.
    Task {
        #[command(subcommand)]
        op: TaskOp,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Jobs (Chronos): run a command on an ISO 8601 or cron schedule, in a time zone, or
    /// after other jobs; each scheduled instant runs once, across failovers.
    Job {
        #[command(subcommand)]
        op: JobOp,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Deployments: list, cancel (roll back).
    Deployment {
        #[command(subcommand)]
        op: DeploymentOp,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Overlay networks: create, list, inspect, remove, check for leaks.
    Network {
        #[command(subcommand)]
        op: NetworkOp,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Allocate and release overlay IP addresses.
    Ip {
        #[command(subcommand)]
        op: IpOp,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Read and write the key-value store (the same store etcdctl sees).
    Kv {
        #[command(subcommand)]
        op: KvOp,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Leases: keys that live while someone keeps their lease alive (etcd's leases).
    Lease {
        #[command(subcommand)]
        op: LeaseOp,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Hold lock NAME while CMD runs (or until Ctrl-C), then release it.
    ///
    /// The lock is held under a lease this command keeps alive; if this process dies,
    /// the lock is released when the lease runs out. CMD gets the lock's key in
    /// CLUSTER_LOCK_KEY and its fencing token (the key's create revision) in
    /// CLUSTER_LOCK_TOKEN (also ETCD_LOCK_KEY and ETCD_LOCK_REV, as etcdctl sets them).
    /// A lock can be lost while held (a paused process, an expired lease): whatever CMD
    /// writes should check the token, e.g. with a txn comparing the lock key's create
    /// revision to it. Interoperates with etcdctl lock and etcd's lock API.
    Lock {
        name: String,
        /// Seconds the lease lives without renewal if this process stops renewing it.
        #[arg(long, default_value_t = 60)]
        ttl: i64,
        /// The command to run while holding the lock (after `--`).
        #[arg(last = true)]
        cmd: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Campaign in election NAME with PROPOSAL; print the leader key and proposal once
    /// this process leads, and resign on Ctrl-C. With --observe, print each leader as
    /// leadership changes. Interoperates with etcdctl elect and etcd's election API.
    Elect {
        name: String,
        /// The value to proclaim while leading.
        proposal: Option<String>,
        /// Watch who leads instead of campaigning.
        #[arg(long)]
        observe: bool,
        /// Seconds the campaign's lease lives without renewal.
        #[arg(long, default_value_t = 60)]
        ttl: i64,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Back up the state machine to a file, inspect a backup, or restore one as a new
    /// cluster.
    Snapshot {
        #[command(subcommand)]
        op: SnapshotOp,
    },
    /// Make a surviving master of a cluster that lost its quorum for good the only voter
    /// of its cluster, keeping its data; other masters then join it afresh.
    ///
    /// Run it on a stopped master, then `cluster start` it. It first applies any entries
    /// of its log not applied yet (writes the old quorum may have acknowledged). Refused
    /// while a quorum of the voters it knew still answers: remove dead masters with
    /// `cluster leave` then. Never start the other old masters again afterwards.
    Recover {
        /// The stopped master's data dir.
        #[arg(long)]
        data_dir: PathBuf,
        /// Recover even though a quorum of the old voters answers.
        #[arg(long)]
        force: bool,
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Load generator speaking the etcd v3 API: works against cluster and etcd alike.
    Bench(BenchArgs),
}

#[derive(Subcommand, Debug)]
pub enum SnapshotOp {
    /// Save a consistent snapshot of the state machine, streamed from the leader, to
    /// FILE. It holds every write acknowledged before the call, a format version and a
    /// SHA-256 checksum; FILE is replaced only once the whole snapshot has verified.
    Save {
        file: PathBuf,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Verify FILE's checksum and print its version, revision, log index, size and
    /// record counts by area.
    Inspect {
        file: PathBuf,
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Build a new one-node cluster from FILE in an empty data dir: the state of the
    /// snapshot's revision, with a new cluster id and new join tokens, so members of the
    /// old cluster cannot join it by mistake. Then run `cluster start --data-dir DIR`.
    Restore {
        file: PathBuf,
        /// Directory for the new node; must be empty or absent.
        #[arg(long)]
        data_dir: PathBuf,
        /// host:port the node will serve on.
        #[arg(long, default_value = "127.0.0.1:2379")]
        listen: String,
        /// host:port other nodes and clients use to reach it [default: --listen].
        #[arg(long)]
        advertise: Option<String>,
        /// Name shown in member lists [default: node-<id>].
        #[arg(long)]
        name: Option<String>,
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAction {
    Manager,
    Worker,
    Rotate,
    /// A bearer token for the HTTP face (`--role admin|reader`, `--name`), shown once.
    IssueHttp,
    /// Refuse an HTTP token from now on (`--id`).
    RevokeHttp,
    /// The HTTP tokens issued and not revoked (ids, roles, names; never the tokens).
    LsHttp,
}

#[derive(Subcommand, Debug)]
pub enum CertOp {
    /// Make a client credential: a new key (made here; it never leaves this machine) and
    /// a certificate the cluster CA signs. Writes ca.crt, ROLE.crt and ROLE.key (0600)
    /// into DIR; point the CLI at it with --cert-dir DIR, or etcdctl with --cacert,
    /// --cert and --key. Admin only.
    Issue {
        /// admin: everything a client may do. reader: reads and watches only.
        #[arg(long, value_enum)]
        role: ClientRole,
        /// Directory to write the credential into (created 0700 if absent).
        #[arg(long)]
        out: PathBuf,
        /// The user name in the certificate (its CN, etcd's user) [default: the role].
        #[arg(long)]
        name: Option<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    Admin,
    Reader,
}

#[derive(Subcommand, Debug)]
pub enum CaOp {
    /// Replace the cluster CA without cutting anyone off: a new CA, cross-signed by the
    /// old one, signs from now on; every node renews its certificate from it (this
    /// waits, showing progress); then the old CA is no longer trusted. Join tokens change
    /// (they pin the CA): print new ones with `cluster token`. The credential this
    /// command uses is reissued in place; other client certificates must be issued
    /// again. A node that is down meanwhile must join again.
    Rotate {
        /// How long to wait for every node to renew before giving up (the rotation then
        /// stays half done: run the command again to finish it).
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRole {
    Manager,
    Worker,
}

impl From<TokenRole> for Role {
    fn from(r: TokenRole) -> Role {
        match r {
            TokenRole::Manager => Role::Manager,
            TokenRole::Worker => Role::Worker,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum NodeOp {
    /// Everything the registry knows of a node.
    Inspect { node_id: u64 },
    /// Stop giving the node new work; what runs there keeps running.
    Drain { node_id: u64 },
    /// Give the node work again after a drain.
    Activate { node_id: u64 },
    /// Remove an agent from the registry; its id is never used again. Refused while the
    /// agent is active (stop it first) unless --force. Masters leave with `cluster leave`.
    Rm {
        node_id: u64,
        #[arg(long)]
        force: bool,
    },
    /// Committed registry events (registrations, state transitions, drains, removals).
    Events {
        /// First event index; 0 lists the current nodes first, then new events.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep printing new events as they are committed.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServiceOp {
    /// Create a service from a Marathon app definition, then follow its deployment.
    Create {
        /// The app JSON file (`-`: standard input).
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Return at once instead of following the deployment.
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// List services with their task counts.
    Ls,
    /// A service's state and its current definition as Marathon JSON.
    Inspect { id: String },
    /// Replace a service's definition (a new version, rolled out under its strategy).
    Update {
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Replace a deployment in progress.
        #[arg(long)]
        force: bool,
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// Change the number of instances (tasks keep running; extra ones go youngest first).
    Scale {
        id: String,
        instances: u32,
        #[arg(long)]
        force: bool,
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// Replace every task, under the upgrade strategy.
    Restart {
        id: String,
        #[arg(long)]
        force: bool,
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// Kill every task and remove the service.
    Rm { id: String },
}

#[derive(Subcommand, Debug)]
pub enum TaskOp {
    /// List tasks (running ones; --all adds the last ended ones).
    Ls {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// One task in full.
    Inspect { id: String },
    /// Kill tasks of services; each service starts a replacement (as when a task
    /// fails). Every id must name a running task, or none is killed.
    Kill {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// A task's stdout (or --stderr) from its sandbox on its agent, relayed by the
    /// masters. Works for ended tasks too while their logs are kept (the newest 50 per
    /// agent).
    Logs {
        id: String,
        /// Keep printing what the task writes, until it ends (or Ctrl-C).
        #[arg(short, long)]
        follow: bool,
        /// stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// Start this many bytes before the end of the log (0: the whole log).
        #[arg(long, default_value_t = 0)]
        tail_bytes: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobOp {
    /// Create a job from a Chronos job definition: `name`, `command`, and one of
    /// `schedule` (R[n]/start/period, e.g. R/2030-01-01T02:30:00/P1D), `cron` (e.g.
    /// "30 2 * * *") or `parents`; optional `scheduleTimeZone` (a tz name), `epsilon`
    /// (PT60S), `retries` (2), `concurrent`, `missedRuns` (skip | catch-up-once), `cpus`,
    /// `mem`, `disk`, `environmentVariables`, `constraints`, `disabled`.
    Create {
        /// The job JSON file (`-`: standard input).
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Replace a job's definition (runs going finish on the old one).
    Update {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// List jobs with their next run and their last result.
    Ls,
    /// A job's state, runs going and definition.
    Inspect { name: String },
    /// Start a run now.
    Run { name: String },
    /// The kept runs (the newest 100): instant, trigger, result, exit code, duration, the
    /// task whose logs `cluster task logs` shows, and why a run was skipped or failed.
    History { name: String },
    /// Remove a job (a run going is killed).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum DeploymentOp {
    /// Deployments in progress, with how many new tasks are healthy.
    Ls,
    /// Cancel a deployment: roll back to the old version (--force: just stop it).
    Cancel {
        id: u64,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum NetworkOp {
    /// Create a network with an IPv4 and/or an IPv6 subnet (up to a /8 and a /64).
    Create {
        name: String,
        /// CIDR, e.g. 10.10.0.0/16 or fd00:10::/64; give it twice for dual stack.
        #[arg(long, required = true)]
        subnet: Vec<String>,
        /// Gateway address (reserved) [default: the first host address of each subnet].
        #[arg(long)]
        gateway: Option<String>,
        /// Reserve FROM-TO (inclusive); repeat for several ranges.
        #[arg(long)]
        reserve: Vec<String>,
        /// How long a released address is held back before reuse.
        #[arg(long, default_value_t = 60_000)]
        quarantine_ms: u64,
    },
    /// List networks with their usage.
    Ls,
    /// Usage, reserved ranges, and allocations with their owners.
    Inspect {
        name: String,
        /// Allocations to list at most.
        #[arg(long, default_value_t = 1_000)]
        limit: u32,
    },
    /// Remove a network; refused while addresses are allocated unless --force.
    Rm {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Leaks (addresses whose owner is gone, and when repair releases them) and
    /// conflicts between what agents report and the state.
    Check,
}

#[derive(Subcommand, Debug)]
pub enum IpOp {
    /// Allocate an address for OWNER and print it; asking again returns the same address.
    Allocate {
        network: String,
        #[arg(long)]
        owner: String,
        /// A specific address.
        #[arg(long)]
        ip: Option<String>,
        /// The agent the owner runs on: the address is released if that agent is removed.
        #[arg(long)]
        node: Option<u64>,
    },
    /// Release OWNER's address (or --ip ADDRESS). Releasing twice is not an error.
    Release {
        network: String,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        ip: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KvOp {
    /// Write VALUE under KEY.
    Put { key: String, value: String },
    /// Read KEY (or every key with prefix KEY).
    Get {
        key: String,
        /// Treat KEY as a prefix.
        #[arg(long)]
        prefix: bool,
        /// Read at this revision (0: newest).
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
        /// Answer from the contacted member without confirming leadership (may be stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Delete KEY (or every key with prefix KEY).
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Print every change of KEY (or of every key with prefix KEY) until interrupted.
    ///
    /// Each event prints as etcdctl does: PUT or DELETE, the key, then the value. When
    /// the master serving the watch fails, it resumes on another one from the revision
    /// after the last event printed, so no change is missed or printed twice.
    Watch {
        key: String,
        /// Treat KEY as a prefix.
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (inclusive), replaying history; 0: from now on.
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// Also print the value each change replaced.
        #[arg(long)]
        prev_kv: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeaseOp {
    /// Grant a lease of TTL seconds (raised to the cluster's minimum, 1.5 election
    /// timeouts); prints its id in hex.
    Grant {
        ttl: i64,
        /// Choose the id (hex) instead of letting the cluster pick one.
        #[arg(long)]
        id: Option<String>,
    },
    /// Revoke lease ID (hex): its keys are deleted at once, in one revision.
    Revoke { id: String },
    /// Keep lease ID alive, renewing it every third of its TTL until interrupted.
    Keepalive {
        id: String,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Time left on lease ID, as the leader counts it.
    Ttl {
        id: String,
        /// Also list the keys attached to it.
        #[arg(long)]
        keys: bool,
    },
    /// List every lease.
    Ls,
}

impl LeaseOp {
    async fn run(self, c: &Client, f: Format) -> anyhow::Result<()> {
        match self {
            LeaseOp::Grant { ttl, id } => {
                let id = id.as_deref().map(lease::parse_id).transpose()?.unwrap_or(0);
                lease::grant(c, f, ttl, id).await
            }
            LeaseOp::Revoke { id } => lease::revoke(c, lease::parse_id(&id)?).await,
            LeaseOp::Keepalive { id, once } => lease::keepalive(c, lease::parse_id(&id)?, once).await,
            LeaseOp::Ttl { id, keys } => lease::ttl(c, f, lease::parse_id(&id)?, keys).await,
            LeaseOp::Ls => lease::ls(c, f).await,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub op: BenchOp,
    /// Comma-separated etcd v3 endpoints (cluster or etcd).
    #[arg(long, env = "CLUSTER_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// gRPC connections shared by the clients [default: min(clients, 8)].
    #[arg(long)]
    pub conns: Option<usize>,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes per value written.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Keys are drawn uniformly from this many.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Reads answered locally without confirming leadership.
    #[arg(long)]
    pub serializable: bool,
    /// Send requests to the leader only (found with Maintenance.Status), or spread them
    /// over all endpoints.
    #[arg(long, value_enum, default_value_t = BenchTarget::Leader)]
    pub target: BenchTarget,
    /// agents, tasks: how many emulated agents.
    #[arg(long, default_value_t = 1_000)]
    pub agents: usize,
    /// tasks: instances in all, in services of 1 to 1,000.
    #[arg(long, default_value_t = 100_000)]
    pub tasks: usize,
    /// agents: kill -9 the leader (it must run on this machine) this many seconds into
    /// the measured run.
    #[arg(long)]
    pub kill_leader_at: Option<f64>,
    /// ipam: owners per batched allocation.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// ipam: also fill an IPv4 /8 completely and put 1,000,000 allocations in an IPv6
    /// /64, reporting the leader's memory (the leader must run on this machine).
    #[arg(long)]
    pub fill: bool,
    /// watch: watchers of one prefix, spread over the endpoints.
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
    /// watch: puts per second into the watched prefix.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// leases, expiry: how many leases.
    #[arg(long, default_value_t = 10_000)]
    pub leases: usize,
    /// leases: their TTL in seconds (each is renewed every third of it).
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
    /// expiry: seconds from the start until every lease runs out (granting must finish
    /// before); 0 times a sample of grants and allows twice what it predicts, plus 15 s.
    #[arg(long, default_value_t = 0.0)]
    pub expire_after: f64,
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Speak plain HTTP/2, for an etcd started without TLS (masters of this cluster
    /// accept TLS only).
    #[arg(long)]
    pub plaintext: bool,
    #[command(flatten)]
    pub creds: CredArgs,
}

impl BenchArgs {
    fn options(self) -> anyhow::Result<bench::Options> {
        let tls = if self.plaintext {
            None
        } else {
            let f = self.creds.source().files()?;
            let chain = client::pki::files::read_certs(&f.cert)?;
            // A certificate of this cluster talks to its masters, which all answer to
            // the masters' name; any other (etcd's) is checked against the first
            // endpoint's host.
            let ours = chain.first().is_some_and(|c| client::pki::PeerIdentity::from_der(c).is_ok());
            let host = match ours {
                true => client::pki::cert::SERVER_NAME.to_string(),
                false => self.endpoints.first().map(|e| client::pki::cert::host_of(e)).unwrap_or_default(),
            };
            let key = client::pki::files::read_key(&f.key)?;
            Some(client::ClientTls::for_server(client::pki::files::read_certs(&f.ca)?, chain, Some(key), &host)?)
        };
        // Emulated agents share connections, so they cannot each present their own
        // certificate: they present the master's node certificate (a master may act for
        // any node). Real agents present their own.
        let agent_tls = match (self.op, &self.creds.data_dir) {
            (BenchOp::Agents | BenchOp::Tasks, Some(dir)) => Some(
                daemon::node_credential(dir)
                    .load()
                    .with_context(|| format!("loading the node credential of {}", dir.display()))?
                    .client()?,
            ),
            (BenchOp::Agents | BenchOp::Tasks, None) => bail!(
                "bench agents and bench tasks need --data-dir (or CLUSTER_DATA_DIR) of a master on this machine: the emulated \
                 agents share connections and present that master's node certificate"
            ),
            _ => None,
        };
        Ok(bench::Options {
            op: match self.op {
                BenchOp::Put => bench::Op::Put,
                BenchOp::Get => bench::Op::Get,
                BenchOp::Agents => bench::Op::Agents,
                BenchOp::Tasks => bench::Op::Tasks,
                BenchOp::Ipam => bench::Op::Ipam,
                BenchOp::Watch => bench::Op::Watch,
                BenchOp::Leases => bench::Op::Leases,
                BenchOp::Expiry => bench::Op::Expiry,
            },
            endpoints: self.endpoints,
            clients: self.clients,
            conns: self.conns,
            duration_s: self.duration,
            value_size: self.value_size,
            keys: self.keys,
            serializable: self.serializable,
            target: match self.target {
                BenchTarget::Leader => bench::Target::Leader,
                BenchTarget::All => bench::Target::All,
            },
            agents: self.agents,
            tasks: self.tasks,
            kill_leader_at_s: self.kill_leader_at,
            batch: self.batch,
            fill: self.fill,
            watchers: self.watchers,
            rate: self.rate,
            leases: self.leases,
            ttl_s: self.ttl,
            expire_after_s: self.expire_after,
            output: self.output.into(),
            tls,
            agent_tls,
        })
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchOp {
    Put,
    Get,
    /// Emulated agents: each registers and heartbeats over the real gRPC protocol.
    Agents,
    /// Placement end to end: --agents emulated agents that acknowledge their tasks, then
    /// services of --tasks instances in all; placements/s, time until all run, leader CPU.
    Tasks,
    /// IP allocations: single and batched rates and latency, then memory of full pools.
    Ipam,
    /// Watch fan-out: --watchers watchers of one prefix, --rate puts/s into it; events/s
    /// and put-to-event latency.
    Watch,
    /// --leases leases of --ttl s kept alive beside --clients putting clients; puts/s and
    /// KeepAlive latency.
    Leases,
    /// --leases leases with a key each run out in the same second; how long until the
    /// keys are gone, and puts/s meanwhile.
    Expiry,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchTarget {
    Leader,
    All,
}

impl Cli {
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Init { .. } | Command::Join { .. } | Command::Start { .. } => "info,openraft=warn",
            _ => "warn",
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Init { node } => daemon::init(node.spec()).await,
            Command::Join { node, token, seed_addr } => daemon::join(node.spec(), token, seed_addr).await,
            Command::Start { data_dir, listen, agent, tuning } => {
                daemon::start(data_dir, listen, agent.flags(), tuning.config()).await
            }
            Command::Token { action: TokenAction::IssueHttp, http_role, name, quiet, client: o, .. } => {
                let role = match http_role {
                    Some(ClientRole::Admin) => "admin",
                    Some(ClientRole::Reader) => "reader",
                    None => bail!("which role? `cluster token issue-http --role reader` (or admin)"),
                };
                cluster::issue_http_token(&o.client()?, o.format(), role, &name, quiet).await
            }
            Command::Token { action: TokenAction::RevokeHttp, id, client: o, .. } => {
                let Some(id) = id else {
                    bail!("which token? `cluster token revoke-http --id ID` (`ls-http` lists them)")
                };
                cluster::revoke_http_token(&o.client()?, o.format(), &id).await
            }
            Command::Token { action: TokenAction::LsHttp, client: o, .. } => {
                cluster::list_http_tokens(&o.client()?, o.format()).await
            }
            Command::Token { action, role, quiet, client: o, .. } => match (action, role) {
                (TokenAction::Manager, None) => cluster::token(&o.client()?, o.format(), Role::Manager, quiet).await,
                (TokenAction::Worker, None) => cluster::token(&o.client()?, o.format(), Role::Worker, quiet).await,
                (TokenAction::Rotate, Some(r)) => {
                    cluster::rotate_token(&o.client()?, o.format(), r.into(), quiet).await
                }
                (TokenAction::Rotate, None) => bail!("which token? `cluster token rotate manager` or `… worker`"),
                (_, Some(_)) => bail!("one role only: `cluster token worker`, or `cluster token rotate worker`"),
                (TokenAction::IssueHttp | TokenAction::RevokeHttp | TokenAction::LsHttp, None) => {
                    unreachable!("matched above")
                }
            },
            Command::Cert { op: CertOp::Issue { role, out, name, days }, client: o } => {
                let role = match role {
                    ClientRole::Admin => "admin",
                    ClientRole::Reader => "reader",
                };
                let name = name.unwrap_or_else(|| role.to_string());
                cluster::issue_cert(&o.client()?, o.format(), role, &name, &out, days).await
            }
            Command::Ca { op: CaOp::Rotate { timeout_secs }, client: o } => {
                let files = o.creds.source().files()?;
                cluster::rotate_ca(&o.client()?, o.format(), &files, std::time::Duration::from_secs(timeout_secs)).await
            }
            Command::Status { client: o } => cluster::status(&o.client()?, o.format()).await,
            Command::Members { client: o } => cluster::members(&o.client()?, o.format()).await,
            Command::Leave { node_id, client: o } => cluster::leave(&o.client()?, o.format(), node_id).await,
            Command::Kv { op, client: o } => op.run(&o.client()?, o.format()).await,
            Command::Lease { op, client: o } => op.run(&o.client()?, o.format()).await,
            Command::Lock { name, ttl, cmd, client: o } => lease::lock(&o.client()?, &name, ttl, cmd).await,
            Command::Elect { name, proposal, observe, ttl, client: o } => {
                let c = o.client()?;
                match (observe, proposal) {
                    (true, None) => lease::observe(&c, &name).await,
                    (true, Some(_)) => bail!("--observe takes no proposal"),
                    (false, Some(p)) => lease::elect(&c, &name, &p, ttl).await,
                    (false, None) => bail!("give a PROPOSAL to campaign with, or --observe to watch the leader"),
                }
            }
            Command::Nodes { client: o } => nodes::list(&o.client()?, o.format()).await,
            Command::Node { op, client: o } => op.run(&o.client()?, o.format()).await,
            Command::Service { op, client: o } => op.run(&o.client()?, o.format()).await,
            Command::Task { op, client: o } => op.run(&o.client()?, o.format()).await,
            Command::Job { op, client: o } => op.run(&o.client()?, o.format()).await,
            Command::Deployment { op, client: o } => op.run(&o.client()?, o.format()).await,
            Command::Network { op, client: o } => op.run(&o.client()?, o.format()).await,
            Command::Ip { op, client: o } => op.run(&o.client()?, o.format()).await,
            Command::Snapshot { op } => op.run().await,
            Command::Recover { data_dir, force, output } => backup::recover(output.into(), &data_dir, force).await,
            Command::Bench(args) => bench::run(args.options()?).await,
        }
    }
}

impl SnapshotOp {
    async fn run(self) -> anyhow::Result<()> {
        match self {
            SnapshotOp::Save { file, client: o } => backup::save(&o.client()?, o.format(), &file).await,
            SnapshotOp::Inspect { file, output } => backup::inspect(output.into(), &file),
            SnapshotOp::Restore { file, data_dir, listen, advertise, name, output } => {
                let cert_validity = std::time::Duration::from_secs(coord::CoordConfig::default().cert_validity_secs);
                let spec = agent::backup::RestoreSpec { file, data_dir, listen, advertise, name, cert_validity };
                backup::restore(output.into(), spec).await
            }
        }
    }
}

impl NodeOp {
    async fn run(self, c: &Client, f: Format) -> anyhow::Result<()> {
        match self {
            NodeOp::Inspect { node_id } => nodes::inspect(c, f, node_id).await,
            NodeOp::Drain { node_id } => nodes::set_availability(c, f, node_id, Availability::Drain).await,
            NodeOp::Activate { node_id } => nodes::set_availability(c, f, node_id, Availability::Active).await,
            NodeOp::Rm { node_id, force } => nodes::remove(c, f, node_id, force).await,
            NodeOp::Events { from, follow } => nodes::events(c, f, from, follow).await,
        }
    }
}

impl ServiceOp {
    async fn run(self, c: &Client, f: Format) -> anyhow::Result<()> {
        match self {
            ServiceOp::Create { file, detach } => services::create(c, f, &file, detach).await,
            ServiceOp::Ls => services::list(c, f).await,
            ServiceOp::Inspect { id } => services::inspect(c, f, &id).await,
            ServiceOp::Update { file, force, detach } => services::update(c, f, &file, force, detach).await,
            ServiceOp::Scale { id, instances, force, detach } => {
                services::scale(c, f, &id, instances, force, detach).await
            }
            ServiceOp::Restart { id, force, detach } => services::restart(c, f, &id, force, detach).await,
            ServiceOp::Rm { id } => services::remove(c, f, &id).await,
        }
    }
}

impl TaskOp {
    async fn run(self, c: &Client, f: Format) -> anyhow::Result<()> {
        match self {
            TaskOp::Ls { service, all } => services::tasks(c, f, service.as_deref(), all).await,
            TaskOp::Inspect { id } => services::task_inspect(c, f, &id).await,
            TaskOp::Kill { ids } => services::kill_tasks(c, f, &ids).await,
            TaskOp::Logs { id, follow, stderr, tail_bytes } => {
                services::task_logs(c, &id, follow, stderr, tail_bytes).await
            }
        }
    }
}

impl JobOp {
    async fn run(self, c: &Client, f: Format) -> anyhow::Result<()> {
        match self {
            JobOp::Create { file } => jobs::create(c, f, &file).await,
            JobOp::Update { file } => jobs::update(c, f, &file).await,
            JobOp::Ls => jobs::list(c, f).await,
            JobOp::Inspect { name } => jobs::inspect(c, f, &name).await,
            JobOp::Run { name } => jobs::run(c, f, &name).await,
            JobOp::History { name } => jobs::history(c, f, &name).await,
            JobOp::Rm { name } => jobs::remove(c, f, &name).await,
        }
    }
}

impl DeploymentOp {
    async fn run(self, c: &Client, f: Format) -> anyhow::Result<()> {
        match self {
            DeploymentOp::Ls => services::deployments(c, f).await,
            DeploymentOp::Cancel { id, force } => services::cancel_deployment(c, f, id, force).await,
        }
    }
}

impl NetworkOp {
    async fn run(self, c: &Client, f: Format) -> anyhow::Result<()> {
        match self {
            NetworkOp::Create { name, subnet, gateway, reserve, quarantine_ms } => {
                let spec = NetworkSpec { name, subnets: subnet, gateway, reserve, quarantine_ms: Some(quarantine_ms) };
                ipam::create_network(c, f, spec).await
            }
            NetworkOp::Ls => ipam::list_networks(c, f).await,
            NetworkOp::Inspect { name, limit } => ipam::inspect_network(c, f, &name, limit).await,
            NetworkOp::Rm { name, force } => ipam::remove_network(c, f, &name, force).await,
            NetworkOp::Check => ipam::check(c, f).await,
        }
    }
}

impl IpOp {
    async fn run(self, c: &Client, f: Format) -> anyhow::Result<()> {
        match self {
            IpOp::Allocate { network, owner, ip, node } => {
                ipam::allocate(c, f, &network, &owner, ip.as_deref(), node).await
            }
            IpOp::Release { network, owner, ip } => {
                if owner.is_none() && ip.is_none() {
                    bail!("give --owner OWNER or --ip ADDRESS");
                }
                ipam::release(c, f, &network, owner.as_deref(), ip.as_deref()).await
            }
        }
    }
}

impl KvOp {
    async fn run(self, c: &Client, f: Format) -> anyhow::Result<()> {
        match self {
            KvOp::Put { key, value } => kv::put(c, f, &key, &value).await,
            KvOp::Get { key, prefix, rev, keys_only, serializable } => {
                if key.is_empty() {
                    bail!("key must not be empty");
                }
                kv::get(c, f, &key, GetOptions { prefix, revision: rev, keys_only, serializable }).await
            }
            KvOp::Del { key, prefix } => kv::del(c, f, &key, prefix).await,
            KvOp::Watch { key, prefix, rev, prev_kv } => {
                if rev < 0 {
                    bail!("--rev must be 0 (now) or a revision");
                }
                let o =
                    WatchOptions { prefix, start_revision: rev, prev_kv, require_leader: true, ..Default::default() };
                kv::watch(c, f, &key, o).await
            }
        }
    }
}
