//! A service's spec as the state machine keeps it: Marathon's app-definition fields in
//! integer units (thousandths of a core, MB, milliseconds, thousandths), so applying an
//! entry never does float arithmetic. [`super::marathon`] converts to and from Marathon's
//! JSON; [`ServiceSpec::validate`] holds every limit.

// State-machine code: deterministic on every member (see coord/clippy.toml).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeMap;

use scheduler_core::{Constraint, Strategy};
use serde::{Deserialize, Serialize};

pub const MAX_ID_BYTES: usize = 200;
pub const MAX_INSTANCES: u32 = 10_000;
pub const MAX_CMD_BYTES: usize = 64 * 1024;
pub const MAX_ARGS: usize = 256;
pub const MAX_ENV: usize = 256;
pub const MAX_ENV_BYTES: usize = 64 * 1024;
pub const MAX_LABELS: usize = 64;
pub const MAX_CONSTRAINTS: usize = 32;
pub const MAX_PORTS: usize = 64;
pub const MAX_HEALTH_CHECKS: usize = 8;

/// Marathon's defaults (DESIGN: cpus 1, mem 128, disk 0, instances 1; health checks 300 s
/// grace, 60 s interval, 20 s timeout, 3 failures; upgrade 1 and 1; backoff 1 s × 1.15
/// up to 300 s).
pub mod defaults {
    pub const CPUS_MILLI: u64 = 1000;
    pub const MEM_MB: u64 = 128;
    pub const INSTANCES: u32 = 1;
    pub const GRACE_PERIOD_S: u32 = 300;
    pub const INTERVAL_S: u32 = 60;
    pub const TIMEOUT_S: u32 = 20;
    pub const MAX_CONSECUTIVE_FAILURES: u32 = 3;
    pub const MIN_HEALTH_PERMILLE: u32 = 1000;
    pub const MAX_OVER_PERMILLE: u32 = 1000;
    pub const BACKOFF_MS: u64 = 1000;
    pub const BACKOFF_FACTOR_PERMILLE: u32 = 1150;
    pub const MAX_LAUNCH_DELAY_MS: u64 = 300_000;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortDef {
    /// 0: any port from the agent's ranges.
    pub port: u16,
    pub name: Option<String>,
    /// "tcp", "udp" or "udp,tcp" (Marathon's spelling).
    pub protocol: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthKind {
    Http,
    Tcp,
    Command,
}

impl HealthKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthKind::Http => "HTTP",
            HealthKind::Tcp => "TCP",
            HealthKind::Command => "COMMAND",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub kind: HealthKind,
    /// HTTP only; default "/".
    pub path: String,
    /// Which of the task's ports (HTTP and TCP).
    pub port_index: u32,
    /// COMMAND only: run by `/bin/sh -c`; exit 0 is healthy.
    pub command: String,
    pub grace_period_s: u32,
    pub interval_s: u32,
    pub timeout_s: u32,
    /// 0: never unhealthy (Marathon's meaning).
    pub max_consecutive_failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeStrategy {
    /// minimumHealthCapacity × 1000.
    pub min_health_permille: u32,
    /// maximumOverCapacity × 1000.
    pub max_over_permille: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub initial_ms: u64,
    /// backoffFactor × 1000 (≥ 1000).
    pub factor_permille: u32,
    pub max_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Normalized: a leading `/`, segments of `[a-z0-9-]`, e.g. `/prod/web`.
    pub id: String,
    /// Run by `/bin/sh -c`; exclusive with `args`.
    pub cmd: Option<String>,
    /// Run directly (argv); exclusive with `cmd`.
    pub args: Vec<String>,
    pub cpus_milli: u64,
    pub mem_mb: u64,
    pub disk_mb: u64,
    pub instances: u32,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub constraints: Vec<Constraint>,
    pub ports: Vec<PortDef>,
    pub health_checks: Vec<HealthCheck>,
    pub upgrade: UpgradeStrategy,
    pub backoff: Backoff,
    /// An IPAM network: each task gets an address from it.
    pub network: Option<String>,
    pub placement: Strategy,
}

impl ServiceSpec {
    /// A spec with Marathon's defaults for everything but the id and the command.
    pub fn new(id: &str, cmd: &str) -> ServiceSpec {
        ServiceSpec {
            id: id.to_string(),
            cmd: Some(cmd.to_string()),
            args: Vec::new(),
            cpus_milli: defaults::CPUS_MILLI,
            mem_mb: defaults::MEM_MB,
            disk_mb: 0,
            instances: defaults::INSTANCES,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            constraints: Vec::new(),
            ports: Vec::new(),
            health_checks: Vec::new(),
            upgrade: UpgradeStrategy {
                min_health_permille: defaults::MIN_HEALTH_PERMILLE,
                max_over_permille: defaults::MAX_OVER_PERMILLE,
            },
            backoff: Backoff {
                initial_ms: defaults::BACKOFF_MS,
                factor_permille: defaults::BACKOFF_FACTOR_PERMILLE,
                max_ms: defaults::MAX_LAUNCH_DELAY_MS,
            },
            network: None,
            placement: Strategy::Binpack,
        }
    }

    /// The prefix of its task ids: the id without the leading `/`, `/` as `_`
    /// (Marathon's form).
    pub fn task_prefix(id: &str) -> String {
        id.trim_start_matches('/').replace('/', "_")
    }

    /// Whether `other` differs only in `instances`: a scale, which keeps the tasks.
    pub fn same_config(&self, other: &ServiceSpec) -> bool {
        let mut a = self.clone();
        a.instances = other.instances;
        a == *other
    }

    /// Every limit, with an error that names the field.
    pub fn validate(&self) -> Result<(), String> {
        validate_id(&self.id)?;
        match (&self.cmd, self.args.is_empty()) {
            (Some(_), false) => return Err("cmd and args: give one, not both".into()),
            (None, true) => return Err("cmd or args: one is required".into()),
            (Some(c), true) if c.trim().is_empty() => return Err("cmd is empty".into()),
            (Some(c), true) if c.len() > MAX_CMD_BYTES => {
                return Err(format!("cmd is longer than {MAX_CMD_BYTES} bytes"))
            }
            _ => {}
        }
        if self.args.len() > MAX_ARGS || self.args.iter().map(String::len).sum::<usize>() > MAX_CMD_BYTES {
            return Err(format!("args: at most {MAX_ARGS} arguments and {MAX_CMD_BYTES} bytes"));
        }
        if self.args.iter().any(|a| a.contains('\0')) || self.cmd.as_deref().is_some_and(|c| c.contains('\0')) {
            return Err("cmd and args cannot contain NUL bytes".into());
        }
        if self.cpus_milli == 0 || self.cpus_milli > 1_000_000 {
            return Err("cpus must be between 0.001 and 1000".into());
        }
        if self.mem_mb == 0 || self.mem_mb > 1 << 30 {
            return Err("mem must be between 1 and 1073741824 MB".into());
        }
        if self.disk_mb > 1 << 40 {
            return Err("disk is implausibly large".into());
        }
        if self.instances > MAX_INSTANCES {
            return Err(format!("instances: at most {MAX_INSTANCES}"));
        }
        if self.env.len() > MAX_ENV || self.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > MAX_ENV_BYTES {
            return Err(format!("env: at most {MAX_ENV} variables and {MAX_ENV_BYTES} bytes"));
        }
        for k in self.env.keys() {
            let ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(format!("env: {k:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"));
            }
        }
        if self.env.values().any(|v| v.contains('\0')) {
            return Err("env: values cannot contain NUL bytes".into());
        }
        validate_labels("labels", &self.labels)?;
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(format!("constraints: at most {MAX_CONSTRAINTS}"));
        }
        if self.ports.len() > MAX_PORTS {
            return Err(format!("portDefinitions: at most {MAX_PORTS}"));
        }
        let mut fixed = std::collections::BTreeSet::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.port != 0 && !fixed.insert(p.port) {
                return Err(format!("portDefinitions[{i}]: port {} appears twice", p.port));
            }
            if let Some(n) = &p.name {
                let ok = !n.is_empty()
                    && n.len() <= 63
                    && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !ok {
                    return Err(format!("portDefinitions[{i}].name {n:?}: 1-63 of [a-z0-9-]"));
                }
                if !names.insert(n.clone()) {
                    return Err(format!("portDefinitions[{i}].name {n:?} appears twice"));
                }
            }
            if !matches!(p.protocol.as_str(), "tcp" | "udp" | "udp,tcp" | "tcp,udp") {
                return Err(format!("portDefinitions[{i}].protocol {:?}: use tcp, udp or udp,tcp", p.protocol));
            }
            validate_labels(&format!("portDefinitions[{i}].labels"), &p.labels)?;
        }
        if self.health_checks.len() > MAX_HEALTH_CHECKS {
            return Err(format!("healthChecks: at most {MAX_HEALTH_CHECKS}"));
        }
        for (i, h) in self.health_checks.iter().enumerate() {
            let at = format!("healthChecks[{i}]");
            match h.kind {
                HealthKind::Http | HealthKind::Tcp if h.port_index as usize >= self.ports.len() => {
                    return Err(format!(
                        "{at}.portIndex {} but the service has {} port definitions",
                        h.port_index,
                        self.ports.len()
                    ))
                }
                HealthKind::Http if !h.path.starts_with('/') || h.path.len() > 1024 => {
                    return Err(format!("{at}.path must start with / (at most 1024 bytes)"))
                }
                HealthKind::Command if h.command.trim().is_empty() || h.command.len() > MAX_CMD_BYTES => {
                    return Err(format!("{at}.command: a shell command is required"))
                }
                _ => {}
            }
            if h.interval_s == 0 || h.timeout_s == 0 {
                return Err(format!("{at}: intervalSeconds and timeoutSeconds must be at least 1"));
            }
            if h.timeout_s > h.interval_s {
                return Err(format!(
                    "{at}: timeoutSeconds ({}) exceeds intervalSeconds ({})",
                    h.timeout_s, h.interval_s
                ));
            }
            if h.grace_period_s > 86_400 || h.interval_s > 86_400 {
                return Err(format!("{at}: periods are at most 86400 s"));
            }
        }
        if self.upgrade.min_health_permille > 1000 || self.upgrade.max_over_permille > 1000 {
            return Err("upgradeStrategy: minimumHealthCapacity and maximumOverCapacity are between 0 and 1".into());
        }
        if self.backoff.factor_permille < 1000 || self.backoff.factor_permille > 100_000 {
            return Err("backoffFactor must be between 1 and 100".into());
        }
        if self.backoff.initial_ms > 86_400_000 || self.backoff.max_ms > 86_400_000 {
            return Err("backoffSeconds and maxLaunchDelaySeconds are at most 86400".into());
        }
        if let Some(n) = &self.network {
            crate::ipam::validate_name(n).map_err(|e| format!("networks: {e}"))?;
        }
        Ok(())
    }
}

/// Marathon's app ids: `/`-separated segments of lowercase letters, digits and hyphens
/// (not at either end). Dots are refused: task ids and DNS names are built from the id.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.len() > MAX_ID_BYTES {
        return Err(format!("id is longer than {MAX_ID_BYTES} bytes"));
    }
    let body = id.strip_prefix('/').ok_or_else(|| format!("id {id:?} must be normalized with a leading /"))?;
    if body.is_empty() {
        return Err("id is empty".into());
    }
    for seg in body.split('/') {
        let ok = !seg.is_empty()
            && seg.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !seg.starts_with('-')
            && !seg.ends_with('-');
        if !ok {
            return Err(format!(
                "id {id:?}: each path segment is lowercase letters, digits and hyphens, not starting or ending with a hyphen"
            ));
        }
    }
    Ok(())
}

/// `web` → `/web`; `/prod/web/` → `/prod/web`. Relative ids are relative to the root.
pub fn normalize_id(id: &str) -> String {
    let trimmed = id.trim().trim_end_matches('/');
    if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

fn validate_labels(what: &str, labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{what}: at most {MAX_LABELS}"));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > 255 || v.len() > 4096 {
            return Err(format!("{what}: key {k:?} must be 1-255 bytes and its value at most 4096"));
        }
    }
    Ok(())
}
