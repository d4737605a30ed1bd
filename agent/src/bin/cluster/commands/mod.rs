//! The client commands: each calls the `client` library with plain arguments and prints
//! the answer as a table or JSON. Nothing here knows clap.
//!
//! - [`backup`]: `snapshot save|inspect|restore` and `recover`;
//! - [`cluster`]: `token`, `status`, `members`, `leave`;
//! - [`kv`]: `kv put|get|del`;
//! - [`nodes`]: `nodes` and `node inspect|drain|activate|rm|events` (the registry);
//! - [`ipam`]: `network create|ls|inspect|rm|check` and `ip allocate|release`;
//! - [`services`]: `service …`, `task …`, `deployment …`;
//! - [`jobs`]: `job …`.

pub mod backup;
pub mod cluster;
pub mod ipam;
pub mod jobs;
pub mod kv;
pub mod lease;
pub mod nodes;
pub mod services;
