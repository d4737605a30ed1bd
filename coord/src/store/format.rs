//! The on-disk format version. Every column family that holds records carries one:
//! `sm` under `m/format`, `raft_meta` under `format`. A node opens data of its own
//! version or older (upgrading in place, when a later version needs it), and refuses
//! data written by a newer binary instead of misreading it. Snapshots carry the
//! version in their header (see [`super::snapshot`]).
//!
//! Version history:
//! - 1: the layout described in docs/ARCHITECTURE.md ("Storage"). Data written before
//!   versions existed has no version key and is this layout; opening it stamps 1.

use rocksdb::DB;

use super::{CF_RAFT_META, CF_SM};

/// The format this binary writes.
pub const FORMAT_VERSION: u32 = 1;

/// Where each column family keeps its version.
pub(crate) const KEY_SM: &[u8] = b"m/format";
pub(crate) const KEY_RAFT_META: &[u8] = b"format";

/// Why a data dir cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "the data in {what} has format version {found}, but this binary reads versions up to \
         {supported}: it was written by a newer release; run that release (or newer) on this data dir"
    )]
    NewerFormat { what: &'static str, found: u32, supported: u32 },
    #[error("the format version in {what} is unreadable ({len} bytes): the data dir is corrupt")]
    BadVersion { what: &'static str, len: usize },
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
}

/// Checks the version of every column family and stamps [`FORMAT_VERSION`] on a new
/// (or pre-version) one. Called once at open, before anything reads records.
pub(crate) fn check_and_stamp(db: &DB) -> Result<(), OpenError> {
    for (cf_name, key, what) in
        [(CF_SM, KEY_SM, "the state machine"), (CF_RAFT_META, KEY_RAFT_META, "the Raft metadata")]
    {
        let cf = db.cf_handle(cf_name).expect("column family opened");
        match db.get_cf(cf, key)? {
            Some(b) => {
                let found = decode_version(&b).ok_or(OpenError::BadVersion { what, len: b.len() })?;
                if found > FORMAT_VERSION {
                    return Err(OpenError::NewerFormat { what, found, supported: FORMAT_VERSION });
                }
                // Older versions are upgraded here when a later format needs it.
            }
            None => {
                let mut wo = rocksdb::WriteOptions::default();
                wo.set_sync(true);
                db.put_cf_opt(cf, key, encode_version(FORMAT_VERSION), &wo)?;
            }
        }
    }
    Ok(())
}

pub(crate) fn encode_version(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

pub(crate) fn decode_version(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.try_into().ok()?))
}
