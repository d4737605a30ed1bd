//! Snapshots as files, never held whole in memory: built from a RocksDB snapshot into a
//! file record by record, sent and received in chunks, verified by checksum, and
//! installed through SST files that RocksDB ingests. The same file is what
//! `cluster snapshot save` writes and `restore` reads.
//!
//! File layout (integers big-endian):
//! - `CLSNAP\0\0`, the format version (u32), the length of the meta (u32), the meta
//!   (bincode `SnapshotMeta`: last applied log id and membership);
//! - the `sm` records in key order, each `key length (u32) · value length (u32) · key ·
//!   value`;
//! - `0xFFFF_FFFF` (end of records), then the SHA-256 of every byte before it.
//!
//! Install is crash-safe: the verified file is kept as `installing` and a marker is
//! synced to `raft_meta` before the `sm` column family is touched; the marker is cleared
//! in the same synced batch that records the new applied log id. A node that crashed in
//! between finishes the install from the file when it opens, before anything reads the
//! state: it comes back with the old state or the new one, never a mix.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rocksdb::{
    IngestExternalFileOptions, IteratorMode, ReadOptions, SnapshotWithThreadMode, WriteBatch, WriteOptions, DB,
};
use sha2::{Digest, Sha256};

use super::format::{self, FORMAT_VERSION};
use super::{io_err, sm_cf, CF_RAFT_META};
use crate::codec::{decode, encode};
use crate::types::{LogId, SnapshotData, SnapshotMeta, StoredMembership};

const MAGIC: &[u8; 8] = b"CLSNAP\0\0";
const END: u32 = u32::MAX;
/// No key or value of ours comes near this; a larger length means a corrupt file, and
/// must not make the reader allocate it.
const RECORD_PART_MAX: u32 = 64 << 20;
const META_MAX: u32 = 16 << 20;
/// Records go to ingestion in SST files of about this size.
const SST_BYTES: u64 = 64 << 20;
/// `raft_meta` key present while an install is under way.
const KEY_INSTALLING: &[u8] = b"sm_installing";

/// The keys that are not records of the snapshot: the applied log id and membership
/// travel in the meta (so a snapshot of an installed snapshot has identical records), and
/// every node stamps its own format version.
pub(crate) fn is_meta_key(k: &[u8]) -> bool {
    matches!(k, super::state_machine::KEY_APPLIED | super::state_machine::KEY_MEMBERSHIP | format::KEY_SM)
}

/// Counts and sizes of a snapshot, for logs and `cluster snapshot inspect`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    /// Bytes of the whole file.
    pub file_bytes: u64,
    /// Records per state-machine area (by key prefix).
    pub records_by_area: BTreeMap<&'static str, u64>,
    /// SHA-256 of the file up to the checksum (hex).
    pub sha256: String,
    pub version: u32,
    /// The store revision the snapshot is at (its `m/revision` record).
    pub revision: i64,
}

impl Summary {
    fn note(&mut self, key: &[u8], value: &[u8]) {
        self.records += 1;
        *self.records_by_area.entry(area_of(key)).or_default() += 1;
        if key == super::state_machine::KEY_REVISION && value.len() == 8 {
            self.revision = crate::codec::key_u64(value) as i64;
        }
    }
}

/// The area a state-machine key belongs to.
pub fn area_of(key: &[u8]) -> &'static str {
    match key.first() {
        Some(b'h') => "kv versions",
        Some(b'r') => "kv revision index",
        Some(b'g') => "registry",
        Some(b'i') => "ipam",
        Some(b's') => "services",
        Some(b'j') => "jobs",
        Some(b'l') => "leases",
        Some(b'm') => "meta",
        _ => "other",
    }
}

/// Writes a snapshot file, hashing as it goes.
pub struct SnapshotWriter<W: Write> {
    out: W,
    hash: Sha256,
    summary: Summary,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(out: W, meta: &SnapshotMeta) -> io::Result<Self> {
        let meta = encode(meta)?;
        let mut w = SnapshotWriter { out, hash: Sha256::new(), summary: Summary::default() };
        w.put(MAGIC)?;
        w.put(&FORMAT_VERSION.to_be_bytes())?;
        w.put(&(meta.len() as u32).to_be_bytes())?;
        w.put(&meta)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.hash.update(b);
        self.summary.file_bytes += b.len() as u64;
        self.out.write_all(b)
    }

    pub fn record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if key.len() as u64 >= RECORD_PART_MAX as u64 || value.len() as u64 >= RECORD_PART_MAX as u64 {
            return Err(io_err(format!("record of {} + {} bytes is too large for a snapshot", key.len(), value.len())));
        }
        self.put(&(key.len() as u32).to_be_bytes())?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(key)?;
        self.put(value)?;
        self.summary.note(key, value);
        Ok(())
    }

    /// Writes the end mark and the checksum; returns the output and what was written.
    pub fn finish(mut self) -> io::Result<(W, Summary)> {
        self.put(&END.to_be_bytes())?;
        let sum = self.hash.finalize_reset();
        self.out.write_all(&sum)?;
        self.summary.file_bytes += sum.len() as u64;
        self.summary.sha256 = hex::encode(sum);
        self.summary.version = FORMAT_VERSION;
        Ok((self.out, self.summary))
    }
}

/// Reads a snapshot file record by record. The checksum is known only at the end:
/// [`SnapshotReader::finish`] must succeed before anything read is trusted.
pub struct SnapshotReader<R: Read> {
    inp: R,
    hash: Sha256,
    meta: SnapshotMeta,
    summary: Summary,
    ended: bool,
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(inp: R) -> io::Result<Self> {
        let mut r = SnapshotReader {
            inp,
            hash: Sha256::new(),
            meta: SnapshotMeta::default(),
            summary: Summary::default(),
            ended: false,
        };
        let mut head = [0u8; 16];
        r.take(&mut head).map_err(|_| corrupt("too short for a snapshot header"))?;
        if &head[..8] != MAGIC {
            return Err(corrupt("not a cluster snapshot (no snapshot header)"));
        }
        let version = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
        if version == 0 || version > FORMAT_VERSION {
            return Err(corrupt(&format!(
                "snapshot has format version {version}, but this binary reads versions up to {FORMAT_VERSION}"
            )));
        }
        let meta_len = u32::from_be_bytes(head[12..16].try_into().expect("4 bytes"));
        if meta_len > META_MAX {
            return Err(corrupt("snapshot meta length is implausible"));
        }
        let mut meta = vec![0u8; meta_len as usize];
        r.take(&mut meta).map_err(|_| corrupt("snapshot meta is cut short"))?;
        r.meta = decode(&meta)?;
        r.summary.version = version;
        Ok(r)
    }

    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    fn take(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inp.read_exact(buf)?;
        self.hash.update(&*buf);
        self.summary.file_bytes += buf.len() as u64;
        Ok(())
    }

    /// The next record, or `None` after the last one.
    pub fn next_record(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.ended {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.take(&mut len).map_err(|_| corrupt("snapshot is cut short"))?;
        let klen = u32::from_be_bytes(len);
        if klen == END {
            self.ended = true;
            return Ok(None);
        }
        self.take(&mut len).map_err(|_| corrupt("snapshot is cut short"))?;
        let vlen = u32::from_be_bytes(len);
        if klen >= RECORD_PART_MAX || vlen >= RECORD_PART_MAX {
            return Err(corrupt("snapshot record length is implausible"));
        }
        let mut key = vec![0u8; klen as usize];
        let mut value = vec![0u8; vlen as usize];
        self.take(&mut key).map_err(|_| corrupt("snapshot is cut short"))?;
        self.take(&mut value).map_err(|_| corrupt("snapshot is cut short"))?;
        self.summary.note(&key, &value);
        Ok(Some((key, value)))
    }

    /// Reads the checksum and compares; call after the last record.
    pub fn finish(mut self) -> io::Result<Summary> {
        if !self.ended {
            return Err(io_err("snapshot reader finished before the last record"));
        }
        let want = self.hash.finalize_reset();
        let mut got = [0u8; 32];
        self.inp.read_exact(&mut got).map_err(|_| corrupt("snapshot checksum is missing"))?;
        if got[..] != want[..] {
            return Err(corrupt("snapshot checksum mismatch: the file is corrupt"));
        }
        let mut rest = [0u8; 1];
        if self.inp.read(&mut rest)? != 0 {
            return Err(corrupt("bytes after the snapshot checksum"));
        }
        self.summary.file_bytes += 32;
        self.summary.sha256 = hex::encode(want);
        Ok(self.summary)
    }
}

fn corrupt(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.to_string())
}

/// Reads a whole snapshot file, checking its checksum: its meta and summary.
pub fn verify(path: &Path) -> io::Result<(SnapshotMeta, Summary)> {
    verify_with(path, &|_| {})
}

/// Long passes over a snapshot report the records done so far this often.
const PROGRESS_EVERY_RECORDS: u64 = 1 << 16;

/// Progress of a pass over a snapshot: records done so far.
pub type RecordProgress<'a> = &'a (dyn Fn(u64) + Sync);

fn tick(progress: RecordProgress<'_>, n: u64) {
    if n.is_multiple_of(PROGRESS_EVERY_RECORDS) {
        progress(n);
    }
}

/// [`verify`], reporting the records read so far.
pub fn verify_with(path: &Path, progress: RecordProgress<'_>) -> io::Result<(SnapshotMeta, Summary)> {
    let mut r = SnapshotReader::new(BufReader::with_capacity(1 << 20, File::open(path)?))?;
    let mut n = 0u64;
    while r.next_record()?.is_some() {
        n += 1;
        tick(progress, n);
    }
    let meta = r.meta().clone();
    Ok((meta, r.finish()?))
}

/// Writes `file` durably at `path`: fsync, rename over `path`, fsync the directory.
fn persist(tmp: &Path, path: &Path) -> io::Result<()> {
    File::open(tmp)?.sync_all()?;
    std::fs::rename(tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Opens a finished snapshot file as the data openraft hands around.
pub fn open_data(path: &Path) -> io::Result<SnapshotData> {
    let file = File::open(path)?;
    let size_bytes = file.metadata()?.len();
    Ok(SnapshotData { file, size_bytes })
}

/// The node's current snapshot (`dir/current`): its meta and data, from one open of the
/// file, so a newer snapshot published meanwhile cannot mix with it.
pub fn open_current(dir: &Path) -> io::Result<Option<(SnapshotMeta, SnapshotData)>> {
    use std::io::Seek;
    let mut file = match File::open(dir.join("current")) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = SnapshotReader::new(BufReader::new(&file))?.meta().clone();
    file.rewind()?;
    let size_bytes = file.metadata()?.len();
    Ok(Some((meta, SnapshotData { file, size_bytes })))
}

/// The meta at the head of a snapshot file, if the file exists.
pub fn read_meta(path: &Path) -> io::Result<Option<SnapshotMeta>> {
    match File::open(path) {
        Ok(f) => Ok(Some(SnapshotReader::new(BufReader::new(f))?.meta().clone())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Serializes writers of `dir/current`: a build and an install may finish in any order,
/// and a file never replaces a newer one.
static CURRENT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Makes `tmp` the node's current snapshot, unless a newer one is there already.
fn publish(dir: &Path, tmp: &Path, meta: &SnapshotMeta) -> io::Result<()> {
    let _g = CURRENT_LOCK.lock().expect("snapshot file lock");
    let current = dir.join("current");
    if let Some(existing) = read_meta(&current).unwrap_or(None) {
        if existing.last_log_id > meta.last_log_id {
            tracing::info!(kept = ?existing.last_log_id, "a newer snapshot file exists; not replacing it");
            return std::fs::remove_file(tmp);
        }
    }
    persist(tmp, &current)
}

/// Writes the `sm` column family as seen by `snap` to `out`, in the file layout.
pub(crate) fn write_to<W: Write>(
    db: &DB,
    snap: &SnapshotWithThreadMode<'_, DB>,
    out: W,
) -> io::Result<(SnapshotMeta, Summary, W)> {
    let cf = sm_cf(db);
    let get = |k: &[u8]| snap.get_cf(cf, k).map_err(io_err);
    let last_log_id: Option<LogId> = match get(super::state_machine::KEY_APPLIED)? {
        Some(b) => decode(&b)?,
        None => None,
    };
    let last_membership: StoredMembership = match get(super::state_machine::KEY_MEMBERSHIP)? {
        Some(b) => decode(&b)?,
        None => StoredMembership::default(),
    };
    let meta = SnapshotMeta { last_log_id, last_membership };
    let mut w = SnapshotWriter::new(out, &meta)?;
    let mut ro = ReadOptions::default();
    ro.set_snapshot(snap);
    // A long sequential scan: read ahead, and do not evict the hot blocks for it.
    ro.set_readahead_size(2 << 20);
    ro.fill_cache(false);
    for item in db.iterator_cf_opt(cf, ro, IteratorMode::Start) {
        let (k, v) = item.map_err(io_err)?;
        if !is_meta_key(&k) {
            w.record(&k, &v)?;
        }
    }
    let (out, summary) = w.finish()?;
    Ok((meta, summary, out))
}

/// Builds a snapshot of the `sm` column family as seen by `snap` into `dir/current`.
pub(crate) fn build(db: &DB, snap: &SnapshotWithThreadMode<'_, DB>, dir: &Path) -> io::Result<(SnapshotMeta, Summary)> {
    let tmp = dir.join(format!("build-{}.tmp", std::process::id()));
    let out = BufWriter::with_capacity(1 << 20, private_file(&tmp)?);
    let (meta, summary, out) = write_to(db, snap, out)?;
    out.into_inner().map_err(|e| e.into_error())?;
    publish(dir, &tmp, &meta)?;
    Ok((meta, summary))
}

/// Writes a consistent snapshot of the applied state as it is now to `out` (for
/// `cluster snapshot save`): a RocksDB snapshot is consistent because every applied
/// group is one atomic batch that includes `m/applied`.
pub fn export<W: Write>(db: &DB, out: W) -> io::Result<(SnapshotMeta, Summary, W)> {
    let snap = db.snapshot();
    write_to(db, &snap, out)
}

/// Copies `data` to `dir/installing` while checking it, syncs it there, then records in
/// `raft_meta` that an install is under way. From here on the install completes, now or
/// at the next open.
pub(crate) fn stage(
    db: &DB,
    dir: &Path,
    meta: &SnapshotMeta,
    data: SnapshotData,
    progress: RecordProgress<'_>,
) -> io::Result<Summary> {
    let tmp = dir.join("installing.tmp");
    let summary = {
        let mut r = SnapshotReader::new(BufReader::with_capacity(1 << 20, data.file))?;
        if r.meta().last_log_id != meta.last_log_id {
            return Err(corrupt(&format!(
                "snapshot file is of {:?}, but was offered as {:?}",
                r.meta().last_log_id,
                meta.last_log_id
            )));
        }
        let mut w = SnapshotWriter::new(BufWriter::with_capacity(1 << 20, private_file(&tmp)?), r.meta())?;
        let mut n = 0u64;
        while let Some((k, v)) = r.next_record()? {
            w.record(&k, &v)?;
            n += 1;
            tick(progress, n);
        }
        r.finish()?;
        let (out, summary) = w.finish()?;
        out.into_inner().map_err(|e| e.into_error())?;
        summary
    };
    persist(&tmp, &dir.join("installing"))?;
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    let meta_cf = db.cf_handle(CF_RAFT_META).expect("raft_meta column family");
    db.put_cf_opt(meta_cf, KEY_INSTALLING, b"1", &wo).map_err(io_err)?;
    Ok(summary)
}

/// True when an install was staged and has not completed (a crash interrupted it).
pub(crate) fn install_pending(db: &DB) -> io::Result<bool> {
    let meta_cf = db.cf_handle(CF_RAFT_META).expect("raft_meta column family");
    Ok(db.get_cf(meta_cf, KEY_INSTALLING).map_err(io_err)?.is_some())
}

/// Replaces the `sm` column family with the staged snapshot: a range delete of
/// everything, the records ingested as SST files, then one synced batch with the applied
/// log id, membership, format version and the cleared marker. Idempotent: a crash
/// anywhere before that batch leaves the marker, and the next open runs this again.
pub(crate) fn apply_staged(db: &DB, dir: &Path, progress: RecordProgress<'_>) -> io::Result<SnapshotMeta> {
    let staged = dir.join("installing");
    let cf = sm_cf(db);
    db.delete_range_cf(cf, [0u8].as_slice(), [0xffu8; 9].as_slice()).map_err(io_err)?;
    let mut r = SnapshotReader::new(BufReader::with_capacity(1 << 20, File::open(&staged)?))?;
    let meta = r.meta().clone();
    let mut opts = rocksdb::Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut ssts: Vec<PathBuf> = Vec::new();
    let mut writer: Option<rocksdb::SstFileWriter<'_>> = None;
    let mut n = 0u64;
    while let Some((k, v)) = r.next_record()? {
        if writer.as_ref().is_none_or(|w| w.file_size() >= SST_BYTES) {
            if let Some(mut w) = writer.take() {
                w.finish().map_err(io_err)?;
            }
            let path = dir.join(format!("ingest-{}.sst", ssts.len()));
            let w = rocksdb::SstFileWriter::create(&opts);
            w.open(&path).map_err(io_err)?;
            ssts.push(path);
            writer = Some(w);
        }
        writer.as_mut().expect("writer").put(&k, &v).map_err(io_err)?;
        n += 1;
        tick(progress, n);
    }
    if let Some(mut w) = writer.take() {
        w.finish().map_err(io_err)?;
    }
    r.finish()?;
    if !ssts.is_empty() {
        // The files are newer than the range delete: ingestion flushes the memtable that
        // holds it and gives the files a later sequence number.
        let mut io = IngestExternalFileOptions::default();
        io.set_move_files(true);
        db.ingest_external_file_cf_opts(cf, &io, ssts.clone()).map_err(io_err)?;
    }
    let mut batch = WriteBatch::default();
    batch.put_cf(cf, super::state_machine::KEY_APPLIED, encode(&meta.last_log_id)?);
    batch.put_cf(cf, super::state_machine::KEY_MEMBERSHIP, encode(&meta.last_membership)?);
    batch.put_cf(cf, format::KEY_SM, format::encode_version(FORMAT_VERSION));
    batch.delete_cf(db.cf_handle(CF_RAFT_META).expect("raft_meta column family"), KEY_INSTALLING);
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo).map_err(io_err)?;
    for p in ssts {
        let _ = std::fs::remove_file(p);
    }
    // The installed snapshot becomes the one this node serves (the leader may purge
    // the log behind it now).
    publish(dir, &staged, &meta)?;
    Ok(meta)
}

/// Receives a snapshot into a file in `dir`, in chunks, within a size cap.
pub struct SnapshotSink {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    written_bytes: u64,
    max_bytes: u64,
}

impl SnapshotSink {
    pub fn create(dir: &Path, max_bytes: u64) -> io::Result<SnapshotSink> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("recv-{}-{n}.part", std::process::id()));
        let out = BufWriter::with_capacity(1 << 20, private_file(&path)?);
        Ok(SnapshotSink { path, out: Some(out), written_bytes: 0, max_bytes })
    }

    pub fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.written_bytes += chunk.len() as u64;
        if self.written_bytes > self.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot is larger than the {} byte cap (snapshot_max_bytes)", self.max_bytes),
            ));
        }
        self.out.as_mut().expect("sink open until finished").write_all(chunk)
    }

    /// The received data, ready to install (the file is removed once dropped and closed;
    /// it was never published).
    pub fn finish(mut self) -> io::Result<SnapshotData> {
        let out = self.out.take().expect("sink open until finished");
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let data = open_data(&self.path)?;
        // Unlinked now: the open handle keeps the bytes until install copied them.
        std::fs::remove_file(&self.path)?;
        Ok(data)
    }
}

impl Drop for SnapshotSink {
    fn drop(&mut self) {
        // A sink dropped before `finish` (error, timeout) leaves no file behind.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes what interrupted builds and receives left in `dir`.
pub(crate) fn clean_dir(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tmp") || name.ends_with(".part") || name.ends_with(".sst") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// A new file only the owner can read: snapshots hold the cluster CA's key and the join
/// secrets.
fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}
