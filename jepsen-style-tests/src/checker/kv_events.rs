//! The committed history of a key range, as the coordination checkers read it: every
//! put and delete in revision order (read after the heal with a watch from the run's
//! first revision), and the live keys at any revision.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One event of the committed history (or of a watcher's view of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ev {
    /// The revision of the write (the key's mod revision).
    pub rev: i64,
    pub put: bool,
    pub key: String,
    /// Empty for a delete.
    #[serde(default)]
    pub value: String,
    /// The key's create revision (0 for a delete).
    #[serde(default)]
    pub create_rev: i64,
    /// The value before this write, when the watch asked for it; `None` if the key
    /// did not exist.
    #[serde(default)]
    pub prev: Option<String>,
}

impl Ev {
    pub fn from_pb(e: &proto::mvccpb::Event) -> Option<Ev> {
        let kv = e.kv.as_ref()?;
        let put = e.r#type == proto::mvccpb::event::EventType::Put as i32;
        Some(Ev {
            rev: kv.mod_revision,
            put,
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: if put { String::from_utf8_lossy(&kv.value).into_owned() } else { String::new() },
            create_rev: if put { kv.create_revision } else { 0 },
            prev: e.prev_kv.as_ref().map(|p| String::from_utf8_lossy(&p.value).into_owned()),
        })
    }

    /// The same write, ignoring `prev`.
    pub fn same_write(&self, o: &Ev) -> bool {
        self.rev == o.rev && self.put == o.put && self.key == o.key && self.value == o.value
    }
}

/// A live key: its create revision and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub create_rev: i64,
    pub value: String,
}

/// The live keys under a prefix after each revision of a history.
pub struct Timeline {
    /// (revision, live keys after it), one entry per revision that changed something.
    states: Vec<(i64, BTreeMap<String, Live>)>,
}

impl Timeline {
    /// Replays `events` (in revision order) for keys under `prefix`.
    pub fn new(events: &[Ev], prefix: &str) -> Timeline {
        let mut live: BTreeMap<String, Live> = BTreeMap::new();
        let mut states: Vec<(i64, BTreeMap<String, Live>)> = Vec::new();
        for e in events.iter().filter(|e| e.key.starts_with(prefix)) {
            if e.put {
                live.insert(e.key.clone(), Live { create_rev: e.create_rev, value: e.value.clone() });
            } else {
                live.remove(&e.key);
            }
            match states.last_mut() {
                Some((r, s)) if *r == e.rev => *s = live.clone(),
                _ => states.push((e.rev, live.clone())),
            }
        }
        Timeline { states }
    }

    /// The live keys once revision `rev` is applied.
    pub fn at(&self, rev: i64) -> BTreeMap<String, Live> {
        let i = self.states.partition_point(|(r, _)| *r <= rev);
        if i == 0 {
            BTreeMap::new()
        } else {
            self.states[i - 1].1.clone()
        }
    }

    /// The key with the lowest create revision at `rev`: who holds the lock or leads.
    pub fn first_at(&self, rev: i64) -> Option<(String, Live)> {
        self.at(rev).into_iter().min_by_key(|(_, l)| l.create_rev)
    }

    /// `None` if `key` (created at `create_rev`, when given) is first in line at `rev`;
    /// otherwise why not, for an anomaly's text.
    pub fn why_not_first(&self, key: &str, create_rev: Option<i64>, rev: i64) -> Option<String> {
        let first = self.first_at(rev);
        if let Some((k, l)) = &first {
            if k == key && create_rev.is_none_or(|c| c == l.create_rev) {
                return None;
            }
        }
        Some(match (self.at(rev).get(key), first) {
            (Some(mine), Some((k, l))) if k != key => {
                format!("its key (created at {}) was behind {k} (created at {})", mine.create_rev, l.create_rev)
            }
            (Some(mine), _) => {
                format!("its key there was created at {}, not {}", mine.create_rev, create_rev.unwrap_or(0))
            }
            (None, _) => self.gone(key, rev),
        })
    }

    /// Why `key` was not there at `rev`: when it was deleted, or that it never existed.
    fn gone(&self, key: &str, rev: i64) -> String {
        match self.creates(key).into_iter().rfind(|&c| c <= rev) {
            Some(cr) => match self.deleted_at(key, cr) {
                Some(d) => format!("its key was deleted at revision {d}"),
                None => "its key did not exist then".into(),
            },
            None => "its key did not exist yet".into(),
        }
    }

    /// Every create revision `key` had, in order.
    pub fn creates(&self, key: &str) -> Vec<i64> {
        let mut v: Vec<i64> = Vec::new();
        for (_, s) in &self.states {
            if let Some(l) = s.get(key) {
                if v.last() != Some(&l.create_rev) {
                    v.push(l.create_rev);
                }
            }
        }
        v
    }

    /// The revision at which `key` (created at `create_rev`) was deleted, if it was.
    pub fn deleted_at(&self, key: &str, create_rev: i64) -> Option<i64> {
        let mut seen = false;
        for (r, s) in &self.states {
            match s.get(key) {
                Some(l) if l.create_rev == create_rev => seen = true,
                _ if seen => return Some(*r),
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(rev: i64, key: &str, create: i64) -> Ev {
        Ev { rev, put: true, key: key.into(), value: format!("v{rev}"), create_rev: create, prev: None }
    }
    fn del(rev: i64, key: &str) -> Ev {
        Ev { rev, put: false, key: key.into(), value: String::new(), create_rev: 0, prev: None }
    }

    #[test]
    fn the_timeline_answers_who_is_first_at_each_revision() {
        let evs = vec![put(3, "l/a", 3), put(4, "l/b", 4), put(5, "x", 5), del(6, "l/a"), put(7, "l/b", 4)];
        let t = Timeline::new(&evs, "l/");
        assert_eq!(t.first_at(2), None);
        assert_eq!(t.first_at(3).unwrap().0, "l/a");
        assert_eq!(t.first_at(5).unwrap().0, "l/a");
        assert_eq!(t.first_at(6).unwrap().0, "l/b");
        assert_eq!(t.at(7)["l/b"].value, "v7");
        assert_eq!(t.deleted_at("l/a", 3), Some(6));
        assert_eq!(t.deleted_at("l/b", 4), None);
    }
}
