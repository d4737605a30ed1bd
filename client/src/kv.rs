//! The etcd v3 KV service as the CLI and the test suites use it: get, put, delete, txn.

use proto::consts::prefix_range_end;
use proto::etcdserverpb as epb;
use proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

use crate::conn::Client;
use crate::error::ClientError;

/// How [`Client::get`] reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// Every key that starts with the key given.
    pub prefix: bool,
    /// Read at this revision; 0 is the newest.
    pub revision: i64,
    pub keys_only: bool,
    /// Answer from the contacted master without confirming leadership (may be stale).
    pub serializable: bool,
}

/// The range end that makes `key` a prefix, or none (a single key).
fn range_end(key: &[u8], prefix: bool) -> Vec<u8> {
    if prefix {
        prefix_range_end(key)
    } else {
        vec![]
    }
}

impl Client {
    fn kv(&self, ch: Channel) -> KvClient<Channel> {
        KvClient::new(ch).max_decoding_message_size(self.settings().max_response_bytes)
    }

    pub async fn get(&self, key: impl Into<Vec<u8>>, o: GetOptions) -> Result<epb::RangeResponse, ClientError> {
        let key = key.into();
        let req = epb::RangeRequest {
            range_end: range_end(&key, o.prefix),
            key,
            revision: o.revision,
            keys_only: o.keys_only,
            serializable: o.serializable,
            ..Default::default()
        };
        self.call(|ch| {
            let req = req.clone();
            async move { self.kv(ch).range(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<epb::PutResponse, ClientError> {
        let req = epb::PutRequest { key: key.into(), value: value.into(), ..Default::default() };
        self.call(|ch| {
            let req = req.clone();
            async move { self.kv(ch).put(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Deletes `key`, or with `prefix` every key that starts with it.
    pub async fn delete(&self, key: impl Into<Vec<u8>>, prefix: bool) -> Result<epb::DeleteRangeResponse, ClientError> {
        let key = key.into();
        let req = epb::DeleteRangeRequest { range_end: range_end(&key, prefix), key, prev_kv: false };
        self.call(|ch| {
            let req = req.clone();
            async move { self.kv(ch).delete_range(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    pub async fn txn(&self, req: epb::TxnRequest) -> Result<epb::TxnResponse, ClientError> {
        self.call(|ch| {
            let req = req.clone();
            async move { self.kv(ch).txn(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }
}
