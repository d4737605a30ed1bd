//! Wire enums: what the protocol carries as strings, as types on this side. Each has
//! `as_str` (the wire string) and parses from it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A string that is none of an enum's wire values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}: use {expected}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, $expected:literal { $($(#[$vm:meta])* $v:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vm])* $v),+
        }

        impl $name {
            /// The string the protocol carries.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s),+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<$name, UnknownValue> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(UnknownValue { what: $what, value: s.to_string(), expected: $expected }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// What a node joined as, chosen by its token: a master (Raft member and, unless
    /// `--no-worker`, an agent) or a worker agent.
    Role, "role", "manager or worker" {
        Manager => "manager",
        Worker => "worker",
    }
);

wire_enum!(
    /// A master's place in the Raft group.
    RaftRole, "raft role", "voter or learner" {
        Voter => "voter",
        Learner => "learner",
    }
);

wire_enum!(
    /// Whether an agent takes new work.
    Availability, "availability", "active or drain" {
        Active => "active",
        /// Keeps what it runs, takes nothing new.
        Drain => "drain",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_round_trip_and_unknown_ones_are_named() {
        for r in [Role::Manager, Role::Worker] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert_eq!("learner".parse::<RaftRole>(), Ok(RaftRole::Learner));
        assert_eq!(Availability::Drain.to_string(), "drain");
        let e = "boss".parse::<Role>().unwrap_err();
        assert_eq!(e.to_string(), "unknown role \"boss\": use manager or worker");
    }
}
