//! The client library for cluster's masters. It links neither coord nor RocksDB, so the
//! CLI, the benchmarks and the fault-injection suite can use it cheaply.
//!
//! - [`Client`] ([`conn`]): an endpoint list that fails over between masters and follows
//!   a not-leader answer to the leader it names; [`Settings`] for timeouts;
//! - [`ClientError`] ([`error`]): the gRPC code, message and leader hint of a failure;
//! - [`types`]: wire enums ([`Role`], [`RaftRole`], [`Availability`]) and their strings;
//! - typed calls, as methods of [`Client`]: [`admin`] (status, members, leave, token, snapshot save),
//!   [`kv`] (get, put, delete, txn), [`registry`] (nodes, drain, remove, events) and
//!   [`ipam`] (networks and addresses), [`services`] and [`jobs`];
//! - [`lease`]: etcd leases, locks and elections;
//! - [`watch`]: a resumable etcd watch that moves to another master when its own fails.

pub mod admin;
pub mod conn;
pub mod error;
pub mod ipam;
pub mod jobs;
pub mod kv;
pub mod lease;
pub mod registry;
pub mod services;
pub mod types;
pub mod watch;

pub use admin::SnapshotStream;
pub use conn::{channel, channel_with, Client, Settings};
pub use error::ClientError;
pub use ipam::NetworkSpec;
pub use kv::GetOptions;
pub use lease::LeaseInfo;
pub use registry::EventStream;
pub use types::{Availability, RaftRole, Role};
pub use watch::{WatchItem, WatchOptions, WatchStream};

/// Certificates and TLS: every connection to a master is mutual TLS.
pub use pki;
pub use pki::{ClientTls, CredentialFiles, Credentials};

/// The generated message types the calls take and return.
pub use proto::clusterpb;
pub use proto::etcdserverpb;
pub use proto::mvccpb;
pub use proto::v3electionpb;
