//! What this machine offers (cpus, memory, disk, ports), detected or given on the
//! command line, and `--label key=value` parsing.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Mesos' default port resource.
pub const DEFAULT_PORTS: &str = "31000-32000";

/// Overrides given with `--cpus`, `--memory-mb`, `--disk-mb`, `--ports`, `--label`;
/// kept in node.json so a restart reports the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Run tasks without cgroups (`--no-cgroups`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cgroups: bool,
    /// TEST ONLY (`--canary-keep-replaced-tasks`), for this run only: never recorded.
    #[serde(skip)]
    pub canary_keep_replaced_tasks: bool,
}

/// Parses `31000-32000,8080` into sorted inclusive ranges; refuses overlaps.
pub fn parse_ports(s: &str) -> anyhow::Result<Vec<(u16, u16)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (b, e) = match part.split_once('-') {
            Some((b, e)) => (b.trim(), e.trim()),
            None => (part, part),
        };
        let b: u16 = b.parse().with_context(|| format!("--ports: {part:?} is not PORT or FROM-TO (1-65535)"))?;
        let e: u16 = e.parse().with_context(|| format!("--ports: {part:?} is not PORT or FROM-TO (1-65535)"))?;
        if b == 0 || b > e {
            bail!("--ports: range {part:?} is empty or starts at 0");
        }
        out.push((b, e));
    }
    out.sort();
    for w in out.windows(2) {
        if w[1].0 <= w[0].1 {
            bail!("--ports: ranges {}-{} and {}-{} overlap", w[0].0, w[0].1, w[1].0, w[1].1);
        }
    }
    Ok(out)
}

/// Parses `key=value`.
pub fn parse_label(s: &str) -> anyhow::Result<(String, String)> {
    let Some((k, v)) = s.split_once('=') else { bail!("--label {s:?} is not key=value") };
    let labels = BTreeMap::from([(k.to_string(), v.to_string())]);
    coord::registry::validate_labels(&labels).map_err(|e| anyhow::anyhow!("--label {s:?}: {e}"))?;
    Ok((k.to_string(), v.to_string()))
}

fn total_memory_mb() -> anyhow::Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:")).context("no MemTotal in /proc/meminfo")?;
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).context("bad MemTotal line")?;
    Ok(kb / 1024)
}

fn disk_mb(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statvfs {}", dir.display()));
    }
    Ok(st.f_blocks as u64 * st.f_frsize as u64 / (1 << 20))
}

/// The resources to register: detected, then overridden by the settings.
pub fn resolve(settings: &AgentSettings, data_dir: &Path) -> anyhow::Result<coord::registry::NodeResources> {
    let cpus_milli = match settings.cpus {
        Some(c) if !(c > 0.0 && c <= 1000.0) => bail!("--cpus {c}: must be > 0 and at most 1000"),
        Some(c) => (c * 1000.0).round() as u64,
        None => std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1) * 1000,
    };
    let memory_mb = match settings.memory_mb {
        Some(0) => bail!("--memory-mb must be > 0"),
        Some(m) => m,
        None => total_memory_mb()?,
    };
    let disk_mb = match settings.disk_mb {
        Some(d) => d,
        None => disk_mb(data_dir)?,
    };
    let ports = parse_ports(settings.ports.as_deref().unwrap_or(DEFAULT_PORTS))?;
    let r = coord::registry::NodeResources { cpus_milli, memory_mb, disk_mb, ports };
    r.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(r)
}

pub fn to_pb(r: &coord::registry::NodeResources) -> proto::clusterpb::Resources {
    coord::grpc::registry::resources_to_pb(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_labels_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_ports("8080, 31000-32000").unwrap(), vec![(8080, 8080), (31000, 32000)]);
        assert!(parse_ports("100-50").is_err());
        assert!(parse_ports("1-10,5-20").is_err());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("70000").is_err());
        assert_eq!(parse_label("zone=eu-1").unwrap(), ("zone".into(), "eu-1".into()));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=x").is_err());
        assert!(parse_label("bad key=x").is_err());
    }

    #[test]
    fn detected_resources_are_plausible() {
        let r = resolve(&AgentSettings::default(), Path::new("/")).unwrap();
        assert!(r.cpus_milli >= 1000 && r.memory_mb > 0 && r.disk_mb > 0);
        let s = AgentSettings { cpus: Some(0.5), memory_mb: Some(256), disk_mb: Some(0), ..Default::default() };
        let r = resolve(&s, Path::new("/")).unwrap();
        assert_eq!((r.cpus_milli, r.memory_mb, r.disk_mb), (500, 256, 0));
        assert!(resolve(&AgentSettings { cpus: Some(-1.0), ..Default::default() }, Path::new("/")).is_err());
    }
}
