//! The history of a run: one JSON object per line, in the shape Jepsen histories take:
//! `{"process","type":"invoke|ok|fail|info","f","key","value","time"}`.
//!
//! `time` is nanoseconds since the run started (one monotonic clock on the host, where
//! every client runs). An `info` completion means the outcome is unknown: the operation
//! may take effect at any later point or never, and its process never issues again.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds since the start of the run.
    pub time: u64,
    /// Which node the client sent the request to (not part of the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    pub fn invoke(process: u64, f: &str, key: Option<String>, value: Value, time: u64) -> Op {
        Op { process, kind: OpType::Invoke, f: f.into(), key, value, time, node: None, error: None }
    }
}

pub fn write_jsonl(path: &Path, ops: &[Op]) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for op in ops {
        serde_json::to_writer(&mut w, op)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: not a history operation: {source}")]
    Parse { path: String, line: usize, source: serde_json::Error },
    #[error("{0}")]
    Malformed(String),
}

pub fn read_jsonl(path: &Path) -> Result<Vec<Op>, HistoryError> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| HistoryError::Io { path: p.clone(), source })?;
    let mut ops = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| HistoryError::Io { path: p.clone(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
            path: p.clone(),
            line: i + 1,
            source,
        })?;
        ops.push(op);
    }
    Ok(ops)
}

/// One operation with its invocation and completion paired.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub process: u64,
    pub f: String,
    pub key: Option<String>,
    /// The invocation's value (what was asked).
    pub input: Value,
    /// The completion's value (what was answered), Null for info.
    pub output: Value,
    pub kind: OpType,
    pub invoke_ns: u64,
    /// None when the outcome is unknown (an info, or an invocation never completed).
    pub complete_ns: Option<u64>,
    /// Completion time even for an info (when the client gave up), for plots.
    pub gave_up_ns: Option<u64>,
    pub node: Option<String>,
    pub error: Option<String>,
}

/// Pairs every invocation with its process's next completion. A process with an open
/// invocation that issues again, or a completion without invocation, is malformed.
pub fn pair(ops: &[Op]) -> Result<Vec<Call>, HistoryError> {
    use std::collections::BTreeMap;
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut retired = std::collections::BTreeSet::new();
    let mut calls: Vec<Call> = Vec::new();
    for op in ops {
        match op.kind {
            OpType::Invoke => {
                if retired.contains(&op.process) {
                    return Err(HistoryError::Malformed(format!(
                        "process {} issued {} after an info: a process with an unknown outcome never issues again",
                        op.process, op.f
                    )));
                }
                if open.contains_key(&op.process) {
                    return Err(HistoryError::Malformed(format!(
                        "process {} invoked {} while its previous operation was still open",
                        op.process, op.f
                    )));
                }
                open.insert(op.process, calls.len());
                calls.push(Call {
                    process: op.process,
                    f: op.f.clone(),
                    key: op.key.clone(),
                    input: op.value.clone(),
                    output: Value::Null,
                    kind: OpType::Info,
                    invoke_ns: op.time,
                    complete_ns: None,
                    gave_up_ns: None,
                    node: op.node.clone(),
                    error: None,
                });
            }
            kind => {
                let Some(i) = open.remove(&op.process) else {
                    return Err(HistoryError::Malformed(format!(
                        "process {} completed {} without an open invocation",
                        op.process, op.f
                    )));
                };
                let c = &mut calls[i];
                if c.f != op.f {
                    return Err(HistoryError::Malformed(format!(
                        "process {} invoked {} but completed {}",
                        op.process, c.f, op.f
                    )));
                }
                c.kind = kind;
                c.output = op.value.clone();
                c.error = op.error.clone();
                c.gave_up_ns = Some(op.time);
                if kind == OpType::Info {
                    retired.insert(op.process);
                } else {
                    c.complete_ns = Some(op.time);
                }
            }
        }
    }
    Ok(calls)
}
