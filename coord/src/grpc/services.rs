//! The Services service: Marathon apps in, services, tasks and deployments out; and the
//! agents' two calls, the assignment stream and status reports.

use std::sync::Arc;
use std::time::Duration;

use proto::clusterpb as pb;
use proto::clusterpb::services_client::ServicesClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{authz, channel_stream, on_leader, unexpected, BoxStream};
use crate::command::{Command, Output};
use crate::node::CoordNode;
use crate::services::spec::normalize_id;
use crate::services::{
    marathon, AgentsTouched, Deployment, Service, ServiceCommand, Services, ServicesOutput, Task, TaskState, TaskUpdate,
};
use crate::types::NodeId;
use std::collections::BTreeMap;

/// An assignment stream sends the whole list at least this often, changed or not.
const ASSIGNMENT_RESEND: Duration = Duration::from_secs(10);
/// How often a master tells an agent's idle log channel that it is still there.
const LOG_CHANNEL_BEAT: Duration = Duration::from_secs(30);
/// Status updates one report may carry.
const MAX_STATUSES: usize = 10_000;

pub struct ServicesService {
    node: Arc<CoordNode>,
    hub: Arc<AssignmentHub>,
    logs: Arc<super::logs::LogRelay>,
    reports: ReportBatcher,
}

impl ServicesService {
    pub fn new(node: Arc<CoordNode>) -> Self {
        let hub = Arc::new(AssignmentHub::default());
        // Subscribed here, not in the task: no change may slip by before it starts.
        let changes = node.services_events.subscribe();
        tokio::spawn(hub.clone().run(Arc::downgrade(&node), changes));
        let reports = ReportBatcher::start(Arc::downgrade(&node));
        ServicesService { node, hub, logs: Arc::default(), reports }
    }
}

/// A coalesced entry's reports stop growing at this many bytes of task ids and reasons
/// (a report alone may be bigger; it goes alone), far below the Raft message limit.
const REPORT_BATCH_BYTES: usize = 4 << 20;

struct PendingReport {
    updates: Vec<TaskUpdate>,
    reply: tokio::sync::oneshot::Sender<Result<u32, Status>>,
}

impl PendingReport {
    fn bytes(&self) -> usize {
        self.updates.iter().map(|u| 64 + u.task_id.len() + u.reason.len()).sum()
    }
}

/// Coalesces the agents' status reports that reach the leader together into one
/// `Reports` entry: ten thousand agents acknowledging their new tasks would otherwise be
/// ten thousand log entries, each replicated, applied and written on every master. One
/// entry is written at a time, in arrival order, while the next reports wait and gather;
/// a report whose caller left before its turn is dropped unwritten, as an abandoned
/// request was before. Each report gets its own count, or the entry's error.
struct ReportBatcher {
    tx: tokio::sync::mpsc::Sender<PendingReport>,
}

impl ReportBatcher {
    fn start(node: std::sync::Weak<CoordNode>) -> ReportBatcher {
        let (tx, rx) = tokio::sync::mpsc::channel(16_384);
        tokio::spawn(Self::run(node, rx));
        ReportBatcher { tx }
    }

    async fn submit(&self, updates: Vec<TaskUpdate>) -> Result<u32, Status> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || Status::unavailable("the report writer stopped; retry");
        self.tx.send(PendingReport { updates, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn run(node: std::sync::Weak<CoordNode>, mut rx: tokio::sync::mpsc::Receiver<PendingReport>) {
        let mut carried: Option<PendingReport> = None;
        loop {
            let first = match carried.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => return,
                },
            };
            let (mut count, mut bytes) = (first.updates.len(), first.bytes());
            let mut batch = vec![first];
            while let Ok(p) = rx.try_recv() {
                let b = p.bytes();
                if count + p.updates.len() > crate::services::MAX_BATCH || bytes + b > REPORT_BATCH_BYTES {
                    carried = Some(p);
                    break;
                }
                count += p.updates.len();
                bytes += b;
                batch.push(p);
            }
            batch.retain(|p| !p.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            let Some(node) = node.upgrade() else { return };
            let (reports, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.updates, p.reply)).unzip();
            let n = replies.len();
            match write(&node, ServiceCommand::Reports { reports }).await {
                Ok(ServicesOutput::Counts(counts)) if counts.len() == n => {
                    for (reply, count) in replies.into_iter().zip(counts) {
                        let _ = reply.send(Ok(count));
                    }
                }
                Ok(o) => {
                    let e = Status::internal(format!("unexpected services output {o:?}"));
                    replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
                }
                Err(e) => replies.into_iter().for_each(|r| drop(r.send(Err(e.clone())))),
            }
        }
    }
}

/// Wakes each assignment stream only when its own agent's tasks changed: with thousands
/// of agents, waking every stream on every applied change would cost agents × changes.
#[derive(Default)]
struct AssignmentHub {
    agents: std::sync::Mutex<BTreeMap<NodeId, tokio::sync::watch::Sender<()>>>,
}

impl AssignmentHub {
    fn subscribe(&self, agent: NodeId) -> tokio::sync::watch::Receiver<()> {
        let mut m = self.agents.lock().expect("hub");
        m.entry(agent).or_insert_with(|| tokio::sync::watch::channel(()).0).subscribe()
    }

    async fn run(self: Arc<Self>, node: std::sync::Weak<CoordNode>, mut changes: tokio::sync::watch::Receiver<u64>) {
        let mut mark = (u64::MAX, 0);
        loop {
            if changes.changed().await.is_err() {
                return;
            }
            let Some(n) = node.upgrade() else { return };
            let (touched, next) = n.view(|v| (v.services().touched_since(mark), v.services().touched_mark()));
            mark = next;
            let mut m = self.agents.lock().expect("hub");
            // Streams that ended leave their sender without receivers.
            m.retain(|_, tx| tx.receiver_count() > 0);
            match touched {
                AgentsTouched::All => m.values().for_each(|tx| tx.send_replace(())),
                AgentsTouched::Agents(list) => {
                    for a in list {
                        if let Some(tx) = m.get(&a) {
                            tx.send_replace(());
                        }
                    }
                }
            }
        }
    }
}

fn client(ch: Channel) -> ServicesClient<Channel> {
    ServicesClient::new(ch).max_decoding_message_size(64 << 20)
}

async fn write(node: &CoordNode, cmd: ServiceCommand) -> Result<ServicesOutput, Status> {
    match node.write(Command::Services(cmd)).await?.output {
        Output::Services(o) => Ok(o),
        o => Err(unexpected(o)),
    }
}

fn change(o: ServicesOutput) -> Result<pb::ServiceChange, Status> {
    match o {
        ServicesOutput::Changed { id, version, deployment } => {
            Ok(pb::ServiceChange { id, version, deployment: deployment.unwrap_or(0) })
        }
        ServicesOutput::Count(_) => Ok(pb::ServiceChange::default()),
        o => Err(Status::internal(format!("unexpected services output {o:?}"))),
    }
}

pub fn task_info(t: &Task) -> pb::TaskInfo {
    pb::TaskInfo {
        id: t.id.clone(),
        service: t.service.clone(),
        version: t.version,
        agent: t.agent,
        host: t.host.clone(),
        ports: t.ports.iter().map(|&p| u32::from(p)).collect(),
        ip: t.ip.map(|a| a.to_string()).unwrap_or_default(),
        network: t.network.clone().unwrap_or_default(),
        state: t.display_state().to_string(),
        reason: t.reason.clone(),
        exit_code: t.exit_code,
        staged_ms: t.staged_ms,
        started_ms: t.started_ms,
        ended_ms: t.ended_ms,
        updated_ms: t.updated_ms,
    }
}

pub fn service_info(services: &Services, s: &Service) -> pb::ServiceInfo {
    let mut info = pb::ServiceInfo {
        id: s.id.clone(),
        version: s.version,
        instances: s.instances,
        deployment: s.deployment.unwrap_or(0),
        deleting: s.deleting,
        app_json: services.current_spec(&s.id).map(|sp| marathon::to_json(&sp).to_string()).unwrap_or_default(),
        created_ms: s.created_ms,
        version_ms: s.version_ms,
        delay_until_ms: s.delay_until_ms,
        ..Default::default()
    };
    for t in services.active_tasks_of(&s.id) {
        match (t.state, t.healthy) {
            (TaskState::Staging | TaskState::Starting, _) => info.staged += 1,
            (TaskState::Running, h) => {
                info.running += 1;
                match h {
                    Some(true) => info.healthy += 1,
                    Some(false) => info.unhealthy += 1,
                    None => {}
                }
            }
            (TaskState::Killing, _) => info.killing += 1,
            _ => {}
        }
    }
    info
}

pub fn deployment_info(services: &Services, d: &Deployment) -> pb::DeploymentInfo {
    let healthy_new =
        services.active_tasks_of(&d.service).filter(|t| t.version == d.to_version && services.is_healthy(t)).count()
            as u32;
    pb::DeploymentInfo {
        id: d.id,
        service: d.service.clone(),
        kind: d.kind.as_str().to_string(),
        from_version: d.from_version.unwrap_or(0),
        from_instances: d.from_instances,
        to_version: d.to_version,
        to_instances: d.to_instances,
        started_ms: d.started_ms,
        healthy_new,
    }
}

/// What a job run's command learns of its run: the job, the scheduled instant (so that
/// a run can tell which instant it serves, whichever attempt it is) and the attempt.
fn job_env(t: &Task) -> Vec<(String, String)> {
    if crate::jobs::job_of_service(&t.service).is_none() {
        return Vec::new();
    }
    let Some((job, instant_ms, attempt)) = crate::jobs::parse_task_id(&t.id) else { return Vec::new() };
    let utc = crate::jobs::schedule::show_utc(instant_ms);
    vec![
        ("CLUSTER_JOB_NAME".into(), job.to_string()),
        ("CLUSTER_JOB_INSTANT".into(), utc),
        ("CLUSTER_JOB_INSTANT_MS".into(), instant_ms.to_string()),
        ("CLUSTER_JOB_ATTEMPT".into(), attempt.to_string()),
    ]
}

fn assigned(services: &Services, t: &Task) -> Option<pb::AssignedTask> {
    let spec = services.spec(&t.service, t.version)?;
    Some(pb::AssignedTask {
        id: t.id.clone(),
        service: t.service.clone(),
        version: t.version,
        kill: t.state == TaskState::Killing,
        cmd: spec.cmd.clone().unwrap_or_default(),
        args: spec.args.clone(),
        // A job's own variables last: the spec's env cannot hide them.
        env: spec.env.clone().into_iter().chain(job_env(t)).collect(),
        cpus_milli: spec.cpus_milli,
        mem_mb: spec.mem_mb,
        disk_mb: spec.disk_mb,
        ports: t.ports.iter().map(|&p| u32::from(p)).collect(),
        port_names: spec.ports.iter().map(|p| p.name.clone().unwrap_or_default()).collect(),
        ip: t.ip.map(|a| a.to_string()).unwrap_or_default(),
        host: t.host.clone(),
        health_checks: spec
            .health_checks
            .iter()
            .map(|h| pb::HealthCheckSpec {
                protocol: h.kind.as_str().to_string(),
                path: h.path.clone(),
                port_index: h.port_index,
                command: h.command.clone(),
                grace_period_s: h.grace_period_s,
                interval_s: h.interval_s,
                timeout_s: h.timeout_s,
                max_consecutive_failures: h.max_consecutive_failures,
            })
            .collect(),
        state: t.state.as_str().to_string(),
    })
}

fn parse_state(s: &str) -> Result<TaskState, Status> {
    Ok(match s {
        "starting" => TaskState::Starting,
        "running" => TaskState::Running,
        "finished" => TaskState::Finished,
        "failed" => TaskState::Failed,
        "killed" => TaskState::Killed,
        "lost" => TaskState::Lost,
        other => {
            return Err(Status::invalid_argument(format!(
                "task state {other:?}: use starting, running, finished, failed, killed or lost"
            )))
        }
    })
}

#[tonic::async_trait]
impl pb::services_server::Services for ServicesService {
    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn create_service(&self, req: Request<pb::PutServiceRequest>) -> Result<Response<pb::ServiceChange>, Status> {
        let spec = marathon::parse_app(&req.get_ref().app_json, None).map_err(Status::invalid_argument)?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |_| {
                change(write(node, ServiceCommand::Put { spec: Box::new(spec), create: true, force: false }).await?)
            },
            async |ch, r| client(ch).create_service(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn update_service(&self, req: Request<pb::PutServiceRequest>) -> Result<Response<pb::ServiceChange>, Status> {
        let spec = marathon::parse_app(&req.get_ref().app_json, None).map_err(Status::invalid_argument)?;
        let force = req.get_ref().force;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |_| change(write(node, ServiceCommand::Put { spec: Box::new(spec), create: false, force }).await?),
            async |ch, r| client(ch).update_service(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn scale_service(
        &self,
        req: Request<pb::ScaleServiceRequest>,
    ) -> Result<Response<pb::ServiceChange>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                let cmd = ServiceCommand::Scale { id: normalize_id(&r.id), instances: r.instances, force: r.force };
                change(write(node, cmd).await?)
            },
            async |ch, r| client(ch).scale_service(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn restart_service(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ServiceChange>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| change(write(node, ServiceCommand::Restart { id: normalize_id(&r.id), force: r.force }).await?),
            async |ch, r| client(ch).restart_service(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn kill_tasks(&self, req: Request<pb::KillTasksRequest>) -> Result<Response<pb::KillTasksResponse>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                if r.task_ids.is_empty() || r.task_ids.len() > crate::services::MAX_BATCH {
                    return Err(Status::invalid_argument(format!("name 1 to {} task ids", crate::services::MAX_BATCH)));
                }
                let unknown: Vec<&String> = node.view(|v| {
                    r.task_ids
                        .iter()
                        .filter(|id| {
                            !v.services().task(id).is_some_and(|t| t.service.starts_with('/') && !t.state.is_terminal())
                        })
                        .collect()
                });
                if !unknown.is_empty() {
                    return Err(Status::not_found(format!(
                        "not a running task of a service: {}",
                        unknown.iter().take(10).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    )));
                }
                let tasks = r.task_ids.iter().map(|id| (id.clone(), "killed by request".to_string())).collect();
                match write(node, ServiceCommand::Kill { tasks }).await? {
                    ServicesOutput::Count(n) => Ok(pb::KillTasksResponse { killed: n }),
                    other => Err(Status::internal(format!("unexpected answer to a kill: {other:?}"))),
                }
            },
            async |ch, r| client(ch).kill_tasks(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn remove_service(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ServiceChange>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| change(write(node, ServiceCommand::Remove { id: normalize_id(&r.id) }).await?),
            async |ch, r| client(ch).remove_service(r).await,
        )
        .await
    }

    async fn list_services(
        &self,
        _: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let services = self.node.view(|v| {
            let s = v.services();
            s.services().map(|svc| service_info(s, svc)).collect()
        });
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn get_service(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ServiceInfo>, Status> {
        let id = normalize_id(&req.get_ref().id);
        let info = self.node.view(|v| v.services().service(&id).map(|svc| service_info(v.services(), svc)));
        info.map(Response::new).ok_or_else(|| Status::not_found(format!("service {id:?} not found")))
    }

    async fn list_tasks(&self, req: Request<pb::ListTasksRequest>) -> Result<Response<pb::ListTasksResponse>, Status> {
        let r = req.into_inner();
        // A job's runs are listed under their task-service, `job:<name>`.
        let service = (!r.service.is_empty()).then(|| {
            if r.service.starts_with(crate::jobs::TASK_SERVICE_PREFIX) {
                r.service.clone()
            } else {
                normalize_id(&r.service)
            }
        });
        let tasks = self.node.view(|v| {
            v.services()
                .tasks()
                .filter(|t| service.as_ref().is_none_or(|s| &t.service == s))
                .filter(|t| r.agent == 0 || t.agent == r.agent)
                .filter(|t| r.all || !t.state.is_terminal())
                .map(task_info)
                .collect()
        });
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn get_task(&self, req: Request<pb::TaskRef>) -> Result<Response<pb::TaskInfo>, Status> {
        let id = req.get_ref().id.clone();
        let info = self.node.view(|v| v.services().task(&id).map(task_info));
        info.map(Response::new).ok_or_else(|| Status::not_found(format!("task {id:?} not found")))
    }

    async fn list_deployments(
        &self,
        _: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let deployments = self.node.view(|v| {
            let s = v.services();
            s.deployments().map(|d| deployment_info(s, d)).collect()
        });
        Ok(Response::new(pb::ListDeploymentsResponse { deployments }))
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn cancel_deployment(
        &self,
        req: Request<pb::CancelDeploymentRequest>,
    ) -> Result<Response<pb::ServiceChange>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| change(write(node, ServiceCommand::CancelDeployment { id: r.id, rollback: !r.force }).await?),
            async |ch, r| client(ch).cancel_deployment(r).await,
        )
        .await
    }

    type WatchAssignmentsStream = BoxStream<pb::Assignments>;
    type TaskLogsStream = BoxStream<pb::TaskLogChunk>;
    type AgentLogsStream = BoxStream<pb::AgentLogAsk>;

    #[instrument(level = "info", skip_all, fields(node = self.node.id, task = %req.get_ref().task_id))]
    async fn task_logs(&self, req: Request<pb::TaskLogsRequest>) -> Result<Response<Self::TaskLogsStream>, Status> {
        let r = req.into_inner();
        let agent = self.node.view(|v| v.services().task(&r.task_id).map(|t| t.agent));
        let agent = agent.ok_or_else(|| Status::not_found(format!("task {:?} not found", r.task_id)))?;
        if let Some(s) = self.logs.ask(agent, &r).await {
            return Ok(Response::new(Box::pin(s)));
        }
        if r.local_only {
            return Err(Status::not_found(format!("agent {agent} has no log channel to this master")));
        }
        // Another master may hold the agent's channel.
        let peers: Vec<String> = {
            let m = self.node.metrics();
            let me = self.node.id;
            m.membership_config.membership().nodes().filter(|(id, _)| **id != me).map(|(_, n)| n.addr.clone()).collect()
        };
        let ask = pb::TaskLogsRequest { local_only: true, ..r.clone() };
        for addr in peers {
            let Ok(ch) = self.node.channel(&addr) else { continue };
            let mut peer = client(ch);
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), peer.task_logs(ask.clone())).await {
                let s = s.into_inner();
                return Ok(Response::new(Box::pin(s)));
            }
        }
        Err(Status::unavailable(format!(
            "agent {agent} (running {}) has no log channel to any master: is its agent process running?",
            r.task_id
        )))
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn agent_logs(
        &self,
        req: Request<tonic::Streaming<pb::AgentLogReply>>,
    ) -> Result<Response<Self::AgentLogsStream>, Status> {
        let who = authz::caller(&req).cloned();
        let mut replies = req.into_inner();
        let hello = replies
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the first message must name the agent"))?;
        authz::acts_as(who.as_ref(), hello.node_id)?;
        let agent = hello.node_id;
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::AgentLogAsk>(64);
        // An empty ask (request 0) every 30 s: an idle agent learns that this master is
        // still there, and moves on when it hears nothing.
        let beat = tx.downgrade();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOG_CHANNEL_BEAT).await;
                let Some(tx) = beat.upgrade() else { return };
                if tx.send(pb::AgentLogAsk::default()).await.is_err() {
                    return;
                }
            }
        });
        let id = self.logs.attach(agent, tx);
        let logs = self.logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = replies.message().await {
                logs.deliver(agent, r);
            }
            logs.detach(agent, id);
            logs.fail_channel(agent, id, &format!("agent {agent}'s log channel closed"));
        });
        let out = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|a| (Ok(a), rx)) });
        Ok(Response::new(Box::pin(out)))
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id, agent = req.get_ref().node_id))]
    async fn watch_assignments(
        &self,
        req: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        authz::acts_as(authz::caller(&req), req.get_ref().node_id)?;
        let agent = req.get_ref().node_id;
        let node = self.node.clone();
        let mut changes = self.hub.subscribe(agent);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<Vec<pb::AssignedTask>> = None;
            loop {
                let (index, tasks) = node.view(|v| {
                    let s = v.services();
                    let tasks: Vec<pb::AssignedTask> = s.tasks_on(agent).filter_map(|t| assigned(s, t)).collect();
                    (v.last_applied_index(), tasks)
                });
                if last.as_ref() != Some(&tasks) {
                    last = Some(tasks.clone());
                    if tx.send(Ok(pb::Assignments { applied_index: index, tasks })).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(ASSIGNMENT_RESEND) => last = None,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(channel_stream(rx)))
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id, agent = req.get_ref().node_id))]
    async fn report_tasks(
        &self,
        req: Request<pb::ReportTasksRequest>,
    ) -> Result<Response<pb::ReportTasksResponse>, Status> {
        authz::acts_as(authz::caller(&req), req.get_ref().node_id)?;
        let r = req.get_ref();
        if r.statuses.len() > MAX_STATUSES {
            return Err(Status::invalid_argument(format!("at most {MAX_STATUSES} statuses per report")));
        }
        let updates: Vec<TaskUpdate> = r
            .statuses
            .iter()
            .map(|s| {
                Ok(TaskUpdate {
                    task_id: s.task_id.clone(),
                    agent: r.node_id,
                    state: parse_state(&s.state)?,
                    healthy: s.healthy,
                    // Clipped as apply would, so that reports weigh what they will store.
                    reason: crate::services::clip(&s.reason),
                    exit_code: s.exit_code,
                })
            })
            .collect::<Result<_, Status>>()?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |_| {
                // Only the leader coalesces; elsewhere the write is refused at once with the
                // leader's address, and the report is forwarded there.
                if node.is_leader() {
                    return Ok(pb::ReportTasksResponse { changed: self.reports.submit(updates).await? });
                }
                match write(node, ServiceCommand::Reports { reports: vec![updates] }).await? {
                    ServicesOutput::Counts(n) if n.len() == 1 => Ok(pb::ReportTasksResponse { changed: n[0] }),
                    o => Err(Status::internal(format!("unexpected services output {o:?}"))),
                }
            },
            async |ch, r| client(ch).report_tasks(r).await,
        )
        .await
    }
}
