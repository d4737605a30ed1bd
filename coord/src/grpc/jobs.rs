//! The Jobs service: Chronos job JSON in; jobs, their next run and their runs out.

use std::sync::Arc;

use proto::clusterpb as pb;
use proto::clusterpb::jobs_client::JobsClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{on_leader, unexpected};
use crate::command::{Command, Output};
use crate::jobs::{schedule, spec, Job, JobCommand, Jobs, JobsOutput, Run, RunState, Trigger};
use crate::node::CoordNode;

pub struct JobsService {
    node: Arc<CoordNode>,
}

impl JobsService {
    pub fn new(node: Arc<CoordNode>) -> Self {
        JobsService { node }
    }
}

fn client(ch: Channel) -> JobsClient<Channel> {
    JobsClient::new(ch)
}

async fn write(node: &CoordNode, cmd: JobCommand) -> Result<JobsOutput, Status> {
    match node.write(Command::Jobs(cmd)).await?.output {
        Output::Jobs(o) => Ok(o),
        o => Err(unexpected(o)),
    }
}

fn change(o: JobsOutput) -> Result<pb::JobChange, Status> {
    match o {
        JobsOutput::Job { name, version } => Ok(pb::JobChange { name, version }),
        o => Err(Status::internal(format!("unexpected jobs output {o:?}"))),
    }
}

fn check_name(name: &str) -> Result<(), Status> {
    spec::validate_name("name", name).map_err(Status::invalid_argument)
}

pub fn run_info(job: &Job, r: &Run) -> pb::RunInfo {
    let tz = schedule::zone(&job.spec.time_zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let (trigger, satisfied_by) = match &r.trigger {
        Trigger::Schedule => ("schedule", Vec::new()),
        Trigger::Manual => ("manual", Vec::new()),
        Trigger::Parents(p) => ("parents", p.iter().map(|(j, i)| format!("{j}@{i}")).collect()),
    };
    pb::RunInfo {
        job: r.job.clone(),
        instant_ms: r.instant_ms,
        instant: schedule::show(r.instant_ms, &tz),
        trigger: trigger.into(),
        state: r.state.as_str().into(),
        attempts: r.attempts,
        tasks: r.tasks.clone(),
        host: r.host.clone(),
        agent: r.agent,
        exit_code: r.exit_code.unwrap_or(0),
        has_exit_code: r.exit_code.is_some(),
        reason: r.reason.clone(),
        created_ms: r.created_ms,
        started_ms: r.started_ms,
        ended_ms: r.ended_ms,
        duration_ms: if r.state.is_ended() && r.started_ms > 0 { r.ended_ms.saturating_sub(r.started_ms) } else { 0 },
        satisfied_by,
    }
}

pub fn job_info(jobs: &Jobs, job: &Job) -> pb::JobInfo {
    let tz = schedule::zone(&job.spec.time_zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let kind = if !job.spec.schedule.is_empty() {
        "iso8601"
    } else if !job.spec.cron.is_empty() {
        "cron"
    } else {
        "parents"
    };
    let next = job.next.map(|n| n.1);
    let last = job.history.back().and_then(|i| jobs.run(&job.spec.name, *i)).map(|r| r.state);
    pb::JobInfo {
        name: job.spec.name.clone(),
        job_json: spec::to_json(&job.spec).to_string(),
        version: job.version,
        schedule_kind: kind.into(),
        next_run_ms: next.unwrap_or(0),
        next_run: next.map(|t| schedule::show(t, &tz)).unwrap_or_default(),
        disabled: job.spec.disabled,
        deleting: job.deleting,
        success_count: job.success_count,
        error_count: job.error_count,
        skipped_count: job.skipped_count,
        errors_since_success: job.errors_since_success,
        last_success_ms: job.last_success_ms,
        last_error_ms: job.last_error_ms,
        active: jobs.active_runs_of(&job.spec.name).map(|r| run_info(job, r)).collect(),
        last_run_state: last.map(|s: RunState| s.as_str().to_string()).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl pb::jobs_server::Jobs for JobsService {
    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn create_job(&self, req: Request<pb::PutJobRequest>) -> Result<Response<pb::JobChange>, Status> {
        let spec = spec::parse_job(&req.get_ref().job_json, None).map_err(Status::invalid_argument)?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |_| change(write(node, JobCommand::Put { spec: Box::new(spec), create: true }).await?),
            async |ch, r| client(ch).create_job(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn update_job(&self, req: Request<pb::PutJobRequest>) -> Result<Response<pb::JobChange>, Status> {
        let spec = spec::parse_job(&req.get_ref().job_json, None).map_err(Status::invalid_argument)?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |_| change(write(node, JobCommand::Put { spec: Box::new(spec), create: false }).await?),
            async |ch, r| client(ch).update_job(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn remove_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::JobChange>, Status> {
        check_name(&req.get_ref().name)?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| change(write(node, JobCommand::Remove { name: r.name.clone() }).await?),
            async |ch, r| client(ch).remove_job(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn run_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::RunStarted>, Status> {
        check_name(&req.get_ref().name)?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| match write(node, JobCommand::Run { name: r.name.clone() }).await? {
                JobsOutput::Run { job, instant_ms } => Ok(pb::RunStarted { job, instant_ms }),
                o => Err(Status::internal(format!("unexpected jobs output {o:?}"))),
            },
            async |ch, r| client(ch).run_job(r).await,
        )
        .await
    }

    async fn list_jobs(&self, _: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let jobs = self.node.view(|v| v.jobs().jobs().map(|j| job_info(v.jobs(), j)).collect());
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn get_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::JobInfo>, Status> {
        let name = req.into_inner().name;
        let info = self.node.view(|v| v.jobs().job(&name).map(|j| job_info(v.jobs(), j)));
        info.map(Response::new).ok_or_else(|| Status::not_found(format!("job {name:?} not found")))
    }

    async fn job_history(&self, req: Request<pb::JobRef>) -> Result<Response<pb::JobHistoryResponse>, Status> {
        let name = req.into_inner().name;
        let runs = self.node.view(|v| {
            let jobs = v.jobs();
            jobs.job(&name).map(|j| jobs.runs_of(&name).map(|r| run_info(j, r)).collect::<Vec<_>>())
        });
        runs.map(|runs| Response::new(pb::JobHistoryResponse { runs }))
            .ok_or_else(|| Status::not_found(format!("job {name:?} not found")))
    }
}
