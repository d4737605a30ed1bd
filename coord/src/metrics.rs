//! Prometheus metrics of a master, served as text at `GET /metrics` on the HTTP face.
//!
//! Where a metric means what one of etcd's means, it has etcd's name with our prefix
//! (`cluster_server_has_leader` is `etcd_server_has_leader`), and gRPC calls are counted
//! under go-grpc-prometheus' names (`grpc_server_handled_total{grpc_method, grpc_code}`),
//! so existing dashboards and alerts carry over. Ours: agents and tasks by state, IP
//! pool usage, scheduler placement latency, leases, watchers.
//!
//! Counters and histograms of events (an fsync, a call, a scheduler pass) live in one
//! process-wide registry, as a master is one process; gauges of state (leader, agents,
//! tasks, pools) are read from the node's applied state when scraped, so they cannot
//! drift from it.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::node::CoordNode;

/// The process-wide counters and histograms.
pub struct Metrics {
    registry: Registry,
    /// etcd_server_leader_changes_seen_total.
    pub leader_changes: IntCounter,
    /// etcd_disk_wal_fsync_duration_seconds: one fsync of the Raft log.
    pub wal_fsync: Histogram,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    /// How long one scheduler pass took to decide (read the state, place everything).
    pub placement: Histogram,
    pub placements: IntCounter,
    /// Watchers open on this master (etcd_debugging_mvcc_watcher_total).
    pub watchers: IntGauge,
    /// HTTP face requests by method class and status.
    pub http_requests: IntCounterVec,
}

fn buckets_fsync() -> Vec<f64> {
    // etcd's: 1 ms doubling to about 8 s.
    prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets")
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let leader_changes = IntCounter::new(
            "cluster_server_leader_changes_seen_total",
            "The number of leader changes this master has seen.",
        )
        .expect("metric");
        let wal_fsync = Histogram::with_opts(
            HistogramOpts::new(
                "cluster_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by the Raft log.",
            )
            .buckets(buckets_fsync()),
        )
        .expect("metric");
        let grpc_started = IntCounterVec::new(
            Opts::new("grpc_server_started_total", "Total number of RPCs started on the server."),
            &["grpc_service", "grpc_method"],
        )
        .expect("metric");
        let grpc_handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_service", "grpc_method", "grpc_code"],
        )
        .expect("metric");
        let placement = Histogram::with_opts(
            HistogramOpts::new(
                "cluster_scheduler_placement_duration_seconds",
                "How long a scheduler pass took to read the state and place what waits.",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")),
        )
        .expect("metric");
        let placements =
            IntCounter::new("cluster_scheduler_placements_total", "Tasks and job runs the scheduler placed.")
                .expect("metric");
        let watchers = IntGauge::new("cluster_watchers", "Watchers open on this master.").expect("metric");
        let http_requests = IntCounterVec::new(
            Opts::new("cluster_http_requests_total", "Requests the HTTP face answered, by method and status code."),
            &["method", "code"],
        )
        .expect("metric");
        for c in [
            Box::new(leader_changes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(wal_fsync.clone()),
            Box::new(grpc_started.clone()),
            Box::new(grpc_handled.clone()),
            Box::new(placement.clone()),
            Box::new(placements.clone()),
            Box::new(watchers.clone()),
            Box::new(http_requests.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            leader_changes,
            wal_fsync,
            grpc_started,
            grpc_handled,
            placement,
            placements,
            watchers,
            http_requests,
        }
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static M: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &M
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`); names not served by us are
/// `unknown`, so a client cannot grow the label set with made-up paths.
pub fn grpc_labels(path: &str, known: bool) -> (&str, &str) {
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((s, m)) if known => (s, m),
        _ => ("unknown", "unknown"),
    }
}

/// One gRPC call being counted: started now, handled once, when its status is known
/// (the response's headers for an error, its trailers for a stream or a success); a
/// call dropped before that (the client went away) counts as `Canceled`.
pub struct GrpcCall {
    service: String,
    method: String,
    counted: bool,
}

impl GrpcCall {
    pub fn start(path: &str, known: bool) -> GrpcCall {
        let (service, method) = grpc_labels(path, known);
        global().grpc_started.with_label_values(&[service, method]).inc();
        GrpcCall { service: service.to_string(), method: method.to_string(), counted: false }
    }

    fn handled(&mut self, code: i32) {
        if !self.counted {
            self.counted = true;
            global().grpc_handled.with_label_values(&[&self.service, &self.method, grpc_code_name(code)]).inc();
        }
    }

    pub fn finish(mut self, r: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
        if let Some(code) = status_of(r.headers()) {
            self.handled(code);
            return r;
        }
        r.map(|body| tonic::body::Body::new(CountedBody { inner: body, call: Some(self) }))
    }
}

impl Drop for GrpcCall {
    fn drop(&mut self) {
        self.handled(tonic::Code::Cancelled as i32);
    }
}

fn status_of(h: &http::HeaderMap) -> Option<i32> {
    h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// A response body that counts its call when the trailers pass.
struct CountedBody {
    inner: tonic::body::Body,
    call: Option<GrpcCall>,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(ready) = &polled {
            let code = match ready {
                Some(Ok(frame)) => frame.trailers_ref().map(|t| status_of(t).unwrap_or(0)),
                Some(Err(s)) => Some(s.code() as i32),
                None => Some(0),
            };
            if let Some(code) = code {
                if let Some(mut call) = self.call.take() {
                    call.handled(code);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// go-grpc-prometheus' spelling of a status code.
pub fn grpc_code_name(code: i32) -> &'static str {
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Canceled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

/// Counts the leader changes `node` sees, until it stops.
pub fn spawn_leader_watch(node: &Arc<CoordNode>) {
    use openraft::async_runtime::watch::WatchReceiver;
    let weak = Arc::downgrade(node);
    let mut rx = node.raft.metrics();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let leader = rx.borrow_and_update().current_leader;
            if leader.is_some() && leader != last {
                global().leader_changes.inc();
                last = leader;
            }
            if weak.strong_count() == 0 || rx.changed().await.is_err() {
                return;
            }
        }
    });
}

fn gauge(r: &Registry, name: &str, help: &str, v: i64) {
    let g = IntGauge::new(name, help).expect("metric");
    g.set(v);
    r.register(Box::new(g)).expect("unique metric names");
}

fn gauge_vec(r: &Registry, name: &str, help: &str, label: &str, values: &BTreeMap<String, i64>) {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("metric");
    for (k, v) in values {
        g.with_label_values(&[k.as_str()]).set(*v);
    }
    r.register(Box::new(g)).expect("unique metric names");
}

/// Everything, in Prometheus' text format.
pub fn render(node: &CoordNode) -> String {
    let state = Registry::new();
    let m = node.metrics();
    let leader = m.current_leader;
    gauge(&state, "cluster_server_has_leader", "Whether a leader exists: 1 is yes, 0 is no.", leader.is_some() as i64);
    gauge(&state, "cluster_server_is_leader", "Whether this master is the leader.", (leader == Some(node.id)) as i64);
    gauge(&state, "cluster_server_term", "The Raft term this master is in.", m.current_term as i64);
    gauge(
        &state,
        "cluster_server_proposals_committed_total",
        "The index of the last committed log entry.",
        m.local_committed.map_or(0, |l| l.index) as i64,
    );
    gauge(
        &state,
        "cluster_server_proposals_applied_total",
        "The index of the last applied log entry.",
        m.last_applied.map_or(0, |l| l.index) as i64,
    );
    let members = node.masters();
    gauge(&state, "cluster_server_members", "Masters in the Raft membership.", members.nodes.len() as i64);
    node.view(|v| {
        gauge(
            &state,
            "cluster_mvcc_db_total_size_in_bytes",
            "The size of the state machine's storage, in bytes.",
            v.storage_size_bytes() as i64,
        );
        gauge(&state, "cluster_leases", "Leases granted and not expired or revoked.", v.leases().by_id.len() as i64);
        // Every state is shown, 0 included: a series that vanishes reads as no data.
        let mut agents: BTreeMap<String, i64> =
            ["registered", "active", "unreachable", "down"].iter().map(|s| (s.to_string(), 0)).collect();
        for n in v.registry().nodes.values() {
            *agents.entry(n.state.as_str().to_string()).or_default() += 1;
        }
        gauge_vec(&state, "cluster_agents", "Registered nodes by state.", "state", &agents);
        let mut tasks: BTreeMap<String, i64> = [
            "staging",
            "starting",
            "running",
            "healthy",
            "unhealthy",
            "killing",
            "finished",
            "failed",
            "killed",
            "lost",
        ]
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
        for t in v.services().tasks() {
            *tasks.entry(t.display_state().to_string()).or_default() += 1;
        }
        gauge_vec(&state, "cluster_tasks", "Tasks by state.", "state", &tasks);
        let used = IntGaugeVec::new(
            Opts::new("cluster_ipam_addresses_used", "Addresses allocated in each overlay network."),
            &["network"],
        )
        .expect("metric");
        let size = IntGaugeVec::new(
            Opts::new("cluster_ipam_addresses_total", "Addresses each overlay network can allocate."),
            &["network"],
        )
        .expect("metric");
        for (name, n) in &v.ipam().networks {
            let u: u128 = n.pools.iter().map(|p| p.allocated + p.quarantined).sum();
            let total: u128 = n.pools.iter().map(|p| p.usable()).sum();
            used.with_label_values(&[name.as_str()]).set(u.min(i64::MAX as u128) as i64);
            size.with_label_values(&[name.as_str()]).set(total.min(i64::MAX as u128) as i64);
        }
        state.register(Box::new(used)).expect("unique metric names");
        state.register(Box::new(size)).expect("unique metric names");
    });
    let mut families = global().registry.gather();
    families.extend(state.gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out).expect("text encoding into memory");
    String::from_utf8(out).expect("the text format is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_labels_keep_unknown_paths_out_of_the_label_set() {
        assert_eq!(grpc_labels("/etcdserverpb.KV/Put", true), ("etcdserverpb.KV", "Put"));
        assert_eq!(grpc_labels("/made/up", false), ("unknown", "unknown"));
        assert_eq!(grpc_labels("garbage", true), ("unknown", "unknown"));
    }

    #[test]
    fn code_names_are_go_grpc_prometheus_spellings() {
        assert_eq!(grpc_code_name(0), "OK");
        assert_eq!(grpc_code_name(1), "Canceled");
        assert_eq!(grpc_code_name(14), "Unavailable");
        assert_eq!(grpc_code_name(99), "Unknown");
    }
}
