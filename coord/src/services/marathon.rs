//! Marathon's app JSON, for the fields we support: parsed into a [`ServiceSpec`] (with
//! Marathon's defaults) and emitted from one, so an app file that uses only these fields
//! works as it is. Any other field is refused by name rather than ignored.

use std::collections::BTreeMap;

use scheduler_core::{Constraint, Strategy};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::spec::{defaults, normalize_id, Backoff, HealthCheck, HealthKind, PortDef, ServiceSpec, UpgradeStrategy};

/// Top-level fields we accept.
pub const FIELDS: &[&str] = &[
    "id",
    "cmd",
    "args",
    "cpus",
    "mem",
    "disk",
    "instances",
    "env",
    "labels",
    "constraints",
    "portDefinitions",
    "healthChecks",
    "upgradeStrategy",
    "backoffSeconds",
    "backoffFactor",
    "maxLaunchDelaySeconds",
    "networks",
    "placement",
];

/// Fields Marathon itself emits on GET that describe state, not the spec: accepted and
/// ignored on input, so `GET` output can be edited and sent back.
pub const READ_ONLY_FIELDS: &[&str] = &[
    "version",
    "versionInfo",
    "tasksStaged",
    "tasksRunning",
    "tasksHealthy",
    "tasksUnhealthy",
    "deployments",
    "tasks",
    "lastTaskFailure",
];

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct App {
    id: Option<String>,
    cmd: Option<String>,
    args: Option<Vec<String>>,
    cpus: Option<f64>,
    mem: Option<f64>,
    disk: Option<f64>,
    instances: Option<u32>,
    env: Option<BTreeMap<String, Value>>,
    labels: Option<BTreeMap<String, String>>,
    constraints: Option<Vec<Vec<String>>>,
    port_definitions: Option<Vec<PortDefinition>>,
    health_checks: Option<Vec<Health>>,
    upgrade_strategy: Option<Upgrade>,
    backoff_seconds: Option<f64>,
    backoff_factor: Option<f64>,
    max_launch_delay_seconds: Option<f64>,
    networks: Option<Vec<NetworkJson>>,
    placement: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortDefinition {
    #[serde(default)]
    port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Health {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<HealthCommand>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grace_period_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_consecutive_failures: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthCommand {
    value: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Upgrade {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    minimum_health_capacity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    maximum_over_capacity: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

fn permille(v: f64, what: &str) -> Result<u32, String> {
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{what} must be between 0 and 1, not {v}"));
    }
    Ok((v * 1000.0).round() as u32)
}

fn seconds_ms(v: f64, what: &str) -> Result<u64, String> {
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        return Err(format!("{what} must be between 0 and 86400, not {v}"));
    }
    Ok((v * 1000.0).round() as u64)
}

pub(crate) fn nonneg(v: f64, what: &str) -> Result<f64, String> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{what} must be a non-negative number, not {v}"))
    }
}

/// Parses one Marathon app definition. `default_id` fills a missing `id` (a PUT to
/// `/v2/apps/{id}` names the app in the path).
pub fn parse_app(json: &[u8], default_id: Option<&str>) -> Result<ServiceSpec, String> {
    let value: Value = serde_json::from_slice(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(mut map) = value else {
        return Err("an app definition is a JSON object".into());
    };
    for key in map.keys() {
        if !FIELDS.contains(&key.as_str()) && !READ_ONLY_FIELDS.contains(&key.as_str()) {
            return Err(format!("field {key:?} is not supported (supported: {})", FIELDS.join(", ")));
        }
    }
    map.retain(|k, _| !READ_ONLY_FIELDS.contains(&k.as_str()));
    let app: App = serde_json::from_value(Value::Object(map)).map_err(|e| e.to_string())?;
    from_app(app, default_id)
}

fn from_app(app: App, default_id: Option<&str>) -> Result<ServiceSpec, String> {
    let id = match (app.id.as_deref(), default_id) {
        (Some(i), Some(d)) if normalize_id(i) != normalize_id(d) => {
            return Err(format!("id {i:?} in the body differs from {d:?} in the request"))
        }
        (Some(i), _) | (None, Some(i)) => normalize_id(i),
        (None, None) => return Err("id is required".into()),
    };
    let mut s = ServiceSpec::new(&id, "");
    s.cmd = app.cmd;
    s.args = app.args.unwrap_or_default();
    if let Some(c) = app.cpus {
        s.cpus_milli = (nonneg(c, "cpus")? * 1000.0).round() as u64;
    }
    if let Some(m) = app.mem {
        s.mem_mb = nonneg(m, "mem")?.ceil() as u64;
    }
    if let Some(d) = app.disk {
        s.disk_mb = nonneg(d, "disk")?.ceil() as u64;
    }
    s.instances = app.instances.unwrap_or(defaults::INSTANCES);
    for (k, v) in app.env.unwrap_or_default() {
        match v {
            Value::String(v) => {
                s.env.insert(k, v);
            }
            _ => return Err(format!("env {k:?}: only string values are supported (secrets are not)")),
        }
    }
    s.labels = app.labels.unwrap_or_default();
    for (i, c) in app.constraints.unwrap_or_default().iter().enumerate() {
        s.constraints.push(Constraint::parse(c).map_err(|e| format!("constraints[{i}]: {e}"))?);
    }
    for p in app.port_definitions.unwrap_or_default() {
        s.ports.push(PortDef {
            port: p.port,
            name: p.name,
            protocol: p.protocol.unwrap_or_else(|| "tcp".into()),
            labels: p.labels.unwrap_or_default(),
        });
    }
    for (i, h) in app.health_checks.unwrap_or_default().into_iter().enumerate() {
        let kind = match h.protocol.as_deref().unwrap_or("HTTP") {
            "HTTP" | "MESOS_HTTP" => HealthKind::Http,
            "TCP" | "MESOS_TCP" => HealthKind::Tcp,
            "COMMAND" => HealthKind::Command,
            other => {
                return Err(format!("healthChecks[{i}].protocol {other:?} is not supported: use HTTP, TCP or COMMAND"))
            }
        };
        if kind != HealthKind::Command && h.command.is_some() {
            return Err(format!("healthChecks[{i}]: command is only for protocol COMMAND"));
        }
        s.health_checks.push(HealthCheck {
            kind,
            path: h.path.unwrap_or_else(|| "/".into()),
            port_index: h.port_index.unwrap_or(0),
            command: h.command.map(|c| c.value).unwrap_or_default(),
            grace_period_s: h.grace_period_seconds.unwrap_or(defaults::GRACE_PERIOD_S),
            interval_s: h.interval_seconds.unwrap_or(defaults::INTERVAL_S),
            timeout_s: h.timeout_seconds.unwrap_or(defaults::TIMEOUT_S),
            max_consecutive_failures: h.max_consecutive_failures.unwrap_or(defaults::MAX_CONSECUTIVE_FAILURES),
        });
    }
    if let Some(u) = app.upgrade_strategy {
        s.upgrade = UpgradeStrategy {
            min_health_permille: match u.minimum_health_capacity {
                Some(v) => permille(v, "upgradeStrategy.minimumHealthCapacity")?,
                None => defaults::MIN_HEALTH_PERMILLE,
            },
            max_over_permille: match u.maximum_over_capacity {
                Some(v) => permille(v, "upgradeStrategy.maximumOverCapacity")?,
                None => defaults::MAX_OVER_PERMILLE,
            },
        };
    }
    let mut b = Backoff {
        initial_ms: defaults::BACKOFF_MS,
        factor_permille: defaults::BACKOFF_FACTOR_PERMILLE,
        max_ms: defaults::MAX_LAUNCH_DELAY_MS,
    };
    if let Some(v) = app.backoff_seconds {
        b.initial_ms = seconds_ms(v, "backoffSeconds")?;
    }
    if let Some(v) = app.backoff_factor {
        if !v.is_finite() || !(1.0..=100.0).contains(&v) {
            return Err(format!("backoffFactor must be between 1 and 100, not {v}"));
        }
        b.factor_permille = (v * 1000.0).round() as u32;
    }
    if let Some(v) = app.max_launch_delay_seconds {
        b.max_ms = seconds_ms(v, "maxLaunchDelaySeconds")?;
    }
    s.backoff = b;
    let mut overlay = None;
    for (i, n) in app.networks.unwrap_or_default().into_iter().enumerate() {
        match n.mode.as_deref().unwrap_or("container") {
            "host" => {
                if n.name.is_some() {
                    return Err(format!("networks[{i}]: a host network has no name"));
                }
            }
            "container" => {
                let name = n.name.ok_or_else(|| format!("networks[{i}]: a container network needs a name"))?;
                if overlay.replace(name).is_some() {
                    return Err("networks: at most one container network".into());
                }
            }
            m => return Err(format!("networks[{i}].mode {m:?} is not supported: use container or host")),
        }
    }
    s.network = overlay;
    s.placement = match app.placement.as_deref() {
        None | Some("binpack") => Strategy::Binpack,
        Some("spread") => Strategy::Spread,
        Some(p) => return Err(format!("placement {p:?}: use binpack or spread")),
    };
    s.validate()?;
    Ok(s)
}

/// The spec as Marathon's JSON, every supported field present.
pub fn to_json(s: &ServiceSpec) -> Value {
    let num = |milli: u64| milli as f64 / 1000.0;
    let app = App {
        id: Some(s.id.clone()),
        cmd: s.cmd.clone(),
        args: (!s.args.is_empty()).then(|| s.args.clone()),
        cpus: Some(num(s.cpus_milli)),
        mem: Some(s.mem_mb as f64),
        disk: Some(s.disk_mb as f64),
        instances: Some(s.instances),
        env: Some(s.env.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()),
        labels: Some(s.labels.clone()),
        constraints: Some(s.constraints.iter().map(Constraint::to_marathon).collect()),
        port_definitions: Some(
            s.ports
                .iter()
                .map(|p| PortDefinition {
                    port: p.port,
                    name: p.name.clone(),
                    protocol: Some(p.protocol.clone()),
                    labels: Some(p.labels.clone()),
                })
                .collect(),
        ),
        health_checks: Some(
            s.health_checks
                .iter()
                .map(|h| Health {
                    protocol: Some(h.kind.as_str().to_string()),
                    path: (h.kind == HealthKind::Http).then(|| h.path.clone()),
                    port_index: (h.kind != HealthKind::Command).then_some(h.port_index),
                    command: (h.kind == HealthKind::Command).then(|| HealthCommand { value: h.command.clone() }),
                    grace_period_seconds: Some(h.grace_period_s),
                    interval_seconds: Some(h.interval_s),
                    timeout_seconds: Some(h.timeout_s),
                    max_consecutive_failures: Some(h.max_consecutive_failures),
                })
                .collect(),
        ),
        upgrade_strategy: Some(Upgrade {
            minimum_health_capacity: Some(s.upgrade.min_health_permille as f64 / 1000.0),
            maximum_over_capacity: Some(s.upgrade.max_over_permille as f64 / 1000.0),
        }),
        backoff_seconds: Some(num(s.backoff.initial_ms)),
        backoff_factor: Some(s.backoff.factor_permille as f64 / 1000.0),
        max_launch_delay_seconds: Some(num(s.backoff.max_ms)),
        networks: Some(match &s.network {
            Some(n) => vec![NetworkJson { mode: Some("container".into()), name: Some(n.clone()) }],
            None => vec![NetworkJson { mode: Some("host".into()), name: None }],
        }),
        placement: Some(s.placement.as_str().to_string()),
    };
    let mut v = serde_json::to_value(app).expect("an app serializes");
    if let Value::Object(m) = &mut v {
        m.retain(|_, v| !v.is_null());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_app_gets_marathons_defaults() {
        let s = parse_app(br#"{"id": "web", "cmd": "python3 -m http.server $PORT0"}"#, None).unwrap();
        assert_eq!(s.id, "/web");
        assert_eq!((s.cpus_milli, s.mem_mb, s.disk_mb, s.instances), (1000, 128, 0, 1));
        assert_eq!(s.upgrade, UpgradeStrategy { min_health_permille: 1000, max_over_permille: 1000 });
        assert_eq!(s.backoff, Backoff { initial_ms: 1000, factor_permille: 1150, max_ms: 300_000 });
        assert_eq!(s.placement, Strategy::Binpack);
        assert_eq!(s.network, None);
    }

    #[test]
    fn every_supported_field_round_trips() {
        let json = br#"{
            "id": "/prod/web", "cmd": "./serve", "cpus": 0.25, "mem": 64, "disk": 10, "instances": 6,
            "env": {"MODE": "prod"}, "labels": {"team": "a"},
            "constraints": [["hostname", "MAX_PER", "2"], ["rack", "GROUP_BY", "3"]],
            "portDefinitions": [{"port": 0, "name": "http", "protocol": "tcp"}, {"port": 9000}],
            "healthChecks": [
                {"protocol": "HTTP", "path": "/health", "portIndex": 0, "gracePeriodSeconds": 5,
                 "intervalSeconds": 2, "timeoutSeconds": 1, "maxConsecutiveFailures": 2},
                {"protocol": "COMMAND", "command": {"value": "true"}}],
            "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.2},
            "backoffSeconds": 2, "backoffFactor": 2, "maxLaunchDelaySeconds": 60,
            "networks": [{"mode": "container", "name": "overlay1"}], "placement": "spread"
        }"#;
        let s = parse_app(json, None).unwrap();
        assert_eq!(s.cpus_milli, 250);
        assert_eq!(s.constraints.len(), 2);
        assert_eq!(s.health_checks[0].grace_period_s, 5);
        assert_eq!(s.health_checks[1].interval_s, 60, "default interval");
        assert_eq!(s.upgrade.min_health_permille, 500);
        assert_eq!(s.network.as_deref(), Some("overlay1"));
        let back = serde_json::to_vec(&to_json(&s)).unwrap();
        assert_eq!(parse_app(&back, None).unwrap(), s, "emit then parse gives the same spec");
    }

    #[test]
    fn unknown_and_unsupported_fields_are_refused_by_name() {
        let e = |j: &str| parse_app(j.as_bytes(), None).unwrap_err();
        assert!(e(r#"{"id":"a","cmd":"x","container":{}}"#).contains("\"container\" is not supported"));
        assert!(e(r#"{"id":"a","cmd":"x","healthChecks":[{"protocol":"HTTP","bogus":1}]}"#).contains("bogus"));
        assert!(
            e(r#"{"id":"a","cmd":"x","healthChecks":[{"protocol":"HTTPS"}]}"#).contains("\"HTTPS\" is not supported")
        );
        assert!(e(r#"{"id":"a","cmd":"x","env":{"S":{"secret":"s"}}}"#).contains("secrets are not"));
        assert!(e(r#"{"id":"a","cmd":"x","args":["y"]}"#).contains("not both"));
        assert!(e(r#"{"id":"a"}"#).contains("one is required"));
        assert!(e(r#"{"id":"A","cmd":"x"}"#).contains("lowercase"));
        assert!(e(r#"{"id":"a","cmd":"x","constraints":[["hostname","NEAR"]]}"#).contains("constraints[0]"));
        assert!(e(r#"{"id":"a","cmd":"x","portDefinitions":[{"port":80},{"port":80}]}"#).contains("twice"));
        assert!(e(r#"{"id":"a","cmd":"x","healthChecks":[{"protocol":"TCP"}]}"#).contains("portIndex 0"));
        assert!(
            e(r#"{"id":"a","cmd":"x","upgradeStrategy":{"minimumHealthCapacity":1.5}}"#).contains("between 0 and 1")
        );
        assert!(e(r#"{"id":"a","cmd":"x","mem":0}"#).contains("mem must be"));
        assert!(e(r#"[1]"#).contains("JSON object"));
        assert!(e(r#"{"id":"a","cmd":"x","networks":[{"mode":"container/bridge"}]}"#).contains("not supported"));
    }

    #[test]
    fn the_examples_in_docs_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "json") {
                let s = parse_app(&std::fs::read(e.path()).unwrap(), None);
                assert!(s.is_ok(), "{}: {:?}", e.path().display(), s.err());
                n += 1;
            }
        }
        assert!(n >= 2, "examples found: {n}");
    }

    #[test]
    fn read_only_fields_from_a_get_are_ignored() {
        let s = parse_app(br#"{"id":"a","cmd":"x","version":"2026-01-01T00:00:00Z","tasksRunning":3}"#, None).unwrap();
        assert_eq!(s.id, "/a");
    }
}
