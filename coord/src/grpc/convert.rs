//! Conversions between etcd's prost messages and the state machine's own KV types.

use proto::etcdserverpb as pb;
use proto::mvccpb;
use tonic::Status;

use crate::kv::types::*;

pub fn kv_to_pb(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_from_pb(r: &pb::RangeRequest) -> RangeRequest {
    use pb::range_request::{SortOrder as O, SortTarget as T};
    RangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: r.limit,
        revision: r.revision,
        sort_order: match r.sort_order() {
            O::None => SortOrder::None,
            O::Ascend => SortOrder::Ascend,
            O::Descend => SortOrder::Descend,
        },
        sort_target: match r.sort_target() {
            T::Key => SortTarget::Key,
            T::Version => SortTarget::Version,
            T::Create => SortTarget::Create,
            T::Mod => SortTarget::Mod,
            T::Value => SortTarget::Value,
        },
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

pub fn put_from_pb(p: &pb::PutRequest) -> PutRequest {
    PutRequest {
        key: p.key.clone(),
        value: p.value.clone(),
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

pub fn delete_from_pb(d: &pb::DeleteRangeRequest) -> DeleteRangeRequest {
    DeleteRangeRequest { key: d.key.clone(), range_end: d.range_end.clone(), prev_kv: d.prev_kv }
}

fn compare_from_pb(c: &pb::Compare) -> Result<Compare, Status> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match c.result() {
        R::Equal => CompareResult::Equal,
        R::Greater => CompareResult::Greater,
        R::Less => CompareResult::Less,
        R::NotEqual => CompareResult::NotEqual,
    };
    let int = |want: fn(&U) -> Option<i64>| c.target_union.as_ref().and_then(want).unwrap_or(0);
    let target = match c.target() {
        T::Version => CompareTarget::Version(int(|u| if let U::Version(v) = u { Some(*v) } else { None })),
        T::Create => CompareTarget::CreateRevision(int(|u| if let U::CreateRevision(v) = u { Some(*v) } else { None })),
        T::Mod => CompareTarget::ModRevision(int(|u| if let U::ModRevision(v) = u { Some(*v) } else { None })),
        T::Lease => CompareTarget::Lease(int(|u| if let U::Lease(v) = u { Some(*v) } else { None })),
        T::Value => match &c.target_union {
            Some(U::Value(v)) => CompareTarget::Value(v.clone()),
            None => CompareTarget::Value(Vec::new()),
            Some(_) => return Err(Status::invalid_argument("etcdserver: compare target VALUE needs a value")),
        },
    };
    Ok(Compare { result, target, key: c.key.clone(), range_end: c.range_end.clone() })
}

fn op_from_pb(op: &pb::RequestOp) -> Result<RequestOp, Status> {
    use pb::request_op::Request as R;
    match &op.request {
        Some(R::RequestRange(r)) => Ok(RequestOp::Range(range_from_pb(r))),
        Some(R::RequestPut(p)) => Ok(RequestOp::Put(put_from_pb(p))),
        Some(R::RequestDeleteRange(d)) => Ok(RequestOp::DeleteRange(delete_from_pb(d))),
        Some(R::RequestTxn(t)) => Ok(RequestOp::Txn(txn_from_pb(t)?)),
        None => Err(Status::invalid_argument("etcdserver: empty request op in txn")),
    }
}

pub fn txn_from_pb(t: &pb::TxnRequest) -> Result<TxnRequest, Status> {
    Ok(TxnRequest {
        compare: t.compare.iter().map(compare_from_pb).collect::<Result<_, _>>()?,
        success: t.success.iter().map(op_from_pb).collect::<Result<_, _>>()?,
        failure: t.failure.iter().map(op_from_pb).collect::<Result<_, _>>()?,
    })
}

pub fn range_resp_to_pb(r: RangeResponse, header: pb::ResponseHeader) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
        more: r.more,
        count: r.count,
    }
}

pub fn put_resp_to_pb(r: PutResponse, header: pb::ResponseHeader) -> pb::PutResponse {
    pb::PutResponse { header: Some(header), prev_kv: r.prev_kv.map(kv_to_pb) }
}

pub fn delete_resp_to_pb(r: DeleteRangeResponse, header: pb::ResponseHeader) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_to_pb).collect(),
    }
}

pub fn txn_resp_to_pb(r: TxnResponse, header: pb::ResponseHeader) -> pb::TxnResponse {
    use pb::response_op::Response as R;
    let responses = r
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                ResponseOp::Range(x) => R::ResponseRange(range_resp_to_pb(x, header)),
                ResponseOp::Put(x) => R::ResponsePut(put_resp_to_pb(x, header)),
                ResponseOp::DeleteRange(x) => R::ResponseDeleteRange(delete_resp_to_pb(x, header)),
                ResponseOp::Txn(x) => R::ResponseTxn(txn_resp_to_pb(x, header)),
            }),
        })
        .collect();
    pb::TxnResponse { header: Some(header), succeeded: r.succeeded, responses }
}
