//! Checkers: each turns a history into a verdict. `Unknown` is never a pass.
//!
//! - [`register`]: per-key linearizability of read/write/cas (P-compositional: every key
//!   is checked alone, two keys at a time on two threads).
//! - [`set`]: every acknowledged add is in the final read; nothing appears that was never
//!   added; nothing whose add definitely failed appears.
//! - [`ipam`]: no address held by two owners at once, no acknowledged allocation lost.
//! - [`registry`]: no node marked unreachable or down while it was not under a fault.
//! - [`watch`]: every watcher saw the committed history of its range, in order, once.
//! - [`lock`]: locks granted only to a live key first in line; fenced writes of two
//!   holders never interleave.
//! - [`lease`]: no lease ends before its promise; abandoned ones end.
//! - [`election`]: one leader per revision, in create order, observed in order.
//! - [`tasks`]: services end at exactly their instance count, no task runs twice, no IP
//!   is held by two tasks.

pub mod election;
pub mod ipam;
pub mod kv_events;
pub mod lease;
pub mod lock;
pub mod register;
pub mod registry;
pub mod set;
pub mod tasks;
pub mod watch;
pub mod wgl;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    Invalid,
    Unknown,
}

impl Verdict {
    /// The worse of two verdicts: invalid beats unknown beats valid.
    pub fn and(self, other: Verdict) -> Verdict {
        use Verdict::*;
        match (self, other) {
            (Invalid, _) | (_, Invalid) => Invalid,
            (Unknown, _) | (_, Unknown) => Unknown,
            _ => Valid,
        }
    }
}

/// What a checker found, in a form that goes into summary.json as is.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub checker: String,
    pub verdict: Verdict,
    /// Human-readable anomalies (at most a few dozen are kept).
    pub anomalies: Vec<String>,
    /// Checker-specific counts (keys checked, lost elements, ...).
    pub stats: serde_json::Map<String, serde_json::Value>,
}

impl CheckResult {
    pub fn new(checker: &str) -> CheckResult {
        CheckResult {
            checker: checker.into(),
            verdict: Verdict::Valid,
            anomalies: Vec::new(),
            stats: Default::default(),
        }
    }

    pub fn stat(&mut self, k: &str, v: impl Into<serde_json::Value>) {
        self.stats.insert(k.into(), v.into());
    }

    pub fn anomaly(&mut self, s: String) {
        self.verdict = Verdict::Invalid;
        if self.anomalies.len() < 50 {
            self.anomalies.push(s);
        }
    }
}

/// Seconds with millisecond precision, for messages.
pub fn secs(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}
