//! [`ClientError`]: what a call to the masters failed with, in a form that keeps the
//! gRPC code and the leader hint of a not-leader answer.

use proto::consts::{LEADER_ADDR_HEADER, LEADER_ID_HEADER};
use tonic::{Code, Status};

/// A failed call. Its text is `MESSAGE (Code)` for every variant, which is what the CLI
/// prints after `Error:`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// An endpoint that does not form a URI; nothing was sent.
    #[error("bad endpoint {addr:?}: {reason} (InvalidArgument)")]
    BadEndpoint { addr: String, reason: String },
    /// The endpoint list was empty; nothing was sent.
    #[error("no endpoints given (Unavailable)")]
    NoEndpoints,
    /// A master, or the transport on the way to it, answered with an error.
    #[error("{message} ({code:?})")]
    Rpc {
        code: Code,
        /// The answer's message; after every endpoint was unavailable, prefixed with the
        /// address of the last one tried.
        message: String,
        /// The leader a not-leader answer named.
        leader_addr: Option<String>,
        leader_id: Option<u64>,
        /// The answer as received, with its transport error chain. Boxed: a `Status` is
        /// large and errors travel in every `Result`.
        status: Box<Status>,
    },
}

impl ClientError {
    pub fn code(&self) -> Code {
        match self {
            ClientError::BadEndpoint { .. } => Code::InvalidArgument,
            ClientError::NoEndpoints => Code::Unavailable,
            ClientError::Rpc { code, .. } => *code,
        }
    }

    /// The text without the code.
    pub fn message(&self) -> String {
        match self {
            ClientError::Rpc { message, .. } => message.clone(),
            ClientError::BadEndpoint { addr, reason } => format!("bad endpoint {addr:?}: {reason}"),
            ClientError::NoEndpoints => "no endpoints given".into(),
        }
    }

    /// The leader's address, when a not-leader answer named it.
    pub fn leader_addr(&self) -> Option<&str> {
        match self {
            ClientError::Rpc { leader_addr, .. } => leader_addr.as_deref(),
            _ => None,
        }
    }

    /// The leader's node id, when a not-leader answer named it.
    pub fn leader_id(&self) -> Option<u64> {
        match self {
            ClientError::Rpc { leader_id, .. } => *leader_id,
            _ => None,
        }
    }

    /// The gRPC status exactly as received: callers that classify failures (was the
    /// request ever sent?) need its source chain.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }

    /// An `unavailable` answer from the last endpoint tried, named in the message so that
    /// the user sees which master said it.
    pub(crate) fn unavailable_at(addr: &str, s: Status) -> ClientError {
        let message = format!("{addr}: {}", s.message());
        match ClientError::from(s) {
            ClientError::Rpc { code, leader_addr, leader_id, status, .. } => {
                ClientError::Rpc { code, message, leader_addr, leader_id, status }
            }
            other => other,
        }
    }
}

impl From<Status> for ClientError {
    fn from(s: Status) -> ClientError {
        let header = |k: &str| s.metadata().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let leader_addr = header(LEADER_ADDR_HEADER);
        let leader_id = header(LEADER_ID_HEADER).and_then(|v| v.parse().ok());
        ClientError::Rpc {
            code: s.code(),
            message: s.message().to_string(),
            leader_addr,
            leader_id,
            status: Box::new(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn a_not_leader_answer_keeps_its_code_message_and_leader() {
        let mut s = Status::unavailable("not the leader; leader is 10.0.0.2:2379");
        s.metadata_mut().insert(LEADER_ADDR_HEADER, MetadataValue::from_static("10.0.0.2:2379"));
        s.metadata_mut().insert(LEADER_ID_HEADER, MetadataValue::from(2u64));
        let e = ClientError::unavailable_at("10.0.0.1:2379", s);
        assert_eq!(e.code(), Code::Unavailable);
        assert_eq!(e.leader_addr(), Some("10.0.0.2:2379"));
        assert_eq!(e.leader_id(), Some(2));
        assert_eq!(e.to_string(), "10.0.0.1:2379: not the leader; leader is 10.0.0.2:2379 (Unavailable)");
        assert_eq!(e.status().map(|s| s.message()), Some("not the leader; leader is 10.0.0.2:2379"));
    }

    #[test]
    fn every_variant_reads_message_then_code() {
        let e = ClientError::from(Status::not_found("node 7 not found"));
        assert_eq!(e.to_string(), "node 7 not found (NotFound)");
        assert_eq!(e.leader_addr(), None);
        let e = ClientError::BadEndpoint { addr: "a b".into(), reason: "invalid uri".into() };
        assert_eq!(e.to_string(), format!("{} ({:?})", e.message(), e.code()));
        assert_eq!(ClientError::NoEndpoints.to_string(), "no endpoints given (Unavailable)");
    }
}
