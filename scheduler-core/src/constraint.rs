//! Marathon's placement constraints, `[field, OPERATOR, value]`, with Marathon's
//! semantics. The field is `hostname` or an agent label; an agent without the label
//! passes only UNLIKE.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What a constraint looks at on an agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Field {
    Hostname,
    Label(String),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Hostname => f.write_str("hostname"),
            Field::Label(l) => f.write_str(l),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// No two of the service's tasks share a value.
    Unique,
    /// Every task on agents with this value; with none, the first task's value.
    Cluster(Option<String>),
    /// Spread evenly over the values; with n, over at least n values before doubling up.
    GroupBy(Option<u32>),
    /// The value matches the regex, whole.
    Like(String),
    /// The value does not match the regex, or the agent lacks the field.
    Unlike(String),
    /// At most n of the service's tasks per value.
    MaxPer(u32),
    /// The value equals this.
    Is(String),
}

impl Operator {
    pub fn name(&self) -> &'static str {
        match self {
            Operator::Unique => "UNIQUE",
            Operator::Cluster(_) => "CLUSTER",
            Operator::GroupBy(_) => "GROUP_BY",
            Operator::Like(_) => "LIKE",
            Operator::Unlike(_) => "UNLIKE",
            Operator::MaxPer(_) => "MAX_PER",
            Operator::Is(_) => "IS",
        }
    }

    fn value(&self) -> Option<String> {
        match self {
            Operator::Unique | Operator::Cluster(None) | Operator::GroupBy(None) => None,
            Operator::Cluster(Some(v)) | Operator::Like(v) | Operator::Unlike(v) | Operator::Is(v) => Some(v.clone()),
            Operator::GroupBy(Some(n)) | Operator::MaxPer(n) => Some(n.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub field: Field,
    pub op: Operator,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("constraint {given}: {problem}")]
pub struct ConstraintError {
    pub given: String,
    pub problem: String,
}

/// Longest regex a LIKE or UNLIKE may carry, and the compiled size allowed: a constraint
/// is user input that every plan evaluates.
const MAX_PATTERN_LEN: usize = 1024;
const MAX_COMPILED_BYTES: usize = 1 << 20;

impl Constraint {
    /// Parses Marathon's array form, e.g. `["hostname", "MAX_PER", "2"]`.
    pub fn parse<S: AsRef<str>>(parts: &[S]) -> Result<Constraint, ConstraintError> {
        let given = format!("{:?}", parts.iter().map(|p| p.as_ref()).collect::<Vec<_>>());
        let err = |problem: &str| ConstraintError { given: given.clone(), problem: problem.to_string() };
        let (field, op, value) = match parts {
            [f, o] => (f.as_ref(), o.as_ref(), None),
            [f, o, v] => (f.as_ref(), o.as_ref(), Some(v.as_ref())),
            _ => return Err(err("must be [field, OPERATOR] or [field, OPERATOR, value]")),
        };
        let field = match field {
            "hostname" | "@hostname" => Field::Hostname,
            "" => return Err(err("the field is empty")),
            f if f.starts_with('@') => return Err(err("of the @ fields only @hostname is supported")),
            f => Field::Label(f.to_string()),
        };
        let count = |v: Option<&str>, what: &str| -> Result<u32, ConstraintError> {
            let v = v.ok_or_else(|| err(&format!("{what} needs a number")))?;
            match v.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(err(&format!("{what} needs a whole number of at least 1, not {v:?}"))),
            }
        };
        let text = |v: Option<&str>, what: &str| -> Result<String, ConstraintError> {
            match v {
                Some(v) => Ok(v.to_string()),
                None => Err(err(&format!("{what} needs a value"))),
            }
        };
        let op = match op {
            "UNIQUE" => match value {
                None => Operator::Unique,
                Some(_) => return Err(err("UNIQUE takes no value")),
            },
            "CLUSTER" => Operator::Cluster(value.filter(|v| !v.is_empty()).map(str::to_string)),
            "GROUP_BY" => match value {
                None | Some("") => Operator::GroupBy(None),
                v => Operator::GroupBy(Some(count(v, "GROUP_BY")?)),
            },
            "LIKE" => Operator::Like(text(value, "LIKE")?),
            "UNLIKE" => Operator::Unlike(text(value, "UNLIKE")?),
            "MAX_PER" => Operator::MaxPer(count(value, "MAX_PER")?),
            "IS" => Operator::Is(text(value, "IS")?),
            other => {
                return Err(err(&format!(
                    "unknown operator {other:?}: use UNIQUE, CLUSTER, GROUP_BY, LIKE, UNLIKE, MAX_PER or IS"
                )))
            }
        };
        let c = Constraint { field, op };
        c.compile().map_err(|e| err(&e))?;
        Ok(c)
    }

    /// Marathon's array form.
    pub fn to_marathon(&self) -> Vec<String> {
        let mut v = vec![self.field.to_string(), self.op.name().to_string()];
        v.extend(self.op.value());
        v
    }

    pub(crate) fn compile(&self) -> Result<Compiled, String> {
        let regex = |p: &str| -> Result<Regex, String> {
            if p.len() > MAX_PATTERN_LEN {
                return Err(format!("the regex is longer than {MAX_PATTERN_LEN} bytes"));
            }
            // Marathon matches the whole value (Java's String.matches).
            regex::RegexBuilder::new(&format!("^(?:{p})$"))
                .size_limit(MAX_COMPILED_BYTES)
                .build()
                .map_err(|e| format!("bad regex: {e}"))
        };
        let check = match &self.op {
            Operator::Unique => Check::Unique,
            Operator::Cluster(None) => Check::ClusterAny,
            Operator::Cluster(Some(v)) | Operator::Is(v) => Check::Is(v.clone()),
            Operator::GroupBy(n) => Check::GroupBy(n.unwrap_or(0)),
            Operator::Like(p) => Check::Like(regex(p)?),
            Operator::Unlike(p) => Check::Unlike(regex(p)?),
            Operator::MaxPer(n) => Check::MaxPer(*n),
        };
        Ok(Compiled { field: self.field.clone(), check, label: self.to_string() })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.field, self.op.name())?;
        if let Some(v) = self.op.value() {
            write!(f, ":{v}")?;
        }
        Ok(())
    }
}

/// A constraint ready to evaluate: its regex compiled once per plan.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub field: Field,
    pub check: Check,
    /// `field:OPERATOR[:value]`, for reasons.
    pub label: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Check {
    Unique,
    ClusterAny,
    Is(String),
    GroupBy(u32),
    Like(Regex),
    Unlike(Regex),
    MaxPer(u32),
}

impl Compiled {
    /// Decided by the agent alone, whatever else the plan places.
    pub fn is_static(&self) -> bool {
        matches!(self.check, Check::Is(_) | Check::Like(_) | Check::Unlike(_))
    }

    /// Once an agent fails it, placing more of the service never makes it pass again.
    /// GROUP_BY is the exception: another value's group can catch up.
    pub fn failure_is_permanent(&self) -> bool {
        !matches!(self.check, Check::GroupBy(_))
    }

    /// The static part: `value` is the agent's value of the field.
    pub fn static_ok(&self, value: Option<&str>) -> bool {
        match (&self.check, value) {
            (Check::Unlike(re), Some(v)) => !re.is_match(v),
            (Check::Unlike(_), None) => true,
            (_, None) => false,
            (Check::Is(want), Some(v)) => v == want,
            (Check::Like(re), Some(v)) => re.is_match(v),
            _ => true,
        }
    }

    /// The dynamic part, against the service's tasks so far: `counts` is how many sit on
    /// each value of the field.
    pub fn dynamic_ok(&self, value: Option<&str>, counts: &ValueCounts) -> bool {
        let Some(v) = value else { return matches!(self.check, Check::Unlike(_)) };
        match &self.check {
            Check::Unique => counts.get(v) == 0,
            Check::MaxPer(n) => counts.get(v) < *n,
            Check::ClusterAny => counts.absent == 0 && counts.present.keys().all(|k| k == v),
            Check::GroupBy(n) => {
                // Marathon's rule: a value with no task yet always passes; otherwise it
                // must be one of the smallest groups, once there are at least n groups.
                let mine = counts.get(v);
                if mine == 0 {
                    return true;
                }
                let groups = counts.present.len() as u32 + u32::from(counts.absent > 0);
                groups >= *n && mine == counts.min()
            }
            Check::Is(_) | Check::Like(_) | Check::Unlike(_) => true,
        }
    }
}

/// How many of one service's tasks sit on each value of one field.
#[derive(Debug, Clone, Default)]
pub(crate) struct ValueCounts {
    pub present: std::collections::BTreeMap<String, u32>,
    /// Tasks on agents that lack the field.
    pub absent: u32,
    /// How many groups (values, and the absent group) hold each task count: GROUP_BY
    /// asks for the smallest group on every check, and there may be thousands of values.
    by_count: std::collections::BTreeMap<u32, u32>,
}

impl ValueCounts {
    pub fn get(&self, v: &str) -> u32 {
        self.present.get(v).copied().unwrap_or(0)
    }

    pub fn add(&mut self, v: Option<&str>) {
        let before = match v {
            Some(v) => match self.present.get_mut(v) {
                Some(n) => {
                    *n += 1;
                    *n - 1
                }
                None => {
                    self.present.insert(v.to_string(), 1);
                    0
                }
            },
            None => {
                self.absent += 1;
                self.absent - 1
            }
        };
        if before > 0 {
            if let Some(k) = self.by_count.get_mut(&before) {
                *k -= 1;
                if *k == 0 {
                    self.by_count.remove(&before);
                }
            }
        }
        *self.by_count.entry(before + 1).or_insert(0) += 1;
    }

    /// The task count of the smallest group; 0 with none.
    fn min(&self) -> u32 {
        self.by_count.keys().next().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marathon_forms_round_trip_and_bad_ones_name_the_problem() {
        for parts in [
            vec!["hostname", "UNIQUE"],
            vec!["rack", "CLUSTER", "r1"],
            vec!["rack", "CLUSTER"],
            vec!["rack", "GROUP_BY"],
            vec!["rack", "GROUP_BY", "3"],
            vec!["rack", "LIKE", "r[12]"],
            vec!["rack", "UNLIKE", "r3"],
            vec!["hostname", "MAX_PER", "2"],
            vec!["zone", "IS", "a"],
        ] {
            let c = Constraint::parse(&parts).unwrap();
            assert_eq!(c.to_marathon(), parts, "{c}");
        }
        let e = |p: &[&str]| Constraint::parse(p).unwrap_err().to_string();
        assert!(e(&["hostname", "UNIQUE", "x"]).contains("UNIQUE takes no value"));
        assert!(e(&["hostname", "MAX_PER", "0"]).contains("at least 1"));
        assert!(e(&["hostname", "MAX_PER"]).contains("needs a number"));
        assert!(e(&["rack", "LIKE", "("]).contains("bad regex"));
        assert!(e(&["rack", "NEAR", "x"]).contains("unknown operator \"NEAR\""));
        assert!(e(&["rack"]).contains("must be [field, OPERATOR]"));
        assert!(e(&["@region", "IS", "x"]).contains("@hostname"));
    }

    #[test]
    fn like_matches_the_whole_value_and_unlike_passes_agents_without_the_field() {
        let like = Constraint::parse(&["rack", "LIKE", "r[12]"]).unwrap().compile().unwrap();
        assert!(like.static_ok(Some("r1")));
        assert!(!like.static_ok(Some("r12")), "a partial match is no match");
        assert!(!like.static_ok(None));
        let unlike = Constraint::parse(&["rack", "UNLIKE", "r[12]"]).unwrap().compile().unwrap();
        assert!(!unlike.static_ok(Some("r2")));
        assert!(unlike.static_ok(Some("r3")));
        assert!(unlike.static_ok(None));
        let unique = Constraint::parse(&["rack", "UNIQUE"]).unwrap().compile().unwrap();
        assert!(!unique.dynamic_ok(None, &ValueCounts::default()), "no label: only UNLIKE passes");
    }

    #[test]
    fn group_by_follows_marathons_smallest_group_rule() {
        let g = Constraint::parse(&["rack", "GROUP_BY", "2"]).unwrap().compile().unwrap();
        let mut c = ValueCounts::default();
        assert!(g.dynamic_ok(Some("r1"), &c));
        c.add(Some("r1"));
        // One group known, fewer than 2: only a new value passes.
        assert!(!g.dynamic_ok(Some("r1"), &c));
        assert!(g.dynamic_ok(Some("r2"), &c));
        c.add(Some("r2"));
        assert!(g.dynamic_ok(Some("r1"), &c));
        c.add(Some("r1"));
        assert!(!g.dynamic_ok(Some("r1"), &c), "r1 has 2, r2 has 1");
        assert!(g.dynamic_ok(Some("r2"), &c));
    }
}
