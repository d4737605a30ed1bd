//! The Services service: Marathon apps, tasks and deployments; and the agent's calls
//! (its assignment stream and status reports).

use proto::clusterpb as pb;
use proto::clusterpb::services_client::ServicesClient;
use tonic::transport::Channel;

use crate::conn::Client;
use crate::error::ClientError;

impl Client {
    fn services(&self, ch: Channel) -> ServicesClient<Channel> {
        ServicesClient::new(ch).max_decoding_message_size(self.settings().max_response_bytes)
    }

    /// Creates a service from a Marathon app definition (JSON bytes).
    pub async fn create_service(&self, app_json: Vec<u8>) -> Result<pb::ServiceChange, ClientError> {
        let req = pb::PutServiceRequest { app_json, force: false };
        self.call(|ch| {
            let req = req.clone();
            async move { self.services(ch).create_service(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Replaces a service's definition; `force` replaces a running deployment.
    pub async fn update_service(&self, app_json: Vec<u8>, force: bool) -> Result<pb::ServiceChange, ClientError> {
        let req = pb::PutServiceRequest { app_json, force };
        self.call(|ch| {
            let req = req.clone();
            async move { self.services(ch).update_service(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    pub async fn scale_service(&self, id: &str, instances: u32, force: bool) -> Result<pb::ServiceChange, ClientError> {
        let req = pb::ScaleServiceRequest { id: id.to_string(), instances, force };
        self.call(|ch| {
            let req = req.clone();
            async move { self.services(ch).scale_service(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    pub async fn restart_service(&self, id: &str, force: bool) -> Result<pb::ServiceChange, ClientError> {
        let req = pb::ServiceRef { id: id.to_string(), force };
        self.call(|ch| {
            let req = req.clone();
            async move { self.services(ch).restart_service(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Kills tasks of services (each is replaced); all or none.
    pub async fn kill_tasks(&self, ids: &[String]) -> Result<u32, ClientError> {
        let req = pb::KillTasksRequest { task_ids: ids.to_vec() };
        self.call(|ch| {
            let req = req.clone();
            async move { self.services(ch).kill_tasks(req).await }
        })
        .await
        .map(|r| r.into_inner().killed)
    }

    pub async fn remove_service(&self, id: &str) -> Result<pb::ServiceChange, ClientError> {
        let req = pb::ServiceRef { id: id.to_string(), force: false };
        self.call(|ch| {
            let req = req.clone();
            async move { self.services(ch).remove_service(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    pub async fn list_services(&self) -> Result<Vec<pb::ServiceInfo>, ClientError> {
        self.call(|ch| async move { self.services(ch).list_services(pb::ListServicesRequest {}).await })
            .await
            .map(|r| r.into_inner().services)
    }

    pub async fn get_service(&self, id: &str) -> Result<pb::ServiceInfo, ClientError> {
        let req = pb::ServiceRef { id: id.to_string(), force: false };
        self.call(|ch| {
            let req = req.clone();
            async move { self.services(ch).get_service(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Tasks, optionally of one service (`""`: all) or on one agent (0: all); `all`
    /// includes ended ones.
    pub async fn list_tasks(&self, service: &str, agent: u64, all: bool) -> Result<Vec<pb::TaskInfo>, ClientError> {
        let req = pb::ListTasksRequest { service: service.to_string(), agent, all };
        self.call(|ch| {
            let req = req.clone();
            async move { self.services(ch).list_tasks(req).await }
        })
        .await
        .map(|r| r.into_inner().tasks)
    }

    pub async fn get_task(&self, id: &str) -> Result<pb::TaskInfo, ClientError> {
        let req = pb::TaskRef { id: id.to_string() };
        self.call(|ch| {
            let req = req.clone();
            async move { self.services(ch).get_task(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    pub async fn list_deployments(&self) -> Result<Vec<pb::DeploymentInfo>, ClientError> {
        self.call(|ch| async move { self.services(ch).list_deployments(pb::ListDeploymentsRequest {}).await })
            .await
            .map(|r| r.into_inner().deployments)
    }

    /// Cancels a deployment: rolls back, or with `force` just stops it.
    pub async fn cancel_deployment(&self, id: u64, force: bool) -> Result<pb::ServiceChange, ClientError> {
        let req = pb::CancelDeploymentRequest { id, force };
        self.call(|ch| async move { self.services(ch).cancel_deployment(req).await }).await.map(|r| r.into_inner())
    }

    /// The agent's assignment stream from one master (the caller moves on when it breaks).
    pub async fn watch_assignments(&self, node_id: u64) -> Result<tonic::Streaming<pb::Assignments>, ClientError> {
        let req = pb::WatchAssignmentsRequest { node_id };
        self.call(|ch| async move { self.services(ch).watch_assignments(req).await }).await.map(|r| r.into_inner())
    }

    /// A task's stdout (or stderr) from its agent's sandbox, relayed by the masters;
    /// `tail_bytes` 0 is the whole file; with `follow`, until the task ends.
    pub async fn task_logs(
        &self,
        task_id: &str,
        follow: bool,
        stderr: bool,
        tail_bytes: u64,
    ) -> Result<tonic::Streaming<pb::TaskLogChunk>, ClientError> {
        let req = pb::TaskLogsRequest { task_id: task_id.to_string(), follow, stderr, tail_bytes, local_only: false };
        // A followed log lives as long as the task: no request deadline.
        let settings = crate::conn::Settings { request_timeout: None, ..self.settings().clone() };
        let c = Client::with_settings(self.endpoints().to_vec(), self.tls().clone(), settings);
        c.call(|ch| {
            let req = req.clone();
            let mut s = ServicesClient::new(ch).max_decoding_message_size(c.settings().max_response_bytes);
            async move { s.task_logs(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Reports task statuses; answered once committed. Idempotent.
    pub async fn report_tasks(&self, node_id: u64, statuses: Vec<pb::TaskStatus>) -> Result<u32, ClientError> {
        let req = pb::ReportTasksRequest { node_id, statuses };
        self.call(|ch| {
            let req = req.clone();
            async move { self.services(ch).report_tasks(req).await }
        })
        .await
        .map(|r| r.into_inner().changed)
    }
}
