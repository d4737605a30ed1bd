//! A resumable etcd watch: one watcher that survives the loss of its master. When the
//! stream breaks, [`WatchStream`] opens a new one on the next endpoint, starting at the
//! revision after the last one it delivered, so the caller sees every revision once, in
//! order, whatever master serves it.

use std::time::Duration;

use proto::consts::prefix_range_end;
use proto::etcdserverpb as epb;
use proto::etcdserverpb::watch_client::WatchClient;
use proto::mvccpb;
use tokio::sync::mpsc;
use tonic::Streaming;

use crate::conn::{channel_with, Client, Settings};
use crate::error::ClientError;

/// What to watch and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Every key that starts with the key given.
    pub prefix: bool,
    /// The first revision to report; 0: from the next write on.
    pub start_revision: i64,
    pub prev_kv: bool,
    /// Ask the master for periodic progress notifications.
    pub progress_notify: bool,
    /// Give up after failing to reach any master for this long; `None`: never.
    pub give_up_after: Option<Duration>,
    /// Ask the master to end the stream when it loses its leader (etcd's
    /// `WithRequireLeader`): the watch then moves to a master that has one, instead of
    /// waiting on one cut off from the quorum.
    pub require_leader: bool,
}

/// One answer of a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// Events of one or more whole revisions, in order.
    Events(Vec<mvccpb::Event>),
    /// Every event up to `revision` was delivered.
    Progress { revision: i64 },
    /// The start revision was compacted away: the watch has ended. `compact_revision`
    /// is the oldest revision a new watch may start from.
    Compacted { compact_revision: i64 },
}

type Open = (mpsc::Sender<epb::WatchRequest>, Streaming<epb::WatchResponse>);

/// A watch that reconnects by itself; see the module docs.
pub struct WatchStream {
    client: Client,
    key: Vec<u8>,
    range_end: Vec<u8>,
    options: WatchOptions,
    /// The next revision owed; 0 until the first master said where "now" is.
    next: i64,
    /// The endpoint tried next (index into the client's endpoints).
    endpoint: usize,
    open: Option<Open>,
    /// How many times the watch moved to another stream.
    pub resumes: u64,
    /// The master serving the watch now.
    pub serving: Option<String>,
    ended: bool,
    /// Fragments of a response read so far: kept here, not in a local, so that a
    /// caller that drops `next()` midway loses nothing.
    partial: Option<epb::WatchResponse>,
}

impl Client {
    /// Watches `key` (or the prefix `key`) from `options.start_revision`.
    pub fn watch(&self, key: impl Into<Vec<u8>>, options: WatchOptions) -> WatchStream {
        let key = key.into();
        let range_end = if options.prefix { prefix_range_end(&key) } else { Vec::new() };
        WatchStream {
            client: self.clone(),
            key,
            range_end,
            next: options.start_revision,
            options,
            endpoint: 0,
            open: None,
            resumes: 0,
            serving: None,
            ended: false,
            partial: None,
        }
    }
}

impl WatchStream {
    /// The revision the watch resumes from if its stream breaks now.
    pub fn next_revision(&self) -> i64 {
        self.next
    }

    /// The next answer. Transport failures and unavailable masters are retried on the
    /// other endpoints; what comes back as an error is final.
    pub async fn next(&mut self) -> Result<WatchItem, ClientError> {
        if self.ended {
            return Err(err(tonic::Code::FailedPrecondition, "the watch has ended"));
        }
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            if self.open.is_none() {
                match self.connect().await {
                    Ok(o) => self.open = Some(o),
                    Err(e) if retryable(&e) => {
                        self.fail(&mut failing_since, e).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let (_, stream) = self.open.as_mut().expect("stream open");
            match read_whole(stream, &mut self.partial).await {
                Ok(Some(r)) => {
                    failing_since = None;
                    match self.accept(r) {
                        Ok(Some(item)) => return Ok(item),
                        Ok(None) => {}
                        Err(e) => self.fail(&mut failing_since, e).await?,
                    }
                }
                Ok(None) => {
                    let e = err(tonic::Code::Unavailable, "the master ended the watch stream");
                    self.fail(&mut failing_since, e).await?;
                }
                Err(s) => {
                    let e = ClientError::from(s);
                    if !retryable(&e) {
                        return Err(e);
                    }
                    self.fail(&mut failing_since, e).await?;
                }
            }
        }
    }

    /// Drops the stream and moves to the next endpoint, or gives up.
    async fn fail(&mut self, since: &mut Option<tokio::time::Instant>, e: ClientError) -> Result<(), ClientError> {
        if self.open.take().is_some() {
            self.resumes += 1;
        }
        self.partial = None;
        self.serving = None;
        self.endpoint = (self.endpoint + 1) % self.client.endpoints().len().max(1);
        let start = *since.get_or_insert_with(tokio::time::Instant::now);
        if self.options.give_up_after.is_some_and(|d| start.elapsed() > d) {
            self.ended = true;
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }

    async fn connect(&mut self) -> Result<Open, ClientError> {
        let addr = self.client.endpoints().get(self.endpoint).cloned().ok_or(ClientError::NoEndpoints)?;
        // A stream lives as long as the watch: no request deadline; keepalive pings find
        // a master that went silent.
        let settings = Settings { request_timeout: None, ..self.client.settings().clone() };
        let ch = channel_with(&addr, self.client.tls(), &settings)?;
        let (tx, rx) = mpsc::channel(4);
        let create = epb::WatchCreateRequest {
            key: self.key.clone(),
            range_end: self.range_end.clone(),
            start_revision: self.next,
            prev_kv: self.options.prev_kv,
            progress_notify: self.options.progress_notify,
            fragment: true,
            ..Default::default()
        };
        let req = epb::WatchRequest { request_union: Some(epb::watch_request::RequestUnion::CreateRequest(create)) };
        tx.send(req).await.map_err(|_| err(tonic::Code::Internal, "watch request channel closed"))?;
        let mut outbound = tonic::Request::new(tokio_stream_from(rx));
        if self.options.require_leader {
            outbound.metadata_mut().insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
        }
        let mut stream = WatchClient::new(ch)
            .max_decoding_message_size(settings.max_response_bytes)
            .watch(outbound)
            .await
            .map_err(|s| ClientError::unavailable_at(&addr, s))?
            .into_inner();
        let mut partial = None;
        let created = tokio::time::timeout(settings.connect_timeout * 5, read_whole(&mut stream, &mut partial))
            .await
            .map_err(|_| ClientError::unavailable_at(&addr, tonic::Status::unavailable("no answer to the watch")))?
            .map_err(ClientError::from)?
            .ok_or_else(|| ClientError::unavailable_at(&addr, tonic::Status::unavailable("watch stream ended")))?;
        if !created.created {
            let msg = format!("unexpected first watch answer: {created:?}");
            return Err(ClientError::unavailable_at(&addr, tonic::Status::unavailable(msg)));
        }
        if created.canceled {
            let msg = format!("the master refused the watch: {}", created.cancel_reason);
            return Err(err(tonic::Code::InvalidArgument, &msg));
        }
        if self.next == 0 {
            self.next = created.header.as_ref().map_or(0, |h| h.revision) + 1;
        }
        self.serving = Some(addr);
        Ok((tx, stream))
    }

    /// Turns one (whole) response into an item; `None` for answers with nothing to report.
    fn accept(&mut self, r: epb::WatchResponse) -> Result<Option<WatchItem>, ClientError> {
        if r.canceled {
            if r.compact_revision > 0 {
                self.ended = true;
                self.open = None;
                return Ok(Some(WatchItem::Compacted { compact_revision: r.compact_revision }));
            }
            // Not a verdict on the request (that comes with `created`): this master could
            // not go on (it could not read its history), another one may.
            return Err(err(tonic::Code::Unavailable, &format!("the master canceled the watch: {}", r.cancel_reason)));
        }
        if r.events.is_empty() {
            let revision = r.header.map_or(0, |h| h.revision);
            if r.created || revision < self.next {
                return Ok(None);
            }
            self.next = revision + 1;
            return Ok(Some(WatchItem::Progress { revision }));
        }
        // A resumed stream starts exactly at `next`; anything older would be a repeat.
        let events: Vec<mvccpb::Event> =
            r.events.into_iter().filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= self.next)).collect();
        if let Some(last) = events.last().and_then(|e| e.kv.as_ref()) {
            self.next = last.mod_revision + 1;
        }
        Ok((!events.is_empty()).then_some(WatchItem::Events(events)))
    }
}

impl WatchStream {
    /// Moves the watch to the next master now (tests, fault injection).
    pub fn reconnect(&mut self) {
        if self.open.take().is_some() {
            self.resumes += 1;
            self.endpoint = (self.endpoint + 1) % self.client.endpoints().len().max(1);
        }
    }
}

fn err(code: tonic::Code, msg: &str) -> ClientError {
    ClientError::from(tonic::Status::new(code, msg.to_string()))
}

/// Failures another master may not have: its loss, overload, or a broken transport.
fn retryable(e: &ClientError) -> bool {
    use tonic::Code;
    matches!(
        e.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
    )
}

/// One response, fragments joined; the pieces read so far wait in `partial`.
async fn read_whole(
    s: &mut Streaming<epb::WatchResponse>,
    partial: &mut Option<epb::WatchResponse>,
) -> Result<Option<epb::WatchResponse>, tonic::Status> {
    loop {
        let Some(more) = s.message().await? else { return Ok(None) };
        let whole = match partial.take() {
            Some(mut p) => {
                p.events.extend(more.events);
                p.fragment = more.fragment;
                p
            }
            None => more,
        };
        if !whole.fragment {
            return Ok(Some(whole));
        }
        *partial = Some(whole);
    }
}

fn tokio_stream_from<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}
