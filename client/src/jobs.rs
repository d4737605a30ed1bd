//! The Jobs service: Chronos jobs, their runs and their history.

use proto::clusterpb as pb;
use proto::clusterpb::jobs_client::JobsClient;
use tonic::transport::Channel;

use crate::conn::Client;
use crate::error::ClientError;

impl Client {
    fn jobs(&self, ch: Channel) -> JobsClient<Channel> {
        JobsClient::new(ch).max_decoding_message_size(self.settings().max_response_bytes)
    }

    /// Creates a job from a Chronos job definition (JSON bytes).
    pub async fn create_job(&self, job_json: Vec<u8>) -> Result<pb::JobChange, ClientError> {
        let req = pb::PutJobRequest { job_json };
        self.call(|ch| {
            let req = req.clone();
            async move { self.jobs(ch).create_job(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Replaces a job's definition.
    pub async fn update_job(&self, job_json: Vec<u8>) -> Result<pb::JobChange, ClientError> {
        let req = pb::PutJobRequest { job_json };
        self.call(|ch| {
            let req = req.clone();
            async move { self.jobs(ch).update_job(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    pub async fn remove_job(&self, name: &str) -> Result<pb::JobChange, ClientError> {
        let req = pb::JobRef { name: name.to_string() };
        self.call(|ch| {
            let req = req.clone();
            async move { self.jobs(ch).remove_job(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Starts a run of the job now.
    pub async fn run_job(&self, name: &str) -> Result<pb::RunStarted, ClientError> {
        let req = pb::JobRef { name: name.to_string() };
        self.call(|ch| {
            let req = req.clone();
            async move { self.jobs(ch).run_job(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    pub async fn list_jobs(&self) -> Result<Vec<pb::JobInfo>, ClientError> {
        self.call(|ch| async move { self.jobs(ch).list_jobs(pb::ListJobsRequest {}).await })
            .await
            .map(|r| r.into_inner().jobs)
    }

    pub async fn get_job(&self, name: &str) -> Result<pb::JobInfo, ClientError> {
        let req = pb::JobRef { name: name.to_string() };
        self.call(|ch| {
            let req = req.clone();
            async move { self.jobs(ch).get_job(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// The job's kept runs, oldest first.
    pub async fn job_history(&self, name: &str) -> Result<Vec<pb::RunInfo>, ClientError> {
        let req = pb::JobRef { name: name.to_string() };
        self.call(|ch| {
            let req = req.clone();
            async move { self.jobs(ch).job_history(req).await }
        })
        .await
        .map(|r| r.into_inner().runs)
    }
}
