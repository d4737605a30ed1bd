//! Generated gRPC code for every service cluster speaks.
//!
//! - [`etcdserverpb`] and [`mvccpb`]: the etcd v3 subset (KV, Watch, Lease, Cluster,
//!   Maintenance); [`v3lockpb`] and [`v3electionpb`]: etcd's Lock and Election services.
//! - [`raftpb`]: Raft traffic between masters.
//! - [`clusterpb`]: join, leave, members, status and tokens; the registry; IPAM;
//!   services, deployments and tasks.
//! - [`consts`]: the only hand-written part: metadata header names and
//!   `prefix_range_end`, shared by coord and the client library.

pub mod consts;

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

pub mod raftpb {
    tonic::include_proto!("cluster.raft.v1");
}

pub mod clusterpb {
    tonic::include_proto!("cluster.v1");
}
