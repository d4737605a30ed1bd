//! A job's spec as the state machine keeps it (Chronos' fields in integer units), its
//! limits ([`JobSpec::validate`]), and Chronos' job JSON in and out. Any field we do not
//! support is refused by name rather than ignored.

// State-machine code: deterministic on every member (see coord/clippy.toml).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeMap;

use scheduler_core::{Constraint, Strategy};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::schedule;
use crate::services::marathon::nonneg;
use crate::services::spec::ServiceSpec;

pub const MAX_NAME_BYTES: usize = 64;
pub const MAX_PARENTS: usize = 32;
pub const MAX_RETRIES: u32 = 100;
pub const MAX_TEXT_BYTES: usize = 1024;

/// Chronos' defaults (DESIGN §10: epsilon 60 s, retries 2, cpus 0.1, mem 128, disk 256).
pub mod defaults {
    pub const EPSILON_MS: u64 = 60_000;
    pub const RETRIES: u32 = 2;
    pub const CPUS_MILLI: u64 = 100;
    pub const MEM_MB: u64 = 128;
    pub const DISK_MB: u64 = 256;
}

/// What happens to instants that were due while no leader could start them (a failover,
/// a cluster that was down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Missed {
    /// Chronos 2.x: an instant missed by more than `epsilon` is skipped (recorded, with
    /// the reason).
    Skip,
    /// Chronos 3.x: of the instants missed, the newest runs once, whatever its lateness;
    /// the older ones are recorded as skipped, covered by it.
    CatchUpOnce,
}

impl Missed {
    pub fn as_str(&self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::CatchUpOnce => "catch-up-once",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// `[A-Za-z0-9_-]`, 1 to 64 bytes.
    pub name: String,
    /// Run by `/bin/sh -c` (Chronos' `shell: true`); exclusive with `args`.
    pub cmd: Option<String>,
    pub args: Vec<String>,
    pub cpus_milli: u64,
    pub mem_mb: u64,
    pub disk_mb: u64,
    pub env: BTreeMap<String, String>,
    pub constraints: Vec<Constraint>,
    /// ISO 8601 repeating interval, `R[n]/start/period`; empty when `cron` or `parents`
    /// says when it runs.
    pub schedule: String,
    /// A cron expression instead of `schedule`.
    pub cron: String,
    /// A tz name (empty: UTC): both kinds of schedule follow that zone's calendar.
    pub time_zone: String,
    /// Attempts after the first failed one, per run.
    pub retries: u32,
    pub epsilon_ms: u64,
    /// Whether runs may overlap; when not, an instant that comes while a run is going is
    /// skipped (recorded, with the reason).
    pub concurrent: bool,
    /// Runs after every parent's latest run succeeded, instead of on a schedule.
    pub parents: Vec<String>,
    pub disabled: bool,
    pub missed: Missed,
    pub owner: String,
    pub owner_name: String,
    pub description: String,
}

impl JobSpec {
    pub fn new(name: &str, cmd: &str) -> JobSpec {
        JobSpec {
            name: name.to_string(),
            cmd: Some(cmd.to_string()),
            args: Vec::new(),
            cpus_milli: defaults::CPUS_MILLI,
            mem_mb: defaults::MEM_MB,
            disk_mb: defaults::DISK_MB,
            env: BTreeMap::new(),
            constraints: Vec::new(),
            schedule: String::new(),
            cron: String::new(),
            time_zone: String::new(),
            retries: defaults::RETRIES,
            epsilon_ms: defaults::EPSILON_MS,
            concurrent: false,
            parents: Vec::new(),
            disabled: false,
            missed: Missed::Skip,
            owner: String::new(),
            owner_name: String::new(),
            description: String::new(),
        }
    }

    /// The spec its runs' tasks are launched with (the services area's form), under the
    /// task-service id `job:<name>`.
    pub fn task_spec(&self) -> ServiceSpec {
        let mut s = ServiceSpec::new(&super::task_service(&self.name), "");
        s.cmd = self.cmd.clone();
        s.args = self.args.clone();
        s.cpus_milli = self.cpus_milli;
        s.mem_mb = self.mem_mb;
        s.disk_mb = self.disk_mb;
        s.instances = 0;
        s.env = self.env.clone();
        s.constraints = self.constraints.clone();
        s.placement = Strategy::Binpack;
        s
    }

    /// Whether `other` changes when runs happen (so the next instant is computed again).
    pub fn same_timing(&self, other: &JobSpec) -> bool {
        self.schedule == other.schedule
            && self.cron == other.cron
            && self.time_zone == other.time_zone
            && self.disabled == other.disabled
    }

    /// Every limit, with an error that names the field. `now_ms` only resolves an empty
    /// schedule start, to check the rest of it.
    pub fn validate(&self) -> Result<(), String> {
        validate_name("name", &self.name)?;
        // The task's own limits (command, resources, env, constraints) are the services
        // area's, checked on a copy under a placeholder id.
        let mut task = self.task_spec();
        task.id = "/job".into();
        task.validate()?;
        let tz = schedule::zone(&self.time_zone)?;
        let kinds = [!self.schedule.is_empty(), !self.cron.is_empty(), !self.parents.is_empty()];
        match kinds.iter().filter(|k| **k).count() {
            1 => {}
            0 => return Err("give one of schedule (R[n]/start/period), cron, or parents".into()),
            _ => return Err("schedule, cron and parents exclude one another: give one".into()),
        }
        if !self.schedule.is_empty() {
            schedule::parse_iso(&self.schedule, &tz, 0)?;
        }
        if !self.cron.is_empty() {
            schedule::parse_cron(&self.cron, &tz)?;
        }
        if self.parents.len() > MAX_PARENTS {
            return Err(format!("parents: at most {MAX_PARENTS}"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.parents {
            validate_name("parents", p)?;
            if p == &self.name {
                return Err("parents: a job cannot be its own parent".into());
            }
            if !seen.insert(p) {
                return Err(format!("parents: {p:?} appears twice"));
            }
        }
        if self.retries > MAX_RETRIES {
            return Err(format!("retries: at most {MAX_RETRIES}"));
        }
        if self.epsilon_ms > 366 * 86_400_000 {
            return Err("epsilon: at most a year".into());
        }
        // The leader decides due instants a few times a second: a smaller epsilon would
        // skip runs that were on time.
        if self.epsilon_ms < 1000 {
            return Err("epsilon: at least PT1S".into());
        }
        for (f, v) in [("owner", &self.owner), ("ownerName", &self.owner_name), ("description", &self.description)] {
            if v.len() > MAX_TEXT_BYTES {
                return Err(format!("{f}: longer than {MAX_TEXT_BYTES} bytes"));
            }
        }
        Ok(())
    }
}

pub fn validate_name(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("{field}: {name:?} must be 1 to {MAX_NAME_BYTES} of A-Z, a-z, 0-9, _ and -"))
    }
}

// ---- Chronos' JSON ----

/// Fields we accept on input.
pub const FIELDS: &[&str] = &[
    "name",
    "command",
    "arguments",
    "shell",
    "schedule",
    "scheduleTimeZone",
    "cron",
    "parents",
    "epsilon",
    "retries",
    "cpus",
    "mem",
    "disk",
    "disabled",
    "concurrent",
    "owner",
    "ownerName",
    "description",
    "environmentVariables",
    "constraints",
    "missedRuns",
];

/// What Chronos emits on GET that describes state: accepted and ignored on input, so a
/// job read back can be sent again.
pub const READ_ONLY_FIELDS: &[&str] =
    &["successCount", "errorCount", "lastSuccess", "lastError", "errorsSinceLastSuccess", "nextRun", "version"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JobJson {
    name: Option<String>,
    command: Option<String>,
    arguments: Option<Vec<String>>,
    shell: Option<bool>,
    schedule: Option<String>,
    schedule_time_zone: Option<String>,
    cron: Option<String>,
    parents: Option<Vec<String>>,
    epsilon: Option<String>,
    retries: Option<u32>,
    cpus: Option<f64>,
    mem: Option<f64>,
    disk: Option<f64>,
    disabled: Option<bool>,
    concurrent: Option<bool>,
    owner: Option<String>,
    owner_name: Option<String>,
    description: Option<String>,
    environment_variables: Option<Vec<EnvVar>>,
    constraints: Option<Vec<Vec<String>>>,
    missed_runs: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvVar {
    name: String,
    value: String,
}

/// Parses one Chronos job definition. `default_name` fills a missing name (a path that
/// names the job).
pub fn parse_job(json: &[u8], default_name: Option<&str>) -> Result<JobSpec, String> {
    let value: Value = serde_json::from_slice(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(mut map) = value else {
        return Err("a job definition is a JSON object".into());
    };
    for key in map.keys() {
        if !FIELDS.contains(&key.as_str()) && !READ_ONLY_FIELDS.contains(&key.as_str()) {
            return Err(format!("field {key:?} is not supported (supported: {})", FIELDS.join(", ")));
        }
    }
    map.retain(|k, _| !READ_ONLY_FIELDS.contains(&k.as_str()));
    let j: JobJson = serde_json::from_value(Value::Object(map)).map_err(|e| e.to_string())?;
    let name = match (j.name, default_name) {
        (Some(n), Some(d)) if n != d => {
            return Err(format!("name {n:?} in the body differs from {d:?} in the request"))
        }
        (Some(n), _) => n,
        (None, Some(d)) => d.to_string(),
        (None, None) => return Err("name is required".into()),
    };
    let mut s = JobSpec::new(&name, "");
    let command = j.command.unwrap_or_default();
    let arguments = j.arguments.unwrap_or_default();
    match j.shell.unwrap_or(true) {
        true => {
            if !arguments.is_empty() {
                return Err("arguments: only with shell false (the command then runs directly)".into());
            }
            s.cmd = Some(command);
        }
        false => {
            if command.is_empty() {
                return Err("command: required (with shell false it is the program, arguments follow)".into());
            }
            s.cmd = None;
            s.args = std::iter::once(command).chain(arguments).collect();
        }
    }
    if let Some(c) = j.cpus {
        s.cpus_milli = (nonneg(c, "cpus")? * 1000.0).round() as u64;
    }
    if let Some(m) = j.mem {
        s.mem_mb = nonneg(m, "mem")?.ceil() as u64;
    }
    if let Some(d) = j.disk {
        s.disk_mb = nonneg(d, "disk")?.ceil() as u64;
    }
    for e in j.environment_variables.unwrap_or_default() {
        if s.env.insert(e.name.clone(), e.value).is_some() {
            return Err(format!("environmentVariables: {:?} appears twice", e.name));
        }
    }
    for (i, c) in j.constraints.unwrap_or_default().iter().enumerate() {
        s.constraints.push(Constraint::parse(c).map_err(|e| format!("constraints[{i}]: {e}"))?);
    }
    s.schedule = j.schedule.unwrap_or_default();
    s.cron = j.cron.unwrap_or_default();
    s.time_zone = j.schedule_time_zone.unwrap_or_default();
    s.parents = j.parents.unwrap_or_default();
    if let Some(e) = j.epsilon {
        s.epsilon_ms = schedule::parse_duration_ms("epsilon", &e)?;
    }
    s.retries = j.retries.unwrap_or(defaults::RETRIES);
    s.disabled = j.disabled.unwrap_or(false);
    s.concurrent = j.concurrent.unwrap_or(false);
    s.owner = j.owner.unwrap_or_default();
    s.owner_name = j.owner_name.unwrap_or_default();
    s.description = j.description.unwrap_or_default();
    s.missed = match j.missed_runs.as_deref() {
        None | Some("skip") => Missed::Skip,
        Some("catch-up-once") => Missed::CatchUpOnce,
        Some(o) => return Err(format!("missedRuns {o:?}: use skip or catch-up-once")),
    };
    s.validate()?;
    Ok(s)
}

/// The spec as Chronos' JSON, every supported field present.
pub fn to_json(s: &JobSpec) -> Value {
    let (shell, command, arguments) = match &s.cmd {
        Some(c) => (true, c.clone(), Vec::new()),
        None => (false, s.args.first().cloned().unwrap_or_default(), s.args.iter().skip(1).cloned().collect()),
    };
    let env: Vec<Value> = s.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    let constraints: Vec<Value> = s.constraints.iter().map(|c| json!(c.to_marathon())).collect();
    json!({
        "name": s.name,
        "command": command,
        "arguments": arguments,
        "shell": shell,
        "schedule": s.schedule,
        "scheduleTimeZone": s.time_zone,
        "cron": s.cron,
        "parents": s.parents,
        "epsilon": schedule::show_duration(s.epsilon_ms),
        "retries": s.retries,
        "cpus": s.cpus_milli as f64 / 1000.0,
        "mem": s.mem_mb as f64,
        "disk": s.disk_mb as f64,
        "disabled": s.disabled,
        "concurrent": s.concurrent,
        "owner": s.owner,
        "ownerName": s.owner_name,
        "description": s.description,
        "environmentVariables": env,
        "constraints": constraints,
        "missedRuns": s.missed.as_str(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chronos_json_round_trips_and_takes_chronos_defaults() {
        let j = br#"{"name":"backup","command":"echo hi","schedule":"R/2030-01-01T00:00:00Z/PT1H",
                     "owner":"ops@example.com","epsilon":"PT30S","environmentVariables":[{"name":"A","value":"1"}],
                     "successCount":3}"#;
        let s = parse_job(j, None).unwrap();
        assert_eq!((s.retries, s.cpus_milli, s.mem_mb, s.disk_mb), (2, 100, 128, 256));
        assert_eq!(s.epsilon_ms, 30_000);
        assert_eq!(s.env.get("A").map(String::as_str), Some("1"));
        let back = parse_job(to_json(&s).to_string().as_bytes(), None).unwrap();
        assert_eq!(back, s);
        // shell false: the command is the program.
        let s = parse_job(
            br#"{"name":"x","command":"/bin/echo","arguments":["a"],"shell":false,"cron":"* * * * *"}"#,
            None,
        )
        .unwrap();
        assert_eq!((s.cmd.clone(), s.args.clone()), (None, vec!["/bin/echo".to_string(), "a".to_string()]));
    }

    #[test]
    fn the_job_examples_in_docs_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/jobs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "json") {
                let s = parse_job(&std::fs::read(e.path()).unwrap(), None);
                assert!(s.is_ok(), "{}: {:?}", e.path().display(), s.err());
                n += 1;
            }
        }
        assert!(n >= 2, "examples found: {n}");
    }

    #[test]
    fn bad_jobs_are_refused_by_field() {
        for (bad, why) in [
            (
                r#"{"name":"x","command":"c","schedule":"R//PT1H","container":{}}"#,
                "field \"container\" is not supported",
            ),
            (r#"{"name":"x y","command":"c","schedule":"R//PT1H"}"#, "name: \"x y\""),
            (r#"{"name":"x","command":"c"}"#, "give one of schedule"),
            (r#"{"name":"x","command":"c","schedule":"R//PT1H","parents":["a"]}"#, "exclude one another"),
            (r#"{"name":"x","command":"c","parents":["x"]}"#, "its own parent"),
            (
                r#"{"name":"x","command":"c","schedule":"R//PT1H","scheduleTimeZone":"Nowhere/Land"}"#,
                "unknown time zone",
            ),
            (r#"{"name":"x","command":"c","schedule":"R//PT1H","epsilon":"1 minute"}"#, "epsilon"),
            (r#"{"name":"x","command":"c","schedule":"R//PT1H","missedRuns":"all"}"#, "missedRuns"),
            (r#"{"name":"x","command":"","schedule":"R//PT1H"}"#, "cmd is empty"),
            (r#"[1]"#, "JSON object"),
        ] {
            let e = parse_job(bad.as_bytes(), None).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
