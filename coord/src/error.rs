//! coord's error type and its one conversion to `tonic::Status`.

use crate::jobs::JobsError;
use crate::services::ServicesError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::command::ApplyError;
use crate::ipam::IpamError;
use crate::registry::RegistryError;
use crate::types::NodeId;

/// gRPC metadata keys of a not-leader answer.
pub use proto::consts::{LEADER_ADDR_HEADER, LEADER_ID_HEADER};

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// This node is not the leader; the answer names the leader when known.
    #[error("not the leader{}", leader_addr.as_ref().map(|a| format!("; leader is {a}")).unwrap_or_default())]
    NotLeader { leader_id: Option<NodeId>, leader_addr: Option<String> },
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<CoordError> for Status {
    fn from(e: CoordError) -> Status {
        match e {
            CoordError::NotLeader { leader_id, leader_addr } => {
                let mut s = Status::unavailable(
                    CoordError::NotLeader { leader_id, leader_addr: leader_addr.clone() }.to_string(),
                );
                if let Some(a) = leader_addr.and_then(|a| MetadataValue::try_from(a).ok()) {
                    s.metadata_mut().insert(LEADER_ADDR_HEADER, a);
                }
                if let Some(id) = leader_id {
                    s.metadata_mut().insert(LEADER_ID_HEADER, MetadataValue::from(id));
                }
                s
            }
            // Messages and codes are etcd's, so etcd clients map them to their typed errors.
            CoordError::Apply(a) => {
                let code = match a {
                    ApplyError::Compacted | ApplyError::FutureRevision => Code::OutOfRange,
                    ApplyError::LeaseNotFound => Code::NotFound,
                    ApplyError::LeaseExists => Code::FailedPrecondition,
                    ApplyError::LeaseTtlTooLarge => Code::OutOfRange,
                    ApplyError::AlreadyInitialized => Code::AlreadyExists,
                    ApplyError::CaChanged => Code::Aborted,
                    ApplyError::Other(_) => Code::FailedPrecondition,
                    ApplyError::Registry(ref r) => match r {
                        RegistryError::Invalid(_) => Code::InvalidArgument,
                        RegistryError::UnknownNode(_) => Code::NotFound,
                        RegistryError::IdTaken(_) => Code::PermissionDenied,
                        RegistryError::NeverJoined(_) | RegistryError::Removed(_) | RegistryError::StillActive(..) => {
                            Code::FailedPrecondition
                        }
                    },
                    ApplyError::Ipam(ref i) => match i {
                        IpamError::Invalid(_) | IpamError::OutsideSubnet(..) => Code::InvalidArgument,
                        IpamError::UnknownNetwork(_) => Code::NotFound,
                        IpamError::NetworkExists(_) | IpamError::Overlap(..) => Code::AlreadyExists,
                        IpamError::Exhausted { .. } => Code::ResourceExhausted,
                        IpamError::Storage(_) => Code::Internal,
                        _ => Code::FailedPrecondition,
                    },
                    ApplyError::Services(ref e) => match e {
                        ServicesError::Invalid(_) => Code::InvalidArgument,
                        ServicesError::NotFound(_) | ServicesError::DeploymentNotFound(_) => Code::NotFound,
                        ServicesError::Exists(_) => Code::AlreadyExists,
                        ServicesError::Locked { .. } | ServicesError::Deleting(_) => Code::FailedPrecondition,
                        ServicesError::Storage(_) => Code::Internal,
                    },
                    ApplyError::Jobs(ref e) => match e {
                        JobsError::Invalid(_) => Code::InvalidArgument,
                        JobsError::NotFound(_) => Code::NotFound,
                        JobsError::Exists(_) => Code::AlreadyExists,
                        JobsError::Deleting(_) | JobsError::Conflict(_) => Code::FailedPrecondition,
                        JobsError::Storage(_) => Code::Internal,
                    },
                    ApplyError::Storage(_) => Code::Internal,
                    _ => Code::InvalidArgument,
                };
                let msg = match a {
                    ApplyError::Compacted | ApplyError::FutureRevision => {
                        format!("etcdserver: {a}")
                    }
                    _ => a.to_string(),
                };
                Status::new(code, msg)
            }
            CoordError::Unavailable(m) => Status::unavailable(m),
            CoordError::InvalidArgument(m) => Status::invalid_argument(m),
            CoordError::PermissionDenied(m) => Status::permission_denied(m),
            CoordError::AlreadyExists(m) => Status::already_exists(m),
            CoordError::NotFound(m) => Status::not_found(m),
            CoordError::FailedPrecondition(m) => Status::failed_precondition(m),
            CoordError::Internal(m) => Status::internal(m),
        }
    }
}

pub type Result<T, E = CoordError> = std::result::Result<T, E>;
