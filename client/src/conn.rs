//! Channels to masters and [`Client`]: try the endpoints in order, follow a not-leader
//! answer to the leader it names, and give up with the last error once every endpoint
//! was unavailable.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::ClientError;
use pki::ClientTls;

/// A bound on the addresses one call tries, so that two masters naming each other as
/// leader cannot keep a call going.
const MAX_ATTEMPTS: usize = 16;

/// How channels are made and how a call moves between masters.
#[derive(Debug, Clone)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// Deadline of each request; `None` leaves it to the caller.
    pub request_timeout: Option<Duration>,
    /// Whether an `unavailable` answer naming the leader sends the call there next.
    /// Without it, a call tries only the endpoints it was given.
    pub follow_leader: bool,
    /// Largest response accepted: node and allocation lists of a big cluster exceed
    /// tonic's 4 MiB default.
    pub max_response_bytes: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Some(Duration::from_secs(15)),
            follow_leader: true,
            max_response_bytes: 256 << 20,
        }
    }
}

/// A lazily connected TLS channel to `addr` (host:port) with the default settings.
pub fn channel(addr: &str, tls: &ClientTls) -> Result<Channel, ClientError> {
    channel_with(addr, tls, &Settings::default())
}

/// A lazily connected TLS channel to `addr` (host:port).
pub fn channel_with(addr: &str, tls: &ClientTls, s: &Settings) -> Result<Channel, ClientError> {
    // Refuse what is not host:port before dialling, with the address in the error.
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ClientError::BadEndpoint { addr: addr.to_string(), reason: e.to_string() })?;
    let o = pki::net::ChannelOptions {
        connect_timeout: s.connect_timeout,
        request_timeout: s.request_timeout,
        keepalive: None,
    };
    pki::net::channel(addr, tls, &o)
        .map_err(|e| ClientError::BadEndpoint { addr: addr.to_string(), reason: e.to_string() })
}

/// The masters a program talks to. Cheap to clone; clones share their channels, one per
/// address, so repeated calls reuse a connection.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Vec<String>,
    settings: Settings,
    tls: ClientTls,
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
}

impl Client {
    /// A client of `endpoints` (host:port, tried in this order) with default settings,
    /// speaking mutual TLS with `tls` (see [`pki::Credentials::client`]).
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>, tls: ClientTls) -> Client {
        Client::with_settings(endpoints, tls, Settings::default())
    }

    pub fn with_settings<S: Into<String>>(
        endpoints: impl IntoIterator<Item = S>,
        tls: ClientTls,
        settings: Settings,
    ) -> Client {
        Client { endpoints: endpoints.into_iter().map(Into::into).collect(), settings, tls, channels: Arc::default() }
    }

    pub fn tls(&self) -> &ClientTls {
        &self.tls
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A client of one of this client's peers (such as the leader a status names), with
    /// the same settings and channels.
    pub fn at(&self, addr: &str) -> Client {
        Client {
            endpoints: vec![addr.to_string()],
            settings: self.settings.clone(),
            tls: self.tls.clone(),
            channels: self.channels.clone(),
        }
    }

    /// The shared channel to `addr`, made on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut c = self.channels.lock().expect("channel map lock");
        if let Some(ch) = c.get(addr) {
            return Ok(ch.clone());
        }
        let ch = channel_with(addr, &self.tls, &self.settings)?;
        c.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Runs `f` on the endpoints until one answers. `unavailable` moves on to the next
    /// endpoint, or first to the leader it names unless that one is queued already; any
    /// other answer, error or not, is the result.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_at(|_, ch| f(ch)).await
    }

    /// [`Client::call`], telling `f` which address it talks to.
    async fn call_at<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(&str, Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut queue = self.endpoints.clone();
        let mut last: Option<(String, Status)> = None;
        let mut i = 0;
        while i < queue.len() && i < MAX_ATTEMPTS {
            let addr = queue[i].clone();
            i += 1;
            match f(&addr, self.channel(&addr)?).await {
                Ok(v) => return Ok(v),
                Err(s) if s.code() == Code::Unavailable => {
                    let e = ClientError::from(s.clone());
                    if let (true, Some(leader)) = (self.settings.follow_leader, e.leader_addr()) {
                        if !queue[i..].iter().any(|q| q == leader) {
                            queue.insert(i, leader.to_string());
                        }
                    }
                    last = Some((addr, s));
                }
                Err(s) => return Err(s.into()),
            }
        }
        Err(match last {
            Some((addr, s)) => ClientError::unavailable_at(&addr, s),
            None => ClientError::NoEndpoints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::consts::LEADER_ADDR_HEADER;
    use tonic::metadata::MetadataValue;

    fn tls() -> ClientTls {
        let ca = pki::cert::Ca::generate("t", std::time::SystemTime::now()).unwrap();
        pki::Credentials::new(vec![ca.cert.clone()], vec![], None).unwrap().client().unwrap()
    }

    fn client<S: Into<String>>(eps: impl IntoIterator<Item = S>) -> Client {
        Client::new(eps, tls())
    }

    fn not_leader(leader: &'static str) -> Status {
        let mut s = Status::unavailable("not the leader");
        s.metadata_mut().insert(LEADER_ADDR_HEADER, MetadataValue::from_static(leader));
        s
    }

    /// Runs a call whose answers come from `answer(addr)`, returning the addresses asked.
    async fn asked(
        c: &Client,
        answer: impl Fn(&str) -> Result<u32, Status>,
    ) -> (Vec<String>, Result<u32, ClientError>) {
        let seen = Mutex::new(Vec::new());
        let r = c
            .call_at(|addr, _| {
                seen.lock().unwrap().push(addr.to_string());
                let a = answer(addr);
                async move { a }
            })
            .await;
        (seen.into_inner().unwrap(), r)
    }

    #[tokio::test]
    async fn a_not_leader_answer_sends_the_call_to_the_named_leader_next() {
        let c = client(["m1:1", "m2:1"]);
        let (seen, r) = asked(&c, |a| if a == "m3:1" { Ok(7) } else { Err(not_leader("m3:1")) }).await;
        assert_eq!(seen, ["m1:1", "m3:1"]);
        assert_eq!(r.unwrap(), 7);
        // A leader queued already keeps its place.
        let c = client(["m1:1", "m2:1", "m3:1"]);
        let (seen, _) = asked(&c, |a| if a == "m3:1" { Ok(7) } else { Err(not_leader("m3:1")) }).await;
        assert_eq!(seen, ["m1:1", "m2:1", "m3:1"]);
    }

    #[tokio::test]
    async fn other_errors_are_the_answer_and_unavailable_everywhere_names_the_last_master() {
        let c = client(["m1:1", "m2:1"]);
        let (seen, r) = asked(&c, |_| Err(Status::not_found("no such node"))).await;
        assert_eq!(seen, ["m1:1"]);
        assert_eq!(r.unwrap_err().code(), Code::NotFound);
        let (seen, r) = asked(&c, |_| Err(Status::unavailable("down"))).await;
        assert_eq!(seen, ["m1:1", "m2:1"]);
        assert_eq!(r.unwrap_err().to_string(), "m2:1: down (Unavailable)");
    }

    #[tokio::test]
    async fn masters_naming_each_other_end_and_pinned_clients_do_not_follow() {
        let c = client(["m1:1"]);
        let (seen, r) = asked(&c, |a| Err(if a == "m1:1" { not_leader("m2:1") } else { not_leader("m1:1") })).await;
        assert_eq!(seen.len(), MAX_ATTEMPTS, "{seen:?}");
        assert_eq!(r.unwrap_err().leader_addr(), Some("m1:1"));
        let pinned = Client::with_settings(["m1:1"], tls(), Settings { follow_leader: false, ..Settings::default() });
        let (seen, r) = asked(&pinned, |_| Err(not_leader("m2:1"))).await;
        assert_eq!(seen, ["m1:1"]);
        assert_eq!(r.unwrap_err().status().map(|s| s.message()), Some("not the leader"));
    }

    #[tokio::test]
    async fn no_endpoints_and_bad_endpoints_fail_before_sending() {
        let (seen, r) = asked(&client(Vec::<String>::new()), |_| Ok(1)).await;
        assert!(seen.is_empty());
        assert!(matches!(r, Err(ClientError::NoEndpoints)));
        let (seen, r) = asked(&client(["bad host:1"]), |_| Ok(1)).await;
        assert!(seen.is_empty());
        assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
    }
}
