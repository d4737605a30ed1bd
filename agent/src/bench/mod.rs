//! `cluster bench …`: load generators against a running cluster.
//!
//! - [`etcd`]: `bench put|get`, closed-loop etcd v3 load that drives cluster and etcd alike;
//! - [`agents`]: `bench agents`, emulated agents running the real session code;
//! - [`tasks`]: `bench tasks`, placement end to end, on emulated agents that acknowledge
//!   their tasks;
//! - [`ipam`]: `bench ipam`, allocation rates, and memory of full pools;
//! - [`coord`]: `bench watch|leases|expiry`, etcd Watch fan-out, kept-alive leases
//!   beside puts, and an expiry storm, against cluster and etcd alike.

pub mod agents;
pub mod coord;
pub mod etcd;
pub mod ipam;
pub mod tasks;

use crate::output::Format;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Agents,
    Tasks,
    Ipam,
    Watch,
    Leases,
    Expiry,
}

/// Where `put`/`get` requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The endpoint that reports itself leader.
    Leader,
    /// Spread over all endpoints.
    All,
}

/// Every benchmark's parameters; each uses the ones its `--help` names.
#[derive(Debug, Clone)]
pub struct Options {
    pub op: Op,
    pub endpoints: Vec<String>,
    /// Concurrent clients, each with one request in flight.
    pub clients: usize,
    /// gRPC connections shared by the clients; `None` is min(clients, 8).
    pub conns: Option<usize>,
    pub duration_s: f64,
    pub value_size: usize,
    pub keys: u64,
    pub serializable: bool,
    pub target: Target,
    pub agents: usize,
    /// tasks: instances in all.
    pub tasks: usize,
    pub kill_leader_at_s: Option<f64>,
    pub batch: usize,
    pub fill: bool,
    /// watch: watchers of the prefix; `rate`: puts per second into it.
    pub watchers: usize,
    pub rate: f64,
    /// leases/expiry: how many leases, and (leases) their TTL.
    pub leases: usize,
    pub ttl_s: i64,
    /// expiry: seconds from the start until every lease runs out.
    pub expire_after_s: f64,
    pub output: Format,
    /// `None`: plain HTTP/2 (an etcd without TLS).
    pub tls: Option<client::ClientTls>,
    /// `bench agents`: what the emulated agents present (a master's node certificate).
    pub agent_tls: Option<client::ClientTls>,
}

impl Options {
    /// A channel to `addr`, over TLS unless the run is plaintext.
    pub(crate) fn channel(&self, addr: &str) -> Result<tonic::transport::Channel, client::ClientError> {
        match &self.tls {
            Some(t) => client::channel(addr, t),
            None => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map(|e| e.tcp_nodelay(true).connect_lazy())
                .map_err(|e| client::ClientError::BadEndpoint { addr: addr.to_string(), reason: e.to_string() }),
        }
    }

    /// The masters of this cluster, which need TLS.
    pub(crate) fn client<S: Into<String>>(
        &self,
        endpoints: impl IntoIterator<Item = S>,
    ) -> anyhow::Result<client::Client> {
        let tls = self
            .tls
            .clone()
            .ok_or_else(|| anyhow::anyhow!("this benchmark talks to cluster masters: drop --plaintext"))?;
        Ok(client::Client::new(endpoints, tls))
    }
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    match o.op {
        Op::Put => etcd::run(etcd::KvOp::Put, o).await,
        Op::Get => etcd::run(etcd::KvOp::Get, o).await,
        Op::Agents => agents::run(o).await,
        Op::Tasks => tasks::run(o).await,
        Op::Ipam => ipam::run(o).await,
        Op::Watch => coord::watch(o).await,
        Op::Leases => coord::leases(o).await,
        Op::Expiry => coord::expiry(o).await,
    }
}

/// The value at fraction `p` of sorted samples, NaN when there are none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
