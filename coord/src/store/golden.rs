//! Golden files: the append-only rule for `Command` and for every persisted record,
//! checked against bytes kept in `coord/testdata/golden/`.
//!
//! - `commands.txt`: one encoded `LogEntry` per `Command` variant (and per variant of the
//!   enums nested in it). Each line must decode to its sample and the sample must encode
//!   to it, so moving, removing or reordering a variant or a field fails here.
//! - `records.txt`: the openraft records we persist (log entries, vote, log ids,
//!   membership) and the state machine's own value records.
//! - `sm-v1.txt`: the whole `sm` column family after a fixed sequence of entries that
//!   writes every record kind. Applying the sequence again must give these exact bytes,
//!   and a store loaded from them must answer the same reads.
//!
//! A new variant or record kind adds lines (set `GOLDEN_WRITE=1` to append the missing
//! ones); existing lines never change. A change that must alter existing bytes needs a new
//! format version (see [`super::format`]) and a new state file beside the old one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::state_machine::HistRecord;
use super::{open_db, sm_cf, StateMachineStore};
use crate::cluster::{CaRecord, ClusterMeta, HttpToken, HttpTokenCommand};
use crate::codec::{decode, encode};
use crate::command::Command;
use crate::ipam::{self, IpamCommand, NetworkSpec};
use crate::jobs::{Job, JobCommand, JobSpec, Missed, Run, RunState, Trigger};
use crate::kv::types::*;
use crate::lease::LeaseCommand;
use crate::registry::{Availability, NodeResources, NodeState, Registration, RegistryCommand, Role, Transition};
use crate::services::spec::{Backoff, HealthCheck, HealthKind, PortDef, UpgradeStrategy};
use crate::services::{
    Deployment, DeploymentKind, LaunchTask, Service, ServiceCommand, ServiceSpec, Task, TaskState, TaskUpdate,
};
use crate::types::{Entry, LogEntry, LogId, StoredMembership, TypeConfig, Vote};

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/golden").join(name)
}

/// `name hex` lines, `#` comments.
fn read_lines(name: &str) -> BTreeMap<String, Vec<u8>> {
    let text = std::fs::read_to_string(golden_path(name)).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (n, h) = l.split_once(' ').unwrap_or_else(|| panic!("{name}: bad line {l:?}"));
            (n.to_string(), hex::decode(h.trim()).unwrap_or_else(|e| panic!("{name}: {n}: {e}")))
        })
        .collect()
}

fn append_lines(name: &str, lines: &[(String, Vec<u8>)]) {
    use std::io::Write;
    let path = golden_path(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    for (n, b) in lines {
        writeln!(f, "{n} {}", hex::encode(b)).unwrap();
    }
}

/// Checks every sample against its golden line: the line decodes to the sample, and the
/// sample encodes to the line. Missing lines are appended when `GOLDEN_WRITE=1`.
fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(file: &str, samples: Vec<(String, T)>) {
    let golden = read_lines(file);
    let mut missing = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (name, sample) in samples {
        assert!(names.insert(name.clone()), "{file}: sample name {name} used twice");
        let bytes = encode(&sample).unwrap();
        match golden.get(&name) {
            None => missing.push((name, bytes)),
            Some(g) => {
                let back: T = decode(g).unwrap_or_else(|e| {
                    panic!("{file}: golden bytes of {name} no longer decode ({e}): a variant or field moved?")
                });
                assert_eq!(back, sample, "{file}: golden bytes of {name} decode to something else: a variant moved?");
                assert_eq!(&bytes, g, "{file}: {name} no longer encodes to its golden bytes");
            }
        }
    }
    for n in golden.keys() {
        assert!(names.contains(n), "{file}: golden line {n} has no sample: samples are never removed");
    }
    if !missing.is_empty() {
        if std::env::var_os("GOLDEN_WRITE").is_some() {
            append_lines(file, &missing);
        } else {
            let names: Vec<&str> = missing.iter().map(|(n, _)| n.as_str()).collect();
            panic!("{file}: no golden bytes for {names:?}; run with GOLDEN_WRITE=1 to append them");
        }
    }
}

/// The golden name of each variant: exhaustive, so a new variant does not compile until
/// it has a name here (and then a sample below).
fn command_name(c: &Command) -> String {
    match c {
        Command::InitCluster { .. } => "InitCluster".into(),
        Command::AllocNodeId { .. } => "AllocNodeId".into(),
        Command::Put(_) => "Put".into(),
        Command::DeleteRange(_) => "DeleteRange".into(),
        Command::Txn(_) => "Txn".into(),
        Command::Compact { .. } => "Compact".into(),
        Command::Registry(r) => format!(
            "Registry.{}",
            match r {
                RegistryCommand::Register(_) => "Register",
                RegistryCommand::Transitions { .. } => "Transitions",
                RegistryCommand::SetAvailability { .. } => "SetAvailability",
                RegistryCommand::Remove { .. } => "Remove",
            }
        ),
        Command::Ipam(i) => format!(
            "Ipam.{}",
            match i {
                IpamCommand::CreateNetwork(_) => "CreateNetwork",
                IpamCommand::RemoveNetwork { .. } => "RemoveNetwork",
                IpamCommand::Allocate { .. } => "Allocate",
                IpamCommand::AllocateBatch { .. } => "AllocateBatch",
                IpamCommand::Release { .. } => "Release",
                IpamCommand::ReleaseLeaked { .. } => "ReleaseLeaked",
            }
        ),
        Command::SetCa { .. } => "SetCa".into(),
        Command::SetJoinSecret { .. } => "SetJoinSecret".into(),
        Command::RetireMaster { .. } => "RetireMaster".into(),
        Command::Lease(l) => format!(
            "Lease.{}",
            match l {
                LeaseCommand::Grant { .. } => "Grant",
                LeaseCommand::Revoke { .. } => "Revoke",
                LeaseCommand::Expire { .. } => "Expire",
                LeaseCommand::Checkpoint { .. } => "Checkpoint",
            }
        ),
        Command::Services(s) => format!(
            "Services.{}",
            match s {
                ServiceCommand::Put { .. } => "Put",
                ServiceCommand::Scale { .. } => "Scale",
                ServiceCommand::Restart { .. } => "Restart",
                ServiceCommand::Remove { .. } => "Remove",
                ServiceCommand::CancelDeployment { .. } => "CancelDeployment",
                ServiceCommand::DeploymentDone { .. } => "DeploymentDone",
                ServiceCommand::Launch { .. } => "Launch",
                ServiceCommand::Kill { .. } => "Kill",
                ServiceCommand::Lost { .. } => "Lost",
                ServiceCommand::Update { .. } => "Update",
                ServiceCommand::Reports { .. } => "Reports",
            }
        ),
        Command::Jobs(j) => format!(
            "Jobs.{}",
            match j {
                JobCommand::Put { .. } => "Put",
                JobCommand::Remove { .. } => "Remove",
                JobCommand::Run { .. } => "Run",
                JobCommand::Tick => "Tick",
                JobCommand::Launch { .. } => "Launch",
            }
        ),
        Command::HttpToken(t) => format!(
            "HttpToken.{}",
            match t {
                HttpTokenCommand::Issue(_) => "Issue",
                HttpTokenCommand::Revoke { .. } => "Revoke",
            }
        ),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn registration(id: u64) -> Registration {
    Registration {
        node_id: id,
        secret_hash: "ab".repeat(32),
        name: format!("node-{id}"),
        addr: format!("127.0.0.1:{}", 2378 + id),
        role: if id == 1 { Role::Manager } else { Role::Worker },
        resources: NodeResources { cpus_milli: 2000, memory_mb: 4096, disk_mb: 10_000, ports: vec![(31000, 32000)] },
        labels: [("rack".to_string(), "r1".to_string())].into_iter().collect(),
    }
}

fn network_spec() -> NetworkSpec {
    NetworkSpec {
        name: "net1".into(),
        subnets: vec![ipam::parse_cidr("10.40.0.0/24").unwrap(), ipam::parse_cidr("fd00:40::/64").unwrap()],
        gateways: vec![None, Some(1)],
        reserve: vec![(0, 2, 9)],
        quarantine_ms: 1_000,
    }
}

/// A txn that uses every compare result and target and every request op.
fn txn() -> TxnRequest {
    let cmp = |result, target| Compare { result, target, key: b"k".to_vec(), range_end: vec![] };
    TxnRequest {
        compare: vec![
            cmp(CompareResult::Equal, CompareTarget::Version(1)),
            cmp(CompareResult::Greater, CompareTarget::CreateRevision(2)),
            cmp(CompareResult::Less, CompareTarget::ModRevision(3)),
            cmp(CompareResult::NotEqual, CompareTarget::Value(b"v".to_vec())),
            cmp(CompareResult::Equal, CompareTarget::Lease(0)),
        ],
        success: vec![
            RequestOp::Range(RangeRequest {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                limit: 10,
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Mod,
                ..Default::default()
            }),
            RequestOp::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v2".to_vec(),
                prev_kv: true,
                ..Default::default()
            }),
            RequestOp::DeleteRange(DeleteRangeRequest { key: b"d".to_vec(), ..Default::default() }),
            RequestOp::Txn(TxnRequest::default()),
        ],
        failure: vec![RequestOp::Put(PutRequest { key: b"k".to_vec(), value: b"v3".to_vec(), ..Default::default() })],
    }
}

fn command_samples() -> Vec<Command> {
    vec![
        Command::InitCluster {
            cluster_id: "c-golden".into(),
            manager_secret: "msecret".into(),
            worker_secret: "wsecret".into(),
        },
        Command::AllocNodeId { addr: "127.0.0.1:2380".into() },
        Command::Put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), lease: 7, ..Default::default() }),
        Command::DeleteRange(DeleteRangeRequest { key: b"a".to_vec(), range_end: b"b".to_vec(), prev_kv: true }),
        Command::Txn(txn()),
        Command::Compact { revision: 42 },
        Command::Registry(RegistryCommand::Register(registration(2))),
        Command::Registry(RegistryCommand::Transitions {
            term: 3,
            transitions: vec![Transition {
                node_id: 2,
                from: NodeState::Active,
                to: NodeState::Unreachable,
                reason: "no heartbeat for 5000 ms".into(),
            }],
        }),
        Command::Registry(RegistryCommand::SetAvailability { node_id: 2, availability: Availability::Drain }),
        Command::Registry(RegistryCommand::Remove { node_id: 2, force: true }),
        Command::Ipam(IpamCommand::CreateNetwork(network_spec())),
        Command::Ipam(IpamCommand::RemoveNetwork { name: "net1".into(), force: false }),
        Command::Ipam(IpamCommand::Allocate {
            network: "net1".into(),
            owner: "task-1".into(),
            requested: Some(ip("10.40.0.20")),
            node: Some(2),
        }),
        Command::Ipam(IpamCommand::AllocateBatch {
            network: "net1".into(),
            owners: vec!["a".into(), "b".into()],
            node: None,
        }),
        Command::Ipam(IpamCommand::Release { network: "net1".into(), owner: None, address: Some(ip("fd00:40::5")) }),
        Command::Ipam(IpamCommand::ReleaseLeaked {
            network: "net1".into(),
            holdings: vec![("task-1".into(), ip("10.40.0.20"), 2)],
        }),
        Command::SetCa { prev_digest: "ab".repeat(32), record: ca_record() },
        Command::SetJoinSecret { role: "worker".into(), secret: "s3cr3tS3cr3tS3cr3t".into() },
        Command::RetireMaster { node_id: 3 },
        Command::Lease(LeaseCommand::Grant { id: 0x1234, ttl_secs: 30 }),
        Command::Lease(LeaseCommand::Revoke { id: 0x1234 }),
        Command::Lease(LeaseCommand::Expire { term: 4, ids: vec![7, 9] }),
        Command::Lease(LeaseCommand::Checkpoint { term: 4, remaining_ms: vec![(7, 12_500)] }),
        Command::Services(ServiceCommand::Put { spec: Box::new(service_spec()), create: true, force: false }),
        Command::Services(ServiceCommand::Scale { id: "/prod/web".into(), instances: 4, force: true }),
        Command::Services(ServiceCommand::Restart { id: "/prod/web".into(), force: false }),
        Command::Services(ServiceCommand::Remove { id: "/prod/web".into() }),
        Command::Services(ServiceCommand::CancelDeployment { id: 3, rollback: true }),
        Command::Services(ServiceCommand::DeploymentDone { id: 3 }),
        Command::Services(ServiceCommand::Launch {
            tasks: vec![LaunchTask {
                service: "/prod/web".into(),
                version: 2,
                agent: 5,
                host: "node-5".into(),
                ports: vec![31000, 8080],
            }],
        }),
        Command::Services(ServiceCommand::Kill { tasks: vec![("prod_web.7".into(), "scale down".into())] }),
        Command::Services(ServiceCommand::Lost {
            agent: 5,
            tasks: vec!["prod_web.7".into()],
            reason: "agent down".into(),
        }),
        Command::Services(ServiceCommand::Update {
            updates: vec![TaskUpdate {
                task_id: "prod_web.7".into(),
                agent: 5,
                state: TaskState::Failed,
                healthy: Some(false),
                reason: "OOM killed".into(),
                exit_code: Some(137),
            }],
        }),
        Command::Services(ServiceCommand::Reports {
            reports: vec![
                vec![TaskUpdate {
                    task_id: "prod_web.8".into(),
                    agent: 5,
                    state: TaskState::Running,
                    healthy: Some(true),
                    reason: String::new(),
                    exit_code: None,
                }],
                vec![],
            ],
        }),
        Command::Jobs(JobCommand::Put { spec: Box::new(job_spec()), create: true }),
        Command::Jobs(JobCommand::Remove { name: "nightly".into() }),
        Command::Jobs(JobCommand::Run { name: "nightly".into() }),
        Command::Jobs(JobCommand::Tick),
        Command::Jobs(JobCommand::Launch {
            job: "nightly".into(),
            instant_ms: 1_900_000_000_000,
            attempt: 2,
            task: LaunchTask {
                service: "job:nightly".into(),
                version: 3,
                agent: 5,
                host: "node-5".into(),
                ports: vec![],
            },
        }),
        Command::HttpToken(HttpTokenCommand::Issue(http_token())),
        Command::HttpToken(HttpTokenCommand::Revoke { id: "0123456789abcdef".into() }),
    ]
}

fn http_token() -> HttpToken {
    HttpToken {
        id: "0123456789abcdef".into(),
        hash: "ab".repeat(32),
        role: "reader".into(),
        name: "grafana".into(),
        created_ms: 7,
    }
}

/// A job spec with every field set away from its default.
fn job_spec() -> JobSpec {
    JobSpec {
        name: "nightly".into(),
        cmd: None,
        args: vec!["/usr/bin/backup".into(), "--all".into()],
        cpus_milli: 500,
        mem_mb: 256,
        disk_mb: 100,
        env: [("MODE".to_string(), "full".to_string())].into(),
        constraints: vec![scheduler_core::Constraint::parse(&["rack", "IS", "a"]).unwrap()],
        schedule: "R5/2030-01-01T02:30:00/P1D".into(),
        cron: String::new(),
        time_zone: "Europe/Berlin".into(),
        retries: 3,
        epsilon_ms: 30_000,
        concurrent: true,
        parents: vec!["extract".into()],
        disabled: true,
        missed: Missed::CatchUpOnce,
        owner: "ops@example.com".into(),
        owner_name: "Ops".into(),
        description: "the nightly backup".into(),
    }
}

/// A spec with every field set away from its default.
fn service_spec() -> ServiceSpec {
    ServiceSpec {
        id: "/prod/web".into(),
        cmd: Some("./serve --port $PORT0".into()),
        args: vec![],
        cpus_milli: 250,
        mem_mb: 64,
        disk_mb: 10,
        instances: 6,
        env: [("MODE".to_string(), "prod".to_string())].into(),
        labels: [("team".to_string(), "a".to_string())].into(),
        constraints: vec![scheduler_core::Constraint::parse(&["hostname", "MAX_PER", "2"]).unwrap()],
        ports: vec![PortDef {
            port: 0,
            name: Some("http".into()),
            protocol: "tcp".into(),
            labels: [("vip".to_string(), "1".to_string())].into(),
        }],
        health_checks: vec![HealthCheck {
            kind: HealthKind::Http,
            path: "/health".into(),
            port_index: 0,
            command: String::new(),
            grace_period_s: 5,
            interval_s: 2,
            timeout_s: 1,
            max_consecutive_failures: 2,
        }],
        upgrade: UpgradeStrategy { min_health_permille: 500, max_over_permille: 200 },
        backoff: Backoff { initial_ms: 2000, factor_permille: 2000, max_ms: 60_000 },
        network: Some("net1".into()),
        placement: scheduler_core::Strategy::Spread,
    }
}

fn ca_record() -> CaRecord {
    CaRecord {
        cert: b"cert-der".to_vec(),
        key: b"key-pkcs8".to_vec(),
        trusted: vec![b"old-der".to_vec(), b"cert-der".to_vec()],
        bridges: vec![b"bridge-der".to_vec()],
    }
}

#[test]
fn every_command_variant_decodes_from_its_golden_bytes() {
    let samples = command_samples()
        .into_iter()
        .enumerate()
        .map(|(i, cmd)| (command_name(&cmd), LogEntry { time_ms: 1_700_000_000_000 + i as u64, cmd }))
        .collect();
    check("commands.txt", samples);
}

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

#[test]
fn every_persisted_record_decodes_from_its_golden_bytes() {
    let membership = openraft::testing::membership_ent::<TypeConfig>(2, 1, 5, vec![[1, 2, 3].into()]);
    let EntryPayload::Membership(m) = membership.payload.clone() else { unreachable!() };
    let mut normal: Entry = openraft::testing::blank_ent::<TypeConfig>(2, 1, 6);
    normal.payload = EntryPayload::Normal(LogEntry { time_ms: 5, cmd: Command::Compact { revision: 1 } });
    let entries: Vec<(String, Entry)> = vec![
        ("log.Entry.Blank".into(), openraft::testing::blank_ent::<TypeConfig>(2, 1, 4)),
        ("log.Entry.Membership".into(), membership),
        ("log.Entry.Normal".into(), normal),
    ];
    check("records.txt", entries);
    let vote = Vote::new(3, 2);
    check("records-vote.txt", vec![("raft_meta.vote".to_string(), vote)]);
    check("records-logid.txt", vec![("m.applied".to_string(), Some(log_id(2, 6)))]);
    check("records-membership.txt", vec![("m.membership".to_string(), StoredMembership::new(Some(log_id(2, 5)), m))]);
    check(
        "records-hist.txt",
        vec![
            (
                "h.Put".to_string(),
                HistRecord::Put { create_revision: 2, version: 3, lease: 0, value: b"value".to_vec() },
            ),
            ("h.Delete".to_string(), HistRecord::Delete),
        ],
    );
    check(
        "records-cluster.txt",
        vec![(
            "m.cluster".to_string(),
            ClusterMeta {
                cluster_id: "c-golden".into(),
                manager_secret: "m".into(),
                worker_secret: "w".into(),
                next_node_id: 4,
            },
        )],
    );
    // `m/ca` came after sm-v1.txt was written, so its encoding is guarded here.
    check("records-ca.txt", vec![("m.ca".to_string(), ca_record())]);
    check(
        "records-lease.txt",
        vec![("l.lease".to_string(), crate::lease::Lease { ttl_secs: 30, remaining_ms: 12_500, checkpoint_index: 77 })],
    );
    check("records-retired.txt", vec![("m.retired".to_string(), std::collections::BTreeSet::from([3u64, 5]))]);
    // Services came after sm-v1.txt was written: each record kind is guarded here.
    check("records-services-spec.txt", vec![("s.v".to_string(), service_spec())]);
    check(
        "records-services-service.txt",
        vec![(
            "s.a".to_string(),
            Service {
                id: "/prod/web".into(),
                version: 2,
                next_version: 3,
                instances: 6,
                created_ms: 1,
                version_ms: 2,
                scaled_ms: 3,
                deployment: Some(4),
                delay_ms: 1000,
                delay_until_ms: 5000,
                deleting: false,
                ended: ["prod_web.1".to_string()].into(),
            },
        )],
    );
    check(
        "records-services-task.txt",
        vec![(
            "s.t".to_string(),
            Task {
                id: "prod_web.7".into(),
                service: "/prod/web".into(),
                version: 2,
                agent: 5,
                host: "node-5".into(),
                ports: vec![31000],
                network: Some("net1".into()),
                ip: Some(ip("10.40.0.7")),
                state: TaskState::Running,
                healthy: Some(true),
                reason: "".into(),
                exit_code: None,
                kill_requested: false,
                staged_ms: 10,
                started_ms: 11,
                ended_ms: 0,
                updated_ms: 12,
            },
        )],
    );
    check(
        "records-http-tokens.txt",
        vec![("m.http_tokens".to_string(), BTreeMap::from([("0123456789abcdef".to_string(), http_token())]))],
    );
    check(
        "records-jobs-job.txt",
        vec![(
            "j.j".to_string(),
            Job {
                spec: job_spec(),
                version: 3,
                created_ms: 1,
                updated_ms: 2,
                next: Some((4, 1_900_000_000_000)),
                consumed: [("extract".to_string(), 1_800_000_000_000)].into(),
                last_success: Some(1_800_000_000_000),
                last_success_ms: 3,
                last_error_ms: 4,
                success_count: 5,
                error_count: 6,
                skipped_count: 7,
                errors_since_success: 8,
                history: [1_800_000_000_000u64].into(),
                deleting: true,
            },
        )],
    );
    check(
        "records-jobs-run.txt",
        vec![(
            "j.r".to_string(),
            Run {
                job: "nightly".into(),
                instant_ms: 1_900_000_000_000,
                trigger: Trigger::Parents(vec![("extract".into(), 1_800_000_000_000)]),
                state: RunState::Failed,
                attempts: 2,
                tasks: vec!["job-nightly.1900000000000.1".into(), "job-nightly.1900000000000.2".into()],
                agent: 5,
                host: "node-5".into(),
                exit_code: Some(3),
                reason: "attempt 2 exited with 3".into(),
                created_ms: 1,
                started_ms: 2,
                ended_ms: 3,
                version: 3,
            },
        )],
    );
    check(
        "records-services-deployment.txt",
        vec![(
            "s.d".to_string(),
            Deployment {
                id: 4,
                service: "/prod/web".into(),
                kind: DeploymentKind::Update,
                from_version: Some(1),
                from_instances: 6,
                to_version: 2,
                to_instances: 6,
                started_ms: 2,
            },
        )],
    );
}

/// Entries that write every kind of state-machine record: KV history and the revision
/// index, a compaction, the cluster identity, registry nodes, events, a removal, IPAM
/// networks, runs, owners, addresses, a node binding and a quarantined address.
fn state_entries() -> Vec<Entry> {
    let mut cmds = vec![
        Command::InitCluster { cluster_id: "c-golden".into(), manager_secret: "m".into(), worker_secret: "w".into() },
        Command::AllocNodeId { addr: "127.0.0.1:2380".into() },
        Command::AllocNodeId { addr: "127.0.0.1:2381".into() },
        Command::Put(PutRequest { key: b"a".to_vec(), value: b"1".to_vec(), ..Default::default() }),
        Command::Put(PutRequest { key: b"a".to_vec(), value: b"2".to_vec(), ..Default::default() }),
        Command::Put(PutRequest { key: b"b\0x".to_vec(), value: b"3".to_vec(), ..Default::default() }),
        Command::DeleteRange(DeleteRangeRequest { key: b"b\0x".to_vec(), ..Default::default() }),
        Command::Txn(txn()),
        Command::Compact { revision: 3 },
        Command::Registry(RegistryCommand::Register(registration(2))),
        Command::Registry(RegistryCommand::Register(registration(3))),
        Command::Registry(RegistryCommand::Transitions {
            term: 1,
            transitions: vec![Transition {
                node_id: 2,
                from: NodeState::Registered,
                to: NodeState::Active,
                reason: "heartbeat session open".into(),
            }],
        }),
        Command::Registry(RegistryCommand::SetAvailability { node_id: 2, availability: Availability::Drain }),
        Command::Registry(RegistryCommand::Remove { node_id: 3, force: true }),
        Command::Ipam(IpamCommand::CreateNetwork(network_spec())),
        Command::Ipam(IpamCommand::Allocate {
            network: "net1".into(),
            owner: "task-1".into(),
            requested: None,
            node: Some(2),
        }),
        Command::Ipam(IpamCommand::AllocateBatch {
            network: "net1".into(),
            owners: vec!["a".into(), "b".into()],
            node: None,
        }),
        Command::Ipam(IpamCommand::Release { network: "net1".into(), owner: Some("a".into()), address: None }),
    ];
    let mut out = vec![openraft::testing::membership_ent::<TypeConfig>(1, 1, 1, vec![[1].into()])];
    for (i, cmd) in cmds.drain(..).enumerate() {
        let index = i as u64 + 2;
        let mut e: Entry = openraft::testing::blank_ent::<TypeConfig>(1, 1, index);
        e.payload = EntryPayload::Normal(LogEntry { time_ms: 1_700_000_000_000 + 1_000 * index, cmd });
        out.push(e);
    }
    out
}

fn dump_sm(db: &rocksdb::DB) -> Vec<(Vec<u8>, Vec<u8>)> {
    db.iterator_cf(sm_cf(db), rocksdb::IteratorMode::Start)
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
        .collect()
}

/// Keys are written as hex too: the file is bytes, with one readable comment per key.
fn format_dump(pairs: &[(Vec<u8>, Vec<u8>)]) -> String {
    let mut s = String::from("# sm column family, format version 1: key-hex value-hex\n");
    for (k, v) in pairs {
        let readable: String = k.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '.' }).collect();
        writeln!(s, "# {readable}\n{} {}", hex::encode(k), hex::encode(v)).unwrap();
    }
    s
}

fn parse_dump(text: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("key value");
            (hex::decode(k).unwrap(), hex::decode(v).unwrap())
        })
        .collect()
}

async fn apply_all(sm: &mut StateMachineStore, entries: Vec<Entry>) {
    let s = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(s).await.expect("apply");
}

#[tokio::test]
async fn state_machine_records_match_the_golden_state_and_load_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("db")).unwrap();
    let mut sm = StateMachineStore::new(db.clone(), dir.path().join("snap")).unwrap();
    apply_all(&mut sm, state_entries()).await;
    let fresh = dump_sm(&db);
    let path = golden_path("sm-v1.txt");
    let golden = match std::fs::read_to_string(&path) {
        Ok(t) => parse_dump(&t),
        Err(_) if std::env::var_os("GOLDEN_WRITE").is_some() => {
            std::fs::write(&path, format_dump(&fresh)).unwrap();
            fresh.clone()
        }
        Err(e) => panic!("{}: {e}; run with GOLDEN_WRITE=1 to create it", path.display()),
    };
    let golden_keys: Vec<String> = golden.iter().map(|(k, _)| hex::encode(k)).collect();
    let fresh_keys: Vec<String> = fresh.iter().map(|(k, _)| hex::encode(k)).collect();
    assert_eq!(fresh_keys, golden_keys, "the state machine writes other keys than format version 1 did");
    for ((k, v), (_, g)) in fresh.iter().zip(&golden) {
        assert_eq!(v, g, "record {} is encoded differently from format version 1", String::from_utf8_lossy(k));
    }

    // The other direction: a store whose `sm` holds exactly the golden records loads them.
    let dir2 = tempfile::tempdir().unwrap();
    let db2 = open_db(&dir2.path().join("db")).unwrap();
    let cf = sm_cf(&db2);
    for (k, v) in &golden {
        db2.put_cf(cf, k, v).unwrap();
    }
    let loaded = StateMachineStore::new(db2.clone(), dir2.path().join("snap")).unwrap();
    let (a, b) = (sm.state(), loaded.state());
    let (a, b) = (a.read().unwrap(), b.read().unwrap());
    assert_eq!(b.kv, a.kv);
    assert_eq!(b.registry.nodes, a.registry.nodes);
    assert_eq!(b.registry.removed, a.registry.removed);
    assert_eq!(b.registry.events, a.registry.events);
    assert_eq!(b.ipam, a.ipam);
    assert_eq!(b.cluster.cluster_id, "c-golden");
    assert_eq!(b.cluster, a.cluster);
    assert_eq!(b.last_applied, a.last_applied);
    assert_eq!(b.membership, a.membership);
    // Owner records are read from disk: the loaded store answers the same allocations.
    let owners = |db: &rocksdb::DB| {
        let st = crate::store::SmState::default();
        crate::read::ReadView::new(&st, db).ipam_allocations("net1", 100).unwrap()
    };
    let got = owners(&db2);
    assert_eq!(got.len(), 2, "task-1 and b hold addresses: {got:?}");
    assert_eq!(got, owners(&db));
    // And past revisions read from the golden history.
    let req = RangeRequest { key: b"a".to_vec(), revision: 4, ..Default::default() };
    let past = crate::read::ReadView::new(&b, &db2).range(&req).unwrap();
    assert_eq!(past.kvs[0].value, b"2");
}
