//! Talking to masters: try the endpoints in order, follow a not-leader answer's leader
//! address, and give up with the last error after every endpoint failed.

use std::future::Future;
use std::time::Duration;

use coord::error::LEADER_ADDR_HEADER;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub fn channel(addr: &str) -> Result<Channel, Status> {
    let e = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::invalid_argument(format!("bad endpoint {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(15))
        .tcp_nodelay(true);
    Ok(e.connect_lazy())
}

/// Calls `f` on the endpoints until one answers. `unavailable` moves on to the next
/// endpoint (or to the leader it names); any other error is the answer.
pub async fn call<T, F, Fut>(endpoints: &[String], f: F) -> Result<T, Status>
where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut queue: Vec<String> = endpoints.to_vec();
    let mut last = Status::unavailable("no endpoints given");
    let mut i = 0;
    while i < queue.len() && i < 16 {
        let addr = queue[i].clone();
        match f(channel(&addr)?).await {
            Ok(v) => return Ok(v),
            Err(s) if s.code() == Code::Unavailable => {
                if let Some(leader) = s.metadata().get(LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok()) {
                    if !queue[i + 1..].iter().any(|q| q == leader) {
                        queue.insert(i + 1, leader.to_string());
                    }
                }
                last = Status::unavailable(format!("{addr}: {}", s.message()));
            }
            Err(s) => return Err(s),
        }
        i += 1;
    }
    Err(last)
}

pub fn status_err(s: Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}
