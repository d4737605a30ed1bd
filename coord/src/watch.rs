//! etcd's Watch, served by every master from its own applied state (never forwarded).
//!
//! One [`serve_stream`] task runs per client stream and drives all of its watchers. A
//! watcher is a key range and the next revision it owes the client. Behind the newest
//! applied revision, it takes whole revisions from the node's events ring, or, when it
//! is further behind than the ring reaches, from disk in bounded batches; then it
//! follows new applies. Apply never waits for a watcher: a slow client only slows its
//! own stream, whose output channel is bounded, so the memory a watcher holds is too.
//!
//! What a client sees, per watcher: revisions in increasing order, each once and whole
//! (its events in one response, or in consecutive fragments when it asked for them),
//! none skipped from its start revision on. All masters apply the same log, so a client
//! that reconnects anywhere and asks for the revision after the last one it saw gets
//! exactly the rest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use crate::kv::KeyRange;
use crate::node::CoordNode;
use crate::store::events::{Event, EventKind, EventsError, Revision};

/// Watchers one stream may hold.
pub const MAX_WATCHERS_PER_STREAM: usize = 1_000;
/// Bytes of keys and range ends the watchers of one stream may hold, together.
pub const MAX_KEY_BYTES_PER_STREAM: usize = 1 << 20;
/// A response carries whole revisions up to about this many bytes of events; a single
/// larger revision goes whole, or in fragments of this size when the watcher asked.
pub const RESPONSE_BYTES: usize = 1 << 20;
/// Revisions taken from the ring per step of one watcher, so the others get their turn.
const REVISIONS_PER_STEP: usize = 1_000;
/// The id of a response that belongs to no watcher (a progress answer), as etcd.
pub const NO_WATCH_ID: i64 = -1;

/// A watcher to create (etcd's `WatchCreateRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// The first revision to report (inclusive); 0 means from the next write on.
    pub start_revision: i64,
    pub progress_notify: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    /// 0: the server picks one.
    pub watch_id: i64,
    pub fragment: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Create(CreateRequest),
    Cancel(i64),
    Progress,
}

/// One message to the client (etcd's `WatchResponse`); `revision` goes in the header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub revision: i64,
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub fragment: bool,
    /// `prev` is set only for watchers that asked for it.
    pub events: Vec<Event>,
}

struct Watcher {
    range: KeyRange,
    key_bytes: usize,
    next: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    fragment: bool,
    progress_notify: bool,
    /// When a progress notification is next due (progress_notify watchers).
    notify_at: Instant,
}

impl Watcher {
    fn wants(&self, e: &Event) -> bool {
        let kind_ok = match e.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        };
        kind_ok && self.range.contains(&e.kv.key)
    }
}

/// The stream has ended (the client went away or the node is stopping).
struct Closed;

struct Stream {
    node: Arc<CoordNode>,
    out: mpsc::Sender<Response>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    key_bytes: usize,
    /// A RequestProgress waits for every watcher to be synced.
    progress_pending: bool,
    notify_every: Duration,
}

impl Drop for Stream {
    fn drop(&mut self) {
        crate::metrics::global().watchers.sub(self.watchers.len() as i64);
    }
}

/// Serves one Watch stream: reads `requests` until they end, and answers on `out` until
/// the client goes away. Returns when `out` is closed or the node stops.
pub async fn serve_stream(node: Arc<CoordNode>, mut requests: mpsc::Receiver<Request>, out: mpsc::Sender<Response>) {
    let notify_every = Duration::from_millis(node.config.watch_progress_notify_interval_ms);
    let mut applied = node.events().subscribe();
    let mut s = Stream {
        node,
        out,
        watchers: BTreeMap::new(),
        next_id: 0,
        key_bytes: 0,
        progress_pending: false,
        notify_every,
    };
    let mut requests_open = true;
    loop {
        let behind = match s.step().await {
            Ok(b) => b,
            Err(Closed) => return,
        };
        if behind {
            // Others are owed events: take what the client sent meanwhile without waiting.
            match requests.try_recv() {
                Ok(r) => {
                    if s.handle(r).await.is_err() {
                        return;
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => requests_open = false,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            tokio::task::yield_now().await;
            continue;
        }
        let notify_at = s.watchers.values().filter(|w| w.progress_notify).map(|w| w.notify_at).min();
        let sleep = async {
            match notify_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = requests.recv(), if requests_open => match r {
                Some(r) => {
                    if s.handle(r).await.is_err() {
                        return;
                    }
                }
                // A client that closes its sending side still receives its events.
                None => requests_open = false,
            },
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = sleep => {}
            _ = s.out.closed() => return,
        }
    }
}

impl Stream {
    async fn send(&self, r: Response) -> Result<(), Closed> {
        self.out.send(r).await.map_err(|_| Closed)
    }

    async fn handle(&mut self, r: Request) -> Result<(), Closed> {
        match r {
            Request::Create(c) => self.create(c).await,
            Request::Cancel(id) => {
                if self.remove(id) {
                    let revision = self.node.events().revision();
                    self.send(Response { revision, watch_id: id, canceled: true, ..Default::default() }).await?;
                }
                // etcd answers nothing for an id it does not know.
                Ok(())
            }
            Request::Progress => {
                self.progress_pending = true;
                Ok(())
            }
        }
    }

    async fn create(&mut self, c: CreateRequest) -> Result<(), Closed> {
        // "Now" is the applied state's revision, which a client's acknowledged write has
        // reached; its events are published a moment later, and the watcher waits.
        let revision = self.node.view(|v| v.revision());
        let refuse = |reason: String| Response {
            revision,
            watch_id: NO_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        let key_bytes = c.key.len() + c.range_end.len();
        let refused = if c.watch_id < 0 {
            Some(format!("watch id {} is negative", c.watch_id))
        } else if c.watch_id != 0 && self.watchers.contains_key(&c.watch_id) {
            Some("mvcc: duplicate watch ID provided on the WatchStream".to_string())
        } else if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            Some(format!("a stream holds at most {MAX_WATCHERS_PER_STREAM} watchers; open another stream"))
        } else if self.key_bytes + key_bytes > MAX_KEY_BYTES_PER_STREAM {
            Some(format!("the watchers of a stream may name at most {MAX_KEY_BYTES_PER_STREAM} bytes of keys"))
        } else if !c.range_end.is_empty() && c.range_end != [0] && c.range_end <= c.key {
            Some("mvcc: watcher range is empty".to_string())
        } else if c.start_revision < 0 {
            Some(format!("start revision {} is negative", c.start_revision))
        } else {
            None
        };
        if let Some(reason) = refused {
            return self.send(refuse(reason)).await;
        }
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let next = if c.start_revision == 0 { revision + 1 } else { c.start_revision };
        debug!(watch_id = id, next, "watcher created");
        self.watchers.insert(
            id,
            Watcher {
                range: KeyRange::new(&c.key, &c.range_end),
                key_bytes,
                next,
                prev_kv: c.prev_kv,
                no_put: c.no_put,
                no_delete: c.no_delete,
                fragment: c.fragment,
                progress_notify: c.progress_notify,
                notify_at: Instant::now() + self.notify_every,
            },
        );
        self.key_bytes += key_bytes;
        crate::metrics::global().watchers.inc();
        self.send(Response { revision, watch_id: id, created: true, ..Default::default() }).await
    }

    /// Gives every watcher that is behind one batch, answers a pending RequestProgress
    /// once all are synced, and sends due progress notifications. Returns whether some
    /// watcher is still behind.
    async fn step(&mut self) -> Result<bool, Closed> {
        // Every watcher moves up to `current` and no further in this step, so that a
        // progress answer below never names a revision lower than an event already sent.
        let current = self.node.events().revision();
        let ids: Vec<i64> = self.watchers.iter().filter(|(_, w)| w.next <= current).map(|(id, _)| *id).collect();
        for id in ids {
            self.advance(id, current).await?;
        }
        // Progress notifications go to each synced watcher that asked, whatever the
        // others are doing.
        let now = Instant::now();
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && w.notify_at <= now && w.next > current)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(w) = self.watchers.get_mut(&id) {
                w.notify_at = now + self.notify_every;
            }
            self.send(Response { revision: current, watch_id: id, ..Default::default() }).await?;
        }
        if self.watchers.values().any(|w| w.next <= current) {
            return Ok(true);
        }
        // RequestProgress waits until the whole stream is synced.
        if self.progress_pending {
            self.progress_pending = false;
            self.send(Response { revision: current, watch_id: NO_WATCH_ID, ..Default::default() }).await?;
        }
        Ok(false)
    }

    /// Moves watcher `id` forward by one batch of whole revisions towards `current`.
    async fn advance(&mut self, id: i64, current: i64) -> Result<(), Closed> {
        let Some(next) = self.watchers.get(&id).map(|w| w.next) else { return Ok(()) };
        let compact = self.node.view(|v| v.compact_revision());
        let revs: Result<Vec<Arc<Revision>>, EventsError> = if next <= compact {
            Err(EventsError::Compacted(compact))
        } else {
            match self.node.events().from_ring(next, REVISIONS_PER_STEP) {
                Some(mut revs) => {
                    revs.retain(|r| r.revision <= current);
                    Ok(revs)
                }
                None => self.node.read_revisions(next, current, RESPONSE_BYTES).await,
            }
        };
        let revs = match revs {
            Ok(r) => r,
            Err(EventsError::Compacted(compact)) => {
                // etcd's answer: the watcher is canceled, naming the oldest revision it
                // may watch from (etcd allows the compact revision itself; its deletes
                // are gone from our index, so we start one above), so the client knows
                // to start over from there or from a fresh read.
                let compact_revision = compact + 1;
                self.remove(id);
                let reason = "mvcc: required revision has been compacted".to_string();
                return self
                    .send(Response {
                        revision: current,
                        watch_id: id,
                        canceled: true,
                        compact_revision,
                        cancel_reason: reason,
                        ..Default::default()
                    })
                    .await;
            }
            Err(EventsError::Storage(e)) => {
                tracing::error!(watch_id = id, "watch history unreadable: {e}");
                self.remove(id);
                return self
                    .send(Response {
                        revision: current,
                        watch_id: id,
                        canceled: true,
                        cancel_reason: format!("the master could not read its history: {e}"),
                        ..Default::default()
                    })
                    .await;
            }
        };
        let w = self.watchers.get_mut(&id).expect("watcher present");
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let mut covered = w.next - 1;
        for rev in &revs {
            if rev.revision < w.next {
                continue;
            }
            for e in rev.events.iter().filter(|e| w.wants(e)) {
                // Copied once per watcher, so the previous version is copied only for
                // those that asked for it.
                let prev = if w.prev_kv { e.prev.clone() } else { None };
                let e = Event { kind: e.kind, kv: e.kv.clone(), prev };
                bytes += e.payload_bytes();
                events.push(e);
            }
            covered = rev.revision;
            if bytes >= RESPONSE_BYTES {
                break;
            }
        }
        if revs.is_empty() {
            // Announced revisions are in the ring or on disk, so this happens only while a
            // snapshot install replaces the state under the reader: wait, do not spin.
            tracing::debug!(watch_id = id, next, "no revisions readable yet; retrying");
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Ok(());
        }
        w.next = covered + 1;
        if events.is_empty() {
            return Ok(());
        }
        let fragment = w.fragment && bytes > RESPONSE_BYTES;
        if !fragment {
            return self.send(Response { revision: covered, watch_id: id, events, ..Default::default() }).await;
        }
        // Consecutive pieces of at most RESPONSE_BYTES each; all but the last say so.
        let mut pieces: Vec<Vec<Event>> = vec![Vec::new()];
        let mut size = 0usize;
        for e in events {
            let b = e.payload_bytes();
            if size + b > RESPONSE_BYTES && !pieces.last().expect("one piece").is_empty() {
                pieces.push(Vec::new());
                size = 0;
            }
            size += b;
            pieces.last_mut().expect("one piece").push(e);
        }
        let n = pieces.len();
        for (i, events) in pieces.into_iter().enumerate() {
            self.send(Response { revision: covered, watch_id: id, fragment: i + 1 < n, events, ..Default::default() })
                .await?;
        }
        Ok(())
    }

    /// Forgets watcher `id` and the key bytes it held; false if there was none.
    fn remove(&mut self, id: i64) -> bool {
        let Some(w) = self.watchers.remove(&id) else { return false };
        crate::metrics::global().watchers.dec();
        self.key_bytes -= w.key_bytes;
        true
    }
}
